"""Peak memory against its budget, and load time against llama.cpp's.

    python tools/bench_memory.py -m models/smollm2-135m-instruct-q4_1.gguf -m models/gemma-3-270m-q4_k_m.gguf
    python tools/bench_memory.py -m 8b-q4_k_m.gguf -n 16 --load --llama-bench PATH/TO/llama-bench

The budget (peak RSS of ``gguf-bench -p 512 -n 128``) is

    runtime floor + file size + KV cache bytes + 64 MiB

where the runtime floor is what Python, numpy, Numba, LLVM and the loaded kernels take by
themselves: the peak RSS of a fresh ``gguf-bench`` process loading and running a tiny model
(``--floor-model``, by default the test fixtures' tiny F32 llama, 10 MiB), less that model's file
and KV bytes.  The KV bytes and file size of each model come from gguf-bench's own memory report
(its JSON ``memory`` field).  Each peak is the process's VmHWM sampled every 10 ms.  Every
measured run first runs once unmeasured with the same prompt size (``warm_up``), so that kernels
the Numba cache lacks are compiled outside the measured run: compiling takes memory of its own
(tens of MiB), once per machine and kernel source, and a 512-token prompt reaches kernels that a
short one never calls (the tiled products, the BLAS attention), so a short warm-up left them to be
compiled inside the measured peak whenever the kernel sources had changed since the last run.

``--load`` times loading: the wall time of a fresh process that loads the file and generates one
token (``gguf-bench -p 0 -n 1 -r 1``; with ``--llama-bench``, alternating with ``llama-bench -p 0
-n 1 -r 1 --no-warmup``), ``--rounds`` times each, page cache warm.  Both include their process
start; ours includes importing Python, numpy and Numba and loading the cached kernels.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_vs_llamacpp import ROOT, llama_bench_cmd, ours_cmd, ours_env, run_measured  # noqa: E402

MiB = 1 << 20
SLACK = 64 * MiB
FLOOR_MODEL = os.path.join(ROOT, "..", "shared", "fixtures", "models", "tiny-llama-f32.gguf")


def bench_peak(model: str, threads: int, p: int, n: int) -> tuple[int, dict]:
    """Peak RSS of ``gguf-bench -p P -n N -r 1`` on model, and its memory report."""
    r = run_measured(ours_cmd(model, threads, p, n, 1), ours_env())
    return r.peak_rss, json.loads(r.stdout)[0]["memory"]


def warm_up(model: str, threads: int, p: int) -> None:
    """An unmeasured ``gguf-bench -p P -n 1`` run: the kernels of a P-token prompt and of a decode
    step, compiled into the Numba cache where it lacks them (the measured run then loads them)."""
    run_measured(ours_cmd(model, threads, p, 1, 1), ours_env())


def runtime_floor(model: str, threads: int) -> int:
    """The runtime's own peak: a tiny model's gguf-bench peak less its file and KV bytes."""
    warm_up(model, threads, 16)
    peak, mem = bench_peak(model, threads, 16, 4)
    return peak - mem["file_size"] - mem["kv_cache"]["size"]


def load_times(model: str, threads: int, rounds: int, llama_bench: str | None) -> tuple[list[float], list[float]]:
    """Wall seconds of fresh processes loading model and generating one token: (ours, llama.cpp's),
    alternating."""
    ours, ref = [], []
    for _ in range(rounds):
        if llama_bench:
            ref.append(run_measured(llama_bench_cmd(llama_bench, model, threads, [0], 1, 1) + ["--no-warmup"]).seconds)
        ours.append(run_measured(ours_cmd(model, threads, 0, 1, 1), ours_env()).seconds)
    return ours, ref


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", action="append", required=True, help="GGUF file (repeatable)")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-p", "--n-prompt", type=int, default=512)
    ap.add_argument("-n", "--n-gen", type=int, default=128)
    ap.add_argument("--floor-model", default=FLOOR_MODEL, help="the tiny model of the runtime floor")
    ap.add_argument("--load", action="store_true", help="also time loading, against llama-bench with --llama-bench")
    ap.add_argument("--llama-bench", metavar="PATH", help="llama.cpp's llama-bench, for the load time")
    ap.add_argument("--rounds", type=int, default=3, help="load-time rounds per model")
    args = ap.parse_args(argv)
    for m in args.model + [args.floor_model]:
        if not os.path.isfile(m):
            ap.error(f"model file not found: {m}")
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731

    floor = runtime_floor(args.floor_model, args.threads)
    log(f"runtime floor: {floor / MiB:.1f} MiB")
    head = ["model", "file MiB", "KV MiB", "floor MiB", "budget MiB", "peak RSS MiB", "peak / budget"]
    if args.load:
        head += ["load s", "llama.cpp load s", "load ratio"]
    rows = []
    for model in args.model:
        name = os.path.basename(model)
        log(f"gguf-bench -p {args.n_prompt} -n {args.n_gen}: {name}")
        warm_up(model, args.threads, args.n_prompt)
        peak, mem = bench_peak(model, args.threads, args.n_prompt, args.n_gen)
        budget = floor + mem["file_size"] + mem["kv_cache"]["size"] + SLACK
        row = [name, f"{mem['file_size'] / MiB:.1f}", f"{mem['kv_cache']['size'] / MiB:.1f}", f"{floor / MiB:.1f}",
               f"{budget / MiB:.1f}", f"{peak / MiB:.1f}", f"{peak / budget:.2f}"]
        if args.load:
            log(f"load times: {name}")
            ours, ref = load_times(model, args.threads, args.rounds, args.llama_bench)
            o = statistics.median(ours)
            r = statistics.median(ref) if ref else float("nan")
            row += [f"{o:.2f}", f"{r:.2f}", f"{o / r:.2f}"]
        rows.append(row)
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" if i == 0 else "---:" for i in range(len(head))) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
