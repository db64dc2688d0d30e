"""Fuzzing the whole load path: open, config, tokenizer, ``load_model`` and one evaluated token.

Seeded mutations of a tiny model of each architecture in ``../shared/fixtures/models`` (llama, qwen2,
qwen3, and a Q4_K_M llama): metadata values replaced by hostile values of the same or another type
(zero, negative, huge, inf/nan, arrays for scalars, scalars for arrays, truncated or retyped
arrays), metadata keys deleted, tensors dropped, reshaped or retyped, and byte-level mutations of
the file (the reader fuzzer's).  The cases run in a subprocess whose address space is capped with
``resource.setrlimit`` (3 GiB above what the interpreter maps after importing the engine).

Pass criteria, per case: it ends in a run (finite or not, logits of the vocabulary's length) or in
one of the engine's own errors with a message (a ValueError subclass defined by gguf_engine:
GGUFError, VocabError, ModelLoadError, ...), within ``CASE_SECONDS``.  Anything else (a bare
ValueError, TypeError, KeyError, IndexError, MemoryError, OverflowError, UnboundLocalError, ...)
is an escape; running past the time bound is a hang; the child dying is a crash.
"""
from __future__ import annotations

import json

import random
import subprocess
import sys
from pathlib import Path

import numpy as np

from .conftest import ROOT, fixture_path

SEED = 2026_12_06
CASE_SECONDS = 20
META_CASES_PER_BASE = 60
TENSOR_CASES_PER_BASE = 8
BYTE_CASES_PER_BASE = 25
BASES = ["tiny-llama-f32.gguf", "tiny-qwen2-f32.gguf", "tiny-qwen3-f32.gguf", "q/tiny-llama-Q4_K_M.gguf"]

# hostile values: (value type name, value); arrays as ("array:ELEM", values)
HOSTILE = [
    ("delete", None), ("UINT32", 0), ("UINT32", 1), ("UINT32", 2**32 - 1), ("INT32", -1), ("INT32", -2**31),
    ("UINT64", 2**64 - 1), ("INT64", 2**62), ("UINT32", 100_000_000), ("FLOAT32", "inf"), ("FLOAT32", "nan"),
    ("FLOAT32", 1e20), ("FLOAT32", -1.0), ("FLOAT64", 0.5), ("BOOL", True), ("STRING", ""),
    ("STRING", "x" * 300), ("array:INT32", [1, 2, 3]), ("array:STRING", ["a", "b"]), ("array:FLOAT32", []),
]
# for array keys also: truncated, emptied, retyped
ARRAY_HOSTILE = ["half", "empty", "ints", "floats", "scalar"]


def _base_paths() -> list[Path]:
    return [fixture_path("models", *b.split("/")) for b in BASES]


def make_cases(seed: int = SEED) -> list[dict]:
    """The case list (JSON-able): which base, which mutation."""
    from gguf_engine.gguf import GGUFReader

    rng = random.Random(seed)
    cases = []
    for base in _base_paths():
        with GGUFReader(base) as r:
            keys = list(r.metadata)
            arrays = [k for k in keys if isinstance(r.type_spec(k), tuple)]
            tensors = list(r.tensors)
        for _ in range(META_CASES_PER_BASE):
            key = rng.choice(keys)
            if key in arrays and rng.random() < 0.5:
                cases.append({"base": str(base), "kind": "array", "key": key, "how": rng.choice(ARRAY_HOSTILE)})
            else:
                vt, v = rng.choice(HOSTILE)
                cases.append({"base": str(base), "kind": "meta", "key": key, "vtype": vt, "value": v})
        for _ in range(TENSOR_CASES_PER_BASE):
            cases.append({"base": str(base), "kind": "tensor", "name": rng.choice(tensors),
                          "how": rng.choice(["drop", "reshape", "retype"])})
        for _ in range(BYTE_CASES_PER_BASE):
            cases.append({"base": str(base), "kind": "bytes", "seed": rng.getrandbits(32)})
    return cases


# -- the child: applies one mutation at a time and runs the load path ---------------------------------

def _value(vt: str, v):
    if vt.startswith("array:"):
        return v, ("ARRAY", vt.split(":")[1])
    if vt.startswith("FLOAT") and isinstance(v, str):
        return float(v), vt
    return v, vt


def _write_mutated(case: dict, out: Path) -> None:
    from gguf_engine.gguf import GGUFReader, GGUFValueType, GGUFWriter
    from kernels.types import GGMLType

    from .test_gguf_fuzz import layout, mutate

    base = Path(case["base"])
    if case["kind"] == "bytes":
        b = base.read_bytes()
        fields, regions = layout(b)
        _, blob = mutate(random.Random(case["seed"]), b, fields, regions)
        out.write_bytes(blob)
        return
    with GGUFReader(base) as r, GGUFWriter(out) as w:
        for key, value in r.metadata.items():
            spec = r.type_spec(key)
            if case["kind"] == "meta" and key == case["key"]:
                if case["vtype"] == "delete":
                    continue
                v, vt = _value(case["vtype"], case["value"])
                if isinstance(vt, tuple):
                    w.add_key(key, v, GGUFValueType.ARRAY, GGUFValueType[vt[1]])
                else:
                    w.add_key(key, v, vt)
            elif case["kind"] == "array" and key == case["key"]:
                elem = spec[1]
                items = value.tolist() if hasattr(value, "tolist") else list(value)
                how = case["how"]
                if how == "half":
                    w.add_key(key, items[: len(items) // 2], GGUFValueType.ARRAY, elem)
                elif how == "empty":
                    w.add_key(key, [], GGUFValueType.ARRAY, elem)
                elif how == "ints":
                    w.add_key(key, list(range(len(items))), GGUFValueType.ARRAY, GGUFValueType.INT32)
                elif how == "floats":
                    w.add_key(key, [0.5] * len(items), GGUFValueType.ARRAY, GGUFValueType.FLOAT32)
                else:
                    w.add_key(key, 7, GGUFValueType.UINT32)
            else:
                w.add_key(key, value, spec)
        for t in r.tensors.values():
            if case["kind"] == "tensor" and t.name == case["name"]:
                if case["how"] == "drop":
                    continue
                if case["how"] == "reshape" and len(t.shape) == 2 and t.type == GGMLType.F32:
                    w.add_tensor(t.name, t.raw, t.type, shape=(t.shape[1] * 2, t.shape[0] // 2)
                                 if t.shape[0] % 2 == 0 else t.shape[::-1])
                    continue
                if case["how"] == "retype" and t.type == GGMLType.F32:
                    w.add_tensor(t.name, t.raw[: t.n_bytes // 2], GGMLType.F16, shape=t.shape)
                    continue
            w.add_tensor(t.name, t.raw, t.type, shape=t.shape)


def _run_case(path: Path) -> str:
    """Open, config, tokenizer, load_model, one token: "run" or raises."""
    from gguf_engine.gguf import GGUFReader
    from gguf_engine.model import load_model
    from gguf_engine.tokenizer import Tokenizer

    with GGUFReader(path) as reader:
        tok = Tokenizer.from_reader(reader)
        with load_model(reader, n_ctx=32) as model:
            logits = np.asarray(model.eval([min(1, tok.n_vocab - 1)]))
            assert logits.shape == (model.config.n_vocab,), logits.shape
    return "run"


class _Timeout(BaseException):
    pass


def _clean(e: BaseException) -> bool:
    """One of the engine's own errors, with a message."""
    return (isinstance(e, ValueError) and type(e).__module__.startswith("gguf_engine.") and bool(str(e)))


def child_main() -> None:
    import resource
    import signal
    import time

    import gguf_engine.model  # noqa: F401 - the engine and its kernels are loaded before the cap
    cases = json.loads(sys.stdin.read())
    work = Path(cases.pop(0)["dir"])
    # warm up (JIT cache loads) on the unmutated base, outside the time bound
    _run_case(Path(cases[0]["base"]))
    with open("/proc/self/statm") as f:
        mapped = int(f.read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (mapped + (3 << 30), resource.RLIM_INFINITY))

    def alarm(signum, frame):
        raise _Timeout()

    signal.signal(signal.SIGALRM, alarm)
    for i, case in enumerate(cases):
        path = work / f"case{i}.gguf"
        t0 = time.perf_counter()
        try:
            _write_mutated(case, path)
        except (ValueError, TypeError, OverflowError) as e:  # the writer refuses the value: no file
            print(json.dumps({"i": i, "outcome": "skipped", "detail": f"{type(e).__name__}: {e}"[:200]}), flush=True)
            continue
        signal.setitimer(signal.ITIMER_REAL, CASE_SECONDS)
        try:
            outcome, detail = _run_case(path), ""
        except _Timeout:
            outcome, detail = "hang", ""
        except BaseException as e:  # noqa: BLE001 - classifying every exception is the point
            outcome = "clean" if _clean(e) else "escape"
            detail = f"{type(e).__name__}: {e}"[:300]
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            path.unlink(missing_ok=True)
        print(json.dumps({"i": i, "outcome": outcome, "detail": detail,
                          "seconds": round(time.perf_counter() - t0, 3)}), flush=True)


def run_cases(cases: list[dict], work: Path) -> list[dict]:
    proc = subprocess.run([sys.executable, "-c", "from tests.test_load_fuzz import child_main; child_main()"],
                          input=json.dumps([{"dir": str(work)}] + cases), capture_output=True, text=True,
                          cwd=ROOT, timeout=600 + len(cases) * (CASE_SECONDS + 1))
    results = {r["i"]: r for r in (json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{"))}
    out = []
    for i, case in enumerate(cases):
        r = results.get(i, {"outcome": "crash", "detail": f"child exited with {proc.returncode}: "
                                                          f"{proc.stderr[-500:]}"})
        out.append({**case, **r})
    return out


def summarize(results: list[dict]) -> dict[str, int]:
    counts = {"cases": len(results)}
    for r in results:
        counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
    return counts


def test_load_path_fuzz(tmp_path):
    """Every mutated model ends in a run or a clean engine error, in time, under the memory cap;
    no escape, no hang, no crash.  Both outcomes are exercised."""
    cases = make_cases()
    results = run_cases(cases, tmp_path)
    counts = summarize(results)
    print("load fuzz:", json.dumps(counts))
    bad = [r for r in results if r["outcome"] not in ("run", "clean", "skipped")]
    assert not bad, json.dumps(bad[:20], indent=1) + f"\n{len(bad)} bad of {counts}"
    assert counts.get("run", 0) > 20 and counts.get("clean", 0) > 50
    assert counts.get("skipped", 0) < len(cases) // 5


if __name__ == "__main__":  # the counts and every non-clean case, for a report
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        res = run_cases(make_cases(), Path(d))
    print(json.dumps(summarize(res)))
    for r in res:
        if r["outcome"] not in ("run", "clean"):
            print(r["outcome"], {k: v for k, v in r.items() if k not in ("base",)}, Path(r["base"]).name)

