"""gguf-convert: Hugging Face checkpoints (tiny random weights, real rebuilt tokenizers) to GGUF.

References: tools/convert_references/*.json, digests of what llama.cpp's own convert_hf_to_gguf.py wrote
for the same checkpoints (made by tools/make_convert_references.py; no torch needed here)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from . import hf_checkpoints as hf
from gguf_engine.convert import ConvertError, convert_model, plan_conversion, pre_tokenizer_name
from gguf_engine.gguf import GGUFReader

REF_DIR = hf.ROOT / "tools" / "convert_references"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Each reference case's checkpoint, written once: name -> (folder, config, float32 weights)."""
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            folder = tmp_path_factory.mktemp("hf") / name
            cfg, weights = hf.build_case(name, folder)
            cache[name] = (folder, cfg, weights)
        return cache[name]
    return get


@pytest.mark.parametrize("name", list(hf.CASES))
def test_matches_llamacpp_converter(name, built, tmp_path):
    """Every metadata key (type and value) and every tensor (name, order, type, shape, bytes) equals what
    llama.cpp's convert_hf_to_gguf.py wrote for the same checkpoint and --outtype.  Exact, no tolerance."""
    ref_path = REF_DIR / f"{name}.json"
    assert ref_path.is_file(), f"missing reference {ref_path}: run tools/make_convert_references.py"
    ref = json.loads(ref_path.read_text(encoding="utf-8"))
    folder, _, _ = built(name)
    out = tmp_path / "out.gguf"
    convert_model(folder, out, outtype=hf.CASES[name].outtype)
    ours = hf.gguf_digest(out)
    only_ref = sorted(set(ref["metadata"]) - set(ours["metadata"]))
    only_ours = sorted(set(ours["metadata"]) - set(ref["metadata"]))
    assert not only_ref and not only_ours, f"keys only in llama.cpp's file: {only_ref}; only in ours: {only_ours}"
    for key, entry in ref["metadata"].items():
        assert ours["metadata"][key] == entry, f"{key}: ours {ours['metadata'][key]} != llama.cpp {entry}"
    assert [t[0] for t in ours["tensors"]] == [t[0] for t in ref["tensors"]], "tensor order differs"
    for a, b in zip(ours["tensors"], ref["tensors"]):
        assert a == b, f"tensor {a[0]}: ours {a[1:]} != llama.cpp {b[1:]}"


def _kl_check(name, built, tmp_path, outtype="f32", n_ctx=None, long_factors=None):
    from gguf_engine.model import load_model
    folder, cfg, weights = built(name)
    out = tmp_path / f"{name}.gguf"
    convert_model(folder, out, outtype=outtype)
    ids = [int(i) for i in np.random.default_rng(7).integers(0, 4000, size=32)]
    ref = hf.reference_logits(cfg, hf.stored_values(weights, hf.CASES[name].dtype), ids, long_factors)
    with load_model(out, n_ctx=n_ctx) as model:
        ours = model.eval(ids, logits_all=True)
    n_vocab = ref.shape[1]
    return hf.kl_divergence(ref, ours[:, :n_vocab])


@pytest.mark.parametrize("name", [n for n in hf.CASES if n != "phi3"])     # phi3: test_round_trip_longrope
def test_round_trip_logits(name, built, tmp_path):
    """Logits of a float64 numpy forward pass over the safetensors weights (HF layout: rotary halves,
    Gemma's 1 + weight norms, Llama 3's smoothed RoPE frequencies, Gemma 2's soft-caps and sliding window)
    match gguf-engine's on the converted F32 file: KL <= 1e-6 per position."""
    kl = _kl_check(name, built, tmp_path)
    assert kl.max() <= 1e-6, f"max KL {kl.max():.3g}"


@pytest.mark.parametrize("n_ctx,long_factors", [(256, False), (1024, True)])
def test_round_trip_longrope(n_ctx, long_factors, built, tmp_path):
    """Phi-3's LongRoPE after conversion: within the original context (256) the engine uses the short
    factors, past it the long ones, as transformers does for sequences of those lengths; both with the
    attention factor the converter wrote.  KL <= 1e-6 per position against the float64 pass."""
    kl = _kl_check("phi3", built, tmp_path, n_ctx=n_ctx, long_factors=long_factors)
    assert kl.max() <= 1e-6, f"max KL {kl.max():.3g}"


@pytest.mark.parametrize("name,ftype", [("qwen3", "Q4_K_M"), ("mistral", "IQ4_XS"), ("llama3-bpe", "Q5_K_S"),
                                        ("gemma3", "Q6_K"), ("phi3", "Q4_K_M"), ("gemma2", "Q5_K_M")])
def test_direct_to_quant_equals_two_steps(name, ftype, built, tmp_path):
    """Converting straight to a quantization type writes the same bytes as converting to the source's float
    type (F32/F16/BF16) and then running the quantizer on that file."""
    from gguf_engine.quantize import quantize_model
    folder, _, _ = built(name)
    source = {"F32": "f32", "F16": "f16", "BF16": "bf16"}[hf.CASES[name].dtype]
    direct, mid, two = tmp_path / "direct.gguf", tmp_path / "mid.gguf", tmp_path / "two.gguf"
    convert_model(folder, direct, outtype=ftype)
    convert_model(folder, mid, outtype=source)
    quantize_model(mid, two, ftype)
    assert direct.read_bytes() == two.read_bytes()


BPE_VOCABS = [("smollm", None), ("llama-bpe", "llama-bpe"), ("qwen2", "qwen2"), ("gpt-2", "gpt-2"),
              ("starcoder", "starcoder")]


@pytest.mark.parametrize("family,vectors", BPE_VOCABS)
def test_rebuilt_bpe_tokenizer(family, vectors, tmp_path):
    """The tokenizer.json rebuilt from a GGUF vocabulary tokenizes every test string exactly as llama.cpp does
    with that vocabulary (llama.cpp's .inp/.out vectors, or the real model's recorded token ids), and the
    converter names the pre-tokenizer as the GGUF file does."""
    from tokenizers import Tokenizer
    src = hf.models_dir() / hf.SMOLLM2 if family == "smollm" else hf.VOCAB_DIR / f"ggml-vocab-{family}.gguf"
    hf.write_bpe_tokenizer(src, family, tmp_path)
    tok = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    if vectors:
        cases = [(text, ids, True) for text, ids in hf.read_vocab_tests(vectors)]
        tok.encode_special_tokens = True                    # the vectors are tokenized without special parsing
    else:                                                   # SmolLM2 adds no BOS (add_bos_token false)
        rec = json.loads((hf.SHARED / "models" / "real-model-tokenization.json").read_text(encoding="utf-8"))
        cases = [(r["text"], r["ids"], not r["special"]) for r in rec["smollm2"]]
    assert cases
    for text, want, plain in cases:
        tok.encode_special_tokens = plain
        assert tok.encode(text, add_special_tokens=False).ids == want, f"{text!r}"
    with GGUFReader(src) as r:
        assert pre_tokenizer_name(tmp_path / "tokenizer.json") == r.metadata["tokenizer.ggml.pre"]


def test_rebuilt_spm_tokenizer(tmp_path):
    """The tokenizer.model rebuilt from Gemma 3's GGUF vocabulary tokenizes every recorded string (without
    special-token parsing) to llama.cpp's ids, BOS included where llama.cpp adds it."""
    import sentencepiece as spm
    hf.write_spm_tokenizer(hf.models_dir() / hf.GEMMA3, tmp_path)
    sp = spm.SentencePieceProcessor()
    sp.LoadFromFile(str(tmp_path / "tokenizer.model"))
    rec = json.loads((hf.SHARED / "models" / "real-model-tokenization.json").read_text(encoding="utf-8"))["gemma3"]
    cases = [r for r in rec if not r["special"]]
    assert cases
    for r in cases:
        assert ([2] if r["add_bos"] else []) + sp.encode(r["text"]) == r["ids"], repr(r["text"])


def test_padded_vocabulary(built):
    """A config vocab_size past the tokenizer's ids gets [PADn] tokens of type UNUSED, as llama.cpp writes."""
    folder, cfg, _ = built("llama-smollm")
    model = plan_conversion(folder, "f16", vocab_only=True)
    md = model.metadata
    assert len(md["tokenizer.ggml.tokens"]) == cfg["vocab_size"] == 49216
    assert md["tokenizer.ggml.tokens"][49152] == "[PAD49152]" and md["tokenizer.ggml.token_type"][-1] == 5


def test_vocab_only_and_cli(built, tmp_path):
    """--vocab-only writes the metadata and no tensors; the command exits 0 and names the output."""
    folder, _, _ = built("qwen2")
    out = tmp_path / "vocab.gguf"
    r = subprocess.run([sys.executable, "-m", "gguf_engine.cli.convert", str(folder), "--vocab-only",
                        "--outfile", str(out), "--no-progress"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    with GGUFReader(out) as g:
        assert not g.tensors and g.metadata["tokenizer.ggml.pre"] == "qwen2"
        assert g.metadata["tokenizer.chat_template"]          # from chat_template.jinja


def test_errors_name_file_and_tensor(built, tmp_path):
    """Bad input is refused with a message naming the file (and tensor): pickles, a missing shard, a shape
    that disagrees with config.json, an unsupported dtype, an unknown architecture, an output directory."""
    import shutil
    from safetensors.numpy import save_file
    folder, cfg, weights = built("mistral")

    def copy(name):
        d = tmp_path / name
        shutil.copytree(folder, d)
        return d

    d = copy("pickle")
    for p in d.glob("model*"):
        p.unlink()
    (d / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(ConvertError, match=r"pytorch_model\.bin.*pickle"):
        convert_model(d, tmp_path / "x.gguf")

    d = copy("shard")
    (d / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ConvertError, match=r"model-00002-of-00002\.safetensors.*missing"):
        convert_model(d, tmp_path / "x.gguf")

    d = copy("shape")
    (d / "config.json").write_text(json.dumps({**cfg, "hidden_size": 128}))
    with pytest.raises(ConvertError, match=r"safetensors: tensor \S+: shape .* disagrees with config\.json"):
        convert_model(d, tmp_path / "x.gguf")

    d = copy("dtype")
    for p in d.glob("model*"):
        p.unlink()
    bad = {k: v.astype(np.int32) if k == "model.norm.weight" else v for k, v in weights.items()}
    save_file(bad, str(d / "model.safetensors"))
    with pytest.raises(ConvertError, match=r"model\.safetensors: tensor model\.norm\.weight: dtype I32"):
        convert_model(d, tmp_path / "x.gguf")

    d = copy("arch")
    (d / "config.json").write_text(json.dumps({**cfg, "architectures": ["FooForCausalLM"]}))
    with pytest.raises(ConvertError, match=r"FooForCausalLM.*supported: .*LlamaForCausalLM"):
        convert_model(d, tmp_path / "x.gguf")
    with pytest.raises(IsADirectoryError):
        convert_model(folder, tmp_path)
    assert not (tmp_path / "x.gguf").exists()
    assert not list(tmp_path.glob("*x.gguf*"))                 # nor a partial file


def test_unknown_pre_tokenizer_refused(tmp_path):
    """A BPE tokenizer whose check-text hash llama.cpp does not know is refused (llama.cpp could not run it)."""
    src = hf.models_dir() / hf.SMOLLM2
    hf.write_bpe_tokenizer(src, "smollm", tmp_path)
    tj = json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))
    tj["pre_tokenizer"] = {"type": "Whitespace"}
    (tmp_path / "tokenizer.json").write_text(json.dumps(tj), encoding="utf-8")
    with pytest.raises(ConvertError, match="pre-tokenizer not recognized"):
        pre_tokenizer_name(tmp_path / "tokenizer.json")


def testbf16_passthrough_kept_as_rounding_gives():
    """bf16 weights written as bf16 keep their stored words, which is exactly what widening to float32 and
    rounding back (llama.cpp's path) gives, NaNs made quiet included: every 16-bit pattern checked."""
    from gguf_engine.convert.converter import bf16_passthrough
    from kernels import quantize
    words = np.arange(1 << 16, dtype=np.uint16).reshape(256, 256)
    widened = (words.astype(np.uint32) << 16).view(np.float32)
    assert np.array_equal(bf16_passthrough(words).view(np.uint8), np.asarray(quantize(widened, "BF16")).view(np.uint8))
