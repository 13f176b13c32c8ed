"""GPFedRec's graph-guided personalization (Zhang et al., *Graph-guided Personalization for
Federated Recommendation*, KDD 2024), on the vectorized engine and on the reference engine.

A round's clients start from the global item table :math:`G`, train as PFedRec's clients do
(one joint SGD step per mini-batch) with a pull of their whole local table :math:`Q_c`
towards their personalized aggregate :math:`R_c`,

.. math::
    \\mathcal{L}_c = \\mathrm{BCE} + \\rho \\cdot \\mathrm{mean}\\big((Q_c - R_c)^2\\big),

and upload :math:`Q_c`. The server relates the clients by their uploaded tables
(:func:`relation_graph`: a row-normalized neighbour matrix :math:`A`), gives each client
:math:`R_c = (A Q)_c` and publishes :math:`G = \\frac{1}{B} \\sum_c R_c`
(:func:`guided_aggregate`). A client scores with the table it trained last.

Under SGD the pull moves a row the round's mini-batches never touched by a fixed share
per step, :math:`q \\leftarrow q - \\beta (q - r)` with :math:`\\beta = 2 \\rho \\eta_I / (I
d)`, so after the client's :math:`K_c` steps such a row is :math:`r + (1 - \\beta)^{K_c}
(g - r)`: the vectorized engine trains only the rows of the round's samples and writes the
others in that closed form (:func:`dense_tables`); the reference engine trains each
client's whole table. Both hold :math:`Q_c` and :math:`R_c` of every client that has
trained (:class:`ClientTables`): their memory grows with those clients times the items.

Each engine is the two halves of a round: the clients' :meth:`GraphGuidedEngine.local_round`
and the server's :meth:`GraphGuidedEngine.aggregate`, which a deployment runs apart (a node
keeps its users' tables, :class:`GuidedNodeHooks`; the server sends each round's clients
their aggregates with the request).
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fedgraph.federated.engine import FederatedEngine
from fedgraph.federated.local import SGD
from fedgraph.federated.messages import ClientRound, Payload, RoundStats, RowUpload
from fedgraph.federated.node import Node, NodeHooks
from fedgraph.federated.plan import RoundPlan
from fedgraph.federated.reference import ReferenceEngine

#: How the server measures how close two clients' tables are: ``'paper'`` by cosine
#: similarity (the paper's "similar users"), ``'code'`` by cosine distance, as the
#: GPFedRec code's ``pairwise_distances(metric='cosine')`` leaves it (its neighbours are the
#: least similar users).
CLOSENESS = ('paper', 'code')


def closeness_vectors(tables: Tensor, sketch: int = 0, seed: int = 0
                      ) -> Tuple[np.ndarray, np.ndarray, float]:
    """``(x, y, mean)``: float32 vectors of the ``B`` clients' tables, ``x`` to query with and
    ``y`` to search, whose inner products :math:`\\langle x_c, y_j \\rangle` are the cosine
    similarities :math:`\\cos(Q_c, Q_j)` of the tables (exactly, or estimated by a sketch),
    and ``mean`` the exact mean of all :math:`B^2` cosines, :math:`\\lVert \\sum_c Q_c /
    \\lVert Q_c \\rVert \\rVert^2 / B^2`.

    ``sketch = 0``: :math:`x_c = y_c = Q_c / \\lVert Q_c \\rVert`, the unit tables; comparing
    them all costs :math:`B^2 D` multiply-adds.

    ``sketch = m > 0``: each table is the round's mean table plus its deviation, :math:`Q_c
    = \\mu + u_c` with :math:`\\mu = \\frac{1}{B} \\sum_c Q_c`, so that

    .. math::
        \\langle Q_c, Q_j \\rangle = \\lVert \\mu \\rVert^2 + a_c + a_j + \\langle u_c, u_j
        \\rangle, \\qquad a_c = \\langle \\mu, u_c \\rangle = \\langle \\mu, Q_c \\rangle -
        \\lVert \\mu \\rVert^2,

    where :math:`\\lVert \\mu \\rVert^2`, :math:`a_c` and :math:`\\lVert Q_c \\rVert` are
    exact (:math:`O(B D)`) and only the deviations' inner product is estimated, by
    :math:`\\langle z_c, z_j \\rangle` of their sketches :math:`z_c = P u_c = P Q_c - P \\mu`.
    ``tables`` ``[B, I, d]`` are sketched along their rows: :math:`P` is a ``[k, I]``
    Rademacher matrix (entries :math:`\\pm 1 / \\sqrt{k}`, drawn from ``seed``) with
    :math:`k = \\lceil m / d \\rceil`, applied to each of the ``d`` columns of a table, so a
    sketch has :math:`k d \\ge m` coordinates and :math:`E[P^\\top P] = 1` makes the estimate
    unbiased, with a standard deviation of about :math:`\\lVert u_c \\rVert \\lVert u_j
    \\rVert / \\sqrt{k d}` (a ``[B, D]`` input is sketched as ``[B, D, 1]``, ``k = m``). With
    :math:`k \\ge I` (``m`` at least :math:`D`) no projection is drawn: :math:`z_c = u_c`,
    and the estimate is the exact inner product. Then

    .. math::
        x_c = \\frac{[\\lVert \\mu \\rVert^2 + a_c,\\ 1,\\ z_c]}{\\lVert Q_c \\rVert}, \\qquad
        y_j = \\frac{[1,\\ a_j,\\ z_j]}{\\lVert Q_j \\rVert},

    built in :math:`O(B D k)` multiply-adds (a matrix product) and compared in :math:`B^2 (k
    d + 2)`: the cosine of the whole tables is exact up to the sketch's error in the
    deviations' term, small where the round's tables are close to their mean.
    """
    if isinstance(sketch, bool) or not isinstance(sketch, int) or sketch < 0:
        raise ValueError(f'the sketch of the tables needs a whole number of coordinates >= 0 '
                         f'(0: exact closeness), got {sketch!r}')
    tables = tables.detach()
    if not tables.is_floating_point():
        tables = tables.float()
    size = tables.size(0)
    if size == 0:
        raise ValueError('the user-relation graph needs at least one table')
    if not sketch:
        unit = F.normalize(tables.reshape(size, -1).float(), dim=1).cpu().numpy()
        total = unit.sum(0, dtype=np.float64)
        return unit, unit, float(total @ total) / size ** 2
    grid = tables.reshape(size, tables.size(1), -1)  # [B, I, d] (d = 1 for a [B, D] input)
    rows, width = grid.shape[1:]
    mean = grid.mean(0)
    rank = -(-sketch // width)
    if rank < rows:
        generator = torch.Generator().manual_seed(seed)
        signs = torch.randint(0, 2, (rank, rows), generator=generator).to(grid.dtype)
        projection = ((2 * signs - 1) / rank ** 0.5).to(grid.device)
    else:
        projection = None
    flat_mean = mean.reshape(-1)
    norm = grid.new_empty(size)
    shared = grid.new_empty(size)  # <mu, Q_c>
    unit_sum = torch.zeros_like(flat_mean, dtype=torch.float64)
    sketched = []
    for start in range(0, size, BLOCK_ROWS):
        block = grid[start:start + BLOCK_ROWS]
        flat = block.reshape(block.size(0), -1)
        norm[start:start + BLOCK_ROWS] = torch.linalg.vector_norm(flat, dim=1).clamp_min(1e-12)
        shared[start:start + BLOCK_ROWS] = flat @ flat_mean
        unit_sum += (flat.T @ (1 / norm[start:start + BLOCK_ROWS])).double()
        sketched.append((projection @ block - projection @ mean).flatten(1)
                        if projection is not None else flat - flat_mean)
    deviation = torch.cat(sketched)
    squared = float(flat_mean.double() @ flat_mean.double())
    spread = shared - squared  # a_c
    ones = torch.ones_like(spread)
    norm = norm.unsqueeze(1)
    queries = torch.cat([(squared + spread).unsqueeze(1), ones.unsqueeze(1), deviation],
                        1) / norm
    database = torch.cat([ones.unsqueeze(1), spread.unsqueeze(1), deviation], 1) / norm
    return (queries.float().cpu().numpy(), database.float().cpu().numpy(),
            float(unit_sum @ unit_sum) / size ** 2)


def relation_graph(tables: Tensor, closeness: str = 'paper', neighbours: int = 0,
                   threshold: float = 1.0, sketch: int = 0, seed: int = 0) -> Tensor:
    """GPFedRec's user-relation graph over ``B`` clients' tables (``[B, D]``, or ``[B, I,
    d]``): the row-normalized matrix :math:`A` with :math:`A_{cj} = 1 / |N_c|` for :math:`j
    \\in N_c`, as a sparse CSR ``[B, B]`` tensor.

    :math:`s_{cj}` is the cosine similarity of the two tables (``closeness='paper'``) or the
    cosine distance :math:`1 - \\cos` (``'code'``); every client, itself included, is a
    candidate. With ``neighbours = k > 0``, :math:`N_c` is the ``k`` clients of largest
    :math:`s_{cj}`; with ``0``, those with :math:`s_{cj}` above ``threshold`` times the mean
    of all :math:`B^2` values, :math:`\\bar s = \\lVert \\sum_c \\hat q_c \\rVert^2 / B^2`
    over the unit tables :math:`\\hat q_c` (one minus that for distances), and
    :math:`\\{c\\}` when none is.

    FAISS's exact inner-product search (``IndexFlatIP``: k-nearest neighbours, or a range
    search above the threshold) over the vectors of :func:`closeness_vectors` in float32
    finds the neighbours block by block: memory grows with :math:`B D` and the graph's
    edges, never with :math:`B^2`. With ``sketch = 0`` they are the unit tables (the time
    grows with :math:`B^2 D`); with ``sketch = m > 0`` the cosines are estimated from the
    tables' exact mean terms and a sketch of their deviations from the round's mean (drawn
    from ``seed``; :math:`O(B D m / d + B^2 m)`), and :math:`\\bar s` stays exact. A
    client's farthest tables are the nearest to its negated query.
    """
    if closeness not in CLOSENESS:
        raise ValueError(f'closeness must be one of {CLOSENESS}, got {closeness!r}')
    import faiss  # imported on first use: loading it is slow

    queries, database, mean = closeness_vectors(tables, sketch, seed)
    size = database.shape[0]
    index = faiss.IndexFlatIP(database.shape[1])
    index.add(database)
    if closeness == 'code':
        queries = -queries
    if neighbours:
        count = min(neighbours, size)
        _, found = index.search(queries, count)
        found, ptr = found.reshape(-1), np.arange(0, size * count + 1, count)
    else:
        # paper: cos > t * mean cos; code: 1 - cos > t * (1 - mean cos), i.e.
        # -cos > t * (1 - mean cos) - 1
        radius = threshold * mean if closeness == 'paper' else threshold * (1 - mean) - 1
        ptr, _, found = index.range_search(queries, radius)
        ptr = ptr.astype(np.int64)
        lonely = np.flatnonzero(np.diff(ptr) == 0)
        if lonely.size:
            found = np.insert(found, ptr[lonely], lonely)
            ptr = ptr + np.searchsorted(lonely, np.arange(size + 1), side='left')
    from fedgraph.nn.gnn import csr_matrix  # imports PyTorch Geometric

    degree = torch.from_numpy(np.diff(ptr).astype(np.int64))
    row = torch.repeat_interleave(torch.arange(size), degree)
    edges = torch.stack([row, torch.from_numpy(found.astype(np.int64))])
    dtype = tables.dtype if tables.is_floating_point() else torch.float32
    weight = (1 / degree.to(dtype))[row]
    return csr_matrix(edges.to(tables.device), weight.to(tables.device), (size, size))


def guided_aggregate(tables: Tensor, closeness: str = 'paper', neighbours: int = 0,
                     threshold: float = 1.0, sketch: int = 0,
                     seed: int = 0) -> Tuple[Tensor, Tensor]:
    """``(R, G)``: each of the ``B`` clients' personalized aggregate of the uploaded tables
    ``[B, I, d]``, :math:`R = A Q` over the :func:`relation_graph` (``sketch``, ``seed``:
    its estimated closeness), and the global table :math:`G = \\frac{1}{B} \\sum_c R_c =
    w^\\top Q` with :math:`w_j = \\frac{1}{B} \\sum_c A_{cj}` (a client weighs by how many
    clients count it a neighbour)."""
    flat = tables.reshape(tables.size(0), -1)
    graph = relation_graph(tables, closeness, neighbours, threshold, sketch, seed)
    weight = torch.zeros(flat.size(0), dtype=flat.dtype, device=flat.device).index_add_(
        0, graph.col_indices(), graph.values()) / flat.size(0)
    return propagate(graph, flat).view_as(tables), (weight @ flat).view_as(tables[0])


#: A graph with more than this share of all pairs as edges is multiplied as a dense matrix,
#: or along a chain of its rows.
DENSE_SHARE = 1 / 16
#: Rows of the dense matrix built at a time.
BLOCK_ROWS = 1024
#: A chain of rows is taken when its changes are fewer than this share of all ``B^2`` pairs
#: (a change costs a row of Q read in a running sum, about 40 times a pair of the dense product).
CHAIN_SHARE = 1 / 40
#: Columns of a chain's running sum (float64) taken at a time, on the CPU.
CHAIN_WIDTH = 1024
#: Entries (rows x columns) of the float64 running sums of a chain held at a time (GPU).
CHAIN_ENTRIES = 1 << 22


def propagate(graph: Tensor, flat: Tensor) -> Tensor:
    """:math:`A Q` for a sparse CSR ``graph`` ``[B, B]`` and ``flat`` ``[B, D]``: as a sparse
    product when the graph is sparse (k neighbours); else, when each row's weights are one
    value (:math:`A_{cj} = w_c` for :math:`j \\in N_c`, as :func:`relation_graph`'s), along
    a chain of rows (:func:`chained_propagate`) if its changes are fewer than
    :data:`CHAIN_SHARE` of all pairs; else in blocks of :data:`BLOCK_ROWS` rows of the
    dense matrix (the threshold links about half of all pairs, where a sparse product is
    tens of times slower than a dense one), so that memory stays :math:`O(B \\cdot`
    ``BLOCK_ROWS`` :math:`+ B D)`."""
    size = flat.size(0)
    if graph.values().numel() <= DENSE_SHARE * size * size:
        return graph @ flat
    chained = chained_propagate(graph, flat)
    if chained is not None:
        return chained
    ptr, col, value = graph.crow_indices(), graph.col_indices(), graph.values()
    out = torch.empty_like(flat)
    for start in range(0, size, BLOCK_ROWS):
        end = min(start + BLOCK_ROWS, size)
        first, last = int(ptr[start]), int(ptr[end])
        row = torch.repeat_interleave(torch.arange(end - start, device=flat.device),
                                      ptr[start + 1:end + 1] - ptr[start:end])
        block = flat.new_zeros(end - start, size)
        block[row, col[first:last]] = value[first:last]
        out[start:end] = block @ flat
    return out


def chained_propagate(graph: Tensor, flat: Tensor) -> Optional[Tensor]:
    """:math:`A Q` along a chain of the graph's rows, or ``None`` where the chain would not
    be cheaper than the dense product (changes at least :data:`CHAIN_SHARE` of all
    :math:`B^2` pairs) or a row's weights differ.

    With :math:`A_{cj} = w_c` for :math:`j \\in N_c`, :math:`(A Q)_c = w_c S_c` with
    :math:`S_c = \\sum_{j \\in N_c} Q_j`. Ordered by degree, clients :math:`c_1, c_2, \\dots`
    have :math:`S_{c_t} = S_{c_{t-1}} + \\sum_{j \\in N_{c_t} \\setminus N_{c_{t-1}}} Q_j -
    \\sum_{j \\in N_{c_{t-1}} \\setminus N_{c_t}} Q_j`: a running sum down the chain of the
    ``+1/-1`` changes' rows of :math:`Q` (in float64, :data:`CHAIN_WIDTH` columns at a time,
    :func:`fedgraph.federated.chain.chain_sums`; on a GPU a sparse product of the changes
    with :math:`Q` and a cumulative sum). It costs :math:`D` times the changes, :math:`|N_{c_1}| + \\sum_t |N_{c_t}
    \\triangle N_{c_{t-1}}|`, instead of the dense product's :math:`B^2`: the neighbourhoods
    of the threshold rule on a round's tables are nearly nested (a few changes between
    neighbours in the chain, hundreds of members each). Exact up to rounding."""
    size = flat.size(0)
    ptr, col, value = graph.crow_indices(), graph.col_indices(), graph.values()
    degree = ptr.diff()
    row = torch.repeat_interleave(torch.arange(size, device=flat.device), degree)
    first = ptr[:-1].clamp(max=max(value.numel() - 1, 0))
    scale = torch.where(degree > 0, value[first], torch.zeros_like(value[first]))
    if not torch.equal(value, scale[row]):
        return None
    member = torch.zeros(size, size, dtype=torch.int8, device=flat.device)
    member[row, col] = 1
    order = torch.argsort(degree, stable=True)
    member = member[order]
    change = member.clone()
    change[1:] -= member[:-1]
    del member
    if torch.count_nonzero(change) >= CHAIN_SHARE * size * size:
        return None
    if flat.device.type != 'cpu':
        change = change.to(flat.dtype).to_sparse_csr()
        out = torch.empty_like(flat)
        width = max(1, CHAIN_ENTRIES // size)
        weight = scale[order].to(torch.float64).unsqueeze(1)
        for start in range(0, flat.size(1), width):
            part = (change @ flat[:, start:start + width]).to(torch.float64)
            out[order, start:start + width] = (part.cumsum_(0) * weight).to(flat.dtype)
        return out
    from fedgraph.federated.chain import chain_sums  # imports numba

    step, source = change.nonzero(as_tuple=True)
    sign = change[step, source].to(torch.float64)
    steps = torch.zeros(size + 1, dtype=torch.long)
    steps[1:] = torch.bincount(step, minlength=size).cumsum(0)
    out = torch.empty_like(flat)
    chain_sums(order.numpy(), steps.numpy(), source.numpy(), sign.numpy(),
               scale.to(torch.float64).numpy(), flat.contiguous().numpy(), out.numpy(),
               CHAIN_WIDTH)
    return out


def steps_taken(plan: RoundPlan) -> Tensor:
    """``[B]`` how many local steps each of the plan's clients takes (the steps in which it
    has a mini-batch)."""
    counts = plan.step_ptr.diff()
    step = torch.repeat_interleave(torch.arange(counts.numel(), device=counts.device), counts)
    pairs = torch.unique(step * plan.clients.numel() + plan.owner)
    return torch.bincount(pairs % plan.clients.numel(), minlength=plan.clients.numel())


def dense_tables(plan: RoundPlan, base: Tensor, targets: Tensor, local: Tensor,
                 pull: float) -> Tensor:
    """``[B, I, d]`` the plan's clients' whole tables after their steps: each trained row of
    ``local`` ``[R, d]`` in place, every other row :math:`r + (1 - \\beta)^{K_c} (g - r)` from
    the broadcast ``base`` ``[I, d]``, the clients' ``targets`` ``[B, I, d]`` and their
    :func:`steps_taken` (``pull``: :math:`\\beta`)."""
    decay = (1 - pull) ** steps_taken(plan).to(base.dtype)
    tables = targets + decay.view(-1, 1, 1) * (base - targets)
    tables[plan.row_owner, plan.row_item] = local
    return tables


def uploaded_tables(upload: RowUpload, base: Tensor) -> Tensor:
    """``[B, I, d]`` the clients' tables of a whole-table ``upload`` from ``base``
    (:meth:`RowUpload.to_tables`): where it holds every row of every client in the order of
    :meth:`RowUpload.tables`, ``base`` plus its changes in one pass, the same values."""
    size, rows = upload.clients.numel(), base.size(0)
    if (upload.update.size(0) == size * rows
            and bool((upload.row_owner.view(size, rows)
                      == torch.arange(size, device=base.device).unsqueeze(1)).all())
            and bool((upload.row_item.view(size, rows)
                      == torch.arange(rows, device=base.device)).all())):
        return upload.update.view(size, rows, -1) + base
    return upload.to_tables(base)


class ClientTables:
    """Every client's own ``[I, d]`` item table, equal to ``initial`` until it is written:
    tables are held only for the clients written so far, so memory grows with them, not with
    every client of the population. Indexed by client ids (a tensor, or one ``int``)."""

    def __init__(self, initial: Tensor, num_clients: int):
        self.initial = initial.detach().clone()
        self.slot = torch.full((num_clients,), -1, dtype=torch.long, device=initial.device)
        self.values = initial.new_empty((0, *initial.shape))
        self.count = 0

    @classmethod
    def held(cls, values: Tensor) -> 'ClientTables':
        """The tables ``values`` ``[N, I, d]`` of every client, held as they are (a write
        lands in ``values``)."""
        tables = cls(values[0], 0)
        tables.slot = torch.arange(values.size(0), device=values.device)
        tables.values, tables.count = values, values.size(0)
        return tables

    def __getitem__(self, clients) -> Tensor:
        """``[B, I, d]`` the tables of ``clients`` ``[B]`` (``[I, d]`` for an ``int``)."""
        if isinstance(clients, int):
            return self[torch.tensor([clients], device=self.slot.device)][0]
        slot = self.slot[clients]
        held = slot >= 0
        out = self.initial.new_empty((clients.numel(), *self.initial.shape))
        out[held] = self.values[slot[held]]
        out[~held] = self.initial
        return out

    def rows(self, clients: Tensor, items: Tensor) -> Tensor:
        """``[..., d]`` the rows ``items`` of the tables of ``clients``, the two broadcast
        together (``[U, 1]`` clients and ``[U, k]`` items give ``[U, k, d]``)."""
        clients, items = torch.broadcast_tensors(clients, items)
        slot = self.slot[clients]
        out = self.initial[items]
        held = slot >= 0
        out[held] = self.values[slot[held], items[held]]
        return out

    def __setitem__(self, clients, tables: Tensor) -> None:
        """Writes the tables ``[B, I, d]`` of ``clients`` ``[B]``."""
        if isinstance(clients, int):
            clients, tables = torch.tensor([clients], device=self.slot.device), tables[None]
        new = clients[self.slot[clients] < 0]
        if new.numel():
            needed = self.count + new.numel()
            if needed > self.values.size(0):
                grown = self.initial.new_empty((min(max(needed, 2 * self.values.size(0)),
                                                    self.slot.numel()), *self.initial.shape))
                grown[:self.count] = self.values[:self.count]
                self.values = grown
            self.slot[new] = torch.arange(self.count, needed, device=self.slot.device)
            self.count = needed
        self.values[self.slot[clients]] = tables

    def state_dict(self) -> Dict[str, Tensor]:
        return {'initial': self.initial, 'slot': self.slot, 'values': self.values[:self.count]}

    def load_state_dict(self, state: Dict[str, Tensor]) -> None:
        self.initial, self.slot = state['initial'], state['slot']
        self.values = state['values'].clone()
        self.count = self.values.size(0)


class GraphGuidedState:
    """What GPFedRec's server and clients hold besides the model: every client's latest
    table :math:`Q_c` (its own, on its device) and personalized aggregate :math:`R_c` (the
    server's, sent with the client's next round), both the initial table until the client
    first trains (:class:`ClientTables`), and the server's graph settings (``sketch``,
    ``seed``: the closeness estimated from a sketch, :func:`closeness_vectors`)."""

    def __init__(self, table: Tensor, num_clients: int, closeness: str, neighbours: int,
                 threshold: float, sketch: int = 0, seed: int = 0):
        if closeness not in CLOSENESS:
            raise ValueError(f'closeness must be one of {CLOSENESS}, got {closeness!r}')
        if isinstance(sketch, bool) or not isinstance(sketch, int) or sketch < 0:
            raise ValueError(f'sketch must be a whole number >= 0 (0: exact closeness), got '
                             f'{sketch!r}')
        self.tables = ClientTables(table, num_clients)
        self.targets = ClientTables(table, num_clients)
        self.closeness, self.neighbours, self.threshold = closeness, neighbours, threshold
        self.sketch, self.seed = sketch, seed

    def aggregate(self, clients: Tensor, tables: Tensor) -> Tensor:
        """Gives ``clients`` the aggregates of their uploaded ``tables`` and returns the new
        global table."""
        personal, global_table = guided_aggregate(tables, self.closeness, self.neighbours,
                                                  self.threshold, self.sketch, self.seed)
        self.targets[clients] = personal
        return global_table

    def state_dict(self) -> Dict[str, Dict[str, Tensor]]:
        return {'tables': self.tables.state_dict(), 'targets': self.targets.state_dict()}

    def load_state_dict(self, state: Dict[str, Dict[str, Tensor]]) -> None:
        self.tables.load_state_dict(state['tables'])
        self.targets.load_state_dict(state['targets'])


class _Guided:
    """What GPFedRec adds to either engine: ``guided``, the clients' tables and aggregates
    (kept in its state), from which each user scores, and the server half of a round."""

    def __init__(self, *args, guided: GraphGuidedState, **kwargs):
        super().__init__(*args, **kwargs)
        self.guided = guided

    def personal_rows(self, users: Tensor, items: Tensor) -> Tensor:
        """``[U, k, d]`` each user's rows of ``items[u]`` in the table it trained last."""
        return self.guided.tables.rows(users.unsqueeze(-1), items)

    def aggregate(self, base: Tensor, result: ClientRound,
                  dropped: Optional[Dict[str, int]] = None,
                  generator: Optional[torch.Generator] = None) -> RoundStats:
        """The server half: the uploaded tables related and aggregated along their graph
        (:meth:`GraphGuidedState.aggregate`) into the clients' aggregates and the global
        table; with no upload left, the model stays as it was."""
        upload = result.upload
        if upload.clients.numel() == 0:
            return RoundStats(None, 0, 0.0, 0.0, dict(dropped or {}))
        with torch.no_grad():
            self.model.item.copy_(self.guided.aggregate(upload.clients,
                                                        uploaded_tables(upload, base)))
        return self.table_round_stats(upload.clients, base, float(result.loss.mean()),
                                      dropped, tables_down=2)

    def round_payload(self, users: Tensor) -> Dict[str, Tensor]:
        """What a deployment's server sends with a round: the users' aggregates."""
        return {'target': self.guided.targets[users]}

    def state_dict(self) -> Dict[str, object]:
        return {**super().state_dict(), 'guided': self.guided.state_dict()}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        super().load_state_dict(state)
        self.guided.load_state_dict(state['guided'])


class GraphGuidedEngine(_Guided, FederatedEngine):
    """GPFedRec on the vectorized engine (see the module docstring), as the two halves of a
    round that a deployment runs apart: :meth:`local_round` on the clients' devices,
    :meth:`aggregate` on the server (also the reference engine's). Its clients train with
    SGD (the closed form of the untouched rows is SGD's)."""

    def __init__(self, *args, guided: GraphGuidedState, **kwargs):
        super().__init__(*args, guided=guided, **kwargs)
        if not isinstance(self.training.optimizer, SGD) or not self.training.proximal:
            raise ValueError('graph-guided personalization trains with SGD and a proximal '
                             'term')

    def local_round(self, clients: Tensor, generator: Optional[torch.Generator] = None,
                    round_seed: Optional[int] = None) -> ClientRound:
        """The client half: ``clients`` train from the global table towards their
        aggregates, keep their private parameters and tables, and upload the tables."""
        cfg, model = self.training, self.model
        plan = self.round_plan(clients, generator, round_seed)
        base = model.item.detach()
        targets = self.guided.targets[plan.clients]
        local, _, private, loss = self.train_clients(
            plan, base, targets[plan.row_owner, plan.row_item])
        tables = dense_tables(plan, base, targets, local,
                              cfg.item_lr * cfg.proximal_pull(model.num_items, model.dim))
        with torch.no_grad():
            for name, tensor in model.private_parameters().items():
                tensor[plan.clients] = private[name]
        self.guided.tables[plan.clients] = tables
        return self.table_round(plan, tables, base, loss, round_seed)

    def personal_scores_all(self, users: Tensor, params: Dict[str, Tensor]) -> Tensor:
        """``[U, I]`` each user's logits of every item of its own table, a user at a time."""
        head = self.model.head
        return torch.cat([head.logits_all({name: value[position:position + 1]
                                           for name, value in params.items()},
                                          self.guided.tables[user])
                          for position, user in enumerate(users.tolist())])

    def item_views(self, user: int):
        """``user``'s private parameters and the table it trained last."""
        users = torch.tensor([user], device=self.model.item.device)
        return self.model.client_params(users), [self.guided.tables[user].clone()], [1.0]


class GuidedNodeHooks(NodeHooks):
    """GPFedRec's node halves: a node keeps its users' tables (``extra['tables']``
    ``[n, I, d]``, the initial table until a user trains), and a round's request brings the
    selected users' aggregates (``target``)."""

    def enroll(self, node: Node, payload: Payload) -> Payload:
        node.extra['tables'] = payload['items'].expand(node.users.numel(), -1, -1).clone()
        return {}

    def configure(self, node: Node, engine: FederatedEngine, payload: Payload,
                  position: Tensor) -> None:
        """The engine trains and scores the node's tables in place; a round's users pull
        towards the aggregates the server sent."""
        engine.guided.tables = ClientTables.held(node.extra['tables'])
        if 'target' in payload:
            engine.guided.targets[position] = payload['target']


class GraphGuidedReference(_Guided, ReferenceEngine):
    """GPFedRec on the reference engine: each client trains its whole table with
    ``torch.optim.SGD`` and the proximal term, client after client; the same server."""

    def train_round(self, generator: torch.Generator) -> Tuple[RoundStats, ClientRound]:
        base = self.model.item.detach().clone()
        plan, _, tables, losses = self.whole_tables(
            generator, lambda plan, position, client: self._train_client(
                plan, position, client, base, self.guided.targets[client]), base)
        self.guided.tables[plan.clients] = tables
        result = ClientRound(RowUpload.tables(plan.clients, tables, base), plan.num_samples,
                             losses)
        return self.aggregate(base, result), result
