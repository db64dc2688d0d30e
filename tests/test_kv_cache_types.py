"""KV cache types (llama.cpp's -ctk/-ctv): storage, attention over block rows, accuracy, refusals.

- storage: every row written is byte for byte the type's encoder output (of the row rotated by the
  Walsh-Hadamard matrix, as llama.cpp rotates quantized caches) (the encoders are checked
  against ggml's bytes in test_encoders.py) and reads back as the type's exact decoding; cache sizes
  are exact byte counts (q8_0 = 34/64 = 0.53125x the f16 bytes, q4_0 = 18/64 = 0.28125x);
- attention over block rows (fused decode + dot, chunked over keys, and the BLAS path of prompts)
  against a float64 softmax attention over the exactly decoded rows: within 2e-5 of the largest
  output (float32 sums over up to 600 keys).  Over a K cache of an integer type (q8_0, q4_0, q4_1,
  q5_0, q5_1, iq4_nl) a few tokens' scores are integer dot products with the query rounded per
  32-block to two int8 terms: the reference then takes the query as rounded (``rounded_query``,
  itself checked within max|x_block| / 64516 of the query, float32 rounding aside), as the matvec
  tests take the activations the kernel multiplies; where the value rows are summed as integers
  (AVX-512 VNNI hosts: the weights rounded per 128 positions to two int8 terms) the bound is 5e-4
  (``VALUE_TOL``, measured up to 2.7e-4); the vector (VNNI/AVX2) and portable forms of the integer
  kernels (key scores and value sums), and of the value kernels over f32, f16 and bf16 rows, give
  identical outputs;
- the cache-editing API (read_k/write_k/move) on every type, exactly;
- accuracy: mean KL of the tiny llama model's logits (80 tokens, prompt then token by token)
  from the f32-cache logits, pinned with a margin of 2x over the measured values;
- refusals: a head size that is not whole blocks, unknown types, a quantized V cache without flash
  attention (as llama.cpp), block types on offloaded layers.
"""
from __future__ import annotations

import numpy as np
import pytest
from numba import njit

from gguf_engine import Llama
from gguf_engine.backends.cpu import BLAS_ATTENTION_MIN_TOKENS, CPUBackend
from gguf_engine.model import load_model
from gguf_engine.model.batch import SlotKVCache
from gguf_engine.model.kv_cache import (CACHE_TYPES, QUANTIZED_CACHE_TYPES, BlockRows, KVCache, KVTypes,
                                       SplitKVCache, cache_rows, rotation_size)
from kernels import attention_kv, dequantize
from kernels.registry import get_qtype

from .conftest import fixture_path
from .device_standin import StandinDevice
from .test_model import attention_reference

TINY = str(fixture_path("models", "tiny-llama-f32.gguf"))
ATTN_TOL = 2e-5
# the same where the value rows are summed as integers (``attention_kv.int_values``: each weight
# times its block's scale rounded per 128 rows to two int8 terms, within max|w_group| / 64516):
# measured up to 2.7e-4 of the largest output over these tests (q4_1, whose minimum makes the
# decoded values small differences of larger terms), x2
VALUE_TOL = 5e-4


def _tol(tv):
    """The bound of decode attention over a V cache of type tv."""
    return VALUE_TOL if attention_kv.int_values(int(CACHE_TYPES[tv])) else ATTN_TOL
# measured mean KL from the f32-cache logits on the tiny model (see test_kl_from_f32_cache), x2
KL_BOUND = {"f16": 1e-7, "bf16": 3e-6, "q8_0": 3e-5, "q5_1": 1.5e-3, "q5_0": 1.5e-3, "q4_1": 6e-3,
            "q4_0": 6e-3, "iq4_nl": 5e-3}


def _rows(rng, n, hkv, hd):
    """Cache-like rows: gaussian with a few larger channels, as RoPE'd keys have."""
    x = rng.standard_normal((n, hkv, hd)).astype(np.float32)
    x[..., :4] *= 6
    return x


@pytest.mark.parametrize("name", list(CACHE_TYPES))
def test_rows_are_the_encoders_bytes_and_read_back_exactly(name):
    rng = np.random.default_rng(1)
    kv = KVCache(2, 16, 3, 64, name)
    x = _rows(rng, 5, 3, 64)
    kv.write_k(1, 4, x)
    kv.write_v(1, 4, -x)
    t = CACHE_TYPES[name]
    q = get_qtype(t)
    rot = kv.rot_k                                               # 64 for the quantized types, else 0
    assert rot == (64 if name in QUANTIZED_CACHE_TYPES else 0) == kv.rot_v

    def rotated(a):
        a = np.array(a, dtype=np.float32)
        if rot:
            attention_kv.hadamard_rows(a, rot)
        return a
    want = q.encode(rotated(x).reshape(-1, 64))                              # (15, row bytes)
    got = np.asarray(kv.k[1, 4:9]).reshape(15, -1).view(np.uint8)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(kv.read_k(1, 4, 9), rotated(dequantize(want, t, (5, 3, 64))))
    np.testing.assert_array_equal(kv.read_v(1, 4, 9),
                                  rotated(dequantize(q.encode(rotated(-x).reshape(-1, 64)), t, (5, 3, 64))))
    assert kv.type_k == kv.type_v == name


def test_cache_bytes_are_exact():
    """q8_0 takes 34/64 of the f16 bytes (0.53x), q4_0 18/64 (0.28x); K and V count separately."""
    f16 = KVCache(30, 8192, 3, 64, "f16").nbytes
    assert f16 == 2 * 30 * 8192 * 3 * 64 * 2
    assert KVCache(30, 8192, 3, 64, "q8_0").nbytes * 64 == f16 * 34
    assert KVCache(30, 8192, 3, 64, "q4_0").nbytes * 64 == f16 * 18
    assert KVCache(30, 8192, 3, 64, ("q8_0", "f16")).nbytes * 128 == f16 * (34 + 64)
    for name, (per32) in {"bf16": 64, "q4_1": 20, "q5_0": 22, "q5_1": 24, "iq4_nl": 18}.items():
        assert KVCache(2, 64, 1, 64, name).nbytes == 2 * 2 * 64 * 2 * per32


@pytest.mark.parametrize("tk,tv", [("q8_0", "q8_0"), ("q4_0", "q4_1"), ("q5_0", "q5_1"), ("iq4_nl", "bf16"),
                                   ("f16", "q8_0"), ("bf16", "f32")])
@pytest.mark.parametrize("n,pos0,window,softcap", [(1, 599, 0, 0.0), (3, 300, 0, 0.0), (2, 550, 100, 50.0),
                                                   (40, 500, 0, 0.0), (20, 0, 0, 0.0), (12, 580, 64, 0.0)])
def test_attention_over_block_rows(tk, tv, n, pos0, window, softcap):
    """Fused kernel (n < 8: chunks of 256 keys merged) and BLAS blocks (n >= 8) alike."""
    rng = np.random.default_rng(n + pos0)
    H, Hkv, hd, C = 6, 2, 64, 640
    kv = KVCache(1, C, Hkv, hd, (tk, tv))
    K, V = _rows(rng, pos0 + n, Hkv, hd), _rows(rng, pos0 + n, Hkv, hd)
    kv.store(0, 0, K, V)
    q3 = rng.standard_normal((n, H, hd)).astype(np.float32)
    out = np.zeros((n, H, hd), np.float32)
    be = CPUBackend(2)
    k, v = kv.layer(0)
    qr = q3.copy()
    if getattr(k, "rot", 0):                                     # as qkv_prepare rotates the queries
        attention_kv.hadamard_rows(qr, k.rot)
    with be.scope():
        be.attention(qr, k, v, pos0, 0.125, window, softcap, out)
    if n < BLAS_ATTENTION_MIN_TOKENS and attention_kv.is_int_type(int(CACHE_TYPES[tk])):
        qk, K = _as_multiplied(qr, k, 0.125), _stored(k)       # the rotated frame, as the kernel sees it
    else:
        qk, K = q3, kv.read_k(0, 0, pos0 + n)
    want = attention_reference(qk, K, kv.read_v(0, 0, pos0 + n), pos0, 0.125, window, softcap)
    tol = _tol(tv) if n < BLAS_ATTENTION_MIN_TOKENS else ATTN_TOL
    assert np.abs(out - want).max() <= tol * np.abs(want).max()


def _as_multiplied(q3, k, scale):
    """The queries q3 (n, H, hd) as the integer kernels multiply them: each head scaled, rounded
    per 32-block (float64), divided by the (power of two) scale again."""
    return np.stack([attention_kv.rounded_query(q * np.float32(scale)) / scale for q in q3])


def _stored(rows):
    """A block-format side's rows decoded exactly, in the stored (rotated) frame: (C, Hkv, hd)."""
    out = np.empty(rows.shape, np.float32)
    attention_kv.load_rows(int(rows.type), rows.data, out)
    return out


INT_TYPES = ("q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl")


def _decode_three_ways(name, G, Hkv, hd, seed):
    """Decode attention of 2 tokens over 700 keys (three chunks) of a random cache of type name by
    the vector kernels, the portable loops and the serial kernel, checked identical: (q3, k, v,
    the output)."""
    rng = np.random.default_rng(seed)
    C = 700
    kv = KVCache(1, C, Hkv, hd, name)
    kv.store(0, 0, _rows(rng, C, Hkv, hd), _rows(rng, C, Hkv, hd))
    k, v = kv.layer(0)
    q3 = rng.standard_normal((2, G * Hkv, hd)).astype(np.float32)
    outs = [np.zeros_like(q3) for _ in range(3)]
    attention_kv.attention_rows(q3, *cache_rows(k), *cache_rows(v), C - 2, 0.125, 0, 0.0, outs[0], True)
    attention_kv.attention_rows(q3, *cache_rows(k), *cache_rows(v), C - 2, 0.125, 0, 0.0, outs[1], False)
    attention_kv.attention_rows_serial(q3, *cache_rows(k), *cache_rows(v), C - 2, 0.125, 0, 0.0, outs[2], True)
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], outs[2])
    return q3, k, v, outs[0]


@pytest.mark.parametrize("name", INT_TYPES)
@pytest.mark.parametrize("G,Hkv,hd", [(1, 2, 64), (3, 3, 64), (4, 1, 256), (6, 1, 96), (4, 4, 128)])
def test_integer_attention_per_type(name, G, Hkv, hd):
    """Decode attention (2 tokens, 700 keys: three chunks) over a K and V cache of each integer
    type, for 1 to 6 query heads per kv head (key sums in padded groups of 4, values in groups of
    1 to 4) and head sizes 64, 96, 256 and 128 (grouped-query heads of 128): within 2e-5 of the
    largest output of float64 attention over the exactly decoded rows with the query as the
    kernel rounds it (5e-4 where the values are summed as integers, ``VALUE_TOL``); the vector
    and portable integer kernels (the key scores and the value sums) and the serial kernel give
    the same output exactly."""
    q3, k, v, out = _decode_three_ways(name, G, Hkv, hd, G * hd)
    want = attention_reference(_as_multiplied(q3, k, 0.125), _stored(k), _stored(v), 698, 0.125, 0, 0.0)
    assert np.abs(out - want).max() <= _tol(name) * np.abs(want).max()


@njit
def _scales(v, off, stride, count, nb, bb, d, m, Np, gathered):
    """``block_scales`` (gathered) or ``block_scales_loop`` with the minima, no prefetches."""
    if gathered:
        attention_kv.block_scales(v, off, stride, count, nb, bb, True, 0, d, m, Np)
    else:
        attention_kv.block_scales_loop(v, off, stride, count, nb, bb, True, 0, d, m, Np)


@njit
def _minima(p, ldp, G, m, Np, nb, count, M, ldm, vector):
    """Every group of 4 heads and 4 block columns through ``minimum_sums`` (vector) or its loop."""
    for g0 in range(0, G, 4):
        for b0 in range(0, nb, 4):
            if vector:
                attention_kv.minimum_sums(p, ldp, g0, G, m, Np, b0, nb, count, M, ldm)
            else:
                attention_kv.minimum_sums_loop(p, ldp, g0, G, m, Np, b0, nb, count, M, ldm)


@pytest.mark.parametrize("name", INT_TYPES)
@pytest.mark.parametrize("G,nb,count", [(1, 2, 1), (3, 3, 17), (5, 5, 256), (4, 4, 300), (8, 8, 131)])
def test_value_weights_scales_and_minima_equal_their_portable_forms(name, G, nb, count):
    """The integer value sums' inputs over ``count`` strided value rows (3 kv heads) of each integer
    type, G heads and nb block columns (counts not whole gathers of 16 rows, heads and columns not
    whole groups of 4): the blocks' scales and minima read by ``block_scales`` (gathers on AVX-512
    hosts) equal ``block_scales_loop``'s, and the minimum's sums of ``minimum_sums`` (the heads in
    vector lanes) equal ``minimum_sums_loop``'s serial chains, exactly (no tolerance)."""
    rng = np.random.default_rng(G * nb + count)
    hd, Hkv = 32 * nb, 3
    kv = KVCache(1, count, Hkv, hd, name)
    kv.store(0, 0, _rows(rng, count, Hkv, hd), _rows(rng, count, Hkv, hd))
    rows, t = cache_rows(kv.layer(0)[1])
    v = rows.reshape(-1)
    bb, rb = int(attention_kv.BLOCK_BYTES[t]), rows.shape[2]
    Np = -(-count // attention_kv.VALUE_GROUP) * attention_kv.VALUE_GROUP
    pad = attention_kv.SCALE_LANES
    scales = [np.zeros(nb * Np + pad, np.float32) for _ in range(4)]
    _scales(v, rb, Hkv * rb, count, nb, bb, scales[0], scales[1], Np, True)
    _scales(v, rb, Hkv * rb, count, nb, bb, scales[2], scales[3], Np, False)
    for got, want in zip(scales[:2], scales[2:]):
        for b in range(nb):
            np.testing.assert_array_equal(got[b * Np:b * Np + count], want[b * Np:b * Np + count])
    ldp = count + 3
    p = rng.random(G * ldp).astype(np.float32)
    Gp, nbp = -(-G // 4) * 4, -(-nb // 4) * 4
    M = [np.zeros(Gp * nbp, np.float32) for _ in range(2)]
    _minima(p, ldp, G, scales[1], Np, nb, count, M[0], nbp, True)
    _minima(p, ldp, G, scales[1], Np, nb, count, M[1], nbp, False)
    keep = (np.arange(Gp)[:, None] < G) & (np.arange(nbp)[None, :] < nb)
    np.testing.assert_array_equal(M[0].reshape(Gp, nbp)[keep], M[1].reshape(Gp, nbp)[keep])


@pytest.mark.parametrize("name", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("G,Hkv,hd", [(1, 2, 64), (3, 3, 64), (4, 1, 256), (6, 1, 96), (2, 2, 80), (4, 4, 128),
                                     (5, 1, 48)])
def test_float_attention_per_type(name, G, Hkv, hd):
    """Decode attention (2 tokens, 700 keys: three chunks) over an f32, f16 or bf16 cache, 1 to 6
    query heads per kv head (key scores and value columns of 1 to 4 heads), head sizes 64, 96,
    256, 128 (grouped-query heads of 128), 80 and 48 (not whole columns of 32: values a tile of
    rows at a time; 48 also whole pieces of 16 for the key scores): within 2e-5 of the largest
    output of float64 attention over the exactly decoded rows; the vector and portable key and
    value kernels and the serial kernel give the same output exactly."""
    q3, k, v, out = _decode_three_ways(name, G, Hkv, hd, G * hd + 1)
    want = attention_reference(q3, _stored(k) if name == "bf16" else np.asarray(k, np.float32),
                               _stored(v) if name == "bf16" else np.asarray(v, np.float32), 698, 0.125, 0, 0.0)
    assert np.abs(out - want).max() <= ATTN_TOL * np.abs(want).max()


@pytest.mark.parametrize("name", ["f16", "q8_0", "q4_1"])
def test_steps_of_several_sequences_equal_each_alone(name):
    """Decode steps of 3 sequences in one call (``attention_steps``, regions of 400 rows, at
    positions 399, 40 and 300, a window of 350) give each sequence exactly its lone attention."""
    rng = np.random.default_rng(3)
    n_seq, n_ctx, Hkv, G, hd = 3, 400, 3, 3, 64
    kv = KVCache(1, n_seq * n_ctx, Hkv, hd, name)
    kv.store(0, 0, _rows(rng, n_seq * n_ctx, Hkv, hd), _rows(rng, n_seq * n_ctx, Hkv, hd))
    k, v = kv.layer(0)
    q3 = rng.standard_normal((n_seq, G * Hkv, hd)).astype(np.float32)
    base, pos = np.arange(n_seq, dtype=np.int64) * n_ctx, np.array([399, 40, 300], np.int64)
    together = np.zeros_like(q3)
    attention_kv.attention_steps(q3, *cache_rows(k), *cache_rows(v), base, pos, 0.125, 350, 0.0, together)
    for s in range(n_seq):
        alone = np.zeros_like(q3[s:s + 1])
        rows = slice(base[s], base[s] + n_ctx)
        attention_kv.attention_rows(q3[s:s + 1], *cache_rows(k[rows]), *cache_rows(v[rows]), int(pos[s]), 0.125,
                                    350, 0.0, alone)
        np.testing.assert_array_equal(together[s:s + 1], alone)


def test_rounded_query_is_within_its_bound():
    """Each 32-block of the rounded query lies within max|x_block| / 64516 of the query (plus
    float32 rounding of the scaled values: 1e-6 of max|x_block|), for 1 and several heads."""
    rng = np.random.default_rng(9)
    for G in (1, 3, 5):
        q = rng.standard_normal((G, 128)).astype(np.float32) * rng.uniform(0.01, 100, (G, 1)).astype(np.float32)
        q[:, 40] *= 30                                            # an outlier channel
        r = attention_kv.rounded_query(q)
        amax = np.abs(q).reshape(G, 4, 32).max(axis=2, keepdims=True)
        err = np.abs(r - q).reshape(G, 4, 32)
        assert (err <= amax / 64516 + 1e-6 * amax).all()


def test_parallel_and_serial_kernels_agree_exactly():
    rng = np.random.default_rng(5)
    kv = KVCache(1, 1100, 1, 256, "q4_0")
    kv.store(0, 0, _rows(rng, 1100, 1, 256), _rows(rng, 1100, 1, 256))
    q3 = rng.standard_normal((1, 4, 256)).astype(np.float32)
    a, b = np.zeros_like(q3), np.zeros_like(q3)
    k, v = kv.layer(0)
    attention_kv.attention_rows(q3, *cache_rows(k), *cache_rows(v), 1099, 0.0625, 0, 0.0, a)
    attention_kv.attention_rows_serial(q3, *cache_rows(k), *cache_rows(v), 1099, 0.0625, 0, 0.0, b)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", list(CACHE_TYPES))
def test_move_is_a_byte_copy_and_write_k_round_trips(name):
    rng = np.random.default_rng(2)
    kv = KVCache(2, 32, 2, 64, name)
    kv.store(0, 0, _rows(rng, 20, 2, 64), _rows(rng, 20, 2, 64))
    k_before, v_before = np.array(kv.k[0, 10:20]), np.array(kv.v[0, 10:20])
    kv.move(0, 10, 2, 10)                                        # overlapping ranges
    np.testing.assert_array_equal(kv.k[0, 2:12], k_before)
    np.testing.assert_array_equal(kv.v[0, 2:12], v_before)
    k = kv.read_k(0, 2, 12)
    kv.write_k(0, 20, k)                                         # decoded rows re-encode to the same values
    np.testing.assert_allclose(kv.read_k(0, 20, 30), k, rtol=0, atol=1e-5 * np.abs(k).max())
    with pytest.raises(ValueError, match="outside"):
        kv.read_k(0, 30, 33)


def test_rotation_is_llama_cpps_walsh_hadamard():
    """The rotation equals x @ H for ggml's Sylvester-order matrix with entries +-1/sqrt(n) (to float32
    rounding, 1e-6 of the values), is its own inverse, and is chosen as llama.cpp chooses it."""
    for n in (64, 128, 256):
        H = np.full((1, 1), 1.0)
        while H.shape[0] < n:
            H = np.block([[H, H], [H, -H]])
        H /= np.sqrt(n)
        x = np.random.default_rng(n).standard_normal((3, 2, 256)).astype(np.float32)
        y = x.copy()
        attention_kv.hadamard_rows(y, n)
        want = (x.reshape(-1, n).astype(np.float64) @ H).reshape(x.shape)
        assert np.abs(y - want).max() <= 1e-6 * np.abs(x).max() * np.sqrt(n)
        attention_kv.hadamard_rows(y, n)
        assert np.abs(y - x).max() <= 1e-6 * np.abs(x).max() * np.sqrt(n)
    assert (rotation_size("q8_0", 256, "k"), rotation_size("q8_0", 256, "v")) == (256, 64)
    assert (rotation_size("q4_0", 192, "k"), rotation_size("q4_0", 192, "v")) == (64, 64)
    assert rotation_size("q4_0", 96, "k") == rotation_size("f16", 64, "k") == rotation_size("bf16", 64, "v") == 0


def test_split_and_slot_caches_carry_types_and_editing():
    parts = [(0, KVCache(1, 16, 2, 64, "q8_0")), (1, KVCache(1, 16, 2, 64, "q8_0"))]
    split = SplitKVCache(parts)
    assert (split.type_k, split.type_v) == ("q8_0", "q8_0")
    x = _rows(np.random.default_rng(3), 4, 2, 64)
    split.write_k(1, 3, x)
    np.testing.assert_array_equal(split.read_k(1, 3, 7), parts[1][1].read_k(0, 3, 7))
    before = split.read_k(1, 3, 7)
    split.move(1, 3, 0, 4)
    np.testing.assert_array_equal(split.read_k(1, 0, 4), before)
    slots = SlotKVCache(KVCache(1, 32, 2, 64, ("q4_0", "f16")), 2, 16)
    k, v = slots.region(0, 1)
    assert isinstance(k, BlockRows) and k.shape == (16, 2, 64) and v.shape == (16, 2, 64)
    assert (slots.type_k, slots.type_v) == ("q4_0", "f16")


def _kl(ref, out):
    def logp(x):
        x = x.astype(np.float64) - x.max(1, keepdims=True)
        return x - np.log(np.exp(x).sum(1, keepdims=True))
    lp, lq = logp(ref), logp(out)
    return float((np.exp(lp) * (lp - lq)).sum(1).mean())


@pytest.fixture(scope="module")
def f32_logits():
    toks = (np.arange(1, 81) * 37) % 700 + 5
    m = load_model(TINY, n_ctx=96)
    return toks, m.eval(toks, logits_all=True)


@pytest.mark.parametrize("name", list(KL_BOUND))
def test_kl_from_f32_cache(name, f32_logits):
    """A 40-token prompt (BLAS attention), then 40 single tokens (the fused kernel)."""
    toks, ref = f32_logits
    m = load_model(TINY, n_ctx=96, cache_type=name)
    out = np.concatenate([m.eval(toks[:40], logits_all=True)] + [m.eval(toks[i:i + 1], logits_all=True)
                                                                  for i in range(40, 80)])
    assert _kl(ref, out) <= KL_BOUND[name]


def test_refusals():
    with pytest.raises(ValueError, match="K cache type q8_0 with block size 32 does not divide the model's head "
                                         "size 48"):
        KVCache(1, 8, 1, 48, ("q8_0", "f16"))
    KVCache(1, 8, 1, 48, ("bf16", "f16"))
    with pytest.raises(ValueError, match="unsupported KV cache type 'q2_k'"):
        KVTypes("q2_k")
    with pytest.raises(ValueError, match="unsupported KV cache type 10"):
        KVTypes.from_options(10, None)
    with pytest.raises(ValueError, match="requires flash attention"):
        Llama(TINY, n_ctx=32, type_v=8)
    with pytest.raises(ValueError, match="offloaded to StandinDevice keep their KV cache in f32 or f16"):
        load_model(TINY, n_ctx=32, cache_type="q8_0", n_gpu_layers=2, device=StandinDevice())


def test_llama_takes_ggml_ids_and_names():
    with Llama(TINY, n_ctx=32, type_k=8, type_v="q4_0", flash_attn=True) as llm:
        assert (llm.type_k, llm.type_v) == ("q8_0", "q4_0")
        assert (llm.model.kv_cache.type_k, llm.model.kv_cache.type_v) == ("q8_0", "q4_0")
        assert llm("Hello", max_tokens=3, temperature=0.0)["choices"][0]["text"] is not None
    with Llama(TINY, n_ctx=32, type_k=8) as llm:                 # a quantized K alone needs nothing
        assert llm.cache_type == "k=q8_0, v=f32"


def test_state_saves_the_stored_rows_and_loads_them_back():
    """save_state keeps a block-type cache's bytes; load_state puts them back exactly, and a state
    of other types is refused."""
    with Llama(TINY, n_ctx=32, type_k="q4_0", type_v="q8_0", flash_attn=True) as llm:
        llm.eval(llm.tokenize(b"Hello world"))
        state = llm.save_state()
        want = llm.eval(llm.tokenize(b" again", add_bos=False)).copy()
        llm.load_state(state)
        np.testing.assert_array_equal(llm.eval(llm.tokenize(b" again", add_bos=False)), want)
    with Llama(TINY, n_ctx=32) as other, pytest.raises(ValueError, match="same types"):
        other.load_state(state)
