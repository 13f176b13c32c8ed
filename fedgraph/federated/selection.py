"""Which clients take part in a round."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


class ClientSelector:
    """Samples the clients of a round uniformly without replacement.

    Exactly one of ``ratio`` and ``count`` sets the round size: ``ratio=1.0`` (the default,
    PFedRec's setting) takes every client, ``ratio=r`` takes ``int(r * num_clients)``
    clients, ``count=n`` takes ``n``.
    """

    #: Every set of ``count`` clients is equally likely (what privacy amplification by
    #: sampling assumes, :mod:`fedgraph.privacy.accountant`).
    uniform = True

    def __init__(self, num_clients: int, ratio: Optional[float] = None,
                 count: Optional[int] = None):
        if ratio is not None and count is not None:
            raise ValueError('give either ratio or count, not both')
        if count is None:
            ratio = 1.0 if ratio is None else ratio
            if not 0 < ratio <= 1:
                raise ValueError(f'ratio must be in (0, 1], got {ratio}')
            count = int(num_clients * ratio)
        if not 1 <= count <= num_clients:
            raise ValueError(f'a round needs between 1 and {num_clients} clients, got {count}')
        self.num_clients = num_clients
        self.count = count

    def __call__(self, generator: torch.Generator) -> Tensor:
        """The selected clients, ascending."""
        if self.count == self.num_clients:
            return torch.arange(self.num_clients)
        return torch.sort(torch.randperm(self.num_clients, generator=generator)[:self.count]).values
