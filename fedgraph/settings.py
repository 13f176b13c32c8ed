"""How a setting is declared, by the run's configuration (:class:`~fedgraph.config.TrainConfig`)
and by each algorithm's own section alike: a dataclass field with its ``--help`` line (the
command line's flags are generated from these)."""
from __future__ import annotations

import dataclasses
import math
from typing import Any, List


def setting(default: Any, help: str) -> Any:
    """A dataclass field of default ``default`` with its ``--help`` line ``help``."""
    return dataclasses.field(default=default, metadata={'help': help})


def non_finite_settings(values: Any) -> List[str]:
    """The fields of the dataclass ``values`` holding a float, alone or in a tuple, that is
    NaN or infinite: no setting means anything at such a value."""
    def finite(value: Any) -> bool:
        if isinstance(value, (tuple, list)):
            return all(finite(part) for part in value)
        return not isinstance(value, float) or math.isfinite(value)

    return [field.name for field in dataclasses.fields(values)
            if not finite(getattr(values, field.name))]
