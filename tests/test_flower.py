"""fedgraph on Flower: records, the device state, Flower's simulation engine, and a real
deployment (SuperLink and SuperNodes as separate processes) with a SuperNode killed."""
import copy
import json
import math
import subprocess
import sys
import uuid
from types import SimpleNamespace

import numpy as np
import pytest
import torch

pytest.importorskip('flwr')
from flwr.app import ConfigRecord, Context, MessageType, RecordDict
from flwr.serverapp import Grid

from fedgraph.config import TrainConfig
from fedgraph.data import ClientPartition
from fedgraph.federated.node import Node
from fedgraph.server.deployment import Deployment, LocalTransport
from fedgraph.flower.deploy import deploy, write_app
from fedgraph.flower.certificates import write_credentials
from fedgraph.flower.client import make_client_app
from fedgraph.flower.payloads import (config_to_run_config, from_record, load,
                                     run_config_to_config, store, to_content, to_record)
from fedgraph.flower.server import FlowerTransport, PollingGrid
from fedgraph.flower.simulation import simulate
from fedgraph.training import build_run, prepare_split, train

# A small synthetic population (1,000 users, 2,000 items) and client streams: the in-process
# engine then makes exactly the draws the devices make.
CONFIG = dict(dataset='synthetic', seed=0, client_streams=True)


def _rounds_match(flower, in_process, rounds):
    """Flower's metrics.json against the in-process run's, round by round. Stated
    tolerance: training loss within 1e-5 relative, HR@10 within one user in 1,000 and
    NDCG@10 within 1e-3 (the sums over users are taken in another order; a rank could flip
    on a tie). Measured: equal to ~1e-16."""
    assert len(flower['rounds']) == len(in_process['rounds']) == rounds
    for ours, theirs in zip(flower['rounds'], in_process['rounds']):
        assert ours['clients'] == theirs['clients']
        if theirs['train_loss'] is None:  # not reported (distributed DP)
            assert ours['train_loss'] is None
        else:
            assert ours['train_loss'] == pytest.approx(theirs['train_loss'], rel=1e-5)
        for split in ('val', 'test'):
            assert abs(ours[split]['hr@10'] - theirs[split]['hr@10']) <= 1e-3 + 1e-12
            assert ours[split]['ndcg@10'] == pytest.approx(theirs[split]['ndcg@10'], abs=1e-3)
        assert ours['upload_bytes_per_client'] == pytest.approx(theirs['upload_bytes_per_client'])


def test_configuration_survives_the_run_config():
    config = TrainConfig(algorithm='fedmf', dataset='synthetic', rounds=7, clip=0.5,
                         ldp_scale=0.1, client_streams=True, protocol='full',
                         split_ratios=(0.7, 0.2, 0.1))
    run_config = config_to_run_config(config)
    assert all(isinstance(v, (bool, int, float, str)) for v in run_config.values())
    assert run_config_to_config(run_config) == config
    # Extra keys are the apps' own settings; TOML integers are accepted for float fields.
    assert run_config_to_config({**run_config, 'out': '/x', 'lr': 2}).lr == 2.0


def test_tensors_survive_a_record():
    tensors = {'a': torch.randn(3, 4), 'b': torch.arange(5), 'c': torch.empty(0, 2)}
    back = from_record(to_record(tensors))
    for name, value in tensors.items():
        assert torch.equal(back[name], value) and back[name].dtype == value.dtype


def test_devices_partition_the_users_and_survive_their_state():
    config = TrainConfig(**CONFIG)
    split = prepare_split(config)
    population = (split, ClientPartition.from_data(split.train), split.known_items())
    devices = [Node.from_split(config, *population, p, 3) for p in range(3)]
    users = torch.sort(torch.cat([d.users for d in devices])).values
    assert torch.equal(users, torch.arange(split.val_item.numel()))
    device = devices[1]
    assert torch.equal(device.candidates['test'][:, 0], split.test_item[device.users])
    device.private = {'weight': torch.randn(device.users.numel(), 32)}
    state = RecordDict()
    store(state, device.to_state(), 'device-')
    back = Node.from_state(config, load(state, 'device-'))
    assert torch.equal(back.users, device.users)
    assert torch.equal(back.train.col, device.train.col)
    assert torch.equal(back.known.ptr, device.known.ptr)
    assert torch.equal(back.private['weight'], device.private['weight'])
    with pytest.raises(ValueError, match='partition 3 of 3'):
        Node.from_split(config, *population, 3, 3)


# A ClientApp process answering a training message after its first: it loads the device from
# its state, trains and writes the reply; it prints the PyTorch Geometric modules it imported.
TRAIN_FROM_STATE = """
import json, sys, torch
from fedgraph.config import TrainConfig
from fedgraph.flower.client import make_client_app
from fedgraph.federated.node import Node
saved = torch.load(sys.argv[2], weights_only=True)
device = Node.from_state(TrainConfig(**json.loads(sys.argv[1])), saved['state'])
torch.save(device.handle('train', saved['payload']), sys.argv[3])
print(sorted(name for name in sys.modules if name.split('.')[0] == 'torch_geometric'))
"""


@pytest.mark.parametrize('algorithm', ['pfedrec', 'fedmf'])
def test_a_device_trains_from_its_state_without_pytorch_geometric(tmp_path, algorithm):
    """Flower starts a process per message: one that only trains must not pay for PyTorch
    Geometric's import (about a second and a half, most of it ``torch._dynamo``)."""
    settings = dict(CONFIG, algorithm=algorithm)
    config = TrainConfig(**settings)
    split = prepare_split(config)
    population = (split, ClientPartition.from_data(split.train), split.known_items())
    devices = {p: Node.from_split(config, *population, p, 2) for p in range(2)}
    server = Deployment(config, LocalTransport(devices))
    server.start(progress=False)
    payload = server.configure_round()[0]
    torch.save({'state': devices[0].to_state(), 'payload': payload}, tmp_path / 'saved.pt')
    done = subprocess.run([sys.executable, '-c', TRAIN_FROM_STATE, json.dumps(settings),
                           str(tmp_path / 'saved.pt'), str(tmp_path / 'reply.pt')],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == '[]'
    reply = torch.load(tmp_path / 'reply.pt', weights_only=True)
    expected = devices[0].handle('train', payload)
    assert set(reply) == set(expected)
    for name, value in expected.items():
        assert torch.equal(torch.as_tensor(reply[name]), torch.as_tensor(value)), name


def test_a_device_rejects_users_it_does_not_hold():
    config = TrainConfig(**CONFIG)
    split = prepare_split(config)
    device = Node.from_split(config, split, ClientPartition.from_data(split.train),
                               split.known_items(), 0, 4)
    device.private = {'weight': torch.zeros(device.users.numel(), 32),
                      'bias': torch.zeros(device.users.numel())}
    with pytest.raises(ValueError, match='does not hold'):
        device.handle('train', {'items': torch.zeros(2000, 32), 'users': torch.tensor([1]),
                                'round-seed': 0})


@pytest.mark.parametrize('settings, message', [
    (dict(protocol='full'), 'sampled protocol only'),
    (dict(algorithm='mf'), 'centralized')])
def test_the_server_app_refuses_what_it_cannot_run(settings, message):
    from fedgraph.flower.server import FlowerTransport

    with pytest.raises(ValueError, match=message):
        Deployment(TrainConfig(**settings), FlowerTransport(grid=None, timeout=1.0))


def test_write_app_names_fedgraphs_apps_and_the_run_config(tmp_path):
    import tomllib

    path = write_app(tmp_path, TrainConfig(rounds=4, clip=0.5), out='/runs/x', timeout=9.0)
    app = tomllib.loads(path.read_text())['tool']['flwr']['app']
    assert app['components'] == {'serverapp': 'fedgraph.flower.apps:serverapp',
                                 'clientapp': 'fedgraph.flower.apps:clientapp'}
    assert app['config']['rounds'] == 4 and app['config']['clip'] == 0.5
    assert app['config']['out'] == '/runs/x'


@pytest.mark.parametrize('algorithm, settings', [
    ('pfedrec', {}), ('fedmf', {}), ('fedncf', dict(hidden=(8, 4))), ('fedlightgcn', {}),
    # Pre-training, and clusters from the first round on, so that cluster tables and levels
    # are exercised.
    ('perfedrec++', dict(pretrain_rounds=2, num_clusters=3, cluster_every=1)),
    ('gpfedrec', dict(hidden=(8, 4))), ('fedrap', dict(local_epochs=2))])
def test_flower_simulation_matches_the_in_process_engine(tmp_path, algorithm, settings):
    config = TrainConfig(algorithm=algorithm, rounds=2, **CONFIG, **settings)
    flower = simulate(config, num_nodes=4, out=tmp_path, progress=False)
    in_process = train(config, progress=False)
    _rounds_match(flower['metrics'], in_process, rounds=2)
    for ours, theirs in zip(flower['metrics']['rounds'], in_process['rounds']):
        assert ours['privacy'] == theirs['privacy']
    if 'pretraining' in in_process:
        assert flower['metrics']['pretraining']['loss'] == pytest.approx(
            in_process['pretraining']['loss'], rel=1e-5)


def test_local_deployment_matches_the_in_process_engine_and_counts_its_bytes(tmp_path):
    config = TrainConfig(rounds=2, **CONFIG)
    result = deploy(config, num_nodes=3, workdir=tmp_path, timeout=120, run_timeout=600)
    metrics = result['metrics']
    _rounds_match(metrics, train(config, progress=False), rounds=2)
    # What crossed the wire covers what the messages carried, with a bounded overhead.
    payload_up = sum(r['payload_upload_bytes_per_client'] * r['clients']
                     for r in metrics['rounds'])
    wire_up = sum(node['up'] for node in result['wire'])
    assert payload_up <= wire_up <= 1.5 * payload_up
    table = 2000 * 32 * 4
    wire_down = sum(node['down'] for node in result['wire'])
    assert 3 * 2 * 2 * table <= wire_down  # each node: the table to train and to evaluate


def test_process_isolation_runs_each_message_in_a_clientapp_of_the_deployments_superexec(
        tmp_path):
    config = TrainConfig(rounds=2, **CONFIG)
    result = deploy(config, num_nodes=2, workdir=tmp_path, timeout=120, run_timeout=600,
                    isolation='process')
    _rounds_match(result['metrics'], train(config, progress=False), rounds=2)
    logs = tmp_path / 'logs'
    for partition in range(2):
        node_log = (logs / f'supernode-{partition}.log').read_text()
        executor_log = (logs / f'superexec-{partition}.log').read_text()
        # Flower 1.42: one flwr-clientapp process per message, started by the SuperExec the
        # deployment runs, none by the SuperNode.
        assert 'Start `flwr-clientapp` process' not in node_log
        messages = node_log.count('Receiving: ')
        assert messages >= 2 * 2  # a train and an evaluate message per round
        assert executor_log.count('Start `flwr-clientapp` process') == messages


def test_a_killed_supernode_does_not_stop_the_run(tmp_path):
    config = TrainConfig(rounds=2, **CONFIG)
    result = deploy(config, num_nodes=3, workdir=tmp_path, timeout=45,
                    kill_after_round=1, kill_partition=0, run_timeout=600)
    rounds = result['metrics']['rounds']
    assert len(rounds) == 2
    assert rounds[0]['clients'] == 1000 and not rounds[0]['nodes_failed']
    # Partition 0 held users 0, 3, ..., 999: 334 of them.
    assert rounds[-1]['clients'] == 1000 - 334 and len(rounds[-1]['nodes_failed']) == 1
    assert rounds[-1]['clients_selected'] == 1000
    assert math.isfinite(rounds[-1]['train_loss'])
    assert 0 < rounds[-1]['test']['hr@10'] <= 1


def test_the_app_command_writes_a_flower_app_with_client_streams(tmp_path, capsys):
    import tomllib

    from fedgraph.cli import main

    main(['flower', 'app', str(tmp_path / 'app'), '--algorithm', 'fedmf', '--rounds', '4',
          '--out', str(tmp_path / 'runs'), '--min-nodes', '5'])
    config = tomllib.loads((tmp_path / 'app' / 'pyproject.toml').read_text())
    config = config['tool']['flwr']['app']['config']
    assert config['algorithm'] == 'fedmf' and config['rounds'] == 4
    assert config['client-streams'] is True and config['min-nodes'] == 5
    assert config['out'] == str((tmp_path / 'runs').resolve())
    assert 'flwr run' in capsys.readouterr().out


class SlowGrid:
    """Replies to message ``i`` from the ``answers_at[i]``-th pull on (``None``: never);
    counts the pulls."""

    def __init__(self, answers_at):
        self.answers_at = answers_at
        self.pulls = 0

    def push_messages(self, messages):
        return [str(i) for i, _ in enumerate(messages)]

    def pull_messages(self, message_ids):
        self.pulls += 1
        return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=i))
                for i in sorted(message_ids)
                if self.answers_at[int(i)] is not None and self.answers_at[int(i)] <= self.pulls]


def test_the_polling_grid_collects_every_reply_as_it_arrives():
    slow = SlowGrid([1, 3, 2])
    replies = PollingGrid(slow, interval=0.001).send_and_receive(['a', 'b', 'c'])
    assert [reply.metadata.reply_to_message_id for reply in replies] == ['0', '2', '1']
    assert slow.pulls == 3  # stops asking once all are in


def test_the_polling_grid_gives_up_at_the_timeout_with_the_replies_it_has():
    slow = SlowGrid([1, None])
    replies = PollingGrid(slow, interval=0.001).send_and_receive(['a', 'b'], timeout=0.05)
    assert [reply.metadata.reply_to_message_id for reply in replies] == ['0']
    assert slow.pulls >= 2  # asked again before the deadline
    with pytest.raises(ValueError, match='positive'):
        PollingGrid(slow, interval=0)


def test_the_deploy_comparison_shows_the_largest_difference_per_round():
    from fedgraph.cli.flower import _comparison

    def record(round_index, loss, evaluated=True):
        out = {'round': round_index, 'clients': 3, 'train_loss': loss}
        if evaluated:
            out.update(val={'hr@10': 0.5}, test={'hr@10': 0.25, 'ndcg@10': 0.125})
        return out

    table = _comparison([record(0, 0.5), record(1, 0.25, False)],
                        [record(0, 0.5 + 1e-3), record(1, 0.25)]).splitlines()
    assert table[2].endswith('| 1.0e-03 |') and '0.1250' in table[2]
    assert table[3].endswith('| 0.0e+00 |')


class InProcessGrid(Grid):
    """A ``Grid`` that hands each message to the ``ClientApp`` of its node in this process
    (node ``100 + p`` holds partition ``p``), node 100's train replies through ``tamper``:
    Flower's messages, records and strategy loop without processes (a message is answered
    when it is pushed)."""

    run = None

    def __init__(self, app, num_nodes, tamper):
        self.app, self.tamper = app, tamper
        self.replies = {}
        self.contexts = {100 + p: Context(run_id=1, node_id=100 + p, state=RecordDict(),
                                          node_config={'partition-id': p,
                                                       'num-partitions': num_nodes},
                                          run_config={})
                         for p in range(num_nodes)}

    def get_node_ids(self):
        return list(self.contexts)

    def push_messages(self, messages):
        """Answers every message at once; its reply waits for :meth:`pull_messages`."""
        ids = []
        for message in messages:
            message.metadata.__dict__['_message_id'] = str(uuid.uuid4())  # as Flower's grids do
            # Each node gets its own copy of the content, as it would over the wire (SecAgg+'s
            # mod edits the records it receives; its workflow sends one to every node).
            message.content = copy.deepcopy(message.content)
            node = message.metadata.dst_node_id
            reply = self.app(message, self.contexts[node])
            if node == 100 and message.metadata.message_type == MessageType.TRAIN:
                reply = self.tamper(reply)
            self.replies[message.metadata.message_id] = reply
            ids.append(message.metadata.message_id)
        return ids

    def pull_messages(self, message_ids):
        return [self.replies.pop(i) for i in message_ids if i in self.replies]

    def send_and_receive(self, messages, *, timeout=None):
        raise NotImplementedError

    def set_run(self, run_id):
        raise NotImplementedError

    def create_message(self, *args, **kwargs):
        raise NotImplementedError


@pytest.fixture
def task_identity():
    """The run and node identity Flower's Message needs outside a running ServerApp."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id
    TaskIdentity.run_id = TaskIdentity.node_id = TaskIdentity.task_id = 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


def _payload_tamper(change):
    def tamper(reply):
        payload = load(reply.content)
        change(payload)
        reply.content = to_content(payload)
        return reply
    return tamper


def _undecodable(reply):
    reply.content = RecordDict({'arrays': ConfigRecord({'update': 'not an array'})})
    return reply


@pytest.mark.parametrize('tamper, dropped, node_left_out', [
    (_payload_tamper(lambda p: p['update'].__setitem__(0, float('nan'))),
     {'non_finite': 1}, False),
    (_payload_tamper(lambda p: p['update'].__setitem__(0, 1e30)), {'non_finite': 1}, False),
    (_payload_tamper(lambda p: p['row-item'].__setitem__(0, -5)), {'bad_item': 1}, False),
    (_payload_tamper(lambda p: p.__setitem__('users', p['users'] + 1)),
     {'not_selected': 250}, False),
    (_undecodable, {}, True)])
def test_a_hostile_client_app_on_flower_is_dropped_and_the_run_goes_on(
        task_identity, tamper, dropped, node_left_out):
    """Node 100 of four tampers with its Flower train replies (250 users each): a NaN or
    huge row, an unknown item, another node's users, a record that does not decode. The
    strategy drops what it must, counts it, and the model stays finite."""
    config = TrainConfig(rounds=2, dim=8, **CONFIG)
    transport = FlowerTransport(PollingGrid(InProcessGrid(make_client_app(config), 4, tamper)),
                                timeout=5)
    server = Deployment(config, transport)
    metrics = server.run(progress=False)
    for record in metrics['rounds']:
        assert record['uploads_dropped'] == dropped
        assert record['clients'] == (750 if node_left_out else 1000 - sum(dropped.values()))
        assert 0 < record['val']['hr@10'] <= 1
    assert torch.isfinite(server.federated.model.item).all()


def test_the_local_credentials_chain_to_their_authority(tmp_path):
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import (load_ssh_private_key,
                                                              load_ssh_public_key)

    credentials = write_credentials(tmp_path, num_nodes=2)
    ca = x509.load_pem_x509_certificate(credentials.ca_certificate.read_bytes())
    link = x509.load_pem_x509_certificate(credentials.superlink_certificate.read_bytes())
    link.verify_directly_issued_by(ca)  # raises when the signature does not verify
    names = link.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address('127.0.0.1') in names.get_values_for_type(x509.IPAddress)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert credentials.superlink_key.stat().st_mode & 0o777 == 0o600
    publics = []
    for node in range(2):
        key = load_ssh_private_key(credentials.node_keys[node].read_bytes(), None)
        public = load_ssh_public_key(credentials.node_public_key(node).read_bytes())
        assert isinstance(key.curve, ec.SECP384R1)
        assert key.public_key().public_numbers() == public.public_numbers()
        assert credentials.node_keys[node].stat().st_mode & 0o777 == 0o600
        publics.append(public.public_numbers())
    assert publics[0] != publics[1]


def test_a_supernode_whose_key_was_not_registered_is_refused(tmp_path):
    import subprocess

    from fedgraph.flower.deploy import LocalDeployment, _executable, free_port

    with LocalDeployment(tmp_path, num_nodes=1) as deployment:
        stranger = write_credentials(tmp_path / 'stranger', num_nodes=1)
        log = tmp_path / 'logs' / 'stranger.log'
        with open(log, 'w') as handle:
            node = subprocess.Popen(
                [_executable('flower-supernode'), '--root-certificates',
                 str(tmp_path / 'credentials' / 'ca.crt'), '--auth-supernode-private-key',
                 str(stranger.node_keys[0]), '--superlink', f'127.0.0.1:{deployment.link_port}',
                 '--port', str(free_port()), '--max-retries', '2', '--max-wait-time', '30',
                 '--node-config', 'partition-id=0 num-partitions=1'],
                stdout=handle, stderr=subprocess.STDOUT, env=deployment._env())
            code = node.wait(timeout=120)
        assert 'Uvicorn running on https://' in (tmp_path / 'logs' / 'superlink.log').read_text()
    assert code != 0
    assert 'Failed to activate SuperNode' in log.read_text()


class RecordingGrid(InProcessGrid):
    """An :class:`InProcessGrid` that keeps every reply the server pulls."""

    def __init__(self, app, num_nodes):
        super().__init__(app, num_nodes, tamper=lambda reply: reply)
        self.pulled = []

    def pull_messages(self, message_ids):
        replies = super().pull_messages(message_ids)
        self.pulled.extend(replies)
        return replies


def test_secagg_plus_with_distributed_dp_on_flower_equals_in_process_and_shows_only_sums(
        task_identity, monkeypatch):
    """Flower's SecAgg+ (its workflow on the server, its mod on the ClientApp) sums the
    nodes' encoded answers exactly: the run equals the in-process one under the same seed;
    no reply the server pulls carries a node's answer in the clear, and the strategy the
    workflow hands its result to gets the sum only."""
    from flwr.common import bytes_to_ndarray, parameters_to_ndarrays
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

    from fedgraph.flower import secure

    handed = []
    aggregate_fit = secure.SecureRound.aggregate_fit

    def watched(self, server_round, results, failures):
        handed.append([parameters_to_ndarrays(res.parameters)[0] for _, res in results])
        return aggregate_fit(self, server_round, results, failures)

    monkeypatch.setattr(secure.SecureRound, 'aggregate_fit', watched)
    config = TrainConfig(rounds=2, dim=8, **CONFIG, secure_aggregation=True,
                         dp_epsilon=4.0, dp_noise_at='distributed')
    grid = RecordingGrid(make_client_app(config), 3)
    server = Deployment(config, FlowerTransport(PollingGrid(grid), timeout=30))
    deployed = server.run(progress=False)
    in_process = train(config, progress=False)
    _rounds_match(deployed, in_process, rounds=2)
    engine, generator = build_run(config, prepare_split(config))
    for _ in range(2):
        engine.run_round(generator)
    # SecAgg+ quantizes the nodes' integer answers exactly: the same table, to float error.
    assert torch.allclose(server.federated.model.item, engine.model.item, rtol=0, atol=1e-6)
    for ours, theirs in zip(deployed['rounds'], in_process['rounds']):
        assert ours['privacy'] == theirs['privacy']
        assert ours['privacy']['secure_aggregation']
        assert ours['privacy']['noise_at'] == 'distributed'
        assert 0 < ours['privacy']['epsilon'] <= 4.0
        assert ours['train_loss'] is None  # a sum of losses would escape the noise
    # The workflow hands the strategy one aggregate, the same for every node's result.
    assert len(handed) == 2 and all(len(results) == 3 for results in handed)
    assert all(np.array_equal(results[0], other) for results in handed for other in results)
    masked = []
    for reply in grid.pulled:
        if reply.metadata.message_type != MessageType.TRAIN:
            continue
        # A SecAgg+ reply carries no tensor of ours: the mod empties the FitRes parameters.
        assert all(len(record) == 0 for record in reply.content.array_records.values())
        configs = reply.content.config_records.get(RECORD_KEY_CONFIGS, {})
        if Key.MASKED_PARAMETERS in configs:
            masked.extend(bytes_to_ndarray(b) for b in configs[Key.MASKED_PARAMETERS])
    vectors = [vector.astype(np.float64) for vector in masked if vector.size > 1]
    assert len(vectors) == 2 * 3
    for vector in vectors:
        # Masked: spread uniformly over [0, 2^32), where a node's quantized answer sits in a
        # narrow band around the middle of its range.
        assert vector.std() / 2 ** 32 == pytest.approx(12 ** -0.5, rel=0.05)
