"""Running an algorithm for a number of rounds: evaluation, best round, checkpoints, outputs.

A run writes ``config.json`` and ``metrics.json`` into its output folder and, every
``checkpoint_every`` rounds, ``checkpoint.pt`` with everything needed to continue: the
engine's shared and private state, the random generator's state and the metrics so far.
:func:`train` with ``resume=True`` continues from there and ends with the same metrics as an
uninterrupted run.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Dict, List, Optional, Union

import torch
from tqdm import tqdm

from fedgraph.algorithms import build_engine
from fedgraph.config import TrainConfig
from fedgraph.data import ClientPartition, leave_one_out_split, load_dataset, ratio_split
from fedgraph.federated.evaluation import evaluate

log = logging.getLogger(__name__)

CHECKPOINT = 'checkpoint.pt'
EMBEDDINGS = 'embeddings.pt'


def prepare_split(config: TrainConfig):
    """Loads the data set and splits it under the configured protocol."""
    data = load_dataset(config.dataset, root=config.data_root)
    if config.protocol == 'sampled':
        return leave_one_out_split(data, num_negatives=config.eval_negatives, seed=config.seed)
    return ratio_split(data, config.split_ratios, mode=config.split_mode, seed=config.seed)


def build_run(config: TrainConfig, split):
    """The engine of a run and its random generator, seeded by ``config.seed`` (the engine's
    initialization draws from it first)."""
    generator = torch.Generator().manual_seed(config.seed)
    engine = build_engine(config, ClientPartition.from_data(split.train), generator,
                          split.known_items())
    return engine, generator


def best_round(history: List[Dict], select_by: str) -> Optional[Dict]:
    """The evaluated round with the highest validation ``select_by``; a later round wins a
    tie (the PFedRec code's ``>=``)."""
    best = None
    for record in history:
        if 'val' in record and (best is None or record['val'][select_by] >= best['val'][select_by]):
            best = record
    if best is None:
        return None
    return {'round': best['round'], 'val': best['val'], 'test': best['test']}


def summary_line(record: Dict, select_by: str) -> str:
    """One round's record as the line the progress output prints."""
    text = f"round {record['round']:>3}  loss {record['train_loss']:.4f}"
    if 'val' in record:
        metric = select_by
        other = 'ndcg@10' if select_by == 'hr@10' else 'ndcg@20'
        text += (f"  val {metric} {record['val'][metric]:.4f} {other} {record['val'][other]:.4f}"
                 f"  test {metric} {record['test'][metric]:.4f} {other} {record['test'][other]:.4f}")
    return text + f"  {record['seconds']:.2f}s"


def train(config: TrainConfig, out: Optional[Union[str, Path]] = None, resume: bool = False,
          progress: bool = True, split=None) -> Dict:
    """Trains ``config.algorithm`` for ``config.rounds`` rounds.

    Args:
        config: the run's configuration.
        out: the output folder (``config.json``, ``metrics.json``, ``checkpoint.pt``);
            ``None`` keeps everything in memory.
        resume: continue from ``out/checkpoint.pt``.
        progress: show a progress bar over rounds and a one-line summary per round.
        split: an already prepared split (default: :func:`prepare_split`).

    Returns:
        The metrics: ``{'rounds': [...], 'best': {'round', 'val', 'test'}}``.
    """
    out = Path(out) if out is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        config.save(out / 'config.json')
    split = split if split is not None else prepare_split(config)
    engine, generator = build_run(config, split)

    history: List[Dict] = []
    pretraining = None
    start_round = 0
    if resume:
        if out is None or not (out / CHECKPOINT).exists():
            raise FileNotFoundError(f'no {CHECKPOINT} in {out} to resume from')
        state = torch.load(out / CHECKPOINT, map_location=config.device, weights_only=False)
        engine.load_state_dict(state['engine'])
        generator.set_state(state['generator'])
        history, start_round = state['history'], state['round']
        pretraining = state['pretraining']
        log.info('resuming %s at round %d', out, start_round)
    elif hasattr(engine, 'pretrain'):
        pretraining = (engine.pretrain(config.pretrain_rounds, generator, progress)
                       if config.pretrain_rounds else {'rounds': 0, 'loss': []})
        pretraining['uniformity'] = engine.uniformity()

    rounds = range(start_round, config.rounds)
    bar = tqdm(rounds, desc=config.algorithm, unit='round', disable=not progress,
               initial=start_round, total=config.rounds)
    for round_index in bar:
        began = time.perf_counter()
        stats = engine.run_round(generator)
        record = round_record(round_index, stats, engine)
        if hasattr(engine, 'uniformity'):
            record['uniformity'] = engine.uniformity()
        if config.evaluates_after(round_index + 1):
            record.update(evaluate(engine, split))
        record['seconds'] = time.perf_counter() - began
        history.append(record)
        if progress:
            bar.write(summary_line(record, config.select_by))
        last = round_index + 1 == config.rounds
        if out is not None and ((round_index + 1) % config.checkpoint_every == 0 or last):
            torch.save({'engine': engine.state_dict(), 'generator': generator.get_state(),
                        'history': history, 'round': round_index + 1,
                        'pretraining': pretraining}, out / CHECKPOINT)
            write_metrics(out, metrics_of(history, pretraining, config))
    bar.close()
    if out is not None and hasattr(engine, 'export'):
        torch.save(engine.export(), out / EMBEDDINGS)
    return metrics_of(history, pretraining, config)


def round_record(round_index: int, stats, engine) -> Dict:
    """A round's ``metrics.json`` record before evaluation: its loss, clients, bytes and LDP
    budget. ``epsilon_spent`` is the budget spent so far by the client that uploaded most
    often (``engine.participation`` counts each client's uploads; sequential composition,
    every upload spending ``stats.epsilon`` per coordinate)."""
    spent = None if stats.epsilon is None else stats.epsilon * int(engine.participation.max())
    return {'round': round_index, 'train_loss': stats.loss, 'clients': stats.num_clients,
            'upload_bytes_per_client': stats.upload_bytes,
            'download_bytes_per_client': stats.download_bytes,
            'epsilon': stats.epsilon, 'epsilon_spent': spent}


def metrics_of(history: List[Dict], pretraining: Optional[Dict],
               config: TrainConfig) -> Dict:
    """The content of ``metrics.json``: every round's record and the best round."""
    metrics = {'rounds': history, 'best': best_round(history, config.select_by)}
    if pretraining is not None:
        metrics['pretraining'] = pretraining
    return metrics


def write_metrics(out: Path, metrics: Dict) -> None:
    (out / 'metrics.json').write_text(json.dumps(metrics, indent=1) + '\n')
