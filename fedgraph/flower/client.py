"""The device side on Flower: the ``ClientApp``, a transport for
:class:`~fedgraph.federated.node.Node`.

A SuperNode's ``node_config`` says which users it holds: ``partition-id`` ``p`` of
``num-partitions`` ``P`` holds users ``p, p + P, p + 2P, ...`` of the data set (``P`` = the
number of users: one user per node, as on phones). The device lives in the node's
``context.state`` between messages; every message is answered by
:meth:`Node.handle <fedgraph.federated.node.Node.handle>`, which runs the algorithm's
client halves.
"""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Optional, Tuple

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

if TYPE_CHECKING:  # imported when a message needs them (see secure_mod)
    from fedgraph.config import TrainConfig
    from fedgraph.data.partition import ClientPartition
    from fedgraph.data.split import SampledSplit
    from fedgraph.federated.node import Node

STATE = 'device-'
#: The configuration record of a SecAgg+ message (Flower's ``RECORD_KEY_CONFIGS``).
SECAGG_CONFIGS = 'secaggplus_configs'


def secure_mod(message: Message, context: Context, call_next) -> Message:
    """Flower's ``secaggplus_mod`` for the messages of SecAgg+ (they carry its configuration
    record), the others straight on. Its key-exchange stages never reach fedgraph's
    handlers, so a process that answers one imports neither PyTorch nor fedgraph's engine."""
    if SECAGG_CONFIGS in message.content.config_records:
        from flwr.client.mod import secaggplus_mod

        return secaggplus_mod(message, context, call_next)
    return call_next(message, context)


@functools.lru_cache(maxsize=4)
def _population(data: Tuple[Tuple[str, object], ...],
                seed: int) -> Tuple[SampledSplit, ClientPartition, ClientPartition]:
    """The split every node takes its users from (``data``: the data section's settings),
    with its training and known-item partitions; cached, so that a process serving many
    virtual nodes (Ray simulation) builds them once. Only a node's first message reads the
    data set: the loaders (and PyTorch Geometric) are imported here, not by every message."""
    from fedgraph.assemble import known_items, prepare_split
    from fedgraph.config import TrainConfig
    from fedgraph.data.partition import ClientPartition

    config = TrainConfig(**dict(data), seed=seed)
    split = prepare_split(config)
    return split, ClientPartition.from_data(split.train), known_items(config, split)


def _device(config: TrainConfig, context: Context) -> Node:
    """The node's device: from its state, or, at the first message, from the data set."""
    from fedgraph.config import SECTIONS
    from fedgraph.federated.node import Node
    from fedgraph.flower.payloads import load

    if STATE + 'scalars' in context.state:
        return Node.from_state(config, load(context.state, STATE))
    if config.protocol != 'sampled':
        raise ValueError('the Flower apps evaluate on devices under the sampled protocol only')
    node = context.node_config
    data = tuple((name, getattr(config, name)) for name in SECTIONS['data'])
    return Node.from_split(config, *_population(data, config.seed),
                             int(node['partition-id']), int(node['num-partitions']))


def make_client_app(config: Optional[TrainConfig] = None) -> ClientApp:
    """The ``ClientApp``. Its configuration is the run configuration's (``context.run_config``)
    over ``config`` (default: :class:`TrainConfig`'s defaults). A ``query`` message names
    its step in its ``step`` scalar (``enroll``, ``init``, or one of the algorithm's);
    ``train`` and ``evaluate`` messages are those steps. Under secure aggregation a round's
    training runs inside Flower's SecAgg+ (``secaggplus_mod``,
    :mod:`fedgraph.flower.secure`): the request arrives as a ``FitIns`` and the node's answer
    leaves masked."""
    app = ClientApp(mods=[secure_mod])

    def answer(message: Message, context: Context, step: str, keep: bool = True) -> Message:
        from fedgraph.flower.payloads import (config_to_run_config, load, run_config_to_config,
                                             store, to_content)
        from fedgraph.flower.secure import unwrap_request, wrap_answer

        defaults = config_to_run_config(config) if config is not None else {}
        device = _device(run_config_to_config({**defaults, **context.run_config}), context)
        request = unwrap_request(message)
        payload = load(message.content) if request is None else request
        payload.pop('step', None)
        reply = device.handle(step, payload)
        if keep:
            store(context.state, device.to_state(), STATE)
        content = to_content(reply) if request is None else wrap_answer(reply)
        return Message(content=content, reply_to=message)

    @app.query()
    def query(message: Message, context: Context) -> Message:
        return answer(message, context, str(message.content['scalars']['step']))

    @app.train()
    def train(message: Message, context: Context) -> Message:
        return answer(message, context, 'train')

    @app.evaluate()
    def evaluate(message: Message, context: Context) -> Message:
        return answer(message, context, 'evaluate', keep=False)

    return app
