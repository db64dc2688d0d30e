"""GPU benchmark (CuPy backend): per-type kernels and whole models, as ratios of the GPU's own limits.

    python tools/bench_gpu.py [--types Q4_0,Q4_K,...] [--shape 4096x4096] [-m MODEL ...] [--reps R]

Kernel table, one row per type (random weights with valid scales, shape ROWSxCOLS):
  matvec GB/s   GGML bytes of W read per second by one token's fused decode + dot product
  mm TFLOP/s    2*512*rows*cols / time of a 512-token batch (decode to float32 + cuBLAS)
each beside the GPU's device-to-device copy bandwidth (bytes read + written) and cuBLAS's
float32 GEMM rate on the same shape, measured in the same run.

Model table, per model (every layer and the output on the GPU, -ngl 99), with CUDA graphs
off and on: pp512 and tg128 in tokens/s, and the weight bytes a generated token reads per
second.  Kernel times are CUDA-event times (matvec: of graph replays, 20 calls per graph,
so that Python's launch overhead stays out); model times are the host clock around whole calls.
"""
from __future__ import annotations

import argparse
import os
import sys
from types import SimpleNamespace

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

import cupy as cp  # noqa: E402

from bench_kernels import DEFAULT_TYPES, random_tensor  # noqa: E402
from gguf_engine.backends.cuda import CudaBackend  # noqa: E402
from kernels.types import GGMLType, as_type  # noqa: E402


INNER = 20      # calls captured into the CUDA graph that gpu_time replays


def gpu_time(fn, reps: int, stream, graph: bool = False) -> float:
    """Median seconds of one fn() on the GPU by CUDA events, after warm-up calls that compile
    and allocate.  graph: INNER calls are captured into a CUDA graph and replayed, so that
    Python's launch overhead stays out of short kernels (CuPy cannot capture cuBLAS calls,
    which are long enough to time one by one)."""
    with stream:
        for _ in range(2):
            fn()
        stream.synchronize()
        inner = INNER if graph else 1
        if graph:
            stream.begin_capture()
            try:
                for _ in range(INNER):
                    fn()
            finally:
                g = stream.end_capture()
            g.launch(stream)
        run = (lambda: g.launch(stream)) if graph else fn
        times = []
        for _ in range(reps):
            a, b = cp.cuda.Event(), cp.cuda.Event()
            a.record(stream)
            run()
            b.record(stream)
            b.synchronize()
            times.append(cp.cuda.get_elapsed_time(a, b) / 1e3 / inner)
    return float(np.median(times))


def copy_bandwidth(reps: int, stream) -> float:
    """Device-to-device copy GB/s of a 1 GiB buffer, counting bytes read and written."""
    with stream:
        a = cp.ones(1 << 28, dtype=np.float32)
        b = cp.empty_like(a)
    t = gpu_time(lambda: b.__setitem__(Ellipsis, a), reps, stream, graph=True)
    return 2 * a.nbytes / t / 1e9


def sgemm_tflops(n: int, rows: int, cols: int, reps: int, stream) -> float:
    with stream:
        X = cp.random.standard_normal((n, cols), dtype=np.float32)
        W = cp.random.standard_normal((rows, cols), dtype=np.float32)
    return 2 * n * rows * cols / gpu_time(lambda: cp.matmul(X, W.T), reps, stream) / 1e12


def kernel_rows(be: CudaBackend, types, rows: int, cols: int, reps: int, bw: float, gemm: float):
    rng = np.random.default_rng(0)
    out = []
    for name in types:
        t = as_type(name)
        raw = random_tensor(t, rows, cols, rng)
        w = be.upload_weight(SimpleNamespace(raw=raw, type=t, shape=(rows, cols), name=name))
        x = be.from_host(rng.standard_normal((1, cols)).astype(np.float32))
        X = be.from_host(rng.standard_normal((512, cols)).astype(np.float32))
        mv = gpu_time(lambda: be.linear(w, x), reps, be.stream, graph=True)
        mm = gpu_time(lambda: be.linear(w, X), reps, be.stream)
        gbs = w.nbytes / mv / 1e9
        tf = 2 * 512 * rows * cols / mm / 1e12
        out.append([t.name, f"{mv * 1e6:.1f}", f"{gbs:.0f}", f"{gbs / bw:.2f}", f"{tf:.1f}", f"{tf / gemm:.2f}"])
    return out


def model_rows(path: str, reps: int):
    from gguf_engine.bench import time_test
    from gguf_engine.model import load_model
    out = []
    for graphs in (False, True):
        with load_model(path, n_ctx=512, n_gpu_layers=99, device=CudaBackend(graphs=graphs)) as m:
            # bytes one token reads on the GPU: every tensor but the embedding lookup (the tied
            # output matrix counts)
            wbytes = sum(t.n_bytes for name, t in m.reader.tensors.items()
                         if name != "token_embd.weight" or m.config.tied_output)
            rng = np.random.default_rng(1)
            time_test(m, 512, 0, rng)                           # warm-up: compile, capture
            time_test(m, 0, 16, rng)
            pp_s = float(np.median([time_test(m, 512, 0, rng) for _ in range(reps)]))
            tg_s = float(np.median([time_test(m, 0, 128, rng) for _ in range(reps)])) / 128
            out.append([os.path.basename(path), "on" if graphs else "off", f"{512 / pp_s:,.0f}",
                        f"{1 / tg_s:,.0f}", f"{tg_s * 1e3:.3f}", f"{wbytes / tg_s / 1e9:.0f}"])
    return out


def table(head, rows) -> str:
    w = [max(len(str(r[i])) for r in [head] + rows) for i in range(len(head))]
    line = lambda r: "| " + " | ".join(str(c).rjust(w[i]) for i, c in enumerate(r)) + " |"  # noqa: E731
    return "\n".join([line(head), "|" + "|".join("-" * (x + 2) for x in w) + "|"] + [line(r) for r in rows])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="example: python tools/bench_gpu.py --types Q4_0,Q4_K -m models/x.gguf",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--types", default=",".join(DEFAULT_TYPES), help="comma-separated GGML types")
    p.add_argument("--shape", default="4096x4096", help="ROWSxCOLS of the kernel matrices")
    p.add_argument("-m", "--model", action="append", default=[], help="GGUF model to time (repeatable)")
    p.add_argument("--reps", type=int, default=20, help="timed repetitions (models: a fifth of it, at least 2)")
    a = p.parse_args(argv)
    if not CudaBackend.available():
        print("no CUDA GPU found", file=sys.stderr)
        return 1
    be = CudaBackend()
    rows, cols = (int(s) for s in a.shape.lower().split("x"))
    bw = copy_bandwidth(a.reps, be.stream)
    gemm = sgemm_tflops(512, rows, cols, a.reps, be.stream)
    print(f"GPU: {be.device_name}; copy bandwidth {bw:.0f} GB/s; float32 GEMM {gemm:.1f} TFLOP/s "
          f"(512 x {cols} by {cols} x {rows})\n")
    types = [GGMLType[t.strip().upper()].name for t in a.types.split(",") if t.strip()]
    print(table(["type", "matvec us", "GB/s", "x bw", "mm TFLOP/s", "x gemm"],
                kernel_rows(be, types, rows, cols, a.reps, bw, gemm)))
    if a.model:
        rows_ = []
        for path in a.model:
            rows_ += model_rows(path, max(2, a.reps // 5))
        print()
        print(table(["model", "graphs", "pp512 t/s", "tg128 t/s", "ms/token", "weights GB/s"], rows_))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
