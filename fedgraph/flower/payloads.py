"""Converting fedgraph's payloads and configuration to Flower records and back."""
from __future__ import annotations

import dataclasses
from typing import Dict, Mapping

import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict
from torch import Tensor

from fedgraph.config import TrainConfig, shared_fields
from fedgraph.federated.messages import Payload

ARRAYS, SCALARS = 'arrays', 'scalars'


def to_record(tensors: Mapping[str, Tensor]) -> ArrayRecord:
    """An ``ArrayRecord`` of named tensors (moved to the CPU, made contiguous)."""
    return ArrayRecord({name: value.detach().cpu().contiguous() for name, value in tensors.items()})


def from_record(record: ArrayRecord) -> Dict[str, Tensor]:
    """The named tensors of an ``ArrayRecord``."""
    return {name: torch.from_numpy(array.numpy().copy()) for name, array in record.items()}


def store(records: RecordDict, payload: Payload, prefix: str = '') -> None:
    """Puts ``payload`` into ``records``: its tensors as the ``ArrayRecord`` ``prefix +
    'arrays'``, its scalars as the ``ConfigRecord`` ``prefix + 'scalars'``."""
    records[prefix + ARRAYS] = to_record({k: v for k, v in payload.items()
                                          if isinstance(v, Tensor)})
    records[prefix + SCALARS] = ConfigRecord({k: v for k, v in payload.items()
                                              if not isinstance(v, Tensor)})


def load(records: RecordDict, prefix: str = '') -> Payload:
    """The payload :func:`store` put into ``records``."""
    payload: Payload = dict(records[prefix + SCALARS]) if prefix + SCALARS in records else {}
    if prefix + ARRAYS in records:
        payload.update(from_record(records[prefix + ARRAYS]))
    return payload


def to_content(payload: Payload) -> RecordDict:
    """A message's content carrying ``payload``."""
    content = RecordDict()
    store(content, payload)
    return content


def _settings_fields(algorithm: str) -> Dict[str, dataclasses.Field]:
    """The shared settings' fields and ``algorithm``'s own, by name."""
    from fedgraph.algorithms.registry import resolve

    return {**shared_fields(),
            **{f.name: f for f in dataclasses.fields(resolve(algorithm).Settings)}}


def config_to_run_config(config: TrainConfig) -> Dict[str, object]:
    """A Flower run configuration (TOML scalars, keys with dashes) holding ``config``: the
    algorithm, the shared settings and its own; settings that are ``None`` are left out,
    tuples become comma-separated strings."""
    values = {'algorithm': config.algorithm,
              **{name: getattr(config, name) for name in shared_fields()},
              **dataclasses.asdict(config.settings)}
    out = {}
    for name, value in values.items():
        if value is None:
            continue
        if isinstance(value, tuple):
            value = ','.join(str(v) for v in value)
        out[name.replace('_', '-')] = value
    return out


def run_config_to_config(run_config: Mapping[str, object]) -> TrainConfig:
    """The :class:`TrainConfig` of a Flower run configuration; keys that are not a setting
    of the chosen algorithm (the apps' own settings) are ignored."""
    algorithm = str(run_config.get('algorithm', 'pfedrec'))
    fields = _settings_fields(algorithm)
    values = {}
    for key, value in run_config.items():
        name = key.replace('-', '_')
        if name not in fields:
            continue
        kind = str(fields[name].type)
        if kind.startswith('Tuple['):
            scalar = float if 'float' in kind else int
            value = tuple(scalar(v) for v in str(value).split(','))
        elif 'float' in kind and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        values[name] = value
    return TrainConfig(algorithm=algorithm, **values)
