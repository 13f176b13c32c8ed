"""``load_dataset``: one entry point for every data set fedgraph knows.

Named data sets (``'ml-100k'``, ``'ml-1m'``, ``'lastfm-2k'``) live under a data root (see
:func:`~fedgraph.data.download.default_root`) and are downloaded there when missing.
File-based formats take a ``path``. Any of them keeps only the interactions rated at least
``min_rating`` when given one. See ``datasets/README.md`` for sources and licences.
"""
from __future__ import annotations

import functools
import http.client
import inspect
import logging
import urllib.error
import zipfile
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple, Union

from torch_geometric.data import HeteroData

from fedgraph.data import formats
from fedgraph.data.download import (content_digest, default_root, download_and_extract,
                                    fetch_wheel_member)
from fedgraph.data.hetero import RATES, with_edges
from fedgraph.data.reader import Column, PathLike, read_delimited
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

#: The named data sets (``load_dataset(name, root=...)``).
NAMED_DATASETS = tuple(_NAMED)
#: The file formats (``load_dataset(name, path)``).
FILE_FORMATS = tuple(_FILE_FORMATS)
DATASETS = NAMED_DATASETS + FILE_FORMATS + ('synthetic',)


def dataset_options(name: str) -> Tuple[str, ...]:
    """The keywords of ``load_dataset(name, ...)`` besides ``path``, ``root`` and
    ``min_rating``: those of the file format's reader after the file (``'csv'``: the columns,
    the delimiter, ``time_format``, ...), the generator's for ``'synthetic'``, none for a
    named data set."""
    if name in _NAMED:
        return ()
    if name in _FILE_FORMATS:
        return tuple(inspect.signature(_FILE_FORMATS[name]).parameters)[1:]
    if name == 'synthetic':
        return tuple(inspect.signature(synthetic_interactions).parameters)
    raise ValueError(f'unknown data set {name!r}; choose one of {", ".join(DATASETS)}')


def load_dataset(name: str, path: Optional[PathLike] = None, *,
                 root: Optional[Union[str, Path]] = None, min_rating: Optional[float] = None,
                 **options: object) -> HeteroData:
    """Loads a data set as a user-item :class:`~torch_geometric.data.HeteroData`.

    Every flag of ``fedgraph train`` that chooses the interactions is a keyword here:
    ``--dataset`` is ``name``, ``--data-path`` ``path``, ``--data-root`` ``root``,
    ``--min-rating`` ``min_rating``, ``--user-col`` / ``--item-col`` / ``--rating-col`` /
    ``--time-col`` are ``user`` / ``item`` / ``rating`` / ``time`` (a header name, or a
    0-based position as an ``int``) and ``--time-format`` is ``time_format``; the data
    section's other flags split the interactions (:mod:`fedgraph.data.split`) or record
    them (``--data-digest``). A keyword that ``name`` does not take is a ``TypeError`` that
    names it (:func:`dataset_options` lists what each one takes).

    Args:
        name: a named data set (``'ml-100k'``, ``'ml-1m'``, ``'lastfm-2k'``), a file format
            (``'amazon'``, ``'pfedrec'``, ``'lightgcn'``, ``'csv'``, ``'tsv'``,
            ``'movielens-100k-file'``, ``'movielens-1m-file'``, ``'lastfm-2k-file'``) or
            ``'synthetic'``.
        path: the file of a file format (a folder for ``'lightgcn'``).
        root: the data root of the named data sets (default: :func:`default_root`).
        min_rating: keep only the interactions rated at least this; how many are kept of
            how many is logged (``INFO``). An error for data without ratings, or when no
            interaction is rated that high.
        **options: the file format's (``'csv'``: the columns, ``delimiter``, ``header``,
            ``integer_ids``, ``time_format``, see :func:`~fedgraph.data.formats.read_csv`;
            ``'pfedrec'`` and ``'amazon'``: ``time_format``) or the generator's arguments
            for ``'synthetic'`` (:func:`~fedgraph.data.synthetic.synthetic_interactions`).

    Examples:
        >>> data = load_dataset('ml-100k', min_rating=4)
        >>> data = load_dataset('csv', 'ratings.tsv', delimiter='\\t', user='uid',
        ...                     item='movie', rating='stars', time='ts', min_rating=4)
        >>> data = load_dataset('synthetic', num_users=100_000, num_items=20_000, seed=0)
    """
    takes = dataset_options(name)
    unknown = sorted(set(options) - set(takes)) + (
        ['path'] if path is not None and name not in _FILE_FORMATS else [])
    if name in _NAMED:
        if unknown:
            raise TypeError(f'{name!r} takes no options besides root and min_rating, got '
                            f'{", ".join(unknown)}')
        data = _NAMED[name](Path(root) if root is not None else default_root())
    else:
        if root is not None:
            raise TypeError(f'{name!r} takes no root: root is the folder of the named data '
                            f'sets ({", ".join(NAMED_DATASETS)})')
        if unknown:
            keywords = ('path', 'min_rating') if name in _FILE_FORMATS else ('min_rating',)
            raise TypeError(f'{name!r} takes no {", ".join(unknown)}; its keywords: '
                            f'{", ".join(keywords + takes)}')
        if name == 'synthetic':
            data = synthetic_interactions(**options)
        elif path is None:
            raise TypeError(f'{name!r} is a file format: pass path=...')
        else:
            data = _FILE_FORMATS[name](path, **options)
    return data if min_rating is None else _rated_at_least(data, min_rating)


def _rated_at_least(data: HeteroData, min_rating: float) -> HeteroData:
    """``data`` keeping the interactions rated at least ``min_rating`` (nodes, raw ids and
    edge order unchanged, :func:`~fedgraph.data.hetero.with_edges`); logs how many are kept
    of how many."""
    store = data[RATES]
    if 'rating' not in store:
        raise ValueError(f'min_rating: {data.name} has no ratings')
    keep = store.rating >= min_rating
    log.info('%s: kept %d of %d interactions rated at least %g', data.name, int(keep.sum()),
             keep.numel(), min_rating)
    if not bool(keep.any()):
        raise ValueError(f'{data.name}, min_rating {min_rating:g}: no interaction is rated '
                         f'that high (the highest rating is {float(store.rating.max()):g})')
    return with_edges(data, keep)
