"""ClientPartition: CSR bookkeeping, per-client reductions, batches and negative sampling."""
from collections import Counter

import pytest
import torch

from fedgraph.data import ClientBatch, ClientPartition, interactions_to_hetero

# (user, item) edges, users out of order; 4 clients (client 3 holds nothing), 6 items.
#   client 0: items 3, 0      (input order kept)
#   client 1: item 4
#   client 2: items 5, 1, 2
#   client 3: -
EDGES = torch.tensor([[2, 0, 2, 1, 0, 2],
                      [5, 3, 1, 4, 0, 2]])


def _partition():
    return ClientPartition.from_edge_index(EDGES, num_clients=4, num_items=6)


def test_from_edge_index_groups_by_user_keeping_order():
    p = _partition()
    assert p.ptr.tolist() == [0, 2, 3, 6, 6]
    assert p.col.tolist() == [3, 0, 4, 5, 1, 2]
    assert p.num_clients == 4
    assert p.num_items == 6
    assert p.num_interactions == 6
    assert p.degree.tolist() == [2, 1, 3, 0]
    assert p.row.tolist() == [0, 0, 1, 2, 2, 2]
    assert p.edge_index().tolist() == [[0, 0, 1, 2, 2, 2], [3, 0, 4, 5, 1, 2]]


def test_edges_already_in_client_order_give_the_same_partition_in_memory_of_its_own():
    grouped = EDGES[:, torch.sort(EDGES[0], stable=True).indices]
    p = ClientPartition.from_edge_index(grouped, num_clients=4, num_items=6)
    assert p.ptr.tolist() == _partition().ptr.tolist()
    assert p.col.tolist() == _partition().col.tolist()
    grouped[1, 0] = 99  # the data may be freed or changed: the partition keeps its own copy
    assert p.col.tolist() == [3, 0, 4, 5, 1, 2]


def test_items_of():
    p = _partition()
    assert p.items_of(0).tolist() == [3, 0]
    assert p.items_of(1).tolist() == [4]
    assert p.items_of(2).tolist() == [5, 1, 2]
    assert p.items_of(3).tolist() == []


def test_trailing_empty_clients_and_from_data():
    p = ClientPartition.from_edge_index(torch.tensor([[1], [0]]), num_clients=4, num_items=2)
    assert p.ptr.tolist() == [0, 0, 1, 1, 1]
    assert p.degree.tolist() == [0, 1, 0, 0]

    data = interactions_to_hetero([7, 3, 7], [21, 20, 22], time=[2, 5, 1])
    # users 3 -> 0, 7 -> 1; items 20, 21, 22 -> 0, 1, 2; user 1 chronological: 22, 21
    q = ClientPartition.from_data(data)
    assert q.ptr.tolist() == [0, 1, 3]
    assert q.col.tolist() == [0, 2, 1]
    assert q.num_items == 3


def test_bad_ptr_raises():
    with pytest.raises(ValueError):
        ClientPartition(torch.tensor([1, 2]), torch.tensor([0, 1]), 3)   # not starting at 0
    with pytest.raises(ValueError):
        ClientPartition(torch.tensor([0, 1]), torch.tensor([0, 1]), 3)   # not ending at E
    with pytest.raises(ValueError):
        ClientPartition(torch.tensor([], dtype=torch.long), torch.tensor([]), 3)


def test_reduce_sum_mean_max_min():
    p = _partition()
    values = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])  # in CSR order
    # client 0: 1, 2   client 1: 3   client 2: 4, 5, 6   client 3: empty -> 0
    assert p.reduce(values, 'sum').tolist() == [3.0, 3.0, 15.0, 0.0]
    assert p.reduce(values).tolist() == [3.0, 3.0, 15.0, 0.0]  # default is sum
    assert p.reduce(values, 'mean').tolist() == [1.5, 3.0, 5.0, 0.0]
    assert p.reduce(values, 'max').tolist() == [2.0, 3.0, 6.0, 0.0]
    assert p.reduce(values, 'min').tolist() == [1.0, 3.0, 4.0, 0.0]


def test_reduce_multi_dimensional():
    p = _partition()
    values = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    both = torch.stack([values, -10 * values], dim=1)   # [E, 2]
    out = p.reduce(both, 'mean')
    assert out.shape == (4, 2)
    # column 2: client 0: (-10 - 20) / 2 = -15, client 1: -30, client 2: -50, client 3: 0
    assert out.tolist() == [[1.5, -15.0], [3.0, -30.0], [5.0, -50.0], [0.0, 0.0]]
    # max of negatives: client 0 -> -10, client 2 -> -40
    assert p.reduce(both, 'max')[:, 1].tolist() == [-10.0, -30.0, -40.0, 0.0]


def test_batch_arbitrary_order_with_empty_client():
    p = _partition()
    b = p.batch(torch.tensor([2, 3, 0]))
    assert isinstance(b, ClientBatch)
    assert b.clients.tolist() == [2, 3, 0]
    # client 2 -> 3 entries, client 3 -> none, client 0 -> 2 entries
    assert b.ptr.tolist() == [0, 3, 3, 5]
    assert b.owner.tolist() == [0, 0, 0, 2, 2]
    assert b.item.tolist() == [5, 1, 2, 3, 0]


def test_batch_repeated_and_empty():
    p = _partition()
    b = p.batch(torch.tensor([1, 1, 3]))
    assert b.ptr.tolist() == [0, 1, 2, 2]
    assert b.owner.tolist() == [0, 1]
    assert b.item.tolist() == [4, 4]

    b = p.batch(torch.tensor([3]))
    assert b.ptr.tolist() == [0, 0]
    assert b.owner.numel() == 0 and b.item.numel() == 0

    b = p.batch(torch.tensor([], dtype=torch.long))
    assert b.ptr.tolist() == [0]
    assert b.item.numel() == 0


def test_batch_matches_items_of_on_random_partition():
    g = torch.Generator().manual_seed(0)
    edges = torch.stack([torch.randint(30, (300,), generator=g),
                         torch.randint(50, (300,), generator=g)])
    p = ClientPartition.from_edge_index(edges, 35, 50)  # clients 30..34 are empty
    for clients in (torch.randperm(35, generator=g)[:20], torch.randperm(35, generator=g),
                    torch.arange(35)):  # (all of them, in order: the partition's own tensors)
        b = p.batch(clients)
        assert b.ptr[-1] == b.owner.numel() == b.item.numel()
        for j, c in enumerate(clients.tolist()):
            assert b.item[b.ptr[j]:b.ptr[j + 1]].tolist() == p.items_of(c).tolist()
            assert (b.owner[b.ptr[j]:b.ptr[j + 1]] == j).all()


def test_contains():
    p = _partition()
    clients = torch.tensor([0, 0, 2, 3, 1, 1])
    items = torch.tensor([3, 4, 2, 0, 4, 5])
    assert p.contains(clients, items).tolist() == [True, False, True, False, True, False]
    # broadcasting: [2, 1] x [1, 6] -> [2, 6]
    out = p.contains(torch.tensor([[0], [2]]), torch.arange(6).unsqueeze(0))
    assert out.tolist() == [[True, False, False, True, False, False],
                            [False, True, True, False, False, True]]
    # an empty partition holds nothing
    empty = ClientPartition(torch.zeros(3, dtype=torch.long), torch.tensor([], dtype=torch.long),
                            4)
    assert not empty.contains(torch.tensor([0, 1]), torch.tensor([0, 3])).any()


def test_dense_mask():
    p = _partition()
    mask = p.dense_mask(torch.tensor([2, 0, 3]))
    assert mask.dtype == torch.bool
    assert mask.tolist() == [
        [False, True, True, False, False, True],    # client 2: 5, 1, 2
        [True, False, False, True, False, False],   # client 0: 3, 0
        [False] * 6,                                # client 3: nothing
    ]


def _random_partition(num_clients=40, num_items=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    edges = torch.stack([torch.randint(num_clients, (600,), generator=g),
                         torch.randint(num_items, (600,), generator=g)])
    edges = torch.unique(edges, dim=1)
    return ClientPartition.from_edge_index(edges, num_clients, num_items)


def test_sample_negatives_shape_distinct_and_never_held():
    p = _random_partition()
    clients = torch.tensor([5, 0, 39, 5, 17])
    out = p.sample_negatives(clients, 20, torch.Generator().manual_seed(0))
    assert out.shape == (5, 20)
    assert out.dtype == torch.long
    assert out.min() >= 0 and out.max() < 60
    for row, c in zip(out.tolist(), clients.tolist()):
        assert len(set(row)) == 20
        assert not set(row) & set(p.items_of(c).tolist())


def test_sample_negatives_when_almost_every_item_is_needed():
    # Client 0 holds 40 of 50 items and asks for all 10 others: exercises the redraw with
    # wider candidate rows. Every row must be a permutation of the 10 free items.
    held = torch.randperm(50, generator=torch.Generator().manual_seed(1))[:40]
    p = ClientPartition.from_edge_index(torch.stack([torch.zeros(40, dtype=torch.long), held]),
                                        1, 50)
    free = sorted(set(range(50)) - set(held.tolist()))
    out = p.sample_negatives(torch.zeros(30, dtype=torch.long), 10,
                             torch.Generator().manual_seed(0))
    assert out.shape == (30, 10)
    for row in out.tolist():
        assert sorted(row) == free
    # not all rows in the same order
    assert len({tuple(row) for row in out.tolist()}) > 1


def test_sample_negatives_seeded():
    p = _random_partition()
    clients = torch.arange(40)
    a = p.sample_negatives(clients, 15, torch.Generator().manual_seed(3))
    b = p.sample_negatives(clients, 15, torch.Generator().manual_seed(3))
    c = p.sample_negatives(clients, 15, torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_sample_negatives_uniform():
    # Client 0 holds items {0, 1, 2} of 10, 3 negatives per draw, 20000 draws.
    # Each of the 7 free items: expected 20000 * 3/7 ~ 8571 appearances (sd ~ 70), and
    # as first column 20000 / 7 ~ 2857 (sd ~ 49). Bounds of +-10% are > 12 sd away.
    p = ClientPartition.from_edge_index(torch.tensor([[0, 0, 0], [0, 1, 2]]), 1, 10)
    n = 20000
    out = p.sample_negatives(torch.zeros(n, dtype=torch.long), 3,
                             torch.Generator().manual_seed(0))
    counts = Counter(out.view(-1).tolist())
    assert set(counts) == set(range(3, 10))
    for item in range(3, 10):
        assert abs(counts[item] - n * 3 / 7) < 0.1 * n * 3 / 7, (item, counts[item])
    first = Counter(out[:, 0].tolist())
    for item in range(3, 10):
        assert abs(first[item] - n / 7) < 0.1 * n / 7, (item, first[item])
    # chi-square over the 7 cells of all appearances (6 dof: 99.99th percentile ~ 27)
    expected = n * 3 / 7
    chi2 = sum((counts[i] - expected) ** 2 / expected for i in range(3, 10))
    assert chi2 < 40


def test_sample_negatives_too_few_non_items():
    p = _partition()  # client 2 holds 3 of 6 items -> 3 free
    assert p.sample_negatives(torch.tensor([2]), 3).shape == (1, 3)
    with pytest.raises(ValueError, match='client 2'):
        p.sample_negatives(torch.tensor([0, 2, 3]), 4)
    assert p.sample_negatives(torch.tensor([0, 1, 3]), 4).shape == (3, 4)  # others may


def test_sample_negatives_no_clients():
    p = _partition()
    out = p.sample_negatives(torch.tensor([], dtype=torch.long), 2)
    assert out.shape == (0, 2)


@pytest.mark.parametrize('streams', [False, True])
def test_sample_negatives_the_same_from_the_bitmap_the_sorted_keys_and_sorted_rows(
        monkeypatch, streams):
    """Large data looks a client's items up by binary search in its sorted keys instead of a
    dense bitmap, or in its own row once the rows are sorted: the same negatives, from the
    generator or from counter-based streams."""
    clients = torch.tensor([5, 0, 39, 5, 17])
    seeds = torch.tensor([[11, 0], [12, 1], [13, 2], [11, 0], [14, 4]])
    draws = []
    for limit, rows_sorted in ((ClientPartition.DENSE_MEMBERSHIP_LIMIT, False), (0, False),
                               (0, True)):
        monkeypatch.setattr(ClientPartition, 'DENSE_MEMBERSHIP_LIMIT', limit)
        p = _random_partition()
        if rows_sorted:
            p = p.with_rows_sorted()
            assert p.membership is p.col
        else:
            assert p.membership.dtype == (torch.bool if limit else torch.long)
        draws.append(p.sample_negatives(clients, 20, torch.Generator().manual_seed(0),
                                        streams=seeds if streams else None))
        for row, c in zip(draws[-1].tolist(), clients.tolist()):
            assert len(set(row)) == 20 and not set(row) & set(p.items_of(c).tolist())
    assert torch.equal(draws[0], draws[1]) and torch.equal(draws[0], draws[2])
    if streams:  # a client's draws depend on its stream alone
        assert torch.equal(draws[0][0], draws[0][3]) and not torch.equal(draws[0][0],
                                                                          draws[0][1])


def test_a_partition_moved_where_it_is_stays_itself_with_its_membership():
    """An engine holds its data ``.to`` its model's device: on the same device that is the
    caller's partition, so a membership built by one (enrollment samples pseudo-items with
    it) serves the other instead of being built twice."""
    p = _partition()
    membership = p.membership
    assert p.to('cpu') is p and p.to(torch.device('cpu')).membership is membership


def test_a_partition_with_sorted_rows_holds_the_same_items_and_answers_contains_alike():
    edges = _random_partition().edge_index()
    edges = edges[:, torch.randperm(edges.size(1), generator=torch.Generator().manual_seed(4))]
    p = ClientPartition.from_edge_index(edges, 40, 60)
    assert any(p.items_of(client).tolist() != sorted(p.items_of(client).tolist())
               for client in range(40))
    ordered = p.with_rows_sorted()
    assert ordered.rows_sorted and not p.rows_sorted
    assert torch.equal(ordered.ptr, p.ptr)
    for client in range(p.num_clients):
        assert ordered.items_of(client).tolist() == sorted(p.items_of(client).tolist())
    generator = torch.Generator().manual_seed(5)
    clients = torch.randint(p.num_clients, (200,), generator=generator)
    items = torch.randint(p.num_items, (200,), generator=generator)
    items[:50] = p.col[p.ptr[clients[:50]]]  # held ones too
    assert torch.equal(ordered.contains(clients, items), p.contains(clients, items))
    assert bool(ordered.contains(clients, items)[:50].all())
    assert torch.equal(ordered.contains(clients.view(-1, 1), items[:3].view(1, -1)),
                       p.contains(clients.view(-1, 1), items[:3].view(1, -1)))


def test_sample_negatives_the_same_in_one_thread_as_in_parallel(monkeypatch):
    p = _random_partition()
    clients = torch.tensor([5, 0, 39, 5, 17])
    draws = []
    for threshold in (0, 1 << 40):
        monkeypatch.setattr(ClientPartition, 'PARALLEL_CANDIDATES', threshold)
        draws.append(p.sample_negatives(clients, 20, torch.Generator().manual_seed(0)))
    assert torch.equal(draws[0], draws[1])
