import json

from fedgraph.analysis import convergence_row, rounds_to_reach
from fedgraph.cli import main


def _history(values):
    return [{'round': r, 'val': {'ndcg@20': v}, 'test': {'ndcg@20': v / 2},
             'uniformity': {'user': -1.0 - r, 'item': -2.0 - r}} for r, v in enumerate(values)]


def test_rounds_to_reach_counts_rounds_until_the_fraction_of_the_best():
    # best 0.40 -> 95% is 0.38; first reached at round index 3, i.e. after 4 rounds
    history = _history([0.1, 0.3, 0.37, 0.38, 0.40, 0.39])
    assert rounds_to_reach(history, 'ndcg@20', 0.95) == 4
    assert rounds_to_reach(history, 'ndcg@20', 1.0) == 5
    assert rounds_to_reach(history, 'ndcg@20', 0.2) == 1


def test_rounds_to_reach_skips_rounds_without_evaluation():
    history = [{'round': 0}, {'round': 1, 'val': {'m': 1.0}}]
    assert rounds_to_reach(history, 'm') == 2
    assert rounds_to_reach([{'round': 0}], 'm') is None


def _write_run(folder, values, pretraining=True):
    folder.mkdir()
    metrics = {'rounds': _history(values),
               'best': {'round': 1, 'val': {'ndcg@20': values[1]},
                        'test': {'ndcg@20': values[1] / 2, 'recall@20': values[1]}}}
    if pretraining:
        metrics['pretraining'] = {'rounds': 2, 'loss': [3.0, 2.0],
                                  'uniformity': {'user': -3.5, 'item': -3.6}}
    (folder / 'metrics.json').write_text(json.dumps(metrics))


def test_convergence_row_reads_uniformity_before_and_after(tmp_path):
    _write_run(tmp_path / 'run', [0.2, 0.5, 0.4])
    row = convergence_row(tmp_path / 'run', 'ndcg@20')
    assert row['rounds_to_reach'] == 2 and row['best_val'] == 0.5
    assert row['uniformity_start'] == {'user': -3.5, 'item': -3.6}
    assert row['uniformity_end'] == {'user': -3.0, 'item': -4.0}
    _write_run(tmp_path / 'plain', [0.2, 0.5, 0.4], pretraining=False)
    assert convergence_row(tmp_path / 'plain', 'ndcg@20')['uniformity_start'] is None


def test_summarize_prints_runs_and_mean_with_std(tmp_path, capsys):
    _write_run(tmp_path / 'a', [0.1, 0.4, 0.3])
    _write_run(tmp_path / 'b', [0.1, 0.2, 0.3])
    main(['summarize', str(tmp_path / 'a'), str(tmp_path / 'b'), '--metrics', 'recall@20'])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == '| run | best round | test recall@20 |'
    assert lines[2].endswith('| 1 | 0.4000 |') and lines[3].endswith('| 1 | 0.2000 |')
    # mean 0.3, sample standard deviation sqrt(((0.1)^2 + (0.1)^2) / 1) = 0.1414
    assert lines[4] == '| mean ± std (2 runs) | | 0.3000 ± 0.1414 |'


def test_convergence_command_prints_one_row_per_run(tmp_path, capsys):
    _write_run(tmp_path / 'a', [0.2, 0.5, 0.4])
    main(['convergence', str(tmp_path / 'a'), '--metric', 'ndcg@20'])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    assert lines[2] == f"| {tmp_path / 'a'} | 2 | 0.5000 | -3.500 / -3.600 | -3.000 / -4.000 |"
