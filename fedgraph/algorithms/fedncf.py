"""FedNCF: federated neural collaborative filtering, the FedNCF baseline of the PFedRec paper
(NCF: He et al., WWW 2017).

Each client keeps its user embedding :math:`u_c` private; the item table and the MLP that
scores :math:`[u_c ; e_i]` are shared (:class:`~fedgraph.nn.heads.NCFHead`). A client
trains its user embedding, its copy of the item rows it touches and its own copy of the MLP
with one joint SGD step per mini-batch, and uploads the rows' changes and the MLP's change;
the server averages the rows row by row and the MLP copies by FedAvg.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import torch

from fedgraph.algorithms.base import Algorithm, ClientSettings
from fedgraph.algorithms.registry import register
from fedgraph.settings import setting
from fedgraph.federated.local import LocalTraining
from fedgraph.nn.heads import NCFHead
from fedgraph.nn.recommender import FederatedRecommender


@dataclass
class FedNCFSettings(ClientSettings):
    """Learning rates picked by validation HR@10 on MovieLens-100K after 40 rounds (lr 2,
    item lr 2 x num_items x 10; the grid is in docs/results.md), and an MLP tower of ``hidden``
    widths (NCF's pyramid, halving from ``d``)."""
    lr: float = 2.0
    item_lr_eta: float = 10.0
    dual_personalization: bool = False
    hidden: Tuple[int, ...] = setting((32, 16, 8), 'widths of the MLP\'s hidden layers')

    def validate(self) -> None:
        super().validate()
        self.hidden = tuple(int(width) for width in self.hidden)
        if not self.hidden or min(self.hidden) < 1:
            raise ValueError(f'hidden layer widths must be >= 1, got {self.hidden}')


@register
class FedNCF(Algorithm):
    name = 'fedncf'
    summary = 'FedNCF: private user embedding, shared item table and shared MLP'
    Settings = FedNCFSettings
    #: DP-FedAvg's clip bound: about a tenth of the median whole-update norm on MovieLens-100K.
    shared_defaults = dict(dp_clip=10.0)

    def build_model(self, num_clients: int, num_items: int,
                    generator: torch.Generator) -> FederatedRecommender:
        """User embeddings ``N(0, 1/d)``, the MLP as ``nn.Linear`` draws it, then the item
        table ``N(0, 1/d)``."""
        dim = self.config.dim
        head = NCFHead(num_clients, dim, self.settings.hidden, std=dim ** -0.5,
                       generator=generator)
        return FederatedRecommender(num_items, head, init_std=dim ** -0.5, generator=generator)

    def local_training(self, num_items: int) -> LocalTraining:
        return self.client_training(num_items)
