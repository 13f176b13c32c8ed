"""A grid of runs that survives interruption: each finished run is one line of a JSON-lines
file, and running the grid again runs only what the file does not hold, when the file's rows
are of the same configuration."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Dict, Hashable, List, Mapping, Optional, Sequence

from tqdm import tqdm

from fedgraph.files import read_json_lines


def resumable_grid(cells: Sequence[Hashable], key: Callable[[Dict], Hashable],
                   run: Callable[[Hashable], Dict], out: Optional[Path] = None,
                   desc: str = 'grid', progress: bool = True,
                   configuration: Optional[Mapping[str, Any]] = None) -> List[Dict]:
    """``run(cell)`` for every cell, in order, each row timed (``wall_s``, ``cpu_s``). With
    ``out``, a cell whose row is in that file already (``key(row) == cell``) is read back
    instead of run, and every new row is appended as soon as it is done. Each row carries
    ``configuration`` (what every cell shares: the settings beyond the cell's own), and a
    file with a row of another configuration is refused rather than mixed in.

    Raises:
        fedgraph.files.DamagedFileError: a line of ``out`` is not JSON (the message names
            the file and the line).
        ValueError: ``out`` holds rows of another configuration (the message names the
            settings that differ).
    """
    shared = json.loads(json.dumps(dict(configuration or {})))
    done = {}
    if out is not None and out.exists():
        for row in read_json_lines(out):
            differs = differences(row.get('configuration'), shared)
            if differs:
                raise ValueError(f'{out} holds results of another configuration ({differs}); '
                                 f'choose another --out, or delete the file to run again')
            done[key(row)] = row
    rows = []
    for cell in tqdm(cells, desc=desc, unit='run', disable=not progress):
        if cell in done:
            rows.append(done[cell])
            continue
        began, cpu = time.perf_counter(), time.process_time()
        row = run(cell)
        row.update(wall_s=round(time.perf_counter() - began, 1),
                   cpu_s=round(time.process_time() - cpu, 1), configuration=shared)
        rows.append(row)
        if out is not None:
            with open(out, 'a') as handle:
                handle.write(json.dumps(row) + '\n')
    return rows


def differences(theirs: Optional[Mapping[str, Any]], ours: Mapping[str, Any],
                shown: int = 4) -> str:
    """The settings in which the configuration of a file's row (``theirs``; ``None``: a row
    without one) differs from ``ours``, as text (empty: none); nested sections by dotted
    name, the first ``shown`` of them."""
    if theirs is None:
        return 'rows without their configuration' if ours else ''
    found = [f'{name}: {there!r} there, {here!r} now'
             for name, there, here in _flat_pairs(theirs, ours) if there != here]
    more = f' and {len(found) - shown} more' if len(found) > shown else ''
    return '; '.join(found[:shown]) + more


def _flat_pairs(theirs: Mapping[str, Any], ours: Mapping[str, Any], prefix: str = ''):
    for name in dict.fromkeys([*ours, *theirs]):
        there, here = theirs.get(name), ours.get(name)
        if isinstance(there, dict) and isinstance(here, dict):
            yield from _flat_pairs(there, here, f'{prefix}{name}.')
        else:
            yield prefix + name, there, here
