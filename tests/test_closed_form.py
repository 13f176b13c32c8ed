"""Closed-form local training (fedgraph.federated.closed_form) against the autograd engine."""
import dataclasses

import pytest
import torch

from fedgraph.federated import FederatedEngine, closed_form, plan_round
from fedgraph.federated.local import Adam, BPRLoss
from fedgraph.nn.heads import NCFHead
from helpers import engine_data, make_engine

DIM = 8


@pytest.fixture(scope='module')
def data():
    """Few items, so that a client's mini-batch often holds one row twice."""
    return engine_data(num_users=30, num_items=250, mean_degree=12, seed=3)


def _plan(engine, seed=0):
    cfg = engine.training
    clients = torch.arange(engine.model.num_clients)
    return plan_round(engine.partition, clients, cfg.num_negatives, cfg.batch_size,
                      cfg.local_epochs, torch.Generator().manual_seed(seed), engine.known)


@pytest.mark.parametrize('algorithm,epochs,l2_reg', [
    ('pfedrec', 1, 0.0),   # alternating steps, linear head with bias
    ('pfedrec', 2, 0.01),
    ('fedmf', 1, 0.0),     # one joint step, dot product
    ('fedmf', 2, 0.05),
])
def test_closed_form_equals_autograd(data, algorithm, epochs, l2_reg):
    engine = make_engine(FederatedEngine, data, algorithm, dim=DIM, local_epochs=epochs)
    engine.training = dataclasses.replace(engine.training, l2_reg=l2_reg)
    assert closed_form.supports(engine.model, engine.training)
    plan = _plan(engine)
    rows = plan.row.view(-1)
    pairs = torch.stack([torch.repeat_interleave(torch.arange(plan.num_steps),
                                                 plan.step_ptr.diff()), rows])
    assert torch.unique(pairs, dim=1).size(1) < rows.numel()  # a row twice in a mini-batch
    table = engine.model.item.detach()

    engine.closed_form = False
    expected = engine.train_clients(plan, table)
    engine.closed_form = True
    local, change, private, loss = engine.train_clients(plan, table)

    assert torch.equal(change, local - table[plan.row_item])
    assert change.abs().sum(1).gt(0).all()
    torch.testing.assert_close(local, expected[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(change, expected[1], rtol=1e-5, atol=1e-5)
    assert private.keys() == expected[2].keys()
    for name, value in private.items():
        assert not torch.equal(value, engine.model.private_parameters()[name][plan.clients])
        torch.testing.assert_close(value, expected[2][name], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss, expected[3], rtol=1e-5, atol=1e-6)


def test_saturated_scores_stop_learning(data):
    """Logits beyond float32's sigmoid: p is exactly 0 or 1, BCE(sigmoid) has no gradient
    (the closed form p - y would move every misclassified row), its loss is floored at 100."""
    engine = make_engine(FederatedEngine, data, 'pfedrec', dim=DIM)
    plan = _plan(engine)
    table = engine.model.item.detach() * 1e4
    results = []
    for kernel in (True, False):
        engine.closed_form = kernel
        results.append(engine.train_clients(plan, table))
    (local, change, private, loss), expected = results
    assert torch.equal(local, table[plan.row_item])
    assert not change.any()
    assert torch.equal(local, expected[0])
    for name, value in private.items():
        assert torch.equal(value, engine.model.private_parameters()[name][plan.clients])
    assert loss.max() > 10
    torch.testing.assert_close(loss, expected[3])


def test_closed_form_leaves_the_model_to_the_engine(data):
    """The kernel trains copies: the model changes only when the engine stores the round."""
    engine = make_engine(FederatedEngine, data, 'pfedrec', dim=DIM)
    before = {name: value.detach().clone() for name, value in engine.model.state_dict().items()}
    plan = _plan(engine)
    engine.train_clients(plan, engine.model.item.detach())
    for name, value in engine.model.state_dict().items():
        assert torch.equal(value, before[name]), name


@pytest.mark.parametrize('algorithm', ['pfedrec', 'fedmf'])
def test_rounds_with_and_without_closed_form_agree(data, algorithm):
    """Three whole rounds (planning, uploads, aggregation, personal rows) and the scores,
    with each user's fine-tuned rows (PFedRec) or the global table (FedMF)."""
    engines = [make_engine(FederatedEngine, data, algorithm, dim=DIM) for _ in range(2)]
    engines[1].closed_form = False
    for engine in engines:
        generator = torch.Generator().manual_seed(7)
        for _ in range(3):
            engine.run_round(generator)
    fast, slow = engines
    torch.testing.assert_close(fast.model.item, slow.model.item, rtol=1e-4, atol=1e-4)
    users = torch.arange(fast.model.num_clients)
    torch.testing.assert_close(fast.scores_all(users), slow.scores_all(users),
                               rtol=1e-4, atol=1e-3)
    items = torch.randint(fast.model.num_items, (users.numel(), 50),
                          generator=torch.Generator().manual_seed(0))
    items[:, :10] = fast.personal.keys[:10] % fast.model.num_items if len(fast.personal) else 0
    scores = fast.scores(users, items)
    torch.testing.assert_close(scores, slow.scores(users, items), rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(scores, fast.scores_all(users).gather(1, items),
                               rtol=1e-5, atol=1e-5)


def test_what_has_no_closed_form(data):
    engine = make_engine(FederatedEngine, data, 'pfedrec', dim=DIM)
    model, training = engine.model, engine.training
    assert closed_form.supports(model, training)
    assert not closed_form.supports(model, dataclasses.replace(training, loss=BPRLoss()))
    assert not closed_form.supports(model, dataclasses.replace(training, optimizer=Adam()))
    model.item_context = torch.zeros_like(model.item)
    assert not closed_form.supports(model, training)
    model.item_context = None
    assert not closed_form.supports(model.double(), training)
    assert NCFHead.bilinear is None
