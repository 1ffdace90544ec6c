#!/usr/bin/env bash
# Builds `robustft` with `--features cuda` on a machine without a GPU or a system CUDA toolkit:
# installs the CUDA 13 compiler (nvcc, NVVM, the C runtime headers), the CUDA runtime, CCCL,
# cuBLAS and cuRAND from the Python registry's NVIDIA wheels into `.venv-cuda/`, where they form
# one toolkit tree (`.venv-cuda/lib/python3*/site-packages/nvidia/cu13`), and runs
# `cargo build --release --features cuda` into `target/cuda`. Exits non-zero on any failure.
#
# CUDA 13 because the CUDA 12 `nvidia-cuda-nvcc-cu12` wheel ships only ptxas, not nvcc. The
# driver library (libcuda) comes with a GPU's driver, not with a wheel: the link uses a stub
# generated from `cuda.h` (as the toolkit's own `lib/stubs/libcuda.so`), and the binary loads the
# real one at run time. It needs an NVIDIA driver of the CUDA 13 line (>= 580) on the GPU
# machine, and the wheels' libraries on LD_LIBRARY_PATH (printed at the end).
#
# Environment:
#   CUDA_COMPUTE_CAP  target compute capability (default 80). candle embeds PTX, which the driver
#                     JIT-compiles for newer cards, so an sm_80 build also runs on sm_90 (H100);
#                     set 90 for a build tuned to Hopper.
#   PYTHON            interpreter used to create the virtual environment (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv-cuda
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-80}"
# CUDA 13.0, the oldest CUDA 13 release: its PTX is JIT-compiled by every CUDA 13 driver, and
# cudarc (candle's CUDA bindings) knows it. One release line for every wheel.
WHEELS=(
  "nvidia-cuda-nvcc==13.0.*"
  "nvidia-nvvm==13.0.*"
  "nvidia-cuda-crt==13.0.*"
  "nvidia-cuda-runtime==13.0.*"
  "nvidia-cuda-nvrtc==13.0.*"
  "nvidia-cuda-cccl==13.0.*"
  "nvidia-cublas==13.0.*"
  "nvidia-curand==10.4.0.*"
)

start=$(date +%s)

install_wheels() {
  if [ ! -x "$VENV/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$VENV"
  fi
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${WHEELS[@]}"
}

# The toolkit tree the wheels form; the linker needs the plain names of the versioned libraries.
toolkit_root() {
  local root
  root=$("$VENV/bin/python" -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13"))')
  local lib
  for lib in "$root"/lib/lib*.so.*; do
    local plain="${lib%%.so.*}.so"
    [ -e "$plain" ] || ln -s "$(basename "$lib")" "$plain"
  done
  echo "$root"
}

# A link-time stand-in for the driver library: every `cu*` function `cuda.h` names, as empty
# symbols in a shared object with the driver's soname. Never on LD_LIBRARY_PATH.
driver_stub() {
  local toolkit="$1" stubs="$PWD/$VENV/stubs"
  mkdir -p "$stubs"
  grep -oE '\bcu[A-Z][A-Za-z0-9_]*' "$toolkit/include/cuda.h" | sort -u \
    | sed 's/.*/void &(void) {}/' > "$stubs/libcuda_stub.c"
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stubs/libcuda.so" "$stubs/libcuda_stub.c"
  echo "$stubs"
}

build() {
  local TOOLKIT="$1" STUBS="$2"
  export CUDA_ROOT="$TOOLKIT" CUDA_PATH="$TOOLKIT" CUDA_HOME="$TOOLKIT"
  export NVCC="$TOOLKIT/bin/nvcc"
  export PATH="$TOOLKIT/bin:$PATH"
  export LIBRARY_PATH="$TOOLKIT/lib:$STUBS${LIBRARY_PATH:+:$LIBRARY_PATH}"
  export LD_LIBRARY_PATH="$TOOLKIT/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  nvcc --version | tail -2
  cargo build --release --features cuda -p robustft-cli --target-dir target/cuda
}

install_wheels
TOOLKIT=$(toolkit_root)
build "$TOOLKIT" "$(driver_stub "$TOOLKIT")"
echo "cuda build finished in $(( $(date +%s) - start )) s (compute capability $CUDA_COMPUTE_CAP):" \
  "target/cuda/release/robustft; run it with LD_LIBRARY_PATH=$TOOLKIT/lib" >&2
