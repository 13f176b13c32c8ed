"""Contrastive views without copying the graph: a GraphView's adjacency rows, the views'
K-hop propagation at the loss's rows, and SimGCL's noise at those rows, each against the
whole view it stands for."""
import pytest
import torch

from fedgraph.data import ClientPartition
from fedgraph.nn import ClientDropout, CollaborativeGraph, Compose, FederatedGNN, PseudoItems
from fedgraph.nn import SimGCLNoise
from fedgraph.nn.views import GraphView

NUM_USERS, NUM_ITEMS = 40, 30


def _graph(edge_dtype=torch.long, seed=0):
    """Random edges over 40 users and 30 items, one repeated; user 0 and item 0 isolated,
    edges not grouped by user."""
    generator = torch.Generator().manual_seed(seed)
    user = torch.randint(1, NUM_USERS, (150,), generator=generator)
    item = torch.randint(1, NUM_ITEMS, (150,), generator=generator)
    keys = torch.unique(user * NUM_ITEMS + item)
    keys = keys[torch.randperm(keys.numel(), generator=generator)]
    edge_index = torch.stack([keys // NUM_ITEMS, keys % NUM_ITEMS])
    edge_index = torch.cat([edge_index, edge_index[:, :1]], dim=1)
    return CollaborativeGraph(edge_index.to(edge_dtype), NUM_USERS, NUM_ITEMS)


def _augmentation(rate=0.3, ratio=0.5):
    return Compose([ClientDropout(rate), PseudoItems(ratio)])


def _views(graph, seed, rate=0.3, ratio=0.5):
    """The same augmentation drawn as a GraphView and as a graph of its own."""
    view = _augmentation(rate, ratio).view(GraphView(graph),
                                          torch.Generator().manual_seed(seed))
    whole = _augmentation(rate, ratio)(graph, torch.Generator().manual_seed(seed))
    return view, whole


@pytest.mark.parametrize('edge_dtype', [torch.long, torch.int32])
@pytest.mark.parametrize('rate,ratio', [(0.0, 0.0), (0.3, 0.0), (0.0, 0.5), (0.3, 0.5)])
def test_a_views_graph_is_the_augmented_graph(edge_dtype, rate, ratio):
    graph = _graph(edge_dtype)
    view, whole = _views(graph, seed=1, rate=rate, ratio=ratio)
    assert torch.equal(view.graph().edge_index.long(), whole.edge_index.long())


@pytest.mark.parametrize('seed', [1, 2])
def test_a_views_rows_are_the_rows_of_its_graphs_adjacency_in_the_same_order(float64, seed):
    """Every row, in any order of the rows asked for, holds the entries (columns, values,
    their order) of the adjacency of the view's graph: dropped users' rows are empty,
    items lose their dropped users and gain their pseudo ones."""
    graph = _graph()
    graph.normalized_adjacency()  # a server's graph: its adjacency is built
    view, whole = _views(graph, seed)
    assert view.kept is not None and not bool(view.kept.all())
    assert view.extra.numel()
    adjacency = whole.normalized_adjacency()
    crow, col, values = (adjacency.crow_indices(), adjacency.col_indices(),
                         adjacency.values())
    users = torch.tensor([5, 0, 39, 12] + list(range(1, 40, 3)))
    items = torch.tensor([0, 29, 7] + list(range(1, 30, 2)))
    user_rows, item_rows = view.rows(users, items)
    for rows, matrix, shift in ((users, user_rows, 0), (items, item_rows, NUM_USERS)):
        assert matrix.size(0) == rows.numel()
        for position, row in enumerate(rows.tolist()):
            node = row + shift
            expected = slice(int(crow[node]), int(crow[node + 1]))
            got = slice(int(matrix.crow_indices()[position]),
                        int(matrix.crow_indices()[position + 1]))
            first_column = NUM_USERS if shift == 0 else 0  # a user's columns are items
            assert matrix.col_indices()[got].tolist() == \
                (col[expected] - first_column).tolist()
            torch.testing.assert_close(matrix.values()[got], values[expected], rtol=0,
                                       atol=1e-15)


def test_a_views_user_partition_is_the_partition_of_its_graph():
    """Without extra edges: the server's item sets and the kept users that hold items;
    with them: the partition of the view's edges."""
    graph = _graph()
    dropped = ClientDropout(0.3).view(GraphView(graph), torch.Generator().manual_seed(4))
    partition, clients = dropped.user_partition()
    whole = dropped.graph()
    expected = ClientPartition.from_edge_index(whole.edge_index, NUM_USERS, NUM_ITEMS)
    assert clients.tolist() == torch.nonzero(expected.degree > 0).view(-1).tolist()
    for client in clients.tolist():
        assert partition.items_of(client).tolist() == sorted(expected.items_of(client).tolist())
    augmented = PseudoItems(0.5).view(dropped, torch.Generator().manual_seed(5))
    partition, clients = augmented.user_partition()
    assert clients is None
    expected = ClientPartition.from_edge_index(augmented.graph().edge_index, NUM_USERS,
                                               NUM_ITEMS)
    assert torch.equal(partition.ptr, expected.ptr) and torch.equal(partition.col,
                                                                    expected.col)


def test_pseudo_items_on_a_view_with_extra_edges_avoid_them_as_on_its_graph():
    graph = _graph()
    once = PseudoItems(0.5).view(GraphView(graph), torch.Generator().manual_seed(6))
    twice = PseudoItems(0.5).view(once, torch.Generator().manual_seed(7))
    expected = PseudoItems(0.5)(once.graph(), torch.Generator().manual_seed(7))
    assert torch.equal(twice.graph().edge_index, expected.edge_index)


def test_item_sets_are_each_users_items_ascending_from_the_edges_or_the_adjacency():
    graph = _graph(torch.int32)
    expected = ClientPartition.from_edge_index(graph.edge_index, NUM_USERS, NUM_ITEMS)
    from_edges = graph.item_sets()
    graph.normalized_adjacency()
    from_adjacency = graph.item_sets()
    for partition in (from_edges, from_adjacency):
        assert partition.rows_sorted
        assert torch.equal(partition.ptr, expected.ptr)
        for user in range(NUM_USERS):
            assert partition.items_of(user).tolist() == sorted(
                expected.items_of(user).tolist())


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('chunk', [1, 7, 1 << 16])
def test_simgcl_noise_at_rows_is_the_whole_layers_noise_at_them(monkeypatch, dtype, chunk):
    monkeypatch.setattr(SimGCLNoise, 'CHUNK_ROWS', chunk)
    x = torch.randn(70, 5, generator=torch.Generator().manual_seed(0), dtype=dtype)
    whole = SimGCLNoise(0.2, torch.Generator().manual_seed(1))(x)
    for nodes in ([0, 3, 4, 40, 69], [69], [], list(range(70))):
        nodes = torch.tensor(nodes, dtype=torch.long)
        rows = SimGCLNoise(0.2, torch.Generator().manual_seed(1)).rows(x[nodes], nodes, 70)
        assert torch.equal(rows, whole[nodes])


@pytest.mark.parametrize('num_layers', [1, 2, 3])
def test_a_views_rows_propagate_as_its_whole_graph_at_those_rows(float64, monkeypatch,
                                                                 num_layers):
    """The K-hop propagation of a view at the loss's rows equals the whole view's
    propagation (same augmentation and SimGCL draws) at those rows, with the same
    gradients in the user and item tables."""
    monkeypatch.setattr(SimGCLNoise, 'CHUNK_ROWS', 16)
    graph = _graph()
    graph.normalized_adjacency()
    view, whole = _views(graph, seed=3)
    generator = torch.Generator().manual_seed(8)
    user = torch.randn(NUM_USERS, 4, generator=generator, requires_grad=True)
    item = torch.randn(NUM_ITEMS, 4, generator=generator, requires_grad=True)
    gnn = FederatedGNN(num_layers)
    for users, items in (([7, 0, 3, 12], [0, 29, 4]), ([], [1, 2]), ([39], []),
                         (list(range(NUM_USERS)), list(range(NUM_ITEMS)))):
        users, items = torch.tensor(users, dtype=torch.long), torch.tensor(items,
                                                                           dtype=torch.long)
        weight_users = torch.randn(users.numel(), 4, generator=generator)
        weight_items = torch.randn(items.numel(), 4, generator=generator)
        got = gnn.view_rows(user, item, view, users, items,
                            perturb=SimGCLNoise(0.1, torch.Generator().manual_seed(9)))
        all_users, all_items = gnn(user, item, whole,
                                   perturb=SimGCLNoise(0.1, torch.Generator().manual_seed(9)))
        expected = all_users[users], all_items[items]
        for a, b in zip(got, expected):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
        gradients = [torch.autograd.grad((out[0] * weight_users).sum()
                                         + (out[1] * weight_items).sum(), (user, item))
                     for out in (got, expected)]
        for a, b in zip(*gradients):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize('shape', [(5, 9), (9, 5), (1, 1), (0, 4)])
def test_transpose_csr_is_the_dense_transpose_with_each_rows_entries_in_row_order(float64,
                                                                                   shape):
    from fedgraph.nn.gnn import transpose_csr

    generator = torch.Generator().manual_seed(2)
    dense = torch.randn(shape, generator=generator) * (torch.rand(shape, generator=generator)
                                                       < 0.4)
    transposed = transpose_csr(dense.to_sparse_csr())
    assert transposed.layout == torch.sparse_csr
    assert torch.equal(transposed.to_dense(), dense.t())
    crow, col = transposed.crow_indices(), transposed.col_indices()
    for row in range(shape[1]):
        entries = col[crow[row]:crow[row + 1]].tolist()
        assert entries == sorted(entries)


@pytest.mark.parametrize('num_layers', [0, 1, 2])
def test_a_user_table_read_outside_autograd_gets_the_gradient_autograd_gives(float64,
                                                                             num_layers):
    """Two views read one table: the gradient their backward pass adds in place into one
    buffer is the sum of the gradients in both views' inputs."""
    graph = _graph()
    graph.normalized_adjacency()
    generator = torch.Generator().manual_seed(10)
    inputs = [torch.randn(NUM_USERS, 4, generator=generator) for _ in range(2)]
    item = torch.randn(NUM_ITEMS, 4, generator=generator, requires_grad=True)
    users, items = torch.tensor([3, 7, 0, 21]), torch.tensor([2, 9, 5])
    weights = [torch.randn(n, 4, generator=generator) for n in (4, 3, 4, 3)]
    views = [_views(graph, seed)[0] for seed in (11, 12)]
    gnn = FederatedGNN(num_layers)

    def loss(tables, gradient=None):
        total = 0
        for table, view, (weight_users, weight_items) in zip(tables, views,
                                                             (weights[:2], weights[2:])):
            out = gnn.view_rows(table, item, view, users, items, user_gradient=gradient)
            total = total + (out[0] * weight_users).sum() + (out[1] * weight_items).sum()
        return total

    leaves = [table.clone().requires_grad_() for table in inputs]
    expected = torch.autograd.grad(loss(leaves), leaves + [item])
    gradient = torch.zeros(NUM_USERS, 4)
    loss(inputs, gradient).backward()  # as a pre-training step does
    torch.testing.assert_close(gradient, expected[0] + expected[1], rtol=0, atol=1e-12)
    torch.testing.assert_close(item.grad, expected[2], rtol=0, atol=1e-12)
    assert bool(gradient.abs().sum() > 0)


def test_a_views_item_product_and_its_gradient_are_the_item_rows_and_their_transpose(
        float64):
    graph = _graph()
    graph.normalized_adjacency()
    view = _views(graph, seed=13)[0]
    generator = torch.Generator().manual_seed(14)
    user = torch.randn(NUM_USERS, 3, generator=generator)
    items = torch.tensor([4, 0, 17, 29, 4])
    rows = view.rows(torch.empty(0, dtype=torch.long), items)[1].to_dense()
    torch.testing.assert_close(view.item_product(items, user), rows @ user, rtol=0,
                               atol=1e-12)
    unique = torch.tensor([0, 4, 17, 29])  # positions are unique
    grad = torch.randn(4, 3, generator=generator)
    into = torch.ones(NUM_USERS, 3)
    view.add_item_gradient(unique, grad, into)
    expected = 1 + view.rows(torch.empty(0, dtype=torch.long), unique)[1].to_dense().t() @ grad
    torch.testing.assert_close(into, expected, rtol=0, atol=1e-12)
