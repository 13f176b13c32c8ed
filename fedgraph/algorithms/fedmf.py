"""FedMF: federated matrix factorization (Chai et al., *Secure Federated Matrix
Factorization*, 2020), the baseline of the PFedRec paper.

Each client keeps its user embedding :math:`u_c` private and scores
:math:`s_{ci} = u_c^\\top e_i`; one joint SGD step per mini-batch trains :math:`u_c` and its
copy of the item rows, whose changes it uploads. Evaluation uses the global item table
(unless ``dual_personalization`` is switched on).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from fedgraph.algorithms.base import Algorithm, ClientSettings
from fedgraph.algorithms.registry import register
from fedgraph.federated.local import LocalTraining
from fedgraph.nn.heads import DotProductHead
from fedgraph.nn.recommender import FederatedRecommender


@dataclass
class FedMFSettings(ClientSettings):
    """Learning rates picked by validation HR@10 on MovieLens-100K (docs/results.md)."""
    lr: float = 1.0
    item_lr_eta: float = 1.0
    dual_personalization: bool = False


@register
class FedMF(Algorithm):
    name = 'fedmf'
    summary = 'FedMF: private user embedding, dot-product score, shared item table'
    Settings = FedMFSettings
    #: DP-FedAvg's clip bound: about a tenth of the median whole-update norm on MovieLens-100K.
    shared_defaults = dict(dp_clip=10.0)

    def build_model(self, num_clients: int, num_items: int,
                    generator: torch.Generator) -> FederatedRecommender:
        """User embeddings, then the item table, both ``N(0, 1/d)``."""
        dim = self.config.dim
        head = DotProductHead(num_clients, dim, std=dim ** -0.5, generator=generator)
        return FederatedRecommender(num_items, head, init_std=dim ** -0.5, generator=generator)

    def local_training(self, num_items: int) -> LocalTraining:
        return self.client_training(num_items)
