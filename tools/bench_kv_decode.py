"""Decode speed deep in the context, per KV cache type.

    python tools/bench_kv_decode.py -m MODEL.gguf [-t 2] [-d 4096] [-n 16] [-r 3] [--types f16,q8_0,q4_0]

For each cache type the model is loaded with room for -d + -n tokens, its cache is filled up to
depth -d with random keys and values (written through the cache's own encoders, as a prompt
would write them, without the cost of evaluating one), and -n tokens are then generated one at a
time; the best of -r runs is kept (timed in CPU seconds of the process at -t 1, which a shared
machine's time-slicing leaves out, else in wall time).  Prints tokens per second per type and
the ratio to the first type.  The attention of each step reads the whole cache, so at a depth of thousands of tokens
this measures the quantized-cache attention kernels inside a real decode step.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from gguf_engine.model import load_model  # noqa: E402
from gguf_engine.models import resolve_model  # noqa: E402


def fill(cache, n_layer: int, depth: int, rng) -> None:
    """Positions 0..depth-1 of every layer: gaussian rows, a few larger channels (as RoPE'd keys)."""
    _, n_head_kv, hd = cache.layer(0)[0].shape
    for il in range(n_layer):
        x = rng.standard_normal((depth, n_head_kv, hd)).astype(np.float32)
        x[..., :4] *= 4
        cache.store(il, 0, x, x[::-1])
    cache.n_past = depth


def decode_tps(model, depth: int, n: int, reps: int, rng, clock=time.perf_counter) -> float:
    """Best tokens per second over reps runs of n single-token steps from depth (clock: wall time,
    or time.process_time for the CPU time of the process)."""
    toks = rng.integers(0, model.config.n_vocab, n, dtype=np.int32)
    best = float("inf")
    for _ in range(reps):
        model.kv_cache.n_past = depth
        t0 = clock()
        for t in toks:
            model.eval(t.reshape(1))
        best = min(best, clock() - t0)
    return n / best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", required=True, help="GGUF file or registry name")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-d", "--depth", type=int, default=4096, help="tokens already in the cache (default 4096)")
    ap.add_argument("-n", "--n-gen", type=int, default=16, help="tokens generated per run (default 16)")
    ap.add_argument("-r", "--reps", type=int, default=3, help="runs per type, best kept (default 3)")
    ap.add_argument("--types", default="f16,q8_0,q4_0", help="cache types, comma-separated (K and V alike)")
    args = ap.parse_args(argv)
    if args.depth < 1 or args.n_gen < 1 or args.reps < 1:
        ap.error("-d, -n and -r must be positive")

    path = str(resolve_model(args.model))
    rng = np.random.default_rng(0)
    clock = time.process_time if args.threads == 1 else time.perf_counter
    print(f"{'cache':8} {'depth':>6} {'tg t/s':>8} {'x first':>8}   "
          f"(threads={args.threads}, {'CPU' if args.threads == 1 else 'wall'} time)")
    first = None
    for t in args.types.split(","):
        model = load_model(path, n_ctx=args.depth + args.n_gen + 8, cache_type=t, n_threads=args.threads)
        fill(model.kv_cache, model.config.n_layer, args.depth, rng)
        decode_tps(model, args.depth, 2, 1, rng)                      # compile and warm up
        tps = decode_tps(model, args.depth, args.n_gen, args.reps, rng, clock)
        first = first or tps
        print(f"{t:8} {args.depth:6d} {tps:8.2f} {tps / first:8.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
