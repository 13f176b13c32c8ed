"""The algorithms: one module each, registered by name (:mod:`fedgraph.algorithms.registry`),
all written against one contract (:class:`~fedgraph.algorithms.base.Algorithm`)."""
from __future__ import annotations

from typing import Optional

import torch

from fedgraph.algorithms.base import Algorithm, AlgorithmSettings, ClientSettings
from fedgraph.algorithms.registry import algorithm_names, register, resolve
from fedgraph.data.partition import ClientPartition


def build_engine(config, partition: ClientPartition, generator: torch.Generator,
                 known: Optional[ClientPartition] = None):
    """The in-process engine that trains ``config.algorithm`` on ``partition``; ``known``
    holds the items each user never draws as a negative (default: its training items)."""
    return config.build_algorithm().build_engine(partition, generator, known)


__all__ = ['Algorithm', 'AlgorithmSettings', 'ClientSettings', 'algorithm_names', 'build_engine',
           'register', 'resolve']
