"""Evaluating every user with its own model under either protocol."""
from __future__ import annotations

from typing import Dict, Tuple, Union

import torch
from torch import Tensor

from fedgraph.data.partition import ClientPartition
from fedgraph.data.split import RankingSplit, SampledSplit
from fedgraph.metrics.ranking import full_ranking_metrics
from fedgraph.metrics.sampled import sampled_metrics

Split = Union[SampledSplit, RankingSplit]


@torch.no_grad()
def evaluate(engine, split: Split, batch_size: int = 4096) -> Dict[str, Dict[str, float]]:
    """``{'val': metrics, 'test': metrics}`` of ``engine``'s per-user scores.

    Sampled protocol: HR@10 and NDCG@10 of each user's held-out item against its 99 fixed
    negatives. Full-ranking protocol: Recall, Precision, NDCG and Hit @10 and @20 over all
    items with the user's training items masked.
    """
    if isinstance(split, SampledSplit):
        return _sampled(engine, {'val': (split.val_item, split.val_negatives),
                                 'test': (split.test_item, split.test_negatives)}, batch_size)
    train = ClientPartition.from_data(split.train)
    return {name: full_ranking_metrics(engine.scores_all, train, held_out,
                                       batch_size=max(1, batch_size // 4))
            for name, held_out in (('val', split.val), ('test', split.test))}


def _sampled(engine, held_out: Dict[str, Tuple[Tensor, Tensor]], batch_size: int
             ) -> Dict[str, Dict[str, float]]:
    """The sampled metrics of each ``{name: (positive [U], negatives [U, n])}``, every
    user's candidates of all of them scored in one call."""
    candidates = torch.cat([torch.cat([positive.unsqueeze(1), negatives], dim=1)
                            for positive, negatives in held_out.values()], dim=1)
    users = torch.arange(candidates.size(0))
    device = engine.device
    scores = torch.cat([engine.scores(batch.to(device), candidates[batch].to(device)).cpu()
                        for batch in users.split(batch_size)])
    widths = [1 + negatives.size(1) for _, negatives in held_out.values()]
    return {name: sampled_metrics(part[:, 0], part[:, 1:], k=10)
            for name, part in zip(held_out, scores.split(widths, dim=1))}
