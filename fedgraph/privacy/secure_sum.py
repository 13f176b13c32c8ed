"""SecAgg+ simulated in one process: the server receives each client's integer vector
masked, and learns only their sum (Bell, Bonawitz, Gascón, Lepoint & Raykova, "Secure
Single-Server Aggregation with (Poly)Logarithmic Overhead", CCS 2020; the protocol of
Flower's ``SecAggPlusWorkflow`` and ``secaggplus_mod``).

Arithmetic is modulo :math:`M = 2^{32}`. The round's clients stand in a ring in a random
order; each shares a pairwise seed :math:`s_{uv}` with its ``neighbours`` nearest on it (the
SecAgg+ graph: Flower's ``num_shares`` minus one) and draws a private seed :math:`b_u`. Client
:math:`u` uploads

.. math::
    y_u = x_u + \\mathrm{PRG}(b_u) + \\sum_{v \\in N(u), v < u} \\mathrm{PRG}(s_{uv})
          - \\sum_{v \\in N(u), v > u} \\mathrm{PRG}(s_{uv}) \\pmod M,

uniform on its own. A client may drop after the keys were shared (``dropout``); the server
sums the :math:`y_u` it received, removes the survivors' private masks and the pairwise
masks between survivors and dropped clients (in the protocol, reconstructed from the
clients' Shamir shares of :math:`b_u` and of the dropped clients' keys; here, taken from the
simulated key table), and reads the sum as a signed 32-bit integer. Fewer survivors than
``min_survivors`` of the round aborts it: the server unmasks nothing.

What is simulated is the key agreement and the secret sharing (the seeds come from one
seed sequence); the masks are real draws of a PRG (NumPy's PCG64) that cancel, so the server
side of the code receives only what a SecAgg+ server receives.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

MODULUS_BITS = 32


def _mask(seed: Tuple[int, ...], size: int) -> np.ndarray:
    """``[size]`` uint32 drawn from the PRG seeded ``seed``."""
    return np.random.Generator(np.random.PCG64(list(seed))).integers(
        0, 1 << MODULUS_BITS, size=size, dtype=np.uint32)


@dataclass(frozen=True)
class SecAggPlus:
    """The protocol's settings.

    Args:
        neighbours: the clients each client masks with (the SecAgg+ graph's degree, even;
            every other client of a round of at most ``neighbours + 1``).
        min_survivors: the share of a round's clients that must upload for the server to
            unmask (below it the round aborts).
        dropout: the probability that a client drops after the keys were shared
            (simulated).
    """
    neighbours: int = 16
    min_survivors: float = 1.0
    dropout: float = 0.0

    def __post_init__(self):
        if self.neighbours < 2 or self.neighbours % 2:
            raise ValueError(f'secure aggregation needs an even number >= 2 of neighbours, '
                             f'got {self.neighbours}')
        if not 0 < self.min_survivors <= 1 or not 0 <= self.dropout < 1:
            raise ValueError(f'min_survivors must be in (0, 1] and dropout in [0, 1), got '
                             f'{self.min_survivors} and {self.dropout}')

    def threshold(self, clients: int) -> int:
        """The fewest of ``clients`` whose uploads the server unmasks: never fewer than two,
        whose sum would be one client's upload."""
        return max(2, math.ceil(self.min_survivors * clients - 1e-9))


@dataclass
class RoundKeys:
    """A round's simulated key agreement: the clients' ring and their seeds."""
    parties: List[int]
    neighbours: Dict[int, List[int]]
    round_seed: int

    @classmethod
    def agree(cls, parties: List[int], neighbours: int, round_seed: int) -> 'RoundKeys':
        order = np.random.Generator(np.random.PCG64([round_seed, 0])).permutation(len(parties))
        ring = [parties[i] for i in order]
        if neighbours >= len(ring) - 1:  # everyone masks with everyone
            graph = {party: [other for other in ring if other != party] for party in ring}
            return cls(ring, graph, round_seed)
        graph = {party: [] for party in ring}
        for position, party in enumerate(ring):
            for offset in range(1, neighbours // 2 + 1):
                other = ring[(position + offset) % len(ring)]
                graph[party].append(other)
                graph[other].append(party)
        return cls(ring, graph, round_seed)

    def private_mask(self, party: int, size: int) -> np.ndarray:
        return _mask((self.round_seed, 1, party), size)

    def pairwise_mask(self, party: int, other: int, size: int) -> np.ndarray:
        """The mask of the pair ``party``, ``other``: the larger of the two adds it, the
        smaller subtracts it."""
        low, high = sorted((party, other))
        return _mask((self.round_seed, 2, low, high), size)


def masked_upload(keys: RoundKeys, party: int, encoded: Tensor) -> np.ndarray:
    """The client's side: its encoded vector (int64) masked modulo :math:`2^{32}`."""
    size = encoded.numel()
    out = encoded.numpy().astype(np.uint32) + keys.private_mask(party, size)
    for other in keys.neighbours[party]:
        mask = keys.pairwise_mask(party, other, size)
        if party < other:
            out -= mask
        else:
            out += mask
    return out


@dataclass
class SecureSum:
    """What the server holds after a round: the masked uploads it received (by party; on
    Flower they stay inside its workflow), the unmasked sum (``None``: aborted), the parties
    whose uploads it sums and those that dropped."""
    received: Dict[int, np.ndarray] = field(default_factory=dict)
    total: Optional[Tensor] = None
    dropped: List[int] = field(default_factory=list)
    survivors: List[int] = field(default_factory=list)


def unmask(keys: RoundKeys, received: Dict[int, np.ndarray], size: int) -> Tensor:
    """The server's side: the sum of the ``received`` uploads with the survivors' private
    masks and the masks shared with dropped clients removed, as int64."""
    total = np.zeros(size, dtype=np.uint32)
    for vector in received.values():
        total += vector
    for party in received:
        total -= keys.private_mask(party, size)
        for other in keys.neighbours[party]:
            if other in received:
                continue
            mask = keys.pairwise_mask(party, other, size)
            if party < other:
                total += mask
            else:
                total -= mask
    return torch.from_numpy(total.view(np.int32).astype(np.int64))


def secure_sum(protocol: SecAggPlus, encoded: Iterator[Tuple[int, Tensor]], parties: List[int],
               round_seed: int, generator: Optional[torch.Generator] = None,
               users: Optional[Dict[int, int]] = None) -> SecureSum:
    """One round of the protocol over ``parties``, whose encoded vectors (int64, of one
    size) ``encoded`` yields one at a time (a party it does not yield has dropped): each is
    masked as its client would, a client drops with probability ``protocol.dropout`` (drawn
    from ``generator``), and the server unmasks the sum unless the parties that uploaded
    hold fewer than :meth:`SecAggPlus.threshold` of the round's users (``users``: how many
    each party holds; default one each)."""
    keys = RoundKeys.agree(parties, protocol.neighbours, round_seed)
    out = SecureSum()
    for party, vector in encoded:
        drops = protocol.dropout and float(torch.rand((), generator=generator)) < protocol.dropout
        if drops:
            out.dropped.append(party)
        else:
            out.received[party] = masked_upload(keys, party, vector)
    out.dropped.extend(sorted(set(parties) - set(out.received) - set(out.dropped)))
    out.survivors = sorted(out.received)
    held = users if users is not None else {party: 1 for party in parties}
    survivors = sum(held[party] for party in out.received)
    if out.received and survivors >= protocol.threshold(sum(held.values())):
        size = next(iter(out.received.values())).size
        out.total = unmask(keys, out.received, size)
    return out
