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
# # Quickstart: PFedRec on MovieLens-100K
#
# This notebook loads MovieLens-100K as a PyG `HeteroData` graph, splits it leave-one-out,
# trains PFedRec (Zhang et al., *Dual Personalization on Federated Recommendation*,
# IJCAI 2023) and recommends ten movies to one user with the trained model.
#
# Every user is a client. Its ratings stay on its device; it trains a private score head
# and its own copy of the item rows it touches, and uploads only the changes of those item
# rows. The server averages the uploads row by row into the global item table.
#
# With `FEDGRAPH_NOTEBOOK_SMALL=1` in the environment every notebook here runs with tiny
# settings (the tests do this); the saved outputs come from the full-size settings.

# %%
# %matplotlib inline
import os
import time
import warnings

import torch

# PyTorch Geometric imports tqdm.auto, which warns in a kernel without ipywidgets.
warnings.filterwarnings('ignore', message='IProgress not found')

SMALL = os.environ.get('FEDGRAPH_NOTEBOOK_SMALL') == '1'
ROUNDS = 3 if SMALL else 30   # federated rounds (the paper trains 100)
SEED = 0
print(f'SMALL={SMALL}: {ROUNDS} rounds')

# %% [markdown]
# ## The data
#
# `load_dataset('ml-100k')` reads the ratings file (from `datasets/`, downloaded on first
# use) into a `HeteroData` with node types `user` and `item` and the edge type
# `('user', 'rates', 'item')` plus its reverse. Every rating counts as an implicit
# positive. Users and items are re-indexed `0..n-1`; the MovieLens ids are kept in
# `raw_id`. Edges are sorted by user, then by time, so each user's latest interaction is
# the last of its segment.

# %%
from fedgraph import load_dataset

data = load_dataset('ml-100k')
data

# %%
from fedgraph.describe import describe

summary = describe(data)
print(f"{summary['users']} users, {summary['items']} items, "
      f"{summary['interactions']} interactions, density {summary['density']:.4f}")
for name in ('user_degree', 'item_degree'):
    s = summary[name]
    print(f"{name:<12} min {s['min']:>4.0f}   median {s['median']:>4.0f}   "
          f"mean {s['mean']:>6.1f}   max {s['max']:>4.0f}")
print(f"mean rating {summary['mean_rating']:.2f}")

# %% [markdown]
# Every user has rated at least 20 movies; the item side is long-tailed (the median movie
# has 27 ratings, the most rated one 583).
#
# ## Leave-one-out split
#
# PFedRec's protocol: each user's latest interaction is its test item and the one before
# it its validation item; the rest is training data. Each held-out item is ranked against
# 99 items the user never rated, drawn once. HR@10 is the fraction of users whose
# held-out item is among the top 10 of these 100 candidates; NDCG@10 also rewards a
# higher position.

# %%
from fedgraph import leave_one_out_split
from fedgraph.describe import describe_split

split = leave_one_out_split(data, seed=SEED)
describe_split(split)

# %% [markdown]
# ## Training with `train`
#
# `TrainConfig` holds every hyperparameter: the settings all algorithms share (data,
# federation, privacy, run), which default to the PFedRec paper's (d = 32, all 943
# clients every round, one local epoch of mini-batches of 256, 4 sampled negatives per
# positive), and the algorithm's own section, `config.settings`, with its paper's
# defaults (printed below).
#
# `train` evaluates after every round and returns a `Run`: a `dict` of the per-round
# records and the round with the best validation HR@10 (what it writes to `metrics.json`
# when given an output folder, `out=`), which also carries the configuration
# (`run.config`), the split (`run.split`) and the trained engine (`run.engine`). While it
# trains it shows one progress bar whose text is the latest round's loss and validation
# metric, and logs each round's full summary with `logging` at level INFO;
# `progress=False`, as here, turns both off.

# %%
from fedgraph import TrainConfig, train

config = TrainConfig(algorithm='pfedrec', rounds=ROUNDS, seed=SEED)
print('PFedRec settings:', config.settings)
began = time.perf_counter()
run = train(config, split=split, progress=False)
print(f'{ROUNDS} rounds in {time.perf_counter() - began:.1f} s')
best = run['best']
print(f"best round {best['round']}: validation HR@10 {best['val']['hr@10']:.4f}; "
      f"test HR@10 {best['test']['hr@10']:.4f}, NDCG@10 {best['test']['ndcg@10']:.4f}")

# %%
from fedgraph.viz import plot_training_curves

plot_training_curves({'PFedRec': run})

# %% [markdown]
# Validation and test HR@10 after each round, and the clients' mean local training loss
# (BCE). PFedRec's curve has a characteristic shape: HR@10 is about 0.2 after the first
# round, jumps to about 0.5 after the second, stays on that plateau for about ten rounds,
# then climbs. The 100-round runs of [`docs/results.md`](../docs/results.md) (five seeds)
# reach a test HR@10 of about 0.71.
#
# ## The trained model
#
# `run.engine` is the engine `train` trained, as its last round left it: the global item
# table and every user's private state. Evaluating it again gives the last round's test
# metrics, and the last round's record says what that round cost:

# %%
from fedgraph.federated import evaluate

engine = run.engine
result = evaluate(engine, split)
last = run['rounds'][-1]
print(f"last round: {last['clients']} clients, mean local loss {last['train_loss']:.4f}, "
      f"{last['upload_bytes_per_client'] / 1024:.1f} KiB uploaded per client")
print('evaluate(run.engine):', {key: round(value, 4) for key, value in result['test'].items()})
print('the last round      :', {key: round(value, 4) for key, value in last['test'].items()})

# %% [markdown]
# ## Top 10 for one user
#
# `run.engine.scores_all(users)` returns the logits of every item for each user, computed
# with that user's own score head and its own fine-tuned item rows (PFedRec's dual
# personalization). Masking the user's training items and taking the top 10 gives its
# recommendations. Item indices map back to MovieLens movie ids through `raw_id` (the ids
# of `u.item` in the ML-100K archive, which holds the titles).

# %%
from fedgraph.data import ClientPartition

partition = ClientPartition.from_data(split.train)
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

# %% [markdown]
# Where the user's held-out items rank among all the movies it has not rated (full
# ranking, a harder test than the 100 candidates of HR@10):

# %%
order = scores.argsort(descending=True)
unseen = int((~seen).sum())
for name, item in (('validation', int(split.val_item[user])),
                   ('test', int(split.test_item[user]))):
    rank = int((order == item).nonzero()) + 1
    print(f'{name:<10} item {item:>5} (movie id {int(item_raw[item]):>4}): '
          f'rank {rank} of {unseen} unseen items')

# %% [markdown]
# `run.recommend(user, k)` does all of this in the data's own ids: a MovieLens user id in,
# movie ids out, best first. Besides the training items it leaves out the user's held-out
# validation and test items; scored by hand with those left out too, the lists agree. A
# run trained with an output folder (`train(config, out=folder)`) comes back as the same
# `Run` with `load_run(folder)`, ready to recommend.

# %%
movielens_user = int(user_raw[user])
known = scores.clone()
known[[int(split.val_item[user]), int(split.test_item[user])]] = float('-inf')
print('by hand        :', [int(item_raw[item]) for item in known.topk(10).indices.tolist()])
print('run.recommend():', run.recommend(movielens_user, 10))

# %% [markdown]
# Next: `02-perfedrec-step-by-step.ipynb` builds PerFedRec++, the graph model with
# contrastive pre-training, clusters and three levels of personalization.
