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


def variant(row: Dict) -> str:
    """A frontier row's algorithm, with its adaptive clip quantile when it has one."""
    quantile = row.get('clip_quantile')
    return row['algorithm'] + ('' if quantile is None else f', adaptive clip q = {quantile:g}')


def plot_population(rows: Sequence[Dict], figure: Optional[Figure] = None) -> Figure:
    """Frontiers of several populations (``users``) as one panel per target
    :math:`\\epsilon`: each algorithm's test metric under DP over its test metric without
    DP (the share it keeps, mean over seeds) against the number of users, on a log axis."""
    free: Dict[Tuple[str, int], List[float]] = {}
    private: Dict[float, Dict[str, Dict[int, List[float]]]] = {}
    for row in rows:
        value = row['test'][frontier_metric(row['protocol'])]
        if row['target_epsilon'] is None:
            free.setdefault((row['algorithm'], row['users']), []).append(value)
        else:
            private.setdefault(row['target_epsilon'], {}).setdefault(
                variant(row), {}).setdefault(row['users'], []).append(value)
    figure = figure or Figure(figsize=(5.6 * max(1, len(private)), 3.6), layout='constrained')
    axes = figure.subplots(1, max(1, len(private)), squeeze=False).ravel()
    for ax, (epsilon, variants) in zip(axes, sorted(private.items())):
        for name, by_users in sorted(variants.items()):
            algorithm = name.split(',')[0]
            points = [(users, statistics.mean(values)
                       / statistics.mean(free[(algorithm, users)]))
                      for users, values in sorted(by_users.items())
                      if (algorithm, users) in free]
            if points:
                ax.plot([u for u, _ in points], [share for _, share in points], marker='o',
                        label=name)
        ax.axhline(1.0, color='grey', linestyle='--', linewidth=1)
        ax.set_xscale('log')
        ax.set_ylim(0, 1.1)
        ax.set_xlabel('users')
        ax.set_ylabel('test metric under DP / without DP')
        ax.set_title(f'ε = {epsilon:g}')
        ax.legend(fontsize=7, loc='upper left')
    return figure

