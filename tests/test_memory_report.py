"""The memory report at load (``Model.memory_breakdown``, ``Llama.memory_breakdown``, the
llama.cpp-style summary of ``gguf-run -v`` and the ``memory`` field of ``gguf-bench -o json``)."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np

from gguf_engine.model import load_model
from gguf_engine.model.memory import MiB, resident_bytes, summary_lines

from .conftest import ROOT, fixture_path

# A fresh process loads a model, evaluates a full context in one batch (every KV cell and the
# largest pass's buffers touched) and prints its peak resident set and what the report says it holds.
_ADD_UP = """
import json, sys
import numpy as np
from gguf_engine.model import load_model
path, n = sys.argv[1], int(sys.argv[2])
m = load_model(path, n_ctx=n, n_batch=n, n_threads=2)
m.eval(np.arange(n, dtype=np.int32) % m.n_vocab)
mb = m.memory_breakdown()
with open("/proc/self/status") as f:
    peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
print(json.dumps({"peak": peak, "held": sum(sum(d.values()) for d in mb["devices"].values())}))
"""


def _peak_and_held(path, n: int) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-c", _ADD_UP, str(path), str(n)], check=True, cwd=ROOT,
                         capture_output=True, text=True).stdout
    d = json.loads(out.strip().splitlines()[-1])
    return d["peak"], d["held"]


def test_breakdown_counts_the_arrays_held():
    """Exact: the tiny F32 model's repacked weights are its 2-D tensors' bytes (the plain kind keeps
    F32 as it is), the KV cache is 2 x layers x cells x kv heads x head size x 4 bytes, and the
    device table adds the buffers up; the summary lines have llama.cpp's load-log formats."""
    path = fixture_path("models", "tiny-llama-f32.gguf")
    with load_model(path, n_ctx=64, n_batch=32, n_threads=1) as m:
        mb = m.memory_breakdown(rss=123 * MiB)
        c = m.config
        weights = sum(t.n_bytes for t in m.reader.tensors.values() if len(t.shape) == 2)
    assert mb["model_buffers"]["CPU_REPACK"] == weights
    kv = mb["kv_cache"]
    assert kv["k"] == kv["v"] == c.n_layer * 64 * c.n_head_kv * c.head_dim * 4
    assert (kv["cells"], kv["layers"], kv["seqs"], kv["type_k"], kv["type_v"]) == (64, c.n_layer, 1, "f32", "f32")
    host = mb["devices"]["Host"]
    assert host["model"] == sum(mb["model_buffers"].values())
    assert host["context"] == kv["size"] == mb["kv_buffers"]["CPU"]
    assert host["compute"] == mb["compute_buffers"]["CPU"] > 0
    assert mb["file_size"] == path.stat().st_size and mb["rss"] == 123 * MiB
    text = "\n".join(summary_lines(mb))
    assert re.search(r"load_tensors:   CPU_REPACK model buffer size = +\d+\.\d\d MiB", text)
    assert re.search(r"llama_kv_cache: +CPU KV buffer size = +\d+\.\d\d MiB", text)
    assert re.search(r"llama_kv_cache: size = +\d+\.\d\d MiB \( +64 cells, +4 layers,  1/1 seqs\), "
                     r"K \(f32\): +\d+\.\d\d MiB, V \(f32\): +\d+\.\d\d MiB", text)
    assert re.search(r"llama_context: +CPU compute buffer size = +\d+\.\d\d MiB", text)
    assert "resident set after load = 123.00 MiB" in text


def test_breakdown_adds_up_to_the_measured_rss(smollm2_path):
    """The report adds up to the resident memory: in fresh processes that each evaluate a full
    context in one batch, peak RSS minus the report's total (model + KV + compute) is the
    runtime's own overhead (Python, numpy, Numba, loaded kernels), measured the same way on a
    tiny model (1.7 MB file, 16 tokens).  For SmolLM2 (94 MB file, 512 tokens, about 130 MB
    reported) the two overheads agree within 16 MiB: the kernels and metadata each model loads
    differ by a few MiB.  Each measured run is first made once unmeasured (same model, same batch:
    a 512-row pass takes other kernels than a short one), so that no kernel compiles in the
    measured runs."""
    tiny = fixture_path("models", "q", "tiny-llama-Q4_1.imatrix.gguf")
    for path, n in ((tiny, 16), (smollm2_path, 512)):   # the same runs first, unmeasured: kernels the
        _peak_and_held(path, n)                # Numba cache lacks compile there, and compiling takes
    floor_peak, floor_held = _peak_and_held(tiny, 16)       # memory of its own (once per machine)
    peak, held = _peak_and_held(smollm2_path, 512)
    assert held > 100 * MiB
    overhead, floor = peak - held, floor_peak - floor_held
    assert abs(overhead - floor) <= 16 * MiB, (overhead / MiB, floor / MiB)


def test_llama_exposes_the_breakdown_and_bench_json_carries_it():
    """``Llama.memory_breakdown()`` is the model's breakdown with the resident set measured after
    load (nonzero, at least what the model holds on the host); ``gguf-bench -o json`` puts the same
    dict in every record as ``memory``."""
    from gguf_engine import Llama
    from gguf_engine.cli.bench import main
    path = fixture_path("models", "tiny-llama-f32.gguf")
    with Llama(str(path), n_ctx=32, n_threads=1) as llm:
        mb = llm.memory_breakdown()
        assert mb == llm.model.memory_breakdown(mb["rss"])
        assert mb["rss"] >= sum(mb["devices"]["Host"].values()) and mb["rss"] <= resident_bytes() * 2
    import contextlib
    import io
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["-m", str(path), "-p", "8", "-n", "2", "-r", "1", "-t", "1", "-o", "json"]) == 0
    records = json.loads(buf.getvalue())
    assert len(records) == 2
    for r in records:
        assert r["memory"]["kv_cache"]["cells"] == 16 and r["memory"]["rss"] > 0
        assert r["memory"]["model_buffers"]["CPU_REPACK"] == mb["model_buffers"]["CPU_REPACK"]
    assert np.isfinite(records[0]["avg_ts"])
