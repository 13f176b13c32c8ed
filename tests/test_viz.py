import json

import matplotlib
import pytest
import torch
from matplotlib.figure import Figure

from fedgraph.cli import main
from fedgraph.metrics import uniformity
from fedgraph.viz import (plot_clusters, plot_personalized_views, plot_runs,
                          plot_training_curves, plot_uniformity, project_2d)
from helpers import cli_misuse

matplotlib.use('Agg')


def _embeddings(n=120, d=8, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_project_2d_pca_keeps_the_two_main_directions():
    # points on a line along the first axis plus tiny noise: the first component carries
    # all the variance, so the projection's first column is the line coordinate (up to sign)
    t = torch.linspace(-1, 1, 50)
    x = torch.stack([t, 0.01 * torch.sin(7 * t), torch.zeros(50)], dim=1)
    xy = project_2d(x, 'pca')
    assert xy.shape == (50, 2)
    assert abs(abs(float(torch.corrcoef(torch.stack([torch.from_numpy(xy[:, 0]), t]))[0, 1]))
               - 1) < 1e-6


def test_project_2d_tsne_shape_and_bad_method():
    assert project_2d(_embeddings(40), 'tsne').shape == (40, 2)
    with pytest.raises(ValueError, match="'pca' or 'tsne'"):
        project_2d(_embeddings(), 'umap')


def test_uniformity_plot_captions_each_set_with_its_uniformity():
    sets = {'random': _embeddings(), 'collapsed': _embeddings() * 0.01 + 1.0}
    figure = plot_uniformity(sets)
    assert isinstance(figure, Figure)
    titles = [ax.get_title() for ax in figure.axes if ax.get_title()]
    assert titles == [f'{name}\nuniformity {uniformity(x, max_points=None):.3f}'
                      for name, x in sets.items()]
    assert len(figure.axes) == 4  # a density and an angle panel per set
    with pytest.raises(ValueError, match='at least one'):
        plot_uniformity({})


def test_personalized_views_plot_counts_fine_tuned_rows_and_their_shift():
    global_items = _embeddings(30, 4)
    view = global_items.clone()
    view[:5] += 2.0  # five rows moved by 2 * sqrt(4) = 4
    figure = plot_personalized_views(global_items, {'user 1': view})
    left, right = figure.axes
    assert left.get_legend().get_texts()[1].get_text() == 'user 1 (5 rows)'
    assert right.patches[0].get_width() == pytest.approx(4.0)
    with pytest.raises(ValueError, match='at least one user'):
        plot_personalized_views(global_items, {})


def test_cluster_plot_has_one_legend_entry_per_cluster_with_its_size():
    assignment = torch.tensor([0] * 10 + [1] * 25 + [2] * 5)
    figure = plot_clusters(_embeddings(40), assignment)
    labels = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    assert labels == ['cluster 0 (10)', 'cluster 1 (25)', 'cluster 2 (5)']


def _metrics(offset):
    rounds = [{'round': r, 'train_loss': 1.0 - 0.1 * r,
               'privacy': {'epsilon': 10.0 * (r + 1), 'delta': 1e-3},
               'uniformity': {'user': -3.0 + r, 'item': -3.5 + r},
               'val': {'recall@20': 0.1 * r + offset}, 'test': {'recall@20': 0.1 * r}}
              for r in range(3)]
    return {'rounds': rounds, 'best': {'round': 2, 'val': rounds[2]['val'],
                                       'test': rounds[2]['test']}}


def test_training_curves_draw_every_recorded_series_per_run():
    figure = plot_training_curves({'a': _metrics(0.0), 'b': _metrics(0.05)})
    visible = [ax for ax in figure.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == [
        'validation recall@20', 'test recall@20', 'training loss',
        'user uniformity (lower: more uniform)', 'item uniformity (lower: more uniform)',
        'privacy spent: ε at δ (RDP accountant)']
    assert all(len(ax.get_lines()) == 2 for ax in visible)
    assert list(visible[0].get_lines()[1].get_ydata()) == pytest.approx([0.05, 0.15, 0.25])


def test_plot_runs_and_the_cli_write_png_files(tmp_path, capsys):
    run = tmp_path / 'run'
    run.mkdir()
    (run / 'metrics.json').write_text(json.dumps(_metrics(0.0)))
    torch.save({'user_final': _embeddings(40), 'item_final': _embeddings(50, seed=1),
                'cluster': torch.arange(40) % 3}, run / 'embeddings.pt')
    written = plot_runs([run], tmp_path / 'figures')
    assert [p.name for p in written] == ['curves.png', 'run-uniformity.png',
                                         'run-clusters.png']
    assert all(p.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' for p in written)
    main(['plot', str(run), '--out', str(tmp_path / 'cli')])
    assert sorted(p.name for p in (tmp_path / 'cli').iterdir()) == sorted(p.name for p in written)
    assert capsys.readouterr().out.count('.png') == 3
    # with two graph-model runs, their embeddings are also shown side by side
    other = tmp_path / 'other'
    other.mkdir()
    (other / 'metrics.json').write_text(json.dumps(_metrics(0.1)))
    torch.save({'user_final': _embeddings(40, seed=2), 'item_final': _embeddings(50, seed=3)},
               other / 'embeddings.pt')
    names = [p.name for p in plot_runs([run, other], tmp_path / 'both')]
    assert names == ['curves.png', 'uniformity.png', 'run-uniformity.png', 'run-clusters.png',
                     'other-uniformity.png']


def test_train_plot_needs_an_output_folder(capsys):
    with cli_misuse(capsys, '--plot needs --out'):
        main(['train', '--rounds', '1', '--plot'])


def test_personalized_views_come_from_a_pfedrec_checkpoint(tmp_path):
    from fedgraph.config import TrainConfig
    from fedgraph.data import leave_one_out_split, synthetic_interactions
    from fedgraph.training import train
    from fedgraph.viz import personalized_views

    split = leave_one_out_split(synthetic_interactions(num_users=30, num_items=400, seed=0))
    train(TrainConfig(algorithm='pfedrec', rounds=2, dim=8), tmp_path / 'run', split=split,
          progress=False)
    global_rows, views = personalized_views(tmp_path / 'run', num_users=3)
    assert len(views) == 3
    # every shown item was fine-tuned by at least one of the users, and each view differs
    # from the global rows exactly there
    moved = torch.stack([(view - global_rows).norm(dim=1) > 0 for view in views.values()])
    assert moved.any(dim=0).all() and moved.any(dim=1).all()
    names = [p.name for p in plot_runs([tmp_path / 'run'], tmp_path / 'figures')]
    assert names == ['curves.png', 'run-personalized-views.png']


def test_the_uniformity_plot_shows_the_uniformity_a_run_records(tmp_path):
    from fedgraph.config import TrainConfig
    from fedgraph.data import ratio_split, synthetic_interactions
    from fedgraph.metrics.representation import UNIFORMITY_SAMPLE
    from fedgraph.training import train

    data = synthetic_interactions(num_users=40, num_items=UNIFORMITY_SAMPLE + 300,
                                  mean_degree=12, seed=0)
    train(TrainConfig(algorithm='fedlightgcn', protocol='full', rounds=1, dim=8),
          tmp_path / 'run', split=ratio_split(data, (0.8, 0.1, 0.1), seed=0), progress=False)
    recorded = json.loads((tmp_path / 'run' / 'metrics.json').read_text())
    recorded = recorded['rounds'][-1]['uniformity']
    saved = torch.load(tmp_path / 'run' / 'embeddings.pt', weights_only=True)
    items = saved['item_final']
    assert items.size(0) > UNIFORMITY_SAMPLE  # the record measured a sample of the rows
    figure = plot_uniformity({'users': saved['user_final'], 'items': items})
    titles = [ax.get_title() for ax in figure.axes if ax.get_title()]
    assert titles == [f'users\nuniformity {recorded["user"]:.3f}',
                      f'items\nuniformity {recorded["item"]:.3f}']
    # The record propagates the sampled rows only: the same vectors up to float rounding.
    assert uniformity(items) == pytest.approx(recorded['item'], abs=1e-6)
    assert uniformity(items, max_points=None) != pytest.approx(recorded['item'], abs=1e-6)


def test_the_privacy_panel_has_a_log_epsilon_axis():
    small, large = _metrics(0.0), _metrics(0.05)
    for r, record in enumerate(large['rounds']):
        record['privacy'] = {'epsilon': 5e6 * (r + 1), 'delta': 1e-3}
    figure = plot_training_curves({'little noise': large, 'much noise': small})
    panels = {ax.get_title(): ax for ax in figure.axes if ax.get_visible()}
    privacy = panels.pop('privacy spent: ε at δ (RDP accountant)')
    assert privacy.get_yscale() == 'log'
    assert all(ax.get_yscale() == 'linear' for ax in panels.values())
    low, high = privacy.get_ylim()
    assert 0 < low <= 10.0 and high >= 1.5e7  # both runs' budgets on a positive axis
