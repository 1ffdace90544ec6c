"""The products of one training step, robustft's matmul against PyTorch's, interleaved.

For every linear layer of an image-tower block (q/k/v, attention output, fc1, fc2) the three
products of a training step: the forward `x Wᵀ`, the input gradient `g W` and the weight
gradient `gᵀ x`. Each is computed by `robustft::kernels::product`, the kernel robustft's linear
layers run on this CPU (in fp32 its own AVX2 kernel on CPUs with AVX2 and FMA but no AVX-512F,
candle's gemm elsewhere; in bf16 AMX tiles, AVX512-BF16 or the portable kernel), through the
shared library of bench/gemm-vs-torch loaded with ctypes, and by `torch.mm` (MKL or whatever
BLAS this PyTorch was built with; in bf16 under CPU autocast, which casts both operands to
bfloat16 at each call) on the same buffers, in one process, alternating the two engines round
by round, so that a shared VM's drift (up to 2x within minutes) falls on both alike. Each call
of either engine returns a fresh output, as in a training step (robustft's from the CLI's
allocator, which reuses freed blocks of 32 MiB or more; PyTorch's from its own). The operands
rotate over enough sets to fill twice the last-level cache, so they come cold from memory as
they do inside a step. Prints a markdown table with the medians of the rounds' GFLOP/s and of
their ratios, and the ratio of all the products' summed times.

Run it with bench/gemm_vs_torch.sh (it builds the library and uses the fixture venv).
"""
import argparse
import contextlib
import ctypes
import math
import os
import statistics
import sys
import time

SHAPES = {
    # arch: (images per batch, tokens per image, width, MLP width)
    "ViT-B-32": (32, 50, 768, 3072),
    "ViT-B-16": (32, 197, 768, 3072),
    "shiftworld": (256, 17, 128, 512),
}
FLOPS_PER_ROUND = 2e10


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", choices=sorted(SHAPES), default="ViT-B-32")
    p.add_argument("--batch", type=int, help="images per batch (default: the arch's training batch)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="threads of both engines")
    p.add_argument("--rounds", type=int, default=9, help="alternated rounds per product")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="fp32, or bf16 (robustft's bf16 kernel against torch.mm under CPU autocast)")
    p.add_argument("--library", required=True, help="path of libgemm_vs_torch.so")
    return p.parse_args()


def products(arch, batch):
    """(name, m, n, k, a_transposed, b_transposed) of the block's training products."""
    images, tokens, width, mlp = SHAPES[arch]
    rows = (batch or images) * tokens
    layers = [("qkv", width, 3 * width), ("out", width, width), ("fc1", width, mlp), ("fc2", mlp, width)]
    for layer, fan_in, fan_out in layers:
        yield f"{layer} x Wᵀ", rows, fan_out, fan_in, False, True
        yield f"{layer} g W", rows, fan_in, fan_out, False, False
        yield f"{layer} gᵀ x", fan_out, fan_in, rows, True, False


def last_level_cache_bytes():
    """The largest cache of CPU 0 (sysfs sizes read like `32768K`), or 32 MiB if none is listed."""
    units = {"K": 1 << 10, "M": 1 << 20}
    sizes = []
    for index in range(8):
        path = f"/sys/devices/system/cpu/cpu0/cache/index{index}/size"
        if os.path.exists(path):
            text = open(path).read().strip()
            sizes.append(int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text))
    return max(sizes, default=32 << 20)


def cpu_line(threads):
    fields = {}
    for line in open("/proc/cpuinfo"):
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return (f"{fields.get('model name', '?')}, family {fields.get('cpu family', '?')}, "
            f"model {fields.get('model', '?')}; {os.cpu_count()} logical CPUs; {threads} threads")


class Robustft:
    """The library's product and the name of the kernel it runs on, in `precision`."""

    def __init__(self, path, precision):
        library = ctypes.CDLL(path)
        size = ctypes.c_size_t
        library.robustft_set_precision.argtypes = [ctypes.c_bool]
        library.robustft_set_precision.restype = ctypes.c_char_p
        library.robustft_product.argtypes = [size] * 3 + [ctypes.c_void_p, size, size] * 2
        library.robustft_product.restype = ctypes.c_void_p
        library.robustft_free.argtypes = [ctypes.c_void_p, size]
        self.kernel = library.robustft_set_precision(precision == "bf16").decode()
        self.library = library

    def product(self, m, n, k, a, a_strides, b, b_strides):
        """The product's buffer, to be given back with `free`."""
        return self.library.robustft_product(m, n, k, a.data_ptr(), *a_strides, b.data_ptr(), *b_strides)

    def free(self, data, m, n):
        self.library.robustft_free(data, m * n)

    def values(self, torch, m, n, k, a, a_strides, b, b_strides):
        """The product as a new (m, n) tensor."""
        data = self.product(m, n, k, a, a_strides, b, b_strides)
        values = torch.frombuffer((ctypes.c_float * (m * n)).from_address(data), dtype=torch.float32)
        values = values.reshape(m, n).clone()
        self.free(data, m, n)
        return values


def operand_sets(torch, m, n, k, a_transposed, b_transposed, count):
    """`count` independent (A, B, C) buffers, A and B stored as robustft stores them."""
    generator = torch.Generator().manual_seed(0)
    sets = []
    for _ in range(count):
        a = torch.rand((k, m) if a_transposed else (m, k), generator=generator) - 0.5
        b = torch.rand((n, k) if b_transposed else (k, n), generator=generator) - 0.5
        sets.append((a, b))
    return sets


def time_round(run, sets, repetitions):
    start = time.perf_counter()
    for i in range(repetitions):
        run(*sets[i % len(sets)])
    return time.perf_counter() - start


def compare(torch, robustft, product, precision, rounds, cache_bytes):
    name, m, n, k, a_t, b_t = product
    set_bytes = 4 * (m * k + k * n + m * n)
    sets = operand_sets(torch, m, n, k, a_t, b_t, min(16, max(2, math.ceil(2 * cache_bytes / set_bytes))))
    a_strides = (1, m) if a_t else (k, 1)
    b_strides = (1, k) if b_t else (n, 1)

    def ours(a, b):
        robustft.free(robustft.product(m, n, k, a, a_strides, b, b_strides), m, n)

    def theirs(a, b):
        torch.mm(a.t() if a_t else a, b.t() if b_t else b)

    def rounded(x):
        return x.bfloat16().float() if precision == "bf16" else x

    a, b = sets[0]
    got = robustft.values(torch, m, n, k, a, a_strides, b, b_strides)
    # Both engines' products of the operands as robustft rounds them, within the sums'
    # rounding (fp32 sums in both precisions).
    expected = torch.mm(rounded(a.t() if a_t else a), rounded(b.t() if b_t else b))
    if not torch.allclose(got, expected, rtol=1e-4, atol=1e-3 * math.sqrt(k)):
        sys.exit(f"{name}: robustft's product differs from torch.mm's")
    with autocast(torch, precision):
        theirs(a, b)
        flops = 2.0 * m * n * k
        repetitions = max(len(sets), math.ceil(FLOPS_PER_ROUND / flops))
        seconds = {"robustft": [], "torch": []}
        for round_index in range(rounds):
            engines = [("robustft", ours), ("torch", theirs)]
            for engine, run in engines if round_index % 2 == 0 else engines[::-1]:
                seconds[engine].append(time_round(run, sets, repetitions) / repetitions)
    gflops = {engine: statistics.median(flops / s / 1e9 for s in times) for engine, times in seconds.items()}
    ratio = statistics.median(t / r for r, t in zip(seconds["robustft"], seconds["torch"]))
    return name, (m, n, k), gflops, ratio, statistics.median(seconds["robustft"]), statistics.median(seconds["torch"])


def autocast(torch, precision):
    """PyTorch's CPU autocast to bfloat16 in bf16, else no change."""
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def main():
    args = parse_args()
    # Both pools sleep between calls instead of spinning (OpenMP's default spins for a while
    # after each call and would take a core from the other engine's next round); set before
    # either pool starts.
    os.environ["OMP_WAIT_POLICY"] = "passive"
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    robustft = Robustft(args.library, args.precision)
    blas = "MKL" if torch.backends.mkl.is_available() else "its BLAS"
    theirs = "torch.mm under autocast" if args.precision == "bf16" else "torch.mm"
    print(f"CPU: {cpu_line(args.threads)}; PyTorch {torch.__version__} ({blas})")
    print(f"{args.arch}, the products of one block's training step in {args.precision}, robustft's on its "
          f"{robustft.kernel} kernel; medians of {args.rounds} alternated rounds\n")
    print(f"| product | m × n × k | robustft GFLOP/s | {theirs} GFLOP/s | robustft / {theirs} |")
    print("|---|---|---:|---:|---:|")
    total_ours = total_theirs = 0.0
    with torch.no_grad():
        for product in products(args.arch, args.batch):
            name, (m, n, k), gflops, ratio, ours, theirs_seconds = compare(
                torch, robustft, product, args.precision, args.rounds, last_level_cache_bytes())
            total_ours += ours
            total_theirs += theirs_seconds
            print(f"| {name} | {m} × {n} × {k} | {gflops['robustft']:.0f} | {gflops['torch']:.0f} | {ratio:.2f}× |",
                  flush=True)
    print(f"\nall the products, summed median times: robustft / {theirs} {total_theirs / total_ours:.2f}×")


if __name__ == "__main__":
    main()
