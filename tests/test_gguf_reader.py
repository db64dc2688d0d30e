"""GGUF reader: real files, the `gguf` package as an oracle, every validation error, >4 GiB offsets."""
from __future__ import annotations

import re
import struct
import time
from pathlib import Path

import numpy as np
import pytest

from gguf_engine import GGUFError, GGUFReader
from gguf_engine.gguf import GGUFValueType, StringArray
from kernels.types import GGMLType
from tests.conftest import fixture_path

VT = GGUFValueType


# -- a hand-made GGUF builder, independent of the project's writer --------------------------

def s(text: str | bytes) -> bytes:
    b = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(b)) + b


def kv(key: str | bytes, vtype: int, payload: bytes) -> bytes:
    return s(key) + struct.pack("<I", vtype) + payload


def tinfo(name: str, ne: tuple[int, ...], ttype: int, offset: int, n_dims: int | None = None) -> bytes:
    n_dims = len(ne) if n_dims is None else n_dims
    return s(name) + struct.pack("<I", n_dims) + struct.pack(f"<{len(ne)}Q", *ne) + struct.pack("<IQ", ttype, offset)


def gguf(kvs: list[bytes] = (), infos: list[bytes] = (), data: bytes = b"", version: int = 3,
         n_kv: int | None = None, n_tensors: int | None = None, align: int = 32) -> bytes:
    head = b"GGUF" + struct.pack("<IQQ", version, len(infos) if n_tensors is None else n_tensors,
                                 len(kvs) if n_kv is None else n_kv)
    head += b"".join(kvs) + b"".join(infos)
    if infos:
        head += b"\0" * ((-len(head)) % align)
    return head + data


def write(tmp_path: Path, data: bytes, name: str = "t.gguf") -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def expect_error(path: Path, pattern: str, offset: int | None) -> str:
    """Opening path raises GGUFError naming the file, matching pattern, at the given byte offset."""
    with pytest.raises(GGUFError) as ei:
        GGUFReader(path)
    msg = str(ei.value)
    assert str(path) in msg, msg
    assert re.search(pattern, msg), msg
    if offset is not None:
        assert msg.endswith(f"(offset {offset})"), msg
    return msg


# -- real models ---------------------------------------------------------------------------

def _best_open_time(path: Path, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        GGUFReader(path).close()
        best = min(best, time.perf_counter() - t)
    return best


def test_open_time_smollm2_under_0_1s(smollm2_path):
    """Opening SmolLM2 (98 MB, 49k vocab + 49k merges) reads only the header: best of 3 < 0.1 s."""
    assert _best_open_time(smollm2_path) < 0.1


def test_open_time_gemma3_under_0_3s(gemma3_path):
    """Opening Gemma 3 (262k-token vocabulary) decodes strings lazily: best of 3 < 0.3 s."""
    assert _best_open_time(gemma3_path) < 0.3


def test_smollm2_contents(smollm2_path):
    """SmolLM2: 272 tensors (210 Q4_1), typed metadata, {arch}. keys, zero-copy tensor views (exact)."""
    with GGUFReader(smollm2_path) as r:
        assert r.version == 3 and r.architecture == "llama"
        assert len(r.tensors) == 272
        assert sum(t.type == GGMLType.Q4_1 for t in r.tensors.values()) == 210
        assert r.metadata["llama.block_count"] == 30 and r.value_types["llama.block_count"] == VT.UINT32
        assert r.require("{arch}.embedding_length") == 576
        assert r.get("{arch}.no_such_key", 7) == 7
        with pytest.raises(GGUFError, match="missing metadata key 'llama.no_such_key'"):
            r.require("{arch}.no_such_key")
        tokens = r.metadata["tokenizer.ggml.tokens"]
        assert len(tokens) == 49152 and tokens[0] == "<|endoftext|>"
        assert r.array_types["tokenizer.ggml.tokens"] == VT.STRING
        assert r.type_spec("tokenizer.ggml.token_type") == (VT.ARRAY, VT.INT32)
        q = r.tensor("blk.0.attn_q.weight")
        assert q.type == GGMLType.Q4_1 and q.shape == (576, 576) and q.n_bytes == 576 * 576 // 32 * 20
        assert np.shares_memory(q.data, r.tensor("blk.0.attn_k.weight").raw.base)  # a view of the map
        assert q.data.base is not None and not q.data.flags.owndata
        norm = r.tensor("output_norm.weight")
        assert norm.data.dtype == np.float32 and norm.data.shape == (576,)
        with pytest.raises(GGUFError, match="no tensor named"):
            r.tensor("nope")


def test_gemma3_contents(gemma3_path):
    """Gemma 3: 236 tensors of Q5_0/Q4_K/Q6_K/Q8_0/F32, 262144 tokens readable lazily (exact)."""
    with GGUFReader(gemma3_path) as r:
        assert len(r.tensors) == 236
        assert {t.type.name for t in r.tensors.values()} == {"Q5_0", "Q4_K", "Q6_K", "Q8_0", "F32"}
        toks = r.metadata["tokenizer.ggml.tokens"]
        assert isinstance(toks, StringArray) and len(toks) == 262144
        assert toks[2] == "<bos>" and toks[-1] == toks.tolist()[-1]
        assert r.metadata["tokenizer.ggml.scores"].dtype == np.float32


def test_string_array_behaves_like_a_list(smollm2_path):
    """A lazy string array supports len, indexing, negative indices, slices, iteration and == list."""
    with GGUFReader(smollm2_path) as r:
        merges = r.metadata["tokenizer.ggml.merges"]
        full = list(merges)
        assert len(full) == len(merges) == 48900
        assert merges[-1] == full[-1] and merges[100] == full[100]
        assert merges[10:20] == full[10:20] and merges[::-7] == full[::-7]
        assert merges == full and full == merges and merges != full[:-1]
        assert full[5] in merges
        with pytest.raises(IndexError):
            merges[48900]
        assert merges.raw(0) == full[0].encode()


# -- the gguf package as an oracle ------------------------------------------------------------

def _oracle_value(field):
    return field.contents()


def _oracle_files() -> list[Path]:
    """Every model fixture (all tensor types) and one vocabulary file.  The other vocabulary files
    take the `gguf` package tens of seconds each; they are covered byte for byte by the writer's
    round-trip test instead."""
    return sorted(fixture_path("models").rglob("*.gguf")) + [fixture_path("vocab", "ggml-vocab-phi-3.gguf")]


def test_reads_like_the_gguf_package(smollm2_path):
    """Model fixtures, a vocabulary file and SmolLM2: metadata values/types and tensor
    names/types/shapes/bytes equal what the `gguf` package reads (exact)."""
    import gguf
    files = _oracle_files() + [smollm2_path]
    assert len(files) >= 39
    for f in files:
        ref = gguf.GGUFReader(f)
        with GGUFReader(f) as r:
            ref_keys = [k for k in ref.fields if not k.startswith("GGUF.")]
            assert ref_keys == list(r.metadata), f
            for k in ref_keys:
                field = ref.fields[k]
                assert int(field.types[0]) == r.value_types[k], (f, k)
                mine = r.metadata[k]
                want = _oracle_value(field)
                if isinstance(mine, np.ndarray):
                    assert int(field.types[1]) == r.array_types[k]
                    np.testing.assert_array_equal(mine, np.asarray(want))
                elif isinstance(mine, StringArray):
                    assert mine == list(want), (f, k)
                elif isinstance(mine, float):
                    assert mine == pytest.approx(float(want), rel=0, abs=0), (f, k)
                else:
                    assert mine == want, (f, k)
            assert [t.name for t in ref.tensors] == list(r.tensors), f
            for t in ref.tensors:
                mt = r.tensors[t.name]
                assert int(t.tensor_type) == mt.type
                assert tuple(int(d) for d in reversed(t.shape)) == mt.shape
                assert int(t.n_bytes) == mt.n_bytes and int(t.data_offset) == mt.offset
                assert np.array_equal(np.asarray(t.data).view(np.uint8).reshape(-1), mt.raw)


# -- formats and value types -------------------------------------------------------------------

def _every_type_kvs() -> list[bytes]:
    return [
        kv("u8", VT.UINT8, b"\xff"), kv("i8", VT.INT8, b"\x80"),
        kv("u16", VT.UINT16, struct.pack("<H", 65535)), kv("i16", VT.INT16, struct.pack("<h", -32768)),
        kv("u32", VT.UINT32, struct.pack("<I", 2**32 - 1)), kv("i32", VT.INT32, struct.pack("<i", -2**31)),
        kv("f32", VT.FLOAT32, struct.pack("<f", 1.5)), kv("b", VT.BOOL, b"\x01"),
        kv("str", VT.STRING, s("héllo")), kv("u64", VT.UINT64, struct.pack("<Q", 2**64 - 1)),
        kv("i64", VT.INT64, struct.pack("<q", -2**63)), kv("f64", VT.FLOAT64, struct.pack("<d", 0.1)),
        kv("arr_u16", VT.ARRAY, struct.pack("<IQ", VT.UINT16, 3) + struct.pack("<3H", 1, 2, 3)),
        kv("arr_bool", VT.ARRAY, struct.pack("<IQ", VT.BOOL, 2) + b"\x01\x00"),
        kv("arr_str", VT.ARRAY, struct.pack("<IQ", VT.STRING, 2) + s("a") + s("")),
        kv("arr_empty", VT.ARRAY, struct.pack("<IQ", VT.FLOAT64, 0)),
        kv("nested", VT.ARRAY, struct.pack("<IQ", VT.ARRAY, 2)
           + struct.pack("<IQ", VT.INT32, 2) + struct.pack("<2i", -1, 7)
           + struct.pack("<IQ", VT.STRING, 1) + s("x")),
    ]


@pytest.mark.parametrize("version", [2, 3])
def test_every_value_type_and_versions(tmp_path, version):
    """GGUF v2 and v3: every scalar width, f32/f64, bool, string, arrays, string arrays, nested arrays (exact)."""
    data = np.arange(8, dtype=np.float32)
    p = write(tmp_path, gguf(_every_type_kvs(), [tinfo("x", (8,), GGMLType.F32, 0)], data.tobytes(),
                             version=version))
    with GGUFReader(p) as r:
        m = r.metadata
        assert r.version == version
        assert (m["u8"], m["i8"], m["u16"], m["i16"]) == (255, -128, 65535, -32768)
        assert (m["u32"], m["i32"], m["u64"], m["i64"]) == (2**32 - 1, -2**31, 2**64 - 1, -2**63)
        assert m["f32"] == 1.5 and m["f64"] == 0.1 and m["b"] is True and m["str"] == "héllo"
        assert m["arr_u16"].dtype == np.uint16 and m["arr_u16"].tolist() == [1, 2, 3]
        assert m["arr_bool"].dtype == bool and m["arr_bool"].tolist() == [True, False]
        assert m["arr_str"] == ["a", ""] and m["arr_empty"].dtype == np.float64 and len(m["arr_empty"]) == 0
        assert m["nested"][0].tolist() == [-1, 7] and m["nested"][1] == ["x"]
        assert r.type_spec("nested") == (VT.ARRAY, [(VT.ARRAY, VT.INT32), (VT.ARRAY, VT.STRING)])
        assert r.value_types["u64"] == VT.UINT64 and r.value_types["f64"] == VT.FLOAT64
        np.testing.assert_array_equal(r.tensor("x").data, data)


def test_alignment_key_is_honoured(tmp_path):
    """general.alignment = 64 moves the data section to a multiple of 64 (exact)."""
    kvs = [kv("general.alignment", VT.UINT32, struct.pack("<I", 64))]
    data = np.arange(16, dtype=np.float32)
    p = write(tmp_path, gguf(kvs, [tinfo("x", (16,), GGMLType.F32, 0)], data.tobytes(), align=64))
    with GGUFReader(p) as r:
        assert r.alignment == 64 and r.data_offset % 64 == 0
        np.testing.assert_array_equal(r.tensor("x").data, data)


def test_offsets_beyond_4gib_sparse_file(tmp_path):
    """A sparse 4.3 GB file: a tensor whose data starts past 4 GiB is read at the right place (exact)."""
    big = 2**32 + 64                                  # I8 elements of a filler tensor, never written
    x = np.arange(32, dtype=np.float32)
    head = gguf([], [tinfo("filler", (big,), GGMLType.I8, 0), tinfo("x", (32,), GGMLType.F32, big)])
    p = tmp_path / "big.gguf"
    with open(p, "wb") as f:
        f.write(head)
        f.seek(len(head) + big)
        f.write(x.tobytes())
    assert p.stat().st_size > 2**32
    with GGUFReader(p) as r:
        assert r.tensor("filler").n_bytes == big
        t = r.tensor("x")
        assert t.offset == len(head) + big > 2**32
        np.testing.assert_array_equal(t.data, x)


# -- validation: each malformation raises GGUFError naming file, problem and offset ---------------

def test_rejects_empty_file_and_bad_magic(tmp_path):
    """Empty file and bad magic: offset 0."""
    expect_error(write(tmp_path, b""), "empty file", 0)
    expect_error(write(tmp_path, b"GGML" + bytes(20)), "bad magic", 0)
    expect_error(write(tmp_path, b"GG"), "magic needs 4 bytes", 0)


def test_rejects_unsupported_version_and_big_endian(tmp_path):
    """Version 1 and 4 are unsupported; a byte-swapped version is reported as big-endian (offset 4)."""
    expect_error(write(tmp_path, gguf(version=1)), "unsupported GGUF version 1", 4)
    expect_error(write(tmp_path, gguf(version=4)), "unsupported GGUF version 4", 4)
    be = b"GGUF" + struct.pack(">IQQ", 3, 0, 0)
    expect_error(write(tmp_path, be), "big-endian", 4)


def test_rejects_counts_that_cannot_fit(tmp_path):
    """Tensor and metadata counts, string lengths and array lengths larger than the file."""
    expect_error(write(tmp_path, gguf(n_kv=2**40)), "metadata count 1099511627776 cannot fit", 16)
    expect_error(write(tmp_path, gguf(n_tensors=2**63)), "tensor count .* cannot fit", 8)
    bad_key = struct.pack("<Q", 2**62) + b"abc"
    expect_error(write(tmp_path, gguf([bad_key + bytes(16)])), r"metadata key of length \d+ needs", 32)
    bad_str = kv("k", VT.STRING, struct.pack("<Q", 10**12) + b"x")
    expect_error(write(tmp_path, gguf([bad_str])), "string value of length 1000000000000", 45)
    bad_arr = kv("k", VT.ARRAY, struct.pack("<IQ", VT.UINT64, 2**61))
    expect_error(write(tmp_path, gguf([bad_arr])), "array of 2305843009213693952 UINT64", 49)
    bad_sarr = kv("k", VT.ARRAY, struct.pack("<IQ", VT.STRING, 3) + s("a") + s("b"))
    expect_error(write(tmp_path, gguf([bad_sarr])), "array of 3 strings needs 24 bytes", 49)
    long_elem = kv("k", VT.ARRAY, struct.pack("<IQ", VT.STRING, 2) + s("a") + struct.pack("<Q", 99) + b"xyz")
    expect_error(write(tmp_path, gguf([long_elem])), "string 1 of 2 has length 99", 58)
    bad_nested = kv("k", VT.ARRAY, struct.pack("<IQ", VT.ARRAY, 10**9))
    expect_error(write(tmp_path, gguf([bad_nested])), "array of 1000000000 arrays", 49)


def test_rejects_unknown_value_and_tensor_types(tmp_path):
    """Unknown metadata value type, array element type and tensor type (retired id 4)."""
    expect_error(write(tmp_path, gguf([kv("k", 13, b"\0")])), "key 'k': unknown value type 13", 33)
    expect_error(write(tmp_path, gguf([kv("k", VT.ARRAY, struct.pack("<IQ", 99, 0))])),
                 "array element: unknown value type 99", 37)
    p = write(tmp_path, gguf([], [tinfo("w", (32,), 4, 0)], bytes(64)))
    expect_error(p, "tensor 'w': unknown tensor type 4", 24 + 9 + 4 + 8)


def test_rejects_duplicates(tmp_path):
    """Duplicate metadata keys and tensor names, at the second occurrence."""
    k = kv("dup", VT.UINT8, b"\1")
    expect_error(write(tmp_path, gguf([k, k])), "duplicate metadata key 'dup'", 24 + len(k))
    t0 = tinfo("w", (8,), GGMLType.F32, 0)
    t1 = tinfo("w", (8,), GGMLType.F32, 32)
    expect_error(write(tmp_path, gguf([], [t0, t1], bytes(64))), "duplicate tensor name 'w'", 24 + len(t0))


def test_rejects_bad_alignment(tmp_path):
    """general.alignment of 48, 0, or not an integer: not a power of two, at the value's offset."""
    for payload, vtype in ((struct.pack("<I", 48), VT.UINT32), (struct.pack("<I", 0), VT.UINT32),
                           (struct.pack("<f", 32.0), VT.FLOAT32)):
        kvs = [kv("general.alignment", vtype, payload)]
        expect_error(write(tmp_path, gguf(kvs)), "general.alignment .* not a power of two", 24 + 8 + 17 + 4)


def test_rejects_bad_dims(tmp_path):
    """n_dims 0 or 5, dimension products that overflow, row length not a multiple of the block size."""
    expect_error(write(tmp_path, gguf([], [tinfo("w", (), GGMLType.F32, 0, n_dims=0)], bytes(64))),
                 "n_dims 0 outside 1..4", 24 + 9)
    expect_error(write(tmp_path, gguf([], [tinfo("w", (1,) * 5, GGMLType.F32, 0)], bytes(64))),
                 "n_dims 5 outside 1..4", 24 + 9)
    expect_error(write(tmp_path, gguf([], [tinfo("w", (2**40, 2**40), GGMLType.F32, 0)], bytes(64))),
                 "dimensions .* overflow", 24 + 9 + 4)
    # a zero dimension makes the product 0: each dimension is checked on its own too
    expect_error(write(tmp_path, gguf([], [tinfo("w", (0, 2**64 - 1), GGMLType.F32, 0)], bytes(64))),
                 r"dimension 18446744073709551615 of \[0, 18446744073709551615\] is out of range", 24 + 9 + 4)
    expect_error(write(tmp_path, gguf([], [tinfo("w", (30, 2), GGMLType.Q4_0, 0)], bytes(64))),
                 "row length 30 is not a multiple of the Q4_0 block size 32", 24 + 9 + 4)


def test_rejects_bad_tensor_data_placement(tmp_path):
    """Data outside the file, misaligned, or overlapping another tensor."""
    t = tinfo("w", (64,), GGMLType.F32, 0)
    expect_error(write(tmp_path, gguf([], [t], bytes(100))), r"tensor 'w': data \[\d+, \d+\) lies outside", 24)
    t = tinfo("w", (8,), GGMLType.F32, 4)
    expect_error(write(tmp_path, gguf([], [t], bytes(64))), "data offset 4 is not a multiple of the alignment 32", 24)
    a = tinfo("a", (16,), GGMLType.F32, 0)
    b = tinfo("b", (16,), GGMLType.F32, 32)
    expect_error(write(tmp_path, gguf([], [a, b], bytes(128))), "tensor 'b' data .* overlaps tensor 'a'", 24 + len(a))


def test_rejects_invalid_utf8_and_deep_nesting(tmp_path):
    """A key that is not UTF-8, a lazily decoded string element that is not UTF-8, arrays nested too deep."""
    expect_error(write(tmp_path, gguf([kv(b"\xff\xfe", VT.UINT8, b"\0")])), "metadata key is not valid UTF-8", 32)
    p = write(tmp_path, gguf([kv("k", VT.ARRAY, struct.pack("<IQ", VT.STRING, 2) + s("ok") + s(b"\xc3"))]))
    with GGUFReader(p) as r:                       # opening only walks the lengths
        arr = r.metadata["k"]
        assert arr[0] == "ok"
        with pytest.raises(GGUFError, match=r"key 'k' element 1 is not valid UTF-8 \(offset 67\)"):
            arr[1]
        with pytest.raises(GGUFError, match="element 1 is not valid UTF-8"):
            list(arr)
    nested = struct.pack("<IQ", VT.ARRAY, 1) * 12 + struct.pack("<IQ", VT.UINT8, 0)
    expect_error(write(tmp_path, gguf([kv("k", VT.ARRAY, nested)])), "nested deeper than 8", None)


def test_rejects_millions_of_nested_arrays(tmp_path):
    """2 M empty arrays inside an array (24 MB) are refused after MAX_NESTED_ARRAYS, quickly and
    without building millions of objects; a file with fewer opens."""
    from gguf_engine.gguf.reader import MAX_NESTED_ARRAYS

    n = 2_000_000
    many = kv("k", VT.ARRAY, struct.pack("<IQ", VT.ARRAY, n) + struct.pack("<IQ", VT.UINT8, 0) * n)
    expect_error(write(tmp_path, gguf([many])), f"more than {MAX_NESTED_ARRAYS} arrays nested in arrays", None)
    ok = kv("k", VT.ARRAY, struct.pack("<IQ", VT.ARRAY, 100) + struct.pack("<IQ", VT.UINT8, 0) * 100)
    with GGUFReader(write(tmp_path, gguf([ok]))) as r:
        assert len(r.metadata["k"]) == 100


def test_rejects_truncated_tensor_infos(tmp_path):
    """A file cut inside a tensor info names the missing field."""
    pad = kv("pad", VT.STRING, s("x" * 64))
    full = gguf([pad], [tinfo("w", (8,), GGMLType.F32, 0)], bytes(32))
    cut = 24 + len(pad) + 9 + 4
    expect_error(write(tmp_path, full[:cut + 3]), "tensor 'w' dims needs 8 bytes but only 3 remain", cut)


def test_missing_file_is_a_gguf_error(tmp_path):
    """A missing file raises GGUFError naming it."""
    with pytest.raises(GGUFError, match="cannot open"):
        GGUFReader(tmp_path / "nope.gguf")


def test_released_pages_read_back_the_same(smollm2_path):
    """release_rows / release_pages drop file pages only: the tensors read the same bytes afterwards."""
    with GGUFReader(smollm2_path) as r:
        t = r.tensors["token_embd.weight"]
        before = np.array(t.raw)
        r.release_rows(t, 100, t.shape[0] - 7)
        assert np.array_equal(np.asarray(t.raw), before)
        r.release_pages()
        assert np.array_equal(np.asarray(t.raw), before)
