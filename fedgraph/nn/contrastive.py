"""Contrastive objective between two views of the same nodes."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def info_nce(view1: Tensor, view2: Tensor, temperature: float = 0.2) -> Tensor:
    """InfoNCE (van den Oord et al., 2018) as used by SGL / SimGCL: with cosine similarity
    :math:`s(a, b) = a^\\top b / (\\lVert a \\rVert \\lVert b \\rVert)`,

    .. math::
        \\mathcal{L} = -\\frac{1}{N} \\sum_{n} \\log
        \\frac{\\exp(s(z^1_n, z^2_n) / \\tau)}{\\sum_{m} \\exp(s(z^1_n, z^2_m) / \\tau)} ,

    i.e. each node's other view is its positive and the other nodes' are its negatives.
    """
    if view1.shape != view2.shape or view1.dim() != 2:
        raise ValueError(f'expected two views of one shape [N, d], '
                         f'got {tuple(view1.shape)} and {tuple(view2.shape)}')
    logits = F.normalize(view1, dim=1) @ F.normalize(view2, dim=1).t() / temperature
    return F.cross_entropy(logits, torch.arange(view1.size(0), device=view1.device))
