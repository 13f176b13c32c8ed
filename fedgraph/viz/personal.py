"""PFedRec's dual personalization, seen: each user's fine-tuned view of the item table."""
from __future__ import annotations

from typing import Mapping, Optional

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor


def plot_personalized_views(global_items: Tensor, views: Mapping[str, Tensor],
                            figure: Optional[Figure] = None) -> Figure:
    """The global item embeddings next to a few users' personalized views of them.

    Left: the rows projected on the top two principal components of the global table
    (black: global; colours: the rows each user fine-tuned, i.e. where its view differs).
    Right: how far each user's view moved, the mean L2 distance between its fine-tuned rows
    and the same global rows.

    Args:
        global_items: ``[I, d]`` the global item table (or a subset of its rows).
        views: ``{user label: [I, d]}`` the same rows as each user sees them.
    """
    if not views:
        raise ValueError('pass at least one user view')
    figure = figure or Figure(figsize=(10, 4.4), layout='constrained')
    left, right = figure.subplots(1, 2, width_ratios=[1.3, 1])
    base = global_items.detach().cpu().double()
    mean = base.mean(0)
    _, _, v = torch.linalg.svd(base - mean, full_matrices=False)
    basis = v[:2].t()
    xy = ((base - mean) @ basis).numpy()
    left.scatter(xy[:, 0], xy[:, 1], s=5, color='black', alpha=0.5, label='global',
                 zorder=3)
    colours = ['tab:blue', 'tab:orange', 'tab:green', 'tab:red', 'tab:purple', 'tab:brown']
    moved = []
    palette = [colours[i % len(colours)] for i in range(len(views))]
    for (label, view), colour in zip(views.items(), palette):
        rows = view.detach().cpu().double()
        distance = (rows - base).norm(dim=1)
        tuned = distance > 0
        view_xy = ((rows[tuned] - mean) @ basis).numpy()
        left.scatter(view_xy[:, 0], view_xy[:, 1], s=6, color=colour, alpha=0.5,
                     label=f'{label} ({int(tuned.sum())} rows)')
        moved.append(float(distance[tuned].mean()) if tuned.any() else 0.0)
    left.set_title('Item embeddings: global and personalized views (PCA)', fontsize=10)
    left.set_xlabel('component 1')
    left.set_ylabel('component 2')
    left.legend(fontsize=8, markerscale=2)
    labels = list(views)
    right.barh(np.arange(len(labels)), moved, color=palette)
    right.set_yticks(np.arange(len(labels)), labels)
    right.invert_yaxis()
    right.set_xlabel('mean L2 shift of its fine-tuned rows')
    right.set_title('How far each user\'s view moved', fontsize=10)
    right.grid(axis='x', alpha=0.3)
    return figure
