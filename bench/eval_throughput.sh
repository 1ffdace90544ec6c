#!/usr/bin/env bash
# End-to-end `robustft eval` throughput on a real-size split (BENCHMARKS.md, "Evaluation
# throughput"): a synthetic ImageNet validation split of 1000 JPEGs at 500x375 pixels (one per
# class, about 150 KB each, written once by `robustft synth-data --image-size`), evaluated with a
# zero-shot head of 1000 classes (one template) by randomly initialised ViT-B/32 and ViT-B/16
# models, in fp32 and bf16. Each run's wall time covers everything a user waits for: loading
# the model, the text tower's head, JPEG decoding and resizing (the loader's threads), the
# image tower and the metrics. Prints one TSV row per run: arch, precision, images, wall
# seconds, images/s, peak RSS (GNU time).
#
#   bench/eval_throughput.sh                        # both archs, both precisions
#   ARCHS=ViT-B-32 PRECISIONS=bf16 bench/eval_throughput.sh
#   DATA=/tmp/synth-imagenet-500x375 bench/eval_throughput.sh   # where the split is kept
set -euo pipefail
cd "$(dirname "$0")/.."
data=${DATA:-runs/eval_throughput/imagenet-500x375}
archs=${ARCHS:-ViT-B-32 ViT-B-16}
precisions=${PRECISIONS:-fp32 bf16}
cargo build --release -q -p robustft-cli
bin=target/release/robustft
[ -d "$data/imagenet" ] || "$bin" synth-data --layout imagenet --out "$data" --per-class 1 --image-size 500x375
report=$(mktemp)
trap 'rm -f "$report"' EXIT
printf 'arch\tprecision\timages\twall_s\timages_per_s\tpeak_rss_mb\n'
for arch in $archs; do
  for precision in $precisions; do
    rows=$(/usr/bin/time -f '%e %M' -o "$report" "$bin" eval --model "random:$arch" --dataset "$data" \
      --format imagenet --splits imagenet --templates simple --precision "$precision" --json 2>/dev/null)
    read -r wall rss_kb <"$report"
    images=$(python3 -c 'import json, sys; print(sum(json.loads(l)["n"] for l in sys.argv[1].splitlines()))' "$rows")
    python3 -c 'import sys; a, p, n, w, r = sys.argv[1:]; print(f"{a}\t{p}\t{n}\t{w}\t{int(n) / float(w):.2f}\t{int(r) // 1024}")' \
      "$arch" "$precision" "$images" "$wall" "$rss_kb"
  done
done
