"""PFedRec: dual personalization (Zhang et al., *Dual Personalization on Federated
Recommendation*, IJCAI 2023).

Each user is a client with a lightweight on-device model: a private score function
:math:`s_{ci} = w_c^\\top e_i + b_c` (``Linear(d, 1)``, no user embedding) and a privately
fine-tuned view of the shared item table. A client takes two SGD steps per mini-batch --
the head first, then, after a fresh forward pass, its copy of the item rows -- uploads the
change of the rows it touched, and keeps its fine-tuned rows to score with.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from fedgraph.algorithms.base import Algorithm, ClientSettings
from fedgraph.algorithms.registry import register
from fedgraph.federated.local import LocalTraining
from fedgraph.nn.heads import LinearScoreHead
from fedgraph.nn.recommender import FederatedRecommender


@dataclass
class PFedRecSettings(ClientSettings):
    """The paper's defaults: head lr 0.1, item lr 0.1 x num_items x 80, dual
    personalization on."""
    lr: float = 0.1
    item_lr_eta: float = 80.0
    dual_personalization: bool = True


@register
class PFedRec(Algorithm):
    name = 'pfedrec'
    summary = 'PFedRec (IJCAI 2023): private linear score head, fine-tuned item rows'
    Settings = PFedRecSettings
    #: DP-FedAvg's clip bound: about a tenth of the median whole-update norm on MovieLens-100K
    #: (``docs/privacy.md``).
    shared_defaults = dict(dp_clip=10.0)

    def build_model(self, num_clients: int, num_items: int,
                    generator: torch.Generator) -> FederatedRecommender:
        """One ``nn.Linear`` initialization copied to every client's head, then the item
        table ``N(0, 1)`` (``nn.Embedding``'s default, as in the paper's code)."""
        head = LinearScoreHead(num_clients, self.config.dim, generator=generator)
        return FederatedRecommender(num_items, head, init_std=1.0, generator=generator)

    def local_training(self, num_items: int) -> LocalTraining:
        return self.client_training(num_items, alternating=True)
