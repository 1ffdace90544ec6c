#!/usr/bin/env bash
# The perturbation study on ShiftWorld `spurious` with the bundled model (README, "Robustness to
# input perturbations"; after Heuillet et al., arXiv 2508.14079): update protocols (head, last:2,
# all) × losses (CE, PGD-AT, TRADES: recipes/perturbation/) and the natural-shift methods (FT —
# the CE run of protocol all —, FLYP and DRM, each with WiSE-FT α = 0.5), every model measured
# on the clean ID and OOD splits and
# under the five perturbation families (ℓ∞, ℓ2, ℓ1 PGD; corruptions; spatial), three seeds.
# Each protocol's learning rate is selected first, on ID validation top-1 of the plain CE run
# over 1e-4, 1e-3, 1e-2 (`robustft sweep`, the same seeds), and used for all three losses; the
# natural-shift methods run their shipped recipes as they are.
# Writes runs/perturbation_study/report/ (report.html, results.jsonl) and prints the tables.
#
#   scripts/perturbation_study.sh           # three seeds (about 40 min on 2 cores)
#   scripts/perturbation_study.sh --quick   # one seed, one epoch, 100 examples per split
set -euo pipefail
cd "$(dirname "$0")/.."
seeds="0 1 2"
out=runs/perturbation_study
quick=()
sweep_quick=()
if [ "${1:-}" = "--quick" ]; then
  seeds="0"
  out=runs/perturbation_study_quick
  quick=(--set train.epochs=1)
  sweep_quick=(--grid train.epochs=1)
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

# The learning rate of `protocol`, selected on ID validation (clean CE, no perturbations).
select_lr() {
  local protocol=$1 dir="$out/lr_${1/:/}"
  local clean="$out/ce_clean.toml"
  sed '/^perturbations = \[/,/^\]/d' recipes/perturbation/ce.toml > "$clean"
  local grid=(--grid train.lr=1e-4,1e-3,1e-2)
  if [ "$protocol" != all ]; then
    grid+=(--grid "train.trainable=\"$protocol\"")
  fi
  if [ ! -f "$dir/sweep.json" ]; then
    "$bin" sweep --recipe "$clean" "${grid[@]}" "${sweep_quick[@]}" --seeds "${seeds// /,}" \
      --select id_val:top1 --out "$dir" >&2
  fi
  grep -o '"selected": "[^"]*"' "$dir/sweep.json" | grep -o -- '-lr[0-9.e+-]*' | sed 's/^-lr//; s/-$//'
}

mkdir -p "$out"
declare -A lr
for protocol in head last:2 all; do
  lr[$protocol]=$(select_lr "$protocol")
  echo "== protocol $protocol: lr ${lr[$protocol]} (selected on id_val top-1)"
done
for seed in $seeds; do
  for protocol in head last:2 all; do
    for loss in ce pgd_at trades; do
      # Plain FT (CE, every parameter) is also the natural-shift baseline: with its WiSE-FT point.
      wiseft=()
      if [ "$loss" = ce ] && [ "$protocol" = all ]; then
        wiseft=(--set "eval.wiseft=[0.5]")
      fi
      run "recipes/perturbation/$loss.toml" "${loss}_${protocol/:/}_s$seed" "$seed" \
        --set "train.trainable=\"$protocol\"" --set "train.lr=${lr[$protocol]}" "${wiseft[@]}"
    done
  done
  for method in flyp drm; do
    run "recipes/shiftworld/$method.toml" "natural_${method}_s$seed" "$seed" --set "eval.wiseft=[0.5]"
  done
done
"$bin" report --results "$out"/*_s[0-9]*/results.jsonl --out "$out/report"
