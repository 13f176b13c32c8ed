"""A run folder's files. Writing: a crash never leaves a half-written one: each file is
written beside its final name, flushed to disk, then renamed over it (an atomic step), so a
reader sees the previous complete version or the new complete one. A run holds its folder's
lock while it writes (:func:`folder_lock`), so two runs never write one folder. Reading: a
file that is missing, cut short, altered or written by something else fails with one
sentence naming it (:class:`DamagedFileError`), never with the parser's error alone."""
from __future__ import annotations

import contextlib
import json
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Sequence, Union

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


class DamagedFileError(ValueError):
    """A file that cannot be read back as what fedgraph wrote there: cut short, altered,
    written by something else, or (a checkpoint) of a run configured otherwise. A
    ``ValueError``: the command line reports it as a misuse, its message naming the file."""


def run_file(folder: Union[str, Path], name: str) -> Path:
    """``folder/name``, a file of the run folder ``folder``.

    Raises:
        FileNotFoundError: there is no such file (``FOLDER is not a run folder: no NAME``).
    """
    path = Path(folder) / name
    if not path.is_file():
        held = 'no such folder' if not Path(folder).is_dir() else f'no {name}'
        raise FileNotFoundError(f'{folder} is not a run folder: {held}')
    return path


@contextlib.contextmanager
def reading(path: Union[str, Path], what: str) -> Iterator[None]:
    """Inside, any error but an :class:`OSError` (reading ``path``, or taking its content
    apart) becomes a :class:`DamagedFileError`: ``not WHAT (or damaged): PATH``, e.g. ``not a
    fedgraph checkpoint (or damaged): run/checkpoint.pt``; the error is its ``__cause__``."""
    try:
        yield
    except (OSError, DamagedFileError):
        raise
    except Exception as error:
        raise DamagedFileError(f'not {what} (or damaged): {path}') from error


def load_tensors(path: Union[str, Path], map_location=None, what: str = 'a fedgraph checkpoint',
                 keys: Sequence[str] = ()) -> Dict[str, Any]:
    """The ``dict`` :func:`save_tensors` wrote to ``path``, read with ``torch.load(path,
    map_location, weights_only=True)`` (opening it runs no code; ``map_location`` must name a
    device this machine has). PyTorch's warnings about the file's pickle are left out.

    Args:
        what: what the file is, for the error message.
        keys: the entries it must hold.

    Raises:
        FileNotFoundError: there is no ``path``.
        DamagedFileError: it is not such a ``dict`` (``not WHAT (or damaged): PATH``):
            cut short, altered, holding what ``weights_only`` refuses, another type, or
            without one of ``keys``.
    """
    with reading(path, what), warnings.catch_warnings():
        warnings.simplefilter('ignore')
        state = torch.load(path, map_location=map_location, weights_only=True)
        if not isinstance(state, dict):
            raise TypeError(f'holds a {type(state).__name__}, not a dict')
        missing = [key for key in keys if key not in state]
        if missing:
            raise KeyError(f'holds no {", ".join(missing)}')
    return state


def _short_reason(error: Exception) -> str:
    """The first line of what ``error`` says (PyTorch's header line of a ``load_state_dict``
    error left out), with how many more lines it has."""
    if isinstance(error, KeyError) and error.args:
        return f'missing {error.args[0]!r}'
    lines = [line.strip() for line in str(error).splitlines()
             if line.strip() and not line.startswith('Error(s) in loading state_dict')]
    if not lines:
        return type(error).__name__
    return lines[0] + (f' (and {len(lines) - 1} more)' if len(lines) > 1 else '')


@contextlib.contextmanager
def matching_config(path: Union[str, Path]) -> Iterator[None]:
    """Inside, loading state read from ``path`` into what its run's ``config.json`` built:
    a ``KeyError`` (a missing entry), ``RuntimeError`` (PyTorch's missing or unexpected keys,
    a shape that differs), ``ValueError``, ``TypeError``, ``IndexError`` or
    ``AttributeError`` becomes a :class:`DamagedFileError`: ``PATH does not match its run's
    configuration (config.json): REASON`` (the first line of the error)."""
    try:
        yield
    except DamagedFileError:
        raise
    except (KeyError, RuntimeError, ValueError, TypeError, IndexError, AttributeError) as error:
        raise DamagedFileError(f"{path} does not match its run's configuration (config.json): "
                               f'{_short_reason(error)}') from error


@contextlib.contextmanager
def json_errors(where: Union[str, Path]) -> Iterator[None]:
    """Inside, a ``UnicodeDecodeError`` or ``JSONDecodeError`` (reading the text at ``where``,
    a file or a file's line, as JSON) becomes a :class:`DamagedFileError`: ``WHERE is not
    valid JSON (or damaged): REASON``."""
    try:
        yield
    except UnicodeDecodeError as error:
        raise DamagedFileError(
            f'{where} is not valid JSON (or damaged): not UTF-8 text (byte '
            f'{error.object[error.start]:#04x} at position {error.start})') from error
    except json.JSONDecodeError as error:
        raise DamagedFileError(f'{where} is not valid JSON (or damaged): {error.msg} at line '
                               f'{error.lineno} column {error.colno}') from error


def read_json(path: Union[str, Path]) -> Any:
    """The JSON content of the UTF-8 file ``path``.

    Raises:
        FileNotFoundError: there is no ``path``.
        DamagedFileError: it is not UTF-8 JSON (``PATH is not valid JSON (or damaged): ...``).
    """
    with json_errors(path):
        return json.loads(Path(path).read_text(encoding='utf-8'))


def read_json_lines(path: Union[str, Path]) -> List[Any]:
    """The JSON value of every line of the UTF-8 JSON-lines file ``path`` that is not blank.

    Raises:
        FileNotFoundError: there is no ``path``.
        DamagedFileError: a line is not UTF-8 JSON (``PATH line N is not valid JSON (or
            damaged): ...``).
    """
    rows = []
    for number, line in enumerate(Path(path).read_bytes().splitlines(), 1):
        if line.strip():
            with json_errors(f'{path} line {number}'):
                rows.append(json.loads(line.decode('utf-8')))
    return rows


def load_metrics(folder: Union[str, Path]) -> Dict[str, Any]:
    """The run folder ``folder``'s ``metrics.json`` (:func:`run_file`, :func:`read_json`):
    an object with a list of ``rounds`` and a ``best`` round, or a
    :class:`DamagedFileError` that says so."""
    path = run_file(folder, 'metrics.json')
    metrics = read_json(path)
    if (not isinstance(metrics, dict) or not isinstance(metrics.get('rounds'), list)
            or 'best' not in metrics):
        raise DamagedFileError(f'{path} is not a run\'s metrics (or damaged): expected an '
                               f'object with rounds and best')
    return metrics


LOCK = '.lock'


@contextlib.contextmanager
def folder_lock(folder: Union[str, Path]) -> Iterator[None]:
    """Holds an exclusive lock on ``folder`` (an advisory ``flock`` on ``folder/.lock``, which
    the system releases when the process ends, however it ends); another process that asks
    for it meanwhile gets a :class:`FileExistsError` naming the holder. Without ``fcntl``
    (Windows) nothing is locked.

    Raises:
        PermissionError: ``folder`` is not writable (``cannot lock FOLDER for writing:
            permission denied``).
    """
    path = Path(folder) / LOCK
    try:
        handle = open(path, 'a+')
    except PermissionError as error:
        raise PermissionError(f'cannot lock {folder} for writing: permission denied') from error
    with handle:
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
