"""The ``ServerApp`` and ``ClientApp`` a Flower App's ``pyproject.toml`` names
(``fedgraph.flower.apps:serverapp``, ``fedgraph.flower.apps:clientapp``); every setting comes
from the run configuration."""
from fedgraph.flower.client import make_client_app
from fedgraph.flower.server import make_server_app

serverapp = make_server_app()
clientapp = make_client_app()
