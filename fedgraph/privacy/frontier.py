"""The privacy-utility frontier: one configuration trained under user-level DP at several
target :math:`\\epsilon` (and without DP, :math:`\\epsilon = \\infty`), several seeds; its
test metric at the best validation round against :math:`\\epsilon`."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from fedgraph.analysis import mean_std
from fedgraph.config import TrainConfig, shared_fields
from fedgraph.grid import resumable_grid
from fedgraph.training import prepare_split, train


def at_epsilon(config: TrainConfig, epsilon: float, seed: int) -> TrainConfig:
    """``config`` with seed ``seed`` under DP-FedAvg calibrated to ``epsilon``, which replaces
    the Laplace mechanism; infinite: no privacy mechanism at all (no Laplace noise either,
    the non-private reference)."""
    values = {**config.to_dict(), 'seed': seed, 'dp_noise_multiplier': None,
              'noise_at': shared_fields()['noise_at'].default}
    if math.isinf(epsilon):
        values.update(dp_epsilon=None, dp_clip=None, dp_delta=None, dp_clip_quantile=None,
                      dp_clip_lr=shared_fields()['dp_clip_lr'].default, ldp_scale=0.0)
    else:
        values.update(dp_epsilon=epsilon, clip=None, clip_mode=None, ldp_scale=None)
    return TrainConfig(**values)


def frontier_table(config: TrainConfig, epsilons: Sequence[float], seeds: Sequence[int],
                   out: Optional[Path] = None, progress: bool = True) -> List[Dict]:
    """Trains ``config`` at every target :math:`\\epsilon` and seed and returns one row per
    run: the test metrics at the best validation round, the :math:`\\epsilon` spent by the
    end, the calibrated noise multiplier, wall and CPU seconds. With ``out`` the rows go to
    a JSON-lines file as they arrive, and runs already there are not run again
    (:func:`~fedgraph.grid.resumable_grid`). The split is prepared once per seed."""
    splits: Dict[int, object] = {}

    def run(cell) -> Dict:
        target, seed = cell
        run_config = at_epsilon(config, math.inf if target is None else target, seed)
        if seed not in splits:
            splits.clear()
            splits[seed] = prepare_split(run_config)
        metrics = train(run_config, progress=False, split=splits[seed])
        privacy = metrics['rounds'][-1]['privacy']
        return {'algorithm': config.algorithm, 'protocol': config.protocol,
                'users': splits[seed].train['user'].num_nodes,
                'clip_quantile': config.dp_clip_quantile, 'noise_at': privacy['noise_at'],
                'target_epsilon': target, 'seed': seed, 'epsilon': privacy['epsilon'],
                'delta': privacy['delta'], 'noise_multiplier': privacy.get('noise_multiplier'),
                'clip': privacy.get('clip'), 'best_round': metrics['best']['round'],
                'test': metrics['best']['test']}

    cells = [(None if math.isinf(epsilon) else epsilon, seed)
             for seed in seeds for epsilon in epsilons]
    shared = {name: value for name, value in config.to_dict().items() if name != 'seed'}
    return resumable_grid(cells, lambda row: (row['target_epsilon'], row['seed']), run, out,
                          'privacy frontier', progress, shared)


def format_frontier(rows: List[Dict], metric: str) -> str:
    """The rows as a Markdown table, mean ± std over seeds per target :math:`\\epsilon`."""
    cells: Dict[Optional[float], List[Dict]] = {}
    for row in rows:
        cells.setdefault(row['target_epsilon'], []).append(row)
    order = sorted(cells, key=lambda value: math.inf if value is None else value)
    lines = [f'| target ε | seeds | ε spent | noise multiplier σ | test {metric} |',
             '|---|---|---|---|---|']
    for target in order:
        group = cells[target]
        spent = [r['epsilon'] for r in group if r['epsilon'] is not None]
        sigma = group[0]['noise_multiplier'] if target is not None else None
        lines.append(f"| {'∞ (no DP)' if target is None else f'{target:g}'} | {len(group)} "
                     f"| {f'{max(spent):.2f}' if spent else '–'} "
                     f"| {'–' if sigma is None else f'{sigma:.3g}'} "
                     f"| {mean_std([r['test'][metric] for r in group])} |")
    return '\n'.join(lines)

