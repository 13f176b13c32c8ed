"""Augmented views of a collaborative graph, described without copying it, and the rows of
their normalized adjacency.

An augmentation that drops clients and adds pseudo-items (:mod:`fedgraph.nn.augment`) makes
a graph that differs from the server's in a few of its nodes: a :class:`GraphView` holds
which users it keeps and the edges it adds, and reads everything else from the graph. A
contrastive view then needs its normalized adjacency only at the rows that the loss's
K-hop neighbourhoods reach (:meth:`FederatedGNN.view_rows
<fedgraph.nn.gnn.FederatedGNN.view_rows>`); :meth:`GraphView.rows` builds those rows
straight from the graph's own adjacency, so a view costs what its rows hold, not a copy of
the graph, a partition of it and an adjacency of its own.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Optional, Tuple

import numba
import numpy as np
import torch
from torch import Tensor

from fedgraph.data.partition import ClientPartition
from fedgraph.nn.gnn import CollaborativeGraph, sparse_csr, transpose_entries


def _no_edges() -> Tensor:
    return torch.empty(2, 0, dtype=torch.long)


@dataclass
class GraphView:
    """A view of the graph ``base``: its edges of the users ``kept`` (all users when
    ``None``), followed by the ``extra`` edges ``[2, P]`` (of kept users).

    Attributes:
        base: the graph the view is made from.
        kept: ``[num_users]`` whether each user is in the view, or ``None``.
        extra: ``[2, P]`` ``(user, item)`` edges the view adds.
        partition: the users' item sets in ``base``, if the caller holds them (an
            augmentation that needs them builds them otherwise).
    """
    base: CollaborativeGraph
    kept: Optional[Tensor] = None
    extra: Tensor = field(default_factory=_no_edges)
    partition: Optional[ClientPartition] = field(default=None, repr=False)
    _built: Optional['_ViewStructure'] = field(default=None, init=False, repr=False,
                                               compare=False)

    @property
    def num_users(self) -> int:
        return self.base.num_users

    @property
    def num_items(self) -> int:
        return self.base.num_items

    def replace(self, kept: Optional[Tensor] = None,
                extra: Optional[Tensor] = None) -> 'GraphView':
        """This view with other ``kept`` users or ``extra`` edges (each kept when ``None``)."""
        return GraphView(self.base, self.kept if kept is None else kept,
                         self.extra if extra is None else extra, self.partition)

    def graph(self) -> CollaborativeGraph:
        """The view as a graph of its own: ``base``'s kept edges, in their order, then
        ``extra``; ``base`` itself when the view keeps it whole."""
        base = self.base
        if self.kept is None and not self.extra.numel():
            return base
        edges = base.edge_index
        if self.kept is not None:
            edges = edges[:, self.kept.to(edges.device)[edges[0]]]
        if self.extra.numel():
            edges = torch.cat([edges, self.extra.to(edges)], dim=1)
        return CollaborativeGraph(edges, base.num_users, base.num_items)

    def user_partition(self) -> Tuple[ClientPartition, Optional[Tensor]]:
        """The item sets of the view's users, and the users that hold any (``None``: every
        user with an item in the partition). Without extra edges these are ``base``'s sets
        (:attr:`partition`, or built from ``base``) and the kept users among their
        holders; else the partition of the view's own edges."""
        if self.extra.numel():
            graph = self.graph()
            return ClientPartition.from_edge_index(graph.edge_index, graph.num_users,
                                                   graph.num_items), None
        partition = self.base.item_sets() if self.partition is None else self.partition
        holds = partition.degree > 0
        if self.kept is not None:
            holds &= self.kept
        return partition, torch.nonzero(holds).view(-1)

    def _structure(self) -> '_ViewStructure':
        """What :meth:`rows` reads besides ``base``'s adjacency, built on the first call
        and kept: the kept users, the extra edges grouped by user and by item, and the
        view's degrees."""
        if self._built is None:
            base = self.base
            num_users = base.num_users
            crow, col = base.neighbours()
            kept = (torch.ones(num_users, dtype=torch.bool) if self.kept is None
                    else self.kept.cpu())
            extra = self.extra.cpu().long()
            offsets = [torch.zeros(count + 1, dtype=torch.long)
                       for count in (num_users, base.num_items)]
            for end, out in zip(extra, offsets):
                torch.cumsum(torch.bincount(end, minlength=out.numel() - 1), 0, out=out[1:])
            others = [torch.empty(extra.size(1), dtype=torch.long) for _ in range(2)]
            _group_by_user(extra[0].numpy(), extra[1].numpy(), offsets[0].numpy(),
                           others[0].numpy())
            transpose_entries(offsets[0].numpy(), others[0].numpy(), None,
                              offsets[1].numpy(), others[1].numpy(), None)
            degree = (crow[1:] - crow[:-1]).long()
            degree[:num_users] += offsets[0][1:] - offsets[0][:-1]
            degree[:num_users] *= kept
            degree[num_users:] += offsets[1][1:] - offsets[1][:-1]
            dropped = torch.nonzero(~kept).view(-1)
            if dropped.numel():
                degree[num_users:] -= torch.from_numpy(_items_of(
                    crow.numpy(), col.numpy(), num_users, base.num_items, dropped.numpy()))
            self._built = _ViewStructure(kept, offsets[0], others[0], offsets[1], others[1],
                                         degree)
        return self._built

    def rows(self, users: Tensor, items: Tensor,
             dtype: Optional[torch.dtype] = None) -> Tuple[Tensor, Tensor]:
        """The rows ``users`` and ``items`` of the view's normalized adjacency
        :math:`\\hat A = D^{-1/2} A D^{-1/2}` (its degrees :math:`D` the view's), in the order
        given, as two sparse CSR matrices in ``dtype``: ``[len(users), num_items]`` over item
        ids and ``[len(items), num_users]`` over user ids (the graph is bipartite).

        Each row holds the entries :meth:`CollaborativeGraph.normalized_adjacency` of
        :meth:`graph` holds, in the same order: a user's are its edges in ``base``'s order,
        then its extra ones; an item's are its users in increasing order. They are read
        from ``base``'s adjacency, which is built once and kept.
        """
        base, num_users = self.base, self.base.num_users
        graph, kept, by_user, by_item, inverse = self._kernel_inputs(dtype)
        col_dtype = torch.from_numpy(graph[1][:0]).dtype
        users, items = users.cpu().long(), items.cpu().long()
        matrices = []
        for rows, extra, width in ((users, by_user, base.num_items),
                                   (items + num_users, by_item, num_users)):
            counts = np.empty(rows.numel(), np.int64)
            _count_rows(*graph, num_users, kept, extra[0], rows.numpy(), counts)
            out_crow = torch.zeros(rows.numel() + 1, dtype=torch.long)
            torch.cumsum(torch.from_numpy(counts), 0, out=out_crow[1:])
            total = int(out_crow[-1])
            out_col = torch.empty(total, dtype=col_dtype)
            values = torch.empty(total, dtype=inverse.dtype)
            _fill_rows(*graph, num_users, kept, *extra, inverse.numpy(), rows.numpy(),
                       out_crow.numpy(), out_col.numpy(), values.numpy())
            matrices.append(sparse_csr(out_crow.to(col_dtype), out_col, values,
                                       (rows.numel(), width)))
        return matrices[0], matrices[1]

    def item_product(self, items: Tensor, user: Tensor) -> Tensor:
        """``A[items] @ user`` for the view's normalized adjacency ``A``: the items' rows
        (as :meth:`rows` gives them, in the same order) times the user table ``[U, d]``,
        without building the rows (an item's row is its users: the items a round reads
        hold most of the graph's edges)."""
        graph, kept, _, by_item, inverse = self._kernel_inputs(user.dtype)
        out = torch.zeros(items.numel(), user.size(1), dtype=user.dtype)
        _item_product(*graph, self.num_users, kept, *by_item, inverse.numpy(),
                      items.cpu().long().numpy(), user.detach().cpu().numpy(), out.numpy())
        return out.to(user.device)

    def add_item_gradient(self, items: Tensor, grad: Tensor, into: Tensor) -> None:
        """``into += A[items]^T grad``: the gradient of :meth:`item_product` in the user
        table, added in place, each user's from its own row (no transposed copy)."""
        graph, kept, by_user, _, inverse = self._kernel_inputs(grad.dtype)
        position = torch.full((self.num_items,), -1, dtype=torch.long)
        position[items.cpu()] = torch.arange(items.numel())
        target = into if into.device.type == 'cpu' else torch.zeros(into.shape,
                                                                    dtype=into.dtype)
        _add_item_gradient(*graph, self.num_users, kept, *by_user, inverse.numpy(),
                           position.numpy(), grad.detach().cpu().numpy(), target.numpy())
        if target is not into:
            into += target.to(into.device)

    def _kernel_inputs(self, dtype: Optional[torch.dtype]):
        """What the row kernels read, as arrays: ``base``'s adjacency (row offsets and
        columns), the kept users, the extra edges by user and by item, and the view's
        :math:`D^{-1/2}` in ``dtype`` (default: the default dtype)."""
        crow, col = self.base.neighbours()
        built = self._structure()
        inverse = built.degree.to(dtype or torch.get_default_dtype()).rsqrt()
        return ((crow.numpy(), col.numpy()), built.kept.numpy(),
                (built.user_offsets.numpy(), built.user_items.numpy()),
                (built.item_offsets.numpy(), built.item_users.numpy()), inverse)


class _ViewStructure(NamedTuple):
    """A view's kept users ``[U]``, its extra edges by user (offsets ``[U + 1]``, items)
    and by item (offsets ``[I + 1]``, users), and its degrees ``[U + I]``."""
    kept: Tensor
    user_offsets: Tensor
    user_items: Tensor
    item_offsets: Tensor
    item_users: Tensor
    degree: Tensor


@numba.njit(cache=True, nogil=True)
def _group_by_user(user, item, user_offsets, user_items):
    """Groups the edges ``(user[e], item[e])`` by user into ``user_items``, in edge order
    within a group (a counting sort into the groups of ``user_offsets``)."""
    filled = user_offsets[:-1].copy()
    for edge in range(user.size):
        user_items[filled[user[edge]]] = item[edge]
        filled[user[edge]] += 1


@numba.njit(cache=True, nogil=True)
def _items_of(crow, col, num_users, num_items, users):
    """``[num_items]`` how many of ``users``' adjacency entries fall on each item."""
    counts = np.zeros(num_items, np.int64)
    for user in users:
        for entry in range(crow[user], crow[user + 1]):
            counts[col[entry] - num_users] += 1
    return counts


@numba.njit(cache=True, nogil=True)
def _row_neighbours(crow, col, num_users, kept, offsets, others, node, out):
    """Writes the neighbours of ``node`` in the view into ``out`` (from its start) in the
    order of its row, and returns how many: a kept user's items (node ids) from ``base``'s
    adjacency, then its extra items; an item's kept users from the adjacency merged in
    increasing order with its extra users (``offsets``, ``others``: the extra edges by
    user or by item, as the node is)."""
    count = 0
    if node < num_users:
        if kept[node]:
            for entry in range(crow[node], crow[node + 1]):
                out[count] = col[entry]
                count += 1
            for extra in range(offsets[node], offsets[node + 1]):
                out[count] = num_users + others[extra]
                count += 1
        return count
    item = node - num_users
    extra, end = offsets[item], offsets[item + 1]
    for entry in range(crow[node], crow[node + 1]):
        user = col[entry]
        if not kept[user]:
            continue
        while extra < end and others[extra] < user:
            out[count] = others[extra]
            count += 1
            extra += 1
        out[count] = user
        count += 1
    while extra < end:
        out[count] = others[extra]
        count += 1
        extra += 1
    return count


@numba.njit(cache=True, nogil=True)
def _row_length(crow, col, num_users, kept, offsets, node):
    """The number of :func:`_row_neighbours` of ``node``."""
    if node < num_users:
        return crow[node + 1] - crow[node] + offsets[node + 1] - offsets[node] if kept[node] else 0
    count = offsets[node - num_users + 1] - offsets[node - num_users]
    for entry in range(crow[node], crow[node + 1]):
        if kept[col[entry]]:
            count += 1
    return count


@numba.njit(cache=True, nogil=True, parallel=True)
def _count_rows(crow, col, num_users, kept, offsets, rows, counts):
    """The number of entries of each of ``rows`` (node ids) in the view."""
    for position in numba.prange(rows.size):
        counts[position] = _row_length(crow, col, num_users, kept, offsets, rows[position])


@numba.njit(cache=True, nogil=True, parallel=True)
def _fill_rows(crow, col, num_users, kept, offsets, others, inverse, rows, out_crow,
               out_col, values):
    """Writes the view's entries of ``rows`` (node ids) into ``out_col`` (item ids for
    users, user ids for items) and ``values`` (``inverse[row] * inverse[node]``), each row
    its :func:`_row_neighbours`."""
    for position in numba.prange(rows.size):
        row, start = rows[position], out_crow[position]
        count = _row_neighbours(crow, col, num_users, kept, offsets, others, row,
                                out_col[start:])
        shift = num_users if row < num_users else 0
        for entry in range(start, start + count):
            values[entry] = inverse[row] * inverse[out_col[entry]]
            out_col[entry] -= shift


@numba.njit(cache=True, nogil=True, parallel=True)
def _item_product(crow, col, num_users, kept, offsets, others, inverse, items, user, out):
    """``out[p] = sum_u inverse[i] inverse[u] user[u]`` over the neighbours ``u`` of item
    ``i = items[p]`` (:func:`_row_neighbours`, in their order): the view's item rows times
    the user table, rows in parallel."""
    for position in numba.prange(items.size):
        node = num_users + items[position]
        neighbours = np.empty(_row_length(crow, col, num_users, kept, offsets, node),
                              col.dtype)
        _row_neighbours(crow, col, num_users, kept, offsets, others, node, neighbours)
        for neighbour in neighbours:
            weight = inverse[node] * inverse[neighbour]
            for dim in range(user.shape[1]):
                out[position, dim] += weight * user[neighbour, dim]


@numba.njit(cache=True, nogil=True, parallel=True)
def _add_item_gradient(crow, col, num_users, kept, offsets, others, inverse, position,
                       grad, into):
    """``into[u] += sum_i inverse[u] inverse[i] grad[position[i]]`` over the items ``i``
    of each user ``u`` in the view (:func:`_row_neighbours`) that have a position (``-1``:
    none): the transpose of :func:`_item_product`, users in parallel."""
    for user in numba.prange(num_users):
        if not kept[user]:
            continue
        neighbours = np.empty(_row_length(crow, col, num_users, kept, offsets, user),
                              col.dtype)
        _row_neighbours(crow, col, num_users, kept, offsets, others, user, neighbours)
        for node in neighbours:
            row = position[node - num_users]
            if row >= 0:
                weight = inverse[user] * inverse[node]
                for dim in range(grad.shape[1]):
                    into[user, dim] += weight * grad[row, dim]
