"""Every metric against values computed by hand (the arithmetic is in the comments)."""
import math

import pytest
import torch

from fedgraph.data import ClientPartition
from fedgraph.metrics import (FullRankingEvaluator, alignment, full_ranking_metrics,
                              hit_ratio_at_k, ndcg_at_k, positive_rank, sampled_metrics,
                              uniformity)

LOG2_3 = math.log2(3)


# --------------------------------------------------------------------------------------
# Sampled metrics
# --------------------------------------------------------------------------------------

# Four users, one positive and six negatives each.
#   user 0: every negative below the positive              -> rank 1 + 0 = 1
#   user 1: one tie (0.5) and one higher (0.9)              -> rank 1 + 2 = 3 (tie counts)
#   user 2: every negative above the positive               -> rank 1 + 6 = 7
#   user 3: every negative ties with the positive           -> rank 1 + 6 = 7
POS = torch.tensor([1.0, 0.5, 0.0, 0.5])
NEG = torch.tensor([
    [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    [0.5, 0.9, 0.1, 0.1, 0.1, 0.1],
    [1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
    [0.5, 0.5, 0.5, 0.5, 0.5, 0.5],
])


def test_positive_rank_ties_count_against_the_positive():
    assert positive_rank(POS, NEG).tolist() == [1, 3, 7, 7]


def test_positive_rank_single_negative_tie():
    # One negative equal to the positive: rank = 1 + 1 = 2 (not 1).
    assert positive_rank(torch.tensor([2.0]), torch.tensor([[2.0]])).tolist() == [2]
    # Just below the positive: rank 1.
    assert positive_rank(torch.tensor([2.0]), torch.tensor([[1.999]])).tolist() == [1]


def test_hit_ratio_by_hand():
    # ranks [1, 3, 7, 7]
    assert float(hit_ratio_at_k(POS, NEG, k=1)) == pytest.approx(1 / 4)  # rank 1 only
    assert float(hit_ratio_at_k(POS, NEG, k=3)) == pytest.approx(2 / 4)  # ranks 1 and 3
    assert float(hit_ratio_at_k(POS, NEG, k=6)) == pytest.approx(2 / 4)  # 7 > 6
    assert float(hit_ratio_at_k(POS, NEG, k=7)) == pytest.approx(1.0)    # all <= 7


def test_ndcg_by_hand():
    # rank 1 -> 1/log2(2) = 1; rank 3 -> 1/log2(4) = 0.5; rank 7 -> 1/log2(8) = 1/3
    # k=1: (1 + 0 + 0 + 0) / 4 = 0.25
    assert float(ndcg_at_k(POS, NEG, k=1)) == pytest.approx(0.25)
    # k=3: (1 + 0.5 + 0 + 0) / 4 = 0.375
    assert float(ndcg_at_k(POS, NEG, k=3)) == pytest.approx(0.375)
    # k=6: rank 7 still outside -> 0.375
    assert float(ndcg_at_k(POS, NEG, k=6)) == pytest.approx(0.375)
    # k=7: (1 + 0.5 + 1/3 + 1/3) / 4 = (13/6) / 4 = 13/24
    assert float(ndcg_at_k(POS, NEG, k=7)) == pytest.approx(13 / 24)


def test_ndcg_rank_two():
    # rank 2 -> 1/log2(3)
    value = ndcg_at_k(torch.tensor([0.5]), torch.tensor([[0.9, 0.1, 0.2]]), k=10)
    assert float(value) == pytest.approx(1 / LOG2_3)


def test_sampled_metrics_keys_and_values():
    out = sampled_metrics(POS, NEG)
    assert set(out) == {'hr@10', 'ndcg@10'}
    assert all(type(v) is float for v in out.values())
    # k=10: every rank <= 10 -> HR = 1, NDCG = 13/24 (as for k=7)
    assert out['hr@10'] == pytest.approx(1.0)
    assert out['ndcg@10'] == pytest.approx(13 / 24)

    out3 = sampled_metrics(POS, NEG, k=3)
    assert out3 == pytest.approx({'hr@3': 0.5, 'ndcg@3': 0.375})


@pytest.mark.parametrize('fn', [positive_rank, hit_ratio_at_k, ndcg_at_k, sampled_metrics])
@pytest.mark.parametrize('pos,neg', [
    (torch.zeros(4, 1), torch.zeros(4, 6)),    # positive not 1-D
    (torch.zeros(4), torch.zeros(4)),          # negatives not 2-D
    (torch.zeros(4), torch.zeros(3, 6)),       # user counts differ
    (torch.zeros(4), torch.zeros(4, 6, 1)),    # negatives 3-D
])
def test_sampled_shape_errors(fn, pos, neg):
    with pytest.raises(ValueError):
        fn(pos, neg)


# --------------------------------------------------------------------------------------
# Full ranking
# --------------------------------------------------------------------------------------
#
# 3 users, 6 items.
#   train:    user 0 {0},     user 1 {1, 2},  user 2 {}
#   held-out: user 0 {1, 3},  user 1 {},      user 2 {5}
#
# user 0 scores: item0=10 (training item: masked), item1=3, item2=9, item3=8, item4=1,
#   item5=2.  Ranking without item 0: 2, 3, 1, 5, 4.   T = {1, 3}
#   K=2: top [2, 3] -> hit at position 2 only, h = 1
#        recall 1/2, precision 1/2, hit 1
#        dcg = 1/log2(3); idcg = 1/log2(2) + 1/log2(3) (min(2, |T|=2) = 2 terms)
#        ndcg = (1/log2 3) / (1 + 1/log2 3)
#   K=3: top [2, 3, 1] -> hits at positions 2 and 3, h = 2
#        recall 2/2 = 1, precision 2/3, hit 1
#        dcg = 1/log2(3) + 1/log2(4) = 1/log2 3 + 0.5; idcg = 1 + 1/log2 3 (min(3, 2) = 2)
#   (Had item 0 not been masked, the K=2 list would be [0, 2] with no hit at all.)
# user 1: no held-out item -> excluded from every average (its scores would give 0s).
# user 2 scores: item0=6, item1=5, item2=0, item3=0.5, item4=0.1, item5=4.
#   Ranking: 0, 1, 5, 3, 4, 2.   T = {5}
#   K=2: top [0, 1] -> h = 0: everything 0
#   K=3: top [0, 1, 5] -> hit at position 3, h = 1
#        recall 1, precision 1/3, hit 1, dcg = 1/log2(4) = 0.5, idcg = 1 (min(3, 1) = 1)
#        ndcg = 0.5
# Averages over users 0 and 2:
NDCG0_K2 = (1 / LOG2_3) / (1 + 1 / LOG2_3)
NDCG0_K3 = (1 / LOG2_3 + 0.5) / (1 + 1 / LOG2_3)
EXPECTED = {
    'recall@2': (0.5 + 0.0) / 2,
    'precision@2': (0.5 + 0.0) / 2,
    'hit@2': (1 + 0) / 2,
    'ndcg@2': (NDCG0_K2 + 0.0) / 2,
    'recall@3': (1.0 + 1.0) / 2,
    'precision@3': (2 / 3 + 1 / 3) / 2,
    'hit@3': (1 + 1) / 2,
    'ndcg@3': (NDCG0_K3 + 0.5) / 2,
}
NUM_USERS, NUM_ITEMS = 3, 6
TRAIN = ClientPartition.from_edge_index(torch.tensor([[0, 1, 1], [0, 1, 2]]), NUM_USERS,
                                        NUM_ITEMS)
HELD_OUT = ClientPartition.from_edge_index(torch.tensor([[0, 0, 2], [1, 3, 5]]), NUM_USERS,
                                           NUM_ITEMS)
SCORES = torch.tensor([
    [10.0, 3.0, 9.0, 8.0, 1.0, 2.0],
    [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # irrelevant: user 1 holds no held-out item
    [6.0, 5.0, 0.0, 0.5, 0.1, 4.0],
])


def _fresh_partitions():
    # ClientPartition caches sorted keys; give every test its own objects.
    return (ClientPartition(TRAIN.ptr.clone(), TRAIN.col.clone(), NUM_ITEMS),
            ClientPartition(HELD_OUT.ptr.clone(), HELD_OUT.col.clone(), NUM_ITEMS))


def test_evaluator_by_hand_all_users_one_batch():
    train, held_out = _fresh_partitions()
    evaluator = FullRankingEvaluator(train, held_out, ks=(2, 3))
    evaluator.update(torch.arange(NUM_USERS), SCORES)
    out = evaluator.compute()
    assert set(out) == set(EXPECTED)
    assert all(type(v) is float for v in out.values())
    assert out == pytest.approx(EXPECTED, abs=1e-6)


def test_training_items_are_masked():
    # Without the mask, user 0's top-2 would be [0, 2] -> recall@2 = 0. With it, [2, 3].
    train, held_out = _fresh_partitions()
    evaluator = FullRankingEvaluator(train, held_out, ks=(2,))
    evaluator.update(torch.tensor([0]), SCORES[:1])
    out = evaluator.compute()
    assert out['recall@2'] == pytest.approx(0.5)
    assert out['hit@2'] == pytest.approx(1.0)

    # A training item scored highest that is also the user's only candidate near the top:
    # user 1 (train {1, 2}) with held-out {1} must never get a hit from item 1.
    held = ClientPartition.from_edge_index(torch.tensor([[1], [1]]), NUM_USERS, NUM_ITEMS)
    evaluator = FullRankingEvaluator(train, held, ks=(2,))
    evaluator.update(torch.tensor([1]), torch.tensor([[0.0, 9.0, 8.0, 1.0, 2.0, 3.0]]))
    assert evaluator.compute()['hit@2'] == 0.0


def test_users_without_held_out_items_are_excluded():
    train, held_out = _fresh_partitions()
    # user 1 alone: no held-out item, nothing to average -> the result must not be
    # counted; with users 0 and 2 added the averages are exactly the ones by hand.
    evaluator = FullRankingEvaluator(train, held_out, ks=(2, 3))
    evaluator.update(torch.tensor([1]), SCORES[1:2])
    evaluator.update(torch.tensor([0, 2]), SCORES[[0, 2]])
    assert evaluator.compute() == pytest.approx(EXPECTED, abs=1e-6)


def test_batching_gives_the_same_result():
    train, held_out = _fresh_partitions()
    evaluator = FullRankingEvaluator(train, held_out, ks=(2, 3))
    for user in (2, 1, 0):  # one user per batch, any order
        evaluator.update(torch.tensor([user]), SCORES[user:user + 1])
    assert evaluator.compute() == pytest.approx(EXPECTED, abs=1e-6)


def test_full_ranking_metrics_by_hand_and_batch_sizes():
    calls = []

    def score_fn(users):
        calls.append(users.tolist())
        return SCORES[users]

    train, held_out = _fresh_partitions()
    one_batch = full_ranking_metrics(score_fn, train, held_out, ks=(2, 3))
    assert one_batch == pytest.approx(EXPECTED, abs=1e-6)
    # Only users with held-out items are scored (user 1 has none).
    assert calls == [[0, 2]]

    calls.clear()
    per_user = full_ranking_metrics(score_fn, train, held_out, ks=(2, 3), batch_size=1)
    assert calls == [[0], [2]]
    assert per_user == pytest.approx(one_batch, abs=1e-7)


def test_full_ranking_default_ks_keys():
    train, held_out = _fresh_partitions()
    out = full_ranking_metrics(lambda users: SCORES[users], train, held_out)
    assert set(out) == {f'{m}@{k}' for m in ('recall', 'precision', 'ndcg', 'hit')
                        for k in (10, 20)}
    # 6 items, so every held-out item is in the top 10: recall = hit = 1
    assert out['recall@10'] == pytest.approx(1.0)
    assert out['hit@20'] == pytest.approx(1.0)
    # precision@10 = (2/10 + 1/10) / 2 = 0.15
    assert out['precision@10'] == pytest.approx(0.15)


def test_full_ranking_random_batching_matches_one_batch():
    torch.manual_seed(0)
    num_users, num_items = 40, 30
    train_edges = torch.stack([torch.randint(num_users, (200,)),
                               torch.randint(num_items, (200,))])
    train_edges = torch.unique(train_edges, dim=1)
    key = set(map(tuple, train_edges.t().tolist()))
    held = [(u, i) for u, i in zip(torch.randint(num_users, (120,)).tolist(),
                                   torch.randint(num_items, (120,)).tolist())
            if (u, i) not in key]
    held = sorted(set(held))
    train = ClientPartition.from_edge_index(train_edges, num_users, num_items)
    held_out = ClientPartition.from_edge_index(torch.tensor(held).t(), num_users, num_items)
    scores = torch.rand(num_users, num_items)
    a = full_ranking_metrics(lambda u: scores[u], train, held_out, ks=(5, 10))
    b = full_ranking_metrics(lambda u: scores[u], train, held_out, ks=(5, 10), batch_size=7)
    assert a == pytest.approx(b, abs=1e-6)
    assert 0 < a['recall@10'] <= 1


@pytest.mark.parametrize('shape', [(3, 5), (2, 6), (3, 6, 1), (6,)])
def test_bad_score_shape_raises(shape):
    train, held_out = _fresh_partitions()
    evaluator = FullRankingEvaluator(train, held_out, ks=(2,))
    with pytest.raises(ValueError):
        evaluator.update(torch.arange(NUM_USERS), torch.zeros(shape))


# --------------------------------------------------------------------------------------
# Representation quality
# --------------------------------------------------------------------------------------

def test_uniformity_antipodal():
    # ||x - y||^2 = 4 -> log(exp(-2 * 4)) = -8
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert uniformity(x) == pytest.approx(-8.0)
    # t = 1: log(exp(-4)) = -4
    assert uniformity(x, t=1.0) == pytest.approx(-4.0)


def test_uniformity_is_scale_invariant():
    # Normalized first: [3, 0] and [-0.5, 0] are the antipodal unit vectors again -> -8
    x = torch.tensor([[3.0, 0.0], [-0.5, 0.0]])
    assert uniformity(x) == pytest.approx(-8.0)
    y = torch.randn(10, 4, generator=torch.Generator().manual_seed(1))
    scale = torch.rand(10, 1, generator=torch.Generator().manual_seed(2)) * 10 + 0.1
    # (float32 inputs: y * scale is rounded before the double-precision math)
    assert uniformity(y * scale) == pytest.approx(uniformity(y), abs=1e-6)


def test_uniformity_four_points_on_circle():
    # 6 pairs: 4 neighbours at 90 degrees (||x-y||^2 = 2) and 2 opposite pairs (4)
    # -> log((4 e^-4 + 2 e^-8) / 6)
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    expected = math.log((4 * math.exp(-4) + 2 * math.exp(-8)) / 6)
    assert uniformity(x) == pytest.approx(expected)


def test_uniformity_triangle_and_identical_points():
    # Three unit vectors at 120 degrees: ||x-y||^2 = 2 - 2 cos(120) = 3 -> log(e^-6) = -6
    angles = torch.tensor([0.0, 2 * math.pi / 3, 4 * math.pi / 3], dtype=torch.float64)
    x = torch.stack([angles.cos(), angles.sin()], dim=1)
    assert uniformity(x) == pytest.approx(-6.0)
    # All identical: distance 0 -> log(1) = 0 (the maximum)
    assert uniformity(torch.ones(5, 3)) == pytest.approx(0.0)


def test_uniformity_subsampling_is_seeded_and_uses_a_subset():
    x = torch.randn(50, 3, generator=torch.Generator().manual_seed(0))
    a = uniformity(x, max_points=10, generator=torch.Generator().manual_seed(7))
    b = uniformity(x, max_points=10, generator=torch.Generator().manual_seed(7))
    assert a == b
    # The subset is the first max_points of a seeded permutation.
    index = torch.randperm(50, generator=torch.Generator().manual_seed(7))[:10]
    assert a == pytest.approx(uniformity(x[index], max_points=None))
    # ... and differs from the full-set value and from another seed's subset.
    full = uniformity(x, max_points=None)
    assert a != pytest.approx(full)
    c = uniformity(x, max_points=10, generator=torch.Generator().manual_seed(8))
    assert a != pytest.approx(c)
    # At or above the size of the set, nothing is dropped.
    assert uniformity(x, max_points=50) == pytest.approx(full)
    assert uniformity(x, max_points=1000) == pytest.approx(full)


@pytest.mark.parametrize('x', [torch.ones(1, 3), torch.ones(4), torch.ones(2, 3, 4),
                               torch.ones(0, 3)])
def test_uniformity_shape_errors(x):
    with pytest.raises(ValueError):
        uniformity(x)


def test_alignment_by_hand():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # identical -> 0
    assert alignment(x, x) == pytest.approx(0.0)
    # orthogonal unit vectors: ||x - y||^2 = 1 + 1 = 2 -> alpha=2 gives 2, alpha=1 sqrt(2)
    y = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    assert alignment(x, y) == pytest.approx(2.0)
    assert alignment(x, y, alpha=1.0) == pytest.approx(math.sqrt(2))
    # antipodal: ||x - y||^2 = 4
    assert alignment(x, -x) == pytest.approx(4.0)
    # mean over rows, after normalization: rows give 0 ([2,0] vs [1,0]) and 2 -> 1
    a = torch.tensor([[2.0, 0.0], [1.0, 0.0]])
    b = torch.tensor([[1.0, 0.0], [0.0, 5.0]])
    assert alignment(a, b) == pytest.approx(1.0)


@pytest.mark.parametrize('x,y', [(torch.ones(3, 2), torch.ones(2, 2)),
                                 (torch.ones(3, 2), torch.ones(3, 3)),
                                 (torch.ones(3), torch.ones(3))])
def test_alignment_shape_errors(x, y):
    with pytest.raises(ValueError):
        alignment(x, y)
