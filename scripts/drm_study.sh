#!/usr/bin/env bash
# DRM against FLYP and FT on ShiftWorld `spurious` and `domains` with the bundled model, every
# method's settings selected on ID validation top-1 (`robustft sweep`, the mean over three
# seeds; WiSE-FT α in {0, 0.25, 0.5, 0.75, 1} selected with them), the test splits only
# reported (README, "DRM with settings selected on validation"):
#   DRM:  drm.affinity × drm.lambda × drm.beta (learning rate 1e-4, as shipped);
#   FLYP, FT: train.lr in {3e-5, 1e-4, 3e-4}.
# Writes runs/drm_study/<suite>/<method>/{sweep.json, results.jsonl, report.html}.
#
#   scripts/drm_study.sh           # three seeds (about 40 min on 2 cores)
#   scripts/drm_study.sh --quick   # one seed, one epoch, two DRM points
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=0,1,2
out=runs/drm_study
drm_grid=(--grid 'drm.affinity="center","standardize","minmax_image","minmax_class"'
  --grid drm.lambda=0.5,1 --grid drm.beta=0.5,0.75)
lr_grid=(--grid train.lr=3e-5,1e-4,3e-4)
extra=()
if [ "${1:-}" = "--quick" ]; then
  seeds=0
  out=runs/drm_study_quick
  drm_grid=(--grid 'drm.affinity="center","minmax_class"')
  lr_grid=(--grid train.lr=1e-4)
  extra=(--grid train.epochs=1)
fi
cargo build --release -q -p robustft-cli
bin=target/release/robustft
for suite in spurious domains; do
  for method in drm flyp ft; do
    grid=("${lr_grid[@]}")
    if [ "$method" = drm ]; then
      grid=("${drm_grid[@]}")
    fi
    echo "== $suite: $method"
    "$bin" sweep --recipe "recipes/shiftworld/$method.toml" --grid "data.suite=\"$suite\"" "${grid[@]}" \
      "${extra[@]}" --seeds "$seeds" --select id_val:top1 --out "$out/$suite/$method" 2>&1 | grep -v '^\['
  done
done
