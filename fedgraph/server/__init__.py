"""The server: the one round loop (:class:`~fedgraph.server.loop.Server`) over the in-process
federation or a deployment, and the pipeline of stages that turns a round's uploads into the
shared model (:mod:`fedgraph.server.stages`)."""
from fedgraph.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    'Server': 'loop',
    'Federation': 'loop',
    'RunFailed': 'loop',
    'TrainingDiverged': 'loop',
    'NothingTrained': 'loop',
    'InProcess': 'inprocess',
    'Deployment': 'deployment',
    'LocalTransport': 'deployment',
    'Transport': 'deployment',
    'ServerPipeline': 'stages',
    'ServerStage': 'stages',
    'UploadStage': 'stages',
    'Aggregator': 'stages',
    'ReleaseStage': 'stages',
    'register_stage': 'stages',
    'stage_names': 'stages',
})
