#!/usr/bin/env bash
# The products of one block's training step, robustft's (the kernel its linear layers run on
# this CPU, in fp32 or bf16) against PyTorch's torch.mm (under CPU autocast in bf16),
# interleaved round by round in one process on cold operands (bench/gemm_vs_torch.py says how).
# Builds the shared library of bench/gemm-vs-torch; PyTorch comes from the fixture venv of
# scripts/fixtures/setup_venv.sh.
#   bench/gemm_vs_torch.sh [--arch ViT-B-32|ViT-B-16|shiftworld] [--batch B] [--threads N] [--rounds 9]
#                          [--precision fp32|bf16]
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash scripts/fixtures/setup_venv.sh
(cd bench/gemm-vs-torch && cargo build --release -q)
exec .venv/bin/python bench/gemm_vs_torch.py --library bench/gemm-vs-torch/target/release/libgemm_vs_torch.so "$@"
