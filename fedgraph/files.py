"""Writing a run folder's files so that a crash never leaves a half-written one: each file is
written beside its final name, flushed to disk, then renamed over it (an atomic step), so a
reader sees the previous complete version or the new complete one."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Union

import torch


def _atomic(path: Union[str, Path], write: Callable[[Path], None]) -> None:
    path = Path(path)
    partial = path.with_name(f'.{path.name}.partial')
    write(partial)
    with open(partial, 'rb') as handle:
        os.fsync(handle.fileno())
    os.replace(partial, path)


def write_text(path: Union[str, Path], text: str) -> None:
    """Writes ``text`` to ``path`` atomically."""
    _atomic(path, lambda partial: partial.write_text(text))


def save_tensors(path: Union[str, Path], obj: object) -> None:
    """``torch.save(obj, path)`` atomically (``obj``: tensors, numbers, strings, lists and
    dicts only, so that ``torch.load(path, weights_only=True)`` reads it back)."""
    _atomic(path, lambda partial: torch.save(obj, partial))
