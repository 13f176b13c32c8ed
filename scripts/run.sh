#!/usr/bin/env bash
# Installs fedgraph-rec (see scripts/install.sh), then trains PFedRec on MovieLens-100K with
# the paper's defaults (100 rounds, all users every round) into runs/pfedrec-ml100k.
# Extra arguments are passed to `fedgraph train` (e.g. --seed 1 --out runs/other).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=$(bash "$repo/scripts/install.sh")
cd "$repo"
exec "$py" -m fedgraph train --algorithm pfedrec --dataset ml-100k --rounds 100 --seed 0 \
  --out runs/pfedrec-ml100k "$@"
