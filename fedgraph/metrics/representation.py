"""Representation quality of embeddings (Wang & Isola, ICML 2020).

On L2-normalized embeddings :math:`\\tilde x = x / \\lVert x \\rVert`:

.. math::
    \\mathcal{L}_\\mathrm{uniform} = \\log \\mathbb{E}_{x \\neq y}\\,
        e^{-t \\lVert \\tilde x - \\tilde y \\rVert^2}, \\qquad
    \\mathcal{L}_\\mathrm{align} = \\mathbb{E}_{(x, y)\\ \\mathrm{positive}}
        \\lVert \\tilde x - \\tilde y \\rVert^\\alpha,

with :math:`t = 2` and :math:`\\alpha = 2` by default. Lower is better for both: uniformity
is :math:`\\le 0`, and more negative means the points spread more evenly over the sphere.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


def uniformity(embeddings: Tensor, t: float = 2.0, max_points: Optional[int] = 10_000,
               generator: Optional[torch.Generator] = None) -> float:
    """:math:`\\log \\mathbb{E}\\, e^{-t \\lVert \\tilde x - \\tilde y \\rVert^2}` over all pairs
    of distinct rows of ``embeddings`` ``[N, d]``.

    Above ``max_points`` rows, a uniform random subset of that many rows is used (seeded by
    ``generator``), which keeps the cost at ``max_points^2 / 2`` pairs.
    """
    if embeddings.dim() != 2 or embeddings.size(0) < 2:
        raise ValueError(f'expected at least 2 embeddings [N, d], got {tuple(embeddings.shape)}')
    x = embeddings.detach().double()
    if max_points is not None and x.size(0) > max_points:
        index = torch.randperm(x.size(0), generator=generator)[:max_points]
        x = x[index.to(x.device)]
    squared = torch.pdist(F.normalize(x, dim=1)).pow(2)
    return float(torch.logsumexp(-t * squared, dim=0) - math.log(squared.numel()))


def alignment(x: Tensor, y: Tensor, alpha: float = 2.0) -> float:
    """:math:`\\mathbb{E}\\, \\lVert \\tilde x_i - \\tilde y_i \\rVert^\\alpha` over paired rows."""
    if x.shape != y.shape or x.dim() != 2:
        raise ValueError(f'expected paired embeddings of one shape [N, d], '
                         f'got {tuple(x.shape)} and {tuple(y.shape)}')
    x = F.normalize(x.detach().double(), dim=1)
    y = F.normalize(y.detach().double(), dim=1)
    return float((x - y).norm(dim=1).pow(alpha).mean())
