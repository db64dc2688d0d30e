"""Architecture variants against llama.cpp, refusal of what the engine does not understand,
and the config's checks on hostile metadata.

The tiny variant models (tools/arch_models.py) are rebuilt from their seeds; their reference
logits (tests/data/*.reference.npz) come from llama.cpp and from a float64 NumPy forward pass.
Accuracy bar, as for the shared fixtures: mean KL(exact || ours) <= max(KL(exact || llama.cpp),
1e-6), and the greedy continuation equals the exact one up to its first near-tie (top-2 gap
< 0.05).
"""
from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from gguf_engine.gguf.constants import GGUFValueType
from gguf_engine.gguf.reader import GGUFReader
from gguf_engine.gguf.writer import GGUFWriter
from gguf_engine.model import ModelConfig, UnsupportedModelError, load_model
from gguf_engine.model.config import RopeScaling, config_from_metadata
from gguf_engine.model.loader import check_tensors
from gguf_engine.model.metadata import MetadataError
from gguf_engine.model.transformer import rope_tables
from tests.conftest import SHARED, fixture_path
from tests.test_model import BASE_MD, check_greedy, check_kl, mean_kl

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
VARIANTS = ["llama-rope-freqs", "llama-yarn", "phi3-short", "phi3-long", "gemma2", "phi3-q4km", "gemma2-q4km",
            "qwen3moe", "qwen3moe-q4km", "gpt-oss", "gpt-oss-f32"]


def _tool():
    name = "_tools_arch_models"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / "arch_models.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


def reference(name: str) -> dict:
    path = DATA / f"{name}.reference.npz"
    if not path.exists():
        pytest.fail(f"reference data missing: {path}", pytrace=False)
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def variant(tmp_path_factory):
    """name -> (path, reference): the model rebuilt from its seed, checked against the hash the
    reference was made with."""
    fixture_path("models", "tiny-llama-f32.gguf")             # the vocabulary source
    built = {}

    def get(name: str):
        if name not in built:
            ref = reference(name)
            path = tmp_path_factory.mktemp("arch") / f"{name}.gguf"
            digest = _tool().build(name, path)
            assert digest == str(ref["weights_sha256"]), f"{name}: rebuilt weights differ from the reference's"
            built[name] = (path, ref)
        return built[name]
    return get


# ------------------------------------------------------------------------------ variants vs llama.cpp

@pytest.mark.parametrize("name", VARIANTS)
def test_variant_logits_and_greedy(variant, name):
    """Llama 3 rope_freqs, YaRN, Phi-3 (short and long LongRoPE factors), Gemma 2, and Q4_K_M copies
    of the Phi-3 and Gemma 2 models (exact = float64 on the dequantized weights): prefill and
    token-by-token KL(exact || ours) within llama.cpp's own (or 1e-6); greedy decoding follows the
    exact path up to the first near-tie.  Each runs with the context its reference was made with."""
    path, ref = variant(name)
    with load_model(path, n_threads=2, n_ctx=_tool().MODELS[name].n_ctx) as m:
        for stepwise in (False, True):
            kl, bound = check_kl(m, ref, stepwise=stepwise)
            assert kl <= bound, f"{name} (stepwise={stepwise}): KL {kl:.3g} > bound {bound:.3g}"
        check_greedy(m, ref)


def test_llama_rope_freqs_are_applied(variant):
    """The rope_freqs tensor is consumed (config.rope_freqs) and changes the logits: the same model
    with its factors set to 1 lands far from the reference (KL > 1e-2)."""
    path, ref = variant("llama-rope-freqs")
    with load_model(path, n_threads=2) as m:
        assert m.config.rope_freqs and "rope_freqs.weight" in m.tensors_used
    flat = path.with_name("flat.gguf")
    _rewrite(path, flat, tensors={"rope_freqs.weight": np.ones(32, np.float32)})
    with load_model(flat, n_threads=2) as m:
        ours = m.eval(ref["tokens"], logits_all=True)
    assert mean_kl(ref["logits_exact"], ours) > 1e-2


def test_phi3_longrope_choice(variant):
    """Phi-3 takes the long factors when the context, padded to 256 as llama.cpp pads it, exceeds
    the original context (256), else the short ones; the two sets give clearly different logits.
    Its sliding window is read and not applied, as in llama.cpp; fused QKV and gate|up are consumed."""
    from gguf_engine.model.keymap import rope_factor_tensor
    from tests.test_model import mean_kl
    path, short = variant("phi3-short")
    _, long = variant("phi3-long")
    assert mean_kl(short["logits_exact"], long["logits_exact"]) > 1e-3
    with GGUFReader(path) as r:
        c = ModelConfig.from_reader(r)
        assert rope_factor_tensor(c, 256, r.tensors) == "rope_factors_short.weight"
        assert rope_factor_tensor(c, 257, r.tensors) == "rope_factors_long.weight"
        assert c.sliding_window == 0 and not any(c.swa_layers)
        assert c.rope_scaling.attn_factor == pytest.approx(1.2)
        assert {"blk.0.attn_qkv.weight", "blk.0.ffn_up.weight"} <= set(check_tensors(r, c, str(path)))


def test_gemma2_config(variant):
    """Gemma 2: every other layer slides (even layers), sliding layers keep the global RoPE base,
    soft-caps from the file, and llama.cpp's defaults (window 4096, caps 50 and 30) without keys."""
    path, _ = variant("gemma2")
    with GGUFReader(path) as r:
        c = ModelConfig.from_reader(r)
    assert c.swa_layers == (True, False, True, False) and c.sliding_window == 16
    assert c.rope_freq_base_swa == c.rope_freq_base and (c.attn_logit_softcap, c.final_logit_softcap) == (5, 10)
    assert c.tied_output and c.gelu and c.post_norms and c.embd_scale == pytest.approx(16.0)
    md = {k.replace("llama.", "gemma2."): v for k, v in BASE_MD.items()}
    md["general.architecture"] = "gemma2"
    d = config_from_metadata(md, set())
    assert (d.sliding_window, d.attn_logit_softcap, d.final_logit_softcap) == (4096, 50.0, 30.0)


def test_yarn_config_as_llama_cpp():
    """YaRN keys: freq_scale = 1/factor, ext_factor 1, and attn_factor = file's attn_factor times
    YaRN's magnitude divided by the one the rope adds itself (llama.cpp's cparams)."""
    md = dict(BASE_MD, **{"llama.rope.scaling.type": "yarn", "llama.rope.scaling.factor": 4.0,
                          "llama.rope.scaling.original_context_length": 128, "llama.rope.scaling.attn_factor": 0.5})
    c = config_from_metadata(md, set())
    s = c.rope_scaling
    assert c.rope_freq_scale == 0.25 and (s.kind, s.n_ctx_orig, s.ext_factor) == ("yarn", 128, 1.0)
    assert s.attn_factor == pytest.approx(0.5)                # (1 + 0.1 ln 4) / (1 + 0.1 ln 4) * 0.5
    assert (s.beta_fast, s.beta_slow) == (32.0, 1.0)


def test_rope_tables_scaling_properties():
    """rope_tables: factors of 1 change nothing; YaRN keeps the fastest pairs unscaled, fully
    interpolates the slowest, and scales the magnitude by attn_factor (1 + 0.1 ln factor)."""
    n_ctx, n_rot = 64, 32
    base = rope_tables(n_ctx, n_rot, n_rot, 10000.0, 1.0)
    ones = rope_tables(n_ctx, n_rot, n_rot, 10000.0, 1.0, np.ones(n_rot // 2))
    np.testing.assert_array_equal(base[0], ones[0])
    lin = rope_tables(n_ctx, n_rot, n_rot, 10000.0, 0.25)
    s = RopeScaling("yarn", n_ctx_orig=64, ext_factor=1.0, attn_factor=0.5)
    cos, sin = rope_tables(n_ctx, n_rot, n_rot, 10000.0, 0.25, scaling=s)
    mag = 0.5 * (1 + 0.1 * np.log(4.0))
    np.testing.assert_allclose(np.hypot(cos, sin), mag, rtol=1e-6)
    np.testing.assert_allclose(cos[:, 0], base[0][:, 0] * mag, rtol=1e-5, atol=1e-6)     # pair 0: unscaled
    np.testing.assert_allclose(cos[:, -1], lin[0][:, -1] * mag, rtol=1e-5, atol=1e-6)    # last: interpolated


# ------------------------------------------------------------------------------ every tensor consumed

def _fixture_models() -> list[Path]:
    models = SHARED / "models"
    tiny = sorted(p for p in models.glob("tiny-*.gguf") if ".imatrix." not in p.name)   # not the imatrix files
    return tiny + sorted((models / "q").glob("*.gguf"))


def test_every_tensor_consumed(variant, smollm2_path, gemma3_path):
    """Every tensor of every test model (shared tiny models and their quantized copies, the variant
    models, SmolLM2, Gemma 3) is consumed by the model; none is known-unused or skipped."""
    paths = _fixture_models() + [variant(n)[0] for n in VARIANTS] + [smollm2_path, gemma3_path]
    assert len(paths) > 30
    for p in paths:
        with GGUFReader(p) as r:
            used = check_tensors(r, ModelConfig.from_reader(r), str(p))
            assert sorted(used) == sorted(r.tensors), p


# ------------------------------------------------------------------------------ refusals

def _rewrite(src: Path, dst: Path, metadata: dict | None = None, tensors: dict | None = None) -> Path:
    """A copy of src with metadata keys set (value, GGUFValueType) or removed (None), and tensors
    added or replaced (float32 arrays); the other tensors keep their type and bytes."""
    metadata, tensors = metadata or {}, tensors or {}
    with GGUFReader(src) as r:
        w = GGUFWriter(dst)
        for key, value in r.metadata.items():
            if key not in metadata:
                w.add_key(key, value, r.type_spec(key))
        for key, new in metadata.items():
            if new is not None:
                w.add_key(key, new[0], new[1], *new[2:])
        for name, t in r.tensors.items():
            if name in tensors:
                continue
            if t.type.name in ("F32", "F16"):
                w.add_tensor(name, np.array(t.data))
            else:                                           # quantized: its bytes as they are
                w.add_tensor(name, np.asarray(t.raw).tobytes(), t.type, t.shape)
        for name, arr in tensors.items():
            w.add_tensor(name, arr)
        w.finish()
    return dst


F32 = GGUFValueType.FLOAT32
U32 = GGUFValueType.UINT32


@pytest.mark.parametrize("model,tensors,match", [
    ("tiny-qwen2-f32.gguf", {"rope_freqs.weight": np.ones(32, np.float32)}, "rope_freqs.weight.*qwen2 does not use"),
    ("tiny-llama-f32.gguf", {"blk.0.ffn_gate_exps.weight": np.zeros((8, 512, 256), np.float32)}, "mixture-of-experts"),
    ("tiny-llama-f32.gguf", {"blk.1.attn_sinks.weight": np.zeros(4, np.float32)}, "attention sinks"),
    ("tiny-llama-f32.gguf", {"blk.0.attn_output.bias": np.zeros(256, np.float32)}, "bias"),
    ("tiny-llama-f32.gguf", {"rope_factors_long.weight": np.ones(32, np.float32)}, "rope_factors_long"),
])
def test_unconsumed_tensor_refused(tmp_path, model, tensors, match):
    """A tensor the architecture does not consume is refused by name, before any weight is uploaded."""
    path = _rewrite(fixture_path("models", model), tmp_path / "m.gguf", tensors=tensors)
    with pytest.raises(UnsupportedModelError, match=match):
        load_model(path, n_threads=1)


@pytest.mark.parametrize("key,value,match", [
    ("llama.rope.scaling.type", ("longrope", GGUFValueType.STRING), "rope.scaling.type"),
    ("llama.rope.scaling.type", ("su", GGUFValueType.STRING), "rope.scaling.type"),
    ("llama.expert_count", (8, U32), "expert_count"),
    ("llama.rope.scaling.yarn_log_multiplier", (0.1, F32), "yarn_log_multiplier"),
    ("llama.attention.causal", (False, GGUFValueType.BOOL), "attention.causal"),
    ("llama.attention.layer_norm_epsilon", (1e-5, F32), "layer_norm_epsilon.*not understood"),
    ("llama.rope.scaling.beta", (2.0, F32), "rope.scaling.beta.*not understood"),
])
def test_unknown_metadata_refused(tmp_path, key, value, match):
    """A metadata key that would change the math and is not understood (or not supported at its
    value) is refused, naming the key."""
    path = _rewrite(fixture_path("models", "tiny-llama-f32.gguf"), tmp_path / "m.gguf", metadata={key: value})
    with pytest.raises(UnsupportedModelError, match=match):
        load_model(path, n_threads=1)


def test_harmless_keys_accepted():
    """Keys known to leave the math unchanged (at their neutral value) load."""
    md = dict(BASE_MD, **{"llama.expert_count": 0, "llama.expert_used_count": 0, "llama.attention.causal": True,
                          "llama.rope.scaling.finetuned": True})
    assert config_from_metadata(md, set()).n_layer == 2


# ------------------------------------------------------------------------------ config hardening



@pytest.mark.parametrize("key,value,match", [
    ("llama.block_count", np.array([2, 2], np.uint32), r"'llama\.block_count' \(array of 2 .*must be an integer"),
    ("llama.embedding_length", "64", r"'llama\.embedding_length' \(string '64'\) must be an integer"),
    ("llama.attention.head_count", float("inf"), r"'llama\.attention\.head_count' \(float inf\) must be an integer"),
    ("llama.attention.head_count", float("nan"), r"head_count' \(float nan\)"),
    ("llama.block_count", 0, r"'llama\.block_count' \(integer 0\) is out of range"),
    ("llama.block_count", 4294967295, r"'llama\.block_count' \(integer 4294967295\) is out of range"),
    ("llama.block_count", 1e20, r"'llama\.block_count' \(float 1e\+20\) is out of range"),
    ("llama.block_count", 2.5, r"block_count' \(float 2\.5\) must be an integer"),
    ("llama.block_count", True, r"block_count' \(bool True\) must be an integer"),
    ("llama.vocab_size", -2 ** 31, r"'llama\.vocab_size' \(integer -2147483648\) is out of range"),
    ("llama.context_length", 0, r"context_length' \(integer 0\) is out of range"),
    ("llama.attention.head_count_kv", 0, r"head_count_kv' \(integer 0\) is out of range"),
    ("llama.feed_forward_length", -1, r"feed_forward_length' \(integer -1\) is out of range"),
    ("llama.attention.layer_norm_rms_epsilon", -1e-5, r"layer_norm_rms_epsilon' \(float -1e-05\) is out of range"),
    ("llama.attention.layer_norm_rms_epsilon", np.array([1e-5], np.float32), r"rms_epsilon' \(array of 1"),
    ("llama.rope.freq_base", 0.0, r"freq_base' \(float 0\.0\) is out of range"),
    ("llama.rope.scaling.factor", float("inf"), r"scaling\.factor' \(float inf\) is out of range"),
    ("llama.rope.dimension_count", 17, r"dimension_count' \(integer 17\) is out of range"),
    ("llama.rope.dimension_count", 7, r"dimension_count' \(integer 7\) must be even"),
    ("llama.attention.head_count", np.array([4, 4, 4], np.uint32), r"head_count' \(array of 3 .*3 entries for 2"),
    ("llama.attention.head_count", np.array([4, 8], np.uint32), r"head_count' \(array of 2 .*varies across layers"),
    ("llama.rope.scaling.type", 3, r"scaling\.type' \(integer 3\) must be a string"),
    ("general.architecture", 7, r"'general\.architecture' \(integer 7\) must be a string"),
])
def test_config_rejects_bad_values(key, value, match):
    """Every key the config reads is type- and range-checked; the error names the key, its type and
    its value (issue items: arrays for scalars, inf head counts, zero/huge block counts, negative
    vocabulary sizes)."""
    with pytest.raises(MetadataError, match=match):
        config_from_metadata(dict(BASE_MD, **{key: value}), set())


@pytest.mark.parametrize("key,value,vtype,match", [
    ("llama.block_count", 4294967295, U32, "out of range"),
    ("llama.block_count", 1e20, F32, "out of range"),
    ("llama.block_count", 100000, U32, "out of range"),
    ("llama.block_count", 3, U32, r"does not match the file's tensors \(layers 0\.\.3 \(4 in all\)\)"),
    ("llama.block_count", 5, U32, "does not match the file's tensors"),
    ("llama.embedding_length", 512, U32, r"token_embd\.weight' has shape \(768, 256\)"),
    ("llama.vocab_size", 1000, U32, r"token_embd\.weight' has shape \(768, 256\)"),
    ("llama.attention.head_count_kv", 1, U32, "attn_k.weight' has shape"),
    ("llama.feed_forward_length", 1 << 20, U32, "ffn_gate.weight' has shape"),
])
def test_hostile_sizes_refused_before_allocation(tmp_path, key, value, vtype, match):
    """Sizes that disagree with the file's tensors or exceed sane bounds are refused quickly (well
    under a second of work, nothing allocated from them), naming the key or the tensor."""
    path = _rewrite(fixture_path("models", "tiny-llama-f32.gguf"), tmp_path / "m.gguf", metadata={key: (value, vtype)})
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=match):
        load_model(path, n_threads=1)
    assert time.perf_counter() - t0 < 5.0


@pytest.mark.parametrize("name", ["phi3-long", "gemma2", "llama-rope-freqs"])
@pytest.mark.parametrize("ngl", [2, -1])
def test_variant_offload_matches_cpu(variant, name, ngl):
    """The new architectures offload like the others: half the layers or everything on a device
    (the NumPy stand-in device of the offload tests) give the CPU's logits within 1e-4, prefill
    and decode steps (rope factors, soft-caps, windows and the boundary norm copies included)."""
    from tests.device_standin import StandinDevice
    from tests.test_offload import run_steps
    path, ref = variant(name)
    tokens = ref["tokens"][:24]
    n_ctx = _tool().MODELS[name].n_ctx
    with load_model(path, n_threads=2, n_ctx=n_ctx) as m:
        cpu = run_steps(m, tokens)
    with load_model(path, n_threads=2, n_ctx=n_ctx, n_gpu_layers=ngl, device=StandinDevice()) as m:
        assert m.n_gpu_layers == (2 if ngl == 2 else m.n_offloadable_layers)
        dev = run_steps(m, tokens)
    np.testing.assert_allclose(dev, cpu, atol=1e-4, rtol=0)


def test_moe_offload_stays_on_cpu(variant):
    """-ngl on a mixture-of-experts model: one RuntimeWarning saying every layer runs on the CPU,
    nothing offloaded (n_gpu_layers 0), and the CPU's logits exactly."""
    from tests.device_standin import StandinDevice
    from tests.test_offload import run_steps
    path, ref = variant("qwen3moe")
    tokens = ref["tokens"][:12]
    with load_model(path, n_threads=2, n_ctx=256) as m:
        cpu = run_steps(m, tokens)
    with pytest.warns(RuntimeWarning, match="mixture-of-experts.*every layer runs on the CPU"):
        m = load_model(path, n_threads=2, n_ctx=256, n_gpu_layers=-1, device=StandinDevice())
    with m:
        assert m.n_gpu_layers == 0
        np.testing.assert_array_equal(run_steps(m, tokens), cpu)


def test_qwen3moe_config(variant):
    """qwen3moe reads expert_count, expert_used_count and expert_feed_forward_length; the expert
    tensors are consumed; the same keys stay refused on a dense architecture (test above)."""
    path, _ = variant("qwen3moe")
    with GGUFReader(path) as r:
        c = ModelConfig.from_reader(r)
        used = set(check_tensors(r, c, str(path)))
    assert (c.n_expert, c.n_expert_used, c.n_ff_exp) == (8, 2, 128) and c.qk_norm
    assert {"blk.0.ffn_gate_inp.weight", "blk.0.ffn_gate_exps.weight", "blk.0.ffn_up_exps.weight",
            "blk.0.ffn_down_exps.weight"} <= used


def test_gpt_oss_config_and_sinks(variant):
    """gpt-oss: even layers slide (window 16 < the 64-token prompt) with the global RoPE base; the
    sinks, Q/K/V and output biases, router and expert biases and the MXFP4 experts are consumed; the
    sinks matter: with them pushed to -100 (no share of the attention) the logits move far from the
    reference (KL > 1e-3), and an F16 KV cache stays within the bound too."""
    path, ref = variant("gpt-oss")
    with GGUFReader(path) as r:
        c = ModelConfig.from_reader(r)
        used = set(check_tensors(r, c, str(path)))
        assert r.tensors["blk.0.ffn_down_exps.weight"].type.name == "MXFP4"
    assert c.swa_layers == (True, False, True, False) and c.sliding_window == 16
    assert c.rope_freq_base_swa == c.rope_freq_base and (c.n_expert, c.n_expert_used) == (8, 2)
    assert {"blk.1.attn_sinks.weight", "blk.1.attn_output.bias", "blk.1.attn_q.bias", "blk.1.ffn_gate_inp.bias",
            "blk.1.ffn_down_exps.bias", "blk.1.post_attention_norm.weight"} <= used
    with load_model(path, n_threads=2, n_ctx=256, cache_type="f16") as m:
        kl, bound = check_kl(m, ref)
        assert kl <= bound, f"F16 cache: KL {kl:.3g} > bound {bound:.3g}"
    flat = path.with_name("nosinks.gguf")
    _rewrite(path, flat, tensors={f"blk.{il}.attn_sinks.weight": np.full(4, -100.0, np.float32) for il in range(4)})
    with load_model(flat, n_threads=2, n_ctx=256) as m:
        assert mean_kl(ref["logits_exact"], m.eval(ref["tokens"], logits_all=True)) > 1e-3


@pytest.mark.parametrize("metadata,tensors,match", [
    ({"qwen3moe.expert_gating_func": (2, U32)}, {}, "expert_gating_func.*not understood"),
    ({"qwen3moe.expert_weights_scale": (2.5, F32)}, {}, "expert_weights_scale.*not understood"),
    ({"qwen3moe.expert_used_count": (9, U32)}, {}, "expert_used_count.*out of range"),
    ({}, {"blk.0.ffn_gate_shexp.weight": np.zeros((128, 256), np.float32)}, "expert weights of a kind qwen3moe"),
    ({}, {"blk.2.attn_sinks.weight": np.zeros(4, np.float32)}, "attention sinks"),
])
def test_moe_unknowns_refused(variant, tmp_path, metadata, tensors, match):
    """On a MoE architecture the expert keys it does not read (gating function, weight scale), a
    top-k above the expert count, shared-expert tensors and sinks it does not have are refused by name."""
    path, _ = variant("qwen3moe")
    bad = _rewrite(path, tmp_path / "m.gguf", metadata=metadata, tensors=tensors)
    with pytest.raises(ValueError, match=match):
        load_model(bad, n_threads=1)
