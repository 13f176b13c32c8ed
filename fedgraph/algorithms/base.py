"""The algorithm contract: what an algorithm states, and what the engines and Flower ask of it.

An algorithm is one class in one module, registered by name
(:func:`~fedgraph.algorithms.registry.register`). It states

* **its own settings** -- a dataclass (:attr:`Algorithm.Settings`), the algorithm's section of
  :class:`~fedgraph.config.TrainConfig`; the defaults it gives the shared settings
  (:attr:`Algorithm.shared_defaults`, e.g. clipping for the graph models) and the shared
  settings that mean nothing for it (:attr:`Algorithm.unused_settings`, an error when set);
* **its model** (:meth:`Algorithm.build_model`) -- a
  :class:`~fedgraph.nn.recommender.FederatedRecommender` whose parameters declare
  themselves shared or private: the item table is a *row table* (clients upload the rows
  they touched, the server averages each row over the clients that uploaded it), the
  head's :meth:`~fedgraph.nn.heads.ScoreHead.shared_parameters` are *dense* (uploaded
  whole, plain FedAvg), and its :meth:`~fedgraph.nn.heads.ScoreHead.private_parameters`
  never leave the client;
* **its local step** (:meth:`Algorithm.local_training`) -- learning rates, mini-batches,
  negatives, one joint SGD step or PFedRec's alternating steps, what an upload goes
  through, whether a client keeps its fine-tuned item rows (dual personalization);
* **optional hooks** -- :meth:`Algorithm.extend` (in-process) and
  :meth:`Algorithm.extend_remote` (a deployment's server) wrap the engine with server-side
  work (enrollment, pre-training, after-round clustering, scoring levels, uniformity,
  export: the graph models' :class:`~fedgraph.federated.graph.GraphFederatedEngine`), and
  :meth:`Algorithm.node_hooks` gives the node halves of those steps
  (:class:`~fedgraph.federated.node.NodeHooks`).

Every two-sided step is written once, as a client half and a server half
(:meth:`~fedgraph.federated.engine.FederatedEngine.local_round` and
:meth:`~fedgraph.federated.engine.FederatedEngine.aggregate`; the graph models' enrollment,
pre-training and user uploads): the in-process engine calls both halves, a deployment (in
one process or on Flower) calls the client half on its nodes and the server half in
:class:`~fedgraph.server.deployment.Deployment`, and one round loop drives both
(:class:`~fedgraph.server.loop.Server`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, ClassVar, Dict, List, Mapping, Optional, Tuple, Type

import torch

from fedgraph.settings import setting
from fedgraph.deprecation import warn_renamed
from fedgraph.data.partition import ClientPartition
from fedgraph.federated.node import NodeHooks
from fedgraph.federated.engine import FederatedEngine
from fedgraph.federated.local import SGD, Adam, BCELoss, BPRLoss, LocalTraining
from fedgraph.federated.messages import Payload
from fedgraph.federated.reference import ReferenceEngine
from fedgraph.federated.round_engine import RoundEngine
from fedgraph.federated.secure import SecureAggregation
from fedgraph.federated.selection import ClientSelector
from fedgraph.federated.streams import ClientStreams
from fedgraph.privacy import accountant
from fedgraph.privacy.adaptive import AdaptiveClip
from fedgraph.privacy.gaussian import UserLevelDP
from fedgraph.privacy.secure_sum import SecAggPlus
from fedgraph.privacy.upload import UploadTransform
from fedgraph.nn.recommender import FederatedRecommender
from fedgraph.server.stages import ServerPipeline, build_pipeline


@dataclass
class AlgorithmSettings:
    """An algorithm's own section of the configuration (a dataclass of its settings, with
    the paper's defaults). :meth:`validate` raises ``ValueError`` for values out of range."""

    def validate(self) -> None:
        """Checks the values (the base class has none to check)."""

    @classmethod
    def names(cls) -> Tuple[str, ...]:
        return tuple(field.name for field in dataclasses.fields(cls))


#: The shared settings of federation and privacy that no centralized model uses.
CENTRALIZED_UNUSED = ('client_ratio', 'clients_per_round', 'aggregation', 'trim_ratio',
                      'norm_bound', 'clip', 'clip_mode', 'ldp_scale', 'noise_at', 'dp_epsilon',
                      'dp_delta', 'dp_noise_multiplier', 'dp_clip', 'dp_clip_quantile',
                      'dp_clip_lr', 'dp_noise_at',
                      'secure_aggregation', 'secure_min_survivors', 'secure_dropout', 'engine',
                      'client_streams', 'round_block')

#: The shared settings that an algorithm whose server reads each client's whole table
#: (GPFedRec, FedRAP, CoFedRec) does not use: none of the upload defences, noise or secure
#: aggregation apply; the selection, the engine and the clients' streams do.
WHOLE_TABLE_UNUSED = tuple(name for name in CENTRALIZED_UNUSED
                           if name not in ('client_ratio', 'clients_per_round', 'engine',
                                           'client_streams'))

#: The local losses and optimizers a client can train with, by setting value.
LOSSES = {'bce': BCELoss, 'bpr': BPRLoss}
OPTIMIZERS = {'sgd': SGD, 'adam': Adam}


@dataclass
class ClientSettings(AlgorithmSettings):
    """The settings of a client's local step over sampled negatives: by default PFedRec's
    SGD on BCE; the PerFedRec++ code's recipe is BPR, Adam and L2 regularization."""
    lr: float = setting(0.1, 'learning rate of the private parameters (and of dense shared '
                             'ones)')
    item_lr_eta: float = setting(80.0, "item rows' learning rate = lr x num_items x eta "
                                       "(SGD), lr x eta (Adam)")
    dual_personalization: bool = setting(
        False, 'clients keep their fine-tuned item rows and score with them')
    loss: str = setting('bce', "local loss: 'bce' (pointwise) or 'bpr' (pairwise, "
                               "LightGCN's)")
    optimizer: str = setting('sgd', "local optimizer: 'sgd' or 'adam' (a client's moments "
                                    "start afresh each round)")
    l2_reg: float = setting(0.0, 'L2 regularization: lambda/2 (|e_i|^2 + |theta_u|^2) per '
                                 'sample, on its item row and the private parameters')

    def validate(self) -> None:
        if self.lr < 0 or self.item_lr_eta < 0 or self.l2_reg < 0:
            raise ValueError('lr, item_lr_eta and l2_reg must be >= 0')
        if self.loss not in LOSSES or self.optimizer not in OPTIMIZERS:
            raise ValueError(f'loss must be one of {tuple(LOSSES)} and optimizer one of '
                             f'{tuple(OPTIMIZERS)}, got {self.loss!r} and {self.optimizer!r}')

    @property
    def scales_with_gradient(self) -> bool:
        """Whether the optimizer's steps grow with the gradient (SGD, not Adam)."""
        return OPTIMIZERS[self.optimizer].scales_with_gradient

    def item_lr(self, num_items: int) -> float:
        """The item rows' learning rate: ``lr * num_items * eta`` with SGD (PFedRec's
        scaling: a row's gradient is a mean over the client's samples), ``lr * eta`` with
        Adam, whose steps do not scale with the gradient."""
        scale = num_items if self.scales_with_gradient else 1
        return self.lr * scale * self.item_lr_eta


class Algorithm:
    """Base class of an algorithm (see the module docstring for the contract).

    Subclasses set :attr:`name`, :attr:`summary` and :attr:`Settings`, and implement
    :meth:`build_model` and :meth:`local_training`; the rest has defaults that serve a
    federated model trained by the vectorized engine.

    An algorithm is made from a run's configuration, ``Algorithm(config)``: a
    :class:`~fedgraph.config.TrainConfig` (which finds its algorithm through the registry,
    so this module does not import it) whose ``config.settings`` is an instance of
    :attr:`Settings`.
    """

    #: The name it is registered and chosen under (``--algorithm NAME``).
    name: ClassVar[str] = ''
    #: One line for ``--help``.
    summary: ClassVar[str] = ''
    #: Its own settings.
    Settings: ClassVar[Type[AlgorithmSettings]] = AlgorithmSettings
    #: Defaults it gives shared settings whose own default is ``None``.
    shared_defaults: ClassVar[Mapping[str, object]] = {}
    #: Shared settings that mean nothing for it: setting one is an error.
    unused_settings: ClassVar[Tuple[str, ...]] = ()
    #: Whether clients train it on their devices (``False``: a centralized baseline).
    federated: ClassVar[bool] = True
    #: The engines it trains on: vectorized (in-process, and the halves of a deployment's
    #: rounds: :meth:`vectorized_engine`), and the reference loop per client.
    engine_class: ClassVar[Type[FederatedEngine]] = FederatedEngine
    reference_class: ClassVar[Type[ReferenceEngine]] = ReferenceEngine
    #: Names its settings had in earlier versions' ``config.json``, and their names now.
    renamed_settings: ClassVar[Mapping[str, str]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if 'device_hooks' in vars(cls):  # the name of node_hooks before 0.3
            warn_renamed(f'{cls.__qualname__}.device_hooks', 'node_hooks')
            cls.node_hooks = vars(cls)['device_hooks']

    def __init__(self, config):
        self.config = config
        self.settings = config.settings

    # ------------------------------------------------------------------ the model
    def build_model(self, num_clients: int, num_items: int,
                    generator: torch.Generator) -> FederatedRecommender:
        """The initial model: shared parameters and every client's private state, drawn
        from ``generator``."""
        raise NotImplementedError

    def local_training(self, num_items: int) -> LocalTraining:
        """How a client trains in a round."""
        raise NotImplementedError

    def client_training(self, num_items: int, alternating: bool = False,
                        lr_scale: float = 1.0) -> LocalTraining:
        """The local training of :class:`ClientSettings`: the settings' loss, optimizer, L2
        regularization and learning rates (times ``lr_scale``), the shared batch size,
        epochs and negatives and the upload transform; ``alternating``:
        PFedRec's two steps per mini-batch."""
        settings, config = self.settings, self.config
        return LocalTraining(
            lr=settings.lr * lr_scale, item_lr=settings.item_lr(num_items) * lr_scale,
            batch_size=config.batch_size, local_epochs=config.local_epochs,
            num_negatives=config.num_negatives,
            upload=self.upload_transform(), alternating=alternating,
            personalize_items=settings.dual_personalization,
            loss=LOSSES[settings.loss](), optimizer=OPTIMIZERS[settings.optimizer](),
            l2_reg=settings.l2_reg)

    def server_pipeline(self, num_clients: int) -> ServerPipeline:
        """What the server does with a round's uploads
        (:class:`~fedgraph.server.stages.ServerPipeline`): ``config.norm_bound``, DP-FedAvg's
        clipping (:meth:`user_level_dp`), the aggregator registered as
        ``config.aggregation`` (with ``config.trim_ratio``), DP-FedAvg's noise and the
        server's Laplace noise (:meth:`server_noise`). An algorithm may add stages of its
        own."""
        config = self.config
        return build_pipeline(config.aggregation, config.trim_ratio, config.norm_bound or None,
                              self.user_level_dp(num_clients), self.server_noise())

    def upload_transform(self) -> UploadTransform:
        """What an upload goes through: clipping at ``config.clip`` (0: none; per row in L2
        norm or per coordinate, ``config.clip_mode``) and, when the clients add the noise
        (``config.noise_at='client'``: local DP), Laplace noise of scale
        ``config.ldp_scale``."""
        config = self.config
        scale = (config.ldp_scale or 0.0) if config.noise_at == 'client' else 0.0
        return UploadTransform(config.clip or None, scale, config.clip_mode)

    def server_noise(self) -> float:
        """The Laplace scale whose mean over a round's clients the server adds to the
        aggregated item table (``config.noise_at='server'``, not local DP); 0 otherwise."""
        config = self.config
        return (config.ldp_scale or 0.0) if config.noise_at == 'server' else 0.0

    def user_level_dp(self, num_clients: int) -> Optional[UserLevelDP]:
        """DP-FedAvg's mechanism (``None`` without ``dp_epsilon`` or
        ``dp_noise_multiplier``): the clip bound ``dp_clip`` and the noise multiplier given,
        or the smallest that keeps :meth:`planned_releases` within ``dp_epsilon`` at
        ``dp_delta`` (default :math:`1/N`); with ``dp_clip_quantile``, the bound adapts
        (:mod:`fedgraph.privacy.adaptive`; the count's noise is part of that
        multiplier)."""
        config = self.config
        if config.dp_epsilon is None and config.dp_noise_multiplier is None:
            return None
        sigma = config.dp_noise_multiplier
        if sigma is None:
            delta = config.dp_delta or 1.0 / num_clients
            sample_size = self.build_selector(num_clients).count
            sigma = accountant.calibrate(config.dp_epsilon, delta, lambda noise: (
                self.planned_releases(noise, num_clients, sample_size)))
        adaptive = None
        if config.dp_clip_quantile is not None:
            adaptive = AdaptiveClip.for_rounds(config.dp_clip, config.dp_clip_quantile,
                                               config.dp_clip_lr,
                                               self.build_selector(num_clients).count)
        return UserLevelDP(config.dp_clip, sigma, config.dp_noise_at, adaptive)

    def secure_aggregation(self, num_users: int, dim: int,
                           clients: int) -> Optional[SecureAggregation]:
        """The secure sum of ``config.secure_aggregation`` for a population of ``num_users``
        whose rounds take ``clients`` clients, each uploading ``dim`` coordinates (the whole
        item table and the dense shared parameters), with distributed DP's noise shares
        under ``dp_noise_at='distributed'``; ``None`` without. A device computes the same
        from the run's configuration: the noise it adds is its own decision."""
        config = self.config
        if not config.secure_aggregation:
            return None
        protocol = SecAggPlus(min_survivors=config.secure_min_survivors,
                              dropout=config.secure_dropout)
        return SecureAggregation.build(protocol, self.user_level_dp(num_users), dim, clients)

    def planned_releases(self, noise_multiplier: float, num_clients: int, sample_size: int):
        """The Gaussian releases of a run of ``config.rounds`` rounds for its most exposed
        client -- one taken in every round -- as :func:`~fedgraph.privacy.accountant.epsilon`
        takes them: a sampled aggregate each round, and :meth:`releases_per_round` others."""
        sampled, others = self.releases_per_round()
        rounds = self.config.rounds
        own = (accountant.SkellamEvent(noise_multiplier)
               if self.config.dp_noise_at == 'distributed'
               else accountant.gaussian_event(noise_multiplier))
        return [(accountant.gaussian_event(noise_multiplier, sample_size, num_clients),
                 rounds if sampled else 0),
                (own, rounds * others)]

    def releases_per_round(self) -> Tuple[bool, int]:
        """What a client releases in a round under DP-FedAvg: whether the aggregate is a
        release amplified by uniform sampling (central noise), and how many releases are
        not (a local upload). Algorithms with more uploads add theirs."""
        return (True, 0) if self.config.dp_noise_at == 'server' else (False, 1)

    def build_selector(self, num_clients: int) -> ClientSelector:
        """The clients of a round: ``clients_per_round`` (at most all) or ``client_ratio``
        of them (default: all)."""
        count = self.config.clients_per_round
        return ClientSelector(num_clients, self.config.client_ratio,
                              None if count is None else min(count, num_clients))

    # ------------------------------------------------------------------ the engine
    def build_engine(self, partition: ClientPartition, generator: torch.Generator,
                     known: Optional[ClientPartition] = None) -> RoundEngine:
        """The in-process engine over ``partition`` (``known``: the items each client never
        draws as a negative): the model drawn from ``generator``, the vectorized engine
        (or the reference engine, ``config.engine='reference'``), then :meth:`extend`."""
        config = self.config
        model = self.build_model(partition.num_clients, partition.num_items,
                                 generator).to(config.device)
        server = self.server_pipeline(partition.num_clients)
        selector = self.build_selector(partition.num_clients)
        if config.engine == 'vectorized':
            streams = ClientStreams() if config.client_streams else None
            engine = self.vectorized_engine(model, partition, selector, known, streams,
                                            server, self.secure_aggregation(
                                                partition.num_clients, model.shared_numel(),
                                                selector.count))
            engine.round_block = config.round_block
        elif config.client_streams:
            raise ValueError('client streams need the vectorized engine')
        else:
            engine = self.reference_class(model, partition,
                                          self.local_training(partition.num_items), selector,
                                          known, server,
                                          **self.engine_arguments(model, partition.num_clients))
        if config.dp_delta is not None:
            engine.ledger.delta = config.dp_delta
        return self.extend(engine, partition, generator)

    def vectorized_engine(self, model: FederatedRecommender, partition: ClientPartition,
                          selector: ClientSelector, known: Optional[ClientPartition] = None,
                          streams: Optional[ClientStreams] = None,
                          server: Optional[ServerPipeline] = None,
                          secure: Optional[SecureAggregation] = None) -> FederatedEngine:
        """Its :attr:`engine_class` over ``model`` and ``partition``: the in-process engine
        before :meth:`extend`, a deployment's server (with no interactions) and a node's
        client halves (its users only)."""
        return self.engine_class(model, partition, self.local_training(model.num_items),
                                 selector, known, streams, self.config.closed_form, server,
                                 secure, **self.engine_arguments(model, model.num_clients))

    def engine_arguments(self, model: FederatedRecommender, num_clients: int
                         ) -> Dict[str, object]:
        """Hook: keyword arguments of :attr:`engine_class` and :attr:`reference_class` beyond
        the common ones (default: none)."""
        return {}

    def extend(self, engine: FederatedEngine, partition: ClientPartition,
               generator: torch.Generator) -> RoundEngine:
        """Hook: the engine with the algorithm's server-side work around it (enrollment,
        pre-training, after-round steps, scoring levels). Default: the engine itself."""
        return engine

    def extend_remote(self, engine: FederatedEngine, generator: torch.Generator,
                      enroll: Callable[[int], List[Payload]]) -> RoundEngine:
        """Hook: :meth:`extend` for a deployment, whose server holds ``engine`` without any
        interactions: ``enroll(seed)`` hands the devices their initial private parameters and
        returns what they upload when they enroll (:meth:`NodeHooks.enroll
        <fedgraph.federated.node.NodeHooks.enroll>` with their streams of ``seed``).
        Default: enroll with seed 0 (no draws), the engine itself."""
        enroll(0)
        return engine

    def node_hooks(self) -> NodeHooks:
        """The node halves of its steps beyond local training (default: none)."""
        return NodeHooks()
