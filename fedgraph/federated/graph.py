"""The federated engine of graph models: FedLightGCN and PerFedRec++ (Luo et al., ACM TIST
2024); :mod:`fedgraph.algorithms.fedlightgcn` and :mod:`fedgraph.algorithms.perfedrec`
configure it.

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

from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from fedgraph.clustering import ClusterSelector, carried_tables, cluster_means, kmeans
from fedgraph.data.partition import ClientPartition
from fedgraph.federated.engine import FederatedEngine
from fedgraph.federated.round_engine import RoundEngine
from fedgraph.federated.messages import ClientRound, RoundStats
from fedgraph.federated.pretraining import LocalClients, RemoteClients, pretrain
from fedgraph.federated.private_graph import SecurePropagation
from fedgraph.federated.streams import ClientStreams, draw_round_seed
from fedgraph.federated.trust import finite_rows
from fedgraph.metrics.representation import UNIFORMITY_SAMPLE, sample_index, uniformity
from fedgraph.nn.augment import Compose, PseudoItems
from fedgraph.nn.gnn import CollaborativeGraph, FederatedGNN
from fedgraph.nn.levels import combine_levels
from fedgraph.privacy.gaussian import shrink_rows
from fedgraph.privacy.upload import UploadTransform

LEVELS = ('global', 'cluster', 'local')


def user_upload(upload: UploadTransform, change: Tensor,
                randomness: Union[torch.Generator, Sequence[torch.Generator]]) -> Tensor:
    """What clients upload of the change ``[B, d]`` of their user embeddings: ``upload``
    with one shared generator, or row ``b`` with client ``b``'s own stream."""
    if isinstance(randomness, torch.Generator):
        return upload(change, randomness)
    return ClientStreams.transform(upload, change, torch.arange(change.size(0)), randomness)


def enrollment_graph(partition: ClientPartition, pseudo: PseudoItems,
                     randomness: Union[torch.Generator, Sequence[torch.Generator]]
                     ) -> CollaborativeGraph:
    """The server's collaborative graph from what the clients of ``partition`` upload when
    they enroll: their training items plus pseudo-items, drawn from one shared generator or
    from each client's own stream (client ``c`` draws from ``randomness[c]``)."""
    if isinstance(randomness, torch.Generator):
        return pseudo.graph_of(partition, randomness)
    edges = []
    for client, stream in enumerate(randomness):
        items = pseudo.client_items(partition.items_of(client), partition.num_items, stream)
        edges.append(torch.stack([torch.full_like(items, client), items]))
    return CollaborativeGraph(torch.cat(edges, dim=1), partition.num_clients,
                              partition.num_items)


class GraphFederatedEngine(RoundEngine):
    """A federated engine whose model propagates over the clients' collaborative graph.

    Args:
        engine: the engine that runs local training and aggregation.
        gnn: the federated GNN layer.
        graph: the server's collaborative graph (already blurred with pseudo-items).
        level_weights: weights of the global, cluster and local scores.
        num_clusters: k of the k-means (0: no clustering).
        cluster_every: rounds between two clusterings.
        augmentation: the graph augmentation of a contrastive view.
        simgcl_eps: SimGCL's noise magnitude in the views.
        cl_weight: the weight of the InfoNCE loss.
        cl_temperature: the InfoNCE temperature.
        pretrain_lr: Adam's learning rate in pre-training.
        pretrain_rounds: rounds of contrastive pre-training before round 0.
        seed: the seed of FAISS k-means.
        propagation: the context computed without the server holding the graph
            (:class:`~fedgraph.federated.private_graph.SecurePropagation`, under secure
            aggregation); ``graph`` is then the clients' own edges, which only the
            simulation's measurements read (uniformity, export).
        propagates: whether the engine propagates its own context (the server's, or the
            in-process run's); ``False``: a device's scorer, which scores with the context
            the server sent.
        user_release_every: under central DP-FedAvg, the rounds between two releases of
            the users' part of the items' context by every user (:meth:`release_users`);
            0: none, the server propagates the embeddings they uploaded when they enrolled.
        user_clip: the bound on a user's embedding's L2 norm in those releases.
    """

    def __init__(self, engine: FederatedEngine, gnn: FederatedGNN, graph: CollaborativeGraph,
                 level_weights: Sequence[float] = (1.0, 0.0, 0.0), num_clusters: int = 0,
                 cluster_every: int = 5, augmentation: Optional[Compose] = None,
                 simgcl_eps: float = 0.1, cl_weight: float = 1.0, cl_temperature: float = 0.2,
                 pretrain_lr: float = 0.05, pretrain_rounds: int = 0, seed: int = 0,
                 propagation: Optional[SecurePropagation] = None, propagates: bool = True,
                 user_release_every: int = 0, user_clip: float = 1.0):
        if level_weights[2] and not engine.training.personalize_items:
            raise ValueError('the local level needs dual personalization (private item rows)')
        if propagation is not None and (num_clusters or pretrain_rounds):
            raise ValueError('secure aggregation gives the server sums only: PerFedRec++\'s '
                             'clusters and contrastive pre-training need each user\'s '
                             'embedding and the graph; set num_clusters=0 and '
                             'pretrain_rounds=0')
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
        self.pretrain_rounds = pretrain_rounds
        self.seed = seed
        self.propagation = propagation
        self.rounds_done = 0
        self.server_users = torch.zeros_like(self.user_table.detach())
        self.user_release_every = user_release_every
        self.user_clip = user_clip
        #: What the users' latest release (:meth:`release_users`) adds to the first layer's
        #: item rows over the item half of :attr:`server_users` (``None``: none released).
        self.user_offset: Optional[Tensor] = None
        self.assignment: Optional[Tensor] = None
        self.cluster_tables: Optional[Tensor] = None
        #: What the model's context was propagated from for every node (the versions of
        #: the server's user vectors and item table); ``None``: rows of a round only.
        self._context_of: Optional[Tuple[int, ...]] = None
        self.propagates = propagates
        if propagates:
            if propagation is None:
                engine.before_training = self.plan_context
            row = self.model.dim * self.model.item.element_size()
            engine.side_bytes = (row if self.users_upload else 0.0,
                                 (self.model.num_items + 1) * row if gnn.num_layers else 0.0)

    @property
    def federated(self) -> FederatedEngine:
        return self.engine

    def enroll(self, randomness: Union[torch.Generator, Sequence[torch.Generator]]) -> None:
        """Every client uploads a first noised user embedding when it enrolls (the graph
        came with its items), drawn from one shared generator or from each client's stream
        (the streams its pseudo-items came from, see :meth:`randomness_for_all`)."""
        clients = torch.arange(self.model.num_clients)
        self.upload_users(clients, randomness)
        self.engine.count_participation(clients)

    @staticmethod
    def randomness_for_all(engine: FederatedEngine, generator: torch.Generator
                           ) -> Union[torch.Generator, Sequence[torch.Generator]]:
        """Where every client draws the randomness of a step they all take (enrollment,
        the upload after pre-training): ``generator``, or with per-client streams every
        client's stream of a seed drawn from it."""
        if engine.streams is None:
            return generator
        return engine.streams.generators(draw_round_seed(generator),
                                         torch.arange(engine.model.num_clients))

    @property
    def user_table(self) -> Tensor:
        """The clients' private user vectors (the head's ``user_vector``), stacked."""
        return getattr(self.model.head, self.model.head.user_vector)

    @property
    def selector(self):
        """Which clients take part in a round (the engine's; cluster-aware once clustered)."""
        return self.engine.selector

    @property
    def ledger(self):
        """The privacy releases (the engine's)."""
        return self.engine.ledger

    @property
    def users_upload(self) -> bool:
        """Whether the round's clients upload their user embeddings: not under DP-FedAvg
        nor secure aggregation, which cover the averaged shared parameters only (a user's
        own embedding would be a release of its own, in the clear)."""
        return self.engine.server.privacy is None and self.engine.secure is None

    @property
    def releases_users(self) -> bool:
        """Whether every :attr:`user_release_every` rounds the users release their part of
        the items' context (:meth:`release_users`): under central DP-FedAvg, in-process,
        when set."""
        privacy = self.engine.server.privacy
        return (self.user_release_every > 0 and privacy is not None and privacy.central
                and self.engine.secure is None)

    @property
    def participation(self) -> Tensor:
        """Each client's number of uploads so far."""
        return self.engine.participation

    # ------------------------------------------------------------------ server state
    def upload_users(self, clients: Tensor,
                     randomness: Union[torch.Generator, Sequence[torch.Generator]]) -> int:
        """``clients`` upload the change of their user embedding since their last upload,
        through the same clipping and noise as their item rows (noise from one shared
        generator, or from each client's own stream), and the server adds it to its view;
        returns how many uploads it dropped (:meth:`absorb_user_updates`). Taken
        :attr:`UploadTransform.BLOCK_ROWS <fedgraph.privacy.upload.UploadTransform.
        BLOCK_ROWS>` clients at a time, with the same draws (a generator gives the same
        numbers in blocks as at once): every client's change is never held at once."""
        dropped, block = 0, UploadTransform.BLOCK_ROWS
        shared = isinstance(randomness, torch.Generator)
        for start in range(0, clients.numel(), block):
            chosen = clients[start:start + block]
            change = self.user_table.detach()[chosen]
            change -= self.server_users[chosen]
            dropped += self.absorb_user_updates(chosen, user_upload(
                self.training.upload, change,
                randomness if shared else randomness[start:start + block]))
        return dropped

    def absorb_user_updates(self, clients: Tensor, change: Tensor) -> int:
        """The server's view of ``clients``' embeddings takes their uploaded changes, but for
        those that are not finite (dropped, as :mod:`fedgraph.federated.trust` drops rows);
        returns how many it dropped."""
        finite = finite_rows(change)
        if bool(finite.all()):  # each client's change added once: the clients are distinct
            self.server_users.index_add_(0, clients, change.to(self.server_users.dtype))
            return 0
        self.server_users[clients[finite]] += change[finite].to(self.server_users.dtype)
        return int((~finite).sum())

    def release_users(self, generator: torch.Generator) -> None:
        """Every user releases its part of the items' context, through the Gaussian
        mechanism of DP-FedAvg. Of the users the server needs only the first layer's item
        half :math:`X^{(1)}_I = \\hat A_{IU} X_U`: over item :math:`i`, the sum
        :math:`h_i = \\sum_{u \\ni i} x_u / \\sqrt{d_u}` scaled by :math:`1 / \\sqrt{d_i}`. A
        user's part of :math:`h` is :math:`x_u / \\sqrt{d_u}` on each of its :math:`d_u`
        items' rows, a vector of L2 norm :math:`\\lVert x_u \\rVert`; each user clips its
        embedding to norm :math:`S_u` (:attr:`user_clip`), and the server receives the sum
        of their parts plus :math:`Z \\sim \\mathcal N(0, \\sigma^2 S_u^2)` on every
        coordinate, :math:`\\sigma` the rounds' noise multiplier: one more unamplified
        Gaussian release of every user, counted in the ledger (and planned for by
        :meth:`FedLightGCN.planned_releases
        <fedgraph.algorithms.fedlightgcn.FedLightGCN.planned_releases>`). The server
        estimates each item's :math:`h_i` from its noised sum with the positive-part
        James--Stein shrinkage (:func:`~fedgraph.privacy.gaussian.shrink_rows`: an item
        whose sum the noise swamps gets none), post-processing that costs no privacy.
        Each release replaces the last: its noise does not add up over the releases.

        The server keeps its estimate as what it adds to the first layer's item rows over
        those of its own view of the users (:attr:`user_offset`): its view
        :attr:`server_users` stays the embeddings uploaded at enrollment, and no user's
        release is read but through its sum. Noise is drawn from ``generator``."""
        users = self.user_table.detach()
        norms = users.norm(dim=1, keepdim=True).clamp_min(1e-12)
        exact = self._first_item_half(users * (self.user_clip / norms).clamp(max=1.0))
        item = self.model.item.detach()
        degree = torch.bincount(self.graph.edge_index[1].long(), minlength=item.size(0))
        root = degree.to(item.device, item.dtype).sqrt().unsqueeze(1)
        std = self.engine.server.privacy.noise_multiplier * self.user_clip
        received = exact * root + std * torch.randn(
            item.shape, generator=generator, dtype=item.dtype).to(item.device)
        estimate = shrink_rows(received, std ** 2) / root.clamp_min(1.0)
        self.user_offset = (torch.where(root > 0, estimate, 0.0)
                            - self._first_item_half(self.server_users))
        self.ledger.record_release(torch.arange(self.model.num_clients))

    def _first_item_half(self, users: Tensor) -> Tensor:
        """:math:`\\hat A_{IU} X_U` of the user vectors ``users`` over the server's graph."""
        item = self.model.item.detach()
        adjacency = self.graph.normalized_adjacency(item.device, item.dtype)
        return (adjacency @ torch.cat([users, torch.zeros_like(item)]))[users.size(0):]

    @property
    def held_graph(self) -> Optional[CollaborativeGraph]:
        """The collaborative graph the server holds (``None`` under secure propagation)."""
        return self.graph if self.propagation is None else None

    def refresh_context(self) -> None:
        """Sets every node's context for a metric that needs every user (evaluation,
        export, clustering): the server's graph propagated from its current view, at most
        once while neither its users' vectors nor the item table change. Under secure
        aggregation the context is the one of the round's start (:meth:`secure_context`):
        computing it takes the clients' secure sums. A device's scorer keeps the context
        the server sent (:attr:`propagates`)."""
        if self.propagation is not None or not self.propagates:
            return
        offset = self.user_offset
        inputs = (id(self.server_users), self.server_users._version, id(self.model.item),
                  self.model.item._version, id(offset),
                  None if offset is None else offset._version)
        if inputs != self._context_of:
            user_context, item_context = self.gnn.context(
                self.server_users, self.model.item.detach(), self.graph, self.user_offset)
            self.model.set_context(self.gnn.num_layers, user_context, item_context)
            self._context_of = inputs

    def secure_context(self) -> None:
        """Under secure aggregation, every node's context from the clients' halves and the
        server's secure sums (:attr:`propagation`)."""
        user_context, item_context = (None, None) if not self.gnn.num_layers else \
            self.propagation.context(self.server_users, self.model.item.detach())
        self.model.set_context(self.gnn.num_layers, user_context, item_context)

    def context_for(self, users: Tensor, items: Optional[Tensor] = None) -> None:
        """Sets the context of ``users`` and of ``items`` (default: every item), propagated
        over their K-hop neighbourhoods only (:meth:`FederatedGNN.context_rows
        <fedgraph.nn.gnn.FederatedGNN.context_rows>`): what a round's clients train with.
        The other rows keep what they held; under secure aggregation, every row's
        (:meth:`secure_context`)."""
        if self.propagation is not None:
            self.secure_context()
            return
        model = self.model
        if not self.gnn.num_layers or self.graph is None:
            model.set_context(self.gnn.num_layers, None, None)
            return
        if items is None:
            items = torch.arange(model.num_items, device=users.device)
        item_table = model.item.detach()
        user_rows, item_rows = self.gnn.context_rows(self.server_users, item_table,
                                                     self.graph, users, items, self.user_offset)
        if model.user_context is None:
            model.set_context(self.gnn.num_layers, torch.zeros_like(self.server_users),
                              torch.zeros_like(item_table))
        model.user_context[users] = user_rows
        model.item_context[items] = item_rows
        self._context_of = None

    def plan_context(self, plan) -> None:
        """The context of a round's plan (:attr:`~fedgraph.federated.round_engine.RoundEngine.
        before_training`): its clients' and the items they train on."""
        self.context_for(plan.clients, torch.unique(plan.row_item))

    def propagated(self) -> Tuple[Tensor, Tensor]:
        """The global model's final user and item vectors (the clients' own embeddings over
        the server's graph)."""
        with torch.no_grad():
            return self.gnn(self.user_table.detach(), self.model.item.detach(), self.graph)

    # ------------------------------------------------------------------ pre-training
    def pretrain(self, generator: torch.Generator, progress: bool = True,
                 transport=None) -> Dict[str, object]:
        """Federated contrastive pre-training (:mod:`fedgraph.federated.pretraining`) with
        the clients in this process, or on the devices behind ``transport`` (a
        deployment's); runs :attr:`pretrain_rounds` rounds (none: only the record, in
        this process with the uniformity of the initial embeddings)."""
        clients = LocalClients(self) if transport is None else RemoteClients(self, transport)
        return pretrain(self, clients, generator, progress)

    # ------------------------------------------------------------------ one round
    def run_round(self, generator: torch.Generator) -> RoundStats:
        """A round: the context, the engine's round, then the round's clients upload their
        user embeddings -- but under DP-FedAvg or secure aggregation (:attr:`users_upload`),
        whose guarantee covers the averaged shared parameters only: a user's own embedding
        would be a release of its own each round. Under central DP-FedAvg every user may
        release its part of the items' context every :attr:`user_release_every` rounds
        instead (:meth:`release_users`); otherwise the server's view keeps what the users
        uploaded when they enrolled."""
        if self.propagation is not None:
            self.secure_context()
        stats, result = self.engine.train_round(generator)
        if self.users_upload:
            randomness = generator if result.generators is None else result.generators
            dropped = self.upload_users(result.upload.clients, randomness)
            if dropped:
                stats.dropped['non_finite'] = stats.dropped.get('non_finite', 0) + dropped
        self.finish_round(result, generator)
        if self.releases_users and (self.rounds_done % self.user_release_every == 0):
            self.release_users(generator)
        return stats

    # The server's halves of a round over messages (see fedgraph.server.deployment.Deployment).
    def before_round(self, users: Tensor) -> None:
        """The context of the round's ``users`` and of every item (a device draws its
        negatives)."""
        self.context_for(users)

    def round_payload(self, users: Tensor) -> Dict[str, Tensor]:
        """What a device needs besides the tables to train ``users``: their context and
        the items'."""
        return {'context/user': self.model.user_context[users],
                'context/item': self.model.item_context}

    def after_aggregate(self, result: ClientRound, replies: Dict[str, Tensor]) -> None:
        """The users' uploaded embedding changes (``user-update``, in the order of
        ``result.upload.clients``; none when :attr:`users_upload` is off), then
        :meth:`finish_round`."""
        if self.users_upload:
            self.absorb_user_updates(result.upload.clients, replies['user-update'])
        self.finish_round(result)

    def evaluation_payload(self, users: Tensor) -> Dict[str, Tensor]:
        """What a device needs to score ``users`` as :meth:`scores` does: the global table
        (and the broadcast one under fine-tuned rows), their context, and with a cluster
        level the clusters and their tables."""
        self.refresh_context()
        out = {**self.engine.evaluation_payload(users), 'items': self.model.item.detach(),
               **self.round_payload(users)}
        if self.cluster_tables is not None and self.level_weights[1]:
            out.update({'clusters/assignment': self.assignment[users],
                        'clusters/tables': self.cluster_tables})
        return out

    def finish_round(self, result: ClientRound,
                     generator: Optional[torch.Generator] = None) -> None:
        """The server's steps after a round's uploads ``result`` and the users' uploads
        (counted in the privacy ledger, when they upload): the cluster tables take the
        round's row updates (under DP-FedAvg with noise drawn from ``generator``), and every
        ``cluster_every`` rounds the clients are clustered again."""
        if self.users_upload:
            self.ledger.record_vectors(result.upload.clients)
        if self.cluster_tables is not None:
            self._update_cluster_tables(result, generator)
        self.rounds_done += 1
        if self.num_clusters and self.rounds_done % self.cluster_every == 0:
            self.recluster()

    def recluster(self) -> None:
        """FAISS k-means on the clients' representations propagated over the server's graph
        (from the embeddings they uploaded); selection becomes cluster-aware. The first
        cluster tables are copies of the global table; later, a cluster's table starts as the
        mean of its members' previous cluster tables, so reclustering keeps what the clusters
        learned."""
        self.refresh_context()
        context = self.model.user_context
        users = (self.server_users if context is None
                 else context + self.server_users / (self.gnn.num_layers + 1))
        assignment = kmeans(users, self.num_clusters, seed=self.seed + self.rounds_done)
        if self.cluster_tables is None:
            self.cluster_tables = self.model.item.detach().unsqueeze(0).repeat(
                self.num_clusters, 1, 1)
        else:
            self.cluster_tables = carried_tables(self.cluster_tables, self.assignment,
                                                 assignment)
        self.assignment = assignment
        self.engine.selector = ClusterSelector(self.assignment, self.engine.selector.count)

    def _update_cluster_tables(self, result: ClientRound,
                               generator: Optional[torch.Generator] = None) -> None:
        """Each cluster's table becomes the mean of its clients' tables this round (the
        broadcast table plus their uploaded row changes); clusters without a client this
        round keep theirs. Under DP-FedAvg the members' updates are clipped as for the
        global table and each cluster's sum carries its own Gaussian noise: a central
        release of its own when the cluster level scores (counted in the ledger), the sum of
        the members' own noise under local DP."""
        upload, base = result.upload, self.engine.broadcast
        privacy = self.engine.server.privacy
        update = upload.update
        if privacy is not None:
            update, _ = privacy.clip_clients(upload.row_owner, update, upload.dense,
                                             upload.clients.numel())
            if privacy.central and self.level_weights[1]:
                self.ledger.record_release(upload.clients)
        tables, active = cluster_means(base, upload, update, self.assignment[upload.clients],
                                       self.num_clusters, privacy, generator)
        self.cluster_tables[active] = tables

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
        """The levels' ``[U, k]`` logits combined with their weights
        (:func:`combine_levels`)."""
        active = [(value, self.level_weights[LEVELS.index(level)])
                  for level, value in levels.items() if self.level_weights[LEVELS.index(level)]]
        return combine_levels([value for value, _ in active], [weight for _, weight in active])

    def item_views(self, user: int) -> Tuple[Dict[str, Tensor], List[Tensor], List[float]]:
        """``user``'s model on its own (see :meth:`FederatedEngine.item_views`): its
        parameters with context, and the item-input table of each active level (global,
        its cluster's, its fine-tuned rows over the broadcast table) with the level's
        weight."""
        self.refresh_context()
        model = self.model
        params, (own,), _ = self.engine.item_views(user)
        tables = {'global': model.item_table_input(model.item.detach())}
        if self.level_weights[1]:
            tables['cluster'] = (tables['global'] if self.cluster_tables is None else
                                 model.item_table_input(self.cluster_tables[self.assignment[user]]))
        if self.level_weights[2]:
            tables['local'] = own
        active = [(table, self.level_weights[LEVELS.index(level)])
                  for level, table in tables.items() if self.level_weights[LEVELS.index(level)]]
        return params, [table for table, _ in active], [weight for _, weight in active]

    @torch.no_grad()
    def scores(self, users: Tensor, items: Tensor) -> Tensor:
        """``[U, k]``: the weighted global, cluster and local models' logits (see
        :meth:`_combine`)."""
        self.refresh_context()
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
        self.refresh_context()
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
    def round_report(self) -> Dict[str, object]:
        return {'uniformity': self.uniformity()}

    def uniformity(self, max_points: int = UNIFORMITY_SAMPLE) -> Dict[str, float]:
        """Uniformity of the global model's final user and item vectors
        (:meth:`propagated`), on the rows :func:`~fedgraph.metrics.representation.
        sample_index` draws from one generator seeded with 0 (the users' first), which alone
        are propagated (:meth:`final_rows`)."""
        generator = torch.Generator().manual_seed(0)
        users, items = self.final_rows(
            sample_index(self.model.num_clients, max_points, generator),
            sample_index(self.model.num_items, max_points, generator))
        return {'user': uniformity(users, max_points=None),
                'item': uniformity(items, max_points=None)}

    def final_rows(self, users: Optional[Tensor] = None,
                   items: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """:meth:`propagated` at the rows ``users`` and ``items`` (``None``: all),
        :math:`X^{(0)} / (K + 1)` plus their context over their K-hop neighbourhoods only
        (:meth:`FederatedGNN.context_rows <fedgraph.nn.gnn.FederatedGNN.context_rows>`)."""
        user, item = self.user_table.detach(), self.model.item.detach()
        users = torch.arange(user.size(0), device=user.device) if users is None else users
        items = torch.arange(item.size(0), device=item.device) if items is None else items
        if not self.gnn.num_layers or self.graph is None:
            return user[users], item[items]
        user_context, item_context = self.gnn.context_rows(user, item, self.graph, users,
                                                           items)
        scale = 1.0 / (self.gnn.num_layers + 1)
        return user[users] * scale + user_context, item[items] * scale + item_context

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
                'user_offset': self.user_offset,
                'assignment': self.assignment, 'cluster_tables': self.cluster_tables,
                'rounds_done': self.rounds_done, 'graph': self.graph.edge_index,
                'context': (self.model.user_context, self.model.item_context)}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        self.engine.load_state_dict(state['engine'])
        self.server_users = state['server_users']
        self.user_offset = state.get('user_offset')
        self.assignment = state['assignment']
        self.cluster_tables = state['cluster_tables']
        self.rounds_done = state['rounds_done']
        self.model.set_context(self.gnn.num_layers, *state['context'])
        self._context_of = None
        self.graph = CollaborativeGraph(state['graph'], self.graph.num_users,
                                        self.graph.num_items)
        if self.assignment is not None:
            self.engine.selector = ClusterSelector(self.assignment, self.engine.selector.count)
