"""Layers importable on their own: score heads and the federated recommender."""
from fedgraph.nn.heads import DotProductHead, LinearScoreHead, ScoreHead
from fedgraph.nn.recommender import FederatedRecommender

__all__ = ['ScoreHead', 'LinearScoreHead', 'DotProductHead', 'FederatedRecommender']
