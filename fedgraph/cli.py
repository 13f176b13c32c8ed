"""Command line: ``python -m fedgraph <command>`` (also installed as ``fedgraph``).

* ``train``    -- train an algorithm and write ``config.json`` and ``metrics.json``;
* ``summarize`` -- the best rounds of several runs (e.g. seeds) as a table, with mean ± std;
* ``convergence`` -- rounds to reach 95% of the best validation metric, and uniformity;
* ``levels``   -- a PerFedRec++ run's final model with each personalization level alone;
* ``plot``     -- figures of finished runs as PNG files;
* ``bench``    -- time the vectorized engine against the reference engine, and at scale;
* ``flower``   -- the same algorithms on Flower: local deployment, simulation, benchmark;
* ``describe`` -- load a data set and print its counts, sparsity and split sizes.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import statistics
import sys
from pathlib import Path
from typing import List, Optional

from fedgraph.config import TrainConfig
from fedgraph.data import DATASETS, leave_one_out_split, load_dataset

_HELP = {
    'algorithm': 'pfedrec, fedmf, mf (centralized), fedlightgcn or perfedrec++',
    'dataset': f'one of {", ".join(DATASETS)}',
    'data_root': 'folder of the raw data files (default: datasets/)',
    'protocol': "'sampled' (leave-one-out, 99 negatives) or 'full' (ratio split, all items)",
    'split_ratios': 'train/val/test ratios of the full-ranking protocol',
    'split_mode': "'random' or 'temporal' ratio split",
    'eval_negatives': 'sampled negatives per held-out item',
    'item_lr_eta': 'item learning rate = lr x num_items x eta (pfedrec: 80, fedmf: 1)',
    'lr': 'learning rate of the private head or user embedding (pfedrec: 0.1, fedmf: 1)',
    'central_lr': 'Adam learning rate of centralized MF',
    'client_ratio': 'fraction of clients per round (default: all)',
    'clients_per_round': 'number of clients per round (instead of --client-ratio)',
    'aggregation': "'mean' (unweighted FedAvg) or 'weighted' (by sample count)",
    'clip': 'L2 bound of each uploaded update (0: none; graph algorithms: 0.5)',
    'ldp_scale': 'Laplace noise scale on uploads (needs --clip; graph algorithms: 0.1)',
    'dual_personalization': "on/off: clients keep and score with their fine-tuned item rows",
    'num_layers': 'federated GNN layers (fedlightgcn, perfedrec++)',
    'pretrain_rounds': 'contrastive pre-training rounds (perfedrec++: 50)',
    'pretrain_lr': 'Adam learning rate of contrastive pre-training',
    'cl_weight': 'weight lambda of the InfoNCE loss',
    'cl_temperature': 'InfoNCE temperature',
    'simgcl_eps': 'SimGCL noise magnitude in contrastive views',
    'client_dropout': 'fraction of clients absent from a contrastive view',
    'pseudo_ratio': 'pseudo-items a client adds, as a fraction of its items',
    'num_clusters': 'k of FAISS k-means over clients (perfedrec++: 5; 0: none)',
    'cluster_every': 'rounds between two clusterings',
    'level_weights': 'weights of the global, cluster and local scores (perfedrec++: 1 1 1)',
    'eval_every': 'evaluate every N rounds',
    'checkpoint_every': 'save a checkpoint every N rounds',
    'device': 'cpu or cuda',
    'engine': "'vectorized' or 'reference' (one model per client, for checking)",
    'client_streams': 'on/off: each client draws its randomness from its own stream, as on '
                      'devices (the Flower apps do)',
}


def _on_off(text: str) -> bool:
    if text.lower() in ('on', 'true', 'yes', '1'):
        return True
    if text.lower() in ('off', 'false', 'no', '0'):
        return False
    raise argparse.ArgumentTypeError(f"expected on or off, got {text!r}")


_OPTIONAL_TYPES = {'data_root': str, 'client_ratio': float, 'clients_per_round': int,
                   'clip': float, 'lr': float, 'item_lr_eta': float, 'ldp_scale': float,
                   'dual_personalization': _on_off, 'pretrain_rounds': int, 'num_clusters': int,
                   'client_streams': _on_off}
_TRIPLES = ('split_ratios', 'level_weights')


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """A flag for every :class:`TrainConfig` field (``--client-ratio`` for ``client_ratio``)."""
    for field in dataclasses.fields(TrainConfig):
        flag = '--' + field.name.replace('_', '-')
        kind = _OPTIONAL_TYPES.get(field.name, type(field.default))
        if field.name in _TRIPLES:
            default = None if field.default is None else list(field.default)
            parser.add_argument(flag, type=float, nargs=3, default=default,
                                help=_HELP[field.name])
            continue
        parser.add_argument(flag, type=kind, default=field.default,
                            help=_HELP.get(field.name, field.name.replace('_', ' ')))


def config_from_args(args: argparse.Namespace, **overrides) -> TrainConfig:
    """The :class:`TrainConfig` of the flags :func:`add_config_flags` added."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{**values, **overrides})


def _train(args: argparse.Namespace) -> None:
    from fedgraph.training import train

    if args.plot and not (args.out or args.resume):
        raise SystemExit('--plot needs --out (or --resume)')
    if args.resume:
        out = Path(args.resume)
        config = TrainConfig.load(out / 'config.json')
        metrics = train(config, out, resume=True, progress=not args.quiet)
    else:
        config = config_from_args(args)
        metrics = train(config, args.out, progress=not args.quiet)
        out = args.out
    if args.plot:
        from fedgraph.viz import plot_runs
        plot_runs([out], Path(out) / 'figures')
    best = metrics['best']
    print(json.dumps({'out': str(out) if out else None, 'best': best}, indent=2))


def _describe(args: argparse.Namespace) -> None:
    from fedgraph.describe import describe, describe_split

    data = load_dataset(args.dataset, root=args.root)
    summary = describe(data)
    summary['leave_one_out'] = describe_split(
        leave_one_out_split(data, num_negatives=args.num_negatives, seed=args.seed))
    print(json.dumps(summary, indent=2))


def _summarize(args: argparse.Namespace) -> None:
    rows = []
    for run in args.runs:
        best = json.loads((Path(run) / 'metrics.json').read_text())['best']
        rows.append((run, best))
    names = args.metrics or sorted(rows[0][1]['test'])
    print('| run | best round | ' + ' | '.join(f'test {n}' for n in names) + ' |')
    print('|---|---|' + '---|' * len(names))
    for run, best in rows:
        print(f"| {run} | {best['round']} | "
              + ' | '.join(f"{best['test'][n]:.4f}" for n in names) + ' |')
    if len(rows) > 1:
        cells = []
        for name in names:
            values = [best['test'][name] for _, best in rows]
            cells.append(f'{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}')
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
    try:
        from fedgraph.flower.cli import main as flower_main
    except ImportError as error:
        raise SystemExit(str(error)) from error
    flower_main(argv)


def _bench(args: argparse.Namespace) -> None:
    from fedgraph import bench

    bench.main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='fedgraph', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest='command', required=True)

    train_parser = commands.add_parser('train', help='train an algorithm',
                                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_config_flags(train_parser)
    train_parser.add_argument('--out', type=Path, default=None,
                              help='output folder for config.json, metrics.json, checkpoints')
    train_parser.add_argument('--resume', default=None, metavar='RUN',
                              help='continue the interrupted run in this folder')
    train_parser.add_argument('--quiet', action='store_true', help='no progress output')
    train_parser.add_argument('--plot', action='store_true',
                              help='write the run\'s figures into OUT/figures at the end')
    train_parser.set_defaults(run=_train)

    describe_parser = commands.add_parser(
        'describe', help='load a data set and print its counts, sparsity and split sizes')
    describe_parser.add_argument('--dataset', default='ml-100k', choices=DATASETS)
    describe_parser.add_argument('--root', default=None, help='data root (default: datasets/)')
    describe_parser.add_argument('--num-negatives', type=int, default=99)
    describe_parser.add_argument('--seed', type=int, default=0)
    describe_parser.set_defaults(run=_describe)

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
    return parser


def main(argv: Optional[List[str]] = None) -> None:
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s',
                        stream=sys.stderr)
    logging.getLogger('faiss').setLevel(logging.WARNING)
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ['flower']:  # its own parser: its flags need Flower installed
        _flower(argv[1:])
        return
    args = build_parser().parse_args(argv)
    args.run(args)
