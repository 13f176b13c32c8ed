"""The configuration of a training run: every hyperparameter, with the papers' defaults."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple


#: ``(lr, item_lr_eta)`` per federated algorithm: PFedRec's from its paper; FedMF's picked by
#: validation HR@10 on MovieLens-100K (see the README's baseline table).
LEARNING_RATES = {'pfedrec': (0.1, 80.0), 'fedmf': (1.0, 1.0)}


@dataclass
class TrainConfig:
    """Everything a run depends on; saved as ``config.json`` next to its ``metrics.json``.

    Defaults are PFedRec's on MovieLens-100K: d = 32, all users every round, 1 local epoch,
    batch 256, head lr 0.1, item lr 0.1 x num_items x 80, 4 negatives, 100 rounds. Learning
    rates left at ``None`` take the algorithm's default (:data:`LEARNING_RATES`).
    """
    algorithm: str = 'pfedrec'
    dataset: str = 'ml-100k'
    data_root: Optional[str] = None
    protocol: str = 'sampled'
    split_ratios: Tuple[float, float, float] = (0.8, 0.1, 0.1)
    split_mode: str = 'random'
    eval_negatives: int = 99
    rounds: int = 100
    seed: int = 0
    dim: int = 32
    lr: Optional[float] = None
    central_lr: float = 1e-3
    item_lr_eta: Optional[float] = None
    batch_size: int = 256
    local_epochs: int = 1
    num_negatives: int = 4
    client_ratio: Optional[float] = None
    clients_per_round: Optional[int] = None
    aggregation: str = 'mean'
    clip: Optional[float] = None
    ldp_scale: float = 0.0
    eval_every: int = 1
    checkpoint_every: int = 10
    device: str = 'cpu'
    engine: str = 'vectorized'

    def __post_init__(self):
        if self.algorithm not in ('pfedrec', 'fedmf', 'mf'):
            raise ValueError(f"algorithm must be 'pfedrec', 'fedmf' or 'mf', got {self.algorithm!r}")
        choices = {'protocol': ('sampled', 'full'), 'aggregation': ('mean', 'weighted'),
                   'engine': ('vectorized', 'reference'), 'split_mode': ('random', 'temporal')}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f'{name} must be one of {allowed}, got {getattr(self, name)!r}')
        if self.rounds < 1 or self.eval_every < 1 or self.checkpoint_every < 1:
            raise ValueError('rounds, eval_every and checkpoint_every must be >= 1')
        self.split_ratios = tuple(self.split_ratios)
        lr, eta = LEARNING_RATES.get(self.algorithm, (None, None))
        self.lr = lr if self.lr is None else self.lr
        self.item_lr_eta = eta if self.item_lr_eta is None else self.item_lr_eta

    def item_lr(self, num_items: int) -> float:
        """PFedRec's item learning rate, ``lr * num_items * eta``."""
        return self.lr * num_items * self.item_lr_eta

    @property
    def select_by(self) -> str:
        """The validation metric that picks the best round."""
        return 'hr@10' if self.protocol == 'sampled' else 'recall@20'

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(dataclasses.asdict(self), indent=2) + '\n')

    @classmethod
    def load(cls, path: Path) -> 'TrainConfig':
        return cls(**json.loads(Path(path).read_text()))
