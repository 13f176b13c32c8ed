"""Secure aggregation (SecAgg+ simulated in-process), the integer encoding of an update,
distributed DP's Skellam noise and its accounting, the engine's secure round, the settings,
and the train and leak commands under them."""
import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import kstest

from fedgraph.assemble import build_run
from fedgraph.cli import main
from fedgraph.config import TrainConfig
from fedgraph.data import ratio_split, synthetic_interactions
from fedgraph.privacy import accountant
from fedgraph.privacy.discrete import (MIN_SCALED_NORM, PLAIN_BOUND, PLAIN_RANGE,
                                       ROUNDING_SLACK, IntegerEncoding)
from fedgraph.privacy.secure_sum import RoundKeys, SecAggPlus, secure_sum
from helpers import read_metrics, write_small_csv

SMALL = dict(dim=8, rounds=6, eval_every=3, batch_size=32)
MODULUS = 2 ** 32


@pytest.fixture(scope='module')
def planted_split():
    return ratio_split(synthetic_interactions(num_users=120, num_items=300, mean_degree=15,
                                              seed=4), seed=0)


def random_vectors(parties, size, seed=0, bound=10 ** 6):
    """``{party: [size] int64}`` uniform in ``[-bound, bound]``."""
    generator = torch.Generator().manual_seed(seed)
    return {party: torch.randint(-bound, bound + 1, (size,), generator=generator)
            for party in parties}


# --------------------------------------------------------------------------------------
# The protocol
# --------------------------------------------------------------------------------------
# Twelve clients with ids that are not positions; 4 neighbours each (a sparse SecAgg+ graph)
# and the default 16 (every other client).
PARTIES = [3, 17, 4, 40, 41, 9, 100, 2, 55, 23, 8, 71]


@pytest.mark.parametrize('neighbours', [4, 16])
def test_the_masks_cancel_in_the_sum(neighbours):
    vectors = random_vectors(PARTIES, 1000)
    held = secure_sum(SecAggPlus(neighbours=neighbours), iter(vectors.items()), PARTIES,
                      round_seed=7)
    assert held.dropped == [] and sorted(held.received) == sorted(PARTIES)
    assert held.total.dtype == torch.int64
    assert torch.equal(held.total, sum(vectors.values()))


def test_with_dropouts_the_server_unmasks_the_survivors_sum_or_nothing():
    vectors = random_vectors(PARTIES, 500, seed=1)
    protocol = SecAggPlus(neighbours=4, min_survivors=0.5, dropout=0.3)
    keys = RoundKeys.agree(PARTIES, 4, 11)
    threshold = math.ceil(0.5 * len(PARTIES))
    unmasked, aborted, across_a_drop = 0, 0, 0
    for seed in range(100):
        held = secure_sum(protocol, iter(vectors.items()), PARTIES, round_seed=11,
                          generator=torch.Generator().manual_seed(seed))
        assert sorted([*held.received, *held.dropped]) == sorted(PARTIES)
        if len(held.received) < threshold:
            assert held.total is None
            aborted += 1
            continue
        assert torch.equal(held.total, sum(vectors[party] for party in held.received))
        unmasked += 1
        # A survivor whose neighbour dropped: the masks they shared had to be removed.
        across_a_drop += any(set(keys.neighbours[party]) & set(held.dropped)
                             for party in held.received)
    assert across_a_drop > 0 and aborted > 0 and unmasked > aborted


def test_below_the_threshold_the_server_unmasks_nothing():
    vectors = random_vectors(PARTIES, 200, seed=2)
    protocol = SecAggPlus(neighbours=4, min_survivors=1.0, dropout=0.3)
    seed = next(seed for seed in range(100)
                if secure_sum(protocol, iter(vectors.items()), PARTIES, round_seed=5,
                              generator=torch.Generator().manual_seed(seed)).dropped)
    held = secure_sum(protocol, iter(vectors.items()), PARTIES, round_seed=5,
                      generator=torch.Generator().manual_seed(seed))
    assert held.dropped and held.total is None
    assert len(held.received) == len(PARTIES) - len(held.dropped)  # received, still masked


def test_a_party_that_never_uploads_has_dropped_and_the_threshold_counts_users():
    parties = [1, 2, 3, 4]
    vectors = random_vectors(parties, 300, seed=4)
    protocol = SecAggPlus(neighbours=2, min_survivors=0.5)
    without_1 = [(party, vectors[party]) for party in parties if party != 1]
    held = secure_sum(protocol, iter(without_1), parties, round_seed=3)
    assert held.dropped == [1] and sorted(held.received) == [2, 3, 4]
    assert torch.equal(held.total, vectors[2] + vectors[3] + vectors[4])
    # Party 1 holds 9 of the round's 12 users: the other three hold too few to unmask.
    users = {1: 9, 2: 1, 3: 1, 4: 1}
    assert secure_sum(protocol, iter(without_1), parties, round_seed=3, users=users).total is None
    without_4 = [(party, vectors[party]) for party in parties if party != 4]
    held = secure_sum(protocol, iter(without_4), parties, round_seed=3, users=users)
    assert torch.equal(held.total, vectors[1] + vectors[2] + vectors[3])


def test_the_server_holds_only_uniform_looking_masked_vectors():
    size = 20_000
    parties = [5, 6, 7, 8, 9, 10]
    vectors = random_vectors(parties, size, seed=3)
    vectors[7] = torch.zeros(size, dtype=torch.long)  # a client with nothing to hide
    held = secure_sum(SecAggPlus(neighbours=2), iter(vectors.items()), parties, round_seed=21)
    again = secure_sum(SecAggPlus(neighbours=2), iter(vectors.items()), parties, round_seed=22)
    assert torch.equal(held.total, sum(vectors.values()))
    for party in parties:
        plain = vectors[party].numpy().astype(np.uint32)
        masked = held.received[party]
        assert masked.dtype == np.uint32
        # Nearly every coordinate differs (a coincidence has probability 2^-32 each).
        assert (masked != plain).mean() > 0.999
        assert (masked != again.received[party]).mean() > 0.999  # fresh masks each round
        # Uniform on [0, 2^32): mean 2^31 (its standard error here is 0.2%), no trend.
        values = masked.astype(np.float64) / MODULUS
        assert abs(values.mean() - 0.5) < 0.01
        assert kstest(values, 'uniform').pvalue > 1e-4
        if party != 7:  # and uncorrelated with the plain vector (standard error 0.007)
            assert abs(np.corrcoef(values, plain.astype(np.float64))[0, 1]) < 0.05
            assert abs(np.corrcoef(values, vectors[party].double().numpy())[0, 1]) < 0.05


@pytest.mark.parametrize('parties', [2, 3, 4, 5])
def test_small_rounds_mask_with_everyone_and_never_unmask_one_client(parties):
    keys = RoundKeys.agree(list(range(10, 10 + parties)), 16, round_seed=3)
    assert all(len(others) == parties - 1 for others in keys.neighbours.values())
    # With every pairwise mask in place, removing a client's private mask leaves noise.
    vectors = {party: torch.arange(50, dtype=torch.long) for party in keys.parties}
    held = secure_sum(SecAggPlus(), iter(vectors.items()), keys.parties, round_seed=3)
    alone = (held.received[10] - keys.private_mask(10, 50)).view(np.int32)
    assert not np.array_equal(alone, np.arange(50))
    assert SecAggPlus(min_survivors=0.1).threshold(parties) == 2


# --------------------------------------------------------------------------------------
# The integer encoding
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize('clients', [1, 16, 943, 10 ** 5])
def test_the_plain_grid_is_the_finest_whose_sums_fit(clients):
    scale = IntegerEncoding.plain(clients).scale
    assert math.log2(scale).is_integer() and 1 <= scale <= 2 ** 16
    assert clients * PLAIN_BOUND * scale <= PLAIN_RANGE
    assert scale == 2 ** 16 or clients * PLAIN_BOUND * 2 * scale > PLAIN_RANGE


def test_the_plain_encoding_rounds_to_its_grid_and_clamps():
    encoding = IntegerEncoding.plain(16)
    step = 1 / encoding.scale
    generator = torch.Generator().manual_seed(0)
    x = (torch.rand(10_000, generator=generator, dtype=torch.float64) * 2 - 1) * 300
    encoded = encoding.encode(x, generator)
    assert encoded.dtype == torch.int64
    decoded = encoding.decode(encoded)
    assert (decoded - x).abs().max() <= step
    # Rounded down or up to the grid, never further.
    assert set((encoded - (x / step).floor().long()).unique().tolist()) <= {0, 1}
    b = PLAIN_BOUND
    big = torch.tensor([-1e9, -b - 0.5, -b, b, b + 0.5, 1e9], dtype=torch.float64)
    assert encoding.decode(encoding.encode(big, generator)).tolist() == [-b, -b, -b, b, b, b]


@pytest.mark.parametrize('fraction', [0.3, -0.3])
def test_the_plain_encodings_rounding_is_unbiased(fraction):
    # 0.3 of a grid step: each encoding is 0 or 1 (-1 or 0) step, up with probability 0.3
    # (0.7); the mean of n draws has standard error sqrt(0.21 / n) = 0.001 steps.
    encoding = IntegerEncoding.plain(16)
    step = 1 / encoding.scale
    n = 200_000
    encoded = encoding.encode(torch.full((n,), fraction * step, dtype=torch.float64),
                              torch.Generator().manual_seed(1))
    assert set(encoded.unique().tolist()) == ({0, 1} if fraction > 0 else {-1, 0})
    mean = encoding.decode(encoded).mean().item() / step
    assert mean == pytest.approx(fraction, abs=5 * math.sqrt(0.21 / n))


@pytest.mark.parametrize('clip, dim', [(1.0, 1000), (10.0, 10 ** 6), (0.1, 50), (50.0, 4)])
def test_the_distributed_scale_is_the_smallest_power_of_two_that_bounds_the_rounding(clip,
                                                                                     dim):
    encoding = IntegerEncoding.distributed(clip, noise_multiplier=1.0, dim=dim, min_clients=10)
    scale = encoding.scale
    assert math.log2(scale).is_integer() and scale >= 1
    assert math.sqrt(dim) <= ROUNDING_SLACK * scale * clip
    assert scale * clip >= MIN_SCALED_NORM
    half = scale / 2
    assert scale == 1 or (math.sqrt(dim) > ROUNDING_SLACK * half * clip
                          or half * clip < MIN_SCALED_NORM)


def test_the_distributed_encoding_clips_the_whole_update():
    dim = 2000
    private = IntegerEncoding.distributed(1.0, noise_multiplier=1.0, dim=dim, min_clients=10)
    encoding = IntegerEncoding(private.scale, private.clip, skellam=0)  # no noise
    generator = torch.Generator().manual_seed(2)
    big = torch.randn(dim, generator=generator, dtype=torch.float64) * 5  # norm ~ 220
    decoded = encoding.decode(encoding.encode(big, generator))
    assert decoded.norm() <= 1.0 * (1 + ROUNDING_SLACK)
    assert decoded.norm() >= 1.0 * (1 - ROUNDING_SLACK)
    assert torch.dot(decoded, big) / (decoded.norm() * big.norm()) > 0.999  # same direction
    small = big / big.norm() * 0.5  # within the bound: only rounded
    assert (encoding.decode(encoding.encode(small, generator)) - small).abs().max() <= (
        1 / encoding.scale)


def test_the_clients_noise_shares_add_up_to_the_central_noise():
    clients, dim, sigma, clip = 8, 20_000, 0.5, 1.0
    encoding = IntegerEncoding.distributed(clip, noise_multiplier=sigma, dim=dim,
                                           min_clients=clients)
    assert encoding.skellam > 0
    generator = torch.Generator().manual_seed(3)
    zeros = torch.zeros(dim, dtype=torch.float64)
    shares = [encoding.encode(zeros, generator) for _ in range(clients)]
    total = sum(shares)
    # A share alone is Sk(mu, mu): variance 2 mu, an nth of the sum's.
    target = (sigma * encoding.scale * clip) ** 2
    assert shares[0].double().var().item() == pytest.approx(target / clients, rel=0.05)
    # The sum: variance (sigma gamma S)^2, mean 0 (sample variance's standard error 1%).
    assert total.double().var().item() == pytest.approx(target, rel=0.05)
    assert abs(total.double().mean().item()) < 5 * math.sqrt(target / dim)
    # Decoded: DP-FedAvg's noise N(0, sigma^2 S^2) on the sum.
    assert encoding.decode(total).std().item() == pytest.approx(sigma * clip, rel=0.03)


# --------------------------------------------------------------------------------------
# The accountant
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize('sigma', [3.0, 5.0, 10.0])
@pytest.mark.parametrize('releases', [1, 10])
def test_a_skellam_release_costs_a_little_more_than_a_gaussian_one(sigma, releases):
    delta = 1e-5
    skellam = accountant.epsilon([(accountant.SkellamEvent(sigma), releases)], delta)
    gaussian = accountant.epsilon([(accountant.gaussian_event(sigma), releases)], delta)
    assert gaussian <= skellam <= 1.05 * gaussian
    assert accountant.epsilon([(accountant.SkellamEvent(2 * sigma), releases)], delta) < skellam


@pytest.mark.parametrize('target', [1.0, 4.0])
def test_calibration_of_skellam_releases_meets_the_target(target):
    def plan(sigma):
        return [(accountant.SkellamEvent(sigma), 20)]

    sigma = accountant.calibrate(target, 1e-3, plan)
    assert accountant.epsilon(plan(sigma), 1e-3) <= target
    assert accountant.epsilon(plan(sigma * 0.99), 1e-3) > target


# --------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------
def one_round(config, split):
    """The item table before and after one round of ``config``, and the round's uploads."""
    engine, generator = build_run(config, split)
    before = engine.model.item.detach().clone()
    seen = {}

    def watch(result):
        seen['result'] = result
        return result

    engine.adversary = watch
    stats = engine.run_round(generator)
    return engine, before, engine.model.item.detach().clone(), seen['result'].upload, stats


@pytest.mark.parametrize('algorithm', ['pfedrec', 'fedmf'])
def test_a_secure_round_is_fedavg_up_to_the_encodings_grid(planted_split, algorithm):
    # Each client's encoding draws its rounding from its own stream, so both rounds train
    # alike; the secure round draws its key seed from the round's generator afterwards
    # (one round only). PFedRec's own item lr moves rows by far more than 1: the plain
    # bound holds them.
    settings = dict(algorithm=algorithm, protocol='full', client_streams=True, **SMALL)
    _, before, plain, upload, _ = one_round(TrainConfig(**settings), planted_split)
    engine, _, secure, secure_upload, stats = one_round(
        TrainConfig(secure_aggregation=True, **settings), planted_split)
    assert torch.equal(upload.update, secure_upload.update)  # the same local training
    assert upload.update.abs().max() < engine.secure.encoding.bound
    assert stats.num_clients == upload.clients.numel() and (plain != before).any()
    # The mean of B clients' roundings (each under one step) plus float32's own.
    step = 1 / engine.secure.encoding.scale
    assert (secure.double() - plain.double()).abs().max() <= 2 * step + 1e-6 * plain.abs().max()


def test_perfedrec_clusters_refuse_secure_aggregation(planted_split):
    config = TrainConfig(algorithm='perfedrec++', protocol='full', secure_aggregation=True,
                         num_clusters=2, **SMALL)
    with pytest.raises(ValueError, match='num_clusters=0'):
        build_run(config, planted_split)


# --------------------------------------------------------------------------------------
# Settings that do not go together
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize('settings, match', [
    (dict(dp_epsilon=4.0, dp_noise_at='distributed'), 'needs secure aggregation'),
    (dict(secure_aggregation=True, aggregation='median'), 'aggregation=mean'),
    (dict(secure_aggregation=True, norm_bound=1.0), 'norm bound'),
    (dict(secure_aggregation=True, dp_epsilon=4.0, dp_noise_at='server'),
     "dp_noise_at='distributed'"),
    (dict(secure_aggregation=True, dp_epsilon=4.0, dp_noise_at='client'),
     "dp_noise_at='distributed'"),
    (dict(secure_aggregation=True, engine='reference'), 'vectorized'),
    (dict(secure_dropout=0.1), 'secure_dropout set without secure_aggregation'),
    (dict(secure_min_survivors=0.5), 'secure_min_survivors set without'),
    (dict(secure_aggregation=True, secure_dropout=1.0), 'dropout'),
    (dict(secure_aggregation=True, secure_min_survivors=0.0), 'min_survivors'),
])
def test_secure_settings_that_contradict_each_other_are_errors(settings, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(algorithm='pfedrec', **settings)


def test_secure_settings_that_go_together_are_kept():
    config = TrainConfig(algorithm='pfedrec', secure_aggregation=True, dp_epsilon=4.0,
                         dp_noise_at='distributed', secure_min_survivors=0.8,
                         secure_dropout=0.1)
    assert (config.secure_aggregation, config.secure_min_survivors,
            config.secure_dropout) == (True, 0.8, 0.1)


# --------------------------------------------------------------------------------------
# The commands
# --------------------------------------------------------------------------------------
def test_train_with_secure_aggregation_and_distributed_dp_records_it(tmp_path):
    data = write_small_csv(tmp_path / 'data.csv')
    common = ['train', '--dataset', 'csv', '--data-path', str(data), '--eval-negatives', '20',
              '--algorithm', 'pfedrec', '--rounds', '3', '--dim', '8', '--quiet']
    main([*common, '--secure-aggregation', '--dp-epsilon', '4', '--dp-noise-at',
          'distributed', '--out', str(tmp_path / 'secure')])
    records = [r['privacy'] for r in read_metrics(tmp_path / 'secure')['rounds']]
    assert len(records) == 3
    for record in records:
        assert record['secure_aggregation'] is True and record['noise_at'] == 'distributed'
        assert 'skellam' in record['mechanism'] and 'distributed' in record['mechanism']
        assert 0 < record['epsilon'] <= 4.0
        # The Skellam accounting of the releases so far, not the Gaussian one.
        assert record['epsilon'] == pytest.approx(accountant.epsilon(
            [(accountant.SkellamEvent(record['noise_multiplier']), record['releases'])],
            record['delta']))
    assert [r['releases'] for r in records] == [1, 2, 3]
    assert records[0]['epsilon'] < records[-1]['epsilon']
    for name, flags in (('plain', []), ('off', ['--secure-aggregation', 'off'])):
        main([*common, *flags, '--out', str(tmp_path / name)])
        for record in (r['privacy'] for r in read_metrics(tmp_path / name)['rounds']):
            assert record['secure_aggregation'] is False and record['epsilon'] is None


def leak_json(capsys, data, *flags):
    main(['leak', '--dataset', 'csv', '--data-path', str(data), '--eval-negatives', '20',
          '--algorithm', 'fedlightgcn', '--json', '--warmup', '1', '--clients', '30', *flags])
    return {row['guess']: row for row in map(json.loads, capsys.readouterr().out.splitlines())}


def test_leak_under_secure_aggregation_guesses_at_chance(tmp_path, capsys):
    data = write_small_csv(tmp_path / 'data.csv')
    secure = leak_json(capsys, data, '--secure-aggregation', '--dp-epsilon', '4')
    assert {'rows', 'values'} <= set(secure)
    for row in secure.values():
        assert {'guess', 'precision', 'recall', 'chance'} <= set(row)
        assert row['secure_aggregation'] is True and row['dp_epsilon'] == 4.0
    chance = secure['rows']['chance']
    # The masked table has every row: its rows guess is every item, precision chance.
    assert secure['rows']['recall'] == 1.0
    assert secure['rows']['precision'] == pytest.approx(chance)
    # The masks' values point nowhere: the top rows of their leading direction are a random
    # guess (over the 30 clients scored, precision's standard error is about 0.015).
    assert abs(secure['values']['precision'] - chance) < 0.05
    # The server holds no graph, only each client's masked share of the propagation's sums.
    assert abs(secure['graph']['precision'] - chance) < 0.05
    plain = leak_json(capsys, data)
    assert plain['values']['precision'] > 0.9  # the server reads each upload
    assert plain['rows']['precision'] > 2 * chance
    assert plain['graph']['precision'] > 0.9  # and the enrollment graph


def test_secure_propagation_is_lightgcns_context_without_the_graph():
    from fedgraph.data import ClientPartition
    from fedgraph.federated.private_graph import SecurePropagation
    from fedgraph.nn.gnn import CollaborativeGraph, FederatedGNN

    partition = ClientPartition.from_data(synthetic_interactions(
        num_users=60, num_items=90, mean_degree=8, seed=2))
    graph = CollaborativeGraph(partition.edge_index(), 60, 90)
    generator = torch.Generator().manual_seed(0)
    users = torch.randn(60, 8, generator=generator, dtype=torch.float64) * 0.3
    items = torch.randn(90, 8, generator=generator, dtype=torch.float64) * 0.3
    seen = []
    propagation = SecurePropagation(graph, num_layers=3, protocol=SecAggPlus(), seed=1)
    propagation.observer = seen.append
    assert torch.equal(propagation.item_degree.long(), torch.bincount(graph.edge_index[1],
                                                                      minlength=90))
    for _ in range(2):  # the first layer's item sum is taken once
        ours = propagation.context(users, items)
        items = items + 0.1
    theirs = FederatedGNN(3).context(users, items - 0.1, graph)
    step = 1 / propagation.encoding.scale
    for mine, reference in zip(ours, theirs):
        # Each item sum is off by at most half a grid step per contributing user (degree
        # at most 60 here), scaled by 1/sqrt(d_u d_i) <= 1.
        assert (mine - reference).abs().max() <= 60 * step
    # Three item halves in the first context, two in the second (the cached one skipped).
    assert len(seen) == 5 and all(len(held.received) == 60 for held in seen)
