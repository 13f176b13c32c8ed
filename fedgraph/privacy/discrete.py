"""A client's update as integers for a secure sum, and distributed DP's Skellam mechanism
(Agarwal, Kairouz & Liu, "The Skellam Mechanism for Differentially Private Federated
Learning", NeurIPS 2021).

A secure sum adds integers modulo :math:`2^{32}`, so a client's real update
:math:`x \\in \\mathbb{R}^D` is encoded first (:class:`IntegerEncoding`):

.. math::
    \\tilde x = \\mathrm{round}_\\gamma(\\gamma\\, \\mathrm{clip}(x)) + Z_c, \\qquad
    Z_c \\sim \\mathrm{Sk}(\\mu_c, \\mu_c) = \\mathrm{Pois}(\\mu_c) - \\mathrm{Pois}(\\mu_c)
    \\text{ per coordinate},

with :math:`\\gamma` a power of two, unbiased randomized rounding, and clipping to L2 norm
:math:`S` (distributed DP) or to :math:`\\pm b` per coordinate (secure aggregation alone).
The server decodes the sum as :math:`\\sum_c \\tilde x_c / \\gamma`. Skellam noise is
closed under sums: the :math:`n` clients' shares add up to :math:`\\mathrm{Sk}(n\\mu_c,
n\\mu_c)`, the noise that one trusted party would have added, with nobody but a client
itself ever holding its un-noised update.

The scale is chosen so that rounding cannot move a clipped update much:
:math:`\\sqrt{D} \\le` :data:`ROUNDING_SLACK` :math:`\\cdot \\gamma S`, so that
:math:`\\lVert \\mathrm{round}(\\gamma x) \\rVert_2 \\le \\gamma S + \\sqrt{D} \\le (1 +`
:data:`ROUNDING_SLACK` :math:`) \\gamma S` always, and :math:`\\gamma S \\ge`
:data:`MIN_SCALED_NORM`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import Tensor

#: :math:`\\sqrt{D} / (\\gamma S)` at most: the rounding's share of a clipped update's norm.
ROUNDING_SLACK = 0.01
#: :math:`\\gamma S` at least (the accountant's worst case).
MIN_SCALED_NORM = 100.0
#: The per-coordinate bound :math:`b` of secure aggregation without DP: above any change of
#: a round measured here (PFedRec's item rows move by up to a few hundred: its item learning
#: rate grows with the catalogue).
PLAIN_BOUND = 2.0 ** 12
#: Without DP a round's sum may take up to :math:`2^{30}` of the signed 32-bit range.
PLAIN_RANGE = 2.0 ** 30


def power_of_two_at_least(value: float) -> float:
    """The smallest power of two :math:`\\ge` ``value`` (and :math:`\\ge 1`)."""
    return 2.0 ** max(0, math.ceil(math.log2(value))) if value > 1 else 1.0


@dataclass(frozen=True)
class IntegerEncoding:
    """How a client turns its update into integers (see the module docstring).

    Args:
        scale: :math:`\\gamma`, a power of two.
        clip: the L2 bound :math:`S` of the whole update (distributed DP), or ``None``.
        bound: without ``clip``, the bound :math:`b` of each coordinate.
        skellam: :math:`\\mu_c`, the rate of each of the two Poisson draws of a client's
            noise share per coordinate (0: no noise).
    """
    scale: float
    clip: Optional[float] = None
    bound: float = PLAIN_BOUND
    skellam: float = 0.0

    def __post_init__(self):
        if not (self.scale >= 1 and math.log2(self.scale).is_integer()):
            raise ValueError(f'the scale must be a power of two >= 1, got {self.scale}')

    @classmethod
    def plain(cls, clients: int, bound: float = PLAIN_BOUND) -> 'IntegerEncoding':
        """Secure aggregation without DP for sums of ``clients`` clients: each coordinate
        clipped to :math:`\\pm` ``bound`` (:data:`PLAIN_BOUND`), on the finest grid
        :math:`1 / \\gamma` (:math:`\\gamma` a power of two, at most :math:`2^{16}`) whose
        sums stay within :data:`PLAIN_RANGE`."""
        fits = PLAIN_RANGE / (max(clients, 1) * bound)
        return cls(2.0 ** min(16, max(0, math.floor(math.log2(fits)))), bound=bound)

    @classmethod
    def distributed(cls, clip: float, noise_multiplier: float, dim: int,
                    min_clients: int) -> 'IntegerEncoding':
        """Distributed DP of noise multiplier :math:`\\sigma` over updates of ``dim``
        coordinates clipped to :math:`S` (``clip``): :math:`\\gamma` the smallest power of two
        with :math:`\\sqrt{D} \\le` :data:`ROUNDING_SLACK` :math:`\\gamma S` and
        :math:`\\gamma S \\ge` :data:`MIN_SCALED_NORM`, and each client's share
        :math:`\\mu_c = \\sigma^2 \\gamma^2 S^2 / (2 n)` so that any ``min_clients``
        :math:`n` clients' shares add up to variance :math:`(\\sigma \\gamma S)^2`, central
        DP-FedAvg's noise in the encoded units."""
        scale = power_of_two_at_least(max(math.sqrt(dim) / (ROUNDING_SLACK * clip),
                                          MIN_SCALED_NORM / clip))
        total = (noise_multiplier * scale * clip) ** 2 / 2
        return cls(scale, clip, skellam=total / max(min_clients, 1))

    def encode(self, vector: Tensor, generator: Optional[torch.Generator]) -> Tensor:
        """``[D]`` int64: ``vector`` clipped, scaled, rounded at random and noised."""
        vector = vector.double()
        if self.clip is not None:
            norm = float(vector.norm())
            vector = vector * min(1.0, self.clip / norm) if norm > 0 else vector
        else:
            vector = vector.clamp(-self.bound, self.bound)
        scaled = vector * self.scale
        floor = scaled.floor()
        up = torch.rand(scaled.shape, generator=generator, dtype=torch.float64) < scaled - floor
        integers = (floor + up).long()
        if self.skellam:
            rate = torch.full(scaled.shape, self.skellam, dtype=torch.float64)
            integers += (torch.poisson(rate, generator=generator)
                         - torch.poisson(rate, generator=generator)).long()
        return integers

    def decode(self, total: Tensor) -> Tensor:
        """A sum of encoded updates as reals (float64)."""
        return total.double() / self.scale

    def coordinate_bound(self, clients: int) -> float:
        """A bound on a coordinate of ``clients`` encoded updates' sum, in encoded units:
        each update's coordinate is at most :math:`\\gamma S` (or :math:`\\gamma b`) plus one
        for the rounding, and the noise at most 40 standard deviations of the summed shares
        (a tail of probability below :math:`10^{-300}`)."""
        signal = self.scale * (self.clip if self.clip is not None else self.bound) + 1
        return clients * signal + 40 * math.sqrt(2 * self.skellam * clients)


def skellam_rdp(orders: np.ndarray, noise_multiplier: float,
                scaled_norm: float = MIN_SCALED_NORM) -> np.ndarray:
    """The Rényi DP at ``orders`` of one release of a sum of encoded updates
    (:meth:`IntegerEncoding.distributed`) with noise :math:`\\mathrm{Sk}(\\mu, \\mu)`,
    :math:`\\mu = \\sigma^2 N^2 / 2` (:math:`N = \\gamma S` the encoded clip bound,
    ``scaled_norm``), against replacing one user: Agarwal et al.'s Theorem 3.5,

    .. math::
        \\epsilon(\\alpha) = \\frac{\\alpha \\Delta_2^2}{4 \\mu} + \\min\\left(
        \\frac{(2\\alpha - 1) \\Delta_2^2 + 6 \\Delta_1}{16 \\mu^2},
        \\frac{3 \\Delta_1}{4 \\mu}\\right),

    with :math:`\\Delta_2 = 2 (1 +` :data:`ROUNDING_SLACK` :math:`) N` (two rounded updates)
    and :math:`\\Delta_1 \\le \\Delta_2^2` (an integer vector's L1 norm is at most its
    squared L2 norm). It falls as :math:`N` grows, so :data:`MIN_SCALED_NORM` bounds every
    encoding. The theorem holds at integer orders; the others are :math:`\\infty`."""
    mu = noise_multiplier ** 2 * scaled_norm ** 2 / 2
    l2 = 2 * (1 + ROUNDING_SLACK) * scaled_norm
    l1 = l2 ** 2
    if mu == 0:
        return np.full(len(orders), np.inf)
    rdp = orders * l2 ** 2 / (4 * mu) + np.minimum(
        ((2 * orders - 1) * l2 ** 2 + 6 * l1) / (16 * mu ** 2), 3 * l1 / (4 * mu))
    return np.where(np.equal(np.mod(orders, 1), 0), rdp, np.inf)
