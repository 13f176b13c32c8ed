#!/usr/bin/env bash
# Installs what the tests need (see scripts/install.sh), then runs the test suite.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=$(bash "$repo/scripts/install.sh")
cd "$repo"
exec "$py" -m pytest "$@"
