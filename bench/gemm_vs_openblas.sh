#!/usr/bin/env bash
# The matmul evaluation of BENCHMARKS.md: candle's `gemm` against the system OpenBLAS on the
# training shapes, with OpenBLAS's own CPU detection and with its AVX-512 (SkylakeX) kernels
# forced. Installs Debian's libopenblas-dev when it is missing (needs root and the registry).
set -euo pipefail
cd "$(dirname "$0")/gemm-vs-openblas"
if ! ldconfig -p | grep -q 'libopenblas\.so '; then
  apt-get install -y -q libopenblas-dev >/dev/null
fi
cargo build --release -q
echo "OpenBLAS $(dpkg-query -W -f '${Version}' libopenblas0-pthread 2>/dev/null || echo '?'), detected kernels:"
OPENBLAS_NUM_THREADS=2 target/release/gemm-vs-openblas
echo
echo "OpenBLAS with OPENBLAS_CORETYPE=SKYLAKEX (AVX-512 kernels):"
OPENBLAS_CORETYPE=SKYLAKEX OPENBLAS_NUM_THREADS=2 target/release/gemm-vs-openblas
