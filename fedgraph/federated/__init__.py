"""The federated engine: selection, local training, uploads, aggregation. The graph models'
engine (:mod:`fedgraph.federated.graph`) and the two halves of a deployment
(:mod:`fedgraph.federated.node`, :mod:`fedgraph.server.deployment`) are imported from
their modules."""
from fedgraph.federated.aggregation import aggregate_dense, aggregate_rows
from fedgraph.federated.engine import FederatedEngine
from fedgraph.federated.local import LocalTraining
from fedgraph.federated.messages import RoundStats
from fedgraph.federated.round_engine import RoundEngine
from fedgraph.federated.evaluation import evaluate
from fedgraph.federated.personal import PersonalItemRows
from fedgraph.federated.plan import RoundPlan, plan_round
from fedgraph.federated.reference import ReferenceEngine
from fedgraph.federated.selection import ClientSelector

__all__ = ['aggregate_dense', 'aggregate_rows', 'FederatedEngine', 'LocalTraining',
           'RoundEngine', 'RoundStats', 'evaluate', 'PersonalItemRows', 'RoundPlan',
           'plan_round', 'ReferenceEngine', 'ClientSelector']
