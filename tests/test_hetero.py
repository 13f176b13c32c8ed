"""interactions_to_hetero and the graph helpers with_edges, with_users and in_client_order."""
import logging

import numpy as np
import pytest
import torch
from torch_geometric.data import HeteroData

from fedgraph.data import (ITEM, RATED_BY, RATES, USER, interactions_to_hetero, with_edges,
                           with_users)
from fedgraph.data.hetero import client_order, in_client_order

LOGGER = 'fedgraph.data.hetero'


def _check_reverse(data):
    assert torch.equal(data[RATED_BY].edge_index, data[RATES].edge_index.flip(0))


def _triples(data, attr):
    ei = data[RATES].edge_index
    return list(zip(ei[0].tolist(), ei[1].tolist(), data[RATES][attr].tolist()))


# --------------------------------------------------------------------------------------
# Implicit feedback
# --------------------------------------------------------------------------------------
def test_non_positive_ratings_are_dropped_counted_and_logged(caplog):
    user = [1, 1, 2, 3, 3, 4]
    item = [10, 11, 10, 12, 13, 14]
    rating = [5, 0, -1, 2.5, 0.5, 0]
    with caplog.at_level(logging.INFO, logger=LOGGER):
        data = interactions_to_hetero(user, item, rating, name='toy')
    assert data.num_dropped == {'non_positive_rating': 3, 'repeated_pair': 0}
    # users 2 and 4 have no positive interaction left: they are no nodes; item 11 and 14 too
    assert data[USER].raw_id.tolist() == [1, 3]
    assert data[ITEM].raw_id.tolist() == [10, 12, 13]
    assert data[USER].num_nodes == 2
    assert data[ITEM].num_nodes == 3
    assert data[RATES].edge_index.tolist() == [[0, 1, 1], [0, 1, 2]]
    assert data[RATES].rating.tolist() == [5.0, 2.5, 0.5]
    _check_reverse(data)
    messages = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert 'toy: dropped 3 interactions (non positive rating)' in messages
    assert not any('repeated pair' in m for m in messages)


def test_nothing_dropped_logs_nothing(caplog):
    with caplog.at_level(logging.INFO, logger=LOGGER):
        data = interactions_to_hetero([0, 1], [0, 1], [1.0, 2.0], [1, 2])
    assert data.num_dropped == {'non_positive_rating': 0, 'repeated_pair': 0}
    assert not [r for r in caplog.records if r.name == LOGGER]


def test_without_rating_only_repeats_are_counted():
    data = interactions_to_hetero([0, 0], [1, 2])
    assert data.num_dropped == {'repeated_pair': 0}
    assert 'rating' not in data[RATES]
    assert 'time' not in data[RATES]


def test_all_non_positive_raises():
    with pytest.raises(ValueError, match='no positive interaction'):
        interactions_to_hetero([0, 1], [0, 1], [0, -2])


@pytest.mark.parametrize('kwargs,match', [
    (dict(user=[0, 1], item=[0]), 'user and item must be 1-D of equal length'),
    (dict(user=[[0, 1]], item=[[0, 1]]), 'user and item must be 1-D'),
    (dict(user=[0, 1], item=[0, 1], rating=[1.0]), 'rating has 1 entries, expected 2'),
    (dict(user=[0, 1], item=[0, 1], time=[1, 2, 3]), 'time has 3 entries, expected 2'),
    (dict(user=[], item=[]), 'no interactions'),
])
def test_invalid_columns(kwargs, match):
    with pytest.raises(ValueError, match=match):
        interactions_to_hetero(**kwargs)


# --------------------------------------------------------------------------------------
# Repeated pairs
# --------------------------------------------------------------------------------------
def test_repeated_pairs_keep_the_latest_by_time(caplog):
    # (0, 10) at t=5 (r=1), t=9 (r=2), t=7 (r=3): the t=9 copy is the latest
    user = [0, 0, 1, 0, 0]
    item = [10, 10, 10, 11, 10]
    rating = [1, 2, 4, 5, 3]
    time = [5, 9, 1, 6, 7]
    with caplog.at_level(logging.INFO, logger=LOGGER):
        data = interactions_to_hetero(user, item, rating, time, name='rep')
    assert data.num_dropped == {'non_positive_rating': 0, 'repeated_pair': 2}
    assert any(r.getMessage() == 'rep: dropped 2 interactions (repeated pair)'
               for r in caplog.records)
    # user 0: item 11 @ 6, item 10 @ 9; user 1: item 10 @ 1
    assert _triples(data, 'time') == [(0, 1, 6), (0, 0, 9), (1, 0, 1)]
    assert data[RATES].rating.tolist() == [5.0, 2.0, 4.0]
    _check_reverse(data)


def test_repeated_pairs_without_time_keep_the_last_in_input():
    data = interactions_to_hetero([0, 0, 0, 0], [3, 4, 3, 5], [1, 2, 3, 4])
    assert data.num_dropped['repeated_pair'] == 1
    # input order 3, 4, 3, 5 -> the first copy of 3 goes: 4, 3, 5 (item ids 1, 0, 2)
    assert data[RATES].edge_index.tolist() == [[0, 0, 0], [1, 0, 2]]
    assert data[RATES].rating.tolist() == [2.0, 3.0, 4.0]


def test_repeated_pair_tied_in_time_keeps_the_earlier_input_row():
    # two copies of (0, 7) at the same time: the one EARLIER in the input counts as later
    data = interactions_to_hetero([0, 0], [7, 7], [1.0, 2.0], [4, 4])
    assert data.num_dropped['repeated_pair'] == 1
    assert data[RATES].rating.tolist() == [1.0]


def test_non_positive_rows_are_dropped_before_repeats():
    # the later copy of (0, 1) has rating 0: it is dropped as non-positive, not as a repeat,
    # and the earlier positive copy stays
    data = interactions_to_hetero([0, 0], [1, 1], [4, 0], [1, 2])
    assert data.num_dropped == {'non_positive_rating': 1, 'repeated_pair': 0}
    assert _triples(data, 'time') == [(0, 0, 1)]


# --------------------------------------------------------------------------------------
# Client order
# --------------------------------------------------------------------------------------
def test_client_order_sorts_by_user_then_time():
    user = np.array([2, 0, 1, 0, 2, 0])
    time = np.array([3, 9, 1, 2, 1, 5])
    order = client_order(user, time)
    assert order.tolist() == [3, 5, 1, 2, 4, 0]


def test_client_order_ties_earlier_input_counts_as_later():
    # user 0 has three interactions at t=4 (positions 0, 2, 3) and one at t=1
    user = np.array([0, 1, 0, 0, 0])
    time = np.array([4, 4, 4, 4, 1])
    order = client_order(user, time)
    assert order.tolist() == [4, 3, 2, 0, 1]


def test_client_order_without_time_is_input_order():
    user = np.array([1, 0, 1, 0, 1])
    assert client_order(user, None).tolist() == [1, 3, 0, 2, 4]


def test_interactions_to_hetero_edges_in_client_order():
    user = ['b', 'a', 'b', 'a', 'b']
    item = ['x', 'y', 'z', 'x', 'y']
    time = [3, 7, 3, 2, 1]
    data = interactions_to_hetero(user, item, time=time)
    # a: x@2, y@7; b: y@1, then x@3 and z@3 tie: z comes later in the input so it is
    # earlier in client order -> z, x
    assert data[USER].raw_id == ['a', 'b']
    assert data[ITEM].raw_id == ['x', 'y', 'z']
    assert _triples(data, 'time') == [(0, 0, 2), (0, 1, 7), (1, 1, 1), (1, 2, 3), (1, 0, 3)]
    _check_reverse(data)


def test_interactions_to_hetero_without_time_keeps_input_order():
    data = interactions_to_hetero([5, 3, 5, 3], [9, 8, 7, 6])
    # user 3: items 8, 6 (ids 1, 0); user 5: items 9, 7 (ids 3, 2)
    assert data[RATES].edge_index.tolist() == [[0, 0, 1, 1], [2, 0, 3, 1]]


def test_raw_ids_integer_and_string():
    ints = interactions_to_hetero(np.array([30, 10, 20]), np.array([-1, 5, 100]))
    assert isinstance(ints[USER].raw_id, torch.Tensor)
    assert ints[USER].raw_id.dtype == torch.int64
    assert ints[USER].raw_id.tolist() == [10, 20, 30]
    assert ints[ITEM].raw_id.tolist() == [-1, 5, 100]
    strs = interactions_to_hetero(np.array(['u3', 'u1'], dtype=object), ['b', 'a'])
    assert strs[USER].raw_id == ['u1', 'u3']
    assert all(type(r) is str for r in strs[USER].raw_id + strs[ITEM].raw_id)


# --------------------------------------------------------------------------------------
# with_edges / with_users
# --------------------------------------------------------------------------------------
def _graph():
    # users 0..3, items 0..4; 8 edges in client order
    user = [0, 0, 1, 1, 1, 2, 3, 3]
    item = [0, 1, 1, 2, 3, 4, 0, 4]
    rating = [1, 2, 3, 4, 5, 6, 7, 8]
    time = [1, 2, 1, 2, 3, 1, 1, 2]
    return interactions_to_hetero(user, item, rating, time, name='g')


def test_with_edges_keeps_attributes_aligned_and_reverse_consistent():
    data = _graph()
    before = data[RATES].edge_index.clone()
    mask = torch.tensor([True, False, True, True, False, False, True, True])
    out = with_edges(data, mask)
    assert out[RATES].edge_index.tolist() == [[0, 1, 1, 3, 3], [0, 1, 2, 0, 4]]
    assert out[RATES].rating.tolist() == [1.0, 3.0, 4.0, 7.0, 8.0]
    assert out[RATES].time.tolist() == [1, 1, 2, 1, 2]
    _check_reverse(out)
    # nodes and raw ids unchanged
    assert out[USER].num_nodes == 4
    assert out[ITEM].num_nodes == 5
    assert out[USER].raw_id.tolist() == [0, 1, 2, 3]
    # the input graph is not modified
    assert torch.equal(data[RATES].edge_index, before)
    assert data[RATES].rating.numel() == 8
    assert data[RATED_BY].edge_index.shape == (2, 8)


def test_with_users_reindexes_users_and_keeps_raw_ids():
    data = interactions_to_hetero([10, 10, 20, 30, 30, 40], [0, 1, 1, 2, 0, 3],
                                  time=[1, 2, 1, 1, 2, 1])
    mask = torch.tensor([True, False, True, False])  # keep raw users 10 and 30
    out = with_users(data, mask)
    assert out[USER].num_nodes == 2
    assert out[USER].raw_id.tolist() == [10, 30]
    assert out[ITEM].num_nodes == 4  # items are kept as they are
    assert out[ITEM].raw_id.tolist() == [0, 1, 2, 3]
    assert _triples(out, 'time') == [(0, 0, 1), (0, 1, 2), (1, 2, 1), (1, 0, 2)]
    _check_reverse(out)
    # the input keeps its 4 users and 6 edges
    assert data[USER].num_nodes == 4
    assert data[RATES].edge_index.shape == (2, 6)


def test_with_users_string_raw_ids():
    data = interactions_to_hetero(['c', 'a', 'b', 'c'], ['x', 'y', 'x', 'z'])
    out = with_users(data, torch.tensor([False, True, True]))
    assert out[USER].raw_id == ['b', 'c']
    assert out[USER].num_nodes == 2
    # 'b': x; 'c': x, z
    assert out[RATES].edge_index.tolist() == [[0, 1, 1], [0, 0, 2]]
    _check_reverse(out)


# --------------------------------------------------------------------------------------
# in_client_order
# --------------------------------------------------------------------------------------
def _hand_graph(user, item, time=None, rating=None):
    data = HeteroData()
    data[USER].num_nodes = max(user) + 1
    data[ITEM].num_nodes = max(item) + 1
    data[RATES].edge_index = torch.tensor([user, item])
    if time is not None:
        data[RATES].time = torch.tensor(time)
    if rating is not None:
        data[RATES].rating = torch.tensor(rating, dtype=torch.float)
    data[RATED_BY].edge_index = data[RATES].edge_index.flip(0)
    return data


def test_in_client_order_sorts_a_shuffled_graph():
    # edge k has rating k, so the permutation can be read off the ratings
    data = _hand_graph(user=[2, 0, 1, 0, 2, 0, 1], item=[0, 1, 2, 3, 4, 5, 6],
                       time=[5, 3, 2, 1, 4, 3, 2], rating=[0, 1, 2, 3, 4, 5, 6])
    out = in_client_order(data)
    assert out is not data
    # user 0: t=1 (edge 3), then edges 1 and 5 tie at t=3 -> 5 before 1;
    # user 1: edges 2 and 6 tie at t=2 -> 6 before 2; user 2: t=4 (edge 4), t=5 (edge 0)
    assert out[RATES].rating.tolist() == [3, 5, 1, 6, 2, 4, 0]
    assert out[RATES].edge_index.tolist() == [[0, 0, 0, 1, 1, 2, 2], [3, 5, 1, 6, 2, 4, 0]]
    assert out[RATES].time.tolist() == [1, 3, 3, 2, 2, 4, 5]
    _check_reverse(out)
    # the input is not modified
    assert data[RATES].rating.tolist() == [0, 1, 2, 3, 4, 5, 6]


def test_in_client_order_without_time_keeps_input_order_within_users():
    data = _hand_graph(user=[1, 0, 1, 0], item=[0, 1, 2, 3], rating=[0, 1, 2, 3])
    out = in_client_order(data)
    assert out[RATES].edge_index.tolist() == [[0, 0, 1, 1], [1, 3, 0, 2]]
    assert out[RATES].rating.tolist() == [1, 3, 0, 2]
    _check_reverse(out)


def test_in_client_order_returns_a_sorted_graph_as_it_is():
    data = _hand_graph(user=[0, 0, 1], item=[0, 1, 2], time=[1, 1, 0])
    assert in_client_order(data) is data
    built = interactions_to_hetero([0, 1, 0], [1, 0, 2], time=[3, 1, 2])
    assert in_client_order(built) is built


def test_in_client_order_sorts_users_in_order_but_time_out_of_order():
    data = _hand_graph(user=[0, 0, 1], item=[0, 1, 2], time=[5, 1, 0])
    out = in_client_order(data)
    assert out is not data
    assert out[RATES].edge_index.tolist() == [[0, 0, 1], [1, 0, 2]]
