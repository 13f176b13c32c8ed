"""Privacy accounting: the :math:`(\\epsilon, \\delta)` of a run's releases, from the Rényi DP
accountant of Google's ``dp-accounting`` library.

Neighbouring data sets differ in **one user's data, replaced** (user-level DP; the number of
users is public, as it must be when a round takes a fixed number of them). A release is one
of:

* the **Gaussian mechanism** on a sum of L2-clipped updates, :math:`\\sum_c
  \\mathrm{clip}_S(\\Delta_c) + N(0, \\sigma^2 S^2)`: replacing a user moves the sum by at
  most :math:`2S`, so it is the Gaussian mechanism of noise multiplier :math:`\\sigma / 2`
  with respect to sensitivity 1;
* the same, **sampled**: the round takes :math:`B` of the :math:`N` users uniformly without
  replacement and the server keeps which secret (Wang, Balle & Kasiviswanathan, AISTATS
  2019, the accountant's ``SampledWithoutReplacementDpEvent``);
* the **Skellam mechanism** on a secure sum of encoded updates, each client adding its share
  of the noise (distributed DP, :mod:`fedgraph.privacy.discrete`): never amplified by
  sampling, since the server that takes the sum knows who took part;
* the **Laplace mechanism** on one uploaded vector whose L1 sensitivity is :math:`\\Delta_1`:
  Laplace noise of scale :math:`\\lambda` is a Laplace mechanism of noise multiplier
  :math:`\\lambda / \\Delta_1` (pure :math:`\\Delta_1/\\lambda`-DP on its own).

A run's releases compose; :func:`epsilon` turns the counts into :math:`\\epsilon` at a
:math:`\\delta`, :func:`calibrate` finds the noise multiplier that keeps a planned run
within a target. Each kind of release's Rényi DP curve is computed once
(:func:`unit_rdp`) and scaled by its count, which is what the accountant does when it
composes the same event many times.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence, Tuple, Union

import numpy as np

if TYPE_CHECKING:  # dp-accounting takes a second to import: it is imported when first used
    import dp_accounting

#: The accountant's name, as ``metrics.json`` records it.
ACCOUNTANT = 'rdp'
#: The neighbouring relation, as ``metrics.json`` records it.
NEIGHBOURS = 'replace one user'


#: The Rényi orders the accountant evaluates: fractional orders 1.1 to 10.9 in steps of 0.1,
#: every integer 11 to 63, then 128, 256, 512 and 1024 (the default orders of dp-accounting
#: 0.5 and 0.6, fixed here so that an epsilon does not move with the library's default).
ORDERS: Tuple[float, ...] = tuple(
    [1 + x / 10.0 for x in range(1, 100)] + [float(a) for a in range(11, 64)]
    + [128.0, 256.0, 512.0, 1024.0])


def _fresh_accountant():
    import dp_accounting

    return dp_accounting.rdp.RdpAccountant(
        orders=ORDERS, neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)


def orders() -> np.ndarray:
    """The Rényi orders the accountant evaluates (:data:`ORDERS`)."""
    return np.array(ORDERS, dtype=np.float64)


def gaussian_event(noise_multiplier: float, sample_size: int = 1,
                   population: int = 1) -> dp_accounting.DpEvent:
    """One Gaussian release of noise standard deviation ``noise_multiplier`` times the clip
    bound, over ``sample_size`` of ``population`` users sampled without replacement (equal:
    no sampling)."""
    import dp_accounting

    event = dp_accounting.GaussianDpEvent(noise_multiplier / 2)
    if sample_size == population:
        return event
    return dp_accounting.SampledWithoutReplacementDpEvent(population, sample_size, event)


@dataclass(frozen=True)
class SkellamEvent:
    """One Skellam release of noise multiplier :math:`\\sigma` (the summed noise's
    standard deviation over the encoded clip bound; :func:`~fedgraph.privacy.discrete.
    skellam_rdp`)."""
    noise_multiplier: float


#: A release the accountant composes.
Event = Union['dp_accounting.DpEvent', SkellamEvent]


def laplace_event(noise_multiplier: float) -> dp_accounting.DpEvent:
    """One Laplace release of scale ``noise_multiplier`` times its L1 sensitivity."""
    import dp_accounting

    return dp_accounting.LaplaceDpEvent(noise_multiplier)


@functools.lru_cache(maxsize=64)
def unit_rdp(event: Event) -> np.ndarray:
    """The Rényi DP of one ``event`` at every order of :func:`orders`."""
    if isinstance(event, SkellamEvent):
        from fedgraph.privacy.discrete import skellam_rdp

        return skellam_rdp(orders(), event.noise_multiplier)
    return np.asarray(_fresh_accountant().compose(event).rdp, dtype=np.float64)


def epsilon(releases: Sequence[Tuple[Event, int]], delta: float) -> float:
    """The :math:`\\epsilon` at ``delta`` of ``releases``, ``(event, count)`` pairs composed:
    the Rényi DP curves add up, then the accountant's conversion to :math:`(\\epsilon,
    \\delta)`. Laplace releases alone are also pure DP, :math:`\\sum_k \\mathrm{count}_k /
    b_k` by basic composition; the smaller of the two holds. No releases: 0."""
    import dp_accounting

    if not 0 < delta < 1:
        raise ValueError(f'delta must be in (0, 1), got {delta}')
    total = np.zeros(len(ORDERS), dtype=np.float64)
    for event, count in releases:
        if count:
            total = total + count * unit_rdp(event)
    if not total.any():
        return 0.0
    spent = float(dp_accounting.rdp.compute_epsilon(orders(), total, delta)[0])
    if all(isinstance(event, dp_accounting.LaplaceDpEvent) for event, _ in releases):
        spent = min(spent, sum(count / event.noise_multiplier for event, count in releases))
    return spent


def calibrate(target_epsilon: float, delta: float,
              releases: Callable[[float], Sequence[Tuple[Event, int]]]
              ) -> float:
    """The smallest noise multiplier :math:`\\sigma` (to three significant digits, rounded
    up) whose planned ``releases(sigma)`` stay within ``target_epsilon`` at ``delta``: the
    accountant's :math:`\\epsilon` falls as :math:`\\sigma` grows, so a bisection on
    :math:`\\log \\sigma` finds it."""
    if not target_epsilon > 0 or math.isinf(target_epsilon):
        raise ValueError(f'a target epsilon must be finite and > 0, got {target_epsilon}')
    low, high = 1e-2, 1.0
    while epsilon(releases(high), delta) > target_epsilon:
        low, high = high, high * 4
        if high > 1e7:
            raise ValueError(f'no noise multiplier up to 1e7 reaches epsilon {target_epsilon}')
    while high / low > 1.0005:
        middle = math.sqrt(low * high)
        if epsilon(releases(middle), delta) > target_epsilon:
            low = middle
        else:
            high = middle
    digits = 2 - math.floor(math.log10(high))
    return math.ceil(high * 10 ** digits) / 10 ** digits
