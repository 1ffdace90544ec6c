#!/usr/bin/env bash
# DRM against FLYP and FT on ShiftWorld `spurious` and `domains` with the bundled model. Each
# method gets one setting for both suites, selected on ID validation top-1 (`robustft sweep
# --across data.suite`: the mean over the two suites and three seeds; WiSE-FT α in
# {0, 0.25, 0.5, 0.75, 1} selected with it); the test splits are only reported (README, "DRM
# with settings selected on validation"):
#   DRM:  drm.affinity × drm.lambda (trained; learning rate 1e-4, as shipped) × drm.beta
#         (evaluated on each trained model, no retraining);
#   FLYP, FT: train.lr in {3e-5, 1e-4, 3e-4}.
# Writes runs/drm_study/<method>/{sweep.json, results.jsonl, report.html}; the selected DRM
# setting is what recipes/shiftworld/drm.toml ships.
#
#   scripts/drm_study.sh           # three seeds (about 50 min on 2 cores)
#   scripts/drm_study.sh --quick   # one seed, one epoch, two DRM points and two β
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=0,1,2
out=runs/drm_study
drm_grid=(--grid 'drm.affinity="center","standardize","minmax_image","minmax_class"'
  --grid drm.lambda=0.5,1 --grid drm.beta=0.5,0.75,0.9,1)
lr_grid=(--grid train.lr=3e-5,1e-4,3e-4)
extra=()
if [ "${1:-}" = "--quick" ]; then
  seeds=0
  out=runs/drm_study_quick
  drm_grid=(--grid 'drm.affinity="center","minmax_class"' --grid drm.beta=0.5,0.75)
  lr_grid=(--grid train.lr=1e-4)
  extra=(--grid train.epochs=1)
fi
cargo build --release -q -p robustft-cli
bin=target/release/robustft
for method in drm flyp ft; do
  grid=("${lr_grid[@]}")
  if [ "$method" = drm ]; then
    grid=("${drm_grid[@]}")
  fi
  echo "== $method"
  "$bin" sweep --recipe "recipes/shiftworld/$method.toml" --across 'data.suite="spurious","domains"' \
    "${grid[@]}" "${extra[@]}" --seeds "$seeds" --select id_val:top1 --out "$out/$method" 2>&1 | grep -v '^\['
done
