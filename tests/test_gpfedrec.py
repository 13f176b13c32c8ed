"""GPFedRec: the vectorized engine equals the loop-per-client reference (which trains each
client's whole table, so the closed form of the rows a round never samples is checked too), the two ways of relating clients, the command line
and the export of a user's model."""
import pytest
import torch

from fedgraph.federated.graph_guided import (GraphGuidedEngine, GraphGuidedReference,
                                             relation_graph)
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
    assert_engines_agree(fast, slow, data[0], ATOL,
                         state=lambda engine: [engine.guided.tables, engine.guided.targets])


def test_the_paper_relates_similar_clients_and_the_code_dissimilar_ones():
    """Two pairs of near-identical tables: by similarity a client's neighbours are its pair
    (itself included); by the code's cosine distance, the other pair."""
    base = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    tables = torch.stack([base[0], base[0] + 0.01, base[1], base[1] + 0.01])
    paper = relation_graph(tables, 'paper')
    code = relation_graph(tables, 'code')
    assert paper[0].nonzero().view(-1).tolist() == [0, 1]
    assert code[0].nonzero().view(-1).tolist() == [2, 3]
    torch.testing.assert_close(paper.sum(1), torch.ones(4))
    top = relation_graph(tables, 'paper', neighbours=1)
    assert top.nonzero()[:, 1].tolist() == [0, 1, 2, 3]  # the most similar is oneself


def test_gpfedrec_trains_from_the_command_line_and_exports_a_user(tmp_path):
    run = train_and_export(tmp_path, 'gpfedrec')
    assert run['best']['test']['hr@10'] > 0
