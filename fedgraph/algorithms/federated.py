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
from fedgraph.federated.streams import ClientStreams
from fedgraph.federated.upload import UploadTransform
from fedgraph.nn.heads import DotProductHead, LinearScoreHead
from fedgraph.nn.recommender import FederatedRecommender

GRAPH_ALGORITHMS = ('fedlightgcn', 'perfedrec++')


def build_model(config: TrainConfig, num_clients: int, num_items: int,
                generator: torch.Generator) -> FederatedRecommender:
    """The initial model of a federated algorithm: the shared item table and every client's
    private head, drawn from ``generator`` (head first, then items)."""
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
    return model.to(config.device)


def local_training(config: TrainConfig, num_items: int) -> LocalTraining:
    """How a client of ``config.algorithm`` trains.

    With K GNN layers the ego embeddings enter each side of the score divided by K + 1, so
    their gradients shrink by (K + 1)^2; scaling the learning rates back keeps one setting of
    lr meaningful for every K (K = 0: unchanged).
    """
    scale = (config.num_layers + 1) ** 2 if config.algorithm in GRAPH_ALGORITHMS else 1
    return LocalTraining(
        lr=config.lr * scale, item_lr=config.item_lr(num_items) * scale,
        batch_size=config.batch_size,
        local_epochs=config.local_epochs, num_negatives=config.num_negatives,
        weighted_aggregation=config.aggregation == 'weighted',
        upload=UploadTransform(config.clip or None, config.ldp_scale),
        alternating=config.algorithm == 'pfedrec',
        personalize_items=config.dual_personalization)


def build_selector(config: TrainConfig, num_clients: int) -> ClientSelector:
    """The clients of a round: ``config.clients_per_round`` (at most all) or
    ``config.client_ratio`` of them."""
    count = (None if config.clients_per_round is None
             else min(config.clients_per_round, num_clients))
    return ClientSelector(num_clients, config.client_ratio, count)


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
    any of them; ``config.client_streams`` gives every client its own random stream.
    """
    num_clients, num_items = partition.num_clients, partition.num_items
    model = build_model(config, num_clients, num_items, generator)
    selector = build_selector(config, num_clients)
    training = local_training(config, num_items)
    if config.engine == 'vectorized':
        streams = ClientStreams() if config.client_streams else None
        engine = FederatedEngine(model, partition, training, selector, known, streams)
    elif config.client_streams:
        raise ValueError('client streams need the vectorized engine')
    else:
        engine = ReferenceEngine(model, partition, training, selector, known)
    if config.algorithm in GRAPH_ALGORITHMS:
        return GraphFederatedEngine.from_config(config, engine, partition, generator)
    return engine
