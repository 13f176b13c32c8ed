"""The server side on Flower: the ``ServerApp``, which runs fedgraph's one round loop
(:class:`~fedgraph.server.loop.Server`) over a
:class:`~fedgraph.server.deployment.Deployment` whose messages Flower carries
(:class:`FlowerTransport`): Flower is the transport, and every step -- enrollment,
pre-training, rounds, evaluation, early stopping, the run folder -- is the loop's, as
in-process.

A node that does not answer within ``timeout`` seconds (crashed, disconnected) is left out of
that step: the round completes with the users that answered, and the node is asked again in
later rounds. Replies are collected through a :class:`PollingGrid`, which looks for them
every ``poll_interval`` seconds.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional

from flwr.app import Context, Message, MessageType
from flwr.serverapp import Grid, ServerApp

from fedgraph.config import TrainConfig
from fedgraph.federated.messages import Payload
from fedgraph.flower.payloads import config_to_run_config, load, run_config_to_config, to_content
from fedgraph.federated.secure import SecureAggregation
from fedgraph.privacy.secure_sum import SecureSum
from fedgraph.server.deployment import Deployment, Transport

log = logging.getLogger(__name__)

POLL_INTERVAL = 0.1
#: The steps that go as Flower's own message types (the others are queries).
STEP_TYPES = {'train': MessageType.TRAIN, 'evaluate': MessageType.EVALUATE}


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
        self._steps: Dict[str, int] = {}

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
        """Round training and evaluation go as Flower's ``train`` and ``evaluate`` messages
        (a group per step and round), every other step as a ``query`` naming its step."""
        if step in STEP_TYPES:
            self._steps[step] = self._steps.get(step, 0) + 1
            messages = self.messages(payloads, STEP_TYPES[step], f'{step}-{self._steps[step]}')
        else:
            messages = self.messages({node: {**payload, 'step': step}
                                      for node, payload in payloads.items()},
                                     MessageType.QUERY, step)
        return self.answered(self.grid.send_and_receive(messages, timeout=self.timeout))

    def secure_sum(self, step: str, payloads: Mapping[int, Payload],
                   secure: SecureAggregation, round_seed: int) -> SecureSum:
        """The step through Flower's SecAgg+ (:func:`~fedgraph.flower.secure.secure_round`)
        with the nodes the SuperLink sees online; the ServerApp receives only the sum."""
        from fedgraph.flower.secure import secure_round

        online = set(self.grid.get_node_ids())
        payloads = {node: payload for node, payload in payloads.items() if node in online}
        self._steps[step] = self._steps.get(step, 0) + 1
        bound = secure.sum_bound(max(int(p['users'].numel()) for p in payloads.values()))
        return secure_round(self.grid, payloads, secure.protocol, bound, self._steps[step],
                            self.timeout)


def run_on_grid(config: TrainConfig, grid: Grid, out: Optional[Path] = None,
                timeout: float = 120.0, min_nodes: int = 1, progress: bool = True,
                poll_interval: float = POLL_INTERVAL) -> Dict:
    """A whole run with its clients on the nodes of Flower's ``grid``: the one round loop
    over a :class:`~fedgraph.server.deployment.Deployment` whose messages go through
    :class:`FlowerTransport`; writes ``out`` (``config.json``, ``metrics.json``) and returns
    the metrics.

    Args:
        config: the run's configuration (``client_streams`` is implied).
        grid: the ServerApp's grid.
        out: the run folder (``None``: nothing written).
        timeout: seconds to wait for a step's replies; later replies are dropped.
        min_nodes: nodes to wait for before enrolling.
        progress: a progress bar over rounds, and a logged line per round.
        poll_interval: seconds between two looks for a step's replies (:class:`PollingGrid`).
    """
    transport = FlowerTransport(PollingGrid(grid, poll_interval), timeout, min_nodes)
    return Deployment(config, transport).run(out, progress)


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
        run_on_grid(run_config_to_config(run_config), grid, Path(folder) if folder else None,
                    timeout=float(run_config.get('timeout', timeout)),
                    min_nodes=int(run_config.get('min-nodes', min_nodes)), progress=progress)

    return app
