"""What a run's clients have released so far, and the :math:`(\\epsilon, \\delta)` it adds up
to (``metrics.json``'s ``privacy`` record)."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

import torch
from torch import Tensor

from fedgraph.privacy import accountant
from fedgraph.privacy.gaussian import UserLevelDP
from fedgraph.privacy.upload import UploadTransform

if TYPE_CHECKING:
    import dp_accounting


class PrivacyLedger:
    """Counts each client's releases and turns them into :math:`(\\epsilon, \\delta)` with
    :mod:`~fedgraph.privacy.accountant`.

    Three counts, each taken by the engines as the releases happen:

    * :attr:`sampled_rounds` -- rounds whose Gaussian aggregate (central DP) took the round's
      ``sample_size`` clients uniformly without replacement: every user's privacy gains from
      the sampling, whether it was chosen or not;
    * :attr:`releases` ``[N]`` -- each client's other Gaussian releases, never amplified:
      a local-DP upload, a central aggregate of a round that did not sample uniformly
      (cluster-aware selection), a central cluster table, a distributed-DP (Skellam)
      secure sum (the server knows who took part);
    * :attr:`rows` ``[N]`` -- each client's Laplace-noised uploaded rows.

    The figure is the worst case over clients: the largest count of each kind, composed.

    Args:
        num_clients: :math:`N`.
        sample_size: :math:`B`, the clients of a round.
        dim: the coordinates of an uploaded row.
        gaussian: the Gaussian mechanism (``None``: none).
        laplace: the uploads' transform; its Laplace noise, if any, is accounted per row.
        delta: :math:`\\delta` (default :math:`1/N`).
        secure: whether the server receives only the secure sum of the uploads.
        server_noise: the scale of the Laplace noise the server adds to the aggregate (the
            PerFedRec++ code's ``noise_at='server'``: no guarantee, the server reads every
            upload), recorded as such.
    """

    def __init__(self, num_clients: int, sample_size: int, dim: int,
                 gaussian: Optional[UserLevelDP] = None,
                 laplace: Optional[UploadTransform] = None, delta: Optional[float] = None,
                 secure: bool = False, server_noise: float = 0.0):
        self.num_clients = num_clients
        self.sample_size = sample_size
        self.dim = dim
        self.gaussian = gaussian
        self.laplace = laplace if laplace is not None and laplace.laplace_scale else None
        self.delta = 1.0 / num_clients if delta is None else delta
        self.secure = secure
        self.server_noise = server_noise
        self.sampled_rounds = 0
        self.releases = torch.zeros(num_clients, dtype=torch.long)
        self.rows = torch.zeros(num_clients, dtype=torch.long)

    @property
    def mechanism(self) -> str:
        """The mechanism in words."""
        if self.gaussian is not None and self.gaussian.noise_at == 'distributed':
            return 'skellam, user level, distributed (client noise shares, secure sum)'
        if self.gaussian is not None:
            where = 'central (server noise)' if self.gaussian.central else 'local (client noise)'
            return f'gaussian, user level, {where}'
        if self.laplace is not None:
            return 'laplace, local, per uploaded row'
        if self.server_noise:
            return (f'none: the server adds laplace noise of scale {self.server_noise:g} to the '
                    f'aggregate of uploads it reads (no guarantee)')
        return 'none'

    # ------------------------------------------------------------------ counting
    def record_aggregate(self, clients: Tensor, uniform: bool,
                         rows_per_client: Tensor) -> None:
        """A round's aggregate of ``clients``' uploads (``rows_per_client`` rows each),
        ``uniform``: whether the round sampled its clients uniformly."""
        if self.gaussian is not None:
            if self.gaussian.central and uniform:
                self.sampled_rounds += 1
            else:
                self.releases[clients.cpu()] += 1
        if self.laplace is not None:
            self.rows[clients.cpu()] += rows_per_client.cpu()

    def record_vectors(self, clients: Tensor) -> None:
        """One more uploaded vector (a user embedding) of each of ``clients``, through the
        Laplace transform."""
        if self.laplace is not None:
            self.rows[clients.cpu()] += 1

    def record_release(self, clients: Tensor) -> None:
        """One more unamplified Gaussian release of each of ``clients`` (a central cluster
        table, the noised sum of its members' updates)."""
        if self.gaussian is not None:
            self.releases[clients.cpu()] += 1

    # ------------------------------------------------------------------ the figure
    def events(self) -> List[Tuple[dp_accounting.DpEvent, int]]:
        """The releases of the most exposed client, as ``(event, count)`` pairs."""
        out = []
        if self.gaussian is not None:
            sigma = self.gaussian.noise_multiplier
            out.append((accountant.gaussian_event(sigma, self.sample_size, self.num_clients),
                        self.sampled_rounds))
            own = (accountant.SkellamEvent(sigma) if self.gaussian.noise_at == 'distributed'
                   else accountant.gaussian_event(sigma))
            out.append((own, int(self.releases.max())))
        if self.laplace is not None:
            out.append((accountant.laplace_event(self.laplace.noise_multiplier(self.dim)),
                        int(self.rows.max())))
        return out

    def report(self) -> Dict[str, object]:
        """``metrics.json``'s ``privacy`` record: the accountant's :math:`\\epsilon` at
        :math:`\\delta` so far (``None``: no guarantee, :math:`\\epsilon = \\infty`: no
        mechanism, or no noise; without a mechanism :math:`\\delta` is ``None`` too), the
        mechanism, its noise multiplier and clip bound, and the
        counts it composed; whether the server received only secure sums, and where the
        user-level noise was added (``server``, ``client``, ``distributed``)."""
        guarantee = self.gaussian is not None or self.laplace is not None
        out: Dict[str, object] = {
            'mechanism': self.mechanism, 'epsilon': None,
            'delta': self.delta if guarantee else None, 'secure_aggregation': self.secure,
            'noise_at': (self.gaussian.noise_at if self.gaussian is not None
                         else 'client' if self.laplace is not None
                         else 'server' if self.server_noise else None)}
        if not guarantee:
            return out
        if self.gaussian is not None:
            out.update(noise_multiplier=self.gaussian.noise_multiplier,
                       clip=self.gaussian.bound, sampled_rounds=self.sampled_rounds,
                       sample_rate=self.sample_size / self.num_clients)
            if self.gaussian.adaptive is not None:
                out['clip_quantile'] = self.gaussian.adaptive.quantile
        else:
            out.update(noise_multiplier=self.laplace.noise_multiplier(self.dim),
                       clip=self.laplace.clip, clip_mode=self.laplace.mode,
                       l1_sensitivity=self.laplace.l1_sensitivity(self.dim))
        noiseless = self.gaussian is not None and self.gaussian.noise_multiplier == 0
        spent = math.inf if noiseless else accountant.epsilon(self.events(), self.delta)
        out.update(releases=int(self.releases.max()), rows=int(self.rows.max()),
                   accountant=accountant.ACCOUNTANT, neighbours=accountant.NEIGHBOURS,
                   epsilon=spent if math.isfinite(spent) else None)
        return out

    # ------------------------------------------------------------------ state
    def state_dict(self) -> Dict[str, object]:
        state = {'sampled_rounds': self.sampled_rounds, 'releases': self.releases,
                 'rows': self.rows}
        if self.gaussian is not None and self.gaussian.adaptive is not None:
            state['adaptive_clip'] = self.gaussian.adaptive.clip
        return state

    def load_state_dict(self, state: Dict[str, object]) -> None:
        self.sampled_rounds = int(state['sampled_rounds'])
        self.releases = state['releases']
        self.rows = state['rows']
        if 'adaptive_clip' in state:
            self.gaussian.adaptive.clip = float(state['adaptive_clip'])
