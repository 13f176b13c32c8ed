"""Helpers shared by the test modules: small synthetic engines, candidate lists, metrics files
and interrupted training runs. (Shared fixtures: ``conftest.py``.)"""
import contextlib
import functools
import json
import re

import pytest
import torch

import fedgraph.server.inprocess
import fedgraph.training
from fedgraph.config import TrainConfig
from fedgraph.data import ClientPartition, leave_one_out_split, synthetic_interactions
from fedgraph.federated import ClientSelector, LocalTraining
from fedgraph.nn import DotProductHead, FederatedRecommender, LinearScoreHead
from fedgraph.privacy.upload import UploadTransform
from fedgraph.server.stages import Mean, ServerPipeline, WeightedMean

# --------------------------------------------------------------------------------------
# Small synthetic engines
# --------------------------------------------------------------------------------------
# algorithm -> the private head its model uses
HEADS = {'fedmf': 'dot', 'pfedrec': 'linear'}


def engine_data(num_users, num_items, mean_degree, seed):
    """(split, training partition, known items) of a small synthetic data set."""
    split = leave_one_out_split(synthetic_interactions(
        num_users=num_users, num_items=num_items, mean_degree=mean_degree, seed=seed))
    return split, ClientPartition.from_data(split.train), split.known_items()


def make_model(head, num_clients, num_items, dim, seed=0):
    """A seeded ``FederatedRecommender``: ``head='linear'`` is PFedRec's (a shared linear
    score head, item table std 1), ``head='dot'`` FedMF's (dot product, std ``dim^-1/2``)."""
    generator = torch.Generator().manual_seed(seed)
    if head == 'linear':
        head = LinearScoreHead(num_clients, dim, generator=generator)
        return FederatedRecommender(num_items, head, init_std=1.0, generator=generator)
    head = DotProductHead(num_clients, dim, std=dim ** -0.5, generator=generator)
    return FederatedRecommender(num_items, head, init_std=dim ** -0.5, generator=generator)


def local_training(algorithm, num_items, local_epochs=1, clip=None, batch_size=32):
    """The local training of ``algorithm`` ('pfedrec' or 'fedmf') on ``num_items`` items."""
    personal = algorithm == 'pfedrec'
    # PFedRec's item lr (lr x num_items x 80); FedMF a milder one that keeps the logits away
    # from saturation, where BCE on sigmoid outputs (reference) and BCE on logits (vectorized)
    # round differently.
    item_lr = 0.1 * num_items * 80 if personal else 0.1 * num_items
    return LocalTraining(lr=0.1, item_lr=item_lr, batch_size=batch_size,
                         local_epochs=local_epochs, num_negatives=4, alternating=personal,
                         personalize_items=personal, upload=UploadTransform(clip=clip))


def make_engine(cls, data, algorithm, dim, ratio=None, seed=0, weighted=False, **training):
    """An engine of class ``cls`` (``FederatedEngine`` or ``ReferenceEngine``) training
    ``algorithm`` on ``data`` (as ``engine_data`` returns it), with a model of ``seed``,
    aggregating by FedAvg (``weighted``: by sample count)."""
    _, partition, known = data
    model = make_model(HEADS[algorithm], partition.num_clients, partition.num_items, dim, seed)
    server = ServerPipeline(WeightedMean() if weighted else Mean())
    return cls(model, partition, local_training(algorithm, partition.num_items, **training),
               ClientSelector(partition.num_clients, ratio=ratio), known, server=server)


def candidates(split, which='val'):
    """Each user's sampled-protocol candidates: the held-out item, then its negatives."""
    positive = split.val_item if which == 'val' else split.test_item
    negatives = split.val_negatives if which == 'val' else split.test_negatives
    return torch.cat([positive.unsqueeze(1), negatives], dim=1)


# --------------------------------------------------------------------------------------
# Training runs
# --------------------------------------------------------------------------------------
def read_metrics(path):
    """The metrics.json of the run folder ``path``."""
    return json.loads((path / 'metrics.json').read_text())


def without_seconds(metrics):
    """The metrics with every per-round 'seconds' field removed (each checked >= 0)."""
    metrics = json.loads(json.dumps(metrics))
    for record in metrics['rounds']:
        assert record.pop('seconds') >= 0
    return metrics


def train_interrupted(monkeypatch, config, at_call=3, **kwargs):
    """Runs ``train(config, **kwargs)`` with the in-process evaluation
    (``fedgraph.server.inprocess.evaluate``) raising ``KeyboardInterrupt`` on its
    ``at_call``-th call, checks that the interruption reached the caller, and puts the real
    ``evaluate`` back."""
    real_evaluate = fedgraph.server.inprocess.evaluate
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == at_call:
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(fedgraph.server.inprocess, 'evaluate', interrupted)
    with pytest.raises(KeyboardInterrupt):
        fedgraph.training.train(config, **kwargs)
    monkeypatch.setattr(fedgraph.server.inprocess, 'evaluate', real_evaluate)


class HostilePayload:
    """What a hostile run file holds: unpickling it would create the file ``target``."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, 'w'))


@contextlib.contextmanager
def cli_misuse(capsys, match):
    """The command run inside ends as argparse ends on a bad flag: exit status 2, the usage
    line and an error matching ``match`` on stderr, no traceback; the dict it yields holds
    that stderr as ``'err'`` afterwards."""
    caught = {}
    with pytest.raises(SystemExit) as raised:
        yield caught
    assert raised.value.code == 2
    err = caught['err'] = capsys.readouterr().err
    assert err.startswith('usage: fedgraph') and 'Traceback' not in err, err
    assert re.search(match, err), err


def write_small_csv(path, num_users=30, num_items=200, per_user=15):
    """A ``user,item`` CSV file of ``num_users`` users with ``per_user`` random items each
    (of ``num_items``); returns ``path``."""
    generator = torch.Generator().manual_seed(0)
    lines = ['user,item'] + [f'{u},{int(i)}' for u in range(num_users)
                             for i in torch.randperm(num_items, generator=generator)[:per_user]]
    path.write_text('\n'.join(lines) + '\n')
    return path


def algorithm_engine(data, algorithm, engine, **settings):
    """``algorithm``'s in-process engine (``engine``: ``'vectorized'`` or ``'reference'``) on
    ``data`` (:func:`engine_data`), d = 8, mini-batches of 16, initialized from seed 0."""
    _, partition, known = data
    config = TrainConfig(algorithm=algorithm, dim=8, batch_size=16, engine=engine, **settings)
    return config.build_algorithm().build_engine(partition, torch.Generator().manual_seed(0),
                                                 known)


def assert_engines_agree(fast, slow, split, atol, rounds=3, state=lambda engine: []):
    """Runs ``rounds`` rounds of both engines from one seed and checks that training moved
    the shared table and that both agree within ``atol``: the shared table, the private
    parameters, ``state(engine)``'s tensors, every round's loss and clients, and the scores
    of the test candidates."""
    initial = fast.model.item.detach().clone()
    stats = []
    for engine in (fast, slow):
        generator = torch.Generator().manual_seed(5)
        stats.append([engine.run_round(generator) for _ in range(rounds)])
    assert (fast.model.item - initial).abs().max() > 1e-2  # not vacuous
    close = functools.partial(torch.testing.assert_close, atol=atol, rtol=0)
    close(fast.model.item, slow.model.item)
    for ours, theirs in zip(state(fast), state(slow)):
        close(ours, theirs)
    for name, value in fast.model.private_parameters().items():
        close(value, slow.model.private_parameters()[name])
    for a, b in zip(*stats):
        assert a.loss == pytest.approx(b.loss, abs=atol) and a.num_clients == b.num_clients
    users = torch.arange(split.train['user'].num_nodes)
    close(fast.scores(users, candidates(split, 'test')),
          slow.scores(users, candidates(split, 'test')))


def train_and_export(tmp_path, algorithm):
    """Trains ``algorithm`` for 3 rounds on a small CSV from the command line, checks that a
    user's exported model scores every item as the engine does, and returns the run."""
    from fedgraph.cli import main
    from fedgraph.export import DeviceModel
    from fedgraph.run import load_run

    data = write_small_csv(tmp_path / 'data.csv')
    out = tmp_path / 'run'
    main(['train', '--algorithm', algorithm, '--dataset', 'csv', '--data-path', str(data),
          '--eval-negatives', '20', '--rounds', '3', '--dim', '8', '--out', str(out),
          '--quiet'])
    run = load_run(out)
    user = run.split.train['user'].raw_id[3]
    user = user.item() if isinstance(user, torch.Tensor) else user
    exported = DeviceModel.load(run.export(user, tmp_path / 'user.pt'))
    torch.testing.assert_close(exported.scores(), run.engine.scores_all(torch.tensor([3]))[0])
    return run
