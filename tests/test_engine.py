"""The federated engine: the vectorized engine against the loop-per-client reference, round
plans, aggregation, uploads, client selection, personalized rows and private heads."""
import functools
import math
from collections import Counter

import pytest
import torch

from fedgraph.data import ClientPartition
from fedgraph.federated import (ClientSelector, FederatedEngine, PersonalItemRows,
                                ReferenceEngine, aggregate_rows, evaluate, plan_round)
from fedgraph.federated import plan as plan_module
from fedgraph.federated.plan import NOISE_BITS
from fedgraph.nn import DotProductHead, LinearScoreHead
from fedgraph.privacy.upload import UploadTransform
from helpers import candidates, engine_data, make_engine

DIM = 8
ATOL = 1e-5


@pytest.fixture(scope='module')
def data():
    """(split, training partition, known items) of a small synthetic data set."""
    return engine_data(num_users=40, num_items=300, mean_degree=30, seed=1)


_engine = functools.partial(make_engine, dim=DIM)


# --------------------------------------------------------------------------------------
# The vectorized engine equals the reference engine
# --------------------------------------------------------------------------------------
CASES = [
    # algorithm, client ratio, local epochs, weighted aggregation, clip
    ('pfedrec', None, 1, False, None),
    ('pfedrec', 0.5, 2, True, 0.5),
    ('pfedrec', 0.5, 1, False, None),
    ('fedmf', None, 2, False, 0.5),
    ('fedmf', 0.5, 1, True, None),
    ('fedmf', None, 1, True, 0.5),
]


@pytest.mark.parametrize('algorithm,ratio,epochs,weighted,clip', CASES)
def test_vectorized_engine_matches_reference(float64, data, algorithm, ratio, epochs,
                                             weighted, clip):
    split, partition, _ = data
    engines = [_engine(cls, data, algorithm, ratio=ratio, local_epochs=epochs,
                       weighted=weighted, clip=clip)
               for cls in (FederatedEngine, ReferenceEngine)]
    fast, slow = engines
    assert torch.equal(fast.model.item, slow.model.item)
    initial_items = fast.model.item.detach().clone()

    stats = []
    for engine in engines:
        generator = torch.Generator().manual_seed(5)
        stats.append([engine.run_round(generator) for _ in range(3)])
    fast_stats, slow_stats = stats

    # Training did something, so the comparison is not vacuous.
    assert (fast.model.item - initial_items).abs().max() > 1e-3
    torch.testing.assert_close(fast.model.item.detach(), slow.model.item.detach(),
                               atol=ATOL, rtol=0)
    fast_private, slow_private = fast.model.private_parameters(), slow.model.private_parameters()
    assert fast_private.keys() == slow_private.keys()
    for name in fast_private:
        torch.testing.assert_close(fast_private[name].detach(), slow_private[name].detach(),
                                   atol=ATOL, rtol=0)
    expected_clients = (partition.num_clients if ratio is None
                        else int(ratio * partition.num_clients))
    for a, b in zip(fast_stats, slow_stats):
        assert a.loss == pytest.approx(b.loss, abs=ATOL)
        assert a.num_clients == b.num_clients == expected_clients
        assert a.upload_bytes == pytest.approx(b.upload_bytes)
        assert a.download_bytes == b.download_bytes

    users = torch.arange(partition.num_clients)
    for which in ('val', 'test'):
        which_candidates = candidates(split, which)
        torch.testing.assert_close(fast.scores(users, which_candidates),
                                   slow.scores(users, which_candidates), atol=ATOL, rtol=0)
    fast_metrics, slow_metrics = evaluate(fast, split), evaluate(slow, split)
    for which in ('val', 'test'):
        for metric in ('hr@10', 'ndcg@10'):
            assert fast_metrics[which][metric] == pytest.approx(slow_metrics[which][metric],
                                                                abs=ATOL)


def test_scores_all_agrees_with_scores(float64, data):
    """The full-ranking scores equal the per-candidate scores over all items, personalized
    rows included (clients that took part in different rounds)."""
    engine = _engine(FederatedEngine, data, 'pfedrec', ratio=0.5)
    generator = torch.Generator().manual_seed(3)
    for _ in range(2):
        engine.run_round(generator)
    users = torch.tensor([5, 0, 17, 39, 22, 8])
    items = torch.arange(engine.model.num_items).expand(users.numel(), -1)
    torch.testing.assert_close(engine.scores_all(users), engine.scores(users, items))
    # The personalized rows matter: the global table scores differently.
    plain = engine.model.head.logits_all(
        {k: v[users] for k, v in engine.model.private_parameters().items()},
        engine.broadcast)
    assert not torch.allclose(plain, engine.scores_all(users))


def test_engine_state_dict_round_trip(float64, data):
    """Continuing from a saved state gives the same next round as not stopping."""
    engine = _engine(FederatedEngine, data, 'pfedrec', ratio=0.5)
    generator = torch.Generator().manual_seed(11)
    for _ in range(2):
        engine.run_round(generator)
    state = {k: (v.copy() if isinstance(v, dict) else v.clone())
             for k, v in engine.state_dict().items()}
    state['model'] = {k: v.clone() for k, v in state['model'].items()}
    generator_state = generator.get_state()
    expected = engine.run_round(generator)

    other = _engine(FederatedEngine, data, 'pfedrec', ratio=0.5)
    other.load_state_dict(state)
    resumed = other.run_round(torch.Generator().set_state(generator_state))
    assert resumed.loss == expected.loss
    assert torch.equal(other.model.item, engine.model.item)
    assert torch.equal(other.personal.keys, engine.personal.keys)
    assert torch.equal(other.personal.values, engine.personal.values)


# --------------------------------------------------------------------------------------
# Round plans
# --------------------------------------------------------------------------------------
def _plan_clients(partition):
    """Clients with the fewest and the most training items, plus a few others, unsorted."""
    degree = partition.degree
    picks = [int(degree.argmin()), int(degree.argmax()), 3, 30, 12]
    return torch.tensor(list(dict.fromkeys(picks))[::-1])


@pytest.mark.parametrize('local_epochs,batch_size', [(1, 16), (2, 16), (3, 7), (2, 1000)])
def test_plan_round_invariants(float64, data, local_epochs, batch_size):
    _, partition, known = data
    num_negatives = 4
    clients = _plan_clients(partition)
    plan = plan_round(partition, clients, num_negatives, batch_size, local_epochs,
                      torch.Generator().manual_seed(0), known)

    assert plan.clients.tolist() == sorted(clients.tolist())
    n = plan.owner.numel()
    for name in ('item', 'label', 'weight', 'row'):
        assert getattr(plan, name).numel() == n
    degree = partition.degree[plan.clients]
    assert plan.num_samples.tolist() == (degree * (1 + num_negatives)).tolist()
    assert n == local_epochs * int(plan.num_samples.sum())

    # step_ptr: starts at 0, ends at N, every step holds samples, ordered by client.
    ptr = plan.step_ptr.tolist()
    assert ptr[0] == 0 and ptr[-1] == n
    assert all(a < b for a, b in zip(ptr[:-1], ptr[1:]))
    step = torch.repeat_interleave(torch.arange(plan.num_steps), plan.step_ptr.diff())
    for start, end in zip(ptr[:-1], ptr[1:]):
        owners = plan.owner[start:end]
        assert torch.all(owners[1:] >= owners[:-1])
    # A client's mini-batch spans are its samples of local steps 0, 1, ... in turn.
    assert plan.batch_ptr[0] == 0 and plan.batch_ptr[-1] == plan.batch_start.numel()
    for position in range(plan.clients.numel()):
        spans = range(int(plan.batch_ptr[position]), int(plan.batch_ptr[position + 1]))
        assert len(spans) == int(step[plan.owner == position].max()) + 1
        for t, m in enumerate(spans):
            start, fill = int(plan.batch_start[m]), int(plan.batch_fill[m])
            expected = torch.nonzero((plan.owner == position) & (step == t)).view(-1)
            assert torch.equal(torch.arange(start, start + fill), expected)

    batches = [math.ceil(int(s) / batch_size) for s in plan.num_samples]
    assert plan.num_steps == max(local_epochs * b for b in batches)
    for position, client in enumerate(plan.clients.tolist()):
        mine = plan.owner == position
        steps = step[mine]
        # Exactly local_epochs * ceil(n / batch_size) steps: steps 0 .. K - 1.
        assert sorted(set(steps.tolist())) == list(range(local_epochs * batches[position]))
        train_items = sorted(partition.items_of(client).tolist())
        known_items = set(known.items_of(client).tolist())
        epoch_samples = []
        for t in range(local_epochs * batches[position]):
            in_step = mine & (step == t)
            count = int(in_step.sum())
            assert 1 <= count <= batch_size
            expected = min(batch_size, int(plan.num_samples[position])
                           - (t % batches[position]) * batch_size)
            assert count == expected
            assert plan.weight[in_step].sum().item() == pytest.approx(1.0)
            assert torch.allclose(plan.weight[in_step],
                                  torch.full((count,), 1.0 / count))
            if t % batches[position] == 0:
                epoch_samples.append([])
            epoch_samples[-1] += list(zip(plan.item[in_step].tolist(),
                                          plan.label[in_step].tolist()))
        assert len(epoch_samples) == local_epochs
        for samples in epoch_samples:
            positives = sorted(item for item, label in samples if label == 1)
            negatives = [item for item, label in samples if label == 0]
            assert len(positives) + len(negatives) == len(samples)
            assert positives == train_items  # every training item once, labelled 1
            assert len(negatives) == num_negatives * len(train_items)
            assert not known_items & set(negatives)
            # Each positive's negatives are distinct, so no item can be a negative more often
            # than there are positives (exactly distinct for a one-item client).
            assert max(Counter(negatives).values()) <= len(train_items)
            # Every epoch reshuffles the same samples.
            assert Counter(samples) == Counter(epoch_samples[0])
        if local_epochs > 1 and len(train_items) > 10:
            assert epoch_samples[0] != epoch_samples[1]  # in another order

    # Local rows: unique (client, item) pairs sorted by client then item, and consistent.
    assert torch.equal(plan.row_item[plan.row], plan.item)
    assert torch.equal(plan.row_owner[plan.row], plan.owner)
    keys = plan.row_owner * partition.num_items + plan.row_item
    assert torch.all(keys[1:] > keys[:-1])
    assert sorted(set(plan.row.tolist())) == list(range(plan.row_item.numel()))


def test_plan_round_negatives_of_one_positive_are_distinct():
    """One client with one item out of ten: its 9 negatives must be the 9 other items."""
    partition = ClientPartition(torch.tensor([0, 1]), torch.tensor([3]), num_items=10)
    for seed in range(5):
        plan = plan_round(partition, torch.tensor([0]), 9, 64, 1,
                          torch.Generator().manual_seed(seed))
        assert sorted(plan.item[plan.label == 0].tolist()) == [0, 1, 2, 4, 5, 6, 7, 8, 9]
        assert plan.item[plan.label == 1].tolist() == [3]


def test_plan_round_is_deterministic(data):
    _, partition, known = data
    clients = torch.tensor([1, 4, 9, 20, 33])

    def make(seed):
        return plan_round(partition, clients, 4, 16, 2, torch.Generator().manual_seed(seed),
                          known)

    first, second, other = make(7), make(7), make(8)
    for name, value in vars(first).items():
        assert torch.equal(value, getattr(second, name)), name
    assert not torch.equal(first.item, other.item)


def test_plan_round_defaults_known_to_training_items(data):
    _, partition, _ = data
    plan = plan_round(partition, torch.arange(partition.num_clients), 4, 32, 1,
                      torch.Generator().manual_seed(0))
    negatives = plan.label == 0
    clients = plan.clients[plan.owner[negatives]]
    assert not partition.contains(clients, plan.item[negatives]).any()


# --------------------------------------------------------------------------------------
# Aggregation
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize('weighted', [False, True])
def test_aggregate_rows_is_mean_of_full_tables(float64, weighted):
    generator = torch.Generator().manual_seed(0)
    num_items, dim, num_clients = 12, 3, 4
    table = torch.randn(num_items, dim, generator=generator)
    touched = {0: [0, 3, 5], 1: [3, 4], 2: [], 3: [0, 3, 11]}
    row_owner = torch.tensor([c for c, items in touched.items() for _ in items])
    row_item = torch.tensor([i for items in touched.values() for i in items])
    update = torch.randn(row_item.numel(), dim, generator=generator)
    client_weight = torch.tensor([3, 1, 5, 2]) if weighted else None

    full = []
    for client in range(num_clients):
        own = table.clone()
        for r in (row_owner == client).nonzero().view(-1).tolist():
            own[row_item[r]] += update[r]
        full.append(own)
    w = (client_weight.double() if weighted else torch.ones(num_clients)).view(-1, 1, 1)
    expected = (torch.stack(full) * w).sum(0) / w.sum()

    result = aggregate_rows(table, row_item, row_owner, update, num_clients, client_weight)
    torch.testing.assert_close(result, expected)
    # Rows nobody touched are unchanged.
    assert torch.equal(result[[1, 2, 6, 7, 8, 9, 10]], table[[1, 2, 6, 7, 8, 9, 10]])


def test_aggregate_rows_counts_clients_without_rows():
    """A client that touched no row still weighs in the mean (its table is unchanged)."""
    table = torch.zeros(2, 1)
    result = aggregate_rows(table, torch.tensor([0]), torch.tensor([0]), torch.tensor([[4.0]]),
                            num_clients=4)
    assert result.tolist() == [[1.0], [0.0]]


# --------------------------------------------------------------------------------------
# Uploads
# --------------------------------------------------------------------------------------
def test_clipping_bounds_norms_and_keeps_short_rows(float64):
    generator = torch.Generator().manual_seed(0)
    update = torch.randn(500, 6, generator=generator) * torch.rand(500, 1, generator=generator)
    update[0] = 0
    clip = 0.5
    out = UploadTransform(clip=clip)(update, torch.Generator().manual_seed(1))
    norm = update.norm(dim=1)
    short, long = norm <= clip, norm > clip
    assert short.sum() > 10 and long.sum() > 10
    assert torch.all(out.norm(dim=1) <= clip + 1e-12)
    assert torch.equal(out[short], update[short])
    torch.testing.assert_close(out[long].norm(dim=1), torch.full((int(long.sum()),), clip))
    # Clipping rescales: the direction is kept.
    torch.testing.assert_close(out[long] / out[long].norm(dim=1, keepdim=True),
                               update[long] / norm[long].unsqueeze(1))


def test_identity_upload_returns_update(float64):
    update = torch.randn(20, 4)
    generator = torch.Generator().manual_seed(0)
    assert torch.equal(UploadTransform()(update, generator), update)
    assert not torch.equal(UploadTransform(clip=0.1)(update, generator), update)


def test_laplace_noise_statistics(float64):
    scale = 0.3
    transform = UploadTransform(clip=1.0, laplace_scale=scale)
    update = torch.zeros(200_000, 2)
    noise = transform(update, torch.Generator().manual_seed(0))
    assert torch.isfinite(noise).all()
    assert abs(float(noise.mean())) < 0.01
    assert float(noise.abs().mean()) == pytest.approx(scale, rel=0.03)
    assert float(noise.var()) == pytest.approx(2 * scale ** 2, rel=0.05)
    assert float((noise > 0).double().mean()) == pytest.approx(0.5, abs=0.01)
    # Seeded: the same generator seed gives the same noise, another seed other noise.
    again = transform(update, torch.Generator().manual_seed(0))
    assert torch.equal(noise, again)
    assert not torch.equal(noise, transform(update, torch.Generator().manual_seed(1)))


def test_laplace_noise_is_finite_for_float32_updates():
    """Regression: float32 ``torch.rand`` draws lie on a 2^-24 grid, 0 included, and the
    inverse-CDF sampler ``-b sign(u - 1/2) log(1 - 2|u - 1/2|)`` with float32 uniforms gave
    -inf noise for a draw of exactly 0 (seed 146, draw 18556: a 2320 x 8 float32 update)."""
    transform = UploadTransform(clip=1.0, laplace_scale=0.1)
    update = torch.zeros(2320, 8, dtype=torch.float32)
    out = transform(update, torch.Generator().manual_seed(146))
    assert torch.isfinite(out).all()


def test_laplace_noise_is_finite_at_uniform_boundary(monkeypatch):
    """Whatever the uniform source returns in its range [0, 1), the noise is finite."""
    real_rand = torch.rand

    def rand_with_boundary(*args, **kwargs):
        values = real_rand(*args, **kwargs)
        values.view(-1)[0] = 0.0
        return values

    monkeypatch.setattr(torch, 'rand', rand_with_boundary)
    out = UploadTransform(clip=1.0, laplace_scale=0.5)(torch.zeros(4, 3),
                                                       torch.Generator().manual_seed(0))
    monkeypatch.undo()
    assert torch.isfinite(out).all()


def test_laplace_rows_l1_sensitivity_and_noise_multiplier():
    """Two rows of d coordinates clipped to L2 norm C are at most 2C apart in L2, so at most
    2C sqrt(d) in L1; clamped to [-C, C] per coordinate, 2C d."""
    assert UploadTransform(clip=0.5, laplace_scale=0.25).l1_sensitivity(16) == pytest.approx(4.0)
    assert UploadTransform(clip=0.5, laplace_scale=0.25,
                           mode='coordinate').l1_sensitivity(16) == pytest.approx(16.0)
    assert UploadTransform(clip=2.0, laplace_scale=1.0).noise_multiplier(4) == pytest.approx(0.125)
    assert UploadTransform(clip=1.0).noise_multiplier(4) == 0.0
    assert UploadTransform().l1_sensitivity(4) == float('inf')


@pytest.mark.parametrize('kwargs', [
    {'laplace_scale': 0.1},                     # noise without a clip
    {'clip': 1.0, 'laplace_scale': -0.1},       # negative noise scale
    {'clip': 0.0},                              # zero clip
    {'clip': -1.0},                             # negative clip
    {'clip': -1.0, 'laplace_scale': 0.5},
])
def test_upload_transform_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        UploadTransform(**kwargs)


# --------------------------------------------------------------------------------------
# Client selection
# --------------------------------------------------------------------------------------
def test_selector_sizes():
    assert ClientSelector(40)(torch.Generator().manual_seed(0)).tolist() == list(range(40))
    assert ClientSelector(40, ratio=1.0)(torch.Generator()).tolist() == list(range(40))
    assert ClientSelector(40, ratio=0.5)(torch.Generator().manual_seed(0)).numel() == 20
    assert ClientSelector(10, ratio=0.35).count == 3
    assert ClientSelector(40, count=7)(torch.Generator().manual_seed(0)).numel() == 7
    assert ClientSelector(40, count=40)(torch.Generator()).tolist() == list(range(40))
    assert ClientSelector(1, count=1)(torch.Generator()).tolist() == [0]


@pytest.mark.parametrize('kwargs', [{'ratio': 0.3}, {'count': 9}])
def test_selector_sorted_distinct_seeded(kwargs):
    selector = ClientSelector(50, **kwargs)
    generator = torch.Generator().manual_seed(4)
    draws = [selector(generator) for _ in range(30)]
    for clients in draws:
        values = clients.tolist()
        assert values == sorted(values)
        assert len(set(values)) == len(values) == selector.count
        assert 0 <= min(values) and max(values) < 50
    again = torch.Generator().manual_seed(4)
    assert all(torch.equal(a, selector(again)) for a in draws)
    assert len({tuple(c.tolist()) for c in draws}) > 20  # rounds differ
    chosen = torch.cat(draws)
    assert torch.unique(chosen).numel() == 50  # every client gets a turn


@pytest.mark.parametrize('kwargs', [
    {'ratio': 0.5, 'count': 3}, {'ratio': 0.0}, {'ratio': 1.5}, {'ratio': -0.2},
    {'count': 0}, {'count': 41}, {'ratio': 0.01},  # 0.01 * 40 rounds down to no client
])
def test_selector_errors(kwargs):
    with pytest.raises(ValueError):
        ClientSelector(40, **kwargs)


# --------------------------------------------------------------------------------------
# Personalized item rows
# --------------------------------------------------------------------------------------
def _rows(store, client, item):
    return store.lookup(torch.tensor(client), torch.tensor(item))


def test_personal_item_rows_replace_lookup_view():
    store = PersonalItemRows(num_clients=4, num_items=10, dim=2)
    assert len(store) == 0
    found, _ = _rows(store, [0, 1], [3, 3])
    assert not found.any()

    # Client 1 stores items 2, 7; client 3 stores item 0.
    store.replace(torch.tensor([1, 3]), torch.tensor([1, 1, 3]), torch.tensor([2, 7, 0]),
                  torch.tensor([[1., 1.], [2., 2.], [3., 3.]]))
    assert len(store) == 3
    found, index = _rows(store, [1, 1, 3, 0, 3], [2, 7, 0, 2, 7])
    assert found.tolist() == [True, True, True, False, False]
    assert store.values[index[:3]].tolist() == [[1., 1.], [2., 2.], [3., 3.]]

    # Client 1 is replaced: its old rows go, client 3 keeps its row; client 0 is added.
    store.replace(torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([9, 5]),
                  torch.tensor([[4., 4.], [5., 5.]]))
    assert len(store) == 3
    found, index = _rows(store, [1, 1, 1, 3, 0], [2, 7, 5, 0, 9])
    assert found.tolist() == [False, False, True, True, True]
    assert store.values[index[2:]].tolist() == [[5., 5.], [3., 3.], [4., 4.]]
    keys = store.keys.tolist()
    assert keys == sorted(keys)

    # view: stored rows where present, base rows elsewhere, broadcasting clients.
    base = -torch.arange(20.).view(10, 2)
    view = store.view(torch.tensor([[1], [3]]), torch.tensor([[5, 0, 6], [5, 0, 6]]), base)
    assert view.shape == (2, 3, 2)
    assert view[0].tolist() == [[5., 5.], base[0].tolist(), base[6].tolist()]
    assert view[1].tolist() == [base[5].tolist(), [3., 3.], base[6].tolist()]

    # rows_of: positions index the (unsorted) clients argument.
    position, item, values = store.rows_of(torch.tensor([3, 2, 1]))
    got = sorted(zip(position.tolist(), item.tolist(), values[:, 0].tolist()))
    assert got == [(0, 0, 3.0), (2, 5, 5.0)]

    # Replacing a client with no new rows just drops its rows.
    store.replace(torch.tensor([3]), torch.tensor([], dtype=torch.long),
                  torch.tensor([], dtype=torch.long), torch.empty(0, 2))
    assert len(store) == 2
    assert not _rows(store, [3], [0])[0].any()


def test_personal_item_rows_replace_everyone():
    store = PersonalItemRows(num_clients=2, num_items=5, dim=1)
    store.replace(torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([1, 1]),
                  torch.tensor([[1.], [2.]]))
    store.replace(torch.tensor([0, 1]), torch.tensor([1]), torch.tensor([4]),
                  torch.tensor([[7.]]))
    assert store.keys.tolist() == [1 * 5 + 4]
    assert store.values.tolist() == [[7.]]


def test_personal_rows_hold_only_touched_rows(float64, data):
    """After a PFedRec round the store holds exactly the round plan's rows (a client's
    touched items), never a clients x items table; a partial round replaces only the rows of
    the clients that took part."""
    _, partition, known = data
    engine = _engine(FederatedEngine, data, 'pfedrec', ratio=0.5)
    cfg = engine.training

    def replay_plan(seed):
        generator = torch.Generator().manual_seed(seed)
        clients = engine.selector(generator)
        return plan_round(partition, clients, cfg.num_negatives, cfg.batch_size,
                          cfg.local_epochs, generator, known)

    engine.run_round(torch.Generator().manual_seed(21))
    first = replay_plan(21)
    assert len(engine.personal) == first.row_item.numel()
    assert len(engine.personal) <= int(first.num_samples.sum())
    assert len(engine.personal) < first.clients.numel() * partition.num_items // 2
    expected_keys = first.clients[first.row_owner] * partition.num_items + first.row_item
    assert torch.equal(engine.personal.keys, expected_keys)
    assert engine.personal.values.shape == (first.row_item.numel(), DIM)

    engine.run_round(torch.Generator().manual_seed(22))
    second = replay_plan(22)
    assert not torch.equal(first.clients, second.clients)
    kept = ~torch.isin(first.clients[first.row_owner], second.clients)
    assert len(engine.personal) == int(kept.sum()) + second.row_item.numel()
    expected = torch.cat([expected_keys[kept],
                          second.clients[second.row_owner] * partition.num_items
                          + second.row_item])
    assert torch.equal(engine.personal.keys, torch.sort(expected).values)


def test_personal_rows_merge_as_one_sort_of_the_kept_and_new_rows():
    """A partial replacement merges the kept rows and the new ones in one pass, in key
    order, blocks of the kept values at a time: the store one sort of their keys gives."""
    generator = torch.Generator().manual_seed(3)
    clients, items, dim = 50, 40, 3
    store = PersonalItemRows(num_clients=clients, num_items=items, dim=dim)
    store.MERGE_ROWS = 7  # several blocks
    keys = torch.randperm(clients * items, generator=generator)[:600].sort().values
    store.replace(torch.arange(clients), keys // items, keys % items,
                  torch.randn(keys.numel(), dim, generator=generator))
    for _ in range(3):
        chosen = torch.randperm(clients, generator=generator)[:17].sort().values
        touched = torch.rand(chosen.numel(), items, generator=generator) < 0.2
        owner, item = torch.nonzero(touched, as_tuple=True)
        row_client = chosen[owner]
        values = torch.randn(row_client.numel(), dim, generator=generator)
        kept = ~torch.isin(torch.div(store.keys, items, rounding_mode='floor'), chosen)
        expected_keys = torch.cat([store.keys[kept], row_client * items + item])
        order = torch.sort(expected_keys).indices
        expected_values = torch.cat([store.values[kept], values])[order]
        store.replace(chosen, row_client, item, values)
        assert torch.equal(store.keys, expected_keys[order])
        assert torch.equal(store.values, expected_values)


def test_a_round_of_every_client_frees_their_rows_before_they_train(data):
    """With every client in the round each one's stored rows are replaced once it has
    trained, and training reads only the broadcast table: the store is emptied before the
    round's tensors are made, not held beside them (a store's worth of memory at the round's
    peak)."""
    engine = _engine(FederatedEngine, data, 'pfedrec')
    seen = []
    train_clients = engine.train_clients

    def counting(plan, table, *args):
        seen.append(len(engine.personal))
        return train_clients(plan, table, *args)

    engine.train_clients = counting
    engine.run_round(torch.Generator().manual_seed(0))
    stored = len(engine.personal)
    engine.run_round(torch.Generator().manual_seed(1))
    assert stored > 0 and seen == [0, 0]
    assert len(engine.personal) > 0


def test_fedmf_keeps_no_personal_rows(float64, data):
    engine = _engine(FederatedEngine, data, 'fedmf')
    engine.run_round(torch.Generator().manual_seed(0))
    assert len(engine.personal) == 0


# --------------------------------------------------------------------------------------
# Private heads
# --------------------------------------------------------------------------------------
def test_linear_heads_start_identical():
    head = LinearScoreHead(6, DIM, generator=torch.Generator().manual_seed(0))
    assert torch.equal(head.weight, head.weight[:1].expand(6, -1))
    assert torch.equal(head.bias, head.bias[:1].expand(6))
    bound = DIM ** -0.5
    assert head.weight.abs().max() <= bound and head.bias.abs().max() <= bound
    assert head.weight.std() > 0  # one random Linear init, not a constant
    again = LinearScoreHead(6, DIM, generator=torch.Generator().manual_seed(0))
    other = LinearScoreHead(6, DIM, generator=torch.Generator().manual_seed(1))
    assert torch.equal(head.weight, again.weight)
    assert not torch.equal(head.weight, other.weight)


def test_dot_product_heads_differ_per_client():
    head = DotProductHead(5, DIM, std=0.5, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(head.user[0], head.user[1])
    items = torch.randn(7, DIM)
    params = {'user': head.user.detach()}
    expected = torch.stack([head.logits({'user': params['user'][c].expand(7, -1)}, items)
                            for c in range(5)])
    torch.testing.assert_close(head.logits_all(params, items), expected)


@pytest.mark.parametrize('algorithm', ['pfedrec', 'fedmf'])
def test_partial_round_leaves_other_heads_unchanged(float64, data, algorithm):
    engine = _engine(FederatedEngine, data, algorithm, ratio=0.5)
    before = {k: v.detach().clone() for k, v in engine.model.private_parameters().items()}
    engine.run_round(torch.Generator().manual_seed(9))
    selected = engine.selector(torch.Generator().manual_seed(9))
    others = torch.ones(engine.model.num_clients, dtype=torch.bool)
    others[selected] = False
    assert 0 < selected.numel() < engine.model.num_clients
    for name, value in engine.model.private_parameters().items():
        value = value.detach()
        assert torch.equal(value[others], before[name][others])
        delta = (value[selected] - before[name][selected]).reshape(selected.numel(), -1)
        assert (delta.abs().sum(1) > 0).all()


@pytest.mark.parametrize('keys', ['random', 'repeated', 'crowded', 'empty', 'one'])
def test_sorting_random_keys_is_the_stable_byte_sort(keys):
    """The bucket sort of the shuffle keys is the stable sort, also where keys repeat (a
    pairwise loss's groups share one) or crowd a bucket (it falls back to the byte sort)."""
    generator = torch.Generator().manual_seed(0)
    values = {'random': torch.randint(1 << NOISE_BITS, (700,), generator=generator),
              'repeated': torch.randint(1 << NOISE_BITS, (140,),
                                        generator=generator).repeat_interleave(5),
              'crowded': torch.randint(50, (700,), generator=generator),
              'empty': torch.zeros(0, dtype=torch.long),
              'one': torch.tensor([7])}[keys].numpy()
    order = plan_module._stable_order_of_random(values, NOISE_BITS)
    assert order.tolist() == plan_module._stable_order(values, NOISE_BITS).tolist()
    assert order.tolist() == torch.sort(torch.from_numpy(values), stable=True).indices.tolist()
