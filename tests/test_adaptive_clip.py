"""Adaptive clipping (Andrew et al., NeurIPS 2021) under central and distributed DP, and the
frontier's figure across populations."""
import json
import math

import pytest
import torch

from fedgraph.assemble import build_run
from fedgraph.config import TrainConfig
from fedgraph.data import ratio_split, synthetic_interactions
from fedgraph.federated.messages import ClientRound, RowUpload
from fedgraph.federated.secure import SecureAggregation
from fedgraph.privacy.adaptive import AdaptiveClip
from fedgraph.privacy.gaussian import UserLevelDP
from fedgraph.privacy.secure_sum import SecAggPlus
from fedgraph.server.deployment import Deployment, LocalTransport
from fedgraph.server.stages import DPClip
from fedgraph.training import train
from fedgraph.viz.report import plot_runs

SMALL = dict(dim=8, rounds=6, eval_every=3, batch_size=32, protocol='full')


@pytest.fixture(scope='module')
def split():
    return ratio_split(synthetic_interactions(num_users=120, num_items=300, mean_degree=15,
                                              seed=4), seed=0)


def test_the_bound_steps_geometrically_towards_the_quantile():
    clip = AdaptiveClip(10.0, quantile=0.5, lr=0.2, count_std=5.0)
    clip.step(noised_count=100, clients=100)  # nobody cut: the bound shrinks
    assert clip.clip == pytest.approx(10.0 * math.exp(-0.2 * 0.5))
    clip.step(noised_count=0, clients=100)  # everybody cut: it grows back
    assert clip.clip == pytest.approx(10.0)
    clip.step(noised_count=50, clients=100)  # at the quantile: it stays
    assert clip.clip == pytest.approx(10.0)


@pytest.mark.parametrize('sigma, count_std', [(1.0, 5.0), (12.8, 47.15), (3.0, 1.6)])
def test_the_update_and_count_noise_add_up_to_the_accountants_multiplier(sigma, count_std):
    # A Gaussian release of sensitivity 2S with noise sigma_u S, and one of sensitivity 1 with
    # noise sigma_b, are one release of multiplier sigma when 1/sigma^2 = 1/sigma_u^2 +
    # 1/(2 sigma_b)^2.
    update = AdaptiveClip(1.0, count_std=count_std).update_noise(sigma)
    assert update > sigma
    assert update ** -2 + (2 * count_std) ** -2 == pytest.approx(sigma ** -2)


def test_a_count_noise_too_small_for_the_multiplier_is_refused():
    with pytest.raises(ValueError, match='take more clients'):
        AdaptiveClip(1.0, count_std=1.0).update_noise(2.0)


def test_central_adaptive_clipping_finds_the_median_update_norm(split):
    # No noise on the update (sigma 0) and a first bound far above every update: the bound
    # falls until about half the clients are cut.
    config = TrainConfig(algorithm='pfedrec', dp_noise_multiplier=0.0, dp_clip=1e5,
                         dp_clip_quantile=0.5, dp_clip_lr=1.0, **{**SMALL, 'rounds': 40})
    engine, generator = build_run(config, split)
    stage = next(s for s in engine.federated.server.uploads if isinstance(s, DPClip))
    shares = []
    for _ in range(40):
        engine.run_round(generator)
        shares.append(stage.unclipped / 120)
    mechanism = engine.federated.server.privacy
    assert mechanism.bound < 1e3  # it came down by orders of magnitude
    assert 0.25 <= sum(shares[-10:]) / 10 <= 0.75
    record = engine.federated.ledger.report()
    assert record['clip'] == mechanism.bound and record['clip_quantile'] == 0.5


def _round(norms, dim=4):
    """A round of clients each uploading one row of the given norm (item = client)."""
    update = torch.zeros(len(norms), dim, dtype=torch.float64)
    update[:, 0] = torch.tensor(norms, dtype=torch.float64)
    clients = torch.arange(len(norms))
    upload = RowUpload(clients, clients.clone(), clients.clone(), update)
    return ClientRound(upload, torch.ones(len(norms)), torch.zeros(len(norms)))


def test_distributed_adaptive_clipping_reads_the_count_from_the_noised_sum():
    # Six of ten clients under the bound 1; the count's noise (sigma_b 0.02) is small enough
    # to read the count to within 0.2.
    adaptive = AdaptiveClip(1.0, quantile=0.5, lr=0.5, count_std=0.02)
    privacy = UserLevelDP(1.0, 0.01, 'distributed', adaptive)
    secure = SecureAggregation.build(SecAggPlus(), privacy, dim=10 * 4, clients=10)
    norms = [0.5, 0.9, 0.2, 0.99, 0.1, 0.7, 3.0, 5.0, 1.5, 2.0]
    totals = secure.totals(_round(norms), 10, {}, torch.Generator().manual_seed(0),
                           round_seed=1, generator=torch.Generator().manual_seed(2))
    # The sum of the clipped updates, and the bound moved by the count of six.
    clipped = torch.tensor([min(n, 1.0) for n in norms], dtype=torch.float64)
    assert torch.allclose(totals.rows[:, 0], clipped, atol=0.05)
    expected = math.exp(-0.5 * (6 / 10 - 0.5))
    assert adaptive.clip == pytest.approx(expected, rel=0.5 * 0.2 / 10 + 1e-3)


def test_secure_adaptive_training_records_its_bound_and_stays_within_epsilon(split):
    config = TrainConfig(algorithm='pfedrec', secure_aggregation=True, dp_epsilon=4.0,
                         dp_noise_at='distributed', dp_clip_quantile=0.5, dp_clip_lr=0.5,
                         client_streams=True, **SMALL)
    rounds = train(config, progress=False, split=split)['rounds']
    clips = [r['privacy']['clip'] for r in rounds]
    assert len(set(clips)) == len(clips)  # it moves every round
    assert all(0 < r['privacy']['epsilon'] <= 4.0 for r in rounds)


@pytest.mark.parametrize('settings, match', [
    (dict(dp_clip_quantile=0.5), 'dp_clip_quantile set without'),
    (dict(dp_epsilon=4.0, dp_clip_quantile=1.5), 'quantile in'),
    (dict(dp_epsilon=4.0, dp_clip_lr=0.5), 'dp_clip_lr set without adaptive clipping'),
    (dict(dp_epsilon=4.0, dp_clip_quantile=0.5, dp_noise_at='client'), 'adaptive clipping')])
def test_adaptive_settings_that_do_not_go_together(settings, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(algorithm='pfedrec', **settings)


def test_a_deployment_refuses_adaptive_clipping():
    config = TrainConfig(algorithm='pfedrec', secure_aggregation=True, dp_epsilon=4.0,
                         dp_noise_at='distributed', dp_clip_quantile=0.5)
    with pytest.raises(ValueError, match='in-process only'):
        Deployment(config, LocalTransport({}))


def test_frontiers_of_several_populations_plot_the_share_kept(tmp_path):
    rows = []
    for users, free, private in ((1000, 0.2, 0.05), (10000, 0.25, 0.2)):
        for target, value in ((None, free), (4.0, private)):
            rows.append({'algorithm': 'pfedrec', 'protocol': 'full', 'users': users,
                         'clip_quantile': None, 'target_epsilon': target, 'seed': 0,
                         'test': {'recall@20': value}})
    path = tmp_path / 'pfedrec.jsonl'
    path.write_text('\n'.join(json.dumps(row) for row in rows))
    written = plot_runs([path], tmp_path / 'figures')
    assert [p.name for p in written] == ['population.png']
    from fedgraph.viz.frontier import plot_population
    (ax,) = [ax for ax in plot_population(rows).axes if ax.get_visible()]
    (line,) = [line for line in ax.get_lines() if line.get_label() == 'pfedrec']
    assert list(line.get_xdata()) == [1000, 10000]
    assert list(line.get_ydata()) == pytest.approx([0.25, 0.8])
