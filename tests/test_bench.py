import json
import os
import subprocess
import sys

import pytest
import torch

from fedgraph import runtime
from fedgraph.cli import main


def test_bench_scale_prints_a_row_per_size_with_its_conditions(tmp_path, capsys):
    out = tmp_path / 'scale.json'
    main(['bench', 'scale', '--sizes', '300', '600', '--rounds', '1', '--threads', '1',
          '--clients-per-round', '100', '--out', str(out)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == 'pfedrec, 1 timed rounds after one warm-up'
    assert lines[1].startswith('| users | items | interactions | clients/round | threads | '
                               's/round | CPU s/round | page faults/round |')
    assert [line.split('|')[1].strip() for line in lines[3:5]] == ['300', '600']
    assert 'load average' in lines[-1] and 's CPU' in lines[-1]
    rows = json.loads(out.read_text())
    assert [row['users'] for row in rows] == [300, 600]
    assert all(row['train_seconds'] > 0 and row['cpu_seconds'] > 0 and row['threads'] == 1
               and row['peak_memory_mb'] > 0 for row in rows)
    # every size keeps at least 1,000 items, and the measured graph has interactions
    assert all(row['items'] == 1000 and row['interactions'] > row['users'] for row in rows)


def test_bench_scale_runs_a_graph_model_with_its_server_propagation(capsys):
    main(['bench', 'scale', '--algorithm', 'fedlightgcn', '--sizes', '400', '--rounds', '1',
          '--clients-per-round', '50', '--threads', '1'])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith('fedlightgcn') and lines[3].split('|')[1].strip() == '400'


def test_bench_scale_times_the_server_half_with_the_settings_given(tmp_path, capsys):
    out = tmp_path / 'scale.json'
    main(['bench', 'scale', '--algorithm', 'gpfedrec', '--sizes', '200', '--rounds', '2',
          '--clients-per-round', '40', '--threads', '1', '--setting', 'neighbours=3',
          '--setting', 'hidden=[8, 4]', '--out', str(out)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == 'gpfedrec, neighbours=3, hidden=[8, 4], 2 timed rounds after one warm-up'
    (row,) = json.loads(out.read_text())
    assert 0 < row['server_seconds'] < row['train_seconds']
    assert row['server_added_mb'] >= 0


def test_bench_scale_reports_no_server_half_under_secure_aggregation(capsys):
    """Under secure aggregation the server sums instead of calling ``aggregate``: nothing to
    time, and the row says so."""
    main(['bench', 'scale', '--sizes', '300', '--rounds', '1', '--clients-per-round', '50',
          '--threads', '1', '--setting', 'secure_aggregation=true'])
    row = capsys.readouterr().out.strip().splitlines()[3].split('|')
    assert [cell.strip() for cell in row[9:11]] == ['n/a', 'n/a']


@pytest.mark.parametrize('files, expected', [
    ({'cpu.max': 'max 100000\n'}, None),
    ({'cpu.max': '150000 100000\n'}, 1.5),
    ({'cpu/cpu.cfs_quota_us': '50000\n', 'cpu/cpu.cfs_period_us': '100000\n'}, 0.5),
    ({'cpu/cpu.cfs_quota_us': '-1\n', 'cpu/cpu.cfs_period_us': '100000\n'}, None),
    ({}, None),
])
def test_the_cgroup_cpu_quota_is_read_from_v2_or_v1_files(tmp_path, files, expected):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert runtime.cgroup_cpu_limit(tmp_path) == expected


def test_threads_come_from_the_flag_then_the_environment_then_the_cpus(monkeypatch):
    monkeypatch.setattr(runtime, 'cgroup_cpu_limit', lambda: 0.5)
    assert runtime.available_cpus() == 1  # a quota of half a CPU: one thread
    monkeypatch.setattr(runtime, 'cgroup_cpu_limit', lambda: None)
    assert runtime.available_cpus() == len(os.sched_getaffinity(0))
    monkeypatch.setenv('OMP_NUM_THREADS', '3')
    assert runtime.choose_threads() == 3
    assert runtime.choose_threads(5) == 5
    monkeypatch.delenv('OMP_NUM_THREADS')
    assert runtime.choose_threads() == runtime.available_cpus()
    with pytest.raises(ValueError, match='threads'):
        runtime.choose_threads(0)
    previous = torch.get_num_threads()
    try:
        assert runtime.configure(1) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(previous)


def test_freed_memory_is_kept_on_glibc():
    assert runtime.keep_freed_memory() is True


def _maps_a_large_block_after(call: str) -> str:
    """A script that runs ``call`` (of fedgraph's command line ``main``), then prints
    ``mapped True`` when glibc maps a new 64 MiB block of its own (freed memory returned)
    rather than serving it from its heap (freed memory kept)."""
    return ('import ctypes, sys\n'
            'import numpy as np\n'
            'from fedgraph.cli import main\n'
            'class Info(ctypes.Structure):\n'
            '    _fields_ = [(name, ctypes.c_size_t) for name in "arena ordblks smblks hblks '
            'hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]\n'
            'libc = ctypes.CDLL("libc.so.6")\n'
            'libc.mallinfo2.restype = Info\n'
            f'{call}\n'
            'before = libc.mallinfo2().hblkhd\n'
            'block = np.ones(64 << 20, np.uint8)\n'
            'print("mapped", libc.mallinfo2().hblkhd - before >= 64 << 20)\n')


@pytest.mark.parametrize('keep', [True, False])
def test_a_benchmark_worker_keeps_freed_memory_only_when_asked(keep):
    """``--return-freed-memory`` reaches the worker: glibc then still maps a large block of
    its own (and returns it when freed), where kept memory serves it from the heap."""
    payload = {'config': {'algorithm': 'pfedrec', 'dataset': 'synthetic', 'seed': 0,
                          'clients_per_round': 20, 'threads': 1},
               'synthetic': {'num_users': 100, 'num_items': 1000}, 'rounds': 1,
               'keep_memory': keep}
    code = _maps_a_large_block_after('main(["bench", "worker", sys.argv[1]])')
    done = subprocess.run([sys.executable, '-c', code, json.dumps(payload)],
                          capture_output=True, text=True, check=True)
    assert json.loads(done.stdout.splitlines()[0])['users'] == 100
    assert done.stdout.splitlines()[-1] == f'mapped {not keep}'


@pytest.mark.parametrize('flags', [[], ['--return-freed-memory']])
def test_train_keeps_freed_memory_unless_told_to_return_it(tmp_path, flags):
    """``train`` keeps freed memory, whose heap also keeps blocks a later, larger one cannot
    reuse; ``--return-freed-memory`` leaves glibc's ``malloc`` as it is: it maps a large block
    of its own again."""
    from helpers import write_small_csv

    data = write_small_csv(tmp_path / 'data.csv')
    code = _maps_a_large_block_after('main(sys.argv[1:])')
    done = subprocess.run([sys.executable, '-c', code, 'train', '--dataset', 'csv',
                           '--data-path', str(data), '--eval-negatives', '20', '--rounds', '1',
                           '--threads', '1', '--quiet', *flags],
                          capture_output=True, text=True, check=True, cwd=tmp_path)
    assert done.stdout.splitlines()[-1] == f'mapped {bool(flags)}'


def test_compiled_kernels_keep_the_threads_configured():
    """Starting numba's thread pool must not reset PyTorch's threads (an OpenMP pool would)."""
    code = ('import torch, numba\n'
            'from fedgraph import runtime\n'
            'from fedgraph.data.partition import ClientPartition\n'
            'runtime.configure(1)\n'
            'data = ClientPartition(torch.tensor([0, 1]), torch.tensor([0]), 3)\n'
            'drawn = data.sample_negatives(torch.tensor([0]), 2, torch.Generator())\n'
            'print(torch.get_num_threads(), numba.get_num_threads(), sorted(drawn.tolist()[0]))\n')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.split() == ['1', '1', '[1,', '2]']


def test_bench_rounds_times_a_whole_run(tmp_path, capsys):
    out = tmp_path / 'rounds.json'
    main(['bench', 'rounds', '--dataset', 'synthetic', '--rounds', '2', '--threads', '1',
          '--checkpoints', '--out', str(out)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == ('pfedrec on synthetic, 2 rounds, evaluation every round, a run folder '
                        'with checkpoints')
    assert lines[1].startswith('| threads | train() wall | train() CPU | median s/round |')
    assert lines[3].split('|')[1].strip() == '1'
    assert 'load average' in lines[-1]
    (row,) = json.loads(out.read_text())
    assert row['rounds'] == 2 and row['threads'] == 1
    assert 0 < row['round_seconds'] < row['train_wall'] < row['process_wall']
    assert row['best']['round'] in (0, 1)


def test_bench_engines_compares_closed_form_autograd_and_client_streams(capsys):
    main(['bench', 'engines', '--dataset', 'synthetic', '--engines', 'vectorized', 'autograd',
          'client-streams', '--rounds', '1', '--threads', '1'])
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split('|')[1].strip() for line in lines if line.startswith('| ')][1:] == [
        'vectorized', 'autograd', 'client-streams']
    assert any(line.startswith('autograd takes') for line in lines)
    assert any(line.startswith('per-client streams take') for line in lines)
