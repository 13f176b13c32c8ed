"""Privacy mechanisms as augmentations (client dropout, pseudo-items, LDP, SimGCL noise)
and the InfoNCE objective between two views."""
import math
from collections import Counter

import pytest
import torch

import fedgraph.nn
from fedgraph.nn import (ClientDropout, CollaborativeGraph, Compose, LaplaceLDP, PseudoItems,
                         SimGCLNoise)
from fedgraph.data import ClientPartition
from fedgraph.nn.contrastive import info_nce
from fedgraph.privacy.upload import UploadTransform


def _graph(degrees, num_items, seed=0):
    """A graph where user ``u`` holds ``degrees[u]`` distinct random items."""
    generator = torch.Generator().manual_seed(seed)
    user, item = [], []
    for u, degree in enumerate(degrees):
        user += [u] * degree
        item += torch.randperm(num_items, generator=generator)[:degree].tolist()
    return CollaborativeGraph(torch.tensor([user, item], dtype=torch.long).view(2, -1),
                              len(degrees), num_items)


def _items_by_user(edge_index):
    out = {}
    for u, i in edge_index.t().tolist():
        out.setdefault(u, []).append(i)
    return out


# --------------------------------------------------------------------------------------
# ClientDropout
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize('rate', [0.0, 0.1, 0.3, 0.55])
def test_client_dropout_drops_exactly_a_rate_of_clients(rate):
    degrees = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3, 2, 3, 8, 4]
    graph = _graph(degrees, num_items=30)
    view = ClientDropout(rate)(graph, torch.Generator().manual_seed(0))
    assert (view.num_users, view.num_items) == (graph.num_users, graph.num_items)
    before, after = _items_by_user(graph.edge_index), _items_by_user(view.edge_index)
    dropped = set(before) - set(after)
    assert len(dropped) == int(len(degrees) * rate)
    assert set(after) <= set(before)
    for user, items in after.items():
        assert items == before[user]  # every edge of a kept client, in order
    assert view.num_edges == graph.num_edges - sum(degrees[u] for u in dropped)
    # The kept edges are a subsequence of the original columns.
    kept = ~torch.isin(graph.edge_index[0], torch.tensor(sorted(dropped), dtype=torch.long))
    assert torch.equal(view.edge_index, graph.edge_index[:, kept])


def test_client_dropout_is_seeded():
    graph = _graph([2] * 40, num_items=10)
    dropout = ClientDropout(0.25)

    def dropped(seed):
        view = dropout(graph, torch.Generator().manual_seed(seed))
        return frozenset(range(40)) - frozenset(view.edge_index[0].tolist())

    assert dropped(3) == dropped(3)
    assert len({dropped(seed) for seed in range(6)}) > 1
    # Every client is dropped by some draw: the choice is not fixed.
    assert frozenset().union(*(dropped(seed) for seed in range(30))) == frozenset(range(40))


@pytest.mark.parametrize('rate', [-0.1, 1.0, 1.5])
def test_client_dropout_rejects_bad_rates(rate):
    with pytest.raises(ValueError):
        ClientDropout(rate)


# --------------------------------------------------------------------------------------
# PseudoItems
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize('ratio', [0.1, 0.3, 1.0])
def test_pseudo_items_add_distinct_new_items(ratio):
    degrees = [0, 1, 3, 10, 19, 40, 0, 7]
    num_items = 100
    graph = _graph(degrees, num_items, seed=1)
    view = PseudoItems(ratio)(graph, torch.Generator().manual_seed(0))
    assert (view.num_users, view.num_items) == (graph.num_users, num_items)
    # The original edges come first, unchanged.
    assert torch.equal(view.edge_index[:, :graph.num_edges], graph.edge_index)
    original = _items_by_user(graph.edge_index)
    added = _items_by_user(view.edge_index[:, graph.num_edges:])
    for user, degree in enumerate(degrees):
        pseudo = added.get(user, [])
        expected = 0 if degree == 0 else min(max(1, math.floor(ratio * degree)),
                                             num_items - degree)
        assert len(pseudo) == expected, (user, degree)
        assert len(set(pseudo)) == len(pseudo)  # distinct
        assert not set(pseudo) & set(original.get(user, []))  # items it did not have
        assert all(0 <= i < num_items for i in pseudo)


def test_pseudo_items_are_uniform_over_free_items():
    """2000 clients each holding item 0 of 11 each add one pseudo-item: every other item is
    drawn about equally often, item 0 never."""
    graph = CollaborativeGraph(torch.stack([torch.arange(2000), torch.zeros(2000).long()]),
                               2000, 11)
    view = PseudoItems(0.1)(graph, torch.Generator().manual_seed(0))
    counts = Counter(view.edge_index[1, graph.num_edges:].tolist())
    assert sum(counts.values()) == 2000
    assert set(counts) == set(range(1, 11))
    chi2 = sum((c - 200) ** 2 / 200 for c in counts.values())
    assert chi2 < 40  # 9 degrees of freedom: p < 1e-5 for a uniform draw


@pytest.mark.parametrize('degrees,num_items,ratio,expected', [
    # A client holding every item can add none, the other client adds one.
    ([10, 2], 10, 0.5, [0, 1]),
    # Caps differ per client: 9 of 10 items -> min(4, 1) = 1; 8 of 10 -> min(4, 2) = 2.
    ([9, 8], 10, 0.5, [1, 2]),
])
def test_pseudo_items_are_capped_by_free_items(degrees, num_items, ratio, expected):
    graph = _graph(degrees, num_items, seed=2)
    view = PseudoItems(ratio)(graph, torch.Generator().manual_seed(0))
    added = _items_by_user(view.edge_index[:, graph.num_edges:])
    assert [len(added.get(u, [])) for u in range(len(degrees))] == expected
    for user, items in added.items():
        assert not set(items) & set(_items_by_user(graph.edge_index)[user])


@pytest.mark.parametrize('ratio', [0.0, 0.3, 0.5])
def test_a_partitions_graph_with_pseudo_items_equals_the_view_of_its_graph(ratio):
    graph = _graph([4, 0, 6, 12, 1, 9], num_items=40, seed=3)
    partition = ClientPartition.from_edge_index(graph.edge_index, 6, 40)
    built = PseudoItems(ratio).graph_of(partition, torch.Generator().manual_seed(7))
    viewed = PseudoItems(ratio)(CollaborativeGraph(partition.edge_index(), 6, 40),
                                torch.Generator().manual_seed(7))
    assert torch.equal(built.edge_index.long(), viewed.edge_index)
    assert built.edge_index.dtype == torch.int32
    assert built.num_edges == 32 + (0 if ratio == 0 else
                                    sum(max(1, int(d * ratio)) for d in (4, 6, 12, 1, 9)))


def test_pseudo_items_ratio_zero_is_identity_and_seeded():
    graph = _graph([4, 0, 6, 12], num_items=50)
    assert PseudoItems(0.0)(graph, torch.Generator().manual_seed(0)) is graph
    pseudo = PseudoItems(0.5)
    a = pseudo(graph, torch.Generator().manual_seed(5))
    b = pseudo(graph, torch.Generator().manual_seed(5))
    c = pseudo(graph, torch.Generator().manual_seed(6))
    assert torch.equal(a.edge_index, b.edge_index)
    assert not torch.equal(a.edge_index, c.edge_index)
    assert a.num_edges == c.num_edges == 22 + 2 + 3 + 6
    with pytest.raises(ValueError):
        PseudoItems(-0.1)


# --------------------------------------------------------------------------------------
# SimGCLNoise
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_simgcl_noise_has_norm_eps_and_the_sign_of_x(dtype):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(50, 8, generator=generator, dtype=dtype)
    eps = 0.3
    out = SimGCLNoise(eps, torch.Generator().manual_seed(1))(x)
    assert out.dtype == dtype and out.shape == x.shape
    delta = out - x
    torch.testing.assert_close(delta.norm(dim=1), torch.full((50,), eps, dtype=dtype))
    nonzero = delta != 0
    assert nonzero.float().mean() > 0.99
    assert torch.equal(torch.sign(delta)[nonzero], torch.sign(x)[nonzero])


def test_simgcl_noise_is_zero_where_x_is_zero():
    x = torch.tensor([[1.0, 0.0, -2.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    delta = SimGCLNoise(0.5, torch.Generator().manual_seed(0))(x) - x
    assert torch.equal(delta[x == 0], torch.zeros(int((x == 0).sum())))
    assert delta[0, 0] > 0 and delta[0, 2] < 0
    assert float(delta[0].norm()) <= 0.5 + 1e-6


def test_simgcl_noise_eps_zero_is_identity_and_seeded():
    x = torch.randn(10, 4)
    assert torch.equal(SimGCLNoise(0.0, torch.Generator().manual_seed(0))(x), x)
    a = SimGCLNoise(0.1, torch.Generator().manual_seed(2))(x)
    b = SimGCLNoise(0.1, torch.Generator().manual_seed(2))(x)
    c = SimGCLNoise(0.1, torch.Generator().manual_seed(3))(x)
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError):
        SimGCLNoise(-0.1)


# --------------------------------------------------------------------------------------
# Compose and LaplaceLDP
# --------------------------------------------------------------------------------------
def test_compose_applies_in_order():
    graph = _graph([3, 2], num_items=6)
    calls = []

    def first(g, generator):
        calls.append(('first', g.num_edges))
        return CollaborativeGraph(g.edge_index[:, :1], g.num_users, g.num_items)

    def second(g, generator):
        calls.append(('second', g.num_edges))
        return g

    out = Compose([first, second])(graph, torch.Generator())
    assert calls == [('first', 5), ('second', 1)]
    assert out.num_edges == 1


def test_compose_of_dropout_and_pseudo_items_equals_sequential_application():
    graph = _graph([5, 8, 3, 10, 6, 4, 7, 9, 2, 6], num_items=40)
    dropout, pseudo = ClientDropout(0.5), PseudoItems(0.5)
    composed = Compose([dropout, pseudo])(graph, torch.Generator().manual_seed(4))
    generator = torch.Generator().manual_seed(4)
    expected = pseudo(dropout(graph, generator), generator)
    assert torch.equal(composed.edge_index, expected.edge_index)
    # Dropped clients have no edges, so they add no pseudo-items either: 5 clients remain.
    assert torch.unique(composed.edge_index[0]).numel() == 5


def test_laplace_ldp_is_the_upload_transform():
    assert issubclass(LaplaceLDP, UploadTransform) and LaplaceLDP.__name__ == 'LaplaceLDP'
    assert fedgraph.nn.LaplaceLDP is LaplaceLDP
    ldp = LaplaceLDP(clip=0.5, laplace_scale=0.1)
    update = torch.full((3, 4), 10.0)
    generator = torch.Generator().manual_seed(0)
    noised = ldp(update, generator)
    clipped = update * (0.5 / update.norm(dim=1, keepdim=True))
    assert not torch.allclose(noised, clipped)
    assert (noised - clipped).abs().max() < 5  # Laplace(0.1) noise, not the raw update
    # One row of 4 coordinates in the L2 ball of radius 0.5: L1 sensitivity 2 * 0.5 * 2.
    assert ldp.noise_multiplier(4) == pytest.approx(0.1 / 2.0)


# --------------------------------------------------------------------------------------
# InfoNCE
# --------------------------------------------------------------------------------------
def test_info_nce_by_hand():
    view1 = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    view2 = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    tau = 0.5
    # Cosines: s(a1, b1) = 1, s(a1, b2) = 1/sqrt(2), s(a2, b1) = 0, s(a2, b2) = 1/sqrt(2).
    r = 1 / math.sqrt(2)
    loss_1 = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + math.exp(r / tau)))
    loss_2 = -math.log(math.exp(r / tau) / (math.exp(0 / tau) + math.exp(r / tau)))
    expected = (loss_1 + loss_2) / 2
    assert float(info_nce(view1, view2, tau)) == pytest.approx(expected, rel=1e-6)
    # Cosine similarity: scaling a view changes nothing.
    assert float(info_nce(5 * view1, view2, tau)) == pytest.approx(expected, rel=1e-6)


def test_info_nce_prefers_matching_views():
    generator = torch.Generator().manual_seed(0)
    view = torch.randn(32, 8, generator=generator)
    noisy = view + 0.05 * torch.randn(32, 8, generator=generator)
    shuffled = noisy.roll(1, dims=0)  # every node paired with another node's view
    assert float(info_nce(view, view)) < float(info_nce(view, shuffled))
    assert float(info_nce(view, noisy)) < float(info_nce(view, shuffled))
    # Identical embeddings for every node carry no information: the loss is log N.
    constant = torch.ones(32, 8)
    assert float(info_nce(constant, constant)) == pytest.approx(math.log(32), rel=1e-6)


def test_info_nce_has_gradient():
    view1 = torch.randn(6, 4, requires_grad=True)
    view2 = torch.randn(6, 4)
    info_nce(view1, view2).backward()
    assert view1.grad is not None and view1.grad.abs().sum() > 0


@pytest.mark.parametrize('shape1,shape2', [((4, 3), (4, 2)), ((4, 3), (5, 3)), ((4,), (4,)),
                                           ((2, 4, 3), (2, 4, 3))])
def test_info_nce_rejects_mismatched_shapes(shape1, shape2):
    with pytest.raises(ValueError):
        info_nce(torch.randn(*shape1), torch.randn(*shape2))


def test_laplace_ldp_draws_what_the_upload_transform_draws():
    update = torch.randn(5, 6, generator=torch.Generator().manual_seed(1)) * 3
    for mode in ('l2', 'coordinate'):
        ldp, upload = LaplaceLDP(0.5, 0.2, mode), UploadTransform(0.5, 0.2, mode)
        noised = ldp(update, torch.Generator().manual_seed(2))
        assert torch.equal(noised, upload(update, torch.Generator().manual_seed(2)))
        assert not torch.equal(noised, ldp(update, torch.Generator().manual_seed(3)))
        assert ldp.noise_multiplier(6) == upload.noise_multiplier(6)


def test_info_nce_is_exported_from_fedgraph_nn():
    assert 'info_nce' in fedgraph.nn.__all__ and 'info_nce' in dir(fedgraph.nn)
    assert fedgraph.nn.info_nce is info_nce


@pytest.mark.parametrize('mode', ['l2', 'coordinate'])
def test_an_upload_transformed_in_blocks_of_rows_is_the_upload_transformed_whole(
        monkeypatch, mode):
    update = torch.randn(1000, 8, generator=torch.Generator().manual_seed(0)) * 3
    transform = UploadTransform(clip=2.0, laplace_scale=0.5, mode=mode)
    whole = transform(update, torch.Generator().manual_seed(1))
    monkeypatch.setattr(UploadTransform, 'BLOCK_ROWS', 64)
    blocks = transform(update, torch.Generator().manual_seed(1))
    assert torch.equal(blocks, whole)
    assert not torch.equal(whole, update.clamp(-2, 2))  # noised


def test_pseudo_edges_draw_the_clients_of_each_count_together_in_increasing_count():
    """One sort groups the clients by how many pseudo-items they add; the draws are those
    of one group after the other, smallest count first, each group's clients in id order."""
    graph = _graph([4, 0, 6, 12, 1, 9, 6, 4, 13], num_items=40, seed=5)
    partition = ClientPartition.from_edge_index(graph.edge_index, 9, 40)
    got = PseudoItems(0.5).pseudo_edges(partition, torch.Generator().manual_seed(3))
    counts = {client: max(1, int(degree * 0.5))
              for client, degree in enumerate(partition.degree.tolist()) if degree}
    generator, expected = torch.Generator().manual_seed(3), []
    for size in sorted(set(counts.values())):
        group = torch.tensor([client for client in sorted(counts) if counts[client] == size])
        drawn = partition.sample_negatives(group, size, generator)
        expected.append(torch.stack([group.repeat_interleave(size), drawn.reshape(-1)]))
    assert torch.equal(got, torch.cat(expected, dim=1))
    assert got.size(1) == sum(counts.values())
