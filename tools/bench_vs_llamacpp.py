"""Side-by-side throughput: gguf-bench against llama.cpp's llama-bench on the same files.

    python tools/bench_vs_llamacpp.py --llama-bench PATH/TO/llama-bench \
        -m models/smollm2-135m-instruct-q4_1.gguf -m models/gemma-3-270m-q4_k_m.gguf \
        [-t 2] [-p 512] [-n 128] [-r 3] [--rounds 2]

Both programs run on the same file with the same thread count, alternately
(llama.cpp, ours, llama.cpp, ours, ...) so that machine noise hits both.  The
table gives tokens/s of each, our ratio, and for generation the weight bytes
streamed per second (model size x tokens/s) beside the machine's measured
streaming-read bandwidth at the same thread count.
Without --llama-bench only our side is measured.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

from gguf_engine.bench import read_bandwidth_gbs  # noqa: E402


def run_llama_bench(binary: str, model: str, threads: int, p: int, n: int, reps: int) -> dict[str, list[float]]:
    out = subprocess.run([binary, "-m", model, "-t", str(threads), "-p", str(p), "-n", str(n),
                          "-r", str(reps), "-o", "json"], capture_output=True, text=True, check=True).stdout
    res = {}
    for r in json.loads(out):
        label = f"pp{r['n_prompt']}" if r["n_prompt"] else f"tg{r['n_gen']}"
        res[label] = list(r.get("samples_ts") or [r["avg_ts"]])
    return res


def run_ours(model: str, threads: int, p: int, n: int, reps: int) -> tuple[dict[str, list[float]], int]:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-m", "gguf_engine.cli.bench", "-m", model, "-t", str(threads),
                          "-p", str(p), "-n", str(n), "-r", str(reps), "-o", "json"],
                         capture_output=True, text=True, check=True, env=env).stdout
    data = json.loads(out)
    res = {r["test"]: r["samples_ts"] for r in data["results"]}
    return res, data["results"][0]["size_bytes"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-bench", default=None, help="path to a llama-bench binary")
    ap.add_argument("-m", "--model", action="append", required=True, help="GGUF file (repeatable)")
    ap.add_argument("-t", "--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("-p", "--n-prompt", type=int, default=512)
    ap.add_argument("-n", "--n-gen", type=int, default=128)
    ap.add_argument("-r", "--reps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds per model")
    args = ap.parse_args(argv)

    bw = read_bandwidth_gbs(args.threads)
    print(f"machine streaming-read bandwidth at {args.threads} threads: {bw:.1f} GB/s", file=sys.stderr)
    rows = []
    for model in args.model:
        ours: dict[str, list[float]] = {}
        ref: dict[str, list[float]] = {}
        size = os.path.getsize(model)
        for rnd in range(args.rounds):
            if args.llama_bench:
                print(f"[{rnd + 1}/{args.rounds}] llama-bench {os.path.basename(model)}", file=sys.stderr)
                for k, v in run_llama_bench(args.llama_bench, model, args.threads, args.n_prompt,
                                            args.n_gen, args.reps).items():
                    ref.setdefault(k, []).extend(v)
            print(f"[{rnd + 1}/{args.rounds}] gguf-bench  {os.path.basename(model)}", file=sys.stderr)
            res, size = run_ours(model, args.threads, args.n_prompt, args.n_gen, args.reps)
            for k, v in res.items():
                ours.setdefault(k, []).extend(v)
        for test in ours:
            o = statistics.fmean(ours[test])
            r = statistics.fmean(ref[test]) if test in ref else float("nan")
            gbs = lambda ts: size * ts / 1e9 if test.startswith("tg") else float("nan")  # noqa: E731
            rows.append((os.path.basename(model), test, r, o, o / r if r == r else float("nan"), gbs(r), gbs(o)))

    head = ("model", "test", "llama.cpp t/s", "ours t/s", "ratio", "llama.cpp GB/s", "ours GB/s", "machine GB/s")
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for m, test, r, o, ratio, gr, go in rows:
        f = lambda v: "-" if v != v else f"{v:.2f}"  # noqa: E731
        print(f"| {m} | {test} | {f(r)} | {f(o)} | {f(ratio)} | {f(gr)} | {f(go)} | {bw:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
