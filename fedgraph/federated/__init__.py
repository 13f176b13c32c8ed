"""The federated engine: what a client trains (the recipe, the vectorized and reference
engines, round plans, selection), what the halves of a round hand each other (messages) and
what the server checks of them (trust). The graph models' engine
(:mod:`fedgraph.federated.graph`), a deployment's node (:mod:`fedgraph.federated.node`) and
the server (:mod:`fedgraph.server`) are imported from their modules. Each name below is
imported from its module on first use."""
from fedgraph.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    'FederatedEngine': 'engine',
    'ReferenceEngine': 'reference',
    'RoundEngine': 'round_engine',
    'LocalTraining': 'local',
    'RoundStats': 'messages',
    'ClientSelector': 'selection',
    'RoundPlan': 'plan',
    'plan_round': 'plan',
    'PersonalItemRows': 'personal',
    'aggregate_rows': 'aggregation',
    'aggregate_dense': 'aggregation',
    'evaluate': 'evaluation',
})
