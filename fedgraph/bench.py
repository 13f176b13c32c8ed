"""Speed and memory benchmarks: ``python -m fedgraph bench engines|scale``.

* ``engines`` -- the vectorized engine against the reference engine (one model per client)
  on the same data, seed and plans, PFedRec's defaults: seconds per round (training and
  evaluation) and peak memory of each, and the ratio.
* ``scale`` -- the vectorized engine on synthetic power-law data from 1k to 1M users with
  partial participation: seconds per training round and peak memory at each size.

Every measurement runs in a fresh subprocess so that its peak resident memory is its own.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Optional

import torch

from fedgraph.algorithms import algorithm_names, build_engine
from fedgraph.config import TrainConfig
from fedgraph.data import ClientPartition, synthetic_interactions
from fedgraph.federated.evaluation import evaluate


class Conditions:
    """The conditions of a measurement, from its creation to when it is printed: the
    threads, the load average (1 minute) at both ends, wall and CPU time of this process."""

    def __init__(self):
        self.load = os.getloadavg()[0]
        self.wall = time.perf_counter()
        self.cpu = time.process_time()

    def __str__(self) -> str:
        return (f'threads {torch.get_num_threads()}, load average {self.load:.2f} at the '
                f'start and {os.getloadavg()[0]:.2f} at the end, '
                f'{time.perf_counter() - self.wall:.1f} s wall, '
                f'{time.process_time() - self.cpu:.1f} s CPU')


def _peak_memory_mb(device: str) -> float:
    if device.startswith('cuda'):
        return torch.cuda.max_memory_allocated() / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sync(device: str) -> None:
    if device.startswith('cuda'):
        torch.cuda.synchronize()


def measure_engine(config: TrainConfig, partition: ClientPartition, rounds: int,
                   split=None, known: Optional[ClientPartition] = None) -> Dict[str, float]:
    """Runs one warm-up round, then ``rounds`` timed rounds, evaluating after each when a
    ``split`` is given; returns the median seconds of training and of evaluation."""
    generator = torch.Generator().manual_seed(config.seed)
    engine = build_engine(config, partition, generator, known)
    train_seconds, eval_seconds = [], []
    for index in range(rounds + 1):
        _sync(config.device)
        began = time.perf_counter()
        engine.run_round(generator)
        _sync(config.device)
        trained = time.perf_counter()
        if split is not None:
            evaluate(engine, split)
            _sync(config.device)
        if index:  # the first round warms up
            train_seconds.append(trained - began)
            eval_seconds.append(time.perf_counter() - trained)
    return {'users': partition.num_clients, 'items': partition.num_items,
            'interactions': partition.num_interactions,
            'train_seconds': statistics.median(train_seconds),
            'eval_seconds': statistics.median(eval_seconds),
            'peak_memory_mb': _peak_memory_mb(config.device)}


def _run_worker(payload: Dict) -> Dict:
    command = [sys.executable, '-m', 'fedgraph', 'bench', 'worker', json.dumps(payload)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f'benchmark worker failed:\n{result.stderr[-4000:]}')
    return json.loads(result.stdout.strip().splitlines()[-1])


def _worker(args: argparse.Namespace) -> None:
    from fedgraph.training import prepare_split

    payload = json.loads(args.payload)
    config = TrainConfig(**payload['config'])
    if 'synthetic' in payload:
        partition = ClientPartition.from_data(synthetic_interactions(**payload['synthetic']))
        result = measure_engine(config, partition, payload['rounds'])
    else:
        split = prepare_split(config)
        result = measure_engine(config, ClientPartition.from_data(split.train),
                                payload['rounds'], split, split.known_items())
    print(json.dumps(result))


def _engines(args: argparse.Namespace) -> List[Dict]:
    rows = []
    for engine in ('vectorized', 'reference'):
        config = dict(algorithm=args.algorithm, dataset=args.dataset, seed=args.seed,
                      device=args.device, engine=engine)
        if args.clients_per_round:
            config['clients_per_round'] = args.clients_per_round
        result = _run_worker({'config': config, 'rounds': args.rounds})
        result['engine'] = engine
        rows.append(result)
        print(f"{engine:>10}: {result['train_seconds']:.3f} s/round training, "
              f"{result['eval_seconds']:.3f} s evaluation, "
              f"peak {result['peak_memory_mb']:.0f} MiB", flush=True)
    fast, slow = rows
    total = {row['engine']: row['train_seconds'] + row['eval_seconds'] for row in rows}
    print("\n| engine | s/round (train) | s/round (eval) | peak memory (MiB) |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['engine']} | {row['train_seconds']:.3f} | {row['eval_seconds']:.3f} | "
              f"{row['peak_memory_mb']:.0f} |")
    print(f"\nspeed-up (train + eval): {total['reference'] / total['vectorized']:.1f}x; "
          f"training alone: {slow['train_seconds'] / fast['train_seconds']:.1f}x")
    return rows


def _scale(args: argparse.Namespace) -> List[Dict]:
    rows = []
    print('| users | items | interactions | clients/round | s/round | peak memory (MiB) |')
    print('|---|---|---|---|---|---|')
    for users in args.sizes:
        items = max(1000, users // 20)
        count = min(args.clients_per_round, users)
        config = dict(dataset='synthetic', seed=args.seed, device=args.device,
                      clients_per_round=count)
        synthetic = dict(num_users=users, num_items=items, mean_degree=args.mean_degree,
                         seed=args.seed)
        result = _run_worker({'config': config, 'rounds': args.rounds, 'synthetic': synthetic})
        rows.append(result)
        print(f"| {users:,} | {items:,} | {result['interactions']:,} | {count:,} | "
              f"{result['train_seconds']:.3f} | {result['peak_memory_mb']:.0f} |", flush=True)
    return rows


def _export(args: argparse.Namespace) -> List[Dict]:
    """Exports users of a finished run and times what a device does with the file: load it
    and rank every item for a top-10 (median of ``--repeats`` calls); prints the medians over
    the users and the conditions (threads, load average, CPU and wall time)."""
    import tempfile
    from pathlib import Path

    from fedgraph.export import DeviceModel
    from fedgraph.run import load_run

    run = load_run(args.folder)
    raw = run.split.train['user'].raw_id
    users = raw[:args.users].tolist() if isinstance(raw, torch.Tensor) else raw[:args.users]
    rows = []
    conditions = Conditions()
    with tempfile.TemporaryDirectory() as folder:
        for user in users:
            path = run.export(user, Path(folder) / f'{user}.pt')
            started = time.perf_counter()
            model = DeviceModel.load(path)
            load_seconds = time.perf_counter() - started
            latencies = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                model.recommend(10)
                latencies.append(time.perf_counter() - started)
            rows.append({'user': user, 'bytes': path.stat().st_size,
                         'load_ms': 1e3 * load_seconds,
                         'top10_ms': 1e3 * statistics.median(latencies)})
    print(f'{run.config.algorithm} ({args.folder}): {len(rows)} users; {conditions}')
    print('| file size (KiB) | load (ms) | top-10 (ms) |\n|---|---|---|')
    print(f"| {statistics.median(r['bytes'] for r in rows) / 1024:.1f} | "
          f"{statistics.median(r['load_ms'] for r in rows):.2f} | "
          f"{statistics.median(r['top10_ms'] for r in rows):.2f} |")
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    kinds = parser.add_subparsers(dest='kind', required=True)
    engines = kinds.add_parser('engines', help='vectorized vs reference engine')
    engines.add_argument('--dataset', default='ml-100k')
    engines.add_argument('--algorithm', default='pfedrec', choices=algorithm_names())
    engines.add_argument('--clients-per-round', type=int, default=None,
                         help="default: the algorithm's (pfedrec: all; perfedrec++: 256)")
    engines.add_argument('--rounds', type=int, default=3, help='timed rounds (after 1 warm-up)')
    scale = kinds.add_parser('scale', help='vectorized engine from 1k to 1M users')
    scale.add_argument('--sizes', type=int, nargs='+',
                       default=[1_000, 10_000, 100_000, 1_000_000])
    scale.add_argument('--clients-per-round', type=int, default=1000)
    scale.add_argument('--mean-degree', type=float, default=20.0)
    scale.add_argument('--rounds', type=int, default=5, help='timed rounds (after 1 warm-up)')
    export = kinds.add_parser('export', help="a finished run's users as device files: size, "
                                              'load and top-10 time')
    export.add_argument('folder', metavar='RUN', help='the run folder')
    export.add_argument('--users', type=int, default=20, help='how many users to export')
    export.add_argument('--repeats', type=int, default=50, help='top-10 calls timed per user')
    export.add_argument('--out', default=None, help='also write the rows as JSON here')
    for sub in (engines, scale):
        sub.add_argument('--seed', type=int, default=0)
        sub.add_argument('--device', default='cpu')
        sub.add_argument('--out', default=None, help='also write the rows as JSON here')
    worker = kinds.add_parser('worker', help=argparse.SUPPRESS)
    worker.add_argument('payload')


def main(args: argparse.Namespace) -> None:
    if args.kind == 'worker':
        _worker(args)
        return
    rows = {'engines': _engines, 'scale': _scale, 'export': _export}[args.kind](args)
    if args.out:
        with open(args.out, 'w') as handle:
            json.dump(rows, handle, indent=1)
