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
# # Uniformity of the embeddings
#
# Uniformity (Wang & Isola, ICML 2020) is log E exp(−2‖x̃ − ỹ‖²) over pairs of normalized
# embeddings: lower means they spread more evenly over the sphere. SimGCL (Yu et al.,
# SIGIR 2022) showed that contrastive learning makes recommendation embeddings more
# uniform, and drew it as below: project the embeddings to 2-D, normalize them onto the
# unit circle, and plot the density of the points (top) and of their angles (bottom).
# A uniform set covers the circle evenly and has a flat angle density; a collapsed set
# shows bright arcs and sharp peaks. The number in each caption is computed on the
# full 32-dimensional embeddings.
#
# Part 1 compares PerFedRec++ with and without contrastive pre-training; part 2 looks at
# PFedRec's personalized item embeddings.

# %%
# %matplotlib inline
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch

# PyTorch Geometric imports tqdm.auto, which warns in a kernel without ipywidgets.
warnings.filterwarnings('ignore', message='IProgress not found')

SMALL = os.environ.get('FEDGRAPH_NOTEBOOK_SMALL') == '1'
PRETRAIN_ROUNDS = 2 if SMALL else 20
ROUNDS = 3 if SMALL else 40
PFEDREC_ROUNDS = 2 if SMALL else 30
EVAL_EVERY = 1 if SMALL else 5
MAX_POINTS = 200 if SMALL else 1000   # rows per t-SNE projection
SEED = 0
runs_dir = Path(tempfile.mkdtemp(prefix='fedgraph-uniformity-'))
print(f'SMALL={SMALL}: PerFedRec++ {PRETRAIN_ROUNDS} + {ROUNDS} rounds, '
      f'PFedRec {PFEDREC_ROUNDS} rounds')

# %% [markdown]
# ## 1. PerFedRec++ with and without pre-training
#
# Two runs under the full-ranking protocol that differ only in `pretrain_rounds`. With an
# output folder, `train` writes the run's `config.json`, `metrics.json` and `metrics.csv`
# (the per-round records), `checkpoint.pt`, the split it was given (`split.pt`, from which
# `load_run` rebuilds the run) and, for graph models, `embeddings.pt`.

# %%
from fedgraph import TrainConfig, load_dataset, ratio_split, train

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

# %%
from fedgraph.viz import plot_training_curves

plot_training_curves(metrics)

# %% [markdown]
# Both runs start almost uniform (the random initialization is). Federated training then
# concentrates the embeddings: the item uniformity rises towards 0 throughout, the user
# uniformity over the first rounds before it falls back part of the way. The pre-trained
# run concentrates more slowly and ends more uniform, and after the first evaluation its
# Recall@20 is the higher one at every evaluation. Its LDP budget starts higher: every
# pre-training round in which a client is selected counts as one more upload.
#
# The final embeddings, from each run's `embeddings.pt` (`user_final` and `item_final`
# are the propagated vectors of the global model), projected with t-SNE:

# %%
from fedgraph.viz import plot_uniformity

saved = {label: torch.load(folder / 'embeddings.pt') for label, folder in folders.items()}
print('embeddings.pt holds:', sorted(saved['with pre-training']))
plot_uniformity({'with pre-training: users': saved['with pre-training']['user_final'],
                 'with pre-training: items': saved['with pre-training']['item_final'],
                 'without: users': saved['without']['user_final'],
                 'without: items': saved['without']['item_final']},
                method='tsne', max_points=MAX_POINTS)

# %% [markdown]
# Compare the columns in pairs (users with users, items with items). t-SNE preserves
# neighbourhoods, not distances: every panel shows clumps, and the pictures differ less
# than the numbers in their captions, which are the measurement (on the plotted subset of
# at most `MAX_POINTS` rows): with pre-training both the users and the items are more
# uniform, the items by more.
#
# ## 2. PFedRec: global and personalized item embeddings
#
# PFedRec's dual personalization gives each user its own view of the item table: the
# global table with the rows it fine-tuned in its last round replaced by its own copies.
# `personalized_views(run)` reads them from a run's checkpoint: the global rows and the
# views of the four users with the most fine-tuned rows, over the items those users
# touched.

# %%
from fedgraph import leave_one_out_split
from fedgraph.viz import personalized_views, plot_personalized_views

pfedrec_dir = runs_dir / 'pfedrec'
pfedrec = train(TrainConfig(algorithm='pfedrec', rounds=PFEDREC_ROUNDS, seed=SEED),
                out=pfedrec_dir, split=leave_one_out_split(data, seed=SEED), progress=False)
global_rows, views = personalized_views(pfedrec_dir)
print(f'{global_rows.size(0)} item rows; users: {list(views)}')
plot_personalized_views(global_rows, views)

# %% [markdown]
# Left: the global rows (black) and each user's fine-tuned rows (colours) on the top two
# principal components of the global rows. Right: how far each user's rows moved from the
# global ones. Each user's rows spread along one line through the global cloud: PFedRec's
# score is w_c · e + b_c, whose gradient with respect to an item row e is w_c, so every
# local step moves the user's rows along ±w_c. The item learning rate is large
# (0.1 × 1682 × 80), so one local epoch moves them far. Active users fine-tune almost
# every row: their positives plus four sampled negatives for each.
#
# The uniformity of the global rows against the first user's view of the same rows:

# %%
user = next(iter(views))
tuned = (views[user] != global_rows).any(dim=1)
print(f'{user} fine-tuned {int(tuned.sum())} of these {tuned.numel()} rows')
plot_uniformity({'global items': global_rows, f'{user} view': views[user]},
                method='tsne', max_points=MAX_POINTS)

# %%
shutil.rmtree(runs_dir)

# %% [markdown]
# The user's view is less uniform than the global table: its rows are stretched along
# its own direction w_c, which is exactly what lets its head separate the items it likes
# from the others.
