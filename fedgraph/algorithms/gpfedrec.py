"""GPFedRec: graph-guided personalization (Zhang et al., *Graph-guided Personalization for
Federated Recommendation*, KDD 2024; code ``Zhangcx19/GPFedRec``).

Each user is a client with a private NCF score function (a user vector and an MLP over
:math:`[u_c ; e_i]`, :class:`~fedgraph.nn.heads.PrivateNCFHead`) and a local copy of the item
table. A round's clients start from the global table, train with one joint SGD step per
mini-batch and a pull of their whole table towards their personalized aggregate, and upload
the table; the server relates the clients by their tables and aggregates along that graph
(:mod:`fedgraph.federated.graph_guided`). A client scores with the table it trained last.

Defaults are the code's (``train.py``): MLP lr 0.1, user-vector lr 7.9, item lr
:math:`0.1 \\cdot I \\cdot 80`, pull weight 1.0, neighbours above the mean closeness
(threshold 1.0). ``closeness='paper'`` relates clients by cosine similarity, as the paper
describes; ``'code'`` by cosine distance, as its code computes (``docs/successors.md``).
``sketch = m`` estimates the closeness from the tables' exact mean terms and a sketch of
their deviations (:func:`~fedgraph.federated.graph_guided.closeness_vectors`); 0 (exact) is
the default.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Dict

import torch

from fedgraph.algorithms.base import WHOLE_TABLE_UNUSED, Algorithm
from fedgraph.algorithms.fedncf import FedNCFSettings
from fedgraph.algorithms.registry import register
from fedgraph.federated.graph_guided import (CLOSENESS, GraphGuidedEngine, GraphGuidedReference,
                                             GraphGuidedState, GuidedNodeHooks)
from fedgraph.federated.local import LocalTraining
from fedgraph.nn.heads import PrivateNCFHead
from fedgraph.nn.recommender import FederatedRecommender
from fedgraph.privacy.upload import UploadTransform
from fedgraph.settings import setting


@dataclass
class GPFedRecSettings(FedNCFSettings):
    """The GPFedRec code's defaults (``train.py``); its MLP's widths as FedNCF's
    (``hidden``)."""
    lr: float = 0.1
    item_lr_eta: float = 80.0
    dual_personalization: bool = True
    user_lr: float = setting(7.9, "learning rate of the private user vector (the code's "
                                  "lr x eta - lr)")
    proximal: float = setting(1.0, "weight of the pull of a client's whole item table towards "
                                   "its personalized aggregate (mean squared difference)")
    closeness: str = setting('paper', "how the server relates two clients' tables: 'paper' "
                                      "(cosine similarity) or 'code' (cosine distance, as the "
                                      "GPFedRec code computes it)")
    neighbours: int = setting(0, 'neighbours of a client in the user-relation graph (0: every '
                                 'client above the mean closeness times --threshold)')
    threshold: float = setting(1.0, 'with neighbours 0: the share of the mean closeness a '
                                    'neighbour exceeds')
    sketch: int = setting(0, "coordinates of the sketch of the round's tables' deviations from "
                             "their mean that estimates the closeness (0: exact, every pair's "
                             "B x I x d products; m: about B x I x m + B^2 x m, drawn from the "
                             "run's seed)")

    def validate(self) -> None:
        super().validate()
        if self.closeness not in CLOSENESS:
            raise ValueError(f'closeness must be one of {CLOSENESS}, got {self.closeness!r}')
        if self.neighbours < 0 or not self.proximal > 0 or self.user_lr < 0:
            raise ValueError('neighbours must be >= 0, proximal > 0 and user_lr >= 0')
        if isinstance(self.sketch, bool) or not isinstance(self.sketch, int) or self.sketch < 0:
            raise ValueError(f'sketch must be a whole number >= 0 (0: exact closeness), got '
                             f'{self.sketch!r}')
        if self.optimizer != 'sgd' or self.loss != 'bce' or not self.dual_personalization:
            raise ValueError('GPFedRec trains with SGD on BCE and scores with each client\'s '
                             'own table (optimizer sgd, loss bce, dual_personalization on)')


@register
class GPFedRec(Algorithm):
    name = 'gpfedrec'
    summary = ('GPFedRec (KDD 2024): private NCF head, item tables aggregated along a '
               'user-relation graph')
    Settings = GPFedRecSettings
    #: The server reads each client's whole table: none of the upload defences, noise or
    #: secure aggregation apply.
    unused_settings = WHOLE_TABLE_UNUSED
    engine_class = GraphGuidedEngine
    reference_class = GraphGuidedReference

    def build_model(self, num_clients: int, num_items: int,
                    generator: torch.Generator) -> FederatedRecommender:
        """One draw of the head copied to every client (the user vector ``N(0, 1)``, the MLP
        as ``nn.Linear`` draws it), then the item table ``N(0, 1)`` (``nn.Embedding``'s
        default, as in the code)."""
        head = PrivateNCFHead(num_clients, self.config.dim, self.settings.hidden,
                              generator=generator)
        return FederatedRecommender(num_items, head, init_std=1.0, generator=generator)

    def local_training(self, num_items: int) -> LocalTraining:
        settings = self.settings
        return dataclasses.replace(self.client_training(num_items),
                                   param_lrs={'user': settings.user_lr},
                                   proximal=settings.proximal)

    def node_hooks(self) -> GuidedNodeHooks:
        return GuidedNodeHooks()

    def upload_transform(self) -> UploadTransform:
        """The tables go up as they are (no clipping or noise applies)."""
        return UploadTransform()

    def engine_arguments(self, model: FederatedRecommender, num_clients: int
                         ) -> Dict[str, object]:
        settings = self.settings
        return {'guided': GraphGuidedState(model.item.detach(), num_clients,
                                           settings.closeness, settings.neighbours,
                                           settings.threshold, settings.sketch,
                                           self.config.seed)}
