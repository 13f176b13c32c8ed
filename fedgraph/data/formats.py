"""Readers for the interaction file formats of the data sets fedgraph supports, and a writer
of LightGCN's.

Each reader parses one file layout strictly (see :mod:`fedgraph.data.reader`) and returns
the interaction graph built by :func:`~fedgraph.data.hetero.interactions_to_hetero`.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Dict, Optional, Union

import numpy as np
import torch
from torch_geometric.data import HeteroData

from fedgraph.data.hetero import RATES, interactions_to_hetero
from fedgraph.data.partition import ClientPartition
from fedgraph.data.reader import (Column, DataFormatError, PathLike, excerpt,
                                  read_adjacency_lists, read_delimited, read_header)
from fedgraph.files import write_text

if TYPE_CHECKING:
    from fedgraph.data.split import RankingSplit

_USER_ITEM_RATING_TIME = [Column('user', 0), Column('item', 1), Column('rating', 2, 'float'),
                          Column('time', 3, 'time')]


def _build(columns: Dict[str, np.ndarray], path: PathLike) -> HeteroData:
    return interactions_to_hetero(columns['user'], columns['item'], columns.get('rating'),
                                  columns.get('time'), name=Path(path).name)


def read_movielens_100k(path: PathLike) -> HeteroData:
    """MovieLens-100K ``u.data``: ``user<TAB>item<TAB>rating<TAB>timestamp``."""
    return _build(read_delimited(path, _USER_ITEM_RATING_TIME, '\t'), path)


def read_movielens_1m(path: PathLike) -> HeteroData:
    """MovieLens-1M ``ratings.dat``: ``user::item::rating::timestamp``."""
    return _build(read_delimited(path, _USER_ITEM_RATING_TIME, '::'), path)


def read_pfedrec_ratings(path: PathLike, time_format: Optional[str] = None) -> HeteroData:
    """The ``ratings.dat`` files of the PFedRec code: ``uid,iid,rating,timestamp``; ids are
    integers when every one is, strings otherwise (the PFedRec code reads both)."""
    return _build(read_delimited(path, _USER_ITEM_RATING_TIME, ',', integer_ids='auto',
                                 time_format=time_format), path)


def read_lastfm_2k(path: PathLike) -> HeteroData:
    """HetRec 2011 Last.fm ``user_artists.dat``: a header, then ``userID<TAB>artistID<TAB>weight``.

    The weight (a play count) is the rating; the file has no timestamps, so the file order
    is the chronological order.
    """
    columns = [Column('user', 0), Column('item', 1), Column('rating', 2, 'float')]
    return _build(read_delimited(path, columns, '\t', header=True), path)


def read_amazon_csv(path: PathLike, time_format: Optional[str] = None) -> HeteroData:
    """Amazon review rating CSVs: ``user,item,rating,timestamp`` with string ids, no header."""
    return _build(read_delimited(path, _USER_ITEM_RATING_TIME, ',', integer_ids=False,
                                 time_format=time_format), path)


def read_lightgcn(directory: PathLike) -> HeteroData:
    """LightGCN-style ``train.txt`` / ``test.txt`` (and optional ``valid.txt``) in a folder.

    Each line is ``user item item ...``. The files are a predefined split: the edge
    attribute ``split`` is 0 for training, 1 for validation and 2 for test interactions.
    """
    directory = Path(directory)
    parts = {'train.txt': 0, 'valid.txt': 1, 'test.txt': 2}
    users, items, split = [], [], []
    for name, code in parts.items():
        file = directory / name
        if code == 1 and not file.exists():
            continue
        user, item = read_adjacency_lists(file)
        users.append(user)
        items.append(item)
        split.append(np.full(len(user), code))
    user, item, split = map(np.concatenate, (users, items, split))
    # The split code is passed as the "time" so that a pair's train copy is never preferred
    # over its held-out copy; it is stored as ``split`` afterwards.
    data = interactions_to_hetero(user, item, time=split, name=directory.name)
    data[RATES].split = data[RATES].time
    del data[RATES].time
    return data


def write_lightgcn(split: 'RankingSplit', directory: PathLike) -> Path:
    """Writes a full-ranking split as a LightGCN folder that :func:`read_lightgcn` reads back
    as the same split: ``train.txt``, ``valid.txt`` and ``test.txt``, one line
    ``user item item ...`` per user that holds items in that part, in contiguous ids."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    parts = {'train.txt': ClientPartition.from_data(split.train), 'valid.txt': split.val,
             'test.txt': split.test}
    for name, part in parts.items():
        lines = [f'{user} ' + ' '.join(map(str, part.items_of(user).tolist()))
                 for user in torch.nonzero(part.degree).view(-1).tolist()]
        write_text(directory / name, ''.join(line + '\n' for line in lines))
    return directory


def read_csv(path: PathLike, user: Union[str, int] = 'user', item: Union[str, int] = 'item',
             rating: Optional[Union[str, int]] = None, time: Optional[Union[str, int]] = None,
             delimiter: Optional[str] = ',', header: bool = True,
             integer_ids: bool = False, time_format: Optional[str] = None) -> HeteroData:
    """A generic delimited file with a column mapping.

    Columns are named (looked up in the header line) or given as 0-based positions (then
    ``header`` only says whether to skip the first line). ``delimiter='\\t'`` reads TSV,
    ``None`` splits on whitespace; with a one-character delimiter, fields in double quotes
    may hold the delimiter, line breaks and doubled quotes (RFC 4180). Ids are strings
    (``integer_ids``: integers); times are Unix seconds or ISO 8601 unless ``time_format``
    says otherwise (:func:`~fedgraph.data.reader.parse_time`).
    """
    mapping = {'user': user, 'item': item, 'rating': rating, 'time': time}
    mapping = {key: value for key, value in mapping.items() if value is not None}
    names = read_header(path, delimiter) if header else []
    kinds = {'user': 'id', 'item': 'id', 'rating': 'float', 'time': 'time'}
    columns = []
    for key, column in mapping.items():
        if isinstance(column, str):
            if column not in names:
                raise DataFormatError(path, 1, f'the header has no column {column!r} for the '
                                               f'{key}; its columns are {excerpt(names)}')
            column = names.index(column)
        columns.append(Column(key, column, kinds[key]))
    return _build(read_delimited(path, columns, delimiter, header=header,
                                 integer_ids=integer_ids, time_format=time_format), path)

