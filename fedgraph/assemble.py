"""A run's parts from its configuration: the data split it trains and evaluates on
(:func:`prepare_split`) and its in-process engine with its random generator
(:func:`build_run`)."""
from __future__ import annotations

from typing import NamedTuple

import torch

from fedgraph.algorithms import build_engine
from fedgraph.config import TrainConfig
from fedgraph.data import ClientPartition, leave_one_out_split, predefined_split, ratio_split
from fedgraph.data.hetero import RATES
from fedgraph.data.source import load_configured
from fedgraph.federated.round_engine import RoundEngine


def prepare_split(config: TrainConfig):
    """Loads the configured data (:func:`~fedgraph.data.source.load_configured`, which checks
    it against ``config.data_digest`` or records it there) and splits it under the configured
    protocol: full ranking uses the data's own split when it has one (a LightGCN folder) and
    ``split_mode`` does not ask for a ratio split."""
    data = load_configured(config)
    if config.protocol == 'sampled':
        return leave_one_out_split(data, eval_negatives=config.eval_negatives, seed=config.seed)
    own = 'split' in data[RATES]
    mode = config.split_mode or ('predefined' if own else 'random')
    if mode == 'predefined':
        if not own:
            raise ValueError(f'--split-mode predefined: {config.data_path or config.dataset} '
                             f'has no split of its own (a LightGCN folder has)')
        ratios = config.split_ratios
        return predefined_split(data, val_ratio=ratios[1] / (ratios[0] + ratios[1]),
                                seed=config.seed)
    return ratio_split(data, config.split_ratios, mode=mode, seed=config.seed)


class RunParts(NamedTuple):
    """A run's engine and the random generator its rounds draw from (unpacks as
    ``engine, generator = build_run(...)``)."""
    engine: RoundEngine
    generator: torch.Generator


def known_items(config: TrainConfig, split):
    """The items each user never draws as a training negative (``config.unseen_candidates``:
    its evaluation negatives too)."""
    if config.unseen_candidates:
        return split.known_items(candidates=True)
    return split.known_items()


def build_run(config: TrainConfig, split) -> RunParts:
    """The engine of a run and its random generator, seeded by ``config.seed`` (the engine's
    initialization draws from it first)."""
    if config.device.startswith('cuda') and not torch.cuda.is_available():
        raise ValueError(f'--device {config.device}: this PyTorch ({torch.__version__}) has no '
                         f'CUDA device; use --device cpu')
    generator = torch.Generator().manual_seed(config.seed)
    partition = ClientPartition.from_data(split.train)
    try:
        engine = build_engine(config, partition, generator, known_items(config, split))
    except (MemoryError, RuntimeError) as error:
        # PyTorch's allocators report as a RuntimeError: OutOfMemoryError on CUDA, a message
        # on the CPU.
        if not (isinstance(error, (MemoryError, torch.OutOfMemoryError))
                or "can't allocate memory" in str(error)):
            raise
        raise ValueError(f'the {config.algorithm} model of {partition.num_clients} users and '
                         f'{partition.num_items} items at dim {config.dim} does not fit in '
                         f'memory; lower --dim') from None
    return RunParts(engine, generator)
