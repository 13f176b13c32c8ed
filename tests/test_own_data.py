"""A user's own data: a CSV with string ids and ISO timestamps trained, resumed and plotted
from the command line; the run remembers its data; readers take string ids and ISO times;
graphs with other node-type names; split errors in the user's terms."""
import json
from datetime import datetime, timedelta, timezone

import pytest
import torch
from torch_geometric.data import HeteroData

from fedgraph.cli import main
from fedgraph.config import TrainConfig
from fedgraph.data import leave_one_out_split, load_dataset, synthetic_interactions
from fedgraph.data.reader import parse_time
from helpers import (HostilePayload, cli_misuse, read_metrics, train_interrupted,
                     without_seconds)

START = datetime(2024, 1, 1, tzinfo=timezone.utc)


@pytest.fixture
def ratings_csv(tmp_path):
    """60 users' ratings with string ids, 1-5 stars and ISO 8601 times, as a user exports
    them; a quarter of the ratings are 1 star."""
    data = synthetic_interactions(num_users=60, num_items=150, mean_degree=18, seed=3)
    user, item = data['user', 'rates', 'item'].edge_index.tolist()
    lines = ['uid,movie,stars,when']
    for row, (u, i) in enumerate(zip(user, item)):
        when = (START + timedelta(hours=row)).isoformat().replace('+00:00', 'Z')
        lines.append(f'user-{u},film {i},{1 + (row * 7) % 5},{when}')
    path = tmp_path / 'ratings.csv'
    path.write_text('\n'.join(lines) + '\n')
    return path


def _flags(path, out, rounds=3):
    return ['train', '--dataset', 'csv', '--data-path', str(path), '--user-col', 'uid',
            '--item-col', 'movie', '--rating-col', 'stars', '--time-col', 'when',
            '--min-rating', '2', '--eval-negatives', '20', '--dim', '8', '--rounds', str(rounds),
            '--checkpoint-every', '1', '--out', str(out), '--quiet']


def test_a_csv_trains_resumes_and_plots_from_the_command_line(ratings_csv, tmp_path,
                                                              monkeypatch, capsys):
    out = tmp_path / 'run'
    main(_flags(ratings_csv, out))
    saved = json.loads((out / 'config.json').read_text())
    assert saved['dataset'] == 'csv' and saved['data_path'] == str(ratings_csv)
    assert (saved['user_col'], saved['time_col'], saved['min_rating']) == ('uid', 'when', 2.0)
    assert len(saved['data_digest']) == 64
    uninterrupted = read_metrics(out)
    assert len(uninterrupted['rounds']) == 3

    # Interrupted after its second round, the same run resumes from the command line on the
    # data its config.json names and ends as the uninterrupted one did.
    again = tmp_path / 'again'
    config = TrainConfig.load(out / 'config.json')
    train_interrupted(monkeypatch, config, out=again, progress=False)
    main(['train', '--resume', str(again), '--quiet'])
    assert without_seconds(read_metrics(again)) == without_seconds(uninterrupted)

    main(['plot', str(out), '--out', str(tmp_path / 'figures')])
    assert (tmp_path / 'figures' / 'curves.png').stat().st_size > 0

    # One user's model, exported from the command line, scores as the run does.
    from fedgraph.export import DeviceModel
    from fedgraph.run import load_run

    main(['export', str(out), '--user', 'user-3', '--out', str(tmp_path / 'user-3.pt')])
    run = load_run(out)
    index = run.split.train['user'].raw_id.index('user-3')
    torch.testing.assert_close(DeviceModel.load(tmp_path / 'user-3.pt').scores(),
                               run.engine.scores_all(torch.tensor([index]))[0])

    # The file changed: the run refuses to go on with other data.
    ratings_csv.write_text(ratings_csv.read_text().replace('user-0,', 'user-00,', 1))
    with cli_misuse(capsys, 'is not the data this run trained on'):
        main(['train', '--resume', str(again), '--quiet'])


def test_file_flags_are_checked_against_the_data_set(capsys):
    with cli_misuse(capsys, '--dataset csv is a file format: give the file with'):
        main(['train', '--dataset', 'csv', '--quiet'])
    with cli_misuse(capsys, "--user-col applies to file formats"):
        main(['describe', '--dataset', 'synthetic', '--user-col', 'uid'])
    with cli_misuse(capsys, 'pfedrec has a fixed layout'):
        main(['describe', '--dataset', 'pfedrec', '--data-path', 'x.dat', '--time-col', 't'])


def test_min_rating_keeps_what_is_rated_high_enough(ratings_csv):
    everything = TrainConfig(dataset='csv', data_path=str(ratings_csv), user_col='uid',
                             item_col='movie', rating_col='stars', time_col='when')
    liked = TrainConfig(**{**everything.to_dict(), 'min_rating': 4.0})
    from fedgraph.data.source import load_configured

    all_ratings = load_configured(everything)['user', 'rates', 'item'].rating
    kept = load_configured(liked)['user', 'rates', 'item'].rating
    assert kept.numel() == int((all_ratings >= 4).sum()) < all_ratings.numel()
    assert bool((kept >= 4).all())
    with pytest.raises(ValueError, match='no interaction is rated that high'):
        load_configured(TrainConfig(**{**everything.to_dict(), 'min_rating': 6.0}))


def test_timestamps_are_unix_seconds_or_iso_8601():
    assert parse_time('1700000000') == 1700000000
    assert parse_time('1700000000.75') == 1700000000
    assert parse_time('2024-01-01T00:00:00Z') == int(START.timestamp())
    assert parse_time('2024-01-01') == int(START.timestamp())
    assert parse_time('2024-01-01T01:00:00+01:00') == int(START.timestamp())
    assert parse_time('01/02/2024', '%d/%m/%Y') == int(START.timestamp()) + 31 * 86400
    with pytest.raises(ValueError):
        parse_time('2024-01-01', 'unix')


def test_pfedrec_files_take_string_ids(tmp_path):
    path = tmp_path / 'ratings.dat'
    path.write_text('alice,m1,5,100\nalice,m2,4,2024-01-01\nbob,m1,3,101\n')
    data = load_dataset('pfedrec', path=path)
    assert data['user'].raw_id == ['alice', 'bob']
    assert data['user', 'rates', 'item'].time.tolist()[1] == int(START.timestamp())
    numeric = tmp_path / 'numeric.dat'
    numeric.write_text('10,1,5,100\n2,1,4,101\n')
    assert load_dataset('pfedrec', path=numeric)['user'].raw_id.tolist() == [2, 10]


def test_graphs_with_their_own_node_type_names_split():
    """PyG's MovieLens layout, ('user', 'rates', 'movie') with ratings as ``edge_label``."""
    data = synthetic_interactions(num_users=30, num_items=80, mean_degree=10, seed=1)
    edge_index = data['user', 'rates', 'item'].edge_index
    movies = HeteroData()
    movies['user'].num_nodes = 30
    movies['movie'].num_nodes = 80
    movies['user', 'rates', 'movie'].edge_index = edge_index
    movies['user', 'rates', 'movie'].edge_label = torch.ones(edge_index.size(1),
                                                             dtype=torch.long)
    movies['movie', 'rated_by', 'user'].edge_index = edge_index.flip(0)
    split = leave_one_out_split(movies, eval_negatives=10)
    reference = leave_one_out_split(data, eval_negatives=10)
    assert torch.equal(split.test_item, reference.test_item)
    assert split.train['user', 'rates', 'item'].edge_index.size(1) == edge_index.size(1) - 60


def test_too_many_negatives_is_explained_in_the_users_terms(tmp_path, capsys):
    path = tmp_path / 'small.csv'
    path.write_text('user,item\n' + ''.join(f'u{u},i{i}\n' for u in range(4) for i in range(12)))
    with cli_misuse(capsys, 'describe: error: ') as caught:
        main(['describe', '--dataset', 'csv', '--data-path', str(path)])
    message = caught['err']
    assert 'user u0 interacted with 12 of 12 items, leaving 0' in message
    assert '99 validation and 99 test negatives' in message
    assert '--eval-negatives' in message and '--protocol full' in message


def test_train_returns_the_run_and_a_folder_brings_it_back(ratings_csv, tmp_path, capsys):
    from fedgraph.run import Run, load_run
    from fedgraph.training import train

    config = TrainConfig(dataset='csv', data_path=str(ratings_csv), user_col='uid',
                         item_col='movie', rating_col='stars', time_col='when',
                         eval_negatives=20, dim=8, rounds=2)
    run = train(config, out=tmp_path / 'run', progress=False)
    assert isinstance(run, Run) and run['best'] == run.metrics['best']
    assert run.config is config and run.folder == tmp_path / 'run'
    top = run.recommend('user-5', k=5)
    assert len(top) == 5 and all(item.startswith('film ') for item in top)
    seen = {line.split(',')[1] for line in ratings_csv.read_text().splitlines()[1:]
            if line.startswith('user-5,')}
    assert seen and not seen & set(top)  # what the user interacted with is not recommended
    with pytest.raises(KeyError, match="no user 'nobody'"):
        run.recommend('nobody')

    again = load_run(tmp_path / 'run')
    assert again.recommend('user-5', k=5) == top
    assert again['best'] == json.loads(json.dumps(run['best']))
    main(['recommend', str(tmp_path / 'run'), '--user', 'user-5', '-k', '5'])
    assert json.loads(capsys.readouterr().out) == {'user': 'user-5', 'items': top}


def test_opening_a_run_folder_never_runs_its_pickles(ratings_csv, tmp_path, capsys):
    out = tmp_path / 'run'
    main(_flags(ratings_csv, out, rounds=2))
    target = tmp_path / 'written-by-the-checkpoint'
    torch.save({'engine': HostilePayload(str(target))}, out / 'checkpoint.pt')
    for argv in (['train', '--resume', str(out), '--quiet'],
                 ['recommend', str(out), '--user', 'user-1']):
        with cli_misuse(capsys, 'not a fedgraph checkpoint'):
            main(argv)
    assert not target.exists()


def test_load_dataset_takes_every_data_flag_of_the_command_line(ratings_csv, caplog):
    from fedgraph.data.source import load_configured

    config = TrainConfig(dataset='csv', data_path=str(ratings_csv), user_col='uid',
                         item_col='movie', rating_col='stars', time_col='when',
                         time_format='iso', min_rating=4.0)
    configured = load_configured(config)
    with caplog.at_level('INFO', logger='fedgraph.data.datasets'):
        data = load_dataset('csv', ratings_csv, user='uid', item='movie', rating='stars',
                            time='when', time_format='iso', min_rating=4)
    rates = ('user', 'rates', 'item')
    for key in ('edge_index', 'rating', 'time'):
        assert torch.equal(data[rates][key], configured[rates][key])
    assert data['user'].raw_id == configured['user'].raw_id
    assert data['item'].raw_id == configured['item'].raw_id
    everything = load_dataset('csv', ratings_csv, user='uid', item='movie', rating='stars')
    kept, total = data[rates].edge_index.size(1), everything[rates].edge_index.size(1)
    assert 0 < kept < total
    assert f'kept {kept} of {total} interactions rated at least 4' in caplog.text


def test_a_keyword_a_data_set_does_not_take_is_named(ratings_csv, tmp_path):
    with pytest.raises(TypeError, match="'pfedrec' takes no user; its keywords: path, "
                                        "min_rating, time_format"):
        load_dataset('pfedrec', ratings_csv, user='uid')
    with pytest.raises(TypeError, match="'csv' takes no root"):
        load_dataset('csv', ratings_csv, root=tmp_path)
    with pytest.raises(TypeError, match="'synthetic' takes no path"):
        load_dataset('synthetic', ratings_csv)
    with pytest.raises(TypeError, match="'ml-100k' takes no options besides root and "
                                        "min_rating, got time_format"):
        load_dataset('ml-100k', root=tmp_path, time_format='iso')
    with pytest.raises(ValueError, match='min_rating: ratings.csv has no ratings'):
        load_dataset('csv', ratings_csv, user='uid', item='movie', min_rating=4)
    with pytest.raises(ValueError, match='min_rating: synthetic-20x40 has no ratings'):
        load_dataset('synthetic', num_users=20, num_items=40, seed=0, min_rating=1)


def test_data_root_applies_to_the_named_data_sets_only(ratings_csv, capsys):
    with cli_misuse(capsys, "--data-root is the folder of the named data sets"):
        main(['describe', '--dataset', 'csv', '--data-path', str(ratings_csv),
              '--data-root', 'datasets'])


def _same_split(ours, theirs):
    """Whether two splits hold the same training graph, ids and held-out items."""
    from fedgraph.data.hetero import ITEM, RATES, USER

    assert torch.equal(ours.train[RATES].edge_index, theirs.train[RATES].edge_index)
    for node in (USER, ITEM):
        assert list(ours.train[node].raw_id) == list(theirs.train[node].raw_id)
    if ours.protocol == 'sampled':
        for name, value in ours.candidates().items():
            assert torch.equal(value, theirs.candidates()[name])
    else:
        for name in ('val', 'test'):
            assert torch.equal(getattr(ours, name).col, getattr(theirs, name).col)
            assert torch.equal(getattr(ours, name).ptr, getattr(theirs, name).ptr)


def test_load_run_gives_back_a_csv_split_passed_in_python(ratings_csv, tmp_path):
    """train(split=...) on a CSV's split records data its config.json does not name (the
    default, ml-100k): the run folder keeps the split, and load_run brings back that split
    and the model that scores on it."""
    from fedgraph import load_run, train

    data = load_dataset('csv', ratings_csv, user='uid', item='movie', rating='stars',
                        time='when', min_rating=2)
    split = leave_one_out_split(data, eval_negatives=20, seed=0)
    run = train(TrainConfig(rounds=2, dim=8), out=tmp_path / 'run', split=split,
                progress=False)
    loaded = load_run(tmp_path / 'run')
    _same_split(loaded.split, split)
    user = data['user'].raw_id[0]
    assert loaded.recommend(user, k=5) == run.recommend(user, k=5)


def test_load_run_gives_back_a_custom_split_of_a_named_data_set(tmp_path):
    """A ratio split of MovieLens-100K other than the one its configuration would rebuild
    comes back as it was trained on, not rebuilt from the data set's name."""
    from fedgraph import load_run, ratio_split, train

    split = ratio_split(load_dataset('ml-100k'), (0.7, 0.15, 0.15), seed=5)
    config = TrainConfig(protocol='full', rounds=1, dim=8)
    train(config, out=tmp_path / 'run', split=split, progress=False)
    loaded = load_run(tmp_path / 'run')
    _same_split(loaded.split, split)
    assert loaded.split.train['user', 'rates', 'item'].edge_index.size(1) != \
        ratio_split(load_dataset('ml-100k'), config.split_ratios, seed=0).train[
            'user', 'rates', 'item'].edge_index.size(1)
