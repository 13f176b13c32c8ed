"""Layers importable on their own: score heads, the federated recommender, the federated GNN
layer and the privacy augmentations."""
from fedgraph.nn.heads import DotProductHead, LinearScoreHead, NCFHead, ScoreHead
from fedgraph.nn.recommender import FederatedRecommender
from fedgraph.nn.gnn import CollaborativeGraph, FederatedGNN
from fedgraph.nn.augment import ClientDropout, Compose, LaplaceLDP, PseudoItems, SimGCLNoise

__all__ = ['ScoreHead', 'LinearScoreHead', 'DotProductHead', 'NCFHead', 'FederatedRecommender',
           'CollaborativeGraph', 'FederatedGNN', 'ClientDropout', 'Compose', 'LaplaceLDP',
           'PseudoItems', 'SimGCLNoise']
