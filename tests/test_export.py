"""A user's model exported to its device scores every item as the engine does, opens without
running code, and recommends what the run recommends."""
import json

import pytest
import torch

from fedgraph.cli import main
from fedgraph.config import TrainConfig
from fedgraph.export import DeviceModel
from fedgraph.training import train

SMALL = dict(dataset='synthetic', rounds=2, dim=8)


@pytest.mark.parametrize('algorithm, settings', [
    ('pfedrec', {}), ('fedmf', {}), ('fedncf', dict(hidden=(8, 4))), ('mf', {}),
    ('fedlightgcn', {}),
    ('perfedrec++', dict(pretrain_rounds=1, num_clusters=3, cluster_every=1))])
def test_an_exported_user_scores_as_the_engine(tmp_path, algorithm, settings):
    run = train(TrainConfig(algorithm=algorithm, **SMALL, **settings), progress=False)
    for user in (0, 17):
        path = run.export(user, tmp_path / f'{algorithm}-{user}.pt')
        model = DeviceModel.load(path)
        engine_scores = run.engine.scores_all(torch.tensor([user]))[0]
        torch.testing.assert_close(model.scores(), engine_scores, rtol=1e-5, atol=1e-5)
        assert model.recommend(10) == run.recommend(user, 10)
    if algorithm == 'perfedrec++':
        assert len(model.tables) == 3  # global, its cluster's and its own fine-tuned table


def test_the_export_command_and_a_hostile_file(tmp_path, capsys):
    out = tmp_path / 'run'
    main(['train', '--dataset', 'synthetic', '--rounds', '2', '--dim', '8', '--out', str(out),
          '--quiet'])
    capsys.readouterr()
    main(['export', str(out), '--user', '3', '--out', str(tmp_path / 'user3.pt')])
    printed = json.loads(capsys.readouterr().out)
    assert printed['bytes'] == (tmp_path / 'user3.pt').stat().st_size
    # 2,000 items x 8 floats, with its few parameters and ids: about 100 KB, not the run.
    assert printed['bytes'] < 200_000
    state = torch.load(tmp_path / 'user3.pt', weights_only=True)
    state['head'] = 'os.system'
    with pytest.raises(ValueError, match="unknown head 'os.system'"):
        DeviceModel(state)
