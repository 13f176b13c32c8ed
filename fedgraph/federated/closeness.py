"""The cosine closeness of many clients' flattened tables ``[B, D]`` as float64 decides it,
from integer products: which pairs score above a radius, and each client's ``k`` best
(GPFedRec's relation graph, :func:`fedgraph.federated.graph_guided.relation_graph`).

The tables :math:`q_c` are centred on their mean :math:`m`: with :math:`\\Delta_c = q_c - m`
and :math:`p_c = \\langle m, \\Delta_c \\rangle`,

.. math::
    \\langle q_c, q_j \\rangle = \\lVert m \\rVert^2 + p_c + p_j
    + \\langle \\Delta_c, \\Delta_j \\rangle, \\qquad
    \\cos_{cj} = \\frac{\\langle q_c, q_j \\rangle}{\\lVert q_c \\rVert \\lVert q_j \\rVert},

where everything but :math:`\\langle \\Delta_c, \\Delta_j \\rangle` costs :math:`B D`. Each
:data:`CHUNK` columns of a :math:`\\Delta_c` are written at their own scale :math:`s` in two
int8 limbs, :math:`\\tilde\\Delta = s (L_0 + L_1 / 254)` with :math:`|L| \\le 127`, and the
limbs' products are summed exactly in int32 (``torch._int_mm``: the CPU's int8 matrix
units), so :math:`\\langle \\tilde\\Delta_c, \\tilde\\Delta_j \\rangle` differs from
:math:`\\langle \\Delta_c, \\Delta_j \\rangle` only by the quantization :math:`e = \\Delta -
\\tilde\\Delta`; by Cauchy-Schwarz,

.. math::
    |\\langle \\Delta_c, \\Delta_j \\rangle - \\langle \\tilde\\Delta_c, \\tilde\\Delta_j
    \\rangle| \\le \\lVert e_c \\rVert \\lVert \\Delta_j \\rVert
    + (\\lVert \\Delta_c \\rVert + \\lVert e_c \\rVert) \\lVert e_j \\rVert.

A pair whose decision that bound (plus :data:`MARGIN` for float64's rounding) leaves open is
recomputed in float64 from the tables. Centring matters: the round's tables share most of
their length, so the bound is a small share of :math:`\\lVert \\Delta \\rVert^2`, itself a small
share of :math:`\\lVert q \\rVert^2`, and few pairs are recomputed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numba
import numpy as np
import torch
from torch import Tensor

from fedgraph import runtime

runtime.start_kernel_threads()  # before a parallel kernel below starts it

#: Columns quantized at one scale and multiplied at a time: the int32 sums of products of
#: limbs stay below :math:`2^{31}` (:math:`127^2 \\cdot 2^{17} < 2^{31}`).
CHUNK = 2 ** 17
#: The second limb's weight: :math:`\\Delta \\approx s (L_0 + L_1 / 254)`.
LIMB = 254.0
#: Relative float64 rounding allowed for beside the quantization bound.
MARGIN = 1e-9
#: Columns of the weighted column sums given to a thread at a time.
_COLUMNS = 4096


@dataclass
class CentredTables:
    """The B flattened tables ``flat`` ``[B, D]`` split as :math:`q_c = m + \\Delta_c`:
    ``mean`` :math:`m` (float64 ``[D]``), ``projection`` :math:`p_c`, ``norm``
    :math:`\\lVert q_c \\rVert`, ``spread`` :math:`\\lVert \\Delta_c \\rVert`, ``residual``
    :math:`\\lVert e_c \\rVert` (float64 ``[B]``), and the limbs ``high`` :math:`L_0` and
    ``low`` :math:`L_1` (int8 ``[B, D]``) with their ``scale`` ``[B, chunks]`` (float64)."""
    flat: np.ndarray
    mean: np.ndarray
    projection: Tensor
    norm: Tensor
    spread: Tensor
    residual: Tensor
    high: Tensor
    low: Tensor
    scale: Tensor

    @classmethod
    def of(cls, flat: np.ndarray) -> 'CentredTables':
        """Centres and quantizes ``flat`` (float32 or float64, C-contiguous): one pass for the
        mean, one that reads each chunk of a table twice while it is in cache."""
        size, width = flat.shape
        mean = np.zeros(width)
        _weighted_column_sums(flat, np.full(size, 1 / size), _COLUMNS, mean)
        chunks = -(-width // CHUNK)
        high = torch.empty((size, width), dtype=torch.int8)
        low = torch.empty((size, width), dtype=torch.int8)
        scale = torch.empty((size, chunks), dtype=torch.float64)
        sums = torch.empty((4, size), dtype=torch.float64)
        _quantize(flat, mean, CHUNK, high.numpy(), low.numpy(), scale.numpy(), sums.numpy())
        projection, norm_sq, spread_sq, residual_sq = sums
        return cls(flat, mean, projection, norm_sq.sqrt(), spread_sq.sqrt(),
                   residual_sq.sqrt(), high, low, scale)

    def unit_norms(self) -> Tensor:
        """:math:`\\max(\\lVert q_c \\rVert, 10^{-12})`, by which a table is made a unit
        one (as ``F.normalize``)."""
        return self.norm.clamp_min(1e-12)

    def mean_cosine(self) -> float:
        """The mean of all :math:`B^2` cosines, :math:`\\lVert \\sum_c q_c / \\lVert q_c
        \\rVert \\rVert^2 / B^2`, in float64."""
        total = np.zeros(self.flat.shape[1])
        _weighted_column_sums(self.flat, (1 / self.unit_norms()).numpy(), _COLUMNS, total)
        return float(total @ total) / self.flat.shape[0] ** 2

    def cosines(self, rows: slice) -> Tuple[Tensor, Tensor]:
        """``(cos, bound)`` ``[b, B]`` float64: the cosines of the tables ``rows`` with every
        table from the limbs' products, and how far the exact ones may lie from them."""
        products = self._limb_products(rows)
        spread, residual = self.spread, self.residual
        error = (residual[rows, None] * spread + (spread[rows, None] + residual[rows, None])
                 * residual)
        diagonal = torch.arange(rows.start, rows.stop)
        products[diagonal - rows.start, diagonal] = spread[rows] ** 2
        error[diagonal - rows.start, diagonal] = 0
        shared = self._shared(rows)
        scale = self.unit_norms()[rows, None] * self.unit_norms()
        bound = (error + MARGIN * (shared.abs() + spread[rows, None] * spread)) / scale
        return (shared + products) / scale, bound

    def exact_cosines(self, left: Tensor, right: Tensor) -> Tensor:
        """``[P]`` the cosines of the pairs ``(left[p], right[p])``, in float64 from the
        tables."""
        products = torch.empty(left.numel(), dtype=torch.float64)
        _centred_products(self.flat, self.mean, left.numpy(), right.numpy(), products.numpy())
        shared = float(self.mean @ self.mean) + self.projection[left] + self.projection[right]
        return (shared + products) / (self.unit_norms()[left] * self.unit_norms()[right])

    def _shared(self, rows: slice) -> Tensor:
        """:math:`\\lVert m \\rVert^2 + p_c + p_j` ``[b, B]``."""
        return float(self.mean @ self.mean) + self.projection[rows, None] + self.projection

    def _limb_products(self, rows: slice) -> Tensor:
        """:math:`\\langle \\tilde\\Delta_c, \\tilde\\Delta_j \\rangle` ``[b, B]`` float64:
        chunk by chunk, the int32 products of the limbs, scaled (when ``rows`` are every
        table, the two cross products are one product and its transpose)."""
        everyone = rows.stop - rows.start == self.high.size(0)
        out = torch.zeros((rows.stop - rows.start, self.high.size(0)), dtype=torch.float64)
        for chunk in range(self.scale.size(1)):
            columns = slice(chunk * CHUNK, (chunk + 1) * CHUNK)
            high, low = self.high[:, columns], self.low[:, columns]
            mine_high, mine_low = high[rows], low[rows]
            cross = torch._int_mm(mine_high, low.T).double()
            cross = cross + (cross.T if everyone else torch._int_mm(mine_low, high.T).double())
            limbs = (torch._int_mm(mine_high, high.T).double() + cross / LIMB
                     + torch._int_mm(mine_low, low.T).double() / LIMB ** 2)
            out += limbs * self.scale[rows, chunk, None] * self.scale[:, chunk]
        return out


def above(tables: CentredTables, rows: slice, sign: float, radius: float) -> Tensor:
    """``[b, B]`` whether :math:`\\pm\\cos_{cj}` (``sign``) exceeds ``radius`` for the tables
    ``rows`` and every table, as float64 decides: the pairs within the bound of the radius
    are recomputed."""
    cos, bound = tables.cosines(rows)
    score = sign * cos
    chosen = score > radius
    row, col = ((score - radius).abs() <= bound).nonzero(as_tuple=True)
    if row.numel():
        chosen[row, col] = sign * tables.exact_cosines(row + rows.start, col) > radius
    return chosen


def best(tables: CentredTables, rows: slice, sign: float, count: int) -> Tensor:
    """``[b, count]`` the ``count`` tables of largest :math:`\\pm\\cos_{cj}` (``sign``) for
    each of the tables ``rows``, as float64 decides. A table is surely among them when its
    lowest possible score exceeds the ``count + 1``-th highest possible one of its row; the
    others that may be (their highest possible score reaches the ``count``-th lowest
    possible one) are recomputed and ranked."""
    cos, bound = tables.cosines(rows)
    score = sign * cos
    low, high = score - bound, score + bound
    floor = low.topk(count, dim=1).values[:, -1:]
    sure = (low > high.topk(count + 1, dim=1).values[:, -1:] if count < score.size(1)
            else torch.ones_like(score, dtype=torch.bool))
    open_ = (high >= floor) & ~sure
    ranked = torch.where(sure, torch.inf, -torch.inf).to(torch.float64)
    row, col = open_.nonzero(as_tuple=True)
    if row.numel():
        ranked[row, col] = sign * tables.exact_cosines(row + rows.start, col)
    return ranked.topk(count, dim=1).indices


@numba.njit(cache=True, nogil=True, parallel=True, fastmath={'reassoc', 'contract'})
def _weighted_column_sums(flat, weight, columns, out):
    """``out += weight @ flat`` in float64, a block of ``columns`` columns per thread."""
    size, width = flat.shape
    for block in numba.prange(-(-width // columns)):
        start, end = block * columns, min((block + 1) * columns, width)
        total = np.zeros(end - start)
        for row in range(size):
            part, share = flat[row, start:end], weight[row]
            for column in range(end - start):
                total[column] += share * part[column]
        out[start:end] += total


@numba.njit(cache=True, nogil=True, parallel=True, fastmath={'reassoc', 'contract'})
def _quantize(flat, mean, chunk, high, low, scale, sums):
    """Per table (a thread's at a time): each ``chunk`` of :math:`\\Delta = q - m` at scale
    :math:`s = \\max |\\Delta| / 127` as :math:`s (L_0 + L_1 / 254)`, rounded to nearest,
    and ``sums`` ``[4, B]``: :math:`p_c`, :math:`\\lVert q_c \\rVert^2`,
    :math:`\\lVert \\Delta_c \\rVert^2`, :math:`\\lVert e_c \\rVert^2`."""
    size, width = flat.shape
    for row in numba.prange(size):
        projection = norm_sq = spread_sq = residual_sq = 0.0
        for part in range(-(-width // chunk)):
            start, end = part * chunk, min((part + 1) * chunk, width)
            top = 0.0
            for column in range(start, end):
                value = np.float64(flat[row, column])
                delta = value - mean[column]
                projection += delta * mean[column]
                norm_sq += value * value
                spread_sq += delta * delta
                top = max(top, abs(delta))
            step = top / 127 if top > 0 else 1.0
            inverse = 1 / step
            scale[row, part] = step
            for column in range(start, end):
                delta = np.float64(flat[row, column]) - mean[column]
                first = np.floor(delta * inverse + 0.5)
                second = np.floor((delta * inverse - first) * LIMB + 0.5)
                high[row, column] = np.int8(first)
                low[row, column] = np.int8(second)
                residual = delta - step * (first + second / LIMB)
                residual_sq += residual * residual
        sums[0, row], sums[1, row] = projection, norm_sq
        sums[2, row], sums[3, row] = spread_sq, residual_sq


@numba.njit(cache=True, nogil=True, parallel=True, fastmath={'reassoc', 'contract'})
def _centred_products(flat, mean, left, right, out):
    """``out[p]`` :math:`\\langle \\Delta_{l_p}, \\Delta_{r_p} \\rangle` in float64."""
    for pair in numba.prange(left.size):
        total = 0.0
        for column in range(flat.shape[1]):
            total += ((np.float64(flat[left[pair], column]) - mean[column])
                      * (np.float64(flat[right[pair], column]) - mean[column]))
        out[pair] = total
