"""Uniformity plots in the style of SimGCL (Yu et al., SIGIR 2022, Fig. 3).

Embeddings are projected to 2-D (t-SNE, or PCA as a fast option), normalized onto the unit
circle, and shown as a Gaussian kernel density estimate over the plane (top) and a density
of their angles (bottom). A uniform set covers the circle evenly and has a flat angle
density; a collapsed set shows a few bright arcs and sharp peaks.
"""
from __future__ import annotations

from typing import Mapping, Optional

import numpy as np
import torch
from matplotlib.figure import Figure
from scipy.stats import gaussian_kde
from torch import Tensor

from fedgraph.metrics.representation import UNIFORMITY_SAMPLE, sample_rows, uniformity


METHOD_NAMES = {'pca': 'PCA', 'tsne': 't-SNE'}


def project_2d(x: Tensor, method: str = 'pca', seed: int = 0) -> np.ndarray:
    """``[N, 2]`` projection of ``x`` ``[N, d]``: ``'pca'`` (top two principal components)
    or ``'tsne'`` (scikit-learn's t-SNE, PCA-initialized, seeded)."""
    x = x.detach().cpu().double()
    if x.size(1) <= 2:
        return torch.nn.functional.pad(x, (0, 2 - x.size(1))).numpy()
    if method == 'pca':
        centered = x - x.mean(0)
        _, _, v = torch.linalg.svd(centered, full_matrices=False)
        return (centered @ v[:2].t()).numpy()
    if method == 'tsne':
        from sklearn.manifold import TSNE
        perplexity = min(30.0, (x.size(0) - 1) / 3)
        return TSNE(2, init='pca', perplexity=perplexity, random_state=seed).fit_transform(
            x.numpy())
    raise ValueError(f"method must be 'pca' or 'tsne', got {method!r}")


def plot_uniformity(embeddings: Mapping[str, Tensor], method: str = 'pca',
                    max_points: int = UNIFORMITY_SAMPLE, seed: int = 0,
                    figure: Optional[Figure] = None) -> Figure:
    """One column per embedding set: the KDE of the normalized 2-D points over the plane and
    the KDE of their angles, captioned with the set's uniformity as a run records it
    (:func:`~fedgraph.metrics.uniformity` with its defaults, on the full-dimensional
    embeddings: the same number as ``metrics.json`` for the same embeddings).

    Args:
        embeddings: ``{caption: [N, d] embeddings}``, plotted left to right.
        method: the 2-D projection, ``'pca'`` or ``'tsne'``.
        max_points: at most this many rows are projected, drawn by
            :func:`~fedgraph.metrics.representation.sample_rows` from ``seed`` (by default
            the rows the caption's uniformity is measured on).
        seed: the seed of that sample and of t-SNE.
        figure: draw into this figure (default: a new one).
    """
    if not embeddings:
        raise ValueError('nothing to plot: pass at least one embedding set')
    columns = len(embeddings)
    figure = figure or Figure(figsize=(3.2 * columns, 5.4), layout='constrained')
    axes = figure.subplots(2, columns, squeeze=False, height_ratios=[3, 1.4])
    grid = np.linspace(-1.3, 1.3, 160)
    plane = np.stack(np.meshgrid(grid, grid)).reshape(2, -1)
    angles = np.linspace(-np.pi, np.pi, 361)
    for column, (name, x) in enumerate(embeddings.items()):
        points = sample_rows(x, max_points, torch.Generator().manual_seed(seed))
        value = uniformity(x)
        xy = project_2d(points, method, seed)
        xy /= np.linalg.norm(xy, axis=1, keepdims=True).clip(min=1e-12)
        top, bottom = axes[0, column], axes[1, column]
        density = gaussian_kde(xy.T)(plane).reshape(grid.size, grid.size)
        top.imshow(density, origin='lower', extent=(grid[0], grid[-1], grid[0], grid[-1]),
                   cmap='GnBu')
        top.add_artist(_circle())
        top.set_title(f'{name}\nuniformity {value:.3f}', fontsize=10)
        top.set_xlabel(f'{METHOD_NAMES[method]} to 2-D, on the unit circle', fontsize=8)
        top.set_xticks([-1, 0, 1])
        top.set_yticks([-1, 0, 1])
        top.set_aspect('equal')
        theta = np.arctan2(xy[:, 1], xy[:, 0])
        # Wrap the angles once on each side so the density is continuous at +-pi.
        wrapped = np.concatenate([theta - 2 * np.pi, theta, theta + 2 * np.pi])
        angle_density = 3 * gaussian_kde(wrapped, bw_method=0.05)(angles)
        bottom.plot(angles, angle_density, color='tab:blue')
        bottom.fill_between(angles, angle_density, alpha=0.25, color='tab:blue')
        bottom.set_xlim(-np.pi, np.pi)
        bottom.set_xticks([-np.pi, 0, np.pi], ['−π', '0', 'π'])
        bottom.set_xlabel('angle')
        if column == 0:
            bottom.set_ylabel('density')
    return figure


def _circle():
    from matplotlib.patches import Circle
    return Circle((0, 0), 1.0, fill=False, linestyle='--', linewidth=0.8, color='0.35')
