"""Full-ranking metrics: every item is ranked, the user's training items masked out.

For a user with held-out set :math:`T` and top-:math:`K` list :math:`L` (training items
excluded), with :math:`h = |L \\cap T|`:

.. math::
    \\mathrm{Recall@K} = \\frac{h}{|T|}, \\quad \\mathrm{Precision@K} = \\frac{h}{K}, \\quad
    \\mathrm{Hit@K} = \\mathbb{1}[h > 0], \\quad
    \\mathrm{NDCG@K} = \\frac{\\sum_{i=1}^{K} \\mathbb{1}[L_i \\in T] / \\log_2(i + 1)}
                            {\\sum_{i=1}^{\\min(K, |T|)} 1 / \\log_2(i + 1)},

averaged over the users with a non-empty :math:`T` (LightGCN's definitions). The
per-batch bookkeeping is PyG's :class:`~torch_geometric.metrics.LinkPredMetricCollection`.
"""
from __future__ import annotations

from typing import Callable, Dict, Sequence

import torch
from torch import Tensor
from torch_geometric.metrics import (LinkPredHitRatio, LinkPredMetricCollection, LinkPredNDCG,
                                     LinkPredPrecision, LinkPredRecall)

from fedgraph.data.partition import ClientPartition

_METRICS = {'recall': LinkPredRecall, 'precision': LinkPredPrecision, 'ndcg': LinkPredNDCG,
            'hit': LinkPredHitRatio}


class FullRankingEvaluator:
    """Accumulates full-ranking metrics over batches of users.

    Args:
        train: the training interactions, masked out of every ranking.
        held_out: the items to retrieve (validation or test), per user.
        ks: the cut-offs.

    Example:
        >>> evaluator = FullRankingEvaluator(ClientPartition.from_data(split.train), split.test)
        >>> for users in torch.arange(num_users).split(1024):
        ...     evaluator.update(users, model.scores(users))   # [B, num_items]
        >>> evaluator.compute()   # {'recall@10': ..., 'ndcg@20': ...}
    """

    def __init__(self, train: ClientPartition, held_out: ClientPartition,
                 ks: Sequence[int] = (10, 20)):
        self.train = train
        self.held_out = held_out
        self.max_k = max(ks)
        self.metrics = LinkPredMetricCollection(
            [cls(k) for k in ks for cls in _METRICS.values()])
        self._names = {f'{cls.__name__}@{k}': f'{name}@{k}'
                       for k in ks for name, cls in _METRICS.items()}

    def update(self, users: Tensor, scores: Tensor) -> None:
        """Adds a batch: ``scores[b, i]`` is user ``users[b]``'s score of item ``i``."""
        if scores.shape != (users.numel(), self.train.num_items):
            raise ValueError(f'expected scores of shape {(users.numel(), self.train.num_items)}, '
                             f'got {tuple(scores.shape)}')
        scores = scores.masked_fill(self.train.dense_mask(users).to(scores.device), float('-inf'))
        top = scores.topk(min(self.max_k, scores.size(1)), dim=1).indices
        batch = self.held_out.batch(users)
        self.metrics.update(top, torch.stack([batch.owner, batch.item]).to(top.device))

    def compute(self) -> Dict[str, float]:
        values = self.metrics.compute()
        return {self._names[key]: float(value) for key, value in values.items()}


def full_ranking_metrics(score_fn: Callable[[Tensor], Tensor], train: ClientPartition,
                         held_out: ClientPartition, ks: Sequence[int] = (10, 20),
                         batch_size: int = 1024) -> Dict[str, float]:
    """Evaluates ``score_fn(users) -> [B, num_items]`` for every user with held-out items."""
    evaluator = FullRankingEvaluator(train, held_out, ks)
    users = torch.nonzero(held_out.degree > 0).view(-1)
    for batch in users.split(batch_size):
        evaluator.update(batch, score_fn(batch))
    return evaluator.compute()
