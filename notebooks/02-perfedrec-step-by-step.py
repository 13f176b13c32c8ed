# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # PerFedRec++, step by step
#
# PerFedRec++ (Luo et al., *Enhancing Personalized Federated Recommendation with
# Self-Supervised Pre-Training*, ACM TIST 2024) is a federated LightGCN with three
# additions: contrastive pre-training on views drawn from the privacy mechanisms, FAISS
# clusters of clients, and scores that mix a global, a cluster and a local model. This
# notebook builds the engine and runs each stage by hand; `train` does the same in one
# call. [`docs/perfedrec.md`](../docs/perfedrec.md) describes the design and where it
# differs from the paper's code.
#
# The protocol is full ranking: each user's interactions are split 80/10/10 at random,
# every item is ranked with the user's training items masked, and the metrics are
# Recall@20 and NDCG@20.

# %%
# %matplotlib inline
import os
import warnings

import matplotlib.pyplot as plt
import torch

# PyTorch Geometric imports tqdm.auto, which warns in a kernel without ipywidgets.
warnings.filterwarnings('ignore', message='IProgress not found')

SMALL = os.environ.get('FEDGRAPH_NOTEBOOK_SMALL') == '1'
PRETRAIN_ROUNDS = 2 if SMALL else 20
ROUNDS = 3 if SMALL else 42         # not a multiple of CLUSTER_EVERY, see section 6
CLUSTER_EVERY = 2 if SMALL else 5
EVAL_EVERY = 1 if SMALL else 5
SEED = 0
print(f'SMALL={SMALL}: {PRETRAIN_ROUNDS} pre-training rounds, {ROUNDS} rounds')

# %% [markdown]
# The configuration holds PerFedRec++'s defaults (the paper's code's, see
# [`docs/perfedrec.md`](../docs/perfedrec.md)) except for the shortened schedule above;
# the cell prints the ones this notebook relies on.

# %%
from fedgraph import TrainConfig, load_dataset, ratio_split
from fedgraph.algorithms import build_engine
from fedgraph.data import ClientPartition

data = load_dataset('ml-100k')
split = ratio_split(data, (0.8, 0.1, 0.1), seed=SEED)
partition = ClientPartition.from_data(split.train)
config = TrainConfig(algorithm='perfedrec++', protocol='full', rounds=ROUNDS,
                     pretrain_rounds=PRETRAIN_ROUNDS, cluster_every=CLUSTER_EVERY, seed=SEED)
generator = torch.Generator().manual_seed(SEED)
engine = build_engine(config, partition, generator, split.known_items())

bound = (f'each coordinate clamped to ±{config.clip}' if config.clip_mode == 'coordinate'
         else f'each row scaled to L2 norm at most {config.clip}')
optimizer = {'adam': 'Adam', 'sgd': 'SGD'}[config.optimizer]
print(type(engine).__name__)
print(f'{config.clients_per_round} clients a round; uploads: {bound}, Laplace noise of scale '
      f'{config.ldp_scale} added by each {config.noise_at}')
print(f'local training: {config.loss.upper()} over {config.num_negatives} sampled negatives '
      f'per positive, {optimizer} at lr {config.lr} (item rows: '
      f'{config.settings.item_lr(partition.num_items):g})')
print(f'{config.num_layers} GNN layers; k = {config.num_clusters} clusters every '
      f'{config.cluster_every} rounds; level weights (global, cluster, local) = '
      f'{config.level_weights}')

# %% [markdown]
# ## 1. The server's collaborative graph
#
# When a client enrolls it uploads its item set blurred with pseudo-items:
# max(1, ⌊0.1 · degree⌋) items it never interacted with, drawn uniformly. The server's
# graph (`engine.graph`) is the union of these uploads, so it cannot tell a real edge from
# a pseudo one. The notebook can, by looking the edges up in the training data:

# %%
graph = engine.graph
real = partition.contains(graph.edge_index[0], graph.edge_index[1])
expected = int(torch.clamp(torch.floor(partition.degree * config.pseudo_ratio), min=1).sum())
print(f'training interactions     {partition.num_interactions:>7}')
print(f'server graph edges        {graph.num_edges:>7}')
print(f'  real                    {int(real.sum()):>7}')
print(f'  pseudo-items            {int((~real).sum()):>7}   (expected {expected})')

# %% [markdown]
# ## 2. Two augmented views
#
# Pre-training contrasts two views of this graph. `engine.augmentation` draws one:
# `ClientDropout(0.1)` removes 10% of the clients with all their edges (as client
# selection does) and `PseudoItems(0.1)` adds another set of pseudo-items for the clients
# that remain. The views also differ by Laplace noise on the user embeddings and SimGCL
# noise on every propagated layer, which act on embeddings rather than edges and are not
# counted here. Two draws, from a separate generator so that the training stream is
# unchanged:

# %%
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

# %% [markdown]
# ## 3. Contrastive pre-training
#
# `engine.pretrain(generator)` runs `config.pretrain_rounds` rounds: each selects 256
# clients and as many random items, draws two views, propagates both with the federated
# GNN layer and takes one Adam step on InfoNCE(users) + InfoNCE(items) between the views
# (cosine similarity, τ = 0.2).
# Only the selected clients' embeddings change. `engine.uniformity()` measures how evenly
# the propagated embeddings spread over the unit sphere,
# log E exp(−2‖x̃ − ỹ‖²) over pairs of normalized rows: lower is more uniform.

# %%
from matplotlib.ticker import MaxNLocator

before = engine.uniformity()
pretraining = engine.pretrain(generator, progress=False)
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

# %% [markdown]
# After a jump in the second round the loss falls steadily: the two views of a node
# become easier to tell apart from the other nodes. The uniformity barely moves, because
# the random initialization is already close to uniform. What pre-training changes is
# where federated training starts from; `03-uniformity.ipynb` shows that the pre-trained
# start stays more uniform during training and reaches a higher Recall@20 in the same
# number of rounds.
#
# ## 4. Rounds until the first clustering
#
# One round: the server propagates its graph and gives each selected client its
# *context*, what its neighbours add to its node; the clients train locally (the recipe
# printed at the top), then upload the changes of their item rows and of their user
# embedding, bounded and noised as printed at the top; the server averages the rows.
# After every `cluster_every` rounds it runs FAISS k-means on the clients'
# representations propagated from their uploaded embeddings. From then on it selects
# clients from each cluster in proportion to the cluster's size and keeps one item table
# per cluster.

# %%
from fedgraph.federated import evaluate

history = []   # per-round records in the layout of train()'s metrics


def run_one_round():
    index = len(history)
    stats = engine.run_round(generator)
    record = {'round': index, 'train_loss': stats.loss, 'uniformity': engine.uniformity(),
              'privacy': engine.ledger.report()}
    if (index + 1) % EVAL_EVERY == 0 or index + 1 == ROUNDS:
        record.update(evaluate(engine, split))
    history.append(record)
    return record


while engine.assignment is None:
    record = run_one_round()
    print(f"round {record['round']}: local loss {record['train_loss']:.4f}")
print(f'first clustering after round {len(history) - 1}; cluster sizes',
      torch.bincount(engine.assignment, minlength=config.num_clusters).tolist())

# %%
from fedgraph.viz import plot_clusters

plot_clusters(engine.propagated()[0], engine.assignment)

# %% [markdown]
# Each point is a client: its own user embedding propagated over the server's graph
# (`engine.propagated()[0]`), projected on the top two principal components and coloured
# by its cluster. The clustering itself ran on the representations of the *uploaded*
# embeddings, which carry Laplace noise, in all 32 dimensions; two components show only
# part of that structure, so clusters may overlap in the picture.
#
# ## 5. Training to the end

# %%
while len(history) < ROUNDS:
    record = run_one_round()
    if 'val' in record:
        print(f"round {record['round']:>2}: local loss {record['train_loss']:.4f}  "
              f"val Recall@20 {record['val']['recall@20']:.4f}  "
              f"NDCG@20 {record['val']['ndcg@20']:.4f}")
print('cluster sizes', torch.bincount(engine.assignment, minlength=config.num_clusters).tolist())

# %%
from fedgraph.viz import plot_training_curves

privacy = history[-1]['privacy']
spent = '∞' if privacy['epsilon'] is None else f"{privacy['epsilon']:.3g}"
print(f"{privacy['mechanism']}: L1 sensitivity of a row {privacy['l1_sensitivity']:g} "
      f"({privacy['clip_mode']} bound {privacy['clip']}); the most exposed client uploaded "
      f"{privacy['rows']} noised rows: epsilon {spent} at delta {privacy['delta']:.2g}")
plot_training_curves({'PerFedRec++': {'rounds': history}})

# %% [markdown]
# The same panels `train` produces from its `metrics.json`: validation and test
# Recall@20 (every few rounds), the local training loss, the uniformity of the global
# model's propagated user and item embeddings, and the privacy spent by the most exposed
# client. Each row a client uploads (item rows and its user-embedding change, clamped and
# noised as printed at the top) is a Laplace mechanism: with each of the d coordinates
# clamped to ±clip its L1 sensitivity is 2 · clip · d, and the accountant composes all
# the rows of the most exposed client (printed above). ε = 2 · clip / scale (10 at these
# defaults) is the budget of one coordinate of one upload; what the rows add up to is no
# guarantee ([`docs/privacy.md`](../docs/privacy.md); DP-FedAvg with `dp_epsilon` gives
# one).
#
# ## 6. Three levels of personalization
#
# A user's score of an item is
# w_g · s(global table) + w_c · s(its cluster's table) + w_l · s(its own fine-tuned rows),
# all with its private user embedding and the round's context. `engine.level_weights`
# sets the weights for scoring, so each level can be evaluated alone without retraining.
#
# Each re-clustering restarts the cluster tables from the global table, so right after one
# (rounds 5, 10, …, 40 here) the cluster level *is* the global level; after any other
# round a cluster's table is the average of the tables of that round's clients from the
# cluster. That is why this notebook stops after 42 rounds rather than 40.

# %%
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
Markdown('\n'.join(lines))

# %% [markdown]
# How large are the logits of each level? Their standard deviation over all items, for the first
# 256 users:

# %%
users = torch.arange(256)
for name in ('global', 'cluster', 'local'):
    engine.level_weights = settings[name]
    print(f'{name:<8} logit std {engine.scores_all(users).std():.2f}')
engine.level_weights = config.level_weights

# %% [markdown]
# The local level scores with the rows a user fine-tuned in its last round. With Adam
# (the recipe printed at the top) a local step moves each coordinate by about the
# learning rate whatever the size of its gradient, so the three levels' logits spread
# alike here. They need not: under SGD the item rows take the learning rate lr × I × η
# (PFedRec's scaling), the fine-tuned rows can move far from the global table, and a
# level whose logits spread an order of magnitude wider would decide the ranking alone.
# The engine therefore standardizes each level's scores per user before weighting them,
# so that equal weights give the three levels equal say whatever their scales.
#
# The table above shows each level alone and their combinations on this short run;
# [`docs/results.md`](../docs/results.md) compares full runs (100 rounds, 50 pre-training
# rounds, three seeds) with FedLightGCN, a global model trained without pre-training,
# clusters or local rows, and scores their final models with each level alone.
