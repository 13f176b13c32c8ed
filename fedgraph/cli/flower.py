"""``python -m fedgraph flower <action>``: fedgraph's algorithms on Flower.

* ``deploy``   -- a SuperLink and SuperNodes as processes on this machine; the run's metrics
  against the in-process engine with the same seed, and the bytes each node put on the wire;
* ``simulate`` -- Flower's simulation engine (Ray), one virtual SuperNode per user by default;
* ``bench``    -- seconds per round of the Ray simulation against the vectorized engine;
* ``app``      -- write a Flower App folder to ``flwr run`` on a SuperLink of your own.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path
from typing import Dict, List, Optional

from fedgraph.cli.flags import add_config_flags, config_from_args, remember_parsers, run_command
from fedgraph.config import TrainConfig


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='fedgraph flower', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest='action', required=True)
    deploy = actions.add_parser('deploy', help='SuperLink + SuperNodes on 127.0.0.1')
    deploy.add_argument('--nodes', type=int, default=3, help='SuperNodes (user partitions)')
    deploy.add_argument('--workdir', type=Path, default=Path('runs/flower-deploy'),
                        help='logs, the Flower App, FLWR_HOME and run/metrics.json')
    deploy.add_argument('--timeout', type=float, default=60.0,
                        help="seconds the server waits for a round's replies")
    deploy.add_argument('--kill-after-round', type=int, default=None,
                        help='kill SuperNode --kill-partition once this many rounds are done')
    deploy.add_argument('--kill-partition', type=int, default=0)
    deploy.add_argument('--no-compare', action='store_true',
                        help='skip the in-process run with the same seed')
    deploy.add_argument('--insecure', action='store_true',
                        help='no TLS and no SuperNode authentication (default: a local '
                             'certificate authority signs the SuperLink\'s certificate and '
                             'every SuperNode authenticates with its own key)')
    deploy.add_argument('--isolation', choices=('subprocess', 'process'), default='subprocess',
                        help="Flower's isolation mode: 'subprocess', the SuperLink and each "
                             "SuperNode start their own flower-superexec; 'process', they "
                             'run with --isolation process and the deployment starts a '
                             'flower-superexec per SuperNode and one for the SuperLink. Either '
                             'way each message runs in a new flwr-clientapp process')
    simulate = actions.add_parser('simulate', help="Flower's Ray simulation engine")
    simulate.add_argument('--nodes', type=int, default=None,
                          help='virtual SuperNodes (default: one per user)')
    simulate.add_argument('--out', type=Path, default=None, help='folder of metrics.json')
    bench = actions.add_parser('bench', help='Ray simulation vs the vectorized engine')
    bench.add_argument('--nodes', type=int, default=None,
                       help='virtual SuperNodes (default: one per user)')
    app = actions.add_parser('app', help='write a Flower App folder')
    app.add_argument('folder', type=Path)
    app.add_argument('--out', default='runs/flower', help="the ServerApp's metrics folder")
    app.add_argument('--timeout', type=float, default=600.0)
    app.add_argument('--min-nodes', type=int, default=1)
    for sub, rounds, run in ((deploy, 3, _deploy), (simulate, 3, _simulate),
                             (bench, 3, _bench), (app, 100, _app)):
        add_config_flags(sub)
        sub.set_defaults(rounds=rounds, run=run)
    remember_parsers(actions)
    return parser


def _num_users(config: TrainConfig) -> int:
    from fedgraph.assemble import prepare_split

    return prepare_split(config).val_item.numel()


def _deploy(args: argparse.Namespace) -> None:
    from fedgraph.flower.deploy import deploy
    from fedgraph.training import train

    config = config_from_args(args, client_streams=True)
    result = deploy(config, args.nodes, args.workdir, timeout=args.timeout,
                    kill_after_round=args.kill_after_round, kill_partition=args.kill_partition,
                    insecure=args.insecure, isolation=args.isolation)
    rounds = result['metrics']['rounds']
    security = ('without TLS or node authentication (--insecure)' if args.insecure else
                'over TLS with authenticated SuperNodes')
    print(f"{len(rounds)} rounds on {args.nodes} SuperNodes {security}, isolation "
          f"{args.isolation}, in {result['seconds']:.1f} s (logs: {args.workdir / 'logs'})")
    reference = None if args.no_compare else train(config, progress=False)['rounds']
    print(_comparison(rounds, reference))
    print(_wire_table(result, rounds, args.nodes))


def _comparison(rounds: List[Dict], reference: Optional[List[Dict]]) -> str:
    lines = ['| round | clients | train loss | val HR@10 | test HR@10 | test NDCG@10 | '
             'max abs difference to in-process |', '|---|---|---|---|---|---|---|']
    for index, record in enumerate(rounds):
        values = _compared(record)
        difference = '(not run)'
        if reference is not None:
            theirs = _compared(reference[index])
            reported = [abs(a - b) for a, b in zip(values, theirs) if a == a]  # NaN: no loss
            difference = f'{max(reported, default=0.0):.1e}'
        cells = [f'{v:.4f}' for v in values] + [''] * (4 - len(values))
        lines.append(f"| {record['round']} | {record['clients']} | " + ' | '.join(cells)
                     + f' | {difference} |')
    return '\n'.join(lines)


def _compared(record: Dict) -> List[float]:
    """Train loss (NaN when not reported), and val HR@10, test HR@10 and test NDCG@10 in
    evaluated rounds."""
    values = [float('nan') if record['train_loss'] is None else record['train_loss']]
    if 'val' in record:
        values += [record['val']['hr@10'], record['test']['hr@10'], record['test']['ndcg@10']]
    return values


def _wire_table(result: Dict, rounds: List[Dict], num_nodes: int) -> str:
    """Bytes per round: on the wire (the SuperNodes' whole traffic during the run, enrollment
    and evaluation included, divided by the rounds), as the messages' arrays, and as
    metrics.json's model count (an upload is rows x (d floats + an index), a download the
    item table)."""
    clients = sum(r['clients'] for r in rounds) / len(rounds)
    wire_up = sum(node['up'] for node in result['wire']) / len(rounds)
    wire_down = sum(node['down'] for node in result['wire']) / len(rounds)
    payload_up = sum(r['payload_upload_bytes_per_client'] * r['clients'] for r in rounds)
    counted_up = sum(r['upload_bytes_per_client'] * r['clients'] for r in rounds)
    payload_down = sum(r['payload_download_bytes_per_node']
                       + r.get('payload_evaluate_download_bytes_per_node', 0) for r in rounds)
    idle = sum(node['up'] + node['down'] for node in result['idle']) / len(result['idle'])
    rows = [('on the wire (measured)', wire_up, wire_down),
            ('message arrays (train + evaluate)', payload_up / len(rounds),
             payload_down * num_nodes / len(rounds)),
            ('metrics.json (upload_bytes_per_client, download_bytes_per_client)',
             counted_up / len(rounds), rounds[0]['download_bytes_per_client'] * num_nodes)]
    lines = [f'| bytes per round ({clients:.0f} clients on {num_nodes} nodes) | up, per client '
             '| up, per node | down, per node |', '|---|---|---|---|']
    for label, up, down in rows:
        lines.append(f'| {label} | {up / clients:,.0f} | {up / num_nodes:,.0f} | '
                     f'{down / num_nodes:,.0f} |')
    lines.append(f"\nAn idle SuperNode's polling: {idle:,.0f} bytes in "
                 f"{result['idle_seconds']:.0f} s.")
    return '\n'.join(lines)


def _simulate(args: argparse.Namespace) -> None:
    from fedgraph.flower.simulation import simulate

    config = config_from_args(args, client_streams=True)
    nodes = args.nodes or _num_users(config)
    result = simulate(config, nodes, args.out)
    print(f"{config.rounds} rounds on {nodes} virtual SuperNodes in {result['seconds']:.1f} s")


def _bench(args: argparse.Namespace) -> None:
    """Times training rounds (evaluation only after the last) of the Ray simulation and of
    the vectorized engine, with shared and with per-client random streams; the whole run
    includes start-up (Ray, enrollment of every node, loading the data)."""
    from fedgraph.flower.simulation import simulate
    from fedgraph.training import train

    config = config_from_args(args, client_streams=True, eval_every=args.rounds)
    nodes = args.nodes or _num_users(config)
    rows = []
    began = time.perf_counter()
    flower = simulate(config, nodes, progress=False)['metrics']['rounds']
    rows.append((f'Flower simulation (Ray), {nodes} virtual SuperNodes', flower,
                 time.perf_counter() - began))
    for streams in (False, True):
        began = time.perf_counter()
        in_process = train(dataclasses.replace(config, client_streams=streams),
                           progress=False)['rounds']
        label = 'per-client streams' if streams else 'shared generator'
        rows.append((f'fedgraph vectorized engine, {label}', in_process,
                     time.perf_counter() - began))
    print(f'| engine ({config.algorithm}, {config.dataset}, {config.rounds} rounds) | '
          's/round (training rounds) | s (last round, with evaluation) | whole run, s | '
          'test HR@10 |')
    print('|---|---|---|---|---|')
    for label, history, seconds in rows:
        training = [r['seconds'] for r in history[:-1]] or [history[-1]['seconds']]
        print(f"| {label} | {statistics.median(training):.3f} | {history[-1]['seconds']:.3f} | "
              f"{seconds:.1f} | {history[-1]['test']['hr@10']:.4f} |")


def _app(args: argparse.Namespace) -> None:
    from fedgraph.flower.deploy import write_app

    config = config_from_args(args, client_streams=True)
    path = write_app(args.folder, config, out=str(Path(args.out).resolve()),
                     timeout=args.timeout, **{'min-nodes': args.min_nodes})
    print(f'wrote {path}; submit it with: flwr run {args.folder} <superlink>')


def main(argv: List[str]) -> None:
    run_command(_parser().parse_args(argv))
