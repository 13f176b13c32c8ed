"""The algorithms by name: ``resolve('pfedrec')`` is the
:class:`~fedgraph.algorithms.base.Algorithm` class registered under that name (in the spirit
of PyG's resolvers).

An algorithm registers itself with :func:`register` in its own module; every module of
``fedgraph.algorithms`` is imported on the first look-up (a new algorithm is a new file, and
nothing else), and so are the modules installed packages declare in the entry-point group
``fedgraph.algorithms`` (a plugin's ``pyproject.toml``: ``[project.entry-points.
"fedgraph.algorithms"] mine = "my_package.my_algorithm"``) and those a user names in
``FEDGRAPH_ALGORITHMS`` (``module`` or ``module:another``): an algorithm written outside the
package becomes available to the CLI and the Flower apps by its name alone. :func:`resolve` looks in the module named after the
algorithm first (``perfedrec++``: ``fedgraph.algorithms.perfedrec``), so that resolving
PFedRec does not import the graph algorithms and PyTorch Geometric with them.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
from importlib import metadata
from pathlib import Path
import pkgutil
import re
from typing import Dict, List, Type, TypeVar

_REGISTRY: Dict[str, type] = {}
_loaded = False

#: The entry-point group of plugin packages' algorithm modules.
ENTRY_POINTS = 'fedgraph.algorithms'

A = TypeVar('A', bound=type)


def register(cls: A) -> A:
    """Class decorator: makes ``cls`` (an :class:`~fedgraph.algorithms.base.Algorithm`)
    available under ``cls.name``. Another class under a taken name is an error; the same
    class defined again (a notebook cell run twice) replaces it."""
    if not cls.name:
        raise ValueError(f'{cls.__name__} has no name')
    known = _REGISTRY.get(cls.name)
    redefined = known is not None and (known.__module__, known.__qualname__) == (
        cls.__module__, cls.__qualname__)  # e.g. a notebook cell run again
    if known is not None and known is not cls and not redefined:
        raise ValueError(f'algorithm {cls.name!r} is registered twice: {known.__module__}.'
                         f'{known.__qualname__} and {cls.__module__}.{cls.__qualname__}')
    _REGISTRY[cls.name] = cls
    return cls


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in pkgutil.iter_modules([str(Path(__file__).parent)]):
        importlib.import_module(f'{__package__}.{module.name}')
    for entry_point in metadata.entry_points(group=ENTRY_POINTS):
        entry_point.load()
    for module in filter(None, os.environ.get('FEDGRAPH_ALGORITHMS', '').split(':')):
        importlib.import_module(module)


def _load_module_named_after(name: str) -> None:
    """Imports ``fedgraph.algorithms.M`` (``M``: ``name``'s letters, digits and
    underscores) if the package has such a module."""
    module = f'{__package__}.{re.sub(r"[^0-9A-Za-z_]", "", name)}'
    if module != f'{__package__}.' and importlib.util.find_spec(module) is not None:
        importlib.import_module(module)


def algorithm_names() -> List[str]:
    """The registered names: the package's (by module name), then the plugins' (entry
    points), then those of ``FEDGRAPH_ALGORITHMS``."""
    _load()
    return list(_REGISTRY)


def resolve(name: str) -> Type:
    """The algorithm class registered as ``name``."""
    if name not in _REGISTRY:
        _load_module_named_after(name)
    if name not in _REGISTRY:
        _load()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f'unknown algorithm {name!r}; choose one of '
                         f'{", ".join(_REGISTRY)}') from None
