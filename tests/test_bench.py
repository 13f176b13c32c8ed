import json

from fedgraph.cli import main


def test_bench_scale_prints_a_row_per_size_and_writes_json(tmp_path, capsys):
    out = tmp_path / 'scale.json'
    main(['bench', 'scale', '--sizes', '300', '600', '--rounds', '1',
          '--clients-per-round', '100', '--out', str(out)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith('| users | items | interactions | clients/round | s/round |')
    assert [line.split('|')[1].strip() for line in lines[2:]] == ['300', '600']
    rows = json.loads(out.read_text())
    assert [row['users'] for row in rows] == [300, 600]
    assert all(row['train_seconds'] > 0 and row['peak_memory_mb'] > 0 for row in rows)
    # every size keeps at least 1,000 items, and the measured graph has interactions
    assert all(row['items'] == 1000 and row['interactions'] > row['users'] for row in rows)
