"""Training an algorithm in this process: :func:`train` builds the run's engine and hands
its rounds to the one round loop (:class:`~fedgraph.server.loop.Server`), which evaluates,
picks the best round, checkpoints and writes the run folder.

A run writes ``config.json`` and ``metrics.json`` into its output folder and, every
``checkpoint_every`` rounds, ``checkpoint.pt`` with everything needed to continue: the
engine's shared and private state, the random generator's state and the metrics so far.
:func:`train` with ``resume=True`` continues from there and ends with the same metrics as an
uninterrupted run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from fedgraph import runtime
from fedgraph.assemble import build_run, prepare_split
from fedgraph.config import TrainConfig
from fedgraph.federated.evaluation import Split
from fedgraph.run import Run, load_split
from fedgraph.server.inprocess import InProcess
from fedgraph.server.loop import (CHECKPOINT, EMBEDDINGS, RUN_FILES, NothingTrained, RunFailed,
                                  Server, TrainingDiverged, check_folder, divergence)

__all__ = ['CHECKPOINT', 'EMBEDDINGS', 'RUN_FILES', 'NothingTrained', 'RunFailed',
           'TrainingDiverged', 'build_run', 'divergence', 'prepare_split', 'train']


def train(config: TrainConfig, out: Optional[Union[str, Path]] = None, resume: bool = False,
          progress: bool = True, split: Optional[Split] = None,
          overwrite: bool = False) -> Run:
    """Trains ``config.algorithm`` for ``config.rounds`` rounds, or fewer with
    ``config.patience``: the run stops once that many evaluations in a row found no better
    validation metric than the best so far. It runs with ``config.threads`` threads (default:
    the CPUs this process may use, :func:`fedgraph.runtime.threads`) and gives the process
    its thread counts back when it returns.

    Args:
        config: the run's configuration.
        out: the output folder (``config.json``, ``metrics.json``, ``checkpoint.pt``);
            ``None`` keeps everything in memory.
        resume: continue from ``out/checkpoint.pt``.
        progress: show a progress bar over rounds (its text: the latest loss and validation
            metric).
        split: an already prepared split (default: :func:`prepare_split`). With ``out``, it
            is saved in the run folder (``split.pt``), from which :func:`~fedgraph.run.load_run`
            takes it back.
        overwrite: replace the run already in ``out``; without it (or ``resume``) a folder
            that holds a run is an error, so that no run is lost or mixed with another.

    Returns:
        The :class:`~fedgraph.run.Run`: a ``dict`` of the metrics (``{'rounds': [...],
        'best': {'round', 'val', 'test'}}``) that also holds the configuration, the trained
        engine and the split (``run.recommend(user, k)``).
    """
    out = Path(out) if out is not None else None
    if out is not None:  # early, before the data is read; again under the folder's lock
        check_folder(out, resume, overwrite)
    given = split is not None
    with runtime.threads(config.threads):
        if split is None and resume and out is not None:
            split = load_split(out)
        if split is None:
            split = prepare_split(config)
        engine, generator = build_run(config, split)  # a run that cannot start writes nothing
        federation = InProcess(engine, split, generator, keep_split=given)
        metrics = Server(config, federation, out, progress).run(resume, overwrite)
    return Run(metrics, config, engine, split, out)
