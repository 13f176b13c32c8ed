"""The two halves of a deployment without Flower: a server and devices in one process
(:class:`LocalTransport`) end every round with the in-process engine's numbers, for every
registered federated algorithm, through the algorithms' own client and server halves."""
import pytest
import torch

from fedgraph.algorithms import algorithm_names, resolve
from fedgraph.config import TrainConfig
from fedgraph.data import ClientPartition
from fedgraph.federated.node import Node
from fedgraph.server.deployment import Deployment, LocalTransport
from fedgraph.training import prepare_split, train

FEDERATED = [name for name in algorithm_names() if resolve(name).federated]
SMALL = dict(dataset='synthetic', seed=0, rounds=2, dim=8, client_streams=True)
EXTRA = {'perfedrec++': dict(pretrain_rounds=2, num_clusters=3, cluster_every=1),
         'fedncf': dict(hidden=(8, 4)),
         # some users train in neither round: they score with the initial tables
         'gpfedrec': dict(hidden=(8, 4), client_ratio=0.3),
         'fedrap': dict(client_ratio=0.3, local_epochs=3)}


def _devices(config, num_devices):
    split = prepare_split(config)
    population = (split, ClientPartition.from_data(split.train), split.known_items())
    return {node: Node.from_split(config, *population, node, num_devices)
            for node in range(num_devices)}


def test_every_federated_algorithm_is_tested():
    assert {'pfedrec', 'fedmf', 'fedncf', 'fedlightgcn', 'perfedrec++', 'gpfedrec',
            'fedrap'} <= set(FEDERATED)
    assert 'mf' not in FEDERATED


@pytest.mark.parametrize('algorithm', FEDERATED)
def test_server_and_devices_match_the_in_process_engine(algorithm):
    config = TrainConfig(algorithm=algorithm, **SMALL, **EXTRA.get(algorithm, {}))
    transport = LocalTransport(_devices(config, 3))
    deployed = Deployment(config, transport).run(progress=False)
    in_process = train(config, progress=False)
    assert len(deployed['rounds']) == len(in_process['rounds']) == 2
    for ours, theirs in zip(deployed['rounds'], in_process['rounds']):
        assert ours['clients'] == theirs['clients']
        assert ours['train_loss'] == pytest.approx(theirs['train_loss'], rel=1e-6)
        assert ours['upload_bytes_per_client'] == pytest.approx(theirs['upload_bytes_per_client'])
        assert ours['privacy'] == theirs['privacy']
        for split in ('val', 'test'):
            for metric in ('hr@10', 'ndcg@10'):
                assert ours[split][metric] == pytest.approx(theirs[split][metric], abs=1e-6)
    if 'pretraining' in in_process:
        assert deployed['pretraining']['loss'] == pytest.approx(
            in_process['pretraining']['loss'], rel=1e-6)


def test_server_side_noise_and_early_stopping_match_the_in_process_run():
    config = TrainConfig(algorithm='fedmf', **{**SMALL, 'rounds': 30}, clip=0.5, ldp_scale=0.1,
                         noise_at='server', patience=1, clients_per_round=20)
    deployed = Deployment(config, LocalTransport(_devices(config, 2))).run(progress=False)
    in_process = train(config, progress=False)
    assert deployed['stopped_early'] and in_process['stopped_early']
    assert len(deployed['rounds']) == len(in_process['rounds']) < 30
    for ours, theirs in zip(deployed['rounds'], in_process['rounds']):
        assert ours['train_loss'] == pytest.approx(theirs['train_loss'], rel=1e-6)
        assert ours['test']['hr@10'] == pytest.approx(theirs['test']['hr@10'], abs=1e-6)


def test_devices_keep_private_state_and_upload_only_what_they_touched():
    config = TrainConfig(algorithm='fedncf', **SMALL, hidden=(8, 4))
    devices = _devices(config, 2)
    server = Deployment(config, LocalTransport(devices))
    server.start(progress=False)
    payloads = server.configure_round()
    node, payload = next(iter(payloads.items()))
    assert set(payload) >= {'items', 'users', 'round-seed', 'dense/layers.0.weight'}
    assert not any(key.startswith('private/') for key in payload)
    reply = devices[node].handle('train', payload)
    held = devices[node].users
    assert torch.isin(reply['row-user'], held).all()
    assert reply['dense/layers.0.weight'].shape == (payload['users'].numel(), 8, 16)
    # The private user embeddings never leave the device: nothing in the reply has their
    # shape but the MLP's and rows' tensors.
    assert 'user' not in reply and not any(key.startswith('private/') for key in reply)


def test_the_server_refuses_what_it_cannot_run():
    with pytest.raises(ValueError, match='centralized'):
        Deployment(TrainConfig(algorithm='mf'), LocalTransport({}))
    with pytest.raises(ValueError, match='sampled protocol'):
        Deployment(TrainConfig(protocol='full'), LocalTransport({}))


def test_a_deployment_writes_its_run_folder_as_an_in_process_run_does(tmp_path):
    """The loop's run folder for a deployment: config.json (with what it ran), metrics.json
    and metrics.csv; no checkpoint (its nodes hold their own state, so it cannot resume),
    and a second run into the same folder is refused."""
    import json

    config = TrainConfig(algorithm='fedmf', **SMALL)
    Deployment(config, LocalTransport(_devices(config, 2))).run(tmp_path / 'run',
                                                                 progress=False)
    written = sorted(path.name for path in (tmp_path / 'run').iterdir()
                     if not path.name.startswith('.'))
    assert written == ['config.json', 'metrics.csv', 'metrics.json']
    assert json.loads((tmp_path / 'run' / 'config.json').read_text())['ran']['server'] == 'mean'
    with pytest.raises(FileExistsError, match='holds a run already'):
        Deployment(config, LocalTransport(_devices(config, 2))).run(tmp_path / 'run',
                                                                     progress=False)


@pytest.mark.parametrize('algorithm', ['pfedrec', 'fedncf'])
def test_secure_aggregation_over_messages_matches_the_in_process_engine(algorithm):
    """Each node answers the sum of its users' encoded vectors, noised with their shares of
    distributed DP; the transport sums the nodes' answers securely: every round and the item
    table end as in-process, where each user is a party of its own."""
    config = TrainConfig(algorithm=algorithm, **SMALL, **EXTRA.get(algorithm, {}),
                         secure_aggregation=True, dp_epsilon=4.0, dp_noise_at='distributed')
    server = Deployment(config, LocalTransport(_devices(config, 3)))
    deployed = server.run(progress=False)
    in_process = train(config, progress=False)
    for ours, theirs in zip(deployed['rounds'], in_process['rounds']):
        assert ours['train_loss'] is None and theirs['train_loss'] is None
        assert ours['privacy'] == theirs['privacy']
        assert ours['test'] == pytest.approx(theirs['test'], abs=1e-9)


def test_graph_models_refuse_secure_aggregation_over_messages():
    config = TrainConfig(algorithm='fedlightgcn', **SMALL, secure_aggregation=True)
    with pytest.raises(ValueError, match='in-process only'):
        Deployment(config, LocalTransport(_devices(config, 2))).run(progress=False)
