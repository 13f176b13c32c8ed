"""The random choices of one round, drawn once and shared by every engine.

A :class:`RoundPlan` holds, for the round's selected clients, every local training sample
(each training positive and its freshly drawn negatives), the mini-batch and local step each
sample falls in, and the local item rows the clients touch. The vectorized engine and the
reference engine consume the same plan, so that with the same seed they do exactly the same
work and can be compared number by number.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from fedgraph.data.partition import ClientPartition


@dataclass
class RoundPlan:
    """Samples of one round, ordered by local step, then client, then position in the batch.

    Attributes:
        clients: ``[B]`` the selected clients, ascending.
        owner: ``[N]`` position in ``clients`` of each sample's client.
        item: ``[N]`` the sample's item.
        label: ``[N]`` 1 for a positive, 0 for a negative.
        step_ptr: ``[T + 1]`` samples of local step ``t`` are ``step_ptr[t]:step_ptr[t+1]``;
            a client's samples in step ``t`` are its ``t``-th mini-batch.
        weight: ``[N]`` 1 / (size of the sample's mini-batch): a client's loss is the mean
            over its mini-batch.
        row: ``[N]`` the sample's local item row.
        row_owner: ``[R]`` the client (position in ``clients``) of each local row.
        row_item: ``[R]`` the item of each local row; rows are unique (client, item) pairs,
            sorted by client then item.
        num_samples: ``[B]`` samples per client and epoch.
    """
    clients: Tensor
    owner: Tensor
    item: Tensor
    label: Tensor
    step_ptr: Tensor
    weight: Tensor
    row: Tensor
    row_owner: Tensor
    row_item: Tensor
    num_samples: Tensor

    @property
    def num_steps(self) -> int:
        return self.step_ptr.numel() - 1


def plan_round(partition: ClientPartition, clients: Tensor, num_negatives: int,
               batch_size: int, local_epochs: int, generator: torch.Generator,
               known: Optional[ClientPartition] = None, keep_groups: bool = False) -> RoundPlan:
    """Draws the samples and mini-batches of one round.

    * Every training item of a client is a positive; each positive gets ``num_negatives``
      distinct items outside the client's ``known`` items (default: its training items),
      redrawn every round (the PFedRec code's ``random.sample(negative_items, 4)``).
    * Each epoch shuffles a client's samples and cuts them into mini-batches of
      ``batch_size`` (``DataLoader(shuffle=True)``); epoch ``e``'s batch ``j`` is local step
      ``e * batches + j``. Clients with more data take more steps.
    * With ``keep_groups`` (a pairwise loss), each epoch shuffles a client's positives
      instead, each followed by its negatives, and a mini-batch holds ``batch_size``
      positives with their negatives.
    """
    clients = torch.sort(clients.to(partition.ptr.device)).values
    num_clients = clients.numel()
    device = clients.device
    batch = partition.batch(clients)
    known = partition if known is None else known
    negatives = known.sample_negatives(clients[batch.owner], num_negatives, generator)
    # Each positive followed by its negatives, grouped by client (the reference code's order).
    group = 1 + num_negatives
    owner = batch.owner.repeat_interleave(group)
    item = torch.cat([batch.item.unsqueeze(1), negatives], dim=1).view(-1)
    dtype = torch.get_default_dtype()
    label = torch.zeros(owner.numel(), dtype=dtype, device=device)
    label[::group] = 1
    num_samples = batch.ptr.diff() * group
    if keep_groups:
        batch_size *= group
    start = torch.cumsum(num_samples, 0) - num_samples
    batches = (num_samples + batch_size - 1) // batch_size

    # Mini-batches: client o has batches[o] per epoch, local_epochs * batches[o] in all; its
    # batch t (local step t) holds min(batch_size, n_o - (t mod batches[o]) * batch_size).
    steps_of = local_epochs * batches
    first_batch = torch.cumsum(steps_of, 0) - steps_of
    batch_owner = torch.repeat_interleave(torch.arange(num_clients, device=device), steps_of)
    batch_step = torch.arange(batch_owner.numel(), device=device) - first_batch[batch_owner]
    batch_fill = (num_samples[batch_owner]
                  - (batch_step % batches[batch_owner]) * batch_size).clamp(max=batch_size)
    # Lay the batches out by (step, client) and place each sample inside its batch.
    batch_order = torch.sort(batch_step * num_clients + batch_owner).indices
    batch_start = torch.empty_like(batch_fill)
    batch_start[batch_order] = torch.cumsum(batch_fill[batch_order], 0) - batch_fill[batch_order]
    num_steps = int(batch_step.max()) + 1 if batch_step.numel() else 0
    step_ptr = torch.zeros(num_steps + 1, dtype=torch.long, device=device)
    torch.cumsum(torch.zeros(num_steps, dtype=torch.long, device=device)
                 .index_add_(0, batch_step, batch_fill), 0, out=step_ptr[1:])

    # Every epoch shuffles each client's samples: sort by (client, random key); the rank in
    # that order picks the batch and the place in it.
    if keep_groups:  # one key per positive and its negatives: a stable sort keeps them
        noise = torch.randint(1 << 31, (local_epochs, owner.numel() // group),
                              generator=generator).repeat_interleave(group, dim=1)
    else:
        noise = torch.randint(1 << 31, (local_epochs, owner.numel()), generator=generator)
    key = owner.cpu() * (1 << 31)
    # One 1-D sort per epoch: sorting rows of a 2-D tensor is several times slower.
    order = torch.stack([torch.sort(key + epoch_noise, stable=True).indices
                         for epoch_noise in noise]).to(device)
    rank = (torch.arange(owner.numel(), device=device) - start[owner]).expand_as(order)
    epoch = torch.arange(local_epochs, device=device).unsqueeze(1)
    batch_id = first_batch[owner] + epoch * batches[owner] + torch.div(
        rank, batch_size, rounding_mode='floor')
    destination = (batch_start[batch_id] + rank % batch_size).view(-1)
    source = order.reshape(-1)
    layout = torch.empty_like(source).index_copy_(0, destination, source)
    owner, item, label = owner[layout], item[layout], label[layout]
    weight = torch.empty(layout.numel(), dtype=dtype, device=device).index_copy_(
        0, destination, (1.0 / batch_fill[batch_id].to(dtype)).view(-1))

    row_key, row = torch.unique(owner * partition.num_items + item, return_inverse=True)
    return RoundPlan(
        clients=clients, owner=owner, item=item, label=label, step_ptr=step_ptr,
        weight=weight, row=row,
        row_owner=torch.div(row_key, partition.num_items, rounding_mode='floor'),
        row_item=row_key % partition.num_items, num_samples=num_samples)
