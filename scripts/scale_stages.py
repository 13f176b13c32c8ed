"""The memory of each stage of a run at scale: what docs/scale.md's stage tables measure.

    python scripts/scale_stages.py --users 1000000 [--algorithm perfedrec++]
                                   [--keep-freed-memory] [--pretrain-rounds N] [--rounds 2]
                                   [--threads 2] [--partition FILE]

Builds the engine as ``fedgraph bench scale`` does (synthetic power-law data, mean degree
20, items = users / 20, 1,000 clients a round), stage by stage: the data, the client
partition (the data freed), the engine (model, enrollment graph with pseudo-items, first
user uploads), the normalized adjacency of a graph model, ``--pretrain-rounds`` rounds of
PerFedRec++'s contrastive pre-training, then ``--rounds`` rounds. Each stage prints the
process's resident memory after it and the peak it reached (MiB, Linux's ``VmRSS`` and
``VmHWM``, the peak reset before each stage through ``/proc/self/clear_refs``) and its
wall and CPU seconds; the conditions (threads, load average, CPU and wall time) close the
output. Freed memory is returned to the system unless ``--keep-freed-memory``
(:func:`fedgraph.runtime.keep_freed_memory`, from the engine's construction on, as the
benchmark's workers do). ``--partition FILE`` keeps the partition in ``FILE`` (written on
the first run, read on the next ones: data generation takes minutes at 10^7 users).
"""
from __future__ import annotations

import argparse
import gc
import time
from pathlib import Path

import torch

from fedgraph import runtime
from fedgraph.algorithms import build_engine
from fedgraph.bench import Conditions, reset_peak, status_mib
from fedgraph.config import TrainConfig
from fedgraph.data import ClientPartition, synthetic_interactions


class Stage:
    """Times a stage and reports the resident memory after it and the peak within it."""

    def __init__(self, name: str):
        self.name = name

    def __enter__(self) -> 'Stage':
        reset_peak()
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        print(f'| {self.name} | {status_mib("VmHWM"):,.0f} | {status_mib("VmRSS"):,.0f} '
              f'| {time.perf_counter() - self.wall:.1f} | {time.process_time() - self.cpu:.1f} |',
              flush=True)


def partition_of(users: int, cache: Path = None) -> ClientPartition:
    """The synthetic data's client partition, from ``cache`` when it holds one."""
    if cache is not None and cache.exists():
        saved = torch.load(cache)
        return ClientPartition(saved['ptr'], saved['col'], saved['num_items'])
    partition = ClientPartition.from_data(synthetic_interactions(
        num_users=users, num_items=max(1000, users // 20), mean_degree=20.0, seed=0))
    if cache is not None:
        torch.save({'ptr': partition.ptr, 'col': partition.col,
                    'num_items': partition.num_items}, cache)
    return partition


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--users', type=int, required=True)
    parser.add_argument('--algorithm', default='perfedrec++')
    parser.add_argument('--keep-freed-memory', action='store_true')
    parser.add_argument('--pretrain-rounds', type=int, default=0)
    parser.add_argument('--rounds', type=int, default=2)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--partition', type=Path, default=None)
    args = parser.parse_args()
    conditions = Conditions()
    runtime.set_threads(args.threads)
    print(f'{args.algorithm}, {args.users:,} users, freed memory '
          f'{"kept" if args.keep_freed_memory else "returned"}')
    print('| stage | peak (MiB) | resident after (MiB) | wall s | CPU s |\n|---|---|---|---|---|')
    with Stage('client partition (data generated and freed)'):
        partition = partition_of(args.users, args.partition)
        gc.collect()
    if args.keep_freed_memory:
        runtime.keep_freed_memory()
    settings = {'pretrain_rounds': args.pretrain_rounds} if args.pretrain_rounds else {}
    config = TrainConfig(algorithm=args.algorithm, dataset='synthetic', seed=0,
                         clients_per_round=1000, threads=args.threads, **settings)
    generator = torch.Generator().manual_seed(0)
    with Stage('engine built: model, enrollment graph, first user uploads'):
        engine = build_engine(config, partition, generator, None)
    graph = getattr(engine, 'graph', None)
    if graph is not None:
        with Stage('normalized adjacency'):
            graph.normalized_adjacency()
    if args.pretrain_rounds:
        with Stage(f'contrastive pre-training, {args.pretrain_rounds} rounds'):
            engine.pretrain(generator, progress=False)
    for index in range(args.rounds):
        with Stage(f'round {index + 1}'):
            engine.run_round(generator)
    print(conditions)


if __name__ == '__main__':
    main()
