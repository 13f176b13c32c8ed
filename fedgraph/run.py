"""A trained run as an object: what :func:`~fedgraph.training.train` returns and
:func:`load_run` brings back from a run folder, with recommendations in the data's own ids."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Union

import torch

from fedgraph.config import TrainConfig
from fedgraph.data.hetero import ITEM, USER
from fedgraph.files import (load_metrics, load_tensors, matching_config, reading, run_file,
                            save_tensors)


class Run(dict):
    """A finished run: a ``dict`` holding its metrics (``metrics.json``'s content: ``rounds``,
    ``best``, ...) that also carries the run itself.

    Attributes:
        config: its configuration.
        engine: the trained engine (its model, every user's private state).
        split: the data split it trained and evaluated on.
        folder: its run folder (``None`` for a run kept in memory).
    """

    def __init__(self, metrics: Dict, config: TrainConfig, engine, split,
                 folder: Optional[Path] = None):
        super().__init__(metrics)
        self.config = config
        self.engine = engine
        self.split = split
        self.folder = folder

    @property
    def metrics(self) -> Dict:
        """The metrics as a plain ``dict``."""
        return dict(self)

    def _user_index(self, user) -> int:
        """The position of the user with the data's own id ``user``."""
        raw = self.split.train[USER].raw_id
        ids = raw.tolist() if isinstance(raw, torch.Tensor) else list(raw)
        try:
            return ids.index(user)
        except ValueError:
            raise KeyError(f'no user {user!r} in the data this run trained on') from None

    def export(self, user, path: Union[str, Path]) -> Path:
        """Writes ``user``'s own model to ``path`` to run on its device
        (:class:`~fedgraph.export.DeviceModel`: its parameters, the item tables it scores
        with and the items it interacted with; its scores equal the engine's)."""
        from fedgraph.export import export_user

        index = self._user_index(user)
        return export_user(self.engine, index, self.engine.model.head, path,
                           self.split.train[ITEM].raw_id,
                           self.split.known_items().items_of(index))

    @torch.no_grad()
    def recommend(self, user, k: int = 10) -> List:
        """The ``k`` items ``user`` (an id of the data's own) scores highest with its own
        model, as raw item ids, best first; items it interacted with in training (and, under
        the sampled protocol, its held-out items) are left out.

        Raises:
            ValueError: ``k`` is below 1.
        """
        from fedgraph.export import top_items

        index = self._user_index(user)
        scores = self.engine.scores_all(torch.tensor([index]))[0]
        return top_items(scores, self.split.known_items().items_of(index), k,
                         self.split.train[ITEM].raw_id)

    def to_frame(self):
        """The per-round metrics as a :class:`pandas.DataFrame`: one row a round, one column
        a field of ``metrics.csv`` (:func:`~fedgraph.records.flat_table`: nested records
        joined by ``_``, e.g. ``val_hr@10``; lists as JSON; missing where a round did not
        record the field, e.g. the metrics of a round that was not evaluated).

        Raises:
            ImportError: pandas is not installed.
        """
        try:
            import pandas
        except ImportError:
            raise ImportError('Run.to_frame needs pandas: pip install pandas') from None
        from fedgraph.records import flat_table

        columns, rows = flat_table(self['rounds'])
        return pandas.DataFrame(rows, columns=columns)


def save_split(split, folder: Path) -> Path:
    """Writes ``split`` to ``folder/split.pt``, for a run trained on a split passed in
    Python: its ``config.json`` names a data set that would not rebuild it."""
    from fedgraph.data.split import split_state
    from fedgraph.server.loop import SPLIT

    path = Path(folder) / SPLIT
    save_tensors(path, split_state(split))
    return path


def load_split(folder: Path):
    """The split in ``folder/split.pt`` (:func:`save_split`), or ``None`` when there is
    none."""
    from fedgraph.data.split import split_from_state
    from fedgraph.server.loop import SPLIT

    path = Path(folder) / SPLIT
    if not path.exists():
        return None
    what = 'a fedgraph data split'
    state = load_tensors(path, what=what)
    with reading(path, what):
        return split_from_state(state)


def load_config(folder: Union[str, Path]) -> TrainConfig:
    """The configuration of the run in ``folder`` (its ``config.json``).

    Raises:
        FileNotFoundError: ``folder`` holds no ``config.json``.
        fedgraph.files.DamagedFileError: ``config.json`` is not a configuration that loads.
    """
    return TrainConfig.load(run_file(folder, 'config.json'))


def load_run(folder: Union[str, Path]) -> Run:
    """The run in ``folder`` as its last checkpoint left it: its configuration, metrics,
    the engine with the trained state, and the split: the one saved in the folder
    (``split.pt``) when the run was trained on a split passed in Python, else the one its
    ``config.json`` rebuilds from its data (checked against the digest it recorded).

    Raises:
        FileNotFoundError: ``folder`` lacks ``config.json``, ``metrics.json`` or
            ``checkpoint.pt``.
        fedgraph.files.DamagedFileError: one of its files is damaged, or the checkpoint
            does not fit the engine its ``config.json`` builds.
    """
    from fedgraph.assemble import build_run, prepare_split
    from fedgraph.server.loop import CHECKPOINT

    folder = Path(folder)
    config = load_config(folder)
    metrics = load_metrics(folder)
    checkpoint = run_file(folder, CHECKPOINT)
    split = load_split(folder)
    if split is None:
        split = prepare_split(config)
    engine, _ = build_run(config, split)
    state = load_tensors(checkpoint, map_location=config.device, keys=('engine',))
    with matching_config(checkpoint):
        engine.load_state_dict(state['engine'])
    return Run(metrics, config, engine, split, folder)
