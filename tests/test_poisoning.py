"""Item promotion by fake users: their profiles, their boosted uploads, the exposure they win,
and the defences that stop them."""
import json

import pytest
import torch

from fedgraph.cli import main
from fedgraph.config import TrainConfig
from fedgraph.data import leave_one_out_split, synthetic_interactions
from fedgraph.data.hetero import ITEM, RATES, USER
from fedgraph.federated.messages import ClientRound, RowUpload
from fedgraph.poisoning import (ItemPromotion, TargetBooster, choose_targets, exposure_ratio,
                                run_attack, with_fake_users)
from helpers import cli_misuse, write_small_csv


def test_fake_users_rate_the_targets_and_popular_fillers(tiny_sampled_split):
    train = tiny_sampled_split.train
    attack = ItemPromotion(fraction=0.1, num_targets=2, num_fillers=5)
    targets = choose_targets(train, attack)
    popularity = torch.bincount(train[RATES].edge_index[1], minlength=train[ITEM].num_nodes)
    assert (popularity[targets] <= popularity.median()).all()

    poisoned = with_fake_users(train, targets, attack)
    num_users = train[USER].num_nodes
    assert poisoned[USER].num_nodes == num_users + 4  # ceil(0.1 * 40)
    edges = poisoned[RATES].edge_index
    assert torch.equal(edges[:, :train[RATES].num_edges], train[RATES].edge_index)
    fake = edges[:, edges[0] >= num_users]
    popular = torch.argsort(popularity, descending=True, stable=True)[:50]
    for user in range(num_users, num_users + 4):
        items = fake[1, fake[0] == user]
        assert items.numel() == 7
        assert torch.isin(targets, items).all()
        assert torch.isin(items[~torch.isin(items, targets)], popular).all()
    for key in ('time', 'rating'):
        if key in train[RATES]:
            assert poisoned[RATES][key].numel() == edges.size(1)


def test_only_the_fake_users_target_rows_are_boosted():
    upload = RowUpload(clients=torch.tensor([0, 5, 7]), row_owner=torch.tensor([0, 0, 1, 1, 2]),
                       row_item=torch.tensor([3, 4, 3, 4, 3]), update=torch.ones(5, 2))
    result = ClientRound(upload, torch.ones(3), torch.zeros(3))
    boosted = TargetBooster(torch.tensor([5, 7]), torch.tensor([3]), boost=10.0)(result)
    assert boosted.upload.update[:, 0].tolist() == [1.0, 1.0, 10.0, 1.0, 10.0]


class _Scores:
    """An engine whose users all score item ``i`` as ``i`` (item 9 first)."""
    device = torch.device('cpu')

    def scores_all(self, users):
        return torch.arange(10.0).expand(users.numel(), 10).clone()


def test_exposure_counts_users_who_never_had_the_target():
    from torch_geometric.data import HeteroData

    from fedgraph.data import ClientPartition
    from fedgraph.data.split import RankingSplit

    # users 0, 1 train on item 9; user 2 holds item 8 out for testing; user 3 knows neither.
    train = HeteroData()
    train[USER].num_nodes, train[ITEM].num_nodes = 4, 10
    train[RATES].edge_index = torch.tensor([[0, 1, 2, 3], [9, 9, 0, 0]])
    held = ClientPartition.from_edge_index(torch.tensor([[2], [8]]), 4, 10)
    empty = ClientPartition.from_edge_index(torch.empty(2, 0, dtype=torch.long), 4, 10)
    split = RankingSplit(train, empty, held)
    # Top 1 of users 0, 1 is item 8 (9 is masked); of users 2, 3 item 9.
    assert exposure_ratio(_Scores(), split, torch.tensor([8]), k=1) == pytest.approx(2 / 3)
    assert exposure_ratio(_Scores(), split, torch.tensor([9]), k=1) == pytest.approx(1.0)
    assert exposure_ratio(_Scores(), split, torch.tensor([0]), k=3) == 0.0


@pytest.mark.parametrize('defence, stops', [
    (dict(norm_bound=60.0), True), (dict(aggregation='median'), True),
    (dict(aggregation='trimmed_mean'), False)])
def test_boosted_fake_users_promote_a_target_and_a_defence_stops_them(defence, stops):
    """2% fake users (6 of 300) put a long-tail item into nearly every benign top 10 of
    PFedRec; a norm bound and the median each keep it out. The 20%-trimmed mean does not:
    the target's row is uploaded by about 18 benign clients (as a sampled negative) and the
    6 fake ones, more than the fifth it trims at each end."""
    split = leave_one_out_split(synthetic_interactions(num_users=300, num_items=1000,
                                                       mean_degree=20, seed=2))
    config = dict(algorithm='pfedrec', rounds=10, dim=8)
    attack = ItemPromotion(fraction=0.02, boost=30.0, num_fillers=10)
    clean = run_attack(TrainConfig(**config), ItemPromotion(fraction=0.0), split,
                       progress=False)
    attacked = run_attack(TrainConfig(**config), attack, split, progress=False)
    defended = run_attack(TrainConfig(**config, **defence), attack, split, progress=False)
    assert clean['fake_users'] == 0 and attacked['fake_users'] == 6
    assert clean['er@10'] < 0.05 and attacked['er@10'] > 0.8
    if stops:
        assert defended['er@10'] < 0.05
        assert defended['hr@10'] > clean['hr@10'] - 0.05
    else:
        assert defended['er@10'] > 0.8


def test_centralized_models_have_no_clients_to_attack(tiny_sampled_split):
    with pytest.raises(ValueError, match='runs no federated rounds'):
        run_attack(TrainConfig(algorithm='mf', rounds=1, dim=8), ItemPromotion(),
                   tiny_sampled_split, progress=False)


def test_attack_command_prints_the_grid_and_resumes_from_its_file(tmp_path, capsys):
    data = write_small_csv(tmp_path / 'data.csv')
    out = tmp_path / 'grid.jsonl'
    argv = ['attack', '--dataset', 'csv', '--data-path', str(data), '--eval-negatives', '20',
            '--rounds', '2',
            '--dim', '8', '--fractions', '0', '0.1', '--defences', 'none', 'norm_bound',
            '--norm-bound', '1', '--seeds', '0', '--out', str(out), '--quiet']
    main(argv)
    first = capsys.readouterr().out
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r['fraction'], r['defence']) for r in rows] == [
        (0.0, 'none'), (0.0, 'norm_bound'), (0.1, 'none'), (0.1, 'norm_bound')]
    assert '| 10% (3) | norm_bound | 1 |' in first and 'load average' in first
    main(argv)  # every cell is in the file: nothing runs again
    assert out.read_text().count('\n') == 4
    assert capsys.readouterr().out.split('threads')[0] == first.split('threads')[0]
    with cli_misuse(capsys, 'needs --norm-bound'):
        main(argv[:-7] + ['--seeds', '1', '--quiet'])
    before = out.read_text()
    with cli_misuse(capsys, r'grid.jsonl holds results of another configuration \(dim: 8 '
                            r'there, 16 now; attack.boost: 30.0 there, 5.0 now\)'):
        main(argv + ['--dim', '16', '--boost', '5'])
    assert out.read_text() == before
