"""Sampled ranking metrics: one held-out positive ranked against sampled negatives.

The positive's rank is ``1 + #{negatives scored >= the positive}``: ties count against the
positive, as in the PFedRec / NCF evaluation code (pandas ``rank(method='first')`` with the
negatives listed first). With that rank,

.. math::
    \\mathrm{HR@K} = \\mathbb{1}[\\mathrm{rank} \\le K], \\qquad
    \\mathrm{NDCG@K} = \\mathbb{1}[\\mathrm{rank} \\le K] \\, \\frac{1}{\\log_2(1 + \\mathrm{rank})},

averaged over users.
"""
from __future__ import annotations

from typing import Dict

import torch
from torch import Tensor


def positive_rank(positive_score: Tensor, negative_scores: Tensor) -> Tensor:
    """``[U]`` 1-based rank of each user's positive among its negatives ``[U, n]``."""
    if positive_score.dim() != 1 or negative_scores.dim() != 2 or \
            negative_scores.size(0) != positive_score.size(0):
        raise ValueError('expected positive scores [U] and negative scores [U, n], got '
                         f'{tuple(positive_score.shape)} and {tuple(negative_scores.shape)}')
    return 1 + (negative_scores >= positive_score.unsqueeze(1)).sum(dim=1)


def hit_ratio_at_k(positive_score: Tensor, negative_scores: Tensor, k: int = 10) -> Tensor:
    """HR@K: the fraction of users whose positive ranks in the top ``k``."""
    return (positive_rank(positive_score, negative_scores) <= k).double().mean()


def ndcg_at_k(positive_score: Tensor, negative_scores: Tensor, k: int = 10) -> Tensor:
    """NDCG@K with a single relevant item: ``1 / log2(1 + rank)`` inside the top ``k``."""
    rank = positive_rank(positive_score, negative_scores).double()
    return torch.where(rank <= k, 1.0 / torch.log2(1.0 + rank), torch.zeros_like(rank)).mean()


def sampled_metrics(positive_score: Tensor, negative_scores: Tensor,
                    k: int = 10) -> Dict[str, float]:
    """``{'hr@k': ..., 'ndcg@k': ...}`` as Python floats."""
    return {f'hr@{k}': float(hit_ratio_at_k(positive_score, negative_scores, k)),
            f'ndcg@{k}': float(ndcg_at_k(positive_score, negative_scores, k))}
