"""What a client optimizes and how: BCE and BPR losses, SGD and Adam applied to many clients'
tensors at once (against ``torch.optim.Adam``), round plans that keep each positive with its
negatives, and the vectorized engine against the reference engine under BPR and Adam, with
and without L2 regularization."""
import pytest
import torch
import torch.nn.functional as F

from fedgraph.federated import FederatedEngine, ReferenceEngine, plan_round
from fedgraph.federated.local import SGD, Adam, BCELoss, BPRLoss
from helpers import engine_data, make_engine


@pytest.fixture(scope='module')
def data():
    return engine_data(num_users=30, num_items=300, mean_degree=15, seed=8)


def test_bpr_loss_is_the_mean_over_negatives_carried_by_each_sample(float64):
    logits = torch.tensor([2.0, 1.0, -1.0, 0.5, 0.5, 3.0])
    label = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 0.0])
    loss = BPRLoss()(logits, label, 3)
    first = -(F.logsigmoid(torch.tensor(1.0)) + F.logsigmoid(torch.tensor(3.0))) / 2
    second = -(F.logsigmoid(torch.tensor(0.0)) + F.logsigmoid(torch.tensor(-2.5))) / 2
    torch.testing.assert_close(loss, torch.stack([first] * 3 + [second] * 3))
    assert BPRLoss.keeps_groups and not BCELoss.keeps_groups
    torch.testing.assert_close(BCELoss()(logits, label, 3),
                               F.binary_cross_entropy_with_logits(logits, label, reduction='none'))


def test_adam_on_stacked_clients_is_torch_adam_per_client(float64):
    """Three clients' rows stepped together, client 1 sitting out the second step: each row
    follows ``torch.optim.Adam`` on that client's own steps."""
    generator = torch.Generator().manual_seed(0)
    start = torch.randn(3, 4, generator=generator)
    grads = [torch.randn(3, 4, generator=generator) for _ in range(3)]
    actives = [torch.tensor([True, True, True]), torch.tensor([True, False, True]),
               torch.tensor([True, True, True])]
    rule = Adam(betas=(0.8, 0.99), eps=1e-6)
    value, state = start.clone(), rule.state(start)
    for grad, active in zip(grads, actives):
        value = rule.step(value, grad, 0.1, state, active)
    for client in range(3):
        param = torch.nn.Parameter(start[client].clone())
        optimizer = rule.torch_optimizer([param], 0.1)
        for grad, active in zip(grads, actives):
            if active[client]:
                param.grad = grad[client].clone()
                optimizer.step()
        torch.testing.assert_close(value[client], param.detach())
    assert int(state['step'][1]) == 2 and int(state['step'][0]) == 3
    # SGD steps every row by its gradient.
    torch.testing.assert_close(SGD().step(start, grads[0], 0.5, {}, actives[1]),
                               start - 0.5 * grads[0])


@pytest.mark.parametrize('epochs', [1, 2])
def test_plans_keep_each_positive_with_its_negatives(data, epochs):
    _, partition, _ = data
    clients = torch.arange(partition.num_clients)
    plan = plan_round(partition, clients, 3, 8, epochs, torch.Generator().manual_seed(1),
                      keep_groups=True)
    labels = plan.label.view(-1, 4)
    assert torch.equal(labels, torch.tensor([1.0, 0, 0, 0]).expand_as(labels))
    owners = plan.owner.view(-1, 4)
    assert torch.equal(owners, owners[:, :1].expand_as(owners))
    for step in range(plan.num_steps):
        start, end = plan.step_ptr[step], plan.step_ptr[step + 1]
        assert (end - start) % 4 == 0
        per_client = torch.bincount(plan.owner[start:end], minlength=clients.numel())
        assert per_client.max() <= 8 * 4  # at most 8 positives with their negatives
    # Every training positive appears once per epoch.
    positives = plan.owner[plan.label == 1] * partition.num_items + plan.item[plan.label == 1]
    assert positives.numel() == epochs * partition.col.numel()


@pytest.mark.parametrize('algorithm,l2_reg', [('fedmf', 0.0), ('pfedrec', 0.0),
                                              ('fedmf', 0.5), ('pfedrec', 0.5)])
def test_vectorized_engine_matches_reference_under_bpr_and_adam(float64, data, algorithm,
                                                                 l2_reg):
    engines = [make_engine(cls, data, algorithm, dim=8, ratio=0.5, local_epochs=2)
               for cls in (FederatedEngine, ReferenceEngine)]
    for engine in engines:
        engine.training.loss, engine.training.optimizer = BPRLoss(), Adam()
        engine.training.lr, engine.training.item_lr = 0.05, 0.05
        engine.training.l2_reg = l2_reg
    initial = engines[0].model.item.detach().clone()
    for engine in engines:
        generator = torch.Generator().manual_seed(2)
        engine.stats = [engine.run_round(generator) for _ in range(2)]
    fast, slow = engines
    assert (fast.model.item.detach() - initial).abs().max() > 1e-3
    for a, b in zip(fast.stats, slow.stats):
        assert a.loss == pytest.approx(b.loss, abs=1e-9)
    torch.testing.assert_close(fast.model.item.detach(), slow.model.item.detach(), atol=1e-9,
                               rtol=0)
    for name, value in fast.model.private_parameters().items():
        torch.testing.assert_close(value.detach(),
                                   slow.model.private_parameters()[name].detach(),
                                   atol=1e-9, rtol=0)
