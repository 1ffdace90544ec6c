#!/usr/bin/env bash
# Runs robustft and PyTorch on the same image-tower workloads, one after the other on the same
# machine, and prints both JSON lines plus the throughput ratio.
#   bench/run.sh [--arch ViT-B-32] [--steps 5]      (PyTorch comes from the fixture venv)
set -euo pipefail
cd "$(dirname "$0")/.."
arch=ViT-B-32
steps=5
while [ $# -gt 0 ]; do
  case "$1" in
    --arch) arch=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    *) echo "unknown flag $1" >&2; exit 2 ;;
  esac
done
[ -x .venv/bin/python ] || bash scripts/fixtures/setup_venv.sh
cargo build --release -q -p robustft-cli
ratio='import json, sys
ours, theirs = (json.loads(line) for line in sys.argv[1:])
print("ratio robustft/pytorch {}: {:.2f}x images/s".format(ours["mode"], ours["images_per_s"] / theirs["images_per_s"]))'
for spec in "infer 64" "train 32"; do
  set -- $spec
  ours=$(target/release/robustft bench --arch "$arch" --mode "$1" --batch "$2" --steps "$steps")
  theirs=$(.venv/bin/python bench/pytorch_bench.py --arch "$arch" --mode "$1" --batch "$2" --steps "$steps" 2>/dev/null)
  echo "$ours"
  echo "$theirs"
  python3 -c "$ratio" "$ours" "$theirs"
done
