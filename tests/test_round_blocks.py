"""A round trained block of clients by block, its uploads summed as they come
(``round_block``): the same round as the whole one, and refused where it cannot be."""
import pytest
import torch

from fedgraph.assemble import build_run
from fedgraph.config import TrainConfig
from fedgraph.data import ratio_split, synthetic_interactions
from fedgraph.federated.personal import PersonalItemRows
from fedgraph.server.stages import DPClip, DPNoise, ServerPipeline, UploadSum, WeightedMean

SMALL = dict(dim=8, rounds=4, eval_every=4, batch_size=32, protocol='full')


@pytest.fixture(scope='module')
def split():
    return ratio_split(synthetic_interactions(num_users=90, num_items=200, mean_degree=12,
                                              seed=3), seed=0)


def _state(engine):
    """What a round leaves behind: the shared and private parameters, the broadcast table,
    each client's fine-tuned rows and the records."""
    federated = engine.federated
    return {**{name: value.detach().clone() for name, value in federated.model.state_dict().items()},
            'broadcast': federated.broadcast.clone(),
            'personal/keys': federated.personal.keys.clone(),
            'personal/values': federated.personal.values.clone(),
            'participation': federated.participation.clone()}


def _rounds(config, split, rounds=3):
    engine, generator = build_run(config, split)
    stats = [engine.run_round(generator) for _ in range(rounds)]
    return engine, stats


def _assert_same(whole, blocked, tolerance):
    assert whole.keys() == blocked.keys()
    for name in whole:
        if whole[name].is_floating_point():
            torch.testing.assert_close(blocked[name], whole[name], atol=tolerance,
                                       rtol=tolerance, msg=name)
        else:
            assert torch.equal(blocked[name], whole[name]), name


@pytest.mark.parametrize('settings', [
    dict(algorithm='pfedrec'),
    dict(algorithm='pfedrec', clients_per_round=40),
    dict(algorithm='pfedrec', dp_noise_multiplier=0.5, dp_clip=1.0, dp_clip_quantile=0.5,
         dp_clip_lr=0.5),
    dict(algorithm='fedncf', clients_per_round=50, aggregation='weighted'),
    dict(algorithm='fedmf', clients_per_round=60),
])
def test_a_round_in_blocks_equals_the_whole_round_when_clients_draw_their_own(split, settings):
    # Each client's plan and upload noise come from its own streams: blocks of 7 clients
    # draw what the whole round draws, and the sums differ only in their order (float32
    # rounding, carried into rows as large as 10^2 by PFedRec's item learning rate).
    config = TrainConfig(**SMALL, client_streams=True, **settings)
    whole, whole_stats = _rounds(config, split)
    blocked, blocked_stats = _rounds(TrainConfig(**SMALL, client_streams=True, round_block=7,
                                                 **settings), split)
    _assert_same(_state(whole), _state(blocked), tolerance=1e-5)
    for a, b in zip(whole_stats, blocked_stats):
        assert a.num_clients == b.num_clients
        assert a.loss == pytest.approx(b.loss, rel=1e-6)
        assert a.upload_bytes == pytest.approx(b.upload_bytes)
    assert (whole.federated.ledger.report()['epsilon']
            == blocked.federated.ledger.report()['epsilon'])
    if settings.get('dp_clip_quantile'):
        # The bound moved by the count of unclipped clients summed over the blocks.
        assert (blocked.federated.server.privacy.bound
                == pytest.approx(whole.federated.server.privacy.bound, rel=1e-6))
        assert blocked.federated.server.privacy.bound != 1.0


def test_one_block_of_the_whole_round_is_the_whole_round_exactly(split):
    # With one generator shared by the round, a block holding every client draws exactly
    # what the whole round draws.
    settings = dict(algorithm='pfedrec', dp_noise_multiplier=0.7, dp_clip=2.0, **SMALL)
    whole, _ = _rounds(TrainConfig(**settings), split)
    blocked, _ = _rounds(TrainConfig(round_block=1000, **settings), split)
    _assert_same(_state(whole), _state(blocked), tolerance=0)


def test_blocks_sharing_a_generator_draw_other_plans_of_the_same_round(split):
    whole, _ = _rounds(TrainConfig(algorithm='pfedrec', **SMALL), split, rounds=1)
    blocked, stats = _rounds(TrainConfig(algorithm='pfedrec', round_block=10, **SMALL), split,
                             rounds=1)
    assert stats[0].num_clients == 90
    assert torch.equal(blocked.federated.participation, whole.federated.participation)
    assert not torch.equal(blocked.federated.model.item, whole.federated.model.item)
    # Every client still stores its fine-tuned rows, its training items among them.
    clients = torch.div(blocked.federated.personal.keys, 200, rounding_mode='floor')
    assert torch.equal(torch.unique(clients), torch.arange(90))


@pytest.mark.parametrize('settings, match', [
    (dict(algorithm='pfedrec', secure_aggregation=True), 'secure aggregation'),
    (dict(algorithm='pfedrec', aggregation='median'), 'mean or weighted'),
    (dict(algorithm='pfedrec', engine='reference'), 'vectorized'),
    (dict(algorithm='pfedrec', round_block=0), 'round_block must be >= 1'),
    (dict(algorithm='fedlightgcn'), 'round_block'),
    (dict(algorithm='gpfedrec'), 'round_block'),
    (dict(algorithm='mf'), 'round_block'),
])
def test_a_round_in_blocks_is_refused_where_it_cannot_sum(settings, match):
    settings = {'round_block': 5, **settings}
    with pytest.raises(ValueError, match=match):
        TrainConfig(**SMALL, **settings)


def test_a_simulated_adversary_needs_the_whole_round(split):
    engine, generator = build_run(TrainConfig(algorithm='pfedrec', round_block=5, **SMALL),
                                  split)
    engine.federated.adversary = lambda result: result
    with pytest.raises(ValueError, match='adversary'):
        engine.run_round(generator)


def test_blocks_of_rows_are_stored_as_one_replacement():
    store, blocked = (PersonalItemRows(6, 10, 3, dtype=torch.float64) for _ in range(2))
    first = torch.tensor([0, 0, 2, 4]), torch.tensor([1, 7, 3, 9])
    second = torch.tensor([0, 1, 1, 3, 5]), torch.tensor([2, 0, 5, 5, 1])
    old = torch.rand(4, 3, dtype=torch.float64)
    for target in (store, blocked):
        target.replace(torch.arange(6), *first, old)
    clients = torch.tensor([0, 1, 3, 5])
    values = torch.rand(5, 3, dtype=torch.float64)
    store.replace(clients, *second, values)
    blocks = [(blocked.keys_of(second[0][:2], second[1][:2]), values[:2].clone()),
              (blocked.keys_of(second[0][2:], second[1][2:]), values[2:].clone())]
    blocked.replace_blocks(clients, blocks)
    assert blocks == []  # consumed as copied
    assert torch.equal(blocked.keys, store.keys)
    assert torch.equal(blocked.values, store.values)
    # Client 2 and 4 kept their rows; 0's old rows went.
    assert torch.equal(torch.div(store.keys, 10, rounding_mode='floor'),
                       torch.tensor([0, 1, 1, 2, 3, 4, 5]))


def test_summed_blocks_release_the_weighted_mean_of_the_uploads():
    # Two blocks of a weighted mean: (2 * [1, 1] + 1 * [4, 4]) / 3 on row 0, the dense
    # change likewise.
    pipeline = ServerPipeline(WeightedMean())
    base = torch.zeros(3, 2, dtype=torch.float64)
    dense = {'w': torch.zeros(2, dtype=torch.float64)}
    total = UploadSum.zeros(base, dense)
    pipeline.add_block(total, torch.tensor([0]), torch.tensor([0]),
                       torch.ones(1, 2, dtype=torch.float64),
                       {'w': torch.ones(1, 2, dtype=torch.float64)}, 1, torch.tensor([2]))
    pipeline.add_block(total, torch.tensor([0, 2]), torch.tensor([0, 0]),
                       torch.full((2, 2), 4.0, dtype=torch.float64),
                       {'w': torch.full((1, 2), 4.0, dtype=torch.float64)}, 1,
                       torch.tensor([1]))
    table = base.clone()
    pipeline.release_sum(table, dense, base, total, None)
    assert total.num_clients == 2 and total.weight == 3
    torch.testing.assert_close(table, torch.tensor([[2.0, 2.0], [0.0, 0.0], [4 / 3, 4 / 3]],
                                                   dtype=torch.float64))
    torch.testing.assert_close(dense['w'], torch.tensor([2.0, 2.0], dtype=torch.float64))


def test_the_unclipped_count_adds_up_over_a_rounds_blocks():
    from fedgraph.privacy.adaptive import AdaptiveClip
    from fedgraph.privacy.gaussian import UserLevelDP

    mechanism = UserLevelDP(clip=1.0, noise_multiplier=0.0,
                            adaptive=AdaptiveClip(1.0, quantile=0.5, lr=0.2, count_std=1.0))
    clip = DPClip(mechanism)
    pipeline = ServerPipeline(uploads=(clip,), releases=(DPNoise(mechanism, clip),))
    pipeline.start_round()
    for norms in ([0.5, 2.0], [0.1, 0.2, 3.0]):
        update = torch.tensor(norms, dtype=torch.float64).unsqueeze(1)
        clip(torch.arange(len(norms)), update, {}, len(norms))
    assert clip.unclipped == 3
    pipeline.start_round()
    assert clip.unclipped == 0
