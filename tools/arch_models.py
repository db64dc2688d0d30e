"""Tiny random-weight models of the architecture variants, and their reference logits.

    python tools/arch_models.py build NAME OUT.gguf
    python tools/arch_models.py reference NAME [NAME ...] --llama-python PY [--out tests/data]
    python tools/arch_models.py imatrix NAME --llama-bin DIR [--out tests/data]

Each model (``MODELS``) has the shape of the shared tiny llama (dim 256, 4 layers, 4 heads,
2 KV heads, FFN 512) and its 768-token vocabulary, with weights drawn from a fixed seed, so
a test rebuilds the file instead of the repository carrying it.  The variants:

    llama-rope-freqs  Llama 3: a rope_freqs tensor (the Llama 3 long-context factors,
                      computed as the HF converter does for a short original context, so
                      the factors cover all three regimes: 1, the full factor, and the ramp)
    llama-yarn        YaRN rope scaling (factor 4, original context 128, attn_factor 0.9)
    phi3-short/-long  Phi-3: fused attn_qkv, gate|up fused in ffn_up, LongRoPE factor sets
                      (original context 256) with attn_factor 1.2, and a sliding window of 16
                      that llama.cpp ignores for phi3; the same file run with a 256-token
                      context (short factors) and a 512-token one (long factors)
    gemma2            Gemma 2: scaled embeddings, post-norms, GELU FFN, every other layer a
                      16-token sliding window, attention and final logit soft-caps (5, 10)
    qwen3moe          Qwen3-MoE: per-head Q/K norms, 8 experts of FFN 128, top-2, softmax
                      gating with the two weights renormalised (a router scaled so that the
                      choice varies from token to token and between layers)
    gpt-oss           gpt-oss: Q/K/V and output biases, attention sinks, every other layer a
                      16-token sliding window, 8 experts of FFN 128 (MXFP4, as the released files
                      store them) with biases, top-2 of the router logits weighted by their
                      softmax, the clamped SwiGLU; gpt-oss-f32: the same with F32 experts
    *-q4km            the same weights quantized to Q4_K_M by the project's quantizer (the exact
                      reference is then the float64 pass on the exactly dequantized weights)

``reference`` writes NAME.reference.npz with
    tokens, greedy_prompt      the shared tiny-llama test tokens (calibration text)
    logits_llamacpp            llama.cpp's logits for every position (float32)
    greedy_llamacpp            llama.cpp's greedy continuation (32 tokens)
    logits_exact               a float64 forward pass in NumPy (this file), rounded to float32
    greedy_exact, greedy_exact_gap   the float64 greedy continuation and its top-2 logit gaps
    weights_sha256             the hash of the generated tensors (a test checks its rebuild)
llama.cpp runs through llama-cpp-python in a separate interpreter (``--llama-python``; set
LLAMA_CPP_LIB_PATH to a llama.cpp build), via tools/llamacpp_logits.py.

``imatrix`` writes NAME.imatrix-gguf (GGUF format): llama-imatrix's importance matrix of the model over
IMATRIX_CHUNKS chunks of IMATRIX_CHUNK tokens of the shared calibration text (per-expert
statistics for the expert tensors).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gguf_engine.gguf.reader import GGUFReader  # noqa: E402
from gguf_engine.gguf.writer import GGUFWriter  # noqa: E402
from kernels import dequantize, quantize  # noqa: E402

SHARED_MODELS = ROOT.parent / "shared" / "fixtures" / "models"
VOCAB_MODEL = SHARED_MODELS / "tiny-llama-f32.gguf"
TOKENS_REF = SHARED_MODELS / "tiny-llama-f32.reference.npz"
N_GREEDY = 32
IMATRIX_CHUNK, IMATRIX_CHUNKS = 128, 8


@dataclass(frozen=True)
class Spec:
    """A tiny model: the architecture, its extra metadata, and what its reference forward does."""
    arch: str
    seed: int
    metadata: dict = field(default_factory=dict)     # {arch}.* key suffix -> value (str, int or float)
    rope_freqs: bool = False                         # a Llama 3 rope_freqs tensor
    longrope: bool = False                           # rope_factors_long/short tensors (Phi-3)
    neox: bool = False                               # RoPE on the two halves (else adjacent pairs)
    fused_qkv: bool = False                          # one attn_qkv tensor
    fused_gate_up: bool = False                      # ffn_up holds gate|up, no ffn_gate
    gemma: bool = False                              # scaled embeddings, post-norms, GELU, tied output
    swa_pattern: int = 0                             # every swa_pattern-th layer global (needs a window)
    n_ctx: int = 256                                 # the context llama.cpp runs with
    ftype: str = ""                                  # quantize the F32 model to this file type
    d: int = 256
    n_layer: int = 4
    n_head: int = 4
    n_head_kv: int = 2
    n_ff: int = 512
    n_ctx_train: int = 512
    rope_base: float = 10000.0
    qk_norm: bool = False                            # per-head RMS norms on Q and K
    n_expert: int = 0                                # mixture of experts (0: dense FFN)
    n_expert_used: int = 0
    n_ff_exp: int = 0
    oss: bool = False                                # gpt-oss: biases, sinks, its gating and SwiGLU
    expert_type: str = ""                            # the expert tensors' type ("": F32)


_PHI3 = dict(arch="phi3", seed=1703, longrope=True, neox=True, fused_qkv=True, fused_gate_up=True, metadata={
    "rope.scaling.original_context_length": 256, "rope.scaling.attn_factor": 1.2, "attention.sliding_window": 16})

MODELS: dict[str, Spec] = {
    "llama-rope-freqs": Spec("llama", seed=1701, rope_freqs=True),
    "llama-yarn": Spec("llama", seed=1702, metadata={
        "rope.scaling.type": "yarn", "rope.scaling.factor": 4.0,
        "rope.scaling.original_context_length": 128, "rope.scaling.attn_factor": 0.9}),
    "phi3-short": Spec(**_PHI3, n_ctx=256),
    "phi3-long": Spec(**_PHI3, n_ctx=512),
    "gemma2": Spec("gemma2", seed=1704, neox=True, gemma=True, swa_pattern=2, metadata={
        "attention.sliding_window": 16, "attn_logit_softcapping": 5.0, "final_logit_softcapping": 10.0}),
}
MODELS["qwen3moe"] = Spec("qwen3moe", seed=1705, neox=True, qk_norm=True, n_expert=8, n_expert_used=2, n_ff_exp=128,
                          metadata={"expert_count": 8, "expert_used_count": 2, "expert_feed_forward_length": 128})
MODELS["gpt-oss"] = Spec("gpt-oss", seed=1706, neox=True, oss=True, swa_pattern=2, n_expert=8, n_expert_used=2,
                         n_ff_exp=128, expert_type="MXFP4",
                         metadata={"expert_count": 8, "expert_used_count": 2, "expert_feed_forward_length": 128,
                                   "attention.sliding_window": 16})
MODELS["gpt-oss-f32"] = replace(MODELS["gpt-oss"], expert_type="")
MODELS["qwen3moe-q4km"] = replace(MODELS["qwen3moe"], ftype="Q4_K_M")
MODELS["phi3-q4km"] = replace(MODELS["phi3-long"], ftype="Q4_K_M")
MODELS["gemma2-q4km"] = replace(MODELS["gemma2"], ftype="Q4_K_M")


# ------------------------------------------------------------------------------ weights

def llama3_rope_factors(n_rot: int, base: float, factor: float = 8.0, low_freq_factor: float = 1.0,
                        high_freq_factor: float = 4.0, original_context: int = 64) -> np.ndarray:
    """The rope_freqs divisors HF's converter writes for Llama 3.1 (n_rot/2 float32): 1 for short
    wavelengths, ``factor`` for long ones, a smooth ramp between."""
    inv = base ** (-np.arange(0, n_rot, 2, dtype=np.float64) / n_rot)
    out = []
    for f in inv:
        wavelen = 2 * np.pi / f
        if wavelen < original_context / high_freq_factor:
            out.append(1.0)
        elif wavelen > original_context / low_freq_factor:
            out.append(factor)
        else:
            smooth = (original_context / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def weights(spec: Spec, n_vocab: int) -> dict[str, np.ndarray]:
    """The model's tensors (GGUF names, numpy shapes, float32), drawn from spec.seed."""
    rng = np.random.default_rng(spec.seed)
    d, H, Hkv, ff = spec.d, spec.n_head, spec.n_head_kv, spec.n_ff
    hd = d // H

    def mat(rows, cols, scale=1.0):
        return (rng.standard_normal((rows, cols)) * (scale / np.sqrt(cols))).astype(np.float32)

    def norm(n):
        return (1.0 + 0.2 * rng.standard_normal(n)).astype(np.float32)

    t = {"token_embd.weight": rng.standard_normal((n_vocab, d)).astype(np.float32)}
    for il in range(spec.n_layer):
        p = f"blk.{il}."
        t[p + "attn_norm.weight"] = norm(d)
        q, k, v = mat(H * hd, d, 2.0), mat(Hkv * hd, d, 2.0), mat(Hkv * hd, d)
        if spec.fused_qkv:
            t[p + "attn_qkv.weight"] = np.concatenate([q, k, v])
        else:
            t[p + "attn_q.weight"], t[p + "attn_k.weight"], t[p + "attn_v.weight"] = q, k, v
        t[p + "attn_output.weight"] = mat(d, H * hd)
        if spec.oss:
            for w, rows in (("q", H * hd), ("k", Hkv * hd), ("v", Hkv * hd), ("output", d)):
                t[p + f"attn_{w}.bias"] = (0.3 * rng.standard_normal(rows)).astype(np.float32)
            t[p + "attn_sinks.weight"] = (1.0 + rng.standard_normal(H)).astype(np.float32)
        if spec.gemma:
            t[p + "post_attention_norm.weight"] = norm(d)
        if spec.qk_norm:
            t[p + "attn_q_norm.weight"], t[p + "attn_k_norm.weight"] = norm(hd), norm(hd)
        t[p + ("post_attention_norm.weight" if spec.oss else "ffn_norm.weight")] = norm(d)
        if spec.n_expert:
            E, fe = spec.n_expert, spec.n_ff_exp
            t[p + "ffn_gate_inp.weight"] = mat(E, d, 8.0)           # logits of spread ~8: routing matters
            t[p + "ffn_gate_exps.weight"] = np.stack([mat(fe, d, 4.0 if spec.oss else 1.0) for _ in range(E)])
            t[p + "ffn_up_exps.weight"] = np.stack([mat(fe, d, 4.0 if spec.oss else 1.0) for _ in range(E)])
            t[p + "ffn_down_exps.weight"] = np.stack([mat(d, fe, 2.0) for _ in range(E)])
            if spec.oss:                                           # gates reach the SwiGLU's clamp at 7
                t[p + "ffn_gate_inp.bias"] = rng.standard_normal(E).astype(np.float32)
                t[p + "ffn_gate_exps.bias"] = rng.standard_normal((E, fe)).astype(np.float32)
                t[p + "ffn_up_exps.bias"] = rng.standard_normal((E, fe)).astype(np.float32)
                t[p + "ffn_down_exps.bias"] = (0.3 * rng.standard_normal((E, d))).astype(np.float32)
            continue
        gate, up = mat(ff, d), mat(ff, d)
        if spec.fused_gate_up:
            t[p + "ffn_up.weight"] = np.concatenate([gate, up])
        else:
            t[p + "ffn_gate.weight"], t[p + "ffn_up.weight"] = gate, up
        t[p + "ffn_down.weight"] = mat(d, ff)
        if spec.gemma:
            t[p + "post_ffw_norm.weight"] = norm(d)
    t["output_norm.weight"] = norm(d)
    if not spec.gemma:
        t["output.weight"] = mat(n_vocab, d, 4.0)
    if spec.rope_freqs:
        t["rope_freqs.weight"] = llama3_rope_factors(hd, spec.rope_base)
    if spec.longrope:
        t["rope_factors_long.weight"] = np.linspace(1.0, 8.0, hd // 2).astype(np.float32)
        t["rope_factors_short.weight"] = (1.0 + 0.5 * rng.random(hd // 2)).astype(np.float32)
    return t


def weights_hash(path: Path) -> str:
    """sha256 over the file's tensor names and stored bytes, in file order."""
    h = hashlib.sha256()
    with GGUFReader(path) as r:
        for name, t in r.tensors.items():
            h.update(name.encode())
            h.update(np.asarray(t.raw).tobytes())
    return h.hexdigest()


def build(name: str, out: Path) -> str:
    """Write model ``name`` to ``out``; returns its weights hash."""
    spec = MODELS[name]
    if spec.ftype:
        from gguf_engine.quantize import quantize_model
        with tempfile.TemporaryDirectory() as tmp:
            f32 = Path(tmp) / "f32.gguf"
            build_f32(spec, f32)
            quantize_model(f32, out, spec.ftype)
    else:
        build_f32(spec, out)
    return weights_hash(out)


def build_f32(spec: Spec, out: Path) -> None:
    a = spec.arch
    with GGUFReader(VOCAB_MODEL) as vocab:
        n_vocab = len(vocab.metadata["tokenizer.ggml.tokens"])
        tensors = weights(spec, n_vocab)
        w = GGUFWriter(out, a)
        w.add_string("general.name", f"tiny-random-{spec.seed}")   # not the arch: llama.cpp keys vocab fixes on it
        w.add_uint32(f"{a}.block_count", spec.n_layer)
        w.add_uint32(f"{a}.context_length", spec.n_ctx_train)
        w.add_uint32(f"{a}.embedding_length", spec.d)
        w.add_uint32(f"{a}.feed_forward_length", spec.n_ff)
        w.add_uint32(f"{a}.attention.head_count", spec.n_head)
        w.add_uint32(f"{a}.attention.head_count_kv", spec.n_head_kv)
        w.add_uint32(f"{a}.rope.dimension_count", spec.d // spec.n_head)
        w.add_float32(f"{a}.rope.freq_base", spec.rope_base)
        w.add_float32(f"{a}.attention.layer_norm_rms_epsilon", 1e-5)
        w.add_uint32(f"{a}.vocab_size", n_vocab)
        w.add_uint32("general.file_type", 0)
        for key, value in spec.metadata.items():
            if isinstance(value, str):
                w.add_string(f"{a}.{key}", value)
            elif isinstance(value, int):
                w.add_uint32(f"{a}.{key}", value)
            else:
                w.add_float32(f"{a}.{key}", value)
        for key in vocab.metadata:
            if key.startswith("tokenizer."):
                w.add_key(key, vocab.metadata[key], vocab.type_spec(key))
        for tname, arr in tensors.items():
            if spec.expert_type and tname.endswith("_exps.weight"):   # e.g. MXFP4, as gpt-oss files store them
                q = quantize(arr.reshape(-1, arr.shape[-1]), spec.expert_type)
                w.add_tensor(tname, q.tobytes(), spec.expert_type, arr.shape)
            else:
                w.add_tensor(tname, arr)
        w.finish()


# ------------------------------------------------------------------------------ exact forward

def _f32(x) -> float:
    """A metadata value as the file stores it (float32), widened."""
    return float(np.float32(x))


def pad256(n: int) -> int:
    return -(-n // 256) * 256


def rope_factors(spec: Spec, t: dict[str, np.ndarray]) -> np.ndarray | None:
    """The frequency divisors llama.cpp applies: rope_freqs, else the LongRoPE set its (256-padded)
    context picks against the original training context."""
    if "rope_freqs.weight" in t:
        return t["rope_freqs.weight"]
    if spec.longrope:
        n_orig = spec.metadata.get("rope.scaling.original_context_length", spec.n_ctx_train)
        return t["rope_factors_long.weight" if pad256(spec.n_ctx) > n_orig else "rope_factors_short.weight"]
    return None


def rope_angles(spec: Spec, n_pos: int, factors: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin (n_pos, n_rot/2) in float64, from the RoPE definitions (llama.cpp's semantics):
    linear/YaRN scaling, per-dimension frequency divisors and the attention factor."""
    md = spec.metadata
    n_rot = spec.d // spec.n_head
    base = _f32(spec.rope_base)
    inv = base ** (-np.arange(0, n_rot, 2, dtype=np.float64) / n_rot)
    if factors is not None:
        inv = inv / factors.astype(np.float64)
    factor = _f32(md.get("rope.scaling.factor", 0.0))
    scale = 1.0 if factor == 0 else 1.0 / factor
    pos = np.arange(n_pos, dtype=np.float64)[:, None]
    extrap = pos * inv
    mag = _f32(md.get("rope.scaling.attn_factor", 1.0))
    if md.get("rope.scaling.type") == "yarn":
        n_orig = md.get("rope.scaling.original_context_length", spec.n_ctx_train)
        # pair indices whose wavelength turns beta times over the original context
        def dim(beta):
            return n_rot * np.log(n_orig / (beta * 2 * np.pi)) / (2 * np.log(base))
        low, high = max(0.0, np.floor(dim(32.0))), min(n_rot - 1.0, np.ceil(dim(1.0)))
        i = np.arange(n_rot // 2)
        keep = 1 - np.clip((i - low) / max(0.001, high - low), 0, 1)   # 1: unscaled (high frequency)
        theta = extrap * scale * (1 - keep) + extrap * keep
        mag *= 1 + 0.1 * np.log(1 / scale) if factor > 1 else 1.0
    else:
        theta = extrap * scale
    return np.cos(theta) * mag, np.sin(theta) * mag


def forward_exact(spec: Spec, t: dict[str, np.ndarray], tokens: np.ndarray) -> np.ndarray:
    """float64 logits (n, n_vocab) of the forward pass over tokens from position 0."""
    d, H, Hkv, ff = spec.d, spec.n_head, spec.n_head_kv, spec.n_ff
    hd = d // H
    md = spec.metadata
    eps = _f32(1e-5)
    n = len(tokens)
    f = {k: v.astype(np.float64) for k, v in t.items()}
    cos, sin = rope_angles(spec, n, rope_factors(spec, t))
    attn_cap, final_cap = _f32(md.get("attn_logit_softcapping", 0.0)), _f32(md.get("final_logit_softcapping", 0.0))
    window = md.get("attention.sliding_window", 0) if spec.swa_pattern else 0

    def rms(x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w

    def rope(x):                      # (n, heads, hd)
        y = x.copy()
        if spec.neox:
            a, b = x[..., :hd // 2], x[..., hd // 2:]
        else:
            a, b = x[..., 0::2], x[..., 1::2]
        c, s = cos[:, None, :], sin[:, None, :]
        ra, rb = a * c - b * s, a * s + b * c
        if spec.neox:
            y[..., :hd // 2], y[..., hd // 2:] = ra, rb
        else:
            y[..., 0::2], y[..., 1::2] = ra, rb
        return y

    def gelu(x):
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))

    x = f["token_embd.weight"][tokens]                       # (n, d)
    if spec.gemma:
        x = x * np.sqrt(d)
    idx = np.arange(n)
    causal = np.where(idx[None, :] > idx[:, None], -np.inf, 0.0)
    sliding = np.where(idx[:, None] - idx[None, :] >= window, -np.inf, causal) if window else causal
    for il in range(spec.n_layer):
        p = f"blk.{il}."
        swa = spec.swa_pattern and il % spec.swa_pattern < spec.swa_pattern - 1
        xn = rms(x, f[p + "attn_norm.weight"])
        if spec.fused_qkv:
            qkv = xn @ f[p + "attn_qkv.weight"].T
            q, k, v = qkv[:, :H * hd], qkv[:, H * hd:(H + Hkv) * hd], qkv[:, (H + Hkv) * hd:]
        else:
            q, k, v = (xn @ f[p + f"attn_{w}.weight"].T for w in "qkv")
        if spec.oss:
            q, k, v = q + f[p + "attn_q.bias"], k + f[p + "attn_k.bias"], v + f[p + "attn_v.bias"]
        q, k, v = q.reshape(n, H, hd), k.reshape(n, Hkv, hd), v.reshape(n, Hkv, hd)
        if spec.qk_norm:
            q, k = rms(q, f[p + "attn_q_norm.weight"]), rms(k, f[p + "attn_k_norm.weight"])
        q, k = rope(q), rope(k)
        att = np.empty((n, H, hd))
        for h in range(H):
            kv = h // (H // Hkv)
            s = q[:, h] @ k[:, kv].T / np.sqrt(hd)
            if attn_cap:
                s = attn_cap * np.tanh(s / attn_cap)
            s = s + (sliding if swa else causal)
            m = s.max(-1, keepdims=True)
            if spec.oss:                                           # the sink: a logit in the denominator only
                m = np.maximum(m, f[p + "attn_sinks.weight"][h])
            w = np.exp(s - m)
            z = w.sum(-1, keepdims=True) + (np.exp(f[p + "attn_sinks.weight"][h] - m) if spec.oss else 0.0)
            att[:, h] = (w / z) @ v[:, kv]
        o = att.reshape(n, d) @ f[p + "attn_output.weight"].T
        if spec.oss:
            o = o + f[p + "attn_output.bias"]
        x = x + (rms(o, f[p + "post_attention_norm.weight"]) if spec.gemma else o)
        xn = rms(x, f[p + ("post_attention_norm.weight" if spec.oss else "ffn_norm.weight")])
        if spec.n_expert:
            x = x + moe_exact(spec, f, p, xn)
            continue
        if spec.fused_gate_up:
            gu = xn @ f[p + "ffn_up.weight"].T
            g, u = gu[:, :ff], gu[:, ff:]
        else:
            g, u = xn @ f[p + "ffn_gate.weight"].T, xn @ f[p + "ffn_up.weight"].T
        o = ((gelu(g) if spec.gemma else g / (1 + np.exp(-g))) * u) @ f[p + "ffn_down.weight"].T
        x = x + (rms(o, f[p + "post_ffw_norm.weight"]) if spec.gemma else o)
    logits = rms(x, f["output_norm.weight"]) @ f["output.weight" if "output.weight" in f else "token_embd.weight"].T
    return final_cap * np.tanh(logits / final_cap) if final_cap else logits


def moe_exact(spec: Spec, f: dict[str, np.ndarray], p: str, xn: np.ndarray) -> np.ndarray:
    """The mixture-of-experts FFN in float64 (llama.cpp's build_moe_ffn), xn (n, d) -> (n, d).
    qwen3moe: the top-k of softmax(router logits), their probabilities renormalised to sum 1, and
    the weighted sum of the chosen experts' SwiGLU FFNs.  gpt-oss: router and expert biases, the
    top-k of the logits weighted by their softmax, and the clamped SwiGLU
    (min(g, 7) sigmoid(1.702 min(g, 7)) (clamp(u, -7, 7) + 1))."""
    logits = xn @ f[p + "ffn_gate_inp.weight"].T + (f[p + "ffn_gate_inp.bias"] if spec.oss else 0.0)   # (n, E)
    probs = logits if spec.oss else np.exp(logits - logits.max(-1, keepdims=True))
    if not spec.oss:
        probs /= probs.sum(-1, keepdims=True)
    out = np.zeros_like(xn)
    for t in range(xn.shape[0]):
        top = np.argsort(-probs[t], kind="stable")[:spec.n_expert_used]
        if spec.oss:
            w = np.exp(probs[t, top] - probs[t, top].max())
            w /= w.sum()
        else:
            w = probs[t, top] / probs[t, top].sum()
        for e, we in zip(top, w):
            g = xn[t] @ f[p + "ffn_gate_exps.weight"][e].T + (f[p + "ffn_gate_exps.bias"][e] if spec.oss else 0.0)
            u = xn[t] @ f[p + "ffn_up_exps.weight"][e].T + (f[p + "ffn_up_exps.bias"][e] if spec.oss else 0.0)
            if spec.oss:
                g, u = np.minimum(g, 7.0), np.clip(u, -7.0, 7.0)
                a = g / (1 + np.exp(-1.702 * g)) * (u + 1)
            else:
                a = g / (1 + np.exp(-g)) * u
            y = a @ f[p + "ffn_down_exps.weight"][e].T + (f[p + "ffn_down_exps.bias"][e] if spec.oss else 0.0)
            out[t] += we * y
    return out


def greedy_exact(spec: Spec, t: dict[str, np.ndarray], prompt: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    toks, out, gaps = list(prompt), [], []
    for _ in range(n):
        last = forward_exact(spec, t, np.array(toks))[-1]
        top2 = np.sort(last)[-2:]
        out.append(int(np.argmax(last)))
        gaps.append(top2[1] - top2[0])
        toks.append(out[-1])
    return np.array(out, dtype=np.int32), np.array(gaps)


# ------------------------------------------------------------------------------ references

def reference(name: str, out_dir: Path, llama_python: str) -> Path:
    spec = MODELS[name]
    with np.load(TOKENS_REF) as z:
        tokens, prompt = z["tokens"].astype(np.int32), z["greedy_prompt"].astype(np.int32)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.gguf"
        digest = build(name, path)
        with GGUFReader(path) as r:
            t = {k: dequantize(v.raw, v.type, v.shape) for k, v in r.tensors.items()}   # exact, float32
        req = Path(tmp) / "req.json"
        req.write_text(json.dumps({"model": str(path), "n_ctx": spec.n_ctx, "tokens": tokens.tolist(),
                                   "prompt": prompt.tolist(),
                                   "n_greedy": N_GREEDY, "out": str(Path(tmp) / "cpp.npz")}))
        subprocess.run([llama_python, str(ROOT / "tools" / "llamacpp_logits.py"), str(req)], check=True)
        with np.load(Path(tmp) / "cpp.npz") as z:
            cpp_logits, cpp_greedy = z["logits"], z["greedy"]
    exact = forward_exact(spec, t, tokens)
    g_exact, g_gap = greedy_exact(spec, t, prompt, N_GREEDY)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{name}.reference.npz"
    np.savez_compressed(out, tokens=tokens, greedy_prompt=prompt, logits_llamacpp=cpp_logits.astype(np.float32),
                        greedy_llamacpp=cpp_greedy.astype(np.int32), logits_exact=exact.astype(np.float32),
                        greedy_exact=g_exact, greedy_exact_gap=g_gap, weights_sha256=np.array(digest))
    return out


def imatrix(name: str, out_dir: Path, llama_bin: Path) -> Path:
    """llama-imatrix's importance matrix of model ``name`` (see the module docstring)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{name}.imatrix-gguf"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.gguf"
        build(name, path)
        subprocess.run([str(llama_bin / "llama-imatrix"), "-m", str(path), "-f", str(SHARED_MODELS / "calibration.txt"),
                        "-o", str(out), "--output-format", "gguf", "-c", str(IMATRIX_CHUNK), "--chunks", str(IMATRIX_CHUNKS), "-t", "2",
                        "--no-ppl"], check=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="write one tiny model")
    b.add_argument("name", choices=sorted(MODELS))
    b.add_argument("out", type=Path)
    r = sub.add_parser("reference", help="write reference logits (needs llama-cpp-python)")
    r.add_argument("names", nargs="+", choices=sorted(MODELS))
    r.add_argument("--llama-python", required=True, help="an interpreter that can import llama_cpp")
    r.add_argument("--out", type=Path, default=ROOT / "tests" / "data")
    i = sub.add_parser("imatrix", help="write llama-imatrix's importance matrix (needs a llama.cpp build)")
    i.add_argument("name", choices=sorted(MODELS))
    i.add_argument("--llama-bin", type=Path, required=True, help="the folder holding llama-imatrix")
    i.add_argument("--out", type=Path, default=ROOT / "tests" / "data")
    a = ap.parse_args(argv)
    if a.cmd == "build":
        print(build(a.name, a.out))
    elif a.cmd == "imatrix":
        print(imatrix(a.name, a.out, a.llama_bin))
    else:
        for name in a.names:
            print(reference(name, a.out, a.llama_python))
    return 0


if __name__ == "__main__":
    sys.exit(main())
