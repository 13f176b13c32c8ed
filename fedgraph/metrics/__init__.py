"""Evaluation metrics: sampled ranking, full ranking and representation quality."""
from fedgraph.metrics.ranking import FullRankingEvaluator, full_ranking_metrics
from fedgraph.metrics.representation import alignment, uniformity
from fedgraph.metrics.sampled import hit_ratio_at_k, ndcg_at_k, positive_rank, sampled_metrics

__all__ = ['FullRankingEvaluator', 'full_ranking_metrics', 'alignment', 'uniformity',
           'hit_ratio_at_k', 'ndcg_at_k', 'positive_rank', 'sampled_metrics']
