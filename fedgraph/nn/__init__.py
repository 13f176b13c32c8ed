"""Layers importable on their own: score heads, the federated recommender, the federated GNN
layer, the privacy augmentations, the views of the graph they make (``GraphView``) and the
contrastive loss between two views (``info_nce``).
Each name is imported from its module on first use, so that the recommender and its heads
load without PyTorch Geometric."""
from fedgraph.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    'ScoreHead': 'heads', 'LinearScoreHead': 'heads', 'DotProductHead': 'heads',
    'NCFHead': 'heads',
    'FederatedRecommender': 'recommender',
    'CollaborativeGraph': 'gnn', 'FederatedGNN': 'gnn',
    'ClientDropout': 'augment', 'Compose': 'augment', 'LaplaceLDP': 'augment',
    'PseudoItems': 'augment', 'SimGCLNoise': 'augment', 'GraphView': 'views',
    'info_nce': 'contrastive',
    'combine_levels': 'levels',
})
