"""A personalized model's levels combined into one score: PerFedRec++'s global, cluster and
local models, each a table of logits, weighed into the score a user ranks items by. Needs
PyTorch only, so that a user's exported model scores on its device without the engine."""
from __future__ import annotations

from typing import List

from torch import Tensor


def combine_levels(logits: List[Tensor], weights: List[float]) -> Tensor:
    """The weighted sum of levels' ``[U, k]`` logits. With more than one level, each level's
    logits are first standardized per user (zero mean, unit deviation over the scored
    items), so that equal weights give the levels equal say: the local level's fine-tuned
    rows otherwise give logits an order of magnitude larger than the global and cluster
    levels', and it would rank alone."""
    if len(logits) > 1:
        logits = [(value - value.mean(1, keepdim=True))
                  / value.std(1, keepdim=True).clamp_min(1e-12) for value in logits]
    return sum(weight * value for value, weight in zip(logits, weights))
