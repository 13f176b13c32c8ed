"""FedLightGCN: FedMF's model with LightGCN propagation over the clients' collaborative graph
(the federated GNN baseline of the PerFedRec++ paper, Luo et al., ACM TIST 2024).

When clients enroll they upload their item sets blurred with pseudo-items and a first
clipped, noised user embedding; from these the server builds its collaborative graph. Each
round it propagates the graph with :class:`~fedgraph.nn.gnn.FederatedGNN` and hands every
selected client its context; the clients train their ego embeddings (learning rates scaled
by :math:`(K+1)^2` under SGD, see :meth:`FedLightGCN.local_training`) and upload their item
rows and the change of their user embedding, through clipping and Laplace noise.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch

from fedgraph.algorithms.fedmf import FedMF, FedMFSettings
from fedgraph.algorithms.registry import register
from fedgraph.privacy import accountant
from fedgraph.settings import setting
from fedgraph.data.partition import ClientPartition
from fedgraph.federated.engine import FederatedEngine
from fedgraph.federated.local import LocalTraining
from fedgraph.federated.messages import Payload
from fedgraph.federated.graph import GraphFederatedEngine, enrollment_graph
from fedgraph.federated.private_graph import SecurePropagation
from fedgraph.federated.graph_hooks import GraphNodeHooks
from fedgraph.federated.streams import draw_round_seed
from fedgraph.nn.augment import PseudoItems
from fedgraph.nn.gnn import CollaborativeGraph, FederatedGNN


@dataclass
class FedLightGCNSettings(FedMFSettings):
    """FedMF's settings and the graph's, with the PerFedRec++ code's local recipe: BPR and
    one Adam step of lr 0.25 (its 0.001 x 256) on the embeddings a client holds. Chosen on
    validation Recall@20 on a sparse set and on MovieLens-100K (``docs/perfedrec.md``):
    FedMF's SGD on BCE, whose row changes the clipping cuts, barely learns on sparse data."""
    lr: float = 0.25
    item_lr_eta: float = 1.0
    loss: str = 'bpr'
    optimizer: str = 'adam'
    num_layers: int = setting(2, 'federated GNN layers K')
    pseudo_ratio: float = setting(0.1, 'pseudo-items a client adds, as a fraction of its items')
    level_weights: Tuple[float, float, float] = setting(
        (1.0, 0.0, 0.0), 'weights of the global, cluster and local scores')
    user_release_every: int = setting(
        0, 'under central DP, rounds between two releases of the users\' part of the items\' '
        'context by every user (0: none)')
    dp_user_clip: float = setting(1.0, 'bound on a user embedding\'s L2 norm in those releases')

    def validate(self) -> None:
        super().validate()
        self.level_weights = tuple(float(w) for w in self.level_weights)
        if (len(self.level_weights) != 3 or min(self.level_weights) < 0
                or not sum(self.level_weights) > 0):
            raise ValueError(f'level_weights are three weights >= 0 (global, cluster, local), '
                             f'one at least > 0; got {self.level_weights}')
        if self.level_weights[2] and not self.dual_personalization:
            raise ValueError('the local level (level_weights[2]) needs dual personalization '
                             '(dual_personalization=True)')
        if self.num_layers < 0 or not 0 <= self.pseudo_ratio < 1:
            raise ValueError('num_layers must be >= 0 and pseudo_ratio in [0, 1)')
        if self.user_release_every < 0 or not self.dp_user_clip > 0:
            raise ValueError(f'user_release_every must be >= 0 and dp_user_clip > 0, got '
                             f'{self.user_release_every} and {self.dp_user_clip}')


@register
class FedLightGCN(FedMF):
    name = 'fedlightgcn'
    summary = 'FedLightGCN: FedMF over the clients\' collaborative graph (LDP uploads)'
    Settings = FedLightGCNSettings
    shared_defaults = dict(clients_per_round=256, clip=0.5, clip_mode='coordinate',
                           ldp_scale=0.1, dp_clip=5.0)
    #: A graph model's round goes on after the aggregate (the round's users upload their
    #: embeddings): it takes its clients together.
    unused_settings = ('round_block',)

    @property
    def user_releases(self) -> int:
        """The users' releases of their part of the items' context in a run
        (:meth:`GraphFederatedEngine.release_users
        <fedgraph.federated.graph.GraphFederatedEngine.release_users>`): one every
        ``user_release_every`` rounds under central DP-FedAvg, in-process, with layers to
        propagate them; none otherwise."""
        config, every = self.config, self.settings.user_release_every
        if (not every or not config.private or config.dp_noise_at != 'server'
                or config.secure_aggregation or not self.settings.num_layers):
            return 0
        return config.rounds // every

    def planned_releases(self, noise_multiplier: float, num_clients: int, sample_size: int):
        """The rounds' releases and the users' (:attr:`user_releases`), each an unamplified
        Gaussian release of every user."""
        return [*super().planned_releases(noise_multiplier, num_clients, sample_size),
                (accountant.gaussian_event(noise_multiplier), self.user_releases)]

    def local_training(self, num_items: int) -> LocalTraining:
        """With K GNN layers the ego embeddings enter each side of the score divided by
        K + 1, so their gradients shrink by (K + 1)^2; with SGD, scaling the learning rates
        back keeps one setting of lr meaningful for every K (K = 0: unchanged). Adam's steps
        do not scale with the gradient and need no such scaling."""
        settings = self.settings
        scale = (settings.num_layers + 1) ** 2 if settings.scales_with_gradient else 1
        return self.client_training(num_items, lr_scale=scale)

    def extend(self, engine: FederatedEngine, partition: ClientPartition,
               generator: torch.Generator) -> GraphFederatedEngine:
        """Enrollment: every client uploads its items with pseudo-items and a first noised
        user embedding (from one generator, or from each client's stream); the server's
        graph engine over them."""
        randomness = GraphFederatedEngine.randomness_for_all(engine, generator)
        graph = enrollment_graph(partition, PseudoItems(self.settings.pseudo_ratio), randomness)
        out = self.graph_engine(engine, graph, self.secure_propagation(engine, graph))
        out.enroll(randomness)
        return out

    def secure_propagation(self, engine: FederatedEngine,
                           graph: CollaborativeGraph) -> Optional[SecurePropagation]:
        """Under secure aggregation the clients keep their edges ``graph`` and the server
        receives only sums (:class:`SecurePropagation`); ``None`` otherwise."""
        if engine.secure is None:
            return None
        return SecurePropagation(graph, self.settings.num_layers, engine.secure.protocol,
                                 self.config.seed)

    def extend_remote(self, engine: FederatedEngine, generator: torch.Generator,
                      enroll: Callable[[int], List[Payload]]) -> GraphFederatedEngine:
        """The server half of enrollment over messages: the devices' items with pseudo-items
        and first noised user embeddings, from their streams of a seed drawn from
        ``generator``, become the server's graph and its view of the users."""
        if engine.secure is not None:
            raise ValueError('the graph models run secure aggregation in-process only: a '
                             'deployment\'s enrollment would upload the item sets')
        uploads = enroll(draw_round_seed(generator))
        edges = torch.stack([torch.cat([upload['edge-user'] for upload in uploads]),
                             torch.cat([upload['edge-item'] for upload in uploads])])
        # Edges by user, as in-process: propagation sums in edge order.
        edges = edges[:, torch.sort(edges[0], stable=True).indices]
        model = engine.model
        out = self.graph_engine(engine, CollaborativeGraph(edges, model.num_clients,
                                                           model.num_items))
        for upload in uploads:
            out.absorb_user_updates(upload['users'], upload['user-update'])
        return out

    def node_hooks(self) -> GraphNodeHooks:
        settings = self.settings
        return GraphNodeHooks(settings.num_layers, settings.pseudo_ratio,
                                settings.level_weights)

    def graph_engine(self, engine: FederatedEngine, graph: CollaborativeGraph,
                     propagation: Optional[SecurePropagation] = None) -> GraphFederatedEngine:
        """The server's graph engine over ``graph`` (``propagation``: without holding
        it)."""
        settings = self.settings
        return GraphFederatedEngine(engine, FederatedGNN(settings.num_layers), graph,
                                    settings.level_weights, seed=self.config.seed,
                                    propagation=propagation, **self.user_release())

    def user_release(self) -> Dict[str, object]:
        """The graph engine's settings of the users' releases under DP
        (:attr:`user_releases`). Under user-level DP, releases set where they cannot run
        are an error (without DP they do nothing: a frontier's no-DP reference keeps the
        DP runs' settings)."""
        settings = self.settings
        if settings.user_release_every and self.config.private and not self.user_releases:
            raise ValueError('user_release_every releases the users\' part of the items\' '
                             'context under central DP (dp_noise_at=\'server\'), without '
                             'secure aggregation, with num_layers > 0')
        return dict(user_release_every=settings.user_release_every if self.user_releases
                    else 0, user_clip=settings.dp_user_clip)
