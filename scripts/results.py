"""The results table of docs/results.md: every method on every data set, several seeds, one table.

    python scripts/results.py run [--data sparse ml-100k-full ml-100k-sampled]
                                  [--methods ...] [--seeds 0 1 2] [--jobs 2]
    python scripts/results.py table

``run`` trains each (data set, method, seed) that has no finished run in
``runs/results/DATA/METHOD-sSEED`` yet (``fedgraph train`` with one thread, ``--jobs`` runs
side by side) and prints the conditions it ran under: threads, load average, CPU and wall
time. ``table`` prints the markdown table of the finished runs: the test metrics at the
best validation round, mean ± std over seeds, and the mean best round.

The sparse data set is the one ``fedgraph synthesize`` writes with its defaults (5,000
users, 8,000 items, 20 planted communities, density 0.33%) into ``datasets/sparse``; run
``python -m fedgraph synthesize --out datasets/sparse`` first.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import List

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / 'runs' / 'results'

#: The data sets: their flags, and what the federated methods share on them.
DATA = {
    'sparse': '--dataset lightgcn --data-path datasets/sparse --protocol full --dim 64 '
              '--rounds 200 --eval-every 10 --patience 5',
    'ml-100k-full': '--dataset ml-100k --protocol full --dim 32 --rounds 100 --eval-every 5',
    'ml-100k-sampled': '--dataset ml-100k --protocol sampled --dim 32 --rounds 100 '
                       '--eval-every 5',
}

#: Every federated method: 256 clients a round, uploads clipped at 0.5 and noised by the
#: clients with Laplace(0, 0.1): the PerFedRec++ setting, like for like.
FEDERATED = '--clients-per-round 256 --clip 0.5 --ldp-scale 0.1'
#: The centralized ceilings: LightGCN's recipe (Adam, batch 2048, one negative) at lr 0.01,
#: which reached LightGCN's lr 0.001 peak in a tenth of the epochs on both data sets
#: (docs/results.md); an evaluation every 2 epochs and a patience of 5.
CENTRALIZED = '--batch-size 2048 --num-negatives 1 --lr 0.01 --eval-every 2 --patience 5'

METHODS = {
    'popular': '--algorithm popular --rounds 1 --patience 0',
    'lightgcn': f'--algorithm lightgcn {CENTRALIZED}',
    'simgcl': f'--algorithm simgcl {CENTRALIZED}',
    'fedmf': f'--algorithm fedmf {FEDERATED}',
    'fedmf (graph recipe)': f'--algorithm fedmf {FEDERATED} --loss bpr --optimizer adam '
                            '--lr 0.25 --item-lr-eta 1 --clip-mode coordinate',
    'fedncf': f'--algorithm fedncf {FEDERATED}',
    'pfedrec': f'--algorithm pfedrec {FEDERATED}',
    'fedlightgcn': '--algorithm fedlightgcn',
    'perfedrec++': '--algorithm perfedrec++',
    'perfedrec++ no pre-training': '--algorithm perfedrec++ --pretrain-rounds 0',
    'perfedrec++ 5 pre-training rounds': '--algorithm perfedrec++ --pretrain-rounds 5',
}


def folder(data: str, method: str, seed: int) -> Path:
    return RUNS / data / f"{re.sub('[^a-z0-9+]+', '-', method.lower()).strip('-')}-s{seed}"


def finished(path: Path) -> bool:
    """Whether ``path`` holds a run that ran all its rounds or stopped early."""
    if not (path / 'metrics.json').exists():
        return False
    metrics = json.loads((path / 'metrics.json').read_text())
    rounds = json.loads((path / 'config.json').read_text())['rounds']
    return bool(metrics['rounds']) and (metrics.get('stopped_early', False)
                                        or metrics['rounds'][-1]['round'] + 1 == rounds)


def command(data: str, method: str, seed: int) -> List[str]:
    flags = DATA[data].split()
    if method == 'popular':  # no embeddings: drop --dim, trains nothing: one round
        at = flags.index('--dim')
        del flags[at:at + 2]
    return [sys.executable, '-m', 'fedgraph', 'train', *flags, *shlex.split(METHODS[method]),
            '--seed', str(seed), '--quiet', '--overwrite', '--out',
            str(folder(data, method, seed))]


def run(args: argparse.Namespace) -> None:
    jobs = [(data, method, seed) for data in args.data for method in args.methods
            for seed in args.seeds if not finished(folder(data, method, seed))]
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1'}
    load_before, began = os.getloadavg()[0], time.perf_counter()

    def one(job) -> None:
        out = folder(*job)
        if finished(out):  # by another runner since this one started
            return
        out.mkdir(parents=True, exist_ok=True)
        with open(out.parent / f'{out.name}.log', 'w') as log:
            code = subprocess.run(command(*job), cwd=ROOT, env=env, stdout=log,
                                  stderr=subprocess.STDOUT).returncode
        print(f"{'done' if code == 0 else f'FAILED ({code})'}: {out}", flush=True)

    print(f'{len(jobs)} runs, {args.jobs} side by side, one thread each', flush=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(one, jobs))
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f'conditions: {args.jobs} runs side by side with 1 thread each; load average '
          f'{load_before:.2f} at the start, {os.getloadavg()[0]:.2f} at the end; CPU time '
          f'{usage.ru_utime + usage.ru_stime:.0f} s; wall time '
          f'{time.perf_counter() - began:.0f} s')


def table(args: argparse.Namespace) -> None:
    for data in args.data:
        metrics = ('hr@10', 'ndcg@10') if data.endswith('sampled') else ('recall@20', 'ndcg@20')
        print(f'\n{data}\n')
        print(f'| method | seeds | test {metrics[0]} | test {metrics[1]} | best round |')
        print('|---|---|---|---|---|')
        for method in args.methods:
            bests = [json.loads((folder(data, method, seed) / 'metrics.json').read_text())
                     ['best'] for seed in args.seeds if finished(folder(data, method, seed))]
            if not bests:
                continue
            cells = [_mean_std([best['test'][name] for best in bests]) for name in metrics]
            rounds = statistics.mean(best['round'] for best in bests)
            print(f'| {method} | {len(bests)} | {cells[0]} | {cells[1]} | {rounds:.0f} |')


def _mean_std(values: List[float]) -> str:
    if len(values) == 1:
        return f'{values[0]:.4f}'
    return f'{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}'


def main(argv: List[str] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('action', choices=('run', 'table'))
    parser.add_argument('--data', nargs='+', default=list(DATA), choices=list(DATA))
    parser.add_argument('--methods', nargs='+', default=list(METHODS), choices=list(METHODS))
    parser.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
    parser.add_argument('--jobs', type=int, default=2, help='runs side by side')
    args = parser.parse_args(argv)
    {'run': run, 'table': table}[args.action](args)


if __name__ == '__main__':
    main()
