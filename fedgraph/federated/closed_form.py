"""Closed-form local training of bilinear score heads, compiled (numba).

For a head whose logit is :math:`s_{ci} = \\theta_c^\\top e_i + b_c` (PFedRec's linear head;
FedMF's dot product, :math:`b_c = 0`) trained with binary cross-entropy and plain SGD, the
gradients of a client's mini-batch loss :math:`L = \\sum_n \\omega_n \\ell_n`
(:math:`\\omega_n` = 1 / the mini-batch's size) have a closed form. With
:math:`p_n = \\sigma(s_n)` and :math:`g_n = \\partial L / \\partial s_n`,

.. math::
    g_n = \\omega_n \\frac{p_n - y_n}{\\max(p_n (1 - p_n), 10^{-12})} \\, p_n (1 - p_n),
    \\qquad
    \\frac{\\partial L}{\\partial \\theta_c} = \\sum_n g_n e_{i_n},
    \\quad \\frac{\\partial L}{\\partial b_c} = \\sum_n g_n,
    \\quad \\frac{\\partial L}{\\partial e_{i_n}} \\mathrel{+}= g_n \\theta_c,

plus :math:`\\omega_n \\lambda` times each parameter for the L2 term
:math:`\\tfrac{\\lambda}{2}(\\lVert e_i \\rVert^2 + \\lVert \\theta_c \\rVert^2 + b_c^2)`.
:math:`g_n` is written as autograd computes it through ``BCELoss(sigmoid(s))``
(:func:`~fedgraph.federated.local.bce`): it vanishes where :math:`\\sigma` saturates in
float32, as the papers' code does, instead of staying :math:`\\pm \\omega_n`.

One kernel call trains every client of a round: clients run in parallel, each walking its
own mini-batches in order, its head and rows in cache, with float32 arithmetic as the
autograd engine's (:meth:`~fedgraph.federated.engine.FederatedEngine.train_clients`, whose
results these equal up to float rounding). The rows of a mini-batch are read before any of
them is stepped, as in the batched engine.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import numba
import numpy as np
import torch
from torch import Tensor

from fedgraph.federated.local import SGD, BCELoss
from fedgraph.federated.personal import PersonalItemRows
from fedgraph.federated.plan import RoundPlan

_ONE = np.float32(1.0)
_HALF = np.float32(0.5)
_EPSILON = np.float32(1e-12)
_FLOOR = np.float32(-100.0)
CLIENTS_PER_CHUNK = 16


def supports(model, training) -> bool:
    """Whether the model and recipe of a round have the closed form: a bilinear head
    (:attr:`~fedgraph.nn.heads.ScoreHead.bilinear`), no graph context and no dense shared
    parameters, binary cross-entropy, plain SGD, on the CPU."""
    return (model.head.bilinear is not None and model.user_context is None
            and model.item_context is None and not model.shared_dense()
            and type(training.loss) is BCELoss and type(training.optimizer) is SGD
            and model.item.device.type == 'cpu' and model.item.dtype == torch.float32)


def train_clients(model, training, plan: RoundPlan, table: Tensor
                  ) -> Tuple[Tensor, Tensor, Dict[str, Tensor], Tensor]:
    """:meth:`FederatedEngine.train_clients
    <fedgraph.federated.engine.FederatedEngine.train_clients>` in closed form: the trained
    local rows ``[R, d]`` (each client's rows of ``table`` trained), their change, the
    trained private parameters ``{name: [B, ...]}`` and each client's mean training loss
    ``[B]``."""
    vector_name, bias_name = model.head.bilinear
    vector, bias = _head(model, plan.clients)
    table = table.contiguous()
    local = table.new_empty(plan.row_item.numel(), table.size(1))
    change = torch.empty_like(local)
    row_ptr = torch.searchsorted(plan.row_owner, torch.arange(plan.clients.numel() + 1))
    loss_sum = torch.empty(plan.clients.numel(), dtype=local.dtype)
    # Clients differ in size: threads take them a few at a time.
    chunksize = numba.set_parallel_chunksize(CLIENTS_PER_CHUNK)
    try:
        _local_sgd(table.numpy(), plan.row_item.numpy(), row_ptr.numpy(), local.numpy(),
                   change.numpy(), vector.numpy(), bias.numpy(), bias_name is not None,
                   plan.batch_ptr.numpy(), plan.batch_start.numpy(), plan.batch_fill.numpy(),
                   plan.row.numpy(), plan.label.numpy(), plan.weight.numpy(),
                   np.float32(training.lr), np.float32(training.item_lr),
                   np.float32(training.l2_reg), training.alternating, loss_sum.numpy())
    finally:
        numba.set_parallel_chunksize(chunksize)
    trained = {vector_name: vector}
    if bias_name:
        trained[bias_name] = bias
    num_samples = plan.num_samples.to(local.dtype) * training.local_epochs
    return local, change, trained, loss_sum / num_samples


def scores(model, users: Tensor, items: Tensor, base: Tensor,
           personal: Optional[PersonalItemRows] = None) -> Tensor:
    """``[U, k]`` logits :math:`\\theta_u^\\top e_i + b_u` of ``items[u, j]`` for ``users[u]``,
    with each user's stored rows of ``personal`` over the table ``base`` (without
    ``personal``: ``base`` alone), in one parallel pass that gathers no ``[U, k, d]``
    tensor."""
    vector, bias = _head(model, users)
    keys = personal.keys if personal is not None else torch.empty(0, dtype=torch.long)
    values = personal.values if personal is not None else base[:0]
    out = torch.empty(items.shape, dtype=vector.dtype)
    _bilinear_scores(vector.numpy(), bias.numpy(), users.numpy(), items.contiguous().numpy(),
                     keys.numpy(), values.contiguous().numpy(), base.contiguous().numpy(),
                     model.num_items, max(1, min(users.numel(), 4 * torch.get_num_threads())),
                     out.numpy())
    return out


def _head(model, clients: Tensor) -> Tuple[Tensor, Tensor]:
    """Copies of ``clients``' :math:`\\theta_c` ``[B, d]`` and :math:`b_c` ``[B]`` (zeros
    for a head without a bias)."""
    vector_name, bias_name = model.head.bilinear
    private = model.private_parameters()
    vector = private[vector_name].detach()[clients].contiguous()
    bias = (private[bias_name].detach()[clients].contiguous() if bias_name
            else torch.zeros(clients.numel(), dtype=vector.dtype))
    return vector, bias


@numba.njit(cache=True, nogil=True, parallel=True)
def _bilinear_scores(vector, bias, users, items, keys, values, base, num_items, lots, out):
    # Users in lots, a thread's at a time; a lot marks each user's stored rows in an
    # item-indexed scratch array, so that a candidate's row is one lookup.
    for lot in numba.prange(lots):
        stored = np.full(num_items, -1, np.int64)
        for position in range(lot * users.size // lots, (lot + 1) * users.size // lots):
            # The user's stored rows are the run of keys in [user * I, (user + 1) * I).
            first = np.searchsorted(keys, users[position] * num_items)
            last = np.searchsorted(keys, (users[position] + 1) * num_items)
            for index in range(first, last):
                stored[keys[index] - users[position] * num_items] = index
            for column in range(items.shape[1]):
                item = items[position, column]
                row = values[stored[item]] if stored[item] >= 0 else base[item]
                out[position, column] = _dot(vector[position], row) + bias[position]
            for index in range(first, last):
                stored[keys[index] - users[position] * num_items] = -1


@numba.njit(cache=True, nogil=True, parallel=True)
def _local_sgd(table, row_item, row_ptr, local, change, vector, bias, fit_bias, batch_ptr,
               batch_start, batch_fill, row, label, weight, lr, item_lr, l2_reg, alternating,
               loss_sum):
    for client in numba.prange(vector.shape[0]):
        # A client's rows are contiguous: gathered in order, they are in cache when trained.
        for local_row in range(row_ptr[client], row_ptr[client + 1]):
            source, target = table[row_item[local_row]], local[local_row]
            for k in range(source.size):
                target[k] = source[k]
        loss_sum[client] = _train_client(
            local, vector[client], bias[client:client + 1], fit_bias,
            batch_start[batch_ptr[client]:batch_ptr[client + 1]],
            batch_fill[batch_ptr[client]:batch_ptr[client + 1]], row, label, weight, lr,
            item_lr, l2_reg, alternating)
        for local_row in range(row_ptr[client], row_ptr[client + 1]):
            source, trained, moved = table[row_item[local_row]], local[local_row], change[local_row]
            for k in range(source.size):
                moved[k] = trained[k] - source[k]


@numba.njit(cache=True, nogil=True, fastmath={'reassoc', 'contract'})
def _dot(left, right):
    """:math:`\\sum_k l_k r_k` in float32, summed in the order the CPU's vectors like."""
    total = np.float32(0.0)
    for k in range(left.size):
        total += left[k] * right[k]
    return total


@numba.njit(cache=True, nogil=True)
def _probability_gradient(vector, bias, row_values, label, weight):
    """:math:`p_n = \\sigma(s_n)` and the logit's loss gradient :math:`g_n`."""
    p = _ONE / (_ONE + np.exp(-(_dot(vector, row_values) + bias)))
    slope = (_ONE - p) * p
    return p, weight * (p - label) / max(slope, _EPSILON) * (_ONE - p) * p


@numba.njit(cache=True, nogil=True)
def _l2_term(l2_reg, values, vector, bias):
    """:math:`\\tfrac{\\lambda}{2} (\\lVert e \\rVert^2 + \\lVert \\theta \\rVert^2 + b^2)`."""
    return l2_reg * _HALF * (_dot(values, values) + _dot(vector, vector) + bias * bias)


@numba.njit(cache=True, nogil=True)
def _sample_loss(p, label, penalty):
    """Binary cross-entropy with its log floored at -100, as ``BCELoss`` computes it (a NaN
    stays NaN), plus the sample's L2 term."""
    log_likelihood = np.log(p if label == _ONE else _ONE - p)
    if log_likelihood < _FLOOR:
        log_likelihood = _FLOOR
    return -log_likelihood + penalty


@numba.njit(cache=True, nogil=True)
def _train_client(local, vector, bias, fit_bias, batch_start, batch_fill, row, label, weight,
                  lr, item_lr, l2_reg, alternating):
    """One client's local steps, its mini-batch ``m`` the samples ``batch_start[m]:
    batch_start[m] + batch_fill[m]``. Returns the sum of its samples' losses (each with its
    L2 term, taken after the head's step when alternating), in plan order."""
    dim = vector.size
    vector_grad = np.empty(dim, np.float32)
    head_vector = np.empty(dim, np.float32)
    size = batch_fill.max() if batch_fill.size else 0
    gradients = np.empty(size, np.float32)
    row_delta = np.empty((size if l2_reg else 0, dim), np.float32)
    loss_sum = np.float32(0.0)
    for first, fill in zip(batch_start, batch_fill):
        # The head's step (alternating) or gradient (joint), from the rows as they are.
        vector_grad[:] = 0
        bias_grad = np.float32(0.0)
        head_vector[:] = vector
        for position in range(fill):
            sample = first + position
            values = local[row[sample]]
            p, gradient = _probability_gradient(vector, bias[0], values, label[sample],
                                                weight[sample])
            gradients[position] = gradient
            for k in range(dim):
                vector_grad[k] += gradient * values[k]
            bias_grad += gradient
            if l2_reg:
                decay = weight[sample] * l2_reg
                for k in range(dim):
                    vector_grad[k] += decay * vector[k]
                bias_grad += decay * bias[0] if fit_bias else np.float32(0.0)
            if not alternating:
                penalty = _l2_term(l2_reg, values, vector, bias[0]) if l2_reg else np.float32(0.0)
                loss_sum += _sample_loss(p, label[sample], penalty)
        for k in range(dim):
            vector[k] = vector[k] - lr * vector_grad[k]
        if fit_bias:
            bias[0] = bias[0] - lr * bias_grad
        if alternating:  # a fresh forward pass with the stepped head
            for position in range(fill):
                sample = first + position
                values = local[row[sample]]
                p, gradients[position] = _probability_gradient(
                    vector, bias[0], values, label[sample], weight[sample])
                penalty = _l2_term(l2_reg, values, vector, bias[0]) if l2_reg else np.float32(0.0)
                loss_sum += _sample_loss(p, label[sample], penalty)
            head_vector[:] = vector
        # The rows' step, every gradient taken from the rows as the mini-batch found them:
        # without L2 a row's gradient does not read the row.
        if l2_reg:
            for position in range(fill):
                sample = first + position
                values = local[row[sample]]
                decay = weight[sample] * l2_reg
                for k in range(dim):
                    row_delta[position, k] = -item_lr * (gradients[position] * head_vector[k]
                                                         + decay * values[k])
            for position in range(fill):
                values = local[row[first + position]]
                for k in range(dim):
                    values[k] += row_delta[position, k]
        else:
            for position in range(fill):
                values = local[row[first + position]]
                for k in range(dim):
                    values[k] += -item_lr * (gradients[position] * head_vector[k])
    return loss_sum
