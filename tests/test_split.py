"""Split invariants on hand-built graphs and on a synthetic one."""
import logging
from collections import Counter

import pytest
import torch
from torch_geometric.data import HeteroData

from fedgraph.data import (ITEM, RATED_BY, RATES, USER, ClientPartition, interactions_to_hetero,
                           leave_one_out_split, predefined_split, ratio_split,
                           synthetic_interactions)
from fedgraph.data.hetero import in_client_order
from fedgraph.federated import plan as plan_module


@pytest.fixture(scope='module')
def synthetic():
    return synthetic_interactions(num_users=300, num_items=500, seed=0)


def _pairs(edge_index):
    return Counter(map(tuple, edge_index.t().tolist()))


def _user_items(data):
    """{user: [items in edge order]} of the rates edges."""
    out = {}
    for u, i in data[RATES].edge_index.t().tolist():
        out.setdefault(u, []).append(i)
    return out


def _time_of(data):
    ei, time = data[RATES].edge_index, data[RATES].time
    return {(u, i): t for (u, i), t in zip(ei.t().tolist(), time.tolist())}


# --------------------------------------------------------------------------------------
# Hand-built graph for leave-one-out
# --------------------------------------------------------------------------------------
#   user 0: items 0..4 at times 5, 1, 3, 4, 2 -> chronological 1, 4, 2, 3, 0
#           test 0 (t=5), val 3 (t=4), train {1, 4, 2}
#   user 2: items 0, 1                        -> only 2 interactions: dropped
#   user 1: items 5, 6, 7 at times 1, 2, 3    -> test 7, val 6, train {5}
#   user 3: items 8..11 at times 4, 3, 2, 1   -> chronological 11, 10, 9, 8
#           test 8, val 9, train {11, 10}
# Rows are interleaved over users on purpose.
LOO_ROWS = [  # (user, item, time)
    (0, 0, 5), (3, 8, 4), (2, 0, 1), (0, 1, 1), (1, 5, 1), (0, 2, 3), (3, 9, 3),
    (1, 6, 2), (2, 1, 2), (0, 3, 4), (3, 10, 2), (1, 7, 3), (0, 4, 2), (3, 11, 1),
]


def _loo_graph():
    user, item, time = zip(*LOO_ROWS)
    return interactions_to_hetero(user, item, time=time, name='hand')


def test_leave_one_out_hand_graph(caplog):
    data = _loo_graph()
    with caplog.at_level(logging.INFO, logger='fedgraph.data.split'):
        split = leave_one_out_split(data, eval_negatives=2, seed=0)
    assert split.protocol == 'sampled'
    # user 2 dropped, counted and logged
    assert split.num_filtered_users == 1
    assert any('dropped 1 of 4 users' in r.getMessage() for r in caplog.records)
    # remaining users re-indexed 0, 1, 2 <- raw 0, 1, 3
    assert split.train[USER].num_nodes == 3
    assert split.train[USER].raw_id.tolist() == [0, 1, 3]
    assert split.train[ITEM].num_nodes == 12
    assert split.test_item.tolist() == [0, 7, 8]
    assert split.val_item.tolist() == [3, 6, 9]
    # train keeps the chronological order of the rest
    assert _user_items(split.train) == {0: [1, 4, 2], 1: [5], 2: [11, 10]}
    assert split.train[RATES].time.tolist() == [1, 2, 3, 1, 1, 2]
    assert torch.equal(split.train[RATED_BY].edge_index, split.train[RATES].edge_index.flip(0))
    # negatives: [U, 2] each, 4 distinct non-items per user
    assert split.val_negatives.shape == (3, 2)
    assert split.test_negatives.shape == (3, 2)
    held = {0: {0, 1, 2, 3, 4}, 1: {5, 6, 7}, 2: {8, 9, 10, 11}}
    for u in range(3):
        negs = split.val_negatives[u].tolist() + split.test_negatives[u].tolist()
        assert len(set(negs)) == 4
        assert not set(negs) & held[u]
        assert all(0 <= n < 12 for n in negs)


def test_leave_one_out_no_filtering_logs_nothing(caplog):
    user, item, time = zip(*[r for r in LOO_ROWS if r[0] != 2])
    data = interactions_to_hetero(user, item, time=time)
    with caplog.at_level(logging.INFO, logger='fedgraph.data.split'):
        split = leave_one_out_split(data, eval_negatives=2)
    assert split.num_filtered_users == 0
    assert not [r for r in caplog.records if r.name == 'fedgraph.data.split']
    assert split.test_item.tolist() == [0, 7, 8]


def test_in_client_order_is_a_no_op_on_interactions_to_hetero_output_with_ties():
    # interactions_to_hetero returns edges in client order ("a no-op when they already
    # are", says in_client_order), ties in time included.
    data = interactions_to_hetero([0, 0, 0, 0], [5, 6, 7, 8], time=[1, 2, 9, 9])
    # items 7 and 8 tie at t=9; 7 is earlier in the input, so it counts as later:
    # client order is 5, 6, 8, 7 (item ids 0, 1, 3, 2)
    assert data[RATES].edge_index[1].tolist() == [0, 1, 3, 2]
    ordered = in_client_order(data)
    assert ordered[RATES].edge_index[1].tolist() == [0, 1, 3, 2]


def test_interactions_to_hetero_accepts_string_ids_given_as_lists():
    # "raw ids (integers or strings)": a list of str becomes a numpy '<U' array, not object
    data = interactions_to_hetero(['u2', 'u1', 'u2'], ['b', 'a', 'c'], time=[2, 5, 1])
    assert data[USER].raw_id == ['u1', 'u2']
    assert data[ITEM].raw_id == ['a', 'b', 'c']
    # u1 -> 0 holds a; u2 -> 1 holds c (t=1) then b (t=2)
    assert data[RATES].edge_index.tolist() == [[0, 1, 1], [0, 2, 1]]


def test_leave_one_out_ties_earlier_input_counts_as_later():
    # user 0: items 0, 1, 2, 3 at times 1, 2, 9, 9. Items 2 and 3 tie; item 2 comes
    # earlier in the input, so it is the later one: test 2, val 3.
    # Items 4..9 exist (held by user 1) so that negatives can be drawn.
    user = [0, 0, 0, 0] + [1] * 6
    item = [0, 1, 2, 3] + [4, 5, 6, 7, 8, 9]
    time = [1, 2, 9, 9] + [1, 2, 3, 4, 5, 6]
    split = leave_one_out_split(interactions_to_hetero(user, item, time=time),
                                eval_negatives=1)
    assert split.test_item.tolist() == [2, 9]
    assert split.val_item.tolist() == [3, 8]


def test_leave_one_out_all_users_too_small():
    data = interactions_to_hetero([0, 0, 1], [0, 1, 2], time=[1, 2, 3])
    with pytest.raises(ValueError, match='3 interactions'):
        leave_one_out_split(data, eval_negatives=1)


def test_leave_one_out_too_few_non_items():
    # user 0 holds 5 of 12 items -> 7 free; 2 * 4 = 8 negatives cannot be drawn
    with pytest.raises(ValueError, match='negatives'):
        leave_one_out_split(_loo_graph(), eval_negatives=4)
    # 2 * 3 = 6 <= 7 works
    split = leave_one_out_split(_loo_graph(), eval_negatives=3)
    assert split.test_negatives.shape == (3, 3)


def test_leave_one_out_synthetic_invariants(synthetic):
    split = leave_one_out_split(synthetic, seed=0)
    full = ClientPartition.from_data(synthetic)
    full_order = _user_items(synthetic)
    raw = split.train[USER].raw_id
    U = split.train[USER].num_nodes
    kept = (full.degree >= 3)
    assert split.num_filtered_users == int((~kept).sum())
    assert U == int(kept.sum())
    assert raw.tolist() == torch.nonzero(kept).view(-1).tolist()

    # one val and one test item per user: the second latest and the latest
    time_of = _time_of(synthetic)
    assert split.val_item.shape == split.test_item.shape == (U,)
    for u in range(U):
        items = full_order[int(raw[u])]
        times = [time_of[(int(raw[u]), i)] for i in items]
        assert times == sorted(times)  # synthetic: time is the draw order
        assert split.test_item[u] == items[-1]
        assert split.val_item[u] == items[-2]

    # train + val + test = all interactions (in raw user ids)
    train = split.train[RATES].edge_index
    rebuilt = torch.cat([
        torch.stack([raw[train[0]], train[1]]),
        torch.stack([raw, split.val_item]),
        torch.stack([raw, split.test_item]),
    ], dim=1)
    assert _pairs(rebuilt) == _pairs(synthetic[RATES].edge_index)
    assert train.size(1) == synthetic[RATES].edge_index.size(1) - 2 * U

    # negatives: [U, 99], distinct within a row, never rated, val/test disjoint
    assert split.val_negatives.shape == (U, 99)
    assert split.test_negatives.shape == (U, 99)
    both = torch.cat([split.val_negatives, split.test_negatives], dim=1)
    assert both.min() >= 0 and both.max() < synthetic[ITEM].num_nodes
    sorted_both = both.sort(dim=1).values
    assert not (sorted_both[:, 1:] == sorted_both[:, :-1]).any()  # distinct & disjoint
    rated = full.contains(raw.unsqueeze(1), both)
    assert not rated.any()


def test_leave_one_out_seeding(synthetic):
    a = leave_one_out_split(synthetic, seed=3)
    b = leave_one_out_split(synthetic, seed=3)
    c = leave_one_out_split(synthetic, seed=4)
    for name in ('val_item', 'test_item', 'val_negatives', 'test_negatives'):
        assert torch.equal(getattr(a, name), getattr(b, name))
    for key in ('edge_index', 'time'):
        assert torch.equal(a.train[RATES][key], b.train[RATES][key])
    assert a.num_filtered_users == b.num_filtered_users
    # another seed: same held-out items, other negatives
    assert torch.equal(a.test_item, c.test_item)
    assert not torch.equal(a.val_negatives, c.val_negatives)
    assert not torch.equal(a.test_negatives, c.test_negatives)


# --------------------------------------------------------------------------------------
# ratio_split
# --------------------------------------------------------------------------------------

def _check_ratio_split(data, split, num_val_of, num_test_of):
    full = ClientPartition.from_data(data)
    train = ClientPartition.from_data(split.train)
    assert split.protocol == 'full'
    assert split.val.num_clients == split.test.num_clients == full.num_clients
    assert split.val.num_items == split.test.num_items == full.num_items
    for u, n in enumerate(full.degree.tolist()):
        assert split.val.degree[u] == num_val_of(n), (u, n)
        assert split.test.degree[u] == num_test_of(n), (u, n)
        assert train.degree[u] == n - num_val_of(n) - num_test_of(n)
        assert train.degree[u] >= 1
    # disjoint and complete
    rebuilt = torch.cat([split.train[RATES].edge_index, split.val.edge_index(),
                         split.test.edge_index()], dim=1)
    assert _pairs(rebuilt) == _pairs(data[RATES].edge_index)
    assert max(_pairs(rebuilt).values()) == 1


@pytest.mark.parametrize('mode', ['random', 'temporal'])
def test_ratio_split_sizes_default_ratios(synthetic, mode):
    split = ratio_split(synthetic, mode=mode, seed=0)
    # floor(n * 0.1) for both, in integer arithmetic
    _check_ratio_split(synthetic, split, lambda n: n // 10, lambda n: n // 10)


def test_ratio_split_sizes_other_ratios(synthetic):
    split = ratio_split(synthetic, ratios=(0.6, 0.25, 0.15), mode='random', seed=1)
    # floor(n / 4) and floor(15 n / 100), exactly (e.g. n = 20 -> 5 and 3)
    _check_ratio_split(synthetic, split, lambda n: n // 4, lambda n: 15 * n // 100)


def test_ratio_split_hand_sizes():
    # user 0: 10 items -> val floor(1.0) = 1, test 1, train 8
    # user 1: 4 items  -> val floor(0.4) = 0, test 0, train 4
    # user 2: 20 items, (0.7, 0.2, 0.1) checked separately below
    user = [0] * 10 + [1] * 4
    item = list(range(10)) + list(range(4))
    data = interactions_to_hetero(user, item, time=list(range(14)))
    split = ratio_split(data, mode='temporal')
    assert split.val.degree.tolist() == [1, 0]
    assert split.test.degree.tolist() == [1, 0]
    assert split.test.items_of(0).tolist() == [9]   # latest
    assert split.val.items_of(0).tolist() == [8]    # second latest
    assert _user_items(split.train) == {0: list(range(8)), 1: [0, 1, 2, 3]}

    data = interactions_to_hetero([0] * 20, list(range(20)), time=list(range(20)))
    split = ratio_split(data, ratios=(0.7, 0.2, 0.1), mode='temporal')
    # val floor(4.0) = 4, test floor(2.0) = 2, train 14
    assert split.test.items_of(0).tolist() == [18, 19]
    assert split.val.items_of(0).tolist() == [14, 15, 16, 17]
    assert _user_items(split.train) == {0: list(range(14))}


def test_ratio_split_temporal_order(synthetic):
    split = ratio_split(synthetic, ratios=(0.6, 0.2, 0.2), mode='temporal')
    time_of = _time_of(synthetic)
    train = _user_items(split.train)
    checked = 0
    for u in range(synthetic[USER].num_nodes):
        t_train = [time_of[(u, i)] for i in train.get(u, [])]
        t_val = [time_of[(u, i)] for i in split.val.items_of(u).tolist()]
        t_test = [time_of[(u, i)] for i in split.test.items_of(u).tolist()]
        if t_val:
            assert max(t_train) < min(t_val)
            checked += 1
        if t_test:
            assert max(t_train + t_val) < min(t_test)
    assert checked > 100


def test_ratio_split_temporal_ties():
    # user 0: items 0..4, times 1, 2, 3, 9, 9; items 3 and 4 tie and 3 is earlier in the
    # input, so 3 is the latest: with (0.6, 0.2, 0.2) test {3}, val {4}.
    data = interactions_to_hetero([0] * 5, [0, 1, 2, 3, 4], time=[1, 2, 3, 9, 9])
    split = ratio_split(data, ratios=(0.6, 0.2, 0.2), mode='temporal')
    assert split.test.items_of(0).tolist() == [3]
    assert split.val.items_of(0).tolist() == [4]


def test_ratio_split_random_mode_seeding(synthetic):
    a = ratio_split(synthetic, seed=5)
    b = ratio_split(synthetic, seed=5)
    c = ratio_split(synthetic, seed=6)
    assert torch.equal(a.train[RATES].edge_index, b.train[RATES].edge_index)
    for name in ('val', 'test'):
        assert torch.equal(getattr(a, name).ptr, getattr(b, name).ptr)
        assert torch.equal(getattr(a, name).col, getattr(b, name).col)
    assert not torch.equal(a.test.col, c.test.col)
    assert not torch.equal(a.train[RATES].edge_index, c.train[RATES].edge_index)
    # random is not temporal: somewhere a test item is not among the latest
    temporal = ratio_split(synthetic, mode='temporal')
    assert not torch.equal(a.test.col, temporal.test.col)


def test_ratio_split_random_is_roughly_uniform_over_positions():
    # One user with 10 chronological items, (0.8, 0.1, 0.1): one test item each seed.
    # Over 400 seeds every position should be the test item sometimes (expected 40 each).
    data = interactions_to_hetero([0] * 10, list(range(10)), time=list(range(10)))
    counts = Counter(int(ratio_split(data, seed=s).test.col[0]) for s in range(400))
    assert set(counts) == set(range(10))
    assert min(counts.values()) >= 15 and max(counts.values()) <= 70


@pytest.mark.parametrize('ratios', [(0.5, 0.5), (0.9, 0.2, -0.1), (0.0, 0.5, 0.5),
                                    (0.8, 0.1, 0.2), (0.7, 0.1, 0.1), (0.8, 0.1, 0.1, 0.0)])
def test_ratio_split_bad_ratios(ratios):
    data = interactions_to_hetero([0] * 10, list(range(10)))
    with pytest.raises(ValueError, match='ratios'):
        ratio_split(data, ratios=ratios)


def test_ratio_split_bad_mode():
    data = interactions_to_hetero([0] * 10, list(range(10)))
    with pytest.raises(ValueError, match='mode'):
        ratio_split(data, mode='chronological')


# --------------------------------------------------------------------------------------
# predefined_split
# --------------------------------------------------------------------------------------

def test_predefined_split_hand_graph_out_of_order():
    # (user, item, time, split); edges deliberately not in client order
    rows = [(1, 2, 5, 0), (0, 1, 3, 2), (0, 0, 1, 0), (1, 3, 2, 1), (0, 2, 2, 1),
            (1, 0, 9, 2), (0, 3, 4, 1)]
    user, item, time, code = (torch.tensor(c) for c in zip(*rows))
    data = HeteroData()
    data[USER].num_nodes = 2
    data[ITEM].num_nodes = 4
    data[RATES].edge_index = torch.stack([user, item])
    data[RATES].time = time
    data[RATES].split = code
    data[RATED_BY].edge_index = data[RATES].edge_index.flip(0)

    split = predefined_split(data)
    # client order: user 0: 0 (t1, s0), 2 (t2, s1), 1 (t3, s2), 3 (t4, s1)
    #               user 1: 3 (t2, s1), 2 (t5, s0), 0 (t9, s2)
    assert split.train[RATES].edge_index.tolist() == [[0, 1], [0, 2]]
    assert split.train[RATES].time.tolist() == [1, 5]
    assert split.train[RATES].split.tolist() == [0, 0]
    assert torch.equal(split.train[RATED_BY].edge_index, split.train[RATES].edge_index.flip(0))
    assert split.val.items_of(0).tolist() == [2, 3]
    assert split.val.items_of(1).tolist() == [3]
    assert split.test.items_of(0).tolist() == [1]
    assert split.test.items_of(1).tolist() == [0]
    assert split.val.num_items == split.test.num_items == 4


def test_predefined_split_matches_attribute_on_synthetic(synthetic):
    data = synthetic.__copy__()
    E = data[RATES].edge_index.size(1)
    code = torch.randint(3, (E,), generator=torch.Generator().manual_seed(0))
    data[RATES].split = code
    split = predefined_split(data)
    ei = data[RATES].edge_index
    assert _pairs(split.train[RATES].edge_index) == _pairs(ei[:, code == 0])
    assert _pairs(split.val.edge_index()) == _pairs(ei[:, code == 1])
    assert _pairs(split.test.edge_index()) == _pairs(ei[:, code == 2])


def test_predefined_split_without_attribute(synthetic):
    with pytest.raises(ValueError, match='split'):
        predefined_split(synthetic)


def test_the_old_name_of_the_evaluation_negatives_still_splits_and_warns():
    with pytest.warns(DeprecationWarning, match='eval_negatives'):
        old = leave_one_out_split(_loo_graph(), num_negatives=3)
    new = leave_one_out_split(_loo_graph(), eval_negatives=3)
    assert torch.equal(old.test_negatives, new.test_negatives)


def test_unseen_candidates_keeps_evaluation_negatives_out_of_training(synthetic):
    """With unseen_candidates a user's validation and test negatives are never drawn as a
    training negative; by default (the PFedRec code's) some are, round after round."""
    from fedgraph.config import TrainConfig
    from fedgraph.training import build_run

    split = leave_one_out_split(synthetic, seed=0)
    candidates = torch.cat([split.val_negatives, split.test_negatives], 1)
    drawn = {}
    for unseen in (False, True):
        config = TrainConfig(dataset='synthetic', dim=8, unseen_candidates=unseen)
        engine, generator = build_run(config, split)
        plan = plan_module.plan_round(engine.partition, torch.arange(split.val_item.numel()),
                                      4, 256, 1, generator, engine.known)
        negative = plan.label == 0
        owner, item = plan.clients[plan.owner[negative]], plan.item[negative]
        drawn[unseen] = int((candidates[owner] == item.unsqueeze(1)).any(1).sum())
    assert drawn[True] == 0 < drawn[False]
