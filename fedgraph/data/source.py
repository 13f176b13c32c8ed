"""The data a run's configuration names: a named data set, or a file in one of the file
formats with its columns, filtered by rating, and checked against the digest the run
recorded."""
from __future__ import annotations

from typing import Dict

from torch_geometric.data import HeteroData

from fedgraph.data.datasets import (FILE_FORMATS, NAMED_DATASETS, dataset_options,
                                    load_dataset)
from fedgraph.data.download import content_digest
from fedgraph.data.hetero import RATES, as_user_item

#: File formats whose columns the configuration chooses (the others have a fixed layout).
COLUMN_FORMATS = ('csv', 'tsv')
_COLUMNS = ('user_col', 'item_col', 'rating_col', 'time_col')


def _column(value: str):
    """A column by header name, or by 0-based position when it is a number."""
    return int(value) if value.isdigit() else value


def _options(config) -> Dict[str, object]:
    """The :func:`~fedgraph.data.datasets.load_dataset` options of ``config``'s data section,
    with errors that name the flag."""
    name = config.dataset
    given = [name for name in _COLUMNS if getattr(config, name) is not None]
    if config.data_root is not None and name not in NAMED_DATASETS:
        raise ValueError(f'--data-root is the folder of the named data sets '
                         f'({", ".join(NAMED_DATASETS)}); {name!r} is not one of them')
    if name not in FILE_FORMATS:
        if config.data_path is not None or given:
            extra = ', '.join(f'--{flag.replace("_", "-")}' for flag in
                              (['data_path'] if config.data_path else []) + given)
            raise ValueError(f'{extra} applies to file formats ({", ".join(FILE_FORMATS)}); '
                             f'{name!r} is a data set of its own')
        return {}
    if config.data_path is None:
        raise ValueError(f'--dataset {name} is a file format: give the file with --data-path '
                         f'(a folder for lightgcn)')
    options: Dict[str, object] = {'path': config.data_path}
    if name in COLUMN_FORMATS:
        for key in _COLUMNS:
            value = getattr(config, key)
            if value is not None:
                options[key[:-len('_col')]] = _column(value)
    elif given:
        raise ValueError(f'{", ".join("--" + g.replace("_", "-") for g in given)}: {name} has '
                         f'a fixed layout; column flags apply to {", ".join(COLUMN_FORMATS)}')
    if config.time_format is not None:
        if 'time_format' not in dataset_options(name):
            raise ValueError(f'--time-format: {name} files have Unix timestamps')
        options['time_format'] = config.time_format
    return options


def data_digest(data: HeteroData) -> str:
    """SHA-256 of the interactions (users, items and their order)."""
    return content_digest(*data[RATES].edge_index)


def load_configured(config) -> HeteroData:
    """The interactions ``config`` names, as user-item ``HeteroData``: loaded by
    :func:`~fedgraph.data.datasets.load_dataset` with its data settings (keeping only
    ratings of at least ``config.min_rating``), and checked against ``config.data_digest``
    (recorded there when it has none, so that a resumed or re-scored run reloads the same
    data or fails saying so)."""
    data = as_user_item(load_dataset(config.dataset, root=config.data_root,
                                     min_rating=config.min_rating, **_options(config)))
    digest = data_digest(data)
    if config.data_digest is None:
        config.data_digest = digest
    elif config.data_digest != digest:
        where = config.data_path or config.dataset
        raise ValueError(f'{where} is not the data this run trained on (its interactions '
                         f'hash to {digest[:12]}..., the run recorded '
                         f'{config.data_digest[:12]}...)')
    return data

