"""The algorithms, each a configuration of the shared model classes and engine."""
from __future__ import annotations

from typing import Optional

import torch

from fedgraph.algorithms.centralized import CentralizedMF
from fedgraph.algorithms.federated import build_federated
from fedgraph.algorithms.perfedrec import GraphFederatedEngine
from fedgraph.config import ALGORITHMS, TrainConfig
from fedgraph.data.partition import ClientPartition



def build_engine(config: TrainConfig, partition: ClientPartition, generator: torch.Generator,
                 known: Optional[ClientPartition] = None):
    """The engine that trains ``config.algorithm`` on ``partition``; ``known`` holds the
    items each user never draws as a negative (default: its training items)."""
    if config.algorithm == 'mf':
        return CentralizedMF(config, partition, generator, known)
    if config.algorithm in ALGORITHMS:
        return build_federated(config, partition, generator, known)
    raise ValueError(f'unknown algorithm {config.algorithm!r}; choose one of {ALGORITHMS}')


__all__ = ['ALGORITHMS', 'build_engine', 'build_federated', 'CentralizedMF',
           'GraphFederatedEngine']
