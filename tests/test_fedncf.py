"""FedNCF: the NCF score head (a private user embedding, a shared MLP), its dense shared
parameters in the vectorized engine against the reference engine, FedAvg of the MLP copies,
and the algorithm from the command line."""
import json

import pytest
import torch

from fedgraph.algorithms import build_engine
from fedgraph.cli import main
from fedgraph.config import TrainConfig
from fedgraph.nn import NCFHead
from helpers import candidates, cli_misuse, engine_data

MLP = ['layers.0.weight', 'layers.0.bias', 'layers.1.weight', 'layers.1.bias',
       'output.weight', 'output.bias']


@pytest.fixture(scope='module')
def data():
    return engine_data(num_users=30, num_items=300, mean_degree=15, seed=6)


def _engine(data, **settings):
    _, partition, known = data
    config = TrainConfig(algorithm='fedncf', dim=8, hidden=(8, 4), batch_size=32, **settings)
    generator = torch.Generator().manual_seed(0)
    return build_engine(config, partition, generator, known)


def test_ncf_head_shares_its_mlp_and_keeps_the_user_embedding_private():
    head = NCFHead(5, 8, hidden=(8, 4), generator=torch.Generator().manual_seed(0))
    assert list(head.private_parameters()) == ['user']
    assert list(head.shared_parameters()) == MLP
    assert head.private_parameters()['user'].shape == (5, 8)
    assert head.shared_parameters()['layers.0.weight'].shape == (8, 16)
    with pytest.raises(ValueError, match='widths'):
        NCFHead(5, 8, hidden=(8, 0))


def test_grouped_logits_equal_per_sample_logits(float64):
    """Every client's own MLP copy, applied to its samples padded into one batch, gives the
    logits of the samples' gathered parameters, in any order of the samples."""
    generator = torch.Generator().manual_seed(1)
    head = NCFHead(4, 6, hidden=(5, 3), generator=generator)
    stacked = {name: value.detach().expand(4, *value.shape).clone()
               + 0.1 * torch.randn(4, *value.shape, generator=generator)
               for name, value in head.shared_parameters().items()}
    stacked['user'] = head.user.detach().clone()
    owner = torch.tensor([2, 0, 2, 3, 0, 0, 2])
    item = torch.randn(owner.numel(), 6, generator=generator)
    gathered = {name: value[owner] for name, value in stacked.items()}
    torch.testing.assert_close(head.grouped_logits(stacked, owner, item),
                               head.logits(gathered, item))
    # Per-sample copies of the global MLP score as the global MLP does.
    global_copies = {name: value.detach().expand(owner.numel(), *value.shape)
                     for name, value in head.shared_parameters().items()}
    user = {'user': head.user.detach()[owner]}
    torch.testing.assert_close(head.logits({**user, **global_copies}, item),
                               head.logits(user, item))


@pytest.mark.parametrize('settings', [dict(), dict(client_ratio=0.5, aggregation='weighted',
                                                   clip=0.5, local_epochs=2)])
def test_vectorized_fedncf_matches_the_reference_engine(float64, data, settings):
    """Side by side with per-client MLP copies, the vectorized engine ends every round with
    the loop-per-client engine's item table, MLP, user embeddings and scores."""
    split, partition, _ = data
    fast, slow = (_engine(data, engine=kind, **settings) for kind in ('vectorized', 'reference'))
    initial = {name: value.detach().clone() for name, value in fast.model.shared_dense().items()}
    for engine in (fast, slow):
        generator = torch.Generator().manual_seed(3)
        engine.stats = [engine.run_round(generator) for _ in range(3)]
    for a, b in zip(fast.stats, slow.stats):
        assert a.loss == pytest.approx(b.loss, abs=1e-9)
        assert a.upload_bytes == pytest.approx(b.upload_bytes)
    for name, value in fast.model.shared_dense().items():
        assert (value.detach() - initial[name]).abs().max() > 1e-4  # the MLP trained
        torch.testing.assert_close(value.detach(), slow.model.shared_dense()[name].detach(),
                                   atol=1e-9, rtol=0)
    torch.testing.assert_close(fast.model.item.detach(), slow.model.item.detach(), atol=1e-9,
                               rtol=0)
    torch.testing.assert_close(fast.model.head.user.detach(), slow.model.head.user.detach(),
                               atol=1e-9, rtol=0)
    users = torch.arange(partition.num_clients)
    torch.testing.assert_close(fast.scores(users, candidates(split)),
                               slow.scores(users, candidates(split)), atol=1e-9, rtol=0)
    torch.testing.assert_close(fast.scores_all(users), slow.scores_all(users), atol=1e-9,
                               rtol=0)


def test_the_global_mlp_is_the_mean_of_the_clients_copies(float64, data):
    engine = _engine(data, client_ratio=0.5)
    before = {name: value.detach().clone() for name, value in engine.model.shared_dense().items()}
    stats, result = engine.train_round(torch.Generator().manual_seed(0))
    assert result.upload.clients.numel() == 15
    for name, value in engine.model.shared_dense().items():
        change = result.upload.dense[name]
        assert change.shape == (15, *value.shape)
        assert change.abs().amax(dim=tuple(range(1, change.dim()))).min() > 0  # all trained
        torch.testing.assert_close(value.detach(), before[name] + change.mean(0))
    # Each client uploads its touched rows and its whole MLP copy; it downloads both.
    mlp_bytes = sum(v.numel() * v.element_size() for v in before.values())
    rows = torch.bincount(result.upload.row_owner).double().mean()
    assert stats.upload_bytes == pytest.approx(float(rows) * (8 * 8 + 8) + mlp_bytes)
    assert stats.download_bytes == 300 * 8 * 8 + mlp_bytes


def test_fedncf_trains_from_the_command_line(tmp_path, capsys):
    out = tmp_path / 'run'
    main(['train', '--algorithm', 'fedncf', '--dataset', 'synthetic', '--rounds', '3',
          '--dim', '8', '--hidden', '8', '4', '--out', str(out), '--quiet'])
    config = json.loads((out / 'config.json').read_text())
    assert config['settings']['hidden'] == [8, 4]
    metrics = json.loads((out / 'metrics.json').read_text())
    losses = [r['train_loss'] for r in metrics['rounds']]
    assert losses[-1] < losses[0]
    assert 0 < metrics['best']['test']['hr@10'] <= 1
    with cli_misuse(capsys, 'fedncf has no setting num_layers'):
        main(['train', '--algorithm', 'fedncf', '--num-layers', '2', '--quiet'])
