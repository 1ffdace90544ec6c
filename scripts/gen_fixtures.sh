#!/usr/bin/env bash
# Regenerates every committed reference fixture under fixtures/ from the Python references
# (open_clip, transformers, PIL, NumPy, imagecorruptions). Run once after changing a generator;
# CI does not run it. corruptions.py installs its own pinned packages into a temporary venv
# (imagecorruptions needs NumPy < 2) and re-runs itself there.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/fixtures/setup_venv.sh
for gen in scripts/fixtures/[!_]*.py; do
  echo "== $gen" >&2
  .venv/bin/python "$gen"
done
