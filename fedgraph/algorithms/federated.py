"""PFedRec, FedMF, FedLightGCN and PerFedRec++: configurations of one federated model and
engine."""
from __future__ import annotations

from typing import Optional

import torch

from fedgraph.algorithms.perfedrec import GraphFederatedEngine
from fedgraph.config import TrainConfig
from fedgraph.data.partition import ClientPartition
from fedgraph.federated.engine import FederatedEngine, LocalTraining
from fedgraph.federated.reference import ReferenceEngine
from fedgraph.federated.selection import ClientSelector
from fedgraph.federated.upload import UploadTransform
from fedgraph.nn.heads import DotProductHead, LinearScoreHead
from fedgraph.nn.recommender import FederatedRecommender


def build_federated(config: TrainConfig, partition: ClientPartition,
                    generator: torch.Generator, known: Optional[ClientPartition] = None):
    """The engine of a federated algorithm.

    * ``pfedrec`` (Zhang et al., IJCAI 2023) -- dual personalization: a private
      ``Linear(d, 1)`` score head, two SGD steps per mini-batch (head, then item rows), and
      every user evaluated with its own fine-tuned item rows.
    * ``fedmf`` -- federated matrix factorization: a private user embedding, one joint SGD
      step, evaluation with the global item table.
    * ``fedlightgcn`` and ``perfedrec++`` -- FedMF's model with the federated GNN layer over
      the clients' collaborative graph (:mod:`fedgraph.algorithms.perfedrec`).

    ``config.dual_personalization`` switches PFedRec's private item fine-tuning on or off for
    any of them.
    """
    num_clients, num_items = partition.num_clients, partition.num_items
    if config.algorithm == 'pfedrec':
        head = LinearScoreHead(num_clients, config.dim, generator=generator)
        init_std = 1.0
    elif config.algorithm in ('fedmf', 'fedlightgcn', 'perfedrec++'):
        head = DotProductHead(num_clients, config.dim, std=config.dim ** -0.5,
                              generator=generator)
        init_std = config.dim ** -0.5
    else:
        raise ValueError(f'not a federated algorithm: {config.algorithm!r}')
    model = FederatedRecommender(num_items, head, init_std=init_std, generator=generator)
    model.to(config.device)
    # With K GNN layers the ego embeddings enter each side of the score divided by K + 1,
    # so their gradients shrink by (K + 1)^2; scaling the learning rates back keeps one
    # setting of lr meaningful for every K (K = 0: unchanged).
    graph = config.algorithm in ('fedlightgcn', 'perfedrec++')
    scale = (config.num_layers + 1) ** 2 if graph else 1
    local = LocalTraining(
        lr=config.lr * scale, item_lr=config.item_lr(num_items) * scale,
        batch_size=config.batch_size,
        local_epochs=config.local_epochs, num_negatives=config.num_negatives,
        weighted_aggregation=config.aggregation == 'weighted',
        upload=UploadTransform(config.clip or None, config.ldp_scale),
        alternating=config.algorithm == 'pfedrec',
        personalize_items=config.dual_personalization)
    count = (None if config.clients_per_round is None
             else min(config.clients_per_round, num_clients))
    selector = ClientSelector(num_clients, config.client_ratio, count)
    engine_cls = FederatedEngine if config.engine == 'vectorized' else ReferenceEngine
    engine = engine_cls(model, partition, local, selector, known)
    if graph:
        return GraphFederatedEngine.from_config(config, engine, partition, generator)
    return engine
