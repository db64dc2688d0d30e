"""GGUF writer: round trips, explicit types, the `gguf` package both ways, streaming, atomicity."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from gguf_engine import GGUFError, GGUFReader, GGUFWriter
from gguf_engine.gguf import GGUFValueType, StringArray
from kernels.types import GGMLType, row_bytes
from tests.conftest import fixture_path

VT = GGUFValueType


def copy_file(src: Path, dst: Path) -> None:
    """read -> write with the public API: metadata with its stored types, tensors streamed in order."""
    with GGUFReader(src) as r, GGUFWriter(dst) as w:
        w.copy_metadata(r)
        for t in r.tensors.values():
            w.add_tensor_info(t.name, t.shape, t.type, t.n_bytes)
        for t in r.tensors.values():
            w.write_tensor_data(t.name, t.raw)


def same_value(a, b) -> bool:
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, (list, StringArray)):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def assert_same_file_contents(a: GGUFReader, b: GGUFReader) -> None:
    assert list(a.metadata) == list(b.metadata)
    for k in a.metadata:
        assert a.type_spec(k) == b.type_spec(k), k
        assert same_value(a.metadata[k], b.metadata[k]), k
    assert list(a.tensors) == list(b.tensors)
    for name, t in a.tensors.items():
        u = b.tensors[name]
        assert (t.type, t.shape, t.n_bytes) == (u.type, u.shape, u.n_bytes), name
        assert np.array_equal(t.raw, u.raw), name


def _round_trip_files() -> list[Path]:
    files = sorted(fixture_path("models").rglob("*.gguf")) + sorted(fixture_path("vocab").glob("*.gguf"))
    assert len(files) >= 45
    return files


def test_round_trip_every_fixture_is_byte_identical(tmp_path):
    """read -> write -> read of every fixture file: identical metadata (values and types) and tensor
    bytes; and since the writer lays files out as llama.cpp does, the bytes of the file are identical."""
    out = tmp_path / "copy.gguf"
    for f in _round_trip_files():
        copy_file(f, out)
        with GGUFReader(f) as a, GGUFReader(out) as b:
            assert_same_file_contents(a, b)
        assert out.read_bytes() == f.read_bytes(), f


def test_round_trip_smollm2(smollm2_path, tmp_path):
    """SmolLM2 read -> write -> read: identical metadata and tensor bytes; identical file (exact)."""
    out = tmp_path / "smollm2.gguf"
    copy_file(smollm2_path, out)
    with GGUFReader(smollm2_path) as a, GGUFReader(out) as b:
        assert_same_file_contents(a, b)
    with open(smollm2_path, "rb") as fa, open(out, "rb") as fb:
        while True:
            x, y = fa.read(1 << 24), fb.read(1 << 24)
            assert x == y
            if not x:
                break


def _write_every_type(path: Path, version: int = 3) -> dict:
    """A file with every value type (boundary values) and tensors of several types."""
    q4k = np.random.default_rng(0).integers(0, 256, size=(2, row_bytes(GGMLType.Q4_K, 256)), dtype=np.uint8)
    with GGUFWriter(path, arch="llama", version=version) as w:
        w.add_uint8("t.u8", 255)
        w.add_int8("t.i8", -128)
        w.add_uint16("t.u16", 65535)
        w.add_int16("t.i16", -32768)
        w.add_uint32("t.u32", 2**32 - 1)
        w.add_int32("t.i32", -2**31)
        w.add_uint64("t.u64", 2**64 - 1)
        w.add_int64("t.i64", -2**63)
        w.add_float32("t.f32", 0.1)
        w.add_float64("t.f64", 0.1)
        w.add_bool("t.bool", True)
        w.add_string("t.str", "héllo wörld ✓")
        w.add_array("t.arr_i64", [1, -2, 2**62], VT.INT64)
        w.add_array("t.arr_f32", np.array([0.5, -1.0], np.float32), VT.FLOAT32)
        w.add_array("t.arr_bool", [True, False, True], VT.BOOL)
        w.add_array("t.arr_str", ["a", "", "ü"], VT.STRING)
        w.add_array("t.arr_empty", [], VT.UINT8)
        w.add_key("t.arr_u16", np.array([1, 2, 3], np.uint16), VT.ARRAY)       # element type read off the dtype
        w.add_array("t.nested", [np.array([1, 2], np.int32), np.array([3], np.int32)], (VT.ARRAY, VT.INT32))
        w.add_tensor("f32", np.arange(12, dtype=np.float32).reshape(3, 4))
        w.add_tensor("f16", np.arange(64, dtype=np.float16).reshape(2, 32))
        w.add_tensor("q4k", q4k, GGMLType.Q4_K, shape=(2, 256))
    return {"q4k": q4k}


@pytest.mark.parametrize("version", [2, 3])
def test_every_metadata_type_written_as_stated(tmp_path, version):
    """Every value type keeps its stated type and exact value (64-bit ints stay 64-bit, f64 stays f64)."""
    p = tmp_path / "types.gguf"
    src = _write_every_type(p, version)
    with GGUFReader(p) as r:
        m, t = r.metadata, r.value_types
        assert r.version == version
        assert m["general.architecture"] == "llama" and list(m)[0] == "general.architecture"
        assert (m["t.u8"], m["t.i8"], m["t.u16"], m["t.i16"]) == (255, -128, 65535, -32768)
        assert (m["t.u32"], m["t.i32"], m["t.u64"], m["t.i64"]) == (2**32 - 1, -2**31, 2**64 - 1, -2**63)
        assert t["t.u64"] == VT.UINT64 and t["t.i64"] == VT.INT64 and t["t.f64"] == VT.FLOAT64
        assert m["t.f64"] == 0.1 and m["t.f32"] == float(np.float32(0.1)) and m["t.bool"] is True
        assert m["t.str"] == "héllo wörld ✓"
        assert m["t.arr_i64"].dtype == np.int64 and m["t.arr_i64"].tolist() == [1, -2, 2**62]
        assert m["t.arr_bool"].tolist() == [True, False, True] and m["t.arr_str"] == ["a", "", "ü"]
        assert r.array_types["t.arr_empty"] == VT.UINT8 and len(m["t.arr_empty"]) == 0
        assert r.array_types["t.arr_u16"] == VT.UINT16
        assert r.type_spec("t.nested") == (VT.ARRAY, (VT.ARRAY, VT.INT32))
        assert [x.tolist() for x in m["t.nested"]] == [[1, 2], [3]]
        np.testing.assert_array_equal(r.tensor("f32").data, np.arange(12, dtype=np.float32).reshape(3, 4))
        assert r.tensor("f16").data.dtype == np.float16 and r.tensor("f16").shape == (2, 32)
        q = r.tensor("q4k")
        assert q.type == GGMLType.Q4_K and q.shape == (2, 256)
        assert np.array_equal(q.raw, src["q4k"].reshape(-1))
        assert all(t.offset % 32 == 0 for t in r.tensors.values())


def test_types_are_never_guessed(tmp_path):
    """Wrong Python types, out-of-range values and arrays without an element type are refused."""
    w = GGUFWriter(tmp_path / "x.gguf")
    with pytest.raises(ValueError, match="does not fit in UINT32"):
        w.add_uint32("k", 2**32)
    with pytest.raises(ValueError, match="does not fit in INT8"):
        w.add_int8("k", 128)
    with pytest.raises(TypeError):
        w.add_uint32("k", 1.5)
    with pytest.raises(TypeError):
        w.add_bool("k", 1)
    with pytest.raises(TypeError):
        w.add_string("k", b"bytes")
    with pytest.raises(TypeError, match="state the array element type"):
        w.add_key("k", [1, 2, 3], VT.ARRAY)
    with pytest.raises(ValueError, match=r"values \[-1, 1\] do not fit in UINT8"):
        w.add_array("k", np.array([-1, 1]), VT.UINT8)
    with pytest.raises(ValueError, match="power of two"):
        w.add_uint32("general.alignment", 48)
    w.add_uint8("k", 1)
    with pytest.raises(ValueError, match="duplicate metadata key"):
        w.add_uint8("k", 2)
    w.abort()
    assert not list(tmp_path.iterdir())


def test_copy_metadata_keeps_every_type(smollm2_path, tmp_path):
    """add_key(k, value, reader.type_spec(k)) and copy_metadata reproduce every stored type (exact)."""
    p = tmp_path / "meta.gguf"
    with GGUFReader(smollm2_path) as r:
        with GGUFWriter(p) as w:
            w.copy_metadata(r, skip={"general.file_type"})
            w.add_key("general.file_type", r.metadata["general.file_type"], r.value_types["general.file_type"])
            w.add_key("extra.tokens", *r.field("tokenizer.ggml.tokens"))
        with GGUFReader(p) as c:
            for k in r.metadata:
                assert c.type_spec(k) == r.type_spec(k) and same_value(c.metadata[k], r.metadata[k]), k
            assert c.metadata["extra.tokens"] == r.metadata["tokenizer.ggml.tokens"]
        q = tmp_path / "meta2.gguf"
        with GGUFWriter(q) as w:                   # the short form: element types read off the values
            for k, v in r.metadata.items():
                w.add_key(k, v, r.value_types[k])
        with GGUFReader(q) as c:
            for k in r.metadata:
                assert c.type_spec(k) == r.type_spec(k) and same_value(c.metadata[k], r.metadata[k]), k


def test_custom_alignment(tmp_path):
    """alignment=64 pads the data section and every tensor to 64 bytes; the reader honours it (exact)."""
    p = tmp_path / "a.gguf"
    with GGUFWriter(p, alignment=64) as w:
        w.add_tensor("a", np.ones(3, np.float32))
        w.add_tensor("b", np.arange(5, dtype=np.float32))
    with GGUFReader(p) as r:
        assert r.alignment == 64 and r.data_offset % 64 == 0
        assert [t.offset % 64 for t in r.tensors.values()] == [0, 0]
        np.testing.assert_array_equal(r.tensor("b").data, np.arange(5, dtype=np.float32))


def test_streaming_order_and_sizes(tmp_path):
    """Data must come in declaration order with the declared size; add_tensor callables run only
    when their turn comes (so a model is never held whole)."""
    calls = []

    def make(name, n):
        def produce():
            calls.append(name)
            return np.full(n, len(calls), np.float32)
        return produce

    p = tmp_path / "s.gguf"
    with GGUFWriter(p) as w:
        w.add_tensor("a", make("a", 4), GGMLType.F32, shape=(4,))
        w.add_tensor_info("b", (2, 32), GGMLType.Q8_0)
        w.add_tensor("c", make("c", 8), GGMLType.F32, shape=(8,))
        assert calls == []
        with pytest.raises(ValueError, match="out of order"):
            w.write_tensor_data("c", np.zeros(8, np.float32))
        assert calls == ["a"]
        with pytest.raises(ValueError, match="needs 68"):
            w.write_tensor_data("b", bytes(10))
        w.write_tensor_data("b", bytes(range(68)))
        assert calls == ["a"]
    assert calls == ["a", "c"]
    with GGUFReader(p) as r:
        assert r.tensor("a").data.tolist() == [1.0] * 4 and r.tensor("c").data.tolist() == [2.0] * 8
        assert r.tensor("b").raw.tolist() == list(range(68))
    with pytest.raises(ValueError, match="takes 68"):
        GGUFWriter(tmp_path / "n.gguf").add_tensor_info("x", (2, 32), GGMLType.Q8_0, n_bytes=64)
    with pytest.raises(ValueError, match="block size 32"):
        GGUFWriter(tmp_path / "n.gguf").add_tensor_info("x", (2, 30), GGMLType.Q8_0)


def test_atomic_on_exception_and_ctrl_c(tmp_path):
    """An exception or KeyboardInterrupt inside the with-block leaves no file, no temporary, and an
    existing target untouched; a declared tensor without data fails finish the same way."""
    target = tmp_path / "m.gguf"
    for exc in (RuntimeError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(exc)):
            with GGUFWriter(target) as w:
                w.add_tensor_info("a", (4,), GGMLType.F32)
                w.write_tensor_data("a", np.zeros(4, np.float32))   # header and data already on disk
                raise exc
        assert list(tmp_path.iterdir()) == []
    target.write_bytes(b"previous")
    with pytest.raises(ValueError, match="never written"):
        with GGUFWriter(target) as w:
            w.add_tensor_info("a", (4,), GGMLType.F32)
    assert target.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]
    with GGUFWriter(target) as w:
        w.add_tensor("a", np.ones(4, np.float32))
    assert GGUFReader(target).tensor("a").data.tolist() == [1.0] * 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]


# -- the gguf package, both ways -------------------------------------------------------------------

def test_gguf_package_reads_our_files(tmp_path):
    """Files we write (every value type; a round-tripped quantized fixture) read identically with the
    `gguf` package (exact)."""
    import gguf
    p = tmp_path / "types.gguf"
    _write_every_type(p)
    q = tmp_path / "q.gguf"
    copy_file(fixture_path("models", "q", "tiny-llama-Q4_K_M.gguf"), q)
    for path in (p, q):
        ref = gguf.GGUFReader(path)
        with GGUFReader(path) as r:
            keys = [k for k in ref.fields if not k.startswith("GGUF.")]
            assert keys == list(r.metadata)
            for k in keys:
                f = ref.fields[k]
                assert int(f.types[0]) == r.value_types[k], k
                if k == "t.nested":
                    continue  # the gguf package does not decode arrays of arrays
                want, mine = f.contents(), r.metadata[k]
                if isinstance(mine, np.ndarray):
                    if len(mine):  # the gguf package records no element type for an empty array
                        assert int(f.types[1]) == r.array_types[k]
                    np.testing.assert_array_equal(mine, np.asarray(want))
                else:
                    assert mine == want, k
            assert [t.name for t in ref.tensors] == list(r.tensors)
            for t in ref.tensors:
                mt = r.tensors[t.name]
                assert int(t.tensor_type) == mt.type and int(t.data_offset) == mt.offset
                assert tuple(int(d) for d in reversed(t.shape)) == mt.shape
                assert np.array_equal(np.asarray(t.data).view(np.uint8).reshape(-1), mt.raw)


def test_we_read_gguf_package_files(tmp_path):
    """Files the `gguf` package writes (every value type, F32/F16/quantized tensors) read identically (exact)."""
    import gguf
    p = tmp_path / "theirs.gguf"
    q8 = np.random.default_rng(1).integers(0, 256, size=(4, row_bytes(GGMLType.Q8_0, 64)), dtype=np.uint8)
    f32 = np.random.default_rng(2).standard_normal((3, 8)).astype(np.float32)
    f16 = f32.astype(np.float16)
    w = gguf.GGUFWriter(p, "llama")
    w.add_uint8("t.u8", 200)
    w.add_int16("t.i16", -300)
    w.add_uint64("t.u64", 2**63 + 5)
    w.add_int64("t.i64", -2**40)
    w.add_float64("t.f64", 1e-300)
    w.add_float32("t.f32", 3.25)
    w.add_bool("t.b", False)
    w.add_string("t.s", "ßtring")
    w.add_array("t.strs", ["x", "yy", "zzz"])
    w.add_key_value("t.u32s", [1, 2, 3], gguf.GGUFValueType.ARRAY, sub_type=gguf.GGUFValueType.UINT32)
    w.add_tensor("f32", f32)
    w.add_tensor("f16", f16)
    w.add_tensor("q8", q8, raw_shape=q8.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with GGUFReader(p) as r:
        m, t = r.metadata, r.value_types
        assert m["general.architecture"] == "llama"
        assert (m["t.u8"], m["t.i16"], m["t.u64"], m["t.i64"]) == (200, -300, 2**63 + 5, -2**40)
        assert (t["t.u8"], t["t.i16"], t["t.u64"], t["t.i64"]) == (VT.UINT8, VT.INT16, VT.UINT64, VT.INT64)
        assert m["t.f64"] == 1e-300 and t["t.f64"] == VT.FLOAT64 and m["t.f32"] == 3.25
        assert m["t.b"] is False and m["t.s"] == "ßtring" and m["t.strs"] == ["x", "yy", "zzz"]
        assert r.array_types["t.u32s"] == VT.UINT32 and m["t.u32s"].tolist() == [1, 2, 3]
        np.testing.assert_array_equal(r.tensor("f32").data, f32)
        np.testing.assert_array_equal(r.tensor("f16").data, f16)
        qt = r.tensor("q8")
        assert qt.type == GGMLType.Q8_0 and qt.shape == (4, 64) and np.array_equal(qt.raw, q8.reshape(-1))


def test_writer_refuses_reuse_after_finish(tmp_path):
    """Metadata or tensors cannot be added once the header is on disk."""
    w = GGUFWriter(tmp_path / "r.gguf")
    w.add_tensor_info("a", (4,), GGMLType.F32)
    w.write_tensor_data("a", np.zeros(4, np.float32))
    with pytest.raises(RuntimeError):
        w.add_uint8("late", 1)
    w.finish()
    with pytest.raises(RuntimeError):
        w.finish()
    assert os.path.exists(tmp_path / "r.gguf")
    assert isinstance(GGUFReader(tmp_path / "r.gguf"), GGUFReader)
    with pytest.raises(GGUFError):
        GGUFReader(tmp_path / "missing.gguf")
