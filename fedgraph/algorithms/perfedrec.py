"""FedLightGCN and PerFedRec++ (Luo et al., ACM TIST 2024) on the federated engine.

The server holds a collaborative graph built only from what clients upload -- their item
sets blurred with pseudo-items, and their user embeddings through clipping and Laplace
noise. Each round it propagates that graph with the federated GNN layer and hands every
client its context (:meth:`~fedgraph.nn.gnn.FederatedGNN.context`), then the selected clients
train their ego embeddings locally with :class:`~fedgraph.federated.engine.FederatedEngine`.

PerFedRec++ adds, on top of FedLightGCN:

* **federated contrastive pre-training** -- two views of the collaborative graph drawn from
  the privacy mechanisms (client dropout, pseudo-items, LDP noise, SimGCL noise), InfoNCE
  between the two views of each user and item;
* **clustering** -- FAISS k-means on the clients' propagated representations every
  ``cluster_every`` rounds, cluster-aware client selection, and a cluster-level item table
  per cluster, the FedAvg of that cluster's clients;
* **three-level personalization** -- a user's score is a weighted sum of the global model's,
  its cluster model's and its own fine-tuned model's (its private item rows) scores.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from tqdm import tqdm

from fedgraph.clustering import ClusterSelector, kmeans
from fedgraph.config import TrainConfig
from fedgraph.data.partition import ClientPartition
from fedgraph.federated.engine import FederatedEngine, RoundStats
from fedgraph.federated.streams import ClientStreams, draw_round_seed
from fedgraph.federated.upload import UploadTransform
from fedgraph.metrics.representation import uniformity
from fedgraph.nn.augment import ClientDropout, Compose, PseudoItems, SimGCLNoise
from fedgraph.nn.contrastive import info_nce
from fedgraph.nn.gnn import CollaborativeGraph, FederatedGNN

LEVELS = ('global', 'cluster', 'local')


def user_upload(upload: UploadTransform, change: Tensor,
                randomness: Union[torch.Generator, Sequence[torch.Generator]]) -> Tensor:
    """What clients upload of the change ``[B, d]`` of their user embeddings: ``upload``
    with one shared generator, or row ``b`` with client ``b``'s own stream."""
    if isinstance(randomness, torch.Generator):
        return upload(change, randomness)
    return ClientStreams.transform(upload, change, torch.arange(change.size(0)), randomness)


def view_offsets(upload: UploadTransform, users: Tensor,
                 generators: Sequence[torch.Generator]) -> Tensor:
    """``[2, B, d]``: the noise each of ``B`` clients adds to the two uploads of its
    embedding (``users`` ``[B, d]``) that enter a pre-training round's views, drawn from its
    own stream."""
    num, dim = users.shape
    zeros = users.new_zeros(2 * num, dim)
    owner = torch.arange(num).repeat_interleave(2)
    offsets = ClientStreams.transform(upload, zeros, owner, generators)
    return offsets.view(num, 2, dim).transpose(0, 1)


class GraphFederatedEngine:
    """A federated engine whose model propagates over the clients' collaborative graph.

    Args:
        engine: the engine that runs local training and aggregation.
        gnn: the federated GNN layer.
        graph: the server's collaborative graph (already blurred with pseudo-items).
        level_weights: weights of the global, cluster and local scores.
        num_clusters: k of the k-means (0: no clustering).
        cluster_every: rounds between two clusterings.
        augmentation: the graph augmentation of a contrastive view.
        simgcl_eps, cl_weight, cl_temperature, pretrain_lr: contrastive pre-training.
        seed: the seed of FAISS k-means.
    """

    def __init__(self, engine: FederatedEngine, gnn: FederatedGNN, graph: CollaborativeGraph,
                 level_weights: Sequence[float] = (1.0, 0.0, 0.0), num_clusters: int = 0,
                 cluster_every: int = 5, augmentation: Optional[Compose] = None,
                 simgcl_eps: float = 0.1, cl_weight: float = 1.0, cl_temperature: float = 0.2,
                 pretrain_lr: float = 0.05, seed: int = 0):
        if level_weights[2] and not engine.training.personalize_items:
            raise ValueError('the local level needs dual personalization (private item rows)')
        self.engine = engine
        self.model = engine.model
        self.training = engine.training
        self.gnn = gnn
        self.graph = graph
        self.level_weights = tuple(level_weights)
        self.num_clusters = num_clusters
        self.cluster_every = cluster_every
        self.augmentation = augmentation
        self.simgcl_eps = simgcl_eps
        self.cl_weight = cl_weight
        self.cl_temperature = cl_temperature
        self.pretrain_lr = pretrain_lr
        self.seed = seed
        self.rounds_done = 0
        self.server_users = torch.zeros_like(self.user_table.detach())
        self.assignment: Optional[Tensor] = None
        self.cluster_tables: Optional[Tensor] = None

    @classmethod
    def configured(cls, config: TrainConfig, engine: FederatedEngine,
                   graph: CollaborativeGraph) -> 'GraphFederatedEngine':
        """The engine of ``config`` over the server's ``graph``."""
        augmentation = Compose([ClientDropout(config.client_dropout),
                                PseudoItems(config.pseudo_ratio)])
        return cls(engine, FederatedGNN(config.num_layers), graph, config.level_weights,
                   config.num_clusters, config.cluster_every, augmentation, config.simgcl_eps,
                   config.cl_weight, config.cl_temperature, config.pretrain_lr, config.seed)

    @classmethod
    def from_config(cls, config: TrainConfig, engine: FederatedEngine,
                    partition: ClientPartition, generator: torch.Generator):
        """The server's collaborative graph is the clients' training items plus their
        pseudo-items, uploaded once when they enroll, with a first noised user embedding.
        With per-client streams (``engine.streams``) each client draws its pseudo-items and
        its noise from its own stream of an enrollment seed the server draws."""
        pseudo = PseudoItems(config.pseudo_ratio)
        graph = CollaborativeGraph(partition.edge_index(), partition.num_clients,
                                   partition.num_items)
        clients = torch.arange(partition.num_clients)
        if engine.streams is None:
            graph, randomness = pseudo(graph, generator), generator
        else:
            randomness = engine.streams.generators(draw_round_seed(generator), clients)
            edges = []
            for client, stream in enumerate(randomness):
                items = pseudo.client_items(partition.items_of(client), partition.num_items,
                                            stream)
                edges.append(torch.stack([torch.full_like(items, client), items]))
            graph = CollaborativeGraph(torch.cat(edges, dim=1), partition.num_clients,
                                       partition.num_items)
        out = cls.configured(config, engine, graph)
        out.upload_users(clients, randomness)
        engine.participation += 1  # the enrollment upload
        return out

    @property
    def user_table(self) -> Tensor:
        """The clients' private user vectors (the head's ``user_vector``), stacked."""
        return getattr(self.model.head, self.model.head.user_vector)

    @property
    def selector(self):
        return self.engine.selector

    @property
    def participation(self) -> Tensor:
        return self.engine.participation

    # ------------------------------------------------------------------ server state
    def upload_users(self, clients: Tensor,
                     randomness: Union[torch.Generator, Sequence[torch.Generator]]) -> None:
        """``clients`` upload the change of their user embedding since their last upload,
        through the same clipping and noise as their item rows (noise from one shared
        generator, or from each client's own stream), and the server adds it to its view."""
        self.server_users[clients] += user_upload(
            self.training.upload, self.user_table.detach()[clients] - self.server_users[clients],
            randomness)

    def refresh_context(self) -> None:
        """Propagates the server's graph and sets every client's context."""
        user_context, item_context = self.gnn.context(self.server_users,
                                                      self.model.item.detach(), self.graph)
        self.model.set_context(self.gnn.num_layers, user_context, item_context)

    def propagated(self) -> Tuple[Tensor, Tensor]:
        """The global model's final user and item vectors (the clients' own embeddings over
        the server's graph)."""
        with torch.no_grad():
            return self.gnn(self.user_table.detach(), self.model.item.detach(), self.graph)

    # ------------------------------------------------------------------ pre-training
    def pretrain(self, rounds: int, generator: torch.Generator,
                 progress: bool = True) -> Dict[str, object]:
        """Federated contrastive pre-training (PerFedRec++, Sec. 4.2).

        Each round draws two views of the collaborative graph -- client dropout and
        pseudo-items on the graph, Laplace noise on the uploaded user embeddings, SimGCL
        noise on every propagated layer -- and takes one Adam step on
        ``cl_weight * (InfoNCE(users) + InfoNCE(items))`` over the round's selected clients
        and as many random items. The user embeddings enter the views with the Laplace noise
        an upload adds (not clipped: clipping a whole embedding, rather than a change, would
        shrink it every round); each selected client receives the gradient of its embedding
        and applies it, and the other clients' embeddings are restored after the step. Adam's
        moments are per row, i.e. per client; a client not selected updates its moments with
        its gradient but keeps its embedding. With per-client streams each client draws its
        views' noise from its own stream of a seed the server draws each round.
        """
        user, item = self.user_table, self.model.item
        optimizer = torch.optim.Adam([user, item], lr=self.pretrain_lr)
        noise = SimGCLNoise(self.simgcl_eps, generator)
        streams = self.engine.streams
        everyone = torch.arange(self.model.num_clients)
        losses = []
        for _ in tqdm(range(rounds), desc='pre-training', unit='round', disable=not progress):
            clients, items = self.pretrain_batch(generator)
            if streams is None:
                def view_input(view: int) -> Tensor:
                    return user + self.training.upload(torch.zeros_like(user.detach()),
                                                       generator)
            else:
                offsets = view_offsets(self.training.upload, user.detach(), streams.generators(
                    draw_round_seed(generator), everyone))

                def view_input(view: int) -> Tensor:
                    return user + offsets[view]
            loss = self.contrastive_loss(view_input, clients, items, generator, noise)
            others = torch.ones(self.model.num_clients, dtype=torch.bool)
            others[clients] = False
            kept = user.detach()[others].clone()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                user[others] = kept
            self.engine.participation[clients] += 1
            losses.append(loss.item())
        randomness = (generator if streams is None
                      else streams.generators(draw_round_seed(generator), everyone))
        self.upload_users(everyone, randomness)
        self.engine.participation += 1
        return {'rounds': rounds, 'loss': losses}

    def pretrain_batch(self, generator: torch.Generator) -> Tuple[Tensor, Tensor]:
        """A pre-training round's clients (the selector's) and as many random items."""
        clients = self.engine.selector(generator)
        items = torch.randperm(self.model.num_items, generator=generator)[:clients.numel()]
        return clients, items

    def contrastive_loss(self, view_input: Callable[[int], Tensor], clients: Tensor,
                         items: Tensor, generator: torch.Generator,
                         noise: SimGCLNoise) -> Tensor:
        """``cl_weight * (InfoNCE(users) + InfoNCE(items))`` between two views: view ``v``
        propagates the user vectors ``view_input(v)`` and the item table over an augmented
        graph, with SimGCL ``noise`` on every layer."""
        views = []
        for view in range(2):
            graph = self.augmentation(self.graph, generator)
            views.append(self.gnn(view_input(view), self.model.item, graph, perturb=noise))
        return self.cl_weight * (
            info_nce(views[0][0][clients], views[1][0][clients], self.cl_temperature)
            + info_nce(views[0][1][items], views[1][1][items], self.cl_temperature))

    # ------------------------------------------------------------------ one round
    def run_round(self, generator: torch.Generator) -> RoundStats:
        self.refresh_context()
        stats = self.engine.run_round(generator)
        randomness = generator if self.engine.streams is None else self.engine.last_generators
        self.upload_users(self.engine.last_upload.clients, randomness)
        self.finish_round()
        return stats

    def finish_round(self) -> None:
        """The server's steps after a round's uploads: the cluster tables take the round's
        row updates, and every ``cluster_every`` rounds the clients are clustered again."""
        if self.cluster_tables is not None:
            self._update_cluster_tables()
        self.rounds_done += 1
        if self.num_clusters and self.rounds_done % self.cluster_every == 0:
            self.recluster()

    def recluster(self) -> None:
        """FAISS k-means on the clients' representations propagated over the server's graph
        (from the embeddings they uploaded); selection becomes cluster-aware. The first
        cluster tables are copies of the global table; later, a cluster's table starts as the
        mean of its members' previous cluster tables, so reclustering keeps what the clusters
        learned."""
        with torch.no_grad():
            users, _ = self.gnn(self.server_users, self.model.item.detach(), self.graph)
        assignment = kmeans(users, self.num_clusters, seed=self.seed + self.rounds_done)
        if self.cluster_tables is None:
            self.cluster_tables = self.model.item.detach().unsqueeze(0).repeat(
                self.num_clusters, 1, 1)
        else:  # a new cluster starts from the mean of its members' previous cluster tables
            overlap = torch.zeros(self.num_clusters, self.num_clusters, dtype=torch.float64)
            overlap.index_put_((assignment, self.assignment),
                               torch.ones(assignment.numel(), dtype=torch.float64),
                               accumulate=True)
            overlap /= overlap.sum(1, keepdim=True).clamp_min(1)
            tables = self.cluster_tables.reshape(self.num_clusters, -1)
            self.cluster_tables = (overlap.to(tables.dtype) @ tables).view_as(
                self.cluster_tables)
        self.assignment = assignment
        self.engine.selector = ClusterSelector(self.assignment, self.engine.selector.count)

    def _update_cluster_tables(self) -> None:
        """Each cluster's table becomes the mean of its clients' tables this round (the
        broadcast table plus their uploaded row changes); clusters without a client this
        round keep theirs."""
        upload, base = self.engine.last_upload, self.engine.broadcast
        num_items = self.model.num_items
        cluster = self.assignment[upload.clients]
        members = torch.bincount(cluster, minlength=self.num_clusters)
        key = cluster[upload.row_owner] * num_items + upload.row_item
        total = torch.zeros(self.num_clusters * num_items, base.size(1), dtype=base.dtype)
        total.index_add_(0, key, upload.update)
        active = members > 0
        mean = total.view(self.num_clusters, num_items, -1)[active]
        self.cluster_tables[active] = base + mean / members[active].view(-1, 1, 1)

    # ------------------------------------------------------------------ scoring
    def _level_rows(self, users: Tensor, items: Tensor):
        """The item rows ``[..., d]`` each level scores ``items`` with, for ``users``."""
        model = self.model
        rows = {'global': model.item.detach()[items]}
        if self.level_weights[1]:
            if self.cluster_tables is None:
                rows['cluster'] = rows['global']
            else:
                cluster = self.assignment[users].view(-1, *([1] * (items.dim() - 1)))
                rows['cluster'] = self.cluster_tables[cluster, items]
        if self.level_weights[2]:
            rows['local'] = self.engine.personal_rows(users, items)
        return rows

    def _combine(self, levels: Dict[str, Tensor]) -> Tensor:
        """The weighted sum of the levels' ``[U, k]`` logits. With more than one level, each
        level's logits are first standardized per user (zero mean, unit deviation over the
        scored items), so that equal weights give the levels equal say: the local level's
        fine-tuned rows otherwise give logits an order of magnitude larger than the global
        and cluster levels', and it would rank alone."""
        active = {level: value for level, value in levels.items()
                  if self.level_weights[LEVELS.index(level)]}
        if len(active) > 1:
            active = {level: (value - value.mean(1, keepdim=True))
                      / value.std(1, keepdim=True).clamp_min(1e-12)
                      for level, value in active.items()}
        return sum(self.level_weights[LEVELS.index(level)] * value
                   for level, value in active.items())

    @torch.no_grad()
    def scores(self, users: Tensor, items: Tensor) -> Tensor:
        """``[U, k]``: the weighted global, cluster and local models' logits (see
        :meth:`_combine`)."""
        params = {name: value.unsqueeze(1).expand(-1, items.size(1), *value.shape[1:])
                  for name, value in self.model.client_params(users).items()}
        return self._combine({
            level: self.model.head.logits(params, self.model.item_input(rows, items))
            for level, rows in self._level_rows(users, items).items()})

    @torch.no_grad()
    def scores_all(self, users: Tensor) -> Tensor:
        """``[U, I]`` scores of every item (see :meth:`scores`), as matrix products: one for
        the global table, one per cluster, and the local level as the broadcast table
        corrected at each user's fine-tuned rows."""
        model, head = self.model, self.model.head
        params = model.client_params(users)
        levels = {'global': head.logits_all(params, model.item_table_input(model.item.detach()))}
        if self.level_weights[1]:
            levels['cluster'] = levels['global'].clone()
            if self.cluster_tables is not None:
                cluster = self.assignment[users]
                for k in torch.unique(cluster).tolist():
                    members = torch.nonzero(cluster == k).view(-1)
                    table = model.item_table_input(self.cluster_tables[k])
                    levels['cluster'][members] = head.logits_all(
                        {name: value[members] for name, value in params.items()}, table)
        if self.level_weights[2]:
            levels['local'] = self.engine.personal_scores_all(users, params)
        return self._combine(levels)

    # ------------------------------------------------------------------ reporting and state
    def uniformity(self, max_points: int = 1000) -> Dict[str, float]:
        """Uniformity of the global model's final user and item vectors."""
        users, items = self.propagated()
        generator = torch.Generator().manual_seed(0)
        return {'user': uniformity(users, max_points=max_points, generator=generator),
                'item': uniformity(items, max_points=max_points, generator=generator)}

    def export(self) -> Dict[str, Tensor]:
        """Embeddings and cluster assignment for plotting."""
        users, items = self.propagated()
        out = {'user_embedding': self.user_table.detach(), 'item_embedding':
               self.model.item.detach(), 'user_final': users, 'item_final': items}
        if self.assignment is not None:
            out['cluster'] = self.assignment
        return out

    def state_dict(self) -> Dict[str, object]:
        return {'engine': self.engine.state_dict(), 'server_users': self.server_users,
                'assignment': self.assignment, 'cluster_tables': self.cluster_tables,
                'rounds_done': self.rounds_done, 'graph': self.graph.edge_index,
                'context': (self.model.user_context, self.model.item_context)}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        self.engine.load_state_dict(state['engine'])
        self.server_users = state['server_users']
        self.assignment = state['assignment']
        self.cluster_tables = state['cluster_tables']
        self.rounds_done = state['rounds_done']
        self.model.set_context(self.gnn.num_layers, *state['context'])
        self.graph = CollaborativeGraph(state['graph'], self.graph.num_users,
                                        self.graph.num_items)
        if self.assignment is not None:
            self.engine.selector = ClusterSelector(self.assignment, self.engine.selector.count)
