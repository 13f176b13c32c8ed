#!/usr/bin/env bash
# Installs fedgraph-rec and its dependencies into a virtual environment and prints the
# environment's python. Uses the active virtual environment when there is one, otherwise
# creates (once) .venv in the repository root. Idempotent: a second call only checks that
# the packages are installed and that setup.cfg and this script have not changed since.
#
# Order matters: torch first (pinned), then torch-scatter, which compiles against the
# installed torch and so needs --no-build-isolation (pip caches the built wheel), then the
# package itself (with the test, Flower and docs extras) with torch held at its pin.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
torch_spec=${FEDGRAPH_TORCH:-torch==2.13.0}
scatter_spec=${FEDGRAPH_TORCH_SCATTER:-torch-scatter==2.1.2}

if [ -n "${VIRTUAL_ENV:-}" ]; then
  venv=$VIRTUAL_ENV
else
  venv=$repo/.venv
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv" >&2
fi
py=$venv/bin/python

stamp=$venv/.fedgraph-rec-installed
want=$(cat "$repo/setup.cfg" "$repo/scripts/install.sh" | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
   && "$py" -c "
import importlib.util, sys
sys.exit(not all(importlib.util.find_spec(m) for m in
                 ('torch', 'torch_scatter', 'torch_geometric', 'faiss', 'flwr', 'jupytext',
                  'ruff', 'mkdocs', 'dp_accounting', 'numba', 'fedgraph')))
" 2>/dev/null; then
  echo "$py"
  exit 0
fi

{
  echo "Installing fedgraph-rec into $venv ..."
  constraints=$(mktemp)
  trap 'rm -f "$constraints"' EXIT
  echo "$torch_spec" > "$constraints"
  "$py" -m pip install --quiet --upgrade pip setuptools wheel
  "$py" -m pip install --quiet "$torch_spec"
  "$py" -c "import torch_scatter" 2>/dev/null \
    || "$py" -m pip install --quiet --no-build-isolation -c "$constraints" "$scatter_spec"
  "$py" -m pip install --quiet -c "$constraints" -e "$repo[test,flower,docs]"
} >&2
echo "$want" > "$stamp"
echo "$py"
