"""Most popular: every user is recommended the items with the most training interactions.
The floor a personalized model must clear; it trains nothing (a round only counts)."""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import Tensor

from fedgraph.algorithms.base import CENTRALIZED_UNUSED, Algorithm
from fedgraph.algorithms.registry import register
from fedgraph.data.partition import ClientPartition
from fedgraph.federated.messages import RoundStats
from fedgraph.federated.round_engine import RoundEngine


@register
class MostPopular(Algorithm):
    name = 'popular'
    summary = 'most popular items for everyone: the floor of personalization'
    federated = False
    unused_settings = CENTRALIZED_UNUSED + ('local_epochs', 'dim', 'batch_size',
                                            'num_negatives')

    def build_engine(self, partition: ClientPartition, generator: torch.Generator,
                     known: Optional[ClientPartition] = None) -> 'PopularityEngine':
        return PopularityEngine(partition)


class PopularityEngine(RoundEngine):
    """Scores item :math:`i` by its training interaction count :math:`|N(i)|`, for every
    user alike."""

    def __init__(self, partition: ClientPartition):
        self.num_users = partition.num_clients
        self.count = partition.item_degree.to(torch.float32)

    @property
    def device(self) -> torch.device:
        return self.count.device

    def run_round(self, generator: torch.Generator) -> RoundStats:
        return RoundStats(loss=0.0, num_clients=self.num_users, upload_bytes=0.0,
                          download_bytes=0.0)

    @torch.no_grad()
    def scores(self, users: Tensor, items: Tensor) -> Tensor:
        return self.count[items]

    @torch.no_grad()
    def scores_all(self, users: Tensor) -> Tensor:
        return self.count.expand(users.numel(), -1).clone()

    def state_dict(self) -> Dict[str, object]:
        return {'count': self.count}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        self.count = state['count']
