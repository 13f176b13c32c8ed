"""PFedRec and FedMF: two configurations of one federated model and engine."""
from __future__ import annotations

from typing import Optional

import torch

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
    """
    num_clients, num_items = partition.num_clients, partition.num_items
    if config.algorithm == 'pfedrec':
        head = LinearScoreHead(num_clients, config.dim, generator=generator)
        training = dict(alternating=True, personalize_items=True)
    elif config.algorithm == 'fedmf':
        head = DotProductHead(num_clients, config.dim, std=config.dim ** -0.5,
                              generator=generator)
        training = dict(alternating=False, personalize_items=False)
    else:
        raise ValueError(f'not a federated algorithm: {config.algorithm!r}')
    init_std = 1.0 if config.algorithm == 'pfedrec' else config.dim ** -0.5
    model = FederatedRecommender(num_items, head, init_std=init_std, generator=generator)
    model.to(config.device)
    local = LocalTraining(
        lr=config.lr, item_lr=config.item_lr(num_items), batch_size=config.batch_size,
        local_epochs=config.local_epochs, num_negatives=config.num_negatives,
        weighted_aggregation=config.aggregation == 'weighted',
        upload=UploadTransform(config.clip, config.ldp_scale), **training)
    selector = ClientSelector(num_clients, config.client_ratio, config.clients_per_round)
    engine_cls = FederatedEngine if config.engine == 'vectorized' else ReferenceEngine
    return engine_cls(model, partition, local, selector, known)
