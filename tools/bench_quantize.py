"""Quantization speed: our quantizer against llama.cpp's llama-quantize on the same model.

    python tools/bench_quantize.py -m model-f16.gguf [--llama-quantize PATH/TO/llama-quantize] \
        [-t 2] [--types Q4_K_M IQ4_XS] [--imatrix FILE] [--rounds 2] [--workdir DIR]

Each measurement is one whole command run in a fresh process, as a user runs it: ours is
``python -m gguf_engine.cli.quantize IN OUT TYPE NTHREADS`` (the ``gguf-quantize`` command),
llama.cpp's is ``llama-quantize IN OUT TYPE NTHREADS``, both with the same thread count and
the same importance matrix if one is given.  The two alternate (llama.cpp, ours, llama.cpp,
ours, ...) so that load from other programs hits both.  One untimed run of ours comes first so
that Numba's compilation cache is filled; the timed runs load compiled kernels from it.

The table gives, per type, the median wall-clock seconds of each, the ratio ours/llama.cpp,
the CPU seconds (user + system) of each, and the quantize time each command reports itself
(``quantize time = ... ms``: the work without process start-up, imports and Numba's loading of
compiled kernels).  On a busy machine CPU time is the steadier measure; wall time is what a
user waits.  The spread (min-max) of the wall times shows the noise.
Without --llama-quantize only our side is measured.  Output files go to --workdir (a temporary
directory by default) and are removed.
"""
from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
DEFAULT_TYPES = ("Q4_K_M", "IQ4_XS")


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


_QUANTIZE_TIME = re.compile(r"quantize time =\s*([0-9.]+) ms")


def timed_run(cmd: list[str], env: dict | None = None) -> tuple[float, float, float]:
    """Run a command to completion; (wall seconds, CPU seconds, the quantize time it reports itself,
    which leaves out process start-up). Raises with its output on failure."""
    cpu0, t0 = _children_cpu(), time.perf_counter()
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    wall, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
    if p.returncode != 0:
        raise RuntimeError(f"command failed ({p.returncode}): {' '.join(cmd)}\n{p.stdout[-3000:]}")
    m = _QUANTIZE_TIME.search(p.stdout)
    return wall, cpu, (float(m.group(1)) / 1000 if m else float("nan"))


def our_command(model: str, out: str, qtype: str, threads: int, imatrix: str | None) -> list[str]:
    cmd = [sys.executable, "-m", "gguf_engine.cli.quantize", "--no-progress", "--quiet"]
    if imatrix:
        cmd += ["--imatrix", imatrix]
    return cmd + [model, out, qtype, str(threads)]


def llama_command(binary: str, model: str, out: str, qtype: str, threads: int, imatrix: str | None) -> list[str]:
    cmd = [binary]
    if imatrix:
        cmd += ["--imatrix", imatrix]
    return cmd + [model, out, qtype, str(threads)]


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


def bench(model: str, types: list[str], threads: int, rounds: int, llama_quantize: str | None,
          imatrix: str | None, workdir: str, log=print) -> list[dict]:
    env = _env()
    rows = []
    for qtype in types:
        out_ours = os.path.join(workdir, f"ours-{qtype}.gguf")
        out_ref = os.path.join(workdir, f"llama-{qtype}.gguf")
        log(f"{qtype}: warm-up run of ours (fills the compilation cache)")
        timed_run(our_command(model, out_ours, qtype, threads, imatrix), env)
        ours, ref = [], []
        for r in range(rounds):
            if llama_quantize:
                ref.append(timed_run(llama_command(llama_quantize, model, out_ref, qtype, threads, imatrix)))
                log(f"{qtype}: round {r + 1}: llama-quantize {ref[-1][0]:.2f} s wall, {ref[-1][1]:.2f} s CPU")
            ours.append(timed_run(our_command(model, out_ours, qtype, threads, imatrix), env))
            log(f"{qtype}: round {r + 1}: ours           {ours[-1][0]:.2f} s wall, {ours[-1][1]:.2f} s CPU")
        row = {"type": qtype, "ours_wall": [m[0] for m in ours], "ours_cpu": [m[1] for m in ours],
               "ours_own": [m[2] for m in ours],
               "ref_wall": [m[0] for m in ref], "ref_cpu": [m[1] for m in ref], "ref_own": [m[2] for m in ref],
               "ours_bytes": os.path.getsize(out_ours),
               "ref_bytes": os.path.getsize(out_ref) if ref else None}
        rows.append(row)
        for p in (out_ours, out_ref):
            if os.path.exists(p):
                os.unlink(p)
    return rows


def _spread(v: list[float]) -> str:
    return f"{min(v):.1f}-{max(v):.1f}" if len(v) > 1 else "-"


def format_table(rows: list[dict], threads: int) -> str:
    """Medians per type. 'own' is the quantize time each command reports (no process start-up)."""
    lines = [f"| type | llama-quantize s (wall, range) | ours s (wall, range) | ratio wall | "
             f"llama-quantize CPU s | ours CPU s | ratio CPU | llama-quantize own s | ours own s | ratio own |"
             f"  ({threads} threads, medians)",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ow, oc = statistics.median(r["ours_wall"]), statistics.median(r["ours_cpu"])
        oo = statistics.median(r.get("ours_own") or [float("nan")])
        if r["ref_wall"]:
            rw, rc = statistics.median(r["ref_wall"]), statistics.median(r["ref_cpu"])
            ro = statistics.median(r.get("ref_own") or [float("nan")])
            lines.append(f"| {r['type']} | {rw:.2f} ({_spread(r['ref_wall'])}) | {ow:.2f} ({_spread(r['ours_wall'])}) "
                         f"| {ow / rw:.2f}x | {rc:.2f} | {oc:.2f} | {oc / rc:.2f}x | {ro:.2f} | {oo:.2f} | {oo / ro:.2f}x |")
        else:
            lines.append(f"| {r['type']} | - | {ow:.2f} ({_spread(r['ours_wall'])}) | - | - | {oc:.2f} | - "
                         f"| - | {oo:.2f} | - |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Time our quantizer against llama-quantize.",
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("-m", "--model", required=True, help="F16/F32/BF16 GGUF model to quantize")
    ap.add_argument("--llama-quantize", help="path of llama.cpp's llama-quantize (optional)")
    ap.add_argument("-t", "--threads", type=int, default=2, help="threads for both (default 2)")
    ap.add_argument("--types", nargs="+", default=list(DEFAULT_TYPES), help="ftypes (default Q4_K_M IQ4_XS)")
    ap.add_argument("--imatrix", help="importance matrix given to both (GGUF or legacy .dat)")
    ap.add_argument("--rounds", type=int, default=2, help="timed runs of each per type (default 2)")
    ap.add_argument("--workdir", help="where the outputs go (default: a temporary directory)")
    args = ap.parse_args(argv)
    if args.llama_quantize and not os.access(args.llama_quantize, os.X_OK):
        ap.error(f"{args.llama_quantize} is not an executable")
    work = args.workdir or tempfile.mkdtemp(prefix="bench-quantize-")
    os.makedirs(work, exist_ok=True)
    try:
        rows = bench(args.model, args.types, args.threads, args.rounds, args.llama_quantize, args.imatrix, work)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(format_table(rows, args.threads))
    try:
        load = os.getloadavg()[0]
        print(f"\nload average during the run: {load:.1f} on {os.cpu_count()} CPUs "
              "(a busy machine makes wall times noisy; compare the CPU columns too)")
    except OSError:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
