"""GPFedRec: the vectorized engine equals the loop-per-client reference (which trains each
client's whole table, so the closed form of the rows a round never samples is checked too), the two ways of relating clients, the command line
and the export of a user's model."""
import pytest
import torch

from fedgraph.cli import main
from fedgraph.config import TrainConfig
from fedgraph.export import DeviceModel
from fedgraph.federated.graph_guided import (GraphGuidedEngine, GraphGuidedReference,
                                             relation_graph)
from fedgraph.run import load_run
from helpers import candidates, engine_data, write_small_csv

ATOL = 1e-7


@pytest.fixture(scope='module')
def data():
    return engine_data(num_users=30, num_items=300, mean_degree=20, seed=2)


def _engine(data, engine, **settings):
    _, partition, known = data
    config = TrainConfig(algorithm='gpfedrec', dim=8, batch_size=16, engine=engine, **settings)
    return config.build_algorithm().build_engine(partition, torch.Generator().manual_seed(0),
                                                 known)


@pytest.mark.parametrize('settings', [
    {}, {'closeness': 'code'}, {'neighbours': 4, 'client_ratio': 0.5, 'local_epochs': 2}])
def test_vectorized_engine_matches_reference(float64, data, settings):
    fast, slow = _engine(data, 'vectorized', **settings), _engine(data, 'reference', **settings)
    assert isinstance(fast, GraphGuidedEngine) and isinstance(slow, GraphGuidedReference)
    initial = fast.model.item.detach().clone()
    for engine in (fast, slow):
        generator = torch.Generator().manual_seed(5)
        engine.stats = [engine.run_round(generator) for _ in range(3)]
    assert (fast.model.item - initial).abs().max() > 1e-2  # not vacuous
    torch.testing.assert_close(fast.model.item, slow.model.item, atol=ATOL, rtol=0)
    torch.testing.assert_close(fast.guided.tables, slow.guided.tables, atol=ATOL, rtol=0)
    torch.testing.assert_close(fast.guided.targets, slow.guided.targets, atol=ATOL, rtol=0)
    for name, value in fast.model.private_parameters().items():
        torch.testing.assert_close(value, slow.model.private_parameters()[name], atol=ATOL,
                                   rtol=0)
    for a, b in zip(fast.stats, slow.stats):
        assert a.loss == pytest.approx(b.loss, abs=ATOL) and a.num_clients == b.num_clients
    split = data[0]
    users = torch.arange(split.train['user'].num_nodes)
    torch.testing.assert_close(fast.scores(users, candidates(split, 'test')),
                               slow.scores(users, candidates(split, 'test')), atol=ATOL, rtol=0)


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


def test_gpfedrec_trains_from_the_command_line_and_exports_a_user(tmp_path, capsys):
    data = write_small_csv(tmp_path / 'data.csv')
    out = tmp_path / 'run'
    main(['train', '--algorithm', 'gpfedrec', '--dataset', 'csv', '--data-path', str(data),
          '--eval-negatives', '20', '--rounds', '3', '--dim', '8', '--out', str(out),
          '--quiet'])
    run = load_run(out)
    assert run['best']['test']['hr@10'] > 0
    user = run.split.train['user'].raw_id[3]
    user = user.item() if isinstance(user, torch.Tensor) else user
    exported = DeviceModel.load(run.export(user, tmp_path / 'user.pt'))
    torch.testing.assert_close(exported.scores(), run.engine.scores_all(torch.tensor([3]))[0])
