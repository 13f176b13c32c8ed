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


#: The rows of an embedding table that a reported uniformity is measured on: a run's
#: per-round record, the caption of :func:`~fedgraph.viz.plot_uniformity` and
#: :func:`uniformity` by default. Larger tables are sampled (:func:`sample_rows`).
UNIFORMITY_SAMPLE = 1000


def sample_index(num_rows: int, max_points: Optional[int] = UNIFORMITY_SAMPLE,
                 generator: Optional[torch.Generator] = None) -> Optional[Tensor]:
    """Which of ``num_rows`` rows :func:`sample_rows` keeps: ``None`` (all of them) when
    there are at most ``max_points`` (or ``max_points`` is ``None``), else the first
    ``max_points`` of a random permutation drawn by ``generator`` (default: one seeded with
    0, so that the same embeddings give the same sample wherever they are measured)."""
    if max_points is None or num_rows <= max_points:
        return None
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    return torch.randperm(num_rows, generator=generator)[:max_points]


def sample_rows(embeddings: Tensor, max_points: Optional[int] = UNIFORMITY_SAMPLE,
                generator: Optional[torch.Generator] = None) -> Tensor:
    """The rows of ``embeddings`` ``[N, d]`` that :func:`sample_index` keeps."""
    index = sample_index(embeddings.size(0), max_points, generator)
    return embeddings if index is None else embeddings[index.to(embeddings.device)]


def uniformity(embeddings: Tensor, t: float = 2.0,
               max_points: Optional[int] = UNIFORMITY_SAMPLE,
               generator: Optional[torch.Generator] = None) -> float:
    """:math:`\\log \\mathbb{E}\\, e^{-t \\lVert \\tilde x - \\tilde y \\rVert^2}` over all pairs
    of distinct rows of ``embeddings`` ``[N, d]``.

    Above ``max_points`` rows, the pairs of :func:`sample_rows` (``max_points`` rows drawn
    by ``generator``, by default seeded with 0) are used, which keeps the cost at
    ``max_points^2 / 2`` pairs.
    """
    if embeddings.dim() != 2 or embeddings.size(0) < 2:
        raise ValueError(f'expected at least 2 embeddings [N, d], got {tuple(embeddings.shape)}')
    if max_points is not None and max_points < 2:
        raise ValueError(f'max_points must be at least 2 (a pair), got {max_points}')
    x = sample_rows(embeddings.detach(), max_points, generator).double()
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
