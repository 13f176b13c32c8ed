"""Running an algorithm for a number of rounds: evaluation, best round, checkpoints, outputs.

A run writes ``config.json`` and ``metrics.json`` into its output folder and, every
``checkpoint_every`` rounds, ``checkpoint.pt`` with everything needed to continue: the
engine's shared and private state, the random generator's state and the metrics so far.
:func:`train` with ``resume=True`` continues from there and ends with the same metrics as an
uninterrupted run.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Dict, List, Optional, Union

import torch
from tqdm import tqdm

from fedgraph.algorithms import build_engine
from fedgraph.config import TrainConfig
from fedgraph.data import ClientPartition, leave_one_out_split, predefined_split, ratio_split
from fedgraph.data.hetero import RATES
from fedgraph.data.source import load_configured
from fedgraph.federated.evaluation import Split, evaluate
from fedgraph.files import save_tensors
from fedgraph.records import (best_round, metrics_of, round_record, stops_early, summary_line,
                              write_metrics)
from fedgraph.run import Run

log = logging.getLogger(__name__)

CHECKPOINT = 'checkpoint.pt'
EMBEDDINGS = 'embeddings.pt'


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
    generator = torch.Generator().manual_seed(config.seed)
    engine = build_engine(config, ClientPartition.from_data(split.train), generator,
                          split.known_items())
    return engine, generator


def train(config: TrainConfig, out: Optional[Union[str, Path]] = None, resume: bool = False,
          progress: bool = True, split: Optional[Split] = None,
          overwrite: bool = False) -> Run:
    """Trains ``config.algorithm`` for ``config.rounds`` rounds, or fewer with
    ``config.patience``: the run stops once that many evaluations in a row found no better
    validation metric than the best so far.

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
    split = split if split is not None else prepare_split(config)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        config.save(out / 'config.json')
    engine, generator = build_run(config, split)

    history: List[Dict] = []
    pretraining = None
    start_round = 0
    if resume:
        if out is None or not (out / CHECKPOINT).exists():
            raise FileNotFoundError(f'no {CHECKPOINT} in {out} to resume from')
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
    for round_index in bar:
        began = time.perf_counter()
        stats = engine.run_round(generator)
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
