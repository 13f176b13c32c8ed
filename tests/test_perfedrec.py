"""PerFedRec++ and FedLightGCN: k-means clustering, cluster-aware selection, the graph
engine (server graph, contrastive pre-training, cluster tables, three-level scores, state),
their configuration, training runs and the command line."""
import copy
import json
import math
from collections import Counter

import pytest
import torch

from fedgraph.algorithms import build_engine
from fedgraph.cli import build_parser, main
from fedgraph.clustering import ClusterSelector, kmeans
from fedgraph.cli.flags import config_from_args
from fedgraph.config import TrainConfig
from fedgraph.data import ClientPartition, leave_one_out_split, ratio_split, synthetic_interactions
from fedgraph.federated import ClientSelector
from fedgraph.federated.graph import GraphFederatedEngine
from fedgraph.nn import FederatedGNN
from fedgraph.privacy.upload import UploadTransform
from fedgraph.training import CHECKPOINT, EMBEDDINGS, train
from helpers import candidates, read_metrics, train_interrupted, without_seconds

NUM_USERS, NUM_ITEMS = 60, 200
GRAPH = dict(algorithm='perfedrec++', dim=8, num_layers=2, clients_per_round=20,
             cluster_every=2, num_clusters=3, pretrain_rounds=2)


@pytest.fixture(scope='module')
def split():
    return leave_one_out_split(
        synthetic_interactions(num_users=NUM_USERS, num_items=NUM_ITEMS, mean_degree=15,
                               seed=4),
        eval_negatives=49)


@pytest.fixture(scope='module')
def ranking_split():
    return ratio_split(
        synthetic_interactions(num_users=NUM_USERS, num_items=NUM_ITEMS, mean_degree=20,
                               seed=5))


def _build(split, seed=0, generator_seed=None, base=GRAPH, **overrides):
    """A graph engine built as ``train`` builds it, with its partition and generator."""
    config = TrainConfig(**dict(base, seed=seed, **overrides))
    partition = ClientPartition.from_data(split.train)
    generator = torch.Generator().manual_seed(seed if generator_seed is None else generator_seed)
    engine = build_engine(config, partition, generator, split.known_items())
    return engine, generator, partition


class RecordingSelector:
    """Wraps a selector and records the clients it returns."""

    def __init__(self, inner):
        self.inner = inner
        self.count = inner.count
        self.calls = []

    def __call__(self, generator):
        clients = self.inner(generator)
        self.calls.append(clients.clone())
        return clients


# --------------------------------------------------------------------------------------
# k-means and cluster-aware selection
# --------------------------------------------------------------------------------------
def _blobs(seed=0, per_blob=40):
    generator = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[0.0, 0.0, 0.0], [20.0, 20.0, 0.0], [-20.0, 20.0, 5.0]])
    label = torch.arange(3).repeat_interleave(per_blob)
    points = centers[label] + 0.5 * torch.randn(3 * per_blob, 3, generator=generator)
    order = torch.randperm(3 * per_blob, generator=generator)
    return points[order], label[order]


def _separates(assignment, label):
    """Whether each blob is one cluster and the blobs are different clusters."""
    clusters = [set(assignment[label == blob].tolist()) for blob in range(3)]
    return all(len(c) == 1 for c in clusters) and len(set.union(*clusters)) == 3


def test_kmeans_separates_blobs_and_is_seeded():
    points, label = _blobs()
    assignment = kmeans(points, 3, seed=0)
    assert assignment.shape == (120,) and assignment.dtype == torch.long
    assert set(assignment.tolist()) == {0, 1, 2}
    # Perfect up to a permutation: each blob is one cluster, and blobs differ.
    mapping = {}
    for blob in range(3):
        clusters = set(assignment[label == blob].tolist())
        assert len(clusters) == 1
        mapping[blob] = clusters.pop()
    assert len(set(mapping.values())) == 3
    assert torch.equal(kmeans(points, 3, seed=0), assignment)
    assert torch.equal(kmeans(points.double(), 3, seed=0), assignment)


def test_kmeans_separates_blobs_for_every_seed():
    """Blobs 40 standard deviations apart are separated whatever the seed. The engine
    reclusters with seed ``seed + rounds_done``, so every seed is used in practice; one
    random initialization (FAISS's default ``nredo=1``) can put two centroids in one blob
    and converge there."""
    points, label = _blobs()
    failing = [seed for seed in range(10) if not _separates(kmeans(points, 3, seed=seed), label)]
    assert failing == []


@pytest.mark.parametrize('shape,k', [((10,), 2), ((2, 3, 4), 2), ((4, 3), 5)])
def test_kmeans_rejects_bad_input(shape, k):
    with pytest.raises(ValueError):
        kmeans(torch.randn(*shape), k)


def test_cluster_selector_quotas():
    sizes = [50, 30, 15, 5]
    assignment = torch.cat([torch.full((n,), c) for c, n in enumerate(sizes)])
    assignment = assignment[torch.randperm(100, generator=torch.Generator().manual_seed(0))]
    count = 17
    selector = ClusterSelector(assignment, count)
    generator = torch.Generator().manual_seed(1)
    draws = [selector(generator) for _ in range(40)]
    for clients in draws:
        values = clients.tolist()
        assert values == sorted(values) and len(set(values)) == len(values) == count
        per_cluster = Counter(assignment[clients].tolist())
        for c, n in enumerate(sizes):
            assert per_cluster[c] >= n * count // 100  # 8, 5, 2, 0
    again = torch.Generator().manual_seed(1)
    assert all(torch.equal(a, selector(again)) for a in draws)
    assert len({tuple(d.tolist()) for d in draws}) > 30
    assert torch.unique(torch.cat(draws)).numel() >= 95  # everyone gets turns
    # Every client when the round takes everyone.
    assert ClusterSelector(assignment, 100)(torch.Generator()).tolist() == list(range(100))


# --------------------------------------------------------------------------------------
# The graph engine
# --------------------------------------------------------------------------------------
def test_server_graph_is_training_edges_plus_pseudo_items(split):
    engine, _, partition = _build(split)
    assert isinstance(engine, GraphFederatedEngine)
    graph = engine.graph
    assert (graph.num_users, graph.num_items) == (NUM_USERS, NUM_ITEMS)
    train_edges = partition.edge_index()
    assert torch.equal(graph.edge_index[:, :train_edges.size(1)], train_edges)
    extra = graph.edge_index[:, train_edges.size(1):]
    counts = torch.bincount(extra[0], minlength=NUM_USERS)
    expected = torch.clamp(torch.floor(partition.degree * 0.1).long(), min=1)
    assert torch.equal(counts, expected)
    assert not partition.contains(extra[0], extra[1]).any()
    keys = extra[0] * NUM_ITEMS + extra[1]
    assert torch.unique(keys).numel() == keys.numel()
    # Every client uploaded a first user embedding through clamping (0.5) and Laplace(0.1).
    user = engine.model.head.user.detach()
    clipped = user.clamp(-0.5, 0.5)
    noise = engine.server_users - clipped
    assert 0.07 < float(noise.abs().mean()) < 0.13
    assert torch.equal(engine.participation, torch.ones(NUM_USERS, dtype=torch.long))
    assert engine.assignment is None and engine.cluster_tables is None
    assert type(engine.selector) is ClientSelector and engine.selector.count == 20


def test_pretraining_changes_only_selected_clients(split):
    engine, generator, _ = _build(split)
    recorder = RecordingSelector(engine.engine.selector)
    engine.engine.selector = recorder
    user_before = engine.model.head.user.detach().clone()
    item_before = engine.model.item.detach().clone()
    server_before = engine.server_users.clone()
    participation_before = engine.participation.clone()
    result = engine.pretrain(generator, progress=False)
    engine.engine.selector = recorder.inner

    assert result['rounds'] == 2 and len(result['loss']) == 2
    assert all(math.isfinite(loss) and loss > 0 for loss in result['loss'])
    assert len(recorder.calls) == 2
    selected = torch.zeros(NUM_USERS, dtype=torch.bool)
    for clients in recorder.calls:
        assert clients.numel() == 20
        selected[clients] = True
    assert 20 <= int(selected.sum()) < NUM_USERS
    user = engine.model.head.user.detach()
    assert torch.equal(user[~selected], user_before[~selected])
    assert ((user[selected] - user_before[selected]).abs().sum(1) > 0).all()
    assert not torch.equal(engine.model.item.detach(), item_before)
    # Each selection is an upload, and so is everyone's upload after pre-training.
    assert torch.equal(engine.participation - participation_before,
                       torch.bincount(torch.cat(recorder.calls), minlength=NUM_USERS) + 1)
    # Everyone uploads its (possibly unchanged) embedding again after pre-training.
    assert ((engine.server_users - server_before).abs().sum(1) > 0).all()


@pytest.fixture(scope='module')
def trained(split):
    """An engine after 2 pre-training and 3 training rounds (clustered after round 2), with
    what was observed along the way (``last``: what the clients handed the server in the
    last round)."""
    engine, generator, partition = _build(split)
    engine.pretrain(generator, progress=False)
    observed = {}
    train_round = engine.engine.train_round

    def recorded(generator):
        stats, result = train_round(generator)
        observed['last'] = result
        return stats, result

    engine.engine.train_round = recorded
    for round_index in range(3):
        if round_index == 2:
            observed['tables_before'] = engine.cluster_tables.clone()
        engine.run_round(generator)
        if round_index == 1:
            with torch.no_grad():
                users, _ = engine.gnn(engine.server_users, engine.model.item.detach(),
                                      engine.graph)
            observed['kmeans'] = kmeans(users, 3, seed=2)
            observed['global_after_2'] = engine.model.item.detach().clone()
            observed['tables_after_2'] = engine.cluster_tables.clone()
    return engine, generator, partition, observed


def test_clustering_after_cluster_every_rounds(trained):
    engine, _, _, observed = trained
    assert engine.rounds_done == 3
    assert engine.assignment.shape == (NUM_USERS,)
    assert set(engine.assignment.tolist()) <= {0, 1, 2}
    assert torch.equal(engine.assignment, observed['kmeans'])  # seed + rounds_done
    assert isinstance(engine.selector, ClusterSelector) and engine.selector.count == 20
    assert torch.equal(engine.selector.assignment, engine.assignment)
    assert engine.cluster_tables.shape == (3, NUM_ITEMS, 8)
    # Right after clustering every cluster table restarts from the global table.
    assert torch.equal(observed['tables_after_2'],
                       observed['global_after_2'].unsqueeze(0).expand(3, -1, -1))
    # Round 3 selected by cluster quotas.
    clients = observed['last'].upload.clients
    per_cluster = Counter(engine.assignment[clients].tolist())
    sizes = torch.bincount(engine.assignment, minlength=3).tolist()
    assert clients.numel() == 20
    for c, n in enumerate(sizes):
        assert per_cluster[c] >= n * 20 // NUM_USERS


def test_cluster_table_is_fedavg_of_its_members(trained):
    engine, _, _, observed = trained
    upload, base = observed['last'].upload, engine.engine.broadcast
    assert torch.equal(base, observed['global_after_2'])
    weighted_change = torch.zeros_like(base)
    for cluster in range(3):
        members = [p for p, c in enumerate(upload.clients.tolist())
                   if int(engine.assignment[c]) == cluster]
        weighted_change += len(members) * (engine.cluster_tables[cluster] - base)
        if not members:
            assert torch.equal(engine.cluster_tables[cluster], observed['tables_before'][cluster])
            continue
        total = torch.zeros_like(base)
        for r in range(upload.row_owner.numel()):
            if int(upload.row_owner[r]) in members:
                total[upload.row_item[r]] += upload.update[r]
        expected = base + total / len(members)
        torch.testing.assert_close(engine.cluster_tables[cluster], expected)
        assert not torch.allclose(expected, base)
    # Different clusters, different tables; the global table is the mean over everyone.
    assert not torch.allclose(engine.cluster_tables[0], engine.cluster_tables[1])
    torch.testing.assert_close(engine.model.item.detach(),
                               base + weighted_change / upload.clients.numel())


def test_scores_are_the_weighted_levels(trained):
    engine, _, _, _ = trained
    model = engine.model
    assert engine.level_weights == (1.0, 1.0, 1.0)
    engine.level_weights = (0.5, 0.3, 0.2)
    try:
        stored = dict(zip(engine.engine.personal.keys.tolist(), engine.engine.personal.values))
        # Users with fine-tuned rows (two of them as candidates) and one without any.
        owners = sorted({key // NUM_ITEMS for key in stored})
        assert 0 < len(owners) < NUM_USERS
        without = min(set(range(NUM_USERS)) - set(owners))
        users = torch.tensor(owners[:4] + [without])
        items = []
        for user in users.tolist():
            own = [key % NUM_ITEMS for key in stored if key // NUM_ITEMS == user][:2]
            items.append(own + [0, 199, 57, 101][:4 - len(own)])
        items = torch.tensor(items)
        scores = engine.scores(users, items)
        scale = 1.0 / 3  # K = 2
        logits = torch.zeros(3, *items.shape, dtype=torch.float64)  # [level, user, item]
        for row, user in enumerate(users.tolist()):
            u = model.head.user[user].detach() * scale + model.user_context[user]
            cluster = int(engine.assignment[user])
            for column, item in enumerate(items[row].tolist()):
                local = stored.get(user * NUM_ITEMS + item, engine.engine.broadcast[item])
                levels = [model.item[item].detach(), engine.cluster_tables[cluster, item], local]
                for level, rows in enumerate(levels):
                    logits[level, row, column] = float(
                        u @ (rows * scale + model.item_context[item]))
        # Each level is standardized per user over the scored items, then weighted.
        standardized = (logits - logits.mean(2, keepdim=True)) / logits.std(2, keepdim=True)
        expected = sum(w * standardized[level] for level, w in enumerate((0.5, 0.3, 0.2)))
        torch.testing.assert_close(scores.double(), expected, rtol=1e-4, atol=1e-4)
        # A single level is its raw logits.
        engine.level_weights = (0.0, 0.0, 1.0)
        torch.testing.assert_close(engine.scores(users, items).double(), logits[2],
                                   rtol=1e-4, atol=1e-4)
        engine.level_weights = (0.5, 0.3, 0.2)
        # The fine-tuned rows differ from the broadcast table.
        for user in owners[:4]:
            key = min(k for k in stored if k // NUM_ITEMS == user)
            assert not torch.allclose(stored[key], engine.engine.broadcast[key % NUM_ITEMS])
        every = torch.arange(NUM_USERS)
        all_items = torch.arange(NUM_ITEMS).expand(NUM_USERS, -1)
        torch.testing.assert_close(engine.scores_all(every), engine.scores(every, all_items),
                                   rtol=1e-5, atol=1e-5)
    finally:
        engine.level_weights = (1.0, 1.0, 1.0)
    every = torch.arange(NUM_USERS)
    torch.testing.assert_close(engine.scores_all(every),
                               engine.scores(every, torch.arange(NUM_ITEMS).expand(NUM_USERS, -1)),
                               rtol=1e-5, atol=1e-5)


def test_uniformity_propagates_only_its_sampled_rows_as_the_whole_graph_would(split):
    """The uniformity of a round's record propagates only the users and items it samples,
    and equals the uniformity of the same sample of the whole graph's final vectors."""
    from fedgraph.metrics.representation import uniformity

    engine, generator, _ = _build(split)
    engine.run_round(generator)
    users, items = engine.propagated()
    for max_points in (10, 50, 1000):
        sample = torch.Generator().manual_seed(0)
        expected = {'user': uniformity(users, max_points=max_points, generator=sample),
                    'item': uniformity(items, max_points=max_points, generator=sample)}
        measured = engine.uniformity(max_points)
        assert measured == pytest.approx(expected, abs=1e-6)
    assert engine.uniformity(10) != pytest.approx(engine.uniformity(50), abs=1e-6)


def test_export_and_uniformity(trained):
    engine, _, _, _ = trained
    exported = engine.export()
    assert set(exported) == {'user_embedding', 'item_embedding', 'user_final', 'item_final',
                             'cluster'}
    assert exported['user_final'].shape == (NUM_USERS, 8)
    assert exported['item_final'].shape == (NUM_ITEMS, 8)
    assert torch.equal(exported['cluster'], engine.assignment)
    users, items = engine.gnn(engine.model.head.user.detach(), engine.model.item.detach(),
                              engine.graph)
    torch.testing.assert_close(exported['user_final'], users)
    uniformity = engine.uniformity()
    assert set(uniformity) == {'user', 'item'}
    assert all(-4.0 <= value <= 0 for value in uniformity.values())


def test_state_dict_round_trip(split):
    engine, generator, _ = _build(split, pretrain_rounds=1)
    engine.pretrain(generator, progress=False)
    for _ in range(3):
        engine.run_round(generator)
    state = copy.deepcopy(engine.state_dict())
    generator_state = generator.get_state()
    expected = engine.run_round(generator)

    # Another generator: another graph, model and server state before loading.
    other, _, _ = _build(split, generator_seed=1, pretrain_rounds=1)
    assert not torch.equal(other.model.item, engine.model.item)
    other.load_state_dict(state)
    assert isinstance(other.selector, ClusterSelector)
    resumed = other.run_round(torch.Generator().set_state(generator_state))
    assert resumed.loss == expected.loss
    assert torch.equal(other.graph.edge_index, engine.graph.edge_index)
    assert torch.equal(other.model.item, engine.model.item)
    assert torch.equal(other.model.head.user, engine.model.head.user)
    assert torch.equal(other.server_users, engine.server_users)
    assert torch.equal(other.cluster_tables, engine.cluster_tables)
    assert torch.equal(other.assignment, engine.assignment)
    users = torch.arange(NUM_USERS)
    assert torch.equal(other.scores_all(users), engine.scores_all(users))


def test_loaded_engine_scores_as_the_saved_one(split):
    """A state saved after a round and loaded into a fresh engine scores every user as the
    saved engine does (e.g. to evaluate a checkpoint): both propagate the context from the
    server's view of the users and the item table they hold."""
    engine, generator, _ = _build(split, pretrain_rounds=1)
    engine.pretrain(generator, progress=False)
    for _ in range(2):
        engine.run_round(generator)
    other, _, _ = _build(split, generator_seed=1, pretrain_rounds=1)
    other.load_state_dict(copy.deepcopy(engine.state_dict()))
    users = torch.arange(NUM_USERS)
    torch.testing.assert_close(other.scores_all(users), engine.scores_all(users))


def test_graph_engine_on_reference_engine_matches_vectorized(split, float64):
    """``engine='reference'`` under PerFedRec++ (pre-training, context, clustering, three
    levels) gives the vectorized engine's results; without Laplace noise both draw the same
    random numbers."""
    engines = []
    for kind in ('vectorized', 'reference'):
        engine, generator, _ = _build(split, engine=kind, ldp_scale=0.0, pretrain_rounds=1)
        engine.pretrain(generator, progress=False)
        stats = [engine.run_round(generator) for _ in range(3)]
        engines.append((engine, stats))
    (fast, fast_stats), (slow, slow_stats) = engines
    assert type(slow.engine).__name__ == 'ReferenceEngine'
    for a, b in zip(fast_stats, slow_stats):
        assert a.loss == pytest.approx(b.loss, abs=1e-9)
    torch.testing.assert_close(fast.model.item, slow.model.item, atol=1e-9, rtol=0)
    torch.testing.assert_close(fast.model.head.user, slow.model.head.user, atol=1e-9, rtol=0)
    assert torch.equal(fast.assignment, slow.assignment)
    torch.testing.assert_close(fast.cluster_tables, slow.cluster_tables, atol=1e-9, rtol=0)
    users = torch.arange(NUM_USERS)
    torch.testing.assert_close(fast.scores_all(users), slow.scores_all(users), atol=1e-9,
                               rtol=0)
    val_candidates = candidates(split)
    torch.testing.assert_close(fast.scores(users, val_candidates),
                               slow.scores(users, val_candidates), atol=1e-9, rtol=0)


@pytest.mark.parametrize('base', [
    pytest.param(dict(algorithm='fedlightgcn', dim=8, num_layers=2, clients_per_round=20),
                 id='fedlightgcn'),
    pytest.param(dict(GRAPH, pretrain_rounds=1), id='perfedrec++')])
def test_a_round_propagates_its_neighbourhoods_as_the_whole_graph_would(split, float64,
                                                                         monkeypatch, base):
    """A round's clients train with the context of their and their items' K-hop
    neighbourhoods only (:meth:`FederatedGNN.context_rows`, here over the neighbourhoods
    at every layer): the same model, round for round, as with the whole graph propagated
    before each round; and the rows no client of the first round needs are never
    propagated."""
    monkeypatch.setattr(FederatedGNN, 'FULL_SHARE', 1.0)
    engines = []
    for whole_graph in (False, True):
        engine, generator, _ = _build(split, base=base)
        engine.pretrain(generator, progress=False)
        if whole_graph:
            engine.engine.before_training = lambda plan, engine=engine: engine.model.set_context(
                engine.gnn.num_layers,
                *engine.gnn.context(engine.server_users, engine.model.item.detach(),
                                    engine.graph))
        engine.model.set_context(engine.gnn.num_layers, None, None)
        planned, propagate = [], engine.engine.before_training
        engine.engine.before_training = lambda plan: (planned.append(plan.clients),
                                                      propagate(plan))
        engine.run_round(generator)
        engine.engine.before_training = propagate
        if not whole_graph:
            others = torch.ones(NUM_USERS, dtype=torch.bool)
            others[planned[0]] = False
            assert engine.model.user_context[others].abs().max() == 0
            assert engine.model.user_context[~others].abs().min() > 0
        stats = [engine.run_round(generator) for _ in range(3)]
        engines.append((engine, stats))
    (rows, row_stats), (whole, whole_stats) = engines
    for a, b in zip(row_stats, whole_stats):
        assert a.loss == pytest.approx(b.loss, abs=1e-12)
    for name in ('item', 'head.user'):
        torch.testing.assert_close(rows.model.get_parameter(name),
                                   whole.model.get_parameter(name), atol=1e-12, rtol=0)
    torch.testing.assert_close(rows.server_users, whole.server_users, atol=1e-12, rtol=0)
    users = torch.arange(NUM_USERS)
    torch.testing.assert_close(rows.scores_all(users), whole.scores_all(users), atol=1e-12,
                               rtol=0)


# --------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize('algorithm,expected', [
    pytest.param('fedlightgcn',
                 dict(level_weights=(1.0, 0.0, 0.0), dual_personalization=False, lr=0.25,
                      item_lr_eta=1.0, loss='bpr', optimizer='adam', clip_mode='coordinate'),
                 id='fedlightgcn'),
    pytest.param('perfedrec++',
                 dict(pretrain_rounds=50, num_clusters=5, level_weights=(1.0, 1.0, 1.0),
                      dual_personalization=True, num_layers=2, loss='bpr', optimizer='adam'),
                 id='perfedrec++'),
])
def test_graph_algorithm_defaults(algorithm, expected):
    config = TrainConfig(algorithm=algorithm)
    assert config.clients_per_round == 256
    assert config.clip == 0.5 and config.ldp_scale == 0.1
    for name, value in expected.items():
        actual = getattr(config, name)
        assert (actual is value) if isinstance(value, bool) else (actual == value), name
    # FedLightGCN has neither pre-training nor clusters among its settings.
    assert ('pretrain_rounds' in config.settings.names()) == (algorithm == 'perfedrec++')


def test_explicit_values_win_over_graph_defaults():
    # Explicit values win over the defaults; lists become tuples.
    config = TrainConfig(algorithm='perfedrec++', level_weights=[1, 0, 0], num_clusters=0,
                         clients_per_round=10)
    assert config.level_weights == (1, 0, 0) and config.num_clusters == 0
    assert config.clients_per_round == 10
    # The other algorithms keep PFedRec's full participation and have no levels.
    for algorithm in ('pfedrec', 'fedmf'):
        assert TrainConfig(algorithm=algorithm).clients_per_round is None
        with pytest.raises(AttributeError, match='level_weights'):
            TrainConfig(algorithm=algorithm).level_weights
        with pytest.raises(ValueError, match=f'{algorithm} has no setting level_weights'):
            TrainConfig(algorithm=algorithm, level_weights=(1, 0, 0))


@pytest.mark.parametrize('algorithm,weights', [('perfedrec++', None),
                                               ('fedlightgcn', (1.0, 0.0, 0.5))])
def test_local_level_needs_dual_personalization(split, algorithm, weights):
    base = GRAPH if algorithm == 'perfedrec++' else dict(dim=8, clients_per_round=20)
    with pytest.raises(ValueError, match='dual personalization'):
        _build(split, base=base, algorithm=algorithm, dual_personalization=False,
               level_weights=weights)
    # Without the local level it builds.
    engine, _, _ = _build(split, base=base, algorithm=algorithm, dual_personalization=False,
                          level_weights=(1.0, 1.0, 0.0))
    assert engine.training.personalize_items is False


def test_fedlightgcn_learning_rates_scale_with_layers_under_sgd_only(split):
    engine, _, partition = _build(split, base=dict(dim=8, clients_per_round=20),
                                  algorithm='fedlightgcn', lr=0.5, item_lr_eta=2.0,
                                  num_layers=2, optimizer='sgd')
    assert engine.training.lr == pytest.approx(0.5 * 9)
    assert engine.training.item_lr == pytest.approx(0.5 * partition.num_items * 2.0 * 9)
    assert engine.gnn.num_layers == 2 and engine.num_clusters == 0
    engine, _, _ = _build(split, base=dict(dim=8, clients_per_round=20),
                          algorithm='fedlightgcn', lr=0.5, item_lr_eta=2.0, num_layers=2)
    assert (engine.training.lr, engine.training.item_lr) == (0.5, 1.0)


# --------------------------------------------------------------------------------------
# Training runs
# --------------------------------------------------------------------------------------
RUN = dict(GRAPH, rounds=4, checkpoint_every=2)


@pytest.fixture(scope='module')
def uninterrupted(split, tmp_path_factory):
    out = tmp_path_factory.mktemp('perfedrec_run')
    returned = train(TrainConfig(**RUN), out=out, progress=False, split=split)
    return out, returned


def test_train_writes_graph_metrics_and_embeddings(uninterrupted):
    out, returned = uninterrupted
    metrics = read_metrics(out)
    assert without_seconds(metrics) == without_seconds(returned)
    assert [r['round'] for r in metrics['rounds']] == [0, 1, 2, 3]
    spent = []
    for record in metrics['rounds']:
        assert set(record['uniformity']) == {'user', 'item'}
        assert all(value <= 0 for value in record['uniformity'].values())
        privacy = record['privacy']
        assert privacy['mechanism'] == 'laplace, local, per uploaded row'
        # A clamped row of d coordinates: L1 sensitivity 2 C d.
        assert privacy['l1_sensitivity'] == pytest.approx(2 * 0.5 * RUN['dim'])
        assert record['clients'] == 20
        assert 0 <= record['val']['hr@10'] <= 1
        spent.append(privacy['epsilon'])
    assert all(b > a for a, b in zip(spent, spent[1:]))
    assert spent[0] > 0
    pretraining = metrics['pretraining']
    assert pretraining['rounds'] == 2 and len(pretraining['loss']) == 2
    assert all(math.isfinite(loss) for loss in pretraining['loss'])
    assert set(pretraining['uniformity']) == {'user', 'item'}
    assert all(value <= 0 for value in pretraining['uniformity'].values())
    exported = torch.load(out / EMBEDDINGS)
    assert {'user_embedding', 'item_embedding', 'user_final', 'item_final',
            'cluster'} <= set(exported)
    assert exported['cluster'].shape == (NUM_USERS,)
    assert exported['item_final'].shape == (NUM_ITEMS, 8)
    assert (out / CHECKPOINT).exists()
    assert json.loads((out / 'config.json').read_text())['algorithm'] == 'perfedrec++'


def test_resume_matches_uninterrupted_run(split, uninterrupted, tmp_path, monkeypatch):
    expected_out, _ = uninterrupted
    expected = read_metrics(expected_out)
    out = tmp_path / 'run'
    train_interrupted(monkeypatch, TrainConfig(**RUN), out=out, progress=False, split=split)
    assert [r['round'] for r in read_metrics(out)['rounds']] == [0, 1]

    resumed = train(TrainConfig(**RUN), out=out, resume=True, progress=False, split=split)
    assert [r['round'] for r in resumed['rounds']] == [0, 1, 2, 3]
    assert without_seconds(read_metrics(out)) == without_seconds(expected)
    assert without_seconds(resumed) == without_seconds(expected)
    assert torch.equal(torch.load(out / EMBEDDINGS)['cluster'],
                       torch.load(expected_out / EMBEDDINGS)['cluster'])


def test_full_ranking_protocol(ranking_split):
    config = TrainConfig(**dict(GRAPH, rounds=2, pretrain_rounds=1, protocol='full'))
    metrics = train(config, progress=False, split=ranking_split)
    best = metrics['best']
    assert config.select_by == 'recall@20'
    for which in ('val', 'test'):
        assert 0 <= best[which]['recall@20'] <= 1
        assert best[which]['recall@10'] <= best[which]['recall@20']
        assert 'hr@10' not in best[which]
    recalls = [r['val']['recall@20'] for r in metrics['rounds']]
    assert best['val']['recall@20'] == max(recalls)
    assert max(recalls) > 0


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------
def test_cli_trains_perfedrec_plus_plus(tmp_path, capsys):
    out = tmp_path / 'run'
    main(['train', '--algorithm', 'perfedrec++', '--dataset', 'ml-100k', '--rounds', '2',
          '--pretrain-rounds', '1', '--dim', '8', '--out', str(out), '--quiet'])
    printed = json.loads(capsys.readouterr().out)
    config = json.loads((out / 'config.json').read_text())
    assert config['algorithm'] == 'perfedrec++' and config['settings']['pretrain_rounds'] == 1
    assert config['settings']['level_weights'] == [1.0, 1.0, 1.0]
    assert config['clients_per_round'] == 256
    metrics = read_metrics(out)
    assert len(metrics['rounds']) == 2 and len(metrics['pretraining']['loss']) == 1
    assert all(r['clients'] == 256 for r in metrics['rounds'])
    assert 0 <= metrics['best']['test']['hr@10'] <= 1
    assert printed['best'] == metrics['best']
    assert (out / EMBEDDINGS).exists()


def _parsed_config(argv):
    """The config ``fedgraph train`` builds from ``argv`` (as ``cli._train`` does)."""
    return config_from_args(build_parser().parse_args(['train'] + argv))


def test_cli_parses_graph_flags():
    config = _parsed_config(['--algorithm', 'perfedrec++', '--dual-personalization', 'off',
                             '--level-weights', '1', '0', '0'])
    assert config.dual_personalization is False
    assert config.level_weights == (1.0, 0.0, 0.0)
    assert config.num_clusters == 5 and config.pretrain_rounds == 50  # defaults kept
    config = _parsed_config(['--algorithm', 'fedlightgcn', '--dual-personalization', 'on',
                             '--num-layers', '3'])
    assert config.dual_personalization is True and config.num_layers == 3
    assert config.level_weights == (1.0, 0.0, 0.0)
    # A setting of another algorithm is an error that names it.
    with pytest.raises(ValueError, match='fedlightgcn has no setting num_clusters'):
        _parsed_config(['--algorithm', 'fedlightgcn', '--num-clusters', '2'])
    with pytest.raises(SystemExit):
        build_parser().parse_args(['train', '--dual-personalization', 'maybe'])
    with pytest.raises(SystemExit):
        build_parser().parse_args(['train', '--level-weights', '1', '0'])


def test_reclustering_carries_cluster_tables_over(trained):
    engine, _, _, _ = trained
    old_assignment, old_tables = engine.assignment.clone(), engine.cluster_tables.clone()
    engine.recluster()
    for cluster in range(engine.num_clusters):
        members = engine.assignment == cluster
        if members.any():
            # a new cluster's table is the mean of its members' previous cluster tables
            expected = old_tables[old_assignment[members]].mean(0)
            torch.testing.assert_close(engine.cluster_tables[cluster], expected)


def test_level_table_scores_the_final_model_with_each_weighting(tmp_path, split,
                                                                monkeypatch):
    import fedgraph.training
    from fedgraph.analysis import LEVEL_SETTINGS, level_table

    config = TrainConfig(algorithm='perfedrec++', dim=8, rounds=4, pretrain_rounds=1,
                         clients_per_round=20, cluster_every=2, num_clusters=3)
    train(config, tmp_path / 'run', split=split, progress=False)
    # level_table rebuilds the split from the config; hand it the same split
    monkeypatch.setattr(fedgraph.training, 'prepare_split', lambda config: split)
    rows = level_table(tmp_path / 'run')
    assert [row['weights'] for row in rows] == list(LEVEL_SETTINGS)
    assert all(row['round'] == 4 for row in rows)
    # the all-three row is what training reported for its last round
    last = json.loads((tmp_path / 'run' / 'metrics.json').read_text())['rounds'][-1]
    assert rows[-1]['test'] == pytest.approx(last['test'])
    # one level alone differs from the mix
    assert rows[2]['test'] != rows[-1]['test']


@pytest.mark.parametrize('client_streams', [False, True])
def test_users_upload_in_blocks_as_they_would_at_once(split, monkeypatch, client_streams):
    """Enrollment and the upload after pre-training take the clients a block at a time:
    the server's view of the users is the one every client uploaded at once gives."""
    views = []
    for block in (1 << 16, 7):
        monkeypatch.setattr(UploadTransform, 'BLOCK_ROWS', block)
        engine, generator, _ = _build(split, client_streams=client_streams, ldp_scale=0.1)
        enrolled = engine.server_users.clone()
        engine.pretrain(generator, progress=False)
        views.append((enrolled, engine.server_users))
    for a, b in zip(*views):
        assert torch.equal(a, b)
    assert not torch.equal(views[0][0], views[0][1])
