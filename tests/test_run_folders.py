"""Run folders that cannot be lost: an existing run is never overwritten without being asked,
files are replaced atomically (a crash while writing a checkpoint leaves the previous one to
resume from), and nothing read from a run folder runs code."""
import os

import pytest
import torch

import fedgraph.files
from fedgraph.cli import main
from fedgraph.config import TrainConfig
from fedgraph.training import CHECKPOINT, EMBEDDINGS, train
from helpers import HostilePayload, cli_misuse, read_metrics, without_seconds

SMALL = ['--dataset', 'synthetic', '--dim', '8', '--rounds', '2', '--quiet']


def test_an_existing_run_is_not_overwritten_unless_asked(tmp_path, capsys):
    out = tmp_path / 'run'
    main(['train', '--out', str(out)] + SMALL)
    before = read_metrics(out)
    with cli_misuse(capsys, 'holds a run already .*--overwrite'):
        main(['train', '--out', str(out), '--seed', '1'] + SMALL)
    assert read_metrics(out) == before
    main(['train', '--out', str(out), '--seed', '1', '--overwrite'] + SMALL)
    assert read_metrics(out) != before
    assert not list(out.glob('.*.partial'))  # every file was renamed into place


def test_an_overwrite_that_cannot_start_leaves_the_old_run_and_one_that_does_leaves_no_trace(
        tmp_path, capsys):
    """A configuration that fails when the run is built writes nothing; an overwrite that
    starts removes the old run's files first, so a run folder never mixes two runs."""
    out = tmp_path / 'run'
    main(['train', '--out', str(out), '--checkpoint-every', '1'] + SMALL)
    config_before, metrics_before = (out / 'config.json').read_text(), read_metrics(out)
    with cli_misuse(capsys, 'unknown data set'):
        main(['train', '--out', str(out), '--overwrite', '--dataset', 'no-such-data'])
    assert (out / 'config.json').read_text() == config_before
    assert read_metrics(out) == metrics_before
    with pytest.raises(SystemExit, match='diverged in round 0'):
        main(['train', '--out', str(out), '--overwrite', '--lr', '1e6'] + SMALL)
    assert not (out / 'metrics.json').exists() and not (out / CHECKPOINT).exists()
    assert '"lr": 1000000.0' in (out / 'config.json').read_text()


def test_a_folder_being_written_is_locked(tmp_path, capsys):
    out = tmp_path / 'run'
    out.mkdir()
    with fedgraph.files.folder_lock(out):
        with cli_misuse(capsys, f'{out} is being written by process {os.getpid()}'):
            main(['train', '--out', str(out)] + SMALL)
    assert not (out / 'config.json').exists()
    main(['train', '--out', str(out)] + SMALL)  # released
    assert read_metrics(out)['rounds']


def test_a_crash_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    config = TrainConfig(dataset='synthetic', dim=8, rounds=3, checkpoint_every=1)
    expected = train(config, progress=False)
    out = tmp_path / 'run'
    real_save, calls = torch.save, []

    def crashing_save(obj, path):
        calls.append(path)
        if len(calls) == 3:  # the third checkpoint: half written, then the process dies
            with open(path, 'wb') as handle:
                handle.write(b'half a checkpoint')
            raise KeyboardInterrupt
        real_save(obj, path)

    monkeypatch.setattr(fedgraph.files.torch, 'save', crashing_save)
    with pytest.raises(KeyboardInterrupt):
        train(config, out=out, progress=False)
    monkeypatch.setattr(fedgraph.files.torch, 'save', real_save)
    assert torch.load(out / CHECKPOINT, weights_only=True)['round'] == 2
    resumed = train(config, out=out, resume=True, progress=False)
    assert without_seconds(resumed) == without_seconds(expected)


@pytest.fixture(scope='module')
def graph_run(tmp_path_factory):
    out = tmp_path_factory.mktemp('graph') / 'run'
    main(['train', '--algorithm', 'fedlightgcn', '--out', str(out)] + SMALL)
    return out


@pytest.mark.parametrize('file, argv', [
    (CHECKPOINT, ['train', '--resume', '{run}', '--quiet']),
    (CHECKPOINT, ['levels', '{run}']),
    (EMBEDDINGS, ['plot', '{run}', '{run}', '--out', '{figures}']),
])
def test_commands_refuse_a_hostile_file_without_running_it(graph_run, tmp_path, file, argv):
    run = tmp_path / 'run'
    run.mkdir()
    for name in ('config.json', 'metrics.json', CHECKPOINT, EMBEDDINGS):
        (run / name).write_bytes((graph_run / name).read_bytes())
    target = tmp_path / 'written-by-the-file'
    hostile = HostilePayload(str(target))
    torch.save({'engine': hostile, 'user_final': hostile}, run / file)
    argv = [a.format(run=run, figures=tmp_path / 'figures') for a in argv]
    with pytest.raises(Exception, match='Weights only load failed'):
        main(argv)
    assert not target.exists()


def test_a_user_the_run_does_not_know_is_a_misuse(tmp_path, capsys):
    out = tmp_path / 'run'
    main(['train', '--out', str(out)] + SMALL)
    capsys.readouterr()
    with cli_misuse(capsys, 'no user 999999 in the data this run trained on'):
        main(['recommend', str(out), '--user', '999999'])
    with cli_misuse(capsys, "the user ids of this run are integers, got 'abc'"):
        main(['export', str(out), '--user', 'abc', '--out', str(tmp_path / 'abc.pt')])
