"""A seeded synthetic interaction generator with power-law user and item degrees."""
from __future__ import annotations

import logging

import numpy as np
import torch
from torch_geometric.data import HeteroData

from fedgraph.data.hetero import ITEM, RATED_BY, RATES, USER

log = logging.getLogger(__name__)

#: Draws per wanted interaction, so that repeats rarely leave a user short.
OVERSAMPLING = 1.5


def synthetic_interactions(num_users: int = 1000, num_items: int = 2000,
                           mean_degree: float = 20.0, user_exponent: float = 2.5,
                           item_exponent: float = 1.0, min_degree: int = 5,
                           seed: int = 0, chunk_size: int = 1 << 22,
                           num_communities: int = 0, affinity: float = 0.0) -> HeteroData:
    """Interactions whose user and item degrees follow power laws, optionally with a planted
    community structure for a model to find.

    * User degrees are ``min_degree + Pareto`` draws: ``P(deg >= k)`` decays as
      ``k^-(user_exponent - 1)``, scaled so that the mean is about ``mean_degree`` and capped
      at half the catalogue.
    * Each interaction picks an item with probability proportional to ``rank^-item_exponent``
      (Zipf popularity; ranks are assigned to item ids by a random permutation), without
      repeats within a user: a user draws ``1.5 x degree + 8`` items with replacement and keeps
      the first ``degree`` distinct ones. Only a user near the cap whose draws repeat a lot
      can end up with fewer.
    * Planted structure (``num_communities`` = :math:`k > 0`): item ``item_of_rank[p]``
      belongs to community ``p mod k`` and user ``u`` to community ``u mod k``. With
      probability ``affinity`` a draw picks from the user's community only, with the Zipf
      law over the community's own ranks ``p // k``; otherwise from the whole catalogue as
      above. ``affinity = 0`` (or ``k = 0``) leaves popularity as the only signal.
    * Timestamps are the draw order, so leave-one-out splits are well defined.

    Built directly in client order, chunk by chunk, in ``O(interactions)`` memory: a million
    users with the default mean degree take well under 2 GiB.
    """
    if num_users < 1 or num_items < 2 or min_degree < 1 or mean_degree < min_degree:
        raise ValueError('need num_users >= 1, num_items >= 2 and '
                         '1 <= min_degree <= mean_degree')
    if user_exponent <= 2:
        raise ValueError('user_exponent must be > 2 for the mean degree to exist')
    if num_communities < 0 or not 0 <= affinity <= 1 or num_communities > num_items:
        raise ValueError('need 0 <= num_communities <= num_items and affinity in [0, 1]')
    rng = np.random.default_rng(seed)
    cap = max(min_degree, num_items // 2)
    # Pareto(a) with a = user_exponent - 1 has mean 1 / (a - 1); shift to min_degree.
    shape = user_exponent - 1
    scale = (mean_degree - min_degree) * (shape - 1)
    degree = min_degree + np.floor(scale * rng.pareto(shape, num_users)).astype(np.int64)
    np.minimum(degree, cap, out=degree)

    popularity = np.arange(1, num_items + 1, dtype=np.float64) ** -item_exponent
    cdf = np.cumsum(popularity)
    cdf /= cdf[-1]
    item_of_rank = rng.permutation(num_items)

    # Users in the first half, their items in the second, written chunk by chunk: no
    # per-chunk lists to join and no stacking, each a copy of every interaction.
    capacity = int(degree.sum())
    edges = np.empty(2 * capacity, np.int64)
    filled = 0
    draws = np.ceil(degree * OVERSAMPLING).astype(np.int64) + 8
    bounds = np.searchsorted(np.cumsum(draws), np.arange(chunk_size, draws.sum(), chunk_size))
    for chunk in np.split(np.arange(num_users), bounds):
        user = np.repeat(chunk, draws[chunk])
        drawn = np.searchsorted(cdf, rng.random(len(user)), side='right').clip(max=num_items - 1)
        if num_communities and affinity:
            drawn = _community_ranks(drawn, user, num_communities, affinity, item_exponent,
                                     num_items, rng)
        item = item_of_rank[drawn]
        _, first = np.unique(user * num_items + item, return_index=True)
        first.sort()  # distinct draws, in draw order within each user
        user, item = user[first], item[first]
        starts = np.r_[0, np.flatnonzero(np.diff(user)) + 1]
        rank = np.arange(len(user)) - np.repeat(starts, np.diff(np.r_[starts, len(user)]))
        keep = rank < degree[user]
        count = int(np.count_nonzero(keep))
        edges[filled:filled + count] = user[keep]
        edges[capacity + filled:capacity + filled + count] = item[keep]
        filled += count
    if filled < capacity:  # a user near the cap kept fewer: the items follow the users
        edges[filled:2 * filled] = edges[capacity:capacity + filled]
    edge_index = torch.from_numpy(edges[:2 * filled].reshape(2, filled))

    data = HeteroData()
    data.name = f'synthetic-{num_users}x{num_items}'
    if num_communities and affinity:
        data.name += f'-k{num_communities}'
    data.num_dropped = {}
    data[USER].num_nodes = num_users
    data[USER].raw_id = torch.arange(num_users)
    data[ITEM].num_nodes = num_items
    data[ITEM].raw_id = torch.arange(num_items)
    data[RATES].edge_index = edge_index
    data[RATES].time = torch.arange(filled)
    data[RATED_BY].edge_index = edge_index.flip(0)
    log.info('%s: %d interactions', data.name, filled)
    return data


def _community_ranks(rank: np.ndarray, user: np.ndarray, num_communities: int,
                     affinity: float, item_exponent: float, num_items: int,
                     rng: np.random.Generator) -> np.ndarray:
    """The global popularity ranks ``rank`` of draws by ``user``, a fraction ``affinity`` of
    them replaced by Zipf draws within the user's community (ranks ``c, c + k, c + 2k, ...``
    for community ``c = user mod k``)."""
    size = num_items // num_communities  # ranks c + k q < num_items for q < size, every c
    within = np.arange(1, size + 1, dtype=np.float64) ** -item_exponent
    cdf = np.cumsum(within)
    cdf /= cdf[-1]
    own = rng.random(len(user)) < affinity
    local = np.searchsorted(cdf, rng.random(int(own.sum())), side='right').clip(max=size - 1)
    rank = rank.copy()
    rank[own] = user[own] % num_communities + num_communities * local
    return rank
