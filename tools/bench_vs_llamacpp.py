"""Side-by-side throughput: gguf-bench against llama.cpp's llama-bench on the same files.

    python tools/bench_vs_llamacpp.py --llama-bench PATH/TO/llama-bench \
        -m models/smollm2-135m-instruct-q4_1.gguf -m models/gemma-3-270m-q4_k_m.gguf \
        [-t 2] [-p 512] [-n 128] [-r 3] [--rounds 2]
    python tools/bench_vs_llamacpp.py --llama-bench PATH/TO/llama-bench \
        --shape llama-3.2-1b --shape llama-3.1-8b --type Q4_K_M --type Q4_0 --model-dir random-models \
        -t 1,2 -p 512,64 -n 128 --load --json results.json
    python tools/bench_vs_llamacpp.py --llama-bench PATH/TO/llama-bench \
        --shape qwen3moe-16l-32e --type Q4_K_M --model-dir random-models -t 2 -p 512 -n 128   # MoE

Both programs run on the same file with the same thread count, alternately
(llama.cpp, ours, llama.cpp, ours, ...) so that machine noise hits both.  The
throughput table gives tokens/s of each and our ratio; for generation also the
weight bytes streamed per second (bytes read per token x tokens/s) and that figure
as a fraction of the bandwidth ceiling: the machine's streaming-read bandwidth,
measured in the same run at the same thread count, divided by the bytes read per
token (every weight tensor except the token embedding, of which one row is read,
and of a mixture-of-experts model's expert tensors only the share of the experts a
token uses; the KV cache is left out).  A second table gives each program's peak RSS (the
largest of its benchmark processes) and, with --load, the load time: the wall time
of a fresh process that loads the file and generates one token (page cache warm;
gguf-bench also runs its warm-up token, llama-bench runs with --no-warmup).

``--shape``/``--type`` make random-weight files of real model shapes with
tools/make_random_model.py into --model-dir (an existing file is reused).
Without --llama-bench only our side is measured.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from gguf_engine.bench import read_bandwidth_gbs  # noqa: E402
from gguf_engine.gguf.reader import GGUFReader  # noqa: E402


@dataclass
class ProcResult:
    """A finished benchmark process: its stdout, wall seconds and peak RSS."""
    stdout: str
    seconds: float
    peak_rss: int


def vm_hwm(pid: int) -> int:
    """A live process's peak resident set (VmHWM, bytes); 0 where /proc cannot tell."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def run_measured(cmd: list[str], env: dict | None = None) -> ProcResult:
    """Run cmd to completion, with its wall time and its own peak RSS.

    The peak is the process's VmHWM, sampled every 10 ms while it runs: exec starts a fresh
    address space, so it is the program's own, whereas wait4's ru_maxrss also counts this
    (forked) benchmark process's resident memory.  Off Linux, ru_maxrss is used."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    peak = 0
    with ThreadPoolExecutor(2) as ex:
        out, err = ex.submit(proc.stdout.read), ex.submit(proc.stderr.read)
        while True:
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            peak = max(peak, vm_hwm(proc.pid))
            time.sleep(0.01)
        out, err = out.result(), err.result()
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    proc.stdout.close()
    proc.stderr.close()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed with exit code {proc.returncode}:\n{err[-2000:]}")
    return ProcResult(out, seconds, peak or ru.ru_maxrss * 1024)


def parse_llama_bench(out: str) -> dict[str, list[float]]:
    """llama-bench -o json -> {"pp512": samples t/s, "tg128": ...}."""
    res: dict[str, list[float]] = {}
    for r in json.loads(out):
        label = f"pp{r['n_prompt']}" if r["n_prompt"] else f"tg{r['n_gen']}"
        res.setdefault(label, []).extend(r.get("samples_ts") or [r["avg_ts"]])
    return res


def llama_bench_cmd(binary: str, model: str, threads: int, prompts: list[int], n: int, reps: int) -> list[str]:
    return [binary, "-m", model, "-t", str(threads), "-p", ",".join(map(str, prompts)), "-n", str(n),
            "-r", str(reps), "-o", "json"]


def ours_cmd(model: str, threads: int, p: int, n: int, reps: int) -> list[str]:
    return [sys.executable, "-m", "gguf_engine.cli.bench", "-m", model, "-t", str(threads),
            "-p", str(p), "-n", str(n), "-r", str(reps), "-o", "json"]


def ours_env() -> dict:
    return dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


def run_llama_bench(binary: str, model: str, threads: int, prompts: list[int], n: int,
                    reps: int) -> tuple[dict[str, list[float]], int]:
    """llama-bench's samples per test, and the process's peak RSS."""
    r = run_measured(llama_bench_cmd(binary, model, threads, prompts, n, reps))
    return parse_llama_bench(r.stdout), r.peak_rss


def run_ours(model: str, threads: int, prompts: list[int], n: int, reps: int) -> tuple[dict[str, list[float]], int]:
    """gguf-bench's samples per test (one process per prompt size; generation with the first), and
    the largest peak RSS of those processes."""
    res: dict[str, list[float]] = {}
    rss = 0
    for i, p in enumerate(prompts or [0]):
        r = run_measured(ours_cmd(model, threads, p, n if i == 0 else 0, reps), ours_env())
        for label, samples in parse_llama_bench(r.stdout).items():     # gguf-bench -o json: llama-bench's records
            res.setdefault(label, []).extend(samples)
        rss = max(rss, r.peak_rss)
    return res, rss


def load_seconds(cmd: list[str], env: dict | None = None) -> float:
    """Wall time of a process that loads a model and generates one token."""
    return run_measured(cmd, env).seconds


def bytes_per_token(model: str) -> int:
    """Weight bytes a generated token reads: every tensor but token_embd, unless token_embd is
    also the output projection (no output.weight), in which case it is read whole too; of the
    expert tensors (``*_exps.*``) of a mixture-of-experts model, the expert_used_count of
    expert_count experts that a token is routed to."""
    with GGUFReader(model) as r:
        tied = "output.weight" not in r.tensors
        arch = r.metadata.get("general.architecture", "")
        n_expert = int(r.metadata.get(f"{arch}.expert_count", 0) or 0)
        n_used = int(r.metadata.get(f"{arch}.expert_used_count", 0) or 0)
        total = 0
        for name, t in r.tensors.items():
            if not tied and name == "token_embd.weight":
                continue
            if n_expert > 0 and "_exps." in name:
                total += t.n_bytes * n_used // n_expert
            else:
                total += t.n_bytes
        return total


@dataclass
class Row:
    """One (model, threads, test) line of the throughput table."""
    model: str
    threads: int
    test: str
    ref_ts: list[float] = field(default_factory=list)
    ours_ts: list[float] = field(default_factory=list)

    @staticmethod
    def mean(v: list[float]) -> float:
        return statistics.fmean(v) if v else float("nan")

    @property
    def ratio(self) -> float:
        return self.mean(self.ours_ts) / self.mean(self.ref_ts)


@dataclass
class ModelRun:
    """Per (model, threads): bandwidth, bytes per token, peak RSS and load seconds of both."""
    model: str
    threads: int
    bandwidth_gbs: float
    bytes_per_token: int
    ref_rss: int = 0
    ours_rss: int = 0
    ref_load: list[float] = field(default_factory=list)
    ours_load: list[float] = field(default_factory=list)

    def ceiling_ts(self) -> float:
        """Tokens/s if every token only streamed its weights at the measured bandwidth."""
        return self.bandwidth_gbs * 1e9 / self.bytes_per_token


def fmt(v: float, digits: int = 2) -> str:
    return "-" if v != v else f"{v:.{digits}f}"


def throughput_table(rows: list[Row], runs: dict[tuple[str, int], ModelRun]) -> list[str]:
    head = ("model", "threads", "test", "llama.cpp t/s", "ours t/s", "ratio", "llama.cpp GB/s", "ours GB/s",
            "llama.cpp / ceiling", "ours / ceiling")
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        run = runs[(r.model, r.threads)]
        ref, ours = Row.mean(r.ref_ts), Row.mean(r.ours_ts)
        gen = r.test.startswith("tg")
        gbs = (lambda ts: run.bytes_per_token * ts / 1e9 if gen else float("nan"))  # noqa: E731
        frac = (lambda ts: ts / run.ceiling_ts() if gen else float("nan"))  # noqa: E731
        out.append(f"| {r.model} | {r.threads} | {r.test} | {fmt(ref)} | {fmt(ours)} | {fmt(r.ratio)} | "
                   f"{fmt(gbs(ref))} | {fmt(gbs(ours))} | {fmt(frac(ref))} | {fmt(frac(ours))} |")
    return out


def resources_table(runs: dict[tuple[str, int], ModelRun]) -> list[str]:
    head = ("model", "threads", "GB/s read", "MB/token", "ceiling t/s", "llama.cpp load s", "ours load s",
            "ratio", "llama.cpp peak RSS MiB", "ours peak RSS MiB", "ratio")
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for run in runs.values():
        rl, ol = Row.mean(run.ref_load), Row.mean(run.ours_load)
        rr, orr = run.ref_rss / 2**20 if run.ref_rss else float("nan"), run.ours_rss / 2**20
        out.append(f"| {run.model} | {run.threads} | {run.bandwidth_gbs:.1f} | {run.bytes_per_token / 1e6:.0f} | "
                   f"{run.ceiling_ts():.2f} | {fmt(rl)} | {fmt(ol)} | {fmt(ol / rl)} | {fmt(rr, 0)} | "
                   f"{fmt(orr, 0)} | {fmt(orr / rr)} |")
    return out


def int_list(text: str) -> list[int]:
    """'1,2' -> [1, 2] (llama-bench's list syntax)."""
    try:
        vals = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not vals or any(v < 0 for v in vals):
        raise argparse.ArgumentTypeError(f"expected non-negative integers, got {text!r}")
    return vals


def random_models(shapes: list[str], types: list[str], model_dir: str, log) -> list[str]:
    """Paths of random-weight files for every shape x type, made where missing."""
    from make_random_model import make_model
    os.makedirs(model_dir, exist_ok=True)
    paths = []
    for s in shapes:
        for t in types:
            path = os.path.join(model_dir, f"{s}-{t}.gguf")
            if not os.path.exists(path):
                log(f"making {path}")
                make_model(s, t, path, log=lambda m: None)
            paths.append(path)
    return paths


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-bench", default=None, help="path to a llama-bench binary")
    ap.add_argument("-m", "--model", action="append", default=[], help="GGUF file (repeatable)")
    ap.add_argument("--shape", action="append", default=[],
                    help="random-weight model shape from tools/make_random_model.py (repeatable)")
    ap.add_argument("--type", action="append", default=[], help="ftype of the --shape files (repeatable)")
    ap.add_argument("--model-dir", default=None, help="where --shape files are made and kept")
    ap.add_argument("-t", "--threads", type=int_list, default=[os.cpu_count() or 1],
                    help="thread counts, comma-separated (default: all cores)")
    ap.add_argument("-p", "--n-prompt", type=int_list, default=[512], help="prompt sizes, comma-separated")
    ap.add_argument("-n", "--n-gen", type=int, default=128)
    ap.add_argument("-r", "--reps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds per model and thread count")
    ap.add_argument("--load", action="store_true", help="also time loading (a process generating one token)")
    ap.add_argument("--json", metavar="FILE", help="also write every sample to FILE")
    args = ap.parse_args(argv)
    if args.shape and not (args.type and args.model_dir):
        ap.error("--shape needs --type and --model-dir")
    if args.type and not args.shape:
        ap.error("--type applies to --shape files; give --shape")
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    try:
        models = args.model + random_models(args.shape, args.type, args.model_dir, log) if args.shape else args.model
    except ValueError as e:                     # an unknown shape or type
        ap.error(str(e))
    if not models:
        ap.error("give -m MODEL or --shape/--type/--model-dir")
    for m in models:
        if not os.path.isfile(m):
            ap.error(f"model file not found: {m}")

    bw = {t: read_bandwidth_gbs(t) for t in args.threads}
    for t, v in bw.items():
        log(f"machine streaming-read bandwidth at {t} threads: {v:.1f} GB/s")
    rows: list[Row] = []
    runs: dict[tuple[str, int], ModelRun] = {}
    for model in models:
        name = os.path.basename(model)
        bpt = bytes_per_token(model)
        for threads in args.threads:
            run = runs[(name, threads)] = ModelRun(name, threads, bw[threads], bpt)
            by_test: dict[str, Row] = {}
            for rnd in range(args.rounds):
                tag = f"[{rnd + 1}/{args.rounds}] t={threads}"
                if args.llama_bench:
                    log(f"{tag} llama-bench {name}")
                    res, rss = run_llama_bench(args.llama_bench, model, threads, args.n_prompt, args.n_gen, args.reps)
                    run.ref_rss = max(run.ref_rss, rss)
                    for k, v in res.items():
                        by_test.setdefault(k, Row(name, threads, k)).ref_ts.extend(v)
                log(f"{tag} gguf-bench  {name}")
                res, rss = run_ours(model, threads, args.n_prompt, args.n_gen, args.reps)
                run.ours_rss = max(run.ours_rss, rss)
                for k, v in res.items():
                    by_test.setdefault(k, Row(name, threads, k)).ours_ts.extend(v)
                if args.load:
                    if args.llama_bench:
                        run.ref_load.append(load_seconds(llama_bench_cmd(args.llama_bench, model, threads, [0], 1, 1)
                                                         + ["--no-warmup"]))
                    run.ours_load.append(load_seconds(ours_cmd(model, threads, 0, 1, 1), ours_env()))
            rows.extend(r for r in by_test.values() if r.ours_ts)

    print("\n".join(throughput_table(rows, runs)))
    print()
    print("\n".join(resources_table(runs)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": [asdict(r) for r in rows], "runs": [asdict(r) for r in runs.values()]}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
