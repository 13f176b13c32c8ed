"""CoFedRec: co-clustering (He, Liu, Keung and He, *Co-clustering for Federated Recommender
System*, WWW 2024; no code published).

PFedRec's clients (a private ``Linear(d, 1)`` head, alternating SGD steps, each client's own
item table) with two additions (:mod:`fedgraph.federated.coclustering`): each round the
server clusters the items of the mean uploaded table into :math:`K` categories by k-means
(the item membership :math:`M`), picks a core client and a category, and gives the clients
whose tables agree most with the core client's on that category's items (up to the elbow of
the sorted cosine scores) the mean of their tables -- the group model -- to start the next
round from, while the others keep their own; and every client adds
:math:`\\lambda \\mathcal{L}_{sup}`, a supervised contrastive term over its mini-batch's
items labelled by :math:`M`, to its BCE. A client scores with the table it trained last.

Defaults are the paper's for MovieLens-100K: lr 0.05, :math:`\\lambda = 0.005`,
:math:`\\tau = 0.1`, :math:`K = 30`; the item rows' rate is PFedRec's scaling,
``lr x num_items x 80``. What the paper leaves open and the choices made here:
``docs/successors.md``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

import torch

from fedgraph.algorithms.base import WHOLE_TABLE_UNUSED, Algorithm, ClientSettings
from fedgraph.algorithms.registry import register
from fedgraph.federated.coclustering import (CoClusterEngine, CoClusterNodeHooks,
                                             CoClusterReference, CoClusterState)
from fedgraph.federated.local import LocalTraining
from fedgraph.nn.heads import LinearScoreHead
from fedgraph.nn.recommender import FederatedRecommender
from fedgraph.privacy.upload import UploadTransform
from fedgraph.settings import setting


@dataclass
class CoFedRecSettings(ClientSettings):
    """The paper's MovieLens-100K settings (lr, lambda, tau, K) over PFedRec's recipe."""
    lr: float = 0.05
    item_lr_eta: float = 80.0
    dual_personalization: bool = True
    contrastive_weight: float = setting(0.005, 'lambda: weight of the supervised contrastive '
                                               'term over the item membership')
    temperature: float = setting(0.1, 'tau: temperature of the supervised contrastive term')
    categories: int = setting(30, 'K: item categories of the membership (k-means on the mean '
                                  'uploaded table)')
    kmeans_iterations: int = setting(20, "k-means's iterations a round (FAISS, one start)")

    def validate(self) -> None:
        super().validate()
        if self.contrastive_weight < 0 or not self.temperature > 0:
            raise ValueError('contrastive_weight must be >= 0 and temperature > 0')
        if self.categories < 1 or self.kmeans_iterations < 1:
            raise ValueError('categories and kmeans_iterations must be >= 1')
        if (self.optimizer != 'sgd' or self.loss != 'bce' or not self.dual_personalization
                or self.l2_reg):
            raise ValueError("CoFedRec trains PFedRec's way: optimizer sgd, loss bce, "
                             "dual_personalization on, no l2_reg")


@register
class CoFedRec(Algorithm):
    name = 'cofedrec'
    summary = ('CoFedRec (WWW 2024): PFedRec with group models of clients co-clustered by an '
               'item category, and a supervised contrastive term')
    Settings = CoFedRecSettings
    #: The server reads each client's whole table: none of the upload defences, noise or
    #: secure aggregation apply.
    unused_settings = WHOLE_TABLE_UNUSED
    engine_class = CoClusterEngine
    reference_class = CoClusterReference

    def build_model(self, num_clients: int, num_items: int,
                    generator: torch.Generator) -> FederatedRecommender:
        """PFedRec's: one ``nn.Linear`` initialization copied to every client's head, then
        the item table ``N(0, 1)``, every client's table until it trains."""
        head = LinearScoreHead(num_clients, self.config.dim, generator=generator)
        return FederatedRecommender(num_items, head, init_std=1.0, generator=generator)

    def local_training(self, num_items: int) -> LocalTraining:
        return self.client_training(num_items, alternating=True)

    def node_hooks(self) -> CoClusterNodeHooks:
        return CoClusterNodeHooks()

    def upload_transform(self) -> UploadTransform:
        """The tables go up as they are (no clipping or noise applies)."""
        return UploadTransform()

    def engine_arguments(self, model: FederatedRecommender, num_clients: int
                         ) -> Dict[str, object]:
        settings = self.settings
        if settings.categories > model.num_items:
            raise ValueError(f'categories ({settings.categories}) must not exceed the items '
                             f'({model.num_items})')
        return {'cocluster': CoClusterState(model.item.detach(), num_clients,
                                            settings.categories, settings.kmeans_iterations),
                'weight': settings.contrastive_weight, 'temperature': settings.temperature}
