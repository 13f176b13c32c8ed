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


def _round_tables(generator, clients=48, rows=60, width=4, spread=0.3):
    """Tables as a round leaves them: one shared table, each client's own few changed rows,
    in four groups that share a direction of change."""
    shared = torch.randn(rows, width, generator=generator, dtype=torch.float64)
    groups = torch.randn(4, rows, width, generator=generator, dtype=torch.float64)
    tables = shared + spread * groups[torch.arange(clients) % 4]
    touched = torch.rand(clients, rows, 1, generator=generator, dtype=torch.float64) < 0.1
    return tables + touched * torch.randn(clients, rows, width, generator=generator,
                                          dtype=torch.float64)


def test_a_sketch_at_least_the_tables_size_is_the_exact_closeness():
    """With ``m >= D`` no projection is drawn: the mean/deviation vectors' inner products are
    the cosines of the tables (mean, own and cross terms exact), and the graph is the exact
    graph under every rule."""
    tables = _round_tables(torch.Generator().manual_seed(1))
    flat = tables.reshape(tables.size(0), -1)
    unit = torch.nn.functional.normalize(flat, dim=1)
    queries, database, mean = graph_guided.closeness_vectors(tables, sketch=flat.size(1))
    torch.testing.assert_close(torch.from_numpy(queries @ database.T).double(), unit @ unit.T,
                               atol=1e-5, rtol=0)
    assert mean == pytest.approx(float((unit @ unit.T).mean()), rel=1e-6)
    for rule in [dict(), dict(neighbours=5), dict(closeness='code'),
                 dict(closeness='code', threshold=1.3)]:
        exact = relation_graph(tables, **rule).to_dense()
        sketched = relation_graph(tables, sketch=flat.size(1), **rule).to_dense()
        torch.testing.assert_close(sketched, exact)


def test_the_sketch_is_reproducible_from_its_seed_and_unbiased():
    """The same seed draws the same sketch; over seeds, the estimated cosines average to the
    exact ones (only the deviations' cross term is estimated)."""
    tables = _round_tables(torch.Generator().manual_seed(2), clients=12)
    unit = torch.nn.functional.normalize(tables.reshape(12, -1), dim=1)
    exact = (unit @ unit.T).numpy()
    first = graph_guided.closeness_vectors(tables, sketch=32, seed=5)
    again = graph_guided.closeness_vectors(tables, sketch=32, seed=5)
    other = graph_guided.closeness_vectors(tables, sketch=32, seed=6)
    assert (first[0] == again[0]).all() and (first[1] == again[1]).all()
    assert not (first[0] == other[0]).all()
    estimates = [(lambda q, y, _: q @ y.T)(*graph_guided.closeness_vectors(tables, 32, seed))
                 for seed in range(200)]
    single = abs(estimates[0] - exact).max()
    average = abs(sum(estimates) / len(estimates) - exact).max()
    assert average < single / 8  # sqrt(200) = 14 for an unbiased estimate


def test_a_sketch_finds_the_exact_neighbours_of_clustered_tables():
    """Four groups of clients: under the threshold rule (the default) a small sketch finds
    nearly every exact neighbour, and each client's top neighbours stay in its group."""
    tables = _round_tables(torch.Generator().manual_seed(3), clients=80, rows=200, width=8,
                           spread=1.0)
    exact = relation_graph(tables).to_dense() > 0
    sketched = relation_graph(tables, sketch=64).to_dense() > 0
    jaccard = ((exact & sketched).sum(1) / (exact | sketched).sum(1)).mean()
    assert jaccard > 0.9
    top = relation_graph(tables, neighbours=10, sketch=64).to_dense() > 0
    group = torch.arange(80) % 4
    assert (group.unsqueeze(1) == group)[top].all()


@pytest.mark.parametrize('sketch', [-1, 2.5, True, '64'])
def test_bad_sketch_sizes_raise(sketch):
    tables = torch.randn(4, 3, 2)
    with pytest.raises(ValueError, match='sketch'):
        relation_graph(tables, sketch=sketch)
    with pytest.raises(ValueError, match='sketch'):
        graph_guided.GraphGuidedState(tables[0], 4, 'paper', 0, 1.0, sketch=sketch)


def test_a_bad_sketch_setting_is_refused():
    from fedgraph.algorithms.gpfedrec import GPFedRecSettings
    with pytest.raises(ValueError, match='sketch'):
        GPFedRecSettings(sketch=-3).validate()
    GPFedRecSettings(sketch=256).validate()


@pytest.mark.parametrize('nested', [True, False])
def test_the_chain_of_nested_neighbourhoods_is_the_dense_product(monkeypatch, nested):
    """Neighbourhoods that grow one client at a time (each a prefix of one order) are summed
    along a chain of their changes; scattered ones fall back to the dense product: both
    equal the dense matrix's product."""
    generator = torch.Generator().manual_seed(4)
    size = 40
    flat = torch.randn(size, 30, generator=generator, dtype=torch.float64)
    if nested:
        rank = torch.randperm(size, generator=generator)
        degree = torch.randint(size // 2, size + 1, (size,), generator=generator)
        member = rank.unsqueeze(0) < degree.unsqueeze(1)
    else:
        member = torch.rand(size, size, generator=generator) < 0.5
        member.fill_diagonal_(True)
    dense = member.double() / member.sum(1, keepdim=True)
    graph = dense.to_sparse_csr()
    monkeypatch.setattr(graph_guided, 'CHAIN_SHARE', 1 / 4)  # a small graph's chain: 40 changes
    chained = graph_guided.chained_propagate(graph, flat)
    assert (chained is not None) == nested
    monkeypatch.setattr(graph_guided, 'CHAIN_ENTRIES', size * 7)  # blocks of 7 columns
    torch.testing.assert_close(propagate(graph, flat), dense @ flat)
    if nested:
        torch.testing.assert_close(chained, dense @ flat)


def test_whole_table_uploads_are_read_in_one_pass():
    from fedgraph.federated.messages import RowUpload
    base = torch.randn(5, 3)
    tables = base + torch.randn(4, 5, 3)
    upload = RowUpload.tables(torch.arange(4), tables, base)
    torch.testing.assert_close(graph_guided.uploaded_tables(upload, base), tables)
    shuffled = torch.randperm(20)
    upload = RowUpload(upload.clients, upload.row_owner[shuffled], upload.row_item[shuffled],
                       upload.update[shuffled])
    torch.testing.assert_close(graph_guided.uploaded_tables(upload, base), tables)
