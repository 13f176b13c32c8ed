"""User-level differential privacy for federated training: DP-FedAvg's Gaussian mechanism
(McMahan, Ramage, Talwar & Zhang, "Learning Differentially Private Recurrent Language
Models", ICLR 2018)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor
from torch_scatter import scatter

from fedgraph.privacy.adaptive import AdaptiveClip

#: Rows of an update whose squares :meth:`UserLevelDP.client_norms` sums at a time.
BLOCK_ROWS = 1 << 16

#: Where the noise is added: by the server to the sum (central DP), by each client to its own
#: upload (local DP), or by each client its share of the noise of a secure sum (distributed
#: DP: :mod:`fedgraph.privacy.discrete`).
NOISE_AT = ('server', 'client', 'distributed')


@dataclass(frozen=True)
class UserLevelDP:
    """DP-FedAvg: each client's **whole** update -- every item row it changed and every dense
    shared parameter, as one vector :math:`\\Delta_c` -- is clipped to L2 norm :math:`S`,

    .. math::
        \\bar\\Delta_c = \\Delta_c \\min\\left(1, \\frac{S}{\\lVert \\Delta_c \\rVert_2}\\right),

    and the server's mean over the round's :math:`B` clients carries Gaussian noise on
    **every** coordinate of the shared parameters (rows nobody touched too, so that which
    rows moved says nothing):

    .. math::
        \\Delta = \\frac{1}{B}\\Big(\\sum_c \\bar\\Delta_c + Z\\Big), \\qquad
        Z \\sim \\begin{cases} N(0, \\sigma^2 S^2 I) & \\text{central: the server draws it}
        \\\\ \\sum_c N(0, \\sigma^2 S^2 I) = N(0, B \\sigma^2 S^2 I) &
        \\text{local: each client noises its own upload.} \\end{cases}

    Central DP protects what the server publishes (the model) from everyone but the server;
    local DP protects each upload from the server itself, at :math:`\\sqrt{B}` times the
    noise in the mean. A local client's upload is its noised update of the whole table (a
    dense upload); the simulation draws the sum of the :math:`B` draws at once, which is
    equal in distribution. Distributed DP puts the central noise in the sum without a
    trusted server: each client clips and encodes its update as integers and adds its share
    of Skellam noise, and the server receives only the secure sum
    (:class:`~fedgraph.privacy.discrete.IntegerEncoding`).

    Args:
        clip: the bound :math:`S` of a client's whole update.
        noise_multiplier: :math:`\\sigma`, the noise's standard deviation over :math:`S`.
        noise_at: ``'server'`` (central), ``'client'`` (local) or ``'distributed'``.
        adaptive: the bound moves each round towards a quantile of the update norms
            (:mod:`fedgraph.privacy.adaptive`); ``clip`` is then the first round's.
    """
    clip: float
    noise_multiplier: float
    noise_at: str = 'server'
    adaptive: Optional[AdaptiveClip] = None

    def __post_init__(self):
        if not self.clip > 0 or not self.noise_multiplier >= 0:
            raise ValueError(f'the DP clip must be > 0 and the noise multiplier >= 0, got '
                             f'{self.clip} and {self.noise_multiplier}')
        if self.noise_at not in NOISE_AT:
            raise ValueError(f'noise_at must be one of {NOISE_AT}, got {self.noise_at!r}')
        if self.adaptive is not None and self.noise_at == 'client':
            raise ValueError('adaptive clipping needs the count of unclipped clients summed: '
                             'central or distributed noise, not local')

    @property
    def central(self) -> bool:
        """Whether the server adds the noise (central DP)."""
        return self.noise_at == 'server'

    @property
    def bound(self) -> float:
        """The clip bound of the coming round (:math:`S_t` under adaptive clipping)."""
        return self.clip if self.adaptive is None else self.adaptive.clip

    @property
    def std(self) -> float:
        """The standard deviation of one draw on the update: :math:`\\sigma S`, or under
        adaptive clipping :math:`\\sigma_\\Delta S_t`."""
        if self.adaptive is None:
            return self.noise_multiplier * self.clip
        return self.adaptive.update_noise(self.noise_multiplier) * self.adaptive.clip

    @staticmethod
    def client_norms(row_owner: Tensor, update: Tensor, dense: Dict[str, Tensor],
                     num_clients: int) -> Tensor:
        """``[B]`` the L2 norm of each client's whole update (each row's squares summed
        :data:`BLOCK_ROWS` rows at a time, in one buffer: a block's squares, not the
        update's)."""
        rows = update.new_empty(update.size(0))
        buffer = update.new_empty(min(BLOCK_ROWS, update.size(0)), *update.shape[1:])
        for start in range(0, update.size(0), BLOCK_ROWS):
            block = update[start:start + BLOCK_ROWS]
            squares = torch.pow(block, 2, out=buffer[:block.size(0)])
            torch.sum(squares, 1, out=rows[start:start + block.size(0)])
        squared = scatter(rows, row_owner, dim=0, dim_size=num_clients, reduce='sum')
        for value in dense.values():
            squared = squared + value.reshape(num_clients, -1).pow(2).sum(1)
        return squared.sqrt()

    def clip_clients(self, row_owner: Tensor, update: Tensor, dense: Dict[str, Tensor],
                     num_clients: int, norms: Optional[Tensor] = None, in_place: bool = False
                     ) -> Tuple[Tensor, Dict[str, Tensor]]:
        """Each client's row updates (``update[r]`` is client ``row_owner[r]``'s) and dense
        updates (``{name: [B, ...]}``) scaled together to L2 norm at most :math:`S`
        (:attr:`bound`); ``norms``: their :meth:`client_norms`, when already taken;
        ``in_place``: the rows are scaled in ``update`` itself (the same values)."""
        if norms is None:
            norms = self.client_norms(row_owner, update, dense, num_clients)
        scale = (self.bound / norms.clamp_min(1e-12)).clamp(max=1.0)
        row_scale = scale[row_owner].unsqueeze(-1).to(update.dtype)
        return (update.mul_(row_scale) if in_place else update * row_scale,
                {name: value * scale.view(-1, *([1] * (value.dim() - 1))).to(value.dtype)
                 for name, value in dense.items()})

    def sum_noise(self, shape: torch.Size, num_clients: int, generator: torch.Generator,
                  dtype: torch.dtype = torch.float32) -> Tensor:
        """:math:`Z`, the noise on the sum of ``num_clients`` clipped updates."""
        if self.noise_at == 'distributed':
            raise ValueError('distributed noise is the clients\' (IntegerEncoding), not a sum\'s')
        copies = 1 if self.central else num_clients
        return torch.randn(shape, generator=generator, dtype=dtype) * (self.std * copies ** 0.5)


def shrink_rows(rows: Tensor, variance: float) -> Tensor:
    """The positive-part James--Stein estimate of each row's mean from ``rows`` ``[n, d]``,
    each one draw of its mean plus Gaussian noise of ``variance`` a coordinate:

    .. math::
        \\hat\\mu = \\Bigl(1 - \\frac{(d - 2)\\, \\sigma^2}{\\lVert y \\rVert^2}\\Bigr)_+ \\, y,

    whose squared error summed over the coordinates is below the draw's own
    (:math:`d \\sigma^2`) for every mean when :math:`d \\ge 3`; for :math:`d \\le 2` the
    rows are returned as they are. A row whose draw is within the noise's reach becomes 0.
    Post-processing of a DP release: it costs no privacy."""
    factor = max(rows.size(1) - 2, 0) * variance
    norms = rows.pow(2).sum(1, keepdim=True).clamp_min(torch.finfo(rows.dtype).tiny)
    return rows * (1 - factor / norms).clamp(min=0.0)
