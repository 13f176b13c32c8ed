"""The server's trust boundary: what it checks of the clients' messages before they enter
the model, in-process and in a deployment alike, in one place.

A client's upload is dropped, whole, when a row, a dense parameter or another per-client
tensor it sent is not finite (NaN, inf, or so large that its norm overflows), or when a row
names an item that does not exist (:func:`screen`); a deployment's server also drops a
device's reply that is not a :class:`~fedgraph.federated.messages.TrainReply`, users a device
was not asked to train and users uploaded twice (:func:`accept_train_replies`), and an
evaluation reply that is not :class:`~fedgraph.federated.messages.EvaluationSums` for the
users the device holds (:func:`accept_evaluations`). A dropped upload never enters the model
and does not count in the mean; the round's record counts the drops by reason. Outside the
rounds (enrollment uploads, pre-training) a device's reply is cut to the entries the server
can accept (:func:`restrict_reply`).
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Mapping, Optional, Tuple

import numba
import numpy as np
import torch
from torch import Tensor

from fedgraph.federated.messages import ClientRound, EvaluationSums, TrainReply


def clients_repeating_rows(owner: Tensor, item: Tensor, num_items: int,
                           num_clients: int) -> Tensor:
    """``[num_clients]`` whether each client uploaded some item's row twice (row ``r``: client
    ``owner[r]``'s row of item ``item[r]``, in ``[0, num_items)``): one pass over rows grouped
    by client, remembering each item's latest client; rows not grouped by client are grouped
    first (a stable sort)."""
    owner, item = owner.cpu(), item.cpu()
    if owner.numel() > 1 and not bool((owner[1:] >= owner[:-1]).all()):
        order = torch.sort(owner, stable=True).indices
        owner, item = owner[order], item[order]
    found = torch.zeros(num_clients, dtype=torch.bool)
    _repeating(owner.contiguous().numpy(), item.contiguous().numpy(), num_items,
               found.numpy())
    return found


@numba.njit(cache=True, nogil=True)
def _repeating(owner, item, num_items, found):
    latest = np.full(num_items, -1, np.int64)
    for row in range(owner.size):
        if latest[item[row]] == owner[row]:
            found[owner[row]] = True
        else:
            latest[item[row]] = owner[row]


def finite_rows(values: Tensor) -> Tensor:
    """``[N]`` whether each row of ``values`` ``[N, ...]`` is finite, norm included: a NaN
    or an infinite entry makes the row's L2 norm NaN or infinite, as do entries whose squares
    overflow, so the norm alone tells (one pass over the rows)."""
    return torch.isfinite(values.reshape(values.size(0), -1).norm(dim=1))


def screen(result: ClientRound, num_items: int, extra: Optional[Dict[str, Tensor]] = None,
           samples_per_row: Optional[int] = None
           ) -> Tuple[ClientRound, Dict[str, Tensor], Dict[str, int]]:
    """The round's uploads without the clients that sent an item id out of range
    (``bad_item``), a non-finite tensor or loss (``non_finite``), the same item's row twice
    (``repeated_row``: one client's upload counts once per row, whatever the rule), or a
    sample count that its upload cannot back (``bad_samples``: weighted FedAvg weighs by
    it): below 1, or above ``samples_per_row`` times its rows (a client trains each of its
    positives, whose rows it uploads, with ``samples_per_row - 1`` negatives, so it has at
    most that many samples per row); a client is counted under the first of these reasons
    that holds.

    Args:
        result: what the round's clients handed the server.
        num_items: the catalogue size.
        extra: other per-client tensors ``[B, ...]`` in the order of
            ``result.upload.clients`` (a graph model's user-embedding changes).
        samples_per_row: the samples a row backs (``1 + num_negatives``; ``None``: no
            upper bound).

    Returns:
        ``(kept round, kept extra, {reason: clients dropped})``.
    """
    upload, extra = result.upload, dict(extra or {})
    num = upload.clients.numel()
    owner = upload.row_owner

    def clients_with(bad_rows: Tensor) -> Tensor:
        return torch.zeros(num, dtype=torch.bool).index_fill_(0, owner[bad_rows], True)

    out_of_range = (upload.row_item < 0) | (upload.row_item >= num_items)
    bad_item = clients_with(out_of_range)
    bad_value = clients_with(~finite_rows(upload.update))
    for value in list(upload.dense.values()) + list(extra.values()):
        bad_value |= ~finite_rows(value)
    if result.loss.is_floating_point():
        bad_value |= ~torch.isfinite(result.loss)
    in_range = ~out_of_range if bool(bad_item.any()) else slice(None)
    repeated = clients_repeating_rows(owner[in_range], upload.row_item[in_range], num_items,
                                      num).to(bad_item.device)
    samples = result.num_samples
    bad_samples = ~(samples >= 1)  # NaN included
    if samples.is_floating_point():
        bad_samples |= torch.isinf(samples)
    if samples_per_row is not None:
        rows = torch.bincount(owner.cpu(), minlength=num).to(bad_samples.device)
        bad_samples |= samples > rows * samples_per_row
    dropped, drop = {}, torch.zeros(num, dtype=torch.bool)
    for reason, bad in (('bad_item', bad_item), ('non_finite', bad_value),
                        ('repeated_row', repeated), ('bad_samples', bad_samples)):
        count = int((bad & ~drop).sum())
        if count:
            dropped[reason] = count
        drop |= bad
    if not dropped:
        return result, extra, {}
    keep = ~drop
    position = torch.cumsum(keep, 0) - 1
    rows = keep[owner]
    kept = dataclasses.replace(
        result,
        upload=dataclasses.replace(
            upload, clients=upload.clients[keep], row_owner=position[owner[rows]],
            row_item=upload.row_item[rows], update=upload.update[rows],
            dense={k: v[keep] for k, v in upload.dense.items()}),
        num_samples=result.num_samples[keep], loss=result.loss[keep],
        generators=None if result.generators is None else
        [g for g, kept_one in zip(result.generators, keep.tolist()) if kept_one])
    return kept, {k: v[keep] for k, v in extra.items()}, dropped


#: The per-user tensors of a device's replies outside a round (enrollment uploads,
#: pre-training): an index tensor of user ids, and the tensors with one entry per entry of
#: it (float: one row per entry ``[n, ..., d]``; ``edge-item``: item ids).
BY_INDEX = {'users': ('user-update', 'views'), 'edge-user': ('edge-item',)}


def restrict_reply(reply: Mapping[str, object], held: Tensor, num_items: int, dim: int
                   ) -> Tuple[Optional[Dict[str, object]], Dict[str, int]]:
    """A device's reply outside a round with only the entries the server can accept: for
    users the device holds (``held``), of finite values, naming items that exist.

    Returns:
        ``(reply, {reason: entries dropped})``; the reply is ``None`` (reason ``malformed``)
        when an index is not a vector of ids or a tensor does not line up with its index.
    """
    out, dropped = dict(reply), {}
    for index_key, aligned in BY_INDEX.items():
        index = reply.get(index_key)
        if index is None:
            continue
        if not isinstance(index, Tensor) or index.dim() != 1 or index.is_floating_point():
            return None, {'malformed': 1}
        keep = torch.ones_like(index, dtype=torch.bool)
        reasons = {'not_held': ~torch.isin(index, held)}
        for key in (key for key in aligned if key in reply):
            value = reply[key]
            if (not isinstance(value, Tensor) or value.dim() == 0
                    or value.size(0) != index.numel()
                    or value.is_floating_point() != (value.dim() > 1)
                    or (value.is_floating_point() and value.size(-1) != dim)):
                return None, {'malformed': 1}
            if value.is_floating_point():
                reasons['non_finite'] = reasons.get('non_finite', False) | ~finite_rows(value)
            else:
                reasons['bad_item'] = (value < 0) | (value >= num_items)
        for reason, bad in reasons.items():
            _count(dropped, reason, (bad & keep).sum())
            keep &= ~bad
        if not bool(keep.all()):
            out[index_key] = index[keep]
            for key in (key for key in aligned if key in reply):
                out[key] = reply[key][keep]
    return out, dropped


def _first_of_each(users: Tensor) -> Tensor:
    """``[n]`` whether each entry is the first occurrence of its value in ``users``."""
    order = torch.sort(users, stable=True).indices
    sorted_users = users[order]
    first = torch.ones(users.numel(), dtype=torch.bool)
    first[1:] = sorted_users[1:] != sorted_users[:-1]
    return torch.empty_like(first).index_put_((order,), first)


def _count(dropped: Dict[str, int], reason: str, count) -> None:
    if count:
        dropped[reason] = dropped.get(reason, 0) + int(count)


def accept_train_replies(replies: Mapping[int, Mapping[str, object]],
                         asked: Mapping[int, Tensor], num_users: int, dim: int,
                         dense: Mapping[str, Tuple[int, ...]]
                         ) -> Tuple[List[TrainReply], Dict[str, int]]:
    """The devices' round uploads restricted to what the server asked for: a device's users
    that it was sent this round (``asked[node]``), each once in the round, and their rows;
    a reply that is not a :class:`~fedgraph.federated.messages.TrainReply` of this model
    (``dim``, the dense parameters' shapes) is dropped whole. Returns the accepted replies,
    in node order, and the users dropped by reason (``not_selected``, ``duplicate_user``;
    ``malformed``: devices)."""
    dropped: Dict[str, int] = {}
    seen = torch.zeros(num_users, dtype=torch.bool)
    out = []
    for node, payload in sorted(replies.items()):
        reply = TrainReply.parse(payload, dim, dense)
        if reply is None:
            _count(dropped, 'malformed', 1)
            continue
        users = reply.users
        ours = torch.isin(users, asked.get(node, torch.empty(0, dtype=torch.long)))
        fresh = ours & ~seen[users.clamp(0, num_users - 1)] & _first_of_each(users)
        _count(dropped, 'not_selected', (~ours).sum())
        _count(dropped, 'duplicate_user', (ours & ~fresh).sum())
        seen[users[fresh]] = True
        out.append(reply.keep(fresh))
    return out, dropped


def accept_evaluations(replies: Mapping[int, Mapping[str, object]],
                       held: Mapping[int, Tensor]) -> Tuple[Dict[int, EvaluationSums], int]:
    """The devices' evaluation replies that are
    :class:`~fedgraph.federated.messages.EvaluationSums` for the users each holds
    (``held[node]``: a count of them, sums in range); returns them by node and how many
    were dropped."""
    accepted = {}
    for node, payload in replies.items():
        sums = EvaluationSums.parse(payload, held[node].numel()) if node in held else None
        if sums is not None:
            accepted[node] = sums
    return accepted, len(replies) - len(accepted)

