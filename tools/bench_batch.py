"""Batched decode steps in-process: the engine side of gguf-server's scaling, without HTTP.

    python tools/bench_batch.py [-m MODEL] [-t THREADS] [--seqs 1,2,4,8,16] [--ctx 100] [--steps 20]

For each N, N sequences each hold a --ctx-token prompt in their slot of one slot cache; then
--steps passes each evaluate the next token of all N together (``Model.eval_batch`` of a
``TokenBatch`` of N decode steps, as the server's scheduler builds it). Reported per N: time per
pass (best of --rounds, wall clock and CPU time of the process), aggregate tokens/s and its ratio
to N = 1 (the server's agg@N / agg@1 target is 4x at 8). CPU time excludes time slices lost to
other processes on a shared machine, so at -t 1 its ratios are the steadier figure.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from gguf_engine.model import load_model  # noqa: E402
from gguf_engine.model.batch import TokenBatch  # noqa: E402
from gguf_engine.models import DEFAULT_MODEL, resolve_model  # noqa: E402


def bench(model, n: int, ctx: int, steps: int, rounds: int, rng) -> tuple[float, float]:
    """(wall, cpu) seconds per pass of n decode steps, best of rounds."""
    slots = model.slot_cache(n, ctx + steps * (rounds + 1) + 1)
    for s in range(n):                                   # each slot's prompt, alone
        model.eval_batch(TokenBatch.build([(s, 0, rng.integers(100, 5000, ctx).tolist(), False)]), slots)
    pos = [ctx] * n

    def step():
        parts = [(s, pos[s], [int(rng.integers(100, 5000))], True) for s in range(n)]
        model.eval_batch(TokenBatch.build(parts, n_decode=n), slots)
        for s in range(n):
            pos[s] += 1

    for _ in range(steps // 4 + 1):                      # warm-up (compiles the n-row kernels)
        step()
    best_wall = best_cpu = float("inf")
    for _ in range(rounds):
        w0, c0 = time.perf_counter(), time.process_time()
        for _ in range(steps):
            step()
        best_wall = min(best_wall, (time.perf_counter() - w0) / steps)
        best_cpu = min(best_cpu, (time.process_time() - c0) / steps)
    return best_wall, best_cpu


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", default=DEFAULT_MODEL)
    ap.add_argument("-t", "--threads", type=int, default=1)
    ap.add_argument("--seqs", default="1,2,4,8,16", help="sequence counts N")
    ap.add_argument("--ctx", type=int, default=100, help="prompt tokens each sequence holds")
    ap.add_argument("--steps", type=int, default=20, help="passes per round")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    ns = [int(v) for v in args.seqs.split(",")]
    rng = np.random.default_rng(0)
    with load_model(resolve_model(args.model), n_ctx=args.ctx + args.steps * (args.rounds + 1) + 1,
                    n_threads=args.threads) as model:
        rows = [(n, *bench(model, n, args.ctx, args.steps, args.rounds, rng)) for n in ns]
    one = {"wall": rows[0][0] / rows[0][1], "cpu": rows[0][0] / rows[0][2]}
    print(f"model {os.path.basename(args.model)}, {args.threads} threads, {args.ctx}-token contexts, "
          f"best of {args.rounds} rounds of {args.steps} passes")
    print("| N | ms/pass (wall) | agg t/s (wall) | x N=1 | ms/pass (CPU) | agg t/s (CPU) | x N=1 |")
    print("|---|---|---|---|---|---|---|")
    for n, wall, cpu in rows:
        print(f"| {n} | {wall * 1e3:.1f} | {n / wall:.1f} | {n / wall / one['wall']:.2f} | {cpu * 1e3:.1f} | "
              f"{n / cpu:.1f} | {n / cpu / one['cpu']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
