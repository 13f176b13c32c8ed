"""One user's model, exported to run on its device: a small file of tensors and the
:class:`DeviceModel` that scores with it, without the engine, the data or the other users.

The file (``torch.save`` of plain tensors, lists and strings, read back with
``weights_only=True``, so opening it runs no code) holds the user's parameters as its
score head sees them, the item-input table of each level it scores with (PFedRec: the
global table with its own fine-tuned rows in place; PerFedRec++: the global, its cluster's
and its own), the levels' weights, the head's dense shared parameters (FedNCF's MLP), the
items' ids and the items to leave out of its recommendations (those it interacted with).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence, Union

import torch
from torch import Tensor

from fedgraph.files import load_tensors, reading
from fedgraph.nn.heads import (DotProductHead, LinearScoreHead, NCFHead, PrivateNCFHead,
                               ScoreHead)
from fedgraph.nn.levels import combine_levels

FORMAT = 'fedgraph-device-model/1'
#: The heads an exported model can use: a file names one of these, never arbitrary code.
HEADS = {cls.__name__: cls
         for cls in (LinearScoreHead, DotProductHead, NCFHead, PrivateNCFHead)}


def export_user(engine, user: int, head: ScoreHead, path: Union[str, Path],
                item_ids: Union[Tensor, Sequence[str]], exclude: Tensor) -> Path:
    """Writes user ``user``'s model (``engine.item_views(user)``, scored by ``head``'s kind)
    to ``path``, creating its folder; ``item_ids`` are the items' own ids, ``exclude`` the
    item indices never to recommend.

    Raises:
        OSError: ``path`` is a folder (:class:`IsADirectoryError`) or cannot be written
            (``cannot write the exported model to PATH: REASON``).
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f'cannot write the exported model to {path}: it is a folder')
    name = type(head).__name__
    if HEADS.get(name) is not type(head):
        raise ValueError(f'export supports the heads {", ".join(HEADS)}; {name} is not one')
    params, tables, weights = engine.item_views(user)
    state = {'format': FORMAT, 'head': name, 'dim': head.dim, 'head_args': head.export_args(),
             'params': {k: v.detach().cpu().clone() for k, v in params.items()},
             'shared': {k: v.detach().cpu().clone() for k, v in head.shared_parameters().items()},
             'tables': [table.detach().cpu().clone() for table in tables],
             'weights': [float(weight) for weight in weights],
             'items': item_ids.clone() if isinstance(item_ids, Tensor) else list(item_ids),
             'exclude': exclude.cpu().clone()}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, 'wb') as handle:
            torch.save(state, handle)
    except (OSError, RuntimeError) as error:
        kind = type(error) if isinstance(error, OSError) else OSError
        reason = getattr(error, 'strerror', None) or error
        raise kind(f'cannot write the exported model to {path}: {reason}') from error
    return path


def top_items(scores: Tensor, exclude: Tensor, k: int, item_ids: Union[Tensor, Sequence]) -> List:
    """The ids (of ``item_ids``) of the ``k`` items of highest ``scores`` (``[I]``), best
    first, leaving out the item indices ``exclude``; fewer when fewer are left.

    Raises:
        ValueError: ``k`` is below 1.
    """
    if k < 1:
        raise ValueError(f'k must be at least 1, got {k}')
    scores = scores.clone()
    scores[exclude] = float('-inf')
    top = torch.topk(scores, min(k, int(torch.isfinite(scores).sum()))).indices.tolist()
    return [item_ids[i].item() if isinstance(item_ids, Tensor) else item_ids[i] for i in top]


class DeviceModel:
    """A user's exported model (:func:`export_user`).

    Args:
        state: the file's content.
    """

    def __init__(self, state: Dict):
        if state.get('format') != FORMAT:
            raise ValueError(f'not a fedgraph device model (format {state.get("format")!r})')
        if state['head'] not in HEADS:
            raise ValueError(f'unknown head {state["head"]!r}; known: {", ".join(HEADS)}')
        self.head = HEADS[state['head']](1, state['dim'], **state['head_args'])
        with torch.no_grad():
            for name, value in self.head.shared_parameters().items():
                value.copy_(state['shared'][name])
        self.params = state['params']
        self.tables = state['tables']
        self.weights = state['weights']
        self.items = state['items']
        self.exclude = state['exclude']

    @classmethod
    def load(cls, path: Union[str, Path]) -> 'DeviceModel':
        """The model in ``path`` (read with ``weights_only=True``).

        Raises:
            fedgraph.files.DamagedFileError: ``path`` holds no device model (``not a
                fedgraph device model (or damaged): PATH``).
        """
        what = 'a fedgraph device model'
        state = load_tensors(path, map_location='cpu', what=what)
        with reading(path, what):
            return cls(state)

    @torch.no_grad()
    def scores(self) -> Tensor:
        """``[I]`` the user's score of every item, as the engine scores it."""
        logits = [self.head.logits_all(self.params, table) for table in self.tables]
        return combine_levels(logits, self.weights)[0]

    def recommend(self, k: int = 10) -> List:
        """The ``k`` best items it did not interact with, as the items' own ids
        (:func:`top_items`)."""
        return top_items(self.scores(), self.exclude, k, self.items)
