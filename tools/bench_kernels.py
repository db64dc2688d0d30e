"""Kernel benchmark: quantized matvec, decode and batched matmul, as ratios of the machine's own limits.

    python tools/bench_kernels.py [--threads N] [--types Q4_1,Q8_0,...] [--reps R] [--batch 512]
    python tools/bench_kernels.py --small-batch [--threads N] [--types Q4_0,Q4_K,...] [--rows 2,4,8,16]
    python tools/bench_kernels.py --attention [--threads N] [--ctx 4096] [--types F16,Q8_0,Q4_0] [--parts]
    python tools/bench_kernels.py --prompt-attention [--threads N] [--batch 512] [--types F16,F32]
    python tools/bench_kernels.py --forms [--threads 1] [--types Q4_0,Q4_K,IQ4_XS,Q8_0]
    python tools/bench_kernels.py --experts [--threads N] [--types Q4_K,Q6_K,MXFP4] [--tokens 1,64,512]
    python tools/bench_kernels.py --joint [--threads N] [--layers 16]
    python tools/bench_kernels.py --rounded [--threads 1] [--types Q4_K,Q6_K] [--batch 512]
    python tools/bench_kernels.py --ceiling [--reps 7]

For each type, one table row per matrix shape (576x1536, 1536x576, 4096x4096):
  matvec GB/s   GGML bytes of W read per second by Weight.matvec (best of 3R runs, and of
                at least 0.2 s of calls: a call of microseconds needs many tries)
  decode GB/s   GGML bytes per second turned into float32 by Weight.dequantize
  mm GFLOP/s    2*n*rows*cols / time of Weight.matmul on a batch of n (default 512; best of
                R/3 runs and of at least 0.3 s)
--small-batch: the small-batch product (Weight.matmul of n = 2..16 rows, a server's decode step)
on the matrices of one Llama-3.2-1B layer (2048x2048 q/o, 512x2048 k/v, 8192x2048 gate/up,
2048x8192 down); per type and n, its throughput in weights x rows per second as a fraction of
n x the single-row matvec's (t_matvec / t_n over the layer's matrices, measured alternately;
1.0 = n rows for the price of one, the target is 0.7), for each path: "decode" the multi-row
integer product (Weight.matmul_decode, each row as the matvec rounds it), "small" the float
small-batch product of prompt rows (Weight.matmul), "tiles" tiles + BLAS (--no-tiles leaves it out).  Timed in CPU seconds of the process
(best of --reps), which time-slicing on a shared machine leaves out: run it with --threads 1.
--forms: the matvec with each SIMD form of the integer sums this host runs (kernels.simd: AVX2's
vpmaddubsw + vpmaddwd, AVX-512 VNNI's vpdpbusd), alternated in one process on the matrices of four
Llama-3.2-1B layers (read from memory) and on one 2048x2048 matrix (from cache); per type and form,
weights per second and the ratio to the AVX2 form.  Timed in CPU seconds (best of --reps): run it with
--threads 1.
--attention: decode attention (one query token) over a KV cache of --ctx positions in each
cache type, for the head layouts of SmolLM2-135M (9 heads, 3 kv heads of 64), Gemma 3 270M (4
heads, 1 kv head of 256) and the MoE benchmark shape qwen3moe-16l-32e (16 heads, 4 kv heads of 128:
grouped-query heads of 128), every layer of the model's cache (30, 18 and 16 layers, so the cache
is read from memory as in a real decode step, not from the CPU's caches):
  attn GB/s     cache bytes (keys and values, every position) read per second
  matvec GB/s   the same type's matvec over a set of 4096x4096 weights of at least 96 MiB (three
                times the CPU's 32 MiB L3), visited in turn as a decode step visits a model's
                layers, so that the weights come from memory as the cache does: the fair rate to
                compare with (measured in the same run)
  in-L3 GB/s    the same matvec on one 4096x4096 weight, called again and again, which then stays
                in the L3 (an upper bound no decode step sees: shown for reference only)
  x matvec      attn GB/s / matvec GB/s: at least 1 means attention reads the cache as fast as
                the matvec reads weights from memory
At --threads 1 both are timed in CPU seconds of the process (which a shared machine's
time-slicing leaves out), else in wall time.
--parts adds a step's key scores, softmax and value sums (us; one thread's run of the same
work items, stopped after each part in turn: the differences of the three times).

--prompt-attention: a prompt's causal self-attention alone (CPUBackend.attention of --batch new
tokens at position 0, the BLAS path) for the head layouts of the MoE benchmark shape (16 heads, 4 kv
heads of 128) and Llama-3.2-1B (32 heads, 8 kv heads of 64), over a cache of each --types (default
F16, the engine's default, and F32); per layout and type, the best call's time (of --reps, CPU time
of the process at --threads 1, else wall time) and the attention's useful rate, 4 x heads x head size
x the causal triangle's (query, key) pairs per second.

--experts: the expert products of one mixture-of-experts layer of the MoE benchmark shape (32
experts, top-4, d 1024, expert FFN 512: gate|up (32, 1024, 1024) stacked per expert, down (32, 1024,
512)), per type, for a batch of each --tokens count routed at random: ExpertWeights.mul_ids (the
selected experts' tiles in one launch; a batch's experts in one launch of the multi-row integer
products for the nibble types and Q6_K, in one pass of the float small-batch products for the others)
against the same products called expert by expert (each expert's Weight.matvec / Weight.matmul: for
a batch, the float products), timed alternately in one run (best of --reps; CPU time of the process at --threads 1, which
a shared machine's time-slicing leaves out, else wall time):
  GB/s          decode (1 token): the selected experts' GGML bytes read per second
  GFLOP/s       a batch: 2 x pairs x rows x cols per second
  x per-expert  the per-expert calls' time over mul_ids' (above 1: mul_ids is faster)
and a "layer" row per type: one token's whole layer by kernels.experts.decode_step (routing, both
products, activation, weighted sum in five kernel calls) against the same kernels called one by one
with the numpy work between them (route, mul_ids, activation, mul_ids, combine; as the CPU backend
ran a decode step before), checked bit-identical first; "x per-expert" is then by-parts over decode_step.

--joint: a decode step's Q|K|V where Q|K and V differ in type (Q4_K_M leaves Q|K in Q4_K and V in
Q6_K in some layers): the WeightGroup's one joint launch (kernels.kinds.joint) against the two
matvecs one after the other (each weight's Weight.matvec), on the layers of the MoE benchmark shape
(Q|K 2560x1024, V 512x1024) and of Llama-3.2-1B (Q|K 2560x2048, V 512x2048), --layers of each
visited in turn so the weights come from memory as in a decode step; checked bit-identical first,
then alternated (best of --reps; CPU time of the process at --threads 1, else wall time):
  GB/s          the group's GGML bytes read per second by the joint launch
  x two calls   the two matvecs' time over the joint launch's (above 1: the joint launch is faster)

--rounded: a mixture-of-experts prompt's rounded dense products (Weight.matmul(rounded=True)) on the
attention matrices of the MoE benchmark shape (Q|K 2560x1024, V 512x1024, output 1024x2048), a
batch of --batch rows: the multi-row integer product of one int8 activation term per block
(kinds.tiled.PROMPT_TERMS), of the matvec's rounding (two int8 terms, Q6_K's int16), and the exact
float product (Weight.matmul: tiles + BLAS), alternated in one run (best of --reps; CPU time at
--threads 1, else wall time); per type and matrix, GFLOP/s of the one-term product and the other
two's time over its (above 1: one term is faster).  Types whose kind has no such product are skipped.
--ceiling: cycles per 512-bit vpdpbusd on one core, in instruction mixes built up towards the
Q4_K multi-row product's inner loop (pure chains, broadcast operands, the nibble unpack, the float
combine; tools/vnni_ceiling.py, which says what each mix is): what the product could reach.

Otherwise each figure is a ratio of what this machine does in the same run with the same
thread count: streaming-read bandwidth (a numpy sum over 512 MB split across the
threads) for matvec and decode, numpy float32 GEMM (the faster orientation) for matmul (BLAS keeps its own
thread pool; the script sets OPENBLAS_NUM_THREADS to --threads).  Random weights with valid scales.
"""
from __future__ import annotations

import argparse
import os
import sys
import time


def _early_threads() -> None:
    """Give numpy's BLAS the benchmark's thread count (it must be set before numpy loads)."""
    for i, a in enumerate(sys.argv):
        n = a.split("=", 1)[1] if a.startswith("--threads=") else (
            sys.argv[i + 1] if a == "--threads" and i + 1 < len(sys.argv) else None)
        if n:
            for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
                os.environ.setdefault(var, n)


_early_threads()

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import kernels  # noqa: E402
from gguf_engine.bench import best_time, read_bandwidth_gbs  # noqa: E402
from kernels.threads import single_threaded_blas  # noqa: E402
from kernels.types import BLOCK_SIZES, GGMLType, as_type  # noqa: E402

SHAPES = [(576, 1536), (1536, 576), (4096, 4096)]
# One Llama-3.2-1B layer's matrices (rows x cols), counted as often as the layer has them.
LAYER_1B = [((2048, 2048), 2), ((512, 2048), 2), ((8192, 2048), 2), ((2048, 8192), 1)]
DEFAULT_TYPES = ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K",
                 "Q5_K", "Q6_K", "IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S",
                 "IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0", "MXFP4"]

# Byte offsets of the fp16 scale fields of each block (overwritten with sane values).
_SCALE_FIELDS = {
    GGMLType.Q4_0: (0,), GGMLType.Q4_1: (0, 2), GGMLType.Q5_0: (0,), GGMLType.Q5_1: (0, 2),
    GGMLType.Q8_0: (0,), GGMLType.Q2_K: (80, 82), GGMLType.Q3_K: (108,), GGMLType.Q4_K: (0, 2),
    GGMLType.Q5_K: (0, 2), GGMLType.Q6_K: (208,), GGMLType.IQ4_NL: (0,), GGMLType.IQ4_XS: (0,),
    GGMLType.IQ2_XXS: (0,), GGMLType.IQ2_XS: (0,), GGMLType.IQ2_S: (0,), GGMLType.IQ3_XXS: (0,),
    GGMLType.IQ3_S: (0,), GGMLType.IQ1_S: (0,), GGMLType.TQ1_0: (52,), GGMLType.TQ2_0: (64,),
}


def table_types(args, default: str | None = None) -> list:
    """The types a table runs: --types as given, or the table's own default where --types was left
    at the matvec table's."""
    names = default if default is not None and args.types == ",".join(DEFAULT_TYPES) else args.types
    return [as_type(name.strip()) for name in names.split(",")]


def print_header(hdr: str) -> None:
    """A table's column header and its rule."""
    print(hdr)
    print("-" * len(hdr))


def random_tensor(t: GGMLType, rows: int, cols: int, rng) -> np.ndarray:
    """Random raw bytes of a (rows, cols) tensor of type t, with finite small fp16 scales."""
    if t == GGMLType.F32:
        return rng.standard_normal(rows * cols, dtype=np.float32).view(np.uint8)
    if t == GGMLType.F16:
        return rng.standard_normal(rows * cols).astype(np.float16).view(np.uint8)
    if t == GGMLType.BF16:
        return (rng.standard_normal(rows * cols).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
    bs, ts = BLOCK_SIZES[t]
    n = rows * cols // bs
    b = rng.integers(0, 256, (n, ts), dtype=np.uint8)
    for off in _SCALE_FIELDS.get(t, ()):
        b[:, off:off + 2] = (rng.uniform(-1, 1, n) / 64).astype(np.float16).view(np.uint8).reshape(n, 2)
    if t == GGMLType.MXFP4:             # e8m0 scale byte: 2^-9 .. 2^0
        b[:, 0] = rng.integers(118, 128, n, dtype=np.uint8)
    if t == GGMLType.IQ1_M:             # fp16 d = the top nibbles of the four scale words (bytes 48-55)
        d = (rng.uniform(-1, 1, n) / 64).astype(np.float16).view(np.uint16)
        for j in range(4):
            nib = ((d >> (4 * j)) & 15).astype(np.uint8)
            b[:, 49 + 2 * j] = (b[:, 49 + 2 * j] & 0x0F) | (nib << 4)
    return b.reshape(-1)


def gemm_rate(n: int, rows: int, cols: int, reps: int) -> float:
    """numpy float32 GEMM GFLOP/s for the product of X (n, cols) and W (rows, cols): the
    faster of X @ W.T and W @ X.T (BLAS speed depends on the orientation)."""
    rng = np.random.default_rng(1)
    X = rng.standard_normal((n, cols), dtype=np.float32)
    W = rng.standard_normal((rows, cols), dtype=np.float32)
    out = np.empty((n, rows), np.float32)
    t = min(best_time(lambda: np.matmul(X, W.T, out=out), reps),
            best_time(lambda: np.matmul(W, X.T, out=out.T), reps))
    return 2 * n * rows * cols / t / 1e9


ATTENTION_SHAPES = [("SmolLM2-135M", 30, 9, 3, 64), ("Gemma-3-270M", 18, 4, 1, 256),
                    ("qwen3moe-16l-32e", 16, 16, 4, 128)]
# the --attention matvec's set of weights: three times the L3, so that it is read from memory
MATVEC_SET_BYTES = 96 << 20
# the parts of a decode step --parts times: key scores, then softmax, then value sums
ATTENTION_PARTS = ("keys", "softmax", "values")


def _attention_parts_kernel():
    """A Numba function parts(q3, k_rows, tk, v_rows, tv, scale, upto) running one decode step's
    attention (the last position over every key, one thread) item by item as
    ``attention_kv.attention_steps`` does, stopped after the key scores (upto 1), the softmax (2)
    or the value sums (3): timed in turn, their differences split a step into its parts.  (Head
    sizes that are whole pieces of 16 and columns of 32, as in every shape of --attention.)"""
    from numba import njit

    from kernels import attention_kv as ak
    from kernels.ops import exp_shifted

    @njit(cache=True, nogil=True)
    def parts(q3, k_rows, tk, v_rows, tv, scale, upto):
        C, Hkv, _ = k_rows.shape
        hd = q3.shape[2]
        base, pos = np.zeros(1, np.int64), np.full(1, C - 1, np.int64)
        G, items, first, m, l, acc, Q = ak._prepare(q3, k_rows, tk, base, pos, scale, 0)
        chunk = ak.KEY_CHUNK
        qs = np.empty((Hkv, G, hd), dtype=np.float32)
        s = np.empty((Hkv, Q[0].shape[1] // hd if ak.is_int_type(tk) else G, chunk), dtype=np.float32)
        nbuf = np.empty(chunk, dtype=np.int32)
        for h in range(Hkv):
            for g in range(G):
                for d in range(hd):
                    qs[h, g, d] = q3[0, h * G + g, d] * np.float32(scale)
        for i in range(items.shape[0]):
            lo, hi = items[i, 1], items[i, 2]
            if ak.is_int_type(tk):
                ak.scores_int(tk, k_rows, lo, hi, hd, (Q[0], Q[1], Q[2]), s, True, v_rows)
            else:
                ak.scores_float(tk, k_rows, lo, hi, qs, s, True, v_rows, not ak.whole_rows_f32(tv, hd, Hkv))
            kf, nk0, step, per = ak._next_keys(k_rows, tk, items, i, G, hd)
            for h in range(Hkv):
                g0 = h * G
                if upto >= 2:
                    for g in range(G):
                        m[i, g0 + g], l[i, g0 + g] = exp_shifted(s[h, g, :hi - lo], 0.0, nbuf)
                if upto >= 3:
                    if ak.whole_rows_f32(tv, hd, Hkv):
                        ak.values_f32(v_rows.view(np.float32), h, lo, hi, s[h], acc[i, g0:g0 + G])
                    else:
                        ak.values_rows(tv, v_rows, h, lo, hi, s[h], acc[i, g0:g0 + G], True, kf, nk0 + h * per,
                                       step)
    return parts


def bench_attention(types, n_ctx: int, reps: int, rng, split: bool = False) -> int:
    """Decode attention over full caches of each type against the same type's matvec (see the
    module docstring).  Every layer's cache is visited in turn, as one decode step does.  split:
    also a step's key scores, softmax and value sums (``_attention_parts_kernel``, at one thread)."""
    from gguf_engine.backends.cpu import CPUBackend
    from gguf_engine.model.kv_cache import KVCache, cache_rows, cache_type_name

    be = CPUBackend(kernels.get_num_threads())
    clock = time.process_time if kernels.get_num_threads() == 1 else time.perf_counter
    print(f"threads={kernels.get_num_threads()}, {'CPU' if clock is time.process_time else 'wall'} time, "
          f"{n_ctx} positions")
    hdr = (f"{'type':8} {'model shape':>16} {'cache MiB':>9} {'step us':>8} {'attn GB/s':>9} {'matvec GB/s':>11} "
           f"{'in-L3 GB/s':>10} {'x matvec':>8}" + "".join(f" {p + ' us':>10}" for p in ATTENTION_PARTS * split))
    parts = _attention_parts_kernel() if split else None
    print_header(hdr)
    for t in types:
        data = random_tensor(t, 4096, 4096, rng)
        Ws = [kernels.Weight(data.copy(), t, (4096, 4096))
              for _ in range(-(-MATVEC_SET_BYTES // data.nbytes))]          # distinct copies: read from memory
        x = rng.standard_normal(4096, dtype=np.float32)
        y = np.empty(4096, np.float32)

        def matvecs():
            for W in Ws:
                W.matvec(x, y)
        mv = sum(W.file_nbytes for W in Ws) / best_time(matvecs, reps, 0.3, clock) / 1e9
        in_l3 = Ws[0].file_nbytes / best_time(lambda: Ws[0].matvec(x, y), reps, 0.3, clock) / 1e9
        for label, n_layer, H, Hkv, hd in ATTENTION_SHAPES:
            kv = KVCache(n_layer, n_ctx, Hkv, hd, cache_type_name(int(t)))
            for il in range(n_layer):
                rows = rng.standard_normal((n_ctx, Hkv, hd)).astype(np.float32)
                kv.store(il, 0, rows, rows[::-1])
            q3 = rng.standard_normal((1, H, hd)).astype(np.float32)
            out = np.empty_like(q3)

            def step():
                for il in range(n_layer):
                    be.attention(q3, *kv.layer(il), n_ctx - 1, hd ** -0.5, 0, 0.0, out)
            with be.scope():
                sec = best_time(step, reps, 0.3, clock)
            att = kv.nbytes / sec / 1e9
            cols = ""
            if split:
                layers = [(*cache_rows(k), *cache_rows(v)) for k, v in (kv.layer(il)[:2] for il in range(n_layer))]
                upto = [best_time(lambda u=u: [parts(q3, kr, tk, vr, tv, hd ** -0.5, u) for kr, tk, vr, tv in layers],
                                  reps, 0.3, clock) for u in (1, 2, 3)]
                cols = "".join(f" {(b - a) * 1e6:10.0f}" for a, b in zip([0.0] + upto, upto))
            print(f"{t.name:8} {label:>16} {kv.nbytes / 2**20:9.1f} {sec * 1e6:8.0f} {att:9.2f} {mv:11.2f} "
                  f"{in_l3:10.2f} {att / mv:8.2f}{cols}", flush=True)
            del kv
        del Ws
    return 0


PROMPT_ATTENTION_SHAPES = [("qwen3moe-16l-32e", 16, 4, 128), ("Llama-3.2-1B", 32, 8, 64)]


def bench_prompt_attention(types, n: int, reps: int, rng) -> int:
    """A prompt's attention (see the module docstring) per head layout and cache type."""
    from gguf_engine.backends.cpu import CPUBackend
    from gguf_engine.model.kv_cache import KVCache, cache_type_name

    be = CPUBackend(kernels.get_num_threads())
    clock = time.process_time if kernels.get_num_threads() == 1 else time.perf_counter
    print(f"threads={kernels.get_num_threads()}, {'CPU' if clock is time.process_time else 'wall'} time, "
          f"{n} tokens")
    hdr = f"{'type':6} {'model shape':>16} {'call ms':>8} {'GFLOP/s':>8}"
    print_header(hdr)
    for t in types:
        for label, H, Hkv, hd in PROMPT_ATTENTION_SHAPES:
            kv = KVCache(1, n, Hkv, hd, cache_type_name(int(t)))
            kv.store(0, 0, rng.standard_normal((n, Hkv, hd), dtype=np.float32),
                     rng.standard_normal((n, Hkv, hd), dtype=np.float32))
            q3 = rng.standard_normal((n, H, hd), dtype=np.float32)
            out = np.empty_like(q3)
            with be.scope():
                sec = best_time(lambda: be.attention(q3, *kv.layer(0), 0, hd ** -0.5, 0, 0.0, out), reps, 0.3, clock)
            flops = 4 * H * hd * n * (n + 1) // 2
            print(f"{t.name:6} {label:>16} {sec * 1e3:8.2f} {flops / sec / 1e9:8.1f}", flush=True)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--types", default=",".join(DEFAULT_TYPES))
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--shapes", default=",".join(f"{r}x{c}" for r, c in SHAPES),
                    help="comma-separated ROWSxCOLS list")
    ap.add_argument("--attention", action="store_true",
                    help="decode attention over a cache of each type (--types of llama.cpp's cache types)")
    ap.add_argument("--prompt-attention", action="store_true",
                    help="a prompt's attention (--batch tokens) on the MoE and Llama-3.2-1B head layouts")
    ap.add_argument("--parts", action="store_true",
                    help="--attention: also split a step (one thread's) into key scores, softmax and value sums")
    ap.add_argument("--ctx", type=int, default=4096, help="cache positions for --attention (default: 4096)")
    ap.add_argument("--asm", action="store_true",
                    help="after the table, count ymm FMAs in the matvec kernels that ran (recompiled uncached)")
    ap.add_argument("--small-batch", action="store_true",
                    help="the small-batch product table (n rows x type) on a Llama-3.2-1B layer instead")
    ap.add_argument("--rows", default="2,3,4,6,8,12,16", help="batch sizes of --small-batch")
    ap.add_argument("--no-tiles", action="store_true", help="--small-batch without the tiles + BLAS line")
    ap.add_argument("--forms", action="store_true",
                    help="the matvec with each SIMD form of the integer sums (AVX2, VNNI), alternated")
    ap.add_argument("--experts", action="store_true",
                    help="the expert products of one MoE layer (mul_ids against per-expert calls) instead")
    ap.add_argument("--tokens", default="1,64,512", help="batch sizes of --experts")
    ap.add_argument("--ceiling", action="store_true",
                    help="cycles per vpdpbusd in the multi-row product's instruction mixes (tools/vnni_ceiling.py)")
    ap.add_argument("--joint", action="store_true",
                    help="a Q4_K Q|K beside a Q6_K V: one joint launch against two matvecs, alternated")
    ap.add_argument("--layers", type=int, default=16, help="layers of weights --joint visits in turn")
    ap.add_argument("--rounded", action="store_true",
                    help="a MoE prompt's rounded dense products: one int8 term against two and float")
    args = ap.parse_args(argv)

    kernels.set_num_threads(args.threads)
    if args.small_batch:
        small_batch_table(args)
        return 0
    if args.forms:
        forms_table(args)
        return 0
    if args.experts:
        experts_table(args)
        return 0
    if args.joint:
        joint_table(args)
        return 0
    if args.rounded:
        rounded_table(args)
        return 0
    if args.ceiling:
        from vnni_ceiling import ceiling_table
        ceiling_table(args.reps)
        return 0
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    rng = np.random.default_rng(0)
    if args.prompt_attention:
        return bench_prompt_attention(table_types(args, "F16,F32"), args.batch, args.reps, rng)
    if args.attention:
        return bench_attention(table_types(args, "F16,Q8_0,Q4_0,Q4_1,Q5_0,Q5_1,IQ4_NL,BF16"), args.ctx, args.reps,
                               rng, args.parts)

    bw = read_bandwidth_gbs(args.threads, args.reps)
    gemm = {s: gemm_rate(args.batch, *s, max(2, args.reps // 3)) for s in shapes}
    print(f"threads={args.threads}  read bandwidth {bw:.2f} GB/s  numpy f32 GEMM (n={args.batch}): "
          + ", ".join(f"{r}x{c} {g:.1f}" for (r, c), g in gemm.items()) + " GFLOP/s")
    print("(ratios: matvec and decode vs read bandwidth, matmul vs GEMM; timings on a shared machine are noisy)")
    print()
    hdr = (f"{'type':8} {'shape':>10} {'matvec GB/s':>11} {'x bw':>5} {'decode GB/s':>11} {'x bw':>5} "
           f"{'mm GFLOP/s':>10} {'x gemm':>6} {'compile s':>9}")
    print_header(hdr)
    for t in table_types(args):
        for rows, cols in shapes:
            if cols % BLOCK_SIZES[t][0]:
                continue
            data = random_tensor(t, rows, cols, rng)
            t0 = time.perf_counter()
            W = kernels.Weight(data, t, (rows, cols))
            x = rng.standard_normal(cols, dtype=np.float32)
            X = rng.standard_normal((args.batch, cols), dtype=np.float32)
            y = np.empty(rows, np.float32)
            W.matvec(x, y)
            first = time.perf_counter() - t0
            gb = W.file_nbytes / 1e9
            t_mv = best_time(lambda: W.matvec(x, y), args.reps * 3, min_seconds=0.2)
            dq = np.empty((rows, cols), np.float32)
            t_dq = best_time(lambda: W.decode_range(0, rows, dq), args.reps)
            del dq
            Y = np.empty((args.batch, rows), np.float32)
            with single_threaded_blas():    # as the engine runs it: the tiles bring their own threads
                t_mm = best_time(lambda: W.matmul(X, Y), max(2, args.reps // 3), min_seconds=0.3)
            mv, dec = gb / t_mv, gb / t_dq
            mm = 2 * args.batch * rows * cols / t_mm / 1e9
            print(f"{t.name:8} {f'{rows}x{cols}':>10} {mv:11.2f} {mv / bw:5.2f} {dec:11.2f} {dec / bw:5.2f} "
                  f"{mm:10.1f} {mm / gemm[(rows, cols)]:6.2f} {first:9.2f}", flush=True)
    if args.asm:
        print_asm_summary()
    return 0


def forms_table(args) -> None:
    """The --forms table: each SIMD form's matvec over four 1B layers' matrices and over one 2048x2048."""
    from kernels.simd import AVX2, SIMD_FORMS, VNNI
    forms = [f for f in SIMD_FORMS if f >= AVX2]
    names = {AVX2: "AVX2", VNNI: "VNNI"}
    rng = np.random.default_rng(0)
    types = table_types(args, "Q4_0,Q4_K,IQ4_XS,Q8_0")
    print(f"threads={args.threads}: matvec Gweights/s per form of the integer sums (CPU time, best of {args.reps})")
    hdr = f"{'type':8} {'matrices':>12} " + " ".join(f"{names[f] + ' Gw/s':>10}" for f in forms) + f" {'/ AVX2':>7}"
    print_header(hdr)
    for t in types:
        for label, mats in (("4 1B layers", LAYER_1B * 4), ("2048x2048", [((2048, 2048), 1)])):
            Ws = [(kernels.Weight(random_tensor(t, r, c, rng), t, (r, c)), count) for (r, c), count in mats]
            x = {W.shape[1]: rng.standard_normal(W.shape[1], dtype=np.float32) for W, _ in Ws}
            runs = {f: [(W._matvec_kernel(f), x[W.shape[1]], np.empty(W.shape[0], np.float32), count)
                        for W, count in Ws] for f in forms}
            weights = sum(W.shape[0] * W.shape[1] * count for W, count in Ws)

            def step(f):
                for k, xv, y, count in runs[f]:
                    for _ in range(count):
                        k(xv, y)
            for f in forms:
                step(f)                     # compiled and warm before timing
            best = {f: np.inf for f in forms}
            for _ in range(args.reps):      # alternating: every form in turn
                for f in forms:
                    best[f] = min(best[f], best_time(lambda: step(f), 1, 0.1, time.process_time))
            print(f"{t.name:8} {label:>12} " + " ".join(f"{weights / best[f] / 1e9:10.2f}" for f in forms)
                  + f" {best[AVX2] / best[forms[-1]]:7.3f}", flush=True)


def small_batch_table(args) -> None:
    """The --small-batch table: per type, t_matvec / t_n summed over a 1B layer's matrices."""
    import kernels.weight as weight_mod
    rng = np.random.default_rng(0)
    ns = [int(v) for v in args.rows.split(",")]
    small_max = weight_mod.SMALL_BATCH_MAX
    print(f"threads={args.threads}: throughput in weights x rows / s as a fraction of n x the single-row "
          f"matvec's (t_matvec / t_n), Llama-3.2-1B layer matrices; target >= 0.7")
    hdr = f"{'type':8} {'path':6} {'matvec Gw/s':>11} " + " ".join(f"{f'n={n}':>6}" for n in ns)
    print_header(hdr)
    for t in table_types(args):
        mats = []
        for (rows, cols), count in LAYER_1B:
            W = kernels.Weight(random_tensor(t, rows, cols, rng), t, (rows, cols))
            mats.append((W, count, rng.standard_normal((max(ns), cols), dtype=np.float32),
                         np.empty((max(ns), rows), np.float32)))
        paths = [("decode", None), ("small", small_max)] + ([] if args.no_tiles else [("tiles", 0)])
        t1 = {}
        tn = {(p, n): 0.0 for p, _ in paths for n in ns}
        with single_threaded_blas():
            for W, count, X, Y in mats:
                W.matvec(X[0], Y[0])
                t1[id(W)] = count * best_time(lambda: W.matvec(X[0], Y[0]), args.reps * 3, 0.2, time.process_time)
            for n in ns:                    # alternating: every path and n in turn per matrix
                for W, count, X, Y in mats:
                    for p, limit in paths:
                        product = W.matmul_decode if limit is None else W.matmul
                        weight_mod.SMALL_BATCH_MAX = small_max if limit is None else limit
                        try:
                            product(X[:n], Y[:n])
                            tn[(p, n)] += count * best_time(lambda: product(X[:n], Y[:n]), args.reps, 0.1,
                                                            time.process_time)
                        finally:
                            weight_mod.SMALL_BATCH_MAX = small_max
        total1 = sum(t1.values())
        weights = sum(W.shape[0] * W.shape[1] * c for W, c, _, _ in mats)
        for p, _ in paths:
            print(f"{t.name:8} {p:6} {weights / total1 / 1e9:11.2f} "
                  + " ".join(f"{total1 / tn[(p, n)]:6.3f}" for n in ns), flush=True)


# The MoE benchmark shape's layer: experts, used experts, d, expert FFN width.
MOE_LAYER = (32, 4, 1024, 512)


def per_expert(E, X: np.ndarray, ids: np.ndarray, out: np.ndarray) -> None:
    """mul_ids's products called expert by expert: a decode step's k matvecs, a batch's grouped
    rows through each expert's Weight.matmul (how mul_ids ran them before one launch took all)."""
    n, k = ids.shape
    shared = X.shape[1] == 1
    if n == 1:
        for j in range(k):
            E.experts[ids[0, j]].matvec(X[0, 0 if shared else j], out[0, j])
        return
    flat = ids.reshape(-1)
    order = np.argsort(flat, kind="stable")
    bounds = np.searchsorted(flat[order], np.arange(E.shape[0] + 1))
    for e in range(E.shape[0]):
        pairs = order[bounds[e]:bounds[e + 1]]
        if pairs.size:
            toks = pairs // k
            Xe = np.ascontiguousarray(X[toks, 0] if shared else X[toks, pairs % k])
            out[toks, pairs % k] = E.experts[e].matmul(Xe)


def layer_by_parts(gate_up, down, x, logits, k, out) -> None:
    """One token's MoE layer (softmax gating, SiLU) by the general kernels called one by one, as the
    CPU backend ran a decode step before decode_step: route, mul_ids of gate|up, the activation,
    mul_ids of down, combine."""
    from kernels.experts import GATING_SOFTMAX, combine, route
    from kernels.ops import gated_act
    ids, w = route(logits.reshape(1, -1), k, GATING_SOFTMAX, True, np.float32(0.0))
    gu = gate_up.mul_ids(x.reshape(1, 1, -1), ids).reshape(k, -1)        # (k, 2 ff)
    ff = gu.shape[1] // 2
    act = np.empty((k, ff), np.float32)
    gated_act(gu[:, :ff], gu[:, ff:], False, act)
    Y = down.mul_ids(act.reshape(1, k, ff), ids)                          # (1, k, d)
    combine(Y, w, np.zeros((1, 1), np.float32), ids, False, out.reshape(1, -1))


def layer_rows(args, name, gate_up, down, rng) -> None:
    """The "layer" row of --experts: decode_step against layer_by_parts (alternated, bit-identical)."""
    from kernels.experts import GATING_SOFTMAX, decode_step
    n_expert, k, d, _ = MOE_LAYER
    x = rng.standard_normal(d, dtype=np.float32)
    logits = rng.standard_normal(n_expert, dtype=np.float32)
    out, ref = np.empty(d, np.float32), np.empty(d, np.float32)
    step = lambda: decode_step(gate_up, down, x, logits, k, GATING_SOFTMAX, True,   # noqa: E731
                               np.float32(0.0), False, None, out)
    step()
    layer_by_parts(gate_up, down, x, logits, k, ref)
    if not np.array_equal(out.view(np.uint32), ref.view(np.uint32)):
        raise SystemExit(f"{name}: decode_step differs from the kernels called one by one")
    clock = time.process_time if args.threads == 1 else time.perf_counter
    t_new = t_old = float("inf")
    for _ in range(3):              # alternating
        t_new = min(t_new, best_time(step, args.reps, 0.1, clock))
        t_old = min(t_old, best_time(lambda: layer_by_parts(gate_up, down, x, logits, k, ref), args.reps, 0.1, clock))
    nbytes = k * (gate_up.experts[0].file_nbytes + down.experts[0].file_nbytes)
    print(f"{name:8} {'layer':8} {1:6} {nbytes / t_new / 1e9:16.2f} {t_old / t_new:12.2f}", flush=True)


def experts_table(args) -> None:
    """The --experts table: per type and batch size, mul_ids against per-expert calls; for one token,
    the whole layer (decode_step) against its kernels called one by one."""
    from kernels.experts import ExpertWeights, fused_decode
    rng = np.random.default_rng(0)
    n_expert, k, d, ff = MOE_LAYER
    ns = [int(v) for v in args.tokens.split(",")]
    types = table_types(args, "Q4_K,Q6_K,Q8_0,MXFP4")
    print(f"threads={args.threads}: one MoE layer ({n_expert} experts, top-{k}, d {d}, expert FFN {ff}), "
          f"mul_ids against the same products expert by expert, alternated")
    hdr = f"{'type':8} {'product':8} {'tokens':>6} {'GB/s or GFLOP/s':>16} {'x per-expert':>12}"
    print_header(hdr)
    for t in types:
        gate, up = (ExpertWeights(random_tensor(t, n_expert * ff, d, rng), t, (n_expert, ff, d)) for _ in range(2))
        down = ExpertWeights(random_tensor(t, n_expert * d, ff, rng), t, (n_expert, d, ff))
        gate_up = ExpertWeights.concat([gate, up])
        del gate, up
        for label, E, slots in (("gate|up", gate_up, 1), ("down", down, k)):
            rows, cols = E.shape[1:]
            for n in ns:
                ids = np.stack([rng.permutation(n_expert)[:k] for _ in range(n)])
                X = rng.standard_normal((n, slots, cols), dtype=np.float32)
                out = np.empty((n, k, rows), np.float32)
                clock = time.process_time if args.threads == 1 else time.perf_counter
                with single_threaded_blas():
                    t_new = t_old = float("inf")
                    for _ in range(3):      # alternating
                        t_new = min(t_new, best_time(lambda: E.mul_ids(X, ids, out), args.reps, 0.1, clock))
                        t_old = min(t_old, best_time(lambda: per_expert(E, X, ids, out), args.reps, 0.1, clock))
                if n == 1:
                    rate = k * E.experts[0].file_nbytes / t_new / 1e9
                else:
                    rate = 2 * n * k * rows * cols / t_new / 1e9
                print(f"{t.name:8} {label:8} {n:6} {rate:16.2f} {t_old / t_new:12.2f}", flush=True)
        if 1 in ns and fused_decode([gate_up], down):
            layer_rows(args, t.name, gate_up, down, rng)


def joint_table(args) -> None:
    """The --joint table: a WeightGroup's joint launch against its two matvecs, per layer shape."""
    from kernels.weight import Weight, WeightGroup
    rng = np.random.default_rng(0)
    clock = time.process_time if args.threads == 1 else time.perf_counter
    print(f"threads={args.threads}: Q|K (Q4_K) and V (Q6_K) of one input, {args.layers} layers in turn, "
          f"one joint launch against two matvecs, alternated")
    hdr = f"{'layer':24} {'GB/s':>8} {'x two calls':>12}"
    print_header(hdr)
    for label, d in (("MoE shape (d 1024)", 1024), ("Llama-3.2-1B (d 2048)", 2048)):
        qk, v = (GGMLType.Q4_K, 2560), (GGMLType.Q6_K, 512)
        groups = [WeightGroup([Weight(random_tensor(t, r, d, rng), t, (r, d)) for t, r in (qk, v)])
                  for _ in range(args.layers)]
        if not groups[0].joint:
            raise SystemExit("no joint kernel for Q4_K beside Q6_K on this build")
        x = rng.standard_normal(d, dtype=np.float32)
        out = np.empty(groups[0].rows, np.float32)
        ref = np.empty_like(out)

        def two_calls(g, y):
            g[0].matvec(x, y[:g[0].shape[0]])
            g[1].matvec(x, y[g[0].shape[0]:])
        groups[0].matvec(x, out)
        two_calls(groups[0], ref)
        if not np.array_equal(out.view(np.uint32), ref.view(np.uint32)):
            raise SystemExit(f"{label}: the joint launch differs from the two matvecs")
        t_new = t_old = float("inf")
        for _ in range(3):          # alternating
            t_new = min(t_new, best_time(lambda: [g.matvec(x, out) for g in groups], args.reps, 0.2, clock))
            t_old = min(t_old, best_time(lambda: [two_calls(g, ref) for g in groups], args.reps, 0.2, clock))
        nbytes = args.layers * groups[0].file_nbytes
        print(f"{label:24} {nbytes / t_new / 1e9:8.2f} {t_old / t_new:12.2f}", flush=True)


def rounded_table(args) -> None:
    """The --rounded table: per type and attention matrix of the MoE shape, a prompt batch's rounded
    product of one int8 term against the matvec's rounding and the float product."""
    from kernels.weight import Weight
    rng = np.random.default_rng(0)
    n = args.batch
    types = table_types(args, "Q4_K,Q6_K")
    clock = time.process_time if args.threads == 1 else time.perf_counter
    print(f"threads={args.threads}: rounded prompt products of {n} rows, one int8 term against two "
          f"(the matvec's rounding) and float (tiles + BLAS), alternated")
    hdr = f"{'type':8} {'matrix':10} {'GFLOP/s':>8} {'x two terms':>12} {'x float':>8}"
    print_header(hdr)
    for t in types:
        for rows, cols in ((2560, 1024), (512, 1024), (1024, 2048)):
            W = Weight(random_tensor(t, rows, cols, rng), t, (rows, cols))
            kind = W.kind
            if kind.row_items(W.packed) is None or 1 not in getattr(kind, "row_terms", ()):
                print(f"{t.name:8} {rows}x{cols}: no one-term multi-row product on this host")
                break
            X = rng.standard_normal((n, cols), dtype=np.float32)
            out = np.empty((n, rows), np.float32)
            one, two = (kind.rows_by_items(W.packed, terms=k) for k in (1, 2))
            runs = {"one": lambda: one(X, out), "two": lambda: two(X, out), "float": lambda: W.matmul(X, out)}
            best = dict.fromkeys(runs, float("inf"))
            for _ in range(3):      # alternating
                for key, f in runs.items():
                    best[key] = min(best[key], best_time(f, args.reps, 0.1, clock))
            rate = 2 * n * rows * cols / best["one"] / 1e9
            print(f"{t.name:8} {f'{rows}x{cols}':10} {rate:8.1f} {best['two'] / best['one']:12.2f} "
                  f"{best['float'] / best['one']:8.2f}", flush=True)


def print_asm_summary() -> None:
    """ymm vs scalar FMAs and the integer multiply-adds (vpmaddubsw, vpmaddwd; on AVX-512 VNNI
    hosts vpdpbusd, vpdpwssd) in the generated
    code of every matvec kernel specialization that was called, and the count of int64-lane
    shifts/widenings (vpsrlq, vpmovzxbq): non-zero means a bit-field extraction fell back to
    half-width vectors."""
    import re
    import importlib
    from numba import njit
    from kernels.kinds import registered
    modules = {importlib.import_module(type(k).__module__) for k in registered()}   # one module per kind
    print()
    for mv, name in sorted(((m, n) for m in modules for n in dir(m) if n.startswith("matvec_")), key=lambda p: p[1]):
        f = getattr(mv, name)
        if not f.signatures:
            continue
        opts = {k: v for k, v in f.targetoptions.items() if k in ("parallel", "fastmath", "nogil")}
        fresh = njit(**opts)(f.py_func)            # cached code cannot be inspected: recompile
        for sig in f.signatures:
            fresh.compile(sig)
            asm = fresh.inspect_asm(sig)
            ymm = len(re.findall(r"vfmadd\w+\s+[^\n]*ymm", asm))
            scalar = len(re.findall(r"vfmadd\w+ss\s", asm))
            wide = len(re.findall(r"vpsrlq|vpmovzxbq", asm))
            imadd = len(re.findall(r"vpmaddubsw|vpmaddwd|vpdpbusd|vpdpwssd", asm))
            print(f"{name:14} ymm FMAs {ymm:4d}   scalar FMAs {scalar:4d}   int multiply-adds {imadd:4d}   "
                  f"int64-lane ops {wide:3d}   "
                  f"({', '.join(str(getattr(a, 'dtype', a)) for a in sig[:3])})")


if __name__ == "__main__":
    raise SystemExit(main())
