"""Times GPFedRec's server step (``guided_aggregate``: ``relation_graph`` and ``propagate``)
on one round of 1,000 clients' float32 tables of 5,000 items x d 32, the round of
``bench scale --sizes 100000`` without the rest of the simulation (whose tables of every
client that has trained take ~11 GiB).

The tables are built as the vectorized engine builds a round's (``dense_tables``): each
client's aggregate (the initial table, or for a share ``--returning`` an earlier round's
aggregate) drawn towards the global table by :math:`(1 - \\beta)^K`, :math:`\\beta = 1/2`,
:math:`K` of 1 to 5 steps, and about 100 trained rows, popular items more often. Prints the
best of ``--repeats`` calls of each, the process's resident memory before the step and its
peak, and the load average::

    GOMP_SPINCOUNT=1000 python scripts/gpfedrec_server_step.py [--neighbours 10]

(``GOMP_SPINCOUNT=1000``: the spin the command line sets before PyTorch loads.)
"""
import argparse
import resource
import time

import torch

from fedgraph import runtime
from fedgraph.federated import graph_guided


def round_tables(clients: int, items: int, dim: int, returning: float,
                 seed: int) -> torch.Tensor:
    """``[B, I, d]`` a round's uploaded tables, written client by client."""
    generator = torch.Generator().manual_seed(seed)
    initial = torch.randn(items, dim, generator=generator)
    base = initial + 0.1 * torch.randn(items, dim, generator=generator)
    popularity = 1 / torch.arange(1, items + 1, dtype=torch.float64)
    tables = torch.empty(clients, items, dim)
    for client in range(clients):
        target = (base + 0.1 * torch.randn(items, dim, generator=generator)
                  if torch.rand(1, generator=generator) < returning else initial)
        decay = 0.5 ** int(torch.randint(1, 6, (1,), generator=generator))
        tables[client] = target + decay * (base - target)
        rows = torch.multinomial(popularity, 100, replacement=True, generator=generator)
        rows = torch.unique(rows)
        tables[client, rows] += 0.3 * torch.randn(rows.numel(), dim, generator=generator)
    return tables


def best_seconds(call, repeats: int) -> float:
    """The shortest of ``repeats`` calls' wall times (each result dropped at once)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times)


def resident_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_average() -> str:
    with open('/proc/loadavg') as handle:
        return ' '.join(handle.read().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--clients', type=int, default=1000)
    parser.add_argument('--items', type=int, default=5000)
    parser.add_argument('--dim', type=int, default=32)
    parser.add_argument('--neighbours', type=int, default=0)
    parser.add_argument('--returning', type=float, default=0.01)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    runtime.set_threads(args.threads)
    import fedgraph.nn.gnn  # noqa: F401  imports PyTorch Geometric before the timing
    tables = round_tables(args.clients, args.items, args.dim, args.returning, args.seed)
    flat = tables.view(args.clients, -1)
    rule = dict(neighbours=args.neighbours)
    graph_guided.relation_graph(flat[:50], **rule)  # compiles or loads the kernels
    before, load = resident_mib(), load_average()
    step = best_seconds(lambda: graph_guided.guided_aggregate(tables, **rule), args.repeats)
    graph_seconds = best_seconds(lambda: graph_guided.relation_graph(flat, **rule),
                                 args.repeats)
    graph = graph_guided.relation_graph(flat, **rule)
    product = best_seconds(lambda: graph_guided.propagate(graph, flat), args.repeats)
    print(f'neighbours {args.neighbours or "above the mean"}: server step {step:.2f} s '
          f'(relation_graph {graph_seconds:.2f} s, propagate {product:.2f} s, '
          f'{graph.values().numel()} edges); resident {before:.0f} MiB before, peak '
          f'{resident_mib():.0f} MiB; load average {load} -> {load_average()}')


if __name__ == '__main__':
    main()
