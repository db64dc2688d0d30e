"""Importance matrices: both file formats against llama-imatrix's files, and collection on the fixture model."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from gguf_engine.cli.imatrix import main as imatrix_main
from gguf_engine.quantize.imatrix import (Imatrix, ImatrixCollector, ImatrixError, read_imatrix,
                                          write_imatrix_dat, write_imatrix_gguf)

from .conftest import fixture_path
from .test_tools_smoke import _load


def _gguf():
    return fixture_path("models", "tiny-llama.imatrix.gguf")


def _dat():
    return fixture_path("models", "tiny-llama.imatrix.dat")


def test_read_both_formats():
    """GGUF and legacy files hold the same 28 entries; normalized weights agree exactly (no tolerance)."""
    g, d = read_imatrix(_gguf()), read_imatrix(_dat())
    assert not g.is_legacy and d.is_legacy and g.has_metadata
    assert len(g.entries) == len(d.entries) == 28
    assert g.chunk_count == d.chunk_count == 40 and g.chunk_size == 128
    assert g.datasets[0].endswith("calibration.txt") and d.datasets == g.datasets
    e = g.entries["blk.0.ffn_down.weight"]
    assert e.sums.shape == (512,) and list(e.counts) == [40 * 128]
    assert list(d.entries["blk.0.ffn_down.weight"].counts) == [40]          # legacy: ncall
    wg, wd = g.quant_weights(), d.quant_weights()
    for name in wg:
        np.testing.assert_array_equal(wg[name], wd[name])


def test_write_is_byte_identical_to_llamacpp(tmp_path):
    """Writing the loaded GGUF imatrix back in either format reproduces llama-imatrix's bytes exactly."""
    g = read_imatrix(_gguf())
    write_imatrix_gguf(g, tmp_path / "x.gguf")
    write_imatrix_dat(g, tmp_path / "x.dat")
    assert (tmp_path / "x.gguf").read_bytes() == _gguf().read_bytes()
    assert (tmp_path / "x.dat").read_bytes() == _dat().read_bytes()


def test_filter_and_merge():
    """--include/--exclude substring filters; merging two runs adds sums and counts; legacy scales by chunk size."""
    g = read_imatrix(_gguf())
    assert set(g.filtered(include=["ffn_down"]).entries) == {f"blk.{i}.ffn_down.weight" for i in range(4)}
    assert not any("attn" in n for n in g.filtered(exclude=["attn"]).entries)
    with pytest.raises(ValueError):
        g.filtered(include=["a"], exclude=["b"])
    m = Imatrix(chunk_size=128)
    m.merge(g)
    m.merge(read_imatrix(_dat()))
    e, e0 = m.entries["blk.1.attn_q.weight"], g.entries["blk.1.attn_q.weight"]
    np.testing.assert_allclose(e.sums, 2 * e0.sums, rtol=1e-5)
    assert list(e.counts) == [2 * 5120] and m.chunk_count == 80


def test_collector_accumulates_like_llamacpp():
    """Sum of squares per column and token counts; small batches (<16 tokens) and non-block weights
    ignored; experts counted per routed token (exact arithmetic on small integers)."""
    c = ImatrixCollector(chunk_size=32)
    x = np.arange(64, dtype=np.float32).reshape(32, 2)                 # (n_tokens, n_in)
    c.add("blk.0.attn_q.weight", x)
    c.add("blk.0.attn_q.weight", x[:8])                                # < 16 tokens: ignored
    c.add("token_embd.weight", x)                                      # not a block weight: ignored
    e = c.stats["blk.0.attn_q.weight"]
    np.testing.assert_array_equal(e.sums, (x * x).sum(axis=0))
    assert list(e.counts) == [32] and c.last_chunk == 1 and set(c.stats) == {"blk.0.attn_q.weight"}
    ids = np.array([[0, 2]] * 16 + [[1, 2]] * 16)                      # (n_tokens, n_used)
    xe = np.ones((32, 2, 4), np.float32)
    c.add_experts("blk.0.ffn_up_exps.weight", xe, ids, n_expert=3)
    ee = c.stats["blk.0.ffn_up_exps.weight"]
    assert list(ee.counts) == [16, 16, 32]
    np.testing.assert_array_equal(ee.sums.reshape(3, 4)[:, 0], [16, 16, 32])
    im = c.to_imatrix("data.txt")
    assert im.datasets == ["data.txt"] and im.chunk_size == 32


def test_bad_files(tmp_path):
    """Truncated or foreign files raise ImatrixError naming the file."""
    bad = tmp_path / "bad.dat"
    bad.write_bytes(struct.pack("<ii", 1, 50) + b"short")
    with pytest.raises(ImatrixError, match="bad.dat"):
        read_imatrix(bad)
    empty = tmp_path / "empty.dat"
    empty.write_bytes(struct.pack("<i", 0))
    with pytest.raises(ImatrixError, match="entry count"):
        read_imatrix(empty)
    with pytest.raises(ImatrixError, match="cannot open"):
        read_imatrix(tmp_path / "missing.gguf")


def _collect(model, out, chunks: int, capsys) -> tuple[int, str]:
    """gguf-imatrix over `chunks` chunks of 128 tokens of calibration.txt: (exit status, stdout)."""
    rc = imatrix_main(["-m", str(model), "-f", str(fixture_path("models", "calibration.txt")), "-o", str(out),
                       "--chunk-size", "128", "--chunks", str(chunks), "--no-progress"])
    return rc, capsys.readouterr().out


def test_collect_matches_llamacpp(tmp_path, capsys):
    """gguf-imatrix on the F16 fixture model with calibration.txt (chunk 128, 40 chunks) matches
    llama-imatrix's file: same entries and counts, every per-column sum within 1%."""
    out = tmp_path / "im.gguf"
    rc, text = _collect(fixture_path("models", "tiny-llama-f16.gguf"), out, 40, capsys)
    assert rc == 0 and "Final estimate: PPL = " in text and "[40]" in text
    ours, ref = read_imatrix(out), read_imatrix(_gguf())
    assert set(ours.entries) == set(ref.entries)
    assert ours.chunk_count == 40 and ours.chunk_size == 128
    worst = 0.0
    for name, e in ref.entries.items():
        o = ours.entries[name]
        assert list(o.counts) == list(e.counts), name
        worst = max(worst, float(np.max(np.abs(o.sums - e.sums) / np.abs(e.sums))))
    assert worst < 0.01, f"worst per-entry relative difference {worst:.3%}"
    # the legacy output format from an existing file, no model run needed
    dat = tmp_path / "im.dat"
    assert imatrix_main(["-m", "unused", "--in-file", str(out), "--chunk-size", "128", "-o", str(dat),
                         "--output-format", "dat"]) == 0
    assert read_imatrix(dat).is_legacy and len(read_imatrix(dat).entries) == 28


def test_statistics_match_llamacpp(capsys):
    """--show-statistics: llama-imatrix prints, first, layer 1 attn_k: Σ(Act²) 259.63, max 1.8620,
    ZD 17.97%, CosSim 0.9596 (printed precision)."""
    assert imatrix_main(["-m", "unused", "--in-file", str(_gguf()), "--show-statistics"]) == 0
    first = capsys.readouterr().out.splitlines()[2].split("\t")
    assert first[0].strip() == "1" and first[1].strip() == "attn_k"
    assert [first[2].strip(), first[4].strip(), first[11].strip(), first[12].strip()] == \
        ["259.63", "1.8620", "17.97%", "0.9596"]


def test_collect_experts_matches_llamacpp(tmp_path, capsys):
    """gguf-imatrix on the tiny qwen3moe model (8 experts, top-2; rebuilt from its seed by
    tools/arch_models.py) with calibration.txt (chunk 128, 8 chunks) matches llama-imatrix's file
    (tests/data/qwen3moe.imatrix-gguf): the same entries, with per-expert counts and sums for the
    expert tensors (the routing spreads the tokens over all 8 experts).  Layer 0, routed before any
    expert output can differ: the same counts and every per-column sum within 1%.  Later layers: a
    few of the 1024 tokens have near-tied experts that rounding may route differently, as between
    any two implementations, so each expert's count within 4 tokens (the totals equal) and its sums
    within 2% in L1 norm."""
    from pathlib import Path

    from tests.test_arch import _tool
    fixture_path("models", "tiny-llama-f32.gguf")                   # the vocabulary source
    ref_path = Path(__file__).parent / "data" / "qwen3moe.imatrix-gguf"
    if not ref_path.exists():
        pytest.fail(f"reference data missing: {ref_path}", pytrace=False)
    model = tmp_path / "qwen3moe.gguf"
    _tool().build("qwen3moe", model)
    out = tmp_path / "im.gguf"
    assert _collect(model, out, 8, capsys)[0] == 0
    ours, ref = read_imatrix(out), read_imatrix(ref_path)
    assert set(ours.entries) == set(ref.entries)
    e = ref.entries["blk.0.ffn_gate_exps.weight"]
    assert e.counts.size == 8 and e.counts.min() > 0 and e.counts.sum() == 2 * 8 * 128 and len(set(e.counts)) > 1
    for name, e in ref.entries.items():
        o = ours.entries[name]
        k = e.counts.size
        A, R = o.sums.reshape(k, -1), e.sums.reshape(k, -1)
        if name.startswith("blk.0."):
            assert list(o.counts) == list(e.counts), name
            assert np.max(np.abs(A - R) / np.abs(R)) < 0.01, name
        else:
            assert o.counts.sum() == e.counts.sum() and np.abs(o.counts - e.counts).max() <= 4, name
            assert np.max(np.abs(A - R).sum(1) / np.abs(R).sum(1)) < 0.02, name


# -- mixture-of-experts files (tests/data/moe_quant, made by tools/moe_quant_references.py) -------

MOE = Path(__file__).parent / "data" / "moe_quant"


@pytest.mark.parametrize("shape", ["tiny-qwen3moe", "tiny-gpt-oss"])
def test_moe_imatrix_both_formats_byte_identical(tmp_path, shape):
    """llama-imatrix's GGUF file of a MoE model has one count per expert for the 3-D expert tensors
    and one for the others; written back it is the same bytes, and written in the legacy format it
    is the bytes llama-imatrix wrote from the same run (values sum / count x ncall, ncall the
    per-tensor call count from the largest expert count).  Read back, the legacy file normalizes to
    the GGUF file's weights within float32 rounding (rtol 1e-6)."""
    g = read_imatrix(MOE / f"{shape}.imatrix-gguf")
    e = g.entries["blk.0.ffn_down_exps.weight"]
    assert e.n_mat == 8 and len(set(e.counts.tolist())) > 1 and e.counts.sum() == 2 * g.entries["blk.0.attn_q.weight"].counts[0]
    assert g.entries["blk.0.attn_q.weight"].n_mat == 1
    write_imatrix_gguf(g, tmp_path / "x.gguf")
    write_imatrix_dat(g, tmp_path / "x.dat")
    assert (tmp_path / "x.gguf").read_bytes() == (MOE / f"{shape}.imatrix-gguf").read_bytes()
    assert (tmp_path / "x.dat").read_bytes() == (MOE / f"{shape}.imatrix.dat").read_bytes()
    d = read_imatrix(MOE / f"{shape}.imatrix.dat")
    assert d.is_legacy and d.entries["blk.0.ffn_down_exps.weight"].counts.tolist() == [(int(e.counts.max()) + 63) // 64]
    wg, wd = g.quant_weights(), d.quant_weights()
    assert set(wg) == set(wd)
    for name in wg:
        np.testing.assert_allclose(wd[name], wg[name], rtol=1e-6, err_msg=name)


def test_moe_imatrix_partial_experts_like_llama_imatrix(tmp_path):
    """Experts that saw no tokens: the GGUF file keeps their zero counts (the quantizer then weighs
    their columns 1.0), the legacy file stores 1.0 x ncall for them and skips an entry with no data
    at all: the bytes llama-imatrix wrote when converting the same GGUF file to the legacy format."""
    refs_tool = _load("moe_quant_references")
    partial = tmp_path / "partial.gguf"
    refs_tool.partial_imatrix(MOE / "tiny-qwen3moe.imatrix-gguf", partial)
    im = read_imatrix(partial)
    assert im.entries["blk.0.ffn_gate_exps.weight"].counts[3] == 0
    w = im.quant_weights()["blk.0.ffn_gate_exps.weight"].reshape(8, -1)
    assert (w[3] == 1.0).all() and (w[2] != 1.0).any()
    assert (im.quant_weights()["blk.1.ffn_up_exps.weight"] == 1.0).all()
    write_imatrix_dat(im, tmp_path / "p.dat")
    assert (tmp_path / "p.dat").read_bytes() == (MOE / "tiny-qwen3moe.imatrix-partial.dat").read_bytes()
    assert "blk.1.ffn_up_exps.weight" not in read_imatrix(tmp_path / "p.dat").entries


def test_moe_imatrix_combined_like_llama_imatrix(tmp_path):
    """Combining the GGUF and the legacy file of one run (llama-imatrix --in-file A --in-file B):
    legacy values scaled back by the chunk size and added, its single call count added to every
    expert's count; the same bytes as llama-imatrix's combined file."""
    m = Imatrix(chunk_size=64, has_metadata=True)
    m.merge(read_imatrix(MOE / "tiny-qwen3moe.imatrix-gguf"))
    m.merge(read_imatrix(MOE / "tiny-qwen3moe.imatrix.dat"))
    write_imatrix_gguf(m, tmp_path / "c.gguf")
    assert (tmp_path / "c.gguf").read_bytes() == (MOE / "tiny-qwen3moe.imatrix-combined-gguf").read_bytes()


def test_collect_moe_per_expert_like_llama_imatrix(tmp_path, capsys):
    """gguf-imatrix on the tiny qwen3moe model (F16, 8 experts, top-2; rebuilt from its seed) with
    calibration.txt (chunk 64, 24 chunks) against llama-imatrix's file: the same entries (router and
    3-D expert tensors included) and one count per expert, summing to 2 x the tokens.  Routing
    near-ties (activations differ in the last bits) may send a token to another expert: each count
    is within 0.5% of the tokens of llama's and at least 60% of the counts are equal.  Every column
    sum of a dense tensor is within 1%; of the experts whose count is equal, 90% have every column
    within 1% and all within 5%."""
    refs_tool = _load("moe_quant_references")
    src = refs_tool.source_model("tiny-qwen3moe", tmp_path)
    out = tmp_path / "im.gguf"
    rc = imatrix_main(["-m", str(src), "-f", str(fixture_path("models", "calibration.txt")), "-o", str(out),
                       "--chunk-size", "64", "--chunks", "24", "--no-progress", "--no-ppl"])
    capsys.readouterr()
    assert rc == 0
    ours, ref = read_imatrix(out), read_imatrix(MOE / "tiny-qwen3moe.imatrix-gguf")
    assert set(ours.entries) == set(ref.entries) and "blk.1.ffn_gate_inp.weight" in ref.entries
    n_tokens = int(ref.entries["blk.0.attn_q.weight"].counts[0])
    n_equal = n_mats = 0
    dense_worst, expert_errors = 0.0, []
    for name, e in ref.entries.items():
        o = ours.entries[name]
        assert o.counts.size == e.counts.size and o.counts.sum() == e.counts.sum() == (2 if e.n_mat > 1 else 1) * n_tokens, name
        assert np.abs(o.counts - e.counts).max() <= 0.005 * n_tokens, name
        per_o, per_e = o.sums.reshape(o.n_mat, -1), e.sums.reshape(e.n_mat, -1)
        rel = (np.abs(per_o - per_e) / np.abs(per_e)).max(axis=1)            # (n_mat,) worst column
        same = o.counts == e.counts                                            # (n_mat,)
        n_equal, n_mats = n_equal + int(same.sum()), n_mats + e.n_mat
        if e.n_mat == 1:
            dense_worst = max(dense_worst, float(rel[0]))
        else:
            expert_errors += rel[same].tolist()
    assert n_equal >= 0.6 * n_mats
    assert dense_worst < 0.01, f"worst per-column relative difference {dense_worst:.3%}"
    # an equal count may still hide one token routed in and another out: most, not all, within 1%
    errs = np.array(expert_errors)
    assert (errs < 0.01).mean() >= 0.9 and errs.max() < 0.05, f"per-expert worst column differences {errs}"
