"""The reference engine: the same algorithm written the obvious way.

One small model per client (a full copy of the item table and its own head), a Python loop
over clients and over each client's mini-batches, ``torch.optim.SGD`` optimizers, and
FedAvg over full tables -- the structure of the PFedRec reference code. It consumes the same
:class:`~fedgraph.federated.plan.RoundPlan` as :class:`~fedgraph.federated.engine.FederatedEngine`
and is the oracle of its tests and the baseline of its speed benchmark. Its memory grows
with ``clients x items``: use it on small data only.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import Tensor, nn

from fedgraph.data.partition import ClientPartition
from fedgraph.federated.engine import BYTES_PER_INDEX, LocalTraining, RoundStats, RowUpload
from fedgraph.federated.plan import RoundPlan, plan_round
from fedgraph.federated.selection import ClientSelector
from fedgraph.nn.recommender import FederatedRecommender


class ClientModel(nn.Module):
    """One client's on-device model: a full item table and its own head parameters, scored
    through the shared model's context (a no-op without a graph)."""

    def __init__(self, client: int, items: Tensor, private: Dict[str, Tensor],
                 model: FederatedRecommender):
        super().__init__()
        self.client = client
        self.item = nn.Embedding.from_pretrained(items.clone(), freeze=False)
        self.private = nn.ParameterDict({k: nn.Parameter(v.clone()) for k, v in private.items()})
        self.model = [model]  # a list: the shared model is not a submodule of the client's

    def forward(self, items: Tensor) -> Tensor:
        model = self.model[0]
        clients = torch.full_like(items, self.client)
        params = {k: v.expand(items.numel(), *v.shape) for k, v in self.private.items()}
        logits = model.head.logits(model.user_input(params, clients),
                                   model.item_input(self.item(items), items))
        return torch.sigmoid(logits)


class ReferenceEngine:
    """Loop-per-client implementation of :class:`~fedgraph.federated.engine.FederatedEngine`.
    Its clients draw from the round's shared generator (no per-client streams)."""

    streams = None
    last_generators = None

    def __init__(self, model: FederatedRecommender, partition: ClientPartition,
                 training: LocalTraining, selector: ClientSelector,
                 known: Optional[ClientPartition] = None):
        self.model = model
        self.partition = partition
        self.known = known
        self.training = training
        self.selector = selector
        self.broadcast = model.item.detach().clone()
        self.participation = torch.zeros(model.num_clients, dtype=torch.long)
        self.last_upload: Optional[RowUpload] = None
        self.local_tables: Dict[int, Tensor] = {}
        self.touched_rows: Dict[int, Tensor] = {}

    def run_round(self, generator: torch.Generator) -> RoundStats:
        cfg = self.training
        clients = self.selector(generator)
        plan = plan_round(self.partition, clients, cfg.num_negatives, cfg.batch_size,
                          cfg.local_epochs, generator, self.known)
        global_items = self.model.item.detach().clone()
        tables, weights, losses, uploads = [], [], [], []
        for position, client in enumerate(plan.clients.tolist()):
            table, private, loss = self._train_client(plan, position, client, global_items)
            with torch.no_grad():
                for name, tensor in self.model.private_parameters().items():
                    tensor[client] = private[name]
            update = table - global_items
            touched = torch.zeros(global_items.size(0), dtype=torch.bool)
            touched[plan.item[plan.owner == position]] = True  # the rows it trained
            if cfg.personalize_items:
                self.local_tables[client] = table.clone()
                self.touched_rows[client] = touched
            update[touched] = cfg.upload(update[touched], generator)
            uploads.append((torch.full((int(touched.sum()),), position),
                            torch.nonzero(touched).view(-1), update[touched]))
            tables.append(global_items + update)
            weights.append(float(plan.num_samples[position]) if cfg.weighted_aggregation else 1.0)
            losses.append(loss)
        weight = torch.tensor(weights, dtype=global_items.dtype).view(-1, 1, 1)
        self.broadcast = global_items
        self.participation[plan.clients] += 1
        self.last_upload = RowUpload(plan.clients, *(torch.cat(parts) for parts in zip(*uploads)))
        with torch.no_grad():
            self.model.item.copy_((torch.stack(tables) * weight).sum(0) / weight.sum())
        row_bytes = self.model.dim * global_items.element_size() + BYTES_PER_INDEX
        return RoundStats(loss=sum(losses) / len(losses), num_clients=len(tables),
                          upload_bytes=self.last_upload.row_owner.numel() / len(tables)
                          * row_bytes,
                          download_bytes=float(global_items.numel() * global_items.element_size()),
                          epsilon=cfg.upload.epsilon)

    def _train_client(self, plan: RoundPlan, position: int, client: int, global_items: Tensor):
        cfg = self.training
        private = {k: v.detach()[client] for k, v in self.model.private_parameters().items()}
        model = ClientModel(client, global_items, private, self.model)
        head_optimizer = torch.optim.SGD(model.private.parameters(), lr=cfg.lr)
        item_optimizer = torch.optim.SGD(model.item.parameters(), lr=cfg.item_lr)
        joint_optimizer = torch.optim.SGD([
            {'params': model.private.parameters(), 'lr': cfg.lr},
            {'params': model.item.parameters(), 'lr': cfg.item_lr}])
        criterion = nn.BCELoss()
        mine = plan.owner == position
        total, count = 0.0, 0
        for step in range(plan.num_steps):
            in_step = mine.clone()
            in_step[:plan.step_ptr[step]] = False
            in_step[plan.step_ptr[step + 1]:] = False
            if not in_step.any():
                continue
            items, labels = plan.item[in_step], plan.label[in_step]
            if cfg.alternating:
                head_optimizer.zero_grad()
                criterion(model(items), labels).backward()
                head_optimizer.step()
                item_optimizer.zero_grad()
                loss = criterion(model(items), labels)
                loss.backward()
                item_optimizer.step()
            else:
                joint_optimizer.zero_grad()
                loss = criterion(model(items), labels)
                loss.backward()
                joint_optimizer.step()
            total += loss.item() * items.numel()
            count += items.numel()
        private = {k: v.detach() for k, v in model.private.items()}
        return model.item.weight.detach(), private, total / count

    @torch.no_grad()
    def scores_all(self, users: Tensor) -> Tensor:
        """``[U, I]`` logits of every item for ``users``."""
        every_item = torch.arange(self.model.num_items).expand(users.numel(), -1)
        return self.scores(users, every_item)

    def state_dict(self) -> Dict[str, object]:
        return {'model': self.model.state_dict(), 'broadcast': self.broadcast,
                'local_tables': self.local_tables, 'touched_rows': self.touched_rows,
                'participation': self.participation}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        self.model.load_state_dict(state['model'])
        self.broadcast = state['broadcast']
        self.local_tables = state['local_tables']
        self.touched_rows = state['touched_rows']
        self.participation = state['participation']

    def personal_rows(self, users: Tensor, items: Tensor) -> Tensor:
        """``[U, k, d]`` each user's own rows of ``items[u]``: the rows it fine-tuned in its
        last round over the latest broadcast table, one user at a time."""
        out = []
        for user, user_items in zip(users.tolist(), items):
            table = self.broadcast
            if user in self.local_tables:
                touched = self.touched_rows[user].unsqueeze(1)
                table = torch.where(touched, self.local_tables[user], self.broadcast)
            out.append(table[user_items])
        return torch.stack(out)

    def personal_scores_all(self, users: Tensor, params: Dict[str, Tensor]) -> Tensor:
        """``[U, I]`` logits of every item with each user's own item view, one user at a
        time (``params``: the users' private parameters with context)."""
        every_item = torch.arange(self.model.num_items).expand(users.numel(), -1)
        rows = self.personal_rows(users, every_item)
        expanded = {k: v.unsqueeze(1).expand(-1, every_item.size(1), *v.shape[1:])
                    for k, v in params.items()}
        return self.model.head.logits(expanded, self.model.item_input(rows, every_item))

    @torch.no_grad()
    def scores(self, users: Tensor, items: Tensor) -> Tensor:
        """``[U, k]`` logits, one user at a time with its own head and item view."""
        rows = (self.personal_rows(users, items) if self.training.personalize_items
                else self.model.item.detach()[items])
        out = []
        for user, user_items, user_rows in zip(users.tolist(), items, rows):
            params = {k: v[user].expand(user_items.numel(), *v.shape[1:])
                      for k, v in self.model.private_parameters().items()}
            clients = torch.full_like(user_items, user)
            out.append(self.model.head.logits(self.model.user_input(params, clients),
                                              self.model.item_input(user_rows, user_items)))
        return torch.stack(out)
