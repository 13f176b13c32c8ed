"""User-item interactions as a PyG :class:`~torch_geometric.data.HeteroData`.

The graph has node types ``'user'`` and ``'item'``, the edge type ``('user', 'rates', 'item')``
with optional ``rating`` and ``time`` edge attributes, and its reverse
``('item', 'rated_by', 'user')``. Raw ids are re-indexed to ``0..n-1`` in sorted order and the
raw ids are kept as ``data['user'].raw_id`` / ``data['item'].raw_id`` (an ``int64`` tensor for
integer ids, a list of strings otherwise).

Edges are stored in *client order*: sorted by user, then chronologically, so that user ``u``'s
interactions form one contiguous segment and its last entry is its latest interaction.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:  # imported where a graph is built: partitions and splits run without PyG
    from torch_geometric.data import HeteroData

log = logging.getLogger(__name__)

USER = 'user'
ITEM = 'item'
RATES = (USER, 'rates', ITEM)
RATED_BY = (ITEM, 'rated_by', USER)

RawIds = Union[Tensor, List[str]]


def _reindex(raw: np.ndarray):
    unique, index = np.unique(raw, return_inverse=True)
    if unique.dtype.kind in 'OUS':  # object, unicode or bytes: string ids
        raw_ids: RawIds = [str(value) for value in unique]
    else:
        raw_ids = torch.from_numpy(unique.astype(np.int64))
    return raw_ids, index.astype(np.int64)


def client_order(user: np.ndarray, time: Optional[np.ndarray]) -> np.ndarray:
    """The permutation that sorts interactions by user, then by time.

    Ties in time are broken by position: of two interactions with the same user and
    timestamp, the one that comes *earlier* in the input counts as the later one. This is
    what the PFedRec reference code does (pandas ``rank(method='first', ascending=False)``
    numbers tied timestamps in file order, rank 1 = test item). Without timestamps the
    input order is the chronological order.
    """
    position = np.arange(len(user))
    if time is None:
        return np.lexsort((position, user))
    return np.lexsort((-position, time, user))


def interactions_to_hetero(
    user: Sequence,
    item: Sequence,
    rating: Optional[Sequence[float]] = None,
    time: Optional[Sequence[int]] = None,
    *,
    name: str = 'interactions',
) -> HeteroData:
    """Builds the interaction graph from parallel columns of raw ids.

    Implicit feedback: an interaction is a positive when its rating is ``> 0``; rows with a
    rating ``<= 0`` are dropped, and so is every repeat of a (user, item) pair but the latest
    one. Both are counted, logged, and recorded in ``data.num_dropped``.

    Args:
        user: raw user ids (integers or strings).
        item: raw item ids, one per user entry.
        rating: optional ratings (explicit scores, play counts, ...).
        time: optional integer timestamps.
        name: a label for log messages and ``data.name``.
    """
    user = np.asarray(user)
    item = np.asarray(item)
    if user.shape != item.shape or user.ndim != 1:
        raise ValueError(f'{name}: user and item must be 1-D of equal length, '
                         f'got shapes {user.shape} and {item.shape}')
    columns = {'rating': rating, 'time': time}
    columns = {k: np.asarray(v) for k, v in columns.items() if v is not None}
    for key, values in columns.items():
        if values.shape != user.shape:
            raise ValueError(f'{name}: {key} has {values.shape[0]} entries, '
                             f'expected {user.shape[0]}')
    if len(user) == 0:
        raise ValueError(f'{name}: no interactions')

    dropped = {}
    keep = np.ones(len(user), dtype=bool)
    if 'rating' in columns:
        keep &= columns['rating'] > 0
        dropped['non_positive_rating'] = int((~keep).sum())

    user_raw, user_index = _reindex(user[keep])
    item_raw, item_index = _reindex(item[keep])
    columns = {k: v[keep] for k, v in columns.items()}

    order = client_order(user_index, columns.get('time'))
    user_index, item_index = user_index[order], item_index[order]
    columns = {k: v[order] for k, v in columns.items()}

    # Within a user's chronological segment keep the last occurrence of each item.
    num_items = len(item_raw)
    key = user_index * num_items + item_index
    reversed_first = np.unique(key[::-1], return_index=True)[1]
    last = np.sort(len(key) - 1 - reversed_first)
    dropped['repeated_pair'] = len(key) - len(last)
    user_index, item_index = user_index[last], item_index[last]
    columns = {k: v[last] for k, v in columns.items()}

    for reason, count in dropped.items():
        if count:
            log.info('%s: dropped %d interactions (%s)', name, count, reason.replace('_', ' '))
    if len(user_index) == 0:
        raise ValueError(f'{name}: no positive interaction (every rating is <= 0)')

    from torch_geometric.data import HeteroData

    data = HeteroData()
    data.name = name
    data.num_dropped = dropped
    data[USER].num_nodes = len(user_raw)
    data[USER].raw_id = user_raw
    data[ITEM].num_nodes = num_items
    data[ITEM].raw_id = item_raw
    edge_index = torch.from_numpy(np.stack([user_index, item_index]))
    data[RATES].edge_index = edge_index
    if 'rating' in columns:
        data[RATES].rating = torch.from_numpy(columns['rating'].astype(np.float32))
    if 'time' in columns:
        data[RATES].time = torch.from_numpy(columns['time'].astype(np.int64))
    data[RATED_BY].edge_index = edge_index.flip(0)
    return data


def with_edges(data: HeteroData, edge_mask: Tensor) -> HeteroData:
    """A copy of ``data`` that keeps the ``rates`` edges where ``edge_mask`` is true.

    Nodes, raw-id maps and edge order are kept; the reverse edges are rebuilt.
    """
    out = data.__copy__()
    store = data[RATES]
    for key, value in store.items():
        if isinstance(value, Tensor) and store.is_edge_attr(key):
            out[RATES][key] = value[..., edge_mask] if key == 'edge_index' else value[edge_mask]
    out[RATED_BY].edge_index = out[RATES].edge_index.flip(0)
    return out


def with_users(data: HeteroData, user_mask: Tensor) -> HeteroData:
    """A copy of ``data`` restricted to the users where ``user_mask`` is true.

    Users are re-indexed contiguously (their raw ids follow); items are kept as they are.
    """
    edge_index = data[RATES].edge_index
    out = with_edges(data, user_mask[edge_index[0]])
    new_index = torch.full((user_mask.numel(),), -1, dtype=torch.long)
    new_index[user_mask] = torch.arange(int(user_mask.sum()))
    kept_edges = out[RATES].edge_index
    out[RATES].edge_index = torch.stack([new_index[kept_edges[0]], kept_edges[1]])
    out[RATED_BY].edge_index = out[RATES].edge_index.flip(0)
    out[USER].num_nodes = int(user_mask.sum())
    raw = data[USER].raw_id
    out[USER].raw_id = raw[user_mask] if isinstance(raw, Tensor) else [
        r for r, keep in zip(raw, user_mask.tolist()) if keep]
    return out


def as_user_item(data: HeteroData) -> HeteroData:
    """``data`` with node types ``user`` and ``item`` and edge type ``('user', 'rates',
    'item')``, whatever its own names (PyG's ``MovieLens100K``: ``('user', 'rates',
    'movie')``; ``AmazonBook``: ``('user', 'rates', 'book')``).

    The interactions are the one edge type between two node types (its reverse, if any,
    aside): the one whose source is ``user``, or else the only one. Ratings are its
    ``rating`` or ``edge_label``, times its ``time``; raw ids are the node types' ``raw_id``
    or their indices. A graph already in fedgraph's names is returned as it is.
    """
    if RATES in data.edge_types:
        return data
    between = [edge for edge in data.edge_types if edge[0] != edge[2]]
    forward = [edge for edge in between if edge[0] == USER] or between
    if len({(source, target) for source, _, target in forward}) != 1:
        raise ValueError(f'cannot tell which edges are the user-item interactions among '
                         f'{data.edge_types}: name them {RATES}')
    edge_type = forward[0]
    user_type, _, item_type = edge_type
    store = data[edge_type]
    from torch_geometric.data import HeteroData

    out = HeteroData()
    out.name = getattr(data, 'name', None) or '-'.join(edge_type)
    for node_type, source in ((USER, user_type), (ITEM, item_type)):
        out[node_type].num_nodes = data[source].num_nodes
        out[node_type].raw_id = getattr(data[source], 'raw_id',
                                        torch.arange(data[source].num_nodes))
    out[RATES].edge_index = store.edge_index
    rating = store.get('rating', store.get('edge_label'))
    if rating is not None:
        out[RATES].rating = rating.to(torch.float32).view(-1)
    if 'time' in store:
        out[RATES].time = store.time.to(torch.int64).view(-1)
    out[RATED_BY].edge_index = store.edge_index.flip(0)
    log.info('%s: %s read as the interactions %s', out.name, edge_type, RATES)
    return out


def in_client_order(data: HeteroData) -> HeteroData:
    """``data`` (in fedgraph's names, :func:`as_user_item`) with its ``rates`` edges in client
    order: sorted by user, then time.

    A graph already sorted that way is returned as it is (so the order of tied timestamps
    that :func:`interactions_to_hetero` chose is kept); any other graph, e.g. one built by
    hand, is sorted with :func:`client_order`.
    """
    data = as_user_item(data)
    store = data[RATES]
    user = store.edge_index[0]
    ordered = user[1:] >= user[:-1]
    if 'time' in store:
        ordered &= (user[1:] > user[:-1]) | (store.time[1:] >= store.time[:-1])
    if bool(ordered.all()):
        return data
    time = store.time.numpy() if 'time' in store else None
    order = torch.from_numpy(client_order(user.numpy(), time))
    out = data.__copy__()
    for key, value in store.items():
        if isinstance(value, Tensor) and store.is_edge_attr(key):
            out[RATES][key] = value[:, order] if key == 'edge_index' else value[order]
    out[RATED_BY].edge_index = out[RATES].edge_index.flip(0)
    return out
