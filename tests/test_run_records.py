"""What a run folder records besides its metrics: the software it ran with (in
``config.json``) and a CSV of its rounds beside ``metrics.json``; ``fedgraph --version``."""
import csv
import json

import pytest
import torch
import torch_geometric

from fedgraph.cli import main
from fedgraph.config import TrainConfig
from fedgraph.training import train
from fedgraph.version import package_version


def test_a_run_records_its_software_and_a_csv_of_its_rounds(tmp_path):
    out = tmp_path / 'run'
    config = TrainConfig(algorithm='fedmf', dataset='synthetic', rounds=3, dim=8,
                         eval_every=2)
    metrics = train(config, out=out, progress=False)
    saved = json.loads((out / 'config.json').read_text())
    software = saved['provenance']
    assert software['torch'] == torch.__version__
    assert software['torch_geometric'] == torch_geometric.__version__
    assert software['fedgraph-rec'] == package_version() != 'unknown'
    assert TrainConfig.load(out / 'config.json') == config  # provenance is not a setting
    with open(out / 'metrics.csv', newline='') as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row['round']) for row in rows] == [0, 1, 2]
    for row, record in zip(rows, metrics['rounds']):
        assert float(row['train_loss']) == record['train_loss']
    # Evaluated rounds (after 2 rounds, and the last) have their metrics; the others none.
    assert rows[0]['val_hr@10'] == ''
    assert float(rows[1]['val_hr@10']) == metrics['rounds'][1]['val']['hr@10']
    assert float(rows[2]['test_ndcg@10']) == metrics['rounds'][2]['test']['ndcg@10']


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as exit:
        main(['--version'])
    assert exit.value.code == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f'fedgraph-rec {package_version()}')
    assert f'torch {torch.__version__}' in printed


def test_a_run_as_a_data_frame_has_a_row_a_round_and_the_csv_columns(tmp_path):
    pandas = pytest.importorskip('pandas')
    out = tmp_path / 'run'
    config = TrainConfig(algorithm='fedmf', dataset='synthetic', rounds=3, dim=8,
                         eval_every=2)
    run = train(config, out=out, progress=False)
    frame = run.to_frame()
    assert isinstance(frame, pandas.DataFrame)
    with open(out / 'metrics.csv', newline='') as handle:
        assert list(frame.columns) == next(csv.reader(handle))
    assert frame['round'].tolist() == [record['round'] for record in run['rounds']]
    assert frame['train_loss'].tolist() == [record['train_loss'] for record in run['rounds']]
    # Round 0 was not evaluated: its metrics are missing; rounds 1 and 2 have theirs.
    assert frame['val_hr@10'].isna().tolist() == [True, False, False]
    assert frame.loc[2, 'test_ndcg@10'] == run['rounds'][2]['test']['ndcg@10']


def test_a_data_frame_without_pandas_says_how_to_install_it(tmp_path, monkeypatch):
    import sys

    from fedgraph.run import Run

    monkeypatch.setitem(sys.modules, 'pandas', None)  # import pandas raises ImportError
    run = Run({'rounds': [{'round': 0, 'train_loss': 0.5}]}, config=None, engine=None,
              split=None)
    with pytest.raises(ImportError, match='pip install pandas'):
        run.to_frame()


def test_config_json_records_what_the_run_was_built_from(tmp_path, tiny_sampled_split):
    """An algorithm of one's own may train with another loss than its settings name (here
    BPR while ``settings.loss`` says BCE): ``config.json``'s ``ran`` says what ran, and
    loading the configuration back ignores it."""
    import dataclasses

    from fedgraph.algorithms import register
    from fedgraph.algorithms.fedmf import FedMF
    from fedgraph.federated.local import BPRLoss

    @register
    class PairwiseMF(FedMF):
        name = 'pairwise-mf-test'

        def local_training(self, num_items):
            return dataclasses.replace(super().local_training(num_items), loss=BPRLoss())

    from fedgraph.algorithms import registry

    config = TrainConfig(algorithm='pairwise-mf-test', rounds=1, dim=8, aggregation='median')
    try:
        train(config, out=tmp_path / 'run', split=tiny_sampled_split, progress=False)
        assert TrainConfig.load(tmp_path / 'run' / 'config.json').aggregation == 'median'
    finally:
        registry._REGISTRY.pop('pairwise-mf-test')
    saved = json.loads((tmp_path / 'run' / 'config.json').read_text())
    assert saved['settings']['loss'] == 'bce'
    assert saved['ran'] == {'algorithm': f'{__name__}.{PairwiseMF.__qualname__}',
                            'loss': 'BPRLoss', 'optimizer': 'SGD', 'server': 'median'}
