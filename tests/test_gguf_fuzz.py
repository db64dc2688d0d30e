"""Fuzzing the GGUF reader with seeded mutations of real files.

Every mutated file must either open (and then yield all its metadata and tensor views) or raise
GGUFError, within a second, without another exception type and without a memory blow-up.
Mutations: truncation inside every region (fixed header, metadata, tensor infos, data), bit flips,
random values in count/length/dimension/offset fields, and swapped value/tensor type ids.
"""
from __future__ import annotations

import random
import tracemalloc
import signal
import struct
import time
from pathlib import Path

import numpy as np
import pytest

from gguf_engine import GGUFError, GGUFReader, GGUFWriter
from gguf_engine.gguf import GGUFValueType, StringArray
from kernels.types import GGMLType
from tests.conftest import fixture_path

VT = GGUFValueType
SEED = 20240601
CASES_PER_FILE = 700           # x 3 base files = 2100 cases
TIME_LIMIT_S = 1.0


# -- base files ---------------------------------------------------------------------------------

def _mini_model(dst: Path) -> None:
    """A small real model file: the full metadata (768-token vocabulary, merges) of a quantized
    fixture and a handful of its smaller tensors, one of each type."""
    src = fixture_path("models", "q", "tiny-llama-Q4_K_M.gguf")
    with GGUFReader(src) as r, GGUFWriter(dst) as w:
        w.copy_metadata(r)
        seen = set()
        for t in r.tensors.values():
            if t.type not in seen and t.n_bytes <= 64 * 1024:
                seen.add(t.type)
                w.add_tensor(t.name, t.raw, t.type, shape=t.shape)


def _every_type(dst: Path) -> None:
    """Every value type, nested arrays, and tensors of several types."""
    with GGUFWriter(dst, arch="llama", alignment=64) as w:
        for i, vt in enumerate([VT.UINT8, VT.INT8, VT.UINT16, VT.INT16, VT.UINT32, VT.INT32, VT.UINT64, VT.INT64]):
            w.add_key(f"k.int{i}", 7, vt)
        w.add_float32("k.f32", 1.5)
        w.add_float64("k.f64", 2.5)
        w.add_bool("k.bool", True)
        w.add_string("k.str", "text ✓")
        w.add_array("k.arr_f32", np.linspace(0, 1, 9, dtype=np.float32), VT.FLOAT32)
        w.add_array("k.arr_bool", [True, False], VT.BOOL)
        w.add_array("k.arr_str", [f"s{i}" for i in range(40)], VT.STRING)
        w.add_array("k.nested", [np.arange(3, dtype=np.int64), np.arange(2, dtype=np.int64)], (VT.ARRAY, VT.INT64))
        w.add_tensor("f32", np.arange(64, dtype=np.float32).reshape(2, 32))
        w.add_tensor("f16", np.ones((4, 32), np.float16))
        w.add_tensor("q8", bytes(range(68)) * 2, GGMLType.Q8_0, shape=(2, 64))
        w.add_tensor("q4k", bytes(144), GGMLType.Q4_K, shape=(1, 256))


@pytest.fixture(scope="module")
def base_files(tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("fuzz_base")
    mini, every = d / "mini.gguf", d / "every.gguf"
    _mini_model(mini)
    _every_type(every)
    return [fixture_path("models", "tiny-llama.imatrix.gguf"), mini, every]


# -- an independent walk over the file layout: where every field is -------------------------------

def layout(b: bytes) -> tuple[list[tuple[int, int, str]], dict[str, tuple[int, int]]]:
    """(fields as (offset, size, kind), regions as name -> [start, end)) of a valid file."""
    fields: list[tuple[int, int, str]] = [(8, 8, "count"), (16, 8, "count")]
    u32 = lambda o: struct.unpack_from("<I", b, o)[0]  # noqa: E731
    u64 = lambda o: struct.unpack_from("<Q", b, o)[0]  # noqa: E731
    n_tensors, n_kv = u64(8), u64(16)
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

    def value(o: int, vt: int) -> int:
        if vt == VT.STRING:
            fields.append((o, 8, "length"))
            return o + 8 + u64(o)
        if vt == VT.ARRAY:
            et, n = u32(o), u64(o + 4)
            fields.extend([(o, 4, "vtype"), (o + 4, 8, "count")])
            o += 12
            if et in sizes:
                return o + n * sizes[et]
            for _ in range(n):
                o = value(o, et)
            return o
        return o + sizes[vt]

    o = 24
    alignment = 32
    for _ in range(n_kv):
        fields.append((o, 8, "length"))
        key = b[o + 8:o + 8 + u64(o)].decode()
        o += 8 + u64(o)
        fields.append((o, 4, "vtype"))
        if key == "general.alignment":
            alignment = u32(o + 4)
        o = value(o + 4, u32(o))
    kv_end = o
    for _ in range(n_tensors):
        fields.append((o, 8, "length"))
        o += 8 + u64(o)
        nd = u32(o)
        fields.append((o, 4, "ndims"))
        o += 4
        fields.extend((o + 8 * i, 8, "dim") for i in range(nd))
        o += 8 * nd
        fields.extend([(o, 4, "ttype"), (o + 4, 8, "offset")])
        o += 12
    data = o + (-o) % alignment
    regions = {"fixed": (0, 24), "metadata": (24, kv_end), "tensor_infos": (kv_end, data),
               "data": (data, len(b))}
    return fields, regions


# -- mutations ----------------------------------------------------------------------------------------

def _interesting(rng: random.Random, old: int, size: int, file_size: int, at: int) -> int:
    top = (1 << (8 * size)) - 1
    choices = [0, 1, 2, 3, old + 1, old - 1, old * 2, old + 4096, 2**31, 2**32 - 1, 2**32, 2**62,
               2**63 - 1, 2**63, top, file_size, file_size - at, rng.getrandbits(8 * size), rng.randrange(64)]
    return rng.choice(choices) & top


def mutate(rng: random.Random, b: bytes, fields, regions) -> tuple[str, bytes]:
    kind = rng.choice(["truncate", "truncate", "bitflip", "bitflip", "field", "field", "type"])
    data_start = regions["data"][0]
    if kind == "truncate":
        name = rng.choice(list(regions))
        lo, hi = regions[name]
        if hi <= lo:
            lo, hi = 0, len(b)
        cut = rng.choice([lo, hi - 1, rng.randrange(lo, hi)])
        return f"truncate {name} at {cut}", b[:cut]
    out = bytearray(b)
    if kind == "bitflip":
        n = rng.randint(1, 8)
        span = data_start if rng.random() < 0.8 else len(b)
        for _ in range(n):
            pos = rng.randrange(span)
            out[pos] ^= 1 << rng.randrange(8)
        return f"bitflip x{n}", bytes(out)
    if kind == "field":
        off, size, fkind = rng.choice([f for f in fields if f[2] in ("count", "length", "dim", "ndims", "offset")])
        old = int.from_bytes(b[off:off + size], "little")
        new = _interesting(rng, old, size, len(b), off)
        out[off:off + size] = new.to_bytes(size, "little")
        return f"{fkind}@{off} {old}->{new}", bytes(out)
    off, size, fkind = rng.choice([f for f in fields if f[2] in ("vtype", "ttype")])
    old = int.from_bytes(b[off:off + size], "little")
    new = rng.choice([rng.randrange(45), rng.randrange(13), old ^ 1, 2**32 - 1, rng.getrandbits(32)])
    out[off:off + size] = new.to_bytes(size, "little")
    return f"{fkind}@{off} {old}->{new}", bytes(out)


def touch(r: GGUFReader) -> None:
    """Use everything the reader hands out, as a consumer would."""
    def walk(v):
        if isinstance(v, StringArray):
            v.tolist()
        elif isinstance(v, list):
            for x in v:
                walk(x)
        elif isinstance(v, np.ndarray):
            v.sum() if v.dtype != bool else v.any()
    for k, v in r.metadata.items():
        walk(v)
        r.type_spec(k)
    for t in r.tensors.values():
        _ = t.data
        assert t.raw.size == t.n_bytes


def _cases(rng: random.Random, b: bytes, fields, regions):
    """CASES_PER_FILE mutated copies of b, made one at a time: truncation at both edges of every
    region first, then random mutations."""
    edges = [(name, cut) for name, (lo, hi) in regions.items() for cut in sorted({lo, max(lo, hi - 1)})]
    for name, cut in edges:
        yield f"truncate {name} at {cut}", b[:cut]
    for _ in range(CASES_PER_FILE - len(edges)):
        yield mutate(rng, b, fields, regions)


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout()


def test_fuzz_mutated_files_open_or_raise_gguf_error(base_files, tmp_path):
    """>= 2000 seeded mutations: each opens or raises GGUFError, within 1 s; allocations peak < 16 MiB."""
    rng = random.Random(SEED)
    target = tmp_path / "case.gguf"
    tracemalloc.start()                              # peak of Python and numpy allocations
    old_handler = signal.signal(signal.SIGALRM, _alarm)
    n_cases = n_open = n_err = 0
    slowest = 0.0
    try:
        for base in base_files:
            b = base.read_bytes()
            fields, regions = layout(b)
            for desc, blob in _cases(rng, b, fields, regions):
                target.write_bytes(blob)
                signal.setitimer(signal.ITIMER_REAL, 5 * TIME_LIMIT_S)
                t0 = time.perf_counter()
                try:
                    with GGUFReader(target) as r:
                        touch(r)
                    n_open += 1
                except GGUFError as e:
                    assert str(target) in str(e) and "(offset " in str(e), f"{base.name} {desc}: {e}"
                    n_err += 1
                except _Timeout:
                    pytest.fail(f"{base.name} {desc}: no answer within {5 * TIME_LIMIT_S} s")
                except Exception as e:  # noqa: BLE001 - the point of the test
                    pytest.fail(f"{base.name} {desc}: {type(e).__name__}: {e}")
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
                dt = time.perf_counter() - t0
                slowest = max(slowest, dt)
                assert dt < TIME_LIMIT_S, f"{base.name} {desc}: took {dt:.2f} s"
                n_cases += 1
    finally:
        signal.signal(signal.SIGALRM, old_handler)
        peak_mib = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    print(f"fuzz: {n_cases} cases, {n_open} opened, {n_err} GGUFError, slowest {slowest * 1000:.1f} ms, "
          f"peak allocations {peak_mib:.1f} MiB")
    assert n_cases >= 2000
    assert n_err > n_cases // 4 and n_open > 50     # both outcomes are exercised
    assert peak_mib < 16                          # a case never allocates more than a few file sizes


def test_layout_walker_matches_reader(base_files):
    """The fuzzer's own layout walk agrees with the reader on where the data section starts (exact)."""
    for base in base_files:
        _, regions = layout(base.read_bytes())
        with GGUFReader(base) as r:
            assert regions["data"][0] == r.data_offset
