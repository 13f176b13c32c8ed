"""Running an algorithm for a number of rounds: evaluation, best round, checkpoints, outputs.

A run writes ``config.json`` and ``metrics.json`` into its output folder and, every
``checkpoint_every`` rounds, ``checkpoint.pt`` with everything needed to continue: the
engine's shared and private state, the random generator's state and the metrics so far.
:func:`train` with ``resume=True`` continues from there and ends with the same metrics as an
uninterrupted run.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Dict, List, Optional, Union

import torch
from tqdm import tqdm

from fedgraph import runtime
from fedgraph.algorithms import build_engine
from fedgraph.config import TrainConfig
from fedgraph.data import ClientPartition, leave_one_out_split, predefined_split, ratio_split
from fedgraph.data.hetero import RATES
from fedgraph.data.source import load_configured
from fedgraph.federated.engine import RoundEngine, RoundStats
from fedgraph.federated.evaluation import Split, evaluate
from fedgraph.files import folder_lock, save_tensors
from fedgraph.records import (best_round, metrics_of, round_record, stops_early, summary_line,
                              write_metrics)
from fedgraph.run import Run

log = logging.getLogger(__name__)

CHECKPOINT = 'checkpoint.pt'
EMBEDDINGS = 'embeddings.pt'
#: What a run writes besides its config.json (``--overwrite`` removes them first).
RUN_FILES = ('metrics.json', CHECKPOINT, EMBEDDINGS)


#: A training loss this many times the chance loss means local training diverged.
EXPLODED = 10.0


class TrainingDiverged(RuntimeError):
    """A round produced a non-finite loss or parameter, or a loss far above chance."""


def divergence(stats: RoundStats, engine: RoundEngine) -> Optional[str]:
    """What diverged in the round just run, or ``None``: its training loss (not finite, or
    :data:`EXPLODED` times the clients' loss at chance,
    :attr:`~fedgraph.federated.local.LocalLoss.chance_loss`), or a tensor of the engine's
    state that is not finite."""
    if stats.num_clients and not math.isfinite(stats.loss):
        return f'the training loss is {stats.loss}'
    federated = engine.federated
    chance = federated.training.loss.chance_loss if federated is not None else None
    if chance is not None and stats.loss > EXPLODED * chance:
        return (f'the training loss {stats.loss:.3g} is over {EXPLODED:g} times that of a '
                f'model that scores every item alike ({chance:.3g})')
    name = non_finite_tensor(engine.state_dict())
    return None if name is None else f'{name} is not finite'


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


def prepare_split(config: TrainConfig):
    """Loads the configured data (:func:`~fedgraph.data.source.load_configured`, which checks
    it against ``config.data_digest`` or records it there) and splits it under the configured
    protocol: full ranking uses the data's own split when it has one (a LightGCN folder) and
    ``split_mode`` does not ask for a ratio split."""
    data = load_configured(config)
    if config.protocol == 'sampled':
        return leave_one_out_split(data, num_negatives=config.eval_negatives, seed=config.seed)
    own = 'split' in data[RATES]
    mode = config.split_mode or ('predefined' if own else 'random')
    if mode == 'predefined':
        if not own:
            raise ValueError(f'--split-mode predefined: {config.data_path or config.dataset} '
                             f'has no split of its own (a LightGCN folder has)')
        ratios = config.split_ratios
        return predefined_split(data, val_ratio=ratios[1] / (ratios[0] + ratios[1]),
                                seed=config.seed)
    return ratio_split(data, config.split_ratios, mode=mode, seed=config.seed)


def build_run(config: TrainConfig, split):
    """The engine of a run and its random generator, seeded by ``config.seed`` (the engine's
    initialization draws from it first)."""
    if config.device.startswith('cuda') and not torch.cuda.is_available():
        raise ValueError(f'--device {config.device}: this PyTorch ({torch.__version__}) has no '
                         f'CUDA device; use --device cpu')
    generator = torch.Generator().manual_seed(config.seed)
    engine = build_engine(config, ClientPartition.from_data(split.train), generator,
                          split.known_items())
    return engine, generator


def train(config: TrainConfig, out: Optional[Union[str, Path]] = None, resume: bool = False,
          progress: bool = True, split: Optional[Split] = None,
          overwrite: bool = False) -> Run:
    """Trains ``config.algorithm`` for ``config.rounds`` rounds, or fewer with
    ``config.patience``: the run stops once that many evaluations in a row found no better
    validation metric than the best so far. It first sets the process's threads and memory
    reuse (:func:`fedgraph.runtime.configure`).

    Args:
        config: the run's configuration.
        out: the output folder (``config.json``, ``metrics.json``, ``checkpoint.pt``);
            ``None`` keeps everything in memory.
        resume: continue from ``out/checkpoint.pt``.
        progress: show a progress bar over rounds and a one-line summary per round.
        split: an already prepared split (default: :func:`prepare_split`).
        overwrite: replace the run already in ``out``; without it (or ``resume``) a folder
            that holds a run is an error, so that no run is lost or mixed with another.

    Returns:
        The :class:`~fedgraph.run.Run`: a ``dict`` of the metrics (``{'rounds': [...],
        'best': {'round', 'val', 'test'}}``) that also holds the configuration, the trained
        engine and the split (``run.recommend(user, k)``).
    """
    out = Path(out) if out is not None else None
    if out is not None and not (resume or overwrite):
        held = [name for name in ('metrics.json', CHECKPOINT) if (out / name).exists()]
        if held:
            raise FileExistsError(f'{out} holds a run already ({", ".join(held)}): resume it, '
                                  f'overwrite it (--overwrite) or choose another --out')
    if resume and (out is None or not (out / CHECKPOINT).exists()):
        raise FileNotFoundError(f'no {CHECKPOINT} in {out} to resume from')
    runtime.configure(config.threads)
    split = split if split is not None else prepare_split(config)
    engine, generator = build_run(config, split)  # a run that cannot start writes nothing
    if out is None:
        return _run(config, None, engine, generator, split, resume, progress)
    out.mkdir(parents=True, exist_ok=True)
    with folder_lock(out):
        if overwrite and not resume:
            for name in RUN_FILES:
                (out / name).unlink(missing_ok=True)
        config.save(out / 'config.json')
        return _run(config, out, engine, generator, split, resume, progress)


def _run(config: TrainConfig, out: Optional[Path], engine: RoundEngine,
         generator: torch.Generator, split: Split, resume: bool, progress: bool) -> Run:
    """The rounds of :func:`train`, from the start or from ``out``'s checkpoint."""
    history: List[Dict] = []
    pretraining = None
    start_round = 0
    if resume:
        state = torch.load(out / CHECKPOINT, map_location=config.device, weights_only=True)
        engine.load_state_dict(state['engine'])
        generator.set_state(state['generator'])
        history, start_round = state['history'], state['round']
        pretraining = state['pretraining']
        log.info('resuming %s at round %d', out, start_round)
    else:
        pretraining = engine.pretrain(generator, progress)

    end = start_round if stops_early(history, config) else config.rounds  # a stopped run stays
    rounds = range(start_round, end)
    bar = tqdm(rounds, desc=config.algorithm, unit='round', disable=not progress,
               initial=start_round, total=config.rounds)
    saved = start_round if resume else None
    for round_index in bar:
        began = time.perf_counter()
        stats = engine.run_round(generator)
        problem = divergence(stats, engine)
        if problem is not None:
            bar.close()
            kept = ('No checkpoint was written' if saved is None else
                    f'{out / CHECKPOINT} (after round {saved - 1}) is kept' if out else
                    'Nothing was saved')
            raise TrainingDiverged(f'{config.algorithm} diverged in round {round_index}: '
                                   f'{problem}; lower the learning rate (--lr). {kept}')
        record = round_record(round_index, stats, engine)
        record.update(engine.round_report())
        if config.evaluates_after(round_index + 1):
            record.update(evaluate(engine, split))
        record['seconds'] = time.perf_counter() - began
        history.append(record)
        if progress:
            bar.write(summary_line(record, config.select_by))
        stop = stops_early(history, config)
        last = round_index + 1 == config.rounds or stop
        if out is not None and ((round_index + 1) % config.checkpoint_every == 0 or last):
            save_tensors(out / CHECKPOINT, {
                'engine': engine.state_dict(), 'generator': generator.get_state(),
                'history': history, 'round': round_index + 1, 'pretraining': pretraining})
            write_metrics(out, metrics_of(history, pretraining, config))
            saved = round_index + 1
        if stop:
            log.info('%s: no better validation %s in %d evaluations; stopped after round %d '
                     '(best: round %d)', config.algorithm, config.select_by, config.patience,
                     round_index, best_round(history, config.select_by)['round'])
            break
    bar.close()
    exported = engine.export() if out is not None else None
    if exported is not None:
        save_tensors(out / EMBEDDINGS, exported)
    return Run(metrics_of(history, pretraining, config), config, engine, split, out)
