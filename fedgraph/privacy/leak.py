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
  added: the server's collaborative graph.

Under local DP a client uploads its noised update of **every** row (a dense upload), so
the rows guess is empty of information and only the values guess remains.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
from torch import Tensor

from fedgraph.config import TrainConfig
from fedgraph.federated.messages import ClientRound
from fedgraph.privacy.gaussian import UserLevelDP
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


def dense_local_upload(rows: Tensor, items: Tensor, num_items: int, dp: UserLevelDP,
                       generator: torch.Generator) -> Tensor:
    """A local-DP client's upload: its row updates clipped together to :math:`S`, placed in a
    ``[num_items, d]`` table of zeros, plus :math:`N(0, \\sigma^2 S^2)` on every entry."""
    owner = torch.zeros(items.numel(), dtype=torch.long)
    clipped, _ = dp.clip_clients(owner, rows, {}, 1)
    table = torch.zeros(num_items, rows.size(1), dtype=torch.float64)
    table[items] = clipped.double()
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
    observer = UploadObserver()
    engine.federated.adversary = observer
    engine.run_round(generator)
    upload = observer.seen.upload
    partition = engine.federated.partition
    graph = getattr(engine, 'graph', None)
    scores: Dict[str, List[Dict[str, float]]] = {}
    chance = []
    noise = torch.Generator().manual_seed(config.seed)
    for position, client in enumerate(upload.clients[:max_clients].tolist()):
        mine = upload.row_owner == position
        rows, items = upload.update[mine], upload.row_item[mine]
        truth = partition.items_of(client)
        chance.append(truth.numel() / partition.num_items)
        if local_dp is not None:
            table = dense_local_upload(rows, items, partition.num_items, local_dp, noise)
            every = torch.arange(partition.num_items)
            scores.setdefault('values', []).append(
                precision_recall(value_guess(table, every, truth.numel(), local_dp.std), truth))
            continue
        scores.setdefault('rows', []).append(precision_recall(items, truth))
        scores.setdefault('values', []).append(
            precision_recall(value_guess(rows, items, truth.numel()), truth))
        if graph is not None:
            held = graph.edge_index[1][graph.edge_index[0] == client]
            scores.setdefault('graph', []).append(precision_recall(held, truth))
    out: Dict[str, object] = {
        guess: {key: sum(s[key] for s in values) / len(values) for key in ('precision', 'recall')}
        for guess, values in scores.items()}
    out['clients'] = len(chance)
    out['chance'] = sum(chance) / len(chance)
    return out


#: The scenarios of :func:`leak_table`: a name, the algorithm, its settings, and the target
#: epsilon of a dense local-DP upload (``None``: the algorithm's own uploads).
SCENARIOS = (
    ('PFedRec, rows it trained', 'pfedrec', {}, None),
    ('FedLightGCN, Laplace LDP, no pseudo-items', 'fedlightgcn', {'pseudo_ratio': 0.0}, None),
    ('FedLightGCN, Laplace LDP, pseudo-items 0.1', 'fedlightgcn', {'pseudo_ratio': 0.1}, None),
    ('FedLightGCN, Laplace LDP, pseudo-items 0.5', 'fedlightgcn', {'pseudo_ratio': 0.5}, None),
    ('PFedRec, dense upload, no noise', 'pfedrec', {}, float('inf')),
    ('PFedRec, dense upload, local DP ε = 8', 'pfedrec', {}, 8.0),
    ('PFedRec, dense upload, local DP ε = 1', 'pfedrec', {}, 1.0),
    ('FedLightGCN, dense upload, local DP ε = 8', 'fedlightgcn', {}, 8.0),
)


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
        result = item_set_leak(config, split, warmup_rounds, max_clients, local_dp)
        for guess in ('rows', 'values', 'graph'):
            if guess in result:
                rows.append({'scenario': name, 'guess': guess, **result[guess],
                             'clients': result['clients'], 'chance': result['chance'],
                             'noise_multiplier': None if local_dp is None
                             else local_dp.noise_multiplier})
    return rows


def format_leak(rows: List[Dict[str, object]]) -> str:
    """The rows of :func:`leak_table` as a Markdown table."""
    lines = ['| what the server receives | its guess | precision | recall | chance |',
             '|---|---|---|---|---|']
    for row in rows:
        lines.append(f"| {row['scenario']} | {row['guess']} | {row['precision']:.3f} "
                     f"| {row['recall']:.3f} | {row['chance']:.3f} |")
    return '\n'.join(lines)
