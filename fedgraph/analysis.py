"""Reading runs back: convergence speed and embedding uniformity from ``metrics.json``."""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import Dict, List, Optional, Union

from fedgraph.files import load_metrics


def mean_std(values: List[float]) -> str:
    """``mean ± std`` over runs (sample standard deviation) to four decimals; one value
    alone."""
    if len(values) == 1:
        return f'{values[0]:.4f}'
    return f'{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}'


def rounds_to_reach(history: List[Dict], metric: str, fraction: float = 0.95) -> Optional[int]:
    """The number of rounds until validation ``metric`` first reaches ``fraction`` of its
    best value in the run (``None`` if it never was evaluated)."""
    evaluated = [record for record in history if 'val' in record]
    if not evaluated:
        return None
    best = max(record['val'][metric] for record in evaluated)
    return next(record['round'] + 1 for record in evaluated
                if record['val'][metric] >= fraction * best)


def convergence_row(run: Union[str, Path], metric: str, fraction: float = 0.95) -> Dict:
    """One run's convergence and uniformity summary.

    Raises:
        FileNotFoundError: ``run`` holds no ``metrics.json``.
        fedgraph.files.DamagedFileError: its ``metrics.json`` is damaged.
        KeyError: the run's validation did not record ``metric``.
    """
    metrics = load_metrics(run)
    history = metrics['rounds']
    recorded = next((record['val'] for record in history if 'val' in record), {})
    if recorded and metric not in recorded:
        raise KeyError(f'{run} recorded no validation {metric}; its metrics: '
                       f'{", ".join(sorted(recorded))}')
    row = {'run': str(run), 'rounds_to_reach': rounds_to_reach(history, metric, fraction),
           'best_val': max((r['val'][metric] for r in history if 'val' in r), default=None),
           'test': metrics['best']['test'] if metrics.get('best') else None}
    if 'uniformity' in history[-1]:
        row['uniformity_end'] = history[-1]['uniformity']
        row['uniformity_start'] = metrics.get('pretraining', {}).get('uniformity')
    return row


#: The level weightings :func:`level_table` compares: each level alone, global + cluster,
#: and all three.
LEVEL_SETTINGS = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (1.0, 1.0, 0.0),
                  (1.0, 1.0, 1.0))


def level_table(run: Union[str, Path], settings=LEVEL_SETTINGS) -> List[Dict]:
    """Validation and test metrics of a finished graph-model run's final checkpoint, scored
    with each level weighting of ``settings`` (global, cluster, local) that uses only the
    levels the run has: the cluster level with clusters, the local one with dual
    personalization.

    Raises:
        FileNotFoundError, fedgraph.files.DamagedFileError: as :func:`fedgraph.run.load_run`.
        ValueError: the run's model has no levels to compare (not a graph model, or the
            global level alone).
    """
    from fedgraph.federated.evaluation import evaluate
    from fedgraph.federated.graph import GraphFederatedEngine
    from fedgraph.run import load_run

    loaded = load_run(run)
    engine = loaded.engine
    if not isinstance(engine, GraphFederatedEngine):
        raise ValueError(f'{run} is a {loaded.config.algorithm} run: its model has no levels '
                         f'(the graph models have: fedlightgcn, perfedrec++)')
    has = (True, engine.cluster_tables is not None, engine.training.personalize_items)
    usable = [weights for weights in settings
              if all(has[level] or not weight for level, weight in enumerate(weights))]
    if len(usable) < 2:
        raise ValueError(f'{run} has the global level only: train with clusters (perfedrec++ '
                         f'--num-clusters) or dual personalization (--dual-personalization) '
                         f'to compare levels')
    rows = []
    for weights in usable:
        engine.level_weights = tuple(weights)
        rows.append({'weights': tuple(weights), 'round': len(loaded['rounds']),
                     **evaluate(engine, loaded.split)})
    return rows
