"""fedgraph: personalized federated recommendation on PyTorch Geometric.

The public face: the names a notebook needs, each imported from its module on first use, so
that ``import fedgraph`` is quick, loads neither PyTorch Geometric nor Flower, and changes no
setting of the process (threads, environment, allocator)::

    import fedgraph as fg

    split = fg.leave_one_out_split(fg.load_dataset('ml-100k'), seed=0)
    run = fg.train(fg.TrainConfig(algorithm='pfedrec', rounds=20), split=split)
"""
from fedgraph.lazy import lazy_exports
from fedgraph.version import package_version

__version__ = package_version()

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    'train': 'training',
    'TrainingDiverged': 'training',
    'NothingTrained': 'training',
    'RunFailed': 'training',
    'TrainConfig': 'config',
    'Run': 'run',
    'load_run': 'run',
    'load_dataset': 'data',
    'leave_one_out_split': 'data',
    'ratio_split': 'data',
    'DeviceModel': 'export',
    'Algorithm': 'algorithms',
    'ClientSettings': 'algorithms',
    'register': 'algorithms',
    'algorithm_names': 'algorithms',
    'Aggregator': 'server.stages',
    'ServerStage': 'server.stages',
    'register_stage': 'server.stages',
    'stage_names': 'server.stages',
})
__all__ = ['__version__', *__all__]
