"""Per-client random streams: a round whose clients can draw their randomness anywhere.

By default a round's randomness comes from one generator shared by all clients (see
:func:`~fedgraph.federated.plan.plan_round`), so a client's negatives depend on which other
clients were planned with it. On real devices every client draws its own. With
:class:`ClientStreams`, client ``k``'s draws in a round -- its negatives, its shuffles and its
upload noise, in that order -- come from a generator seeded by ``(round_seed, key_k)`` only,
where the server draws ``round_seed`` once a round. A client training on its own phone and
the same client trained side by side with all others in the vectorized engine then make the
same draws and end with the same numbers.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import Tensor

from fedgraph.data.partition import ClientPartition
from fedgraph.federated.plan import RoundPlan, plan_round
from fedgraph.privacy.upload import UploadTransform

_MASK = (1 << 64) - 1


def _splitmix64(value: int) -> int:
    """One step of the SplitMix64 mixer: nearby inputs give unrelated outputs."""
    value = (value + 0x9E3779B97F4A7C15) & _MASK
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK
    return value ^ (value >> 31)


def client_seed(round_seed: int, key: int) -> int:
    """The seed of client ``key``'s generator in the round seeded ``round_seed``."""
    return _splitmix64(_splitmix64(round_seed) ^ key) >> 1  # torch seeds are < 2 ** 63


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
        keys = clients.tolist() if self.keys is None else self.keys[clients.cpu()].tolist()
        return [torch.Generator().manual_seed(client_seed(round_seed, key)) for key in keys]

    def plan(self, partition: ClientPartition, clients: Tensor, num_negatives: int,
             batch_size: int, local_epochs: int, generators: Sequence[torch.Generator],
             known: Optional[ClientPartition] = None, keep_groups: bool = False) -> RoundPlan:
        """The round plan of ``clients`` (ascending), each planned alone with its generator
        (:func:`~fedgraph.federated.plan.plan_round`), merged into one plan."""
        return merge_plans([
            plan_round(partition, client.view(1), num_negatives, batch_size, local_epochs,
                       generator, known, keep_groups)
            for client, generator in zip(clients, generators)])

    @staticmethod
    def transform(upload: UploadTransform, update: Tensor, row_owner: Tensor,
                  generators: Sequence[torch.Generator]) -> Tensor:
        """Each client's row updates through ``upload`` with that client's generator; the
        rows are grouped by client in the order of ``generators`` (as a round plan's are)."""
        out = torch.empty_like(update)
        count = torch.bincount(row_owner, minlength=len(generators)).tolist()
        start = 0
        for rows, generator in zip(count, generators):
            out[start:start + rows] = upload(update[start:start + rows], generator)
            start += rows
        return out


def merge_plans(plans: Sequence[RoundPlan]) -> RoundPlan:
    """One round plan from the plans of single clients, given in ascending client order:
    the samples are laid out by local step, then client (a stable sort keeps each client's
    order within a step), and the local rows are numbered client after client."""
    num_clients = len(plans)
    device = plans[0].clients.device
    steps = [torch.repeat_interleave(torch.arange(p.num_steps, device=device),
                                     p.step_ptr.diff()) for p in plans]
    owner = torch.repeat_interleave(torch.arange(num_clients, device=device),
                                    torch.tensor([p.item.numel() for p in plans], device=device))
    step = torch.cat(steps)
    order = torch.sort(step * num_clients + owner, stable=True).indices
    num_rows = torch.tensor([p.row_item.numel() for p in plans], device=device)
    row_offset = torch.cumsum(num_rows, 0) - num_rows
    num_steps = max(p.num_steps for p in plans)
    step_ptr = torch.zeros(num_steps + 1, dtype=torch.long, device=device)
    torch.cumsum(torch.bincount(step, minlength=num_steps), 0, out=step_ptr[1:])
    return RoundPlan(
        clients=torch.cat([p.clients for p in plans]),
        owner=owner[order],
        item=torch.cat([p.item for p in plans])[order],
        label=torch.cat([p.label for p in plans])[order],
        step_ptr=step_ptr,
        weight=torch.cat([p.weight for p in plans])[order],
        row=torch.cat([p.row + offset for p, offset in zip(plans, row_offset)])[order],
        row_owner=torch.repeat_interleave(torch.arange(num_clients, device=device), num_rows),
        row_item=torch.cat([p.row_item for p in plans]),
        num_samples=torch.cat([p.num_samples for p in plans]))
