"""A grid of runs that survives interruption: each finished run is one line of a JSON-lines
file, and running the grid again runs only what the file does not hold."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Dict, Hashable, List, Optional, Sequence

from tqdm import tqdm

from fedgraph.files import read_json_lines


def resumable_grid(cells: Sequence[Hashable], key: Callable[[Dict], Hashable],
                   run: Callable[[Hashable], Dict], out: Optional[Path] = None,
                   desc: str = 'grid', progress: bool = True) -> List[Dict]:
    """``run(cell)`` for every cell, in order, each row timed (``wall_s``, ``cpu_s``). With
    ``out``, a cell whose row is in that file already (``key(row) == cell``) is read back
    instead of run, and every new row is appended as soon as it is done.

    Raises:
        fedgraph.files.DamagedFileError: a line of ``out`` is not JSON (the message names
            the file and the line).
    """
    done = {}
    if out is not None and out.exists():
        for row in read_json_lines(out):
            done[key(row)] = row
    rows = []
    for cell in tqdm(cells, desc=desc, unit='run', disable=not progress):
        if cell in done:
            rows.append(done[cell])
            continue
        began, cpu = time.perf_counter(), time.process_time()
        row = run(cell)
        row.update(wall_s=round(time.perf_counter() - began, 1),
                   cpu_s=round(time.process_time() - cpu, 1))
        rows.append(row)
        if out is not None:
            with open(out, 'a') as handle:
                handle.write(json.dumps(row) + '\n')
    return rows
