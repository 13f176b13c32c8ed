"""Renamed: :mod:`fedgraph.federated.node` (``Device`` is ``Node``, ``DeviceHooks`` is
``NodeHooks``); the old names work, with a ``DeprecationWarning``, for one release."""
from fedgraph.deprecation import renamed_attributes

__getattr__ = renamed_attributes(__name__, {
    'Device': ('fedgraph.federated.node', 'Node'),
    'DeviceHooks': ('fedgraph.federated.node', 'NodeHooks'),
})
