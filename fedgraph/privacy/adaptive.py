"""Adaptive clipping for user-level DP (Andrew, Thakkar, McMahan & Ramaswamy,
"Differentially Private Learning with Adaptive Clipping", NeurIPS 2021).

A fixed clip bound :math:`S` is a guess: too small and every update is cut short, too large
and the noise, proportional to :math:`S`, drowns them. Adaptive clipping moves :math:`S`
each round towards a quantile :math:`q` of the clients' update norms. Each client also
reports the bit :math:`b_c = [\\lVert \\Delta_c \\rVert \\le S_t]`; the server receives their
count with Gaussian noise of standard deviation :math:`\\sigma_b`, and takes a geometric
step,

.. math::
    \\bar b = \\frac{\\sum_c b_c + N(0, \\sigma_b^2)}{B}, \\qquad
    S_{t+1} = S_t \\exp\\big(-\\eta (\\bar b - q)\\big).

The count is a release too: replacing a user moves it by at most 1, the clipped sum by
:math:`2 S_t`. The two Gaussian releases together are one Gaussian release of noise
multiplier :math:`\\sigma` (the accountant's, calibrated as for a fixed bound) when the
update's noise is :math:`\\sigma_\\Delta S_t` with

.. math::
    \\sigma_\\Delta = \\big(\\sigma^{-2} - (2 \\sigma_b)^{-2}\\big)^{-1/2},

which needs :math:`2\\sigma_b > \\sigma`; the paper's :math:`\\sigma_b = B / 20`
(:data:`COUNT_NOISE_SHARE`) is that here for rounds of more than :math:`10 \\sigma` clients.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

#: :math:`\\sigma_b` over the round's clients :math:`B` (Andrew et al.'s choice).
COUNT_NOISE_SHARE = 1 / 20


@dataclass
class AdaptiveClip:
    """The clip bound's state and its update rule (see the module docstring).

    Args:
        clip: :math:`S_t`, the bound of the coming round (the first round's: ``dp_clip``).
        quantile: :math:`q`, the share of clients whose update the bound should not cut.
        lr: :math:`\\eta`, the geometric step.
        count_std: :math:`\\sigma_b`.
    """
    clip: float
    quantile: float = 0.5
    lr: float = 0.2
    count_std: float = 1.0

    def __post_init__(self):
        if not (self.clip > 0 and 0 < self.quantile < 1 and self.lr > 0
                and self.count_std > 0):
            raise ValueError(f'adaptive clipping needs clip > 0, a quantile in (0, 1), lr > 0 '
                             f'and a count noise > 0, got {self.clip}, {self.quantile}, '
                             f'{self.lr} and {self.count_std}')

    @classmethod
    def for_rounds(cls, clip: float, quantile: float, lr: float,
                   clients: int) -> 'AdaptiveClip':
        """For rounds of ``clients`` clients: :math:`\\sigma_b = B / 20`."""
        return cls(clip, quantile, lr, COUNT_NOISE_SHARE * clients)

    def update_noise(self, noise_multiplier: float) -> float:
        """:math:`\\sigma_\\Delta` of the accountant's :math:`\\sigma`."""
        if noise_multiplier == 0:
            return 0.0
        left = noise_multiplier ** -2 - (2 * self.count_std) ** -2
        if left <= 0:
            raise ValueError(f'adaptive clipping needs the count noise 2 x {self.count_std:.3g} '
                             f'above the noise multiplier {noise_multiplier:.3g}: take more '
                             'clients a round or a fixed clip bound')
        return left ** -0.5

    def step(self, noised_count: float, clients: int) -> None:
        """The next bound from the noised count of the round's ``clients`` clients whose
        update the bound did not cut."""
        fraction = noised_count / max(clients, 1)
        self.clip *= math.exp(-self.lr * (fraction - self.quantile))
