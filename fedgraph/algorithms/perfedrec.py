"""PerFedRec++ (Luo et al., *Enhancing Personalized Federated Recommendation with
Self-Supervised Pre-Training*, ACM TIST 2024): FedLightGCN plus

* **federated contrastive pre-training** -- two views of the collaborative graph drawn from
  the privacy mechanisms (client dropout, pseudo-items, LDP noise, SimGCL noise), InfoNCE
  between the two views of each user and item;
* **clustering** -- FAISS k-means on the clients' propagated representations every
  ``cluster_every`` rounds, cluster-aware client selection, and a cluster-level item table
  per cluster, the FedAvg of that cluster's clients;
* **three-level personalization** -- a user's score is a weighted sum of the global model's,
  its cluster model's and its own fine-tuned model's scores.

The machinery is :class:`~fedgraph.federated.graph.GraphFederatedEngine`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

from fedgraph.algorithms.fedlightgcn import FedLightGCN, FedLightGCNSettings
from fedgraph.algorithms.registry import register
from fedgraph.settings import setting
from fedgraph.federated.engine import FederatedEngine
from fedgraph.federated.graph import GraphFederatedEngine
from fedgraph.federated.graph_hooks import GraphNodeHooks
from fedgraph.federated.private_graph import SecurePropagation
from fedgraph.nn.augment import ClientDropout, Compose, PseudoItems
from fedgraph.nn.gnn import CollaborativeGraph, FederatedGNN


@dataclass
class PerFedRecSettings(FedLightGCNSettings):
    """FedLightGCN's settings, pre-training's and clustering's, with the paper's defaults:
    50 pre-training rounds, k = 5 clusters, equal level weights."""
    dual_personalization: bool = True
    level_weights: Tuple[float, float, float] = (1.0, 1.0, 1.0)
    pretrain_rounds: int = setting(50, 'contrastive pre-training rounds')
    pretrain_lr: float = setting(0.05, 'Adam learning rate of contrastive pre-training')
    cl_weight: float = setting(1.0, 'weight lambda of the InfoNCE loss')
    cl_temperature: float = setting(0.2, 'InfoNCE temperature')
    simgcl_eps: float = setting(0.1, 'SimGCL noise magnitude in contrastive views')
    client_dropout: float = setting(0.1, 'fraction of clients absent from a contrastive view')
    num_clusters: int = setting(5, 'k of FAISS k-means over clients (0: none)')
    cluster_every: int = setting(5, 'rounds between two clusterings')

    def validate(self) -> None:
        super().validate()
        if self.pretrain_rounds < 0 or self.num_clusters < 0 or self.cluster_every < 1:
            raise ValueError('pretrain_rounds and num_clusters must be >= 0, cluster_every >= 1')
        if self.cl_temperature <= 0 or not 0 <= self.client_dropout < 1:
            raise ValueError('cl_temperature must be > 0 and client_dropout in [0, 1)')


@register
class PerFedRec(FedLightGCN):
    name = 'perfedrec++'
    summary = 'PerFedRec++ (TIST 2024): FedLightGCN + contrastive pre-training, clusters, levels'
    Settings = PerFedRecSettings

    def releases_per_round(self) -> Tuple[bool, int]:
        """FedLightGCN's; with clusters, selection is cluster-aware (not uniform: the
        aggregate is not amplified by sampling) and under central noise a scoring cluster
        level releases each cluster's noised sum too."""
        sampled, others = super().releases_per_round()
        settings = self.settings
        if not settings.num_clusters:
            return sampled, others
        cluster_release = int(self.config.dp_noise_at == 'server'
                              and settings.level_weights[1] > 0)
        return False, others + int(sampled) + cluster_release

    def node_hooks(self) -> GraphNodeHooks:
        settings = self.settings
        return GraphNodeHooks(settings.num_layers, settings.pseudo_ratio,
                                settings.level_weights, settings.num_clusters,
                                settings.pretrain_lr)

    def graph_engine(self, engine: FederatedEngine, graph: CollaborativeGraph,
                     propagation: Optional[SecurePropagation] = None) -> GraphFederatedEngine:
        settings = self.settings
        augmentation = Compose([ClientDropout(settings.client_dropout),
                                PseudoItems(settings.pseudo_ratio)])
        return GraphFederatedEngine(
            engine, FederatedGNN(settings.num_layers), graph, settings.level_weights,
            settings.num_clusters, settings.cluster_every, augmentation, settings.simgcl_eps,
            settings.cl_weight, settings.cl_temperature, settings.pretrain_lr,
            settings.pretrain_rounds, self.config.seed, propagation, **self.user_release())
