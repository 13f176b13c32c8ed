"""The graph models' users' release of their part of the items' context under central
DP-FedAvg (``user_release_every``, ``dp_user_clip``): what the server propagates after a
release, the clip, the shrinkage of the noised sums, and the accounting."""
import pytest
import torch

from fedgraph.algorithms import build_engine
from fedgraph.config import TrainConfig
from fedgraph.data import ClientPartition, leave_one_out_split, synthetic_interactions
from fedgraph.nn import FederatedGNN
from fedgraph.privacy.gaussian import shrink_rows
from fedgraph.training import train
from helpers import train_interrupted, without_seconds

BASE = dict(algorithm='fedlightgcn', dim=8, num_layers=2, clients_per_round=20, rounds=4,
            user_release_every=2)


@pytest.fixture(scope='module')
def split():
    return leave_one_out_split(synthetic_interactions(num_users=60, num_items=200,
                                                      mean_degree=15, seed=2),
                               eval_negatives=49)


def _engine(split, **overrides):
    config = TrainConfig(**dict(BASE, **overrides))
    generator = torch.Generator().manual_seed(0)
    engine = build_engine(config, ClientPartition.from_data(split.train), generator,
                          split.known_items())
    return engine, generator


def _first_item_half(engine, users):
    """:math:`\\hat A_{IU} X_U` over the server's graph."""
    item = engine.model.item.detach()
    adjacency = engine.graph.normalized_adjacency(item.device, item.dtype)
    return (adjacency @ torch.cat([users, torch.zeros_like(item)]))[users.size(0):]


def test_without_noise_a_release_gives_the_server_the_users_item_sums(split):
    """The server propagates the users' own embeddings' item half after a release, while
    its per-user view stays what they uploaded at enrollment."""
    engine, generator = _engine(split, dp_noise_multiplier=0.0, dp_clip=10.0,
                                dp_user_clip=1e6)
    enrolled = engine.server_users.clone()
    engine.run_round(generator)
    assert engine.user_offset is None
    engine.run_round(generator)  # the second round releases
    assert torch.equal(engine.server_users, enrolled)
    users = engine.user_table.detach()
    engine.refresh_context()
    _, item_context = FederatedGNN(2).context(users, engine.model.item.detach(), engine.graph)
    torch.testing.assert_close(engine.model.item_context, item_context, atol=1e-6, rtol=0)


def _released(engine, generator, bound):
    """Two rounds (the second releases), then the item half of the users' embeddings
    clipped to ``bound`` and the server's estimate of it; whether the bound cut any."""
    for _ in range(2):
        engine.run_round(generator)
    users = engine.user_table.detach()
    norms = users.norm(dim=1, keepdim=True)
    exact = _first_item_half(engine, users * (bound / norms).clamp(max=1.0))
    estimate = _first_item_half(engine, engine.server_users) + engine.user_offset
    return exact, estimate, bool((norms > bound).any())


def test_a_release_clips_each_user_to_its_bound(split):
    engine, generator = _engine(split, dp_noise_multiplier=0.0, dp_clip=10.0,
                                dp_user_clip=0.05)
    exact, estimate, cut = _released(engine, generator, 0.05)
    assert cut
    torch.testing.assert_close(estimate, exact, atol=1e-6, rtol=0)


def test_the_shrunk_sums_are_closer_to_the_exact_ones_than_the_noised(split):
    """The server shrinks each item's noised sum towards 0 (James--Stein, the noise's
    variance known): over the items, its squared error is below the noise's own, and a
    row whose noised sum is within the noise's reach is dropped whole."""
    engine, generator = _engine(split, dp_noise_multiplier=2.0, dp_clip=10.0,
                                dp_user_clip=0.5)
    exact, estimate, _ = _released(engine, generator, 0.5)
    degree = torch.bincount(engine.graph.edge_index[1].long(), minlength=200).float()
    root = degree.sqrt().unsqueeze(1)
    shrunk_error = (((estimate - exact) * root) ** 2).sum()
    noise_error = 200 * 8 * (2.0 * 0.5) ** 2
    assert shrunk_error < noise_error
    dropped = (estimate.abs().sum(1) < 1e-6) & (degree > 0)
    assert dropped.any() and not dropped.all()


def test_the_releases_are_planned_and_counted_within_epsilon(split):
    engine, generator = _engine(split, dp_epsilon=4.0, dp_clip=10.0)
    for _ in range(4):
        engine.run_round(generator)
    report = engine.ledger.report()
    assert report['releases'] == 2 and report['epsilon'] <= 4.0 + 1e-9
    without, _ = _engine(split, dp_epsilon=4.0, dp_clip=10.0, user_release_every=0)
    assert engine.ledger.gaussian.noise_multiplier > without.ledger.gaussian.noise_multiplier
    assert without.user_offset is None


@pytest.mark.parametrize('settings', [
    dict(),  # no DP: the users upload their embeddings
    dict(dp_epsilon=4.0, dp_clip=10.0, user_release_every=0),
    dict(dp_epsilon=4.0, dp_clip=10.0, num_layers=0),
    dict(dp_epsilon=4.0, dp_clip=10.0, secure_aggregation=True, dp_noise_at='distributed'),
])
def test_no_release_is_planned_where_it_does_not_apply(settings):
    config = TrainConfig(**dict(BASE, **settings))
    assert config.build_algorithm().user_releases == 0
    if config.private:
        events = config.build_algorithm().planned_releases(3.0, 60, 20)
        assert events[-1][1] == 0


@pytest.mark.parametrize('settings', [
    dict(dp_noise_multiplier=1.0, dp_clip=1.0, dp_noise_at='client'),
    dict(dp_epsilon=4.0, dp_clip=10.0, num_layers=0),
])
def test_releases_set_where_dp_cannot_run_them_are_an_error(split, settings):
    with pytest.raises(ValueError, match='central DP'):
        _engine(split, **settings)
    _engine(split, **dict(settings, user_release_every=0))  # without them it trains


def test_a_release_setting_out_of_range_is_an_error():
    with pytest.raises(ValueError, match='user_release_every'):
        TrainConfig(**dict(BASE, user_release_every=-1))
    with pytest.raises(ValueError, match='dp_user_clip'):
        TrainConfig(**dict(BASE, dp_user_clip=0.0))


def test_a_run_with_releases_reproduces_from_its_seed(split):
    tables = []
    for _ in range(2):
        engine, generator = _engine(split, dp_epsilon=4.0, dp_clip=10.0)
        for _ in range(4):
            engine.run_round(generator)
        tables.append((engine.model.item.detach().clone(), engine.user_offset.clone()))
    assert all(torch.equal(a, b) for a, b in zip(*tables))


def test_james_stein_shrinks_each_row_by_its_own_norm():
    rows = torch.tensor([[3.0, 4.0, 0.0], [0.1, 0.0, 0.1], [30.0, 40.0, 0.0]])
    shrunk = shrink_rows(rows, 1.0)
    torch.testing.assert_close(shrunk[0], rows[0] * (1 - 1 / 25))
    assert torch.equal(shrunk[1], torch.zeros(3))  # within the noise's reach
    torch.testing.assert_close(shrunk[2], rows[2] * (1 - 1 / 2500))
    two = torch.tensor([[0.1, 0.2]])
    assert torch.equal(shrink_rows(two, 1.0), two)  # d <= 2: no shrinkage dominates


def test_a_run_records_its_releases_and_resumes_with_them(split, tmp_path, monkeypatch):
    """Each round's privacy record counts the users' releases so far within ε; a run
    interrupted after a release resumes to the uninterrupted run's records."""
    config = TrainConfig(**dict(BASE, dp_epsilon=4.0, dp_clip=10.0, checkpoint_every=2,
                                user_release_every=1, rounds=3))
    whole = train(config, out=tmp_path / 'whole', progress=False, split=split)
    privacy = [record['privacy'] for record in whole['rounds']]
    assert [record['releases'] for record in privacy] == [1, 2, 3]
    assert all(record['epsilon'] <= 4.0 + 1e-9 for record in privacy)
    assert privacy[-1]['epsilon'] > privacy[0]['epsilon']
    out = tmp_path / 'resumed'
    train_interrupted(monkeypatch, config, out=out, progress=False, split=split)
    resumed = train(config, out=out, resume=True, progress=False, split=split)
    assert without_seconds(resumed) == without_seconds(whole)
