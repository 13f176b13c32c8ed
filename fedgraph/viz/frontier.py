"""The privacy-utility frontier (:mod:`fedgraph.privacy.frontier`) as a figure."""
from __future__ import annotations

import statistics
from typing import Dict, List, Optional, Sequence, Tuple

from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator


def frontier_metric(protocol: str) -> str:
    """The test metric a frontier shows: the protocol's selection metric."""
    return 'hr@10' if protocol == 'sampled' else 'recall@20'


def plot_frontier(rows: Sequence[Dict], figure: Optional[Figure] = None) -> Figure:
    """One panel per protocol: each algorithm's test metric (mean ± std over seeds) against
    the target :math:`\\epsilon` on a log axis, the run without DP (:math:`\\epsilon =
    \\infty`) as a dashed line of its own colour."""
    panels: Dict[str, Dict[str, Dict[Optional[float], List[float]]]] = {}
    for row in rows:
        metric = frontier_metric(row['protocol'])
        by_epsilon = panels.setdefault(row['protocol'], {}).setdefault(row['algorithm'], {})
        by_epsilon.setdefault(row['target_epsilon'], []).append(row['test'][metric])
    figure = figure or Figure(figsize=(6.4 * len(panels), 3.6), layout='constrained')
    axes = figure.subplots(1, len(panels), squeeze=False).ravel()
    for ax, (protocol, algorithms) in zip(axes, sorted(panels.items())):
        for index, (algorithm, by_epsilon) in enumerate(sorted(algorithms.items())):
            colour = f'C{index}'
            points = sorted((eps, values) for eps, values in by_epsilon.items() if eps is not None)
            if points:
                x, mean, std = _summary(points)
                ax.errorbar(x, mean, yerr=std, marker='o', capsize=3, color=colour,
                            label=algorithm)
            if None in by_epsilon:
                ax.axhline(statistics.mean(by_epsilon[None]), color=colour, linestyle='--',
                           linewidth=1, label=f'{algorithm}, no DP')
        ax.set_xscale('log')
        ticks = sorted({eps for by_epsilon in algorithms.values() for eps in by_epsilon
                        if eps is not None})
        ax.set_xticks(ticks, [f'{eps:g}' for eps in ticks])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel('target ε (user level, δ = 1/users)')
        ax.set_ylabel(f'test {frontier_metric(protocol)}')
        ax.set_title(f'{protocol} protocol')
        ax.legend(fontsize=7, loc='upper left', bbox_to_anchor=(1.01, 1.0))
    return figure


def _summary(points: Sequence[Tuple[float, List[float]]]):
    x = [eps for eps, _ in points]
    mean = [statistics.mean(values) for _, values in points]
    std = [statistics.stdev(values) if len(values) > 1 else 0.0 for _, values in points]
    return x, mean, std
