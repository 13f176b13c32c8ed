"""Speed and memory benchmarks: ``python -m fedgraph bench engines|rounds|scale|contention|export``.

* ``engines`` -- the vectorized engine against itself with autograd instead of the closed
  form, with per-client random streams, and against the reference engine (one model per
  client) on the same data and seed, PFedRec's defaults: seconds per round (training and
  evaluation) and peak memory of each, and the ratios.
* ``rounds`` -- a whole training run (100 rounds, evaluation every round): its wall and CPU
  time inside ``train()`` and in the process with its imports.
* ``scale`` -- the vectorized engine on synthetic power-law data from 1k to 1M users with
  partial participation: seconds per training round and peak memory at each size (any
  federated algorithm: ``--algorithm perfedrec++`` includes the server's propagation).
* ``contention`` -- the vectorized engine's rounds on a quiet machine and beside busy
  processes that compete for the cores: how much slower a shared machine makes it.

Every measurement runs in a fresh subprocess so that its peak resident memory is its own,
with the threads ``--threads`` asks for (default: :func:`fedgraph.runtime.choose_threads`),
and reports the threads, the CPU seconds and the minor page faults per round beside the
wall seconds; each command prints the load average it ran under.
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
from typing import Dict, List, Optional, Tuple

import torch

from fedgraph import runtime
from fedgraph.algorithms import algorithm_names, build_engine
from fedgraph.algorithms.registry import resolve
from fedgraph.config import TrainConfig
from fedgraph.data import ClientPartition, synthetic_interactions
from fedgraph.federated.evaluation import evaluate


class Conditions:
    """The conditions of a measurement, from its creation to when it is printed: this
    process's threads, the load average (1 minute) at both ends, wall time, and the CPU time
    of this process and of the subprocesses it waited for."""

    def __init__(self):
        self.load = os.getloadavg()[0]
        self.wall = time.perf_counter()
        self.cpu = _cpu_seconds()

    def __str__(self) -> str:
        return (f'threads {torch.get_num_threads()}, load average {self.load:.2f} at the '
                f'start and {os.getloadavg()[0]:.2f} at the end, '
                f'{time.perf_counter() - self.wall:.1f} s wall, '
                f'{_cpu_seconds() - self.cpu:.1f} s CPU')


def _cpu_seconds() -> float:
    """User and system CPU seconds of this process and its finished subprocesses."""
    spent = os.times()
    return spent.user + spent.system + spent.children_user + spent.children_system


def _peak_memory_mb(device: str) -> float:
    if device.startswith('cuda'):
        return torch.cuda.max_memory_allocated() / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sync(device: str) -> None:
    if device.startswith('cuda'):
        torch.cuda.synchronize()


def status_mib(field: str) -> float:
    """A memory figure of this process from ``/proc/self/status`` (``VmRSS``: resident now,
    ``VmHWM``: its peak since the last reset, :func:`reset_peak`), in MiB (Linux)."""
    with open('/proc/self/status') as status:
        for line in status:
            if line.startswith(field + ':'):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f'/proc/self/status has no {field}')


def reset_peak() -> None:
    """Starts this process's ``VmHWM`` afresh from its resident memory now (Linux:
    ``/proc/self/clear_refs``)."""
    with open('/proc/self/clear_refs', 'w') as refs:
        refs.write('5')


class ServerTimer:
    """Times the server half of every round, the federated engine's ``aggregate`` (GPFedRec:
    the user-relation graph and its aggregation; a graph model's propagation is not in it),
    and the memory it adds at its peak over what was resident when it began (Linux: the
    peak is reset before each call through ``/proc/self/clear_refs``; the process's own
    peak is kept in :attr:`peak_mib`)."""

    def __init__(self, federated):
        self.seconds: List[float] = []
        self.added_mib: List[float] = []
        self.peak_mib = 0.0
        self._aggregate = federated.aggregate
        federated.aggregate = self

    def __call__(self, *args, **kwargs):
        self.peak_mib = max(self.peak_mib, status_mib('VmHWM'))
        reset_peak()
        before, began = status_mib('VmRSS'), time.perf_counter()
        out = self._aggregate(*args, **kwargs)
        self.seconds.append(time.perf_counter() - began)
        self.added_mib.append(status_mib('VmHWM') - before)
        return out


def _median(values: List[float]) -> Optional[float]:
    """The median of ``values``; ``None`` for none (a server half that never ran
    ``aggregate``: under secure aggregation it sums instead)."""
    return statistics.median(values) if values else None


def measure_engine(config: TrainConfig, partition: ClientPartition, rounds: int,
                   split=None, known: Optional[ClientPartition] = None,
                   keep_memory: bool = True) -> Dict[str, float]:
    """Runs one warm-up round, then ``rounds`` timed rounds, evaluating after each when a
    ``split`` is given, with ``config.threads`` and freed memory kept or not
    (:func:`fedgraph.runtime.configure`); returns the median wall seconds of training and
    of evaluation, the median CPU seconds and minor page faults of a training round, the
    median bytes a client uploads and downloads in a round (as its record counts them), and
    the median seconds and added memory of its server half (:class:`ServerTimer`)."""
    threads = runtime.configure(config.threads, keep_memory)
    generator = torch.Generator().manual_seed(config.seed)
    engine = build_engine(config, partition, generator, known)
    server = ServerTimer(engine.federated) if engine.federated is not None else None
    train_seconds, eval_seconds, cpu_seconds, faults, stats = [], [], [], [], []
    for index in range(rounds + 1):
        _sync(config.device)
        began, cpu = time.perf_counter(), time.process_time()
        faulted = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        stats.append(engine.run_round(generator))
        _sync(config.device)
        trained, cpu = time.perf_counter(), time.process_time() - cpu
        faulted = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faulted
        if split is not None:
            evaluate(engine, split)
            _sync(config.device)
        if index:  # the first round warms up
            train_seconds.append(trained - began)
            eval_seconds.append(time.perf_counter() - trained)
            cpu_seconds.append(cpu)
            faults.append(faulted)
    return {'users': partition.num_clients, 'items': partition.num_items,
            'interactions': partition.num_interactions, 'threads': threads,
            'train_seconds': statistics.median(train_seconds),
            'eval_seconds': statistics.median(eval_seconds),
            'cpu_seconds': statistics.median(cpu_seconds),
            'page_faults': statistics.median(faults),
            'upload_bytes': statistics.median(round.upload_bytes for round in stats[1:]),
            'download_bytes': statistics.median(round.download_bytes for round in stats[1:]),
            'server_seconds': _median(server.seconds[1:]) if server else None,
            'server_added_mb': _median(server.added_mib[1:]) if server else None,
            'peak_memory_mb': max(_peak_memory_mb(config.device),
                                  server.peak_mib if server and config.device == 'cpu'
                                  else 0.0)}


def _run_worker(payload: Dict) -> Dict:
    command = [sys.executable, '-m', 'fedgraph', 'bench', 'worker', json.dumps(payload)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f'benchmark worker failed:\n{result.stderr[-4000:]}')
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure_run(config: TrainConfig, folder: bool, keep_memory: bool = True) -> Dict[str, float]:
    """A whole :func:`~fedgraph.training.train` run (in a temporary run folder with its
    checkpoints when ``folder``, else in memory) in a process tuned as the command line
    tunes its own (:func:`fedgraph.runtime.configure`): its threads, wall and CPU seconds,
    minor page faults, the median seconds of a round (training, evaluation and record) and
    its best round."""
    import tempfile

    from fedgraph.training import train

    threads = runtime.configure(config.threads, keep_memory)
    with tempfile.TemporaryDirectory() as out:
        began, cpu = time.perf_counter(), time.process_time()
        faulted = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        run = train(config, out if folder else None, progress=False)
        wall, cpu = time.perf_counter() - began, time.process_time() - cpu
        faulted = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faulted
    return {'threads': threads, 'rounds': len(run['rounds']),
            'train_wall': wall, 'train_cpu': cpu, 'page_faults': faulted,
            'round_seconds': statistics.median(r['seconds'] for r in run['rounds']),
            'best': run['best']}


def _worker(args: argparse.Namespace) -> None:
    from fedgraph.assemble import prepare_split

    payload = json.loads(args.payload)
    config = TrainConfig(**payload['config'])
    keep = payload.get('keep_memory', True)
    if 'folder' in payload:
        result = measure_run(config, payload['folder'], keep)
    elif 'synthetic' in payload:
        partition = ClientPartition.from_data(synthetic_interactions(**payload['synthetic']))
        result = measure_engine(config, partition, payload['rounds'], keep_memory=keep)
    else:
        split = prepare_split(config)
        result = measure_engine(config, ClientPartition.from_data(split.train),
                                payload['rounds'], split, split.known_items(), keep)
    print(json.dumps(result))


#: The engines ``bench engines`` compares: a name and the run settings it stands for.
ENGINES = {
    'vectorized': {},
    'autograd': {'closed_form': False},
    'client-streams': {'client_streams': True},
    'reference': {'engine': 'reference'},
}


def _engines(args: argparse.Namespace) -> List[Dict]:
    conditions = Conditions()
    rows = []
    for engine in args.engines:
        config = dict(algorithm=args.algorithm, dataset=args.dataset, seed=args.seed,
                      device=args.device, threads=args.threads, **ENGINES[engine])
        if args.clients_per_round:
            config['clients_per_round'] = args.clients_per_round
        result = _run_worker({'config': config, 'rounds': args.rounds,
                              'keep_memory': not args.return_freed_memory})
        result['engine'] = engine
        rows.append(result)
        print(f"{engine:>14}: {result['train_seconds']:.3f} s/round training, "
              f"{result['eval_seconds']:.3f} s evaluation, "
              f"peak {result['peak_memory_mb']:.0f} MiB", flush=True)
    print("\n| engine | threads | s/round (train) | CPU s/round (train) | page faults/round "
          "| s/round (eval) | peak memory (MiB) |\n|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['engine']} | {row['threads']} | {row['train_seconds']:.3f} "
              f"| {row['cpu_seconds']:.3f} | {row['page_faults']:,.0f} "
              f"| {row['eval_seconds']:.3f} | {row['peak_memory_mb']:.0f} |")
    seconds = {row['engine']: row['train_seconds'] for row in rows}
    total = {row['engine']: row['train_seconds'] + row['eval_seconds'] for row in rows}
    print()
    if 'vectorized' in seconds:
        for engine, words in (('reference', 'the reference engine takes'),
                              ('autograd', 'autograd takes'),
                              ('client-streams', 'per-client streams take')):
            if engine in seconds:
                print(f"{words} {seconds[engine] / seconds['vectorized']:.2f}x the vectorized "
                      f"engine's training time ({total[engine] / total['vectorized']:.2f}x "
                      f"with evaluation)")
    print(conditions)
    return rows


def _rounds(args: argparse.Namespace) -> List[Dict]:
    conditions = Conditions()
    config = dict(algorithm=args.algorithm, dataset=args.dataset, seed=args.seed,
                  device=args.device, threads=args.threads, rounds=args.rounds, eval_every=1)
    began = time.perf_counter()
    result = _run_worker({'config': config, 'folder': args.checkpoints})
    result['process_wall'] = time.perf_counter() - began
    best = result['best']
    metric = next(iter(best['test']))
    print(f"{args.algorithm} on {args.dataset}, {result['rounds']} rounds, evaluation every "
          f"round, {'a run folder with checkpoints' if args.checkpoints else 'in memory'}")
    print('| threads | train() wall | train() CPU | median s/round | page faults '
          f'| process wall (with imports) | best round | test {metric} |')
    print('|---|---|---|---|---|---|---|---|')
    print(f"| {result['threads']} | {result['train_wall']:.2f} s | {result['train_cpu']:.2f} s "
          f"| {result['round_seconds']:.3f} | {result['page_faults']:,} "
          f"| {result['process_wall']:.2f} s | {best['round']} | {best['test'][metric]:.4f} |")
    print(conditions)
    return [result]


def _figure(value: Optional[float], spec: str) -> str:
    """``value`` formatted by ``spec``, or ``n/a``."""
    return 'n/a' if value is None else format(value, spec)


def _scale(args: argparse.Namespace) -> List[Dict]:
    conditions = Conditions()
    rows = []
    settings = ''.join(f', {name}={json.dumps(value)}' for name, value in args.setting)
    print(f'{args.algorithm}{settings}, {args.rounds} timed rounds after one warm-up')
    print('| users | items | interactions | clients/round | threads | s/round | CPU s/round '
          '| page faults/round | server s/round | server added MiB | peak memory (MiB) '
          '| kB up/client | kB down/client |')
    print('|---|---|---|---|---|---|---|---|---|---|---|---|---|')
    for users in args.sizes:
        items = max(1000, users // 20)
        count = min(args.clients_per_round, users)
        config = dict(algorithm=args.algorithm, dataset='synthetic', seed=args.seed,
                      device=args.device, clients_per_round=count, threads=args.threads,
                      **dict(args.setting))
        synthetic = dict(num_users=users, num_items=items, mean_degree=args.mean_degree,
                         seed=args.seed)
        result = _run_worker({'config': config, 'rounds': args.rounds, 'synthetic': synthetic,
                              'keep_memory': not args.return_freed_memory})
        rows.append(result)
        print(f"| {users:,} | {items:,} | {result['interactions']:,} | {count:,} "
              f"| {result['threads']} | {result['train_seconds']:.3f} "
              f"| {result['cpu_seconds']:.3f} | {result['page_faults']:,.0f} "
              f"| {_figure(result['server_seconds'], '.3f')} "
              f"| {_figure(result['server_added_mb'], ',.0f')} "
              f"| {result['peak_memory_mb']:.0f} | {result['upload_bytes'] / 1e3:,.1f} "
              f"| {result['download_bytes'] / 1e3:,.1f} |", flush=True)
    print(conditions)
    return rows


def busy_processes(count: int) -> List[subprocess.Popen]:
    """``count`` processes that keep one core busy each until they are killed."""
    return [subprocess.Popen([sys.executable, '-c', 'while True: pass']) for _ in range(count)]


def _contention(args: argparse.Namespace) -> List[Dict]:
    conditions = Conditions()
    rows = []
    config = dict(algorithm=args.algorithm, dataset=args.dataset, seed=args.seed,
                  device=args.device)
    for threads in args.threads_list:
        for competitors in (0, args.competitors):
            busy = busy_processes(competitors)
            try:
                time.sleep(1.0 if competitors else 0.0)
                result = _run_worker({'config': {**config, 'threads': threads},
                                      'rounds': args.rounds})
            finally:
                for process in busy:
                    process.kill()
                    process.wait()
            result.update(competitors=competitors, load=os.getloadavg()[0])
            rows.append(result)
    quiet = {row['threads']: row['train_seconds'] for row in rows if not row['competitors']}
    fastest_quiet = min(quiet.values())
    print(f'{args.algorithm} on {args.dataset}, {args.rounds} timed training rounds after one '
          f'warm-up; {available_cpus_line()}')
    print('| threads | busy competitors | s/round | CPU s/round | load (1 min) '
          '| × its quiet time | × the fastest quiet |')
    print('|---|---|---|---|---|---|---|')
    for row in rows:
        print(f"| {row['threads']} | {row['competitors']} | {row['train_seconds']:.3f} "
              f"| {row['cpu_seconds']:.3f} | {row['load']:.2f} "
              f"| {row['train_seconds'] / quiet[row['threads']]:.2f} "
              f"| {row['train_seconds'] / fastest_quiet:.2f} |")
    print(conditions)
    return rows


def available_cpus_line() -> str:
    """The CPUs this process may use, in words."""
    limit = runtime.cgroup_cpu_limit()
    return (f'{runtime.available_cpus()} CPUs available (affinity '
            f'{len(os.sched_getaffinity(0))}, cgroup quota '
            f'{"none" if limit is None else f"{limit:g}"}), GOMP_SPINCOUNT='
            f'{os.environ.get("GOMP_SPINCOUNT")}, OMP_WAIT_POLICY='
            f'{os.environ.get("OMP_WAIT_POLICY")}')


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


def _setting(text: str) -> Tuple[str, object]:
    """``NAME=VALUE`` as ``(NAME, VALUE)``, the value read as JSON where it is JSON."""
    name, equals, value = text.partition('=')
    if not equals or not name:
        raise argparse.ArgumentTypeError(f'expected NAME=VALUE, got {text!r}')
    try:
        return name.replace('-', '_'), json.loads(value)
    except json.JSONDecodeError:
        return name.replace('-', '_'), value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    kinds = parser.add_subparsers(dest='kind', required=True)
    engines = kinds.add_parser('engines', help='vectorized vs reference engine')
    engines.add_argument('--dataset', default='ml-100k')
    engines.add_argument('--algorithm', default='pfedrec', choices=algorithm_names())
    engines.add_argument('--clients-per-round', type=int, default=None,
                         help="default: the algorithm's (pfedrec: all; perfedrec++: 256)")
    engines.add_argument('--rounds', type=int, default=3, help='timed rounds (after 1 warm-up)')
    engines.add_argument('--engines', nargs='+', choices=list(ENGINES), default=list(ENGINES),
                         help='vectorized (closed form where the model allows), autograd '
                              '(--closed-form off), client-streams (--client-streams on), '
                              'reference (one model per client)')
    rounds = kinds.add_parser('rounds', help='a whole training run: wall and CPU time')
    rounds.add_argument('--dataset', default='ml-100k')
    rounds.add_argument('--algorithm', default='pfedrec', choices=algorithm_names())
    rounds.add_argument('--rounds', type=int, default=100)
    rounds.add_argument('--checkpoints', action='store_true',
                        help='run in a temporary run folder, writing its checkpoints')
    scale = kinds.add_parser('scale', help='vectorized engine from 1k to 1M users')
    scale.add_argument('--algorithm', default='pfedrec',
                       choices=[name for name in algorithm_names() if resolve(name).federated])
    scale.add_argument('--sizes', type=int, nargs='+',
                       default=[1_000, 10_000, 100_000, 1_000_000])
    scale.add_argument('--clients-per-round', type=int, default=1000)
    scale.add_argument('--mean-degree', type=float, default=20.0)
    scale.add_argument('--rounds', type=int, default=5, help='timed rounds (after 1 warm-up)')
    scale.add_argument('--setting', type=_setting, action='append', default=[],
                       metavar='NAME=VALUE',
                       help="a setting of the run (repeatable; VALUE read as JSON, else as a "
                            "string), e.g. --setting neighbours=10")
    export = kinds.add_parser('export', help="a finished run's users as device files: size, "
                                              'load and top-10 time')
    export.add_argument('folder', metavar='RUN', help='the run folder')
    export.add_argument('--users', type=int, default=20, help='how many users to export')
    export.add_argument('--repeats', type=int, default=50, help='top-10 calls timed per user')
    export.add_argument('--out', default=None, help='also write the rows as JSON here')
    contention = kinds.add_parser('contention',
                                  help='rounds on a quiet machine and beside busy processes')
    contention.add_argument('--dataset', default='ml-100k')
    contention.add_argument('--algorithm', default='pfedrec', choices=algorithm_names())
    contention.add_argument('--competitors', type=int, default=2,
                            help='busy processes that share the cores')
    contention.add_argument('--rounds', type=int, default=5,
                            help='timed rounds (after 1 warm-up)')
    contention.add_argument('--threads', dest='threads_list', type=int, nargs='+',
                            default=[runtime.choose_threads(), 1],
                            help='thread counts to measure (default: the chosen one and 1)')
    for sub in (engines, scale, rounds):
        sub.add_argument('--threads', type=int, default=None,
                         help='intra-op threads (default: fedgraph.runtime.choose_threads)')
    for sub in (engines, scale):
        sub.add_argument('--return-freed-memory', action='store_true',
                         help="leave glibc's malloc as it is (fedgraph.runtime."
                              "keep_freed_memory off): the page faults it costs")
    for sub in (engines, scale, contention, rounds):
        sub.add_argument('--seed', type=int, default=0)
        sub.add_argument('--device', default='cpu')
        sub.add_argument('--out', default=None, help='also write the rows as JSON here')
    worker = kinds.add_parser('worker', help=argparse.SUPPRESS)
    worker.add_argument('payload')


def main(args: argparse.Namespace) -> None:
    if args.kind == 'worker':
        _worker(args)
        return
    rows = {'engines': _engines, 'scale': _scale, 'export': _export,
            'contention': _contention, 'rounds': _rounds}[args.kind](args)
    if args.out:
        with open(args.out, 'w') as handle:
            json.dump(rows, handle, indent=1)
