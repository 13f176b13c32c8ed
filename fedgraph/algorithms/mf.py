"""Centralized matrix factorization: the non-federated reference point of the baselines."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional

import torch
from torch import Tensor

from fedgraph.algorithms.base import CENTRALIZED_UNUSED, Algorithm, AlgorithmSettings
from fedgraph.algorithms.registry import register
from fedgraph.settings import setting
from fedgraph.data.partition import ClientPartition
from fedgraph.federated.messages import RoundStats
from fedgraph.federated.round_engine import RoundEngine
from fedgraph.federated.local import bce
from fedgraph.nn.heads import DotProductHead
from fedgraph.nn.recommender import FederatedRecommender


@dataclass
class MFSettings(AlgorithmSettings):
    """Centralized MF's optimizer."""
    lr: float = setting(1e-3, "Adam's learning rate")

    def validate(self) -> None:
        if self.lr <= 0:
            raise ValueError('lr must be > 0')


@register
class MF(Algorithm):
    name = 'mf'
    summary = 'centralized MF on the pooled data (Adam): the ceiling of FedMF'
    Settings = MFSettings
    federated = False
    renamed_settings = {'central_lr': 'lr'}
    unused_settings = CENTRALIZED_UNUSED

    def build_engine(self, partition: ClientPartition, generator: torch.Generator,
                     known: Optional[ClientPartition] = None) -> 'CentralizedMF':
        return CentralizedMF(self.config, partition, generator, known)


class CentralizedMF(RoundEngine):
    """MF trained on the pooled interactions of all users, with the same model class,
    loss (BCE, ``num_negatives`` fresh negatives per positive) and evaluation as the
    federated algorithms. One "round" is one epoch of Adam over shuffled mini-batches of
    ``batch_size`` (learning rate: :class:`MFSettings`' ``lr``)."""
    chance_loss = math.log(2)  # BCE at sigma(s) = 1/2

    def __init__(self, config, partition: ClientPartition,
                 generator: torch.Generator, known: Optional[ClientPartition] = None):
        self.config = config
        self.partition = partition.to(config.device)
        self.known = (known if known is not None else partition).to(config.device)
        head = DotProductHead(partition.num_clients, config.dim, std=config.dim ** -0.5,
                              generator=generator)
        self.model = FederatedRecommender(partition.num_items, head,
                                          init_std=config.dim ** -0.5,
                                          generator=generator).to(config.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.settings.lr)

    def run_round(self, generator: torch.Generator) -> RoundStats:
        cfg, part = self.config, self.partition
        user = part.row.repeat_interleave(1 + cfg.num_negatives)
        negatives = self.known.sample_negatives(part.row, cfg.num_negatives, generator)
        item = torch.cat([part.col.unsqueeze(1), negatives], dim=1).view(-1)
        label = torch.zeros(item.numel(), device=item.device)
        label[::1 + cfg.num_negatives] = 1
        order = torch.randperm(item.numel(), generator=generator).to(item.device)
        total = 0.0
        for batch in order.split(cfg.batch_size):
            self.optimizer.zero_grad()
            loss = bce(self.model(user[batch], item[batch]), label[batch]).mean()
            loss.backward()
            self.optimizer.step()
            total += float(loss.detach()) * batch.numel()
        return RoundStats(loss=total / item.numel(), num_clients=part.num_clients,
                          upload_bytes=0.0, download_bytes=0.0)

    @torch.no_grad()
    def scores(self, users: Tensor, items: Tensor) -> Tensor:
        return self.model.head.logits({'user': self.model.head.user[users].unsqueeze(1)},
                                      self.model.item[items])

    @torch.no_grad()
    def scores_all(self, users: Tensor) -> Tensor:
        return self.model.head.logits_all({'user': self.model.head.user[users]},
                                          self.model.item)

    def item_views(self, user: int):
        """``user``'s embedding ``[1, d]``, the item table and its weight."""
        user_row = self.model.head.user.detach()[user:user + 1]
        return {'user': user_row}, [self.model.item.detach()], [1.0]

    def state_dict(self) -> Dict[str, object]:
        return {'model': self.model.state_dict(), 'optimizer': self.optimizer.state_dict()}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        self.model.load_state_dict(state['model'])
        self.optimizer.load_state_dict(state['optimizer'])
