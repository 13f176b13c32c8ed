"""A data set at a glance: counts, sparsity, degree statistics and split sizes."""
from __future__ import annotations

from typing import Dict

import torch
from torch_geometric.data import HeteroData

from fedgraph.data.hetero import ITEM, RATES, USER
from fedgraph.data.partition import ClientPartition
from fedgraph.data.split import SampledSplit


def describe(data: HeteroData) -> Dict[str, object]:
    """Counts and degree statistics of an interaction graph.

    Per-user statistics are segment reductions over the client partition.
    """
    partition = ClientPartition.from_data(data)
    num_users, num_items = data[USER].num_nodes, data[ITEM].num_nodes
    ones = torch.ones(partition.num_interactions, dtype=torch.float64)
    degree = partition.reduce(ones, 'sum')
    item_degree = partition.item_degree.double()
    summary = {
        'users': num_users,
        'items': num_items,
        'interactions': partition.num_interactions,
        'density': partition.num_interactions / (num_users * num_items),
        'user_degree': _stats(degree),
        'item_degree': _stats(item_degree),
        'dropped': dict(getattr(data, 'num_dropped', {})),
    }
    store = data[RATES]
    if 'rating' in store:
        user_mean = partition.reduce(store.rating.double(), 'mean')
        summary['mean_rating'] = float(store.rating.double().mean())
        summary['user_mean_rating'] = _stats(user_mean)
    return summary


def describe_split(split: SampledSplit) -> Dict[str, int]:
    """Sizes of a leave-one-out split."""
    return {
        'users': int(split.val_item.numel()),
        'filtered_users': split.num_filtered_users,
        'train': int(split.train[RATES].edge_index.size(1)),
        'validation': int(split.val_item.numel()),
        'test': int(split.test_item.numel()),
        'negatives_per_user': int(split.val_negatives.size(1)),
    }


def _stats(values: torch.Tensor) -> Dict[str, float]:
    return {'min': float(values.min()), 'median': float(values.median()),
            'mean': float(values.mean()), 'max': float(values.max())}
