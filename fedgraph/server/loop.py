"""The one round loop: :class:`Server` drives every run, in-process or deployed.

A run is a start (enrollment, pre-training) and rounds; each round trains, is checked for
divergence, is recorded (``metrics.json``), is evaluated every ``eval_every`` rounds, and may
end the run early (``patience``); every ``checkpoint_every`` rounds the run's state is saved
(``checkpoint.pt``), from which :meth:`Server.run` with ``resume=True`` continues to the same
metrics as an uninterrupted run. What differs between an in-process run and a deployment is
only how a round reaches its clients -- the :class:`Federation` the server drives:
:class:`~fedgraph.server.inprocess.InProcess` (one node in this process holds every user and
trains them together, the vectorized engine) or
:class:`~fedgraph.server.deployment.Deployment` (devices behind a transport: in this process,
or Flower's).
"""
from __future__ import annotations

import logging
import math
import shutil
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from fedgraph.config import TrainConfig
from fedgraph.federated.messages import RoundStats
from fedgraph.files import folder_lock, load_tensors, matching_config, save_tensors
from fedgraph.records import (best_round, metrics_of, progress_text, round_record, stops_early,
                              summary_line, write_metrics)

log = logging.getLogger(__name__)

CHECKPOINT = 'checkpoint.pt'
EMBEDDINGS = 'embeddings.pt'
#: The split a run trained on when it was passed in Python (:func:`fedgraph.run.save_split`).
SPLIT = 'split.pt'
#: What a run writes besides its config.json.
RUN_FILES = ('metrics.json', 'metrics.csv', CHECKPOINT, EMBEDDINGS, SPLIT)
#: Everything of a run in its folder, its figures included: what an overwrite replaces.
REPLACED_FILES = ('config.json', *RUN_FILES, 'figures')
#: Where an overwrite keeps the run it replaces until the new run's first checkpoint.
SET_ASIDE = '.replaced'

#: A training loss this many times the chance loss means local training diverged.
EXPLODED = 10.0


class RunFailed(RuntimeError):
    """A run that ended without a model worth its name; the message says why and what of
    it was kept."""


class TrainingDiverged(RunFailed):
    """A round produced a non-finite loss or parameter, or a loss far above chance."""


class NothingTrained(RunFailed):
    """No round of the run aggregated an upload: the server dropped every one, and the
    model is the one it started from."""


class Federation:
    """How the server's rounds reach the clients: the steps :class:`Server` drives.

    Attributes:
        engine: the server's engine -- the shared model, and what its records and divergence
            checks read (its ``ledger``, ``state_dict()``, ``federated``).
        resumable: whether the run's state is all the server's, so that a checkpoint can
            continue it (a deployment's clients keep their own state on their devices).
    """
    engine = None
    resumable = False

    def start(self, progress: bool) -> Optional[Dict[str, object]]:
        """Enrollment and pre-training; the pre-training's record (``None``: none)."""
        raise NotImplementedError

    def train_round(self, round_index: int) -> Tuple[RoundStats, Dict[str, object]]:
        """One round of training; what it measured and the extra entries of its record."""
        raise NotImplementedError

    def evaluate(self, round_index: int) -> Dict[str, object]:
        """The validation and test metrics after round ``round_index`` (``val``, ``test``)
        and what the evaluation's messages carried."""
        raise NotImplementedError

    def metrics(self) -> Dict[str, object]:
        """Entries of ``metrics.json`` beside the rounds (default: none)."""
        return {}

    def save_inputs(self, out: Path) -> None:
        """Writes what the run folder needs besides ``config.json`` to rebuild the run
        (default: nothing)."""

    def export(self) -> Optional[Dict[str, torch.Tensor]]:
        """Tensors saved as the run's ``embeddings.pt`` at its end (``None``: none)."""
        return None

    def state_dict(self) -> Dict[str, object]:
        """Everything a resumed run needs of the federation (:attr:`resumable` only)."""
        raise NotImplementedError

    def load_state_dict(self, state: Dict[str, object]) -> None:
        raise NotImplementedError


def check_folder(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuses a run folder that holds a run already (unless ``resume`` or ``overwrite``),
    and one without a checkpoint to ``resume`` from."""
    held = [name for name in ('metrics.json', CHECKPOINT) if (out / name).exists()]
    if resume and not (out / CHECKPOINT).exists():
        raise FileNotFoundError(f'no {CHECKPOINT} in {out} to resume from')
    if held and not (resume or overwrite):
        raise FileExistsError(f'{out} holds a run already ({", ".join(held)}): resume it, '
                              f'overwrite it (--overwrite) or choose another --out')


def non_finite_tensor(state, name: str = 'state') -> Optional[str]:
    """The path of the first floating-point tensor in ``state`` (nested dicts, lists) with a
    NaN or infinite entry, or ``None``. A tensor whose sum is finite has none (a NaN or an
    infinity makes every sum over it NaN or infinite), and summing is one cheap pass: the
    entries are checked one by one only when the sum is not finite (it may overflow)."""
    if isinstance(state, torch.Tensor):
        finite = (not state.is_floating_point() or bool(torch.isfinite(state.sum()))
                  or bool(torch.isfinite(state).all()))
        return None if finite else name
    items = (state.items() if isinstance(state, dict) else
             enumerate(state) if isinstance(state, (list, tuple)) else ())
    for key, value in items:
        found = non_finite_tensor(value, f'{name}/{key}')
        if found is not None:
            return found
    return None


def divergence(stats: RoundStats, engine) -> Optional[str]:
    """What diverged in the round just run, or ``None``: its training loss, when reported (not
    finite, or :data:`EXPLODED` times the loss at chance,
    :attr:`~fedgraph.federated.round_engine.RoundEngine.chance_loss` of the engine or of the
    federated engine it wraps), or a tensor of the engine's state that is not finite."""
    if stats.num_clients and stats.loss is not None and not math.isfinite(stats.loss):
        return f'the training loss is {stats.loss}'
    federated = engine.federated
    chance = (federated if federated is not None else engine).chance_loss
    if chance is not None and stats.loss is not None and stats.loss > EXPLODED * chance:
        return (f'the training loss {stats.loss:.3g} is over {EXPLODED:g} times that of a '
                f'model that scores every item alike ({chance:.3g})')
    name = non_finite_tensor(engine.state_dict())
    return None if name is None else f'{name} is not finite'


def set_aside(out: Path) -> None:
    """Moves the run in ``out`` (:data:`REPLACED_FILES`) into ``out/.replaced``."""
    aside = out / SET_ASIDE
    aside.mkdir()
    for name in REPLACED_FILES:
        if (out / name).exists():
            (out / name).rename(aside / name)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def settle_set_aside(out: Path, restore: bool) -> None:
    """Ends an overwrite of the run in ``out``: with ``restore``, the new run's files are
    removed and the run set aside (:func:`set_aside`) comes back; else the set-aside run is
    deleted. Nothing to do without one."""
    aside = out / SET_ASIDE
    if not aside.exists():
        return
    if restore:
        for name in REPLACED_FILES:
            _remove(out / name)
            if (aside / name).exists():
                (aside / name).rename(out / name)
    shutil.rmtree(aside)


def _dropped_in(history: List[Dict[str, object]]) -> str:
    """The uploads dropped over ``history``, by reason, as text."""
    total: Dict[str, int] = {}
    for record in history:
        for reason, count in (record.get('uploads_dropped') or {}).items():
            total[reason] = total.get(reason, 0) + count
    return ', '.join(f'{reason}: {count}' for reason, count in total.items()) or 'none sent'


class Server:
    """Drives a run's rounds over a :class:`Federation` (see the module docstring).

    Args:
        config: the run's configuration.
        federation: how rounds reach the clients.
        out: the run folder (``config.json``, ``metrics.json``, ``metrics.csv``,
            ``checkpoint.pt``, ``embeddings.pt``); ``None`` keeps everything in memory.
        progress: a progress bar over rounds whose text is the latest round's loss and
            validation metric; each round's whole summary is logged (``logging``, INFO).
    """

    def __init__(self, config: TrainConfig, federation: Federation,
                 out: Optional[Path] = None, progress: bool = True):
        self.config = config
        self.federation = federation
        self.out = Path(out) if out is not None else None
        self.progress = progress
        self.history: List[Dict[str, object]] = []
        self.pretraining: Optional[Dict[str, object]] = None

    def built_from(self) -> Dict[str, object]:
        """What the run is built from, beyond its settings (``config.json``'s ``ran``): the
        algorithm's class and, once the federation has its engine (in-process: from the
        start; a deployment: after enrollment), the clients' loss and optimizer and the
        server's stages."""
        algorithm = type(self.config.build_algorithm())
        out: Dict[str, object] = {'algorithm': f'{algorithm.__module__}.{algorithm.__qualname__}'}
        engine = self.federation.engine
        federated = engine.federated if engine is not None else None
        if federated is not None:
            out.update(federated.training.describe(), server=federated.server.describe())
        return out

    def metrics(self) -> Dict:
        """The run's ``metrics.json`` so far."""
        return {**metrics_of(self.history, self.pretraining, self.config),
                **self.federation.metrics()}

    def run(self, resume: bool = False, overwrite: bool = False) -> Dict:
        """The whole run; returns its metrics. Without ``resume`` or ``overwrite``, a run
        folder that holds a run already is an error, so that no run is lost or mixed with
        another; ``resume`` continues from its ``checkpoint.pt``. ``overwrite`` sets that
        run aside (every file of it, figures included) and deletes it once the new run has
        written its first checkpoint; a new run that fails before then, or a process killed
        before then (found by the next run on the folder), brings the old run back. All of
        it under the folder's lock, taken first."""
        out = self.out
        if resume and not self.federation.resumable:
            raise ValueError('a deployment cannot resume: its clients keep their own state')
        if out is None:
            if resume:
                raise FileNotFoundError(f'no {CHECKPOINT} to resume from without a run folder')
            return self._rounds(resume=False)
        out.mkdir(parents=True, exist_ok=True)
        with folder_lock(out):
            settle_set_aside(out, restore=not (out / 'metrics.json').exists())
            check_folder(out, resume, overwrite)
            if overwrite and not resume and any((out / name).exists()
                                                for name in REPLACED_FILES):
                set_aside(out)
            try:
                self.config.save(out / 'config.json', self.built_from())
                if not resume:
                    self.federation.save_inputs(out)
                return self._rounds(resume)
            finally:
                settle_set_aside(out, restore=not (out / 'metrics.json').exists())

    def _rounds(self, resume: bool) -> Dict:
        config, federation, out = self.config, self.federation, self.out
        start_round = 0
        if resume:
            path = out / CHECKPOINT
            state = load_tensors(path, map_location=config.device,
                                 keys=('history', 'round', 'pretraining'))
            with matching_config(path):
                federation.load_state_dict(state)
            self.history, start_round = state['history'], state['round']
            self.pretraining = state['pretraining']
            log.info('resuming %s at round %d', out, start_round)
        else:
            before = self.built_from()
            self.pretraining = federation.start(self.progress)
            after = self.built_from()
            if out is not None and after != before:  # a deployment's, once enrolled
                config.save(out / 'config.json', after)
        history = self.history
        end = start_round if stops_early(history, config) else config.rounds
        bar = tqdm(range(start_round, end), desc=config.algorithm, unit='round',
                   disable=not self.progress, initial=start_round, total=config.rounds,
                   dynamic_ncols=True)
        saved = start_round if resume else None
        with logging_redirect_tqdm():
            for round_index in bar:
                began = time.perf_counter()
                stats, extra = federation.train_round(round_index)
                problem = divergence(stats, federation.engine)
                if problem is not None:
                    bar.close()
                    kept = ('No checkpoint was written' if saved is None else
                            f'{out / CHECKPOINT} (after round {saved - 1}) is kept' if out else
                            'Nothing was saved')
                    raise TrainingDiverged(f'{config.algorithm} diverged in round {round_index}: '
                                           f'{problem}; lower the learning rate (--lr). {kept}')
                if not stats.num_clients:
                    log.warning('round %d: the server aggregated no upload (dropped: %s); the '
                                'model did not change', round_index, stats.dropped or 'none')
                record = {**round_record(round_index, stats, federation.engine), **extra}
                if config.evaluates_after(round_index + 1):
                    record.update(federation.evaluate(round_index))
                record['seconds'] = time.perf_counter() - began
                history.append(record)
                if self.progress:
                    log.info('%s', summary_line(record, config.select_by))
                    bar.set_postfix_str(progress_text(record, config.select_by), refresh=False)
                stop = stops_early(history, config)
                last = round_index + 1 == config.rounds or stop
                if out is not None and self._saves_after(round_index, last):
                    if federation.resumable and config.checkpoint_every:
                        save_tensors(out / CHECKPOINT, {
                            **federation.state_dict(), 'history': history,
                            'round': round_index + 1, 'pretraining': self.pretraining})
                    write_metrics(out, self.metrics())
                    settle_set_aside(out, restore=False)
                    saved = round_index + 1
                if stop:
                    log.info('%s: no better validation %s in %d evaluations; stopped after '
                             'round %d (best: round %d)', config.algorithm, config.select_by,
                             config.patience, round_index,
                             best_round(history, config.select_by)['round'])
                    break
        bar.close()
        if history and not any(record['clients'] for record in history):
            raise NothingTrained(
                f'{config.algorithm}: no round aggregated an upload, the server dropped every '
                f'one ({_dropped_in(history)}); the model is the one it started from'
                + (f'. The records are in {out / "metrics.json"}' if out is not None else ''))
        exported = federation.export() if out is not None else None
        if exported is not None:
            save_tensors(out / EMBEDDINGS, exported)
        return self.metrics()

    def _saves_after(self, round_index: int, last: bool) -> bool:
        """Whether the run's files are written after round ``round_index``: every
        ``checkpoint_every`` rounds (0: the metrics only, after the last) and after the
        last; a deployment, which cannot resume, writes its metrics after every round."""
        every = self.config.checkpoint_every if self.federation.resumable else 1
        return last or (every > 0 and (round_index + 1) % every == 0)
