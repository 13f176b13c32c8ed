"""A round's uploads through secure aggregation: each client turns its sparse upload into a
dense integer vector (:class:`~fedgraph.privacy.discrete.IntegerEncoding`), masks it, and the
server learns only the sum (:func:`~fedgraph.privacy.secure_sum.secure_sum`).

A client's vector holds its change of the **whole** item table (zero where it trained no
row, so that which rows it touched is hidden too), then of each dense shared parameter,
encoded together; then, without DP, its mean training loss on a fixed-point grid of its own
(:data:`LOSS_SCALE`, clamped to :data:`LOSS_BOUND`). Under distributed DP the clients report
no loss: a sum of losses would be a release the noise does not cover. The server's mean is
the sum over the clients that uploaded, divided by their number: FedAvg's unweighted mean.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Iterator, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from fedgraph.federated.messages import ClientRound, RowUpload
from fedgraph.privacy.discrete import IntegerEncoding
from fedgraph.privacy.gaussian import UserLevelDP
from fedgraph.privacy.secure_sum import MODULUS_BITS, SecAggPlus, SecureSum, secure_sum

#: The grid and the bound of the loss coordinate.
LOSS_SCALE = 2.0 ** 10
LOSS_BOUND = 2.0 ** 6


def dense_update(items: Tensor, rows: Tensor, num_items: int,
                 dense: Sequence[Tensor] = ()) -> Tensor:
    """``[D]`` float64: one client's change of the whole item table -- its ``rows`` at
    ``items``, zeros elsewhere -- followed by its dense changes ``dense``, flattened."""
    table = torch.zeros(num_items, rows.size(1), dtype=torch.float64)
    table[items] = rows.double()
    return torch.cat([table.reshape(-1), *(value.reshape(-1).double() for value in dense)])


def rows_by_client(upload: RowUpload) -> Tuple[Sequence[Tensor], Sequence[Tensor]]:
    """The upload's items and row updates split by client, in the order of
    ``upload.clients`` (one pass over the rows, whatever their order)."""
    order = torch.sort(upload.row_owner, stable=True).indices
    counts = torch.bincount(upload.row_owner, minlength=upload.clients.numel()).tolist()
    return upload.row_item[order].split(counts), upload.update[order].split(counts)


@dataclass
class SecureTotals:
    """The server's view of a securely summed round: the sums of the clients' row-table
    changes ``rows`` ``[I, d]``, of their dense changes ``dense``, of their losses (``None``:
    not reported), and how many clients they sum (``None`` rows: the round aborted)."""
    rows: Optional[Tensor]
    dense: Dict[str, Tensor]
    loss: Optional[float]
    clients: Tensor
    received: SecureSum


class SecureAggregation:
    """The secure sum of a round's uploads, simulated in one process.

    Under adaptive clipping (``privacy.adaptive``) a client's vector ends with its bit
    :math:`b_c = [\\lVert \\Delta_c \\rVert \\le S_t]` scaled by :math:`S_t \\lambda`, inside
    the noised vector: the noised count's standard deviation is then
    :math:`\\sigma \\sqrt{1 + \\lambda^2} / \\lambda`, :math:`\\sigma_b` for
    :math:`\\lambda = (\\sigma_b^2 / \\sigma^2 - 1)^{-1/2}`, and the encoding clips the
    pair at :math:`S_t \\sqrt{1 + \\lambda^2}`, a bound the accountant's Skellam release
    over-covers (the pair of two users differs by at most :math:`S_t \\sqrt{4 + \\lambda^2}`).

    Args:
        encoding: how a client encodes its update (a fixed bound's).
        protocol: SecAgg+'s settings.
        privacy: distributed DP's mechanism (``None``: secure aggregation alone).
        dim: the coordinates of an update; ``min_clients``: the fewest survivors (both to
            encode under adaptive clipping, whose encoding follows the bound).
    """

    def __init__(self, encoding: IntegerEncoding, protocol: SecAggPlus,
                 privacy: Optional[UserLevelDP] = None, dim: int = 0, min_clients: int = 1):
        self._encoding = encoding
        self.protocol = protocol
        self.privacy = privacy
        self.dim = dim
        self.min_clients = min_clients
        #: Called with what the server holds after each round (an honest-but-curious
        #: server's view, :mod:`fedgraph.privacy.leak`).
        self.observer: Optional[Callable[[SecureSum], None]] = None

    @property
    def adaptive(self):
        """The adaptive clip bound (``None``: none)."""
        return None if self.privacy is None else self.privacy.adaptive

    def count_weight(self) -> float:
        """:math:`\\lambda`, the bit's weight (in units of :math:`S_t`)."""
        ratio = self.adaptive.count_std / self.privacy.noise_multiplier
        if ratio <= 1:
            raise ValueError(f'adaptive clipping under distributed DP needs the count noise '
                             f'{self.adaptive.count_std:.3g} above the noise multiplier '
                             f'{self.privacy.noise_multiplier:.3g}: take more clients a round')
        return (ratio ** 2 - 1) ** -0.5

    @property
    def encoding(self) -> IntegerEncoding:
        """The coming round's encoding (it follows an adaptive bound)."""
        if self.adaptive is None:
            return self._encoding
        bound = self.adaptive.clip * (1 + self.count_weight() ** 2) ** 0.5
        return IntegerEncoding.distributed(bound, self.privacy.noise_multiplier, self.dim + 1,
                                           self.min_clients)

    @property
    def reports_loss(self) -> bool:
        """Whether a client's vector ends with its loss (not under DP)."""
        return self.privacy is None

    def vector_size(self, num_items: int, dim: int, dense_shapes: Dict[str, torch.Size]) -> int:
        """The coordinates of a client's encoded vector: the item table, the dense shared
        parameters and the loss (:attr:`reports_loss`)."""
        return (num_items * dim + sum(shape.numel() for shape in dense_shapes.values())
                + int(self.reports_loss) + int(self.adaptive is not None))

    @classmethod
    def build(cls, protocol: SecAggPlus, privacy: Optional[UserLevelDP], dim: int,
              clients: int) -> 'SecureAggregation':
        """For updates of ``dim`` coordinates from rounds of ``clients`` clients: with
        ``privacy``, each client's noise share sized for the protocol's fewest survivors."""
        if privacy is None:
            encoding = IntegerEncoding.plain(clients)
        else:
            encoding = IntegerEncoding.distributed(privacy.clip, privacy.noise_multiplier, dim,
                                                   protocol.threshold(clients))
        secure = cls(encoding, protocol, privacy, dim, protocol.threshold(clients))
        if secure.sum_bound(clients) >= 2 ** (MODULUS_BITS - 1):
            raise ValueError(f'a secure sum of {clients} clients overflows {MODULUS_BITS}-bit '
                             'arithmetic at this precision: take fewer clients a round')
        return secure

    def sum_bound(self, clients: int) -> float:
        """A bound on a coordinate of the sum of ``clients`` clients' encoded vectors."""
        loss = clients * LOSS_BOUND * LOSS_SCALE if self.reports_loss else 0.0
        return self.encoding.coordinate_bound(clients) + loss

    def client_vectors(self, result: ClientRound, num_items: int,
                       randomness: Union[torch.Generator, Sequence[torch.Generator]]
                       ) -> Iterator[Tuple[int, Tensor]]:
        """Each client's encoded vector (int64), in the order of the round's clients,
        drawn from its own stream or from the round's shared generator."""
        upload = result.upload
        encoding = self.encoding
        items, rows = rows_by_client(upload)
        for position, client in enumerate(upload.clients.tolist()):
            generator = (randomness if isinstance(randomness, torch.Generator)
                         else randomness[position])
            vector = dense_update(items[position], rows[position], num_items,
                                  [value[position] for value in upload.dense.values()])
            vector = torch.nan_to_num(vector, nan=0.0, posinf=0.0, neginf=0.0)
            if self.adaptive is not None:
                vector = self.with_count_bit(vector)
            encoded = encoding.encode(vector, generator)
            if self.reports_loss:
                loss = float(result.loss[position])
                loss = min(max(loss, 0.0), LOSS_BOUND) if loss == loss else LOSS_BOUND
                encoded = torch.cat([encoded, torch.tensor([round(loss * LOSS_SCALE)])])
            yield client, encoded

    def with_count_bit(self, vector: Tensor) -> Tensor:
        """``vector`` clipped to :math:`S_t`, then its bit scaled by :math:`S_t \\lambda`."""
        bound = self.adaptive.clip
        norm = float(vector.norm())
        clipped = vector * min(1.0, bound / norm) if norm > 0 else vector
        bit = float(norm <= bound) * bound * self.count_weight()
        return torch.cat([clipped, torch.tensor([bit], dtype=vector.dtype)])

    def totals(self, result: ClientRound, num_items: int, dense_shapes: Dict[str, torch.Size],
               randomness: Union[torch.Generator, Sequence[torch.Generator]],
               round_seed: int, generator: torch.Generator) -> SecureTotals:
        """The round's secure sum in this process, decoded (dropouts drawn from
        ``generator``)."""
        upload = result.upload
        received = secure_sum(self.protocol, self.client_vectors(result, num_items, randomness),
                              upload.clients.tolist(), round_seed, generator)
        if self.observer is not None:
            self.observer(received)
        return self.decode(received.total, received.survivors, num_items,
                           upload.update.size(1), dense_shapes, received)

    def decode(self, total: Optional[Tensor], clients: Sequence[int], num_items: int,
               dim: int, dense_shapes: Dict[str, torch.Size],
               received: Optional[SecureSum] = None) -> SecureTotals:
        """The server's side: the sum ``total`` (int64; ``None``: aborted) of ``clients``'
        encoded vectors as the sums of their changes and losses."""
        clients = torch.tensor(sorted(clients), dtype=torch.long)
        received = received if received is not None else SecureSum(total=total)
        if total is None:
            return SecureTotals(None, {}, None, clients, received)
        loss = float(total[-1]) / LOSS_SCALE if self.reports_loss else None
        values = self.encoding.decode(total[:-1] if self.reports_loss else total)
        if self.adaptive is not None:  # the noised count moves the bound
            count = float(values[-1]) / (self.adaptive.clip * self.count_weight())
            values = values[:-1]
            self.adaptive.step(count, clients.numel())
        rows, rest = values[:num_items * dim].view(num_items, dim), values[num_items * dim:]
        dense: Dict[str, Tensor] = {}
        for name, shape in dense_shapes.items():
            dense[name], rest = rest[:shape.numel()].view(shape), rest[shape.numel():]
        return SecureTotals(rows, dense, loss, clients, received)

    @staticmethod
    def upload_bytes(size: int) -> float:
        """Bytes of one client's masked vector of ``size`` coordinates."""
        return size * MODULUS_BITS / 8
