"""The random choices of one round, drawn once and shared by every engine.

A :class:`RoundPlan` holds, for the round's selected clients, every local training sample
(each training positive and its freshly drawn negatives), the mini-batch and local step each
sample falls in, and the local item rows the clients touch. The vectorized engine and the
reference engine consume the same plan, so that with the same seed they do exactly the same
work and can be compared number by number.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Tuple

import numba
import numpy as np
import torch
from torch import Tensor

from fedgraph import rng, runtime
from fedgraph.data.partition import ClientPartition

runtime.start_kernel_threads()  # before a parallel kernel below starts it

#: The bits of the random keys that shuffle a client's samples each epoch.
NOISE_BITS = 31


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
        batch_ptr: ``[B + 1]`` client ``o``'s mini-batches, in local-step order, are
            ``batch_ptr[o]:batch_ptr[o + 1]``.
        batch_start: ``[M]`` the first sample of each mini-batch; its samples are
            ``batch_start[m]:batch_start[m] + batch_fill[m]``.
        batch_fill: ``[M]`` the samples in each mini-batch.
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
    batch_ptr: Tensor
    batch_start: Tensor
    batch_fill: Tensor

    @property
    def num_steps(self) -> int:
        return self.step_ptr.numel() - 1

    def client_batches(self, position: int) -> Iterator[Tuple[int, Tensor, Tensor]]:
        """Client ``position``'s mini-batches in local-step order: ``(step, items,
        labels)``, the samples it has in each step (the reference engines' loop)."""
        mine = self.owner == position
        ptr = self.step_ptr.tolist()
        for step, (start, end) in enumerate(zip(ptr[:-1], ptr[1:])):
            in_step = mine[start:end]
            if in_step.any():
                yield step, self.item[start:end][in_step], self.label[start:end][in_step]


def plan_round(partition: ClientPartition, clients: Tensor, num_negatives: int,
               batch_size: int, local_epochs: int, generator: Optional[torch.Generator],
               known: Optional[ClientPartition] = None, keep_groups: bool = False,
               client_seeds: Optional[Tensor] = None) -> RoundPlan:
    """Draws the samples and mini-batches of one round, from ``generator``, or with
    ``client_seeds`` (``[B]``, the seed of each of ``clients``) from each client's own
    counter-based streams (:mod:`fedgraph.rng`): then a client's part of the plan is the plan
    of that client alone, whichever clients are planned with it.

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
    device = partition.ptr.device
    clients, order = torch.sort(clients.to(device))
    num_clients = clients.numel()
    batch = partition.batch(clients)
    known = partition if known is None else known
    streams = None
    if client_seeds is not None:
        client_seeds = client_seeds.cpu()[order.cpu()]
        owner = batch.owner.cpu()
        rank = torch.arange(owner.numel()) - batch.ptr.cpu()[owner]
        streams = torch.stack([client_seeds[owner], rank], dim=1)
    negatives = known.sample_negatives(clients[batch.owner], num_negatives, generator,
                                       streams=streams).cpu()
    # Each positive followed by its negatives, grouped by client (the reference code's order).
    group = 1 + num_negatives
    item = torch.cat([batch.item.cpu().unsqueeze(1), negatives], dim=1).view(-1)
    dtype = torch.get_default_dtype()
    label = torch.zeros(item.numel(), dtype=dtype)
    label[::group] = 1
    num_samples = batch.ptr.diff().cpu() * group
    if keep_groups:
        batch_size *= group
    batches = (num_samples + batch_size - 1) // batch_size

    # Mini-batches: client o has batches[o] per epoch, local_epochs * batches[o] in all; its
    # batch t (local step t) holds min(batch_size, n_o - (t mod batches[o]) * batch_size).
    steps_of = local_epochs * batches
    first_batch = torch.cumsum(steps_of, 0) - steps_of
    batch_owner = torch.repeat_interleave(torch.arange(num_clients), steps_of)
    batch_step = torch.arange(batch_owner.numel()) - first_batch[batch_owner]
    batch_fill = (num_samples[batch_owner]
                  - (batch_step % batches[batch_owner]) * batch_size).clamp(max=batch_size)
    # Lay the batches out by (step, client).
    batch_order = torch.sort(batch_step * num_clients + batch_owner).indices
    batch_start = torch.empty_like(batch_fill)
    batch_start[batch_order] = torch.cumsum(batch_fill[batch_order], 0) - batch_fill[batch_order]
    num_steps = int(batch_step.max()) + 1 if batch_step.numel() else 0
    step_ptr = torch.zeros(num_steps + 1, dtype=torch.long)
    torch.cumsum(torch.zeros(num_steps, dtype=torch.long).index_add_(0, batch_step, batch_fill),
                 0, out=step_ptr[1:])

    # Every epoch shuffles each client's samples (a stable sort by a random key); the rank
    # in that order picks the batch and the place in it.
    sample_ptr = torch.cumsum(torch.cat([torch.zeros(1, dtype=torch.long), num_samples]), 0)
    keys_per_client = num_samples // group if keep_groups else num_samples
    if client_seeds is None:
        noise = torch.randint(1 << NOISE_BITS, (local_epochs, int(keys_per_client.sum())),
                              generator=generator)
    else:
        noise = torch.empty(local_epochs, int(keys_per_client.sum()), dtype=torch.long)
        key_ptr = torch.cumsum(keys_per_client, 0) - keys_per_client
        _stream_noise(client_seeds.numpy(), key_ptr.numpy(), keys_per_client.numpy(),
                      noise.numpy())
    if keep_groups:  # one key per positive and its negatives: a stable sort keeps them
        noise = noise.repeat_interleave(group, dim=1)
    local_row, row_count, row_items = _client_rows(sample_ptr.numpy(), item.numpy(),
                                                   partition.num_items.bit_length())
    row_count = torch.from_numpy(row_count)
    row_start = torch.cumsum(row_count, 0) - row_count
    total = local_epochs * item.numel()
    owner_out, item_out, row_out = (torch.empty(total, dtype=torch.long) for _ in range(3))
    label_out, weight_out = (torch.empty(total, dtype=dtype) for _ in range(2))
    row_item, row_owner = (torch.empty(int(row_count.sum()), dtype=torch.long) for _ in range(2))
    _lay_out(sample_ptr.numpy(), noise.numpy(), item.numpy(), label.numpy(), local_row,
             row_start.numpy(), row_count.numpy(), row_items, batch_size, batches.numpy(),
             first_batch.numpy(), batch_start.numpy(), (1.0 / batch_fill.to(dtype)).numpy(),
             owner_out.numpy(), item_out.numpy(), label_out.numpy(), weight_out.numpy(),
             row_out.numpy(), row_item.numpy(), row_owner.numpy())
    return RoundPlan(
        clients=clients, owner=owner_out.to(device), item=item_out.to(device),
        label=label_out.to(device), step_ptr=step_ptr.to(device),
        weight=weight_out.to(device), row=row_out.to(device),
        row_owner=row_owner.to(device),
        row_item=row_item.to(device), num_samples=num_samples.to(device),
        batch_ptr=torch.cat([first_batch, steps_of.sum().view(1)]).to(device),
        batch_start=batch_start.to(device), batch_fill=batch_fill.to(device))


@numba.njit(cache=True, nogil=True, parallel=True)
def _stream_noise(seeds, key_ptr, keys_per_client, noise):
    """Client ``c``'s shuffle keys of epoch ``e``: the draws ``0, 1, ...`` of its stream
    :data:`fedgraph.rng.SHUFFLE` ``+ e``, cut to :data:`NOISE_BITS` bits."""
    for client in numba.prange(seeds.size):
        for epoch in range(noise.shape[0]):
            for index in range(keys_per_client[client]):
                bits = rng.draw(seeds[client], rng.SHUFFLE + epoch, index)
                noise[epoch, key_ptr[client] + index] = np.int64(bits >> np.uint64(64 - NOISE_BITS))


@numba.njit(cache=True, nogil=True)
def _stable_order(values, bits):
    """The permutation that sorts ``values`` (non-negative, below ``2 ** bits``) stably: a
    least-significant-digit radix sort, one byte a pass."""
    order = np.arange(values.size)
    spare = np.empty_like(order)
    count = np.empty(257, np.int64)
    for shift in range(0, bits, 8):
        count[:] = 0
        for index in order:
            count[((values[index] >> shift) & 255) + 1] += 1
        for digit in range(256):
            count[digit + 1] += count[digit]
        for index in order:
            digit = (values[index] >> shift) & 255
            spare[count[digit]] = index
            count[digit] += 1
        order, spare = spare, order
    return order


#: The most keys :func:`_stable_order_of_random` lets share a bucket before it sorts by
#: bytes instead.
BUCKET_LIMIT = 32


@numba.njit(cache=True, nogil=True)
def _stable_order_of_random(values, bits):
    """:func:`_stable_order` of keys drawn uniformly from ``[0, 2 ** bits)``: a stable
    counting sort by their top ``log2(n) + 1`` bits puts about one key in each bucket, and an
    insertion sort (which moves a key only past greater ones, so keeps equal keys in order)
    finishes each bucket. Keys that crowd a bucket are sorted by :func:`_stable_order`."""
    size = values.size
    top = min(bits, int(np.log2(size + 1)) + 1)
    shift = bits - top
    count = np.zeros((1 << top) + 1, np.int64)
    for value in values:
        count[(value >> shift) + 1] += 1
    if count.max() > BUCKET_LIMIT:
        return _stable_order(values, bits)
    for bucket in range(1 << top):
        count[bucket + 1] += count[bucket]
    order = np.empty(size, np.int64)
    for index in range(size):
        bucket = values[index] >> shift
        order[count[bucket]] = index
        count[bucket] += 1
    for position in range(1, size):
        index = order[position]
        other = position - 1
        while other >= 0 and values[order[other]] > values[index]:
            order[other + 1] = order[other]
            other -= 1
        order[other + 1] = index
    return order


@numba.njit(cache=True, nogil=True, parallel=True)
def _client_rows(sample_ptr, item, item_bits):
    """Each client's local rows: its distinct items, ascending. Returns the row of every
    sample within its client's rows, each client's row count, and the rows' items at the
    start of the client's samples."""
    local_row = np.empty(item.size, np.int64)
    row_count = np.zeros(sample_ptr.size - 1, np.int64)
    row_items = np.empty(item.size, np.int64)
    for client in numba.prange(sample_ptr.size - 1):
        first, last = sample_ptr[client], sample_ptr[client + 1]
        order = _stable_order(item[first:last], item_bits)
        count = 0
        for position in range(order.size):
            value = item[first + order[position]]
            if count == 0 or row_items[first + count - 1] != value:
                row_items[first + count] = value
                count += 1
            local_row[first + order[position]] = count - 1
        row_count[client] = count
    return local_row, row_count, row_items


@numba.njit(cache=True, nogil=True, parallel=True)
def _lay_out(sample_ptr, noise, item, label, local_row, row_start, row_count, row_items,
             batch_size, batches, first_batch, batch_start, batch_weight, owner_out, item_out,
             label_out, weight_out, row_out, row_item, row_owner):
    """Places every client's samples, epoch by epoch, in the plan's (step, client, place)
    order: its ``rank``-th sample after a stable sort by ``noise`` goes to place
    ``rank % batch_size`` of its batch ``rank // batch_size`` of the epoch; and the client's
    rows (their items and owner) after those of the clients before it."""
    for client in numba.prange(sample_ptr.size - 1):
        first, last = sample_ptr[client], sample_ptr[client + 1]
        for epoch in range(noise.shape[0]):
            order = _stable_order_of_random(noise[epoch, first:last], NOISE_BITS)
            batch = first_batch[client] + epoch * batches[client]
            for batch_first in range(0, order.size, batch_size):
                place = batch_start[batch]
                for rank in range(batch_first, min(batch_first + batch_size, order.size)):
                    source = first + order[rank]
                    owner_out[place] = client
                    item_out[place] = item[source]
                    label_out[place] = label[source]
                    weight_out[place] = batch_weight[batch]
                    row_out[place] = row_start[client] + local_row[source]
                    place += 1
                batch += 1
        count = row_count[client]
        row_item[row_start[client]:row_start[client] + count] = row_items[first:first + count]
        row_owner[row_start[client]:row_start[client] + count] = client
