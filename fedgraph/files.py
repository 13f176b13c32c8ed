"""Writing a run folder's files so that a crash never leaves a half-written one: each file is
written beside its final name, flushed to disk, then renamed over it (an atomic step), so a
reader sees the previous complete version or the new complete one. A run holds its folder's
lock while it writes (:func:`folder_lock`), so two runs never write one folder."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Callable, Iterator, Union

try:
    import fcntl
except ImportError:  # Windows: no advisory locks
    fcntl = None

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


LOCK = '.lock'


@contextlib.contextmanager
def folder_lock(folder: Union[str, Path]) -> Iterator[None]:
    """Holds an exclusive lock on ``folder`` (an advisory ``flock`` on ``folder/.lock``, which
    the system releases when the process ends, however it ends); another process that asks
    for it meanwhile gets a :class:`FileExistsError` naming the holder. Without ``fcntl``
    (Windows) nothing is locked."""
    path = Path(folder) / LOCK
    with open(path, 'a+') as handle:
        if fcntl is not None:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or 'another process'
                raise FileExistsError(f'{folder} is being written by {holder}; wait for it '
                                      f'to finish or choose another --out') from None
        handle.seek(0)
        handle.truncate()
        handle.write(f'process {os.getpid()}\n')
        handle.flush()
        try:
            yield
        finally:
            handle.truncate(0)
