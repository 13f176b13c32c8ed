"""The device side: the users a SuperNode holds, and the ``ClientApp`` that trains them.

A :class:`Device` is what stays on a SuperNode between rounds: its users' training items,
the items they never take as negatives, their evaluation candidates, their private
parameters (score head or user embedding) and their fine-tuned item rows. Each round it
rebuilds a :class:`~fedgraph.federated.engine.FederatedEngine` over its own users from that
state and what the server sent (the item table; for graph models the users' and items'
context), runs the client half of the round
(:meth:`~fedgraph.federated.engine.FederatedEngine.local_round`) and uploads the touched
rows' updates, clipped and noised by the same :class:`~fedgraph.federated.upload.UploadTransform`;
graph models also upload the change of each user embedding, enroll with their item sets
blurred by pseudo-items, and take part in PerFedRec++'s contrastive pre-training.
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
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import Tensor

from fedgraph.algorithms.federated import GRAPH_ALGORITHMS, build_model, local_training
from fedgraph.algorithms.perfedrec import GraphFederatedEngine, user_upload, view_offsets
from fedgraph.config import TrainConfig
from fedgraph.data.partition import ClientPartition
from fedgraph.data.split import SampledSplit
from fedgraph.federated.engine import FederatedEngine
from fedgraph.federated.selection import ClientSelector
from fedgraph.federated.streams import ClientStreams
from fedgraph.flower.records import (config_to_run_config, from_record, run_config_to_config,
                                     to_record)
from fedgraph.metrics.sampled import sampled_metrics
from fedgraph.nn.augment import PseudoItems
from fedgraph.nn.gnn import CollaborativeGraph, FederatedGNN
from fedgraph.nn.heads import DotProductHead
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
        uploaded: ``[n, d]`` graph models: the sum of the user-embedding changes each user
            uploaded, i.e. the server's view of its embedding.
        adam: PerFedRec++ pre-training: the users' Adam state (``step``, ``exp_avg``,
            ``exp_avg_sq``).
    """
    config: TrainConfig
    users: Tensor
    train: ClientPartition
    known: ClientPartition
    candidates: Dict[str, Tensor]
    private: Optional[Dict[str, Tensor]] = None
    personal: Optional[Dict[str, Tensor]] = None
    uploaded: Optional[Tensor] = None
    adam: Optional[Dict[str, Tensor]] = None

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

    @property
    def is_graph(self) -> bool:
        return self.config.algorithm in GRAPH_ALGORITHMS

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
            if self.uploaded is not None:
                tensors['uploaded'] = self.uploaded
            tensors.update({f'adam.{k}': v for k, v in (self.adam or {}).items()})
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
            device.uploaded = tensors.get('uploaded')
            device.adam = {k[5:]: v for k, v in tensors.items() if k.startswith('adam.')} or None
        return device

    # ------------------------------------------------------------------ work
    def engine(self, items: Tensor, broadcast: Optional[Tensor] = None,
               context: Optional[Dict[str, Tensor]] = None) -> FederatedEngine:
        """An engine over this device's users on the global item table ``items``, their
        fine-tuned rows over ``broadcast`` (default: ``items``), and a graph model's context
        (``{'user': [n, d], 'item': [I, d]}``)."""
        if self.private is None:
            raise RuntimeError('the device has no initial model yet (no enrollment)')
        config = self.config
        model = build_model(config, self.users.numel(), self.num_items,
                            torch.Generator().manual_seed(0))
        with torch.no_grad():
            model.item.copy_(items)
            for name, tensor in model.private_parameters().items():
                tensor.copy_(self.private[name])
        if context is not None:
            model.set_context(config.num_layers, context['user'], context['item'])
        engine = FederatedEngine(model, self.train, local_training(config, self.num_items),
                                 ClientSelector(self.users.numel()), self.known,
                                 ClientStreams(self.users))
        engine.broadcast = (items if broadcast is None else broadcast).clone()
        if self.personal:
            engine.personal.load_state_dict(self.personal)
        return engine

    def _user_vectors(self) -> Tensor:
        """``[n, d]`` the users' private embeddings (graph models have FedMF's head)."""
        return self.private[DotProductHead.user_vector]

    def _streams(self, seed: int) -> List[torch.Generator]:
        """Every user's stream of ``seed``."""
        return ClientStreams(self.users).generators(seed, torch.arange(self.users.numel()))

    def _upload_users(self, position: Tensor, streams: Sequence[torch.Generator]) -> Tensor:
        """Users ``position`` upload the change of their embedding since their last upload,
        clipped and noised from ``streams``; returns the uploaded change."""
        change = user_upload(local_training(self.config, self.num_items).upload,
                             self._user_vectors()[position] - self.uploaded[position], streams)
        self.uploaded[position] += change
        return change

    def enroll(self, private: Dict[str, Tensor], enroll_seed: int) -> Dict[str, Tensor]:
        """Stores the users' initial private parameters. A graph model's users also upload
        their item sets with pseudo-items and their first noised user embedding, drawn from
        their streams of ``enroll_seed``: ``edge-user``, ``edge-item``, and ``users`` with
        their ``user-update``."""
        self.private = private
        if not self.is_graph:
            return {}
        streams = self._streams(enroll_seed)
        pseudo = PseudoItems(self.config.pseudo_ratio)
        items = [pseudo.client_items(self.train.items_of(i), self.num_items, stream)
                 for i, stream in enumerate(streams)]
        self.uploaded = torch.zeros_like(self._user_vectors())
        change = self._upload_users(torch.arange(self.users.numel()), streams)
        return {'edge-user': torch.cat([torch.full_like(row, int(user))
                                        for user, row in zip(self.users, items)]),
                'edge-item': torch.cat(items), 'users': self.users, 'user-update': change}

    def upload_user_change(self, seed: int) -> Dict[str, Tensor]:
        """Every user here uploads the change of its embedding since its last upload, noised
        from its stream of ``seed`` (PerFedRec++, after pre-training)."""
        change = self._upload_users(torch.arange(self.users.numel()), self._streams(seed))
        return {'users': self.users, 'user-update': change}

    def pretrain_views(self, seed: int) -> Dict[str, Tensor]:
        """The users' embeddings as they enter a pre-training round's two views: each with
        the Laplace noise of an upload, from its stream of ``seed`` (``views``
        ``[n, 2, d]``)."""
        user = self._user_vectors()
        offsets = view_offsets(local_training(self.config, self.num_items).upload, user,
                               self._streams(seed))
        return {'users': self.users, 'views': (user + offsets).transpose(0, 1).contiguous()}

    def pretrain_step(self, grad: Tensor, selected: Tensor) -> None:
        """One Adam step of the users' embeddings on the server's gradient ``[n, d]``;
        the users not ``selected`` this round keep their embedding (their moments move)."""
        user = self._user_vectors()
        param = torch.nn.Parameter(user.clone())
        optimizer = torch.optim.Adam([param], lr=self.config.pretrain_lr)
        if self.adam is not None:
            optimizer.state[param] = dict(self.adam)
        param.grad = grad.to(param.dtype)
        optimizer.step()
        self.adam = {k: v.clone() for k, v in optimizer.state[param].items()}
        self.private[DotProductHead.user_vector] = torch.where(selected.unsqueeze(1),
                                                               param.detach(), user)

    def train_round(self, items: Tensor, users: Tensor, round_seed: int,
                    context: Optional[Dict[str, Tensor]] = None) -> Dict[str, Tensor]:
        """Trains ``users`` (population ids, held here) for one round from ``items`` (with a
        graph model's context of those users, ``{'user': [B, d], 'item': [I, d]}``); keeps
        their new private state and returns the upload: ``row-user``, ``row-item``,
        ``update`` (rows), ``users``, ``num-samples``, ``loss`` and, for a graph model,
        ``user-update`` (per user)."""
        position = torch.searchsorted(self.users, users)
        if not torch.equal(self.users[position.clamp_max(self.users.numel() - 1)], users):
            raise ValueError('the server selected users this device does not hold')
        if context is not None:
            user_context = torch.zeros(self.users.numel(), context['user'].size(1),
                                       dtype=context['user'].dtype)
            user_context[position] = context['user']
            context = {'user': user_context, 'item': context['item']}
        engine = self.engine(items, context=context)
        result = engine.local_round(position, round_seed=round_seed)
        self.private = {k: v.detach().clone() for k, v in
                        engine.model.private_parameters().items()}
        self.personal = engine.personal.state_dict()
        upload = result.upload
        out = {'row-user': self.users[upload.clients[upload.row_owner]],
               'row-item': upload.row_item, 'update': upload.update,
               'users': self.users[upload.clients], 'num-samples': result.num_samples,
               'loss': result.loss}
        if self.is_graph:
            out['user-update'] = self._upload_users(position, engine.last_generators)
        return out

    @torch.no_grad()
    def evaluate(self, items: Optional[Tensor], broadcast: Optional[Tensor] = None,
                 context: Optional[Dict[str, Tensor]] = None,
                 clusters: Optional[Dict[str, Tensor]] = None) -> Dict[str, float]:
        """Sampled-protocol HR@10 and NDCG@10 of every user here, each scored with its own
        model as the in-process engine scores it: over the global table ``items``, its
        fine-tuned rows over ``broadcast``, and for a graph model its context and the
        levels (``clusters``: ``{'assignment': [n], 'tables': [k, I, d]}``); a model that
        scores with its fine-tuned rows alone is sent no global table. Sums over the users,
        with ``num-users``."""
        engine = self.engine(broadcast if items is None else items, broadcast, context)
        scorer = engine
        if self.is_graph:
            config = self.config
            empty = CollaborativeGraph(torch.empty(2, 0, dtype=torch.long),
                                       self.users.numel(), self.num_items)
            scorer = GraphFederatedEngine(engine, FederatedGNN(config.num_layers), empty,
                                          config.level_weights, config.num_clusters)
            if clusters is not None:
                scorer.assignment = clusters['assignment']
                scorer.cluster_tables = clusters['tables']
        local = torch.arange(self.users.numel())
        out = {'num-users': self.users.numel()}
        for name, candidates in self.candidates.items():
            scores = scorer.scores(local, candidates)
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


def _tensor(content: RecordDict, record: str) -> Tensor:
    """The tensor a message carries as the only array of ``record``."""
    (value,) = from_record(content[record]).values()
    return value


def _optional(content: RecordDict, record: str, name: Optional[str] = None):
    """The tensors of ``record`` (only ``name`` if given), ``None`` if the message has none."""
    if record not in content.array_records:
        return None
    tensors = from_record(content[record])
    return tensors[name] if name is not None else tensors


def make_client_app(config: Optional[TrainConfig] = None) -> ClientApp:
    """The ``ClientApp``. Its configuration is the run configuration's (``context.run_config``)
    over ``config`` (default: :class:`TrainConfig`'s defaults).

    Messages it answers:

    * ``query`` ``enroll`` -- loads the node's users and answers their ids;
    * ``query`` ``init`` -- stores the users' initial private parameters (graph models:
      answers the enrollment upload, :meth:`Device.enroll`);
    * ``query`` ``pretrain-views``, ``pretrain-step``, ``upload-users`` -- PerFedRec++'s
      contrastive pre-training on the devices' side;
    * ``train`` -- trains the selected users from the sent item table (and context), uploads
      row updates (and user-embedding changes);
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
            enrollment = device.enroll(from_record(message.content['private']),
                                       int(message.content['config']['enroll-seed']))
            reply = RecordDict({'enrollment': to_record(enrollment)})
        elif step == 'pretrain-views':
            views = device.pretrain_views(int(message.content['config']['seed']))
            reply = RecordDict({'views': to_record(views)})
        elif step == 'pretrain-step':
            step_content = from_record(message.content['gradient'])
            device.pretrain_step(step_content['gradient'], step_content['selected'])
            reply = RecordDict({'meta': ConfigRecord({'stepped': True})})
        elif step == 'upload-users':
            change = device.upload_user_change(int(message.content['config']['seed']))
            reply = RecordDict({'users': to_record(change)})
        else:
            raise ValueError(f'unknown query step {step!r}')
        device.to_state(context.state)
        return Message(content=reply, reply_to=message)

    @app.train()
    def train(message: Message, context: Context) -> Message:
        device = _device(configured(context), context)
        content = message.content
        upload = device.train_round(_tensor(content, 'items'), _tensor(content, 'selected'),
                                    int(content['config']['round-seed']),
                                    _optional(content, 'context'))
        device.to_state(context.state)
        return Message(content=RecordDict({'upload': to_record(upload)}), reply_to=message)

    @app.evaluate()
    def evaluate(message: Message, context: Context) -> Message:
        device = _device(configured(context), context)
        content = message.content
        metrics = device.evaluate(_optional(content, 'items', 'items'),
                                  _optional(content, 'broadcast', 'items'),
                                  _optional(content, 'context'), _optional(content, 'clusters'))
        return Message(content=RecordDict({'metrics': MetricRecord(metrics)}),
                       reply_to=message)

    return app
