"""Dequantization: bit-exact agreement with ggml for every GGML tensor type.

Oracles: llama.cpp's own dequantization of its quantized blocks
(``quant_blocks/TYPE.npz``), and the ``gguf`` package's numpy dequantizer on
model files and on random blocks.  Tolerance everywhere: exact float32 bits
(two NaNs count as equal whatever their payload).
"""
from __future__ import annotations

import zlib
from pathlib import Path

import gguf.quants as gq
import numba
import numpy as np
import pytest

from kernels import QTYPES, GGMLType, dequantize, get_qtype
from kernels import iquant_tables as tabs
from kernels.types import BLOCK_SIZES
from gguf_engine.gguf.reader import GGUFReader
from tests.conftest import fixture_path

# Every type llama.cpp wrote a quant_blocks fixture for.
FIXTURE_TYPES = ["F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K",
                 "Q6_K", "IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ4_NL",
                 "IQ4_XS", "TQ1_0", "TQ2_0", "MXFP4"]

# Byte offsets of the fp16 scale fields in each block (overwritten with finite values in random blocks).
FP16_FIELDS = {
    "Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0],
    "Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208],
    "IQ2_XXS": [0], "IQ2_XS": [0], "IQ2_S": [0], "IQ3_XXS": [0], "IQ3_S": [0], "IQ1_S": [0],
    "IQ4_NL": [0], "IQ4_XS": [0], "TQ1_0": [52], "TQ2_0": [64],
    "IQ1_M": [],    # scale is spread over the top nibbles of its scale words (handled below)
    "MXFP4": [],    # E8M0 exponent, kept <= 250 below so that no product overflows
    "NVFP4": [],    # UE4M3 sub-block scales: every byte value is finite
}

# Elements compared per real-model tensor (first and last rows); the biggest tensors are compared whole.
REAL_MODEL_CAP = 1 << 19


def assert_bits_equal(got: np.ndarray, want: np.ndarray, what: str) -> None:
    """Exact float32 bit equality; NaN == NaN regardless of payload."""
    got = np.asarray(got, dtype=np.float32)
    want = np.asarray(want, dtype=np.float32).reshape(got.shape)
    same = (got.view(np.uint32) == want.view(np.uint32)) | (np.isnan(got) & np.isnan(want))
    if not same.all():
        bad = np.flatnonzero(~same.reshape(-1))
        i = bad[0]
        raise AssertionError(f"{what}: {bad.size} of {same.size} values differ; first at flat index {i}: "
                             f"got {got.reshape(-1)[i]!r}, want {want.reshape(-1)[i]!r}")


def ro(a: np.ndarray) -> np.ndarray:
    """Flat read-only view: the form dequantize hands to decoders (shares their compiled specialization)."""
    v = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
    v.flags.writeable = False
    return v


def oracle(raw: np.ndarray, qtype: GGMLType, shape) -> np.ndarray:
    """The gguf package's dequantization (numpy)."""
    return gq.dequantize(np.ascontiguousarray(raw).reshape(-1).view(np.uint8),
                         gq.GGMLQuantizationType(int(qtype))).reshape(shape)


def finite_fp16(rng: np.random.Generator, n: int) -> np.ndarray:
    """Finite fp16 scales over a wide range: subnormals, zeros, both signs, up to ~1e2."""
    v = rng.standard_normal(n) * 10.0 ** rng.uniform(-8, 2, n)
    return v.astype(np.float16)


def random_blocks(name: str, n_blocks: int, seed: int) -> np.ndarray:
    """Random bytes for n_blocks blocks of a type, scale fields overwritten with finite fp16 values."""
    rng = np.random.default_rng(seed)
    ts = BLOCK_SIZES[GGMLType[name]][1]
    blocks = rng.integers(0, 256, (n_blocks, ts), dtype=np.uint8)
    for off in FP16_FIELDS[name]:
        blocks[:, off:off + 2] = finite_fp16(rng, n_blocks).view(np.uint8).reshape(n_blocks, 2)
    if name == "IQ1_M":
        h = finite_fp16(rng, n_blocks).view(np.uint16).astype(np.uint32)
        for k, byte in enumerate((49, 51, 53, 55)):
            blocks[:, byte] = (blocks[:, byte] & 0x0F) | (((h >> (4 * k)) & 0xF) << 4).astype(np.uint8)
    if name == "MXFP4":
        blocks[:, 0] = rng.integers(0, 251, n_blocks)
    return blocks


# --------------------------------------------------------------------------- registry contract

def test_registry_geometry_and_decoders_are_cached_numba():
    """Every entry takes its geometry from BLOCK_SIZES, documents its layout and has a cached Numba decoder."""
    for t, qt in QTYPES.items():
        assert qt.type is t
        assert (qt.block_size, qt.type_size) == BLOCK_SIZES[t]
        assert qt.layout.startswith(t.name + ":"), t.name
        assert isinstance(qt.decode, numba.core.registry.CPUDispatcher), t.name
        assert type(qt.decode._cache).__name__ != "NullCache", f"{t.name} decoder lacks cache=True"
        assert qt.encode is None or callable(qt.encode)


def test_every_issue_type_is_registered():
    """All types the engine must read have a decoder."""
    for name in FIXTURE_TYPES + ["F32"]:
        assert GGMLType[name] in QTYPES


@pytest.mark.parametrize("bad", ["Q9_9", 99, 4])
def test_unknown_type_raises_clear_error(bad):
    """Unknown type names/ids raise ValueError naming the type."""
    with pytest.raises(ValueError, match=str(bad)):
        get_qtype(bad)
    with pytest.raises(ValueError, match=str(bad)):
        dequantize(np.zeros(18, np.uint8), bad, (32,))


def test_bad_sizes_raise_clear_errors():
    """A byte count that does not match the shape, or a row that is not whole blocks, is a ValueError."""
    with pytest.raises(ValueError, match=r"Q4_0: shape \(2, 32\) needs 36 bytes.*got 18"):
        dequantize(np.zeros(18, np.uint8), "Q4_0", (2, 32))
    with pytest.raises(ValueError, match="Q4_K: row length 128"):
        dequantize(np.zeros(144, np.uint8), "Q4_K", (2, 128))
    decode = QTYPES[GGMLType.Q4_K].decode          # the raw decoder guards its unchecked loops
    with pytest.raises(ValueError, match="destination size"):
        decode(ro(np.zeros(144, np.uint8)), np.empty(512, np.float32))
    with pytest.raises(ValueError, match="whole number of blocks"):
        decode(ro(np.zeros(145, np.uint8)), np.empty(256, np.float32))


def test_input_forms():
    """Type as enum/id/name, shape as int or tuple, 2-D raw rows and typed F32/F16 arrays are accepted."""
    blocks = random_blocks("Q8_0", 6, seed=1)
    want = oracle(blocks, GGMLType.Q8_0, (6 * 32,))
    for t in (GGMLType.Q8_0, 8, "q8_0"):
        assert_bits_equal(dequantize(blocks, t, 192), want, f"Q8_0 given as {t!r}")
    assert dequantize(blocks, "Q8_0", (3, 64)).shape == (3, 64)
    x = np.random.default_rng(2).standard_normal((4, 8)).astype(np.float32)
    assert_bits_equal(dequantize(x, "F32", x.shape), x, "typed F32")
    assert_bits_equal(dequantize(x.astype(np.float16), "F16", x.shape), x.astype(np.float16), "typed F16")
    out = dequantize(x, "F32", x.shape)
    assert out.dtype == np.float32 and not np.shares_memory(out, x)


# --------------------------------------------------------------------------- tables

@pytest.mark.parametrize("name,ours", [
    ("IQ2_XXS", "iq2xxs_grid_u8"), ("IQ2_XS", "iq2xs_grid_u8"), ("IQ2_S", "iq2s_grid_u8"),
    ("IQ3_XXS", "iq3xxs_grid_u8"), ("IQ3_S", "iq3s_grid_u8"), ("IQ1_S", "iq1s_grid_i8")])
def test_grid_tables_match_gguf_package(name, ours):
    """Every entry of each lattice grid equals the gguf package's independent copy (exact)."""
    cls = getattr(gq, name)
    cls.init_grid()
    theirs = cls.grid.reshape(cls.grid_shape)
    np.testing.assert_array_equal(getattr(tabs, ours).astype(np.float32), theirs)


def test_value_tables_match_gguf_package():
    """Sign table, IQ4_NL and E2M1 value tables equal the gguf package's (exact)."""
    np.testing.assert_array_equal(tabs.ksigns_iq2xs, np.frombuffer(gq.IQ2_XXS.ksigns, dtype=np.uint8))
    np.testing.assert_array_equal(tabs.kvalues_iq4nl, np.array(gq.IQ4_NL.kvalues, dtype=np.int8))
    np.testing.assert_array_equal(tabs.kvalues_mxfp4, np.array(gq.MXFP4.kvalues, dtype=np.int8))
    np.testing.assert_array_equal(tabs.kmask_iq2xs, 1 << np.arange(8))


# --------------------------------------------------------------------------- llama.cpp fixtures

def test_fixture_directory_is_fully_covered():
    """Each quant_blocks fixture file is one of the types checked below."""
    have = sorted(p.stem for p in fixture_path("quant_blocks").glob("*.npz"))
    assert sorted(FIXTURE_TYPES) == have


@pytest.mark.parametrize("name", FIXTURE_TYPES)
def test_llamacpp_blocks_bit_exact(name):
    """deq == dequantize(q) and deq_im == dequantize(q_im), as ggml computed them (exact bits)."""
    z = np.load(fixture_path("quant_blocks", f"{name}.npz"))
    pairs = [(q, d) for q, d in (("q", "deq"), ("q_im", "deq_im")) if q in z]
    assert pairs, name
    for q, d in pairs:
        assert_bits_equal(dequantize(z[q], name, z[d].shape), z[d], f"{name} {q}")


# --------------------------------------------------------------------------- random blocks vs gguf

@pytest.mark.parametrize("name", sorted(FP16_FIELDS))
def test_random_blocks_match_gguf(name):
    """Random blocks (finite fp16 scales, all other bits random) decode exactly as the gguf package does."""
    blocks = random_blocks(name, 512, seed=zlib.crc32(name.encode()))
    bs = BLOCK_SIZES[GGMLType[name]][0]
    shape = (8, 64 * bs)
    got = dequantize(blocks, name, shape)
    assert np.isfinite(got).all()
    assert_bits_equal(got, oracle(blocks, GGMLType[name], shape), f"random {name}")


def test_random_plain_types_match_gguf():
    """F16 (all 65536 bit patterns), BF16 and F32 random values decode exactly."""
    rng = np.random.default_rng(3)
    h = np.arange(1 << 16, dtype=np.uint16)
    assert_bits_equal(dequantize(h.view(np.uint8), "F16", h.shape), oracle(h, GGMLType.F16, h.shape), "F16")
    b = rng.integers(0, 1 << 16, 4096, dtype=np.uint16)
    assert_bits_equal(dequantize(b, "BF16", b.shape), oracle(b, GGMLType.BF16, b.shape), "BF16")
    f = rng.integers(0, 1 << 32, 4096, dtype=np.uint32)
    assert_bits_equal(dequantize(f.view(np.uint8), "F32", f.shape), f.view(np.float32), "F32")


def test_parallel_split_matches_serial_decoder():
    """A tensor big enough to be split over threads decodes exactly as one serial decoder call,
    including an odd number of blocks per thread."""
    for name in ("Q4_K", "Q8_0"):
        qt = QTYPES[GGMLType[name]]
        n_blocks = (1 << 19) // qt.block_size + 7
        blocks = random_blocks(name, n_blocks, seed=5)
        serial = np.empty(n_blocks * qt.block_size, np.float32)
        qt.decode(ro(blocks), serial)
        for threads in (1, 2, min(3, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(threads)
            try:
                got = dequantize(blocks, name, serial.shape)
            finally:
                numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
            assert_bits_equal(got, serial, f"{name} on {threads} threads")


# --------------------------------------------------------------------------- types without an oracle

def _fp16_scales(blocks, off=0):
    """(n_blocks, 1) float32 of the fp16 field at byte `off` of each block."""
    return blocks[:, off:off + 2].copy().view(np.float16).astype(np.float32)


def test_small_formats_without_oracle():
    """Q1_0, Q2_0, Q8_1, Q8_K, I8..I64 and F64 against direct numpy readings of their layouts (exact)."""
    rng = np.random.default_rng(7)
    # Q1_0: bit j of the 16 bytes -> +d / -d
    b = random_blocks("Q8_0", 4, 8)[:, :18].copy()
    bits = np.unpackbits(b[:, 2:], axis=1, bitorder="little").astype(bool)
    d = _fp16_scales(b)
    assert_bits_equal(dequantize(b, "Q1_0", (4 * 128,)), np.where(bits, d, -d), "Q1_0")
    # Q2_0: 2-bit codes -1..2 times d
    q = (b[:, 2:, None] >> np.array([0, 2, 4, 6], np.uint8)) & 3
    want = (q.reshape(4, 64).astype(np.int32) - 1).astype(np.float32) * d
    assert_bits_equal(dequantize(b, "Q2_0", (4 * 64,)), want, "Q2_0")
    # Q8_1: d, s (unused), 32 int8
    b = rng.integers(0, 256, (4, 36), dtype=np.uint8)
    b[:, :2] = finite_fp16(rng, 4).view(np.uint8).reshape(4, 2)
    want = b[:, 4:].view(np.int8).astype(np.float32) * _fp16_scales(b)
    assert_bits_equal(dequantize(b, "Q8_1", (128,)), want, "Q8_1")
    # Q8_K: float32 d, 256 int8, 16 int16 sums (unused)
    b = rng.integers(0, 256, (3, 292), dtype=np.uint8)
    b[:, :4] = rng.standard_normal(3).astype(np.float32).view(np.uint8).reshape(3, 4)
    want = b[:, :4].copy().view(np.float32) * b[:, 4:260].view(np.int8).astype(np.float32)
    assert_bits_equal(dequantize(b, "Q8_K", (768,)), want, "Q8_K")
    # plain integer and float64 types: converted value by value
    for name, dt in (("I8", np.int8), ("I16", np.int16), ("I32", np.int32), ("I64", np.int64),
                     ("F64", np.float64)):
        raw = rng.integers(0, 256, 8 * 64, dtype=np.uint8)
        with np.errstate(over="ignore"):
            want = raw.view(dt).astype(np.float32)
        assert_bits_equal(dequantize(raw, name, want.shape), want, name)
        qt = QTYPES[GGMLType[name]]
        out = np.empty(want.size, np.float32)
        qt.decode(ro(raw), out)                  # the Numba decoder agrees with numpy's conversion
        assert_bits_equal(out, want, f"{name} decoder")


def test_numba_float_decoders_match_numpy():
    """The Numba F32/F16/BF16 decoders (used by kernels that bypass numpy) are exact, NaNs included."""
    h = np.arange(1 << 16, dtype=np.uint16)
    for name, want in (("F16", h.view(np.float16).astype(np.float32)),
                       ("BF16", (h.astype(np.uint32) << 16).view(np.float32))):
        out = np.empty(h.size, np.float32)
        QTYPES[GGMLType[name]].decode(ro(h), out)
        assert_bits_equal(out, want, f"{name} decoder")
        # NaN payloads too: the bit pattern is built exactly
        nan = np.isnan(want)
        np.testing.assert_array_equal(out.view(np.uint32)[nan] & 0x7FFFFFFF,
                                      want.view(np.uint32)[nan] & 0x7FFFFFFF)
    f = np.random.default_rng(9).integers(0, 1 << 32, 1024, dtype=np.uint32)
    out = np.empty(f.size, np.float32)
    QTYPES[GGMLType.F32].decode(ro(f), out)
    np.testing.assert_array_equal(out.view(np.uint32), f)


# --------------------------------------------------------------------------- model files vs gguf

def _model_files() -> list[Path]:
    root = fixture_path("models")
    return sorted(root.glob("*.gguf")) + sorted((root / "q").glob("*.gguf"))


def _check_model(path: Path, cap: int | None) -> set[str]:
    """Compare every tensor of a model (at most `cap` elements of each, first and last rows) to the oracle."""
    seen = set()
    with GGUFReader(path) as r:
        for t in r.tensors.values():
            shape = tuple(t.shape)
            raw = t.raw
            rows = t.n_elements // shape[-1]
            per_row = raw.size // rows
            if cap is not None and t.n_elements > cap:
                k = max(1, cap // shape[-1] // 2)
                raw2 = raw.reshape(rows, per_row)
                raw = np.concatenate([raw2[:k], raw2[-k:]])
                shape = (2 * k, shape[-1])
            got = dequantize(raw, t.type, shape)
            assert_bits_equal(got, oracle(raw, t.type, shape), f"{path.name}:{t.name} ({t.type.name})")
            seen.add(t.type.name)
    return seen


def test_fixture_models_match_gguf():
    """Every tensor of every fixture model (F32, F16 and all llama-quantize outputs) decodes exactly."""
    files = _model_files()
    assert len(files) >= 30
    seen = set()
    for p in files:
        seen |= _check_model(p, cap=None)
    assert {"Q4_0", "Q4_K", "Q6_K", "IQ1_S", "IQ2_XXS", "IQ3_S", "IQ4_XS", "TQ1_0", "F16"} <= seen


def test_real_models_match_gguf(smollm2_path, gemma3_path):
    """Every tensor of the two real models decodes exactly (first/last rows of each, capped);
    the token embedding of SmolLM2 is compared whole (threaded path)."""
    assert {"Q4_1", "Q8_0", "F32"} <= _check_model(smollm2_path, cap=REAL_MODEL_CAP)
    assert {"Q5_0", "Q4_K", "Q6_K", "Q8_0", "F32"} <= _check_model(gemma3_path, cap=REAL_MODEL_CAP)
    with GGUFReader(smollm2_path) as r:
        t = r.tensor("token_embd.weight")
        assert_bits_equal(dequantize(t.raw, t.type, t.shape), oracle(t.raw, t.type, t.shape),
                          "smollm2 token_embd.weight")
