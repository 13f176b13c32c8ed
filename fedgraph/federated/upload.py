"""What a client does to its update before uploading it: clipping and local DP noise."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


class UploadTransform:
    """Norm clipping then Laplace noise on each uploaded row update :math:`\\Delta`:

    .. math::
        \\tilde\\Delta = \\Delta \\cdot \\min\\Big(1, \\frac{C}{\\lVert \\Delta \\rVert_2}\\Big)
        + \\mathrm{Laplace}(0, \\lambda)^d .

    Clipping bounds every coordinate to :math:`[-C, C]`, so each uploaded coordinate is
    :math:`\\epsilon`-LDP with :math:`\\epsilon = 2C / \\lambda` per round (the accounting of
    FedPerGNN / PerFedRec++); :attr:`epsilon` is ``None`` without noise.

    Args:
        clip: the L2 bound :math:`C` of a row update (``None``: no clipping).
        laplace_scale: the noise scale :math:`\\lambda` (``0``: no noise). Noise needs a clip.
    """

    def __init__(self, clip: Optional[float] = None, laplace_scale: float = 0.0):
        if laplace_scale < 0 or (clip is not None and clip <= 0):
            raise ValueError('clip must be > 0 and laplace_scale >= 0')
        if laplace_scale > 0 and clip is None:
            raise ValueError('Laplace noise needs a clipping bound to have a finite epsilon')
        self.clip = clip
        self.laplace_scale = laplace_scale

    @property
    def epsilon(self) -> Optional[float]:
        """The per-round, per-coordinate privacy budget :math:`2C / \\lambda`; ``None``
        without noise."""
        return None if self.laplace_scale == 0 else 2 * self.clip / self.laplace_scale

    def __call__(self, update: Tensor, generator: torch.Generator) -> Tensor:
        if self.clip is not None:
            norm = update.norm(dim=-1, keepdim=True)
            update = update * (self.clip / norm.clamp_min(1e-12)).clamp(max=1.0)
        if self.laplace_scale > 0:
            # Inverse CDF: b sign(u) log(1 - 2|u|), u ~ U(-1/2, 1/2); the clamp keeps the
            # (probability-zero in exact arithmetic) draw u = -1/2 finite.
            uniform = torch.rand(update.shape, generator=generator, dtype=update.dtype) - 0.5
            tail = (1 - 2 * uniform.abs()).clamp_min(torch.finfo(update.dtype).tiny)
            noise = -self.laplace_scale * torch.sign(uniform) * torch.log(tail)
            update = update + noise.to(update.device)
        return update
