import json
import os

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
