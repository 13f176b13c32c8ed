"""A deployment: the server half of every two-sided step, with the clients on devices behind
a :class:`Transport` (Flower's, :mod:`fedgraph.flower.server`, or :class:`LocalTransport`
in one process); :class:`Deployment` is the :class:`~fedgraph.server.loop.Federation` that
the one round loop (:class:`~fedgraph.server.loop.Server`) drives.

1. **enrollment** -- every device answers the ids of the users it holds; the server draws the
   initial model from the run's seed exactly as the in-process engine does (the algorithm's
   ``build_model``), keeps the shared parameters and sends each device its users' initial
   private parameters, which never come back; the algorithm's
   :meth:`~fedgraph.algorithms.base.Algorithm.extend_remote` builds what it needs from the
   enrollment uploads (a graph model: its collaborative graph);
2. **pre-training** -- the engine's :meth:`~fedgraph.federated.engine.RoundEngine.pretrain`
   with the clients behind the transport;
3. **rounds** -- :meth:`Deployment.configure_round` selects users (the selector and generator of
   the in-process run), draws the round seed of their streams and builds a payload for each
   device holding one; :meth:`Deployment.aggregate_round` aggregates the uploads of the users
   that answered with :meth:`~fedgraph.federated.engine.FederatedEngine.aggregate`, the
   in-process engine's server half, then the engine's ``after_aggregate``;
4. **evaluation** -- every device scores its users with their own models and answers sums.

A device that does not answer is left out of that round; ``metrics.json`` has the in-process
format plus what the messages carried.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple

import torch
from torch import Tensor

from fedgraph.config import TrainConfig
from fedgraph.data.partition import ClientPartition
from fedgraph.federated.engine import FederatedEngine
from fedgraph.federated.messages import (EVALUATED, ClientRound, Payload, RoundStats, RowUpload,
                                         TrainRequest, grouped)
from fedgraph.federated.node import Node
from fedgraph.federated.streams import ClientStreams, draw_round_seed
from fedgraph.federated.trust import (accept_evaluations, accept_train_replies, restrict_reply,
                                      screen)
from fedgraph.federated.secure import SecureAggregation
from fedgraph.privacy.secure_sum import SecureSum, secure_sum
from fedgraph.server.loop import Federation, Server

log = logging.getLogger(__name__)

#: Bytes of a coordinate of a node's answer under secure aggregation (int64; float64 on
#: Flower, before SecAgg+ masks it).
BYTES_PER_COORDINATE = 8


def payload_bytes(payload: Mapping[str, object]) -> int:
    """Bytes of the tensors of a payload."""
    return sum(value.numel() * value.element_size() for value in payload.values()
               if isinstance(value, Tensor))


class Transport:
    """Carries payloads to devices and their answers back. ``nodes`` maps each device to the
    users it holds (known after enrollment)."""

    def __init__(self):
        self.nodes: Dict[int, Tensor] = {}

    def node_ids(self) -> List[int]:
        """The devices that can be reached now."""
        raise NotImplementedError

    def send(self, step: str, payloads: Mapping[int, Payload]) -> Dict[int, Payload]:
        """Sends ``payloads[node]`` as step ``step``; the answers of the devices that
        answered, by node."""
        raise NotImplementedError

    def secure_sum(self, step: str, payloads: Mapping[int, Payload],
                   secure: SecureAggregation, round_seed: int) -> SecureSum:
        """Sends ``payloads[node]`` as step ``step``; the devices' answers (``secure-sum``,
        int64, encoded by ``secure``) summed by secure aggregation (``secure.protocol``), so
        that the server receives only their sum: the sum (``None``: too few answered) and
        the nodes it covers."""
        raise NotImplementedError


class LocalTransport(Transport):
    """Devices in this process, called directly (for tests and notebooks)."""

    def __init__(self, devices: Mapping[int, Node]):
        super().__init__()
        self.devices = dict(devices)

    def node_ids(self) -> List[int]:
        return sorted(self.devices)

    def send(self, step: str, payloads: Mapping[int, Payload]) -> Dict[int, Payload]:
        return {node: self.devices[node].handle(step, dict(payload))
                for node, payload in payloads.items()}

    def secure_sum(self, step: str, payloads: Mapping[int, Payload],
                   secure: SecureAggregation, round_seed: int) -> SecureSum:
        """The devices' answers through the in-process simulation of SecAgg+
        (:func:`~fedgraph.privacy.secure_sum.secure_sum`), each device a party."""
        answers = ((node, self.devices[node].handle(step, dict(payload))['secure-sum'])
                   for node, payload in payloads.items())
        return secure_sum(secure.protocol, answers, list(payloads), round_seed,
                          users={node: payload['users'].numel()
                                 for node, payload in payloads.items()})


class ScreenedTransport(Transport):
    """``transport`` whose replies outside the rounds (the enrollment uploads of ``init``,
    pre-training) pass the server's checks: a reply without the tensors its step's reply
    carries (``expected``, :attr:`NodeHooks.replies
    <fedgraph.federated.node.NodeHooks.replies>`) is dropped as malformed, the others are
    cut to what :func:`~fedgraph.federated.trust.restrict_reply` accepts from the users each
    node enrolled with. What it drops is counted by step and reason in :attr:`dropped`.
    Round uploads are checked by :meth:`Deployment.aggregate_round`."""

    #: Steps whose replies are checked elsewhere or carry no user data.
    UNCHECKED = ('enroll', 'train', 'evaluate')

    def __init__(self, transport: Transport, num_items: int, dim: int,
                 expected: Mapping[str, Tuple[str, ...]]):
        super().__init__()
        self.transport = transport
        self.nodes = transport.nodes
        self.num_items = num_items
        self.dim = dim
        self.expected = expected
        self.dropped: Dict[str, Dict[str, int]] = {}

    def node_ids(self) -> List[int]:
        return self.transport.node_ids()

    def send(self, step: str, payloads: Mapping[int, Payload]) -> Dict[int, Payload]:
        replies = self.transport.send(step, payloads)
        if step in self.UNCHECKED:
            return replies
        kept = {}
        for node, reply in replies.items():
            if all(isinstance(reply.get(key), Tensor) for key in self.expected.get(step, ())):
                reply, dropped = restrict_reply(reply, self.nodes[node], self.num_items,
                                                self.dim)
            else:
                reply, dropped = None, {'malformed': 1}
            counts = self.dropped.setdefault(step, {})
            for reason, count in dropped.items():
                counts[reason] = counts.get(reason, 0) + count
            if reply is not None:
                kept[node] = reply
        if self.dropped.get(step):
            log.warning('%s: dropped %s', step, self.dropped[step])
        else:
            self.dropped.pop(step, None)
        return kept


class Deployment(Federation):
    """The server's halves of a deployment over ``transport`` (see the module docstring).

    Args:
        config: the run's configuration (``client_streams`` is implied).
        transport: what carries the messages to the devices.
    """

    def __init__(self, config: TrainConfig, transport: Transport):
        algorithm = config.build_algorithm()
        if not algorithm.federated:
            raise ValueError(f'{config.algorithm} is centralized: nothing to federate')
        if config.protocol != 'sampled':
            raise ValueError('deployments evaluate on devices under the sampled protocol only')
        if config.private and config.dp_noise_at != 'distributed':
            raise ValueError("a deployment's server never holds the clients' uploads to clip "
                             "and noise: user-level DP runs on devices, distributed "
                             "(--secure-aggregation --dp-noise-at distributed)")
        if config.dp_clip_quantile is not None:
            raise ValueError('adaptive clipping runs in-process only: a deployment\'s devices '
                             'clip at a fixed bound')
        if config.secure_dropout:
            raise ValueError('secure_dropout simulates dropouts in one process; a deployment\'s '
                             'dropouts are its nodes\' own')
        self.config = dataclasses.replace(config, client_streams=True)
        self.transport = transport
        self.algorithm = algorithm
        self.generator = torch.Generator().manual_seed(config.seed)
        self.node_users: Dict[int, Tensor] = {}
        self.federated: Optional[FederatedEngine] = None
        self.engine = None
        self.screened: Optional[ScreenedTransport] = None
        self._sent: Dict[int, Payload] = {}
        self._record: Dict[str, object] = {}

    # ------------------------------------------------------------------ enrollment
    def enroll(self, transport: Transport, nodes: List[int]) -> None:
        """Learns which device holds which users, hands out the initial model and lets the
        algorithm build its server state from the enrollment uploads."""
        replies = transport.send('enroll', {node: {} for node in nodes})
        if not replies:
            raise RuntimeError(f'none of the {len(nodes)} nodes answered the enrollment')
        self.node_users = {node: reply['users'] for node, reply in sorted(replies.items())}
        num_items = {int(reply['num-items']) for reply in replies.values()}
        if len(num_items) != 1:
            raise ValueError(f'nodes disagree on the number of items: {sorted(num_items)}')
        users = torch.sort(torch.cat(list(self.node_users.values()))).values
        if not torch.equal(users, torch.arange(users.numel())):
            raise ValueError('the nodes must hold users 0..U-1, each exactly once '
                             f'(got {users.numel()} ids up to {int(users.max())})')
        num_users, num_items = users.numel(), num_items.pop()
        algorithm = self.algorithm
        model = algorithm.build_model(num_users, num_items, self.generator)
        nothing = ClientPartition(torch.zeros(num_users + 1, dtype=torch.long),
                                  torch.empty(0, dtype=torch.long), num_items)
        selector = algorithm.build_selector(num_users)
        self.federated = algorithm.vectorized_engine(
            model, nothing, selector, None, ClientStreams(), algorithm.server_pipeline(num_users),
            algorithm.secure_aggregation(num_users, model.shared_numel(), selector.count))
        transport.nodes = self.node_users
        transport = self.screened = ScreenedTransport(transport, num_items, model.dim,
                                                      algorithm.node_hooks().replies)

        def enroll_devices(seed: int) -> List[Payload]:
            private = {name: value.detach() for name, value in model.private_parameters().items()}
            payloads = {node: {'enroll-seed': seed, 'items': model.item.detach(),
                               **grouped('private', {name: value[held]
                                                     for name, value in private.items()})}
                        for node, held in self.node_users.items()}
            answers = transport.send('init', payloads)
            self.federated.count_participation(torch.cat([self.node_users[n] for n in answers]))
            return list(answers.values())

        self.engine = algorithm.extend_remote(self.federated, self.generator, enroll_devices)
        log.info('enrolled %d users on %d nodes, %d items', num_users, len(self.node_users),
                 num_items)

    def run(self, out: Optional[Path] = None, progress: bool = True) -> Dict:
        """The whole run: the one round loop (:class:`~fedgraph.server.loop.Server`) over
        this deployment; writes ``out`` (``config.json``, ``metrics.json``) and returns the
        metrics."""
        metrics = Server(self.config, self, out, progress).run()
        log.info('%s: %d users on %d nodes', self.config.algorithm,
                 self.federated.model.num_clients, len(self.node_users))
        return metrics

    def start(self, progress: bool) -> Optional[Dict[str, object]]:
        """Enrollment, then the algorithm's pre-training over messages, if it has one, over
        the transport of the enrollment with its checks."""
        self.enroll(self.transport, self.transport.node_ids())
        return self.engine.pretrain(self.generator, progress, transport=self.screened)

    def train_round(self, round_index: int) -> Tuple[RoundStats, Dict[str, object]]:
        payloads = self.configure_round()
        secure = self.federated.secure
        if secure is not None:
            held = self.transport.secure_sum('train', payloads, secure,
                                             draw_round_seed(self.generator))
            return self.aggregate_secure_round(round_index, held), self._record
        stats = self.aggregate_round(round_index, self.transport.send('train', payloads))
        return stats, self._record

    def evaluate(self, round_index: int) -> Dict[str, object]:
        return self.aggregate_evaluate(
            self.transport.send('evaluate', self.configure_evaluate(round_index)))

    # ------------------------------------------------------------------ rounds
    def configure_round(self) -> Dict[int, Payload]:
        """Selects the round's users, draws the seed of their streams and builds a payload
        for each device holding one: the shared parameters, its selected ``users`` and what
        the engine adds (a graph model: their context)."""
        model = self.federated.model
        selected = self.federated.selector(self.generator)
        round_seed = draw_round_seed(self.generator)
        self.engine.before_round(selected)
        self._base = model.item.detach().clone()
        self._selected = selected.numel()
        dense = {name: value.detach() for name, value in model.shared_dense().items()}
        payloads = {}
        for node, held in self.node_users.items():
            mine = torch.sort(held[torch.isin(held, selected)]).values
            if mine.numel():
                payloads[node] = TrainRequest(self._base, mine, round_seed, dense,
                                              self.engine.round_payload(mine)).to_payload()
        self._sent = payloads
        return payloads

    def aggregate_round(self, round_index: int, replies: Mapping[int, Payload]) -> RoundStats:
        """The uploads of the users that answered, in user order whatever the order the
        replies arrived in (the aggregate sums rows in this order, as in-process), into the
        shared parameters, after the server's checks
        (:func:`~fedgraph.federated.trust.accept_train_replies`, then
        :func:`~fedgraph.federated.trust.screen`); opens the round's ``metrics.json`` record,
        which counts the dropped uploads by reason: the entries a deployment's record has
        beside the in-process record."""
        if not replies:
            raise RuntimeError(f'no node answered in round {round_index}')
        model = self.federated.model
        uploads, dropped = accept_train_replies(
            replies, {node: payload['users'] for node, payload in self._sent.items()},
            model.num_clients, self._base.size(1),
            {name: tuple(value.shape) for name, value in model.shared_dense().items()})
        dtype = self._base.dtype

        def joined(field: str, like: Tensor) -> Tensor:
            parts = [getattr(upload, field) for upload in uploads]
            return torch.cat(parts) if parts else like.new_empty((0, *like.shape[1:]))

        def joined_group(field: str, like: Mapping[str, Tensor]) -> Dict[str, Tensor]:
            return {name: torch.cat([getattr(upload, field)[name] for upload in uploads])
                    if uploads else value.new_empty((0, *value.shape[1:]))
                    for name, value in like.items()}

        nothing = torch.empty(0, dtype=torch.long)
        users = joined('users', nothing)
        order = torch.sort(users).indices
        users = users[order]
        row_user = joined('row_user', nothing)
        rows = torch.sort(row_user, stable=True).indices
        dense = {name: value[order].to(dtype) for name, value in joined_group(
            'dense', {name: value.detach().unsqueeze(0)
                      for name, value in model.shared_dense().items()}).items()}
        result = ClientRound(
            RowUpload(users, torch.searchsorted(users, row_user[rows]),
                      joined('row_item', nothing)[rows],
                      joined('update', self._base)[rows].to(dtype), dense),
            joined('num_samples', nothing)[order], joined('loss', self._base[:0, 0])[order])
        extra_like = {key: self._base[:0] for key in (uploads[0].extra if uploads else {})}
        others = {key: value[order] for key, value in joined_group('extra', extra_like).items()}
        result, others, screened = screen(result, self.federated.model.num_items, others,
                                          1 + self.federated.training.num_negatives)
        for reason, count in screened.items():
            dropped[reason] = dropped.get(reason, 0) + count
        stats = self.federated.aggregate(self._base, result, dropped, self.generator)
        if result.upload.clients.numel():
            self.engine.after_aggregate(result, others)
        self._record = {
            'clients_selected': self._selected,
            'nodes_failed': sorted(set(self._sent) - set(replies)),
            'payload_upload_bytes_per_client':
                sum(payload_bytes(reply) for reply in replies.values()) / max(1, users.numel()),
            'payload_download_bytes_per_node':
                sum(payload_bytes(self._sent[node]) for node in replies) / len(replies)}
        return stats

    def aggregate_secure_round(self, round_index: int, held: SecureSum) -> RoundStats:
        """Under secure aggregation: the sum of the nodes that answered, decoded over the
        users they trained (the server knows which nodes took part, not what each sent),
        into the shared parameters (:meth:`FederatedEngine.apply_secure`); opens the round's
        record."""
        if not held.survivors:
            raise RuntimeError(f'no node answered in round {round_index}')
        federated = self.federated
        nodes = held.survivors
        users = torch.sort(torch.cat([self._sent[node]['users'] for node in nodes])).values
        totals = federated.secure.decode(held.total, users.tolist(), federated.model.num_items,
                                         federated.model.dim, federated.dense_shapes, held)
        stats = federated.apply_secure(self._base, totals, self.generator)
        if totals.rows is not None:
            nothing = torch.empty(0, dtype=torch.long)
            self.engine.after_aggregate(ClientRound(
                RowUpload(users, nothing, nothing, self._base[:0]), nothing,
                self._base[:0, 0]), {})
        answer = federated.secure.vector_size(federated.model.num_items, federated.model.dim,
                                              federated.dense_shapes) * BYTES_PER_COORDINATE
        self._record = {
            'clients_selected': self._selected,
            'nodes_failed': sorted(set(self._sent) - set(nodes)),
            'payload_upload_bytes_per_client': answer * len(nodes) / max(1, users.numel()),
            'payload_download_bytes_per_node':
                sum(payload_bytes(self._sent[node]) for node in nodes) / max(1, len(nodes))}
        return stats

    def configure_evaluate(self, round_index: int) -> Dict[int, Payload]:
        """In evaluation rounds, a payload to every device with what the in-process engine
        scores its users with."""
        if not self.config.evaluates_after(round_index + 1):
            return {}
        self._sent = {node: self.engine.evaluation_payload(held)
                      for node, held in self.node_users.items()}
        return self._sent

    def aggregate_evaluate(self, replies: Mapping[int, Payload]) -> Dict[str, object]:
        """Mean HR@10 and NDCG@10 over the users of the devices whose replies pass the
        server's checks (:func:`~fedgraph.federated.trust.accept_evaluations`; the others
        are counted in ``evaluations_dropped``), and the bytes the evaluation's messages
        carried (nothing when no device answered)."""
        if not replies:
            return {}
        accepted, dropped = accept_evaluations(replies, self.node_users)
        record: Dict[str, object] = {}
        if accepted:
            total = sum(reply.num_users for reply in accepted.values())
            record.update({split: {metric: sum(reply.sums[split][metric]
                                               for reply in accepted.values()) / total
                                   for metric in metrics}
                           for split, metrics in EVALUATED.items()})
        if dropped:
            record['evaluations_dropped'] = dropped
        record['payload_evaluate_download_bytes_per_node'] = (
            sum(payload_bytes(self._sent[node]) for node in replies) / len(replies))
        return record

    def metrics(self) -> Dict[str, object]:
        """With ``uploads_dropped_outside_rounds``, by step and reason, when the server
        dropped any enrollment or pre-training upload."""
        if self.screened is not None and self.screened.dropped:
            return {'uploads_dropped_outside_rounds': self.screened.dropped}
        return {}
