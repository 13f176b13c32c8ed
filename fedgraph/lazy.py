"""Packages whose names are imported from their modules on first use (PEP 562)."""
from __future__ import annotations

import importlib
import sys
from typing import Callable, Dict, List, Tuple


def lazy_exports(package: str, module_of: Dict[str, str]
                 ) -> Tuple[Callable[[str], object], Callable[[], List[str]], List[str]]:
    """``__getattr__``, ``__dir__`` and ``__all__`` for ``package`` whose name ``n`` is
    ``package.<module_of[n]>.n``, imported when it is first looked up (``from package
    import n`` included) and kept in the package from then on."""

    def __getattr__(name: str):
        module = module_of.get(name)
        if module is None:
            raise AttributeError(f'module {package!r} has no attribute {name!r}')
        value = getattr(importlib.import_module(f'{package}.{module}'), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> List[str]:
        return sorted({*vars(sys.modules[package]), *module_of})

    return __getattr__, __dir__, list(module_of)
