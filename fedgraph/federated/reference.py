"""The reference engine: the same algorithm written the obvious way.

One small model per client (a full copy of the item table, its own head and its own copy of
the dense shared parameters), a Python loop over clients and over each client's mini-batches,
the ``torch.optim`` twin of the local optimizer, and FedAvg over full tables and whole dense
parameters -- the structure of the PFedRec reference code. It consumes the same
:class:`~fedgraph.federated.plan.RoundPlan` as :class:`~fedgraph.federated.engine.FederatedEngine`
and is the oracle of its tests and the baseline of its speed benchmark. Its memory grows
with ``clients x items``: use it on small data only.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import torch
from torch import Tensor, nn

from fedgraph.data.partition import ClientPartition
from fedgraph.federated.engine import BYTES_PER_INDEX, dense_transform
from fedgraph.federated.local import LocalTraining
from fedgraph.federated.messages import ClientRound, RoundStats, RowUpload
from fedgraph.federated.plan import RoundPlan
from fedgraph.federated.round_engine import RoundEngine
from fedgraph.federated.selection import ClientSelector
from fedgraph.nn.recommender import FederatedRecommender
from fedgraph.privacy.ledger import PrivacyLedger
from fedgraph.server.stages import Mean, ServerPipeline, WeightedMean


class ClientModel(nn.Module):
    """One client's on-device model: a full item table and its own head parameters (its
    private ones and its copy of the dense shared ones), scored through the shared model's
    context (a no-op without a graph)."""

    def __init__(self, client: int, items: Tensor, private: Dict[str, Tensor],
                 model: FederatedRecommender):
        super().__init__()
        self.client = client
        self.item = nn.Embedding.from_pretrained(items.clone(), freeze=False)
        self.names = list(private)  # may hold dots ('layers.0.weight'): a list, not a dict
        self.private = nn.ParameterList(nn.Parameter(v.clone()) for v in private.values())
        self.model = [model]  # a list: the shared model is not a submodule of the client's

    def parameters_by_name(self) -> Dict[str, Tensor]:
        return dict(zip(self.names, self.private))

    def forward(self, items: Tensor) -> Tensor:
        """``[N]`` logits of ``items``."""
        model = self.model[0]
        clients = torch.full_like(items, self.client)
        params = {k: v.expand(items.numel(), *v.shape)
                  for k, v in self.parameters_by_name().items()}
        return model.head.logits(model.user_input(params, clients),
                                 model.item_input(self.item(items), items))


class ReferenceEngine(RoundEngine):
    """Loop-per-client implementation of :class:`~fedgraph.federated.engine.FederatedEngine`.
    Its clients draw from the round's shared generator (no per-client streams)."""

    streams = None
    last_generators = None

    def __init__(self, model: FederatedRecommender, partition: ClientPartition,
                 training: LocalTraining, selector: ClientSelector,
                 known: Optional[ClientPartition] = None,
                 server: Optional[ServerPipeline] = None):
        server = server if server is not None else ServerPipeline()
        if server.uploads or server.releases or type(server.aggregator) not in (Mean,
                                                                                WeightedMean):
            raise ValueError(f'the reference engine checks local training: it aggregates by '
                             f'FedAvg only, without norm bound, user-level DP or server '
                             f'noise (got {server.describe()})')
        self.server = server
        #: Secure aggregation runs on the vectorized engine only.
        self.secure = None
        self.weighted = server.aggregator.weighted
        self.model = model
        self.partition = partition
        self.known = known
        self.training = training
        self.selector = selector
        self.broadcast = model.item.detach().clone()
        self.participation = torch.zeros(model.num_clients, dtype=torch.long)
        self.ledger = PrivacyLedger(model.num_clients, selector.count, model.dim,
                                    laplace=training.upload)
        self.local_tables: Dict[int, Tensor] = {}
        self.touched_rows: Dict[int, Tensor] = {}

    def run_round(self, generator: torch.Generator) -> RoundStats:
        return self.train_round(generator)[0]

    def whole_tables(self, generator: torch.Generator,
                     train_one: Callable[[RoundPlan, int, int],
                                         Tuple[Tensor, Dict[str, Tensor], float]],
                     base: Optional[Tensor] = None
                     ) -> Tuple[RoundPlan, Tensor, Tensor, Tensor]:
        """A round's clients, drawn with their plan from ``generator``, each training its
        whole item table alone (GPFedRec, CoFedRec): ``train_one(plan, position, client)``
        returns the client's trained table, private parameters (written back into the model)
        and mean loss. Returns ``(plan, base, tables, losses)``: ``base`` the shared table
        of the round's start (a copy, unless the caller gives the one it took),
        ``tables`` ``[B, I, d]`` and ``losses`` ``[B]``."""
        plan = self.training.plan(self.partition, self.selector(generator), generator,
                                  self.known)
        if base is None:
            base = self.model.item.detach().clone()
        tables, losses = [], []
        for position, client in enumerate(plan.clients.tolist()):
            table, private, loss = train_one(plan, position, client)
            with torch.no_grad():
                for name, tensor in self.model.private_parameters().items():
                    tensor[client] = private[name]
            tables.append(table)
            losses.append(loss)
        return plan, base, torch.stack(tables), torch.tensor(losses, dtype=base.dtype)

    def train_round(self, generator: torch.Generator) -> Tuple[RoundStats, ClientRound]:
        """One round, client after client; also returns what the clients uploaded."""
        cfg = self.training
        plan = self.planned(cfg.plan(self.partition, self.selector(generator), generator,
                                     self.known))
        global_items = self.model.item.detach().clone()
        shared_dense = self.model.shared_dense()
        tables, weights, losses, uploads, dense_updates = [], [], [], [], []
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
            dense_updates.append(dense_transform(
                cfg.upload, {name: (private[name] - value.detach()).unsqueeze(0)
                             for name, value in shared_dense.items()}, generator))
            uploads.append((torch.full((int(touched.sum()),), position),
                            torch.nonzero(touched).view(-1), update[touched]))
            tables.append(global_items + update)
            weights.append(float(plan.num_samples[position]) if self.weighted else 1.0)
            losses.append(loss)
        weight = torch.tensor(weights, dtype=global_items.dtype).view(-1, 1, 1)
        self.broadcast = global_items
        self.participation[plan.clients] += 1
        self.ledger.record_aggregate(plan.clients, self.selector.uniform,
                                     torch.bincount(torch.cat([u[0] for u in uploads]),
                                                    minlength=len(tables)))
        dense = {name: torch.cat([d[name] for d in dense_updates]) for name in shared_dense}
        upload = RowUpload(plan.clients, *(torch.cat(parts) for parts in zip(*uploads)), dense)
        with torch.no_grad():
            self.model.item.copy_((torch.stack(tables) * weight).sum(0) / weight.sum())
            for name, value in shared_dense.items():
                copies = dense[name] + value.detach()
                value.copy_((copies * weight.view(-1, *[1] * value.dim())).sum(0) / weight.sum())
        row_bytes = self.model.dim * global_items.element_size() + BYTES_PER_INDEX
        stats = RoundStats(loss=sum(losses) / len(losses), num_clients=len(tables),
                           upload_bytes=upload.row_owner.numel() / len(tables) * row_bytes
                           + self.model.dense_bytes() + self.side_bytes[0],
                           download_bytes=self.download_bytes(global_items))
        return stats, ClientRound(upload, plan.num_samples, torch.tensor(losses))

    def count_participation(self, clients: Tensor) -> None:
        self.participation[clients] += 1

    def _train_client(self, plan: RoundPlan, position: int, client: int, global_items: Tensor,
                      target: Optional[Tensor] = None):
        """Client ``client``'s local steps from ``global_items``; with
        :attr:`LocalTraining.proximal <fedgraph.federated.local.LocalTraining.proximal>`, its
        loss adds the pull of its whole table towards ``target`` ``[I, d]``."""
        cfg = self.training
        private = {k: v.detach()[client] for k, v in self.model.private_parameters().items()}
        private.update({k: v.detach() for k, v in self.model.shared_dense().items()})
        model = ClientModel(client, global_items, private, self.model)
        rule = cfg.optimizer
        head_groups = [{'params': [value], 'lr': cfg.lr_of(name)}
                       for name, value in model.parameters_by_name().items()]
        head_optimizer = rule.torch_optimizer(head_groups, cfg.lr)
        item_optimizer = rule.torch_optimizer(model.item.parameters(), cfg.item_lr)
        joint_optimizer = rule.torch_optimizer(
            head_groups + [{'params': model.item.parameters(), 'lr': cfg.item_lr}], cfg.lr)
        group = 1 + cfg.num_negatives
        private_names = set(self.model.private_parameters())

        def criterion(items: Tensor, labels: Tensor) -> Tuple[Tensor, Tensor]:
            """The samples' mean loss (what a round reports) and the loss optimized."""
            loss = cfg.loss(model(items), labels, group)
            if cfg.l2_reg:
                own = sum(value.pow(2).sum() for name, value in
                          model.parameters_by_name().items() if name in private_names)
                loss = loss + cfg.l2_reg / 2 * (model.item(items).pow(2).sum(1) + own)
            loss = loss.mean()
            if not cfg.proximal:
                return loss, loss
            return loss, loss + cfg.proximal * (model.item.weight - target).pow(2).mean()

        total, count = 0.0, 0
        for _, items, labels in plan.client_batches(position):
            if cfg.alternating:
                head_optimizer.zero_grad()
                criterion(items, labels)[1].backward()
                head_optimizer.step()
                item_optimizer.zero_grad()
                loss, optimized = criterion(items, labels)
                optimized.backward()
                item_optimizer.step()
            else:
                joint_optimizer.zero_grad()
                loss, optimized = criterion(items, labels)
                optimized.backward()
                joint_optimizer.step()
            total += loss.item() * items.numel()
            count += items.numel()
        private = {k: v.detach() for k, v in model.parameters_by_name().items()}
        return model.item.weight.detach(), private, total / count

    @torch.no_grad()
    def scores_all(self, users: Tensor) -> Tensor:
        """``[U, I]`` logits of every item for ``users``."""
        every_item = torch.arange(self.model.num_items).expand(users.numel(), -1)
        return self.scores(users, every_item)

    def state_dict(self) -> Dict[str, object]:
        return {'model': self.model.state_dict(), 'broadcast': self.broadcast,
                'local_tables': self.local_tables, 'touched_rows': self.touched_rows,
                'participation': self.participation, 'ledger': self.ledger.state_dict()}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        self.model.load_state_dict(state['model'])
        self.broadcast = state['broadcast']
        self.local_tables = state['local_tables']
        self.touched_rows = state['touched_rows']
        self.participation = state['participation']
        self.ledger.load_state_dict(state['ledger'])

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
            params = {k: v.detach()[user].expand(user_items.numel(), *v.shape[1:])
                      for k, v in self.model.private_parameters().items()}
            clients = torch.full_like(user_items, user)
            out.append(self.model.head.logits(self.model.user_input(params, clients),
                                              self.model.item_input(user_rows, user_items)))
        return torch.stack(out)
