"""Per-kernel profile of one decode step (a generated token) on the CPU backend.

    python tools/profile_decode.py -m llama-3.2-1b-q4_0.gguf [-t 2] [-n 64] [--ctx 128]

The model generates -n tokens (after one untimed warm-up pass of as many) -r times each way,
alternately (best of each kept):
  1. plain, for the step time as gguf-bench sees it;
  2. with every kernel call timed: each weight's matvec (grouped by tensor role and GGML
     type: attn_qkv, attn_output, ffn_gate_up, ffn_down, a mixture-of-experts router ffn_gate_inp,
     output; "Q4_K+Q6_K" for a Q|K and a V multiplied in one launch) and each backend op (norms,
     q/k/v preparation with RoPE, attention, gated activation, embedding, and a mixture-of-experts
     layer's ``moe``: routing, the selected experts' products, their activation and weighted sum,
     its bytes those of the k experts read).
The table gives, per group, the calls per token, microseconds per token, the share of the
plain step, and for matvecs the GGML bytes read per second and that as a fraction of the
machine's streaming-read bandwidth (measured in the same run at the same thread count).
"Python between kernels" is the plain step time minus the sum of the timed kernels: the
interpreter's work per token (dispatch, argument checks, slicing) that no kernel accounts for.
The timers themselves cost about a microsecond per call; that cost is measured and taken out
of each group.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from gguf_engine.bench import read_bandwidth_gbs  # noqa: E402
from gguf_engine.model import load_model  # noqa: E402

BACKEND_OPS = ("embed", "rms_norm", "add_rms_norm", "qkv_prepare", "attention", "gated_act", "softcap", "moe")
WEIGHT_ROLES = ("attn_qkv", "attn_output", "ffn_gate_up", "ffn_down", "ffn_gate_inp")


@dataclass
class Group:
    """Timed calls of one kernel group over the profiled tokens."""
    seconds: float = 0.0
    calls: int = 0
    nbytes: int = 0          # GGML bytes read by the group's matvecs (0 for backend ops)


def _weights(tf):
    """(role, Weight) for every matvec weight of the transformer; a group of weights multiplied in
    one launch (a ``WeightGroup`` with a joint kernel: Q4_K Q|K beside a Q6_K V) as one."""
    for b in tf.blk:
        for role in WEIGHT_ROLES:
            ws = getattr(b, role, None)
            if getattr(ws, "joint", False):
                yield role, ws
                continue
            for w in (ws if isinstance(ws, (list, tuple)) else [ws]):
                if w is not None and hasattr(w, "_product"):
                    yield role, w
    if hasattr(tf.output, "_product"):
        yield "output", tf.output


def _timer_cost() -> float:
    """Seconds one wrapped call adds (two perf_counter calls, a closure call, a dict update)."""
    groups: dict[str, Group] = defaultdict(Group)
    f = _timed(lambda *a: None, groups, "x", 0)
    n = 20000
    t0 = time.perf_counter()
    for _ in range(n):
        f()
    t1 = time.perf_counter()
    for _ in range(n):
        (lambda *a: None)()
    return max(0.0, (t1 - t0 - (time.perf_counter() - t1)) / n)


def _timed(fn, groups, key, nbytes):
    def call(*a, **k):
        t0 = time.perf_counter()
        r = fn(*a, **k)
        g = groups[key]
        g.seconds += time.perf_counter() - t0
        g.calls += 1
        g.nbytes += nbytes
        return r
    return call


def _timed_moe(fn, groups, key, _):
    """_timed for the backend's moe operation, counting the GGML bytes of the selected experts
    (each expert tensor's share of k experts, the types as stored in each layer)."""
    def call(x, logits, experts, routing, *a, **k):
        t0 = time.perf_counter()
        r = fn(x, logits, experts, routing, *a, **k)
        g = groups[key]
        g.seconds += time.perf_counter() - t0
        g.calls += 1
        g.nbytes += x.shape[0] * routing.n_used * sum(E.experts[0].file_nbytes for E in (*experts.gate_up, experts.down))
        return r
    return call


def instrument(model, groups):
    """Wrap each weight's bound matvec and each backend op of the model with a timer; returns
    the function that takes the timers off again."""
    tf = model._tf
    undo = []
    for role, w in _weights(tf):
        undo.append((w, "_product", w._product))
        types = "+".join(m.qtype.name for m in w) if isinstance(w, list) else w.qtype.name
        w._product = _timed(w._product, groups, f"matvec {role} {types}", w.file_nbytes)
    be = tf.backend
    for op in BACKEND_OPS:
        if hasattr(be, op):
            undo.append((be, op, None))
            setattr(be, op, (_timed_moe if op == "moe" else _timed)(getattr(be, op), groups, op, 0))

    def remove() -> None:
        for obj, name, old in undo:
            if old is None:
                delattr(obj, name)          # the instance attribute: the class's method shows again
            else:
                setattr(obj, name, old)
    return remove


def generate(model, n: int, rng) -> float:
    """Seconds to generate n tokens one at a time from an empty cache."""
    toks = rng.integers(0, model.config.n_vocab, n, dtype=np.int32)
    model.reset()
    t0 = time.perf_counter()
    for t in toks:
        model.eval(t.reshape(1))
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", required=True, help="GGUF file")
    ap.add_argument("-t", "--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("-n", "--n-gen", type=int, default=64, help="tokens generated per measurement (default 64)")
    ap.add_argument("-r", "--reps", type=int, default=3, help="measurements, best kept (default 3)")
    args = ap.parse_args(argv)
    if not os.path.isfile(args.model):
        ap.error(f"model file not found: {args.model}")
    if args.n_gen < 1 or args.reps < 1:
        ap.error("-n and -r must be >= 1")

    bw = read_bandwidth_gbs(args.threads)
    model = load_model(args.model, n_ctx=args.n_gen + 16, n_threads=args.threads)
    rng = np.random.default_rng(1234)
    generate(model, args.n_gen, rng)                                   # warm-up: compile, fault in
    cost = _timer_cost()
    groups: dict[str, Group] = defaultdict(Group)
    best: dict[str, Group] = {}
    best_total = plain = float("inf")
    for _ in range(args.reps):                  # plain and timed runs alternate: noise hits both
        plain = min(plain, generate(model, args.n_gen, rng) / args.n_gen)
        groups.clear()
        remove = instrument(model, groups)
        generate(model, args.n_gen, rng)
        remove()
        total = sum(g.seconds for g in groups.values())
        if total < best_total:
            best_total, best = total, {k: Group(g.seconds, g.calls, g.nbytes) for k, g in groups.items()}
    model.close()

    n = args.n_gen
    rows = []
    kernel_s = 0.0
    for key, g in sorted(best.items(), key=lambda kv: -kv[1].seconds):
        s = max(0.0, g.seconds - g.calls * cost) / n                   # per token, timer cost out
        kernel_s += s
        gbs = g.nbytes / n / s / 1e9 if g.nbytes and s > 0 else float("nan")
        rows.append((key, g.calls / n, s, gbs))
    print(f"model {os.path.basename(args.model)}, {args.threads} threads, {n} tokens x {args.reps} (best)")
    print(f"plain decode step: {plain * 1e3:.2f} ms ({1 / plain:.2f} t/s); streaming-read bandwidth "
          f"{bw:.1f} GB/s; timer cost {cost * 1e6:.2f} us/call (taken out)")
    print()
    print("| kernel | calls/token | us/token | share of step | GB/s | / bandwidth |")
    print("|---|---|---|---|---|---|")
    for key, calls, s, gbs in rows:
        frac = "-" if gbs != gbs else f"{gbs / bw:.2f}"
        print(f"| {key} | {calls:.0f} | {s * 1e6:.0f} | {s / plain:.1%} | {'-' if gbs != gbs else f'{gbs:.1f}'} "
              f"| {frac} |")
    other = plain - kernel_s
    print(f"| Python between kernels | - | {other * 1e6:.0f} | {other / plain:.1%} | - | - |")
    mv = sum(r[2] for r in rows if r[0].startswith("matvec"))
    mv_bytes = sum(g.nbytes for k, g in best.items() if k.startswith("matvec")) / n
    print()
    print(f"matvecs: {mv * 1e6:.0f} us/token ({mv / plain:.1%} of the step), {mv_bytes / mv / 1e9:.1f} GB/s "
          f"= {mv_bytes / mv / 1e9 / bw:.2f} of the bandwidth")
    return 0


if __name__ == "__main__":
    sys.exit(main())
