"""A deployment's node: the users one node holds (a Flower SuperNode; a phone holding one
user), their state on it, and the client half of every two-sided step, whatever carries the
messages. (A *device* in fedgraph is where one user's exported model runs,
:class:`~fedgraph.export.DeviceModel`; ``config.device`` is a PyTorch device.)

A :class:`Node` keeps, between rounds, its users' training
items, the items they never take as negatives, their evaluation candidates, their private
parameters and their fine-tuned item rows; its algorithm's :class:`NodeHooks` may keep
more (a graph model's uploaded user embeddings, its pre-training Adam state). A message in
either direction is a :data:`~fedgraph.federated.messages.Payload`: named tensors and
scalars, a name ``group/key`` for a tensor of a group; a round's are typed
(:mod:`fedgraph.federated.messages`). :meth:`Node.handle` answers one step:

* ``enroll`` -- the ids of the users it holds and the number of items;
* ``init`` -- stores the users' initial private parameters (``private/*``); the hooks
  keep what they need of the initial item table (``items``) and answer what the users
  upload when they enroll (:meth:`NodeHooks.enroll`);
* ``train`` -- trains the selected ``users`` for one round from the sent item table
  (``items``, ``dense/*``) with :meth:`~fedgraph.federated.engine.FederatedEngine.local_round`,
  the client half of the in-process engine's round, and answers the upload;
* ``evaluate`` -- sums of its users' HR@10 and NDCG@10, each scored with its own model;
* any other step is the hooks' (:meth:`NodeHooks.step`).

Its users draw from their own random streams (:mod:`fedgraph.federated.streams`), keyed by
their ids in the whole population, so that a deployment makes the draws of the in-process
engine run with ``client_streams=True``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple

import torch
from torch import Tensor

from fedgraph.data.partition import ClientPartition
from fedgraph.data.split import SampledSplit
from fedgraph.federated.engine import FederatedEngine
from fedgraph.federated.evaluation import sampled_evaluation
from fedgraph.federated.messages import (ClientRound, EvaluationSums, Payload, TrainReply,
                                         TrainRequest, group, grouped)
from fedgraph.federated.selection import ClientSelector
from fedgraph.federated.streams import ClientStreams

class NodeHooks:
    """The node-side halves of an algorithm's steps beyond local training; the base class
    has none (PFedRec, FedMF, FedNCF). State they keep goes into ``node.extra``."""

    #: The tensors a reply to each of its steps carries (``init``: the enrollment upload);
    #: the server drops a reply without them as malformed.
    replies: Dict[str, Tuple[str, ...]] = {}

    def enroll(self, node: 'Node', payload: Payload) -> Payload:
        """What the users upload when they enroll, drawn from their streams of the seed
        ``enroll-seed``; ``payload`` also holds the initial shared item table (``items``)."""
        return {}

    def configure(self, node: 'Node', engine: FederatedEngine, payload: Payload,
                  position: Tensor) -> None:
        """Sets up ``engine`` from what the server sent for the users at ``position``."""

    def after_train(self, node: 'Node', position: Tensor, result: ClientRound) -> Payload:
        """What the users at ``position`` upload after their local round besides rows."""
        return {}

    def scorer(self, node: 'Node', engine: FederatedEngine, payload: Payload):
        """What scores the users (``scores(users, items)``): the engine by default."""
        return engine

    def step(self, node: 'Node', step: str, payload: Payload) -> Payload:
        """Any other step."""
        raise ValueError(f'unknown step {step!r}')


@dataclass
class Node:
    """The users of one device and their on-device state.

    Attributes:
        config: the run's configuration.
        users: ``[n]`` the users' ids in the whole population.
        train: their training items (row ``i``: user ``users[i]``).
        known: the items each never draws as a negative.
        candidates: ``{'val': [n, 1 + k], 'test': [n, 1 + k]}`` held-out item, then negatives.
        private: ``{name: [n, ...]}`` the private parameters of the model's head.
        personal: the fine-tuned item rows (``PersonalItemRows`` state, local user indices).
        extra: what the algorithm's :class:`NodeHooks` keep.
        population: the number of users of the whole population (the run's privacy
            mechanism is calibrated to it).
    """
    config: object
    users: Tensor
    train: ClientPartition
    known: ClientPartition
    candidates: Dict[str, Tensor]
    private: Optional[Dict[str, Tensor]] = None
    personal: Optional[Dict[str, Tensor]] = None
    extra: Dict[str, Tensor] = field(default_factory=dict)
    population: int = 0

    def __post_init__(self):
        self.algorithm = self.config.build_algorithm()
        self.hooks: NodeHooks = self.algorithm.node_hooks()

    @classmethod
    def from_split(cls, config, split: SampledSplit, train: ClientPartition,
                   known: ClientPartition, partition_id: int, num_partitions: int) -> 'Node':
        """The users ``partition_id::num_partitions`` of a sampled-protocol split, whose
        training and known items are ``train`` and ``known``."""
        num_users = split.val_item.numel()
        if not 0 <= partition_id < num_partitions <= num_users:
            raise ValueError(f'partition {partition_id} of {num_partitions} does not exist '
                             f'for {num_users} users')
        users = torch.arange(partition_id, num_users, num_partitions)
        candidates = {name: rows[users] for name, rows in split.candidates().items()}
        return cls(config, users, train.select(users), known.select(users), candidates,
                   population=num_users)

    @property
    def num_items(self) -> int:
        return self.train.num_items

    # ------------------------------------------------------------------ state
    def to_state(self) -> Payload:
        """Everything the node keeps, as a payload (Flower: the node's ``context.state``)."""
        state: Payload = {'users': self.users, 'train-ptr': self.train.ptr,
                          'train-col': self.train.col, 'known-ptr': self.known.ptr,
                          'known-col': self.known.col, 'num-items': self.num_items,
                          'population': self.population,
                          **grouped('candidates', self.candidates)}
        state.update(grouped('private', self.private or {}))
        state.update(grouped('personal', self.personal or {}))
        state.update(grouped('extra', self.extra))
        return state

    @classmethod
    def from_state(cls, config, state: Payload) -> 'Node':
        num_items = int(state['num-items'])
        return cls(config, state['users'],
                   ClientPartition(state['train-ptr'], state['train-col'], num_items),
                   ClientPartition(state['known-ptr'], state['known-col'], num_items),
                   group(state, 'candidates'), group(state, 'private') or None,
                   group(state, 'personal') or None, group(state, 'extra'),
                   int(state.get('population', 0)))

    # ------------------------------------------------------------------ steps
    def handle(self, step: str, payload: Payload) -> Payload:
        """The device's answer to the step ``step`` (see the module docstring)."""
        if step == 'enroll':
            return {'users': self.users, 'num-items': self.num_items}
        if step == 'init':
            self.private = group(payload, 'private')
            return self.hooks.enroll(self, payload)
        if step == 'train':
            return self.train_round(payload)
        if step == 'evaluate':
            return self.evaluate(payload)
        return self.hooks.step(self, step, payload)

    def streams(self, seed: int) -> List[torch.Generator]:
        """Every user's stream of ``seed``."""
        return ClientStreams(self.users).generators(seed, torch.arange(self.users.numel()))

    def engine(self, items: Tensor, dense: Mapping[str, Tensor],
               broadcast: Optional[Tensor] = None) -> FederatedEngine:
        """An engine over this device's users on the global item table ``items`` and dense
        shared parameters ``dense``, with their fine-tuned rows over ``broadcast`` (default:
        ``items``)."""
        if self.private is None:
            raise RuntimeError('the device has no initial model yet (no enrollment)')
        model = self.algorithm.build_model(self.users.numel(), self.num_items,
                                           torch.Generator().manual_seed(0))
        with torch.no_grad():
            model.item.copy_(items)
            for name, tensor in model.private_parameters().items():
                tensor.copy_(self.private[name])
            for name, tensor in model.shared_dense().items():
                tensor.copy_(dense[name])
        engine = self.algorithm.vectorized_engine(model, self.train,
                                                  ClientSelector(self.users.numel()),
                                                  self.known, ClientStreams(self.users))
        engine.broadcast = (items if broadcast is None else broadcast).clone()
        if self.personal:
            engine.personal.load_state_dict(self.personal)
        return engine

    def positions(self, users: Tensor) -> Tensor:
        """Where ``users`` (population ids) sit on this device; an error for users it does
        not hold."""
        position = torch.searchsorted(self.users, users)
        if not torch.equal(self.users[position.clamp_max(self.users.numel() - 1)], users):
            raise ValueError('the server selected users this device does not hold')
        return position

    def train_round(self, payload: Payload) -> Payload:
        """Trains the users of a :class:`~fedgraph.federated.messages.TrainRequest`
        (population ids, held here) for one round from its item table and dense parameters,
        with their streams of its seed; keeps their new private state and answers their
        upload, a :class:`~fedgraph.federated.messages.TrainReply` (with what the hooks
        add)."""
        request = TrainRequest.from_payload(payload)
        position = self.positions(request.users)
        engine = self.engine(request.items, request.dense)
        self.hooks.configure(self, engine, request.extra, position)
        result = engine.local_round(position, round_seed=request.round_seed)
        self.private = {k: v.detach().clone()
                        for k, v in engine.model.private_parameters().items()}
        self.personal = engine.personal.state_dict()
        upload = result.upload
        if self.config.secure_aggregation:
            return self.secure_reply(engine, result)
        return TrainReply(self.users[upload.clients], self.users[upload.clients[upload.row_owner]],
                          upload.row_item, upload.update, result.num_samples, result.loss,
                          upload.dense, self.hooks.after_train(self, position, result)
                          ).to_payload()

    def secure_reply(self, engine: FederatedEngine, result: ClientRound) -> Payload:
        """Under secure aggregation: the sum of the trained users' encoded vectors
        (:class:`~fedgraph.federated.secure.SecureAggregation`, each from its own stream),
        which the transport sums securely with the other nodes' (``secure-sum``), and the
        users it covers. The noise shares are sized from the run's configuration and
        population, never from what the server sends: a server that claimed larger rounds
        would otherwise have the users add less noise."""
        clients = self.algorithm.build_selector(self.population).count
        secure = self.algorithm.secure_aggregation(self.population, engine.model.shared_numel(),
                                                   clients)
        total = torch.zeros(secure.vector_size(self.num_items, engine.model.dim,
                                               engine.dense_shapes), dtype=torch.long)
        for _, vector in secure.client_vectors(result, self.num_items, result.generators):
            total += vector
        return {'users': self.users[result.upload.clients], 'secure-sum': total}

    @torch.no_grad()
    def evaluate(self, payload: Payload) -> Payload:
        """Sampled-protocol HR@10 and NDCG@10 of every user here, each scored with its own
        model as the in-process engine scores it: over the global table ``items`` (and
        ``dense/*``), its fine-tuned rows over ``broadcast``, and what the hooks add (a
        graph model's context and levels); a model that scores with its fine-tuned rows
        alone is sent no global table. Sums over the users
        (:class:`~fedgraph.federated.messages.EvaluationSums`)."""
        broadcast = payload.get('broadcast')
        items = payload.get('items', broadcast)
        engine = self.engine(items, group(payload, 'dense'), broadcast)
        everyone = torch.arange(self.users.numel())
        self.hooks.configure(self, engine, payload, everyone)
        scorer = self.hooks.scorer(self, engine, payload)
        count = self.users.numel()
        return EvaluationSums(count, {
            split: {metric: value * count for metric, value in metrics.items()}
            for split, metrics in sampled_evaluation(scorer.scores, everyone,
                                                     self.candidates).items()}).to_payload()
