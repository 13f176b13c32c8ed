"""Training runs: reproducibility, resuming, metrics files, protocols, the CLI, and an
accuracy sanity check on MovieLens-100K."""
import json
import math

import pytest
import torch

import fedgraph.server.loop
from fedgraph.cli import main
from fedgraph.config import TrainConfig
from fedgraph.data import leave_one_out_split, ratio_split, synthetic_interactions
from fedgraph.records import best_round
from fedgraph.training import CHECKPOINT, TrainingDiverged, train
from helpers import cli_misuse, read_metrics, train_interrupted, without_seconds

ROUND_KEYS = {'round', 'train_loss', 'clients', 'upload_bytes_per_client',
              'download_bytes_per_client', 'seconds', 'val', 'test'}


@pytest.fixture(scope='module')
def sampled_split(tiny_sampled_split):
    return tiny_sampled_split


@pytest.fixture(scope='module')
def ranking_split():
    return ratio_split(
        synthetic_interactions(num_users=60, num_items=300, mean_degree=30, seed=1))


def _assert_finite(metrics):
    for record in metrics['rounds']:
        assert math.isfinite(record['train_loss'])
        for which in ('val', 'test'):
            assert all(math.isfinite(v) for v in record.get(which, {}).values())


CONFIGS = {
    'pfedrec': dict(algorithm='pfedrec', rounds=3, dim=8),
    'fedmf-partial-ldp': dict(algorithm='fedmf', rounds=3, dim=8, client_ratio=0.5, clip=0.5,
                              ldp_scale=0.05, local_epochs=2),
    'mf': dict(algorithm='mf', rounds=3, dim=8, batch_size=64),
    'lightgcn': dict(algorithm='lightgcn', rounds=3, dim=8, batch_size=128, lr=0.01),
    'simgcl': dict(algorithm='simgcl', rounds=3, dim=8, batch_size=128, lr=0.01),
    # clients that have not trained yet hold no table of their own (ClientTables)
    'gpfedrec-partial': dict(algorithm='gpfedrec', rounds=3, dim=8, hidden=(8, 4),
                             client_ratio=0.3),
    # the learning rates and the curriculum follow the rounds done
    'fedrap-partial': dict(algorithm='fedrap', rounds=3, dim=8, client_ratio=0.5,
                           local_epochs=2),
}


# --------------------------------------------------------------------------------------
# Reproducibility and resuming
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize('name', list(CONFIGS))
def test_same_seed_same_metrics(tmp_path, sampled_split, name):
    runs = []
    for run in ('a', 'b'):
        out = tmp_path / run
        returned = train(TrainConfig(**CONFIGS[name]), out=out, progress=False,
                         split=sampled_split)
        written = read_metrics(out)
        assert without_seconds(returned) == without_seconds(written)
        runs.append(written)
    _assert_finite(runs[0])
    assert without_seconds(runs[0]) == without_seconds(runs[1])
    other = train(TrainConfig(**CONFIGS[name], seed=1), progress=False, split=sampled_split)
    assert [r['train_loss'] for r in other['rounds']] != \
        [r['train_loss'] for r in runs[0]['rounds']]


@pytest.mark.parametrize('name', ['pfedrec', 'fedmf-partial-ldp', 'mf', 'simgcl',
                                  'gpfedrec-partial', 'fedrap-partial'])
def test_resume_after_interruption_matches_uninterrupted_run(tmp_path, sampled_split,
                                                            monkeypatch, name):
    config = dict(CONFIGS[name], rounds=4, checkpoint_every=2)
    train(TrainConfig(**config), out=tmp_path / 'a', progress=False, split=sampled_split)
    expected = read_metrics(tmp_path / 'a')
    assert [r['round'] for r in expected['rounds']] == [0, 1, 2, 3]

    out = tmp_path / 'b'
    train_interrupted(monkeypatch, TrainConfig(**config), out=out, progress=False,
                      split=sampled_split)
    assert (out / CHECKPOINT).exists()
    assert [r['round'] for r in read_metrics(out)['rounds']] == [0, 1]  # the round-2 checkpoint

    resumed = train(TrainConfig(**config), out=out, resume=True, progress=False,
                    split=sampled_split)
    assert [r['round'] for r in resumed['rounds']] == [0, 1, 2, 3]
    _assert_finite(expected)
    assert without_seconds(read_metrics(out)) == without_seconds(expected)
    assert without_seconds(resumed) == without_seconds(expected)


def test_resume_without_checkpoint_raises(tmp_path, sampled_split):
    config = TrainConfig(**CONFIGS['pfedrec'])
    with pytest.raises(FileNotFoundError):
        train(config, out=tmp_path / 'empty', resume=True, progress=False, split=sampled_split)
    with pytest.raises(FileNotFoundError):
        train(config, out=None, resume=True, progress=False, split=sampled_split)


# --------------------------------------------------------------------------------------
# metrics.json
# --------------------------------------------------------------------------------------
def test_metrics_json_structure(tmp_path, sampled_split):
    config = TrainConfig(algorithm='pfedrec', rounds=3, dim=8)
    returned = train(config, out=tmp_path, progress=False, split=sampled_split)
    metrics = read_metrics(tmp_path)
    assert set(metrics) == {'rounds', 'best'}
    assert json.loads((tmp_path / 'config.json').read_text())['dim'] == 8
    assert TrainConfig.load(tmp_path / 'config.json') == config

    num_users = sampled_split.val_item.numel()
    num_items = sampled_split.train['item'].num_nodes
    assert [r['round'] for r in metrics['rounds']] == [0, 1, 2]
    for record in metrics['rounds']:
        assert ROUND_KEYS <= set(record)
        assert record['clients'] == num_users
        assert record['train_loss'] > 0
        assert record['seconds'] >= 0
        # Download: the float32 item table; upload: some rows of d floats and an index.
        assert record['download_bytes_per_client'] == num_items * 8 * 4
        row_bytes = 8 * 4 + 8
        assert 0 < record['upload_bytes_per_client'] < num_items * row_bytes
        rows = record['upload_bytes_per_client'] / row_bytes * num_users
        assert rows == pytest.approx(round(rows))  # a mean of whole rows
        for which in ('val', 'test'):
            assert set(record[which]) == {'hr@10', 'ndcg@10'}
            assert 0 <= record[which]['ndcg@10'] <= record[which]['hr@10'] <= 1
    assert set(metrics['best']) == {'round', 'val', 'test'}
    assert metrics['best'] == best_round(metrics['rounds'], 'hr@10')
    best = metrics['best']['round']
    assert metrics['best']['val'] == metrics['rounds'][best]['val']
    assert metrics['best']['test'] == metrics['rounds'][best]['test']
    assert metrics['best']['val']['hr@10'] == max(r['val']['hr@10'] for r in metrics['rounds'])
    assert without_seconds(returned) == without_seconds(metrics)


def test_metrics_json_is_strict_json(tmp_path, sampled_split):
    """metrics.json must be standard JSON (no NaN / Infinity constants), readable by any
    JSON parser."""
    train(TrainConfig(algorithm='pfedrec', rounds=1, dim=8), out=tmp_path, progress=False,
          split=sampled_split)

    def reject(constant):
        raise ValueError(f'non-standard JSON constant {constant}')

    json.loads((tmp_path / 'metrics.json').read_text(), parse_constant=reject)


def test_eval_every_evaluates_some_rounds_and_the_last(sampled_split):
    metrics = train(TrainConfig(algorithm='fedmf', rounds=5, dim=8, eval_every=2),
                    progress=False, split=sampled_split)
    evaluated = [r['round'] for r in metrics['rounds'] if 'val' in r]
    assert evaluated == [1, 3, 4]
    assert all('test' not in r for r in metrics['rounds'] if r['round'] not in evaluated)
    assert metrics['best']['round'] in evaluated


def _record(round_index, value, metric='hr@10'):
    return {'round': round_index, 'train_loss': 0.5, 'val': {metric: value, 'other': 0.0},
            'test': {metric: value / 2}}


def test_best_round_picks_max_validation_later_wins_ties():
    history = [_record(0, 0.3), {'round': 1, 'train_loss': 0.4}, _record(2, 0.5),
               _record(3, 0.5), _record(4, 0.45)]
    best = best_round(history, 'hr@10')
    assert best == {'round': 3, 'val': history[3]['val'], 'test': history[3]['test']}
    assert best_round(history[:3], 'hr@10')['round'] == 2
    assert best_round([_record(0, 0.2), _record(1, 0.1)], 'hr@10')['round'] == 0
    assert best_round([_record(0, 0.1, 'recall@20'), _record(1, 0.3, 'recall@20'),
                       _record(2, 0.2, 'recall@20')], 'recall@20')['round'] == 1
    assert best_round([], 'hr@10') is None
    assert best_round([{'round': 0, 'train_loss': 1.0}], 'hr@10') is None


# --------------------------------------------------------------------------------------
# Protocols and algorithms
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize('algorithm', ['pfedrec', 'mf', 'lightgcn', 'popular'])
def test_full_ranking_protocol(tmp_path, ranking_split, algorithm):
    dim = {} if algorithm == 'popular' else {'dim': 8}
    config = TrainConfig(algorithm=algorithm, protocol='full', rounds=3, **dim)
    assert config.select_by == 'recall@20'
    metrics = train(config, out=tmp_path, progress=False, split=ranking_split)
    best = read_metrics(tmp_path)['best']
    for which in ('val', 'test'):
        for metric in ('recall@20', 'ndcg@20', 'recall@10', 'ndcg@10'):
            assert 0 <= best[which][metric] <= 1
        assert 'hr@10' not in best[which]
        assert best[which]['recall@10'] <= best[which]['recall@20']
    recalls = [r['val']['recall@20'] for r in metrics['rounds']]
    assert best['val']['recall@20'] == max(recalls)
    assert best['round'] == max(i for i, v in enumerate(recalls) if v == max(recalls))
    assert max(recalls) > 0


def test_centralized_mf_loss_decreases():
    split = leave_one_out_split(
        synthetic_interactions(num_users=100, num_items=500, mean_degree=20, seed=2))
    metrics = train(TrainConfig(algorithm='mf', rounds=5, dim=8, lr=0.01,
                                batch_size=64), progress=False, split=split)
    losses = [r['train_loss'] for r in metrics['rounds']]
    assert all(b < a for a, b in zip(losses[:-1], losses[1:])), losses
    assert losses[-1] < 0.95 * losses[0]
    assert all(r['upload_bytes_per_client'] == 0 for r in metrics['rounds'])


def test_reference_engine_option_trains_and_checkpoints(tmp_path, sampled_split, float64):
    """``engine='reference'`` (``--engine reference``) is a supported option: a run with an
    output folder checkpoints it and matches the vectorized engine."""
    config = dict(algorithm='pfedrec', rounds=2, dim=8, client_ratio=0.5)
    fast = train(TrainConfig(**config), progress=False, split=sampled_split)
    slow = train(TrainConfig(**config, engine='reference'), out=tmp_path, progress=False,
                 split=sampled_split)
    assert (tmp_path / CHECKPOINT).exists()
    for a, b in zip(fast['rounds'], slow['rounds']):
        assert a['train_loss'] == pytest.approx(b['train_loss'], abs=1e-6)
        assert a['val'] == pytest.approx(b['val'], abs=1e-6)


def test_reference_engine_option_full_ranking(ranking_split, float64):
    config = dict(algorithm='pfedrec', protocol='full', rounds=1, dim=8)
    fast = train(TrainConfig(**config), progress=False, split=ranking_split)
    slow = train(TrainConfig(**config, engine='reference'), progress=False,
                 split=ranking_split)
    assert slow['best']['val'] == pytest.approx(fast['best']['val'], abs=1e-6)


@pytest.mark.parametrize('kwargs', [
    {'algorithm': 'fedavg'}, {'protocol': 'bogus'}, {'aggregation': 'krum'},
    {'engine': 'gpu'}, {'split_mode': 'sorted'}, {'rounds': 0}, {'eval_every': 0},
    {'checkpoint_every': -1}, {'num_negatives': 0}, {'dim': 0}, {'batch_size': 0},
])
def test_config_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        TrainConfig(**kwargs)


# --------------------------------------------------------------------------------------
# Command line and MovieLens-100K
# --------------------------------------------------------------------------------------
def test_cli_train_and_resume(tmp_path, capsys):
    out = tmp_path / 'run'
    main(['train', '--algorithm', 'pfedrec', '--dataset', 'ml-100k', '--rounds', '2',
          '--dim', '8', '--out', str(out), '--quiet'])
    printed = json.loads(capsys.readouterr().out)
    assert (out / 'config.json').exists() and (out / 'metrics.json').exists()
    config = json.loads((out / 'config.json').read_text())
    assert config['rounds'] == 2 and config['dim'] == 8 and config['dataset'] == 'ml-100k'
    metrics = read_metrics(out)
    assert len(metrics['rounds']) == 2
    assert 0 <= metrics['best']['test']['hr@10'] <= 1
    assert printed['best'] == metrics['best']
    assert printed['out'] == str(out)

    # Resuming a finished run trains nothing more and reports the same best round.
    main(['train', '--resume', str(out), '--quiet'])
    printed = json.loads(capsys.readouterr().out)
    assert printed['best'] == metrics['best']
    assert read_metrics(out) == metrics


@pytest.mark.parametrize('argv,message', [
    (['train', '--protocol', 'bogus'], "protocol must be one of"),
    (['train', '--algorithm', 'fedavg'], "invalid choice: 'fedavg'"),
    (['train', '--rounds', 'two'], "invalid int value: 'two'"),
    (['train', '--no-such-flag'], 'unrecognized arguments'),
    (['train', '--algorithm', 'pfedrec', '--num-layers', '2'], 'pfedrec has no setting num_layers'),
    (['train', '--algorithm', 'mf', '--ldp-scale', '0.1'], 'mf does not use ldp_scale'),
    (['train', '--dim', '0'], 'dim must be >= 1, got 0'),
    (['train', '--batch-size', '0'], 'batch_size must be >= 1'),
    (['train', '--num-negatives', '0'], 'num_negatives must be >= 1'),
    (['train', '--dataset', 'csv', '--data-path', '.'], 'is a directory; expected a file'),
    (['train', '--aggregation', 'trimmed_mean', '--trim-ratio', '0.6'], 'trim_ratio must be'),
    (['train', '--trim-ratio', '0.3'], 'trim_ratio applies to aggregation=trimmed_mean only'),
    (['train', '--algorithm', 'fedmf', '--clip', 'nan', '--ldp-scale', '0.1'],
     'settings must be finite: clip = nan'),
    (['train', '--algorithm', 'pfedrec', '--lr', 'inf'], 'settings must be finite: lr = inf'),
    (['train', '--protocol', 'full', '--eval-negatives', '50'],
     'the full protocol does not use eval_negatives'),
    (['train', '--split-ratios', '0.7', '0.2', '0.1'],
     'the sampled protocol does not use split_ratios'),
    (['train', '--protocol', 'full', '--split-ratios', '1', '0', '0'],
     r'split_ratios must be three ratios > 0 \(train, validation, test\) summing to 1'),
    (['train', '--protocol', 'full', '--split-ratios', 'nan', '0.5', '0.5'],
     'settings must be finite: split_ratios'),
    (['train', '--algorithm', 'perfedrec++', '--level-weights', '0', '0', '0'],
     'one at least > 0'),
    (['train', '--dim', str(10 ** 12)], r'does not fit in memory; lower --dim'),
    (['train', '--noise-at', 'server'], "noise_at='server' places the Laplace noise of ldp_scale"),
    (['train', '--algorithm', 'fedmf', '--clip-mode', 'coordinate'],
     "clip_mode='coordinate' applies to a clip bound"),
    (['no-such-command'], 'invalid choice'),
])
def test_cli_answers_misuse_like_argparse(tmp_path, capsys, argv, message):
    out = tmp_path / 'run'
    with cli_misuse(capsys, message):
        main(argv + ['--dataset', 'synthetic', '--rounds', '1', '--out', str(out), '--quiet']
             if argv[0] == 'train' and '--dataset' not in argv else
             argv + ['--rounds', '1', '--out', str(out), '--quiet'] if argv[0] == 'train'
             else argv)
    assert not out.exists()  # nothing was written


@pytest.mark.skipif(torch.cuda.is_available(), reason='this machine has CUDA')
def test_cuda_without_cuda_is_a_misuse(tmp_path, capsys):
    with cli_misuse(capsys, '--device cuda: this PyTorch .* has no CUDA device'):
        main(['train', '--dataset', 'synthetic', '--device', 'cuda', '--rounds', '1',
              '--out', str(tmp_path / 'run'), '--quiet'])
    assert not (tmp_path / 'run').exists()


def test_a_diverging_run_stops_naming_the_round_and_keeps_its_checkpoint(tmp_path, capsys,
                                                                         sampled_split):
    """PFedRec at lr 1e6 drives its loss far above chance at once: with the learning rates
    raised once rounds 0, 1 and 2 are done (a checkpoint every 2 rounds), the run stops in
    round 3 and keeps the checkpoint written after round 1."""
    from fedgraph.federated.local import BCELoss

    out = tmp_path / 'run'
    config = TrainConfig(rounds=6, dim=8, checkpoint_every=2)
    losses = []
    real_divergence = fedgraph.server.loop.divergence

    def spy(stats, engine):
        if len(losses) == 2:
            engine.training.lr = engine.training.item_lr = 1e6
        losses.append(stats.loss)
        return real_divergence(stats, engine)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fedgraph.server.loop, 'divergence', spy)
        with pytest.raises(TrainingDiverged, match=r'diverged in round 3: the training loss '
                                                   r'.* over 10 times .*checkpoint.pt \(after '
                                                   r'round 1\) is kept'):
            train(config, out, progress=False, split=sampled_split)
    assert losses[-1] > 10 * BCELoss.chance_loss
    assert torch.load(out / CHECKPOINT, weights_only=True)['round'] == 2
    assert len(read_metrics(out)['rounds']) == 2


def test_a_non_finite_parameter_is_divergence():
    from fedgraph.federated.messages import RoundStats
    from fedgraph.training import divergence

    class Engine:
        federated = None
        chance_loss = None

        def state_dict(self):
            return {'heads': [torch.zeros(2), torch.tensor([0.0, float('nan')])]}

    stats = RoundStats(0.5, 3, 0.0, 0.0)
    assert divergence(stats, Engine()) == 'state/heads/1 is not finite'
    stats.loss = float('inf')
    assert divergence(stats, Engine()) == 'the training loss is inf'


@pytest.mark.parametrize('algorithm', ['pfedrec', 'mf'])
def test_the_command_line_reports_divergence_without_a_traceback(tmp_path, capsys, algorithm):
    """A federated model and a centralized one alike: the loss far above chance stops the
    run with the same sentence."""
    out = tmp_path / 'run'
    with pytest.raises(SystemExit) as raised:
        main(['train', '--algorithm', algorithm, '--dataset', 'synthetic', '--lr', '1e6',
              '--rounds', '3', '--out', str(out), '--quiet'])
    assert str(raised.value).startswith(f'error: {algorithm} diverged in round 0')
    assert 'No checkpoint was written' in str(raised.value)
    assert 'Traceback' not in capsys.readouterr().err
    assert not (out / 'metrics.json').exists() and not (out / CHECKPOINT).exists()


def test_pfedrec_accuracy_on_movielens_100k():
    """PFedRec's defaults on MovieLens-100K: validation HR@10 after the second round (round
    index 1) is far above random ranking (0.1); the reference code reaches about 0.49."""
    metrics = train(TrainConfig(algorithm='pfedrec', dataset='ml-100k', rounds=2),
                    progress=False)
    first, second = metrics['rounds']
    assert second['round'] == 1
    assert second['clients'] == 943
    assert second['val']['hr@10'] > 0.4
    assert second['test']['hr@10'] > 0.3
    assert second['train_loss'] < first['train_loss']


def test_progress_is_one_bar_and_no_line_per_round(sampled_split, capsys, caplog):
    """What a notebook shows of a run: one progress bar (the latest loss and validation
    metric), nothing printed per round; the rounds' summaries go to the log, for whoever
    configured logging at INFO (the command line does)."""
    import logging

    train(TrainConfig(rounds=3, dim=8), split=sampled_split, progress=True)
    out, err = capsys.readouterr()
    assert out == ''
    bar = err.strip().split('\r')[-1]
    assert bar.startswith('pfedrec: 100%') and 'val hr@10' in bar and 'test' not in bar
    assert err.count('\n') == 1  # the bar ends once; its updates overwrite it in place
    with caplog.at_level(logging.INFO, logger='fedgraph.server.loop'):
        train(TrainConfig(rounds=3, dim=8), split=sampled_split, progress=True)
    assert [r.getMessage().split()[:2] for r in caplog.records
            if r.getMessage().startswith('round')] == [['round', '0'], ['round', '1'],
                                                        ['round', '2']]
