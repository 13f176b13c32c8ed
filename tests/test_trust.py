"""The server's trust boundary: NaN, inf and huge rows, foreign and duplicate users, bad item
ids and malformed replies are dropped and counted, in-process and in a deployment; the run
completes and the model stays finite."""
import pytest
import torch

from fedgraph.config import TrainConfig
from fedgraph.data import ClientPartition
from fedgraph.federated.node import Node
from fedgraph.server.deployment import Deployment, LocalTransport
from fedgraph.training import build_run, prepare_split

SMALL = dict(dataset='synthetic', rounds=2, dim=8, client_streams=True)


def _poison_first_client(engine, value, dense=False):
    """Makes the first client of every round upload ``value`` in one row (or its MLP)."""
    local_round = engine.local_round

    def poisoned(*args, **kwargs):
        result = local_round(*args, **kwargs)
        if dense:
            name = next(iter(result.upload.dense))
            result.upload.dense[name][0].view(-1)[0] = value
        else:
            result.upload.update[0, 0] = value
        return result

    engine.local_round = poisoned


@pytest.mark.parametrize('algorithm, value, dense', [
    ('pfedrec', float('nan'), False), ('fedmf', float('inf'), False),
    ('pfedrec', 1e30, False), ('fedncf', float('nan'), True)])
def test_in_process_a_bad_upload_is_dropped_and_counted(algorithm, value, dense):
    config = TrainConfig(algorithm=algorithm, dataset='synthetic', dim=8, client_ratio=0.1)
    split = prepare_split(config)
    engine, generator = build_run(config, split)
    _poison_first_client(engine, value, dense)
    stats = [engine.run_round(generator) for _ in range(2)]
    for record in stats:
        assert record.dropped == {'non_finite': 1}
        assert record.num_clients == 99  # the other clients of the round
    assert torch.isfinite(engine.model.item).all()
    assert all(torch.isfinite(v).all() for v in engine.model.shared_dense().values())


class HostileTransport(LocalTransport):
    """Devices in this process; node 0 tampers with its replies to ``step``."""

    def __init__(self, devices, tamper, step='train'):
        super().__init__(devices)
        self.tamper = tamper
        self.step = step

    def send(self, step, payloads):
        replies = super().send(step, payloads)
        if step == self.step and 0 in replies:
            replies[0] = self.tamper(dict(replies[0]), replies)
        return replies


def _nan_row(reply, replies):
    reply['update'] = reply['update'].clone()
    reply['update'][0] = float('nan')
    return reply


def _foreign_user(reply, replies):
    other = replies[1]
    for key in ('users', 'num-samples', 'loss', 'user-update'):
        if key in reply:
            reply[key] = torch.cat([reply[key], other[key][:1]])
    mine = other['row-user'] == other['users'][0]
    for key in ('row-user', 'row-item', 'update'):
        reply[key] = torch.cat([reply[key], other[key][mine] * (2 if key == 'update' else 1)])
    return reply


def _duplicate_user(reply, replies):
    for key in ('users', 'num-samples', 'loss', 'user-update'):
        if key in reply:
            reply[key] = torch.cat([reply[key], reply[key][:1]])
    return reply


def _bad_item(reply, replies):
    reply['row-item'] = reply['row-item'].clone()
    reply['row-item'][0] = 10 ** 6
    return reply


def _malformed(reply, replies):
    del reply['update']
    return reply


@pytest.mark.parametrize('algorithm', ['pfedrec', 'fedlightgcn'])
@pytest.mark.parametrize('tamper, reason, count', [
    (_nan_row, 'non_finite', 1), (_foreign_user, 'not_selected', 1),
    (_duplicate_user, 'duplicate_user', 1), (_bad_item, 'bad_item', 1),
    (_malformed, 'malformed', 1)])
def test_a_deployment_drops_what_a_device_should_not_send(algorithm, tamper, reason, count):
    config = TrainConfig(algorithm=algorithm, **SMALL)
    split = prepare_split(config)
    population = (split, ClientPartition.from_data(split.train), split.known_items())
    devices = {node: Node.from_split(config, *population, node, 4) for node in range(4)}
    server = Deployment(config, HostileTransport(devices, tamper))
    metrics = server.run(progress=False)
    for record in metrics['rounds']:
        assert record['uploads_dropped'] == {reason: count}
        assert record['val']['hr@10'] >= 0  # the run went on and evaluated
    assert torch.isfinite(server.federated.model.item).all()
    if algorithm == 'fedlightgcn':
        assert torch.isfinite(server.engine.server_users).all()


@pytest.mark.parametrize('tamper', [
    lambda reply: {**reply, 'val-hr@10': 1000.0},                   # more hits than users
    lambda reply: {**reply, 'test-ndcg@10': float('nan')},
    lambda reply: {**reply, 'num-users': reply['num-users'] * 10},  # users it does not hold
    lambda reply: {key: value for key, value in reply.items() if key != 'val-hr@10'}])
def test_a_deployment_drops_evaluation_sums_a_device_cannot_have(tamper):
    """Node 0 of four answers the evaluation with sums its users cannot add up to: the
    record's metrics are the other nodes' mean (in [0, 1]) and count the dropped reply."""
    config = TrainConfig(**SMALL)
    split = prepare_split(config)
    population = (split, ClientPartition.from_data(split.train), split.known_items())
    devices = {node: Node.from_split(config, *population, node, 4) for node in range(4)}
    honest = Deployment(config, LocalTransport(devices)).run(progress=False)
    devices = {node: Node.from_split(config, *population, node, 4) for node in range(4)}
    hostile = Deployment(config, HostileTransport(
        devices, lambda reply, replies: tamper(reply), 'evaluate')).run(progress=False)
    for ours, theirs in zip(hostile['rounds'], honest['rounds']):
        assert ours['evaluations_dropped'] == 1 and 'evaluations_dropped' not in theirs
        assert 0 <= ours['val']['hr@10'] <= 1 and 0 <= ours['test']['ndcg@10'] <= 1
        assert ours['val']['hr@10'] != theirs['val']['hr@10']  # node 0's users left out


def _claims_a_foreign_user(reply, replies):
    """Node 0 enrolls node 1's first user as its own, with an edge to item 0 and a user
    embedding of NaN for its own first user."""
    foreign = replies[1]['users'][:1]
    reply['edge-user'] = torch.cat([reply['edge-user'], foreign])
    reply['edge-item'] = torch.cat([reply['edge-item'], torch.zeros(1, dtype=torch.long)])
    reply['users'] = torch.cat([reply['users'], foreign])
    reply['user-update'] = torch.cat([reply['user-update'], reply['user-update'][:1] * 1e3])
    reply['user-update'][0] = float('nan')
    return reply


def _nan_and_foreign_views(reply, replies):
    reply['views'] = reply['views'].clone()
    reply['views'][0] = float('nan')
    reply['users'] = reply['users'].clone()
    reply['users'][1] = replies[1]['users'][0]
    return reply


def _misshapen_views(reply, replies):
    reply['views'] = reply['views'][:-1]
    return reply


def _no_user_update(reply, replies):
    del reply['user-update']
    return reply


@pytest.mark.parametrize('step, tamper, dropped', [
    ('init', _claims_a_foreign_user, {'not_held': 2, 'non_finite': 1}),
    ('pretrain-views', _nan_and_foreign_views, {'not_held': 1, 'non_finite': 1}),
    ('pretrain-views', _misshapen_views, {'malformed': 1}),
    ('init', _no_user_update, {'malformed': 1})])
def test_enrollment_and_pretraining_uploads_pass_the_same_checks(step, tamper, dropped):
    """A device that enrolls another device's user, uploads a NaN user embedding or sends
    pre-training views for users it does not hold is cut to what it holds; the graph has no
    edge it invented, pre-training stays finite, and metrics.json counts the drops."""
    config = TrainConfig(algorithm='perfedrec++', pretrain_rounds=2, **SMALL)
    split = prepare_split(config)
    population = (split, ClientPartition.from_data(split.train), split.known_items())
    devices = {node: Node.from_split(config, *population, node, 4) for node in range(4)}
    server = Deployment(config, HostileTransport(devices, tamper, step))
    metrics = server.run(progress=False)
    counts = metrics['uploads_dropped_outside_rounds'][step]
    assert counts == (dropped if step == 'init' else
                      {reason: count * 2 for reason, count in dropped.items()})  # 2 rounds
    if step == 'init':  # the edge node 0 invented is not in the graph; node 1's edges are
        graph = server.engine.graph.edge_index
        foreign = devices[1].users[0]
        assert not ((graph[0] == foreign) & (graph[1] == 0)).any()
        assert (graph[0] == foreign).sum() >= devices[1].train.degree[0]
    assert all(torch.isfinite(torch.tensor(loss)) for loss in metrics['pretraining']['loss'])
    assert torch.isfinite(server.engine.server_users).all()
    assert torch.isfinite(server.federated.model.item).all()


def test_a_train_reply_is_read_back_only_in_its_shape():
    from fedgraph.federated.messages import TrainReply

    reply = TrainReply(torch.tensor([3, 5]), torch.tensor([3, 3, 5]), torch.tensor([0, 1, 2]),
                       torch.randn(3, 4), torch.tensor([2, 1]), torch.tensor([0.5, 0.7]),
                       {'w': torch.randn(2, 3)}, {'user-update': torch.randn(2, 4)})
    payload = reply.to_payload()
    parsed = TrainReply.parse(payload, 4, {'w': (3,)})
    assert torch.equal(parsed.update, reply.update) and torch.equal(parsed.dense['w'],
                                                                    reply.dense['w'])
    assert set(parsed.extra) == {'user-update'}
    assert TrainReply.parse(payload, 5, {'w': (3,)}) is None            # rows of another d
    assert TrainReply.parse(payload, 4, {'w': (3,), 'b': ()}) is None   # a dense part missing
    for key, value in [('users', torch.tensor([3.0, 5.0])), ('loss', torch.zeros(3)),
                       ('row-item', torch.tensor([0, 1])), ('user-update', torch.zeros(2, 5)),
                       ('update', 'rows')]:
        assert TrainReply.parse({**payload, key: value}, 4, {'w': (3,)}) is None, key
    kept = parsed.keep(torch.tensor([False, True]))
    assert kept.users.tolist() == [5] and kept.row_item.tolist() == [2]


def _repeat_a_row(result, times=61):
    """The first client uploads its first row ``times`` times over (each copy counted by a
    rule that counts rows)."""
    upload = result.upload
    first = torch.nonzero(upload.row_owner == 0).view(-1)[:1].repeat(times)
    upload.row_owner = torch.cat([upload.row_owner[first], upload.row_owner])
    upload.row_item = torch.cat([upload.row_item[first], upload.row_item])
    upload.update = torch.cat([upload.update[first] * 50, upload.update])
    return result


def _report_samples(value):
    def tamper(result):
        result.num_samples = result.num_samples.double()
        result.num_samples[0] = value
        return result
    return tamper


def _report_loss(result):
    result.loss[0] = float('nan')
    return result


@pytest.mark.parametrize('aggregation, tamper, reason', [
    ('median', _repeat_a_row, 'repeated_row'), ('mean', _repeat_a_row, 'repeated_row'),
    ('weighted', _report_samples(float('nan')), 'bad_samples'),
    ('weighted', _report_samples(-1e9), 'bad_samples'),
    ('weighted', _report_samples(0), 'bad_samples'),
    ('weighted', _report_samples(1e9), 'bad_samples'),
    ('mean', _report_loss, 'non_finite')])
def test_in_process_a_client_that_games_the_rule_is_dropped(aggregation, tamper, reason,
                                                            tiny_sampled_split):
    """A client that repeats a row (a row-counting rule would count it 61 times), reports a
    sample count that is not one or that its rows cannot back (weighted FedAvg weighs by
    it; 1e9 would make its upload the round's mean) or a NaN loss (which would end the run
    as divergence) is dropped and counted: the round equals the round without that
    client."""
    config = TrainConfig(dim=8, aggregation=aggregation)
    split = tiny_sampled_split
    tampered, generator = build_run(config, split)
    tampered.adversary = tamper
    stats = tampered.run_round(generator)
    assert stats.dropped == {reason: 1} and stats.num_clients == 39  # of 40 users
    assert torch.isfinite(tampered.model.item).all()

    honest, generator = build_run(config, split)
    honest.adversary = lambda result: _drop_first_client(result, honest.model.num_items)
    honest.run_round(generator)
    torch.testing.assert_close(tampered.model.item, honest.model.item)


def _drop_first_client(result, num_items):
    """The round without its first client (what the server keeps of a dropped one)."""
    from fedgraph.federated.trust import screen

    result.upload.update[result.upload.row_owner == 0] = float('nan')
    kept, _, _ = screen(result, num_items)
    return kept


def test_a_run_whose_every_upload_is_dropped_is_an_error_and_its_records_say_so(tmp_path):
    """Every round's uploads dropped: each record says no client was aggregated and no loss
    (strict JSON, no NaN), and the run ends with NothingTrained instead of a 'best round'
    of the initial model."""
    import json

    from fedgraph.server.inprocess import InProcess
    from fedgraph.server.loop import NothingTrained, Server

    config = TrainConfig(**SMALL)
    split = prepare_split(config)
    engine, generator = build_run(config, split)
    initial = engine.model.item.detach().clone()

    def poison_all(result):
        result.upload.update.fill_(float('nan'))
        return result

    engine.adversary = poison_all
    with pytest.raises(NothingTrained, match=r'no round aggregated an upload.*non_finite: '):
        Server(config, InProcess(engine, split, generator), tmp_path, progress=False).run()
    records = json.loads((tmp_path / 'metrics.json').read_text(),
                         parse_constant=lambda name: pytest.fail(f'{name} in metrics.json'))
    assert [(r['clients'], r['train_loss']) for r in records['rounds']] == [(0, None)] * 2
    assert all(r['uploads_dropped']['non_finite'] > 0 for r in records['rounds'])
    assert torch.equal(engine.model.item, initial)
