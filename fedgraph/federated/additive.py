"""FedRAP's additive personalization (Li et al., *Federated Recommendation with Additive
Personalization*, ICLR 2024; code ``mtics/FedRAP``), on a vectorized engine and on a
loop-per-client reference.

Client :math:`u` scores item :math:`i` with a private linear head over the sum of a private
item table :math:`D_u` and the shared one :math:`C`,

.. math::
    s_{ui} = w_u^\\top (D_u[i] + C[i]) + b_u ,

and trains its head, :math:`D_u` and its copy of :math:`C` (received from the server each
round) with plain SGD and weight decay :math:`\\omega` on every parameter, on

.. math::
    \\mathcal{L} = \\mathrm{BCE} - \\lambda_t\\, \\mathrm{mean}_B\\big((D_u - C)^2\\big)
                 + \\mu_t\\, \\mathrm{mean}_B\\,\\lvert C \\rvert

over each mini-batch's rows :math:`B` (the first term keeps the two views apart, the second
makes :math:`C` sparse). Learning rates fall by ``step_decay`` after every local step and by
``round_decay`` after every round; a client stops its round early once its running mean loss
changes by less than ``tol`` (relative) from one epoch to the next. The server averages the
uploaded :math:`C` copies. :math:`\\lambda_t, \\mu_t` follow the paper's curriculum,
:math:`\\tanh(\\max(t - 1, 0) / 10)` times their final values, or stay at them as the code
runs (``curriculum='code'``: it computes the curriculum but never uses it).

Both engines hold every client's :math:`D_u` densely, a private parameter of the model
(:class:`AdditiveRecommender`): memory grows with ``clients x items``. The vectorized engine
trains only the rows a round's samples touch and carries weight decay, which shrinks every
row of a client's tables alike, as one factor per client; the reference engine trains whole
tables. The vectorized engine is the two halves of a round, the clients'
:meth:`AdditiveEngine.local_round` and the server's :meth:`AdditiveEngine.aggregate`, which
a deployment runs apart (:math:`D_u` stays on the node with the head; the server sends the
round's index, :class:`AdditiveNodeHooks`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn
from torch_scatter import scatter

from fedgraph.data.partition import ClientPartition
from fedgraph.federated.engine import FederatedEngine
from fedgraph.federated.local import bce
from fedgraph.federated.messages import ClientRound, Payload, RoundStats, RowUpload
from fedgraph.federated.node import Node, NodeHooks
from fedgraph.federated.plan import RoundPlan
from fedgraph.federated.selection import ClientSelector
from fedgraph.nn.heads import LinearScoreHead
from fedgraph.nn.recommender import FederatedRecommender
from fedgraph.privacy.upload import UploadTransform

#: How :math:`\lambda_t, \mu_t` move over the rounds: ``'paper'`` the tanh curriculum,
#: ``'code'`` constant.
CURRICULA = ('paper', 'code')


@dataclass
class AdditiveTraining:
    """FedRAP's local training (defaults: its code's, ``train.py``).

    Attributes:
        lr: the head's learning rate in round 0.
        table_lr: :math:`D_u`'s and :math:`C`'s learning rate in round 0.
        round_decay: the learning rates' factor after every round.
        step_decay: the learning rates' factor after every local step.
        weight_decay: :math:`\\omega`.
        lam, mu: :math:`\\lambda` and :math:`\\mu` (their values at the curriculum's end).
        curriculum: one of :data:`CURRICULA`.
        tol: the relative change of the running mean loss that ends a client's round.
        batch_size, max_epochs, num_negatives: mini-batch size, epochs at most, negatives
            per positive (redrawn every round).
    """
    lr: float = 0.5
    table_lr: float = 200.0
    round_decay: float = 0.97
    step_decay: float = 0.95
    weight_decay: float = 1e-4
    lam: float = 0.1
    mu: float = 0.1
    curriculum: str = 'paper'
    tol: float = 1e-4
    batch_size: int = 2048
    max_epochs: int = 10
    num_negatives: int = 4
    #: What an upload goes through: nothing (the server reads the copies as they are).
    upload: UploadTransform = field(default_factory=UploadTransform)

    def describe(self) -> Dict[str, str]:
        """The loss's and the optimizer's names (``config.json``'s ``ran``)."""
        return {'loss': 'FedRAP (BCE - lambda_t mean (D - C)^2 + mu_t mean |C|)',
                'optimizer': 'SGD with weight decay'}

    def plan_settings(self) -> Tuple[int, int, int, bool]:
        """``(num_negatives, batch_size, epochs, keep_groups)`` of its round plans: at most
        ``max_epochs`` epochs, the samples shuffled freely."""
        return self.num_negatives, self.batch_size, self.max_epochs, False

    def learning_rates(self, round_index: int) -> Tuple[float, float]:
        """The head's and the tables' learning rates at the start of round ``round_index``."""
        decay = self.round_decay ** round_index
        return self.lr * decay, self.table_lr * decay

    def weights(self, round_index: int) -> Tuple[float, float]:
        """:math:`(\\lambda_t, \\mu_t)` of round ``round_index``."""
        if self.curriculum == 'code':
            return self.lam, self.mu
        ramp = math.tanh(max(round_index - 1, 0) / 10)
        return ramp * self.lam, ramp * self.mu

    def loss(self, logits: Tensor, label: Tensor, personal: Tensor, common: Tensor,
             round_index: int) -> Tensor:
        """``[N]`` each sample's share of its mini-batch's loss before the batch mean: its
        BCE, minus :math:`\\lambda_t` times its rows' mean squared difference, plus
        :math:`\\mu_t` times :math:`C`'s row's mean absolute value."""
        lam, mu = self.weights(round_index)
        dim = personal.size(-1)
        return (bce(logits, label) - lam * (personal - common).pow(2).sum(-1) / dim
                + mu * common.abs().sum(-1) / dim)


class AdditiveRecommender(FederatedRecommender):
    """FedRAP's model: the shared table :math:`C` (:attr:`item`), every client's private
    linear head and every client's private table :math:`D_u` (:attr:`personal`
    ``[N, I, d]``, private like the head: it never leaves the client), one ``N(0, 1)`` draw
    after :math:`C`'s copied to every client (the code deep-copies one model per client)."""

    def __init__(self, num_items: int, head: LinearScoreHead,
                 generator: Optional[torch.Generator] = None):
        super().__init__(num_items, head, init_std=1.0, generator=generator)
        first = torch.randn(num_items, head.dim, generator=generator)
        self.personal = nn.Parameter(first.expand(head.num_clients, -1, -1).clone())

    def private_parameters(self) -> Dict[str, Tensor]:
        return {**self.head.private_parameters(), 'personal': self.personal}


class AdditiveEngine(FederatedEngine):
    """FedRAP on the vectorized engine, as the two halves of a round that a deployment runs
    apart: :meth:`local_round` on the clients' devices (a round's clients train side by
    side, each holding only the rows its samples touch and a scale for the rest,
    :meth:`train_clients`), :meth:`aggregate` on the server.

    Args:
        model: :math:`C`, the clients' private heads and tables.
        partition: each client's training items.
        training: the local training.

    The rest of the arguments are :class:`FederatedEngine`'s (the selector, the known items,
    the streams; FedRAP's server averages the copies as they are: no server pipeline or
    secure sum applies).
    """

    chance_loss = math.log(2)  # BCE at sigma(s) = 1/2, the regularizers at zero

    def __init__(self, model: AdditiveRecommender, partition: ClientPartition,
                 training: AdditiveTraining, *args, **kwargs):
        super().__init__(model, partition, training, *args, **kwargs)
        #: Rounds aggregated so far: the learning rates' and the curriculum's clock.
        self.rounds_done = 0

    def local_round(self, clients: Tensor, generator: Optional[torch.Generator] = None,
                    round_seed: Optional[int] = None) -> ClientRound:
        """The client half: ``clients`` train from :math:`C`, keep their heads and
        :math:`D_u` and upload their copies of :math:`C`."""
        model = self.model
        plan = self.round_plan(clients, generator, round_seed)
        common = model.item.detach()
        head, scale, personal_rows, common_rows, loss = self.train_clients(plan, common)
        owner, item = plan.row_owner, plan.row_item
        with torch.no_grad():
            for name, value in head.items():
                model.head.private_parameters()[name][plan.clients] = value
            model.personal[plan.clients] *= scale.view(-1, 1, 1)
            model.personal[plan.clients[owner], item] = scale[owner].unsqueeze(1) * personal_rows
        copies = scale.view(-1, 1, 1) * common
        copies[owner, item] = scale[owner].unsqueeze(1) * common_rows
        return self.table_round(plan, copies, common, loss, round_seed)

    def aggregate(self, base: Tensor, result: ClientRound,
                  dropped: Optional[Dict[str, int]] = None,
                  generator: Optional[torch.Generator] = None) -> RoundStats:
        """The server half: :math:`C` becomes the mean of the uploaded copies; with no
        upload left, the model stays as it was."""
        upload = result.upload
        size = upload.clients.numel()
        if size == 0:
            return RoundStats(None, 0, 0.0, 0.0, dict(dropped or {}))
        change = torch.zeros_like(base).index_add_(0, upload.row_item, upload.update)
        with torch.no_grad():
            self.model.item.copy_(base + change / size)
        self.rounds_done += 1
        return self.table_round_stats(upload.clients, base, float(result.loss.mean()),
                                      dropped, tables_down=1)

    def round_payload(self, users: Tensor) -> Dict[str, object]:
        """What a deployment's server sends with a round: the round's index."""
        return {'round': self.rounds_done}

    def evaluation_payload(self, users: Tensor) -> Dict[str, Tensor]:
        return {'items': self.model.item.detach()}

    def train_clients(self, plan: RoundPlan, common: Tensor
                      ) -> Tuple[Dict[str, Tensor], Tensor, Tensor, Tensor, Tensor]:
        """The plan's clients' local steps side by side from the shared table ``common``.

        Weight decay shrinks every row of a client's tables by the same factor each step,
        so each client's tables are held as a scale ``[B]`` times tables that change only at
        the rows its samples touch (the plan's rows): the rows of :math:`D_u` and of its copy
        of :math:`C` at the plan's rows are ``scale * personal_rows`` and
        ``scale * common_rows``, every other row is ``scale`` times its value before the
        round.

        Returns:
            ``(head, scale, personal_rows, common_rows, loss)``: the trained heads
            ``{name: [B, ...]}``, the scales, the rows ``[R, d]`` and each client's running
            mean loss ``[B]``.
        """
        cfg, head_module = self.training, self.model.head
        size = plan.clients.numel()
        personal_rows = self.model.personal.detach()[plan.clients[plan.row_owner],
                                                     plan.row_item].clone()
        common_rows = common[plan.row_item].clone()
        scale = torch.ones(size, dtype=common.dtype, device=common.device)
        head = {name: value.detach()[plan.clients].clone()
                for name, value in head_module.private_parameters().items()}
        head_lr, table_lr = cfg.learning_rates(self.rounds_done)
        batches = (plan.num_samples + cfg.batch_size - 1) // cfg.batch_size
        loss_sum = torch.zeros(size, dtype=common.dtype, device=common.device)
        seen = torch.zeros_like(loss_sum)
        previous = torch.full_like(loss_sum, float('nan'))
        stopped = torch.zeros(size, dtype=torch.bool, device=common.device)
        step_ptr = plan.step_ptr.tolist()
        for step, (start, end) in enumerate(zip(step_ptr[:-1], step_ptr[1:])):
            owner, row = plan.owner[start:end], plan.row[start:end]
            going = ~stopped[owner]
            owner, row = owner[going], row[going]
            if owner.numel() == 0:
                continue
            label, weight = plan.label[start:end][going], plan.weight[start:end][going]
            params = {name: value.requires_grad_() for name, value in head.items()}
            rows_d = (scale[owner].unsqueeze(1) * personal_rows[row]).requires_grad_()
            rows_c = (scale[owner].unsqueeze(1) * common_rows[row]).requires_grad_()
            sample = cfg.loss(head_module.grouped_logits(params, owner, rows_d + rows_c), label,
                              rows_d, rows_c, self.rounds_done)
            client_loss = scatter(sample * weight, owner, dim_size=size, reduce='sum')
            *grads, grad_d, grad_c = torch.autograd.grad(
                client_loss.sum(), [*params.values(), rows_d, rows_c])
            active = torch.zeros(size, dtype=torch.bool, device=owner.device)
            active[owner] = True
            decay = cfg.step_decay ** step
            head = {name: _sgd(value.detach(), grad, head_lr * decay, cfg.weight_decay, active)
                    for (name, value), grad in zip(params.items(), grads)}
            lr = table_lr * decay
            scale = torch.where(active, scale * (1 - lr * cfg.weight_decay), scale)
            step_size = (lr / scale[owner]).unsqueeze(1)
            personal_rows.index_add_(0, row, grad_d.mul_(-step_size))
            common_rows.index_add_(0, row, grad_c.mul_(-step_size))
            count = torch.bincount(owner, minlength=size).to(loss_sum.dtype)
            loss_sum += client_loss.detach() * count
            seen += count
            ended = active & ((step + 1) % batches == 0)
            current = loss_sum / seen.clamp_min(1)
            change = (current - previous).abs() / previous.abs()
            stopped |= ended & (step + 1 > batches) & (change < cfg.tol)
            previous = torch.where(ended, current, previous)
        return head, scale, personal_rows, common_rows, loss_sum / seen.clamp_min(1)

    # ------------------------------------------------------------------ scoring
    def tables(self, users: Tensor) -> Tensor:
        """``[U, I, d]`` each user's item view :math:`D_u + C`."""
        return self.model.personal.detach()[users] + self.model.item.detach()

    @torch.no_grad()
    def scores(self, users: Tensor, items: Tensor) -> Tensor:
        """``[U, k]`` logits of ``items[u, j]`` for ``users[u]``."""
        params = {name: value[users].unsqueeze(1).expand(-1, items.size(1), *value.shape[1:])
                  for name, value in self.model.head.private_parameters().items()}
        rows = self.model.personal[users.unsqueeze(-1), items] + self.model.item[items]
        return self.model.head.logits(params, rows)

    @torch.no_grad()
    def scores_all(self, users: Tensor) -> Tensor:
        """``[U, I]`` logits of every item for ``users``."""
        every = torch.arange(self.model.num_items, device=users.device)
        return self.scores(users, every.expand(users.numel(), -1))

    def item_views(self, user: int) -> Tuple[Dict[str, Tensor], List[Tensor], List[float]]:
        """``user``'s head and its item view :math:`D_u + C`."""
        users = torch.tensor([user], device=self.model.item.device)
        params = {name: value.detach()[users]
                  for name, value in self.model.head.private_parameters().items()}
        return params, [self.tables(users)[0]], [1.0]

    # ------------------------------------------------------------------ state
    def state_dict(self) -> Dict[str, object]:
        return {**super().state_dict(), 'rounds_done': self.rounds_done}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        super().load_state_dict(state)
        self.rounds_done = int(state['rounds_done'])


class AdditiveNodeHooks(NodeHooks):
    """FedRAP's node halves: a round's request brings the round's index (the learning
    rates' and the curriculum's clock)."""

    def configure(self, node: Node, engine: FederatedEngine, payload: Payload,
                  position: Tensor) -> None:
        if 'round' in payload:
            engine.rounds_done = int(payload['round'])


def _sgd(value: Tensor, grad: Tensor, lr: float, weight_decay: float, active: Tensor) -> Tensor:
    """``torch.optim.SGD``'s step with weight decay, :math:`v - \\eta (g + \\omega v)`, for
    the clients ``active`` (a mask over the first dimension); the others keep ``value``."""
    mask = active.view(-1, *[1] * (value.dim() - 1))
    return torch.where(mask, value - lr * (grad + weight_decay * value), value)


class AdditiveReference(AdditiveEngine):
    """FedRAP as its code runs it: each client's own modules (its :math:`D_u` and copy of
    :math:`C` as ``nn.Embedding``, its head as ``nn.Linear``), ``torch.optim.SGD`` with weight
    decay, ``ExponentialLR`` stepped after every mini-batch, client after client; the same
    server."""

    def __init__(self, model: AdditiveRecommender, partition: ClientPartition,
                 training: AdditiveTraining, selector: ClientSelector,
                 known: Optional[ClientPartition] = None, server=None):
        super().__init__(model, partition, training, selector, known, server=server)

    def train_round(self, generator: torch.Generator) -> Tuple[RoundStats, ClientRound]:
        model = self.model
        plan = self.round_plan(self.selector(generator), generator)
        common = model.item.detach().clone()
        copies, losses = [], []
        for position, client in enumerate(plan.clients.tolist()):
            head, personal, copy, loss = self._train_client(plan, position, client, common)
            with torch.no_grad():
                for name, value in head.items():
                    getattr(model.head, name)[client] = value
                model.personal[client] = personal
            copies.append(copy)
            losses.append(loss)
        result = ClientRound(RowUpload.tables(plan.clients, torch.stack(copies), common),
                             plan.num_samples, torch.tensor(losses, dtype=common.dtype))
        return self.aggregate(common, result), result

    def _train_client(self, plan: RoundPlan, position: int, client: int, common: Tensor):
        cfg = self.training
        personal = torch.nn.Embedding.from_pretrained(self.model.personal[client].clone(),
                                                      freeze=False)
        copy = torch.nn.Embedding.from_pretrained(common.clone(), freeze=False)
        linear = torch.nn.Linear(common.size(1), 1).to(common.dtype)
        with torch.no_grad():
            linear.weight.copy_(self.model.head.weight[client].view(1, -1))
            linear.bias.copy_(self.model.head.bias[client].view(1))
        head_lr, table_lr = cfg.learning_rates(self.rounds_done)
        optimizer = torch.optim.SGD([
            {'params': linear.parameters(), 'lr': head_lr},
            {'params': personal.parameters(), 'lr': table_lr},
            {'params': copy.parameters(), 'lr': table_lr}], lr=head_lr,
            weight_decay=cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=cfg.step_decay)
        batches = int((plan.num_samples[position] + cfg.batch_size - 1) // cfg.batch_size)
        total, count, running = 0.0, 0, []
        for step, items, labels in plan.client_batches(position):
            rows_d, rows_c = personal(items), copy(items)
            logits = linear(rows_d + rows_c).view(-1)
            loss = cfg.loss(logits, labels, rows_d, rows_c, self.rounds_done).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item() * items.numel()
            count += items.numel()
            if (step + 1) % batches == 0:
                running.append(total / count)
                if len(running) > 1 and (abs(running[-1] - running[-2]) / abs(running[-2])
                                         < cfg.tol):
                    break
        head = {'weight': linear.weight.detach().view(-1), 'bias': linear.bias.detach().view(())}
        return head, personal.weight.detach(), copy.weight.detach(), total / count
