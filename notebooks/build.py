"""Syncs the tutorial notebooks from their sources and executes them in place (full size).

    python notebooks/build.py                 # sync and execute all four
    python notebooks/build.py --no-execute    # only sync, keeping the saved outputs
    python notebooks/build.py 02 03           # only the notebooks whose name starts so

The source of each notebook is the jupytext "percent" script beside it (``01-quickstart.py``
for ``01-quickstart.ipynb``; the pair is declared in the notebook metadata, ``formats:
ipynb,py:percent``). Edit the ``.py``, then run this script: it rewrites the ``.ipynb`` with
the cells of the ``.py`` and the outputs the ``.ipynb`` held for unchanged cells (as
``jupytext --to ipynb --update`` does), then executes it and saves the fresh outputs.
``tests/test_notebooks.py`` checks that each pair is in sync.

Each notebook reads ``FEDGRAPH_NOTEBOOK_SMALL`` in its first code cell and picks tiny
settings when it is ``1`` (the tests do that); this script unsets it, so the saved outputs
come from the full-size settings.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from pathlib import Path

import jupytext
import nbformat
from jupytext.combine import combine_inputs_with_outputs

HERE = Path(__file__).resolve().parent
FORMAT = 'py:percent'


def sources() -> list[Path]:
    """The notebooks' ``.py`` sources, ``NN-name.py``, in order."""
    return sorted(HERE.glob('[0-9][0-9]-*.py'))


def sync(source: Path) -> nbformat.NotebookNode:
    """The notebook of ``source``: its cells, with the outputs the paired ``.ipynb`` holds."""
    notebook = jupytext.read(source, fmt=FORMAT)
    ipynb = source.with_suffix('.ipynb')
    if ipynb.exists():
        notebook = combine_inputs_with_outputs(notebook, nbformat.read(ipynb, as_version=4),
                                               fmt=FORMAT)
    notebook.metadata.setdefault('jupytext', {})['formats'] = f'ipynb,{FORMAT}'
    notebook.metadata['jupytext'].pop('text_representation', None)
    notebook.metadata.setdefault('kernelspec', {'name': 'python3', 'display_name': 'Python 3',
                                                'language': 'python'})
    for cell in notebook.cells:  # new cells; ids are required from nbformat 4.5 on
        cell.setdefault('id', uuid.uuid4().hex[:8])
    return notebook


def execute(notebook: nbformat.NotebookNode, timeout: int = 600) -> None:
    """Runs ``notebook`` in place with the working directory set to this folder."""
    from nbclient import NotebookClient
    for cell in notebook.cells:
        if cell.cell_type == 'code':
            cell.outputs = []
            cell.execution_count = None
    NotebookClient(notebook, timeout=timeout, kernel_name='python3', record_timing=False,
                   resources={'metadata': {'path': str(HERE)}}).execute()


def write(notebook: nbformat.NotebookNode, source: Path) -> None:
    nbformat.validate(notebook)
    nbformat.write(notebook, source.with_suffix('.ipynb'))
    # Jupyter's jupytext refuses to open a pair whose .ipynb is newer than its text file.
    os.utime(source)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('names', nargs='*', help='only the notebooks whose name starts so')
    parser.add_argument('--no-execute', action='store_true',
                        help='only sync the .ipynb with its .py, keeping the saved outputs')
    args = parser.parse_args(argv)
    os.environ.pop('FEDGRAPH_NOTEBOOK_SMALL', None)  # saved outputs are full size
    chosen = [source for source in sources()
              if not args.names or any(source.name.startswith(prefix) for prefix in args.names)]
    if not chosen:
        parser.error(f'no notebook source in {HERE} starts with {" or ".join(args.names)}')
    for source in chosen:
        notebook = sync(source)
        write(notebook, source)  # synced even if the execution below fails
        print(f'{source.with_suffix(".ipynb").name}: synced from {source.name}', flush=True)
        if not args.no_execute:
            began = time.perf_counter()
            execute(notebook)
            write(notebook, source)
            print(f'{source.with_suffix(".ipynb").name}: executed in '
                  f'{time.perf_counter() - began:.1f} s', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
