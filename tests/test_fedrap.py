"""FedRAP: the vectorized engine (only the touched rows, weight decay as a per-client factor)
equals its code's structure (each client's whole tables, torch.optim.SGD with weight decay,
ExponentialLR per mini-batch, early stopping), the curriculum, the command line and the
export of a user's model."""
import math

import pytest
import torch

from fedgraph.federated.additive import AdditiveEngine, AdditiveReference, AdditiveTraining
from helpers import algorithm_engine, assert_engines_agree, engine_data, train_and_export

ATOL = 1e-9


@pytest.fixture(scope='module')
def data():
    return engine_data(num_users=20, num_items=300, mean_degree=20, seed=2)


def _engine(data, engine, **settings):
    return algorithm_engine(data, 'fedrap', engine, **settings)


@pytest.mark.parametrize('settings', [
    {'curriculum': 'code', 'local_epochs': 3},
    {'tol': 0.05},  # clients stop after a few epochs, each at its own
    {'client_ratio': 0.5, 'local_epochs': 4}])
def test_vectorized_engine_matches_reference(float64, data, settings):
    fast, slow = _engine(data, 'vectorized', **settings), _engine(data, 'reference', **settings)
    assert type(fast) is AdditiveEngine and type(slow) is AdditiveReference
    assert_engines_agree(fast, slow, data[0], ATOL)  # the private tables among the private parameters


def test_early_stopping_shortens_a_round(data):
    """With a loose tolerance the clients stop after two epochs: the round is the round of
    two epochs."""
    stopped = _engine(data, 'vectorized', tol=10.0, curriculum='code')
    two = _engine(data, 'vectorized', local_epochs=2, curriculum='code')
    for engine in (stopped, two):
        engine.run_round(torch.Generator().manual_seed(5))
    torch.testing.assert_close(stopped.model.item, two.model.item)


def test_the_curriculum_ramps_lambda_and_mu_as_tanh_and_the_code_keeps_them():
    paper = AdditiveTraining(lam=0.1, mu=0.2)
    assert paper.weights(0) == paper.weights(1) == (0.0, 0.0)
    assert paper.weights(11) == pytest.approx((0.1 * math.tanh(1), 0.2 * math.tanh(1)))
    assert AdditiveTraining(lam=0.1, mu=0.2, curriculum='code').weights(0) == (0.1, 0.2)
    assert paper.learning_rates(2) == pytest.approx((0.5 * 0.97 ** 2, 200 * 0.97 ** 2))


def test_fedrap_trains_from_the_command_line_and_exports_a_user(tmp_path):
    run = train_and_export(tmp_path, 'fedrap')
    assert run.config.batch_size == 2048 and run.config.local_epochs == 10  # the code's
    assert run['best']['test']['hr@10'] > 0
