"""GPFedRec's graph-guided personalization (Zhang et al., *Graph-guided Personalization for
Federated Recommendation*, KDD 2024), on the vectorized engine and on the reference engine.

A round's clients start from the global item table :math:`G`, train as PFedRec's clients do
(one joint SGD step per mini-batch) with a pull of their whole local table :math:`Q_c`
towards their personalized aggregate :math:`R_c`,

.. math::
    \\mathcal{L}_c = \\mathrm{BCE} + \\rho \\cdot \\mathrm{mean}\\big((Q_c - R_c)^2\\big),

and upload :math:`Q_c`. The server relates the clients by their uploaded tables
(:func:`relation_graph`: a row-normalized neighbour matrix :math:`A`), gives each client
:math:`R_c = (A Q)_c` and publishes :math:`G = \\frac{1}{B} \\sum_c R_c`
(:func:`guided_aggregate`). A client scores with the table it trained last.

Under SGD the pull moves a row the round's mini-batches never touched by a fixed share
per step, :math:`q \\leftarrow q - \\beta (q - r)` with :math:`\\beta = 2 \\rho \\eta_I / (I
d)`, so after the client's :math:`K_c` steps such a row is :math:`r + (1 - \\beta)^{K_c}
(g - r)`: the vectorized engine trains only the rows of the round's samples and writes the
others in that closed form (:func:`dense_tables`); the reference engine trains each
client's whole table. Both hold every client's :math:`Q_c` and :math:`R_c`: their memory
grows with ``clients x items``.
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from fedgraph.federated.engine import FederatedEngine
from fedgraph.federated.local import SGD
from fedgraph.federated.messages import ClientRound, RoundStats, RowUpload
from fedgraph.federated.plan import RoundPlan
from fedgraph.federated.reference import ReferenceEngine

#: How the server measures how close two clients' tables are: ``'paper'`` by cosine
#: similarity (the paper's "similar users"), ``'code'`` by cosine distance, as the
#: GPFedRec code's ``pairwise_distances(metric='cosine')`` leaves it (its neighbours are the
#: least similar users).
CLOSENESS = ('paper', 'code')


def relation_graph(tables: Tensor, closeness: str = 'paper', neighbours: int = 0,
                   threshold: float = 1.0) -> Tensor:
    """GPFedRec's user-relation graph over ``B`` clients' flattened tables ``[B, D]``: the
    row-normalized ``[B, B]`` matrix :math:`A` with :math:`A_{cj} = 1 / |N_c|` for
    :math:`j \\in N_c`.

    :math:`s_{cj}` is the cosine similarity of the two tables (``closeness='paper'``) or the
    cosine distance :math:`1 - \\cos` (``'code'``); every client, itself included, is a
    candidate. With ``neighbours = k > 0``, :math:`N_c` is the ``k`` clients of largest
    :math:`s_{cj}`; with ``0``, those with :math:`s_{cj}` above ``threshold`` times the mean
    of all :math:`B^2` values, and :math:`\\{c\\}` when none is. Dense: its memory grows with
    :math:`B^2`.
    """
    if closeness not in CLOSENESS:
        raise ValueError(f'closeness must be one of {CLOSENESS}, got {closeness!r}')
    unit = F.normalize(tables, dim=1)
    score = unit @ unit.T
    if closeness == 'code':
        score = 1 - score
    if neighbours:
        index = torch.topk(score, min(neighbours, score.size(0)), dim=1).indices
        chosen = torch.zeros_like(score, dtype=torch.bool).scatter_(1, index, True)
    else:
        chosen = score > score.mean() * threshold
        lonely = ~chosen.any(1)
        chosen[lonely, lonely.nonzero().view(-1)] = True
    chosen = chosen.to(tables.dtype)
    return chosen / chosen.sum(1, keepdim=True)


def guided_aggregate(tables: Tensor, closeness: str = 'paper', neighbours: int = 0,
                     threshold: float = 1.0) -> Tuple[Tensor, Tensor]:
    """``(R, G)``: each of the ``B`` clients' personalized aggregate of the uploaded tables
    ``[B, I, d]``, :math:`R = A Q` over the :func:`relation_graph`, and the global table
    :math:`G` their mean (a client weighs by how many clients count it a neighbour)."""
    flat = tables.reshape(tables.size(0), -1)
    personal = relation_graph(flat, closeness, neighbours, threshold) @ flat
    return personal.view_as(tables), personal.mean(0).view_as(tables[0])


def steps_taken(plan: RoundPlan) -> Tensor:
    """``[B]`` how many local steps each of the plan's clients takes (the steps in which it
    has a mini-batch)."""
    counts = plan.step_ptr.diff()
    step = torch.repeat_interleave(torch.arange(counts.numel(), device=counts.device), counts)
    pairs = torch.unique(step * plan.clients.numel() + plan.owner)
    return torch.bincount(pairs % plan.clients.numel(), minlength=plan.clients.numel())


def dense_tables(plan: RoundPlan, base: Tensor, targets: Tensor, local: Tensor,
                 pull: float) -> Tensor:
    """``[B, I, d]`` the plan's clients' whole tables after their steps: each trained row of
    ``local`` ``[R, d]`` in place, every other row :math:`r + (1 - \\beta)^{K_c} (g - r)` from
    the broadcast ``base`` ``[I, d]``, the clients' ``targets`` ``[B, I, d]`` and their
    :func:`steps_taken` (``pull``: :math:`\\beta`)."""
    decay = (1 - pull) ** steps_taken(plan).to(base.dtype)
    tables = targets + decay.view(-1, 1, 1) * (base - targets)
    tables[plan.row_owner, plan.row_item] = local
    return tables


class GraphGuidedState:
    """What GPFedRec's server and clients hold besides the model: every client's latest
    table :math:`Q_c` and personalized aggregate :math:`R_c`, both ``[N, I, d]`` (from the
    initial table), and the server's graph settings."""

    def __init__(self, table: Tensor, num_clients: int, closeness: str, neighbours: int,
                 threshold: float):
        self.tables = table.expand(num_clients, -1, -1).clone()
        self.targets = self.tables.clone()
        self.closeness, self.neighbours, self.threshold = closeness, neighbours, threshold

    def aggregate(self, clients: Tensor, tables: Tensor) -> Tensor:
        """Keeps ``clients``' trained ``tables``, gives them their new aggregates, and
        returns the new global table."""
        self.tables[clients] = tables
        personal, global_table = guided_aggregate(tables, self.closeness, self.neighbours,
                                                  self.threshold)
        self.targets[clients] = personal
        return global_table

    def state_dict(self) -> Dict[str, Tensor]:
        return {'tables': self.tables, 'targets': self.targets}

    def load_state_dict(self, state: Dict[str, Tensor]) -> None:
        self.tables, self.targets = state['tables'], state['targets']


def _round_result(clients: Tensor, tables: Tensor, base: Tensor, num_samples: Tensor,
                  loss: Tensor) -> ClientRound:
    """What the round's clients uploaded: each its whole table's change, as rows."""
    size, num_items = tables.shape[:2]
    device = tables.device
    upload = RowUpload(clients, torch.arange(size, device=device).repeat_interleave(num_items),
                       torch.arange(num_items, device=device).repeat(size),
                       (tables - base).reshape(-1, tables.size(-1)), {})
    return ClientRound(upload, num_samples, loss)


def _stats(engine, clients: Tensor, base: Tensor, loss: float) -> RoundStats:
    """The round's record: its clients counted, each uploading and downloading a table (it
    downloads two: the global one and its own aggregate)."""
    engine.participation[clients.cpu()] += 1
    engine.broadcast = base
    size = base.numel() * base.element_size()
    engine.ledger.record_aggregate(clients, engine.selector.uniform,
                                   torch.full((clients.numel(),), base.size(0)))
    return RoundStats(loss=loss, num_clients=clients.numel(), upload_bytes=float(size),
                      download_bytes=float(2 * size))


class _Guided:
    """What GPFedRec adds to either engine: ``guided``, the clients' tables and aggregates
    (kept in its state), from which each user scores."""

    def __init__(self, *args, guided: GraphGuidedState, **kwargs):
        super().__init__(*args, **kwargs)
        self.guided = guided

    def personal_rows(self, users: Tensor, items: Tensor) -> Tensor:
        """``[U, k, d]`` each user's rows of ``items[u]`` in the table it trained last."""
        return self.guided.tables[users.unsqueeze(-1), items]

    def state_dict(self) -> Dict[str, object]:
        return {**super().state_dict(), 'guided': self.guided.state_dict()}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        super().load_state_dict(state)
        self.guided.load_state_dict(state['guided'])


class GraphGuidedEngine(_Guided, FederatedEngine):
    """GPFedRec on the vectorized engine (see the module docstring). Its clients train with
    SGD (the closed form of the untouched rows is SGD's)."""

    def __init__(self, *args, guided: GraphGuidedState, **kwargs):
        super().__init__(*args, guided=guided, **kwargs)
        if not isinstance(self.training.optimizer, SGD) or not self.training.proximal:
            raise ValueError('graph-guided personalization trains with SGD and a proximal '
                             'term')

    def train_round(self, generator: torch.Generator) -> Tuple[RoundStats, ClientRound]:
        cfg, model = self.training, self.model
        plan = cfg.plan(self.partition, self.selector(generator), generator, self.known)
        base = model.item.detach().clone()
        targets = self.guided.targets[plan.clients]
        local, _, private, loss = self.train_clients(
            plan, base, targets[plan.row_owner, plan.row_item])
        pull = 2 * cfg.proximal * cfg.item_lr / (model.num_items * model.dim)
        tables = dense_tables(plan, base, targets, local, pull)
        with torch.no_grad():
            for name, tensor in model.private_parameters().items():
                tensor[plan.clients] = private[name]
            model.item.copy_(self.guided.aggregate(plan.clients, tables))
        stats = _stats(self, plan.clients, base, float(loss.mean()))
        return stats, _round_result(plan.clients, tables, base, plan.num_samples, loss)

    def personal_scores_all(self, users: Tensor, params: Dict[str, Tensor]) -> Tensor:
        """``[U, I]`` each user's logits of every item of its own table, a user at a time."""
        head = self.model.head
        return torch.cat([head.logits_all({name: value[position:position + 1]
                                           for name, value in params.items()},
                                          self.guided.tables[user])
                          for position, user in enumerate(users.tolist())])

    def item_views(self, user: int):
        """``user``'s private parameters and the table it trained last."""
        users = torch.tensor([user], device=self.model.item.device)
        return self.model.client_params(users), [self.guided.tables[user].clone()], [1.0]


class GraphGuidedReference(_Guided, ReferenceEngine):
    """GPFedRec on the reference engine: each client trains its whole table with
    ``torch.optim.SGD`` and the proximal term, client after client; the same server."""

    def train_round(self, generator: torch.Generator) -> Tuple[RoundStats, ClientRound]:
        plan = self.training.plan(self.partition, self.selector(generator), generator,
                                  self.known)
        base = self.model.item.detach().clone()
        tables, losses = [], []
        for position, client in enumerate(plan.clients.tolist()):
            table, private, loss = self._train_client(plan, position, client, base,
                                                      self.guided.targets[client])
            with torch.no_grad():
                for name, tensor in self.model.private_parameters().items():
                    tensor[client] = private[name]
            tables.append(table)
            losses.append(loss)
        tables = torch.stack(tables)
        with torch.no_grad():
            self.model.item.copy_(self.guided.aggregate(plan.clients, tables))
        loss = torch.tensor(losses, dtype=base.dtype)
        stats = _stats(self, plan.clients, base, float(loss.mean()))
        return stats, _round_result(plan.clients, tables, base, plan.num_samples, loss)
