#!/usr/bin/env bash
# Installs fedgraph-rec (see scripts/install.sh), then runs the main job on MovieLens-100K.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=$(bash "$repo/scripts/install.sh")
cd "$repo"
exec "$py" -m fedgraph describe --dataset ml-100k "$@"
