"""What the two halves of a round hand each other: in-process, the clients' uploads
(:class:`RowUpload`, :class:`ClientRound`) and what a round measured (:class:`RoundStats`);
between a server and its devices, :data:`Payload` messages of a typed shape
(:class:`TrainRequest`, :class:`TrainReply`, :class:`EvaluationSums`), each read back by one
``from_payload`` / ``parse`` that refuses a message of another shape. What the values may be
is the trust boundary's to check (:mod:`fedgraph.federated.trust`)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import Tensor


@dataclass
class RoundStats:
    """What one round measured: the clients' mean local training loss (``None``: the clients
    did not report it, under distributed DP), the number of clients, the mean bytes a client
    uploaded and downloaded, and the uploads the server dropped by reason
    (:mod:`fedgraph.federated.trust`)."""
    loss: Optional[float]
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

    @classmethod
    def tables(cls, clients: Tensor, tables: Tensor, base: Tensor) -> 'RowUpload':
        """The upload of ``clients``' whole item ``tables`` ``[B, I, d]`` (GPFedRec's,
        FedRAP's): every row's change from the ``base`` table they trained from."""
        size, num_items = tables.shape[:2]
        device = tables.device
        return cls(clients, torch.arange(size, device=device).repeat_interleave(num_items),
                   torch.arange(num_items, device=device).repeat(size),
                   (tables - base).reshape(-1, tables.size(-1)))

    def to_tables(self, base: Tensor) -> Tensor:
        """``[B, I, d]`` each client's table: ``base`` with its row changes."""
        tables = base.expand(self.clients.numel(), -1, -1).clone()
        return tables.index_put_((self.row_owner, self.row_item), self.update, accumulate=True)


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


#: A message on the wire: tensors and scalars by name, ``group/key`` for a tensor of a group
#: (what a transport carries; Flower's records hold the same).
Payload = Dict[str, Union[Tensor, int, float, str, bool]]


def group(payload: Mapping[str, object], name: str) -> Dict[str, Tensor]:
    """The tensors ``name/key`` of ``payload``, by key."""
    prefix = name + '/'
    return {key[len(prefix):]: value for key, value in payload.items()
            if key.startswith(prefix)}


def grouped(name: str, tensors: Mapping[str, Tensor]) -> Payload:
    """``tensors`` as the group ``name`` of a payload."""
    return {f'{name}/{key}': value for key, value in tensors.items()}


def _integers(*values: object) -> bool:
    return all(isinstance(value, Tensor) and value.dim() == 1 and not value.is_floating_point()
               and not value.is_complex() and value.dtype != torch.bool for value in values)


@dataclass
class TrainRequest:
    """What the server sends a device for one round: the shared item table ``items``
    ``[I, d]`` and dense shared parameters, the selected ``users`` it holds (population ids),
    the seed of their streams, and what the algorithm adds (``extra``: a graph model's
    ``context/user``, ``context/item``)."""
    items: Tensor
    users: Tensor
    round_seed: int
    dense: Dict[str, Tensor] = field(default_factory=dict)
    extra: Dict[str, Tensor] = field(default_factory=dict)

    def to_payload(self) -> Payload:
        return {'items': self.items, 'users': self.users, 'round-seed': self.round_seed,
                **grouped('dense', self.dense), **self.extra}

    @classmethod
    def from_payload(cls, payload: Mapping[str, object]) -> 'TrainRequest':
        named = ('items', 'users', 'round-seed')
        return cls(payload['items'], payload['users'], int(payload['round-seed']),
                   group(payload, 'dense'),
                   {key: value for key, value in payload.items()
                    if key not in named and not key.startswith('dense/')})


@dataclass
class TrainReply:
    """What a device uploads after a round: for its trained ``users`` ``[n]``, the rows
    they changed (row ``r``: user ``row_user[r]``'s change ``update[r]`` ``[d]`` of item
    ``row_item[r]``), their samples and mean losses ``[n]``, their changes of the dense shared
    parameters ``{name: [n, ...]}`` and the algorithm's other per-user uploads
    (``extra``: ``{name: [n, d]}``, a graph model's ``user-update``)."""
    users: Tensor
    row_user: Tensor
    row_item: Tensor
    update: Tensor
    num_samples: Tensor
    loss: Tensor
    dense: Dict[str, Tensor] = field(default_factory=dict)
    extra: Dict[str, Tensor] = field(default_factory=dict)

    _NAMED = ('users', 'row-user', 'row-item', 'update', 'num-samples', 'loss')

    def to_payload(self) -> Payload:
        return {'users': self.users, 'row-user': self.row_user, 'row-item': self.row_item,
                'update': self.update, 'num-samples': self.num_samples, 'loss': self.loss,
                **grouped('dense', self.dense), **self.extra}

    @classmethod
    def parse(cls, payload: Mapping[str, object], dim: int,
              dense: Mapping[str, Tuple[int, ...]]) -> Optional['TrainReply']:
        """The reply ``payload`` carries, or ``None`` when it is not one: integer id vectors
        ``users``, ``row-user``, ``row-item`` (the last two of one length); ``update``
        ``[rows, d]``; one ``num-samples`` and ``loss`` per user; each dense parameter of
        ``dense`` (by name: its shape) ``[users, ...its shape]``; any other tensor
        ``[users, d]``. Values are the trust boundary's to check
        (:mod:`fedgraph.federated.trust`)."""
        try:
            users, row_user, row_item, update, num_samples, loss = (
                payload[key] for key in cls._NAMED)
        except KeyError:
            return None
        if not (_integers(users, row_user, row_item) and row_user.shape == row_item.shape
                and isinstance(update, Tensor) and update.is_floating_point()
                and tuple(update.shape) == (row_user.numel(), dim)):
            return None
        count = users.numel()
        per_user = {'num-samples': (), 'loss': (),
                    **{f'dense/{name}': shape for name, shape in dense.items()}}
        others = {key: value for key, value in payload.items() if isinstance(value, Tensor)
                  and key not in cls._NAMED and not key.startswith('dense/')}
        if set(group(payload, 'dense')) != set(dense):
            return None
        for key, value in [*((key, payload[key]) for key in per_user), *others.items()]:
            if not (isinstance(value, Tensor)
                    and tuple(value.shape) == (count, *per_user.get(key, (dim,)))):
                return None
        return cls(users, row_user, row_item, update, num_samples, loss,
                   group(payload, 'dense'), others)

    def keep(self, users: Tensor) -> 'TrainReply':
        """The reply of the users where ``users`` ``[n]`` (bool) holds, with their rows."""
        rows = torch.isin(self.row_user, self.users[users])
        return TrainReply(self.users[users], self.row_user[rows], self.row_item[rows],
                          self.update[rows], self.num_samples[users], self.loss[users],
                          {k: v[users] for k, v in self.dense.items()},
                          {k: v[users] for k, v in self.extra.items()})


#: The metrics a device's evaluation reply sums over its users, by split.
EVALUATED = {'val': ('hr@10', 'ndcg@10'), 'test': ('hr@10', 'ndcg@10')}


@dataclass
class EvaluationSums:
    """A device's evaluation reply: its ``num_users`` and, by split and metric, the sum of
    its users' metric (each in ``[0, 1]``)."""
    num_users: int
    sums: Dict[str, Dict[str, float]]

    def to_payload(self) -> Payload:
        return {'num-users': self.num_users,
                **{f'{split}-{metric}': value for split, metrics in self.sums.items()
                   for metric, value in metrics.items()}}

    @classmethod
    def parse(cls, payload: Mapping[str, object], num_users: int) -> Optional['EvaluationSums']:
        """The sums ``payload`` carries for a device holding ``num_users`` users, or ``None``
        when it is not such a reply: another user count, a missing metric, or a sum that is
        not a finite number in ``[0, num_users]``."""
        try:
            if int(payload['num-users']) != num_users:
                return None
            sums = {split: {metric: float(payload[f'{split}-{metric}']) for metric in metrics}
                    for split, metrics in EVALUATED.items()}
        except (KeyError, TypeError, ValueError, RuntimeError):
            return None
        if not all(math.isfinite(value) and 0 <= value <= num_users
                   for metrics in sums.values() for value in metrics.values()):
            return None
        return cls(num_users, sums)
