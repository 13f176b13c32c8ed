"""Command line: ``python -m fedgraph <command>`` (also installed as ``fedgraph``).

* ``train``    -- train an algorithm and write ``config.json`` and ``metrics.json``;
* ``summarize`` -- the best rounds of several runs (e.g. seeds) as a table, with mean ± std;
* ``convergence`` -- rounds to reach 95% of the best validation metric, and uniformity;
* ``levels``   -- a PerFedRec++ run's final model with each personalization level alone;
* ``plot``     -- figures of finished runs as PNG files;
* ``recommend`` -- a user's top items from a finished run, in the data's own ids;
* ``export``   -- a user's own model from a finished run, as a small file for its device;
* ``bench``    -- time the vectorized engine against the reference engine, and at scale;
* ``flower``   -- the same algorithms on Flower: local deployment, simulation, benchmark;
* ``attack``   -- item promotion by fake users against each defence: exposure and accuracy;
* ``frontier`` -- the privacy-utility frontier: one configuration under user-level DP at
  several target epsilons, several seeds;
* ``leak``     -- what an honest-but-curious server guesses of a client's items from its
  uploads;
* ``describe`` -- load a data set and print its counts, sparsity and split sizes;
* ``synthesize`` -- write a sparse synthetic data set with planted communities as a LightGCN
  folder (train/valid/test files).
"""
from __future__ import annotations

import os

# The command line's process spins its OpenMP threads briefly (fedgraph.runtime): read once,
# when PyTorch loads its OpenMP runtime, so it is set before anything here imports PyTorch.
os.environ.setdefault('GOMP_SPINCOUNT', '1000')

import argparse
import json
import logging
import math
import sys
from pathlib import Path
from typing import List, Optional

from fedgraph.analysis import mean_std
from fedgraph.cli.flags import (add_config_flags, config_from_args, given_flags,
                                remember_parsers, resumed_config, run_command)
from fedgraph.config import SECTIONS, TrainConfig
from fedgraph.data import leave_one_out_split
from fedgraph.data.source import load_configured
from fedgraph.files import load_metrics

log = logging.getLogger(__name__)


def _train(args: argparse.Namespace) -> None:
    from fedgraph.run import load_config
    from fedgraph.training import train

    if args.plot and not (args.out or args.resume):
        raise ValueError('--plot needs --out (or --resume)')
    if args.resume:
        out = Path(args.resume)
        given = given_flags(args.parser, args.argv[1:])
        if 'out' in given or 'overwrite' in given:
            raise ValueError('--resume continues the run in its own folder: leave out --out '
                             'and --overwrite')
        config, changes = resumed_config(load_config(out), args, given, str(out))
        if changes:
            log.info('resuming %s with %s', out,
                     ', '.join(f'{name} = {value}' for name, value in changes.items()))
        metrics = train(config, out, resume=True, progress=not args.quiet)
    else:
        config = config_from_args(args)
        metrics = train(config, args.out, progress=not args.quiet, overwrite=args.overwrite)
        out = args.out
    if args.plot:
        from fedgraph.viz import plot_runs
        plot_runs([out], Path(out) / 'figures')
    best = metrics['best']
    print(json.dumps({'out': str(out) if out else None, 'best': best}, indent=2))


def _attack(args: argparse.Namespace) -> None:
    from fedgraph.bench import Conditions
    from fedgraph.poisoning import ItemPromotion, attack_table, format_table

    config = config_from_args(args)
    attack = ItemPromotion(num_targets=args.targets, num_fillers=args.fillers,
                           boost=args.boost)
    conditions = Conditions()
    rows = attack_table(config, attack, args.fractions, args.defences, args.seeds, args.out,
                        progress=not args.quiet)
    print(format_table(rows))
    print(conditions)


def _frontier(args: argparse.Namespace) -> None:
    from fedgraph.bench import Conditions
    from fedgraph.privacy.frontier import format_frontier, frontier_table
    from fedgraph.viz.frontier import frontier_metric

    # The DP settings given (--dp-delta, --dp-clip-quantile) hold at every finite epsilon.
    finite = [epsilon for epsilon in args.epsilons if math.isfinite(epsilon)]
    config = config_from_args(args, dp_epsilon=finite[0] if finite else None)
    conditions = Conditions()
    rows = frontier_table(config, args.epsilons, args.seeds, args.out, progress=not args.quiet)
    print(format_frontier(rows, frontier_metric(config.protocol)))
    print(conditions)


def _leak(args: argparse.Namespace) -> None:
    from fedgraph.assemble import prepare_split
    from fedgraph.bench import Conditions
    from fedgraph.privacy.leak import format_leak, leak_rows, leak_table, mechanism

    conditions = Conditions()
    data = {name: getattr(args, name) for name in SECTIONS['data']}
    if args.algorithm is None:
        rows = leak_table(data, args.warmup, args.clients, args.seed)
    else:
        config = config_from_args(args, seed=args.seed,
                                  **mechanism(args.secure_aggregation, args.dp_epsilon))
        name = f'{args.algorithm}, ' + (', '.join(
            f'{key}={value}' for key, value in mechanism(args.secure_aggregation,
                                                          args.dp_epsilon).items()) or 'plain')
        rows = leak_rows(name, config, prepare_split(config), args.warmup, args.clients)
    if args.json:
        for row in rows:
            print(json.dumps({'algorithm': args.algorithm,
                              'secure_aggregation': args.secure_aggregation,
                              'dp_epsilon': args.dp_epsilon, **row}))
        return
    print(format_leak(rows))
    print(conditions)


def _describe(args: argparse.Namespace) -> None:
    from fedgraph.describe import describe, describe_split

    data = load_configured(TrainConfig(
        **{name: getattr(args, name) for name in SECTIONS['data']}, seed=args.seed))
    summary = describe(data)
    summary['leave_one_out'] = describe_split(
        leave_one_out_split(data, eval_negatives=args.eval_negatives, seed=args.seed))
    print(json.dumps(summary, indent=2))


def _synthesize(args: argparse.Namespace) -> None:
    from fedgraph.data import ratio_split, synthetic_interactions, write_lightgcn
    from fedgraph.describe import describe

    if args.out.exists() and any(args.out.iterdir()):
        raise FileExistsError(f'{args.out} is not empty')
    data = synthetic_interactions(
        num_users=args.users, num_items=args.items, mean_degree=args.mean_degree,
        min_degree=args.min_degree, item_exponent=args.item_exponent,
        num_communities=args.communities, affinity=args.affinity, seed=args.seed)
    write_lightgcn(ratio_split(data, args.split_ratios, seed=args.seed), args.out)
    print(json.dumps({'out': str(args.out), **describe(data)}, indent=2))


def _summarize(args: argparse.Namespace) -> None:
    rows = []
    for run in args.runs:
        best = load_metrics(run)['best']
        rows.append((run, best))
    names = args.metrics or sorted(rows[0][1]['test'])
    print('| run | best round | ' + ' | '.join(f'test {n}' for n in names) + ' |')
    print('|---|---|' + '---|' * len(names))
    for run, best in rows:
        print(f"| {run} | {best['round']} | "
              + ' | '.join(f"{best['test'][n]:.4f}" for n in names) + ' |')
    if len(rows) > 1:
        cells = [mean_std([best['test'][name] for _, best in rows]) for name in names]
        print(f'| mean ± std ({len(rows)} runs) | | ' + ' | '.join(cells) + ' |')


def _convergence(args: argparse.Namespace) -> None:
    from fedgraph.analysis import convergence_row

    print(f'| run | rounds to {args.fraction:.0%} of best val {args.metric} | best val | '
          'uniformity user/item before round 0 | at the end |')
    print('|---|---|---|---|---|')
    for run in args.runs:
        row = convergence_row(run, args.metric, args.fraction)
        start, end = row.get('uniformity_start'), row.get('uniformity_end')
        pair = (lambda u: f"{u['user']:.3f} / {u['item']:.3f}" if u else '')
        print(f"| {run} | {row['rounds_to_reach']} | {row['best_val']:.4f} | {pair(start)} | "
              f"{pair(end)} |")


def _recommend(args: argparse.Namespace) -> None:
    from fedgraph.run import load_run

    if args.k < 1:
        raise ValueError(f'-k must be at least 1, got {args.k}')
    run = load_run(args.folder)
    user = _user_id(run, args.user)
    print(json.dumps({'user': user, 'items': run.recommend(user, args.k)}))


def _user_id(run, text: str):
    """A user id from the command line as the run's data writes it (an integer when its
    ids are integers)."""
    if isinstance(run.split.train['user'].raw_id, list):
        return text
    try:
        return int(text)
    except ValueError:
        raise ValueError(f'the user ids of this run are integers, got {text!r}') from None


def _export(args: argparse.Namespace) -> None:
    from fedgraph.run import load_run

    run = load_run(args.folder)
    user = _user_id(run, args.user)
    path = run.export(user, args.out)
    print(json.dumps({'user': user, 'out': str(path), 'bytes': path.stat().st_size}))


def _plot(args: argparse.Namespace) -> None:
    from fedgraph.viz import plot_runs

    for path in plot_runs(args.runs, args.out, method=args.method):
        print(path)


def _levels(args: argparse.Namespace) -> None:
    from fedgraph.analysis import level_table

    for run in args.runs:
        rows = level_table(run)
        metric = 'hr@10' if 'hr@10' in rows[0]['val'] else 'recall@20'
        print(f'{run} (round {rows[0]["round"]}): | (w_global, w_cluster, w_local) | '
              f'val {metric} | test {metric} |')
        for row in rows:
            print(f"| {row['weights']} | {row['val'][metric]:.4f} | {row['test'][metric]:.4f} |")


def _flower(argv: List[str]) -> None:
    from fedgraph.cli.flower import main as flower_main

    try:
        import fedgraph.flower  # noqa: F401  (its ImportError says what to install)
    except ImportError as error:
        raise SystemExit(str(error)) from error
    flower_main(argv)


def _bench(args: argparse.Namespace) -> None:
    from fedgraph import bench

    bench.main(args)


class _Version(argparse.Action):
    """``--version``: the versions, looked up only when asked for."""

    def __call__(self, parser, namespace, values, option_string=None):
        import platform

        import torch
        import torch_geometric

        from fedgraph.version import package_version

        print(f'fedgraph-rec {package_version()} (torch {torch.__version__}, '
              f'torch-geometric {torch_geometric.__version__}, '
              f'python {platform.python_version()})')
        parser.exit()


def add_grid_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of a command that runs a grid of seeds (:func:`fedgraph.grid.resumable_grid`):
    ``--seeds``, ``--out`` and ``--quiet``."""
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument('--out', type=Path, default=None,
                        help='JSON-lines file: each run appended as it ends; runs already in '
                             'it are not run again')
    parser.add_argument('--quiet', action='store_true', help='no progress output')


def add_memory_flag(parser: argparse.ArgumentParser) -> None:
    """``--return-freed-memory``: the command's process leaves glibc's ``malloc`` as it is
    instead of keeping freed memory (:func:`fedgraph.runtime.keep_freed_memory`), whose heap
    keeps blocks that a round's later, larger ones cannot reuse."""
    parser.add_argument('--return-freed-memory', action='store_true',
                        help="leave glibc's malloc as it is (fedgraph.runtime."
                             "keep_freed_memory off): a lower peak at large populations, "
                             'for the page faults it costs')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='fedgraph', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--version', action=_Version, nargs=0,
                        help="print fedgraph-rec's, PyTorch's, PyG's and Python's versions")
    commands = parser.add_subparsers(dest='command', required=True)

    train_parser = commands.add_parser('train', help='train an algorithm',
                                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_config_flags(train_parser)
    train_parser.add_argument('--out', type=Path, default=None,
                              help='output folder for config.json, metrics.json, checkpoints')
    train_parser.add_argument('--resume', default=None, metavar='RUN',
                              help='continue the interrupted run in this folder')
    train_parser.add_argument('--overwrite', action='store_true',
                              help='replace the run already in --out')
    train_parser.add_argument('--quiet', action='store_true', help='no progress output')
    train_parser.add_argument('--plot', action='store_true',
                              help='write the run\'s figures into OUT/figures at the end')
    add_memory_flag(train_parser)
    train_parser.set_defaults(run=_train)

    from fedgraph.poisoning import DEFENCES
    attack_parser = commands.add_parser(
        'attack', help='item promotion by boosted fake users, with and without each defence: '
                       "the targets' exposure (ER@10) and the benign users' accuracy",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_config_flags(attack_parser)
    attack_parser.add_argument('--fractions', type=float, nargs='+', default=[0.0, 0.01, 0.05],
                               help='fake users as shares of the real users (0: no attack)')
    attack_parser.add_argument('--defences', nargs='+', default=list(DEFENCES),
                               choices=DEFENCES, help='the server aggregations to compare')
    attack_parser.add_argument('--boost', type=float, default=30.0,
                               help="the factor on the fake users' target rows")
    attack_parser.add_argument('--targets', type=int, default=1, help='target items')
    attack_parser.add_argument('--fillers', type=int, default=20,
                               help="popular items in a fake user's profile")
    add_grid_flags(attack_parser)
    attack_parser.set_defaults(run=_attack)

    frontier_parser = commands.add_parser(
        'frontier', help='the privacy-utility frontier: the configuration under user-level DP '
                         '(DP-FedAvg) at each target epsilon and seed, and without DP')
    add_config_flags(frontier_parser)
    frontier_parser.add_argument('--epsilons', type=float, nargs='+',
                                 default=[1.0, 2.0, 4.0, 8.0, float('inf')],
                                 help="target epsilons ('inf': no privacy mechanism)")
    add_grid_flags(frontier_parser)
    add_memory_flag(frontier_parser)
    frontier_parser.set_defaults(run=_frontier)

    leak_parser = commands.add_parser(
        'leak', help="an honest-but-curious server's guesses of each client's training items "
                     'from its uploads: precision and recall, by upload and mechanism')
    add_config_flags(leak_parser, sections=('data',))
    leak_parser.set_defaults(algorithm=None)
    leak_parser.add_argument('--secure-aggregation', action='store_true',
                             help='with --algorithm: the server receives only the secure sum '
                                  'of the uploads (SecAgg+, simulated)')
    leak_parser.add_argument('--dp-epsilon', type=float, default=None,
                             help='with --algorithm: user-level DP at this epsilon, '
                                  'distributed under --secure-aggregation, else central')
    leak_parser.add_argument('--json', action='store_true',
                             help='one JSON object per guess (guess, precision, recall, '
                                  'chance) instead of the table')
    leak_parser.add_argument('--warmup', type=int, default=5,
                             help='rounds trained before the round the server watches')
    leak_parser.add_argument('--clients', type=int, default=200,
                             help='clients of the watched round scored')
    leak_parser.add_argument('--seed', type=int, default=0)
    leak_parser.set_defaults(run=_leak)

    describe_parser = commands.add_parser(
        'describe', help='load a data set and print its counts, sparsity and split sizes')
    add_config_flags(describe_parser, sections=('data',), algorithms=False)
    describe_parser.add_argument('--seed', type=int, default=0,
                                 help='seed of the sampled negatives')
    describe_parser.set_defaults(run=_describe)

    synthesize_parser = commands.add_parser(
        'synthesize', help='write a sparse synthetic data set with planted communities as a '
                           'LightGCN folder (train.txt, valid.txt, test.txt)',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    synthesize_parser.add_argument('--out', type=Path, required=True, help='the folder')
    synthesize_parser.add_argument('--users', type=int, default=5000)
    synthesize_parser.add_argument('--items', type=int, default=8000)
    synthesize_parser.add_argument('--mean-degree', type=float, default=28.0,
                                   help='mean interactions per user (power law)')
    synthesize_parser.add_argument('--min-degree', type=int, default=10)
    synthesize_parser.add_argument('--item-exponent', type=float, default=0.8,
                                   help='Zipf exponent of item popularity')
    synthesize_parser.add_argument('--communities', type=int, default=20,
                                   help='planted communities of users and items')
    synthesize_parser.add_argument('--affinity', type=float, default=0.7,
                                   help="fraction of a user's items drawn from its community")
    synthesize_parser.add_argument('--split-ratios', type=float, nargs=3,
                                   default=(0.8, 0.1, 0.1), help='train/valid/test ratios')
    synthesize_parser.add_argument('--seed', type=int, default=0)
    synthesize_parser.set_defaults(run=_synthesize)

    summarize_parser = commands.add_parser(
        'summarize', help="table of the best rounds' test metrics of runs, with mean ± std")
    summarize_parser.add_argument('runs', nargs='+', help='run folders with a metrics.json')
    summarize_parser.add_argument('--metrics', nargs='+', default=None,
                                  help='test metrics to show (default: all)')
    summarize_parser.set_defaults(run=_summarize)

    convergence_parser = commands.add_parser(
        'convergence', help='rounds to reach a fraction of the best validation metric, and '
                            'embedding uniformity, of runs')
    convergence_parser.add_argument('runs', nargs='+')
    convergence_parser.add_argument('--metric', default='ndcg@20')
    convergence_parser.add_argument('--fraction', type=float, default=0.95)
    convergence_parser.set_defaults(run=_convergence)

    levels_parser = commands.add_parser(
        'levels', help="a graph-model run's final model scored with each level alone and "
                       "combined (global, cluster, local)")
    levels_parser.add_argument('runs', nargs='+')
    levels_parser.set_defaults(run=_levels)

    recommend_parser = commands.add_parser(
        'recommend', help="a user's top items from a finished run, in the data's own ids")
    recommend_parser.add_argument('folder', metavar='RUN', help='the run folder')
    recommend_parser.add_argument('--user', required=True, help="the user's id in the data")
    recommend_parser.add_argument('-k', type=int, default=10, help='how many items')
    recommend_parser.set_defaults(run=_recommend)

    export_parser = commands.add_parser(
        'export', help="a user's own model from a finished run, to run on its device")
    export_parser.add_argument('folder', metavar='RUN', help='the run folder')
    export_parser.add_argument('--user', required=True, help="the user's id in the data")
    export_parser.add_argument('--out', type=Path, required=True, help='the file to write')
    export_parser.set_defaults(run=_export)

    plot_parser = commands.add_parser(
        'plot', help='training curves, uniformity, clusters and personalized views of runs, '
                     'as PNG files')
    plot_parser.add_argument('runs', nargs='+')
    plot_parser.add_argument('--out', type=Path, required=True, help='folder for the PNG files')
    plot_parser.add_argument('--method', default='pca', choices=('pca', 'tsne'),
                             help='2-D projection of embeddings')
    plot_parser.set_defaults(run=_plot)

    flower_parser = commands.add_parser(
        'flower', help="run on Flower: a local deployment, Ray simulation, benchmark, app "
                       "folder (pip install 'fedgraph-rec[flower]')")
    flower_parser.add_argument('action', nargs=argparse.REMAINDER,
                               help='deploy, simulate, bench or app (fedgraph flower -h)')

    from fedgraph.bench import add_arguments
    bench_parser = commands.add_parser('bench', help='speed and memory benchmarks')
    add_arguments(bench_parser)
    bench_parser.set_defaults(run=_bench)
    remember_parsers(commands)
    return parser


class _LogFormat(logging.Formatter):
    """The log's format, but for the rounds' summaries, which print as they are."""

    def format(self, record: logging.LogRecord) -> str:
        if record.name == 'fedgraph.server.loop' and record.levelno == logging.INFO:
            return record.getMessage()
        return super().format(record)


def main(argv: Optional[List[str]] = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LogFormat('%(levelname)s %(name)s: %(message)s'))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    logging.getLogger('faiss').setLevel(logging.WARNING)
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ['flower']:  # its own parser: its flags need Flower installed
        _flower(argv[1:])
        return
    args = build_parser().parse_args(argv)
    args.argv = argv
    from fedgraph import runtime
    from fedgraph.server.loop import RunFailed

    # This process is the command's: its rounds reuse their pages, unless
    # --return-freed-memory (a benchmark's workers set it as their own flag says).
    if args.command != 'bench' and not getattr(args, 'return_freed_memory', False):
        runtime.keep_freed_memory()
    try:
        run_command(args)
    except (RunFailed, OSError) as error:  # OSError: a file it cannot read or write
        raise SystemExit(f'error: {error}') from None
