#!/usr/bin/env bash
# Runs robustft and PyTorch on the same image-tower workloads, one after the other on the same
# machine, and prints both JSON lines plus the throughput ratio. With --rounds R the two
# alternate R times per workload and the median of the R ratios is printed too (a shared VM's
# speed drifts by several percent within minutes; alternating spreads the drift over both).
#   bench/run.sh [--arch ViT-B-32|shiftworld] [--steps 5] [--infer-batch 64] [--train-batch 32]
#                [--precision fp32|bf16] [--rounds 1] [--threads N]
# (bf16: robustft's bf16 matmuls against PyTorch's CPU autocast to bfloat16; --threads: both
# engines on N threads, robustft --threads and torch.set_num_threads; default every logical CPU)
# (PyTorch comes from the fixture venv of scripts/fixtures/setup_venv.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
arch=ViT-B-32
steps=5
infer_batch=64
train_batch=32
precision=fp32
rounds=1
threads=$(nproc)
while [ $# -gt 0 ]; do
  case "$1" in
    --arch) arch=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --infer-batch) infer_batch=$2; shift 2 ;;
    --train-batch) train_batch=$2; shift 2 ;;
    --precision) precision=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    *) echo "unknown flag $1" >&2; exit 2 ;;
  esac
done
[ -x .venv/bin/python ] || bash scripts/fixtures/setup_venv.sh
cargo build --release -q -p robustft-cli
ratio='import json, sys
ours, theirs = (json.loads(line) for line in sys.argv[1:])
print("ratio robustft/pytorch {}: {:.2f}x images/s".format(ours["mode"], ours["images_per_s"] / theirs["images_per_s"]))'
median='import json, statistics, sys
lines = [json.loads(line) for line in sys.argv[1:]]
ratios = [ours["images_per_s"] / theirs["images_per_s"] for ours, theirs in zip(lines[::2], lines[1::2])]
print("median ratio robustft/pytorch {} over {} rounds: {:.2f}x ({})".format(
    lines[0]["mode"], len(ratios), statistics.median(ratios), ", ".join(f"{r:.2f}" for r in ratios)))'
for spec in "infer $infer_batch" "train $train_batch"; do
  set -- $spec
  flags=(--arch "$arch" --mode "$1" --batch "$2" --steps "$steps" --precision "$precision" --json)
  pairs=()
  for _ in $(seq "$rounds"); do
    ours=$(target/release/robustft --threads "$threads" bench "${flags[@]}")
    theirs=$(.venv/bin/python bench/pytorch_bench.py "${flags[@]}" --threads "$threads" 2>/dev/null)
    echo "$ours"
    echo "$theirs"
    python3 -c "$ratio" "$ours" "$theirs"
    pairs+=("$ours" "$theirs")
  done
  if [ "$rounds" -gt 1 ]; then
    python3 -c "$median" "${pairs[@]}"
  fi
done
