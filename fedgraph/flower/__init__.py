"""fedgraph's algorithms on Flower (``pip install fedgraph-rec[flower]``).

* :mod:`fedgraph.flower.client` -- the ``ClientApp``: a SuperNode holds some users (one, on a
  phone) with their interactions and private state, and trains them with the same engine
  code as the in-process simulation;
* :mod:`fedgraph.flower.server` -- the ``ServerApp``: selection, row-wise FedAvg over the
  uploaded item rows, evaluation, ``metrics.json``;
* :mod:`fedgraph.flower.deploy` -- a SuperLink and SuperNodes as separate processes on this
  machine, with the bytes each SuperNode sends and receives counted on the wire;
* :mod:`fedgraph.flower.simulation` -- Flower's simulation engine (Ray) for many clients.

``fedgraph.flower.apps`` holds the ``serverapp`` and ``clientapp`` objects a Flower App's
``pyproject.toml`` points at (:func:`fedgraph.flower.deploy.write_app`).
"""
try:
    import flwr  # noqa: F401
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError("fedgraph.flower needs Flower: pip install 'fedgraph-rec[flower]'") from error
