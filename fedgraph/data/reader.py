"""Strict readers for delimited interaction files.

Every problem in a file is reported as a :class:`DataFormatError` that names the file, the
1-based line number and what was expected there, so that a user can open the file at the
right place; an error quotes at most a short excerpt of the offending field or line
(:func:`excerpt`). Nothing is skipped silently.

A file with a one-character delimiter (``,``, ``\t``, ``;``, ...) is read as CSV (RFC 4180):
a field in double quotes may hold the delimiter, line breaks and doubled quotes (``""``), and
spaces before the opening quote are ignored. Lines without a quote are split at the
delimiter, which reads them the same way, faster.
"""
from __future__ import annotations

import codecs
import csv
import gc
import math
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from itertools import chain
from operator import itemgetter
from typing import (Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple,
                    Union)

import numpy as np

PathLike = Union[str, os.PathLike]


class DataFormatError(ValueError):
    """A data file does not have the format its loader expects."""

    def __init__(self, path: PathLike, line: Optional[int], message: str):
        self.path = str(path)
        self.line = line
        where = self.path if line is None else f'{self.path}, line {line}'
        super().__init__(f'{where}: {message}')


@dataclass(frozen=True)
class Column:
    """One field to read: its name, its 0-based position on a line and its kind.

    ``kind`` is ``'id'`` (any non-empty token; an integer id when ``integer_ids`` is set),
    ``'float'``, ``'int'`` or ``'time'`` (a timestamp, see :func:`parse_time`).
    """
    name: str
    position: int
    kind: str = 'id'


_KIND_TEXT = {'float': 'a finite number', 'int': 'an integer', 'id': 'an id',
              'time': 'a timestamp (Unix seconds or ISO 8601)'}

#: The most characters of a field or line that an error message quotes.
EXCERPT_CHARS = 60


def excerpt(value: Union[str, Sequence[str]], limit: int = EXCERPT_CHARS) -> str:
    """How an error message quotes a field, a line or a list of names: ``repr(value)`` when
    that is at most ``limit`` characters long, else its first ``limit`` characters, ``...``
    and the length of ``value``."""
    text = repr(value)
    if len(text) <= limit:
        return text
    unit = 'characters' if isinstance(value, str) else 'items'
    return f'{text[:limit]}... ({len(value)} {unit})'


def _parse_float(token: str) -> float:
    """A finite number: ``nan``, ``inf``, ``Infinity`` and numbers too large for a float are
    refused with ``ValueError``."""
    value = float(token)
    if not math.isfinite(value):
        raise ValueError(token)
    return value


_INTEGER = re.compile(r'[+-]?[0-9]+')
#: Integers, one a line: a whole column checked in one pass.
_INTEGER_LINES = re.compile(r'(?:[+-]?[0-9]+\n)*[+-]?[0-9]+')


_INT64 = (-2 ** 63, 2 ** 63 - 1)


class OutOfRange(ValueError):
    """An integer, or a timestamp in seconds, that does not fit in 64 bits."""


def _parse_int(token: str) -> int:
    """An integer written with ASCII digits only (``int`` alone would accept ``1_000``) that
    fits in 64 bits."""
    if not _INTEGER.fullmatch(token):
        raise ValueError(token)
    value = int(token)
    if not _INT64[0] <= value <= _INT64[1]:
        raise OutOfRange(token)
    return value


def _is_int64(token: str) -> bool:
    return bool(_INTEGER.fullmatch(token)) and _INT64[0] <= int(token) <= _INT64[1]


def parse_time(token: str, time_format: Optional[str] = None) -> int:
    """A timestamp as integer Unix seconds (UTC; a time without a zone is taken as UTC).

    ``time_format``: ``None`` accepts Unix seconds (an integer, or a finite number whose
    fraction is dropped) and ISO 8601 (``2024-03-01``, ``2024-03-01T12:30:00Z``,
    ``2024-03-01 12:30:00+01:00``); ``'unix'`` or ``'iso'`` accept only those; anything else
    is a :meth:`datetime.strptime` pattern (``'%d/%m/%Y %H:%M'``).

    Raises:
        OutOfRange: Unix seconds beyond the 64-bit integer range (``1e300``).
        ValueError: ``token`` is not a timestamp (``nan`` and ``inf`` are not).
    """
    if time_format in (None, 'unix'):
        if _INTEGER.fullmatch(token):
            return _parse_int(token)
        try:
            seconds = int(_parse_float(token) // 1)
        except ValueError:
            if time_format == 'unix':
                raise
        else:
            if not _INT64[0] <= seconds <= _INT64[1]:
                raise OutOfRange(token)
            return seconds
    if time_format in (None, 'iso'):
        text = token[:-1] + '+00:00' if token.endswith(('Z', 'z')) else token
        moment = datetime.fromisoformat(text)
    else:
        moment = datetime.strptime(token, time_format)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp() // 1)


def _converter(kind: str, integer_ids, time_format: Optional[str]) -> Callable[[str], object]:
    if kind == 'float':
        return _parse_float
    if kind == 'time':
        return lambda token: parse_time(token, time_format)
    if kind == 'int' or (kind == 'id' and integer_ids is True):
        return _parse_int
    return str


def _decoding(encoding: str) -> str:
    """The codec that reads ``encoding``: a UTF-8 byte-order mark is not part of the text."""
    return 'utf-8-sig' if codecs.lookup(encoding).name == 'utf-8' else encoding


#: The character that opens and closes a quoted field of a CSV file.
QUOTE = '"'


def _is_csv(delimiter: Optional[str]) -> bool:
    """Whether a file with ``delimiter`` is read as CSV, with quoted fields."""
    return delimiter is not None and len(delimiter) == 1 and delimiter not in QUOTE + '\r\n'


def _csv_reader(lines: Iterable[str], delimiter: str):
    """A strict RFC 4180 reader of ``lines`` (with their line breaks). Spaces before an
    opening quote are skipped, unless the delimiter is a space; a field that is not in quotes
    then reads as ``str.split`` reads it, up to surrounding whitespace."""
    return csv.reader(lines, delimiter=delimiter, quotechar=QUOTE, doublequote=True,
                      skipinitialspace=delimiter != ' ', strict=True)


def _blank(fields: List[str]) -> bool:
    """Whether a record read as CSV holds nothing: a blank line, or a blank quoted field."""
    return not fields or (len(fields) == 1 and not fields[0].strip())


def _numbered_lines(path: PathLike, encoding: str) -> Iterator[Tuple[int, str]]:
    """The numbered lines of ``path`` with their line breaks; a UTF-8 byte-order mark is not
    part of the first."""
    if os.path.isdir(path):
        raise DataFormatError(path, None, 'is a directory; expected a file')
    with open(path, encoding=_decoding(encoding), errors='strict', newline='') as handle:
        try:
            yield from enumerate(handle, start=1)
        except UnicodeDecodeError as error:
            raise DataFormatError(path, None, f'is not valid {encoding} text ({error})') from None


def _lines(path: PathLike, encoding: str) -> Iterator[Tuple[int, str]]:
    """The numbered lines of ``path`` without their line breaks."""
    for number, line in _numbered_lines(path, encoding):
        yield number, line.rstrip('\r\n')


def _taking(first: str, rest: Iterator[Tuple[int, str]], taken: List[str]) -> Iterator[str]:
    """``first``, then the lines of ``rest`` as they are asked for, each also added to
    ``taken``."""
    yield first
    for _, line in rest:
        taken.append(line)
        yield line


def _records(path: PathLike, delimiter: Optional[str],
             encoding: str) -> Iterator[Tuple[int, str, List[str]]]:
    """The non-blank records of ``path``: the line each starts on, its text (for error
    messages) and its fields, not yet stripped. A line that holds a quote in a CSV file
    (:func:`_is_csv`) is read by :func:`_csv_reader`, with as many more lines as its quoted
    fields span; any other line is split at ``delimiter``."""
    lines = _numbered_lines(path, encoding)
    quoting = _is_csv(delimiter)
    for number, line in lines:
        if quoting and QUOTE in line:
            taken = [line]
            try:
                fields = next(_csv_reader(_taking(line, lines, taken), delimiter))
            except csv.Error as error:
                text = ''.join(taken).rstrip('\r\n')
                raise DataFormatError(
                    path, number, f'bad quoting ({error}): {excerpt(text)}; a quoted field '
                    f'closes with a quote before the delimiter or the line end, and doubles '
                    f'the quotes inside it') from None
            if not _blank(fields):
                yield number, ''.join(taken).rstrip('\r\n'), fields
        elif line.strip():
            text = line.rstrip('\r\n')
            yield number, text, text.split(delimiter)


def read_delimited(
    path: PathLike,
    columns: Sequence[Column],
    delimiter: Optional[str] = ',',
    *,
    header: bool = False,
    integer_ids: Union[bool, str] = True,
    encoding: str = 'utf-8',
    description: Optional[str] = None,
    time_format: Optional[str] = None,
) -> Dict[str, np.ndarray]:
    """Reads ``columns`` from a delimited text file into NumPy arrays.

    Args:
        path: the file.
        columns: the fields to keep.
        delimiter: the field separator; one character reads the file as CSV, with quoted
            fields (a record then starts on a line and may span several, and a quoted field
            holds at most :func:`csv.field_size_limit` characters); a longer one splits each
            line at it; ``None`` splits on runs of whitespace.
        header: whether the first non-blank record is a header to skip.
        integer_ids: parse ``'id'`` columns as integers (MovieLens) rather than strings;
            ``'auto'``: integers when every id of a column is one, strings otherwise.
        encoding: the text encoding.
        description: the expected line layout, quoted in error messages
            (default: the column names joined by the delimiter).
        time_format: how ``'time'`` columns are written (see :func:`parse_time`).

    Returns:
        ``{column.name: array}``; ids are ``int64`` or ``object`` (strings), numbers
        ``float64``/``int64``. Blank lines are ignored; whitespace around a field is not
        part of it.

    Raises:
        DataFormatError: the file is empty, its quoting is malformed, a record has too few
            fields, or a field does not parse as its column's kind (a rating that is not a
            finite number, a timestamp beyond the 64-bit range of Unix seconds, ...). The
            line is the one the record starts on.
        FileNotFoundError: the file does not exist.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f'{path}: no such file')
    if not os.path.isdir(path):
        read = _read_columns(path, columns, delimiter, header, integer_ids, encoding,
                             time_format)
        if read is not None:
            return read
    sep_text = 'whitespace' if delimiter is None else repr(delimiter)
    layout = description or (' ' if delimiter is None else delimiter).join(c.name for c in columns)
    needed = max(c.position for c in columns) + 1
    converters = [_converter(c.kind, integer_ids, time_format) for c in columns]
    values: List[list] = [[] for _ in columns]

    header_pending = header
    for number, text, fields in _records(path, delimiter, encoding):
        if header_pending:
            header_pending = False
            continue
        if len(fields) < needed:
            raise DataFormatError(
                path, number,
                f'expected {needed} fields separated by {sep_text} ({layout}), '
                f'found {len(fields)}: {excerpt(text)}')
        for column, convert, out in zip(columns, converters, values):
            token = fields[column.position].strip()
            if not token:
                raise DataFormatError(path, number,
                                      f'field {column.name!r} is empty: {excerpt(text)}')
            try:
                out.append(convert(token))
            except OutOfRange:
                range_text = ('a timestamp beyond the 64-bit range of Unix seconds'
                              if column.kind == 'time' else 'out of the 64-bit integer range')
                raise DataFormatError(
                    path, number, f'field {column.name!r} (field {column.position + 1}) is '
                    f'{range_text}: {excerpt(token)}') from None
            except ValueError:
                kind = 'an integer id' if column.kind == 'id' else _KIND_TEXT[column.kind]
                raise DataFormatError(
                    path, number,
                    f'field {column.name!r} (field {column.position + 1}) must be {kind}, '
                    f'got {excerpt(token)}') from None

    if not values[0]:
        raise DataFormatError(path, None, f'file is empty; expected lines of the form {layout!r}')
    return {c.name: _to_array(v, c.kind, integer_ids) for c, v in zip(columns, values)}


#: Characters of text that :func:`_read_columns` splits and converts at a time.
BLOCK_CHARS = 1 << 24


def _read_columns(path: PathLike, columns: Sequence[Column], delimiter: Optional[str],
                  header: bool, integer_ids: Union[bool, str], encoding: str,
                  time_format: Optional[str]) -> Optional[Dict[str, np.ndarray]]:
    """What :func:`read_delimited` returns, read in blocks of lines, each column of a block
    split, checked and converted in passes that run in C; or ``None`` when any line needs
    the line-by-line reader, which then finds the first problem and names its line. Only
    columns whose check needs no Python per token take this path: finite numbers, integer
    ids, Unix seconds written as integers, and string ids."""
    parts: Dict[str, List[np.ndarray]] = {column.name: [] for column in columns}
    needed = max(column.position for column in columns) + 1
    quoting = _is_csv(delimiter)
    header_pending = header
    try:
        with open(path, encoding=_decoding(encoding), errors='strict', newline='') as handle, \
                _without_cycle_collection():
            for block in iter(lambda: handle.readlines(BLOCK_CHARS), []):
                if quoting and QUOTE in ''.join(block):
                    rows = _quoted_rows(block, handle, delimiter)
                else:
                    rows = [line.rstrip('\r\n').split(delimiter) for line in block
                            if line.strip()]
                if header_pending and rows:
                    rows, header_pending = rows[1:], False
                if not rows:
                    continue
                if min(map(len, rows)) < needed:
                    return None
                for column in columns:
                    tokens = list(map(str.strip, map(itemgetter(column.position), rows)))
                    values = _column_block(tokens, column.kind, integer_ids, time_format)
                    if values is None:
                        return None
                    parts[column.name].append(values)
    except (UnicodeDecodeError, ValueError, OverflowError, csv.Error):
        return None
    if not parts[columns[0].name]:
        return None
    if any(len({block.dtype for block in blocks}) > 1 for blocks in parts.values()):
        return None  # an 'auto' column of integers in one block and strings in another
    return {name: np.concatenate(blocks) for name, blocks in parts.items()}


def _quoted_rows(block: List[str], handle: Iterator[str], delimiter: str) -> List[List[str]]:
    """The fields of the non-blank records that start in ``block``, a block of lines of a
    CSV file read by :func:`_csv_reader`; a record whose quoted field runs past the block's
    last line is completed from the lines that follow in ``handle``."""
    reader = _csv_reader(chain(block, handle), delimiter)
    rows = []
    while reader.line_num < len(block):
        fields = next(reader)
        if not _blank(fields):
            rows.append(fields)
    return rows


@contextmanager
def _without_cycle_collection():
    """Pauses Python's cycle collector, which would otherwise walk every live object
    again and again while millions of strings are made (none of them in a cycle): it
    tripled the time to read MovieLens-100K in a process that had imported PyTorch."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _column_block(tokens: List[str], kind: str, integer_ids: Union[bool, str],
                  time_format: Optional[str]) -> Optional[np.ndarray]:
    """One block of one column as :func:`read_delimited` returns it, or ``None`` when a
    token needs the line-by-line reader. Raises ``ValueError`` or ``OverflowError`` for a
    number that does not convert."""
    if not all(tokens):
        return None
    integers = (kind == 'int' or (kind == 'id' and integer_ids is True)
                or (kind == 'time' and time_format in (None, 'unix')))
    if integers or (kind == 'id' and integer_ids == 'auto'):
        if _INTEGER_LINES.fullmatch('\n'.join(tokens)):
            return np.asarray(list(map(int, tokens)), dtype=np.int64)
        return None if integers else np.asarray(tokens, dtype=object)
    if kind == 'float':
        values = np.asarray(list(map(float, tokens)), dtype=np.float64)
        return values if np.isfinite(values).all() else None
    return np.asarray(tokens, dtype=object) if kind == 'id' else None


def _to_array(values: list, kind: str, integer_ids: Union[bool, str]) -> np.ndarray:
    if kind == 'float':
        return np.asarray(values, dtype=np.float64)
    if kind in ('int', 'time') or integer_ids is True:
        return np.asarray(values, dtype=np.int64)
    if integer_ids == 'auto' and all(_is_int64(value) for value in values):
        return np.asarray([int(value) for value in values], dtype=np.int64)
    return np.asarray(values, dtype=object)


def read_header(path: PathLike, delimiter: Optional[str], encoding: str = 'utf-8') -> List[str]:
    """Returns the stripped field names of the first non-blank record of ``path``, read as
    :func:`read_delimited` reads it (quoted names in a CSV file)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f'{path}: no such file')
    for _, _, fields in _records(path, delimiter, encoding):
        return [name.strip() for name in fields]
    raise DataFormatError(path, None, 'file is empty; expected a header line')


def read_adjacency_lists(path: PathLike, encoding: str = 'utf-8') -> Tuple[np.ndarray, np.ndarray]:
    """Reads LightGCN-style ``user item item ...`` lines (whitespace-separated integers).

    A user with no item on its line contributes no interaction.

    Returns:
        ``(user, item)`` arrays of equal length, one entry per interaction.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f'{path}: no such file')
    users: List[int] = []
    items: List[int] = []
    seen_line = False
    for number, line in _lines(path, encoding):
        fields = line.split()
        if not fields:
            continue
        seen_line = True
        bad = [token for token in fields if not _is_int64(token)]
        if bad:
            raise DataFormatError(
                path, number, f'expected 64-bit integer ids "user item item ...", got '
                f'{excerpt(bad[0])}')
        parsed = [int(token) for token in fields]
        users.extend([parsed[0]] * (len(parsed) - 1))
        items.extend(parsed[1:])
    if not seen_line:
        raise DataFormatError(path, None, 'file is empty; expected lines "user item item ..."')
    return np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64)
