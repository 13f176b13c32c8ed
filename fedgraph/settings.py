"""How a setting is declared, by the run's configuration (:class:`~fedgraph.config.TrainConfig`)
and by each algorithm's own section alike: a dataclass field with its ``--help`` line (the
command line's flags are generated from these)."""
from __future__ import annotations

import dataclasses
from typing import Any


def setting(default: Any, help: str) -> Any:
    """A dataclass field of default ``default`` with its ``--help`` line ``help``."""
    return dataclasses.field(default=default, metadata={'help': help})
