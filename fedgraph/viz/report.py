"""All the figures of finished runs, written as PNG files."""
from __future__ import annotations

from pathlib import Path
from typing import List, Sequence, Union

import torch

from fedgraph.federated.personal import PersonalItemRows
from fedgraph.files import load_tensors, read_json_lines, reading
from fedgraph.server.loop import CHECKPOINT, EMBEDDINGS
from fedgraph.viz.clusters import plot_clusters
from fedgraph.viz.curves import plot_training_curves
from fedgraph.viz.frontier import plot_frontier, plot_population
from fedgraph.viz.personal import plot_personalized_views
from fedgraph.viz.uniformity import plot_uniformity


def personalized_views(run: Union[str, Path], num_users: int = 4):
    """``(global rows, {user: view rows})`` from a run's checkpoint: the broadcast table and
    the stored fine-tuned rows of the ``num_users`` users with the most of them, over the
    items those users touched. ``None`` if the run kept no personalized rows.

    Raises:
        fedgraph.files.DamagedFileError: the checkpoint is damaged.
    """
    path = Path(run) / CHECKPOINT
    state = load_tensors(path, map_location='cpu', keys=('engine',))
    with reading(path, 'a fedgraph checkpoint'):
        engine = state['engine'].get('engine', state['engine'])
        if 'personal' not in engine or engine['personal']['keys'].numel() == 0:
            return None
        broadcast = engine['broadcast']
        store = PersonalItemRows(0, broadcast.size(0), broadcast.size(1))
        store.load_state_dict(engine['personal'])
    owners = torch.div(store.keys, store.num_items, rounding_mode='floor')
    users = torch.bincount(owners).topk(num_users).indices.sort().values
    position, item, _ = store.rows_of(users)
    items = torch.unique(item)
    views = store.view(users.unsqueeze(1), items, broadcast)
    return broadcast[items], {f'user {int(u)}': view for u, view in zip(users, views)}


def plot_runs(runs: Sequence[Union[str, Path]], out: Union[str, Path],
              method: str = 'pca') -> List[Path]:
    """Writes to ``out``: ``curves.png`` (all runs together), ``uniformity.png`` (the final
    user and item embeddings of every graph-model run side by side, when there are several)
    and, per run ``NAME``, ``NAME-uniformity.png`` and ``NAME-clusters.png`` (graph models)
    and ``NAME-personalized-views.png`` (runs with dual personalization). JSON-lines files of
    ``fedgraph frontier`` among ``runs`` are drawn together as ``frontier.png``, or, when
    they cover several populations, as ``population.png`` (the share of the metric kept
    under DP against the users). Returns the paths.

    Raises:
        FileNotFoundError: a run folder holds no ``metrics.json``.
        fedgraph.files.DamagedFileError: one of the files read is damaged (the message names
            it).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []

    def save(figure, name):
        path = out / name
        figure.savefig(path, dpi=130, bbox_inches='tight')
        written.append(path)

    frontiers = [Path(run) for run in runs if Path(run).suffix == '.jsonl']
    if frontiers:
        rows = [row for path in frontiers for row in read_json_lines(path)]
        if len({row.get('users') for row in rows}) > 1:
            save(plot_population(rows), 'population.png')
        else:
            save(plot_frontier(rows), 'frontier.png')
    runs = [run for run in runs if Path(run).suffix != '.jsonl']
    if not runs:
        return written
    save(plot_training_curves({Path(run).name: run for run in runs}), 'curves.png')
    embedded = {run.name: load_tensors(run / EMBEDDINGS, what='a fedgraph embeddings file',
                                       keys=('user_final', 'item_final'))
                for run in map(Path, runs) if (run / EMBEDDINGS).exists()}
    if len(embedded) > 1:
        sets = {f'{name}\n{kind}s': saved[f'{kind}_final']
                for name, saved in embedded.items() for kind in ('user', 'item')}
        save(plot_uniformity(sets, method), 'uniformity.png')
    for run in map(Path, runs):
        if run.name in embedded:
            saved = embedded[run.name]
            save(plot_uniformity({'users': saved['user_final'], 'items': saved['item_final']},
                                 method), f'{run.name}-uniformity.png')
            if 'cluster' in saved:
                save(plot_clusters(saved['user_final'], saved['cluster'], method),
                     f'{run.name}-clusters.png')
        if (run / CHECKPOINT).exists():
            views = personalized_views(run)
            if views is not None:
                save(plot_personalized_views(*views), f'{run.name}-personalized-views.png')
    return written
