"""The server side on Flower: the ``ServerApp``, and :class:`RowFedAvg`, a Flower ``Strategy``
that carries the messages of :class:`~fedgraph.federated.server.Server`, the server half of
every step (enrollment, pre-training, rounds, evaluation).

Flower's ``Strategy.start`` loop drives the rounds: ``configure_train`` sends each node the
payload :meth:`Server.configure_round <fedgraph.federated.server.Server.configure_round>`
builds, ``aggregate_train`` hands the replies to :meth:`Server.aggregate_round
<fedgraph.federated.server.Server.aggregate_round>`, and likewise for evaluation; the global
arrays the loop passes around are the item table. Enrollment and pre-training run before it
through :class:`FlowerTransport`. A node that does not answer within ``timeout`` seconds
(crashed, disconnected) is left out of that round: the round completes with the users that
answered, and the node is asked again in later rounds. Replies are collected through a
:class:`PollingGrid`, which looks for them every ``poll_interval`` seconds.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy

from fedgraph.config import TrainConfig
from fedgraph.federated.device import Payload
from fedgraph.federated.server import Server, Transport
from fedgraph.flower.records import (config_to_run_config, load, run_config_to_config,
                                     to_content, to_record)

log = logging.getLogger(__name__)

POLL_INTERVAL = 0.1


class PollingGrid(Grid):
    """A ``Grid`` that waits for replies by asking ``grid`` for them every ``interval``
    seconds; everything else is ``grid``'s.

    Flower's deployment grid asks every 3 s, so a step whose replies are all in after 3.1 s
    returns after 6 s; its simulation grid asks every 0.1 s.
    """

    def __init__(self, grid: Grid, interval: float = POLL_INTERVAL):
        if not interval > 0:
            raise ValueError(f'the poll interval must be positive, got {interval}')
        self.grid = grid
        self.interval = interval

    def set_run(self, run) -> None:
        self.grid.set_run(run)

    @property
    def run(self):
        return self.grid.run

    def create_message(self, *args, **kwargs) -> Message:
        return self.grid.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def get_nodes(self):
        return self.grid.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: Optional[float] = None) -> List[Message]:
        """Pushes ``messages`` and returns the replies that arrive within ``timeout``
        seconds (``None``: all of them, however long they take)."""
        waiting = set(self.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: List[Message] = []
        while waiting:
            pulled = list(self.pull_messages(waiting))
            replies.extend(pulled)
            waiting.difference_update(reply.metadata.reply_to_message_id for reply in pulled)
            left = None if deadline is None else deadline - time.monotonic()
            if not waiting or (left is not None and left <= 0):
                break
            time.sleep(self.interval if left is None else min(self.interval, left))
        return replies


class FlowerTransport(Transport):
    """Payloads as Flower messages through a ``Grid``.

    Args:
        grid: the ServerApp's grid.
        timeout: seconds to wait for replies; later replies are dropped.
        min_nodes: nodes to wait for before the first step.
    """

    def __init__(self, grid: Grid, timeout: float, min_nodes: int = 1):
        super().__init__()
        self.grid = grid
        self.timeout = timeout
        self.min_nodes = min_nodes

    def node_ids(self) -> List[int]:
        deadline = time.monotonic() + self.timeout
        while True:
            nodes = sorted(self.grid.get_node_ids())
            if len(nodes) >= self.min_nodes:
                return nodes
            if time.monotonic() > deadline:
                raise TimeoutError(f'{len(nodes)} of {self.min_nodes} nodes connected')
            time.sleep(0.5)

    def messages(self, payloads: Mapping[int, Payload], message_type: str,
                 group: str) -> List[Message]:
        """A message of ``payloads[node]`` to each node the SuperLink sees online."""
        online = set(self.grid.get_node_ids())
        return [Message(content=to_content(payload), dst_node_id=node,
                        message_type=message_type, group_id=group)
                for node, payload in payloads.items() if node in online]

    @staticmethod
    def answered(replies: Iterable[Message]) -> Dict[int, Payload]:
        """The payloads of the replies without error that decode, by node (a node whose
        reply does not is left out of the step, as if it had not answered)."""
        answered = {}
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error():
                log.warning('node %d failed: %s', node, reply.error.reason)
                continue
            try:
                answered[node] = load(reply.content)
            except Exception as error:  # whatever a hostile node's records make load raise
                log.warning('node %d sent a reply that does not decode (%s: %s); left out',
                            node, type(error).__name__, error)
        return answered

    def send(self, step: str, payloads: Mapping[int, Payload]) -> Dict[int, Payload]:
        messages = self.messages({node: {**payload, 'step': step}
                                  for node, payload in payloads.items()},
                                 MessageType.QUERY, step)
        return self.answered(self.grid.send_and_receive(messages, timeout=self.timeout))


class RowFedAvg(Strategy):
    """Row-wise FedAvg of a federated recommender as a Flower ``Strategy``: the messages of a
    :class:`~fedgraph.federated.server.Server`.

    Args:
        config: the run's configuration (``client_streams`` is implied).
        timeout: seconds to wait for a round's replies; later replies are dropped.
        min_nodes: nodes to wait for before enrolling.
        progress: log a line per round.
        poll_interval: seconds between two looks for a step's replies (:class:`PollingGrid`).
    """

    def __init__(self, config: TrainConfig, timeout: float = 120.0, min_nodes: int = 1,
                 progress: bool = True, poll_interval: float = POLL_INTERVAL):
        if config.patience:
            raise ValueError('Flower runs the rounds it is given: early stopping (patience) '
                             'runs in-process and with fedgraph.federated.server.Server.run')
        self.server = Server(config, progress)
        self.config = self.server.config
        self.timeout = timeout
        self.min_nodes = min_nodes
        self.poll_interval = poll_interval
        self.transport: Optional[FlowerTransport] = None

    def _items(self) -> ArrayRecord:
        return to_record({'items': self.server.federated.model.item})

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        return self.transport.messages(self.server.configure_round(), MessageType.TRAIN,
                                       str(server_round))

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> Tuple[Optional[ArrayRecord], Optional[MetricRecord]]:
        stats = self.server.aggregate_round(server_round - 1, self.transport.answered(replies))
        return self._items(), MetricRecord({'train_loss': stats.loss,
                                            'clients': stats.num_clients})

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.transport.messages(self.server.configure_evaluate(server_round - 1),
                                       MessageType.EVALUATE, f'eval-{server_round}')

    def aggregate_evaluate(self, server_round: int,
                           replies: Iterable[Message]) -> Optional[MetricRecord]:
        record = self.server.aggregate_evaluate(self.transport.answered(replies))
        if 'val' not in record:
            return None
        return MetricRecord({f'{split}-{metric}': value for split in ('val', 'test')
                             for metric, value in record[split].items()})

    def summary(self) -> None:
        log.info('%s: row-wise FedAvg over %d users on %d nodes', self.config.algorithm,
                 self.server.federated.model.num_clients, len(self.server.node_users))

    def run(self, grid: Grid, out: Optional[Path] = None) -> Dict:
        """Enrollment, pre-training and ``config.rounds`` rounds through
        :meth:`Strategy.start`; writes ``out/config.json`` and ``out/metrics.json``."""
        grid = PollingGrid(grid, self.poll_interval)
        self.transport = FlowerTransport(grid, self.timeout, self.min_nodes)
        self.server.start(self.transport, out)
        self.start(grid, self._items(), self.config.rounds, timeout=self.timeout)
        return self.server.metrics()


def make_server_app(config: Optional[TrainConfig] = None, out: Optional[Path] = None,
                    timeout: float = 120.0, min_nodes: int = 1,
                    progress: bool = True) -> ServerApp:
    """The ``ServerApp``. Its configuration is the run configuration's over ``config``; the
    run configuration may also set ``out`` (folder of ``metrics.json``), ``timeout`` and
    ``min-nodes``."""
    app = ServerApp()
    defaults = config_to_run_config(config) if config is not None else {}

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_config = {**defaults, **context.run_config}
        folder = run_config.get('out', out)
        strategy = RowFedAvg(run_config_to_config(run_config),
                             timeout=float(run_config.get('timeout', timeout)),
                             min_nodes=int(run_config.get('min-nodes', min_nodes)),
                             progress=progress)
        strategy.run(grid, Path(folder) if folder else None)

    return app
