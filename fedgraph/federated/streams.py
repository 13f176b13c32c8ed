"""Per-client random streams: a round whose clients can draw their randomness anywhere.

By default a round's randomness comes from one generator shared by all clients (see
:func:`~fedgraph.federated.plan.plan_round`), so a client's negatives depend on which other
clients were planned with it. On real devices every client draws its own. With
:class:`ClientStreams`, client ``k``'s draws in a round come from its seed
``client_seed(round_seed, key_k)`` only, where the server draws ``round_seed`` once a round:
its negatives and shuffles from counter-based streams of that seed (:mod:`fedgraph.rng`),
drawn for all clients of a round at once; its upload noise, and what a graph model's client
draws besides, from a generator seeded with it. A client training on its own phone and the
same client trained side by side with all others in the vectorized engine then make the same
draws and end with the same numbers.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from fedgraph import rng
from fedgraph.data.partition import ClientPartition
from fedgraph.federated.plan import RoundPlan, plan_round
from fedgraph.privacy.upload import UploadTransform


def client_seed(round_seed: int, key: int) -> int:
    """The seed of client ``key``'s streams in the round seeded ``round_seed``
    (:func:`fedgraph.rng.client_seeds`)."""
    return int(rng.client_seeds(round_seed, np.array([key], dtype=np.int64))[0])


def draw_round_seed(generator: torch.Generator) -> int:
    """The server's seed of a round's client streams."""
    return int(torch.randint(1 << 62, (1,), generator=generator))


class ClientStreams:
    """Where each client of a round draws its randomness.

    Args:
        keys: ``[C]`` the key of each client the engine holds (default: its index). A device
            holding a few users of a larger population passes their ids in that population,
            so that their streams are the ones the whole population's engine draws.
    """

    def __init__(self, keys: Optional[Tensor] = None):
        self.keys = keys

    def generators(self, round_seed: int, clients: Tensor) -> List[torch.Generator]:
        """``clients``' generators in the round seeded ``round_seed`` (their uploads' noise,
        and what a graph model's clients draw besides the plan)."""
        return [torch.Generator().manual_seed(seed) for seed in
                self.seeds(round_seed, clients).tolist()]

    def seeds(self, round_seed: int, clients: Tensor) -> Tensor:
        """``[B]`` the seeds of ``clients``' streams in the round seeded ``round_seed``."""
        keys = clients.cpu() if self.keys is None else self.keys[clients.cpu()]
        return torch.from_numpy(rng.client_seeds(round_seed, keys.numpy()))

    def plan(self, partition: ClientPartition, clients: Tensor, num_negatives: int,
             batch_size: int, local_epochs: int, round_seed: int,
             known: Optional[ClientPartition] = None, keep_groups: bool = False) -> RoundPlan:
        """The round plan of ``clients`` (ascending), each client's negatives and shuffles
        drawn from its counter-based streams of ``round_seed``
        (:func:`~fedgraph.federated.plan.plan_round`)."""
        return plan_round(partition, clients, num_negatives, batch_size, local_epochs, None,
                          known, keep_groups, self.seeds(round_seed, clients))

    @staticmethod
    def transform(upload: UploadTransform, update: Tensor, row_owner: Tensor,
                  generators: Sequence[torch.Generator]) -> Tensor:
        """Each client's row updates through ``upload``, its noise drawn from its generator;
        the rows are grouped by client in the order of ``generators`` (as a round plan's
        are). Only the draws go client by client; the transform takes all rows at once."""
        if not upload.draws:
            return upload(update, None)
        count = torch.bincount(row_owner, minlength=len(generators)).tolist()
        uniform = torch.cat([torch.rand(rows, *update.shape[1:], generator=generator,
                                        dtype=update.dtype)
                             for rows, generator in zip(count, generators)])
        return upload.with_uniforms(update, uniform)
