"""The configuration (shared sections and the algorithm's own), the registry, the flags
generated from them, and the rule that only an algorithm's own module tests its name."""
import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fedgraph.algorithms import algorithm_names, register, resolve
from fedgraph.algorithms.pfedrec import PFedRec
from fedgraph.cli import build_parser
from fedgraph.cli.flags import config_from_args
from fedgraph.config import SECTIONS, TrainConfig, shared_fields

PACKAGE = Path(__file__).resolve().parents[1] / 'fedgraph'


def test_every_shared_setting_is_in_one_section():
    names = [name for section in SECTIONS.values() for name in section]
    assert len(names) == len(set(names)) == len(shared_fields())
    assert all(field.metadata.get('help') for field in shared_fields().values())


def test_settings_by_name_go_to_the_algorithms_section():
    config = TrainConfig(algorithm='perfedrec++', rounds=3, pretrain_rounds=2, num_layers=1)
    assert config.settings.pretrain_rounds == 2 and config.pretrain_rounds == 2
    assert config.settings.num_layers == 1 and config.rounds == 3
    assert config.settings.num_clusters == 5  # the paper's default kept
    with pytest.raises(ValueError, match="pfedrec has no setting num_layers, pretrain_rounds"):
        TrainConfig(algorithm='pfedrec', num_layers=2, pretrain_rounds=1)
    with pytest.raises(ValueError, match='its own settings: lr, item_lr_eta'):
        TrainConfig(algorithm='fedmf', typo_rate=1)
    with pytest.raises(ValueError, match='mf does not use clip'):
        TrainConfig(algorithm='mf', clip=0.5)
    with pytest.raises(ValueError, match='unknown algorithm'):
        TrainConfig(algorithm='fedavg')
    with pytest.raises(ValueError, match='pretrain_rounds and num_clusters must be >= 0'):
        TrainConfig(algorithm='perfedrec++', pretrain_rounds=-1)


def test_a_client_ratio_given_overrides_the_algorithms_clients_per_round():
    assert TrainConfig(algorithm='fedlightgcn').clients_per_round == 256
    config = TrainConfig(algorithm='fedlightgcn', client_ratio=0.5)
    assert config.client_ratio == 0.5 and config.clients_per_round is None
    assert config.build_algorithm().build_selector(100).count == 50
    both = TrainConfig(algorithm='fedlightgcn', client_ratio=0.5, clients_per_round=10)
    with pytest.raises(ValueError, match='either ratio or count'):
        both.build_algorithm().build_selector(100)


def test_a_saved_config_loads_back(tmp_path):
    config = TrainConfig(algorithm='fedncf', hidden=(16, 8), clip=0.5, ldp_scale=0.1)
    config.save(tmp_path / 'config.json')
    saved = json.loads((tmp_path / 'config.json').read_text())
    assert saved['settings']['hidden'] == [16, 8] and 'hidden' not in saved
    assert TrainConfig.load(tmp_path / 'config.json') == config


def test_a_flat_config_of_an_earlier_version_loads(tmp_path, caplog):
    flat = {'algorithm': 'mf', 'rounds': 5, 'central_lr': 0.01, 'num_layers': 2, 'clip': 0.0,
            'level_weights': None}
    (tmp_path / 'config.json').write_text(json.dumps(flat))
    config = TrainConfig.load(tmp_path / 'config.json')
    assert config.settings.lr == 0.01 and config.rounds == 5
    assert 'clip, level_weights, num_layers' in caplog.text


def test_flags_come_from_the_configuration():
    parser = build_parser()
    help_text = next(action for action in parser._subparsers._group_actions[0].choices[
        'train']._actions if action.dest == 'num_layers').help
    assert 'fedlightgcn 2' in help_text and 'perfedrec++ 2' in help_text
    args = parser.parse_args(['train', '--algorithm', 'fedncf', '--hidden', '8', '4',
                              '--clip', '0.5'])
    config = config_from_args(args)
    assert config.settings.hidden == (8, 4) and config.clip == 0.5
    describe = parser.parse_args(['describe', '--data-root', '/data', '--eval-negatives', '49'])
    assert describe.data_root == '/data' and describe.eval_negatives == 49


def test_the_registry_resolves_and_refuses_a_taken_name():
    assert {'pfedrec', 'fedmf', 'fedncf', 'mf', 'fedlightgcn', 'perfedrec++'} <= set(
        algorithm_names())
    assert resolve('pfedrec') is PFedRec
    with pytest.raises(ValueError, match='registered twice'):
        register(type('Impostor', (PFedRec,), {'name': 'pfedrec'}))
    # The same class defined again (a notebook cell run twice) replaces it.
    again = register(type('PFedRec', (PFedRec,), {'name': 'pfedrec',
                                                  '__module__': PFedRec.__module__,
                                                  '__qualname__': PFedRec.__qualname__}))
    assert resolve('pfedrec') is again
    register(PFedRec)
    assert resolve('pfedrec') is PFedRec


def test_an_algorithm_outside_the_package_is_found_by_name(tmp_path, monkeypatch):
    (tmp_path / 'my_algorithms.py').write_text(
        'from fedgraph.algorithms import register\n'
        'from fedgraph.algorithms.fedmf import FedMF\n\n'
        '@register\nclass Mine(FedMF):\n    name = "mine"\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv('FEDGRAPH_ALGORITHMS', 'my_algorithms')
    import fedgraph.algorithms.registry as registry
    monkeypatch.setattr(registry, '_loaded', False)
    try:
        assert TrainConfig(algorithm='mine').settings.lr == 1.0
        assert 'mine' in algorithm_names()
    finally:
        registry._REGISTRY.pop('mine', None)
        sys.modules.pop('my_algorithms', None)


def test_an_installed_plugin_is_found_through_its_entry_point(tmp_path, monkeypatch):
    """A package that declares its algorithm module in the ``fedgraph.algorithms``
    entry-point group (here: installed as a folder on the path with its dist-info)."""
    (tmp_path / 'plugin_algorithms.py').write_text(
        'from fedgraph.algorithms import register\n'
        'from fedgraph.algorithms.fedmf import FedMF\n\n'
        '@register\nclass Plugged(FedMF):\n    name = "plugged"\n')
    info = tmp_path / 'fedgraph_plugin-0.1.dist-info'
    info.mkdir()
    (info / 'METADATA').write_text('Metadata-Version: 2.1\nName: fedgraph-plugin\n'
                                   'Version: 0.1\n')
    (info / 'entry_points.txt').write_text('[fedgraph.algorithms]\n'
                                           'plugged = plugin_algorithms\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    import fedgraph.algorithms.registry as registry
    monkeypatch.setattr(registry, '_loaded', False)
    try:
        assert 'plugged' in algorithm_names()
        assert TrainConfig(algorithm='plugged').algorithm == 'plugged'
    finally:
        registry._REGISTRY.pop('plugged', None)
        sys.modules.pop('plugin_algorithms', None)


# A fresh process: which algorithm modules resolving one name imports.
RESOLVE = """
import sys
from fedgraph.algorithms import resolve
print(resolve(sys.argv[1]).__name__, sorted(name.rsplit('.', 1)[1] for name in sys.modules
                                            if name.startswith('fedgraph.algorithms.')))
"""


@pytest.mark.parametrize('name, resolved, modules', [
    ('pfedrec', 'PFedRec', ['base', 'pfedrec', 'registry']),
    ('perfedrec++', 'PerFedRec', None),  # its module, perfedrec, imports the others it needs
    ('simgcl', 'SimGCL', 'all')])  # defined in lightgcn: found by importing every module
def test_resolving_a_name_imports_the_module_named_after_it_first(name, resolved, modules):
    done = subprocess.run([sys.executable, '-c', RESOLVE, name], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    found, imported = done.stdout.split(' ', 1)
    assert found == resolved
    imported = ast.literal_eval(imported)
    if modules == 'all':
        assert {path.stem for path in (PACKAGE / 'algorithms').glob('*.py')
                if path.stem != '__init__'} <= set(imported)
    elif modules is not None:
        assert imported == modules
    else:
        assert 'perfedrec' in imported and 'popular' not in imported


def test_a_lazy_package_lists_its_names_and_refuses_others():
    import fedgraph.nn

    assert set(fedgraph.nn.__all__) <= set(dir(fedgraph.nn))
    assert fedgraph.nn.FederatedRecommender.__module__ == 'fedgraph.nn.recommender'
    with pytest.raises(AttributeError, match="'fedgraph.nn' has no attribute 'Nothing'"):
        fedgraph.nn.Nothing


def test_no_code_outside_an_algorithms_module_tests_its_name():
    """Comparing with an algorithm's name (``== 'pfedrec'``, ``in ('fedmf', ...)``) is for
    the algorithm's own module only; everything else asks the algorithm."""
    names = '|'.join(re.escape(name) for name in algorithm_names())
    literal = rf"""['"]({names})['"]"""
    comparison = re.compile(rf'(==|!=|\bin\b)\s*[\(\[{{]?[^#\n]*{literal}|{literal}\s*(==|!=)')
    offenders = []
    for path in PACKAGE.rglob('*.py'):
        if path.parent.name == 'algorithms':
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if comparison.search(line):
                offenders.append(f'{path.relative_to(PACKAGE)}:{number}: {line.strip()}')
    assert not offenders, '\n'.join(offenders)
