"""Secure aggregation on Flower: a round's training step through Flower's own SecAgg+
(``SecAggPlusWorkflow`` on the server, ``secaggplus_mod`` on the ``ClientApp``), so that the
ServerApp receives only the sum of the nodes' answers; fedgraph adds no cryptography.

SecAgg+ sums integer vectors modulo :math:`2^{32}` after quantizing each client's floats
(Flower's ``quantize``: values clipped to :math:`\\pm c`, mapped onto :math:`[0, T]`, rounded
at random). A node answers the sum of its users' encoded vectors
(:class:`~fedgraph.federated.secure.SecureAggregation`), integers already; with
:math:`T = 2c` the quantization maps an integer :math:`v` to :math:`v + c` exactly (no
rounding draw moves it), and the workflow's dequantization gives back the mean of the nodes'
integers, which :func:`nodes_sum` turns into their sum: the same integers the in-process
simulation sums. The node's answer is a ``FitRes`` (its ``num_examples`` is the workflow's
``max_weight``, so every node weighs alike); the round's request travels as a ``FitIns``,
its tensors as the parameters, their names and the scalars in the config.
"""
from __future__ import annotations

import math
from typing import List, Mapping, Optional, Tuple

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common import (Code, FitIns, FitRes, Status, ndarrays_to_parameters,
                         parameters_to_ndarrays)
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import Strategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key
from flwr.serverapp import Grid

from fedgraph.federated.messages import Payload
from fedgraph.privacy.secure_sum import MODULUS_BITS, SecAggPlus, SecureSum

#: Every node weighs alike: its ``num_examples`` is the workflow's ``max_weight``.
WEIGHT = 1
#: The names of a request's tensors, in the order of the ``FitIns`` parameters.
NAMES = 'fedgraph-tensors'


def request_to_fitins(payload: Payload) -> FitIns:
    """A training request as a ``FitIns``."""
    names = [name for name, value in payload.items() if isinstance(value, torch.Tensor)]
    config = {name: value for name, value in payload.items() if name not in names}
    config[NAMES] = ','.join(names)
    return FitIns(ndarrays_to_parameters([payload[name].numpy() for name in names]), config)


def fitins_to_request(fitins: FitIns) -> Payload:
    """The training request of :func:`request_to_fitins`."""
    config = dict(fitins.config)
    names = [name for name in str(config.pop(NAMES)).split(',') if name]
    arrays = parameters_to_ndarrays(fitins.parameters)
    return {**config, **{name: torch.from_numpy(array.copy())
                         for name, array in zip(names, arrays)}}


def answer_to_fitres(total: torch.Tensor) -> FitRes:
    """A node's ``secure-sum`` (int64) as the ``FitRes`` SecAgg+ masks."""
    return FitRes(Status(Code.OK, ''), ndarrays_to_parameters([total.numpy().astype(np.float64)]),
                  WEIGHT, {})


def quantization(bound: float, nodes: int) -> Tuple[float, int]:
    """SecAgg+'s clipping range :math:`c` and quantization range :math:`T = 2c` for node
    answers of coordinates at most ``bound`` in magnitude: :math:`T` the smallest power of two
    above :math:`2 \\cdot` ``bound``; ``nodes`` such answers must sum below the modulus."""
    target = 2 ** max(1, math.ceil(math.log2(2 * bound + 2)))
    if nodes * target > 2 ** MODULUS_BITS:
        raise ValueError(f'{nodes} nodes with answers up to {bound:.3g} overflow SecAgg+\'s '
                         f'{MODULUS_BITS}-bit sum: take fewer users a node or fewer nodes')
    return target / 2, target


def nodes_sum(mean: np.ndarray, nodes: int) -> torch.Tensor:
    """The integer sum of ``nodes`` answers whose mean the workflow released."""
    return torch.from_numpy(np.rint(mean * nodes).astype(np.int64))


class SecureRound(Strategy):
    """The strategy the workflow asks: the round's ``FitIns`` for each node, and, once the
    workflow has summed them, the sum (:attr:`total`) and the nodes it covers
    (:attr:`survivors`). It never sees a node's answer: the workflow hands every result the
    aggregate."""

    def __init__(self, grid: Grid, payloads: Mapping[int, Payload]):
        self.grid = grid
        self.payloads = dict(payloads)
        self.total: Optional[torch.Tensor] = None
        self.survivors: List[int] = []

    def configure_fit(self, server_round, parameters, client_manager):
        return [(GridClientProxy(node, self.grid, 0), request_to_fitins(payload))
                for node, payload in self.payloads.items()]

    def aggregate_fit(self, server_round, results, failures):
        self.survivors = sorted(proxy.node_id for proxy, _ in results)
        if results:
            (mean,) = parameters_to_ndarrays(results[0][1].parameters)
            self.total = nodes_sum(mean, len(results))
        return None, {}

    def initialize_parameters(self, client_manager):
        return None

    def configure_evaluate(self, server_round, parameters, client_manager):
        return []

    def aggregate_evaluate(self, server_round, results, failures):
        return None, {}

    def evaluate(self, server_round, parameters):
        return None


class ThresholdWorkflow(SecAggPlusWorkflow):
    """SecAgg+ that unmasks only when the nodes that uploaded hold at least ``min_users``
    users (``users``: how many each node holds): the distributed noise is sized for that
    many."""

    def __init__(self, users: Mapping[int, int], min_users: int, **kwargs):
        super().__init__(**kwargs)
        self.users = dict(users)
        self.min_users = min_users
        #: The nodes whose masked vectors the server received.
        self.active: List[int] = []

    def unmask_stage(self, grid, context, state) -> bool:
        self.active = sorted(state.active_node_ids)
        if sum(self.users[node] for node in state.active_node_ids) < self.min_users:
            return False
        return super().unmask_stage(grid, context, state)


def secure_round(grid: Grid, payloads: Mapping[int, Payload], protocol: SecAggPlus,
                 bound: float, round_index: int, timeout: Optional[float]) -> SecureSum:
    """One training step of ``payloads`` through SecAgg+ on ``grid``: the sum of the nodes'
    answers (each coordinate at most ``bound``), ``None`` when too few answered."""
    nodes = len(payloads)
    users = {node: int(payload['users'].numel()) for node, payload in payloads.items()}
    clip, target = quantization(bound, nodes)
    strategy = SecureRound(grid, payloads)
    context = LegacyContext(Context(run_id=0, node_id=0, node_config={}, state=RecordDict(),
                                    run_config={}), strategy=strategy)
    context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord(
        {Key.CURRENT_ROUND: round_index})
    context.state.array_records[MAIN_PARAMS_RECORD] = ArrayRecord()
    shares = min(protocol.neighbours + 1, nodes)
    workflow = ThresholdWorkflow(
        users, protocol.threshold(sum(users.values())),
        num_shares=1.0 if shares >= nodes else shares,
        reconstruction_threshold=0.5, max_weight=float(WEIGHT), clipping_range=clip,
        quantization_range=target, modulus_range=2 ** MODULUS_BITS, timeout=timeout)
    workflow(grid, context)
    survivors = strategy.survivors if strategy.total is not None else workflow.active
    return SecureSum(total=strategy.total, survivors=survivors,
                     dropped=sorted(set(payloads) - set(survivors)))


def unwrap_request(message: Message) -> Optional[Payload]:
    """The training request inside a SecAgg+ message that carries one (``None``: not a
    SecAgg+ training request)."""
    from flwr.compat.common import recorddict_compat as compat

    if 'fitins.config' not in message.content.config_records:
        return None
    return fitins_to_request(compat.recorddict_to_fitins(message.content, keep_input=True))


def wrap_answer(answer: Payload) -> RecordDict:
    """A node's answer as the ``FitRes`` content ``secaggplus_mod`` masks."""
    from flwr.compat.common import recorddict_compat as compat

    return compat.fitres_to_recorddict(answer_to_fitres(answer['secure-sum']), keep_input=True)
