"""GPFedRec's closeness from a sketch against the exact closeness, on real round tables:
what docs/successors.md's "At scale" figures measure.

    python scripts/gpfedrec_closeness.py --dataset ml-100k --rounds 0 5 30 \
        [--sketch 256 1024 4096 16384] [--threads 1] [--save PREFIX]
    python scripts/gpfedrec_closeness.py --dataset synthetic --users 100000 --rounds 1
    python scripts/gpfedrec_closeness.py --tables PREFIX_1.pt      # a saved round again

Trains GPFedRec (its defaults, seed 0; synthetic: ``bench scale``'s power-law data, items =
users / 20, 1,000 clients a round) and takes the tables its clients upload at each of
``--rounds`` (0 = the first), or reads saved ones (``--tables``). For each round and sketch
size ``m`` it prints, against the exact closeness: under the default rule (neighbours above
the mean closeness) the mean Jaccard overlap of each client's neighbours, the share of
exact edges found (recall) and of found edges that are exact (precision); under
``neighbours = 10`` the share of each client's top 10 that agree; the relative error of the
personalized aggregates, :math:`\\lVert R - R_{exact} \\rVert / \\lVert R_{exact} - \\mu
\\rVert`; and the seconds, CPU seconds and added memory of the server's aggregation
(:func:`~fedgraph.federated.graph_guided.guided_aggregate`: graph and propagation) and of
the graph alone, with the threads and load average (the machine may be shared).
"""
from __future__ import annotations

import argparse
import os
import time
from typing import Dict, List

import torch

from fedgraph.bench import Conditions, reset_peak, status_mib
from fedgraph.federated import graph_guided


def capture(args: argparse.Namespace) -> Dict[int, Dict[str, torch.Tensor]]:
    """The uploaded tables of GPFedRec's rounds ``args.rounds``, by round."""
    from fedgraph.algorithms import build_engine
    from fedgraph.config import TrainConfig
    from fedgraph.data import ClientPartition, synthetic_interactions

    if args.dataset == 'synthetic':
        config = TrainConfig(algorithm='gpfedrec', dataset='synthetic', seed=0,
                             clients_per_round=1000, threads=args.threads)
        partition = ClientPartition.from_data(synthetic_interactions(
            num_users=args.users, num_items=max(1000, args.users // 20), mean_degree=20.0,
            seed=0))
        known = None
    else:
        from fedgraph.assemble import prepare_split

        config = TrainConfig(algorithm='gpfedrec', dataset=args.dataset, seed=0,
                             threads=args.threads)
        split = prepare_split(config)
        partition, known = ClientPartition.from_data(split.train), split.known_items()
    generator = torch.Generator().manual_seed(config.seed)
    engine = build_engine(config, partition, generator, known)
    state = engine.federated.guided
    aggregate, taken, count = state.aggregate, {}, [0]

    def keep(clients, tables):
        if count[0] in args.rounds:
            taken[count[0]] = {'clients': clients.clone(), 'tables': tables.clone()}
            if args.save:
                torch.save(taken[count[0]], f'{args.save}_{count[0]}.pt')
        count[0] += 1
        return aggregate(clients, tables)

    state.aggregate = keep
    for _ in range(max(args.rounds) + 1):
        engine.run_round(generator)
    return taken


def timed(function, *arguments, **keywords):
    """``(result, wall seconds, CPU seconds, added MiB)`` of a call (the peak resident
    memory over what was resident when it began)."""
    reset_peak()
    before, began, cpu = status_mib('VmRSS'), time.perf_counter(), time.process_time()
    out = function(*arguments, **keywords)
    return (out, time.perf_counter() - began, time.process_time() - cpu,
            status_mib('VmHWM') - before)


def compare(tables: torch.Tensor, sketches: List[int]) -> None:
    size = tables.size(0)
    flat = tables.view(size, -1)
    mean = flat.mean(0)
    print(f'{size} clients, tables of {tables.size(1)} x {tables.size(2)} '
          f'(D = {flat.size(1):,}); threads {torch.get_num_threads()}, load average '
          f'{os.getloadavg()[0]:.2f}')
    print('| sketch m | above the mean: Jaccard | recall | precision | top-10 agree '
          '| R error | graph s | aggregate s | aggregate CPU s | aggregate added MiB |')
    print('|---|---|---|---|---|---|---|---|---|---|')
    exact = top = reference = None
    for sketch in [0] + sketches:
        graph, graph_seconds, _, _ = timed(graph_guided.relation_graph, tables, sketch=sketch)
        (personal, _), seconds, cpu, added = timed(graph_guided.guided_aggregate, tables,
                                                   sketch=sketch)
        personal = personal.view(size, -1)
        linked = graph.to_dense() > 0
        nearest = graph_guided.relation_graph(tables, neighbours=10, sketch=sketch).to_dense() > 0
        if sketch == 0:
            exact, top, reference = linked, nearest, personal
            figures = '| exact | 1 | 1 | 1 | 1 | 0 '
        else:
            both = exact & linked
            figures = (f'| {sketch:,} | {float((both.sum(1) / (exact | linked).sum(1)).mean()):.4f} '
                       f'| {float(both.sum() / exact.sum()):.4f} '
                       f'| {float(both.sum() / linked.sum()):.4f} '
                       f'| {float((top & nearest).sum() / top.sum()):.3f} '
                       f'| {float((personal - reference).norm() / (reference - mean).norm()):.4f} ')
        print(figures + f'| {graph_seconds:.3f} | {seconds:.3f} | {cpu:.3f} | {added:,.0f} |',
              flush=True)
        del personal


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--dataset', default='ml-100k', help="ml-100k, ... or 'synthetic'")
    parser.add_argument('--users', type=int, default=100_000, help='synthetic users')
    parser.add_argument('--rounds', type=int, nargs='+', default=[0])
    parser.add_argument('--tables', nargs='+', default=None,
                        help='saved round tables (--save) instead of training')
    parser.add_argument('--save', default=None, help='save each round as PREFIX_ROUND.pt')
    parser.add_argument('--sketch', type=int, nargs='+', default=[256, 1024, 4096, 16384])
    parser.add_argument('--threads', type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    conditions = Conditions()
    if args.tables:
        rounds = {path: torch.load(path) for path in args.tables}
    else:
        rounds = capture(args)
    for name, taken in rounds.items():
        print(f'\nround {name}')
        compare(taken['tables'], args.sketch)
    print(conditions)


if __name__ == '__main__':
    main()
