"""Throughput benchmark in the manner of llama-bench.

``ppN``: prompt processing, N tokens evaluated in one batch from an empty cache.
``tgN``: text generation, N tokens evaluated one at a time from an empty cache.
``ppP+tgN``: both in turn (llama-bench's -pg), counted as P + N tokens.
``... @ dD``: the test on a cache already holding D tokens (llama-bench's -d): the depth is
filled by one untimed batch and kept between repetitions (llama-bench saves and restores it).
Each test runs once untimed (JIT compilation and first-touch page faults stay
out of the numbers) and then ``reps`` times; results are mean ± sd of tokens/s.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np

from .model.memory import resident_bytes


@dataclass
class BenchResult:
    model: str
    size_bytes: int
    n_params: int
    backend: str
    threads: int
    test: str
    n_prompt: int
    n_gen: int
    n_depth: int = 0              # tokens in the cache before the test
    samples_ts: list[float] = field(default_factory=list)
    model_filename: str = ""
    model_type: str = ""          # llama-bench's "ARCH SIZE FTYPE"
    n_batch: int = 0
    n_gpu_layers: int = 0
    type_k: str = "f32"
    type_v: str = "f32"
    test_time: str = ""           # ISO 8601 UTC start of the test
    memory: dict = field(default_factory=dict)   # the model's MemoryBreakdown, rss measured after load

    @property
    def avg_ts(self) -> float:
        return statistics.fmean(self.samples_ts)

    @property
    def stddev_ts(self) -> float:
        return statistics.stdev(self.samples_ts) if len(self.samples_ts) > 1 else 0.0

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(avg_ts=self.avg_ts, stddev_ts=self.stddev_ts)
        return d


def model_size(reader) -> tuple[int, int]:
    """(bytes of tensor data, parameter count) as llama-bench reports them."""
    nbytes = sum(t.n_bytes for t in reader.tensors.values())
    nparams = sum(t.n_elements for t in reader.tensors.values())
    return nbytes, nparams


def _random_tokens(n: int, n_vocab: int, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, n_vocab, size=n, dtype=np.int32)


class DepthState:
    """Which depth the model's cache holds (its first n_depth positions are not overwritten by a
    test, which writes after them, so truncating the cache back restores the depth)."""

    def __init__(self):
        self.n_depth = 0

    def prepare(self, model, n_depth: int, rng) -> None:
        """The cache holding n_depth tokens: kept from an earlier test, else evaluated (untimed)."""
        if n_depth and n_depth == self.n_depth and model.n_past >= n_depth:
            model.truncate(n_depth)
            return
        model.reset()
        self.n_depth = 0
        if n_depth:
            model.eval(_random_tokens(n_depth, model.config.n_vocab, rng))
            self.n_depth = n_depth


def time_test(model, n_prompt: int, n_gen: int, rng, n_depth: int = 0, depth: DepthState | None = None) -> float:
    """Seconds to evaluate n_prompt tokens in one batch and then n_gen one at a time, after n_depth
    tokens already in the cache (filled untimed; depth: what the cache holds, reused when given)."""
    (depth or DepthState()).prepare(model, n_depth, rng)
    toks = _random_tokens(n_prompt + n_gen, model.config.n_vocab, rng)
    t0 = time.perf_counter()
    if n_prompt:
        model.eval(toks[:n_prompt])
    for t in toks[n_prompt:]:
        model.eval(t.reshape(1))
    return time.perf_counter() - t0


def run_bench(model_path: str, n_prompt: int = 512, n_gen: int = 128, threads: int | None = None,
              reps: int = 5, n_gpu_layers: int = 0, progress=None) -> list[BenchResult]:
    """The ppN and tgN tests of one model (either skipped when its count is 0)."""
    tests = [(n_prompt, 0)] * (n_prompt > 0) + [(0, n_gen)] * (n_gen > 0)
    return run_tests(model_path, tests, threads, reps, n_gpu_layers, progress=progress)


def run_tests(model_path: str, tests: list[tuple[int, int]], threads: int | None = None, reps: int = 5,
              n_gpu_layers: int = 0, n_batch: int | None = None, progress=None, cache_type="f32",
              n_ctx: int | None = None, depths: tuple[int, ...] = (0,)) -> list[BenchResult]:
    """Runs each (n_prompt, n_gen) test: (P, 0) is ppP, (0, N) tgN, (P, N) ppP+tgN, at each of
    depths (tokens already in the cache; llama-bench's order: every test at one depth, then the next).
    n_batch: prompt tokens per forward pass (default: the largest prompt); cache_type: the KV
    cache's types (a ``KVTypes``, (k, v) or one name); n_ctx: the cache's size (default: the
    largest test with its depth, as llama-bench sizes it; ValueError when a test does not fit)."""
    from .model import load_model

    threads = threads or os.cpu_count() or 1
    need = max([p + g + max(depths) for p, g in tests] + [16])
    if n_ctx is not None and n_ctx < need:
        raise ValueError(f"a context of {n_ctx} tokens cannot hold a test of {need}")
    n_ctx = n_ctx or need
    n_batch = n_batch or max([p for p, _ in tests] + [1])
    model = load_model(model_path, n_ctx=n_ctx, n_batch=n_batch, n_threads=threads,
                       n_gpu_layers=n_gpu_layers, cache_type=cache_type)
    try:
        memory = model.memory_breakdown(resident_bytes())
        size, params = model_size(model.reader)
        name = str(model.reader.get("general.name") or os.path.basename(model_path))
        backend = model.backend.name
        if getattr(model, "n_gpu_layers", 0):
            backend += f"+GPU({model.n_gpu_layers})"
        rng = np.random.default_rng(1234)
        arch = str(model.reader.get("general.architecture") or "?")
        from .quantize.ftypes import ftype_description
        ftype_id = model.reader.get("general.file_type")
        ftype = "?" if ftype_id is None else ftype_description(ftype_id)
        results = []
        state = DepthState()
        for nd, (npr, ng) in ((d, t) for d in depths for t in tests):
            label = f"pp{npr}+tg{ng}" if npr and ng else f"pp{npr}" if npr else f"tg{ng}"
            label += f" @ d{nd}" if nd else ""

            def run():
                return time_test(model, npr, ng, rng, nd, state)
            run()  # warm-up: compile and fault in
            r = BenchResult(name, size, params, backend, threads, label, npr, ng, nd,
                            model_filename=model_path, model_type=f"{arch} {format_params(params)} {ftype}",
                            n_batch=n_batch, n_gpu_layers=n_gpu_layers, type_k=model.kv_cache.type_k,
                            type_v=model.kv_cache.type_v,
                            test_time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), memory=memory)
            for _ in range(reps):
                r.samples_ts.append((npr + ng) / run())
                if progress:
                    progress(label)
            results.append(r)
        return results
    finally:
        model.reset()
        model.close()


def best_time(fn, reps: int, min_seconds: float = 0.0, clock=time.perf_counter) -> float:
    """Best time of at least reps calls of fn (more until min_seconds have passed: a call of
    microseconds needs many tries to meet a quiet moment), after one untimed call.  clock: wall
    time by default; time.process_time counts the CPU time of the process instead, which a shared
    machine's time-slicing leaves out (meaningful for single-threaded work)."""
    fn()
    best = float("inf")
    start = time.perf_counter()
    n = 0
    while n < reps or time.perf_counter() - start < min_seconds:
        t0 = clock()
        fn()
        best = min(best, clock() - t0)
        n += 1
    return best


def read_bandwidth_gbs(threads: int, reps: int = 5) -> float:
    """The machine's streaming-read bandwidth in GB/s: a numpy sum over 512 MB split into one
    contiguous chunk per thread (best of reps), the baseline the benchmarks compare against."""
    a = np.ones(1 << 27, np.float32)
    chunks = np.array_split(a, threads)
    with ThreadPoolExecutor(threads) as ex:
        t = best_time(lambda: list(ex.map(np.sum, chunks)), reps)
    return a.nbytes / t / 1e9


def peak_rss_bytes() -> int:
    """Peak resident set size of this process."""
    try:
        import resource
        r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return r * 1024 if sys.platform != "darwin" else r
    except ImportError:  # pragma: no cover - non-POSIX
        import psutil
        return psutil.Process().memory_info().rss


def cold_start_seconds(model_path: str, threads: int | None = None) -> float:
    """Wall time of a first run (load, 8-token prompt, 1 generated token) in a fresh
    process whose Numba cache directory is empty, so every kernel it needs compiles."""
    code = ("import sys, numpy as np\n"
            "from gguf_engine.model import load_model\n"
            "m = load_model(sys.argv[1], n_ctx=64, n_threads=int(sys.argv[2]) or None)\n"
            "m.eval(np.arange(8, dtype=np.int32)); m.eval(np.array([9], dtype=np.int32))\n")
    with tempfile.TemporaryDirectory(prefix="numba-cold-") as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code, model_path, str(threads or 0)], env=env, check=True)
        return time.perf_counter() - t0


def format_size(n: int) -> str:
    if n >= 1 << 30:
        return f"{n / (1 << 30):.2f} GiB"
    return f"{n / (1 << 20):.2f} MiB"


def format_params(n: int) -> str:
    if n >= 1e9:
        return f"{n / 1e9:.2f} B"
    return f"{n / 1e6:.2f} M"


def markdown_table(results: list[BenchResult]) -> str:
    """llama-bench's table; the type_k / type_v columns appear when a result's cache is not f32
    (llama-bench likewise shows the columns of options that differ from its defaults)."""
    types = any((r.type_k, r.type_v) != ("f32", "f32") for r in results)
    head = ["model", "size", "params", "backend", "threads"] + ["type_k", "type_v"] * types + ["test", "t/s"]
    rows = [[r.model, format_size(r.size_bytes), format_params(r.n_params), r.backend, str(r.threads)]
            + [r.type_k, r.type_v] * types + [r.test, f"{r.avg_ts:.2f} ± {r.stddev_ts:.2f}"] for r in results]
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(head)]
    right = {1, 2, 4, len(head) - 2, len(head) - 1}

    def fmt(cells):
        return "| " + " | ".join(c.rjust(w) if i in right else c.ljust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths))) + " |"

    sep = "| " + " | ".join(("-" * (w - 1) + ":") if i in right else "-" * w
                           for i, w in enumerate(widths)) + " |"
    return "\n".join([fmt(head), sep] + [fmt(r) for r in rows])
