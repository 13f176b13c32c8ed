"""The device side: the users a SuperNode holds, and the ``ClientApp`` that trains them.

A :class:`Device` is what stays on a SuperNode between rounds: its users' training items,
the items they never take as negatives, their evaluation candidates, their private
parameters (score head or user embedding) and their fine-tuned item rows. Each round it
rebuilds a :class:`~fedgraph.federated.engine.FederatedEngine` over its own users from that
state and the item table the server sent, runs the client half of the round
(:meth:`~fedgraph.federated.engine.FederatedEngine.local_round`) and uploads the touched
rows' updates, clipped and noised by the same :class:`~fedgraph.federated.upload.UploadTransform`.
Its users draw from their own random streams (:mod:`fedgraph.federated.streams`), keyed by
their ids in the whole population, so that a deployment makes the same draws as the
in-process engine run with ``client_streams=True``.

A SuperNode's ``node_config`` says which users it holds: ``partition-id`` ``p`` of
``num-partitions`` ``P`` holds users ``p, p + P, p + 2P, ...`` of the data set (``P`` = the
number of users: one user per node, as on phones).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import Tensor

from fedgraph.algorithms.federated import build_model, local_training
from fedgraph.config import TrainConfig
from fedgraph.data.partition import ClientPartition
from fedgraph.data.split import SampledSplit
from fedgraph.federated.engine import FederatedEngine
from fedgraph.federated.selection import ClientSelector
from fedgraph.federated.streams import ClientStreams
from fedgraph.flower.records import (config_to_run_config, from_record, run_config_to_config,
                                     to_record)
from fedgraph.metrics.sampled import sampled_metrics
from fedgraph.training import prepare_split

DATA, PRIVATE = 'device-data', 'device-private'


@dataclass
class Device:
    """The users of one SuperNode and their on-device state.

    Attributes:
        config: the run's configuration.
        users: ``[n]`` the users' ids in the whole population.
        train: their training items (row ``i``: user ``users[i]``).
        known: the items each never draws as a negative.
        candidates: ``{'val': [n, 1 + k], 'test': [n, 1 + k]}`` held-out item, then negatives.
        private: ``{name: [n, ...]}`` the private parameters of the model's head.
        personal: the fine-tuned item rows (``PersonalItemRows`` state, local user indices).
    """
    config: TrainConfig
    users: Tensor
    train: ClientPartition
    known: ClientPartition
    candidates: Dict[str, Tensor]
    private: Optional[Dict[str, Tensor]] = None
    personal: Optional[Dict[str, Tensor]] = None

    @classmethod
    def from_split(cls, config: TrainConfig, split: SampledSplit, train: ClientPartition,
                   known: ClientPartition, partition_id: int, num_partitions: int) -> 'Device':
        """The users ``partition_id::num_partitions`` of a sampled-protocol split, whose
        training and known items are ``train`` and ``known``."""
        num_users = split.val_item.numel()
        if not 0 <= partition_id < num_partitions <= num_users:
            raise ValueError(f'partition {partition_id} of {num_partitions} does not exist '
                             f'for {num_users} users')
        users = torch.arange(partition_id, num_users, num_partitions)
        candidates = {
            'val': torch.cat([split.val_item.unsqueeze(1), split.val_negatives], 1)[users],
            'test': torch.cat([split.test_item.unsqueeze(1), split.test_negatives], 1)[users]}
        return cls(config, users, train.select(users), known.select(users), candidates)

    @property
    def num_items(self) -> int:
        return self.train.num_items

    # ------------------------------------------------------------------ state
    def to_state(self, state: RecordDict) -> None:
        """Stores the device in a SuperNode's ``context.state``."""
        data = {'users': self.users, 'train-ptr': self.train.ptr, 'train-col': self.train.col,
                'known-ptr': self.known.ptr, 'known-col': self.known.col,
                'val': self.candidates['val'], 'test': self.candidates['test']}
        state[DATA] = to_record(data)
        state['device-meta'] = ConfigRecord({'num-items': self.num_items})
        if self.private is not None:
            tensors = {f'head.{k}': v for k, v in self.private.items()}
            tensors.update({f'personal.{k}': v for k, v in (self.personal or {}).items()})
            state[PRIVATE] = to_record(tensors)

    @classmethod
    def from_state(cls, config: TrainConfig, state: RecordDict) -> 'Device':
        data = from_record(state[DATA])
        num_items = int(state['device-meta']['num-items'])
        device = cls(config, data['users'],
                     ClientPartition(data['train-ptr'], data['train-col'], num_items),
                     ClientPartition(data['known-ptr'], data['known-col'], num_items),
                     {'val': data['val'], 'test': data['test']})
        if PRIVATE in state:
            tensors = from_record(state[PRIVATE])
            device.private = {k[5:]: v for k, v in tensors.items() if k.startswith('head.')}
            device.personal = {k[9:]: v for k, v in tensors.items() if k.startswith('personal.')}
        return device

    # ------------------------------------------------------------------ work
    def engine(self, items: Tensor) -> FederatedEngine:
        """An engine over this device's users, on the item table ``items``."""
        if self.private is None:
            raise RuntimeError('the device has no initial model yet (no enrollment)')
        config = self.config
        model = build_model(config, self.users.numel(), self.num_items,
                            torch.Generator().manual_seed(0))
        with torch.no_grad():
            model.item.copy_(items)
            for name, tensor in model.private_parameters().items():
                tensor.copy_(self.private[name])
        engine = FederatedEngine(model, self.train, local_training(config, self.num_items),
                                 ClientSelector(self.users.numel()), self.known,
                                 ClientStreams(self.users))
        engine.broadcast = items.clone()
        if self.personal:
            engine.personal.load_state_dict(self.personal)
        return engine

    def train_round(self, items: Tensor, users: Tensor, round_seed: int) -> Dict[str, Tensor]:
        """Trains ``users`` (population ids, held here) for one round from ``items``; keeps
        their new private state and returns the upload: ``row-user``, ``row-item``,
        ``update`` (rows), and ``users``, ``num-samples``, ``loss`` (per user)."""
        position = torch.searchsorted(self.users, users)
        if not torch.equal(self.users[position.clamp_max(self.users.numel() - 1)], users):
            raise ValueError('the server selected users this device does not hold')
        engine = self.engine(items)
        result = engine.local_round(position, round_seed=round_seed)
        self.private = {k: v.detach().clone() for k, v in
                        engine.model.private_parameters().items()}
        self.personal = engine.personal.state_dict()
        upload = result.upload
        return {'row-user': self.users[upload.clients[upload.row_owner]],
                'row-item': upload.row_item, 'update': upload.update,
                'users': self.users[upload.clients], 'num-samples': result.num_samples,
                'loss': result.loss}

    @torch.no_grad()
    def evaluate(self, items: Tensor) -> Dict[str, float]:
        """Sampled-protocol HR@10 and NDCG@10 of every user here, each scored with its own
        model over ``items`` (the table the in-process engine would score with), as sums
        over the users, with ``num-users``."""
        engine = self.engine(items)
        local = torch.arange(self.users.numel())
        out = {'num-users': self.users.numel()}
        for name, candidates in self.candidates.items():
            scores = engine.scores(local, candidates)
            for metric, value in sampled_metrics(scores[:, 0], scores[:, 1:], k=10).items():
                out[f'{name}-{metric}'] = value * self.users.numel()
        return out


@functools.lru_cache(maxsize=4)
def _population(dataset: str, data_root: Optional[str], seed: int,
                eval_negatives: int) -> Tuple[SampledSplit, ClientPartition, ClientPartition]:
    """The split every node takes its users from, with its training and known-item
    partitions; cached, so that a process serving many virtual nodes (Ray simulation) builds
    them once."""
    split = prepare_split(TrainConfig(dataset=dataset, data_root=data_root, seed=seed,
                                      eval_negatives=eval_negatives))
    return split, ClientPartition.from_data(split.train), split.known_items()


def _device(config: TrainConfig, context: Context) -> Device:
    if DATA in context.state:
        return Device.from_state(config, context.state)
    if config.protocol != 'sampled':
        raise ValueError('the Flower apps evaluate on devices under the sampled protocol only')
    node = context.node_config
    return Device.from_split(config, *_population(config.dataset, config.data_root,
                                                  config.seed, config.eval_negatives),
                             int(node['partition-id']), int(node['num-partitions']))


def make_client_app(config: Optional[TrainConfig] = None) -> ClientApp:
    """The ``ClientApp``. Its configuration is the run configuration's (``context.run_config``)
    over ``config`` (default: :class:`TrainConfig`'s defaults).

    Messages it answers:

    * ``query`` ``enroll`` -- loads the node's users and answers their ids;
    * ``query`` ``init`` -- stores the users' initial private parameters;
    * ``train`` -- trains the selected users from the sent item table, uploads row updates;
    * ``evaluate`` -- sums of the users' HR@10 and NDCG@10.
    """
    app = ClientApp()
    defaults = config_to_run_config(config) if config is not None else {}

    def configured(context: Context) -> TrainConfig:
        return run_config_to_config({**defaults, **context.run_config})

    @app.query()
    def query(message: Message, context: Context) -> Message:
        config = configured(context)
        device = _device(config, context)
        step = message.content['config']['step']
        if step == 'enroll':
            reply = RecordDict({'users': to_record({'users': device.users}),
                                'meta': ConfigRecord({'num-items': device.num_items})})
        elif step == 'init':
            device.private = from_record(message.content['private'])
            reply = RecordDict({'meta': ConfigRecord({'stored': True})})
        else:
            raise ValueError(f'unknown query step {step!r}')
        device.to_state(context.state)
        return Message(content=reply, reply_to=message)

    @app.train()
    def train(message: Message, context: Context) -> Message:
        device = _device(configured(context), context)
        round_config = message.content['config']
        users = from_record(message.content['selected'])['users']
        items = from_record(message.content['items'])['items']
        upload = device.train_round(items, users, int(round_config['round-seed']))
        device.to_state(context.state)
        return Message(content=RecordDict({'upload': to_record(upload)}), reply_to=message)

    @app.evaluate()
    def evaluate(message: Message, context: Context) -> Message:
        device = _device(configured(context), context)
        metrics = device.evaluate(from_record(message.content['items'])['items'])
        return Message(content=RecordDict({'metrics': MetricRecord(metrics)}),
                       reply_to=message)

    return app
