"""Model poisoning of a federated recommender: fake users who promote target items, and the
exposure they win.

The attack is the explicit boosting of Bhagoji et al. (2019) applied to item promotion, in the
threat model of PipAttack (Zhang et al., 2022) and FedRecAttack (Rong et al., 2022): the
adversary registers ``m`` fake users (a share of the real ones), each holding a profile of the
target items and popular filler items (popularity is public: best-seller lists). The fake
users are clients like any other -- selected like them, trained by the same local step -- but
they multiply the row updates they upload for the target items by ``boost``, so that a few of
them outweigh the benign updates of a long-tail item in the server's mean. Training on the
popular fillers aligns a fake user's model with what most users like, and the boosted target
rows drag the targets the same way.

The figure of merit is the exposure ratio ER@K: the share of benign users who never
interacted with a target item and yet find it in their top K, averaged over the targets.
"""
from __future__ import annotations

import dataclasses
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch_geometric.data import HeteroData
from tqdm import tqdm

from fedgraph.analysis import mean_std
from fedgraph.config import TrainConfig
from fedgraph.data.hetero import ITEM, RATED_BY, RATES, USER
from fedgraph.data.partition import ClientPartition
from fedgraph.data.split import SampledSplit
from fedgraph.federated.messages import ClientRound
from fedgraph.federated.evaluation import Split, evaluate
from fedgraph.grid import resumable_grid
from fedgraph.assemble import build_run, prepare_split

#: The benign metric reported beside the exposure, by protocol.
BENIGN_METRIC = {'sampled': 'hr@10', 'full': 'recall@20'}


@dataclass(frozen=True)
class ItemPromotion:
    """An item-promotion attack.

    Attributes:
        fraction: fake users as a share of the real users (rounded up).
        num_targets: target items, drawn from the less popular half of the catalogue.
        num_fillers: popular items in each fake user's profile, drawn from the most popular
            tenth of the catalogue.
        boost: the factor by which a fake user scales its uploaded target rows (1: plain
            data poisoning by fake profiles).
        seed: the seed of the targets and the profiles (the run's own seed draws the rest).
    """
    fraction: float = 0.01
    num_targets: int = 1
    num_fillers: int = 20
    boost: float = 30.0
    seed: int = 0

    def __post_init__(self):
        if not 0 <= self.fraction < 1:
            raise ValueError(f'fraction of fake users must be in [0, 1), got {self.fraction}')
        if self.num_targets < 1 or self.num_fillers < 0 or not self.boost > 0:
            raise ValueError('num_targets must be >= 1, num_fillers >= 0 and boost > 0')

    def num_fake(self, num_users: int) -> int:
        """The number of fake users among ``num_users`` real ones."""
        return math.ceil(self.fraction * num_users)


def choose_targets(train: HeteroData, attack: ItemPromotion) -> Tensor:
    """``attack.num_targets`` items drawn uniformly from the less popular half of the
    catalogue (by training interactions): the long tail an adversary would promote."""
    popularity = ClientPartition.from_data(train).item_degree
    tail = torch.argsort(popularity, stable=True)[:train[ITEM].num_nodes // 2]
    generator = torch.Generator().manual_seed(attack.seed)
    chosen = torch.randperm(tail.numel(), generator=generator)[:attack.num_targets]
    return tail[chosen].sort().values


def with_fake_users(train: HeteroData, targets: Tensor, attack: ItemPromotion) -> HeteroData:
    """``train`` with ``attack.num_fake`` users appended, each rating the targets and
    ``attack.num_fillers`` items drawn from the most popular tenth. An edge attribute of the
    fake edges (time, rating) takes its largest value in ``train``."""
    num_users, num_items = train[USER].num_nodes, train[ITEM].num_nodes
    num_fake = attack.num_fake(num_users)
    popularity = ClientPartition.from_data(train).item_degree
    popular = torch.argsort(popularity, descending=True, stable=True)
    popular = popular[~torch.isin(popular, targets)][:max(attack.num_fillers, num_items // 10)]
    generator = torch.Generator().manual_seed(attack.seed + 1)
    edges = []
    for fake in range(num_fake):
        fillers = popular[torch.randperm(popular.numel(), generator=generator)
                          [:attack.num_fillers]]
        items = torch.cat([targets, fillers]).sort().values
        edges.append(torch.stack([torch.full_like(items, num_users + fake), items]))
    fake_edges = torch.cat(edges, dim=1) if edges else torch.empty(2, 0, dtype=torch.long)
    out = train.__copy__()
    store = train[RATES]
    for key, value in store.items():
        if key != 'edge_index' and isinstance(value, Tensor) and store.is_edge_attr(key):
            fill = value.max() if value.numel() else value.new_zeros(())
            out[RATES][key] = torch.cat([value, fill.expand(fake_edges.size(1))])
    out[RATES].edge_index = torch.cat([store.edge_index, fake_edges], dim=1)
    out[RATED_BY].edge_index = out[RATES].edge_index.flip(0)
    out[USER].num_nodes = num_users + num_fake
    raw = train[USER].raw_id
    fake_ids = [f'fake-{fake}' for fake in range(num_fake)]
    out[USER].raw_id = (raw + fake_ids if isinstance(raw, list) else
                        torch.cat([raw, raw.max() + 1 + torch.arange(num_fake)]))
    return out


class TargetBooster:
    """The fake users' upload: their rows of the target items times ``boost``, every other
    row as trained (installed as the round engine's adversary,
    :attr:`~fedgraph.federated.engine.FederatedEngine.adversary`)."""

    def __init__(self, fake_users: Tensor, targets: Tensor, boost: float):
        self.fake_users = fake_users
        self.targets = targets
        self.boost = boost
        #: The 99th percentile of the benign row updates' L2 norms in the latest round (what
        #: a server's norm bound could be set to).
        self.benign_norm_q99 = float('nan')

    def __call__(self, result: ClientRound) -> ClientRound:
        upload = result.upload
        owner = upload.clients[upload.row_owner]
        fake = torch.isin(owner, self.fake_users.to(owner.device))
        benign_norms = upload.update[~fake].norm(dim=1)
        if benign_norms.numel():
            self.benign_norm_q99 = float(torch.quantile(benign_norms.double().cpu(), 0.99))
        boosted = fake & torch.isin(upload.row_item, self.targets.to(owner.device))
        update = torch.where(boosted.unsqueeze(1), upload.update * self.boost, upload.update)
        return dataclasses.replace(result, upload=dataclasses.replace(upload, update=update))


def every_interaction(split: Split) -> ClientPartition:
    """Each user's training and held-out items."""
    if isinstance(split, SampledSplit):
        return split.known_items()
    train = ClientPartition.from_data(split.train)
    edge_index = torch.cat([train.edge_index(), split.val.edge_index(), split.test.edge_index()],
                           dim=1)
    return ClientPartition.from_edge_index(edge_index, train.num_clients, train.num_items)


@torch.no_grad()
def exposure_ratio(engine, split: Split, targets: Tensor, k: int = 10,
                   batch_size: int = 256) -> float:
    """ER@K: for each target, the share of ``split``'s users who never interacted with it
    (in training or held out) that find it in their top ``k`` (their training items
    masked, as in evaluation); the mean over targets."""
    train = ClientPartition.from_data(split.train)
    known = every_interaction(split)
    hits = torch.zeros(targets.numel())
    eligible = torch.zeros(targets.numel())
    for users in torch.arange(train.num_clients).split(batch_size):
        scores = engine.scores_all(users.to(engine.device)).cpu()
        scores = scores.masked_fill(train.dense_mask(users), float('-inf'))
        top = scores.topk(k, dim=1).indices
        in_top = (top.unsqueeze(2) == targets.view(1, 1, -1)).any(1)
        fresh = ~known.dense_mask(users)[:, targets]
        hits += (in_top & fresh).sum(0).float()
        eligible += fresh.sum(0).float()
    return float((hits / eligible.clamp_min(1)).mean())


def run_attack(config: TrainConfig, attack: ItemPromotion, split: Split,
               progress: bool = True) -> Dict[str, float]:
    """Trains ``config`` for ``config.rounds`` rounds with ``attack``'s fake users among the
    clients (none when ``attack.fraction`` is 0) and measures the final model.

    Returns:
        ``{'er@10', <benign test metric>: ..., 'fake_users', 'targets'}``: the exposure of
        the targets and the benign users' test HR@10 (sampled protocol) or Recall@20 (full
        ranking) of the last round's model.
    """
    num_users = split.train[USER].num_nodes
    targets = choose_targets(split.train, attack)
    poisoned = dataclasses.replace(split, train=with_fake_users(split.train, targets, attack))
    engine, generator = build_run(config, poisoned)
    federated = engine.federated
    if federated is None:
        raise ValueError(f'{config.algorithm} on the {config.engine} engine runs no federated '
                         f'rounds for fake clients to join')
    fake_users = torch.arange(num_users, poisoned.train[USER].num_nodes)
    booster = TargetBooster(fake_users, targets, attack.boost)
    federated.adversary = booster
    engine.pretrain(generator, progress)
    for _ in tqdm(range(config.rounds), desc=f'{config.algorithm} under attack', unit='round',
                  disable=not progress, leave=False):
        engine.run_round(generator)
    benign = BENIGN_METRIC[split.protocol]
    return {'er@10': exposure_ratio(engine, split, targets),
            benign: evaluate(engine, split)['test'][benign],
            'fake_users': int(fake_users.numel()), 'targets': targets.tolist(),
            'benign_norm_q99': booster.benign_norm_q99}


#: The defences a table compares: the server's aggregation settings of each.
DEFENCES = ('none', 'norm_bound', 'median', 'trimmed_mean')


def defended(config: TrainConfig, defence: str, **overrides) -> TrainConfig:
    """``config`` (with ``overrides``) with the server's aggregation set to ``defence``:
    FedAvg as configured (``none``), FedAvg with ``config.norm_bound``, or a robust rule."""
    if defence not in DEFENCES:
        raise ValueError(f'defence must be one of {DEFENCES}, got {defence!r}')
    if defence == 'norm_bound' and not config.norm_bound:
        raise ValueError('the norm_bound defence needs --norm-bound')
    values = {**config.to_dict(), **overrides}
    values.update(norm_bound=config.norm_bound if defence == 'norm_bound' else None,
                  aggregation=defence if defence in ('median', 'trimmed_mean')
                  else config.aggregation)
    return TrainConfig(**values)


def attack_table(config: TrainConfig, attack: ItemPromotion, fractions: Sequence[float],
                 defences: Sequence[str], seeds: Sequence[int],
                 out: Optional[Path] = None, progress: bool = True) -> List[Dict]:
    """Runs the grid fractions x defences x seeds (``seed`` seeds the run and the attack's
    targets and profiles) and returns one result per cell. With ``out`` every result is
    appended to that JSON-lines file as it arrives, and cells already there are read back
    rather than run again (:func:`~fedgraph.grid.resumable_grid`). The split is prepared
    once per seed."""
    for defence in defences:  # a defence that cannot run fails before any run does
        defended(config, defence)
    splits: Dict[int, object] = {}

    def run(cell) -> Dict:
        fraction, defence, seed = cell
        run_config = defended(config, defence, seed=seed)
        if seed not in splits:
            splits.clear()
            splits[seed] = prepare_split(run_config)
        result = run_attack(run_config, dataclasses.replace(attack, fraction=fraction,
                                                            seed=seed), splits[seed], progress)
        return {'algorithm': config.algorithm, 'fraction': fraction, 'defence': defence,
                'seed': seed, **result}

    cells = [(f, d, s) for s in seeds for f in fractions for d in defences]
    shared = {**{name: value for name, value in config.to_dict().items() if name != 'seed'},
              'attack': {name: value for name, value in dataclasses.asdict(attack).items()
                         if name not in ('fraction', 'seed')}}
    return resumable_grid(cells, lambda row: (row['fraction'], row['defence'], row['seed']),
                          run, out, 'attack grid', progress, shared)


def format_table(rows: List[Dict]) -> str:
    """The grid's results as a Markdown table, mean ± std over seeds per (fraction,
    defence), with the median over seeds of the benign row updates' 99th-percentile norm
    in the last round (what a norm bound could be set to)."""
    metric = next(name for name in BENIGN_METRIC.values() if name in rows[0])
    cells: Dict[Tuple[float, str], List[Dict]] = {}
    for row in rows:
        cells.setdefault((row['fraction'], row['defence']), []).append(row)
    lines = [f'| fake users | defence | seeds | ER@10 of the targets | benign test {metric} '
             '| benign row-update norm, 99th percentile |', '|---|---|---|---|---|---|']
    for (fraction, defence), group in cells.items():
        lines.append(f"| {fraction:.0%} ({group[0]['fake_users']}) | {defence} | {len(group)} "
                     f"| {mean_std([r['er@10'] for r in group])} "
                     f"| {mean_std([r[metric] for r in group])} "
                     f"| {statistics.median(r['benign_norm_q99'] for r in group):.1f} |")
    return '\n'.join(lines)

