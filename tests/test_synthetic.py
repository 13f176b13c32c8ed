"""synthetic_interactions: determinism, graph invariants, heavy tails, input checks."""
import pytest
import torch

from fedgraph.data import ITEM, RATED_BY, RATES, USER, synthetic_interactions
from fedgraph.data.hetero import in_client_order

NUM_USERS, NUM_ITEMS = 2000, 1000


@pytest.fixture(scope='module')
def graph():
    return synthetic_interactions(num_users=NUM_USERS, num_items=NUM_ITEMS, seed=0)


def test_same_seed_same_graph(graph):
    again = synthetic_interactions(num_users=NUM_USERS, num_items=NUM_ITEMS, seed=0)
    assert torch.equal(again[RATES].edge_index, graph[RATES].edge_index)
    assert torch.equal(again[RATES].time, graph[RATES].time)


def test_different_seed_different_graph(graph):
    other = synthetic_interactions(num_users=NUM_USERS, num_items=NUM_ITEMS, seed=1)
    a, b = graph[RATES].edge_index, other[RATES].edge_index
    assert a.shape != b.shape or not torch.equal(a, b)
    # not merely a shifted copy: the sets of pairs differ substantially
    pairs_a = set(map(tuple, a.t().tolist()))
    pairs_b = set(map(tuple, b.t().tolist()))
    assert len(pairs_a & pairs_b) < 0.5 * min(len(pairs_a), len(pairs_b))


def test_chunk_size_does_not_change_the_graph(graph):
    # the chunking is a memory knob only
    chunked = synthetic_interactions(num_users=NUM_USERS, num_items=NUM_ITEMS, seed=0,
                                     chunk_size=997)
    assert torch.equal(chunked[RATES].edge_index, graph[RATES].edge_index)


def test_users_near_a_small_catalogues_cap_keep_fewer_and_their_items_stay_theirs():
    """With 12 items the cap is 6 a user, and repeated draws leave some users short of
    their degree; each chunk then writes fewer pairs than room was made for, and the users'
    items must still sit beside their users, chunked or not."""
    small = dict(num_users=400, num_items=12, min_degree=5, mean_degree=6, seed=4)
    whole, chunked = (synthetic_interactions(**small, chunk_size=size) for size in (1 << 22, 100))
    edges = whole[RATES].edge_index
    assert torch.equal(chunked[RATES].edge_index, edges) and edges.is_contiguous()
    degree = torch.bincount(edges[0], minlength=400)
    assert int(degree.max()) == 6 and int(degree.min()) < 5  # some users came up short
    assert bool((edges[0][1:] >= edges[0][:-1]).all())
    assert (edges[0] * 12 + edges[1]).unique().numel() == edges.size(1)


def test_structure(graph):
    assert graph[USER].num_nodes == NUM_USERS
    assert graph[ITEM].num_nodes == NUM_ITEMS
    assert graph[USER].raw_id.tolist() == list(range(NUM_USERS))
    assert graph[ITEM].raw_id.tolist() == list(range(NUM_ITEMS))
    ei = graph[RATES].edge_index
    assert ei.dtype == torch.long
    assert int(ei[0].min()) >= 0 and int(ei[0].max()) < NUM_USERS
    assert int(ei[1].min()) >= 0 and int(ei[1].max()) < NUM_ITEMS
    assert graph[RATES].time.shape == (ei.shape[1],)
    assert torch.equal(graph[RATED_BY].edge_index, ei.flip(0))
    assert graph.num_dropped == {}


def test_no_repeated_pairs(graph):
    ei = graph[RATES].edge_index
    key = ei[0] * NUM_ITEMS + ei[1]
    assert key.unique().numel() == key.numel()


def test_every_user_has_an_interaction(graph):
    degree = torch.bincount(graph[RATES].edge_index[0], minlength=NUM_USERS)
    assert int(degree.min()) >= 1


def test_client_order(graph):
    user, time = graph[RATES].edge_index[0], graph[RATES].time
    assert bool((user[1:] >= user[:-1]).all())
    # timestamps are the draw order: strictly increasing
    assert bool((time[1:] > time[:-1]).all())
    assert in_client_order(graph) is graph


def test_degrees_are_heavy_tailed(graph):
    ei = graph[RATES].edge_index
    user_degree = torch.bincount(ei[0], minlength=NUM_USERS).float()
    assert user_degree.max() > 10 * user_degree.median()
    # capped at half the catalogue
    assert user_degree.max() <= NUM_ITEMS // 2
    item_degree = torch.bincount(ei[1], minlength=NUM_ITEMS).float()
    top = item_degree.sort(descending=True).values[:NUM_ITEMS // 100]
    # the top 1% of items hold far more than 1% of the interactions
    assert top.sum() / item_degree.sum() > 0.15
    assert item_degree.max() > 20 * item_degree.median()


def test_uniform_popularity_is_not_heavy_tailed():
    # item_exponent 0: uniform items, so the same top-1% check fails: the test above can fail
    data = synthetic_interactions(num_users=NUM_USERS, num_items=NUM_ITEMS, item_exponent=0.0,
                                  seed=0)
    item_degree = torch.bincount(data[RATES].edge_index[1], minlength=NUM_ITEMS).float()
    top = item_degree.sort(descending=True).values[:NUM_ITEMS // 100]
    assert top.sum() / item_degree.sum() < 0.05


def test_min_degree_equal_to_mean_gives_constant_degrees():
    # scale 0: every user draws exactly min_degree items (repeats may collapse)
    data = synthetic_interactions(num_users=100, num_items=100_000, mean_degree=4,
                                  min_degree=4, item_exponent=0.0, seed=0)
    degree = torch.bincount(data[RATES].edge_index[0], minlength=100)
    assert int(degree.max()) == 4
    assert int(degree.min()) >= 3


def test_mean_degree_scales_the_interactions():
    small = synthetic_interactions(num_users=2000, num_items=5000, mean_degree=8, seed=0)
    large = synthetic_interactions(num_users=2000, num_items=5000, mean_degree=40, seed=0)
    assert large[RATES].edge_index.shape[1] > 3 * small[RATES].edge_index.shape[1]


@pytest.mark.parametrize('kwargs,match', [
    (dict(num_users=0), 'num_users >= 1'),
    (dict(num_items=1), 'num_items >= 2'),
    (dict(min_degree=0), 'min_degree'),
    (dict(mean_degree=3.0, min_degree=5), 'min_degree <= mean_degree'),
    (dict(user_exponent=2.0), 'user_exponent must be > 2'),
    (dict(user_exponent=1.5), 'user_exponent must be > 2'),
])
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        synthetic_interactions(**kwargs)
