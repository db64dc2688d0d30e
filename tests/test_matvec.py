"""Quantized matvec / matmul / row gather (kernels.Weight) against float64 products on exact dequantizations.

Tolerance (every product test): |y - y_ref| <= 1e-5 * sum_j |w_j x_j| + 1e-30 per output, where
y_ref = dequant(W) @ x in float64, with x the activations the product multiplies: the tiled
types' matvec (and matmuls of at most MATVEC_MAX_BATCH rows) uses integer dot products on x
rounded per 32-block (Q2_K, Q3_K, TQ1_0, TQ2_0, Q4_0, Q4_1, Q4_K, Q5_0, Q5_1, Q5_K, IQ4_NL,
IQ4_XS, MXFP4 and the lattice i-quants IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S: two
int8 terms, within max|x_block| / 64516; Q8_0, Q6_K: int16, within max|x_block| / 65534), so x
is x_hat = W.rounded(x), itself checked against its definition and, end to end,
|y - W x| <= sum_j |w_j| |x_j - x_hat_j| + 1e-5 * sum_j |w_j x_j|.
Dequantization and row gathers are bit-exact (compared as bits).
"""
from __future__ import annotations

import importlib

import numpy as np
import pytest

import kernels
from gguf_engine.gguf.reader import GGUFReader
from kernels import Weight
from kernels.kinds import Packed
from kernels.kinds.tiled import as_f32_scales
from kernels.simd import SIMD_FORMS
from kernels.types import BLOCK_SIZES, GGMLType, as_type

from .conftest import fixture_path

REL_TOL = 1e-5
# the tiled-matmul module (its tile size is patched in one test)
matmul_mod = importlib.import_module("kernels.quant_matmul")

# Every type with reference blocks made by ggml (../shared/fixtures/quant_blocks/TYPE.npz).
BLOCK_TYPES = ["F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K",
               "Q6_K", "IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ4_NL",
               "IQ4_XS", "TQ1_0", "TQ2_0", "MXFP4"]
# Types with a repacked fast layout.
FAST_TYPES = ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K",
              "Q5_K", "Q6_K", "TQ1_0", "TQ2_0", "IQ4_NL", "IQ4_XS", "MXFP4",
              "IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S"]
LATTICE_TYPES = FAST_TYPES[-7:]

# fp16 scale fields (byte offsets in a block) of the fast types, overwritten in random data.
_SCALES = {"Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "Q8_0": (0,),
           "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,), "IQ4_NL": (0,), "IQ4_XS": (0,), "MXFP4": (),
           "Q2_K": (80, 82), "Q3_K": (108,), "TQ2_0": (64,), "TQ1_0": (52,),
           "IQ1_S": (0,), "IQ2_XXS": (0,), "IQ2_XS": (0,), "IQ2_S": (0,), "IQ3_XXS": (0,), "IQ3_S": (0,),
           "IQ1_M": ()}


def assert_close(y, W64, x, what=""):
    """y (..., rows) against x @ W64.T in float64, within REL_TOL * (|x| @ |W64|.T)."""
    ref = np.asarray(x, np.float64) @ W64.T
    bound = REL_TOL * (np.abs(np.asarray(x, np.float64)) @ np.abs(W64).T) + 1e-30
    err = np.abs(np.asarray(y, np.float64) - ref)
    bad = err > bound
    assert not bad.any(), (f"{what}: {bad.sum()} outputs outside tolerance; worst err/bound "
                           f"{(err / bound).max():.3g}")


def used(W: Weight, X: np.ndarray) -> np.ndarray:
    """The activations a product of W with X multiplies (see the module docstring)."""
    X = np.asarray(X, np.float32)
    small = X.ndim == 1 or (X.shape[0] <= matmul_mod.MATVEC_MAX_BATCH and W.kind.small_matmul is None)
    return W.rounded(X) if small else X


def bits_equal(a, b) -> bool:
    return a.shape == b.shape and np.array_equal(np.asarray(a, np.float32).view(np.uint32),
                                                 np.asarray(b, np.float32).view(np.uint32))


def random_tensor(name: str, rows: int, cols: int, rng) -> np.ndarray:
    """Random raw bytes of a fast type with finite fp16 scales in a sensible range."""
    t = as_type(name)
    if t == GGMLType.F32:
        return rng.standard_normal(rows * cols).astype(np.float32).view(np.uint8)
    if t == GGMLType.F16:
        return rng.standard_normal(rows * cols).astype(np.float16).view(np.uint8)
    if t == GGMLType.BF16:
        f = rng.standard_normal(rows * cols).astype(np.float32)
        return (f.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
    bs, ts = BLOCK_SIZES[t]
    n = rows * cols // bs
    b = rng.integers(0, 256, (n, ts), dtype=np.uint8)
    for off in _SCALES[name]:
        b[:, off:off + 2] = (rng.uniform(-1, 1, n) / 50).astype(np.float16).view(np.uint8).reshape(n, 2)
    if name == "MXFP4":      # E8M0 exponents around 2^0
        b[:, 0] = rng.integers(110, 140, n)
    if name == "IQ1_M":      # the fp16 scale is the top nibbles of the four scale words
        h = (rng.uniform(-1, 1, n) / 50).astype(np.float16).view(np.uint16)
        for k in range(4):
            b[:, 49 + 2 * k] = (b[:, 49 + 2 * k] & 0x0F) | (((h >> (4 * k)) & 0xF) << 4).astype(np.uint8)
    return b.reshape(-1)


def check_weight(W: Weight, W32: np.ndarray, rng, batches=(1, 3, 17), what=""):
    """Full contract of one Weight whose exact dequantization is W32."""
    rows, cols = W.shape
    W64 = W32.astype(np.float64)
    assert bits_equal(W.dequantize(), W32), f"{what}: dequantize() is not bit-exact"
    x = rng.standard_normal(cols).astype(np.float32)
    assert_close(W.matvec(x), W64, used(W, x), f"{what} matvec")
    out = np.full(rows, np.nan, np.float32)
    assert W.matvec(x, out=out) is out
    assert_close(out, W64, used(W, x), f"{what} matvec(out=)")
    for n in batches:
        X = rng.standard_normal((n, cols)).astype(np.float32)
        assert_close(W.matmul(X), W64, used(W, X), f"{what} matmul n={n}")
    ids = np.array([rows - 1, 0, rows // 2, rows - 1])
    assert bits_equal(W.rows(ids), W32[ids]), f"{what}: rows() is not bit-exact"


@pytest.mark.parametrize("name", BLOCK_TYPES)
def test_ggml_blocks_every_type(name):
    """ggml-made blocks of every type (with and without imatrix; 31 rows, odd): exact decode, products in tolerance."""
    z = np.load(fixture_path("quant_blocks", f"{name}.npz"))
    qs = [z[k] for k in ("q", "q_im") if k in z]
    deqs = [z[k] for k in ("deq", "deq_im") if k in z]
    q = np.concatenate(qs)[:31]
    deq = np.concatenate(deqs)[:31]
    W = Weight(q, name, deq.shape)
    assert W.qtype == as_type(name) and W.shape == deq.shape
    check_weight(W, deq, np.random.default_rng(1), what=name)


@pytest.mark.parametrize("name", FAST_TYPES)
@pytest.mark.parametrize("shape", [(37, 512), (1, 256), (130, 768)])
def test_random_fast_types(name, shape):
    """Random weights (valid scales) of the fast layouts: odd row counts, one row, several 256-blocks."""
    rng = np.random.default_rng(hash((name, shape)) % 2**32)
    data = random_tensor(name, *shape, rng)
    W32 = kernels.dequantize(data, name, shape)
    W = Weight(data, name, shape)
    check_weight(W, W32, rng, batches=(1, 4, 17), what=f"{name} {shape}")
    # the functional forms of the issue
    x = rng.standard_normal(shape[1]).astype(np.float32)
    assert_close(kernels.matvec(data, name, shape, x), W32.astype(np.float64), used(W, x), "kernels.matvec")
    X = rng.standard_normal((5, shape[1])).astype(np.float32)
    assert_close(kernels.matmul(X, data, name, shape), W32.astype(np.float64), X, "kernels.matmul")


def test_lattice_tables_fit_the_integer_sums():
    """The lattice kind's tables as the AVX2 sums need them: every code's value raised by the
    type's offset is 0..127 (one unsigned byte for vpmaddubsw, pairs of products below 2^15),
    at most 31 where the type is marked narrow (four products summed as int16), and the raised
    table minus the offset is the table the exact decoder uses."""
    for t, (utab, off, halves, narrow) in kernels.repack.LATTICE.items():
        tab = kernels.repack.TABLES[t].astype(np.int32)
        assert utab.dtype == np.uint8 and utab.max() <= 127, t.name
        assert (utab.astype(np.int32) - off == tab).all(), t.name
        assert not narrow or utab.max() <= 31, t.name
        assert halves == (t.name in ("IQ1_M", "IQ2_XS", "IQ2_S")), t.name     # their scales are per 16


@pytest.mark.parametrize("name,steps", [("Q4_0", 127 * 254), ("Q4_1", 127 * 254), ("Q4_K", 127 * 254),
                                        ("Q5_0", 127 * 254), ("Q5_1", 127 * 254), ("Q5_K", 127 * 254),
                                        ("IQ4_NL", 127 * 254), ("IQ4_XS", 127 * 254), ("MXFP4", 127 * 254),
                                        ("Q2_K", 127 * 254), ("Q3_K", 127 * 254), ("TQ2_0", 127 * 254),
                                        ("TQ1_0", 127 * 254),
                                        ("Q8_0", 32767), ("Q6_K", 32767)]
                         + [(name, 127 * 254) for name in LATTICE_TYPES])
def test_rounded_activations_and_the_end_to_end_bound(name, steps):
    """x_hat = W.rounded(x): per 32-block integer multiples of max|x_block| / steps (two int8 terms:
    dx xq + dr xr, dx = max / 127, dr = dx / 254; or int16), within half a step of x (zero blocks
    stay zero); the matvec stays within the stated bound of the exact W x; every form of the
    integer sums this host runs (portable loops, AVX2, AVX-512 VNNI) gives bit-identical results."""
    rng = np.random.default_rng(11)
    x = (rng.standard_normal(512) * np.repeat(rng.uniform(0, 5, 16), 32)).astype(np.float32)
    x[64:96] = 0
    W = Weight(random_tensor(name, 77, 512, rng), name, (77, 512))
    xh = W.rounded(x)
    amax = np.abs(x).reshape(-1, 32).max(1).astype(np.float64)
    err = np.abs(x - xh).reshape(-1, 32)
    assert (err <= (amax / (2 * steps) * 1.01 + amax * 2e-7)[:, None]).all(), (err.max(1) / amax).max()
    assert not xh[64:96].any()
    W64 = W.dequantize().astype(np.float64)
    y = W.matvec(x)
    bound = np.abs(W64) @ np.abs(x - xh) + REL_TOL * (np.abs(W64) @ np.abs(x)) + 1e-30
    assert (np.abs(y - W64 @ x) <= bound).all()
    edge = np.where(rng.random(512) < 0.5, -3.0, 3.0).astype(np.float32)   # every int8 term at +-127
    y_edge = W.matvec(edge)
    for form in SIMD_FORMS:
        for xv, yv in ((x, y), (edge, y_edge)):
            y2 = np.empty(77, np.float32)
            W._matvec_kernel(form)(xv, y2)
            assert bits_equal(y2, yv), form


@pytest.mark.parametrize("name", ["F16", "BF16"])
def test_half_formats_every_bit_pattern(name):
    """All 65536 16-bit patterns (subnormals, -0, inf, NaN payloads) decode bit-exactly."""
    data = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.uint8)
    W = Weight(data, name, (256, 256))
    ref = kernels.dequantize(data, name, (256, 256))
    assert bits_equal(W.dequantize(), ref)
    assert bits_equal(W.rows([255, 3]), ref[[255, 3]])


@pytest.mark.parametrize("name", ["Q4_1", "Q6_K", "Q5_0", "IQ4_XS"])
def test_results_do_not_depend_on_thread_count(name):
    """matvec and matmul give bit-identical results with 1 and 2 threads."""
    rng = np.random.default_rng(7)
    if name in _SCALES:
        data = random_tensor(name, 203, 512, rng)
    else:
        z = np.load(fixture_path("quant_blocks", f"{name}.npz"))
        data = np.concatenate([z["q_im"]] * 13)[:203]
    W = Weight(data, name, (203, 512))
    x = rng.standard_normal(512).astype(np.float32)
    X = rng.standard_normal((9, 512)).astype(np.float32)
    before = kernels.get_num_threads()
    try:
        kernels.set_num_threads(1)
        y1, Y1 = W.matvec(x), W.matmul(X)
        kernels.set_num_threads(min(2, kernels.threads.numba.config.NUMBA_NUM_THREADS))
        y2, Y2 = W.matvec(x), W.matmul(X)
    finally:
        kernels.set_num_threads(before)
    assert bits_equal(y1, y2)
    assert np.allclose(Y1, Y2, rtol=1e-6, atol=0)   # BLAS may split differently; the decoded tile is identical


def test_matmul_tiles_and_batch_512(monkeypatch):
    """Tiled matmul (tiles smaller than the tensor, a ragged last tile) and a 512-token batch."""
    rng = np.random.default_rng(3)
    shape = (300, 256)
    data = random_tensor("Q4_K", *shape, rng)
    W32 = kernels.dequantize(data, "Q4_K", shape)
    W = Weight(data, "Q4_K", shape)
    monkeypatch.setattr(matmul_mod, "TILE_ELEMENTS", 128 * 256)   # 128-row tiles: 128 + 128 + 44
    X = rng.standard_normal((512, 256)).astype(np.float32)
    assert_close(W.matmul(X), W32.astype(np.float64), X, "tiled matmul n=512")


@pytest.mark.parametrize("name", ["Q5_0", "Q4_1", "Q8_0", "Q3_K"])
def test_concat_and_fused_matvec(name):
    """Weight.concat stacks rows (part sizes that are not whole row tiles: re-tiled): its matvec
    outputs are bit-identical to the parts' (every row is computed alone, in a fixed order),
    split() and fused_matvec agree; mixed types refuse to stack."""
    rng = np.random.default_rng(4)
    parts = [Weight(random_tensor(name, r, 256, rng), name, (r, 256)) for r in (63, 17, 16)]
    x = rng.standard_normal(256).astype(np.float32)
    Wc = Weight.concat(parts)
    assert Wc.shape == (96, 256) and Wc.splits == (63, 17, 16)
    ys = Wc.split(Wc.matvec(x))
    for y, p, yf in zip(ys, parts, kernels.fused_matvec(parts, x)):
        W64 = p.dequantize().astype(np.float64)
        assert_close(y, W64, used(p, x), "concat matvec")
        assert bits_equal(y, p.matvec(x))
        assert bits_equal(yf, p.matvec(x))
    X = rng.standard_normal((6, 256)).astype(np.float32)
    for Y, p in zip(Wc.split(Wc.matmul(X)), parts):
        assert_close(Y, p.dequantize().astype(np.float64), used(p, X), "concat matmul")
    assert Weight.can_concat(parts)
    other_type = "Q4_0" if name == "Q8_0" else "Q8_0"
    other = Weight(random_tensor(other_type, 4, 256, rng), other_type, (4, 256))
    assert not Weight.can_concat([parts[0], other])
    with pytest.raises(ValueError):
        Weight.concat([parts[0], other])


@pytest.mark.parametrize("name", ["Q4_0", "Q5_0", "Q8_0"])
def test_scale_storage_and_aligned_concat(name):
    """Scales are kept as float16 when that is exact (also for huge d = 16384 in one part: Q4_0 and
    Q5_0 store no offset -8d / -16d that could overflow) and work as float32 (the storage of a
    kind's inexact scales; one part's converted here); both forms decode bit-exactly, multiply
    within tolerance, and stack (whole row tiles, 32 + 64 rows, and a mixed-storage concat)."""
    rng = np.random.default_rng(8)
    ok = random_tensor(name, 32, 256, rng)
    big = random_tensor(name, 64, 256, rng)
    bs, ts = BLOCK_SIZES[as_type(name)]
    blocks = big.reshape(-1, ts)
    blocks[::7, 0:2] = np.array([16384.0], np.float16).view(np.uint8)   # a few huge scales
    parts = [Weight(ok, name, (32, 256)), Weight(big, name, (64, 256))]
    assert parts[0].packed.arrays["d"].dtype == np.uint16            # exact in float16
    assert parts[1].packed.arrays["d"].dtype == np.uint16
    parts[1] = Weight.from_packed(Packed(parts[1].kind, parts[1].qtype, 64, 256,
                                          {k: as_f32_scales(a) if k == "d" else a
                                           for k, a in parts[1].packed.arrays.items()}), (64,))
    x = rng.standard_normal(256).astype(np.float32)
    for p, data in zip(parts, (ok, big)):
        check_weight(p, kernels.dequantize(data, name, p.shape), rng, batches=(1,), what=name)
    Wc = Weight.concat(parts)
    assert bits_equal(Wc.dequantize(), np.concatenate([p.dequantize() for p in parts]))
    for y, p in zip(Wc.split(Wc.matvec(x)), parts):
        # same storage as the part: bit-identical; float16 part widened to float32: within tolerance
        if Wc.packed.arrays["d"].dtype == p.packed.arrays["d"].dtype:
            assert bits_equal(y, p.matvec(x))
        assert_close(y, p.dequantize().astype(np.float64), used(p, x), f"{name} mixed-storage concat")


def test_chunked_repack_reports_copied_rows(monkeypatch):
    """A tensor larger than one repack chunk is copied in chunks of whole row tiles; release(r0, r1)
    reports each chunk once, in order, covering every row; the result is the same as in one piece."""
    rng = np.random.default_rng(12)
    data = random_tensor("Q4_K", 300, 512, rng)
    whole = Weight(data, "Q4_K", (300, 512))
    monkeypatch.setattr(kernels.repack, "CHUNK_BYTES", 64 * 288)       # 64 rows of 288 bytes
    seen = []
    W = Weight(data, "Q4_K", (300, 512), release=lambda r0, r1: seen.append((r0, r1)))
    assert seen == [(0, 64), (64, 128), (128, 192), (192, 256), (256, 300)]
    for k, a in whole.packed.arrays.items():
        assert np.array_equal(a, W.packed.arrays[k]), k


@pytest.mark.parametrize("name", FAST_TYPES)
def test_stack_is_concat_without_the_parts(name):
    """Weight.stack (each part repacked straight into its tiles of the stacked layout, as the loader
    builds fused Q|K|V and gate|up) holds exactly the arrays of Weight.concat of the parts' own
    Weights, for parts of whole row tiles (64 + 32 + 17 rows) and not (17 + 32: concat's re-tiling),
    with the same splits; with the tiled kinds (which copy in chunks) each part's release callback
    reports all of its rows."""
    rng = np.random.default_rng(21)
    for rows in ((64, 32, 17), (17, 32)):
        datas = [random_tensor(name, r, 256, rng) for r in rows]
        seen: list[list] = [[] for _ in rows]
        parts = [(d, r, (lambda i: lambda a, b: seen[i].append((a, b)))(i)) for i, (d, r) in enumerate(zip(datas, rows))]
        S = Weight.stack(parts, name, 256)
        C = Weight.concat([Weight(d, name, (r, 256)) for d, r in zip(datas, rows)])
        assert S.shape == C.shape and S.splits == C.splits == rows
        assert S.packed.arrays.keys() == C.packed.arrays.keys()
        for k, a in C.packed.arrays.items():
            assert a.dtype == S.packed.arrays[k].dtype and np.array_equal(a, S.packed.arrays[k]), (rows, k)
        for r, calls in zip(rows, seen if name not in ("F32", "F16", "BF16") else []):   # the tiled kinds
            covered = sorted(calls)
            assert covered[0][0] == 0 and covered[-1][1] == r and all(
                a[1] == b[0] for a, b in zip(covered, covered[1:])), (rows, calls)


def test_errors_are_clear():
    """Wrong byte counts, row lengths that are not whole blocks, bad x shapes and bad ids raise."""
    rng = np.random.default_rng(5)
    data = random_tensor("Q4_0", 4, 64, rng)
    with pytest.raises(ValueError, match="needs"):
        Weight(data[:-1], "Q4_0", (4, 64))
    with pytest.raises(ValueError, match="multiple"):
        Weight(data, "Q4_K", (1, 72 * 4))
    W = Weight(data, "Q4_0", (4, 64))
    with pytest.raises(ValueError):
        W.matvec(np.zeros(65, np.float32))
    with pytest.raises(IndexError):
        W.rows([4])


def _check_file_tensors(path, names_or_pred, rng, max_rows=None):
    with GGUFReader(path) as r:
        picked = [t for n, t in r.tensors.items() if len(t.shape) == 2 and names_or_pred(n, t)]
        assert picked, f"no tensor picked from {path}"
        for t in picked:
            raw = np.array(t.raw)
            rows, cols = t.shape
            W = Weight(raw, t.type, t.shape)
            W32 = kernels.dequantize(raw, t.type, t.shape)
            check_weight(W, W32, rng, batches=(1, 17), what=f"{path.name}:{t.name} {t.type.name}")
    return picked


def test_tiny_model_tensors():
    """Every 2-D tensor of small ggml-quantized models (Q4_K_M and Q3_K_M mixtures, IQ4_XS)."""
    rng = np.random.default_rng(6)
    for ft in ("Q4_K_M", "Q3_K_M", "IQ4_XS"):
        _check_file_tensors(fixture_path("models", "q", f"tiny-llama-{ft}.gguf"), lambda n, t: True, rng)


def test_real_smollm2_tensors(smollm2_path):
    """SmolLM2 Q4_1 layer-0 projections and the Q8_0 embedding (matvec over all 49152 rows; gather)."""
    rng = np.random.default_rng(8)
    _check_file_tensors(smollm2_path, lambda n, t: n.startswith("blk.0."), rng)
    with GGUFReader(smollm2_path) as r:
        t = r.tensors["token_embd.weight"]
        raw = np.array(t.raw)
        W = Weight(raw, t.type, t.shape)
        ids = np.array([0, 1, 49151, 1234, 1234])
        raw2d = raw.reshape(t.shape[0], -1)
        rows_ref = np.stack([kernels.dequantize(raw2d[i], t.type, (t.shape[1],)) for i in ids])
        assert bits_equal(W.rows(ids), rows_ref)
        x = rng.standard_normal(t.shape[1]).astype(np.float32)
        assert_close(W.matvec(x), kernels.dequantize(raw, t.type, t.shape).astype(np.float64), used(W, x),
                     "smollm2 output projection")


def test_real_gemma3_tensors(gemma3_path):
    """Gemma 3: the first 2-D tensor of every (type, shape) in the file except the 262144-row embedding."""
    rng = np.random.default_rng(9)
    seen = set()

    def first_of_kind(name, t):
        key = (t.type, tuple(t.shape))
        if key in seen or name == "token_embd.weight":
            return False
        seen.add(key)
        return True

    picked = _check_file_tensors(gemma3_path, first_of_kind, rng)
    assert {t.type.name for t in picked} >= {"Q4_K", "Q5_0", "Q6_K", "Q8_0"}


@pytest.mark.parametrize("name", ["F32", "F16", "BF16"])
def test_small_float_matvec_runs_serial_bit_identical(name):
    """Float weights of at most SERIAL_MAX_WEIGHTS weights (a mixture-of-experts router) take the
    serial matvec, larger ones the parallel one; both give the same bits (tolerance 0) on every
    shape, and the serial one is what Weight.matvec runs for a 32 x 1024 router."""
    from kernels.kinds.plain import SERIAL_MAX_WEIGHTS, matvec_plain, matvec_plain_serial
    rng = np.random.default_rng(3)
    t = as_type(name)
    dtype = {"F32": np.float32, "F16": np.float16, "BF16": np.float32}[name]
    for rows, cols in [(32, 1024), (7, 33), (128, 2880), (64, 1024)]:
        w = rng.standard_normal((rows, cols)).astype(dtype)
        raw = (w.view(np.uint32) >> 16).astype(np.uint16) if name == "BF16" else w
        W = Weight(raw.view(np.uint8).reshape(rows, -1), t, (rows, cols))
        x = rng.standard_normal(cols).astype(np.float32)
        a, b = np.empty(rows, np.float32), np.empty(rows, np.float32)
        arr = W.packed.arrays["w"]
        matvec_plain(arr, x, a)
        matvec_plain_serial(arr, x, b)
        np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))
        np.testing.assert_array_equal(W.matvec(x).view(np.uint32), a.view(np.uint32))
    assert 32 * 1024 <= SERIAL_MAX_WEIGHTS < 128 * 2880


@pytest.mark.parametrize("first, rows", [("Q4_K", (96, 40)), ("Q5_K", (64, 32)), ("Q4_0", (64, 40))])
def test_weight_group_joint_matvec(first, rows):
    """WeightGroup([A, B]) with B in Q6_K: for a k-quant nibble A (Q4_K, Q5_K) of whole row tiles
    one joint launch (kernels.kinds.joint), otherwise each matvec in turn; either way the group's
    output is bit-identical (tolerance 0) to the parts' own matvecs, at 1 and 2 threads, and the
    CPU backend's decode-step linear_fused returns the same bits (a prompt row keeps the matmul)."""
    from gguf_engine.backends.cpu import CPUBackend
    from kernels.weight import WeightGroup
    rng = np.random.default_rng(11)
    a = Weight(random_tensor(first, rows[0], 512, rng), first, (rows[0], 512))
    b = Weight(random_tensor("Q6_K", rows[1], 512, rng), "Q6_K", (rows[1], 512))
    g = WeightGroup([a, b])
    assert g.joint == (first != "Q4_0") and g.rows == sum(rows)
    be = CPUBackend(2)
    before = kernels.get_num_threads()
    try:
        for threads in (1, 2):
            kernels.set_num_threads(threads)
            for _ in range(3):
                x = (rng.standard_normal(512) * rng.uniform(0.01, 10)).astype(np.float32)
                ref = np.concatenate([a.matvec(x), b.matvec(x)])
                assert bits_equal(g.matvec(x, np.empty(g.rows, np.float32)), ref)
                assert bits_equal(be.linear_fused(g, x.reshape(1, -1))[0], ref)
                assert bits_equal(be.linear_fused(g, x.reshape(1, -1), decode=1)[0], ref)
        X = rng.standard_normal((1, 512)).astype(np.float32)
        prompt = be.linear_fused(g, X, decode=0)
        assert bits_equal(prompt, np.concatenate([a.matmul(X), b.matmul(X)], axis=1))
    finally:
        kernels.set_num_threads(before)
