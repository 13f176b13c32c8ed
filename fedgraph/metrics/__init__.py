"""Evaluation metrics: sampled ranking, full ranking and representation quality. Each name
is imported from its module on first use (full ranking needs PyTorch Geometric, sampled
ranking does not)."""
from fedgraph.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    'FullRankingEvaluator': 'ranking', 'full_ranking_metrics': 'ranking',
    'alignment': 'representation', 'uniformity': 'representation',
    'hit_ratio_at_k': 'sampled', 'ndcg_at_k': 'sampled', 'positive_rank': 'sampled',
    'sampled_metrics': 'sampled',
})
