"""What a client does to a row before uploading it: clipping and Laplace noise (local DP per
uploaded row); and, for comparison with the PerFedRec++ code, the noise its server adds
instead."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


class UploadTransform:
    """Clipping then Laplace noise on each uploaded row update :math:`\\Delta`:

    .. math::
        \\tilde\\Delta = \\mathrm{clip}_C(\\Delta) + \\mathrm{Laplace}(0, \\lambda)^d,

    where :math:`\\mathrm{clip}_C` scales the row to L2 norm at most :math:`C`
    (``mode='l2'``: :math:`\\Delta \\min(1, C / \\lVert \\Delta \\rVert_2)`) or clamps each
    coordinate to :math:`[-C, C]` (``mode='coordinate'``, the PerFedRec++ code's).

    Each uploaded row is a Laplace mechanism on its own. Its L1 sensitivity -- how far apart
    two clipped rows of :math:`d` coordinates can be -- is
    :math:`\\Delta_1 = 2C\\sqrt{d}` under the L2 clip and :math:`2Cd` under the coordinate
    clamp, so one row is :math:`\\Delta_1 / \\lambda`-DP and a client that uploads :math:`k`
    rows composes :math:`k` such releases (:mod:`fedgraph.privacy.accountant`). The
    FedPerGNN / PerFedRec++ papers' :math:`2C / \\lambda` is the budget of one coordinate.

    Args:
        clip: the bound :math:`C` (``None``: no clipping).
        laplace_scale: the noise scale :math:`\\lambda` (``0``: no noise). Noise needs a clip.
        mode: ``'l2'`` (a row's norm) or ``'coordinate'`` (each coordinate).
    """

    #: Rows transformed at a time: the noise's intermediate tensors are this many rows,
    #: not the update's (every user's embedding when the clients enroll).
    BLOCK_ROWS = 1 << 16

    def __init__(self, clip: Optional[float] = None, laplace_scale: float = 0.0,
                 mode: str = 'l2'):
        if laplace_scale < 0 or (clip is not None and clip <= 0):
            raise ValueError('clip must be > 0 and laplace_scale >= 0')
        if laplace_scale > 0 and clip is None:
            raise ValueError('Laplace noise needs a clipping bound to have a finite epsilon')
        if mode not in ('l2', 'coordinate'):
            raise ValueError(f"clip mode must be 'l2' or 'coordinate', got {mode!r}")
        self.clip = clip
        self.laplace_scale = laplace_scale
        self.mode = mode

    def l1_sensitivity(self, dim: int) -> float:
        """:math:`\\Delta_1` of one clipped row of ``dim`` coordinates."""
        if self.clip is None:
            return float('inf')
        return 2 * self.clip * (dim if self.mode == 'coordinate' else dim ** 0.5)

    def noise_multiplier(self, dim: int) -> float:
        """The Laplace scale over the L1 sensitivity, :math:`\\lambda / \\Delta_1`, of a row
        of ``dim`` coordinates; 0 without noise."""
        return self.laplace_scale / self.l1_sensitivity(dim) if self.laplace_scale else 0.0

    @property
    def draws(self) -> bool:
        """Whether the transform draws random numbers (Laplace noise)."""
        return self.laplace_scale > 0

    def __call__(self, update: Tensor, generator: Optional[torch.Generator]) -> Tensor:
        """``update`` clipped, with Laplace noise from ``generator`` (one uniform per
        coordinate, :func:`laplace`), in blocks of :attr:`BLOCK_ROWS` rows (each row is
        clipped on its own), the uniforms drawn block by block too (a generator gives the
        same numbers in blocks as at once)."""
        if update.dim() < 2 or update.size(0) <= self.BLOCK_ROWS or (
                self.clip is None and not self.draws):
            return self.with_uniforms(update, self._uniforms(update.shape, update.dtype,
                                                             generator))
        out = torch.empty(update.shape, dtype=update.dtype, device=update.device)
        for start in range(0, update.size(0), self.BLOCK_ROWS):
            rows = slice(start, start + self.BLOCK_ROWS)
            block = update[rows]
            out[rows] = self.with_uniforms(block, self._uniforms(block.shape, update.dtype,
                                                                 generator))
        return out

    def _uniforms(self, shape: torch.Size, dtype: torch.dtype,
                  generator: Optional[torch.Generator]) -> Optional[Tensor]:
        """The :math:`U(0, 1)` draws of noise on ``shape`` rows (``None`` without noise)."""
        return torch.rand(shape, generator=generator, dtype=dtype) if self.draws else None

    def with_uniforms(self, update: Tensor, uniform: Optional[Tensor]) -> Tensor:
        """``update`` clipped, with the Laplace noise of the :math:`U(0, 1)` draws
        ``uniform`` (one per coordinate; ``None`` without noise)."""
        if self.clip is not None and self.mode == 'coordinate':
            update = update.clamp(-self.clip, self.clip)
        elif self.clip is not None:
            update = bound_norm(update, self.clip)
        if self.draws:
            update = update + laplace(uniform, self.laplace_scale).to(update.device)
        return update



class LaplaceLDP(UploadTransform):
    """Local differential privacy as a privacy augmentation (PerFedRec++, Luo et al. 2024;
    FedPerGNN, Wu et al. 2022): each row a client uploads is clipped to ``clip`` and
    perturbed with Laplace(0, ``laplace_scale``) noise, so that two independent draws are two
    views of the same rows for contrastive learning. The mechanism, its arguments and its
    budget are those of :class:`UploadTransform`, which the graph models' uploads go
    through."""


def laplace(uniform: Tensor, scale: float) -> Tensor:
    """Laplace(0, ``scale``) draws by the inverse CDF from :math:`U(0, 1)` draws ``uniform``:
    :math:`-b\\,\\mathrm{sign}(u) \\log(1 - 2|u|)` for :math:`u = \\mathrm{uniform} - 1/2`;
    the clamp keeps the (probability-zero in exact arithmetic) draw :math:`u = -1/2` finite."""
    centred = uniform - 0.5
    tail = (1 - 2 * centred.abs()).clamp_min(torch.finfo(uniform.dtype).tiny)
    return -scale * torch.sign(centred) * torch.log(tail)


def server_mean_noise(shape: torch.Size, scale: float, num_clients: int,
                      generator: torch.Generator, dtype: torch.dtype = torch.float32) -> Tensor:
    """The noise the PerFedRec++ code adds once to the aggregated item table: the mean of
    ``num_clients`` Laplace(0, ``scale``) draws per coordinate. Drawn as its normal
    approximation :math:`N(0, 2\\lambda^2 / B)` (same mean and variance; by the central
    limit theorem indistinguishable at the hundreds of clients of a round), which takes one
    draw per coordinate rather than ``B``. It protects no single client's upload: it is
    not local differential privacy, and exists for like-for-like comparison only."""
    std = (2.0 / max(num_clients, 1)) ** 0.5 * scale
    return torch.randn(shape, generator=generator, dtype=dtype) * std


def bound_norm(update: Tensor, bound: float) -> Tensor:
    """Each vector of ``update`` along its last dimension scaled to L2 norm at most
    ``bound``: :math:`\\Delta \\min(1, C / \\lVert \\Delta \\rVert_2)`."""
    norm = update.norm(dim=-1, keepdim=True)
    return update * (bound / norm.clamp_min(1e-12)).clamp(max=1.0)
