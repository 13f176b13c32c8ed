"""What the two halves of a round hand each other in-process: the clients' uploads
(:class:`RowUpload`, :class:`ClientRound`) and what a round measured (:class:`RoundStats`).
The server's checks of them are :mod:`fedgraph.federated.trust`'s."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
from torch import Tensor


@dataclass
class RoundStats:
    """What one round measured: the clients' mean local training loss, the number of
    clients, the mean bytes a client uploaded and downloaded, and the uploads the server
    dropped by reason (:mod:`fedgraph.federated.trust`)."""
    loss: float
    num_clients: int
    upload_bytes: float
    download_bytes: float
    dropped: Dict[str, int] = field(default_factory=dict)


@dataclass
class RowUpload:
    """What the clients of the latest round uploaded: row ``r`` of ``update`` is client
    ``clients[row_owner[r]]``'s (transformed) change of item ``row_item[r]``; ``dense[name]``
    ``[B, ...]`` holds each client's (transformed) change of a dense shared parameter."""
    clients: Tensor
    row_owner: Tensor
    row_item: Tensor
    update: Tensor
    dense: Dict[str, Tensor] = field(default_factory=dict)


@dataclass
class ClientRound:
    """What the clients of a round hand the server: their row updates, their samples per
    epoch (the weights of weighted FedAvg) and their mean training losses ``[B]``. With
    per-client streams, ``generators`` are the clients' streams positioned after their
    upload noise, for what they upload next (a graph model's user embeddings)."""
    upload: RowUpload
    num_samples: Tensor
    loss: Tensor
    generators: Optional[List[torch.Generator]] = None
