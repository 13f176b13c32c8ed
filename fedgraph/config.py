"""The configuration of a training run: the settings every algorithm shares, in four sections
(data, federation, privacy, run), and the chosen algorithm's own section
(:attr:`~fedgraph.algorithms.base.Algorithm.Settings`)."""
from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from fedgraph.privacy.gaussian import NOISE_AT
from fedgraph.settings import non_finite_settings, setting

log = logging.getLogger(__name__)

#: The shared settings by section (the order of ``--help``).
SECTIONS = {
    'data': ('dataset', 'data_root', 'data_path', 'user_col', 'item_col', 'rating_col',
             'time_col', 'time_format', 'min_rating', 'data_digest', 'protocol',
             'split_ratios', 'split_mode', 'eval_negatives', 'unseen_candidates'),
    'federation': ('rounds', 'seed', 'dim', 'batch_size', 'local_epochs', 'num_negatives',
                   'client_ratio', 'clients_per_round', 'aggregation', 'trim_ratio',
                   'norm_bound'),
    'privacy': ('clip', 'clip_mode', 'ldp_scale', 'noise_at', 'dp_epsilon', 'dp_delta',
                'dp_noise_multiplier', 'dp_clip', 'dp_clip_quantile', 'dp_clip_lr',
                'dp_noise_at', 'secure_aggregation',
                'secure_min_survivors', 'secure_dropout'),
    'run': ('eval_every', 'patience', 'checkpoint_every', 'device', 'engine',
            'closed_form', 'client_streams', 'round_block', 'threads'),
}

#: What a shared setting left at ``None`` means when the algorithm gives it no default.
_FALLBACKS = {'clip_mode': 'l2', 'batch_size': 256, 'local_epochs': 1, 'num_negatives': 4}

_CHOICES = {'protocol': ('sampled', 'full'),
            'engine': ('vectorized', 'reference'),
            'split_mode': (None, 'random', 'temporal', 'predefined'),
            'clip_mode': (None, 'l2', 'coordinate'), 'noise_at': ('client', 'server'),
            'dp_noise_at': NOISE_AT}

#: The shared settings that turn on user-level DP (DP-FedAvg); with one of them set, the
#: algorithm's defaults for the Laplace mechanism's settings are not applied, and without
#: them its default DP clip bound is not.
DP_SETTINGS = ('dp_epsilon', 'dp_noise_multiplier')
_LAPLACE_SETTINGS = ('clip', 'clip_mode', 'ldp_scale')
#: Settings that say one thing two ways: the one given overrides the algorithm's default of
#: the other.
_ALTERNATIVES = {'client_ratio': 'clients_per_round', 'clients_per_round': 'client_ratio'}


@dataclass(init=False)
class TrainConfig:
    """Everything a run depends on; saved as ``config.json`` next to its ``metrics.json``.

    The shared settings default to PFedRec's on MovieLens-100K (d = 32, all users every
    round, 1 local epoch, batch 256, 4 negatives, 100 rounds); a shared setting left at
    ``None`` takes the algorithm's default (``shared_defaults``: the graph models clamp each
    uploaded coordinate to 0.5, add Laplace noise of scale 0.1 and take 256 clients a
    round), else none (clip mode: L2). The
    algorithm's own settings are passed by name or as ``settings``::

        TrainConfig(algorithm='perfedrec++', rounds=20, pretrain_rounds=5)

    A name that is neither a shared setting nor one of the algorithm's, or a shared setting
    the algorithm does not use (``unused_settings``), is an error that names it.
    ``config.num_layers`` reads the algorithm's ``config.settings.num_layers``.
    """
    algorithm: str = 'pfedrec'
    # data
    dataset: str = setting('ml-100k',
        'data set: a name or file format of fedgraph.data.load_dataset')
    data_root: Optional[str] = setting(None,
        'folder of the named data sets\' raw files (default: datasets/)')
    data_path: Optional[str] = setting(None,
        'the file of a file-format data set (csv, tsv, pfedrec, amazon, ...; a folder for '
        'lightgcn)')
    user_col: Optional[str] = setting(None,
        'csv/tsv: the user column, a header name or a 0-based position (default: user)')
    item_col: Optional[str] = setting(None,
        'csv/tsv: the item column (default: item)')
    rating_col: Optional[str] = setting(None, 'csv/tsv: the rating column (default: none)')
    time_col: Optional[str] = setting(None, 'csv/tsv: the timestamp column (default: none)')
    time_format: Optional[str] = setting(None,
        "how timestamps are written: 'unix', 'iso' (ISO 8601) or a strptime pattern "
        "(default: Unix seconds or ISO 8601)")
    min_rating: Optional[float] = setting(None,
        'keep only interactions rated at least this (default: every rating > 0)')
    data_digest: Optional[str] = setting(None,
        'SHA-256 of the interactions a run trained on; recorded by the run, checked when '
        'it is resumed or scored again')
    protocol: str = setting('sampled',
        "'sampled' (leave-one-out, sampled negatives) or 'full' (ratio split, all items)")
    split_ratios: Tuple[float, float, float] = setting((0.8, 0.1, 0.1),
        'train/val/test ratios of the full-ranking protocol')
    split_mode: Optional[str] = setting(None,
        "full ranking: 'random' or 'temporal' ratio split, or 'predefined': the data's own "
        "split (a LightGCN folder's files; the default when the data has one, else random)")
    eval_negatives: int = setting(99,
        'sampled negatives per held-out item (sampled protocol)')
    unseen_candidates: bool = setting(False,
        "sampled protocol: training negatives never include a user's evaluation negatives, "
        "so that no model learns to rank them down before it is scored on them (off: the "
        "PFedRec code's negatives, any item the user never rated)")
    # federation
    rounds: int = setting(100,
        'federated rounds (centralized: epochs)')
    seed: int = setting(0,
        'seed of the initial model, the selection and every sample')
    dim: int = setting(32,
        'embedding size d')
    batch_size: Optional[int] = setting(None,
        "local mini-batch size (default: the algorithm's, else 256)")
    local_epochs: Optional[int] = setting(None,
        "passes over the local data per round (default: the algorithm's, else 1)")
    num_negatives: Optional[int] = setting(None,
        "training negatives per positive, redrawn every round (default: the algorithm's, "
        "else 4)")
    client_ratio: Optional[float] = setting(None,
        'fraction of clients per round (default: all)')
    clients_per_round: Optional[int] = setting(None,
        'number of clients per round (instead of --client-ratio)')
    aggregation: str = setting('mean',
        "'mean' (unweighted FedAvg), 'weighted' (by sample count), or the robust "
        "'median' / 'trimmed_mean' (coordinate-wise, per item row over its uploaders), or "
        "an aggregator registered with fedgraph.register_stage")
    trim_ratio: float = setting(0.2,
        'trimmed_mean: the share of a row\'s uploads cut at each end (< 0.5)')
    norm_bound: Optional[float] = setting(None,
        'the server scales each uploaded row update (and each client\'s dense update) to L2 '
        'norm at most this before aggregating')
    # privacy
    clip: Optional[float] = setting(None,
        'bound of each uploaded row update (0: none)')
    clip_mode: Optional[str] = setting(None,
        "'l2' (scale a row to norm at most --clip) or 'coordinate' (clamp each coordinate, "
        "the PerFedRec++ code's); default: the algorithm's, else l2")
    ldp_scale: Optional[float] = setting(None,
        'Laplace noise scale on uploads (needs --clip)')
    noise_at: str = setting('client',
        "'client': each client noises its upload (local DP); 'server': the server adds the "
        "mean of the round's clients' draws to the aggregate, as the PerFedRec++ code does "
        "(NOT local DP: for like-for-like comparison only)")
    dp_epsilon: Optional[float] = setting(None,
        'user-level DP (DP-FedAvg): the epsilon the whole run may spend; the noise '
        'multiplier is calibrated to it before training (instead of --dp-noise-multiplier)')
    dp_delta: Optional[float] = setting(None,
        'user-level DP: delta of the (epsilon, delta) reported every round (default: '
        '1 / number of users)')
    dp_noise_multiplier: Optional[float] = setting(None,
        'user-level DP: the Gaussian noise\'s standard deviation over --dp-clip')
    dp_clip: Optional[float] = setting(None,
        'user-level DP: the L2 bound of a client\'s whole update (default: the '
        'algorithm\'s)')
    dp_clip_quantile: Optional[float] = setting(None,
        'user-level DP: adapt the clip bound each round towards this quantile of the clients\' '
        'update norms (adaptive clipping, Andrew et al. 2021; e.g. 0.5); --dp-clip is the '
        'first round\'s bound')
    dp_clip_lr: float = setting(0.2,
        'adaptive clipping: the geometric step of the bound')
    dp_noise_at: str = setting('server',
        "user-level DP: 'server' adds the noise to the sum (central DP), 'client' to each "
        "upload (local DP), 'distributed' each client its share of the sum's noise (needs "
        "--secure-aggregation)")
    secure_aggregation: bool = setting(False,
        'the server receives only the sum of a round\'s uploads (SecAgg+): each client '
        'uploads its whole update, masked')
    secure_min_survivors: float = setting(1.0,
        'secure aggregation: the share of a round\'s clients that must upload for the '
        'server to unmask the sum (distributed DP noise is sized for this many)')
    secure_dropout: float = setting(0.0,
        'secure aggregation, in-process: the probability that a client drops out of the '
        'protocol after the keys were shared (simulated)')
    # run
    eval_every: int = setting(1,
        'evaluate every N rounds')
    patience: int = setting(0,
        'stop after this many evaluations without a better validation metric (0: never)')
    checkpoint_every: int = setting(10,
        'save a checkpoint every N rounds and after the last (0: never; the run cannot '
        'be resumed)')
    device: str = setting('cpu',
        'cpu or cuda')
    engine: str = setting('vectorized',
        "'vectorized' or 'reference' (one model per client, for checking)")
    closed_form: bool = setting(True,
        'train a linear or dot-product head with BCE and SGD in closed form, in one compiled '
        'kernel per round (numba); off: autograd, as for every other model')
    client_streams: bool = setting(False,
        'each client draws its randomness from its own stream, as on devices '
        '(the Flower apps do)')
    round_block: Optional[int] = setting(None,
        "train a round's clients N at a time, each block's uploads summed and dropped before "
        'the next trains: the memory of a block, not of the round (the mean aggregator; not '
        'under secure aggregation)')
    threads: Optional[int] = setting(None,
        'intra-op CPU threads (default: OMP_NUM_THREADS, else the CPUs this process may use: '
        'its affinity and cgroup quota)')
    # the algorithm's own section
    settings: Any = None

    def __init__(self, algorithm: str = 'pfedrec', settings: Any = None, **values: Any):
        from fedgraph.algorithms.registry import resolve

        cls = resolve(algorithm)
        self.algorithm = algorithm
        shared = shared_fields()
        # An algorithm setting given as None takes the algorithm's default.
        own = {name: value for name, value in values.items()
               if name not in shared and value is not None}
        unknown = set(own) - set(cls.Settings.names())
        if unknown:
            raise ValueError(
                f'{algorithm} has no setting {", ".join(sorted(unknown))}; its own settings: '
                f'{", ".join(cls.Settings.names()) or "none"}')
        # Under user-level DP or secure aggregation the Laplace noise per uploaded row is not
        # the algorithm's default: the first replaces it, under the second the server reads
        # no upload.
        private = any(values.get(name) is not None for name in DP_SETTINGS)
        no_laplace = private or bool(values.get('secure_aggregation'))
        for name, field in shared.items():
            value = values.get(name, field.default)
            if name in cls.unused_settings and value != field.default:
                unset = 'unset' if field.default is None else f'at {field.default!r}'
                raise ValueError(f'{algorithm} does not use {name} (set to {value!r}); '
                                 f'leave it {unset}')
            if value is None and name not in cls.unused_settings:
                skipped = ((name in _LAPLACE_SETTINGS and no_laplace)
                           or (name == 'dp_clip' and not private)
                           or values.get(_ALTERNATIVES.get(name)) is not None)
                value = _FALLBACKS.get(name) if skipped else cls.shared_defaults.get(
                    name, _FALLBACKS.get(name))
            setattr(self, name, value)
        if settings is None:
            settings = cls.Settings(**own)
        elif isinstance(settings, dict):
            settings = cls.Settings(**{**settings, **own})
        elif own:
            settings = dataclasses.replace(settings, **own)
        if not isinstance(settings, cls.Settings):
            raise TypeError(f'settings of {algorithm} must be {cls.Settings.__name__}, '
                            f'got {type(settings).__name__}')
        bad = non_finite_settings(self) + non_finite_settings(settings)
        if bad:
            raise ValueError('settings must be finite: ' + ', '.join(
                f'{name} = {self._value(name, settings)!r}' for name in bad))
        settings.validate()
        self.settings = settings
        self._validate()

    def _value(self, name: str, settings: Any) -> Any:
        return self.__dict__[name] if name in self.__dict__ else getattr(settings, name)

    def _validate(self) -> None:
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f'{name} must be one of {allowed}, got {getattr(self, name)!r}')
        if self.rounds < 1 or self.eval_every < 1 or self.checkpoint_every < 0:
            raise ValueError('rounds and eval_every must be >= 1, checkpoint_every >= 0')
        self._validate_server()
        if self.patience < 0:
            raise ValueError('patience must be >= 0')
        if self.threads is not None and self.threads < 1:
            raise ValueError(f'threads must be >= 1, got {self.threads}')
        for name in ('dim', 'batch_size', 'local_epochs', 'num_negatives', 'eval_negatives',
                     'round_block'):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f'{name} must be >= 1, got {getattr(self, name)}')
        self.split_ratios = tuple(self.split_ratios)
        self._validate_protocol()
        self._validate_laplace()
        self._validate_dp()
        self._validate_secure()
        self._validate_blocks()

    def _changed(self, *names: str) -> List[str]:
        """Which of the shared settings ``names`` are not at their defaults."""
        fields = shared_fields()
        return [name for name in names if getattr(self, name) != _plain(fields[name].default)]

    def _validate_protocol(self) -> None:
        """Each protocol's own settings, and only those: the sampled protocol's negatives,
        full ranking's split (train, validation and test ratios > 0 summing to 1: the best
        round is picked on validation and reported on test)."""
        unused = (self._changed('split_ratios', 'split_mode') if self.protocol == 'sampled'
                  else self._changed('eval_negatives', 'unseen_candidates'))
        if unused:
            raise ValueError(f'the {self.protocol} protocol does not use '
                             f'{", ".join(unused)}; leave it at its default')
        ratios = self.split_ratios
        if len(ratios) != 3 or not min(ratios) > 0 or abs(sum(ratios) - 1) > 1e-6:
            raise ValueError(f'split_ratios must be three ratios > 0 (train, validation, '
                             f'test) summing to 1, got {ratios}')

    def _validate_laplace(self) -> None:
        """The Laplace mechanism's settings apply to what is set: where its noise is added to
        its noise (``ldp_scale``), the clip mode to a clip bound."""
        if self.noise_at != 'client' and not self.ldp_scale:
            raise ValueError(f'noise_at={self.noise_at!r} places the Laplace noise of ldp_scale, '
                             f'which is not set')
        if self.clip_mode == 'coordinate' and not self.clip:
            raise ValueError("clip_mode='coordinate' applies to a clip bound (clip), which is "
                             'not set')

    def _validate_server(self) -> None:
        from fedgraph.server.stages import Aggregator, TrimmedMean, resolve_stage

        cls = resolve_stage(self.aggregation, Aggregator)
        if not 0 <= self.trim_ratio < 0.5:
            raise ValueError(f'trim_ratio must be in [0, 0.5), got {self.trim_ratio}')
        if not issubclass(cls, TrimmedMean) and self._changed('trim_ratio'):
            raise ValueError(f'trim_ratio applies to aggregation=trimmed_mean only, not '
                             f'{self.aggregation!r}')
        if self.norm_bound is not None and not self.norm_bound >= 0:
            raise ValueError(f'norm_bound must be > 0 (0: none), got {self.norm_bound}')

    def _validate_dp(self) -> None:
        if self.dp_clip_quantile is None and self._changed('dp_clip_lr'):
            raise ValueError('dp_clip_lr set without adaptive clipping: give dp_clip_quantile')
        if self.dp_epsilon is not None and self.dp_noise_multiplier is not None:
            raise ValueError('give dp_epsilon (the noise is calibrated to it) or '
                             'dp_noise_multiplier, not both')
        if self.dp_epsilon is None and self.dp_noise_multiplier is None:
            given = [name for name in ('dp_delta', 'dp_clip', 'dp_clip_quantile')
                     if getattr(self, name) is not None]
            if given:
                raise ValueError(f'{", ".join(given)} set without user-level DP: give '
                                 'dp_epsilon or dp_noise_multiplier')
            return
        if self.dp_epsilon is not None and not 0 < self.dp_epsilon < float('inf'):
            raise ValueError(f'dp_epsilon must be finite and > 0, got {self.dp_epsilon}')
        if self.dp_noise_multiplier is not None and not self.dp_noise_multiplier >= 0:
            raise ValueError(f'dp_noise_multiplier must be >= 0, got {self.dp_noise_multiplier}')
        if self.dp_delta is not None and not 0 < self.dp_delta < 1:
            raise ValueError(f'dp_delta must be in (0, 1), got {self.dp_delta}')
        if self.dp_clip is None or not self.dp_clip > 0:
            raise ValueError(f'user-level DP needs dp_clip > 0, got {self.dp_clip}')
        if self.dp_clip_quantile is not None:
            if not 0 < self.dp_clip_quantile < 1 or not self.dp_clip_lr > 0:
                raise ValueError(f'adaptive clipping needs dp_clip_quantile in (0, 1) and '
                                 f'dp_clip_lr > 0, got {self.dp_clip_quantile} and '
                                 f'{self.dp_clip_lr}')
            if self.dp_noise_at == 'client':
                raise ValueError('adaptive clipping needs the count of unclipped clients '
                                 "summed: dp_noise_at='server' or 'distributed'")
        if self.ldp_scale:
            raise ValueError('user-level DP (dp_epsilon / dp_noise_multiplier) replaces the '
                             'Laplace noise of ldp_scale: give one of them')
        if self.aggregation != 'mean':
            raise ValueError('user-level DP needs the unweighted mean (aggregation=mean): its '
                             f'noise is calibrated to one client in the sum, got '
                             f'{self.aggregation!r}')
        if self.engine != 'vectorized':
            raise ValueError('user-level DP runs on the vectorized engine')

    def _validate_secure(self) -> None:
        from fedgraph.privacy.secure_sum import SecAggPlus

        SecAggPlus(min_survivors=self.secure_min_survivors, dropout=self.secure_dropout)
        if not self.secure_aggregation:
            if self.dp_noise_at == 'distributed' and self.private:
                raise ValueError("distributed DP (dp_noise_at='distributed') needs secure "
                                 'aggregation: a client\'s share of the noise alone does not '
                                 'hide its upload')
            changed = self._changed('secure_min_survivors', 'secure_dropout')
            if changed:
                raise ValueError(f'{", ".join(changed)} set without secure_aggregation')
            return
        if self.aggregation != 'mean' or self.norm_bound:
            raise ValueError('secure aggregation gives the server the sum of the uploads only: '
                             'it takes the unweighted mean (aggregation=mean) and no norm '
                             'bound, which would need each upload')
        if self.engine != 'vectorized':
            raise ValueError('secure aggregation runs on the vectorized engine')
        if self.clients_per_round is not None and self.clients_per_round < 2:
            raise ValueError('secure aggregation needs at least two clients a round: the sum '
                             'of one is its upload')
        if self.ldp_scale:
            raise ValueError('the Laplace noise per uploaded row (ldp_scale) is for uploads the '
                             'server reads; under secure aggregation it reads only the sum: '
                             'use user-level DP (dp_epsilon, dp_noise_at=distributed)')
        if self.private and self.dp_noise_at != 'distributed':
            raise ValueError("under secure aggregation the server never holds an upload to "
                             "noise: user-level DP takes dp_noise_at='distributed'")

    def _validate_blocks(self) -> None:
        if self.round_block is None:
            return
        if self.engine != 'vectorized':
            raise ValueError('a round in blocks (round_block) runs on the vectorized engine')
        if self.secure_aggregation:
            raise ValueError('a round in blocks (round_block) sums the uploads as the server '
                             'receives them; under secure aggregation the sum is the '
                             "clients': leave round_block unset")
        if self.aggregation not in ('mean', 'weighted'):
            raise ValueError(f'a round in blocks (round_block) sums the uploads: it takes the '
                             f'mean or weighted aggregation, not {self.aggregation!r}')

    @property
    def private(self) -> bool:
        """Whether user-level DP is on."""
        return self.dp_epsilon is not None or self.dp_noise_multiplier is not None

    def __getattr__(self, name: str) -> Any:
        # Called only for names that are not attributes: the algorithm's own settings.
        settings = self.__dict__.get('settings')
        if settings is not None and name in type(settings).names():
            return getattr(settings, name)
        raise AttributeError(f'{type(self).__name__} of {self.__dict__.get("algorithm")!r} '
                             f'has no setting {name!r}')

    def build_algorithm(self):
        """The :class:`~fedgraph.algorithms.base.Algorithm` of this configuration."""
        from fedgraph.algorithms.registry import resolve

        return resolve(self.algorithm)(self)

    def evaluates_after(self, rounds_done: int) -> bool:
        """Whether a run evaluates once ``rounds_done`` rounds are done: every
        ``eval_every`` rounds and after the last."""
        return rounds_done % self.eval_every == 0 or rounds_done == self.rounds

    @property
    def select_by(self) -> str:
        """The validation metric that picks the best round."""
        return 'hr@10' if self.protocol == 'sampled' else 'recall@20'

    def to_dict(self) -> Dict[str, Any]:
        """The shared settings, then ``settings``: the algorithm's section."""
        out = {name: getattr(self, name) for name in shared_fields()}
        return {'algorithm': self.algorithm, **out,
                'settings': dataclasses.asdict(self.settings)}

    def save(self, path: Path, ran: Optional[Dict[str, Any]] = None) -> None:
        """Writes :meth:`to_dict`, under ``provenance`` the software it runs with
        (:func:`~fedgraph.version.provenance`), and under ``ran`` what the run was built
        from when it says more than the settings (the algorithm's class, the clients' loss
        and optimizer, the server's stages: an algorithm of one's own may use others than
        its settings name)."""
        from fedgraph.version import provenance

        from fedgraph.files import write_text

        values = {**self.to_dict(), 'provenance': provenance(), **({'ran': ran} if ran else {})}
        write_text(path, json.dumps(values, indent=2) + '\n')

    @classmethod
    def load(cls, path: Path) -> 'TrainConfig':
        """The configuration saved in ``path``. A flat file of an earlier version (every
        setting at the top level) loads too: the settings its algorithm no longer has are
        logged and left out.

        Raises:
            FileNotFoundError: there is no ``path``.
            fedgraph.files.DamagedFileError: it is not a configuration that loads (its
                message names the file and why).
        """
        from fedgraph.files import DamagedFileError, read_json

        values = read_json(path)
        if not isinstance(values, dict) or not isinstance(values.get('settings', {}), dict):
            raise DamagedFileError(f'{path} is not a fedgraph configuration (or damaged): '
                                   f'expected an object of settings')
        values.pop('provenance', None)
        values.pop('ran', None)
        if 'settings' in values:
            try:
                return cls(**values)
            except (TypeError, ValueError) as error:
                raise DamagedFileError(f'{path} does not load: {error}') from None
        from fedgraph.algorithms.registry import resolve

        algorithm = values.get('algorithm', 'pfedrec')
        algorithm_class = resolve(algorithm)
        for old, new in algorithm_class.renamed_settings.items():
            if old in values:
                values[new] = values.pop(old)
        known = (set(shared_fields()) - set(algorithm_class.unused_settings)
                 | set(algorithm_class.Settings.names()) | {'algorithm'})
        dropped = sorted(set(values) - known)
        if dropped:
            log.warning('%s: settings %s belong to no section of %s; left out', path,
                        ', '.join(dropped), algorithm)
        return cls(**{k: v for k, v in values.items() if k in known})


def _plain(default: Any) -> Any:
    """A setting's default as the configuration holds it (a tuple for a sequence)."""
    return tuple(default) if isinstance(default, list) else default


def shared_fields() -> Dict[str, dataclasses.Field]:
    """The shared settings' fields by name, in section order."""
    fields = {field.name: field for field in dataclasses.fields(TrainConfig)}
    return {name: fields[name] for section in SECTIONS.values() for name in section}
