"""The package's shape: its public face, its layers by dependency (no import circle; a
device's model without PyTorch Geometric, numba or Flower) and a process left as it was
found (``import fedgraph`` and ``train()`` change no setting of a notebook's process)."""
import ast
import json
import subprocess
import sys
from pathlib import Path

import fedgraph

PACKAGE = Path(fedgraph.__file__).parent


def _run(code: str) -> dict:
    """The JSON a fresh Python process running ``code`` prints last."""
    done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _module_imports() -> dict:
    """Each module of the package and the package modules it imports anywhere: at module
    level, under ``if TYPE_CHECKING:`` and inside functions (a lazy import is still an
    edge), with the packages above them, whose ``__init__`` runs first."""
    modules = {}
    for path in PACKAGE.rglob('*.py'):
        parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
        modules['.'.join(parts[:-1] if parts[-1] == '__init__' else parts)] = path

    def owner(name: str):
        while name and name not in modules:
            name = name.rpartition('.')[0]
        return name or None

    graph = {}
    for name, path in modules.items():
        package = name if path.name == '__init__.py' else name.rpartition('.')[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(owner(alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ''
                if node.level:
                    up = package.split('.')[:len(package.split('.')) - node.level + 1]
                    base = '.'.join(up + ([base] if base else []))
                for alias in node.names:
                    full = f'{base}.{alias.name}'
                    found.add(owner(full) if full in modules else owner(base))
        # Importing a.b.c runs the packages a and a.b first.
        found |= {parent for module in found if module for parent in _packages(module)}
        graph[name] = found - {None, name, *_packages(name)}
    return graph


def _packages(module: str) -> list:
    """The packages above ``module`` (``a.b.c``: ``a``, ``a.b``)."""
    parts = module.split('.')
    return ['.'.join(parts[:end]) for end in range(1, len(parts))]


def test_the_package_imports_form_no_circle():
    graph = _module_imports()
    assert 'fedgraph.server.loop' in graph and 'fedgraph.federated.engine' in graph
    state = {}
    circles = []

    def walk(module, trail):
        state[module] = 'open'
        for imported in sorted(graph.get(module, ())):
            if state.get(imported) == 'open':
                circles.append(trail[trail.index(imported):] + [imported])
            elif imported not in state:
                walk(imported, trail + [imported])
        state[module] = 'done'

    for module in sorted(graph):
        if module not in state:
            walk(module, [module])
    assert circles == []


def test_the_public_face_names_what_a_notebook_needs():
    expected = {'train', 'TrainConfig', 'Run', 'load_run', 'load_dataset', 'DeviceModel',
                'Algorithm', 'register', 'register_stage', 'Aggregator', '__version__'}
    assert expected <= set(fedgraph.__all__)
    from fedgraph.version import package_version

    assert fedgraph.__version__ == package_version() != 'unknown'
    from fedgraph.training import train

    assert fedgraph.train is train


def test_importing_fedgraph_changes_nothing_of_the_process():
    printed = _run(
        'import json, os, sys\n'
        'before = dict(os.environ)\n'
        'import fedgraph\n'
        'print(json.dumps({"environment": dict(os.environ) == before,\n'
        '                  "loaded": sorted(m for m in ("torch", "numba", "torch_geometric",\n'
        '                                   "flwr") if m in sys.modules)}))\n')
    assert printed == {'environment': True, 'loaded': []}


def test_train_gives_a_notebook_its_threads_and_freed_memory_back():
    """A notebook's thread count survives train(), and a temporary it frees afterwards is
    returned to the system (no allocator setting kept from training)."""
    printed = _run(
        'import json, os, torch\n'
        'torch.set_num_threads(1)\n'
        'import fedgraph\n'
        'from fedgraph.data import synthetic_interactions, leave_one_out_split\n'
        'split = leave_one_out_split(synthetic_interactions(60, 200, 10, seed=0),\n'
        '                           eval_negatives=20, seed=0)\n'
        'fedgraph.train(fedgraph.TrainConfig(rounds=2, dim=8, threads=2), split=split,\n'
        '               progress=False)\n'
        'def resident():\n'
        '    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGESIZE")\n'
        'block = torch.ones(64 * 2**20)\n'
        'held = resident()\n'
        'del block\n'
        'print(json.dumps({"threads": torch.get_num_threads(),\n'
        '                  "returned_mib": (held - resident()) / 2**20}))\n')
    assert printed['threads'] == 1
    assert printed['returned_mib'] > 200  # the 256 MiB block left the process


def test_a_devices_model_needs_neither_pytorch_geometric_numba_nor_flower():
    printed = _run(
        'import json, sys\n'
        'from fedgraph import DeviceModel\n'
        'print(json.dumps(sorted(m for m in ("torch_geometric", "numba", "flwr", "faiss",\n'
        '                                    "torch_scatter") if m in sys.modules)))\n')
    assert printed == []


def test_renamed_names_still_work_for_a_release_and_warn():
    import pytest

    from fedgraph.algorithms.fedmf import FedMF
    from fedgraph.federated.node import Node, NodeHooks

    with pytest.warns(DeprecationWarning, match='fedgraph.federated.node.Node'):
        from fedgraph.federated.device import Device
    assert Device is Node
    with pytest.warns(DeprecationWarning, match='node_hooks'):
        class OldStyle(FedMF):
            name = 'old-style-hooks'

            def device_hooks(self):
                return 'its hooks'
    assert OldStyle.node_hooks is OldStyle.device_hooks
    assert NodeHooks().replies == {}
