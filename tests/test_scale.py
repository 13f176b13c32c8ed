"""Memory that grows with interactions, not with users x items: a graph model enrolls,
pre-trains, clusters, trains a round and evaluates on a population whose dense users x
items table would take several times the bound below (and a users x users one, ten times
more), in a process of its own whose peak resident memory is measured (Linux)."""
import json
import subprocess
import sys

import pytest

USERS, ITEMS = 60_000, 20_000
#: A dense float32 users x items tensor alone takes 4.5 GiB.
PEAK_MIB = 1536
SCRIPT = '''
import json, sys
from fedgraph import TrainConfig, train
from fedgraph.bench import status_mib
from fedgraph.data import leave_one_out_split, synthetic_interactions
split = leave_one_out_split(synthetic_interactions(num_users={users}, num_items={items},
                                                   mean_degree=10, seed=0), eval_negatives=19)
extra = dict(pretrain_rounds=1, num_clusters=3, cluster_every=1) if sys.argv[1] == 'perfedrec++' else {{}}
run = train(TrainConfig(algorithm=sys.argv[1], dataset='synthetic', rounds=1, dim=16,
                        clients_per_round=256, threads=2, seed=0, **extra),
            split=split, progress=False)
# VmHWM: this process's own peak (ru_maxrss would start from its parent's, forked from it)
print(json.dumps({{'peak_mib': status_mib('VmHWM'), 'test': run['rounds'][-1]['test']}}))
'''.format(users=USERS, items=ITEMS)


@pytest.mark.parametrize('algorithm', ['fedlightgcn', 'perfedrec++'])
def test_a_graph_model_runs_in_memory_of_its_interactions(algorithm):
    done = subprocess.run([sys.executable, '-c', SCRIPT, algorithm], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert 0 < result['test']['hr@10'] <= 1
    assert result['peak_mib'] < PEAK_MIB, result
