"""Whole-model quantization (``quantize_model`` and ``gguf-quantize``) against llama-quantize's files."""
from __future__ import annotations

import numpy as np
import pytest

from gguf_engine.cli.quantize import main as quantize_main
from gguf_engine.gguf.reader import GGUFReader
from gguf_engine.quantize import (ImatrixError, KVOverride, LlamaFileType, MixtureOptions, ModelInfo,
                                  QuantizeError, plan_types, quantize_model, read_imatrix)
from kernels.types import BLOCK_SIZES, GGMLType

from .conftest import fixture_path

Q_DIR = ("models", "q")
# every ftype llama-quantize made from the fixture model with the fixture imatrix
IMATRIX_FTYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q2_K_S", "Q3_K_S", "Q3_K_M", "Q3_K_L",
                  "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K", "IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS",
                  "IQ2_S", "IQ2_M", "IQ3_XXS", "IQ3_XS", "IQ3_S", "IQ3_M", "IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0"]
PLAIN_FTYPES = ["Q3_K_M", "Q4_K_M", "IQ4_XS"]
MIN_IDENTICAL_BLOCKS = 0.99


def _f16():
    return fixture_path("models", "tiny-llama-f16.gguf")


def _imatrix():
    return fixture_path("models", "tiny-llama.imatrix.gguf")


def _reference(ftype: str, with_imatrix: bool):
    return fixture_path(*Q_DIR, f"tiny-llama-{ftype}{'.imatrix' if with_imatrix else ''}.gguf")


def _block_agreement(ours: GGUFReader, ref: GGUFReader) -> tuple[int, int]:
    """(identical blocks, all blocks) over every tensor; float tensors compared per 256 values."""
    same = total = 0
    for name, tr in ref.tensors.items():
        to = ours.tensors[name]
        bs, ts = BLOCK_SIZES[tr.type]
        step = ts * (256 if bs == 1 else 1)
        a, b = to.raw.reshape(-1, step), tr.raw.reshape(-1, step)
        eq = (a == b).all(axis=1)
        same += int(eq.sum())
        total += eq.size
    return same, total


def test_planned_types_equal_llamacpp_files():
    """For every reference file, the planned tensor types equal the file's types exactly (no encoding)."""
    im = read_imatrix(_imatrix())
    with GGUFReader(_f16()) as r:
        info = ModelInfo.from_metadata(r.metadata)
        tensors = {n: (t.shape, t.type) for n, t in r.tensors.items()}
    for ftype, with_im in [(f, True) for f in IMATRIX_FTYPES] + [(f, False) for f in PLAIN_FTYPES]:
        opts = MixtureOptions(LlamaFileType[f"MOSTLY_{ftype}"], has_imatrix=with_im and bool(im.entries))
        plan = plan_types(tensors, info, opts)
        with GGUFReader(_reference(ftype, with_im)) as ref:
            assert list(ref.tensors) == plan.order, ftype                 # same tensor order too
            assert {n: t.type for n, t in ref.tensors.items()} == plan.types, ftype


@pytest.mark.parametrize("ftype", IMATRIX_FTYPES)
def test_quantize_matches_llamacpp_with_imatrix(ftype, tmp_path):
    """Tensor types and metadata equal llama.cpp's file; at least 99% of all blocks byte-identical."""
    out = tmp_path / f"{ftype}.gguf"
    res = quantize_model(_f16(), out, ftype, imatrix=_imatrix())
    with GGUFReader(out) as ours, GGUFReader(_reference(ftype, True)) as ref:
        assert {n: t.type for n, t in ours.tensors.items()} == {n: t.type for n, t in ref.tensors.items()}
        assert list(ours.metadata) == list(ref.metadata)
        for key, value in ref.metadata.items():
            assert ours.value_types[key] == ref.value_types[key], key
            if key == "quantize.imatrix.file":      # the path the file was made from differs
                assert ours.metadata[key].endswith("tiny-llama.imatrix.gguf")
            elif isinstance(value, (str, int, float, bool)):
                assert ours.metadata[key] == value, key
        same, total = _block_agreement(ours, ref)
    assert same / total >= MIN_IDENTICAL_BLOCKS, f"{ftype}: {same}/{total} blocks identical"
    assert res.size_after == sum(t.n_bytes for t in GGUFReader(out).tensors.values())


@pytest.mark.parametrize("ftype", PLAIN_FTYPES)
def test_quantize_matches_llamacpp_without_imatrix(ftype, tmp_path):
    """Without an imatrix: same types as llama.cpp, at least 99% of blocks byte-identical."""
    out = tmp_path / f"{ftype}.gguf"
    quantize_model(_f16(), out, ftype)
    with GGUFReader(out) as ours, GGUFReader(_reference(ftype, False)) as ref:
        assert {n: t.type for n, t in ours.tensors.items()} == {n: t.type for n, t in ref.tensors.items()}
        assert not any(k.startswith("quantize.imatrix") for k in ours.metadata)
        same, total = _block_agreement(ours, ref)
    assert same / total >= MIN_IDENTICAL_BLOCKS, f"{ftype}: {same}/{total} blocks identical"


def test_legacy_imatrix_gives_same_bytes(tmp_path):
    """The legacy .dat importance matrix quantizes to exactly the same bytes as the GGUF one (Q4_0)."""
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    quantize_model(_f16(), a, "q4_0", imatrix=_imatrix())
    quantize_model(_f16(), b, "Q4_0", imatrix=fixture_path("models", "tiny-llama.imatrix.dat"))
    with GGUFReader(a) as ra, GGUFReader(b) as rb:
        for n, t in ra.tensors.items():
            assert np.array_equal(t.raw, rb.tensors[n].raw), n
        assert rb.metadata["quantize.imatrix.chunks_count"] == 40
        assert rb.metadata["quantize.imatrix.entries_count"] == 28


def test_metadata_kept_and_set(tmp_path):
    """All keys kept with their types; file_type/quantization_version set; --override-kv applied."""
    out = tmp_path / "q8.gguf"
    quantize_model(_f16(), out, "Q8_0", override_kv=["general.name=str:renamed", "llama.context_length=int:-64",
                                                     KVOverride.parse("x.flag=bool:true")])
    with GGUFReader(_f16()) as src, GGUFReader(out) as r:
        for key, value in src.metadata.items():
            assert key in r.metadata and r.value_types[key] == src.value_types[key], key
        assert r.metadata["general.file_type"] == LlamaFileType.MOSTLY_Q8_0
        assert r.metadata["general.quantization_version"] == 2
        assert r.metadata["general.name"] == "renamed"
        assert r.metadata["llama.context_length"] == 64 and r.metadata["x.flag"] is True
        assert list(r.metadata["tokenizer.ggml.tokens"]) == list(src.metadata["tokenizer.ggml.tokens"])
        assert r.tensors["blk.0.attn_norm.weight"].type == GGMLType.F32


def test_refusals(tmp_path):
    """Clear errors: same input/output, already-quantized input, missing imatrix for IQ2_XXS,
    a mis-sized imatrix entry; nothing is left behind at the output path."""
    out = tmp_path / "out.gguf"
    with pytest.raises(QuantizeError, match="same"):
        quantize_model(_f16(), _f16(), "Q4_0")
    with pytest.raises(QuantizeError, match="requantizing from type Q6_K is disabled"):
        quantize_model(_reference("Q4_0", True), out, "Q8_0")
    with pytest.raises(QuantizeError, match="requires an importance matrix"):
        quantize_model(_f16(), out, "IQ2_XXS")
    bad = {"blk.0.attn_q.weight": np.ones(128, np.float32)}
    with pytest.raises(ImatrixError, match="blk.0.attn_q.weight"):
        quantize_model(_f16(), out, "Q4_0", imatrix=bad)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_cli(tmp_path, capsys):
    """gguf-quantize: case-insensitive TYPE, per-tensor log and summary; exit 1 with a message on bad input."""
    out = tmp_path / "o.gguf"
    rc = quantize_main([str(_f16()), str(out), "q8_0", "1", "--no-progress", "--tensor-type", "ffn_down=f16",
                        "--leave-output-tensor"])
    text = capsys.readouterr().out
    assert rc == 0 and "blk.0.ffn_down.weight" in text and "converting to Q8_0" in text and "bits per weight" in text
    with GGUFReader(out) as r:
        assert r.tensors["blk.1.ffn_down.weight"].type == GGMLType.F16
        assert r.tensors["output.weight"].type == GGMLType.F16
        assert r.tensors["blk.1.ffn_up.weight"].type == GGMLType.Q8_0
    src = tmp_path / "model.gguf"                       # llama-quantize's short form: in TYPE
    src.write_bytes(_f16().read_bytes())
    assert quantize_main([str(src), "Q8_0", "--no-progress", "-q"]) == 0
    assert (tmp_path / "ggml-model-Q8_0.gguf").exists()
    assert quantize_main([str(_f16()), "IQ2_XS", "--dry-run"]) == 0      # sizes only, no imatrix needed
    text = capsys.readouterr().out
    assert "quant size  =     0.85 MiB (2.60 BPW)" in text and "will require an imatrix" in text
    assert not (tmp_path / "ggml-model-IQ2_XS.gguf").exists()
    assert quantize_main([str(_f16()), str(out), "Q9_K"]) == 1
    assert "invalid quantization type" in capsys.readouterr().err
    assert quantize_main([str(tmp_path / "missing.gguf"), str(out), "Q4_0"]) == 1
    assert quantize_main([str(_f16()), str(out), "Q4_0", "--include-weights", "a", "--exclude-weights", "b"]) == 1
    with pytest.raises(SystemExit):
        quantize_main(["--help"])
    helptext = capsys.readouterr().out
    assert "IQ4_XS" in helptext and "bpw" in helptext and "COPY" in helptext


def test_output_runs_in_engine(tmp_path):
    """A Q4_K_M file we made loads in the engine and gives the same logits as llama.cpp's Q4_K_M file
    (identical bytes give identical logits; tolerance 1e-5 absolute for any block difference)."""
    from gguf_engine.model import load_model

    out = tmp_path / "q4km.gguf"
    quantize_model(_f16(), out, "Q4_K_M", imatrix=_imatrix())
    ref = np.load(fixture_path(*Q_DIR, "tiny-llama-Q4_K_M.imatrix.reference.npz"))
    tokens = ref["tokens"][:16]
    with load_model(out, n_ctx=32) as ours, load_model(_reference("Q4_K_M", True), n_ctx=32) as theirs:
        a = ours.eval(tokens, logits_all=True)
        b = theirs.eval(tokens, logits_all=True)
    assert a.shape == (16, 768) and np.isfinite(a).all()
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_expert_tensors_use_their_own_imatrix_rows(tmp_path):
    """A 3D expert tensor (n_expert, rows, cols) is quantized expert by expert, each with its own slice of
    the imatrix, byte-identical to quantizing the slices directly; 1D tensors stay F32."""
    from gguf_engine.gguf.writer import GGUFWriter
    from kernels import quantize

    rng = np.random.default_rng(1)
    experts = rng.standard_normal((2, 8, 256)).astype(np.float32)          # (n_expert, rows, cols)
    src = tmp_path / "moe.gguf"
    with GGUFWriter(src, arch="llama") as w:
        w.add_uint32("llama.block_count", 1)
        w.add_uint32("llama.attention.head_count", 4)
        w.add_uint32("llama.attention.head_count_kv", 4)
        w.add_uint32("llama.expert_count", 2)
        w.add_tensor("blk.0.ffn_up_exps.weight", experts)
        w.add_tensor("blk.0.ffn_norm.weight", np.ones(256, np.float32))
    weights = rng.uniform(0.1, 2.0, (2, 256)).astype(np.float32)
    out = tmp_path / "moe-q4.gguf"
    quantize_model(src, out, "Q4_K_M", imatrix={"blk.0.ffn_up_exps.weight": weights.reshape(-1)})
    with GGUFReader(out) as r:
        t = r.tensors["blk.0.ffn_up_exps.weight"]
        assert t.type == GGMLType.Q4_K and t.shape == (2, 8, 256)
        got = t.raw.reshape(2, 8, -1)
        for e in range(2):
            np.testing.assert_array_equal(got[e], quantize(experts[e], GGMLType.Q4_K, weights[e]))
        assert r.tensors["blk.0.ffn_norm.weight"].type == GGMLType.F32
