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

from fedgraph.nn.heads import DotProductHead, LinearScoreHead, NCFHead, ScoreHead
from fedgraph.nn.levels import combine_levels

FORMAT = 'fedgraph-device-model/1'
#: The heads an exported model can use: a file names one of these, never arbitrary code.
HEADS = {cls.__name__: cls for cls in (LinearScoreHead, DotProductHead, NCFHead)}


def export_user(engine, user: int, head: ScoreHead, path: Union[str, Path],
                item_ids: Union[Tensor, Sequence[str]], exclude: Tensor) -> Path:
    """Writes user ``user``'s model (``engine.item_views(user)``, scored by ``head``'s kind)
    to ``path``; ``item_ids`` are the items' own ids, ``exclude`` the item indices never to
    recommend."""
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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


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
        """The model in ``path`` (read with ``weights_only=True``)."""
        return cls(torch.load(path, map_location='cpu', weights_only=True))

    @torch.no_grad()
    def scores(self) -> Tensor:
        """``[I]`` the user's score of every item, as the engine scores it."""
        logits = [self.head.logits_all(self.params, table) for table in self.tables]
        return combine_levels(logits, self.weights)[0]

    def recommend(self, k: int = 10) -> List:
        """The ``k`` best items it did not interact with, as the items' own ids."""
        scores = self.scores().clone()
        scores[self.exclude] = float('-inf')
        top = torch.topk(scores, min(k, int(torch.isfinite(scores).sum()))).indices.tolist()
        return [self.items[i].item() if isinstance(self.items, Tensor) else self.items[i]
                for i in top]
