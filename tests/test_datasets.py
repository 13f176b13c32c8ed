"""load_dataset: dispatch, the data root, the offline fallback for MovieLens-100K, and the
real MovieLens-100K."""
import re
import urllib.error

import numpy as np
import pytest
import torch

import fedgraph.data.datasets as datasets
from fedgraph.data import (DATASETS, ITEM, RATED_BY, RATES, USER, leave_one_out_split,
                           load_dataset, read_csv, read_movielens_100k, synthetic_interactions)
from fedgraph.data.download import content_digest, default_root
from fedgraph.data.reader import Column, read_delimited

# --------------------------------------------------------------------------------------
# Dispatch
# --------------------------------------------------------------------------------------
FILE_FORMATS = ['movielens-100k-file', 'movielens-1m-file', 'lastfm-2k-file', 'amazon',
                'pfedrec', 'lightgcn', 'csv', 'tsv']


def test_unknown_name_lists_the_choices():
    with pytest.raises(ValueError, match="unknown data set 'ml-10m'") as info:
        load_dataset('ml-10m')
    message = str(info.value)
    for name in ['ml-100k', 'ml-1m', 'lastfm-2k', 'synthetic'] + FILE_FORMATS:
        assert name in message
    assert set(DATASETS) == {'ml-100k', 'ml-1m', 'lastfm-2k', 'synthetic', *FILE_FORMATS}


@pytest.mark.parametrize('name', FILE_FORMATS)
def test_file_format_without_path(name):
    with pytest.raises(TypeError, match=re.escape(f"'{name}' is a file format: pass path=")):
        load_dataset(name)


@pytest.mark.parametrize('name', ['ml-100k', 'ml-1m', 'lastfm-2k'])
def test_named_dataset_rejects_options(tmp_path, name):
    with pytest.raises(TypeError, match='takes no options besides root'):
        load_dataset(name, root=tmp_path, path='x')


def test_csv_dispatches_with_options(tmp_path):
    path = tmp_path / 'r.tsv'
    path.write_text('uid\tmovie\tstars\tts\n1\ta\t4\t20\n1\tb\t3\t10\n2\ta\t5\t30\n')
    data = load_dataset('csv', path=path, delimiter='\t', user='uid', item='movie',
                        rating='stars', time='ts')
    assert data[USER].raw_id == ['1', '2']
    assert data[ITEM].raw_id == ['a', 'b']
    assert data[RATES].edge_index.tolist() == [[0, 0, 1], [1, 0, 0]]
    assert data[RATES].rating.tolist() == [3.0, 4.0, 5.0]
    assert data[RATES].time.tolist() == [10, 20, 30]
    direct = read_csv(path, delimiter='\t', user='uid', item='movie', rating='stars', time='ts')
    assert torch.equal(direct[RATES].edge_index, data[RATES].edge_index)


def test_file_format_dispatches(tmp_path):
    path = tmp_path / 'u.data'
    path.write_text('1\t5\t3\t100\n2\t6\t4\t200\n')
    data = load_dataset('movielens-100k-file', path=path)
    assert data[RATES].edge_index.tolist() == [[0, 1], [0, 1]]
    assert data[USER].raw_id.tolist() == [1, 2]
    (tmp_path / 'lg').mkdir()
    (tmp_path / 'lg' / 'train.txt').write_text('0 1 2\n')
    (tmp_path / 'lg' / 'test.txt').write_text('0 3\n')
    lightgcn = load_dataset('lightgcn', path=tmp_path / 'lg')
    assert sorted(lightgcn[RATES].split.tolist()) == [0, 0, 2]


def test_synthetic_returns_a_graph():
    data = load_dataset('synthetic', num_users=40, num_items=60, seed=3)
    direct = synthetic_interactions(num_users=40, num_items=60, seed=3)
    assert data[USER].num_nodes == 40
    assert data[ITEM].num_nodes == 60
    assert data[RATES].edge_index.shape[1] > 0
    assert torch.equal(data[RATES].edge_index, direct[RATES].edge_index)
    assert torch.equal(data[RATED_BY].edge_index, data[RATES].edge_index.flip(0))


# --------------------------------------------------------------------------------------
# Named data sets from a data root, offline
# --------------------------------------------------------------------------------------
U_DATA = '196\t242\t3\t881250949\n186\t302\t3\t891717742\n22\t377\t1\t878887116\n'
U_ROWS = [(196, 242, 3, 881250949), (186, 302, 3, 891717742), (22, 377, 1, 878887116)]
U_DIGEST = content_digest(*np.array(U_ROWS, dtype=np.int64).T)


@pytest.fixture
def no_network(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError('no network access expected')
    monkeypatch.setattr(datasets, 'download_and_extract', forbidden)
    monkeypatch.setattr(datasets, 'fetch_wheel_member', forbidden)


def test_ml100k_from_an_existing_root_without_network(tmp_path, no_network):
    (tmp_path / 'ml-100k').mkdir()
    (tmp_path / 'ml-100k' / 'u.data').write_text(U_DATA)
    data = load_dataset('ml-100k', root=tmp_path)
    assert data[USER].raw_id.tolist() == [22, 186, 196]
    assert data[ITEM].raw_id.tolist() == [242, 302, 377]
    assert data[RATES].edge_index.tolist() == [[0, 1, 2], [2, 1, 0]]
    assert data[RATES].rating.tolist() == [1.0, 3.0, 3.0]
    # the root is a str here: both str and Path are accepted
    again = load_dataset('ml-100k', root=str(tmp_path))
    assert torch.equal(again[RATES].edge_index, data[RATES].edge_index)


def test_ml100k_default_root_follows_fedgraph_data(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv('FEDGRAPH_DATA', str(tmp_path))
    assert default_root() == tmp_path
    (tmp_path / 'ml-100k').mkdir()
    (tmp_path / 'ml-100k' / 'u.data').write_text(U_DATA)
    data = load_dataset('ml-100k')
    assert data[USER].raw_id.tolist() == [22, 186, 196]


def test_ml1m_and_lastfm_from_an_existing_root(tmp_path, no_network):
    (tmp_path / 'ml-1m').mkdir()
    (tmp_path / 'ml-1m' / 'ratings.dat').write_text('1::1193::5::978300760\n2::661::3::1\n')
    ml1m = load_dataset('ml-1m', root=tmp_path)
    assert ml1m[USER].raw_id.tolist() == [1, 2]
    assert ml1m[ITEM].raw_id.tolist() == [661, 1193]
    assert ml1m[RATES].edge_index.tolist() == [[0, 1], [1, 0]]
    (tmp_path / 'lastfm-2k').mkdir()
    (tmp_path / 'lastfm-2k' / 'user_artists.dat').write_text(
        'userID\tartistID\tweight\n2\t51\t13883\n2\t52\t11690\n')
    lastfm = load_dataset('lastfm-2k', root=tmp_path)
    assert lastfm[RATES].rating.tolist() == [13883.0, 11690.0]


@pytest.mark.parametrize('name,member,target', [
    ('ml-1m', 'ml-1m/ratings.dat', 'ml-1m/ratings.dat'),
    ('lastfm-2k', 'user_artists.dat', 'lastfm-2k/user_artists.dat'),
])
def test_ml1m_and_lastfm_offline_say_where_to_put_the_file(tmp_path, monkeypatch, name,
                                                           member, target):
    def offline(url, members, folder, timeout=30.0):
        raise urllib.error.URLError('offline')
    monkeypatch.setattr(datasets, 'download_and_extract', offline)
    with pytest.raises(FileNotFoundError,
                       match=re.escape(f'put its {member} at {tmp_path / target}')):
        load_dataset(name, root=tmp_path)


# --------------------------------------------------------------------------------------
# MovieLens-100K download and offline fallback
# --------------------------------------------------------------------------------------
INTER_HEADER = 'user_id:token\titem_id:token\trating:float\ttimestamp:float\n'


@pytest.fixture
def offline(monkeypatch):
    calls = []

    def download(url, members, folder, timeout=30.0):
        calls.append(url)
        raise urllib.error.URLError('offline')
    monkeypatch.setattr(datasets, 'download_and_extract', download)
    return calls


def _fake_wheel(monkeypatch, text):
    calls = []

    def fetch(requirement, member, destination, timeout=300.0):
        calls.append((requirement, member))
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_text(text)
        return destination
    monkeypatch.setattr(datasets, 'fetch_wheel_member', fetch)
    return calls


def test_ml100k_offline_fallback_rebuilds_u_data(tmp_path, monkeypatch, offline, caplog):
    wheel = _fake_wheel(monkeypatch, INTER_HEADER + U_DATA)
    monkeypatch.setattr(datasets, 'ML100K_DIGEST', U_DIGEST)
    with caplog.at_level('WARNING', logger='fedgraph.data.datasets'):
        data = load_dataset('ml-100k', root=tmp_path)
    assert offline == [datasets.ML100K_URL]
    assert wheel == [datasets.ML100K_WHEEL]
    assert any('could not download' in r.getMessage() for r in caplog.records)
    target = tmp_path / 'ml-100k' / 'u.data'
    # u.data is written in the u.data layout: no header, tab-separated integers
    assert target.read_text() == U_DATA
    assert not (tmp_path / 'ml-100k' / 'ml-100k.inter').exists()
    assert torch.equal(read_movielens_100k(target)[RATES].edge_index, data[RATES].edge_index)
    assert data[USER].raw_id.tolist() == [22, 186, 196]
    assert data[RATES].edge_index.tolist() == [[0, 1, 2], [2, 1, 0]]
    assert data[RATES].time.tolist() == [878887116, 891717742, 881250949]


def test_ml100k_offline_fallback_checks_the_digest(tmp_path, monkeypatch, offline):
    _fake_wheel(monkeypatch, INTER_HEADER + U_DATA)
    monkeypatch.setattr(datasets, 'ML100K_DIGEST', '0' * 64)
    with pytest.raises(ValueError, match='does not match its checksum'):
        load_dataset('ml-100k', root=tmp_path)
    assert not (tmp_path / 'ml-100k' / 'u.data').exists()


def test_ml100k_offline_fallback_digest_depends_on_content(tmp_path, monkeypatch, offline):
    # one changed rating is enough to fail the checksum
    _fake_wheel(monkeypatch, INTER_HEADER + U_DATA.replace('\t1\t', '\t2\t'))
    monkeypatch.setattr(datasets, 'ML100K_DIGEST', U_DIGEST)
    with pytest.raises(ValueError, match='checksum'):
        load_dataset('ml-100k', root=tmp_path)


def test_ml100k_download_and_wheel_both_fail(tmp_path, monkeypatch, offline):
    monkeypatch.setattr(datasets, 'fetch_wheel_member', lambda *args, **kwargs: None)
    target = tmp_path / 'ml-100k' / 'u.data'
    with pytest.raises(FileNotFoundError,
                       match=re.escape(f'put its u.data at {target}')) as info:
        load_dataset('ml-100k', root=tmp_path)
    assert datasets.ML100K_URL in str(info.value)
    assert not target.exists()


def _fake_download(monkeypatch, text):
    def download(url, members, folder, timeout=30.0):
        assert members == {'ml-100k/u.data': 'u.data'}
        folder.mkdir(parents=True, exist_ok=True)
        (folder / 'u.data').write_text(text)
    monkeypatch.setattr(datasets, 'download_and_extract', download)

    def forbidden(*args, **kwargs):
        raise AssertionError('the wheel is only a fallback')
    monkeypatch.setattr(datasets, 'fetch_wheel_member', forbidden)


def test_ml100k_download_checked_against_the_digest(tmp_path, monkeypatch):
    _fake_download(monkeypatch, U_DATA)
    monkeypatch.setattr(datasets, 'ML100K_DIGEST', U_DIGEST)
    data = load_dataset('ml-100k', root=tmp_path)
    assert data[RATES].edge_index.shape == (2, 3)
    assert (tmp_path / 'ml-100k' / 'u.data').read_text() == U_DATA


@pytest.mark.parametrize('payload', [U_DATA, 'not\ta\tu.data\tline\n'])
def test_ml100k_bad_download_is_removed_and_falls_back(tmp_path, monkeypatch, payload):
    # a download with the wrong checksum, or one that does not parse, is deleted and the
    # wheel copy is tried instead
    _fake_download(monkeypatch, payload)
    monkeypatch.setattr(datasets, 'ML100K_DIGEST', '0' * 64)
    tried = []
    monkeypatch.setattr(datasets, 'fetch_wheel_member',
                        lambda *args, **kwargs: tried.append(args) or None)
    with pytest.raises(FileNotFoundError, match='put its u.data at'):
        load_dataset('ml-100k', root=tmp_path)
    assert tried and tried[0][0] == datasets.ML100K_WHEEL[0]
    assert not (tmp_path / 'ml-100k' / 'u.data').exists()


# --------------------------------------------------------------------------------------
# The real MovieLens-100K (cached under the data root, else downloaded: GroupLens, or the
# copy in the recbole wheel on the package index). Not skipped.
# --------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def movielens_100k():
    return load_dataset('ml-100k')


def test_real_movielens_100k_content(movielens_100k):
    data = movielens_100k
    assert data[USER].num_nodes == 943
    assert data[ITEM].num_nodes == 1682
    assert data[RATES].edge_index.shape == (2, 100_000)
    assert data.num_dropped == {'non_positive_rating': 0, 'repeated_pair': 0}
    assert data[USER].raw_id.tolist() == list(range(1, 944))
    assert data[ITEM].raw_id.tolist() == list(range(1, 1683))
    assert sorted(set(data[RATES].rating.tolist())) == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert torch.equal(data[RATED_BY].edge_index, data[RATES].edge_index.flip(0))
    # the file under the data root is the checksummed one
    path = default_root() / 'ml-100k' / 'u.data'
    columns = read_delimited(path, [Column('user', 0), Column('item', 1),
                                    Column('rating', 2, 'int'), Column('time', 3, 'int')], '\t')
    assert content_digest(*columns.values()) == datasets.ML100K_DIGEST


def test_real_movielens_100k_leave_one_out(movielens_100k):
    data = movielens_100k
    split = leave_one_out_split(data, eval_negatives=99, seed=0)
    num_users, num_items = 943, 1682
    assert split.num_filtered_users == 0
    assert split.val_item.shape == (num_users,)
    assert split.test_item.shape == (num_users,)
    assert split.val_negatives.shape == (num_users, 99)
    assert split.test_negatives.shape == (num_users, 99)
    assert split.train[RATES].edge_index.shape[1] == 100_000 - 2 * num_users

    rated = torch.zeros(num_users, num_items, dtype=torch.bool)
    ei = data[RATES].edge_index
    rated[ei[0], ei[1]] = True
    users = torch.arange(num_users)
    # one validation and one test item per user, rated by the user, distinct, not in train
    assert bool(rated[users, split.val_item].all())
    assert bool(rated[users, split.test_item].all())
    assert bool((split.val_item != split.test_item).all())
    train = torch.zeros_like(rated)
    tei = split.train[RATES].edge_index
    train[tei[0], tei[1]] = True
    held = torch.zeros_like(rated)
    held[users, split.val_item] = True
    held[users, split.test_item] = True
    assert not bool((train & held).any())
    # train + held-out items are exactly the user's rated items
    assert torch.equal(train | held, rated)

    # the test item is the latest interaction, the validation item the one before
    time = data[RATES].time
    last = {}
    for u, i, t in zip(ei[0].tolist(), ei[1].tolist(), time.tolist()):
        last.setdefault(u, []).append((t, i))
    for u in (0, 1, 100, 942):
        times = dict((i, t) for t, i in last[u])
        t_test, t_val = times[int(split.test_item[u])], times[int(split.val_item[u])]
        assert t_test == max(times.values())
        assert t_val <= t_test
        assert all(t <= t_val for i, t in times.items()
                   if i not in (int(split.test_item[u]), int(split.val_item[u])))

    # negatives: never rated by the user, distinct within a row, val and test disjoint
    negatives = torch.cat([split.val_negatives, split.test_negatives], dim=1)
    assert int(negatives.min()) >= 0 and int(negatives.max()) < num_items
    assert not bool(rated[users.unsqueeze(1), negatives].any())
    ordered = negatives.sort(dim=1).values
    assert bool((ordered[:, 1:] != ordered[:, :-1]).all())
