"""The package's version, and what a run records of the software it ran with."""
from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Dict, Optional

DISTRIBUTION = 'fedgraph-rec'


def package_version() -> str:
    """The installed version of fedgraph-rec (``unknown`` when it is not installed)."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return 'unknown'


def _git_commit() -> Optional[Dict[str, object]]:
    """The commit of the checkout the package is imported from, and whether it has
    uncommitted changes; ``None`` outside a git checkout (or without git)."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=here, capture_output=True,
                                text=True, timeout=10)
        if commit.returncode != 0:
            return None
        status = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'],
                                cwd=here, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return {'commit': commit.stdout.strip(), 'dirty': bool(status.stdout.strip())}


def provenance() -> Dict[str, object]:
    """The versions of fedgraph-rec, PyTorch, PyG and Python, and the git commit of the
    checkout when there is one (``config.json`` records them)."""
    import torch
    import torch_geometric

    return {'fedgraph-rec': package_version(), 'torch': torch.__version__,
            'torch_geometric': torch_geometric.__version__,
            'python': platform.python_version(), 'git': _git_commit()}
