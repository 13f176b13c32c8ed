"""The federated GNN layer: LightGCN propagation checked by hand and against PyG, the
context it hands clients, and the zero-layer case -- a graph model with K = 0 *is* FedMF /
PFedRec, engine for engine."""
import functools
import math

import pytest
import torch
from torch_geometric.nn import LightGCN

from fedgraph.federated.graph import GraphFederatedEngine
from fedgraph.federated import FederatedEngine, ReferenceEngine
from fedgraph.nn import CollaborativeGraph, FederatedGNN, FederatedRecommender
from helpers import HEADS, candidates, engine_data, make_engine, make_model

DIM = 4
ATOL = 1e-5


@pytest.fixture(scope='module')
def data():
    """(split, training partition, known items) of a small synthetic data set."""
    return engine_data(num_users=30, num_items=300, mean_degree=15, seed=3)


def _tiny_graph():
    """2 users, 3 items: user 0 holds items 0 and 1, user 1 holds items 1 and 2."""
    edge_index = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 2]])
    return CollaborativeGraph(edge_index, num_users=2, num_items=3)


def _normalized_adjacency(graph):
    """Dense ``D^-1/2 A D^-1/2`` over nodes ``[users; items]`` (isolated nodes: rows of 0)."""
    n = graph.num_users + graph.num_items
    adjacency = torch.zeros(n, n)
    user, item = graph.edge_index
    adjacency[user, item + graph.num_users] = 1
    adjacency[item + graph.num_users, user] = 1
    degree = adjacency.sum(1)
    inv_sqrt = torch.where(degree > 0, degree.pow(-0.5), torch.zeros_like(degree))
    return inv_sqrt.view(-1, 1) * adjacency * inv_sqrt.view(1, -1)


# --------------------------------------------------------------------------------------
# CollaborativeGraph
# --------------------------------------------------------------------------------------
def test_homogeneous_edge_index_layout():
    graph = CollaborativeGraph(torch.tensor([[0, 1, 2], [2, 0, 0]]), num_users=3, num_items=4)
    assert graph.num_edges == 3
    homogeneous = graph.homogeneous_edge_index()
    # Item i is node 3 + i; user->item edges first, then the same edges reversed.
    assert homogeneous.tolist() == [[0, 1, 2, 5, 3, 3], [5, 3, 3, 0, 1, 2]]
    assert int(homogeneous.max()) < graph.num_users + graph.num_items
    # Undirected: the edge set is closed under reversal.
    pairs = set(map(tuple, homogeneous.t().tolist()))
    assert pairs == {(b, a) for a, b in pairs}
    # The graph's own edge index is not modified.
    assert graph.edge_index.tolist() == [[0, 1, 2], [2, 0, 0]]


# --------------------------------------------------------------------------------------
# FederatedGNN
# --------------------------------------------------------------------------------------
def test_zero_layers_or_no_graph_return_inputs_unchanged():
    user, item = torch.randn(2, DIM), torch.randn(3, DIM)
    for gnn, graph in ((FederatedGNN(0), _tiny_graph()), (FederatedGNN(2), None)):
        out_user, out_item = gnn(user, item, graph)
        assert out_user is user and out_item is item
        assert gnn.context(user, item, graph) == (None, None)


def test_negative_layers_rejected():
    with pytest.raises(ValueError):
        FederatedGNN(-1)


def test_one_layer_equals_lightgcn_by_hand(float64):
    graph = _tiny_graph()
    generator = torch.Generator().manual_seed(0)
    user, item = torch.randn(2, DIM, generator=generator), torch.randn(3, DIM, generator=generator)
    # Degrees: users 2 and 2; items 1, 2, 1. Edge weight 1 / sqrt(deg_u * deg_i).
    u0, u1 = user
    i0, i1, i2 = item
    user_1 = torch.stack([i0 / math.sqrt(2 * 1) + i1 / math.sqrt(2 * 2),
                          i1 / math.sqrt(2 * 2) + i2 / math.sqrt(2 * 1)])
    item_1 = torch.stack([u0 / math.sqrt(2 * 1),
                          u0 / math.sqrt(2 * 2) + u1 / math.sqrt(2 * 2),
                          u1 / math.sqrt(2 * 1)])
    out_user, out_item = FederatedGNN(1)(user, item, graph)
    torch.testing.assert_close(out_user, (user + user_1) / 2)
    torch.testing.assert_close(out_item, (item + item_1) / 2)


@pytest.mark.parametrize('num_layers', [2, 3])
def test_matches_dense_propagation_and_pyg_lightgcn(float64, num_layers):
    """K layers equal the dense ``mean_k (D^-1/2 A D^-1/2)^k X`` and PyG's ``LightGCN``
    embedding (same ``LGConv`` stack, uniform layer weights 1 / (K + 1)); an isolated user
    keeps ``X / (K + 1)``."""
    # 4 users (user 3 isolated), 5 items, uneven degrees.
    edge_index = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2, 2],
                               [0, 1, 4, 1, 2, 0, 2, 3, 4]])
    graph = CollaborativeGraph(edge_index, num_users=4, num_items=5)
    generator = torch.Generator().manual_seed(1)
    user, item = torch.randn(4, DIM, generator=generator), torch.randn(5, DIM, generator=generator)
    out_user, out_item = FederatedGNN(num_layers)(user, item, graph)

    a_hat = _normalized_adjacency(graph)
    x = torch.cat([user, item])
    layer, total = x, x.clone()
    for _ in range(num_layers):
        layer = a_hat @ layer
        total = total + layer
    expected = total / (num_layers + 1)
    torch.testing.assert_close(torch.cat([out_user, out_item]), expected)
    torch.testing.assert_close(out_user[3], user[3] / (num_layers + 1))

    lightgcn = LightGCN(num_nodes=9, embedding_dim=DIM, num_layers=num_layers)
    with torch.no_grad():
        lightgcn.embedding.weight.copy_(x)
    pyg = lightgcn.get_embedding(graph.homogeneous_edge_index())
    torch.testing.assert_close(torch.cat([out_user, out_item]), pyg.detach())


@pytest.mark.parametrize('num_layers', [1, 2, 3])
def test_context_is_output_minus_scaled_ego(float64, num_layers):
    graph = _tiny_graph()
    generator = torch.Generator().manual_seed(2)
    user, item = torch.randn(2, DIM, generator=generator), torch.randn(3, DIM, generator=generator)
    gnn = FederatedGNN(num_layers)
    out_user, out_item = gnn(user, item, graph)
    user_context, item_context = gnn.context(user, item, graph)
    torch.testing.assert_close(out_user, user / (num_layers + 1) + user_context)
    torch.testing.assert_close(out_item, item / (num_layers + 1) + item_context)
    # The context carries the neighbours' embeddings: moving a neighbour moves it.
    moved = item.clone()
    moved[0] += 1.0  # item 0's only neighbour is user 0
    other_context, _ = gnn.context(user, moved, graph)
    assert not torch.allclose(other_context[0], user_context[0])
    assert not user_context.requires_grad


def test_perturb_is_applied_to_every_layer():
    graph = _tiny_graph()
    user, item = torch.randn(2, DIM), torch.randn(3, DIM)
    calls = []

    def perturb(x):
        calls.append(x.shape)
        return x + 1.0

    plain_user, _ = FederatedGNN(2)(user, item, graph)
    perturbed_user, _ = FederatedGNN(2)(user, item, graph, perturb=perturb)
    assert calls == [torch.Size([5, DIM])] * 2
    assert not torch.allclose(plain_user, perturbed_user)


@pytest.mark.parametrize('head_kind', ['dot', 'linear'])
def test_model_with_context_scores_propagated_vectors(float64, head_kind):
    """With the context of K layers set, the model's logit of (c, i) is the head applied to
    LightGCN's final vectors: ``s(u~_c, e~_i)``."""
    graph = CollaborativeGraph(torch.tensor([[0, 0, 1, 2, 2], [0, 3, 1, 1, 2]]), 3, 4)
    model = make_model(head_kind, 3, 4, DIM, seed=4)
    user = getattr(model.head, model.head.user_vector).detach()
    gnn = FederatedGNN(2)
    model.set_context(2, *gnn.context(user, model.item.detach(), graph))
    final_user, final_item = gnn(user, model.item.detach(), graph)
    client = torch.tensor([0, 0, 1, 2, 2, 1])
    item = torch.tensor([0, 1, 3, 2, 0, 1])
    params = {k: v.detach()[client] for k, v in model.private_parameters().items()}
    params[model.head.user_vector] = final_user[client]
    expected = model.head.logits(params, final_item[item])
    torch.testing.assert_close(model(client, item).detach(), expected)


# --------------------------------------------------------------------------------------
# K = 0: FedMF and PFedRec
# --------------------------------------------------------------------------------------
# FedMF (dot-product heads) and PFedRec (linear heads, alternating steps and dual
# personalization), half of the clients a round.
ALGORITHMS = list(HEADS)
_engine = functools.partial(make_engine, dim=DIM, ratio=0.5)


def _assert_same_state(a, b):
    assert torch.equal(a.model.item, b.model.item)
    for name, value in a.model.private_parameters().items():
        assert torch.equal(value, b.model.private_parameters()[name]), name


@pytest.mark.parametrize('algorithm', ALGORITHMS)
def test_zero_layer_context_is_the_plain_model(data, algorithm):
    """``set_context(0, None, None)`` (what a K = 0 graph model sets) trains and scores
    exactly as the model without it."""
    split, partition, _ = data
    plain, graph = _engine(FederatedEngine, data, algorithm), _engine(FederatedEngine, data,
                                                                      algorithm)
    graph.model.set_context(0, *FederatedGNN(0).context(
        getattr(graph.model.head, graph.model.head.user_vector).detach(),
        graph.model.item.detach(),
        CollaborativeGraph(partition.edge_index(), partition.num_clients, partition.num_items)))
    initial = plain.model.item.detach().clone()
    for engine in (plain, graph):
        generator = torch.Generator().manual_seed(5)
        for _ in range(3):
            engine.run_round(generator)
    assert not torch.equal(plain.model.item, initial)
    _assert_same_state(plain, graph)
    users = torch.arange(partition.num_clients)
    assert torch.equal(plain.scores(users, candidates(split)),
                       graph.scores(users, candidates(split)))
    assert torch.equal(plain.scores_all(users), graph.scores_all(users))


@pytest.mark.parametrize('algorithm', ALGORITHMS)
def test_zero_layer_graph_engine_is_fedmf_and_pfedrec(data, algorithm):
    """A ``GraphFederatedEngine`` with ``FederatedGNN(0)``, no clusters and only one level
    is the plain engine, round for round, bit for bit.

    RNG alignment: ``GraphFederatedEngine.run_round`` draws from the generator only inside
    the wrapped engine's round (selection, the round plan, upload noise) and in
    ``upload_users``, which goes through the same ``UploadTransform``; without clipping and
    noise that transform draws nothing, so the same seed drives both engines identically
    (checked below by comparing the generators' final states). The constructor is used
    directly, not through the algorithm, whose enrollment draws pseudo-items and a first
    noised user upload.

    Level: FedMF is scored with the global table, level weights (1, 0, 0); PFedRec with
    dual personalization scores each user with its own fine-tuned rows, which is the local
    level, (0, 0, 1).
    """
    split, partition, _ = data
    plain = _engine(FederatedEngine, data, algorithm)
    inner = _engine(FederatedEngine, data, algorithm)
    graph = CollaborativeGraph(partition.edge_index(), partition.num_clients,
                               partition.num_items)
    weights = (1.0, 0.0, 0.0) if algorithm == 'fedmf' else (0.0, 0.0, 1.0)
    wrapped = GraphFederatedEngine(inner, FederatedGNN(0), graph, level_weights=weights,
                                   num_clusters=0)
    initial = plain.model.item.detach().clone()
    generators = []
    for engine in (plain, wrapped):
        generator = torch.Generator().manual_seed(7)
        stats = [engine.run_round(generator) for _ in range(3)]
        generators.append((generator, stats))
    (plain_generator, plain_stats), (wrapped_generator, wrapped_stats) = generators
    assert torch.equal(plain_generator.get_state(), wrapped_generator.get_state())
    assert [s.loss for s in plain_stats] == [s.loss for s in wrapped_stats]
    assert not torch.equal(plain.model.item, initial)
    assert wrapped.model.user_context is None and wrapped.model.item_context is None
    _assert_same_state(plain, inner)
    users = torch.arange(partition.num_clients)
    val_candidates = candidates(split)
    # The levels score through the head's logits, as the plain engine does without its
    # closed-form scorer (which sums in another order: tests/test_closed_form.py).
    plain.closed_form = False
    assert torch.equal(plain.scores(users, val_candidates), wrapped.scores(users, val_candidates))
    assert torch.equal(plain.scores_all(users), wrapped.scores_all(users))


# --------------------------------------------------------------------------------------
# K = 2: the vectorized engine equals the reference engine under the same context
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize('algorithm', ALGORITHMS)
def test_vectorized_engine_matches_reference_with_graph_context(float64, data, algorithm):
    split, partition, _ = data
    graph = CollaborativeGraph(partition.edge_index(), partition.num_clients,
                               partition.num_items)
    gnn = FederatedGNN(2)
    fast, slow = (_engine(cls, data, algorithm, ratio=0.5)
                  for cls in (FederatedEngine, ReferenceEngine))
    user = getattr(fast.model.head, fast.model.head.user_vector).detach()
    user_context, item_context = gnn.context(user, fast.model.item.detach(), graph)
    assert user_context.abs().max() > 0 and item_context.abs().max() > 0
    for engine in (fast, slow):
        engine.model.set_context(2, user_context.clone(), item_context.clone())
    initial = fast.model.item.detach().clone()
    stats = []
    for engine in (fast, slow):
        generator = torch.Generator().manual_seed(9)
        stats.append([engine.run_round(generator) for _ in range(2)])
    assert (fast.model.item - initial).abs().max() > 1e-3
    torch.testing.assert_close(fast.model.item.detach(), slow.model.item.detach(),
                               atol=ATOL, rtol=0)
    for name, value in fast.model.private_parameters().items():
        torch.testing.assert_close(value.detach(),
                                   slow.model.private_parameters()[name].detach(),
                                   atol=ATOL, rtol=0)
    for a, b in zip(*stats):
        assert a.loss == pytest.approx(b.loss, abs=ATOL)
    users = torch.arange(partition.num_clients)
    val_candidates = candidates(split)
    torch.testing.assert_close(fast.scores(users, val_candidates),
                               slow.scores(users, val_candidates), atol=ATOL, rtol=0)
    torch.testing.assert_close(fast.scores_all(users), slow.scores_all(users),
                               atol=ATOL, rtol=0)
    # The context matters: without it the same parameters score differently.
    with_context = fast.scores(users, val_candidates)
    fast.model.set_context(0, None, None)
    assert not torch.allclose(with_context, fast.scores(users, val_candidates))


def test_recommender_docstring_math_is_not_mangled_by_escapes():
    """The context formulas in the docstrings keep their LaTeX: in a non-raw string
    ``\\tilde``, ``\\frac`` and ``\\bar`` become a tab, a form feed and a backspace."""
    for obj in (FederatedRecommender, FederatedRecommender.user_input,
                FederatedRecommender.item_input):
        doc = obj.__doc__
        assert not any(char in doc for char in '\t\x0c\x08'), obj.__qualname__
        assert '\\tilde' in doc


# --------------------------------------------------------------------------------------
# A round's rows only: csr_rows and context_rows
# --------------------------------------------------------------------------------------
def _random_graph(num_users=40, num_items=30, num_edges=120, seed=0):
    """Random edges, repeats included; user 0 and item 0 isolated."""
    generator = torch.Generator().manual_seed(seed)
    edge_index = torch.stack([torch.randint(1, num_users, (num_edges,), generator=generator),
                              torch.randint(1, num_items, (num_edges,), generator=generator)])
    edge_index = torch.cat([edge_index, edge_index[:, :5]], dim=1)
    return CollaborativeGraph(edge_index, num_users, num_items)


def test_normalized_adjacency_is_gcn_norm_with_repeated_edges(float64):
    graph = _random_graph()
    expected = torch.zeros(70, 70)
    user, item = graph.edge_index
    expected.index_put_((user, item + 40), torch.ones(user.numel()), accumulate=True)
    expected = expected + expected.t()
    degree = expected.sum(1)
    inv_sqrt = torch.where(degree > 0, degree.pow(-0.5), torch.zeros_like(degree))
    expected = inv_sqrt.view(-1, 1) * expected * inv_sqrt.view(1, -1)
    adjacency = graph.normalized_adjacency()
    assert adjacency.col_indices().dtype == torch.int32
    torch.testing.assert_close(adjacency.to_dense(), expected)
    assert graph.normalized_adjacency() is adjacency


def test_adjacency_rows_hold_the_users_edges_in_edge_order_and_the_items_in_user_order():
    """The order of a row's entries is the order of the sums of a propagation: a user's
    row lists its edges as the graph lists them, an item's row lists its users in the order
    of the users' rows (as stable sorts by user, then by item, leave them)."""
    graph = _random_graph()
    user, item = graph.edge_index.tolist()
    adjacency = graph.normalized_adjacency()
    crow, col = adjacency.crow_indices().tolist(), adjacency.col_indices().tolist()
    rows = [col[crow[node]:crow[node + 1]] for node in range(70)]
    by_user = sorted(range(len(user)), key=lambda edge: user[edge])
    for node in range(40):
        assert rows[node] == [item[edge] + 40 for edge in by_user if user[edge] == node]
    for node in range(30):
        assert rows[40 + node] == [user[edge] for edge in by_user if item[edge] == node]


def test_a_propagation_differentiates_through_its_symmetric_adjacency(float64):
    """The backward pass multiplies by the adjacency itself (it is symmetric), not by a
    transposed copy: the same gradients as the dense matrix's."""
    graph = _random_graph()
    dense = graph.normalized_adjacency().to_dense()
    assert torch.equal(dense, dense.t())
    generator = torch.Generator().manual_seed(1)
    user, item = (torch.randn(n, 4, generator=generator, requires_grad=True) for n in (40, 30))
    weight = torch.randn(70, 4, generator=generator)
    user_out, item_out = FederatedGNN(3)(user, item, graph)
    got = torch.autograd.grad((torch.cat([user_out, item_out]) * weight).sum(), (user, item))
    x, total = torch.cat([user, item]), 0
    for power in range(4):
        total = total + torch.linalg.matrix_power(dense, power) @ x
    expected = torch.autograd.grad(((total / 4) * weight).sum(), (user, item))
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('rows', [[5, 2, 2, 60, 0], [3, 4, 5, 6], [], list(range(70))])
def test_csr_rows_are_the_dense_rows(float64, rows):
    from fedgraph.nn.gnn import csr_rows

    adjacency = _random_graph().normalized_adjacency()
    rows = torch.tensor(rows, dtype=torch.long)
    torch.testing.assert_close(csr_rows(adjacency, rows).to_dense(), adjacency.to_dense()[rows])


@pytest.mark.parametrize('low,high', [(3, 6), (0, 69), (40, 40), (65, 69)])
def test_csr_span_is_a_view_of_the_dense_rows(float64, low, high):
    from fedgraph.nn.gnn import csr_span

    adjacency = _random_graph().normalized_adjacency()
    span = csr_span(adjacency, low, high)
    torch.testing.assert_close(span.to_dense(), adjacency.to_dense()[low:high + 1])
    # A view: the span's entries are the matrix's own.
    for part in ('values', 'col_indices'):
        assert (getattr(span, part)().untyped_storage().data_ptr()
                == getattr(adjacency, part)().untyped_storage().data_ptr())


@pytest.mark.parametrize('num_layers', [1, 2, 3])
@pytest.mark.parametrize('offset', [False, True])
def test_item_offset_is_added_to_the_first_layers_items(float64, num_layers, offset):
    """The context is the layer mean of dense products with :math:`\\hat A`, the offset
    added to the first layer's item rows before the next layer reads them."""
    graph = _random_graph()
    generator = torch.Generator().manual_seed(4)
    user, item = torch.randn(40, DIM, generator=generator), torch.randn(30, DIM,
                                                                        generator=generator)
    item_offset = torch.randn(30, DIM, generator=generator) if offset else None
    adjacency = graph.normalized_adjacency().to_dense()
    x, total = torch.cat([user, item]), torch.zeros(70, DIM)
    for layer in range(num_layers):
        x = adjacency @ x
        if layer == 0 and offset:
            x = x + torch.cat([torch.zeros(40, DIM), item_offset])
        total += x
    user_context, item_context = FederatedGNN(num_layers).context(user, item, graph,
                                                                  item_offset)
    torch.testing.assert_close(user_context, total[:40] / (num_layers + 1))
    torch.testing.assert_close(item_context, total[40:] / (num_layers + 1))
    if offset and num_layers > 1:  # the offset reaches the users through the second layer
        plain, _ = FederatedGNN(num_layers).context(user, item, graph)
        assert not torch.allclose(user_context, plain)


@pytest.mark.parametrize('num_layers', [1, 2, 3])
@pytest.mark.parametrize('full_share', [0.0, 0.5, 1.0])
@pytest.mark.parametrize('offset', [False, True])
def test_context_rows_equal_the_full_context_at_those_rows(float64, monkeypatch, num_layers,
                                                           full_share, offset):
    """The rows' K-hop propagation (all layers over the whole graph, the last ones over
    the rows' neighbourhoods, or all over the neighbourhoods) gives the full context's
    rows, isolated nodes included, with or without an offset on the first layer's items."""
    monkeypatch.setattr(FederatedGNN, 'FULL_SHARE', full_share)
    graph = _random_graph()
    generator = torch.Generator().manual_seed(3)
    user, item = torch.randn(40, DIM, generator=generator), torch.randn(30, DIM,
                                                                        generator=generator)
    item_offset = torch.randn(30, DIM, generator=generator) if offset else None
    gnn = FederatedGNN(num_layers)
    user_context, item_context = gnn.context(user, item, graph, item_offset)
    for users, items in (([0, 7, 3], [0, 29, 4]), ([], [1, 2]), ([39], []),
                         (list(range(40)), list(range(30)))):
        users, items = torch.tensor(users, dtype=torch.long), torch.tensor(items,
                                                                           dtype=torch.long)
        user_rows, item_rows = gnn.context_rows(user, item, graph, users, items, item_offset)
        torch.testing.assert_close(user_rows, user_context[users], atol=1e-12, rtol=0)
        torch.testing.assert_close(item_rows, item_context[items], atol=1e-12, rtol=0)
