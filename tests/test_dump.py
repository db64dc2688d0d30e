"""gguf-dump: counts on the real models, JSON/text output, and clean failure on a bad file."""
from __future__ import annotations

import json
import subprocess
import sys

from gguf_engine.cli.dump import main
from tests.conftest import fixture_path


def run_json(capsys, *args) -> dict:
    assert main([*args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_smollm2_counts(smollm2_path, capsys):
    """SmolLM2: 272 tensors, 210 of them Q4_1 at exactly 5.0 bpw; totals add up (exact)."""
    d = run_json(capsys, str(smollm2_path))
    assert d["n_tensors"] == 272 and len(d["tensors"]) == 272
    per = d["totals"]["per_type"]
    assert per["Q4_1"]["tensors"] == 210 and per["Q4_1"]["bpw"] == 5.0
    assert set(per) == {"Q4_1", "Q8_0", "F32"}
    params = sum(t["n_elements"] for t in d["tensors"])
    assert d["totals"]["params"] == params == 134_515_008
    assert d["totals"]["tensor_bytes"] == sum(t["n_bytes"] for t in d["tensors"])
    assert d["totals"]["bpw"] == d["totals"]["tensor_bytes"] * 8 / params
    assert d["file_size"] == smollm2_path.stat().st_size
    toks = d["metadata"]["tokenizer.ggml.tokens"]
    assert toks["type"] == "ARRAY[STRING]" and toks["value"]["count"] == 49152 and len(toks["value"]["head"]) == 8
    assert d["metadata"]["llama.block_count"] == {"type": "UINT32", "value": 30}


def test_gemma3_counts(gemma3_path, capsys):
    """Gemma 3: 236 tensors of Q5_0/Q4_K/Q6_K/Q8_0/F32; --no-tensors leaves the table out (exact)."""
    d = run_json(capsys, str(gemma3_path), "--no-tensors")
    assert d["n_tensors"] == 236 and "tensors" not in d
    per = d["totals"]["per_type"]
    assert set(per) == {"Q5_0", "Q4_K", "Q6_K", "Q8_0", "F32"}
    assert sum(a["tensors"] for a in per.values()) == 236
    assert d["metadata"]["tokenizer.ggml.tokens"]["value"]["count"] == 262144


def test_text_output(capsys):
    """Text output has the header line, summarised arrays, the tensor table and per-type totals."""
    f = fixture_path("models", "q", "tiny-llama-Q4_K_M.gguf")
    assert main([str(f)]) == 0
    out = capsys.readouterr().out
    assert "GGUF v3" in out and "tensors:" in out and "totals:" in out and "bits/weight:" in out
    assert "[768 items]" in out                       # tokenizer.ggml.tokens counted
    assert "token_embd.weight" in out and "Q4_K" in out
    assert main([str(f), "--no-tensors"]) == 0
    assert "token_embd.weight" not in capsys.readouterr().out


def test_bad_file_exits_1_without_traceback(tmp_path):
    """A malformed file: the GGUFError message on stderr, exit status 1, no traceback."""
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + (99).to_bytes(4, "little") + bytes(16))
    for target in (bad, tmp_path / "missing.gguf"):
        p = subprocess.run([sys.executable, "-m", "gguf_engine.cli.dump", str(target)],
                           capture_output=True, text=True)
        assert p.returncode == 1
        assert "Traceback" not in p.stderr and str(target) in p.stderr
        assert p.stdout == ""
    p = subprocess.run([sys.executable, "-m", "gguf_engine.cli.dump", str(bad)], capture_output=True, text=True)
    assert "unsupported GGUF version 99 (supported: 2, 3) (offset 4)" in p.stderr
