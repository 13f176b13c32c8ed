"""Converting fedgraph's tensors and configuration to Flower records and back."""
from __future__ import annotations

import dataclasses
from typing import Dict, Mapping

import torch
from flwr.app import ArrayRecord
from torch import Tensor

from fedgraph.config import TrainConfig

_TUPLES = ('split_ratios', 'level_weights')


def to_record(tensors: Mapping[str, Tensor]) -> ArrayRecord:
    """An ``ArrayRecord`` of named tensors (moved to the CPU, made contiguous)."""
    return ArrayRecord({name: value.detach().cpu().contiguous() for name, value in tensors.items()})


def from_record(record: ArrayRecord) -> Dict[str, Tensor]:
    """The named tensors of an ``ArrayRecord``."""
    return {name: torch.from_numpy(array.numpy().copy()) for name, array in record.items()}


def config_to_run_config(config: TrainConfig) -> Dict[str, object]:
    """A Flower run configuration (TOML scalars, keys with dashes) holding ``config``;
    fields that are ``None`` are left out, tuples become comma-separated strings."""
    out = {}
    for field in dataclasses.fields(TrainConfig):
        value = getattr(config, field.name)
        if value is None:
            continue
        if field.name in _TUPLES:
            value = ','.join(str(v) for v in value)
        out[field.name.replace('_', '-')] = value
    return out


def run_config_to_config(run_config: Mapping[str, object]) -> TrainConfig:
    """The :class:`TrainConfig` of a Flower run configuration; keys that are not a
    configuration field (the apps' own settings) are ignored."""
    names = {field.name: field for field in dataclasses.fields(TrainConfig)}
    values = {}
    for key, value in run_config.items():
        name = key.replace('-', '_')
        if name not in names:
            continue
        if name in _TUPLES:
            value = tuple(float(v) for v in str(value).split(','))
        elif names[name].type in ('float', 'Optional[float]') and isinstance(value, int):
            value = float(value)
        values[name] = value
    return TrainConfig(**values)
