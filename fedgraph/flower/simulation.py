"""Flower's simulation engine: many virtual SuperNodes in one process tree, on Ray.

Every virtual SuperNode runs the same ``ClientApp`` as a deployed one, in a Ray actor;
``num_nodes`` equal to the number of users gives one user per node, as on phones. Use it to
check that an app behaves under Flower's message passing at scale; fedgraph's vectorized
engine trains the same users side by side and is the tool for experiments
(``python -m fedgraph bench flower`` measures both).
"""
from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Dict, Optional

from flwr.simulation import run_simulation

from fedgraph.config import TrainConfig
from fedgraph.files import load_metrics
from fedgraph.flower.client import make_client_app
from fedgraph.flower.server import make_server_app


def simulate(config: TrainConfig, num_nodes: int, out: Optional[Path] = None,
             progress: bool = True, num_cpus: Optional[int] = None) -> Dict:
    """Runs ``config`` on ``num_nodes`` virtual SuperNodes with Ray, writing ``metrics.json``
    into ``out`` (default: a temporary folder).

    Returns:
        ``{'metrics': metrics.json's content, 'seconds': wall time of the whole simulation}``.
    """
    if out is None:
        with tempfile.TemporaryDirectory() as folder:
            return simulate(config, num_nodes, Path(folder), progress, num_cpus)
    out = Path(out)
    server = make_server_app(config, out=out, min_nodes=num_nodes, progress=progress)
    backend = {'client_resources': {'num_cpus': 1},
               'init_args': {'num_cpus': num_cpus or os.cpu_count(),
                             'logging_level': logging.ERROR, 'log_to_driver': False}}
    began = time.perf_counter()
    run_simulation(server_app=server, client_app=make_client_app(config),
                   num_supernodes=num_nodes, backend_config=backend)
    seconds = time.perf_counter() - began
    return {'metrics': load_metrics(out), 'seconds': seconds}
