"""gguf-perplexity: llama.cpp's chunked perplexity and its KL-divergence mode (kept small)."""
from __future__ import annotations

import numpy as np

from gguf_engine.cli.perplexity import main as perplexity_main
from gguf_engine.quantize.perplexity import BaseLogits, decode_log_probs, percentile, quantize_log_probs

from .conftest import fixture_path

# llama-perplexity -m tiny-llama-f16.gguf -f calibration.txt -c 128 prints "[1]1036.8858,[2]1149.4464,"
LLAMA_CPP_RUNNING_PPL = [1036.8858, 1149.4464]


def _model(name="tiny-llama-f16.gguf"):
    return str(fixture_path("models", name))


def test_perplexity_and_kl_divergence(tmp_path, capsys):
    """Running PPL within 0.05% of llama.cpp's on the F16 fixture (2 chunks of 128); the base
    log-probability file has llama.cpp's layout; KLD of the model against itself is ~0 (< 1e-6) with the
    same top token everywhere (with -v, after the memory report), and a Q4_K_M model has a positive KLD
    with the statistics block printed."""
    base = tmp_path / "base.kld"
    rc = perplexity_main(["-m", _model(), "-f", str(fixture_path("models", "calibration.txt")), "-c", "128",
                          "--chunks", "2", "--kl-divergence-base", str(base), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0
    line = next(s for s in out.splitlines() if s.startswith("[1]"))
    running = [float(v.split("]")[1]) for v in line.rstrip(",").split(",")]
    np.testing.assert_allclose(running, LLAMA_CPP_RUNNING_PPL, rtol=5e-4)
    assert "Final estimate: PPL = " in out and " +/- " in out

    b = BaseLogits.open(base)
    assert (b.n_ctx, b.n_vocab, b.n_chunk) == (128, 768, 2) and b.tokens.size == 256
    assert base.stat().st_size == 20 + 4 * 256 + 2 * 63 * (768 + 4) * 2

    assert perplexity_main(["-m", _model(), "--kl-divergence-base", str(base), "--kl-divergence",
                            "--no-progress", "-v"]) == 0
    out = capsys.readouterr().out
    kld = float(next(s for s in out.splitlines() if s.startswith("Mean    KLD:")).split()[2])
    assert abs(kld) < 1e-6 and "Same top p: 100.000" in out
    assert "CPU_REPACK model buffer size" in out and "llama_kv_cache: size =" in out   # -v: the memory report

    assert perplexity_main(["-m", str(fixture_path("models", "q", "tiny-llama-Q4_K_M.imatrix.gguf")),
                            "--kl-divergence-base", str(base), "--kl-divergence", "--no-progress"]) == 0
    out = capsys.readouterr().out
    kld = float(next(s for s in out.splitlines() if s.startswith("Mean    KLD:")).split()[2])
    assert 1e-4 < kld < 0.1 and "99.0%   KLD:" in out and "Mean PPL(base)" in out


def test_log_prob_encoding_and_percentile():
    """16-bit log-probabilities decode to within half a step of the exact values (above max-16 nats);
    percentiles interpolate linearly as llama.cpp's."""
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((5, 300)) * 3).astype(np.float32)
    rows = quantize_log_probs(logits)
    assert rows.shape == (5, 2 * 150 + 4) and rows.dtype == np.uint16
    exact = logits - np.log(np.exp(logits.astype(np.float64)).sum(axis=1, keepdims=True))
    dec = decode_log_probs(rows, 300)
    step = rows[:, :4].copy().view(np.float32)[:, 0]
    keep = exact > exact.max(axis=1, keepdims=True) - 16
    assert np.all(np.abs(dec - exact)[keep] <= (step[:, None] * 0.5 + 1e-5).repeat(300, 1)[keep])
    v = np.array([0.0, 1.0, 2.0, 3.0], np.float32)
    assert percentile(v, 0.5) == 1.5 and percentile(v, 0.0) == 0.0 and percentile(v, 1.0) == 3.0


def test_short_text_is_refused(tmp_path, capsys):
    """A text shorter than two contexts is a clear error (exit 1), as in llama.cpp."""
    short = tmp_path / "short.txt"
    short.write_text("just a few words")
    assert perplexity_main(["-m", _model(), "-f", str(short), "-c", "128", "--no-progress"]) == 1
    assert "you need at least 256 tokens" in capsys.readouterr().err
