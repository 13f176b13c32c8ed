"""What an honest-but-curious server learns of a client's training items from its uploads.

The server follows the protocol and looks at what it receives. Three guesses of a client's
training items (its positives, against the truth of the client's training set):

* **rows** -- the items whose rows it uploaded in a round (positives and sampled negatives);
* **values** -- the items whose row updates point the positives' way. A score is a function
  of the item row's inner products with the client's private parameters, so one local step
  moves a positive's row along some direction :math:`w` and a negative's along
  :math:`-w`: the uploaded rows are nearly collinear. The server takes the leading singular
  direction :math:`v` of the client's uploaded rows, orients it so that the side with more
  rows (the negatives, ``num_negatives`` per positive; under noise, of the rows that stand
  out from it) is negative, and guesses the
  :math:`k` rows of largest projection, :math:`k` the client's number of training items (so
  precision equals recall: the guess is scored at the truth's size);
* **graph** -- a graph model's enrollment upload, the client's items with pseudo-items
  added: the server's collaborative graph; under secure aggregation, where the server holds
  no graph and propagates through secure sums (:mod:`fedgraph.federated.private_graph`),
  the rows that stand out most in the client's masked share of the round's sum.

Under local DP a client uploads its noised update of **every** row (a dense upload), so
the rows guess is empty of information and only the values guess remains. Under secure
aggregation (:mod:`fedgraph.federated.secure`) the server holds each client's masked
vector, which it reads as a table as it would a dense upload: every row is there, and its
values are the masks'.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import torch
from torch import Tensor

from fedgraph.config import TrainConfig
from fedgraph.federated.messages import ClientRound
from fedgraph.federated.secure import dense_update
from fedgraph.privacy.gaussian import UserLevelDP
from fedgraph.privacy.secure_sum import SecureSum
from fedgraph.assemble import build_run, prepare_split


def oriented_projection(rows: Tensor, noise_std: float = 0.0) -> Tensor:
    """``[k]`` the projections of ``rows`` ``[k, d]`` on their leading right singular vector,
    signed so that more of the rows that stand out from the noise (further than three noise
    standard deviations ``noise_std`` from zero; every row without noise) lie on the
    negative side: the negatives, ``num_negatives`` per positive."""
    direction = torch.linalg.svd(rows.double(), full_matrices=False).Vh[0]
    projection = rows.double() @ direction
    signal = projection[projection.abs() > 3 * noise_std]
    return projection if (signal < 0).sum() >= (signal > 0).sum() else -projection


def value_guess(rows: Tensor, items: Tensor, size: int, noise_std: float = 0.0) -> Tensor:
    """The ``size`` items of ``items`` (one per row of ``rows``) with the largest oriented
    projections."""
    order = torch.argsort(oriented_projection(rows, noise_std), descending=True)
    return items[order[:size]]


def precision_recall(guess: Tensor, truth: Tensor) -> Dict[str, float]:
    """Precision and recall of the item set ``guess`` against the item set ``truth``."""
    hits = int(torch.isin(guess.unique(), truth).sum())
    return {'precision': hits / max(guess.unique().numel(), 1),
            'recall': hits / max(truth.numel(), 1)}


@dataclass
class UploadObserver:
    """The engine's ``adversary`` hook used as an honest-but-curious server: it keeps the
    round's uploads as they arrive and passes them on untouched."""
    seen: Optional[ClientRound] = None

    def __call__(self, result: ClientRound) -> ClientRound:
        self.seen = result
        return result


@dataclass
class MaskedObserver:
    """The secure sum's observer hook used as an honest-but-curious server: it keeps the
    masked vectors the server received in the round."""
    received: Dict[int, np.ndarray] = field(default_factory=dict)

    def __call__(self, held: SecureSum) -> None:
        self.received = dict(held.received)


def masked_table(vector: np.ndarray, num_items: int, dim: int) -> Tensor:
    """``[num_items, dim]`` the item-table part of a masked vector, read as signed
    integers, as the server would read an encoded upload."""
    return torch.from_numpy(vector[:num_items * dim].view(np.int32).astype(np.float64)).view(
        num_items, dim)


def dense_local_upload(rows: Tensor, items: Tensor, num_items: int, dp: UserLevelDP,
                       generator: torch.Generator) -> Tensor:
    """A local-DP client's upload: its row updates clipped together to :math:`S`, placed in a
    ``[num_items, d]`` table of zeros, plus :math:`N(0, \\sigma^2 S^2)` on every entry."""
    owner = torch.zeros(items.numel(), dtype=torch.long)
    clipped, _ = dp.clip_clients(owner, rows, {}, 1)
    table = dense_update(items, clipped, num_items).view(num_items, rows.size(1))
    return table + dp.std * torch.randn(table.shape, generator=generator, dtype=torch.float64)


def item_set_leak(config: TrainConfig, split, warmup_rounds: int = 5,
                  max_clients: int = 200, local_dp: Optional[UserLevelDP] = None
                  ) -> Dict[str, object]:
    """Trains ``config`` for ``warmup_rounds`` rounds, watches the next round's uploads and
    scores the server's guesses for up to ``max_clients`` of its clients (mean over them).

    With ``local_dp`` the clients upload their whole noised tables instead
    (:func:`dense_local_upload`): only the values guess is scored, over every item. Returns
    ``{guess: {'precision': p, 'recall': r}}``, the number of clients scored and
    ``chance``: the precision of a guess drawn at random, a client's share of the items."""
    engine, generator = build_run(config, split)
    for _ in range(warmup_rounds):
        engine.run_round(generator)
    federated = engine.federated
    observer, masked, graph_sums = UploadObserver(), MaskedObserver(), MaskedObserver()
    federated.adversary = observer
    if federated.secure is not None:
        federated.secure.observer = masked
    propagation = getattr(engine, 'propagation', None)
    if propagation is not None:
        propagation.observer = graph_sums
    engine.run_round(generator)
    upload = observer.seen.upload
    partition = federated.partition
    graph = getattr(engine, 'held_graph', None)
    scores: Dict[str, List[Dict[str, float]]] = {}
    chance = []
    noise = torch.Generator().manual_seed(config.seed)
    every = torch.arange(partition.num_items)
    for position, client in enumerate(upload.clients[:max_clients].tolist()):
        mine = upload.row_owner == position
        rows, items = upload.update[mine], upload.row_item[mine]
        truth = partition.items_of(client)
        if federated.secure is not None and client not in masked.received:
            continue  # dropped out of the protocol: the server holds nothing of it
        chance.append(truth.numel() / partition.num_items)
        if federated.secure is not None:
            table = masked_table(masked.received[client], partition.num_items,
                                 federated.model.dim)
            scores.setdefault('rows', []).append(
                precision_recall(every[table.abs().sum(1) > 0], truth))
            scores.setdefault('values', []).append(
                precision_recall(value_guess(table, every, truth.numel()), truth))
        elif local_dp is not None:
            table = dense_local_upload(rows, items, partition.num_items, local_dp, noise)
            scores.setdefault('values', []).append(
                precision_recall(value_guess(table, every, truth.numel(), local_dp.std), truth))
            continue
        else:
            scores.setdefault('rows', []).append(precision_recall(items, truth))
            scores.setdefault('values', []).append(
                precision_recall(value_guess(rows, items, truth.numel()), truth))
        if graph is not None:
            held = graph.edge_index[1][graph.edge_index[0] == client]
            scores.setdefault('graph', []).append(precision_recall(held, truth))
        elif client in graph_sums.received:
            # The client's masked share of the round's propagation sum: the guess is the
            # rows that stand out most.
            table = masked_table(graph_sums.received[client], partition.num_items,
                                 federated.model.dim)
            scores.setdefault('graph', []).append(precision_recall(
                torch.argsort(table.norm(dim=1), descending=True)[:truth.numel()], truth))
    out: Dict[str, object] = {
        guess: {key: sum(s[key] for s in values) / len(values) for key in ('precision', 'recall')}
        for guess, values in scores.items()}
    out['clients'] = len(chance)
    out['chance'] = sum(chance) / len(chance)
    return out


def mechanism(secure: bool = False, epsilon: Optional[float] = None) -> Dict[str, object]:
    """The settings of a privacy mechanism: secure aggregation (``secure``), user-level DP at
    ``epsilon`` -- distributed under secure aggregation, central otherwise."""
    out: Dict[str, object] = {'secure_aggregation': True} if secure else {}
    if epsilon is not None:
        out.update(dp_epsilon=epsilon, dp_noise_at='distributed' if secure else 'server')
    return out


_NAMES = {'pfedrec': 'PFedRec', 'fedmf': 'FedMF', 'fedncf': 'FedNCF',
          'fedlightgcn': 'FedLightGCN', 'perfedrec++': 'PerFedRec++'}
#: Settings a mechanism needs of an algorithm: PerFedRec++'s clusters and pre-training need
#: each user's upload and the graph, so it runs without them under secure aggregation.
_SECURE_SETTINGS = {'perfedrec++': {'num_clusters': 0, 'pretrain_rounds': 0}}
_MECHANISMS = (('central DP ε = 4', False, 4.0), ('secure aggregation', True, None),
               ('secure aggregation + distributed DP ε = 4', True, 4.0))


def _scenarios():
    yield 'PFedRec, rows it trained', 'pfedrec', {}, None
    for ratio in (0.0, 0.1, 0.5):
        pseudo = 'no pseudo-items' if not ratio else f'pseudo-items {ratio}'
        yield f'FedLightGCN, Laplace LDP, {pseudo}', 'fedlightgcn', {'pseudo_ratio': ratio}, None
    yield 'PFedRec, dense upload, no noise', 'pfedrec', {}, float('inf')
    for epsilon in (8.0, 1.0):
        yield f'PFedRec, dense upload, local DP ε = {epsilon:g}', 'pfedrec', {}, epsilon
    yield 'FedLightGCN, dense upload, local DP ε = 8', 'fedlightgcn', {}, 8.0
    for algorithm, name in _NAMES.items():
        for label, secure, epsilon in _MECHANISMS:
            settings = {**mechanism(secure, epsilon),
                        **(_SECURE_SETTINGS.get(algorithm, {}) if secure else {})}
            clusters = (' (no clusters, no pre-training)'
                        if secure and algorithm in _SECURE_SETTINGS else '')
            yield f'{name}{clusters}, {label}', algorithm, settings, None


#: The scenarios of :func:`leak_table`: a name, the algorithm, its settings, and the target
#: epsilon of a dense local-DP upload (``None``: the algorithm's own uploads).
SCENARIOS = tuple(_scenarios())


def leak_rows(name: str, config: TrainConfig, split, warmup_rounds: int = 5,
              max_clients: int = 200, local_dp: Optional[UserLevelDP] = None
              ) -> List[Dict[str, object]]:
    """:func:`item_set_leak` of ``config`` as one row per guess: ``scenario`` (``name``),
    ``guess``, ``precision``, ``recall``, ``chance``, the clients scored and the local-DP
    noise multiplier."""
    result = item_set_leak(config, split, warmup_rounds, max_clients, local_dp)
    return [{'scenario': name, 'guess': guess, **result[guess], 'clients': result['clients'],
             'chance': result['chance'],
             'noise_multiplier': None if local_dp is None else local_dp.noise_multiplier}
            for guess in ('rows', 'values', 'graph') if guess in result]


def leak_table(data: Dict[str, object], warmup_rounds: int = 5, max_clients: int = 200,
               seed: int = 0) -> List[Dict[str, object]]:
    """Every scenario of :data:`SCENARIOS` on the data set of the data settings ``data``
    (:func:`item_set_leak`; a dense local-DP upload's noise calibrated to its target epsilon
    over the algorithm's default rounds, the clip its DP default): one row per scenario and
    guess."""
    rows = []
    splits: Dict[str, object] = {}
    for name, algorithm, settings, epsilon in SCENARIOS:
        config = TrainConfig(algorithm=algorithm, seed=seed, **data, **settings)
        if config.protocol not in splits:
            splits[config.protocol] = prepare_split(config)
        split = splits[config.protocol]
        local_dp = None
        if epsilon is not None:
            private = TrainConfig(algorithm=algorithm, seed=seed, dp_noise_at='client',
                                  **({'dp_noise_multiplier': 0.0} if epsilon == float('inf')
                                     else {'dp_epsilon': epsilon}), **data, **settings)
            local_dp = private.build_algorithm().user_level_dp(split.train['user'].num_nodes)
        rows.extend(leak_rows(name, config, split, warmup_rounds, max_clients, local_dp))
    return rows


def format_leak(rows: List[Dict[str, object]]) -> str:
    """The rows of :func:`leak_table` as a Markdown table."""
    lines = ['| what the server receives | its guess | precision | recall | chance |',
             '|---|---|---|---|---|']
    for row in rows:
        lines.append(f"| {row['scenario']} | {row['guess']} | {row['precision']:.3f} "
                     f"| {row['recall']:.3f} | {row['chance']:.3f} |")
    return '\n'.join(lines)
