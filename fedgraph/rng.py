"""Counter-based random numbers: draw ``n`` of a stream without drawing ``0 .. n - 1`` first.

A client's randomness in a round is a function of its seed alone (see
:mod:`fedgraph.federated.streams`); with a counter-based generator the ``n``-th draw of
stream ``s`` is :math:`h(\\mathrm{seed}, s, n)` for a fixed mixing function :math:`h`, so the
draws of every client of a round are computed at once, in parallel, each equal to what the
client computes alone on its device. :math:`h` is SplitMix64 (Steele, Lea & Flood, OOPSLA
2014) in counter mode: the stream's key is the mixed seed and stream,
:math:`k = \\mathrm{mix}(\\mathrm{seed} \\oplus (s + 1) \\gamma)`, and draw ``n`` is
:math:`\\mathrm{mix}(k + (n + 1) \\gamma)` with :math:`\\gamma` the golden-ratio increment.
A client's seed in a round is two SplitMix64 steps, :math:`\\mathrm{mix}(\\mathrm{mix}(r +
\\gamma) \\oplus \\mathrm{key} + \\gamma)` of the round seed :math:`r`, cut to 63 bits.
"""
from __future__ import annotations

import numba
import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MUL1 = np.uint64(0xBF58476D1CE4E5B9)
_MUL2 = np.uint64(0x94D049BB133111EB)

#: The streams of a client's round: its negatives, and its shuffle of epoch ``e``
#: (stream ``SHUFFLE + e``).
NEGATIVES = 1
SHUFFLE = 1 << 16


@numba.njit(cache=True, nogil=True)
def _mix(value):
    value = (value ^ (value >> np.uint64(30))) * _MUL1
    value = (value ^ (value >> np.uint64(27))) * _MUL2
    return value ^ (value >> np.uint64(31))


@numba.njit(cache=True, nogil=True)
def draw(seed, stream, counter):
    """Draw ``counter`` of stream ``stream`` of ``seed``: 64 uniform bits (``uint64``)."""
    key = _mix(np.uint64(seed) ^ (np.uint64(stream + 1) * _GOLDEN))
    return _mix(key + np.uint64(counter + 1) * _GOLDEN)


@numba.njit(cache=True, nogil=True)
def below(seed, stream, counter, bound):
    """A uniform integer in ``[0, bound)`` from draw ``counter`` (its remainder: off uniform
    by at most ``bound / 2 ** 64``)."""
    return np.int64(draw(seed, stream, counter) % np.uint64(bound))


@numba.njit(cache=True, nogil=True)
def client_seeds(round_seed, keys):
    """``[B]`` the seeds of clients ``keys`` (non-negative) in the round seeded
    ``round_seed``, below ``2 ** 63`` as ``torch.Generator`` seeds must be."""
    base = _mix(np.uint64(round_seed) + _GOLDEN)
    out = np.empty(keys.size, np.int64)
    for index in range(keys.size):
        out[index] = np.int64(_mix((base ^ np.uint64(keys[index])) + _GOLDEN) >> np.uint64(1))
    return out
