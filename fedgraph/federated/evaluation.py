"""Evaluating every user with its own model under either protocol."""
from __future__ import annotations

from typing import Callable, Dict, Optional, Union

import torch
from torch import Tensor

from fedgraph.data.partition import ClientPartition
from fedgraph.data.split import RankingSplit, SampledSplit
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
        device = engine.device
        return sampled_evaluation(
            lambda users, items: engine.scores(users.to(device), items.to(device)).cpu(),
            torch.arange(split.val_item.numel()), split.candidates(), batch_size)
    from fedgraph.metrics.ranking import full_ranking_metrics  # PyG's: devices run without it

    train = ClientPartition.from_data(split.train)
    return {name: full_ranking_metrics(engine.scores_all, train, held_out,
                                       batch_size=max(1, batch_size // 4))
            for name, held_out in (('val', split.val), ('test', split.test))}


def sampled_evaluation(scores: Callable[[Tensor, Tensor], Tensor], users: Tensor,
                       candidates: Dict[str, Tensor], batch_size: Optional[int] = None
                       ) -> Dict[str, Dict[str, float]]:
    """HR@10 and NDCG@10 of ``users`` ``[U]`` for each ``{name: candidates [U, 1 + n]}``
    (row ``u``: user ``users[u]``'s held-out item, then its negatives), every user's
    candidates of all names scored in one call of ``scores(users, items)``, ``batch_size``
    users at a time (default: all): the in-process engine and a device score alike."""
    joined = torch.cat(list(candidates.values()), dim=1)
    step = batch_size or max(1, users.numel())
    scored = torch.cat([scores(users[start:start + step], joined[start:start + step])
                        for start in range(0, users.numel(), step)])
    widths = [part.size(1) for part in candidates.values()]
    return {name: sampled_metrics(part[:, 0], part[:, 1:], k=10)
            for name, part in zip(candidates, scored.split(widths, dim=1))}
