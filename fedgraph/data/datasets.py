"""``load_dataset``: one entry point for every data set fedgraph knows.

Named data sets (``'ml-100k'``, ``'ml-1m'``, ``'lastfm-2k'``) live under a data root (see
:func:`~fedgraph.data.download.default_root`) and are downloaded there when missing.
File-based formats take a ``path``. See ``datasets/README.md`` for sources and licences.
"""
from __future__ import annotations

import functools
import http.client
import inspect
import logging
import urllib.error
import zipfile
from pathlib import Path
from typing import Callable, Dict, Optional, Union

from torch_geometric.data import HeteroData

from fedgraph.data import formats
from fedgraph.data.download import (content_digest, default_root, download_and_extract,
                                    fetch_wheel_member)
from fedgraph.data.reader import Column, read_delimited
from fedgraph.data.synthetic import synthetic_interactions

log = logging.getLogger(__name__)

GROUPLENS = 'https://files.grouplens.org/datasets'
ML100K_URL = f'{GROUPLENS}/movielens/ml-100k.zip'
ML1M_URL = f'{GROUPLENS}/movielens/ml-1m.zip'
LASTFM2K_URL = f'{GROUPLENS}/hetrec2011/hetrec2011-lastfm-2k.zip'
#: :func:`content_digest` of the (user, item, rating, timestamp) columns of ``u.data``.
ML100K_DIGEST = 'f87fc0c7375bd73968688c631177b12bbdfd2fad858ac6f56dc32d9ce3f278c8'
#: The wheel that carries a copy of MovieLens-100K, used when GroupLens cannot be reached.
ML100K_WHEEL = ('recbole==1.2.1', 'recbole/dataset_example/ml-100k/ml-100k.inter')

_COLUMNS = [Column('user', 0), Column('item', 1), Column('rating', 2, 'int'),
            Column('time', 3, 'int')]


def _u_data_digest(path: Path, delimiter: str, header: bool) -> str:
    columns = read_delimited(path, _COLUMNS, delimiter, header=header)
    return content_digest(*columns.values())


def _ensure_ml100k(root: Path) -> Path:
    """``root/ml-100k/u.data``, downloaded from GroupLens or, offline, rebuilt from the
    RecBole wheel's copy; either way checked against :data:`ML100K_DIGEST`."""
    folder = root / 'ml-100k'
    target = folder / 'u.data'
    if target.exists():
        return target
    try:
        download_and_extract(ML100K_URL, {'ml-100k/u.data': 'u.data'}, folder)
        if _u_data_digest(target, '\t', header=False) != ML100K_DIGEST:
            raise ValueError(f'{ML100K_URL}: u.data does not match its checksum')
        return target
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, http.client.HTTPException) \
            as error:  # URLError is an OSError, DataFormatError a ValueError
        target.unlink(missing_ok=True)
        log.warning('could not download %s (%s); trying the copy in the %s wheel',
                    ML100K_URL, error, ML100K_WHEEL[0])
    inter = fetch_wheel_member(*ML100K_WHEEL, folder / 'ml-100k.inter')
    if inter is None:
        raise FileNotFoundError(
            f'MovieLens-100K is not in {folder} and could not be downloaded from {ML100K_URL} '
            f'or the package index. Download ml-100k.zip yourself and put its u.data at {target}.')
    if _u_data_digest(inter, '\t', header=True) != ML100K_DIGEST:
        raise ValueError(f'{inter}: the wheel copy of MovieLens-100K does not match its checksum')
    lines = inter.read_text().splitlines()[1:]
    target.write_text(''.join(line + '\n' for line in lines if line.strip()))
    inter.unlink()
    return target


def _ensure(root: Path, folder: str, url: str, members: Dict[str, str]) -> Path:
    """``root/folder/<file>``, downloaded from ``url`` when missing."""
    target = root / folder / next(iter(members.values()))
    if target.exists():
        return target
    try:
        download_and_extract(url, members, root / folder)
    except (urllib.error.URLError, OSError) as error:
        raise FileNotFoundError(
            f'{target} does not exist and {url} could not be downloaded ({error}). '
            f'Download the zip yourself and put its {next(iter(members))} at {target}.'
        ) from None
    return target


def _movielens_100k(root: Path) -> HeteroData:
    return formats.read_movielens_100k(_ensure_ml100k(root))


def _movielens_1m(root: Path) -> HeteroData:
    return formats.read_movielens_1m(
        _ensure(root, 'ml-1m', ML1M_URL, {'ml-1m/ratings.dat': 'ratings.dat'}))


def _lastfm_2k(root: Path) -> HeteroData:
    return formats.read_lastfm_2k(
        _ensure(root, 'lastfm-2k', LASTFM2K_URL, {'user_artists.dat': 'user_artists.dat'}))


_NAMED: Dict[str, Callable[[Path], HeteroData]] = {
    'ml-100k': _movielens_100k,
    'ml-1m': _movielens_1m,
    'lastfm-2k': _lastfm_2k,
}

_FILE_FORMATS: Dict[str, Callable[..., HeteroData]] = {
    'movielens-100k-file': formats.read_movielens_100k,
    'movielens-1m-file': formats.read_movielens_1m,
    'lastfm-2k-file': formats.read_lastfm_2k,
    'amazon': formats.read_amazon_csv,
    'pfedrec': formats.read_pfedrec_ratings,
    'lightgcn': formats.read_lightgcn,
    'csv': formats.read_csv,
    'tsv': functools.partial(formats.read_csv, delimiter='\t'),
}

#: The file formats (``load_dataset(name, path=...)``).
FILE_FORMATS = tuple(_FILE_FORMATS)


def file_format_takes(name: str, option: str) -> bool:
    """Whether the reader of file format ``name`` takes the keyword ``option``."""
    return option in inspect.signature(_FILE_FORMATS[name]).parameters
DATASETS = tuple(_NAMED) + FILE_FORMATS + ('synthetic',)


def load_dataset(name: str, root: Optional[Union[str, Path]] = None,
                 **options: object) -> HeteroData:
    """Loads a data set as a user-item :class:`~torch_geometric.data.HeteroData`.

    Args:
        name: a named data set (``'ml-100k'``, ``'ml-1m'``, ``'lastfm-2k'``), a file format
            (``'amazon'``, ``'pfedrec'``, ``'lightgcn'``, ``'csv'``, ``'tsv'``,
            ``'movielens-100k-file'``, ``'movielens-1m-file'``, ``'lastfm-2k-file'``) or
            ``'synthetic'``.
        root: the data root for named data sets (default: :func:`default_root`).
        **options: ``path=`` for file formats (a folder for ``'lightgcn'``), the column
            mapping for ``'csv'`` (see :func:`~fedgraph.data.formats.read_csv`), the
            generator's arguments for ``'synthetic'``.

    Examples:
        >>> data = load_dataset('ml-100k')
        >>> data = load_dataset('csv', path='ratings.tsv', delimiter='\\t', user='uid',
        ...                     item='movie', rating='stars', time='ts')
        >>> data = load_dataset('synthetic', num_users=100_000, num_items=20_000, seed=0)
    """
    if name in _NAMED:
        if options:
            raise TypeError(f'{name!r} takes no options besides root, got {sorted(options)}')
        return _NAMED[name](Path(root) if root is not None else default_root())
    if name in _FILE_FORMATS:
        if 'path' not in options:
            raise TypeError(f'{name!r} is a file format: pass path=...')
        path = options.pop('path')
        return _FILE_FORMATS[name](path, **options)
    if name == 'synthetic':
        return synthetic_interactions(**options)
    raise ValueError(f'unknown data set {name!r}; choose one of {", ".join(DATASETS)}')
