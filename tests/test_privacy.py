"""User-level DP (DP-FedAvg), the accountant, the Laplace accounting, the privacy record, the
frontier and the item-set leak."""
import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from fedgraph.algorithms import algorithm_names, resolve
from fedgraph.cli import main
from fedgraph.config import TrainConfig
from fedgraph.data import synthetic_interactions, ratio_split
from fedgraph.server.deployment import Deployment, LocalTransport
from fedgraph.privacy import accountant
from fedgraph.privacy.gaussian import UserLevelDP
from fedgraph.privacy.leak import SCENARIOS, item_set_leak, precision_recall, value_guess
from fedgraph.privacy.ledger import PrivacyLedger
from fedgraph.privacy.upload import UploadTransform
from fedgraph.training import build_run, train
from helpers import (cli_misuse, read_metrics, train_interrupted, without_seconds,
                     write_small_csv)

SMALL = dict(dim=8, rounds=6, eval_every=3, batch_size=32)


def exact_gaussian_delta(epsilon, noise_multiplier):
    """The Gaussian mechanism's exact privacy profile (Balle & Wang, ICML 2018) for
    sensitivity 2 (one user replaced, clip 1) and standard deviation sigma:
    delta(eps) = Phi(D/2s - eps s/D) - e^eps Phi(-D/2s - eps s/D), D = 2."""
    ratio = 2 / noise_multiplier
    return (norm.cdf(ratio / 2 - epsilon / ratio)
            - math.exp(epsilon) * norm.cdf(-ratio / 2 - epsilon / ratio))


# --------------------------------------------------------------------------------------
# The accountant
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize('sigma', [0.8, 2.0, 5.0])
def test_one_gaussian_release_is_its_closed_form_and_within_the_exact_profile(sigma):
    # Replace-one sensitivity 2S, noise sigma S: the Renyi DP of order a is a (2S)^2 /
    # (2 sigma^2 S^2) = 2a / sigma^2, and T rounds compose to T times that.
    event = accountant.gaussian_event(sigma)
    assert accountant.unit_rdp(event) == pytest.approx(2 * accountant.orders() / sigma ** 2)
    delta = 1e-5
    spent = accountant.epsilon([(event, 1)], delta)
    # A valid bound: the exact mechanism is (spent, delta)-DP ...
    assert exact_gaussian_delta(spent, sigma) <= delta
    # ... and not a loose one: the exact epsilon at delta is within 25% of it.
    low, high = 0.0, spent
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if exact_gaussian_delta(middle, sigma) > delta else (low, middle)
    assert high <= spent < 1.25 * high


def test_composition_and_sampling_order_the_figures():
    one = accountant.epsilon([(accountant.gaussian_event(4.0), 1)], 1e-3)
    ten = accountant.epsilon([(accountant.gaussian_event(4.0), 10)], 1e-3)
    sampled = accountant.epsilon([(accountant.gaussian_event(4.0, 100, 1000), 10)], 1e-3)
    assert one < ten < 10 * one  # composes, better than adding up
    assert sampled < ten  # sampling 10% of the users amplifies
    assert accountant.epsilon([], 1e-3) == 0.0
    assert accountant.epsilon([(accountant.gaussian_event(4.0), 0)], 1e-3) == 0.0
    with pytest.raises(ValueError, match='delta'):
        accountant.epsilon([(accountant.gaussian_event(4.0), 1)], 0.0)


def test_one_laplace_release_is_at_most_its_pure_epsilon():
    # Laplace of scale b x sensitivity is (1/b)-DP; the RDP conversion never says more.
    spent = accountant.epsilon([(accountant.laplace_event(0.5), 1)], 1e-5)
    assert 1.0 < spent <= 2.0


@pytest.mark.parametrize('target', [1.0, 4.0])
def test_calibration_meets_the_target_and_no_less_noise_does(target):
    def plan(sigma):
        return [(accountant.gaussian_event(sigma, 50, 200), 20)]

    sigma = accountant.calibrate(target, 1e-3, plan)
    assert accountant.epsilon(plan(sigma), 1e-3) <= target
    assert accountant.epsilon(plan(sigma * 0.99), 1e-3) > target
    with pytest.raises(ValueError, match='finite'):
        accountant.calibrate(math.inf, 1e-3, plan)


# --------------------------------------------------------------------------------------
# The mechanism
# --------------------------------------------------------------------------------------
def test_a_clients_whole_update_is_clipped_together():
    dp = UserLevelDP(clip=1.0, noise_multiplier=0.0)
    generator = torch.Generator().manual_seed(0)
    row_owner = torch.tensor([0, 0, 1, 2, 2, 2])
    update = torch.randn(6, 4, generator=generator) * torch.tensor([[3.0], [3.0], [0.1],
                                                                     [1.0], [1.0], [1.0]])
    dense = {'w': torch.randn(3, 2, 2, generator=generator)}
    dense['w'][1] *= 0.01
    clipped, clipped_dense = dp.clip_clients(row_owner, update, dense, 3)
    for client in range(3):
        before = torch.cat([update[row_owner == client].flatten(), dense['w'][client].flatten()])
        after = torch.cat([clipped[row_owner == client].flatten(),
                           clipped_dense['w'][client].flatten()])
        expected = before * min(1.0, 1.0 / float(before.norm()))
        assert torch.allclose(after, expected, atol=1e-6)
        assert after.norm() <= 1.0 + 1e-6
    # Client 1's whole update is below the bound: untouched.
    assert torch.equal(clipped[2], update[2])


def test_clipping_in_place_and_norms_by_blocks_give_the_same_values(monkeypatch):
    """A round's uploads clipped in place equal the clipped copy, and the norms summed
    block by block equal those of the whole update's squares, to the bit."""
    import fedgraph.privacy.gaussian as gaussian

    dp = UserLevelDP(clip=16.0, noise_multiplier=0.0)
    generator = torch.Generator().manual_seed(5)
    row_owner = torch.randint(0, 40, (1001,), generator=generator).sort().values
    update = torch.randn(1001, 32, generator=generator) * torch.rand(1001, 1, generator=generator)
    whole = torch.scatter_add(torch.zeros(40), 0, row_owner, update.pow(2).sum(1)).sqrt()
    monkeypatch.setattr(gaussian, 'BLOCK_ROWS', 64)
    norms = dp.client_norms(row_owner, update, {}, 40)
    assert torch.equal(norms, whole)
    assert (norms > 16.0).any() and (norms < 16.0).any()
    copy, _ = dp.clip_clients(row_owner, update, {}, 40, norms)
    kept = update.clone()
    clipped, _ = dp.clip_clients(row_owner, update, {}, 40, norms, in_place=True)
    assert clipped is update and torch.equal(clipped, copy) and not torch.equal(kept, copy)


def test_a_round_run_for_itself_clips_its_uploads_in_place(planted_split, monkeypatch):
    """``run_round`` hands its uploads to no one, so DP's clip writes into them (no second
    copy of a round's uploads at the round's peak); ``train_round`` returns them as the
    clients sent them. Both give the same model."""
    from fedgraph.server.stages import DPClip

    config = TrainConfig(algorithm='pfedrec', protocol='full', dp_epsilon=4.0,
                         dp_clip_quantile=0.5, **SMALL)
    calls = []
    in_place = DPClip.in_place
    monkeypatch.setattr(DPClip, 'in_place', lambda self, *args: calls.append(1) or in_place(
        self, *args))
    tables = []
    for own in (True, False):
        engine, generator = build_run(config, planted_split)
        if own:
            engine.run_round(generator)
            assert calls == [1]
        else:
            bound = engine.server.privacy.bound
            _, result = engine.train_round(generator)
            upload = result.upload
            norms = UserLevelDP.client_norms(upload.row_owner, upload.update, {},
                                             upload.clients.numel())
            assert calls == [1] and (norms > bound).any()
        tables.append(engine.model.item.detach().clone())
    assert torch.equal(*tables)


@pytest.mark.parametrize('noise_at, copies', [('server', 1), ('client', 50)])
def test_the_noise_on_the_sum_is_one_draw_or_the_sum_of_each_clients(noise_at, copies):
    dp = UserLevelDP(clip=2.0, noise_multiplier=3.0, noise_at=noise_at)
    noise = dp.sum_noise(torch.Size([200_000]), 50, torch.Generator().manual_seed(1))
    assert noise.std().item() == pytest.approx(6.0 * copies ** 0.5, rel=0.01)
    assert abs(noise.mean().item()) < 0.05 * 6.0 * copies ** 0.5
    with pytest.raises(ValueError, match='noise_at'):
        UserLevelDP(1.0, 1.0, noise_at='nowhere')


@pytest.fixture(scope='module')
def planted_split():
    return ratio_split(synthetic_interactions(num_users=120, num_items=300, mean_degree=15,
                                              seed=4), seed=0)


def test_central_noise_moves_every_row_and_local_noise_more(planted_split):
    # lr = 0: the table's change is the noise alone, on every row, touched or not.
    changes = {}
    for where in ('server', 'client'):
        config = TrainConfig(algorithm='fedmf', protocol='full', lr=0.0, clients_per_round=30,
                             dp_noise_multiplier=2.0, dp_clip=0.5, dp_noise_at=where, **SMALL)
        engine, generator = build_run(config, planted_split)
        before = engine.model.item.detach().clone()
        stats = engine.run_round(generator)
        changes[where] = engine.model.item.detach() - before
        if where == 'client':  # a local-DP client uploads its whole noised table
            assert stats.upload_bytes == before.numel() * before.element_size()
    assert (changes['server'] != 0).all()
    # Mean over B = 30 clients: sigma S / B centrally, sigma S / sqrt(B) locally.
    assert changes['server'].std().item() == pytest.approx(2.0 * 0.5 / 30, rel=0.1)
    assert changes['client'].std().item() == pytest.approx(2.0 * 0.5 / 30 ** 0.5, rel=0.1)


# --------------------------------------------------------------------------------------
# Runs: the privacy record
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize('algorithm, settings', [
    ('pfedrec', {}),
    ('fedmf', {'clients_per_round': 40}),
    ('fedlightgcn', {'clients_per_round': 40}),
    ('perfedrec++', {'clients_per_round': 40, 'num_clusters': 2, 'cluster_every': 2,
                     'pretrain_rounds': 1}),
])
def test_a_run_with_a_target_epsilon_never_reports_more(planted_split, algorithm, settings):
    config = TrainConfig(algorithm=algorithm, protocol='full', dp_epsilon=4.0, dp_clip=1.0,
                         **{**SMALL, **settings})
    metrics = train(config, progress=False, split=planted_split)
    spent = [record['privacy']['epsilon'] for record in metrics['rounds']]
    assert all(0 < value <= 4.0 for value in spent)
    assert spent == sorted(spent)
    # Calibrated to the whole run: the last round spends most of the budget.
    assert spent[-1] > 2.0
    privacy = metrics['rounds'][-1]['privacy']
    assert privacy['mechanism'] == 'gaussian, user level, central (server noise)'
    assert privacy['delta'] == pytest.approx(1 / 120)
    assert privacy['accountant'] == 'rdp' and privacy['clip'] == 1.0
    assert privacy['noise_multiplier'] > 0


def test_the_laplace_record_composes_every_uploaded_row(planted_split):
    config = TrainConfig(algorithm='fedmf', protocol='full', clip=0.5, clip_mode='coordinate',
                         ldp_scale=0.1, clients_per_round=40, **SMALL)
    engine, generator = build_run(config, planted_split)
    rows = torch.zeros(engine.model.num_clients, dtype=torch.long)
    for _ in range(3):
        _, result = engine.train_round(generator)
        rows[result.upload.clients] += torch.bincount(result.upload.row_owner,
                                                      minlength=result.upload.clients.numel())
    report = engine.ledger.report()
    assert report['rows'] == int(rows.max())
    # Each row: Laplace(0.1) over an L1 sensitivity of 2 x 0.5 x 8 = 8.
    assert report['l1_sensitivity'] == 8.0
    assert report['noise_multiplier'] == pytest.approx(0.1 / 8.0)
    event = accountant.laplace_event(0.1 / 8.0)
    assert report['epsilon'] == pytest.approx(
        accountant.epsilon([(event, int(rows.max()))], 1 / 120))
    # Far above what one coordinate would spend (2C / lambda = 10), as it should be.
    assert report['epsilon'] > 10 * int(rows.max())


def test_without_a_mechanism_the_record_says_so(planted_split):
    metrics = train(TrainConfig(algorithm='fedmf', protocol='full', **SMALL), progress=False,
                    split=planted_split)
    assert metrics['rounds'][-1]['privacy'] == {
        'mechanism': 'none', 'epsilon': None, 'delta': None, 'secure_aggregation': False,
        'noise_at': None}
    # The server's Laplace noise (the PerFedRec++ code's) is recorded as what it is.
    server = train(TrainConfig(algorithm='fedmf', protocol='full', clip=0.5, ldp_scale=0.1,
                               noise_at='server', **SMALL), progress=False, split=planted_split)
    assert server['rounds'][-1]['privacy'] == {
        'mechanism': 'none: the server adds laplace noise of scale 0.1 to the aggregate of '
                     'uploads it reads (no guarantee)',
        'epsilon': None, 'delta': None, 'secure_aggregation': False, 'noise_at': 'server'}
    noiseless = train(TrainConfig(algorithm='fedmf', protocol='full', dp_noise_multiplier=0.0,
                                  dp_clip=1.0, **SMALL), progress=False, split=planted_split)
    assert noiseless['rounds'][-1]['privacy']['epsilon'] is None


def test_a_resumed_run_keeps_counting_where_it_stopped(tmp_path, monkeypatch, planted_split):
    config = TrainConfig(algorithm='fedlightgcn', protocol='full', clients_per_round=40,
                         dp_noise_multiplier=5.0, dp_clip=1.0, checkpoint_every=2,
                         **{**SMALL, 'eval_every': 1})
    whole = train(config, progress=False, split=planted_split)
    out = tmp_path / 'run'
    train_interrupted(monkeypatch, config, at_call=4, out=out, split=planted_split,
                      progress=False)
    train(config, out=out, resume=True, progress=False, split=planted_split)
    resumed = read_metrics(out)
    assert [r['privacy'] for r in resumed['rounds']] == [r['privacy'] for r in whole['rounds']]
    assert without_seconds(resumed)['best'] == without_seconds(whole)['best']


# --------------------------------------------------------------------------------------
# Settings that do not go together
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize('settings, match', [
    (dict(dp_epsilon=4.0, dp_noise_multiplier=1.0, dp_clip=1.0), 'not both'),
    (dict(dp_epsilon=4.0, dp_clip=1.0, ldp_scale=0.1, clip=0.5), 'replaces the Laplace'),
    (dict(dp_epsilon=4.0, dp_clip=1.0, aggregation='median'), 'unweighted mean'),
    (dict(dp_epsilon=4.0, dp_clip=1.0, engine='reference'), 'vectorized'),
    (dict(dp_epsilon=float('inf'), dp_clip=1.0), 'finite'),
    (dict(dp_epsilon=4.0, dp_clip=1.0, dp_delta=1.5), 'dp_delta'),
    (dict(dp_clip=1.0), 'without user-level DP'),
    (dict(dp_noise_multiplier=1.0, dp_clip=0.0), 'dp_clip > 0'),
])
def test_dp_settings_that_contradict_each_other_are_errors(settings, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(algorithm='fedmf', **settings)


def test_dp_replaces_the_graph_models_laplace_defaults_and_takes_their_clip():
    plain = TrainConfig(algorithm='fedlightgcn')
    assert plain.ldp_scale == 0.1 and plain.dp_clip is None
    private = TrainConfig(algorithm='fedlightgcn', dp_epsilon=4.0)
    assert private.ldp_scale is None and private.clip is None
    assert private.dp_clip == TrainConfig(algorithm='perfedrec++', dp_epsilon=1.0).dp_clip > 0


@pytest.mark.parametrize('noise_at', ['server', 'client'])
def test_a_deployment_refuses_user_level_dp_but_the_distributed_kind(noise_at):
    # Its server never holds an upload to clip and noise (central) and a node's own noise
    # share is no local guarantee: only distributed DP over secure aggregation runs there.
    with pytest.raises(ValueError, match='runs on devices, distributed'):
        Deployment(TrainConfig(algorithm='fedmf', dp_noise_multiplier=1.0, dp_clip=1.0,
                               dp_noise_at=noise_at), LocalTransport({}))


def test_the_ledger_counts_each_client_and_reports_the_most_exposed():
    ledger = PrivacyLedger(10, 4, 8, gaussian=UserLevelDP(1.0, 3.0, 'client'))
    ledger.record_aggregate(torch.tensor([0, 1, 2, 3]), True, torch.ones(4, dtype=torch.long))
    ledger.record_aggregate(torch.tensor([0, 4, 5, 6]), True, torch.ones(4, dtype=torch.long))
    ledger.record_release(torch.tensor([0]))
    assert ledger.releases.tolist() == [3, 1, 1, 1, 1, 1, 1, 0, 0, 0]
    report = ledger.report()
    assert report['releases'] == 3 and report['sampled_rounds'] == 0
    assert report['epsilon'] == pytest.approx(
        accountant.epsilon([(accountant.gaussian_event(3.0), 3)], 0.1))
    ledger.record_vectors(torch.tensor([0]))  # no user uploads are noised by it
    assert ledger.releases[0] == 3
    central = PrivacyLedger(10, 4, 8, gaussian=UserLevelDP(1.0, 3.0, 'server'))
    central.record_aggregate(torch.tensor([0, 1, 2, 3]), True, torch.ones(4, dtype=torch.long))
    central.record_aggregate(torch.tensor([0, 1, 2, 3]), False, torch.ones(4, dtype=torch.long))
    assert central.sampled_rounds == 1 and int(central.releases.max()) == 1
    laplace = PrivacyLedger(10, 4, 8, laplace=UploadTransform(1.0, 0.5))
    laplace.record_aggregate(torch.tensor([1, 2]), True, torch.tensor([5, 7]))
    laplace.record_vectors(torch.tensor([2]))
    assert laplace.report()['rows'] == 8
    assert np.isclose(laplace.report()['noise_multiplier'], 0.5 / (2 * 8 ** 0.5))


# --------------------------------------------------------------------------------------
# The item-set leak
# --------------------------------------------------------------------------------------
def test_the_value_guess_finds_the_positives_of_collinear_rows():
    # Two positives move along w (by more), eight negatives against it, as one local step
    # of a score that is linear in the item row moves them.
    w = torch.tensor([0.6, -0.8, 0.0])
    rows = torch.cat([torch.tensor([[3.0], [2.0]]) * w, -torch.linspace(0.5, 1.0, 8)[:, None] * w])
    items = torch.arange(10) + 100
    assert set(value_guess(rows, items, 2).tolist()) == {100, 101}
    assert set(value_guess(-rows, items, 2).tolist()) == {100, 101}  # whatever the sign of v
    assert precision_recall(torch.tensor([1, 2, 3, 3]), torch.tensor([2, 3, 4, 5, 6])) == {
        'precision': 2 / 3, 'recall': 2 / 5}


def test_a_round_of_uploads_gives_the_items_away_and_pseudo_items_blur_only_the_graph(
        planted_split):
    plain = item_set_leak(TrainConfig(algorithm='pfedrec', protocol='full', **SMALL),
                          planted_split, warmup_rounds=1, max_clients=40)
    # The rows hold the positives and 4 sampled negatives each: recall 1, precision ~ 1/5.
    assert plain['rows']['recall'] == 1.0 and plain['rows']['precision'] < 0.35
    # Their values tell which are which.
    assert plain['values']['precision'] > 0.9
    graph = item_set_leak(TrainConfig(algorithm='fedlightgcn', protocol='full', pseudo_ratio=0.5,
                                      clients_per_round=40, **SMALL),
                          planted_split, warmup_rounds=1, max_clients=40)
    assert graph['graph']['recall'] == 1.0
    assert graph['graph']['precision'] == pytest.approx(1 / 1.5, abs=0.05)
    assert graph['values']['precision'] > 0.9  # the round's uploads undo the pseudo-items


def test_a_dense_upload_hides_the_items_only_with_noise(planted_split):
    config = TrainConfig(algorithm='pfedrec', protocol='full', **SMALL)
    clean = item_set_leak(config, planted_split, warmup_rounds=1, max_clients=40,
                          local_dp=UserLevelDP(10.0, 0.0, 'client'))
    assert set(clean) == {'values', 'clients', 'chance'}
    assert clean['values']['precision'] > 0.9
    noised = item_set_leak(config, planted_split, warmup_rounds=1, max_clients=40,
                           local_dp=UserLevelDP(10.0, 5.0, 'client'))
    # Chance: a client's training items are about 12 of the 300 items.
    assert noised['chance'] < 0.1 and noised['values']['precision'] < 2 * noised['chance']


# --------------------------------------------------------------------------------------
# The frontier command and its figure
# --------------------------------------------------------------------------------------
def test_frontier_command_resumes_from_its_file_and_plots(tmp_path, capsys):
    data = write_small_csv(tmp_path / 'data.csv')
    out = tmp_path / 'frontier.jsonl'
    argv = ['frontier', '--dataset', 'csv', '--data-path', str(data), '--eval-negatives', '20',
            '--rounds', '3', '--dim', '8', '--epsilons', '2', 'inf', '--seeds', '0', '1',
            '--out', str(out), '--quiet']
    main(argv)
    first = capsys.readouterr().out
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r['target_epsilon'], r['seed']) for r in rows] == [(2.0, 0), (None, 0),
                                                                (2.0, 1), (None, 1)]
    assert all(0 < r['epsilon'] <= 2.0 for r in rows if r['target_epsilon'] == 2.0)
    assert all(r['epsilon'] is None and r['noise_multiplier'] is None
               for r in rows if r['target_epsilon'] is None)
    assert '| 2 | 2 |' in first and '| ∞ (no DP) | 2 | – | – |' in first
    main(argv)  # every run is in the file: nothing runs again
    assert out.read_text().count('\n') == 4
    with cli_misuse(capsys, 'frontier.jsonl holds results of another configuration '
                            '\\(rounds: 3 there, 4 now\\)'):
        main(argv + ['--rounds', '4'])
    main(['plot', str(out), '--out', str(tmp_path / 'figures')])
    assert (tmp_path / 'figures' / 'frontier.png').stat().st_size > 0


def test_leak_command_prints_every_scenario_and_its_conditions(tmp_path, capsys):
    data = write_small_csv(tmp_path / 'data.csv')
    main(['leak', '--dataset', 'csv', '--data-path', str(data), '--eval-negatives', '20',
          '--warmup', '1', '--clients', '10'])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith('| ') and 'guess' not in line]
    # A dense local-DP upload: the values guess; the algorithm's own uploads (masked, under
    # secure aggregation): rows and values, and a graph model's enrollment graph.
    graph_models = {name for name in algorithm_names() if hasattr(resolve(name), 'graph_engine')}
    assert {'fedlightgcn', 'perfedrec++'} <= graph_models
    assert len(rows) == sum(1 if epsilon is not None else 2 + (algorithm in graph_models)
                            for _, algorithm, _, epsilon in SCENARIOS)
    assert '| PFedRec, rows it trained | values |' in out
    assert '| FedLightGCN, Laplace LDP, pseudo-items 0.5 | graph |' in out
    # Every federated algorithm under central DP, secure aggregation, and both.
    for name in ('PFedRec', 'FedMF', 'FedNCF', 'FedLightGCN', 'PerFedRec++'):
        for mechanism in ('central DP ε = 4', 'secure aggregation',
                          'secure aggregation + distributed DP ε = 4'):
            assert sum(line.startswith(f'| {name}') and f', {mechanism} | values |' in line
                       for line in rows) == 1, (name, mechanism)
    # A masked upload holds every row: the rows guess is every item, at chance.
    cells = [line.split(' | ') for line in rows]
    secure = [cell for cell in cells if 'secure aggregation' in cell[0] and cell[1] == 'rows']
    assert len(secure) == 10
    assert all(cell[2] == cell[4].rstrip(' |') and cell[3] == '1.000' for cell in secure)
    assert 'load average' in out
