#!/usr/bin/env bash
# Paper-scale rehearsal on the CPU (BENCHMARKS.md, "Paper recipes at ViT-B/32"): the paper
# recipes FLYP and DRM (recipes/paper/) on synthetic datasets in the iWildCam and ImageNet
# layouts (`robustft synth-data`, PER_CLASS images per class in every split), at ViT-B/32's full
# size with random weights (`model = "random:ViT-B-32"`: no checkpoint needed), one epoch at
# batch BATCH: training, evaluation of every split and WiSE-FT α = 0.5, end to end. FLYP's
# ImageNet recipe evaluates with one template ("simple") instead of OpenAI's 80, which would
# encode 80,000 prompts per zero-shot head.
#
# Each run is limited to MEM_GB of address space (`ulimit -v`), so one that needs more stops
# with an allocation failure instead of exhausting the machine. Its wall time, CPU share, peak
# RSS (GNU time's maximum resident set size), steps trained and exit status are appended to
# OUT/rehearsal.tsv (and printed); its output is in OUT/<run>.log, its run directory in
# OUT/runs/<run>/.
#
#   scripts/paper_rehearsal.sh                              # the four runs
#   scripts/paper_rehearsal.sh flyp-iwildcam drm-iwildcam   # some of them
#   OUT=/tmp/rehearsal BATCH=16 PER_CLASS=2 MEM_GB=20 scripts/paper_rehearsal.sh
#   BIN=/tmp/robustft-other OUT=/tmp/other scripts/paper_rehearsal.sh drm-iwildcam  # another build
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-runs/paper_rehearsal}
batch=${BATCH:-32}
per_class=${PER_CLASS:-1}
mem_gb=${MEM_GB:-16}
runs=("$@")
[ ${#runs[@]} -gt 0 ] || runs=(flyp-iwildcam drm-iwildcam flyp-imagenet drm-imagenet)

bin=${BIN:-}
if [ -z "$bin" ]; then
  cargo build --release -q -p robustft-cli || exit 1
  bin=$PWD/target/release/robustft
fi
mkdir -p "$out"
out=$(cd "$out" && pwd)
table=$out/rehearsal.tsv
[ -f "$table" ] || printf 'run\texit\twall_s\tcpu_percent\tpeak_rss_mb\tsteps\tload_1min\n' >"$table"

# The synthetic dataset of a layout, written on first use; prints its root.
dataset() {
  local root=$out/data/$1
  if [ ! -d "$root" ]; then
    "$bin" synth-data --layout "$1" --out "$root" --per-class "$per_class" >&2 || return 1
  fi
  echo "$root"
}

# One field of GNU time's -v report.
time_field() {
  sed -n "s/^\s*$1: //p" "$2"
}

# h:mm:ss or m:ss -> seconds.
seconds() {
  awk -F: '{ s = 0; for (i = 1; i <= NF; i++) s = s * 60 + $i; printf "%.0f", s }' <<<"$1"
}

# Runs recipes/paper/<name>.toml (name: <method>-<layout>) and appends its row to the table.
rehearse() {
  local name=$1 root report
  root=$(dataset "${name#*-}") || return 1
  local sets=(model='"random:ViT-B-32"' "data.root=\"$root\"" train.epochs=1 "train.batch_size=$batch"
    train.warmup_steps=0 'eval.wiseft=[0.5]')
  [ "$name" = flyp-imagenet ] && sets+=('data.templates="simple"')
  local args=(train --recipe "recipes/paper/$name.toml" --out "$out/runs" --force)
  for set in "${sets[@]}"; do args+=(--set "$set"); done
  local load
  load=$(cut -d' ' -f1 /proc/loadavg)
  report=$out/$name.time
  echo "== $name"
  (
    ulimit -v $((mem_gb * 1024 * 1024))
    /usr/bin/time -v -o "$report" "$bin" "${args[@]}"
  ) >"$out/$name.log" 2>&1
  local status=$? steps=0
  [ -f "$out/runs/$name/metrics.jsonl" ] && steps=$(wc -l <"$out/runs/$name/metrics.jsonl")
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$status" \
    "$(seconds "$(time_field 'Elapsed (wall clock) time (h:mm:ss or m:ss)' "$report")")" \
    "$(time_field 'Percent of CPU this job got' "$report" | tr -d %)" \
    "$(($(time_field 'Maximum resident set size (kbytes)' "$report") / 1024))" \
    "$steps" "$load" | tee -a "$table"
}

for name in "${runs[@]}"; do
  if [ ! -f "recipes/paper/$name.toml" ]; then
    echo "no recipe recipes/paper/$name.toml" >&2
    exit 2
  fi
  rehearse "$name"
done
column -t "$table"
