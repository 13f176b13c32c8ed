"""Robust aggregation: the coordinate-wise median and trimmed mean per item row and over dense
parameters, and the server's norm bound."""
import numpy as np
import pytest
import torch

from fedgraph.config import TrainConfig
from fedgraph.federated import aggregate_rows
from fedgraph.federated.aggregation import grouped_statistic, sum_rows
from fedgraph.server.stages import Mean, Median, NormBound, TrimmedMean


def _rule(name, trim_ratio=0.2):
    """The robust aggregator ``name`` (a trimmed mean cutting ``trim_ratio``)."""
    return Median() if name == 'median' else TrimmedMean(trim_ratio)


def _rows(seed=0, num_items=9, dim=4, num_clients=7):
    """Random row uploads: each client touches a random subset of the items."""
    generator = torch.Generator().manual_seed(seed)
    touched = torch.rand(num_clients, num_items, generator=generator) < 0.5
    row_owner, row_item = touched.nonzero(as_tuple=True)
    update = torch.randn(row_item.numel(), dim, generator=generator, dtype=torch.float64)
    table = torch.randn(num_items, dim, generator=generator, dtype=torch.float64)
    return table, row_item, row_owner, update, num_clients


def _trimmed(values: np.ndarray, ratio: float) -> np.ndarray:
    cut = int(np.floor(ratio * len(values)))
    ordered = np.sort(values, axis=0)
    return ordered[cut:len(values) - cut].mean(0)


@pytest.mark.parametrize('rule', ['median', 'trimmed_mean'])
def test_grouped_statistic_equals_a_loop_over_groups(rule):
    generator = torch.Generator().manual_seed(1)
    group = torch.randint(0, 6, (40,), generator=generator)
    group[group == 3] = 2  # a missing group id
    values = torch.randn(40, 5, generator=generator, dtype=torch.float64)
    groups, statistic, counts = grouped_statistic(values, group, rule, trim_ratio=0.25)
    assert groups.tolist() == sorted(set(group.tolist()))
    for position, g in enumerate(groups.tolist()):
        members = values[group == g].numpy()
        expected = (np.median(members, axis=0) if rule == 'median'
                    else _trimmed(members, 0.25))
        np.testing.assert_allclose(statistic[position].numpy(), expected, rtol=1e-12)
        assert counts[position] == len(members)


@pytest.mark.parametrize('rule', ['median', 'trimmed_mean'])
def test_robust_rules_equal_fedavg_when_uploaders_agree(rule):
    """When every uploader of a row sends the same change, the statistic is that change and
    the row moves by FedAvg's n_i / B share of it."""
    table, row_item, row_owner, update, num_clients = _rows()
    per_item = torch.randn(table.size(0), table.size(1), dtype=torch.float64)
    update = per_item[row_item]
    samples = torch.ones(num_clients)
    robust = _rule(rule).rows(table, row_item, row_owner, update, num_clients, samples)
    mean = aggregate_rows(table, row_item, row_owner, update, num_clients)
    torch.testing.assert_close(robust, mean)


@pytest.mark.parametrize('rule', ['median', 'trimmed_mean'])
def test_robust_rules_bound_what_one_outlier_moves(rule):
    """Nine clients agree on a row's change; a tenth sends 1e6. The mean moves the row by
    1e5; the median and the trimmed mean keep the agreed change."""
    num_clients = 10
    table = torch.zeros(2, 3, dtype=torch.float64)
    row_item = torch.zeros(num_clients, dtype=torch.long)
    row_owner = torch.arange(num_clients)
    update = torch.full((num_clients, 3), 0.5, dtype=torch.float64)
    update[7] = 1e6
    samples = torch.ones(num_clients)
    mean = Mean().rows(table, row_item, row_owner, update, num_clients, samples)
    robust = _rule(rule, trim_ratio=0.1).rows(table, row_item, row_owner, update,
                                              num_clients, samples)
    assert mean[0, 0] > 1e4
    torch.testing.assert_close(robust[0], torch.full((3,), 0.5, dtype=torch.float64))
    assert torch.equal(robust[1], table[1])


def test_norm_bound_caps_every_row_the_server_accepts():
    table, row_item, row_owner, update, num_clients = _rows(seed=2)
    update = update * 10
    bound = 0.3
    samples = torch.ones(num_clients)
    bounded_update, _ = NormBound(bound)(row_owner, update, {}, num_clients)
    bounded = Mean().rows(table, row_item, row_owner, bounded_update, num_clients, samples)
    counts = torch.bincount(row_item, minlength=table.size(0)).double()
    change = (bounded - table).norm(dim=1)
    assert (change <= bound * counts / num_clients + 1e-12).all()
    # A row already inside the bound passes unchanged.
    small = update / update.norm(dim=1, keepdim=True) * 0.1
    assert torch.equal(NormBound(bound)(row_owner, small, {}, num_clients)[0], small)


@pytest.mark.parametrize('rule', ['median', 'trimmed_mean'])
def test_dense_statistic_is_over_clients_as_flower_does(rule):
    generator = torch.Generator().manual_seed(3)
    update = torch.randn(9, 2, 3, generator=generator, dtype=torch.float64)
    result = _rule(rule, trim_ratio=0.2).dense(update, torch.ones(9))
    flat = update.numpy()
    expected = np.median(flat, axis=0) if rule == 'median' else _trimmed(flat, 0.2)
    np.testing.assert_allclose(result.numpy(), expected, rtol=1e-12)


def test_norm_bound_scales_a_clients_dense_parameters_together():
    dense = {'w': torch.full((2, 3), 3.0), 'b': torch.full((2, 1), 4.0)}
    dense['w'][1] = 0.1
    dense['b'][1] = 0.1
    _, bounded = NormBound(1.0)(torch.empty(0, dtype=torch.long), torch.empty(0, 3), dense, 2)
    norms = torch.cat([bounded['w'], bounded['b']], dim=1).norm(dim=1)
    torch.testing.assert_close(norms[0], torch.tensor(1.0))
    assert torch.equal(bounded['w'][1], dense['w'][1])  # inside the bound: unchanged


def test_aggregation_settings_are_checked_where_they_are_given():
    with pytest.raises(ValueError, match='trim_ratio'):
        TrainConfig(aggregation='trimmed_mean', trim_ratio=0.5)
    with pytest.raises(ValueError, match='unknown aggregator'):
        TrainConfig(aggregation='krum')
    with pytest.raises(ValueError, match='norm_bound'):
        TrainConfig(norm_bound=-1.0)
    with pytest.raises(ValueError, match='does not use norm_bound'):
        TrainConfig(algorithm='lightgcn', norm_bound=1.0)


@pytest.mark.parametrize('rule', ['median', 'trimmed_mean'])
def test_training_under_a_robust_rule_learns(tiny_sampled_split, rule):
    """PFedRec and FedNCF (a dense shared MLP) train under each robust rule and a norm
    bound: the model stays finite and validation beats the untrained model."""
    from fedgraph.training import train

    for algorithm in ('pfedrec', 'fedncf'):
        config = TrainConfig(algorithm=algorithm, rounds=8, dim=8, aggregation=rule,
                             norm_bound=50.0)
        run = train(config, split=tiny_sampled_split, progress=False)
        rounds = run['rounds']
        assert all(np.isfinite(r['train_loss']) for r in rounds)
        assert rounds[-1]['train_loss'] < rounds[0]['train_loss']


def test_reference_engine_refuses_robust_rules(tiny_sampled_split):
    from fedgraph.training import train

    with pytest.raises(ValueError, match='FedAvg only'):
        train(TrainConfig(rounds=1, dim=8, aggregation='median', engine='reference'),
              split=tiny_sampled_split, progress=False)


@pytest.mark.parametrize('rule', ['median', 'trimmed_mean'])
def test_single_precision_sorts_exactly_as_double(rule):
    """float32 sorts once on packed integer keys; the result is the statistic of the very
    same float32 values that double precision's two sorts give, negative values, zeros of
    either sign and one huge upload included."""
    generator = torch.Generator().manual_seed(4)
    values = torch.randn(300, 6, generator=generator) * 10
    values[::7] = 0.0
    values[1::7] = -0.0
    values[5, 2] = 3e38
    group = torch.randint(0, 9, (300,), generator=generator)
    _, single, _ = grouped_statistic(values, group, rule)
    _, double, _ = grouped_statistic(values.double(), group, rule)
    assert single.dtype == torch.float32
    torch.testing.assert_close(single.double(), double, rtol=1e-6, atol=0)


def test_compiled_row_sums_equal_index_add_bit_for_bit():
    generator = torch.Generator().manual_seed(0)
    item = torch.randint(50, (20_000,), generator=generator)
    rows = torch.randn(20_000, 12, generator=generator) * 1e3
    table = torch.zeros(50, 12)
    expected = torch.zeros_like(table).index_add_(0, item, rows)
    assert torch.equal(sum_rows(table, item, rows), expected)
    assert torch.equal(sum_rows(table, item[:0], rows[:0]), table)


def test_a_registered_aggregator_of_ones_own_trains_a_run(tiny_sampled_split):
    """An aggregator written and registered as a notebook would: named in the configuration,
    it is what the server aggregates with (this one keeps the shared table as it was), and
    the pipeline says so."""
    from fedgraph import Aggregator, TrainConfig, register_stage, train
    from fedgraph.assemble import build_run
    from fedgraph.server.stages import stage_names

    @register_stage
    class Frozen(Aggregator):
        name = 'frozen-test'

        def rows(self, table, row_item, row_owner, update, num_clients, num_samples):
            return table.clone()

        def dense(self, update, num_samples):
            return torch.zeros_like(update[0])

    assert 'frozen-test' in stage_names(Aggregator)
    config = TrainConfig(rounds=2, dim=8, aggregation='frozen-test')
    initial, _ = build_run(config, tiny_sampled_split)
    run = train(config, split=tiny_sampled_split, progress=False)
    assert run.engine.server.describe() == 'frozen-test'
    assert torch.equal(run.engine.model.item, initial.model.item)
    moved = train(TrainConfig(rounds=2, dim=8), split=tiny_sampled_split, progress=False)
    assert not torch.equal(moved.engine.model.item, initial.model.item)
    with pytest.raises(ValueError, match='registered twice'):
        register_stage(type('Other', (Aggregator,), {'name': 'frozen-test'}))


def test_the_pipeline_runs_its_stages_in_order():
    from fedgraph.privacy.gaussian import UserLevelDP
    from fedgraph.server.stages import build_pipeline

    pipeline = build_pipeline('trimmed_mean', 0.1, norm_bound=2.0, server_noise=0.1)
    assert pipeline.describe() == 'norm_bound -> trimmed_mean -> server_noise'
    assert pipeline.aggregator.trim_ratio == 0.1 and pipeline.privacy is None
    private = build_pipeline(privacy=UserLevelDP(clip=1.0, noise_multiplier=1.0))
    assert private.describe() == 'dp_clip -> mean -> dp_noise'
    assert private.privacy == UserLevelDP(clip=1.0, noise_multiplier=1.0)
