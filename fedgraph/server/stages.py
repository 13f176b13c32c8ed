"""The server pipeline: what the server does with a round's uploads once they passed its
checks (:func:`~fedgraph.federated.trust.screen`), as a chain of small stages, each
registered by name as algorithms are.

.. code-block:: text

    uploads -> upload stages (norm bound, DP clip) -> aggregator (mean | weighted | median |
    trimmed mean | yours) -> release stages (DP noise, server noise) -> shared parameters

* an :class:`UploadStage` changes each client's upload before it is aggregated (it sees one
  client's rows and dense parameters at a time);
* the :class:`Aggregator` turns the uploads into the new shared parameters;
* a :class:`ReleaseStage` changes what the server is about to publish (noise).

Register your own with :func:`register_stage` and name it in the configuration
(``TrainConfig(aggregation='name')`` for an aggregator)::

    @register_stage
    class CoordinateMax(Aggregator):
        name = 'max'

        def rows(self, table, row_item, row_owner, update, num_clients, num_samples):
            ...
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Dict, List, Optional, Sequence, Tuple, TypeVar

import torch
from torch import Tensor

from fedgraph.federated.aggregation import (aggregate_dense, aggregate_rows, grouped_statistic,
                                            per_client_vector, sum_rows)
from fedgraph.privacy.gaussian import UserLevelDP
from fedgraph.privacy.upload import bound_norm, server_mean_noise

_STAGES: Dict[str, type] = {}

S = TypeVar('S', bound=type)


def register_stage(cls: S) -> S:
    """Class decorator: makes the stage ``cls`` available under ``cls.name``. Another class
    under a taken name is an error; the same class defined again (a notebook cell run twice)
    replaces it."""
    if not cls.name:
        raise ValueError(f'{cls.__name__} has no name')
    known = _STAGES.get(cls.name)
    redefined = known is not None and (known.__module__, known.__qualname__) == (
        cls.__module__, cls.__qualname__)
    if known is not None and known is not cls and not redefined:
        raise ValueError(f'server stage {cls.name!r} is registered twice: {known.__module__}.'
                         f'{known.__qualname__} and {cls.__module__}.{cls.__qualname__}')
    _STAGES[cls.name] = cls
    return cls


def stage_names(kind: Optional[type] = None) -> List[str]:
    """The registered stages' names (of ``kind`` only, e.g. :class:`Aggregator`)."""
    return [name for name, cls in _STAGES.items() if kind is None or issubclass(cls, kind)]


def resolve_stage(name: str, kind: type) -> type:
    """The stage class of ``kind`` registered as ``name``."""
    cls = _STAGES.get(name)
    if cls is None or not issubclass(cls, kind):
        raise ValueError(f'unknown {kind.__name__.lower()} {name!r}; choose one of '
                         f'{", ".join(stage_names(kind))} or register your own '
                         f'(fedgraph.register_stage)')
    return cls


class ServerStage:
    """A stage of the server pipeline, registered under :attr:`name`."""
    name: ClassVar[str] = ''

    def start_round(self) -> None:
        """Called before a round's uploads reach the pipeline (default: nothing)."""


class UploadStage(ServerStage):
    """Changes each client's upload before aggregation."""

    def __call__(self, row_owner: Tensor, update: Tensor, dense: Dict[str, Tensor],
                 num_clients: int) -> Tuple[Tensor, Dict[str, Tensor]]:
        """The rows ``update`` ``[R, d]`` (row ``r``: client ``row_owner[r]``'s) and the dense
        changes ``{name: [B, ...]}`` of ``num_clients`` clients, changed."""
        raise NotImplementedError

    def in_place(self, row_owner: Tensor, update: Tensor, dense: Dict[str, Tensor],
                 num_clients: int) -> Tuple[Tensor, Dict[str, Tensor]]:
        """The same as calling the stage, free to write the result into ``update``, which
        nothing reads after it (the pipeline's own tensor, or the uploads of a round whose
        engine keeps none). Default: the call."""
        return self(row_owner, update, dense, num_clients)


class Aggregator(ServerStage):
    """Turns a round's uploads into the new shared parameters. Every client weighs alike
    unless :attr:`weighted` (FedAvg by sample count)."""
    weighted: ClassVar[bool] = False

    def rows(self, table: Tensor, row_item: Tensor, row_owner: Tensor, update: Tensor,
             num_clients: int, num_samples: Tensor) -> Tensor:
        """The new row table from ``table`` and the row updates of ``num_clients`` clients
        (``update[r]``: client ``row_owner[r]``'s change of row ``row_item[r]``;
        ``num_samples`` ``[B]``: their samples)."""
        raise NotImplementedError

    def dense(self, update: Tensor, num_samples: Tensor) -> Tensor:
        """The change of a dense shared parameter from the clients' changes ``[B, ...]``."""
        raise NotImplementedError


class ReleaseStage(ServerStage):
    """Changes the new shared parameters before the server publishes them."""

    def __call__(self, row_table: Tensor, dense: Dict[str, Tensor], base: Tensor,
                 num_clients: int, generator: Optional[torch.Generator]) -> None:
        """Changes, in place, the new row table and dense shared parameters aggregated from
        ``num_clients`` clients who trained from ``base``."""
        raise NotImplementedError


@register_stage
class Mean(Aggregator):
    """FedAvg, every client alike: :func:`~fedgraph.federated.aggregation.aggregate_rows`
    (a row's change summed over the clients that uploaded it, over the round's :math:`B`)
    and the mean of the dense changes."""
    name = 'mean'

    def rows(self, table, row_item, row_owner, update, num_clients, num_samples):
        weight = num_samples if self.weighted else None
        return aggregate_rows(table, row_item, row_owner, update, num_clients, weight)

    def dense(self, update, num_samples):
        return aggregate_dense(update, num_samples if self.weighted else None)


@register_stage
class WeightedMean(Mean):
    """FedAvg weighted by the clients' sample counts."""
    name = 'weighted'
    weighted = True


class _Statistic(Aggregator):
    """A robust coordinate-wise statistic, ``statistic`` ``'median'`` or ``'trimmed_mean'``
    (:func:`~fedgraph.federated.aggregation.grouped_statistic`). A dense parameter takes
    it over the round's clients, as Flower's FedMedian and FedTrimmedAvg do. A row of the
    item table takes it over the :math:`n_i` clients that uploaded that row, scaled by their
    share of the round's :math:`B` clients,

    .. math::
        E'_i = E_i + \\frac{n_i}{B}\\, \\mathrm{stat}_{c \\ni i}(\\Delta_{c,i}),

    which is FedAvg's :math:`\\sum_{c \\ni i} \\Delta_{c,i} / B` when the statistic is the
    mean. (The statistic over all :math:`B` clients, counting a client that did not touch
    the row as a zero change, would freeze every row fewer than half the clients touched:
    nearly every item of sparse data.)"""
    statistic: ClassVar[str] = ''
    trim_ratio: float = 0.0

    def rows(self, table, row_item, row_owner, update, num_clients, num_samples):
        if row_item.numel() == 0:
            return table.clone()
        items, statistic, counts = grouped_statistic(update, row_item, self.statistic,
                                                     self.trim_ratio)
        share = (counts.to(table.dtype) / num_clients).unsqueeze(1)
        return table.index_add(0, items, statistic * share)

    def dense(self, update, num_samples):
        flat = update.reshape(update.size(0), -1)
        _, statistic, _ = grouped_statistic(
            flat, torch.zeros(flat.size(0), dtype=torch.long, device=flat.device), self.statistic,
            self.trim_ratio)
        return statistic.view(update.shape[1:])


@register_stage
class Median(_Statistic):
    """The coordinate-wise median (see :class:`_Statistic`)."""
    name = statistic = 'median'


@register_stage
@dataclass
class TrimmedMean(_Statistic):
    """The coordinate-wise mean without the ``trim_ratio`` share of values at each end
    (see :class:`_Statistic`)."""
    name = statistic = 'trimmed_mean'
    trim_ratio: float = 0.2

    def __post_init__(self):
        if not 0 <= self.trim_ratio < 0.5:
            raise ValueError(f'trim_ratio must be in [0, 0.5), got {self.trim_ratio}')


@register_stage
@dataclass
class NormBound(UploadStage):
    """The norm bound of Sun et al. (2019), enforced by the server rather than trusted to
    the clients: each uploaded row update, and each client's dense update (all its dense
    parameters as one vector), scaled to L2 norm at most :math:`C` (``bound``)."""
    name = 'norm_bound'
    bound: float = 1.0

    def __post_init__(self):
        if not self.bound > 0:
            raise ValueError(f'norm_bound must be > 0, got {self.bound}')

    def __call__(self, row_owner, update, dense, num_clients):
        return (bound_norm(update, self.bound),
                per_client_vector(dense, lambda flat: bound_norm(flat, self.bound)))


@register_stage
@dataclass
class DPClip(UploadStage):
    """DP-FedAvg's clipping: each client's whole update to L2 norm at most the mechanism's
    :math:`S` (:meth:`~fedgraph.privacy.gaussian.UserLevelDP.clip_clients`); under adaptive
    clipping it also counts the clients the bound did not cut, for :class:`DPNoise`."""
    name = 'dp_clip'
    mechanism: UserLevelDP = None
    #: The clients of the round whose update the bound did not cut (in one call or summed
    #: over its blocks).
    unclipped: int = 0

    def start_round(self) -> None:
        self.unclipped = 0

    def __call__(self, row_owner, update, dense, num_clients):
        return self._clip(row_owner, update, dense, num_clients, in_place=False)

    def in_place(self, row_owner, update, dense, num_clients):
        """The clipped rows written into ``update``: no second copy of a round's uploads."""
        return self._clip(row_owner, update, dense, num_clients, in_place=True)

    def _clip(self, row_owner, update, dense, num_clients, in_place):
        mechanism = self.mechanism
        norms = mechanism.client_norms(row_owner, update, dense, num_clients)
        if mechanism.adaptive is not None:
            self.unclipped += int((norms <= mechanism.bound).sum())
        return mechanism.clip_clients(row_owner, update, dense, num_clients, norms, in_place)


@register_stage
@dataclass
class DPNoise(ReleaseStage):
    """DP-FedAvg's Gaussian noise :math:`Z / B` on every coordinate of the mean
    (:meth:`~fedgraph.privacy.gaussian.UserLevelDP.sum_noise`); under adaptive clipping,
    then the noised count of :class:`DPClip`'s unclipped clients moves the bound
    (:meth:`~fedgraph.privacy.adaptive.AdaptiveClip.step`)."""
    name = 'dp_noise'
    mechanism: UserLevelDP = None
    clip: Optional[DPClip] = None

    def __call__(self, row_table, dense, base, num_clients, generator):
        for value in [row_table, *dense.values()]:
            value.add_(self.mechanism.sum_noise(value.shape, num_clients, generator,
                                                value.dtype).to(value.device) / num_clients)
        adaptive = self.mechanism.adaptive
        if adaptive is not None:
            noise = float(torch.randn((), generator=generator, dtype=torch.float64))
            adaptive.step(self.clip.unclipped + adaptive.count_std * noise, num_clients)


@register_stage
@dataclass
class ServerNoise(ReleaseStage):
    """Laplace-like noise the server adds to the aggregated row table: the mean of
    ``num_clients`` Laplace draws of scale ``scale``
    (:func:`~fedgraph.privacy.upload.server_mean_noise`; not local DP)."""
    name = 'server_noise'
    scale: float = 0.0

    def __call__(self, row_table, dense, base, num_clients, generator):
        row_table.add_(server_mean_noise(base.shape, self.scale, num_clients, generator,
                                         base.dtype).to(base.device))


@dataclass
class UploadSum:
    """A round's uploads summed as they come, block of clients by block: each client's
    weight :math:`w_c` (1, or its samples under a weighted mean) times its changes, summed
    over the rows of the item table (``rows`` ``[I, d]``: :math:`\\sum_c w_c \\Delta_c`) and
    over each dense shared parameter (``dense``), the weights' sum :math:`\\sum_c w_c`
    (``weight``) and the clients summed (``num_clients``)."""
    rows: Tensor
    dense: Dict[str, Tensor]
    weight: float = 0.0
    num_clients: int = 0

    @classmethod
    def zeros(cls, table: Tensor, dense: Dict[str, Tensor]) -> 'UploadSum':
        """An empty sum for the row table ``table`` and the dense parameters ``dense``."""
        return cls(torch.zeros_like(table),
                   {name: torch.zeros_like(value) for name, value in dense.items()})


@dataclass
class ServerPipeline:
    """The server's stages: ``uploads`` in order, the ``aggregator``, ``releases`` in order.
    Default: FedAvg's mean, nothing before or after it."""
    aggregator: Aggregator = field(default_factory=Mean)
    uploads: Sequence[UploadStage] = ()
    releases: Sequence[ReleaseStage] = ()

    @property
    def privacy(self) -> Optional[UserLevelDP]:
        """DP-FedAvg's mechanism when the pipeline clips for it (``None``: no user-level
        DP)."""
        clip = next((stage for stage in self.uploads if isinstance(stage, DPClip)), None)
        return None if clip is None else clip.mechanism

    @property
    def server_noise(self) -> float:
        """The scale of the Laplace noise the server adds to the aggregate (0: none)."""
        return sum(stage.scale for stage in self.releases if isinstance(stage, ServerNoise))

    @property
    def stages(self) -> List[ServerStage]:
        """Every stage, in the order they run."""
        return [*self.uploads, self.aggregator, *self.releases]

    def describe(self) -> str:
        """The stages' names, joined by arrows."""
        return ' -> '.join(stage.name for stage in self.stages)

    def __call__(self, row_table: Tensor, dense: Dict[str, Tensor], base: Tensor,
                 row_item: Tensor, row_owner: Tensor, update: Tensor,
                 dense_update: Dict[str, Tensor], num_clients: int, num_samples: Tensor,
                 generator: Optional[torch.Generator], consume: bool = False) -> None:
        """Sets ``row_table`` (in place) to the aggregate of ``num_clients`` clients' row
        updates over ``base``, the table they trained from, and adds the aggregated change
        to each dense shared parameter of ``dense``; then the release stages. ``consume``:
        nothing reads ``update`` afterwards, and the first upload stage may write into it
        (:meth:`UploadStage.in_place`), as every later one may into its predecessor's."""
        self.start_round()
        update, dense_update = self._through_uploads(row_owner, update, dense_update,
                                                     num_clients, consume)
        with torch.no_grad():
            row_table.copy_(self.aggregator.rows(base, row_item, row_owner, update,
                                                 num_clients, num_samples))
            for name, value in dense.items():
                value.add_(self.aggregator.dense(dense_update[name], num_samples))
            for stage in self.releases:
                stage(row_table, dense, base, num_clients, generator)

    def _through_uploads(self, row_owner: Tensor, update: Tensor,
                         dense_update: Dict[str, Tensor], num_clients: int, consume: bool
                         ) -> Tuple[Tensor, Dict[str, Tensor]]:
        """The uploads through the upload stages in order (``consume``: the first may write
        into ``update``, as every later one may into its predecessor's)."""
        uploaded = update
        for stage in self.uploads:
            owned = consume or update is not uploaded
            update, dense_update = (stage.in_place if owned else stage)(
                row_owner, update, dense_update, num_clients)
        return update, dense_update

    def start_round(self) -> None:
        """Tells every stage that a round's uploads are coming."""
        for stage in self.stages:
            stage.start_round()

    @property
    def sums(self) -> bool:
        """Whether the aggregate is the uploads' (weighted) mean, which a round can sum
        block by block (:meth:`add_block`) rather than hold every upload at once."""
        return isinstance(self.aggregator, Mean)

    def add_block(self, total: UploadSum, row_item: Tensor, row_owner: Tensor, update: Tensor,
                  dense_update: Dict[str, Tensor], num_clients: int, num_samples: Tensor,
                  consume: bool = False) -> None:
        """Adds a block of ``num_clients`` clients' uploads (as :meth:`__call__` takes
        them) to ``total``, through the upload stages, each client weighing 1 or, under a
        weighted mean, its samples ``num_samples`` (:meth:`start_round` first, once a
        round). Upload stages see one client's whole
        upload at a time, so a round summed block by block aggregates what the whole round
        would (up to the order of the floating-point sums); the release comes once, with
        :meth:`release_sum`."""
        if not self.sums:
            raise ValueError(f'a round summed block by block takes the mean, not '
                             f'{self.describe()}')
        update, dense_update = self._through_uploads(row_owner, update, dense_update,
                                                     num_clients, consume)
        with torch.no_grad():
            if self.aggregator.weighted:
                weight = num_samples.to(update.dtype)
                update = update * weight[row_owner].unsqueeze(1)
                dense_update = {name: value * weight.view(-1, *([1] * (value.dim() - 1)))
                                for name, value in dense_update.items()}
                total.weight += float(weight.sum())
            else:
                total.weight += num_clients
            total.rows += sum_rows(total.rows, row_item, update)
            for name, value in total.dense.items():
                value += dense_update[name].sum(0)
        total.num_clients += num_clients

    def release_sum(self, row_table: Tensor, dense: Dict[str, Tensor], base: Tensor,
                    total: UploadSum, generator: Optional[torch.Generator]) -> None:
        """Sets ``row_table`` to ``base`` plus the summed changes' mean
        :math:`\\sum_c w_c \\Delta_c / \\sum_c w_c`, adds the dense changes' mean to
        ``dense``, then runs the release stages."""
        with torch.no_grad():
            row_table.copy_(base + (total.rows / total.weight).to(base.dtype))
            for name, value in dense.items():
                value.add_((total.dense[name] / total.weight).to(value.dtype))
            for stage in self.releases:
                stage(row_table, dense, base, total.num_clients, generator)

    def release_mean(self, row_table: Tensor, dense: Dict[str, Tensor], base: Tensor,
                     row_sum: Tensor, dense_sums: Dict[str, Tensor], num_clients: int,
                     generator: Optional[torch.Generator]) -> None:
        """What the server does with a secure sum (:mod:`fedgraph.federated.secure`) of
        ``num_clients`` clients' changes, ``row_sum`` ``[I, d]`` and ``dense_sums``: their
        mean over ``base`` (FedAvg; the upload stages and any other aggregator need each
        upload), then the release stages."""
        if self.uploads or not isinstance(self.aggregator, Mean) or self.aggregator.weighted:
            raise ValueError(f'a secure sum takes the unweighted mean and no upload stage, '
                             f'not {self.describe()}')
        self.release_sum(row_table, dense, base,
                         UploadSum(row_sum, dense_sums, num_clients, num_clients), generator)


def build_pipeline(aggregation: str = 'mean', trim_ratio: float = 0.2,
                   norm_bound: Optional[float] = None,
                   privacy: Optional[UserLevelDP] = None,
                   server_noise: float = 0.0) -> ServerPipeline:
    """The pipeline of the configuration's settings: a norm bound (``norm_bound``), DP-FedAvg's
    clipping (``privacy``), the aggregator registered as ``aggregation`` (a trimmed mean with
    ``trim_ratio``), DP-FedAvg's noise, the server's Laplace noise (``server_noise``).
    Distributed DP's clipping and noise are the clients' (no stage of the server's)."""
    cls = resolve_stage(aggregation, Aggregator)
    aggregator = cls(trim_ratio=trim_ratio) if issubclass(cls, TrimmedMean) else cls()
    uploads: List[UploadStage] = []
    releases: List[ReleaseStage] = []
    if norm_bound is not None:
        uploads.append(NormBound(norm_bound))
    if privacy is not None and privacy.noise_at != 'distributed':
        clip = DPClip(privacy)
        uploads.append(clip)
        releases.append(DPNoise(privacy, clip))
    if server_noise:
        releases.append(ServerNoise(server_noise))
    return ServerPipeline(aggregator, tuple(uploads), tuple(releases))

