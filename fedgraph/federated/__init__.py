"""The federated simulation engine: selection, local training, uploads, aggregation."""
from fedgraph.federated.aggregation import aggregate_rows
from fedgraph.federated.engine import FederatedEngine, LocalTraining, RoundStats
from fedgraph.federated.evaluation import evaluate
from fedgraph.federated.personal import PersonalItemRows
from fedgraph.federated.plan import RoundPlan, plan_round
from fedgraph.federated.reference import ReferenceEngine
from fedgraph.federated.selection import ClientSelector
from fedgraph.federated.upload import UploadTransform

__all__ = ['aggregate_rows', 'FederatedEngine', 'LocalTraining', 'RoundStats', 'evaluate',
           'PersonalItemRows', 'RoundPlan', 'plan_round', 'ReferenceEngine', 'ClientSelector',
           'UploadTransform']
