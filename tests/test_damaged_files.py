"""A run folder's files that are cut short, altered, crafted or of another run: every command
that opens one ends with a sentence naming the file (exit status 2), never a traceback or
PyTorch's advice about ``weights_only``; so do an export to a folder, ``-k 0`` and a run
folder that cannot be written."""
import collections
import os
import re
import shutil

import pytest
import torch

import fedgraph.files
from fedgraph.cli import main
from fedgraph.files import (DamagedFileError, folder_lock, load_tensors, read_json,
                            read_json_lines)
from fedgraph.run import load_run
from fedgraph.training import CHECKPOINT, EMBEDDINGS
from helpers import HostilePayload, cli_misuse, write_small_csv

#: The tiny run of this module: 30 users with 8 items each of 80, two rounds.
TINY = ['--dataset', 'csv', '--rounds', '2', '--eval-negatives', '20', '--quiet']


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    """``(run, its twin with --dim 16)``: two trained run folders of one data set."""
    base = tmp_path_factory.mktemp('runs')
    data = write_small_csv(base / 'plain.csv', num_users=30, num_items=80, per_user=8)
    folders = []
    for name, extra in (('run', []), ('dim16', ['--dim', '16'])):
        main(['train', '--data-path', str(data), '--out', str(base / name)] + TINY + extra)
        folders.append(base / name)
    return tuple(folders)


def _truncated(run, other):
    path = run / CHECKPOINT
    path.write_bytes(path.read_bytes()[:100])


def _crafted(run, other):
    torch.save({'x': collections.Counter()}, run / CHECKPOINT)


def _no_model(run, other):
    state = torch.load(run / CHECKPOINT, weights_only=True)
    torch.save({**state, 'engine': {}}, run / CHECKPOINT)


def _other_dim(run, other):
    shutil.copyfile(other / CHECKPOINT, run / CHECKPOINT)


def _bad_config(run, other):
    (run / 'config.json').write_text('{bad')


def _foreign_config(run, other):
    (run / 'config.json').write_text('[1, 2]')


def _config_of_no_algorithm_setting(run, other):
    text = (run / 'config.json').read_text()
    (run / 'config.json').write_text(text.replace('"settings": {', '"settings": {"bogus": 1, ', 1))


def _foreign_metrics(run, other):
    (run / 'metrics.json').write_text('{"rounds": 3}')


def _bad_metrics(run, other):
    (run / 'metrics.json').write_bytes(b'\xff\xfe')


DAMAGED = "not a fedgraph checkpoint \\(or damaged\\): {run}/checkpoint.pt"
MISMATCHED = "{run}/checkpoint.pt does not match its run's configuration \\(config.json\\): "
# damage -> (what the error says, with {run} for the folder; the commands that open the file)
DAMAGES = {
    'truncated': (_truncated, DAMAGED, ('resume', 'recommend', 'export', 'levels', 'plot')),
    'crafted': (_crafted, DAMAGED, ('resume', 'recommend', 'export', 'levels', 'plot')),
    'no-model': (_no_model, MISMATCHED + "missing 'model'",
                 ('resume', 'recommend', 'export', 'levels')),
    'other-dim': (_other_dim, MISMATCHED + 'size mismatch for item',
                  ('resume', 'recommend', 'export', 'levels')),
    'config': (_bad_config, "{run}/config.json is not valid JSON \\(or damaged\\): Expecting "
                            "property name enclosed in double quotes at line 1 column 2",
               ('resume', 'recommend', 'export', 'levels')),
    'foreign-config': (_foreign_config, "{run}/config.json is not a fedgraph configuration "
                                        "\\(or damaged\\): expected an object of settings",
                       ('resume', 'recommend', 'export', 'levels')),
    'unknown-setting': (_config_of_no_algorithm_setting,
                        "{run}/config.json does not load: .*bogus",
                        ('resume', 'recommend', 'export', 'levels')),
    'foreign-metrics': (_foreign_metrics, "{run}/metrics.json is not a run's metrics "
                                          "\\(or damaged\\): expected an object with rounds "
                                          "and best",
                        ('recommend', 'export', 'levels', 'plot', 'summarize', 'convergence')),
    'metrics': (_bad_metrics, "{run}/metrics.json is not valid JSON \\(or damaged\\): not "
                              "UTF-8 text \\(byte 0xff at position 0\\)",
                ('recommend', 'export', 'levels', 'plot', 'summarize', 'convergence')),
}
COMMANDS = {
    'resume': ['train', '--resume', '{run}', '--rounds', '3', '--quiet'],
    'recommend': ['recommend', '{run}', '--user', '1'],
    'export': ['export', '{run}', '--user', '1', '--out', '{tmp}/user1.pt'],
    'levels': ['levels', '{run}'],
    'plot': ['plot', '{run}', '--out', '{tmp}/figures'],
    'summarize': ['summarize', '{run}'],
    'convergence': ['convergence', '{run}', '--metric', 'hr@10'],
}
def _cases():
    for damage, (_, _, commands) in DAMAGES.items():
        for command in commands:
            yield pytest.param(damage, command, id=f'{damage}-{command}')


@pytest.mark.parametrize('damage, command', list(_cases()))
def test_a_damaged_file_is_named_in_one_sentence(runs, tmp_path, capsys, damage, command):
    run = tmp_path / 'run'
    shutil.copytree(runs[0], run)
    spoil, message, _ = DAMAGES[damage]
    spoil(run, runs[1])
    argv = [arg.format(run=run, tmp=tmp_path) for arg in COMMANDS[command]]
    capsys.readouterr()
    with cli_misuse(capsys, message.format(run=re.escape(str(run)))) as caught:
        main(argv)
    assert 'weights_only' not in caught['err']


@pytest.mark.parametrize('file, argv', [
    (CHECKPOINT, ['levels', '{run}']),
    (EMBEDDINGS, ['plot', '{run}', '--out', '{tmp}/figures']),
])
def test_a_hostile_file_is_refused_as_damaged_without_running_it(runs, tmp_path, capsys,
                                                                   file, argv):
    run = tmp_path / 'run'
    shutil.copytree(runs[0], run)
    target = tmp_path / 'written-by-the-file'
    hostile = HostilePayload(str(target))
    torch.save({'engine': hostile, 'user_final': hostile}, run / file)
    capsys.readouterr()
    with cli_misuse(capsys, re.escape(f'(or damaged): {run / file}')):
        main([arg.format(run=run, tmp=tmp_path) for arg in argv])
    assert not target.exists()


def test_a_missing_file_says_what_the_folder_lacks(runs, tmp_path, capsys):
    run = tmp_path / 'run'
    shutil.copytree(runs[0], run)
    (run / 'config.json').unlink()
    with cli_misuse(capsys, re.escape(f'{run} is not a run folder: no config.json')):
        main(['recommend', str(run), '--user', '1'])
    with cli_misuse(capsys, re.escape(f'{tmp_path / "nothing"} is not a run folder: no such '
                                      'folder')):
        main(['summarize', str(tmp_path / 'nothing')])


def test_reading_in_python_raises_one_error_naming_the_file(runs, tmp_path):
    run = tmp_path / 'run'
    shutil.copytree(runs[0], run)
    _truncated(run, runs[1])
    with pytest.raises(DamagedFileError, match='not a fedgraph checkpoint'):
        load_run(run)
    torch.save([1, 2], tmp_path / 'list.pt')
    with pytest.raises(DamagedFileError, match=r'not a fedgraph checkpoint \(or damaged\)'):
        load_tensors(tmp_path / 'list.pt')
    with pytest.raises(DamagedFileError, match=r'not a fedgraph embeddings file'):
        load_tensors(runs[0] / CHECKPOINT, what='a fedgraph embeddings file',
                     keys=('user_final',))
    assert 'engine' in load_tensors(runs[0] / CHECKPOINT, keys=('engine',))
    (tmp_path / 'rows.jsonl').write_text('{"a": 1}\n\n{"a": 2}\n{"a": \n')
    with pytest.raises(DamagedFileError, match=r'rows.jsonl line 4 is not valid JSON'):
        read_json_lines(tmp_path / 'rows.jsonl')
    (tmp_path / 'rows.jsonl').write_text('{"a": 1}\n\n{"a": 2}\n')
    assert read_json_lines(tmp_path / 'rows.jsonl') == [{'a': 1}, {'a': 2}]
    assert read_json(run / 'metrics.json')['best']


def test_a_device_model_file_that_is_damaged_is_named(runs, tmp_path):
    from fedgraph.export import DeviceModel

    (tmp_path / 'user.pt').write_bytes(b'not a zip')
    with pytest.raises(DamagedFileError, match=r'not a fedgraph device model \(or damaged\)'):
        DeviceModel.load(tmp_path / 'user.pt')
    torch.save({'format': 'something else'}, tmp_path / 'user.pt')
    with pytest.raises(DamagedFileError, match=r'not a fedgraph device model \(or damaged\)'):
        DeviceModel.load(tmp_path / 'user.pt')


def test_an_export_to_a_folder_or_under_a_file_is_a_sentence(runs, tmp_path, capsys):
    with cli_misuse(capsys, re.escape(f'cannot write the exported model to {tmp_path}: '
                                      'it is a folder')):
        main(['export', str(runs[0]), '--user', '1', '--out', str(tmp_path)])
    (tmp_path / 'file').write_text('')
    with cli_misuse(capsys, re.escape('cannot write the exported model to '
                                      f'{tmp_path / "file" / "user.pt"}: File exists')):
        main(['export', str(runs[0]), '--user', '1', '--out', str(tmp_path / 'file' / 'user.pt')])


def test_convergence_names_a_metric_the_run_did_not_record(runs, capsys):
    with cli_misuse(capsys, 'recorded no validation ndcg@20; its metrics: hr@10, ndcg@10'):
        main(['convergence', str(runs[0])])


def test_k_below_one_is_refused(runs, capsys):
    for k in ('0', '-5'):
        with cli_misuse(capsys, f'-k must be at least 1, got {k}'):
            main(['recommend', str(runs[0]), '--user', '1', '-k', k])
    run = load_run(runs[0])
    with pytest.raises(ValueError, match='k must be at least 1, got 0'):
        run.recommend(run.split.train['user'].raw_id[0], 0)


def test_a_folder_that_cannot_be_written_is_named(runs, tmp_path, monkeypatch, capsys):
    run = tmp_path / 'run'
    shutil.copytree(runs[0], run)
    (run / fedgraph.files.LOCK).unlink()
    os.chmod(run, 0o500)
    try:
        (run / 'probe').touch()
    except PermissionError:
        pass
    else:  # root writes anyway: the folder refuses through open()
        (run / 'probe').unlink()

        def refused(path, *args, **kwargs):
            raise PermissionError(13, 'Permission denied', str(path))

        monkeypatch.setattr(fedgraph.files, 'open', refused, raising=False)
    try:
        message = f'cannot lock {run} for writing: permission denied'
        with pytest.raises(PermissionError, match=re.escape(message)):
            with folder_lock(run):
                pass
        with cli_misuse(capsys, re.escape(message)):
            main(['train', '--resume', str(run), '--quiet'])
    finally:
        os.chmod(run, 0o700)
