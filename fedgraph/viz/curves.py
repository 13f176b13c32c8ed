"""Training curves of one or several runs, read from their ``metrics.json``."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Mapping, Optional, Union

from matplotlib.figure import Figure

from fedgraph.files import load_metrics

Run = Union[str, Path, Dict]


def _load(run: Run) -> Dict:
    if isinstance(run, dict):
        return run
    return load_metrics(run)


def _series(history, key, split=None):
    rounds, values = [], []
    for record in history:
        source = record.get(split, {}) if split else record
        if source and source.get(key) is not None:
            rounds.append(record['round'])
            values.append(source[key])
    return rounds, values


def plot_training_curves(runs: Mapping[str, Run], metric: Optional[str] = None,
                         figure: Optional[Figure] = None) -> Figure:
    """Validation and test ``metric``, training loss, and -- when recorded -- embedding
    uniformity and the privacy budget spent, per round, one line per run. The budget's
    :math:`\\epsilon` axis is logarithmic: runs with little and much noise spend budgets
    orders of magnitude apart.

    Args:
        runs: ``{label: run folder or metrics dict}``.
        metric: the ranking metric to show (default: ``hr@10`` under the sampled protocol,
            ``recall@20`` under full ranking).

    Raises:
        FileNotFoundError: a run folder holds no ``metrics.json``.
        fedgraph.files.DamagedFileError: a ``metrics.json`` is damaged.
    """
    loaded = {label: _load(run) for label, run in runs.items()}
    if not loaded:
        raise ValueError('nothing to plot: pass at least one run')
    first = next(iter(loaded.values()))['rounds']
    evaluated = next((r for r in first if 'val' in r), None)
    if metric is None:
        metric = 'hr@10' if evaluated and 'hr@10' in evaluated['val'] else 'recall@20'
    panels = [('val', metric, f'validation {metric}'), ('test', metric, f'test {metric}'),
              (None, 'train_loss', 'training loss')]
    if any('uniformity' in r for m in loaded.values() for r in m['rounds']):
        panels += [('uniformity', 'user', 'user uniformity (lower: more uniform)'),
                   ('uniformity', 'item', 'item uniformity (lower: more uniform)')]
    if any((r.get('privacy') or {}).get('epsilon') is not None
           for m in loaded.values() for r in m['rounds']):
        panels.append(('privacy', 'epsilon', 'privacy spent: ε at δ (RDP accountant)'))
    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    figure = figure or Figure(figsize=(4.2 * columns, 3.1 * rows), layout='constrained')
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax, (split, key, title) in zip(axes, panels):
        for label, metrics in loaded.items():
            rounds, values = _series(metrics['rounds'], key, split)
            ax.plot(rounds, values, label=label, linewidth=1.4)
        if split == 'privacy':
            ax.set_yscale('log', nonpositive='mask')
        ax.set_title(title, fontsize=10)
        ax.set_xlabel('round')
        ax.grid(alpha=0.3)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    axes[0].legend(fontsize=8)
    return figure
