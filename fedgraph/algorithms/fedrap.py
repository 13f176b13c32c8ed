"""FedRAP: additive personalization (Li et al., *Federated Recommendation with Additive
Personalization*, ICLR 2024; code ``mtics/FedRAP``).

A user scores items with a private linear head over its private item table plus the shared
one, :math:`D_u + C`; the server averages the clients' trained copies of :math:`C`
(:mod:`fedgraph.federated.additive`). Defaults are the code's for MovieLens-100K
(``train.py``): head lr 0.5, tables lr 200, decays 0.95 a step and 0.97 a round, weight decay
1e-4, :math:`\\lambda = \\mu = 0.1`, mini-batches of 2048, at most 10 epochs a round. The
regularization weights follow the paper's curriculum (``curriculum='paper'``) or stay
constant as the code runs (``'code'``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from fedgraph.algorithms.base import WHOLE_TABLE_UNUSED, Algorithm, AlgorithmSettings
from fedgraph.algorithms.registry import register
from fedgraph.federated.additive import (CURRICULA, AdditiveEngine, AdditiveNodeHooks,
                                         AdditiveRecommender, AdditiveReference,
                                         AdditiveTraining)
from fedgraph.nn.heads import LinearScoreHead
from fedgraph.settings import setting


@dataclass
class FedRAPSettings(AlgorithmSettings):
    """The FedRAP code's defaults for MovieLens-100K (``train.py``)."""
    lr: float = setting(0.5, "learning rate of the private head in round 0")
    table_lr: float = setting(200.0, 'learning rate of the private and the shared item table '
                                     'in round 0')
    round_decay: float = setting(0.97, "the learning rates' factor after every round")
    step_decay: float = setting(0.95, "the learning rates' factor after every local step")
    weight_decay: float = setting(1e-4, 'weight decay on every parameter')
    lam: float = setting(0.1, 'lambda: weight of the (negated) mean squared difference of the '
                              'private and the shared rows')
    mu: float = setting(0.1, "mu: weight of the shared rows' mean absolute value")
    curriculum: str = setting('paper', "'paper': lambda and mu grow as tanh(rounds / 10); "
                                       "'code': constant, as the FedRAP code runs")
    tol: float = setting(1e-4, "a client's round ends once its running mean loss changes by "
                               "less than this (relative) between epochs")

    def validate(self) -> None:
        if self.curriculum not in CURRICULA:
            raise ValueError(f'curriculum must be one of {CURRICULA}, got {self.curriculum!r}')
        if min(self.lr, self.table_lr, self.weight_decay, self.lam, self.mu, self.tol) < 0:
            raise ValueError('lr, table_lr, weight_decay, lam, mu and tol must be >= 0')
        if not (0 < self.round_decay <= 1 and 0 < self.step_decay <= 1):
            raise ValueError('round_decay and step_decay must be in (0, 1]')


@register
class FedRAP(Algorithm):
    name = 'fedrap'
    summary = ('FedRAP (ICLR 2024): private head over a private plus a shared item table, '
               'the shared one sparse')
    Settings = FedRAPSettings
    #: The code's mini-batches and epochs (at most: a client stops early).
    shared_defaults = dict(batch_size=2048, local_epochs=10)
    #: The server reads each client's copy of :math:`C`: none of the upload defences, noise
    #: or secure aggregation apply.
    unused_settings = WHOLE_TABLE_UNUSED

    engine_class = AdditiveEngine
    reference_class = AdditiveReference

    def build_model(self, num_clients: int, num_items: int,
                    generator: torch.Generator) -> AdditiveRecommender:
        """One ``nn.Linear`` initialization copied to every client's head, the shared table
        :math:`C` ``N(0, 1)`` (``nn.Embedding``'s default), then the private tables
        :math:`D_u`, one ``N(0, 1)`` draw copied to all (the code deep-copies one model for
        every client)."""
        head = LinearScoreHead(num_clients, self.config.dim, generator=generator)
        return AdditiveRecommender(num_items, head, generator=generator)

    def local_training(self, num_items: int) -> AdditiveTraining:
        settings, config = self.settings, self.config
        return AdditiveTraining(
            lr=settings.lr, table_lr=settings.table_lr, round_decay=settings.round_decay,
            step_decay=settings.step_decay, weight_decay=settings.weight_decay,
            lam=settings.lam, mu=settings.mu, curriculum=settings.curriculum, tol=settings.tol,
            batch_size=config.batch_size, max_epochs=config.local_epochs,
            num_negatives=config.num_negatives)

    def node_hooks(self) -> AdditiveNodeHooks:
        return AdditiveNodeHooks()
