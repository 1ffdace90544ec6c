#!/usr/bin/env bash
# The perturbation study on ShiftWorld `spurious` with the bundled model (README, "Robustness to
# input perturbations"; after Heuillet et al., arXiv 2508.14079): update protocols (head, last:2,
# all) × losses (CE, PGD-AT, TRADES: recipes/perturbation/) and the natural-shift methods (FT,
# FLYP, DRM, each with WiSE-FT α = 0.5), every model measured on the clean ID and OOD splits and
# under the five perturbation families (ℓ∞, ℓ2, ℓ1 PGD; corruptions; spatial), three seeds.
# Writes runs/perturbation_study/report/ (report.html, results.jsonl) and prints the tables.
#
#   scripts/perturbation_study.sh           # three seeds (about 40 min on 2 cores)
#   scripts/perturbation_study.sh --quick   # one seed, one epoch, 100 examples per split
set -euo pipefail
cd "$(dirname "$0")/.."
seeds="0 1 2"
out=runs/perturbation_study
quick=()
if [ "${1:-}" = "--quick" ]; then
  seeds="0"
  out=runs/perturbation_study_quick
  quick=(--set train.epochs=1)
fi
cargo build --release -q -p robustft-cli
bin=target/release/robustft
perturbations=$(sed -n '/^perturbations = \[/,/^\]/p' recipes/perturbation/ce.toml | sed '1s/^perturbations = //' | tr -d '\n')
if [ "${1:-}" = "--quick" ]; then
  perturbations=${perturbations//limit = 300/limit = 100}
fi

run() { # recipe name seed [--set ...]
  local recipe=$1 name=$2 seed=$3
  shift 3
  if [ -f "$out/$name/results.jsonl" ]; then
    echo "== $name: done earlier"
    return
  fi
  echo "== $name"
  "$bin" train --recipe "$recipe" --out "$out" --force --set "name=\"$name\"" --set "seed=$seed" \
    --set "eval.perturbations=$perturbations" "${quick[@]}" "$@" | tail -n 1
}

for seed in $seeds; do
  for protocol in head last:2 all; do
    for loss in ce pgd_at trades; do
      run "recipes/perturbation/$loss.toml" "${loss}_${protocol/:/}_s$seed" "$seed" \
        --set "train.trainable=\"$protocol\""
    done
  done
  for method in ft flyp drm; do
    run "recipes/shiftworld/$method.toml" "natural_${method}_s$seed" "$seed" --set "eval.wiseft=[0.5]"
  done
done
"$bin" report "$out"/*/results.jsonl --out "$out/report"
