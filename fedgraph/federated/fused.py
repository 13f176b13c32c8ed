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
    step = torch.repeat_interleave(torch.arange(plan.num_steps), plan.step_ptr.diff())
    probability = torch.empty(plan.item.numel(), dtype=local.dtype)
    penalty = torch.zeros_like(probability)
    # Clients differ in size: threads take them a few at a time.
    chunksize = numba.set_parallel_chunksize(CLIENTS_PER_CHUNK)
    try:
        _local_sgd(table.numpy(), plan.row_item.numpy(), local.numpy(), change.numpy(),
                   plan.row_owner.numpy(), vector.numpy(), bias.numpy(), bias_name is not None,
                   plan.row.numpy(), plan.owner.numpy(), step.numpy(), plan.label.numpy(),
                   plan.weight.numpy(), np.float32(training.lr), np.float32(training.item_lr),
                   np.float32(training.l2_reg), training.alternating, probability.numpy(),
                   penalty.numpy())
    finally:
        numba.set_parallel_chunksize(chunksize)
    # BCE with its logs floored at -100, as BCELoss computes it (up to rounding: log(1 - p)
    # for its log1p(-p)), for 0/1 labels.
    likelihood = torch.where(plan.label == 1, probability, 1 - probability)
    sample_loss = likelihood.log_().clamp_min_(-100).neg_().add_(penalty)
    trained = {vector_name: vector}
    if bias_name:
        trained[bias_name] = bias
    loss_sum = torch.zeros(plan.clients.numel(), dtype=local.dtype).index_add_(
        0, plan.owner, sample_loss)
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


@numba.njit(cache=True, nogil=True)
def _by_owner(owner: np.ndarray, num_clients: int) -> Tuple[np.ndarray, np.ndarray]:
    """A stable counting sort of the samples by client: ``order[start[c]:start[c + 1]]``
    are client ``c``'s samples in plan order (local step by local step)."""
    start = np.zeros(num_clients + 1, np.int64)
    for sample in range(owner.size):
        start[owner[sample] + 1] += 1
    for client in range(num_clients):
        start[client + 1] += start[client]
    fill = start[:-1].copy()
    order = np.empty(owner.size, np.int64)
    for sample in range(owner.size):
        order[fill[owner[sample]]] = sample
        fill[owner[sample]] += 1
    return order, start


@numba.njit(cache=True, nogil=True, parallel=True)
def _local_sgd(table, row_item, local, change, row_owner, vector, bias, fit_bias, row, owner,
               step, label, weight, lr, item_lr, l2_reg, alternating, probability, penalty):
    order, start = _by_owner(owner, vector.shape[0])
    row_start = np.searchsorted(row_owner, np.arange(vector.shape[0] + 1))  # sorted by client
    for client in numba.prange(vector.shape[0]):
        # A client's rows are contiguous: gathered in order, they are in cache when trained.
        for local_row in range(row_start[client], row_start[client + 1]):
            source, target = table[row_item[local_row]], local[local_row]
            for k in range(source.size):
                target[k] = source[k]
        _train_client(local, vector[client], bias[client:client + 1], fit_bias,
                      order[start[client]:start[client + 1]], row, step, label, weight, lr,
                      item_lr, l2_reg, alternating, probability, penalty)
        for local_row in range(row_start[client], row_start[client + 1]):
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
def _train_client(local, vector, bias, fit_bias, samples, row, step, label, weight, lr,
                  item_lr, l2_reg, alternating, probability, penalty):
    """One client's local steps: its mini-batches are the runs of equal ``step`` in
    ``samples``. Writes each sample's :math:`p_n` and L2 term of the loss it reports (after
    the head's step, when alternating)."""
    dim = vector.size
    vector_grad = np.empty(dim, np.float32)
    head_vector = np.empty(dim, np.float32)
    row_delta = np.empty((0, dim), np.float32)
    gradients = np.empty(0, np.float32)
    first = 0
    while first < samples.size:
        last = first
        while last < samples.size and step[samples[last]] == step[samples[first]]:
            last += 1
        batch = samples[first:last]
        if gradients.size < batch.size:
            gradients = np.empty(batch.size, np.float32)
            if l2_reg:
                row_delta = np.empty((batch.size, dim), np.float32)
        # The head's step (alternating) or gradient (joint), from the rows as they are.
        vector_grad[:] = 0
        bias_grad = np.float32(0.0)
        head_vector[:] = vector
        for position in range(batch.size):
            sample = batch[position]
            values = local[row[sample]]
            p, gradient = _probability_gradient(vector, bias[0], values, label[sample],
                                                weight[sample])
            gradients[position] = gradient
            for k in range(dim):
                vector_grad[k] += gradient * values[k]
            bias_grad += gradient
            if not alternating:
                probability[sample] = p
            if l2_reg:
                decay = weight[sample] * l2_reg
                for k in range(dim):
                    vector_grad[k] += decay * vector[k]
                bias_grad += decay * bias[0] if fit_bias else np.float32(0.0)
                if not alternating:
                    penalty[sample] = _l2_term(l2_reg, values, vector, bias[0])
        for k in range(dim):
            vector[k] = vector[k] - lr * vector_grad[k]
        if fit_bias:
            bias[0] = bias[0] - lr * bias_grad
        if alternating:  # a fresh forward pass with the stepped head
            for position in range(batch.size):
                sample = batch[position]
                values = local[row[sample]]
                probability[sample], gradients[position] = _probability_gradient(
                    vector, bias[0], values, label[sample], weight[sample])
                if l2_reg:
                    penalty[sample] = _l2_term(l2_reg, values, vector, bias[0])
            head_vector[:] = vector
        # The rows' step, every gradient taken from the rows as the mini-batch found them:
        # without L2 a row's gradient does not read the row.
        if l2_reg:
            for position in range(batch.size):
                sample = batch[position]
                values = local[row[sample]]
                decay = weight[sample] * l2_reg
                for k in range(dim):
                    row_delta[position, k] = -item_lr * (gradients[position] * head_vector[k]
                                                         + decay * values[k])
            for position in range(batch.size):
                values = local[row[batch[position]]]
                for k in range(dim):
                    values[k] += row_delta[position, k]
        else:
            for position in range(batch.size):
                values = local[row[batch[position]]]
                for k in range(dim):
                    values[k] += -item_lr * (gradients[position] * head_vector[k])
        first = last
