#!/usr/bin/env bash
# On an Intel Xeon with AMX (Sapphire Rapids or later): checks the AMX bf16 kernel against the
# reference on the hardware, then times it beside the AVX-512 kernel on the same machine
# (`ROBUSTFT_BF16_KERNEL` picks the kernel; the products of a block's linear layers and of its
# attention) and against PyTorch's CPU autocast, then times fp32 against PyTorch (the
# model's architecture; then its training products beside torch.mm's, interleaved in one
# process, in bf16 against autocast and in fp32; then the bundled model's architecture, in
# both precisions): every figure the performance goals name, on one machine.
#   bench/amx_check.sh [--arch ViT-B-32] [--rounds 3]
# Prints the CPU's AMX flags and its cores first; without AMX the hardware test says it was
# skipped and every product runs on the AVX-512 kernel. Where the logical CPUs are hyper-threads
# (more of them than cores), the architecture runs again in both precisions on one thread per
# core.
set -euo pipefail
cd "$(dirname "$0")/.."
arch=ViT-B-32
rounds=3
while [ $# -gt 0 ]; do
  case "$1" in
    --arch) arch=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    *) echo "unknown flag $1" >&2; exit 2 ;;
  esac
done
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)," \
  "family $(grep -m1 'cpu family' /proc/cpuinfo | cut -d: -f2 | tr -d ' ')," \
  "model $(grep -m1 -E '^model\s' /proc/cpuinfo | cut -d: -f2 | tr -d ' ');" \
  "AMX flags: $(grep -o 'amx[a-z_0-9]*' /proc/cpuinfo | sort -u | tr '\n' ' ')"
cores=$(grep -E '^(physical id|core id)' /proc/cpuinfo | paste - - | sort -u | wc -l)
echo "logical CPUs: $(nproc), cores: $cores"
cargo test --release -q -p robustft --lib matmul_bf16 -- --nocapture
cargo build --release -q -p robustft-cli
for kernel in amx avx512_bf16; do
  ROBUSTFT_BF16_KERNEL=$kernel target/release/robustft bench --products --arch "$arch" --batch 64 \
    --precision bf16 --steps 5
done
bench/run.sh --arch "$arch" --steps 3 --rounds "$rounds" --precision bf16
bench/run.sh --arch "$arch" --steps 3 --rounds "$rounds" --precision fp32
for precision in bf16 fp32; do
  bench/gemm_vs_torch.sh --arch "$arch" --precision "$precision"
done
for precision in fp32 bf16; do
  bench/run.sh --arch shiftworld --steps 10 --infer-batch 256 --train-batch 256 --rounds "$rounds" \
    --precision "$precision"
done
if [ "$cores" -gt 0 ] && [ "$(nproc)" -gt "$cores" ]; then
  for precision in fp32 bf16; do
    bench/run.sh --arch "$arch" --steps 3 --rounds "$rounds" --precision "$precision" --threads "$cores"
  done
fi
