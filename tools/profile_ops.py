"""Where a forward pass spends its time: wall time per backend operation, for decoding and prefill.

    python tools/profile_ops.py MODEL.gguf [-t 2] [-p 512] [-n 32]

Loads the model on the CPU backend wrapped in a timing proxy: every backend operation the model
calls (``linear``, ``linear_fused``, ``attention``, ``qkv_prepare``, ``moe``, norms, ...) is timed
by name, and inside ``moe`` the expert products (``ExpertWeights.mul_grouped``, or ``mul_items`` in a
decode step's fused layer, split into the gate|up and the down products) too.  After a warm-up, it evaluates a prompt of -p tokens in one
batch and then -n tokens one at a time, and prints for each phase the milliseconds per call and
per token and each operation's share of the phase's wall time (the rest, "other", is the model's
Python glue and the numpy work between operations).  Numbers are for comparison within one run.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from contextlib import contextmanager

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

from gguf_engine.backends.cpu import CPUBackend  # noqa: E402
from gguf_engine.model import load_model  # noqa: E402
from kernels.experts import ExpertWeights  # noqa: E402


class Clock:
    """Accumulated seconds and calls per operation name; nested operations count in both."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    @contextmanager
    def time(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - t0
            self.calls[name] += 1

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()


# set-up calls, and run_layers, which only wraps a pass over layers whose operations are timed
UNTIMED = ("upload_weight", "upload_experts", "fuse", "upload_array", "kv_cache", "scope", "run_layers",
           "set_threads")


class TimingBackend:
    """A backend proxy timing every method call by name (attributes pass through)."""

    def __init__(self, inner, clock: Clock):
        self._inner = inner
        self._clock = clock

    def __getattr__(self, attr):
        value = getattr(self._inner, attr)
        if not callable(value) or attr.startswith("_") or attr in UNTIMED:
            return value
        clock = self._clock

        def timed(*args, **kwargs):
            with clock.time(attr):
                return value(*args, **kwargs)
        return timed


@contextmanager
def expert_products_timed(clock: Clock):
    """Time ExpertWeights.mul_grouped (a batch's products, grouped by expert) and, for a decode
    step's fused layer (kernels.experts.decode_step), ExpertWeights.mul_items while inside, named by
    whether the product is the gate|up or the down one (gate|up takes each token's input row for its
    k slots; down one row per slot; a top-1 model's decode-step down product counts as gate|up)."""
    inner, inner_items = ExpertWeights.mul_grouped, ExpertWeights.mul_items

    def name(shared: bool) -> str:
        return "moe: expert products (gate|up)" if shared else "moe: expert products (down)"

    def mul_grouped(self, X, src, bounds, decode=False):
        with clock.time(name(src is not None)):
            return inner(self, X, src, bounds, decode)

    def mul_items(self, X, tiles, xrow, out):
        with clock.time(name(X.shape[0] == 1)):
            return inner_items(self, X, tiles, xrow, out)
    ExpertWeights.mul_grouped, ExpertWeights.mul_items = mul_grouped, mul_items
    try:
        yield
    finally:
        ExpertWeights.mul_grouped, ExpertWeights.mul_items = inner, inner_items


def table(title: str, clock: Clock, wall: float, n_tokens: int) -> list[str]:
    out = [f"{title}: {wall * 1e3:.1f} ms for {n_tokens} tokens ({n_tokens / wall:.2f} t/s)",
           "| operation | calls | ms/call | ms/token | share |", "|---|---:|---:|---:|---:|"]
    top = sum(s for n, s in clock.seconds.items() if not n.startswith("moe:"))
    rows = sorted(clock.seconds.items(), key=lambda kv: -kv[1])
    for name, s in rows:
        out.append(f"| {name} | {clock.calls[name]} | {s * 1e3 / clock.calls[name]:.3f} | "
                   f"{s * 1e3 / n_tokens:.3f} | {100 * s / wall:.1f}% |")
    out.append(f"| other | | | {(wall - top) * 1e3 / n_tokens:.3f} | {100 * (wall - top) / wall:.1f}% |")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("-t", "--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("-p", "--n-prompt", type=int, default=512)
    ap.add_argument("-n", "--n-gen", type=int, default=32)
    args = ap.parse_args(argv)
    clock = Clock()
    n_ctx = args.n_prompt + args.n_gen + 8
    model = load_model(args.model, n_ctx=n_ctx, n_batch=max(1, args.n_prompt), n_threads=args.threads,
                       backend=TimingBackend(CPUBackend(args.threads), clock))
    rng = np.random.default_rng(0)
    toks = rng.integers(0, model.config.n_vocab, size=args.n_prompt + args.n_gen, dtype=np.int32)
    try:
        with expert_products_timed(clock):
            profile(model, toks, args.n_prompt, clock)
    finally:
        model.close()
    return 0


def profile(model, toks: np.ndarray, n_prompt: int, clock: Clock) -> None:
    """Warm up (compile, fault in both paths), then print the prefill and the decode table."""
    n_gen = len(toks) - n_prompt
    model.eval(toks[:max(1, n_prompt)])
    model.eval(toks[-1:])
    model.reset()
    clock.reset()
    if n_prompt:
        t0 = time.perf_counter()
        model.eval(toks[:n_prompt])
        wall = time.perf_counter() - t0
        print("\n".join(table(f"prefill pp{n_prompt}", clock, wall, n_prompt)) + "\n")
    clock.reset()
    t0 = time.perf_counter()
    for t in toks[n_prompt:]:
        model.eval(t.reshape(1))
    wall = time.perf_counter() - t0
    print("\n".join(table(f"decode tg{n_gen}", clock, wall, n_gen)))


if __name__ == "__main__":
    sys.exit(main())
