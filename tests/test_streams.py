"""Per-client random streams: clients planned alone or together draw the same."""
import pytest
import torch

from fedgraph.federated import ClientSelector, FederatedEngine
from fedgraph.federated.aggregation import aggregate_rows
from fedgraph.federated.plan import plan_round
from fedgraph.federated.streams import ClientStreams, client_seed, draw_round_seed
from fedgraph.privacy.upload import UploadTransform
from helpers import engine_data, local_training, make_model


def test_client_seeds_differ_by_round_and_key_and_repeat():
    seeds = {client_seed(r, k) for r in (0, 1, 2) for k in range(50)}
    assert len(seeds) == 150
    assert client_seed(7, 3) == client_seed(7, 3)
    assert all(0 <= s < 1 << 63 for s in seeds)


@pytest.mark.parametrize('keep_groups', [False, True])
def test_a_clients_part_of_the_plan_is_its_own_plan(keep_groups):
    """Planned with others from counter-based streams, each client draws what it draws
    alone; the joint plan is laid out by step, then client."""
    _, partition, known = engine_data(12, 300, 9, seed=1)
    clients = torch.tensor([1, 4, 5, 9])
    seeds = ClientStreams().seeds(17, clients)
    joint = plan_round(partition, clients[[2, 0, 3, 1]], 4, 8, 2, None, known, keep_groups,
                       seeds[[2, 0, 3, 1]])
    single = [plan_round(partition, client.view(1), 4, 8, 2, None, known, keep_groups,
                         seed.view(1)) for client, seed in zip(clients, seeds)]
    assert torch.equal(joint.clients, clients)
    assert joint.num_steps == max(p.num_steps for p in single)
    step = torch.repeat_interleave(torch.arange(joint.num_steps), joint.step_ptr.diff())
    for position, plan in enumerate(single):
        mine = joint.owner == position
        assert torch.equal(joint.item[mine], plan.item)
        assert torch.equal(joint.label[mine], plan.label)
        assert torch.equal(joint.weight[mine], plan.weight)
        assert torch.equal(joint.row_item[joint.row_owner == position], plan.row_item)
        own_step = torch.repeat_interleave(torch.arange(plan.num_steps), plan.step_ptr.diff())
        assert torch.equal(step[mine], own_step)
        negatives = plan.item[plan.label == 0]
        assert not known.contains(clients[position], negatives).any()
    key = step * clients.numel() + joint.owner
    assert bool((key[1:] >= key[:-1]).all())
    assert torch.equal(joint.row_item[joint.row], joint.item)
    assert torch.equal(joint.row_owner[joint.row], joint.owner)
    other = plan_round(partition, clients, 4, 8, 2, None, known, keep_groups,
                       ClientStreams().seeds(18, clients))
    assert not torch.equal(other.item, joint.item)


def test_stream_negatives_are_uniform_over_what_a_client_lacks():
    _, partition, known = engine_data(12, 300, 9, seed=1)
    client = torch.tensor([3])
    counts = torch.zeros(partition.num_items)
    for round_seed in range(400):
        streams = torch.tensor([[client_seed(round_seed, 3), 0]])
        drawn = known.sample_negatives(client, 20, streams=streams)[0]
        assert drawn.unique().numel() == 20
        counts[drawn] += 1
    held = known.contains(client, torch.arange(partition.num_items))
    assert not counts[held].any()
    expected = 400 * 20 / int((~held).sum())
    assert counts[~held].min() > 0.5 * expected and counts[~held].max() < 1.6 * expected
    chi2 = float(((counts[~held] - expected) ** 2 / expected).sum())
    assert chi2 < 2 * int((~held).sum())  # dof ~ 280: chi2 ~ 280 +- 24 when uniform


def _device_engine(population, users, partition, known, training, keys):
    """An engine holding only ``users`` of ``population``'s engine, with their state."""
    model = make_model('linear', users.numel(), partition.num_items, 8)
    with torch.no_grad():
        model.item.copy_(population.model.item)
        for name, tensor in model.private_parameters().items():
            tensor.copy_(population.model.private_parameters()[name][users])
    return FederatedEngine(model, partition.select(users), training,
                           ClientSelector(users.numel()), known.select(users),
                           ClientStreams(keys))


@pytest.mark.parametrize('laplace', [0.0, 0.05])
def test_devices_with_their_own_streams_match_the_population_engine(float64, laplace):
    _, partition, known = engine_data(16, 300, 8, seed=3)
    training = local_training('pfedrec', partition.num_items, clip=0.5)
    training.upload = UploadTransform(0.5, laplace)
    model = make_model('linear', partition.num_clients, partition.num_items, 8)
    population = FederatedEngine(model, partition, training,
                                 ClientSelector(partition.num_clients), known, ClientStreams())
    halves = [torch.arange(0, 16, 2), torch.arange(1, 16, 2)]
    devices = [_device_engine(population, users, partition, known, training, users)
               for users in halves]
    base = population.model.item.detach().clone()

    generator = torch.Generator().manual_seed(11)
    round_seed = draw_round_seed(torch.Generator().manual_seed(11))  # full participation
    _, whole = population.train_round(generator)
    results = [device.local_round(torch.arange(users.numel()), round_seed=round_seed)
               for device, users in zip(devices, halves)]

    for device, users, result in zip(devices, halves, results):
        for name, tensor in device.model.private_parameters().items():
            torch.testing.assert_close(tensor, population.model.private_parameters()[name][users])
        mine = torch.isin(whole.upload.clients[whole.upload.row_owner], users)
        torch.testing.assert_close(result.upload.update, whole.upload.update[mine])
        assert torch.equal(result.upload.row_item, whole.upload.row_item[mine])
        scores = device.scores(torch.arange(users.numel()), torch.arange(300).repeat(8, 1))
        torch.testing.assert_close(scores, population.scores(users, torch.arange(300).repeat(8, 1)))
    # The server's mean over the devices' uploads is the population engine's new table.
    offset = torch.tensor([0, halves[0].numel()])
    table = aggregate_rows(base, torch.cat([r.upload.row_item for r in results]),
                           torch.cat([r.upload.row_owner + o for r, o in zip(results, offset)]),
                           torch.cat([r.upload.update for r in results]), 16)
    torch.testing.assert_close(table, population.model.item.detach())


def test_streams_change_only_where_randomness_comes_from():
    data = engine_data(20, 300, 10, seed=2)
    _, partition, known = data
    runs = {}
    for name, streams in (('shared', None), ('streams', ClientStreams())):
        model = make_model('linear', partition.num_clients, partition.num_items, 8)
        engine = FederatedEngine(model, partition, local_training('pfedrec', 300),
                                 ClientSelector(20, ratio=0.5), known, streams)
        stats, result = engine.train_round(torch.Generator().manual_seed(0))
        runs[name] = (engine, stats, result)
    shared, streams = runs['shared'][0], runs['streams'][0]
    # Same clients (selection comes first, from the server's generator), other negatives.
    assert torch.equal(runs['shared'][2].upload.clients, runs['streams'][2].upload.clients)
    assert not torch.equal(shared.model.item, streams.model.item)
    assert runs['shared'][1].num_clients == runs['streams'][1].num_clients == 10
