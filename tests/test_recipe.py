"""Graph models on sparse data: data with its own split (LightGCN folders), planted synthetic
structure, the PerFedRec++ code's recipe (coordinate clipping, server-side noise), early
stopping, and the centralized ceilings (LightGCN, SimGCL, most popular)."""
import json

import pytest
import torch
from torch_geometric.nn.models import LightGCN as PyGLightGCN

from fedgraph.algorithms.lightgcn import layer_weights
from fedgraph.cli import main
from fedgraph.config import TrainConfig
from fedgraph.data import (ClientPartition, load_dataset, predefined_split, ratio_split,
                           synthetic_interactions, write_lightgcn)
from fedgraph.privacy.upload import UploadTransform, server_mean_noise
from fedgraph.nn.gnn import CollaborativeGraph
from fedgraph.records import stops_early
from fedgraph.training import build_run, prepare_split, train
from helpers import cli_misuse, read_metrics


@pytest.fixture(scope='module')
def planted():
    return synthetic_interactions(num_users=200, num_items=400, mean_degree=25, min_degree=10,
                                  num_communities=4, affinity=0.9, item_exponent=0.5, seed=3)


@pytest.fixture(scope='module')
def folder(tmp_path_factory, planted):
    return write_lightgcn(ratio_split(planted, seed=5), tmp_path_factory.mktemp('lightgcn'))


def _pairs(partition):
    return set(zip(partition.row.tolist(), partition.col.tolist()))


# --------------------------------------------------------------------------------------
# Data with its own split
# --------------------------------------------------------------------------------------
def test_a_lightgcn_folder_trains_on_its_own_split(folder, planted):
    written = ratio_split(planted, seed=5)
    config = TrainConfig(algorithm='fedmf', dataset='lightgcn', data_path=str(folder),
                         protocol='full', seed=11)
    split = prepare_split(config)
    # The files' split, not a fresh 80/10/10 draw of seed 11: the same pairs, part by part.
    assert _pairs(ClientPartition.from_data(split.train)) == \
        _pairs(ClientPartition.from_data(written.train))
    assert _pairs(split.val) == _pairs(written.val)
    assert _pairs(split.test) == _pairs(written.test)
    resplit = prepare_split(TrainConfig(algorithm='fedmf', dataset='lightgcn',
                                        data_path=str(folder), protocol='full', seed=11,
                                        split_mode='random'))
    assert _pairs(resplit.test) != _pairs(split.test)


def test_a_folder_without_validation_holds_out_part_of_training(folder, tmp_path):
    for name in ('train.txt', 'test.txt'):
        (tmp_path / name).write_text((folder / name).read_text())
    data = load_dataset('lightgcn', path=tmp_path)
    split = predefined_split(data, val_ratio=0.2, seed=1)
    train_pairs = _pairs(ClientPartition.from_data(split.train))
    val_pairs = _pairs(split.val)
    assert val_pairs and not (train_pairs & val_pairs)
    files = load_dataset('lightgcn', path=folder)
    original = _pairs(ClientPartition.from_data(predefined_split(files).train))
    assert train_pairs | val_pairs == original
    assert 0.1 < len(val_pairs) / len(original) <= 0.2
    assert _pairs(split.test) == _pairs(predefined_split(files).test)


def test_predefined_split_of_data_without_one_is_an_error(tmp_path, capsys):
    with cli_misuse(capsys, 'has no split of its own'):
        main(['train', '--algorithm', 'fedmf', '--dataset', 'ml-100k', '--protocol', 'full',
              '--split-mode', 'predefined', '--rounds', '1', '--quiet',
              '--data-root', str(tmp_path / 'none')])


def test_cli_trains_a_synthesized_folder_with_its_split(tmp_path, capsys):
    folder = tmp_path / 'sparse'
    main(['synthesize', '--out', str(folder), '--users', '120', '--items', '300',
          '--mean-degree', '20', '--communities', '3', '--seed', '2'])
    summary = json.loads(capsys.readouterr().out)
    assert summary['users'] == 120 and summary['density'] < 0.1
    assert {p.name for p in folder.iterdir()} == {'train.txt', 'valid.txt', 'test.txt'}
    main(['train', '--algorithm', 'fedmf', '--dataset', 'lightgcn', '--data-path', str(folder),
          '--protocol', 'full', '--rounds', '2', '--dim', '8', '--quiet',
          '--out', str(tmp_path / 'run')])
    config = json.loads((tmp_path / 'run' / 'config.json').read_text())
    assert config['split_mode'] is None and config['data_digest']
    test_users = len({line.split()[0] for line in (folder / 'test.txt').read_text().splitlines()})
    assert read_metrics(tmp_path / 'run')['best']['test']['recall@20'] >= 0
    assert test_users > 100
    with cli_misuse(capsys, 'not empty'):
        main(['synthesize', '--out', str(folder)])


def test_planted_communities_keep_users_to_their_community_items():
    data = synthetic_interactions(num_users=60, num_items=300, mean_degree=12, min_degree=5,
                                  num_communities=3, affinity=1.0, seed=0)
    partition = ClientPartition.from_data(data)
    items = [set(partition.items_of(user).tolist()) for user in range(60)]
    for user in range(60):
        for other in range(user + 1, 60):
            shared = items[user] & items[other]
            assert not shared or user % 3 == other % 3
    # Without affinity the generator is the plain power-law one, draw for draw.
    plain = synthetic_interactions(num_users=60, num_items=300, mean_degree=12, min_degree=5,
                                   seed=0)
    same = synthetic_interactions(num_users=60, num_items=300, mean_degree=12, min_degree=5,
                                  num_communities=3, affinity=0.0, seed=0)
    assert torch.equal(plain['user', 'rates', 'item'].edge_index,
                       same['user', 'rates', 'item'].edge_index)


# --------------------------------------------------------------------------------------
# Uploads: coordinate clipping, server-side noise
# --------------------------------------------------------------------------------------
def test_coordinate_clipping_clamps_each_coordinate():
    update = torch.tensor([[0.9, -0.2, -3.0], [0.1, 0.1, 0.1]])
    out = UploadTransform(0.5, mode='coordinate')(update, torch.Generator())
    assert torch.equal(out, torch.tensor([[0.5, -0.2, -0.5], [0.1, 0.1, 0.1]]))
    l2 = UploadTransform(0.5)(update, torch.Generator())
    assert torch.allclose(l2[0].norm(), torch.tensor(0.5))
    with pytest.raises(ValueError, match='clip mode'):
        UploadTransform(0.5, mode='linf')


def test_server_noise_has_the_variance_of_a_mean_of_laplace_draws():
    noise = server_mean_noise(torch.Size([400, 64]), 0.1, 256, torch.Generator().manual_seed(0))
    assert noise.std().item() == pytest.approx((2 / 256) ** 0.5 * 0.1, rel=0.02)


def test_noise_at_the_server_leaves_uploads_clean_and_noises_the_table(planted):
    split = ratio_split(planted, seed=0)
    common = dict(algorithm='fedmf', protocol='full', dim=8, clip=0.5, ldp_scale=0.1,
                  lr=0.0, clients_per_round=3)
    changes = {}
    for where in ('client', 'server'):
        engine, generator = build_run(TrainConfig(**common, noise_at=where), split)
        assert (engine.training.upload.laplace_scale > 0) == (where == 'client')
        before = engine.model.item.detach().clone()
        engine.run_round(generator)
        changes[where] = engine.model.item.detach() - before
    # lr = 0: the change is noise alone. Clients: the rows of their items, the rest
    # unchanged. Server: the whole table, N(0, 2 lambda^2 / 3).
    assert (changes['client'].abs().sum(1) == 0).any()
    assert (changes['server'] != 0).all()
    assert changes['server'].std().item() == pytest.approx((2 / 3) ** 0.5 * 0.1, rel=0.1)


# --------------------------------------------------------------------------------------
# Early stopping
# --------------------------------------------------------------------------------------
def test_stops_early_counts_evaluations_after_the_best():
    config = TrainConfig(algorithm='fedmf', rounds=10, patience=2)
    def evaluated(round_index, value):
        return {'round': round_index, 'val': {'hr@10': value}, 'test': {'hr@10': value}}

    history = [evaluated(i, v) for i, v in enumerate([0.1, 0.3, 0.2])]
    assert not stops_early(history, config)
    history.append(evaluated(3, 0.25))
    assert stops_early(history, config)
    history.append(evaluated(4, 0.3))  # a tie is a new best
    assert not stops_early(history, config)
    assert not stops_early(history[:4], TrainConfig(algorithm='fedmf', rounds=10))


def test_training_stops_after_patience_and_a_resume_stays_stopped(tmp_path, planted):
    split = ratio_split(planted, seed=0)
    config = dict(algorithm='fedmf', protocol='full', dim=8, rounds=60, patience=2, lr=2.0,
                  item_lr_eta=2.0)
    metrics = train(TrainConfig(**config), out=tmp_path, progress=False, split=split)
    rounds = [record['round'] for record in metrics['rounds']]
    assert metrics['stopped_early'] and rounds[-1] < 59
    assert rounds[-1] - metrics['best']['round'] >= 2
    again = train(TrainConfig(**config), out=tmp_path, resume=True, progress=False, split=split)
    assert [record['round'] for record in again['rounds']] == rounds


# --------------------------------------------------------------------------------------
# Centralized ceilings
# --------------------------------------------------------------------------------------
def test_layer_weights_with_and_without_the_ego_layer():
    assert layer_weights(2, True).tolist() == pytest.approx([1 / 3] * 3)
    assert layer_weights(2, False).tolist() == pytest.approx([0.0, 0.5, 0.5])
    with pytest.raises(ValueError, match='without the ego layer'):
        TrainConfig(algorithm='lightgcn', num_layers=0, ego_layer=False)


def test_lightgcn_scores_are_pyg_lightgcn_over_the_training_graph(planted):
    split = ratio_split(planted, seed=0)
    engine, _ = build_run(TrainConfig(algorithm='lightgcn', protocol='full', dim=8), split)
    partition = ClientPartition.from_data(split.train)
    reference = PyGLightGCN(partition.num_clients + partition.num_items, 8, 2)
    reference.embedding.weight.data.copy_(engine.model.embedding.weight.detach())
    users = partition.num_clients
    edge_index = CollaborativeGraph(partition.edge_index(), users,
                                    partition.num_items).homogeneous_edge_index()
    x = reference.get_embedding(edge_index).detach()
    torch.testing.assert_close(engine.scores_all(torch.arange(5)), x[:5] @ x[users:].t())


@pytest.mark.parametrize('algorithm', ['lightgcn', 'simgcl'])
def test_centralized_graph_models_beat_popularity_on_planted_structure(planted, algorithm):
    split = ratio_split(planted, seed=0)
    floor = train(TrainConfig(algorithm='popular', protocol='full', rounds=1), progress=False,
                  split=split)['best']['val']['recall@20']
    extra = {'cl_weight': 0.1} if algorithm == 'simgcl' else {}
    metrics = train(TrainConfig(algorithm=algorithm, protocol='full', dim=16, rounds=8,
                                batch_size=256, num_negatives=1, lr=0.05, **extra),
                    progress=False, split=split)
    losses = [record['train_loss'] for record in metrics['rounds']]
    assert losses[-1] < losses[0]
    assert metrics['best']['val']['recall@20'] > 1.2 * floor
