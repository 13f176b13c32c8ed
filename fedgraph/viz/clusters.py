"""Client clusters in 2-D."""
from __future__ import annotations

from typing import Optional

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor

from fedgraph.viz.uniformity import METHOD_NAMES, project_2d


def plot_clusters(embeddings: Tensor, assignment: Tensor, method: str = 'pca', seed: int = 0,
                  ax: Optional[Axes] = None) -> Figure:
    """Client representations ``[N, d]`` projected to 2-D, coloured by FAISS cluster, with
    each cluster's size in the legend."""
    if ax is None:
        figure = Figure(figsize=(5.2, 4.6), layout='constrained')
        ax = figure.subplots()
    else:
        figure = ax.figure
    xy = project_2d(embeddings, method, seed)
    labels = assignment.cpu().numpy()
    colours = ['tab:blue', 'tab:orange', 'tab:green', 'tab:red', 'tab:purple', 'tab:brown',
               'tab:pink', 'tab:gray', 'tab:olive', 'tab:cyan']
    for cluster in np.unique(labels):
        mask = labels == cluster
        ax.scatter(xy[mask, 0], xy[mask, 1], s=8, alpha=0.7,
                   color=colours[cluster % len(colours)],
                   label=f'cluster {cluster} ({int(mask.sum())})')
    ax.set_title(f'Client clusters ({METHOD_NAMES[method]} of client representations)',
                 fontsize=10)
    ax.set_xlabel('component 1')
    ax.set_ylabel('component 2')
    ax.legend(fontsize=8, markerscale=2, loc='best')
    return figure
