#!/usr/bin/env bash
# Runs robustft and PyTorch on the same image-tower workloads, one after the other on the same
# machine, and prints both JSON lines plus the throughput ratio.
#   bench/run.sh [--arch ViT-B-32|shiftworld] [--steps 5] [--infer-batch 64] [--train-batch 32]
#                [--precision fp32|bf16]
# (bf16: robustft's bf16 matmuls against PyTorch's CPU autocast to bfloat16)
# (PyTorch comes from the fixture venv of scripts/fixtures/setup_venv.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
arch=ViT-B-32
steps=5
infer_batch=64
train_batch=32
precision=fp32
while [ $# -gt 0 ]; do
  case "$1" in
    --arch) arch=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --infer-batch) infer_batch=$2; shift 2 ;;
    --train-batch) train_batch=$2; shift 2 ;;
    --precision) precision=$2; shift 2 ;;
    *) echo "unknown flag $1" >&2; exit 2 ;;
  esac
done
[ -x .venv/bin/python ] || bash scripts/fixtures/setup_venv.sh
cargo build --release -q -p robustft-cli
ratio='import json, sys
ours, theirs = (json.loads(line) for line in sys.argv[1:])
print("ratio robustft/pytorch {}: {:.2f}x images/s".format(ours["mode"], ours["images_per_s"] / theirs["images_per_s"]))'
for spec in "infer $infer_batch" "train $train_batch"; do
  set -- $spec
  flags=(--arch "$arch" --mode "$1" --batch "$2" --steps "$steps" --precision "$precision" --json)
  ours=$(target/release/robustft bench "${flags[@]}")
  theirs=$(.venv/bin/python bench/pytorch_bench.py "${flags[@]}" 2>/dev/null)
  echo "$ours"
  echo "$theirs"
  python3 -c "$ratio" "$ours" "$theirs"
done
