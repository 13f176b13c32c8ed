"""Each user is a client: the interactions of all clients in compressed-row (CSR) form.

Client ``c`` holds the items ``col[ptr[c]:ptr[c + 1]]``. Per-client reductions are segment
operations over ``ptr`` (torch-scatter's ``segment_csr``), and a batch of clients is a pair
of gathers, so no code ever loops over clients in Python.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import numba
import numpy as np
import torch
from torch import Tensor
from torch_scatter import segment_csr

from fedgraph import rng, runtime
from fedgraph.data.hetero import ITEM, RATES, USER

if TYPE_CHECKING:
    from torch_geometric.data import HeteroData

runtime.start_kernel_threads()  # before a parallel kernel below starts it


@dataclass
class ClientBatch:
    """The interactions of a batch of clients, as flat tensors.

    Attributes:
        clients: ``[B]`` client ids.
        ptr: ``[B + 1]`` offsets: entry ``j`` of the batch belongs to ``clients[owner[j]]``.
        owner: ``[N]`` position in ``clients`` of each entry.
        item: ``[N]`` item of each entry.
    """
    clients: Tensor
    ptr: Tensor
    owner: Tensor
    item: Tensor


class ClientPartition:
    """Users' item sets in CSR order; row ``u`` is client ``u``'s local data.

    Args:
        ptr: ``[num_clients + 1]`` non-decreasing offsets into ``col``.
        col: ``[E]`` item ids, grouped by client.
        num_items: the size of the item catalogue.
        rows_sorted: each client's items are ascending in ``col``; :meth:`contains` then
            searches the client's row, and no membership is built.
    """

    #: The largest ``clients x items`` bitmap (in bytes) :meth:`contains` builds.
    DENSE_MEMBERSHIP_LIMIT = 1 << 27
    #: :meth:`sample_negatives` checks fewer candidates than this in one thread.
    PARALLEL_CANDIDATES = 1 << 18

    def __init__(self, ptr: Tensor, col: Tensor, num_items: int, rows_sorted: bool = False):
        if ptr.dim() != 1 or ptr.numel() == 0 or int(ptr[0]) != 0 or int(ptr[-1]) != col.numel():
            raise ValueError('ptr must start at 0 and end at len(col)')
        self.ptr = ptr
        self.col = col
        self.num_items = int(num_items)
        self.rows_sorted = rows_sorted
        self._membership: Optional[Tensor] = None
        self._max_degree: Optional[int] = None

    @classmethod
    def from_edge_index(cls, edge_index: Tensor, num_clients: int,
                        num_items: int) -> 'ClientPartition':
        """Groups ``(user, item)`` edges by user; the order within a user is kept. Edges
        already grouped (in client order, as the data sets are) are copied, not sorted."""
        user = edge_index[0]
        degree = torch.bincount(user, minlength=num_clients)
        ptr = torch.zeros(num_clients + 1, dtype=torch.long, device=user.device)
        torch.cumsum(degree, 0, out=ptr[1:])
        if bool((user[1:] >= user[:-1]).all()):
            return cls(ptr, edge_index[1].clone(), num_items)
        order = torch.sort(user, stable=True).indices
        return cls(ptr, edge_index[1, order].contiguous(), num_items)

    @classmethod
    def from_data(cls, data: HeteroData) -> 'ClientPartition':
        """The partition of the ``('user', 'rates', 'item')`` edges of ``data``."""
        return cls.from_edge_index(data[RATES].edge_index, data[USER].num_nodes,
                                   data[ITEM].num_nodes)

    @property
    def num_clients(self) -> int:
        return self.ptr.numel() - 1

    @property
    def num_interactions(self) -> int:
        return self.col.numel()

    @property
    def degree(self) -> Tensor:
        """``[num_clients]`` number of items of each client."""
        return self.ptr[1:] - self.ptr[:-1]

    @property
    def max_degree(self) -> int:
        """The most items a client holds (0 without clients; computed once)."""
        if self._max_degree is None:
            self._max_degree = int(self.degree.max()) if self.num_clients else 0
        return self._max_degree

    @property
    def item_degree(self) -> Tensor:
        """``[num_items]`` number of clients of each item (its popularity)."""
        return torch.bincount(self.col, minlength=self.num_items)

    @property
    def row(self) -> Tensor:
        """``[E]`` the client of each entry of ``col`` (built at each call, not kept: it
        would take as much memory as ``col``)."""
        return torch.repeat_interleave(torch.arange(self.num_clients, device=self.ptr.device),
                                       self.degree, output_size=self.col.numel())

    def edge_index(self) -> Tensor:
        """``[2, E]`` the ``(client, item)`` pairs in CSR order."""
        return torch.stack([self.row, self.col])

    def items_of(self, client: int) -> Tensor:
        return self.col[self.ptr[client]:self.ptr[client + 1]]

    def select(self, clients: Tensor) -> 'ClientPartition':
        """The partition of ``clients`` alone: row ``i`` is client ``clients[i]``'s data (what
        a device holding these users has)."""
        batch = self.batch(clients)
        return ClientPartition(batch.ptr, batch.item, self.num_items)

    def to(self, device) -> 'ClientPartition':
        """The partition on ``device``: itself when it is there already (with the
        membership it may have built)."""
        if self.ptr.device == torch.device(device):
            return self
        return ClientPartition(self.ptr.to(device), self.col.to(device), self.num_items,
                               self.rows_sorted)

    def with_rows_sorted(self) -> 'ClientPartition':
        """The partition with each client's items in ascending order (``rows_sorted``):
        its membership lookups search a client's row instead of keys of every
        interaction."""
        col = self.col.cpu().clone()
        _sort_rows(self.ptr.cpu().numpy(), col.numpy())
        return ClientPartition(self.ptr, col.to(self.col.device), self.num_items, True)

    def reduce(self, values: Tensor, reduce: str = 'sum') -> Tensor:
        """Reduces per-interaction ``values`` ``[E, ...]`` to per-client ``[C, ...]``.

        ``reduce`` is one of ``'sum'``, ``'mean'``, ``'min'``, ``'max'``; an empty client
        gets 0.
        """
        return segment_csr(values, self.ptr, reduce=reduce)

    def batch(self, clients: Tensor) -> ClientBatch:
        """The interactions of ``clients``, gathered into flat tensors (the partition's own,
        not copies, when ``clients`` are all clients in order)."""
        clients = clients.to(self.ptr.device)
        if clients.numel() == self.num_clients and bool(
                (clients == torch.arange(self.num_clients, device=clients.device)).all()):
            return ClientBatch(clients, self.ptr, self.row, self.col)
        start = self.ptr[clients]
        count = self.ptr[clients + 1] - start
        ptr = torch.zeros(clients.numel() + 1, dtype=torch.long, device=clients.device)
        torch.cumsum(count, 0, out=ptr[1:])
        owner = torch.repeat_interleave(torch.arange(clients.numel(), device=clients.device),
                                        count)
        offset = torch.arange(owner.numel(), device=clients.device) - ptr[owner]
        return ClientBatch(clients, ptr, owner, self.col[start[owner] + offset])

    def contains(self, clients: Tensor, items: Tensor) -> Tensor:
        """Whether ``items[i]`` is among the items of ``clients[i]`` (broadcasting).

        Looks the key ``client * num_items + item`` up in a dense bitmap when
        ``clients x items`` fits in :attr:`DENSE_MEMBERSHIP_LIMIT` bytes, else by binary
        search in the sorted keys (memory linear in the interactions).
        """
        keys = clients * self.num_items + items
        if self.rows_sorted:
            clients, items = torch.broadcast_tensors(clients, items)
            found = np.empty(keys.numel(), np.bool_)
            _row_holds(self.ptr.cpu().numpy(), self.col.cpu().numpy(),
                       clients.reshape(-1).cpu().numpy(), items.reshape(-1).cpu().numpy(),
                       found)
            return torch.from_numpy(found).view(keys.shape).to(keys.device)
        membership = self.membership
        if membership.dtype == torch.bool:
            return membership[keys]
        if membership.numel() == 0:
            return torch.zeros_like(keys, dtype=torch.bool)
        position = torch.searchsorted(membership, keys).clamp_max(membership.numel() - 1)
        return membership[position] == keys

    @property
    def membership(self) -> Tensor:
        """What :meth:`contains` looks keys up in: the dense bitmap of the keys ``client *
        num_items + item`` held, or the sorted keys (built once); with ``rows_sorted``,
        ``col`` itself."""
        if self.rows_sorted:
            return self.col
        if self._membership is None:
            edge_keys = self.row * self.num_items + self.col
            if self.num_clients * self.num_items <= self.DENSE_MEMBERSHIP_LIMIT:
                self._membership = torch.zeros(self.num_clients * self.num_items,
                                               dtype=torch.bool, device=self.col.device)
                self._membership[edge_keys] = True
            elif edge_keys.device.type == 'cpu':
                edge_keys.numpy().sort()  # in place: torch.sort would add E values and E indices
                self._membership = edge_keys
            else:
                self._membership = torch.sort(edge_keys).values
        return self._membership

    def dense_mask(self, clients: Tensor) -> Tensor:
        """``[B, num_items]`` boolean mask of the items of each of ``clients``."""
        batch = self.batch(clients)
        mask = torch.zeros(clients.numel(), self.num_items, dtype=torch.bool,
                           device=self.col.device)
        mask[batch.owner, batch.item] = True
        return mask

    def sample_negatives(self, clients: Tensor, num: int,
                         generator: Optional[torch.Generator] = None,
                         oversample: float = 2.0, streams: Optional[Tensor] = None) -> Tensor:
        """``[B, num]`` distinct items that each of ``clients`` does not hold, uniformly.

        Draws candidates with replacement and keeps, in draw order, the first ``num`` that
        are neither held by the client nor drawn before for it: this is exactly uniform
        sampling without replacement from the client's non-items. From ``generator``, rows
        that run short are drawn again with more candidates. With ``streams`` ``[B, 2]``,
        row ``b``'s candidates are the draws ``(streams[b, 1] << 32) + j``, ``j = 0, 1, ...``
        of the stream :data:`fedgraph.rng.NEGATIVES` of seed ``streams[b, 0]``
        (:func:`fedgraph.rng.below`), as many as it takes.

        Raises:
            ValueError: a client holds more than ``num_items - num`` items.
        """
        clients = clients.to(self.ptr.device)
        if clients.numel() and self.num_items - self.max_degree < num:  # one may lack room
            free = self.num_items - (self.ptr[clients + 1] - self.ptr[clients])
            if int(free.min()) < num:
                worst = int(clients[free.argmin()])
                raise ValueError(f'client {worst} has only {int(free.min())} items it never '
                                 f'interacted with; {num} negatives were asked for')
        membership = self.membership.cpu()
        lookup = (membership.numpy(), _lookup_kind(membership, self.rows_sorted),
                  self.ptr.cpu().numpy())
        out = torch.empty(clients.numel(), num, dtype=torch.long)
        if streams is not None:
            _stream_negatives(clients.cpu().numpy(), streams.cpu().numpy(), self.num_items,
                              *lookup, out.numpy())
            return out.to(self.ptr.device)
        todo = torch.arange(clients.numel())
        width = max(int(num * oversample), num + 8)
        todo_clients = clients.cpu()
        while todo.numel():
            candidates = torch.randint(self.num_items, (todo.numel(), width),
                                       generator=generator, device='cpu')
            fresh = (_first_fresh if candidates.numel() >= self.PARALLEL_CANDIDATES
                     else _first_fresh_serial)
            done = torch.from_numpy(fresh(candidates.numpy(), todo_clients.numpy(),
                                          self.num_items, *lookup, out.numpy(), todo.numpy()))
            todo, todo_clients = todo[~done], todo_clients[~done]
            width *= 2
        return out.to(self.ptr.device)


#: How :func:`_holds` reads a membership: a dense bitmap, sorted keys, sorted rows.
_DENSE, _KEYS, _ROWS = 0, 1, 2


def _lookup_kind(membership: Tensor, rows_sorted: bool) -> int:
    if rows_sorted:
        return _ROWS
    return _DENSE if membership.dtype == torch.bool else _KEYS


@numba.njit(cache=True, nogil=True)
def _holds(membership, kind, ptr, num_items, client, item):
    """Whether :attr:`ClientPartition.membership` holds ``item`` for ``client``: the dense
    bitmap's or the sorted keys' entry ``client * num_items + item``, or ``item`` in the
    client's ascending row of ``col``."""
    if kind == _DENSE:
        return membership[client * num_items + item] != 0
    if kind == _KEYS:
        key = client * num_items + item
        position = np.searchsorted(membership, key)
        return position < membership.size and membership[position] == key
    low, high = ptr[client], ptr[client + 1]
    position = low + np.searchsorted(membership[low:high], item)
    return position < high and membership[position] == item


@numba.njit(cache=True, nogil=True, parallel=True)
def _row_holds(ptr, col, clients, items, found):
    for index in numba.prange(clients.size):
        found[index] = _holds(col, _ROWS, ptr, 0, clients[index], items[index])


@numba.njit(cache=True, nogil=True, parallel=True)
def _sort_rows(ptr, col):
    for row in numba.prange(ptr.size - 1):
        col[ptr[row]:ptr[row + 1]].sort()


@numba.njit(cache=True, nogil=True)
def _keep_if_fresh(out, row, found, candidate):
    """Appends ``candidate`` to ``out[row, :found]`` unless it is there; the new count."""
    for earlier in range(found):
        if out[row, earlier] == candidate:
            return found
    out[row, found] = candidate
    return found + 1


@numba.njit(cache=True, nogil=True)
def _fresh_row(candidates, row, client, num_items, membership, kind, ptr, out, out_row):
    """The first ``out.shape[1]`` of ``candidates[row]`` that ``client`` does not hold and
    that are not equal to one before them, written into ``out[out_row]``; whether there
    were that many."""
    found = 0
    for position in range(candidates.shape[1]):
        if found == out.shape[1]:
            break
        candidate = candidates[row, position]
        if not _holds(membership, kind, ptr, num_items, client, candidate):
            found = _keep_if_fresh(out, out_row, found, candidate)
    return found == out.shape[1]


@numba.njit(cache=True, nogil=True, parallel=True)
def _first_fresh(candidates, clients, num_items, membership, kind, ptr, out, rows):
    """:func:`_fresh_row` of every row of ``candidates`` into row ``rows[row]`` of ``out``,
    rows in parallel; whether each row had enough (a row that had not is drawn again)."""
    done = np.zeros(candidates.shape[0], np.bool_)
    for row in numba.prange(candidates.shape[0]):
        done[row] = _fresh_row(candidates, row, clients[row], num_items, membership, kind,
                               ptr, out, rows[row])
    return done


@numba.njit(cache=True, nogil=True)
def _first_fresh_serial(candidates, clients, num_items, membership, kind, ptr, out, rows):
    """:func:`_first_fresh` in this thread alone: for few candidates, where starting the
    parallel threads costs more than the work (and far more on a busy machine)."""
    done = np.zeros(candidates.shape[0], np.bool_)
    for row in range(candidates.shape[0]):
        done[row] = _fresh_row(candidates, row, clients[row], num_items, membership, kind,
                               ptr, out, rows[row])
    return done


@numba.njit(cache=True, nogil=True, parallel=True)
def _stream_negatives(clients, streams, num_items, membership, kind, ptr, out):
    """:meth:`ClientPartition.sample_negatives` from counter-based streams: row by row, the
    first ``out.shape[1]`` draws that the row's client does not hold and that were not drawn
    before."""
    for row in numba.prange(clients.size):
        found, attempt = 0, 0
        while found < out.shape[1]:
            candidate = rng.below(streams[row, 0], rng.NEGATIVES,
                                  (streams[row, 1] << 32) + attempt, num_items)
            attempt += 1
            if not _holds(membership, kind, ptr, num_items, clients[row], candidate):
                found = _keep_if_fresh(out, row, found, candidate)
