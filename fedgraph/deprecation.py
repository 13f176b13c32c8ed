"""Names kept for one release after a rename: using one works as before and warns
(``DeprecationWarning``) with the new name."""
from __future__ import annotations

import importlib
import warnings
from typing import Callable, Mapping, Tuple


def warn_renamed(old: str, new: str) -> None:
    """Warns that ``old`` is now ``new`` (at the caller's caller)."""
    warnings.warn(f'{old} is deprecated and goes in the next release: use {new}',
                  DeprecationWarning, stacklevel=3)


def renamed_attributes(module: str, renamed: Mapping[str, Tuple[str, str]]
                       ) -> Callable[[str], object]:
    """A module ``__getattr__`` for ``module`` whose old name ``n`` is now
    ``renamed[n] = (new module, new name)``: looking it up warns and returns the new one."""

    def __getattr__(name: str):
        if name not in renamed:
            raise AttributeError(f'module {module!r} has no attribute {name!r}')
        where, new = renamed[name]
        warn_renamed(f'{module}.{name}', f'{where}.{new}')
        return getattr(importlib.import_module(where), new)

    return __getattr__
