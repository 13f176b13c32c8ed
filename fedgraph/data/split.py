"""Train / validation / test splits for the two evaluation protocols.

* :func:`leave_one_out_split` -- the *sampled* protocol of PFedRec: each user's latest
  interaction is its test item, the second latest its validation item, and each is ranked
  against 99 fixed negatives the user never interacted with.
* :func:`ratio_split` -- the *full-ranking* protocol of PerFedRec++: each user's interactions
  are split by ratio (at random or by time) and all items are ranked, training items masked.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, Optional, Sequence

import torch
from torch import Tensor

from fedgraph.deprecation import warn_renamed
from fedgraph.data.hetero import ITEM, RATES, USER, in_client_order, with_edges, with_users
from fedgraph.data.partition import ClientPartition

if TYPE_CHECKING:
    from torch_geometric.data import HeteroData

log = logging.getLogger(__name__)


@dataclass
class SampledSplit:
    """Leave-one-out split with sampled negatives (one row per user).

    Attributes:
        train: the training interactions (every user keeps at least one).
        val_item, test_item: ``[U]`` each user's validation / test item.
        val_negatives, test_negatives: ``[U, n]`` items the user never interacted with,
            disjoint from each other.
        num_filtered_users: users dropped for having fewer than 3 interactions.
    """
    train: HeteroData
    val_item: Tensor
    test_item: Tensor
    val_negatives: Tensor
    test_negatives: Tensor
    num_filtered_users: int = 0

    @property
    def protocol(self) -> str:
        return 'sampled'

    def candidates(self) -> Dict[str, Tensor]:
        """``{'val': [U, 1 + n], 'test': [U, 1 + n]}``: row ``u`` is user ``u``'s held-out
        item, then its negatives (what the sampled protocol scores)."""
        return {'val': torch.cat([self.val_item.unsqueeze(1), self.val_negatives], 1),
                'test': torch.cat([self.test_item.unsqueeze(1), self.test_negatives], 1)}

    def known_items(self, candidates: bool = False) -> ClientPartition:
        """Each user's training, validation and test items: the items the PFedRec code never
        draws as a training negative for that user (its negatives come from the items the
        user never rated); with ``candidates``, its sampled validation and test negatives
        too, so that training never scores an item it will be evaluated on."""
        users = torch.arange(self.val_item.numel())
        parts = [self.train[RATES].edge_index, torch.stack([users, self.val_item]),
                 torch.stack([users, self.test_item])]
        if candidates:
            for negatives in (self.val_negatives, self.test_negatives):
                parts.append(torch.stack([users.repeat_interleave(negatives.size(1)),
                                          negatives.reshape(-1)]))
        edge_index = torch.cat(parts, dim=1)
        return ClientPartition.from_edge_index(edge_index, self.train[USER].num_nodes,
                                               self.train[ITEM].num_nodes)


@dataclass
class RankingSplit:
    """Per-user ratio split for full ranking.

    Attributes:
        train: the training interactions.
        val, test: each user's held-out items (a user may hold none).
    """
    train: HeteroData
    val: ClientPartition
    test: ClientPartition

    @property
    def protocol(self) -> str:
        return 'full'

    def known_items(self) -> ClientPartition:
        """Each user's training items: under full ranking, training negatives are drawn from
        all other items, as in the LightGCN code."""
        return ClientPartition.from_data(self.train)


def _held_out(data: HeteroData, edge_mask: Tensor) -> ClientPartition:
    """The ``rates`` edges of ``data`` where ``edge_mask`` holds, grouped by user."""
    return ClientPartition.from_edge_index(data[RATES].edge_index[:, edge_mask],
                                           data[USER].num_nodes, data[ITEM].num_nodes)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def leave_one_out_split(data: HeteroData, eval_negatives: int = 99, seed: int = 0, *,
                        num_negatives: Optional[int] = None) -> SampledSplit:
    """The leave-one-out split of the PFedRec paper.

    Each user's interactions are in chronological order (see
    :func:`~fedgraph.data.hetero.client_order` for ties); the last one is the test item, the
    one before the validation item, the rest are training data. ``2 * eval_negatives``
    distinct items the user never interacted with are drawn once from ``seed``: the first
    half are the validation negatives, the second half the test negatives, as in the
    reference code. Users with fewer than 3 interactions cannot be split and are dropped
    (counted and logged). ``num_negatives`` is the deprecated name of ``eval_negatives``
    (``TrainConfig.num_negatives`` is the training negatives).
    """
    if num_negatives is not None:
        warn_renamed('leave_one_out_split(eval_negatives=...)', 'eval_negatives')
        eval_negatives = num_negatives
    data = in_client_order(data)
    partition = ClientPartition.from_data(data)
    enough = partition.degree >= 3
    num_filtered = int((~enough).sum())
    if num_filtered:
        log.info('%s: dropped %d of %d users with fewer than 3 interactions '
                 '(leave-one-out needs a train, a validation and a test item)',
                 getattr(data, 'name', 'data'), num_filtered, partition.num_clients)
        if num_filtered == partition.num_clients:
            raise ValueError('no user has the 3 interactions leave-one-out needs')
        data = with_users(data, enough)
        partition = ClientPartition.from_data(data)

    last = partition.ptr[1:] - 1
    test_item = partition.col[last]
    val_item = partition.col[last - 1]
    train_mask = torch.ones(partition.num_interactions, dtype=torch.bool)
    train_mask[last] = False
    train_mask[last - 1] = False

    users = torch.arange(partition.num_clients)
    free = partition.num_items - partition.degree
    if int(free.min()) < 2 * eval_negatives:
        worst = int(free.argmin())
        raise ValueError(
            f'{getattr(data, "name", "data")}: user {_raw_id(data, worst)} interacted with '
            f'{int(partition.degree[worst])} of {partition.num_items} items, leaving '
            f'{int(free[worst])} to draw negatives from; the sampled protocol draws '
            f'{eval_negatives} validation and {eval_negatives} test negatives per user: lower '
            f'eval_negatives (--eval-negatives) to at most {int(free.min()) // 2}, or use the '
            f'full-ranking protocol (--protocol full)')
    negatives = partition.sample_negatives(users, 2 * eval_negatives, _generator(seed))
    return SampledSplit(
        train=with_edges(data, train_mask),
        val_item=val_item,
        test_item=test_item,
        val_negatives=negatives[:, :eval_negatives].contiguous(),
        test_negatives=negatives[:, eval_negatives:].contiguous(),
        num_filtered_users=num_filtered,
    )


def _raw_id(data: HeteroData, user: int):
    """User ``user``'s id in the user's own file (its index when there is none)."""
    raw = getattr(data[USER], 'raw_id', None)
    if raw is None:
        return user
    value = raw[user]
    return value.item() if isinstance(value, Tensor) else value


def ratio_split(data: HeteroData, ratios: Sequence[float] = (0.8, 0.1, 0.1),
                mode: str = 'random', seed: int = 0) -> RankingSplit:
    """Splits each user's interactions into train / validation / test by ratio.

    A user with ``n`` interactions gives ``floor(n * r_val)`` to validation,
    ``floor(n * r_test)`` to test and the rest (at least one) to training.

    Args:
        data: the interaction graph.
        ratios: ``(train, val, test)``, summing to 1.
        mode: ``'random'`` (a seeded shuffle per user) or ``'temporal'`` (the latest
            interactions go to test, the ones before them to validation).
        seed: the seed of the random mode.
    """
    if len(ratios) != 3 or min(ratios) < 0 or abs(sum(ratios) - 1) > 1e-6 or ratios[0] <= 0:
        raise ValueError(f'ratios must be (train, val, test) >= 0 with train > 0 summing to 1, '
                         f'got {tuple(ratios)}')
    if mode not in ('random', 'temporal'):
        raise ValueError(f"mode must be 'random' or 'temporal', got {mode!r}")
    data = in_client_order(data)
    partition = ClientPartition.from_data(data)
    degree = partition.degree
    num_val = torch.floor(degree * ratios[1] + 1e-9).long()
    num_test = torch.floor(degree * ratios[2] + 1e-9).long()

    # Position of each interaction in its user's order: chronological or shuffled.
    row = partition.row
    position = torch.arange(partition.num_interactions) - partition.ptr[row]
    if mode == 'random':
        noise = torch.rand(partition.num_interactions, generator=_generator(seed))
        order = torch.sort(noise, stable=True).indices
        order = order[torch.sort(row[order], stable=True).indices]
        position = torch.empty_like(position).scatter_(0, order, position)
    from_end = degree[row] - 1 - position
    is_test = from_end < num_test[row]
    is_val = ~is_test & (from_end < (num_test + num_val)[row])

    no_test = int((num_test == 0).sum())
    if no_test:
        log.info('%s: %d of %d users have too few interactions for a test item and are not '
                 'evaluated', getattr(data, 'name', 'data'), no_test, partition.num_clients)
    return RankingSplit(train=with_edges(data, ~(is_test | is_val)),
                        val=_held_out(data, is_val), test=_held_out(data, is_test))


def predefined_split(data: HeteroData, val_ratio: float = 0.1, seed: int = 0) -> RankingSplit:
    """The split stored in the edge attribute ``split`` (0 train, 1 validation, 2 test), as
    read by :func:`~fedgraph.data.formats.read_lightgcn`. Data without validation
    interactions (LightGCN's own folders have only ``train.txt`` and ``test.txt``) hold out
    ``floor(n * val_ratio)`` of each user's ``n`` training interactions, drawn at random
    from ``seed``, for validation."""
    if 'split' not in data[RATES]:
        raise ValueError("this graph has no predefined split (edge attribute 'split')")
    data = in_client_order(data)
    code = data[RATES].split
    test = _held_out(data, code == 2)
    if bool((code == 1).any()):
        return RankingSplit(train=with_edges(data, code == 0), val=_held_out(data, code == 1),
                            test=test)
    log.info('%s: no validation interactions; %g of each user\'s training interactions '
             'are held out for validation', getattr(data, 'name', 'data'), val_ratio)
    inner = ratio_split(with_edges(data, code == 0), (1 - val_ratio, val_ratio, 0.0),
                        seed=seed)
    return RankingSplit(train=inner.train, val=inner.val, test=test)


def split_state(split: 'SampledSplit | RankingSplit') -> Dict[str, object]:
    """``split`` as plain tensors, numbers, strings, lists and dicts (what
    ``torch.load(..., weights_only=True)`` reads back): its protocol, its training graph as
    :meth:`HeteroData.to_dict` gives it, and its held-out items."""
    state: Dict[str, object] = {'protocol': split.protocol, 'train': split.train.to_dict()}
    if isinstance(split, SampledSplit):
        state.update(val_item=split.val_item, test_item=split.test_item,
                     val_negatives=split.val_negatives, test_negatives=split.test_negatives,
                     num_filtered_users=split.num_filtered_users)
    else:
        for name in ('val', 'test'):
            part = getattr(split, name)
            state[name] = {'ptr': part.ptr, 'col': part.col, 'num_items': part.num_items}
    return state


def split_from_state(state: Dict[str, object]) -> 'SampledSplit | RankingSplit':
    """The split :func:`split_state` wrote."""
    from torch_geometric.data import HeteroData

    train = HeteroData.from_dict(state['train'])
    if state['protocol'] == 'sampled':
        return SampledSplit(train, state['val_item'], state['test_item'],
                            state['val_negatives'], state['test_negatives'],
                            int(state['num_filtered_users']))
    return RankingSplit(train, *(ClientPartition(state[name]['ptr'], state[name]['col'],
                                                 state[name]['num_items'])
                                 for name in ('val', 'test')))
