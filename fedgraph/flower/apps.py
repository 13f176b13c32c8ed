"""The ``ServerApp`` and ``ClientApp`` a Flower App's ``pyproject.toml`` names
(``fedgraph.flower.apps:serverapp``, ``fedgraph.flower.apps:clientapp``); every setting comes
from the run configuration. Each is built when first asked for, so that a ``ClientApp``
process does not import the server side, nor PyTorch until a message needs it."""

# Flower checks the names before it imports the module: they are listed here.
__all__ = ['serverapp', 'clientapp']  # noqa: F822 (built by __getattr__)


def __getattr__(name: str):
    if name == 'clientapp':
        from fedgraph.flower.client import make_client_app

        return make_client_app()
    if name == 'serverapp':
        from fedgraph.flower.server import make_server_app

        return make_server_app()
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
