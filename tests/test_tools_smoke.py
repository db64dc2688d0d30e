"""Smoke tests of the benchmark tools under tools/ (not installed; loaded from their files)."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from gguf_engine.gguf.reader import GGUFReader
from kernels import dequantize
from kernels.types import GGMLType

from .conftest import fixture_path

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_tools_{name}", TOOLS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod            # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_make_f16_dequantizes_exactly_and_keeps_metadata(tmp_path):
    """make_f16 on a Q4_0 model: same metadata (file_type -> 1), same tensor order, matrices F16 and
    vectors F32, every value equal to the dequantized input up to float16 rounding (rel. 2^-11)."""
    src = fixture_path("models", "q", "tiny-llama-Q4_0.imatrix.gguf")
    out = tmp_path / "f16.gguf"
    _load("make_f16").make_f16(str(src), str(out), log=lambda s: None)
    with GGUFReader(src) as a, GGUFReader(out) as b:
        assert list(a.metadata) == list(b.metadata)
        assert b.metadata["general.file_type"] == 1
        for k in a.metadata:
            if k != "general.file_type":
                assert repr(a.metadata[k]) == repr(b.metadata[k]), k
        assert list(a.tensors) == list(b.tensors)
        for name, t in a.tensors.items():
            u = b.tensors[name]
            assert u.shape == t.shape
            assert u.type == (GGMLType.F16 if len(t.shape) >= 2 else GGMLType.F32)
            x = dequantize(t.raw, t.type, t.shape)
            y = dequantize(u.raw, u.type, u.shape)
            np.testing.assert_allclose(y, x, rtol=2.0 ** -11, atol=2.0 ** -24, err_msg=name)


LLAMA_KLD_OUTPUT = """
====== Perplexity statistics ======
Mean PPL(Q)                   :  14.512345 ±   0.731234
Mean PPL(base)                :  13.828500 ±   0.704930
====== KL divergence statistics ======
Mean    KLD:   0.052311 ±   0.001234
Maximum KLD:   3.100000
Same top p: 91.234 ± 0.512 %
"""


def test_quant_quality_parses_perplexity_outputs():
    """The table reads Mean PPL(Q), Mean KLD and Same top p (and the base run's final estimate) exactly."""
    qq = _load("quant_quality")
    r = qq.parse_kld(LLAMA_KLD_OUTPUT)
    assert r == {"ppl": 14.512345, "ppl_unc": 0.731234, "kld": 0.052311, "kld_unc": 0.001234,
                 "same_top": 91.234, "same_top_unc": 0.512}
    assert qq.parse_base("[1]10.5,[2]11.0,\nFinal estimate: PPL = 13.8285 +/- 0.70493\n") == \
        {"ppl": 13.8285, "ppl_unc": 0.70493}
    with pytest.raises(ValueError):
        qq.parse_kld("no statistics here")


def test_bench_quantize_table_gives_ratios():
    """The speed table states medians and the ours/llama.cpp ratio of wall and CPU seconds (2 decimals)."""
    bq = _load("bench_quantize")
    rows = [{"type": "Q4_K_M", "ours_wall": [20.0, 30.0, 25.0], "ours_cpu": [18.0, 19.0, 20.0],
             "ours_own": [3.0, 4.0, 5.0], "ref_wall": [10.0, 12.0, 11.0], "ref_cpu": [9.0, 10.0, 11.0],
             "ref_own": [2.0, 2.0, 2.5]}]
    table = bq.format_table(rows, 2)
    assert ("| Q4_K_M | 11.00 (10.0-12.0) | 25.00 (20.0-30.0) | 2.27x | 10.00 | 19.00 | 1.90x "
            "| 2.00 | 4.00 | 2.00x |") in table
    assert bq._QUANTIZE_TIME.search("main: quantize time =  9012.50 ms").group(1) == "9012.50"


@pytest.mark.parametrize("name", ["tiny-llama-f32.gguf", "tiny-qwen2-f32.gguf", "tiny-qwen3-f32.gguf"])
def test_exact_forward_matches_float64_reference(name):
    """exact_forward (the float64 oracle the real-model tolerances are measured against) gives the
    fixtures' float64 logits on the three tiny architectures (adjacent-pair RoPE, Q/K/V biases,
    per-head norms) within 1e-6 (they are stored as float32, logits up to ~4.5)."""
    path = fixture_path("models", name)
    ref = np.load(path.with_name(name.replace(".gguf", ".reference.npz")))
    logits = _load("exact_forward").exact_logits(path, ref["tokens"][:12])
    np.testing.assert_allclose(logits, ref["logits_exact"][:12], atol=1e-6, rtol=0)


def test_profile_ops_times_the_moe_operation(tmp_path, capsys):
    """profile_ops on a tiny MoE model: a prefill and a decode table, each with the moe operation,
    its expert products and the dense linears; shares are percentages of the phase's wall time."""
    made = _load("make_random_model").make_model("tiny-qwen3moe", "Q8_0", tmp_path / "m.gguf", log=lambda m: None)
    assert _load("profile_ops").main([str(made.path), "-t", "1", "-p", "16", "-n", "2"]) == 0
    out = capsys.readouterr().out
    assert "prefill pp16:" in out and "decode tg2:" in out
    for op in ("| moe |", "| moe: expert products (gate|up) |", "| moe: expert products (down) |", "| linear |"):
        assert out.count(op) == 2, op


def test_bench_kv_decode_runs_per_cache_type(capsys):
    """tools/bench_kv_decode.py on the tiny model: a row of tokens per second per cache type."""
    mod = _load("bench_kv_decode")
    tiny = str(fixture_path("models", "tiny-llama-f32.gguf"))
    assert mod.main(["-m", tiny, "-d", "40", "-n", "2", "-r", "1", "-t", "1", "--types", "f32,q8_0"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    assert [r[0] for r in rows] == ["f32", "q8_0"] and all(float(r[2]) > 0 for r in rows)


def test_bench_memory_warms_up_each_measured_run_with_its_prompt_size(monkeypatch, capsys):
    """bench_memory: every gguf-bench run whose peak is measured follows an unmeasured run of the
    same model and prompt size (so a stale kernel cache compiles the kernels that prompt reaches
    outside the measured peak), and the printed ratio is peak / budget.  Exact figures: the runs
    are stood in for, reporting a fixed peak and memory report."""
    mod = _load("bench_memory")
    MiB = 1 << 20
    ProcResult = sys.modules["bench_vs_llamacpp"].ProcResult
    calls = []

    def fake_run(cmd, env=None):
        calls.append(cmd)
        mem = {"file_size": 10 * MiB, "kv_cache": {"size": 2 * MiB}}
        return ProcResult(json.dumps([{"memory": mem}]), 1.0, 300 * MiB)

    monkeypatch.setattr(mod, "run_measured", fake_run)
    model = str(fixture_path("models", "tiny-llama-f32.gguf"))
    assert mod.main(["-m", model, "-p", "64", "-n", "4"]) == 0
    opts = [dict(zip(c[3::2], c[4::2])) for c in calls]                 # python -m gguf_engine.cli.bench ...
    assert len(opts) == 4                                                 # floor: warm-up, run; model: the same
    for warm, run in (opts[0:2], opts[2:4]):
        assert warm["-m"] == run["-m"] and warm["-p"] == run["-p"] and warm["-n"] == "1"
    assert opts[3]["-m"] == model and opts[3]["-p"] == "64" and opts[3]["-n"] == "4"
    floor = 300 - 12                                                      # MiB: peak less file and KV
    row = capsys.readouterr().out.strip().splitlines()[-1]
    assert row.endswith(f"| {300 / (floor + 12 + 64):.2f} |")
