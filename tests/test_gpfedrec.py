"""GPFedRec: the vectorized engine equals the loop-per-client reference (which trains each
client's whole table, so the closed form of the rows a round never samples is checked too), the two ways of relating clients, the command line
and the export of a user's model."""
import pytest
import torch

from fedgraph.federated import graph_guided
from fedgraph.federated.graph_guided import (ClientTables, GraphGuidedEngine, GraphGuidedReference,
                                             propagate, relation_graph)
from helpers import algorithm_engine, assert_engines_agree, engine_data, train_and_export

ATOL = 1e-7


@pytest.fixture(scope='module')
def data():
    return engine_data(num_users=30, num_items=300, mean_degree=20, seed=2)


@pytest.mark.parametrize('settings', [
    {}, {'closeness': 'code'}, {'neighbours': 4, 'client_ratio': 0.5, 'local_epochs': 2}])
def test_vectorized_engine_matches_reference(float64, data, settings):
    fast = algorithm_engine(data, 'gpfedrec', 'vectorized', **settings)
    slow = algorithm_engine(data, 'gpfedrec', 'reference', **settings)
    assert isinstance(fast, GraphGuidedEngine) and isinstance(slow, GraphGuidedReference)
    everyone = torch.arange(fast.model.num_clients)
    assert_engines_agree(fast, slow, data[0], ATOL,
                         state=lambda engine: [engine.guided.tables[everyone],
                                               engine.guided.targets[everyone]])


def test_the_paper_relates_similar_clients_and_the_code_dissimilar_ones():
    """Two pairs of near-identical tables: by similarity a client's neighbours are its pair
    (itself included); by the code's cosine distance, the other pair."""
    base = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    tables = torch.stack([base[0], base[0] + 0.01, base[1], base[1] + 0.01])
    paper = relation_graph(tables, 'paper').to_dense()
    code = relation_graph(tables, 'code').to_dense()
    assert paper[0].nonzero().view(-1).tolist() == [0, 1]
    assert code[0].nonzero().view(-1).tolist() == [2, 3]
    torch.testing.assert_close(paper.sum(1), torch.ones(4))
    top = relation_graph(tables, 'paper', neighbours=1).to_dense()
    assert top.nonzero()[:, 1].tolist() == [0, 1, 2, 3]  # the most similar is oneself


def _dense_graph(tables, closeness, neighbours, threshold):
    """The user-relation graph as the GPFedRec code builds it: the whole ``B x B`` matrix of
    closeness in float64, its top-k or its entries above the threshold times their mean."""
    unit = torch.nn.functional.normalize(tables.double(), dim=1)
    score = unit @ unit.T
    if closeness == 'code':
        score = 1 - score
    if neighbours:
        index = torch.topk(score, neighbours, dim=1).indices
        chosen = torch.zeros_like(score, dtype=torch.bool).scatter_(1, index, True)
    else:
        chosen = score > score.mean() * threshold
        lonely = ~chosen.any(1)
        chosen[lonely, lonely.nonzero().view(-1)] = True
    return chosen / chosen.sum(1, keepdim=True)


@pytest.mark.parametrize('closeness, neighbours, threshold', [
    ('paper', 0, 1.0), ('paper', 0, 4.0), ('paper', 5, 1.0),
    ('code', 0, 1.0), ('code', 0, 1.3), ('code', 5, 1.0)])
def test_the_graph_without_a_dense_matrix_is_the_dense_graph(closeness, neighbours, threshold):
    """FAISS's searches give the graph the whole matrix gives; a high threshold leaves some
    clients alone with themselves (by the code's distance, a client's own is 0: the rule for
    lonely clients)."""
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 50, generator=generator)
    spread = torch.tensor([0.3, 0.8, 1.5, 3.0]).repeat(10).unsqueeze(1)
    tables = centres.repeat(10, 1) + spread * torch.randn(40, 50, generator=generator)
    expected = _dense_graph(tables, closeness, neighbours, threshold)
    if threshold > 1:
        assert (expected.diagonal() == 1).any()
    graph = relation_graph(tables, closeness, neighbours, threshold)
    assert graph.layout == torch.sparse_csr
    torch.testing.assert_close(graph.to_dense(), expected.float())


def test_gpfedrec_trains_from_the_command_line_and_exports_a_user(tmp_path):
    run = train_and_export(tmp_path, 'gpfedrec')
    assert run['best']['test']['hr@10'] > 0


def test_client_tables_hold_only_the_clients_written():
    initial = torch.randn(6, 2)
    tables = ClientTables(initial, num_clients=100)
    first, second = torch.tensor([7, 3]), torch.tensor([3, 50, 99])
    tables[first] = torch.ones(2, 6, 2)
    tables[second] = torch.stack([torch.full((6, 2), float(c)) for c in second.tolist()])
    assert tables.count == 4 and tables.values.size(0) < 100
    torch.testing.assert_close(tables[7], torch.ones(6, 2))
    torch.testing.assert_close(tables[3], torch.full((6, 2), 3.0))
    torch.testing.assert_close(tables[torch.tensor([0, 99])],
                               torch.stack([initial, torch.full((6, 2), 99.0)]))
    rows = tables.rows(torch.tensor([[0], [50]]), torch.tensor([[1, 5], [2, 2]]))
    torch.testing.assert_close(rows, torch.stack([initial[[1, 5]], torch.full((2, 2), 50.0)]))
    restored = ClientTables(torch.zeros(6, 2), 100)
    restored.load_state_dict(tables.state_dict())
    torch.testing.assert_close(restored[torch.arange(100)], tables[torch.arange(100)])
    values = torch.zeros(3, 6, 2)
    ClientTables.held(values)[torch.tensor([1])] = torch.ones(1, 6, 2)
    assert values[1].eq(1).all() and values[[0, 2]].eq(0).all()


@pytest.mark.parametrize('neighbours', [0, 2])
def test_the_aggregate_is_the_dense_product_in_blocks_or_sparse(monkeypatch, neighbours):
    """About half of all pairs are neighbours under the threshold: that graph is multiplied
    in blocks of rows of the dense matrix (here 7 rows); k neighbours, as a sparse product."""
    monkeypatch.setattr(graph_guided, 'BLOCK_ROWS', 7)
    tables = torch.randn(60, 20, dtype=torch.float64) + torch.randn(20, dtype=torch.float64)
    graph = relation_graph(tables, 'paper', neighbours)
    assert (graph.values().numel() > graph_guided.DENSE_SHARE * 60 ** 2) == (neighbours == 0)
    torch.testing.assert_close(propagate(graph, tables), graph.to_dense() @ tables)
