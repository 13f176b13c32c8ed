"""What a run asks of an engine (:class:`RoundEngine`): rounds, scores, state, and optional
steps whose defaults do nothing; the federated engines, the graph models' engine and the
centralized baselines implement it."""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor

from fedgraph.federated.messages import ClientRound, RoundStats
from fedgraph.privacy.ledger import PrivacyLedger

if TYPE_CHECKING:
    from fedgraph.federated.plan import RoundPlan


class RoundEngine:
    """What a run asks of an engine besides rounds, scores and state: optional steps with
    defaults that do nothing, and the server's halves of a round over messages
    (:class:`~fedgraph.server.deployment.Deployment`). The graph models' engine overrides
    them."""

    #: The privacy releases of a federated engine's clients (``None``: centralized).
    ledger: Optional[PrivacyLedger] = None
    #: A centralized engine's training loss when its model scores every item alike
    #: (``None``: not known); a federated engine's is its clients' loss's.
    chance_loss: Optional[float] = None
    #: Called with a round's plan before its clients train (a graph model propagates the
    #: context of the plan's clients and items here); ``None``: nothing.
    before_training: Optional[Callable[[RoundPlan], None]] = None
    #: The bytes a client uploads and downloads each round beside the shared parameters
    #: (a graph model: its user embedding up, its context down).
    side_bytes: Tuple[float, float] = (0.0, 0.0)

    @property
    def federated(self) -> Optional['RoundEngine']:
        """The federated engine that runs this engine's client rounds (``None``: a
        centralized engine)."""
        return None

    @property
    def device(self) -> torch.device:
        """Where the engine's tensors live: scores are asked for with tensors there."""
        return self.model.item.device

    def pretrain(self, generator: torch.Generator, progress: bool = True,
                 transport=None) -> Optional[Dict[str, object]]:
        """Pre-training before round 0, with the clients in this process or on the devices
        behind ``transport``; its record for ``metrics.json`` (``None``: none)."""
        return None

    def round_report(self) -> Dict[str, object]:
        """Extra entries of a round's ``metrics.json`` record (e.g. uniformity)."""
        return {}

    def export(self) -> Optional[Dict[str, Tensor]]:
        """Tensors saved as the run's ``embeddings.pt`` at its end (``None``: none)."""
        return None

    def download_bytes(self, table: Tensor) -> float:
        """What a client downloads in a round: the item table ``table``, the dense shared
        parameters and :attr:`side_bytes`'s share."""
        return (float(table.numel() * table.element_size()) + self.model.dense_bytes()
                + self.side_bytes[1])

    def planned(self, plan: RoundPlan) -> RoundPlan:
        """``plan``, once :attr:`before_training` has seen it."""
        if self.before_training is not None:
            self.before_training(plan)
        return plan

    def before_round(self, users: Tensor) -> None:
        """The server's work before it sends a round's messages to train ``users``."""

    def round_payload(self, users: Tensor) -> Dict[str, Tensor]:
        """What a device needs besides the shared parameters to train ``users``."""
        return {}

    def after_aggregate(self, result: ClientRound, replies: Dict[str, Tensor]) -> None:
        """The server's work once a round's uploads are aggregated; ``replies`` holds the
        other per-user tensors the devices uploaded, in the order of
        ``result.upload.clients``."""

    def evaluation_payload(self, users: Tensor) -> Dict[str, Tensor]:
        """What a device needs to score ``users``."""
        raise NotImplementedError

    def item_views(self, user: int) -> Tuple[Dict[str, Tensor], List[Tensor], List[float]]:
        """``user``'s model on its own: its parameters, item-input tables and their weights
        (:mod:`fedgraph.export`)."""
        raise NotImplementedError

    def table_round_stats(self, clients: Tensor, base: Tensor, loss: float,
                          dropped: Optional[Dict[str, int]] = None,
                          tables_down: int = 1) -> RoundStats:
        """The record of a federated round whose ``clients`` each upload a whole item table
        and download ``tables_down`` (GPFedRec, FedRAP), trained from ``base``: their
        participation and the release counted."""
        self.participation[clients.cpu()] += 1
        self.broadcast = base
        size = float(base.numel() * base.element_size())
        self.ledger.record_aggregate(clients, self.selector.uniform,
                                     torch.full((clients.numel(),), base.size(0)))
        return RoundStats(loss=loss, num_clients=clients.numel(), upload_bytes=size,
                          download_bytes=tables_down * size, dropped=dict(dropped or {}))
