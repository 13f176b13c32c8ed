"""Writes the tutorial notebooks and executes them in place (full size), saving the outputs.

    python notebooks/build.py                 # write and execute all four
    python notebooks/build.py --no-execute    # write them without outputs
    python notebooks/build.py 02 03           # only the notebooks whose name starts so

Each notebook reads ``FEDGRAPH_NOTEBOOK_SMALL`` in its first code cell and picks tiny
settings when it is ``1`` (the tests do that, see ``tests/test_notebooks.py``); this script
unsets it, so the saved outputs come from the full-size settings.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from textwrap import dedent

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

SMALL_FLAG = "SMALL = os.environ.get('FEDGRAPH_NOTEBOOK_SMALL') == '1'"


def md(text: str):
    return new_markdown_cell(dedent(text).strip('\n'))


def code(text: str):
    return new_code_cell(dedent(text).strip('\n'))


# ---------------------------------------------------------------------------------------
QUICKSTART = [
    md('''
    # Quickstart: PFedRec on MovieLens-100K

    This notebook loads MovieLens-100K as a PyG `HeteroData` graph, splits it leave-one-out,
    trains PFedRec (Zhang et al., *Dual Personalization on Federated Recommendation*,
    IJCAI 2023) and recommends ten movies to one user with the trained model.

    Every user is a client. Its ratings stay on its device; it trains a private score head
    and its own copy of the item rows it touches, and uploads only the changes of those item
    rows. The server averages the uploads row by row into the global item table.

    With `FEDGRAPH_NOTEBOOK_SMALL=1` in the environment every notebook here runs with tiny
    settings (the tests do this); the saved outputs come from the full-size settings.
    '''),
    code(f'''
    %matplotlib inline
    import os
    import time

    import torch

    {SMALL_FLAG}
    ROUNDS = 3 if SMALL else 30   # federated rounds (the paper trains 100)
    SEED = 0
    print(f'SMALL={{SMALL}}: {{ROUNDS}} rounds')
    '''),
    md('''
    ## The data

    `load_dataset('ml-100k')` reads the ratings file (from `datasets/`, downloaded on first
    use) into a `HeteroData` with node types `user` and `item` and the edge type
    `('user', 'rates', 'item')` plus its reverse. Every rating counts as an implicit
    positive. Users and items are re-indexed `0..n-1`; the MovieLens ids are kept in
    `raw_id`. Edges are sorted by user, then by time, so each user's latest interaction is
    the last of its segment.
    '''),
    code('''
    from fedgraph.data import load_dataset

    data = load_dataset('ml-100k')
    data
    '''),
    code('''
    from fedgraph.describe import describe

    summary = describe(data)
    print(f"{summary['users']} users, {summary['items']} items, "
          f"{summary['interactions']} interactions, density {summary['density']:.4f}")
    for name in ('user_degree', 'item_degree'):
        s = summary[name]
        print(f"{name:<12} min {s['min']:>4.0f}   median {s['median']:>4.0f}   "
              f"mean {s['mean']:>6.1f}   max {s['max']:>4.0f}")
    print(f"mean rating {summary['mean_rating']:.2f}")
    '''),
    md('''
    Every user has rated at least 20 movies; the item side is long-tailed (the median movie
    has 27 ratings, the most rated one 583).

    ## Leave-one-out split

    PFedRec's protocol: each user's latest interaction is its test item and the one before
    it its validation item; the rest is training data. Each held-out item is ranked against
    99 items the user never rated, drawn once. HR@10 is the fraction of users whose
    held-out item is among the top 10 of these 100 candidates; NDCG@10 also rewards a
    higher position.
    '''),
    code('''
    from fedgraph.data import leave_one_out_split
    from fedgraph.describe import describe_split

    split = leave_one_out_split(data, seed=SEED)
    describe_split(split)
    '''),
    md('''
    ## Training with `train`

    `TrainConfig` holds every hyperparameter. Fields left unset take the algorithm's
    defaults from `ALGORITHM_DEFAULTS` (printed below); the rest default to the PFedRec
    paper's settings: d = 32, all 943 clients every round, one local epoch of mini-batches
    of 256, 4 sampled negatives per positive. `train` evaluates after every round and
    returns the per-round records and the round with the best validation HR@10.
    '''),
    code('''
    from fedgraph.config import ALGORITHM_DEFAULTS, TrainConfig
    from fedgraph.training import train

    config = TrainConfig(algorithm='pfedrec', rounds=ROUNDS, seed=SEED)
    print('PFedRec defaults:', ALGORITHM_DEFAULTS['pfedrec'])
    began = time.perf_counter()
    metrics = train(config, split=split, progress=False)
    print(f'{ROUNDS} rounds in {time.perf_counter() - began:.1f} s')
    best = metrics['best']
    print(f"best round {best['round']}: validation HR@10 {best['val']['hr@10']:.4f}; "
          f"test HR@10 {best['test']['hr@10']:.4f}, NDCG@10 {best['test']['ndcg@10']:.4f}")
    '''),
    code('''
    from fedgraph.viz import plot_training_curves

    plot_training_curves({'PFedRec': metrics})
    '''),
    md('''
    Validation and test HR@10 after each round, and the clients' mean local training loss
    (BCE). PFedRec's curve has a characteristic shape: HR@10 is about 0.2 after the first
    round, jumps to about 0.5 after the second, stays on that plateau for about ten rounds,
    then climbs. The README's 100-round runs reach a test HR@10 of about 0.71.

    ## The trained model, by hand

    `train` keeps its engine to itself. To use the model, build the same engine with
    `build_engine` and run the rounds yourself. With the same seed the random stream is the
    same, so this reproduces `train`'s last round exactly.
    '''),
    code('''
    from fedgraph.algorithms import build_engine
    from fedgraph.data import ClientPartition
    from fedgraph.federated import evaluate

    partition = ClientPartition.from_data(split.train)
    generator = torch.Generator().manual_seed(config.seed)
    engine = build_engine(config, partition, generator, split.known_items())
    for _ in range(config.rounds):
        stats = engine.run_round(generator)
    result = evaluate(engine, split)

    print(f'last round: {stats.num_clients} clients, mean local loss {stats.loss:.4f}, '
          f'{stats.upload_bytes / 1024:.1f} KiB uploaded per client')
    print('by hand :', {key: round(value, 4) for key, value in result['test'].items()})
    print('train() :', {key: round(value, 4) for key, value in metrics['rounds'][-1]['test'].items()})
    '''),
    md('''
    ## Top 10 for one user

    `engine.scores_all(users)` returns the logits of every item for each user, computed with
    that user's own score head and its own fine-tuned item rows (PFedRec's dual
    personalization). Masking the user's training items and taking the top 10 gives its
    recommendations. Item indices map back to MovieLens movie ids through `raw_id` (the ids
    of `u.item` in the ML-100K archive, which holds the titles).
    '''),
    code('''
    user = 0
    users = torch.tensor([user])
    seen = partition.dense_mask(users)[0]
    scores = engine.scores_all(users)[0].masked_fill(seen, float('-inf'))
    top = scores.topk(10)

    user_raw, item_raw = split.train['user'].raw_id, split.train['item'].raw_id
    print(f'user {user} (MovieLens user {int(user_raw[user])}), {int(seen.sum())} training items')
    print(f"{'rank':>4} {'item':>5} {'movie id':>9} {'logit':>7} {'P(like)':>8}")
    for rank, (item, score) in enumerate(zip(top.indices.tolist(), top.values.tolist()), 1):
        print(f'{rank:>4} {item:>5} {int(item_raw[item]):>9} {score:>7.2f} '
              f'{torch.sigmoid(torch.tensor(score)):>8.3f}')
    '''),
    md('''
    Where the user's held-out items rank among all the movies it has not rated (full
    ranking, a harder test than the 100 candidates of HR@10):
    '''),
    code('''
    order = scores.argsort(descending=True)
    unseen = int((~seen).sum())
    for name, item in (('validation', int(split.val_item[user])),
                       ('test', int(split.test_item[user]))):
        rank = int((order == item).nonzero()) + 1
        print(f'{name:<10} item {item:>5} (movie id {int(item_raw[item]):>4}): '
              f'rank {rank} of {unseen} unseen items')
    '''),
    md('''
    Next: `02-perfedrec-step-by-step.ipynb` builds PerFedRec++, the graph model with
    contrastive pre-training, clusters and three levels of personalization.
    '''),
]


# ---------------------------------------------------------------------------------------
STEP_BY_STEP = [
    md('''
    # PerFedRec++, step by step

    PerFedRec++ (Luo et al., *Enhancing Personalized Federated Recommendation with
    Self-Supervised Pre-Training*, ACM TIST 2024) is a federated LightGCN with three
    additions: contrastive pre-training on views drawn from the privacy mechanisms, FAISS
    clusters of clients, and scores that mix a global, a cluster and a local model. This
    notebook builds the engine and runs each stage by hand; `train` does the same in one
    call. [`docs/perfedrec.md`](../docs/perfedrec.md) describes the design and where it
    differs from the paper's code.

    The protocol is full ranking: each user's interactions are split 80/10/10 at random,
    every item is ranked with the user's training items masked, and the metrics are
    Recall@20 and NDCG@20.
    '''),
    code(f'''
    %matplotlib inline
    import os

    import matplotlib.pyplot as plt
    import torch

    {SMALL_FLAG}
    PRETRAIN_ROUNDS = 2 if SMALL else 20
    ROUNDS = 3 if SMALL else 42         # not a multiple of CLUSTER_EVERY, see section 6
    CLUSTER_EVERY = 2 if SMALL else 5
    EVAL_EVERY = 1 if SMALL else 5
    SEED = 0
    print(f'SMALL={{SMALL}}: {{PRETRAIN_ROUNDS}} pre-training rounds, {{ROUNDS}} rounds')
    '''),
    code('''
    from fedgraph.algorithms import build_engine
    from fedgraph.config import TrainConfig
    from fedgraph.data import ClientPartition, load_dataset, ratio_split

    data = load_dataset('ml-100k')
    split = ratio_split(data, (0.8, 0.1, 0.1), seed=SEED)
    partition = ClientPartition.from_data(split.train)
    config = TrainConfig(algorithm='perfedrec++', protocol='full', rounds=ROUNDS,
                         pretrain_rounds=PRETRAIN_ROUNDS, cluster_every=CLUSTER_EVERY, seed=SEED)
    generator = torch.Generator().manual_seed(SEED)
    engine = build_engine(config, partition, generator, split.known_items())

    print(type(engine).__name__)
    print(f'{config.clients_per_round} clients a round; uploads clipped to L2 norm {config.clip} '
          f'with Laplace noise of scale {config.ldp_scale}')
    print(f'{config.num_layers} GNN layers; k = {config.num_clusters} clusters every '
          f'{config.cluster_every} rounds; level weights (global, cluster, local) = '
          f'{config.level_weights}')
    '''),
    md('''
    ## 1. The server's collaborative graph

    When a client enrolls it uploads its item set blurred with pseudo-items:
    max(1, ⌊0.1 · degree⌋) items it never interacted with, drawn uniformly. The server's
    graph (`engine.graph`) is the union of these uploads, so it cannot tell a real edge from
    a pseudo one. The notebook can, by looking the edges up in the training data:
    '''),
    code('''
    graph = engine.graph
    real = partition.contains(graph.edge_index[0], graph.edge_index[1])
    expected = int(torch.clamp(torch.floor(partition.degree * config.pseudo_ratio), min=1).sum())
    print(f'training interactions     {partition.num_interactions:>7}')
    print(f'server graph edges        {graph.num_edges:>7}')
    print(f'  real                    {int(real.sum()):>7}')
    print(f'  pseudo-items            {int((~real).sum()):>7}   (expected {expected})')
    '''),
    md('''
    ## 2. Two augmented views

    Pre-training contrasts two views of this graph. `engine.augmentation` draws one:
    `ClientDropout(0.1)` removes 10% of the clients with all their edges (as client
    selection does) and `PseudoItems(0.1)` adds another set of pseudo-items for the clients
    that remain. The views also differ by Laplace noise on the user embeddings and SimGCL
    noise on every propagated layer, which act on embeddings rather than edges and are not
    counted here. Two draws, from a separate generator so that the training stream is
    unchanged:
    '''),
    code('''
    view_generator = torch.Generator().manual_seed(1)
    views = [engine.augmentation(graph, view_generator) for _ in range(2)]


    def edge_keys(g):
        return g.edge_index[0] * g.num_items + g.edge_index[1]


    def present(g):
        return torch.bincount(g.edge_index[0], minlength=g.num_users) > 0


    for number, view in enumerate(views, 1):
        added = int((~torch.isin(edge_keys(view), edge_keys(graph))).sum())
        print(f'view {number}: {view.num_edges} edges ({added} new pseudo-items), '
              f'{int(present(view).sum())} of {view.num_users} clients present')
    first, second = edge_keys(views[0]), edge_keys(views[1])
    print(f'edges in both views {int(torch.isin(first, second).sum())}, '
          f'only in view 1 {int((~torch.isin(first, second)).sum())}, '
          f'only in view 2 {int((~torch.isin(second, first)).sum())}')
    absent = [~present(view) for view in views]
    print(f'clients absent from view 1: {int(absent[0].sum())}, from view 2: {int(absent[1].sum())}, '
          f'from both: {int((absent[0] & absent[1]).sum())}')
    '''),
    md('''
    ## 3. Contrastive pre-training

    `engine.pretrain(rounds, generator)`: each round selects 256 clients and as many random
    items, draws two views, propagates both with the federated GNN layer and takes one Adam
    step on InfoNCE(users) + InfoNCE(items) between the views (cosine similarity, τ = 0.2).
    Only the selected clients' embeddings change. `engine.uniformity()` measures how evenly
    the propagated embeddings spread over the unit sphere,
    log E exp(−2‖x̃ − ỹ‖²) over pairs of normalized rows: lower is more uniform.
    '''),
    code('''
    from matplotlib.ticker import MaxNLocator

    before = engine.uniformity()
    pretraining = engine.pretrain(PRETRAIN_ROUNDS, generator, progress=False)
    after = engine.uniformity()
    print(f"uniformity before pre-training: users {before['user']:.3f}, items {before['item']:.3f}")
    print(f"uniformity after pre-training:  users {after['user']:.3f}, items {after['item']:.3f}")

    fig, ax = plt.subplots(figsize=(5.5, 3.2), layout='constrained')
    ax.plot(range(1, len(pretraining['loss']) + 1), pretraining['loss'], marker='o', markersize=3)
    ax.set_xlabel('pre-training round')
    ax.set_ylabel('InfoNCE (users + items)')
    ax.set_title('Contrastive pre-training loss', fontsize=10)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    plt.show()
    '''),
    md('''
    The loss falls steadily: the two views of a node become easier to tell apart from the
    other nodes. The uniformity barely moves, because the random initialization is already
    close to uniform. What pre-training changes is where federated training starts from;
    `03-uniformity.ipynb` shows that the pre-trained start stays more uniform during
    training and reaches a higher Recall@20 in the same number of rounds.

    ## 4. Rounds until the first clustering

    One round: the server propagates its graph and gives each selected client its
    *context*, what its neighbours add to its node; the clients train locally (BCE, 4
    negatives per positive), then upload clipped and noised changes of their item rows and
    of their user embedding; the server averages the rows. After every `cluster_every`
    rounds it runs FAISS k-means on the clients' representations propagated from their
    uploaded embeddings. From then on it selects clients from each cluster in proportion to
    the cluster's size and keeps one item table per cluster.
    '''),
    code('''
    from fedgraph.federated import evaluate

    history = []   # per-round records in the layout of train()'s metrics


    def run_one_round():
        index = len(history)
        stats = engine.run_round(generator)
        record = {'round': index, 'train_loss': stats.loss, 'uniformity': engine.uniformity(),
                  'epsilon_spent': stats.epsilon * int(engine.participation.max())}
        if (index + 1) % EVAL_EVERY == 0 or index + 1 == ROUNDS:
            record.update(evaluate(engine, split))
        history.append(record)
        return record


    while engine.assignment is None:
        record = run_one_round()
        print(f"round {record['round']}: local loss {record['train_loss']:.4f}")
    print(f'first clustering after round {len(history) - 1}; cluster sizes',
          torch.bincount(engine.assignment, minlength=config.num_clusters).tolist())
    '''),
    code('''
    from fedgraph.viz import plot_clusters

    plot_clusters(engine.propagated()[0], engine.assignment)
    '''),
    md('''
    Each point is a client: its own user embedding propagated over the server's graph
    (`engine.propagated()[0]`), projected on the top two principal components and coloured
    by its cluster. The clustering itself ran on the representations of the *uploaded*
    embeddings, which carry Laplace noise, in all 32 dimensions; two components show only
    part of that structure, so clusters may overlap in the picture.

    ## 5. Training to the end
    '''),
    code('''
    while len(history) < ROUNDS:
        record = run_one_round()
        if 'val' in record:
            print(f"round {record['round']:>2}: local loss {record['train_loss']:.4f}  "
                  f"val Recall@20 {record['val']['recall@20']:.4f}  "
                  f"NDCG@20 {record['val']['ndcg@20']:.4f}")
    print('cluster sizes', torch.bincount(engine.assignment, minlength=config.num_clusters).tolist())
    '''),
    code('''
    from fedgraph.viz import plot_training_curves

    plot_training_curves({'PerFedRec++': {'rounds': history}})
    '''),
    md('''
    The same panels `train` produces from its `metrics.json`: validation and test
    Recall@20 (every few rounds), the local training loss, the uniformity of the global
    model's propagated user and item embeddings, and the LDP budget spent by the client
    that uploaded most often (each upload spends ε = 2 · clip / scale = 10 per coordinate,
    composed sequentially; enrollment and pre-training count as uploads).

    ## 6. Three levels of personalization

    A user's score of an item is
    w_g · s(global table) + w_c · s(its cluster's table) + w_l · s(its own fine-tuned rows),
    all with its private user embedding and the round's context. `engine.level_weights`
    sets the weights for scoring, so each level can be evaluated alone without retraining.

    Each re-clustering restarts the cluster tables from the global table, so right after one
    (rounds 5, 10, …, 40 here) the cluster level *is* the global level; after any other
    round a cluster's table is the average of the tables of that round's clients from the
    cluster. That is why this notebook stops after 42 rounds rather than 40.
    '''),
    code('''
    from IPython.display import Markdown

    settings = {'global': (1.0, 0.0, 0.0), 'cluster': (0.0, 1.0, 0.0),
                'local': (0.0, 0.0, 1.0), 'global + cluster': (1.0, 1.0, 0.0),
                'all three (PerFedRec++)': (1.0, 1.0, 1.0)}
    lines = ['| levels | (w_g, w_c, w_l) | val Recall@20 | val NDCG@20 | test Recall@20 | test NDCG@20 |',
             '|---|---|---|---|---|---|']
    for name, weights in settings.items():
        engine.level_weights = weights
        result = evaluate(engine, split)
        lines.append(f"| {name} | {weights} | {result['val']['recall@20']:.4f} | "
                     f"{result['val']['ndcg@20']:.4f} | {result['test']['recall@20']:.4f} | "
                     f"{result['test']['ndcg@20']:.4f} |")
    engine.level_weights = config.level_weights
    Markdown('\\n'.join(lines))
    '''),
    md('''
    How large are the logits of each level? Their standard deviation over all items, for the first
    256 users:
    '''),
    code('''
    users = torch.arange(256)
    for name in ('global', 'cluster', 'local'):
        engine.level_weights = settings[name]
        print(f'{name:<8} logit std {engine.scores_all(users).std():.2f}')
    engine.level_weights = config.level_weights
    '''),
    md('''
    The local level scores with the rows a user fine-tuned in its last round, at the graph
    models' large item learning rate (1 × 1682 × 1, times (K + 1)² = 9); these rows move
    far from the global table and give logits an order of magnitude larger than the other
    levels'. Summed as they are, the local level would decide the ranking alone; this is
    why the engine standardizes each level's scores per user before weighting them
    (`GraphFederatedEngine._combine`), so that equal weights give the three levels equal
    say. The table above shows each level alone and their combinations on this short run;
    the README compares full runs (100 rounds, 50 pre-training rounds, three seeds) with
    FedLightGCN, a global model trained without
    pre-training, clusters or local rows.
    '''),
]


# ---------------------------------------------------------------------------------------
UNIFORMITY = [
    md('''
    # Uniformity of the embeddings

    Uniformity (Wang & Isola, ICML 2020) is log E exp(−2‖x̃ − ỹ‖²) over pairs of normalized
    embeddings: lower means they spread more evenly over the sphere. SimGCL (Yu et al.,
    SIGIR 2022) showed that contrastive learning makes recommendation embeddings more
    uniform, and drew it as below: project the embeddings to 2-D, normalize them onto the
    unit circle, and plot the density of the points (top) and of their angles (bottom).
    A uniform set covers the circle evenly and has a flat angle density; a collapsed set
    shows bright arcs and sharp peaks. The number in each caption is computed on the
    full 32-dimensional embeddings.

    Part 1 compares PerFedRec++ with and without contrastive pre-training; part 2 looks at
    PFedRec's personalized item embeddings.
    '''),
    code(f'''
    %matplotlib inline
    import os
    import shutil
    import tempfile
    from pathlib import Path

    import torch

    {SMALL_FLAG}
    PRETRAIN_ROUNDS = 2 if SMALL else 20
    ROUNDS = 3 if SMALL else 40
    PFEDREC_ROUNDS = 2 if SMALL else 30
    EVAL_EVERY = 1 if SMALL else 5
    MAX_POINTS = 200 if SMALL else 1000   # rows per t-SNE projection
    SEED = 0
    runs_dir = Path(tempfile.mkdtemp(prefix='fedgraph-uniformity-'))
    print(f'SMALL={{SMALL}}: PerFedRec++ {{PRETRAIN_ROUNDS}} + {{ROUNDS}} rounds, '
          f'PFedRec {{PFEDREC_ROUNDS}} rounds')
    '''),
    md('''
    ## 1. PerFedRec++ with and without pre-training

    Two runs under the full-ranking protocol that differ only in `pretrain_rounds`. With an
    output folder, `train` writes `config.json`, `metrics.json`, `checkpoint.pt` and, for
    graph models, `embeddings.pt`.
    '''),
    code('''
    from fedgraph.config import TrainConfig
    from fedgraph.data import load_dataset, ratio_split
    from fedgraph.training import train

    data = load_dataset('ml-100k')
    split = ratio_split(data, seed=SEED)
    pretraining = {'with pre-training': PRETRAIN_ROUNDS, 'without': 0}
    folders, metrics = {}, {}
    for label, rounds in pretraining.items():
        config = TrainConfig(algorithm='perfedrec++', protocol='full', rounds=ROUNDS,
                             pretrain_rounds=rounds, eval_every=EVAL_EVERY, seed=SEED)
        folders[label] = runs_dir / label.replace(' ', '-')
        metrics[label] = train(config, out=folders[label], split=split, progress=False)
        start = metrics[label]['pretraining']['uniformity']
        end = metrics[label]['rounds'][-1]['uniformity']
        best = metrics[label]['best']
        print(f"{label:<18} uniformity users {start['user']:.3f} -> {end['user']:.3f}, "
              f"items {start['item']:.3f} -> {end['item']:.3f};  best round {best['round']}: "
              f"test Recall@20 {best['test']['recall@20']:.4f}")
    '''),
    code('''
    from fedgraph.viz import plot_training_curves

    plot_training_curves(metrics)
    '''),
    md('''
    Both runs start almost uniform (the random initialization is). Federated training then
    concentrates the embeddings: the uniformity rises towards 0. The pre-trained run
    concentrates more slowly and ends more uniform, and its Recall@20 is higher at every
    evaluation. Its LDP budget starts higher: every pre-training round in which a client is
    selected counts as one more upload.

    The final embeddings, from each run's `embeddings.pt` (`user_final` and `item_final`
    are the propagated vectors of the global model), projected with t-SNE:
    '''),
    code('''
    from fedgraph.viz import plot_uniformity

    saved = {label: torch.load(folder / 'embeddings.pt') for label, folder in folders.items()}
    print('embeddings.pt holds:', sorted(saved['with pre-training']))
    plot_uniformity({'with pre-training: users': saved['with pre-training']['user_final'],
                     'with pre-training: items': saved['with pre-training']['item_final'],
                     'without: users': saved['without']['user_final'],
                     'without: items': saved['without']['item_final']},
                    method='tsne', max_points=MAX_POINTS)
    '''),
    md('''
    Compare the columns in pairs (users with users, items with items). Without pre-training
    the points gather in two opposite arcs, two peaks in the angle density; with
    pre-training more of the circle is covered and the uniformity is lower. t-SNE preserves
    neighbourhoods, not distances, so read the pictures as a view of clumping; the number
    in the caption (on the plotted subset of at most `MAX_POINTS` rows) is the measurement.

    ## 2. PFedRec: global and personalized item embeddings

    PFedRec's dual personalization gives each user its own view of the item table: the
    global table with the rows it fine-tuned in its last round replaced by its own copies.
    `personalized_views(run)` reads them from a run's checkpoint: the global rows and the
    views of the four users with the most fine-tuned rows, over the items those users
    touched.
    '''),
    code('''
    from fedgraph.data import leave_one_out_split
    from fedgraph.viz import personalized_views, plot_personalized_views

    pfedrec_dir = runs_dir / 'pfedrec'
    pfedrec = train(TrainConfig(algorithm='pfedrec', rounds=PFEDREC_ROUNDS, seed=SEED),
                    out=pfedrec_dir, split=leave_one_out_split(data, seed=SEED), progress=False)
    global_rows, views = personalized_views(pfedrec_dir)
    print(f'{global_rows.size(0)} item rows; users: {list(views)}')
    plot_personalized_views(global_rows, views)
    '''),
    md('''
    Left: the global rows (black) and each user's fine-tuned rows (colours) on the top two
    principal components of the global rows. Right: how far each user's rows moved from the
    global ones. Each user's rows spread along one line through the global cloud: PFedRec's
    score is w_c · e + b_c, whose gradient with respect to an item row e is w_c, so every
    local step moves the user's rows along ±w_c. The item learning rate is large
    (0.1 × 1682 × 80), so one local epoch moves them far. Active users fine-tune almost
    every row: their positives plus four sampled negatives for each.

    The uniformity of the global rows against the first user's view of the same rows:
    '''),
    code('''
    user = next(iter(views))
    tuned = (views[user] != global_rows).any(dim=1)
    print(f'{user} fine-tuned {int(tuned.sum())} of these {tuned.numel()} rows')
    plot_uniformity({'global items': global_rows, f'{user} view': views[user]},
                    method='tsne', max_points=MAX_POINTS)
    '''),
    code('''
    shutil.rmtree(runs_dir)
    '''),
    md('''
    The user's view is less uniform than the global table: its rows are stretched along
    its own direction w_c, which is exactly what lets its head separate the items it likes
    from the others.
    '''),
]


# ---------------------------------------------------------------------------------------
BRING_YOUR_OWN = [
    md('''
    # Bring your own model

    The layers behind PerFedRec++ work on their own: `CollaborativeGraph` (a bipartite
    user-item graph), `FederatedGNN` (LightGCN propagation with PyG's `LGConv`), the privacy
    mechanisms as augmentations (`ClientDropout`, `PseudoItems`, `SimGCLNoise`, composed
    with `Compose`) and `info_nce`. This notebook writes a small model with them, a LightGCN
    with a SimGCL-style contrastive loss whose views come from the privacy augmentations,
    trains it centrally with Adam on BPR, evaluates it with `fedgraph.metrics` and plots the
    uniformity of its embeddings against the same model without the contrastive term.
    '''),
    code(f'''
    %matplotlib inline
    import os
    import time

    import matplotlib.pyplot as plt
    import torch
    import torch.nn.functional as F
    from torch import nn

    {SMALL_FLAG}
    STEPS = 5 if SMALL else 200        # Adam steps
    BATCH = 2048                       # (user, positive, negative) triples a step
    MAX_POINTS = 200 if SMALL else 1000
    SEED = 0
    torch.manual_seed(SEED)
    print(f'SMALL={{SMALL}}: {{STEPS}} steps')
    '''),
    md('''
    ## The graph and its views

    The training edges of a random 80/10/10 split, as a `CollaborativeGraph`. A view drops
    10% of the users and adds pseudo-items (10% of each remaining user's degree, at least
    one); every call draws a new view from the generator.
    '''),
    code('''
    from fedgraph.data import ClientPartition, load_dataset, ratio_split
    from fedgraph.nn import ClientDropout, CollaborativeGraph, Compose, PseudoItems

    data = load_dataset('ml-100k')
    split = ratio_split(data, (0.8, 0.1, 0.1), seed=SEED)
    train_part = ClientPartition.from_data(split.train)
    graph = CollaborativeGraph(train_part.edge_index(), train_part.num_clients,
                               train_part.num_items)
    augment = Compose([ClientDropout(0.1), PseudoItems(0.1)])

    generator = torch.Generator().manual_seed(SEED)
    view = augment(graph, generator)
    users_left = int((torch.bincount(view.edge_index[0], minlength=graph.num_users) > 0).sum())
    print(f'graph: {graph.num_users} users, {graph.num_items} items, {graph.num_edges} edges')
    print(f'one view: {view.num_edges} edges, {users_left} users')
    '''),
    md('''
    ## The model

    Ego embeddings for users and items, propagated by `FederatedGNN` (K = 2 layers, layer
    mean). The loss of a batch of (user, positive, negative) triples is

    * BPR, −log σ(s(u, i⁺) − s(u, i⁻)) with the dot product of the propagated vectors, plus a
      small L2 penalty on the ego embeddings of the batch;
    * `cl_weight` × (InfoNCE(users) + InfoNCE(items)) between two views of the batch's users
      and items, each view a fresh augmentation of the graph propagated with
      `SimGCLNoise(eps)` added to every layer's output.
    '''),
    code('''
    from fedgraph.nn import FederatedGNN, SimGCLNoise
    from fedgraph.nn.contrastive import info_nce


    class ContrastiveLightGCN(nn.Module):
        def __init__(self, num_users, num_items, dim=32, num_layers=2, cl_weight=0.02,
                     temperature=0.2, eps=0.1, augment=None, l2=1e-4):
            super().__init__()
            self.user = nn.Parameter(torch.randn(num_users, dim) * 0.1)
            self.item = nn.Parameter(torch.randn(num_items, dim) * 0.1)
            self.gnn = FederatedGNN(num_layers)
            self.cl_weight, self.temperature, self.eps = cl_weight, temperature, eps
            self.augment, self.l2 = augment, l2

        def forward(self, graph, perturb=None):
            """(users [U, d], items [I, d]): the propagated embeddings."""
            return self.gnn(self.user, self.item, graph, perturb=perturb)

        def loss(self, graph, users, positives, negatives, generator):
            user, item = self(graph)
            u = user[users]
            bpr = -F.logsigmoid((u * item[positives]).sum(-1) - (u * item[negatives]).sum(-1)).mean()
            l2 = self.l2 * (self.user[users].pow(2).sum() + self.item[positives].pow(2).sum()
                            + self.item[negatives].pow(2).sum()) / users.numel()
            cl = torch.zeros(())
            if self.cl_weight:
                noise = SimGCLNoise(self.eps, generator)
                (u1, i1), (u2, i2) = [self(self.augment(graph, generator), perturb=noise)
                                      for _ in range(2)]
                batch_users = torch.unique(users)
                batch_items = torch.unique(torch.cat([positives, negatives]))
                cl = (info_nce(u1[batch_users], u2[batch_users], self.temperature)
                      + info_nce(i1[batch_items], i2[batch_items], self.temperature))
            return bpr + l2 + self.cl_weight * cl, bpr.detach(), cl.detach()
    '''),
    md('''
    ## Training

    Each step draws `BATCH` training edges at random and, for each, one negative with
    `ClientPartition.sample_negatives` (an item that user never interacted with in
    training), then takes one Adam step. The same loop trains the model with
    `cl_weight = 0.02` and with `cl_weight = 0` (plain LightGCN), from the same seed.
    '''),
    code('''
    def fit(cl_weight, steps=STEPS, lr=0.01, seed=SEED):
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        model = ContrastiveLightGCN(graph.num_users, graph.num_items, cl_weight=cl_weight,
                                    augment=augment)
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        edges = train_part.edge_index()
        log = {'bpr': [], 'infonce': []}
        for _ in range(steps):
            pick = torch.randint(edges.size(1), (BATCH,), generator=generator)
            users, positives = edges[0, pick], edges[1, pick]
            negatives = train_part.sample_negatives(users, 1, generator).view(-1)
            loss, bpr, cl = model.loss(graph, users, positives, negatives, generator)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            log['bpr'].append(float(bpr))
            log['infonce'].append(float(cl))
        return model, log


    models, logs = {}, {}
    for label, cl_weight in (('with InfoNCE', 0.02), ('without', 0.0)):
        began = time.perf_counter()
        models[label], logs[label] = fit(cl_weight)
        print(f'{label:<13} {STEPS} steps in {time.perf_counter() - began:.1f} s; '
              f"last BPR {logs[label]['bpr'][-1]:.4f}")

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.2), layout='constrained')
    for label, log in logs.items():
        left.plot(log['bpr'], label=label, linewidth=1.2)
    right.plot(logs['with InfoNCE']['infonce'], color='tab:blue', linewidth=1.2)
    left.set_title('BPR loss', fontsize=10)
    right.set_title('InfoNCE (users + items), with InfoNCE', fontsize=10)
    for ax in (left, right):
        ax.set_xlabel('step')
        ax.grid(alpha=0.3)
    left.legend(fontsize=8)
    plt.show()
    '''),
    md('''
    With the contrastive term BPR stays near log 2 for the first steps, while the InfoNCE
    gradient spreads the small initial embeddings apart; then it falls below plain
    LightGCN's. The InfoNCE loss rises while BPR reorganizes the embeddings and falls again
    afterwards.

    ## Evaluation

    `full_ranking_metrics(score_fn, train, held_out)` ranks every item for every user with
    held-out items, masks the user's training items, and averages Recall, Precision, NDCG
    and Hit at 10 and 20. `score_fn(users)` returns `[len(users), num_items]` scores; here
    the dot products of the propagated embeddings over the full training graph.
    '''),
    code('''
    from IPython.display import Markdown
    from fedgraph.metrics import full_ranking_metrics, uniformity

    final = {}
    lines = ['| model | val Recall@20 | val NDCG@20 | test Recall@20 | test NDCG@20 | uniformity users | uniformity items |',
             '|---|---|---|---|---|---|---|']
    for label, model in models.items():
        with torch.no_grad():
            user, item = model(graph)
        final[label] = (user, item)
        score = lambda users: user[users] @ item.t()
        val = full_ranking_metrics(score, train_part, split.val)
        test = full_ranking_metrics(score, train_part, split.test)
        lines.append(f"| {label} | {val['recall@20']:.4f} | {val['ndcg@20']:.4f} | "
                     f"{test['recall@20']:.4f} | {test['ndcg@20']:.4f} | "
                     f"{uniformity(user):.3f} | {uniformity(item):.3f} |")
    Markdown('\\n'.join(lines))
    '''),
    md('''
    ## Uniformity

    The propagated embeddings of both models, projected with t-SNE onto the unit circle
    (see `03-uniformity.ipynb` for how to read the plot):
    '''),
    code('''
    from fedgraph.viz import plot_uniformity

    plot_uniformity({'with InfoNCE: users': final['with InfoNCE'][0],
                     'with InfoNCE: items': final['with InfoNCE'][1],
                     'without: users': final['without'][0],
                     'without: items': final['without'][1]},
                    method='tsne', max_points=MAX_POINTS)
    '''),
    md('''
    The numbers show the contrastive term's effect most clearly: both users and items are
    more uniform with it (lower values), and in this run it also ranks better. The
    captions are computed on the plotted subset of at most `MAX_POINTS` rows, so they can
    differ slightly from the table.

    To train such a model federatedly, the same pieces appear in
    `fedgraph.algorithms.perfedrec.GraphFederatedEngine`: `FederatedGNN.context` gives each
    client what its neighbours add, so clients train only their own embeddings and the
    item rows they touch; `pretrain` is this notebook's contrastive step restricted to the
    round's selected clients.
    '''),
]


NOTEBOOKS = {
    '01-quickstart.ipynb': QUICKSTART,
    '02-perfedrec-step-by-step.ipynb': STEP_BY_STEP,
    '03-uniformity.ipynb': UNIFORMITY,
    '04-bring-your-own-model.ipynb': BRING_YOUR_OWN,
}


def make(cells) -> nbformat.NotebookNode:
    notebook = new_notebook(cells=cells)
    notebook.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'Python 3',
                                       'language': 'python'}
    notebook.metadata['language_info'] = {'name': 'python'}
    return notebook


def execute(notebook: nbformat.NotebookNode, timeout: int = 600) -> None:
    """Runs ``notebook`` in place with the working directory set to this folder."""
    from nbclient import NotebookClient
    NotebookClient(notebook, timeout=timeout, kernel_name='python3', record_timing=False,
                   resources={'metadata': {'path': str(HERE)}}).execute()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('names', nargs='*', help='only the notebooks whose name starts so')
    parser.add_argument('--no-execute', action='store_true', help='write without outputs')
    args = parser.parse_args(argv)
    os.environ.pop('FEDGRAPH_NOTEBOOK_SMALL', None)  # saved outputs are full size
    for name, cells in NOTEBOOKS.items():
        if args.names and not any(name.startswith(prefix) for prefix in args.names):
            continue
        notebook = make(cells)
        if not args.no_execute:
            began = time.perf_counter()
            execute(notebook)
            print(f'{name}: executed in {time.perf_counter() - began:.1f} s', flush=True)
        nbformat.validate(notebook)
        nbformat.write(notebook, HERE / name)
    return 0


if __name__ == '__main__':
    sys.exit(main())
