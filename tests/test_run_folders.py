"""Run folders that cannot be lost: an existing run is never overwritten without being asked,
files are replaced atomically (a crash while writing a checkpoint leaves the previous one to
resume from), and nothing read from a run folder runs code."""
import os
import re
import subprocess
import sys

import pytest
import torch

import fedgraph.files
from fedgraph.cli import main
from fedgraph.config import TrainConfig
from fedgraph.server.loop import SET_ASIDE, set_aside
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


def test_an_overwrite_replaces_the_old_run_only_once_the_new_one_has_a_checkpoint(
        tmp_path, capsys):
    """A configuration that fails when the run is built writes nothing; a new run that fails
    before its first checkpoint brings the old run back, figures and all; one that gets
    there leaves nothing of the old run, its figures neither."""
    out = tmp_path / 'run'
    main(['train', '--out', str(out), '--checkpoint-every', '1', '--plot'] + SMALL)
    before = {path.relative_to(out): path.read_bytes() for path in out.rglob('*')
              if path.is_file() and path.name != '.lock'}
    assert (out / 'figures' / 'curves.png').exists()
    with cli_misuse(capsys, 'unknown data set'):
        main(['train', '--out', str(out), '--overwrite', '--dataset', 'no-such-data'])
    with pytest.raises(SystemExit, match='diverged in round 0'):
        main(['train', '--out', str(out), '--overwrite', '--lr', '1e6'] + SMALL)
    after = {path.relative_to(out): path.read_bytes() for path in out.rglob('*')
             if path.is_file() and path.name != '.lock'}
    assert after == before
    main(['train', '--out', str(out), '--overwrite', '--seed', '1'] + SMALL)
    assert not (out / 'figures').exists() and not (out / SET_ASIDE).exists()
    assert '"seed": 1' in (out / 'config.json').read_text()


def test_an_overwrite_killed_before_its_first_checkpoint_leaves_the_old_run(tmp_path, capsys):
    """A process killed while its overwrite had no checkpoint yet leaves the old run set
    aside; the next command on the folder brings it back before it looks."""
    out = tmp_path / 'run'
    main(['train', '--out', str(out)] + SMALL)
    before = read_metrics(out)
    set_aside(out)
    (out / 'config.json').write_text('{"the killed run": true}')
    with cli_misuse(capsys, 'holds a run already'):
        main(['train', '--out', str(out), '--seed', '1'] + SMALL)
    assert read_metrics(out) == before and not (out / SET_ASIDE).exists()
    assert 'killed' not in (out / 'config.json').read_text()


def test_two_runs_started_together_on_one_folder_leave_one_run(tmp_path):
    """Both processes start at once; the folder's lock is taken before anything is checked,
    so one trains and the other fails, whichever came first, and the folder holds the
    winner's run whole."""
    out = tmp_path / 'run'
    command = [sys.executable, '-m', 'fedgraph', 'train', '--out', str(out)] + SMALL
    runs = [subprocess.Popen(command + ['--seed', str(seed)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for seed in (1, 2)]
    results = [(run.wait(), run.stderr.read()) for run in runs]
    for run in runs:
        run.stdout.close()
        run.stderr.close()
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    # The winner writes its process id after taking the lock, so a loser that comes between
    # the two finds the lock held and the file still empty.
    assert re.search(r'is being written by (process \d+|another process)|holds a run already',
                     loser), loser
    winner = 1 + [code for code, _ in results].index(0)
    assert f'"seed": {winner}' in (out / 'config.json').read_text()
    assert read_metrics(out)['rounds']


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
])
def test_commands_refuse_a_hostile_file_without_running_it(graph_run, tmp_path, capsys, file,
                                                            argv):
    run = tmp_path / 'run'
    run.mkdir()
    for name in ('config.json', 'metrics.json', CHECKPOINT, EMBEDDINGS):
        (run / name).write_bytes((graph_run / name).read_bytes())
    target = tmp_path / 'written-by-the-file'
    hostile = HostilePayload(str(target))
    torch.save({'engine': hostile, 'user_final': hostile}, run / file)
    argv = [a.format(run=run, figures=tmp_path / 'figures') for a in argv]
    with cli_misuse(capsys, f'not a fedgraph checkpoint \\(or damaged\\): .*{file}'):
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


def test_resume_refuses_a_changed_setting_and_applies_more_rounds(tmp_path, capsys, caplog):
    """A resumed run trains what its config.json says: a flag that would change that is an
    error naming it; more rounds are applied, said and recorded, and end where an
    uninterrupted run of that many rounds ends."""
    out = tmp_path / 'run'
    main(['train', '--out', str(out), '--checkpoint-every', '1'] + SMALL)
    before = read_metrics(out)
    with cli_misuse(capsys, r'--dim 16 \(the run has 8\), --lr 0.5 \(the run has 0.1\)'):
        main(['train', '--resume', str(out), '--rounds', '4', '--lr', '0.5', '--dim', '16'])
    with cli_misuse(capsys, r'--dim 32 \(the run has 8\)'):  # the default, not this run's
        main(['train', '--resume', str(out), '--dim', '32'])
    assert read_metrics(out) == before
    with caplog.at_level('INFO', logger='fedgraph.cli'):
        main(['train', '--resume', str(out), '--rounds', '4', '--dim', '8', '--quiet'])
    assert 'with rounds = 4' in caplog.text
    assert TrainConfig.load(out / 'config.json').rounds == 4
    uninterrupted = tmp_path / 'whole'
    main(['train', '--out', str(uninterrupted)] + SMALL[:-3] + ['--rounds', '4', '--quiet'])
    assert without_seconds(read_metrics(out)) == without_seconds(read_metrics(uninterrupted))


def test_levels_compares_the_levels_a_run_has_and_refuses_a_run_without(tmp_path, capsys):
    """A model without levels is refused, so is a graph model with the global level alone;
    with dual personalization the table has the global and the local rows, which differ."""
    plain, graph, personal = tmp_path / 'pfedrec', tmp_path / 'graph', tmp_path / 'personal'
    main(['train', '--out', str(plain)] + SMALL)
    main(['train', '--algorithm', 'fedlightgcn', '--out', str(graph)] + SMALL)
    main(['train', '--algorithm', 'fedlightgcn', '--dual-personalization', '--out',
          str(personal)] + SMALL)
    capsys.readouterr()
    with cli_misuse(capsys, 'is a pfedrec run: its model has no levels'):
        main(['levels', str(plain)])
    with cli_misuse(capsys, 'has the global level only'):
        main(['levels', str(graph)])
    main(['levels', str(personal)])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith('| (')]
    assert [row.split(' |')[0] for row in rows] == ['| (1.0, 0.0, 0.0)', '| (0.0, 0.0, 1.0)']
    assert rows[0].split('|')[2:] != rows[1].split('|')[2:]


def test_checkpoint_every_zero_writes_no_checkpoint(tmp_path):
    """``checkpoint_every=0``: the run's metrics, no ``checkpoint.pt`` (a
    10^6-user PFedRec checkpoint holds every user's fine-tuned rows), and the same metrics
    as a run that checkpoints; it cannot be resumed."""
    config = dict(dataset='synthetic', dim=8, rounds=3)
    saved = train(TrainConfig(**config, checkpoint_every=1), out=tmp_path / 'saved',
                  progress=False)
    out = tmp_path / 'unsaved'
    unsaved = train(TrainConfig(**config, checkpoint_every=0), out=out, progress=False)
    assert not (out / CHECKPOINT).exists()
    assert (out / 'metrics.csv').exists() and (tmp_path / 'saved' / CHECKPOINT).exists()
    assert without_seconds(read_metrics(out)) == without_seconds(unsaved)
    assert without_seconds(unsaved) == without_seconds(saved)
    with pytest.raises(FileNotFoundError, match='to resume from'):
        train(TrainConfig(**config, checkpoint_every=0), out=out, resume=True, progress=False)
