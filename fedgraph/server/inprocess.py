"""In-process federation: one node in this process holds every user, and the round engine
trains the selected ones together (:class:`~fedgraph.federated.engine.FederatedEngine`,
vectorized; or the reference engine, one client at a time), drawing from the run's
generator."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Tuple

import torch

from fedgraph.federated.evaluation import Split, evaluate
from fedgraph.federated.messages import RoundStats
from fedgraph.run import save_split
from fedgraph.server.loop import Federation


class InProcess(Federation):
    """The rounds of ``engine`` (an in-process round engine) on ``split``, with randomness
    from ``generator`` (seeded by the run; the engine's initialization drew from it first).
    ``keep_split``: the run folder keeps ``split`` (``split.pt``), which its configuration
    would not rebuild (a split passed in Python).
    """
    resumable = True

    def __init__(self, engine, split: Split, generator: torch.Generator,
                 keep_split: bool = False):
        self.engine = engine
        self.split = split
        self.generator = generator
        self.keep_split = keep_split

    def save_inputs(self, out: Path) -> None:
        if self.keep_split:
            save_split(self.split, out)

    def start(self, progress: bool) -> Optional[Dict[str, object]]:
        return self.engine.pretrain(self.generator, progress)

    def train_round(self, round_index: int) -> Tuple[RoundStats, Dict[str, object]]:
        stats = self.engine.run_round(self.generator)
        return stats, self.engine.round_report()

    def evaluate(self, round_index: int) -> Dict[str, object]:
        return evaluate(self.engine, self.split)

    def export(self) -> Optional[Dict[str, torch.Tensor]]:
        return self.engine.export()

    def state_dict(self) -> Dict[str, object]:
        return {'engine': self.engine.state_dict(), 'generator': self.generator.get_state()}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        self.engine.load_state_dict(state['engine'])
        self.generator.set_state(state['generator'])
