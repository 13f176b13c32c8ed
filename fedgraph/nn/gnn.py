"""The federated GNN layer: LightGCN propagation over the clients' collaborative graph."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

import numba
import torch
from torch import Tensor, nn
from torch_geometric.utils import to_torch_csr_tensor

from fedgraph.data.partition import ClientPartition


def csr_matrix(edge_index: Tensor, weight: Tensor, size: Tuple[int, int]) -> Tensor:
    """The sparse CSR matrix with ``weight[e]`` at ``edge_index[:, e]`` (PyG's
    ``to_torch_csr_tensor``, without torch's note that sparse CSR support is in beta)."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', UserWarning)
        return to_torch_csr_tensor(edge_index, weight, size)


def sparse_csr(crow: Tensor, col: Tensor, values: Tensor, size: Tuple[int, int]) -> Tensor:
    """The sparse CSR matrix of ``(crow, col, values)``, as ``torch.sparse_csr_tensor``
    without torch's notes that sparse CSR support is in beta and that invariants go
    unchecked."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, size)


def csr_rows(matrix: Tensor, rows: Tensor) -> Tensor:
    """``matrix[rows]`` of a sparse CSR ``matrix`` as a sparse CSR matrix of
    ``rows.numel()`` rows (torch has no row ``index_select`` for CSR): the rows' segments
    gathered, in ``O(rows + their entries)``."""
    crow = matrix.crow_indices()
    start, end = crow[rows].long(), crow[rows + 1].long()
    counts = end - start
    out_crow = torch.zeros(rows.numel() + 1, dtype=crow.dtype, device=crow.device)
    torch.cumsum(counts, 0, out=out_crow[1:])
    total = int(out_crow[-1])
    # Entry e of the result is entry start[r] + (e - out_crow[r]) of the matrix, r its row.
    shift = start - out_crow[:-1].long()
    position = torch.arange(total, device=crow.device) + torch.repeat_interleave(
        shift, counts, output_size=total)
    return sparse_csr(out_crow, matrix.col_indices()[position], matrix.values()[position],
                      (rows.numel(), matrix.size(1)))


def csr_span(matrix: Tensor, low: int, high: int) -> Tensor:
    """Rows ``low`` to ``high`` (included) of a sparse CSR ``matrix``: a view of its
    entries, nothing copied but the row offsets."""
    crow = matrix.crow_indices()
    first, last = int(crow[low]), int(crow[high + 1])
    return sparse_csr(crow[low:high + 2] - first, matrix.col_indices()[first:last],
                      matrix.values()[first:last], (high - low + 1, matrix.size(1)))


def _covering_rows(matrix: Tensor, rows: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
    """The rows of a sparse CSR ``matrix`` that cover ``rows``, and where ``rows`` sit in
    them: the view of the rows' whole span when they fill at least half of it
    (:func:`csr_span`; a round's items, most of the catalogue), else the rows gathered
    (:func:`csr_rows`) and ``None``."""
    if rows.numel():
        low, high = int(rows.min()), int(rows.max())
        if high - low + 1 <= 2 * rows.numel():
            return csr_span(matrix, low, high), rows - low
    return csr_rows(matrix, rows), None


def _union(node_sets: List[Tensor], count: int) -> Tensor:
    """The ascending union of the sets of node ids ``node_sets`` (below ``count``, on one
    device), marked in place (:func:`_mark`)."""
    marked = torch.zeros(count, dtype=torch.bool, device=node_sets[0].device)
    for nodes in node_sets:
        _mark(nodes, marked)
    return marked.nonzero().view(-1)


def _columns_at(matrix: Tensor, part: Tensor) -> Tensor:
    """``matrix`` (sparse CSR) with its columns, ids among the ascending ``part``, renumbered
    to their positions in ``part``: the matrix that reads only ``part``'s rows."""
    position = torch.zeros(matrix.size(1), dtype=matrix.col_indices().dtype)
    position[part] = torch.arange(part.numel(), dtype=position.dtype)
    return sparse_csr(matrix.crow_indices(), position[matrix.col_indices()], matrix.values(),
                      (matrix.size(0), part.numel()))


def _at(values: Tensor, position: Optional[Tensor]) -> Tensor:
    """``values[position]``, or ``values`` for ``None``."""
    return values if position is None else values[position]


@dataclass
class CollaborativeGraph:
    """The bipartite user-item graph a server holds: one edge per item a client reported.

    The server builds it only from what clients upload (their item sets, blurred with
    pseudo-items), never from raw interactions; see :mod:`fedgraph.nn.augment` for the views
    the privacy mechanisms produce from it.

    Attributes:
        edge_index: ``[2, E]`` ``(user, item)`` pairs, of any integer type (the
            enrollment graph's are 32-bit while the ids fit).
        num_users, num_items: the node counts.
    """
    edge_index: Tensor
    num_users: int
    num_items: int
    _adjacency: Optional[Tensor] = field(default=None, init=False, repr=False, compare=False)

    @property
    def num_edges(self) -> int:
        return self.edge_index.size(1)

    def normalized_adjacency(self, device: Optional[torch.device] = None,
                             dtype: Optional[torch.dtype] = None) -> Tensor:
        """:math:`\\hat A = D^{-1/2} A D^{-1/2}` of the undirected graph over nodes
        ``[users; items]`` as a sparse CSR tensor on ``device`` in ``dtype`` (default: the
        default dtype): what PyG's ``LGConv`` normalizes to (``gcn_norm`` without
        self-loops; a repeated edge counts twice, an isolated node has a row of zeros),
        built on the first call and kept. Propagating with it is a sparse matrix product,
        several times faster on CPU than message passing over the edge list, which
        normalizes again at every layer.

        Built straight from the bipartite edges: the weight of edge :math:`(u, i)` is
        :math:`1 / \\sqrt{d_u d_i}`; the users' rows hold their edges in the order of
        :attr:`edge_index` sorted by user, the items' rows the same edges sorted by item.
        Indices are 32-bit while the nodes fit, so the matrix takes 16 bytes an edge
        (both directions), and two counting sorts write it in place: building it takes no
        memory but its own. It is built on the CPU and moved to ``device``.
        """
        device = torch.device(device if device is not None else 'cpu')
        dtype = dtype or torch.get_default_dtype()
        cached = self._adjacency
        if cached is None or cached.device != device or cached.dtype != dtype:
            self._adjacency = None  # the old one's memory is free before the new one's
            self._adjacency = self._build_adjacency(device, dtype)
        return self._adjacency

    def _build_adjacency(self, device: torch.device, dtype: torch.dtype) -> Tensor:
        num_nodes = self.num_users + self.num_items
        index = torch.int32 if num_nodes < 2 ** 31 and self.num_edges < 2 ** 30 else torch.long
        user, item = self.edge_index.cpu()
        degree = torch.cat([torch.bincount(user, minlength=self.num_users),
                            torch.bincount(item, minlength=self.num_items)])
        crow = torch.zeros(num_nodes + 1, dtype=index)
        torch.cumsum(degree, 0, out=crow[1:])
        col = torch.empty(2 * self.num_edges, dtype=index)
        values = torch.empty(2 * self.num_edges, dtype=dtype)
        _fill_adjacency(user.numpy(), item.numpy(), self.num_users,
                        degree.to(dtype).rsqrt().numpy(), crow.numpy(), col.numpy(),
                        values.numpy())
        return sparse_csr(crow.to(device), col.to(device), values.to(device),
                          (num_nodes, num_nodes))

    def neighbours(self) -> Tuple[Tensor, Tensor]:
        """The row offsets and column indices (node ids) of
        :meth:`normalized_adjacency`, on the CPU, in whichever device and dtype it was
        built (the default dtype on the CPU when it was not)."""
        adjacency = self._adjacency
        if adjacency is None:
            adjacency = self.normalized_adjacency()
        return adjacency.crow_indices().cpu(), adjacency.col_indices().cpu()

    def item_sets(self) -> ClientPartition:
        """Each user's items as a client partition whose rows are ascending (its
        membership lookups search a user's row, :meth:`ClientPartition.with_rows_sorted
        <fedgraph.data.partition.ClientPartition.with_rows_sorted>`): read from the
        adjacency's users' rows once it is built, else from the edges grouped by user."""
        if self._adjacency is None:
            partition = ClientPartition.from_edge_index(self.edge_index, self.num_users,
                                                        self.num_items)
        else:
            crow, col = self.neighbours()
            end = int(crow[self.num_users])
            partition = ClientPartition(crow[:self.num_users + 1].long(),
                                        col[:end] - self.num_users, self.num_items)
        return partition.with_rows_sorted()

    def homogeneous_edge_index(self) -> Tensor:
        """``[2, 2E]`` undirected edges over nodes ``[users; items]`` (item ``i`` is node
        ``num_users + i``), the layout LightGCN propagates on."""
        user, item = self.edge_index
        item = item + self.num_users
        return torch.stack([torch.cat([user, item]), torch.cat([item, user])])


@numba.njit(cache=True, nogil=True)
def _fill_adjacency(user, item, num_users, inverse, crow, col, values):
    """Writes the entries of :meth:`CollaborativeGraph.normalized_adjacency` into ``col``
    and ``values`` by two counting sorts, in no memory but the result's: edge ``(u, i)``,
    of weight ``inverse[u] * inverse[U + i]``, goes to user ``u``'s row in edge order; then
    the users' rows, in order, give each entry to its item's row (what a stable sort by
    user, then one by item, gives)."""
    filled = crow[:-1].copy()  # the next free entry of each row
    for edge in range(user.size):
        row, node = user[edge], num_users + item[edge]
        position = filled[row]
        filled[row] += 1
        col[position] = node
        values[position] = inverse[row] * inverse[node]
    # The users' rows (entries before the items') transposed into the items' rows.
    transpose_entries(crow[:num_users + 1], col, values, crow, col, values)


def _mark(nodes: Tensor, marked: Tensor) -> None:
    """Sets ``marked[nodes]``: on the CPU in place, where indexing with ``nodes`` would
    first copy them to 64 bits (a neighbourhood's entries: most of the graph's)."""
    if nodes.device.type == 'cpu':
        _mark_cpu(nodes.numpy(), marked.numpy())
    else:
        marked[nodes] = True


@numba.njit(cache=True, nogil=True)
def _mark_cpu(nodes, marked):
    for node in nodes:
        marked[node] = True


def transpose_csr(matrix: Tensor) -> Tensor:
    """The transpose of a sparse CSR ``matrix`` as a sparse CSR matrix, by one counting
    sort of its entries (a row's entries in the order of the rows they come from), where
    converting PyTorch's transposed view to CSR sorts them."""
    crow, col = matrix.crow_indices().cpu(), matrix.col_indices().cpu()
    out_crow = torch.zeros(matrix.size(1) + 1, dtype=crow.dtype)
    torch.cumsum(torch.bincount(col, minlength=matrix.size(1)), 0, out=out_crow[1:])
    out_col = torch.empty_like(col)
    values = matrix.values().cpu()
    out_values = torch.empty_like(values)
    transpose_entries(crow.numpy(), col.numpy(), values.numpy(), out_crow.numpy(),
                      out_col.numpy(), out_values.numpy())
    return sparse_csr(out_crow, out_col, out_values,
                      (matrix.size(1), matrix.size(0))).to(matrix.device)


@numba.njit(cache=True, nogil=True)
def transpose_entries(crow, col, values, out_crow, out_col, out_values):
    """A counting sort that moves each entry of the CSR rows ``(crow, col, values)`` to
    the row of its column: entry ``(r, c)`` goes to the next free place of row ``c`` of
    ``out_crow`` as column ``r``, the rows taken in order (so each output row lists its
    columns ascending, as a stable sort by column leaves them). ``values`` and
    ``out_values`` may both be ``None`` (a pattern without values). The output may share
    arrays with the input where the entries read and the places written do not overlap."""
    filled = out_crow[:-1].copy()
    for row in range(crow.size - 1):
        for entry in range(crow[row], crow[row + 1]):
            position = filled[col[entry]]
            filled[col[entry]] += 1
            out_col[position] = row
            if values is not None:
                out_values[position] = values[entry]


class _SparseProduct(torch.autograd.Function):
    """:math:`M x` for a sparse CSR :math:`M`, whose gradient :math:`M^\\top g` is a
    product with :math:`M` itself when it is symmetric (the normalized adjacency of an
    undirected graph), else with :func:`transpose_csr`'s transpose, built in the backward
    pass: PyTorch's sparse product would sort a transposed copy of every entry there."""

    @staticmethod
    def forward(ctx, matrix: Tensor, x: Tensor, symmetric: bool) -> Tensor:
        ctx.matrix, ctx.symmetric = matrix, symmetric
        return matrix @ x

    @staticmethod
    def backward(ctx, grad: Tensor):
        transposed = ctx.matrix if ctx.symmetric else transpose_csr(ctx.matrix)
        return None, transposed @ grad, None


def sparse_product(matrix: Tensor, x: Tensor, symmetric: bool = False) -> Tensor:
    """``matrix @ x`` for a sparse CSR ``matrix`` (``symmetric``: equal to its transpose,
    as :meth:`CollaborativeGraph.normalized_adjacency` is), differentiable in ``x``
    (:class:`_SparseProduct`)."""
    if x.requires_grad and torch.is_grad_enabled():
        return _SparseProduct.apply(matrix, x, symmetric)
    return matrix @ x


class _ReadUsers(torch.autograd.Function):
    """``(A[items] @ user, user[users])`` for a view's adjacency ``A``, whose item rows are
    never built (:meth:`GraphView.item_product <fedgraph.nn.views.GraphView.item_product>`).
    The gradient in ``user``, :math:`A[\\mathrm{items}]^\\top g + \\sum_j e_{u_j} g_j`, is
    added into ``gradient`` in place (:meth:`GraphView.add_item_gradient
    <fedgraph.nn.views.GraphView.add_item_gradient>` and an ``index_add_``): a buffer the
    caller holds, ``user`` then outside autograd and ``anchor``, a scalar that requires
    grad, putting the reads on the graph (its own gradient is none; the buffer is filled by
    a whole ``backward()``, not by ``torch.autograd.grad`` of other inputs alone); or,
    without one, a tensor the backward pass makes and returns as ``user``'s gradient."""

    @staticmethod
    def forward(ctx, anchor: Optional[Tensor], user: Tensor, users: Tensor, view,
                items: Tensor, gradient: Optional[Tensor]):
        ctx.users, ctx.view, ctx.items, ctx.gradient = users, view, items, gradient
        ctx.shape, ctx.dtype, ctx.device = user.shape, user.dtype, user.device
        return view.item_product(items, user), user[users]

    @staticmethod
    def backward(ctx, product_grad: Tensor, rows_grad: Tensor):
        into = ctx.gradient
        if into is None:
            into = torch.zeros(ctx.shape, dtype=ctx.dtype, device=ctx.device)
        into.index_add_(0, ctx.users.to(into.device), rows_grad.to(into.dtype))
        ctx.view.add_item_gradient(ctx.items, product_grad, into)
        owned = ctx.gradient is None
        ctx.view = ctx.gradient = None  # the graph may outlive the pass (it runs once)
        return None, (into if owned else None), None, None, None, None


def _read_users(user: Tensor, users: Tensor, view, items: Tensor,
                gradient: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """``(A[items] @ user, user[users])`` of :class:`_ReadUsers`, its gradient added into
    ``gradient`` or, without one, ``user``'s through autograd."""
    if gradient is None:
        return _ReadUsers.apply(None, user, users, view, items, None)
    anchor = torch.zeros((), device=user.device, requires_grad=True)
    return _ReadUsers.apply(anchor, user.detach(), users, view, items, gradient)


class FederatedGNN(nn.Module):
    """LightGCN propagation (He et al., SIGIR 2020) over a :class:`CollaborativeGraph`:

    .. math::
        X^{(k+1)} = D^{-1/2} A D^{-1/2} X^{(k)}, \\qquad
        \\bar X = \\frac{1}{K + 1} \\sum_{k=0}^{K} X^{(k)},

    on the stacked user and item embeddings :math:`X^{(0)} = [U; E]`, each layer a product
    with the graph's :meth:`CollaborativeGraph.normalized_adjacency` (what PyG's ``LGConv``
    computes, without normalizing again at every layer). ``num_layers = 0`` returns the
    embeddings unchanged: the PFedRec / FedMF case.

    An optional ``perturb`` callable is applied to each layer's output (SimGCL's noise for
    contrastive views, see :class:`~fedgraph.nn.augment.SimGCLNoise`).
    """

    #: :meth:`context_rows` propagates a layer over every node once the rows it needs
    #: would cover this share of them: gathering the rows then costs more than it saves.
    FULL_SHARE = 0.5

    def __init__(self, num_layers: int = 2):
        super().__init__()
        if num_layers < 0:
            raise ValueError(f'num_layers must be >= 0, got {num_layers}')
        self.num_layers = num_layers

    def forward(self, user: Tensor, item: Tensor, graph: Optional[CollaborativeGraph],
                perturb: Optional[Callable[[Tensor], Tensor]] = None) -> Tuple[Tensor, Tensor]:
        """``(user_out, item_out)``: the layer means of the propagated embeddings."""
        if self.num_layers == 0 or graph is None:
            return user, item
        x = torch.cat([user, item])
        adjacency = graph.normalized_adjacency(x.device, x.dtype)
        total = x
        for _ in range(self.num_layers):
            x = sparse_product(adjacency, x, symmetric=True)
            if perturb is not None:
                x = perturb(x)
            total = total + x
        total = total / (self.num_layers + 1)
        return total[:user.size(0)], total[user.size(0):]

    def view_rows(self, user: Tensor, item: Tensor, view, users: Tensor, items: Tensor,
                  perturb=None, user_gradient: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """:meth:`forward` over the graph of ``view`` (a
        :class:`~fedgraph.nn.views.GraphView`), at the rows ``users`` and ``items`` only:
        what a contrastive loss on those rows reads, differentiable in ``user`` and ``item``.

        As in :meth:`context_rows`, layer :math:`k` is needed at the nodes :math:`F_k`, with
        :math:`F_K` the wanted rows and :math:`F_{k-1} = F_k \\cup N(F_k)`, and
        :math:`X^{(k)}[F_k] = \\hat A[F_k] \\, X^{(k-1)}`; the graph being bipartite, a
        user's row reads items only and an item's users only, so each layer is the product
        of the view's users' rows with the items' part of the layer below and of its items'
        rows with the users' part (:meth:`GraphView.rows <fedgraph.nn.views.GraphView.rows>`,
        never the view's whole adjacency). ``perturb`` (a
        :class:`~fedgraph.nn.augment.SimGCLNoise`) perturbs each layer's rows with the draws
        it takes for a whole layer (:meth:`SimGCLNoise.rows
        <fedgraph.nn.augment.SimGCLNoise.rows>`), so the rows equal :meth:`forward`'s.

        With ``user_gradient`` (a tensor of ``user``'s shape), ``user`` stays outside
        autograd: the backward pass adds the gradient in ``user`` to ``user_gradient`` in
        place (:class:`_ReadUsers`), where autograd would make tensors of its size for
        each read of it (every client's embedding, in a contrastive view).
        """
        no_items = items.new_empty(0)
        if self.num_layers == 0:
            return _read_users(user, users, view, no_items, user_gradient)[1], item[items]
        num_users, num_items = user.size(0), item.size(0)
        # parts[k - 1]: F_k's users and items, ascending, and their rows of the view (the
        # first layer's items' rows, most of the graph, are never built).
        parts = []
        part_users, part_items = torch.unique(users.cpu()), torch.unique(items.cpu())
        for layer in range(self.num_layers, 0, -1):
            user_rows, item_rows = view.rows(part_users, part_items if layer > 1 else
                                             no_items.cpu(), user.dtype)
            parts.insert(0, (part_users, part_items, user_rows, item_rows))
            if layer > 1:
                part_users = _union([part_users, item_rows.col_indices()], num_users)
                part_items = _union([part_items, user_rows.col_indices()], num_items)
        device = user.device
        total_items = item[items]
        x_user, x_item, below = user, item, None
        for part_users, part_items, user_rows, item_rows in parts:
            if below is None:
                next_item, total_users = _read_users(user, users, view, part_items,
                                                     user_gradient)
            else:
                user_rows = _columns_at(user_rows, below[1])
                next_item = sparse_product(_columns_at(item_rows, below[0]).to(device),
                                           x_user)
            next_user = sparse_product(user_rows.to(device), x_item)
            if perturb is not None:
                layer = perturb.rows(torch.cat([next_user, next_item]),
                                     torch.cat([part_users, part_items + num_users]),
                                     num_users + num_items)
                next_user, next_item = layer[:part_users.numel()], layer[part_users.numel():]
            total_users = total_users + next_user[
                torch.searchsorted(part_users, users.cpu()).to(device)]
            total_items = total_items + next_item[
                torch.searchsorted(part_items, items.cpu()).to(device)]
            x_user, x_item, below = next_user, next_item, (part_users, part_items)
        return total_users / (self.num_layers + 1), total_items / (self.num_layers + 1)

    @torch.no_grad()
    def context(self, user: Tensor, item: Tensor, graph: Optional[CollaborativeGraph],
                item_offset: Optional[Tensor] = None
                ) -> Tuple[Optional[Tensor], Optional[Tensor]]:
        """What the neighbours add to each node:
        :math:`\\bar X - X^{(0)} / (K + 1) = \\frac{1}{K + 1} \\sum_{k=1}^{K} X^{(k)}`.

        A client's final vectors are ``ego / (K + 1) + context``; with the context held
        fixed during a round, local training updates the ego embeddings exactly as LightGCN's
        gradient through its layer-0 term. ``item_offset`` ``[I, d]`` is added to the first
        layer's item rows :math:`X^{(1)}_I` (what a release of the users' half adds, see
        :meth:`GraphFederatedEngine.release_users
        <fedgraph.federated.graph.GraphFederatedEngine.release_users>`). ``None`` without
        layers or graph.
        """
        if self.num_layers == 0 or graph is None:
            return None, None
        x = torch.cat([user, item])
        adjacency = graph.normalized_adjacency(x.device, x.dtype)
        total = None
        for layer in range(self.num_layers):
            x = adjacency @ x
            if layer == 0 and item_offset is not None:
                x[user.size(0):] += item_offset
            # The sum starts as the first layer itself, read once more by the second
            # layer's product before the second layer is added to it.
            total = x if total is None else total.add_(x)
        total /= self.num_layers + 1
        return total[:user.size(0)], total[user.size(0):]

    @torch.no_grad()
    def context_rows(self, user: Tensor, item: Tensor, graph: CollaborativeGraph,
                     users: Tensor, items: Tensor, item_offset: Optional[Tensor] = None
                     ) -> Tuple[Tensor, Tensor]:
        """:meth:`context` (with its ``item_offset``) at the rows ``users`` and ``items``
        only, from their K-hop neighbourhoods: what a round's clients train with.

        Layer :math:`k` is needed at the nodes :math:`F_k`, with :math:`F_K` the wanted
        rows and :math:`F_{k-1} = F_k \\cup N(F_k)`; then
        :math:`X^{(k)}[F_k] = \\hat A[F_k] \\, X^{(k-1)}`, which reads only rows
        :math:`N(F_k) \\subseteq F_{k-1}`. The same sums as :meth:`context` for those rows;
        a layer whose rows would cover more than :attr:`FULL_SHARE` of the nodes is the
        whole product, as are all the layers below it.
        """
        num_nodes = user.size(0) + item.size(0)
        x = torch.cat([user, item])
        adjacency = graph.normalized_adjacency(x.device, x.dtype)
        targets = torch.cat([users, items + user.size(0)])
        # layers[k - 1]: F_k's parts, each with the adjacency's rows that cover it and
        # where the part sits in them (None for every node); the last layer's parts are
        # the users' and the items' rows.
        layers: List[Optional[List[Tuple[Tensor, Tensor, Optional[Tensor]]]]] = \
            [None] * self.num_layers
        parts = [users, items + user.size(0)]
        for layer in range(self.num_layers - 1, -1, -1):
            if sum(part.numel() for part in parts) > self.FULL_SHARE * num_nodes:
                break
            layers[layer] = [(part, *_covering_rows(adjacency, part)) for part in parts]
            if layer:
                parts = [_union([nodes for part, rows, _ in layers[layer]
                                 for nodes in (part, rows.col_indices())], num_nodes)]
        total = torch.zeros_like(x[targets])
        spare: Optional[Tensor] = None  # the last whole product's input, free once it is done
        # The offset goes on every item row of the first layer: rows outside F_1 are never
        # read, and its last-layer case (K = 1) is the items' targets.
        num_users = user.size(0)
        for layer, blocks in enumerate(layers):
            offset = item_offset if layer == 0 else None
            if blocks is None:
                x, spare = adjacency @ x, x
            elif layer == self.num_layers - 1:  # its parts are the targets
                total += torch.cat([_at(rows @ x, position) for _, rows, position in blocks])
                if offset is not None:
                    total[users.numel():] += offset[items]
                break
            else:
                spread = torch.zeros_like(x) if spare is None else spare.zero_()
                for part, rows, position in blocks:
                    spread[part] = _at(rows @ x, position)
                x, spare = spread, None
            if offset is not None:
                x[num_users:] += offset
            total += x[targets]
        total /= self.num_layers + 1
        return total[:users.numel()], total[users.numel():]
