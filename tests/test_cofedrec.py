"""CoFedRec: the supervised contrastive term (a hand-computed value, its closed-form gradient
against autograd), the elbow and the group model on tiny cases, the vectorized engine
against the loop-per-client reference in float64, reproducibility from the seed, the
command line and the export of a user's model."""
import math

import pytest
import torch

from fedgraph.config import TrainConfig
from fedgraph.federated.coclustering import (CoClusterEngine, CoClusterReference, CoClusterState,
                                             elbow, similar_group, supervised_contrastive,
                                             supervised_contrastive_grad)
from helpers import algorithm_engine, assert_engines_agree, engine_data, train_and_export

ATOL = 1e-7


@pytest.fixture(scope='module')
def data():
    return engine_data(num_users=30, num_items=300, mean_degree=20, seed=2)


def test_the_contrastive_term_by_hand():
    """Four items in the plane, categories (0, 0, 1, 0), tau = 0.5: item 3 has no other of
    its category and is no anchor; the log is of the mean over an anchor's positives."""
    vectors = torch.tensor([[[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0], [1.0, 1.0]]],
                           dtype=torch.float64)
    labels = torch.tensor([[0, 0, 1, 0]])
    valid = torch.ones(1, 4, dtype=torch.bool)
    tau, c = 0.5, 1 / math.sqrt(2)
    e = lambda cosine: math.exp(cosine / tau)  # noqa: E731
    anchor_0 = -math.log((e(0) + e(c)) / 2 / (e(0) + e(-1) + e(c)))
    anchor_1 = -math.log((e(0) + e(c)) / 2 / (e(0) + e(0) + e(c)))
    anchor_3 = -math.log((e(c) + e(c)) / 2 / (e(c) + e(c) + e(-c)))
    expected = (anchor_0 + anchor_1 + anchor_3) / 3
    assert float(supervised_contrastive(vectors, labels, valid, tau)) == pytest.approx(expected)
    assert float(supervised_contrastive_grad(vectors, labels, valid, tau)[0]) == pytest.approx(
        expected)
    # A padded slot changes nothing; a client without any anchor has 0.
    padded = torch.cat([vectors, torch.randn(1, 1, 2, dtype=torch.float64)], 1)
    assert float(supervised_contrastive(padded, torch.tensor([[0, 0, 1, 0, 0]]),
                                        torch.tensor([[True] * 4 + [False]]), tau)) == (
        pytest.approx(expected))
    assert float(supervised_contrastive(vectors, torch.tensor([[0, 1, 2, 3]]), valid, tau)) == 0


def test_the_closed_form_gradient_is_autograd(float64):
    """Five clients of up to 9 items, some slots padding, one client with no anchor."""
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randn(5, 9, 6, generator=generator).requires_grad_()
    labels = torch.randint(0, 3, (5, 9), generator=generator)
    labels[4] = torch.arange(9)
    valid = torch.rand(5, 9, generator=generator) > 0.25
    loss = supervised_contrastive(embeddings, labels, valid, 0.2)
    (expected,) = torch.autograd.grad(loss.sum(), [embeddings])
    ours, grad = supervised_contrastive_grad(embeddings.detach(), labels, valid, 0.2)
    torch.testing.assert_close(ours, loss.detach())
    torch.testing.assert_close(grad, expected)
    assert expected[~valid].abs().max() == 0 and expected[4].abs().max() == 0
    assert expected.abs().max() > 1e-3  # not vacuous


def test_the_elbow_and_the_similar_group():
    """Sorted scores (10, 9.8, 9.5, 2, 1.5, 1) bend at the third; the similar group is the
    clients up to it, the core client first."""
    assert elbow(torch.tensor([10.0, 9.8, 9.5, 2.0, 1.5, 1.0])) == 2
    assert elbow(torch.tensor([3.0, 1.0])) == 0
    # Six clients, the core at position 1; on item 0 the others are at 150, 120, 10, 180
    # and 20 degrees from it; on item 1 (outside the category) only the first agrees.
    angles = torch.tensor([150.0, 0.0, 120.0, 10.0, 180.0, 20.0]).deg2rad()
    item_0 = torch.stack([angles.cos(), angles.sin()], 1)
    item_1 = torch.tensor([[1.0, 0.0]] * 2 + [[-1.0, 0.0]] * 4)
    tables = torch.stack([item_0, item_1], 1)
    assert similar_group(tables, torch.tensor([0]), core=1).tolist() == [1, 3, 5]
    assert similar_group(tables, torch.tensor([0, 1]), core=1).tolist() == [1, 0]


def test_the_group_model_is_the_mean_of_the_similar_group():
    generator = torch.Generator().manual_seed(3)
    initial = torch.randn(12, 4, generator=generator)
    state = CoClusterState(initial, num_clients=10, categories=3)
    clients = torch.tensor([1, 4, 5, 8, 9])
    tables = torch.randn(5, 12, 4, generator=generator)
    tables[:3] += 5 * torch.randn(12, 4, generator=generator)  # three alike
    mean = state.aggregate(clients, tables, torch.Generator().manual_seed(0))
    torch.testing.assert_close(mean, tables.mean(0))
    assert state.membership.shape == (12,) and state.membership.max() < 3
    last = state.last
    items = torch.nonzero(state.membership == last['category']).view(-1)
    core = clients.tolist().index(last['core'])
    group = similar_group(tables, items, core)
    assert last['similar'] == clients[group].tolist()
    group_model = tables[group].mean(0)
    for position, client in enumerate(clients.tolist()):
        expected = group_model if client in last['similar'] else tables[position]
        torch.testing.assert_close(state.starts[client], expected)
    torch.testing.assert_close(state.starts[0], initial)  # never trained


@pytest.mark.parametrize('settings', [
    {}, {'client_ratio': 0.5, 'local_epochs': 2, 'temperature': 0.5}])
def test_vectorized_engine_matches_reference(float64, data, settings):
    fast = algorithm_engine(data, 'cofedrec', 'vectorized', categories=5,
                            contrastive_weight=0.5, **settings)
    slow = algorithm_engine(data, 'cofedrec', 'reference', categories=5,
                            contrastive_weight=0.5, **settings)
    assert isinstance(fast, CoClusterEngine) and isinstance(slow, CoClusterReference)
    everyone = torch.arange(fast.model.num_clients)
    assert_engines_agree(fast, slow, data[0], ATOL,
                         state=lambda engine: [engine.cocluster.tables[everyone],
                                               engine.cocluster.starts[everyone],
                                               engine.cocluster.membership])
    assert fast.cocluster.last == slow.cocluster.last
    assert 1 <= len(fast.cocluster.last['similar']) <= fast.model.num_clients


def test_the_contrastive_term_moves_the_tables(data):
    """With lambda 0 the trained tables differ from those with lambda > 0 (after the first
    round, whose clients have no membership yet), and not in round 0."""
    tables = []
    for weight in (0.0, 0.5):
        engine = algorithm_engine(data, 'cofedrec', 'vectorized', categories=5,
                                  contrastive_weight=weight)
        generator = torch.Generator().manual_seed(1)
        engine.run_round(generator)
        first = engine.cocluster.tables[torch.arange(30)].clone()
        engine.run_round(generator)
        tables.append((first, engine.cocluster.tables[torch.arange(30)]))
    torch.testing.assert_close(tables[0][0], tables[1][0])
    assert (tables[0][1] - tables[1][1]).abs().max() > 1e-4


def test_a_run_is_reproducible_from_its_seed(data):
    runs = []
    for _ in range(2):
        engine = algorithm_engine(data, 'cofedrec', 'vectorized', categories=5)
        generator = torch.Generator().manual_seed(7)
        stats = [engine.run_round(generator).loss for _ in range(3)]
        runs.append((stats, engine.cocluster.last, engine.scores_all(torch.arange(30))))
    assert runs[0][0] == runs[1][0] and runs[0][1] == runs[1][1]
    assert torch.equal(runs[0][2], runs[1][2])


def test_settings_are_checked(data):
    with pytest.raises(ValueError, match='temperature'):
        TrainConfig(algorithm='cofedrec', temperature=0.0)
    with pytest.raises(ValueError, match='optimizer sgd'):
        TrainConfig(algorithm='cofedrec', optimizer='adam')
    with pytest.raises(ValueError, match='categories'):
        algorithm_engine(data, 'cofedrec', 'vectorized', categories=301)


def test_cofedrec_trains_from_the_command_line_and_exports_a_user(tmp_path):
    run = train_and_export(tmp_path, 'cofedrec')
    assert run['best']['test']['hr@10'] > 0
