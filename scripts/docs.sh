#!/usr/bin/env bash
# Installs what the docs need (see scripts/install.sh), then builds the documentation site
# (the README as its home page, the docs/ pages, the API reference from the docstrings)
# into build/site, failing on any warning (not with --quiet, which hides warnings from
# strict mode). Extra arguments go to `mkdocs build`.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=$(bash "$repo/scripts/install.sh")
cd "$repo"
NO_MKDOCS_2_WARNING=1 exec "$py" -m mkdocs build --strict "$@"
