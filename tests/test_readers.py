"""The file readers: every loader on small files, and strict errors on malformed input."""
import re

import pytest
import torch

from fedgraph.data import reader
from fedgraph.data import (ITEM, RATED_BY, RATES, USER, DataFormatError, read_amazon_csv,
                           read_csv, read_lastfm_2k, read_lightgcn, read_movielens_1m,
                           read_movielens_100k, read_pfedrec_ratings)


def _write(path, text, encoding='utf-8'):
    path.write_text(text, encoding=encoding)
    return path


def _check_reverse(data):
    assert torch.equal(data[RATED_BY].edge_index, data[RATES].edge_index.flip(0))


def _error(path, line, what):
    """A regex for a DataFormatError message naming ``path``, ``line`` and ``what``."""
    where = re.escape(str(path)) + ('' if line is None else f', line {line}')
    return f'^{where}: .*{what}'


# --------------------------------------------------------------------------------------
# MovieLens-100K, MovieLens-1M and PFedRec: the same rows with three delimiters
# --------------------------------------------------------------------------------------
# raw users 22, 186, 196 -> 0, 1, 2; raw items 51, 242, 302, 377 -> 0, 1, 2, 3
#   user 22:  377 @ 878887116, 242 @ 881250949        -> items 3, 1
#   user 186: 302 @ 891717742                          -> item 2
#   user 196: 242 @ 881250949, 51 @ 880606923          -> chronological 51, 242 -> 0, 1
ROWS = [
    (196, 242, 3, 881250949),
    (186, 302, 3, 891717742),
    (22, 377, 1, 878887116),
    (196, 51, 2, 880606923),
    (22, 242, 5, 881250949),
]
EXPECTED_EDGES = [[0, 0, 1, 2, 2], [3, 1, 2, 0, 1]]
EXPECTED_RATING = [1.0, 5.0, 3.0, 2.0, 3.0]
EXPECTED_TIME = [878887116, 881250949, 891717742, 880606923, 881250949]

RATING_READERS = [
    pytest.param(read_movielens_100k, '\t', 'u.data', id='ml-100k'),
    pytest.param(read_movielens_1m, '::', 'ratings.dat', id='ml-1m'),
    pytest.param(read_pfedrec_ratings, ',', 'ratings.dat', id='pfedrec'),
]


def _rows_text(rows, sep):
    return ''.join(sep.join(str(v) for v in row) + '\n' for row in rows)


@pytest.mark.parametrize('reader,sep,name', RATING_READERS)
def test_rating_readers(tmp_path, reader, sep, name):
    path = _write(tmp_path / name, _rows_text(ROWS, sep))
    data = reader(path)
    assert data[USER].num_nodes == 3
    assert data[ITEM].num_nodes == 4
    assert data[RATES].edge_index.shape == (2, 5)
    assert data[RATES].edge_index.tolist() == EXPECTED_EDGES
    assert data[RATES].edge_index.dtype == torch.long
    assert data[USER].raw_id.dtype == torch.int64
    assert data[ITEM].raw_id.dtype == torch.int64
    assert data[USER].raw_id.tolist() == [22, 186, 196]
    assert data[ITEM].raw_id.tolist() == [51, 242, 302, 377]
    assert data[RATES].rating.tolist() == EXPECTED_RATING
    assert data[RATES].rating.dtype == torch.float32
    assert data[RATES].time.tolist() == EXPECTED_TIME
    assert data[RATES].time.dtype == torch.int64
    assert data.name == name
    assert data.num_dropped == {'non_positive_rating': 0, 'repeated_pair': 0}
    _check_reverse(data)


def test_movielens_100k_tolerates_crlf_and_blank_lines(tmp_path):
    text = _rows_text(ROWS[:2], '\t').replace('\n', '\r\n') + '\n\n' + _rows_text(ROWS[2:], '\t')
    path = tmp_path / 'u.data'
    path.write_bytes(text.encode())
    data = read_movielens_100k(path)
    assert data[RATES].edge_index.tolist() == EXPECTED_EDGES
    assert data[RATES].time.tolist() == EXPECTED_TIME


def test_rating_reader_drops_non_positive_and_repeats(tmp_path):
    rows = ROWS + [(22, 51, 0, 890000000),       # rating 0: dropped
                   (186, 302, 4, 891717743)]     # repeat of (186, 302), later: kept
    data = read_pfedrec_ratings(_write(tmp_path / 'r.dat', _rows_text(rows, ',')))
    assert data.num_dropped == {'non_positive_rating': 1, 'repeated_pair': 1}
    assert data[RATES].edge_index.tolist() == EXPECTED_EDGES
    # the kept copy of (186, 302) is the later one
    assert data[RATES].rating[2].item() == 4.0
    assert data[RATES].time[2].item() == 891717743


# --------------------------------------------------------------------------------------
# Last.fm: header, tab, no time
# --------------------------------------------------------------------------------------
def test_read_lastfm_2k(tmp_path):
    # raw users 2, 3 -> 0, 1; raw items 51, 52, 100 -> 0, 1, 2; file order is time order
    path = _write(tmp_path / 'user_artists.dat',
                  'userID\tartistID\tweight\n'
                  '2\t52\t11690\n'
                  '3\t100\t5\n'
                  '2\t51\t13883\n'
                  '3\t51\t7\n')
    data = read_lastfm_2k(path)
    assert data[USER].num_nodes == 2
    assert data[ITEM].num_nodes == 3
    assert data[RATES].edge_index.tolist() == [[0, 0, 1, 1], [1, 0, 2, 0]]
    assert data[USER].raw_id.tolist() == [2, 3]
    assert data[ITEM].raw_id.tolist() == [51, 52, 100]
    assert data[RATES].rating.tolist() == [11690.0, 13883.0, 5.0, 7.0]
    assert 'time' not in data[RATES]
    _check_reverse(data)


# --------------------------------------------------------------------------------------
# Amazon: string ids
# --------------------------------------------------------------------------------------
def test_read_amazon_csv(tmp_path):
    # users 'A1M5Z4B2T1S4AM' < 'A2SUAM1J3GNN3B' -> 0, 1; items '0000013714' < 'B00001'
    path = _write(tmp_path / 'ratings_Books.csv',
                  'A2SUAM1J3GNN3B,0000013714,5.0,1382400000\n'
                  'A1M5Z4B2T1S4AM,0000013714,4.0,1380000000\n'
                  'A2SUAM1J3GNN3B,B00001,3.0,1370000000\n')
    data = read_amazon_csv(path)
    assert data[USER].num_nodes == 2
    assert data[ITEM].num_nodes == 2
    assert data[USER].raw_id == ['A1M5Z4B2T1S4AM', 'A2SUAM1J3GNN3B']
    # leading zeros of string ids are kept
    assert data[ITEM].raw_id == ['0000013714', 'B00001']
    assert data[RATES].edge_index.tolist() == [[0, 1, 1], [0, 1, 0]]
    assert data[RATES].rating.tolist() == [4.0, 3.0, 5.0]
    assert data[RATES].time.tolist() == [1380000000, 1370000000, 1382400000]
    _check_reverse(data)


# --------------------------------------------------------------------------------------
# LightGCN folders
# --------------------------------------------------------------------------------------
def _lightgcn_triples(data):
    ei, split = data[RATES].edge_index, data[RATES].split
    return sorted(zip(ei[0].tolist(), ei[1].tolist(), split.tolist()))


def _assert_grouped_by_user_then_split(data):
    user, split = data[RATES].edge_index[0], data[RATES].split
    assert bool((user[1:] >= user[:-1]).all())
    same = user[1:] == user[:-1]
    assert bool((split[1:][same] >= split[:-1][same]).all())


def test_read_lightgcn_train_test(tmp_path):
    _write(tmp_path / 'train.txt', '0 10 11 12\n1 11\n2 13 10\n')
    _write(tmp_path / 'test.txt', '0 13\n1 10\n2\n')  # user 2 has no test item
    data = read_lightgcn(tmp_path)
    assert data[USER].num_nodes == 3
    assert data[ITEM].num_nodes == 4
    assert data[RATES].edge_index.shape == (2, 8)
    assert data[ITEM].raw_id.tolist() == [10, 11, 12, 13]
    assert data[USER].raw_id.tolist() == [0, 1, 2]
    assert _lightgcn_triples(data) == [
        (0, 0, 0), (0, 1, 0), (0, 2, 0), (0, 3, 2),
        (1, 0, 2), (1, 1, 0),
        (2, 0, 0), (2, 3, 0),
    ]
    assert 'time' not in data[RATES]
    assert data[RATES].split.dtype == torch.int64
    _assert_grouped_by_user_then_split(data)
    _check_reverse(data)


def test_read_lightgcn_with_valid(tmp_path):
    _write(tmp_path / 'train.txt', '0 10 11\n1 11 12\n')
    _write(tmp_path / 'valid.txt', '0 14\n')
    _write(tmp_path / 'test.txt', '0 13\n1 10\n')
    data = read_lightgcn(tmp_path)
    assert data[ITEM].raw_id.tolist() == [10, 11, 12, 13, 14]
    assert _lightgcn_triples(data) == [
        (0, 0, 0), (0, 1, 0), (0, 3, 2), (0, 4, 1),
        (1, 0, 2), (1, 1, 0), (1, 2, 0),
    ]
    assert sorted(set(data[RATES].split.tolist())) == [0, 1, 2]
    _assert_grouped_by_user_then_split(data)
    _check_reverse(data)


def test_read_lightgcn_prefers_the_held_out_copy_of_a_pair(tmp_path):
    _write(tmp_path / 'train.txt', '0 10 13\n')
    _write(tmp_path / 'test.txt', '0 13\n')
    data = read_lightgcn(tmp_path)
    assert _lightgcn_triples(data) == [(0, 0, 0), (0, 1, 2)]
    assert data.num_dropped['repeated_pair'] == 1


# --------------------------------------------------------------------------------------
# Generic CSV
# --------------------------------------------------------------------------------------
def test_read_csv_named_columns(tmp_path):
    # the header orders the columns differently from the mapping; string ids sort as text
    path = _write(tmp_path / 'r.csv',
                  'ts,movie,uid,stars\n'
                  '300,m1,10,4.5\n'
                  '100,m2,9,1.0\n'
                  '200,m1,2,2.0\n'
                  '50,m3,10,3.0\n')
    data = read_csv(path, user='uid', item='movie', rating='stars', time='ts')
    assert data[USER].raw_id == ['10', '2', '9']
    assert data[ITEM].raw_id == ['m1', 'm2', 'm3']
    assert data[USER].num_nodes == 3
    assert data[ITEM].num_nodes == 3
    # user '10': m3 @ 50, m1 @ 300; user '2': m1 @ 200; user '9': m2 @ 100
    assert data[RATES].edge_index.tolist() == [[0, 0, 1, 2], [2, 0, 0, 1]]
    assert data[RATES].rating.tolist() == [3.0, 4.5, 2.0, 1.0]
    assert data[RATES].time.tolist() == [50, 300, 200, 100]
    _check_reverse(data)


def test_read_csv_positional_columns_integer_ids(tmp_path):
    path = _write(tmp_path / 'r.csv', '7,5.0,3\n4,1.0,3\n7,2.0,1\n')
    data = read_csv(path, user=2, item=0, rating=1, header=False, integer_ids=True)
    assert data[USER].raw_id.dtype == torch.int64
    assert data[USER].raw_id.tolist() == [1, 3]
    assert data[ITEM].raw_id.tolist() == [4, 7]
    # no time: input order; user 1: item 7; user 3: items 7, 4
    assert data[RATES].edge_index.tolist() == [[0, 1, 1], [1, 1, 0]]
    assert data[RATES].rating.tolist() == [2.0, 5.0, 1.0]
    assert 'time' not in data[RATES]
    _check_reverse(data)


def test_read_csv_positional_columns_skip_header(tmp_path):
    path = _write(tmp_path / 'r.csv', 'a,b\nu1,i2\nu2,i1\n')
    data = read_csv(path, user=0, item=1)
    assert data[USER].raw_id == ['u1', 'u2']
    assert data[RATES].edge_index.tolist() == [[0, 1], [1, 0]]
    assert 'rating' not in data[RATES]


def test_read_csv_tsv(tmp_path):
    path = _write(tmp_path / 'r.tsv', 'user\titem\trating\nb\tx\t1\na\ty\t2\na\tx\t3\n')
    data = read_csv(path, delimiter='\t', rating='rating')
    assert data[USER].raw_id == ['a', 'b']
    assert data[ITEM].raw_id == ['x', 'y']
    assert data[RATES].edge_index.tolist() == [[0, 0, 1], [1, 0, 0]]
    assert data[RATES].rating.tolist() == [2.0, 3.0, 1.0]
    _check_reverse(data)


def test_read_csv_whitespace(tmp_path):
    path = _write(tmp_path / 'r.txt',
                  'user   item  time\n'
                  '  u2 \t i1   5\n'
                  'u1 i2\t\t7\n'
                  'u2    i2 3\n')
    data = read_csv(path, delimiter=None, time='time')
    assert data[USER].raw_id == ['u1', 'u2']
    assert data[ITEM].raw_id == ['i1', 'i2']
    assert data[RATES].edge_index.tolist() == [[0, 1, 1], [1, 1, 0]]
    assert data[RATES].time.tolist() == [7, 3, 5]
    _check_reverse(data)


# --------------------------------------------------------------------------------------
# Quoted CSV fields (RFC 4180)
# --------------------------------------------------------------------------------------
QUOTED_CSV = ('"user","item","rating","timestamp"\r\n'
              'u1,"Film, 12",4,1000\r\n'
              'u2,"Say ""hi""",5,1001\r\n'
              'u1, "Two\r\nlines, too",3,1002\r\n'
              '\r\n'
              'u3,12" screen,2,1003\r\n'
              '"u,2",plain,1,1004\r\n')


def test_read_csv_quoted_fields(tmp_path):
    path = _write(tmp_path / 'q.csv', QUOTED_CSV)
    data = read_csv(path, rating='rating', time='timestamp')
    # Quoted fields keep their delimiters, line breaks and (undoubled) quotes; a quote
    # inside an unquoted field is an ordinary character.
    assert data[ITEM].raw_id == ['12" screen', 'Film, 12', 'Say "hi"', 'Two\r\nlines, too',
                                 'plain']
    assert data[USER].raw_id == ['u,2', 'u1', 'u2', 'u3']
    assert data[RATES].edge_index.shape == (2, 5)
    # 'u,2': plain @ 1004; u1: Film @ 1000, Two lines @ 1002; u2: Say hi; u3: 12" screen
    assert data[RATES].edge_index.tolist() == [[0, 1, 1, 2, 3], [4, 1, 3, 2, 0]]
    assert data[RATES].rating.tolist() == [1.0, 4.0, 3.0, 5.0, 2.0]
    assert data[RATES].time.tolist() == [1004, 1000, 1002, 1001, 1003]


def test_read_csv_quoted_tsv(tmp_path):
    path = _write(tmp_path / 'q.tsv', 'user\titem\n"a\tb"\t"x\ty"\nc\tz\n')
    data = read_csv(path, delimiter='\t')
    assert data[USER].raw_id == ['a\tb', 'c']
    assert data[ITEM].raw_id == ['x\ty', 'z']


@pytest.mark.parametrize('block_chars', [8, 40, 100, None])
@pytest.mark.parametrize('integer_ids', [False, 'auto'])
def test_the_column_reader_reads_quoted_fields_as_the_line_reader(tmp_path, monkeypatch,
                                                                  block_chars, integer_ids):
    # Blocks of 8 or 40 characters end inside the quoted line break of line 4.
    path = _write(tmp_path / 'q.csv', QUOTED_CSV)
    if block_chars is not None:
        monkeypatch.setattr(reader, 'BLOCK_CHARS', block_chars)
    args = (path, MIXED_COLUMNS[:1] + [reader.Column('item', 1),
                                       reader.Column('rating', 2, 'float'),
                                       reader.Column('time', 3, 'time')], ',')
    columns = reader._read_columns(*args, True, integer_ids, 'utf-8', None)
    expected = _line_by_line(monkeypatch, *args, header=True, integer_ids=integer_ids)
    assert expected['item'].tolist() == ['Film, 12', 'Say "hi"', 'Two\r\nlines, too',
                                         '12" screen', 'plain']
    assert columns is not None
    for name, values in expected.items():
        assert columns[name].tolist() == values.tolist()


@pytest.mark.parametrize('rows,line,what', [
    pytest.param('u1,"a"b,1\n', 3, "bad quoting \\(',' expected after '\"'\\)",
                 id='text-after-the-closing-quote'),
    pytest.param('u1,"never closed,1\nu2,i,1\n', 3, 'bad quoting \\(unexpected end of data\\)',
                 id='unclosed-quote-names-the-line-it-opens-on'),
    pytest.param('u1,"two\nlines",1\nu2,i,x\n', 5, "must be a finite number, got 'x'",
                 id='lines-after-a-quoted-line-break-keep-their-numbers'),
    pytest.param('u1,"two\nlines",x\n', 3, "must be a finite number, got 'x'",
                 id='a-record-over-two-lines-is-named-by-its-first'),
    pytest.param('u1,"two\nlines"\n', 3,
                 re.escape("expected 3 fields separated by ',' (user,item,rating), found 2: "
                           "'u1,\"two\\nlines\"'"),
                 id='too-few-fields-quotes-the-whole-record'),
])
def test_quoting_errors_name_the_line(tmp_path, rows, line, what):
    path = _write(tmp_path / 'q.csv', 'user,item,rating\nu0,i0,1\n' + rows)
    with pytest.raises(DataFormatError, match=_error(path, line, what)) as info:
        read_csv(path, rating='rating')
    assert info.value.line == line


# --------------------------------------------------------------------------------------
# Malformed input
# --------------------------------------------------------------------------------------
GOOD_TAB = '196\t242\t3\t881250949\n186\t302\t3\t891717742\n'


def _malformed(id, reader, name, text, line, what, **kwargs):
    """A case of ``test_malformed_input``: ``reader(path, **kwargs)`` on a file ``name``
    holding ``text`` raises a DataFormatError at ``line`` whose message matches ``what``."""
    return pytest.param(reader, kwargs, name, text, line, what, id=id)


MALFORMED = [
    # MovieLens-100K
    _malformed('ml-100k-too-few-fields', read_movielens_100k, 'u.data',
               GOOD_TAB + '22\t377\t1\n', 3,
               re.escape("expected 4 fields separated by '\\t' (user\titem\trating\ttime), "
                         "found 3: '22\\t377\\t1'")),
    _malformed('ml-100k-non-numeric-rating', read_movielens_100k, 'u.data',
               '196\t242\t3\t881250949\n186\t302\tgood\t891717742\n', 2,
               re.escape("field 'rating' (field 3) must be a finite number, got 'good'")),
    _malformed('ml-100k-nan-rating', read_movielens_100k, 'u.data',
               GOOD_TAB + '22\t377\tnan\t878887116\n', 3,
               re.escape("field 'rating' (field 3) must be a finite number, got 'nan'")),
    _malformed('ml-100k-time-not-a-timestamp', read_movielens_100k, 'u.data',
               GOOD_TAB + '22\t377\t1\tyesterday\n', 3,
               re.escape("field 'time' (field 4) must be a timestamp (Unix seconds or ISO "
                         "8601), got 'yesterday'")),
    _malformed('ml-100k-non-integer-user-id', read_movielens_100k, 'u.data',
               GOOD_TAB + 'u22\t377\t1\t878887116\n', 3,
               re.escape("field 'user' (field 1) must be an integer id, got 'u22'")),
    _malformed('ml-100k-non-integer-item-id', read_movielens_100k, 'u.data',
               GOOD_TAB + '22\t3.5\t1\t878887116\n', 3,
               re.escape("field 'item' (field 2) must be an integer id, got '3.5'")),
    _malformed('ml-100k-empty-field', read_movielens_100k, 'u.data',
               '196\t\t3\t881250949\n', 1, re.escape("field 'item' is empty")),
    _malformed('ml-100k-blank-field', read_movielens_100k, 'u.data',
               GOOD_TAB + '22\t377\t \t878887116\n', 3, re.escape("field 'rating' is empty")),
    _malformed('ml-100k-blank-lines-are-counted', read_movielens_100k, 'u.data',
               GOOD_TAB + '\n\n22\t377\tx\t878887116\n', 5,
               re.escape("field 'rating' (field 3) must be a finite number, got 'x'")),
    # MovieLens-1M, PFedRec, Amazon
    _malformed('ml-1m-wrong-delimiter', read_movielens_1m, 'ratings.dat',
               '1::1193::5::978300760\n1,661,3,978302109\n', 2,
               re.escape("expected 4 fields separated by '::' (user::item::rating::time), "
                         "found 1: '1,661,3,978302109'")),
    _malformed('pfedrec-non-numeric-rating', read_pfedrec_ratings, 'ratings.dat',
               '0,1,5,100\n0,2,4,101\n1,item3,four,102\n', 3,
               "field 'rating' \\(field 3\\) must be a finite number, got 'four'"),
    _malformed('amazon-empty-field', read_amazon_csv, 'a.csv',
               'A1,B1,5.0,1\n,B2,4.0,2\n', 2, "field 'user' is empty"),
    _malformed('amazon-too-few-fields', read_amazon_csv, 'a.csv',
               'A1,B1,5.0,1\nA2,B2,4.0,2\nA3,B3,4.0\n', 3,
               "expected 4 fields separated by ','.*found 3"),
    # Last.fm: the header is line 1, and a file of only the header is empty
    _malformed('lastfm-header-only-is-empty', read_lastfm_2k, 'user_artists.dat',
               'userID\tartistID\tweight\n', None, 'file is empty'),
    _malformed('lastfm-line-numbers-count-the-header', read_lastfm_2k, 'user_artists.dat',
               'userID\tartistID\tweight\n2\t51\t13883\n2\t52\tlots\n', 3,
               "field 'rating' \\(field 3\\) must be a finite number, got 'lots'"),
    # Generic CSV
    _malformed('csv-header-missing-named-column', read_csv, 'r.csv',
               'uid,movie,ts\n1,2,3\n', 1,
               "the header has no column 'stars' for the rating; "
               r"its columns are \['uid', 'movie', 'ts'\]",
               user='uid', item='movie', rating='stars'),
    _malformed('csv-header-default-names-missing', read_csv, 'r.csv',
               'uid,movie\n1,2\n', 1, "no column 'user'"),
    _malformed('csv-bad-time-reports-line', read_csv, 'r.csv',
               'user,item,time\nu,i,1\nu,j,2024-02-30\nu,k,3\n', 3,
               "field 'time' \\(field 3\\) must be a timestamp \\(Unix seconds or ISO 8601\\), "
               "got '2024-02-30'", time='time'),
    _malformed('csv-empty-file', read_csv, 'r.csv',
               '', None, 'file is empty; expected a header line'),
    _malformed('csv-header-only-is-empty', read_csv, 'r.csv',
               'user,item\n', None, 'file is empty'),
    # Every other reader calls a file of blank lines empty ("Blank lines are ignored");
    # read_csv takes the blank first line as a header and says "its columns are ['']".
    _malformed('csv-blank-file-is-reported-as-empty', read_csv, 'r.csv',
               '\n\n', None, 'file is empty'),
]


@pytest.mark.parametrize('reader,kwargs,name,text,line,what', MALFORMED)
def test_malformed_input(tmp_path, reader, kwargs, name, text, line, what):
    path = _write(tmp_path / name, text)
    with pytest.raises(DataFormatError, match=_error(path, line, what)) as info:
        reader(path, **kwargs)
    assert info.value.line == line
    assert info.value.path == str(path)


@pytest.mark.parametrize('text', ['', '\n\n  \n'], ids=['empty', 'blank-lines'])
@pytest.mark.parametrize('reader', [read_movielens_100k, read_movielens_1m,
                                    read_pfedrec_ratings, read_amazon_csv])
def test_empty_file(tmp_path, reader, text):
    path = _write(tmp_path / 'ratings', text)
    with pytest.raises(DataFormatError, match=_error(path, None, 'file is empty')) as info:
        reader(path)
    assert info.value.line is None


def test_invalid_utf8(tmp_path):
    path = tmp_path / 'a.csv'
    path.write_bytes(b'A1,B1,5.0,1\nA\xff\xfe2,B2,4.0,2\n')
    with pytest.raises(DataFormatError, match=_error(path, None, 'is not valid utf-8 text')):
        read_amazon_csv(path)


@pytest.mark.parametrize('reader', [read_movielens_100k, read_movielens_1m,
                                    read_pfedrec_ratings, read_lastfm_2k, read_amazon_csv,
                                    read_csv])
def test_missing_file(tmp_path, reader):
    path = tmp_path / 'nope.dat'
    with pytest.raises(FileNotFoundError, match=re.escape(str(path))):
        reader(path)


def test_lightgcn_missing_folder_or_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / 'train.txt'))):
        read_lightgcn(tmp_path)
    _write(tmp_path / 'train.txt', '0 1 2\n')
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / 'test.txt'))):
        read_lightgcn(tmp_path)


@pytest.mark.parametrize('file,text,line,token', [
    pytest.param('train.txt', '0 10 11\n1 11 x12\n', 2, 'x12', id='letters-in-train'),
    pytest.param('test.txt', '0 13\n\n1 2.5\n', 3, '2.5', id='decimal-in-test'),
    pytest.param('train.txt', 'u0 10\n', 1, 'u0', id='user-token'),
    pytest.param('train.txt', '0 10\n1 11 --5\n', 2, '--5', id='double-minus'),
])
def test_lightgcn_non_integer_token(tmp_path, file, text, line, token):
    _write(tmp_path / 'train.txt', '0 10 11\n1 11\n')
    _write(tmp_path / 'test.txt', '0 13\n')
    path = _write(tmp_path / file, text)
    with pytest.raises(DataFormatError,
                       match=_error(path, line, re.escape(
                           f'expected 64-bit integer ids "user item item ...", got {token!r}'))):
        read_lightgcn(tmp_path)


def test_lightgcn_empty_train(tmp_path):
    path = _write(tmp_path / 'train.txt', '\n')
    _write(tmp_path / 'test.txt', '0 13\n')
    with pytest.raises(DataFormatError, match=_error(path, None, 'file is empty')):
        read_lightgcn(tmp_path)


@pytest.mark.parametrize('reader, text', [
    (read_amazon_csv, 'A1,B1,5.0,1\nA2,B1,4.0,2\n'),
    (lambda path: read_csv(path, user=0, item=1, header=False), 'A1,B1\nA2,B1\n'),
    (read_csv, 'user,item\nA1,B1\nA2,B1\n')])
def test_a_byte_order_mark_is_not_part_of_the_first_id(tmp_path, reader, text):
    path = tmp_path / 'bom.csv'
    path.write_bytes(b'\xef\xbb\xbf' + text.encode())
    data = reader(path)
    assert data[USER].raw_id == ['A1', 'A2']


@pytest.mark.parametrize('reader', [read_movielens_100k, read_amazon_csv, read_csv])
def test_a_directory_is_not_a_data_file(tmp_path, reader):
    with pytest.raises(DataFormatError, match=_error(tmp_path, None, 'is a directory')):
        reader(tmp_path)


def test_an_integer_id_beyond_64_bits_is_an_error_with_its_line(tmp_path):
    path = _write(tmp_path / 'u.data', '196\t242\t3\t881250949\n'
                                       '100000000000000000000\t302\t3\t891717742\n')
    with pytest.raises(DataFormatError, match=_error(path, 2, 'out of the 64-bit integer')):
        read_movielens_100k(path)
    lightgcn = tmp_path / 'lightgcn'
    lightgcn.mkdir()
    _write(lightgcn / 'train.txt', '0 1 2\n1 100000000000000000000\n')
    _write(lightgcn / 'test.txt', '0 3\n1 2\n')
    with pytest.raises(DataFormatError, match=_error(lightgcn / 'train.txt', 2, '64-bit')):
        read_lightgcn(lightgcn)
    # Ids that only might be integers stay strings when one of them is too long for 64 bits.
    path = _write(tmp_path / 'r.csv', 'user,item\n1,5\n100000000000000000000,5\n')
    assert read_csv(path)[USER].raw_id == ['1', '100000000000000000000']


# --------------------------------------------------------------------------------------
# The column reader: the line-by-line reader's results, in blocks
# --------------------------------------------------------------------------------------
MIXED_COLUMNS = [reader.Column('user', 0), reader.Column('item', 2),
                 reader.Column('rating', 1, 'float'), reader.Column('time', 3, 'time')]
MIXED_TEXT = ('user,rating,item,time\r\n'
              '\n'
              ' 7 ,4.5,007,881250949\r\n'
              '8,-1e3,12,+5\n'
              '   \n'
              '9,1e308,u9,0,extra\n'
              '10,0,x,-12\n')


def _line_by_line(monkeypatch, *args, **kwargs):
    with monkeypatch.context() as patch:
        patch.setattr(reader, '_read_columns', lambda *_: None)
        return reader.read_delimited(*args, **kwargs)


@pytest.mark.parametrize('block_chars', [8, 40, None])
@pytest.mark.parametrize('integer_ids', [True, False, 'auto'])
def test_the_column_reader_reads_what_the_line_reader_reads(tmp_path, monkeypatch,
                                                            block_chars, integer_ids):
    text = MIXED_TEXT if integer_ids is not True else MIXED_TEXT.replace('u9', '9').replace(
        ',x,', ',11,')
    path = _write(tmp_path / 'mixed.csv', text)
    if block_chars is not None:
        monkeypatch.setattr(reader, 'BLOCK_CHARS', block_chars)
    args = (path, MIXED_COLUMNS, ',')
    columns = reader._read_columns(*args, True, integer_ids, 'utf-8', None)
    expected = _line_by_line(monkeypatch, *args, header=True, integer_ids=integer_ids)
    # Small blocks split the 'auto' item column into a block of integers and one of strings.
    if integer_ids == 'auto' and block_chars is not None:
        assert columns is None
        return
    assert columns is not None and columns.keys() == expected.keys()
    for name, values in expected.items():
        assert columns[name].dtype == values.dtype
        assert columns[name].tolist() == values.tolist()
    assert expected['item'].tolist() == (['007', '12', 'u9', 'x'] if integer_ids is not True
                                         else [7, 12, 9, 11])
    assert reader.read_delimited(path, MIXED_COLUMNS, ',', header=True,
                                 integer_ids=integer_ids)['item'].tolist() == \
        expected['item'].tolist()


@pytest.mark.parametrize('line', ['1,2,nan,4', '1,2,inf,4', '1,2,1e400,4', '1,2,3,1e300', '1,2,3', '1,,3,4', '1,2_0,3,4', '1,2,3,4.5',
                                  '1,2,3,2024-01-01', '99999999999999999999,2,3,4'])
def test_the_column_reader_leaves_every_doubtful_line_to_the_line_reader(tmp_path, line):
    path = _write(tmp_path / 'r.csv', f'1,2,3,4\n{line}\n')
    columns = [reader.Column('user', 0, 'int'), reader.Column('item', 1, 'int'),
               reader.Column('rating', 2, 'float'), reader.Column('time', 3, 'time')]
    assert reader._read_columns(path, columns, ',', False, True, 'utf-8', None) is None
    clean = _write(tmp_path / 'clean.csv', '1,2,3,4\n5,6,7e0,8\n')
    read = reader._read_columns(clean, columns, ',', False, True, 'utf-8', None)
    assert read['rating'].tolist() == [3.0, 7.0] and read['time'].tolist() == [4, 8]


# --------------------------------------------------------------------------------------
# Non-finite ratings, out-of-range timestamps, long fields
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize('rating', ['inf', '-inf', 'Infinity', '+INF', 'nan', 'NaN', '1e400'])
@pytest.mark.parametrize('reader_, sep', [(read_pfedrec_ratings, ','),
                                          (read_movielens_100k, '\t')])
def test_a_non_finite_rating_is_refused_with_its_line(tmp_path, rating, reader_, sep):
    rows = _rows_text(ROWS[:2], sep) + sep.join(['22', '377', rating, '878887116']) + '\n'
    path = _write(tmp_path / 'ratings.dat', rows + _rows_text(ROWS[2:], sep))
    with pytest.raises(DataFormatError, match=_error(path, 3, re.escape(
            f"field 'rating' (field 3) must be a finite number, got {rating!r}"))):
        reader_(path)


@pytest.mark.parametrize('time', ['1e300', '-1e300', '9223372036854775808',
                                  '9.3e18', '-99999999999999999999'])
@pytest.mark.parametrize('time_format', [None, 'unix'])
def test_a_timestamp_beyond_64_bits_is_refused_with_its_line(tmp_path, time, time_format):
    path = _write(tmp_path / 'r.csv', f'user,item,time\nu1,a,5\nu2,b,{time}\nu3,c,6\n')
    with pytest.raises(DataFormatError, match=_error(path, 3, re.escape(
            f"field 'time' (field 3) is a timestamp beyond the 64-bit range of Unix "
            f"seconds: {time!r}"))):
        read_csv(path, time='time', time_format=time_format)


@pytest.mark.parametrize('time', ['inf', 'nan', '-Infinity'])
def test_a_non_finite_timestamp_is_refused_with_its_line(tmp_path, time):
    path = _write(tmp_path / 'r.csv', f'user,item,time\nu1,a,5\nu2,b,{time}\n')
    with pytest.raises(DataFormatError, match=_error(path, 3, re.escape(
            f"field 'time' (field 3) must be a timestamp (Unix seconds or ISO 8601), "
            f"got {time!r}"))):
        read_csv(path, time='time')


def test_timestamps_at_the_64_bit_limits_are_read(tmp_path):
    path = _write(tmp_path / 'r.csv', 'user,item,time\nu1,a,9223372036854775807\n'
                                      'u2,b,-9223372036854775808\nu3,c,1.5e9\n')
    assert read_csv(path, time='time')[RATES].time.tolist() == [
        9223372036854775807, -9223372036854775808, 1500000000]


MEGABYTE = 'x' * (1 << 20)


@pytest.mark.parametrize('name,text,line', [
    pytest.param('rating.csv', f'user,item,rating\nu,i,1\nu,j,{MEGABYTE}\n', 3,
                 id='a-long-rating'),
    pytest.param('fields.csv', f'user,item,rating\nu,i,1\nu{MEGABYTE}\n', 3,
                 id='a-long-line-with-too-few-fields'),
    pytest.param('empty.csv', f'user,item,rating\nu,,{MEGABYTE}\n', 2,
                 id='a-long-line-with-an-empty-field'),
    pytest.param('quoted.csv', f'user,item,rating\nu,"i",1\nu,"j,{MEGABYTE}",x\n', 3,
                 id='a-long-quoted-field'),
    pytest.param('time.csv', f'user,item,rating\nu,i,1\nu,j,1{"0" * (1 << 20)}\n', 3,
                 id='a-long-number'),
])
def test_an_error_quotes_a_short_excerpt_of_a_long_field(tmp_path, name, text, line):
    path = _write(tmp_path / name, text)
    with pytest.raises(DataFormatError, match=_error(path, line, r"\.\.\. \(\d+ characters\)")) \
            as info:
        read_csv(path, rating='rating')
    assert info.value.line == line
    assert len(str(info.value)) < 300 + len(str(path))


def test_long_header_names_and_lightgcn_tokens_are_quoted_short(tmp_path):
    path = _write(tmp_path / 'r.csv', f'user,{MEGABYTE}\nu,i\n')
    with pytest.raises(DataFormatError, match=_error(path, 1, "no column 'item'")) as info:
        read_csv(path)
    assert len(str(info.value)) < 300 + len(str(path))
    _write(tmp_path / 'train.txt', f'0 1\n1 {MEGABYTE}\n')
    _write(tmp_path / 'test.txt', '0 2\n')
    with pytest.raises(DataFormatError, match=_error(tmp_path / 'train.txt', 2, '64-bit')) \
            as info:
        read_lightgcn(tmp_path)
    assert len(str(info.value)) < 300 + len(str(tmp_path))


def test_excerpt():
    assert reader.excerpt('short') == "'short'"
    long = reader.excerpt('ab' * 1000)
    assert long == repr('ab' * 1000)[:60] + '... (2000 characters)'
    assert reader.excerpt(['a', 'b']) == "['a', 'b']"
    assert reader.excerpt(['a' * 100, 'b']).endswith('... (2 items)')
