"""Tiny Hugging Face checkpoints for the converter tests: random weights in HF layout (safetensors via
the ``safetensors`` package, config.json) and REAL tokenizers rebuilt from GGUF vocabularies (tokens,
merges and special ids from the file; the pre-tokenizer, normalizer and post-processor of the model
family the vocabulary comes from).  Also a float64 numpy forward pass over the HF weights."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gguf_engine.gguf import GGUFReader

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "fixtures"
VOCAB_DIR = SHARED / "vocab"
SMOLLM2 = "smollm2-135m-instruct-q4_1.gguf"

_LLAMA3_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
             r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_BYTELEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}

# pre-tokenizer family -> (normalizer, pre_tokenizer, adds BOS)
FAMILIES = {
    "smollm": (None, {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}, False),
    "llama-bpe": (None, {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": _LLAMA3_RE}, "behavior": "Isolated", "invert": False},
        _BYTELEVEL]}, True),
    "gpt-2": (None, {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
              False),
    "qwen2": ({"type": "NFC"}, {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": _QWEN2_RE}, "behavior": "Isolated", "invert": False},
        _BYTELEVEL]}, False),
}
FAMILIES["starcoder"] = FAMILIES["smollm"]          # SmolLM2 kept StarCoder's pre-tokenizer, not its vocabulary
_SPECIAL_KEYS = {"bos": "bos_token_id", "eos": "eos_token_id", "unk": "unknown_token_id", "pad": "padding_token_id"}


def models_dir() -> Path:
    import os
    return Path(os.environ.get("GGUF_ENGINE_MODELS", ROOT / "models"))


def write_bpe_tokenizer(vocab_gguf: Path, family: str, out: Path, n_vocab: int | None = None) -> dict:
    """tokenizer.json + tokenizer_config.json rebuilt from a GGUF BPE vocabulary; returns the special ids."""
    with GGUFReader(vocab_gguf) as r:
        md = r.metadata
        tokens = list(md["tokenizer.ggml.tokens"])
        types = [int(t) for t in md["tokenizer.ggml.token_type"]]
        merges = [m.split(" ", 1) for m in md["tokenizer.ggml.merges"]]
        special = {typ: int(md[f"tokenizer.ggml.{k}"]) for typ, k in _SPECIAL_KEYS.items()
                   if f"tokenizer.ggml.{k}" in md}
        template = md.get("tokenizer.chat_template")
    if n_vocab is not None:
        tokens, types = tokens[:n_vocab], types[:n_vocab]
        keep = set(tokens)
        merges = [m for m in merges if m[0] in keep and m[1] in keep and m[0] + m[1] in keep]
        special = {k: v for k, v in special.items() if v < n_vocab}
    norm, pre, adds_bos = FAMILIES[family]
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
              "special": types[i] == 3} for i, t in enumerate(tokens) if types[i] in (3, 4)]
    vocab = {t: i for i, t in enumerate(tokens)}
    if adds_bos:
        bos = tokens[special["bos"]]
        post = {"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {bos: {"id": bos, "ids": [special["bos"]], "tokens": [bos]}}}
    else:
        post = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    tj = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": norm,
          "pre_tokenizer": pre, "post_processor": post,
          "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
          "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                    "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                    "ignore_merges": family == "llama-bpe", "vocab": vocab, "merges": merges}}
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False), encoding="utf-8")
    cfg = {f"{typ}_token": tokens[i] for typ, i in special.items()}
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    if template is not None:
        cfg["chat_template"] = template
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, ensure_ascii=False), encoding="utf-8")
    return special


GEMMA3 = "gemma-3-270m-q4_k_m.gguf"


def write_spm_tokenizer(vocab_gguf: Path, out: Path) -> dict:
    """tokenizer.model (SentencePiece BPE with byte fallback, Gemma's normalizer settings: no dummy
    prefix, no whitespace folding) + tokenizer_config.json rebuilt from a GGUF SPM vocabulary."""
    from sentencepiece import sentencepiece_model_pb2 as pb
    with GGUFReader(vocab_gguf) as r:
        md = r.metadata
        tokens = list(md["tokenizer.ggml.tokens"])
        scores = [float(x) for x in md["tokenizer.ggml.scores"]]
        types = [int(t) for t in md["tokenizer.ggml.token_type"]]
        special = {typ: int(md[f"tokenizer.ggml.{k}"]) for typ, k in _SPECIAL_KEYS.items()
                   if f"tokenizer.ggml.{k}" in md}
        template = md.get("tokenizer.chat_template")
        add_bos = bool(md.get("tokenizer.ggml.add_bos_token", True))
        add_eos = bool(md.get("tokenizer.ggml.add_eos_token", False))
    m = pb.ModelProto()
    ts = m.trainer_spec
    ts.model_type = pb.TrainerSpec.BPE
    ts.vocab_size = len(tokens)
    ts.byte_fallback = True
    ts.unk_id, ts.bos_id, ts.eos_id, ts.pad_id = special["unk"], special["bos"], special["eos"], special["pad"]
    ns = m.normalizer_spec
    ns.name, ns.add_dummy_prefix, ns.remove_extra_whitespaces, ns.escape_whitespaces = "identity", False, False, True
    for text, score, t in zip(tokens, scores, types):
        piece = m.pieces.add()
        # the GGUF stores user-defined pieces with spaces where the model had U+2581
        piece.piece = text.replace(" ", "\u2581") if t == 4 else text
        piece.score = score
        piece.type = t
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.model").write_bytes(m.SerializeToString())
    cfg = {f"{typ}_token": tokens[i] for typ, i in special.items()}
    cfg.update({"tokenizer_class": "GemmaTokenizer", "add_bos_token": add_bos, "add_eos_token": add_eos})
    if template is not None:
        cfg["chat_template"] = template
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, ensure_ascii=False), encoding="utf-8")
    return special


def read_vocab_tests(name: str) -> list[tuple[str, list[int]]]:
    """llama.cpp's tokenizer test vectors for ggml-vocab-NAME.gguf."""
    inp = (VOCAB_DIR / f"ggml-vocab-{name}.gguf.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    out = (VOCAB_DIR / f"ggml-vocab-{name}.gguf.out").read_text(encoding="utf-8").split("\n")
    texts = inp[:-1] if inp[-1].strip() == "" else inp
    return [(t, [int(x) for x in o.split()]) for t, o in zip(texts, out)]


# -- weights ----------------------------------------------------------------------------------------

def make_config(arch: str, n_vocab: int, special: dict, **over) -> dict:
    """config.json for a tiny model (dim 64, 2 layers, 4 heads, 2 KV heads, head size 16)."""
    hf = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
          "qwen3": "Qwen3ForCausalLM", "gemma3": "Gemma3ForCausalLM", "phi3": "Phi3ForCausalLM",
          "gemma2": "Gemma2ForCausalLM"}[arch]
    cfg = {"architectures": [hf], "model_type": {"gemma3": "gemma3_text"}.get(arch, arch), "vocab_size": n_vocab,
           "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
           "num_key_value_heads": 2, "max_position_embeddings": 512, "rms_norm_eps": 1e-5,
           "rope_theta": 10000.0, "tie_word_embeddings": False, "torch_dtype": "float32"}
    if arch in ("qwen3", "gemma3", "llama", "mistral", "gemma2"):
        cfg["head_dim"] = 16
    if arch == "gemma2":
        cfg.update({"rms_norm_eps": 1e-6, "sliding_window": 8, "query_pre_attn_scalar": 16,
                    "hidden_activation": "gelu_pytorch_tanh", "tie_word_embeddings": True,
                    "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0})
    if arch == "gemma3":
        cfg.update({"rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0,
                    "sliding_window": 8, "query_pre_attn_scalar": 16, "hidden_activation": "gelu_pytorch_tanh",
                    "tie_word_embeddings": True, "final_logit_softcapping": None, "attn_logit_softcapping": None})
    for typ in ("bos", "eos", "pad"):
        if typ in special:
            cfg[f"{typ}_token_id"] = special[typ]
    cfg.update(over)
    return cfg


def make_weights(cfg: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 weights in HF layout (scaled so activations stay O(1))."""
    rng = np.random.default_rng(seed)
    arch = cfg["model_type"].replace("gemma3_text", "gemma3")
    gemma = arch in ("gemma2", "gemma3")
    d, ff, nl = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim", d // nh)

    def mat(rows, cols):
        return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)

    def norm(n):
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32) if not gemma else \
            (0.1 * rng.standard_normal(n)).astype(np.float32)

    w = {"model.embed_tokens.weight": rng.standard_normal((cfg["vocab_size"], d)).astype(np.float32),
         "model.norm.weight": norm(d)}
    if not cfg.get("tie_word_embeddings"):
        w["lm_head.weight"] = mat(cfg["vocab_size"], d)
    for i in range(nl):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = norm(d)
        w[p + "post_attention_layernorm.weight"] = norm(d)
        w[p + "self_attn.q_proj.weight"] = mat(nh * hd, d)
        w[p + "self_attn.k_proj.weight"] = mat(nkv * hd, d)
        w[p + "self_attn.v_proj.weight"] = mat(nkv * hd, d)
        w[p + "self_attn.o_proj.weight"] = mat(d, nh * hd)
        w[p + "mlp.gate_proj.weight"] = mat(ff, d)
        w[p + "mlp.up_proj.weight"] = mat(ff, d)
        w[p + "mlp.down_proj.weight"] = mat(d, ff)
        if arch == "qwen2":
            for k, n in (("q", nh * hd), ("k", nkv * hd), ("v", nkv * hd)):
                w[p + f"self_attn.{k}_proj.bias"] = (0.1 * rng.standard_normal(n)).astype(np.float32)
        if arch in ("qwen3", "gemma3"):
            w[p + "self_attn.q_norm.weight"] = norm(hd)
            w[p + "self_attn.k_norm.weight"] = norm(hd)
        if gemma:
            w[p + "pre_feedforward_layernorm.weight"] = norm(d)
            w[p + "post_feedforward_layernorm.weight"] = norm(d)
        if arch == "phi3":                       # Phi-3 stores Q|K|V and gate|up fused
            w[p + "self_attn.qkv_proj.weight"] = np.concatenate([w.pop(p + f"self_attn.{k}_proj.weight")
                                                                 for k in "qkv"])
            w[p + "mlp.gate_up_proj.weight"] = np.concatenate([w.pop(p + "mlp.gate_proj.weight"),
                                                               w.pop(p + "mlp.up_proj.weight")])
    return w


def bf16_round(a: np.ndarray) -> np.ndarray:
    """float32 -> the nearest bfloat16 (ties to even), as uint16 words."""
    u = a.astype(np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def write_checkpoint(folder: Path, cfg: dict, weights: dict[str, np.ndarray], dtype: str = "F32",
                     shards: int = 1) -> None:
    """safetensors file(s) (``dtype`` F32, F16 or BF16) and config.json."""
    from safetensors.numpy import save_file
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg, indent=1), encoding="utf-8")
    if dtype == "F16":
        weights = {k: v.astype(np.float16) for k, v in weights.items()}
    names = list(weights)
    groups = [names[i::shards] for i in range(shards)]
    if shards == 1:
        _save(folder / "model.safetensors", {n: weights[n] for n in names}, dtype, save_file)
        return
    weight_map = {}
    for k, g in enumerate(groups):
        fname = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        _save(folder / fname, {n: weights[n] for n in g}, dtype, save_file)
        weight_map.update({n: fname for n in g})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}),
                                                         encoding="utf-8")


def _save(path: Path, tensors: dict[str, np.ndarray], dtype: str, save_file) -> None:
    if dtype != "BF16":
        save_file(tensors, str(path))
        return
    # the numpy API has no bfloat16: write the file with uint16 words, then relabel them BF16
    save_file({k: bf16_round(v) for k, v in tensors.items()}, str(path))
    raw = bytearray(path.read_bytes())
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    for k, v in header.items():
        if k != "__metadata__":
            v["dtype"] = "BF16"
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)              # offsets are relative to the data, which stays as it is
    path.write_bytes(len(text).to_bytes(8, "little") + text + bytes(raw[8 + n:]))


def stored_values(weights: dict[str, np.ndarray], dtype: str) -> dict[str, np.ndarray]:
    """The float64 values a checkpoint of ``dtype`` holds."""
    if dtype == "F16":
        return {k: v.astype(np.float16).astype(np.float64) for k, v in weights.items()}
    if dtype == "BF16":
        return {k: (bf16_round(v).astype(np.uint32) << 16).view(np.float32).astype(np.float64)
                for k, v in weights.items()}
    return {k: v.astype(np.float64) for k, v in weights.items()}


# -- float64 reference forward pass over HF weights -------------------------------------------------

def reference_logits(cfg: dict, w: dict[str, np.ndarray], ids: list[int], long_factors: bool | None = None
                     ) -> np.ndarray:
    """Logits (n_tokens, n_vocab) in float64, straight from the HF layout (rotary halves, Gemma's
    1 + weight norms, Phi-3's fused projections), independent of the converter.  Phi-3's LongRoPE uses
    its long factors when ``long_factors`` (None: as transformers decides, for a sequence longer than
    the original context), the short ones otherwise, and scales cos and sin by its attention factor.
    Gemma 2 soft-caps attention scores and the final logits (tanh(x / cap) * cap)."""
    arch = cfg["model_type"].replace("gemma3_text", "gemma3")
    d, nh, nkv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim", d // nh)
    eps = cfg["rms_norm_eps"]
    gemma = arch in ("gemma2", "gemma3")
    n = len(ids)
    if arch == "phi3":                                    # unfuse Q|K|V and gate|up
        w = dict(w)
        for i in range(cfg["num_hidden_layers"]):
            p = f"model.layers.{i}."
            q, k, v = np.split(w[p + "self_attn.qkv_proj.weight"], [nh * hd, (nh + nkv) * hd])
            w[p + "self_attn.q_proj.weight"], w[p + "self_attn.k_proj.weight"] = q, k
            w[p + "self_attn.v_proj.weight"] = v
            w[p + "mlp.gate_proj.weight"], w[p + "mlp.up_proj.weight"] = np.split(w[p + "mlp.gate_up_proj.weight"], 2)
    rs = cfg.get("rope_scaling") or {}
    mscale = 1.0
    if rs.get("type") == "longrope":                      # transformers' LongRoPE (Phi-3)
        orig = cfg["original_max_position_embeddings"]
        use_long = n > orig if long_factors is None else long_factors
        ext = np.asarray(rs["long_factor" if use_long else "short_factor"], dtype=np.float64)
        scale = cfg["max_position_embeddings"] / orig
        mscale = np.sqrt(1 + np.log(scale) / np.log(orig)) if scale > 1 else 1.0

    def softcap(x, cap):
        return np.tanh(x / cap) * cap if cap else x

    def rms(x, g):
        y = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)
        return y * (1.0 + g if gemma else g)

    def rope(x, theta):                                   # x (n, heads, hd), HF rotate_half layout
        inv = 1.0 / theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd)
        if rs.get("type") == "longrope":
            inv = inv / ext
        if rs.get("rope_type") == "llama3":               # transformers' llama3 frequency smoothing
            f, lo, hi, old = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"], \
                rs["original_max_position_embeddings"]
            wavelen = 2 * np.pi / inv
            scaled = np.where(wavelen > old / lo, inv / f, inv)
            smooth = (old / wavelen - lo) / (hi - lo)
            medium = (wavelen >= old / hi) & (wavelen <= old / lo)
            inv = np.where(medium, (1 - smooth) * scaled / f + smooth * scaled, scaled)
        ang = np.arange(n, dtype=np.float64)[:, None] * inv[None, :]
        cos = np.cos(np.concatenate([ang, ang], -1)) * mscale
        sin = np.sin(np.concatenate([ang, ang], -1)) * mscale
        x1, x2 = x[..., :hd // 2], x[..., hd // 2:]
        rot = np.concatenate([-x2, x1], -1)
        return x * cos[:, None, :] + rot * sin[:, None, :]

    x = w["model.embed_tokens.weight"][ids]
    if gemma:
        x = x * np.sqrt(d)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms(x, w[p + "input_layernorm.weight"])
        q = h @ w[p + "self_attn.q_proj.weight"].T
        k = h @ w[p + "self_attn.k_proj.weight"].T
        v = h @ w[p + "self_attn.v_proj.weight"].T
        if arch == "qwen2":
            q, k, v = q + w[p + "self_attn.q_proj.bias"], k + w[p + "self_attn.k_proj.bias"], \
                v + w[p + "self_attn.v_proj.bias"]
        q, k, v = q.reshape(n, nh, hd), k.reshape(n, nkv, hd), v.reshape(n, nkv, hd)
        if arch in ("qwen3", "gemma3"):
            q, k = rms(q, w[p + "self_attn.q_norm.weight"]), rms(k, w[p + "self_attn.k_norm.weight"])
        sliding = (arch == "gemma3" and (i + 1) % 6 != 0) or (arch == "gemma2" and i % 2 == 0)
        theta = cfg.get("rope_local_base_freq", 10000.0) if sliding and arch == "gemma3" else \
            cfg.get("rope_theta") or cfg["rope_parameters"]["rope_theta"]
        q, k = rope(q, theta), rope(k, theta)
        k, v = np.repeat(k, nh // nkv, axis=1), np.repeat(v, nh // nkv, axis=1)
        scale = cfg.get("query_pre_attn_scalar", hd) ** -0.5
        s = softcap(np.einsum("qhd,khd->hqk", q, k) * scale, cfg.get("attn_logit_softcapping"))
        pos = np.arange(n)
        mask = pos[None, :] > pos[:, None]
        if sliding:
            mask |= pos[None, :] <= pos[:, None] - cfg["sliding_window"]
        s = np.where(mask[None], -np.inf, s)
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        a = np.einsum("hqk,khd->qhd", s, v).reshape(n, nh * hd) @ w[p + "self_attn.o_proj.weight"].T
        if gemma:
            a = rms(a, w[p + "post_attention_layernorm.weight"])
            x = x + a
            h = rms(x, w[p + "pre_feedforward_layernorm.weight"])
        else:
            x = x + a
            h = rms(x, w[p + "post_attention_layernorm.weight"])
        g = h @ w[p + "mlp.gate_proj.weight"].T
        if gemma:
            g = 0.5 * g * (1 + np.tanh(np.sqrt(2 / np.pi) * (g + 0.044715 * g ** 3)))
        else:
            g = g / (1 + np.exp(-g))
        f = (g * (h @ w[p + "mlp.up_proj.weight"].T)) @ w[p + "mlp.down_proj.weight"].T
        if gemma:
            f = rms(f, w[p + "post_feedforward_layernorm.weight"])
        x = x + f
    x = rms(x, w["model.norm.weight"])
    out = w.get("lm_head.weight", w["model.embed_tokens.weight"])
    return softcap(x @ out.T, cfg.get("final_logit_softcapping"))


def kl_divergence(p_logits: np.ndarray, q_logits: np.ndarray) -> np.ndarray:
    """KL(P || Q) per row, from logits."""
    def logsm(z):
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))
    lp, lq = logsm(p_logits.astype(np.float64)), logsm(q_logits.astype(np.float64))
    return (np.exp(lp) * (lp - lq)).sum(-1)


# -- the reference cases: one checkpoint per architecture, compared with llama.cpp's converter ------

@dataclass(frozen=True)
class Case:
    arch: str
    tokenizer: str            # smollm | llama-bpe | qwen2 (rebuilt tokenizer.json) or gemma3 (tokenizer.model)
    dtype: str                # F32 | F16 | BF16 in the safetensors files
    shards: int
    outtype: str              # --outtype of the reference conversion
    config: dict = field(default_factory=dict)
    template_file: bool = False     # chat template in chat_template.jinja (transformers 5) instead
    generation: dict | None = None  # generation_config.json
    tokenizer_class: str | None = None  # tokenizer_config.json's, when not the rebuilt tokenizer's own
    added_tokens: dict | None = None    # tokenizer_config.json's added_tokens_decoder


_LLAMA3_ROPE = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}
_PHI3_LONG = [1.0, 1.25, 1.6, 2.2, 3.5, 6.0, 11.0, 24.0]
_PHI3_SHORT = [1.0, 1.02, 1.05, 1.1, 1.2, 1.4, 1.8, 2.5]
# each case's random seed (fixed: the committed references depend on it)
_SEEDS = ["gemma3", "llama-smollm", "llama3-bpe", "mistral", "qwen2", "qwen3", "phi3", "gemma2", "phi3-spm"]
CASES: dict[str, Case] = {
    # vocabulary padded past the tokenizer (config vocab_size 49216 > 49152 tokens)
    "llama-smollm": Case("llama", "smollm", "F32", 1, "f16", {"vocab_size": 49216}),
    "llama3-bpe": Case("llama", "llama-bpe", "BF16", 2, "auto",
                       {"rope_theta": 500000.0, "rope_scaling": _LLAMA3_ROPE, "tie_word_embeddings": True},
                       generation={"do_sample": True, "temperature": 0.6, "top_p": 0.9}),
    "mistral": Case("mistral", "smollm", "F16", 2, "auto"),
    "qwen2": Case("qwen2", "qwen2", "F16", 1, "f32", {"rope_theta": 1000000.0}, template_file=True),
    # transformers 5 spelling of the RoPE settings
    "qwen3": Case("qwen3", "smollm", "F32", 1, "q8_0",
                  {"rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}}),
    "gemma3": Case("gemma3", "gemma3", "F32", 1, "bf16", {"hidden_size": 32, "head_dim": 8, "query_pre_attn_scalar": 8,
                                                           "intermediate_size": 48}),
    # a "128k"-style LongRoPE config (context 4x the original) with a Phi-4-style GPT2Tokenizer vocabulary
    "phi3": Case("phi3", "smollm", "BF16", 1, "auto",
                 {"max_position_embeddings": 1024, "original_max_position_embeddings": 256, "sliding_window": 1024,
                  "rope_scaling": {"type": "longrope", "long_factor": _PHI3_LONG, "short_factor": _PHI3_SHORT}},
                 tokenizer_class="GPT2Tokenizer"),
    # Phi-3-mini-4k style: SentencePiece vocabulary, no LongRoPE; one added token flagged special and one
    # that only looks special (Phi-3's converter makes it USER_DEFINED where others make it CONTROL)
    "phi3-spm": Case("phi3", "gemma3", "F32", 1, "q8_0",
                     {"hidden_size": 32, "intermediate_size": 48, "original_max_position_embeddings": 512,
                      "sliding_window": 2047}, tokenizer_class="LlamaTokenizer",
                     added_tokens={"105": {"content": "<start_of_turn>", "special": False},
                                   "106": {"content": "<end_of_turn>", "special": True}}),
    # soft-caps small enough to bite on random weights
    "gemma2": Case("gemma2", "gemma3", "F16", 2, "f16", {"hidden_size": 32, "head_dim": 8, "query_pre_attn_scalar": 8,
                                                          "intermediate_size": 48, "attn_logit_softcapping": 1.5,
                                                          "final_logit_softcapping": 4.0}),
}


def build_case(name: str, folder: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """Write checkpoint ``name`` into ``folder``; returns its config and float32 weights."""
    case = CASES[name]
    if case.tokenizer == "gemma3":
        special = write_spm_tokenizer(models_dir() / GEMMA3, folder)
        n_tokens = 262144
    else:
        src = models_dir() / SMOLLM2 if case.tokenizer == "smollm" else VOCAB_DIR / f"ggml-vocab-{case.tokenizer}.gguf"
        special = write_bpe_tokenizer(src, case.tokenizer, folder)
        with GGUFReader(src) as r:
            n_tokens = len(r.metadata["tokenizer.ggml.tokens"])
    cfg = make_config(case.arch, n_tokens, special, **case.config)
    if "rope_parameters" in cfg:
        cfg.pop("rope_theta")
    if case.tokenizer_class is not None:
        tc = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
        tc["tokenizer_class"] = case.tokenizer_class
        if case.added_tokens is not None:
            tc["added_tokens_decoder"] = case.added_tokens
        (folder / "tokenizer_config.json").write_text(json.dumps(tc, ensure_ascii=False), encoding="utf-8")
    if case.template_file:
        tc = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
        template = tc.pop("chat_template", None) or "{{ messages[0]['content'] }}"
        (folder / "chat_template.jinja").write_text(template, encoding="utf-8")
        (folder / "tokenizer_config.json").write_text(json.dumps(tc, ensure_ascii=False), encoding="utf-8")
    if case.generation is not None:
        (folder / "generation_config.json").write_text(json.dumps(case.generation), encoding="utf-8")
    weights = make_weights(cfg, seed=_SEEDS.index(name))
    write_checkpoint(folder, cfg, weights, case.dtype, case.shards)
    return cfg, weights


def gguf_digest(path: Path) -> dict:
    """Every metadata key (type spec and value; long arrays by sha256) and every tensor (type, shape,
    sha256 of its bytes) of a GGUF file, in file order."""
    import hashlib

    def plain(v):
        if hasattr(v, "tolist"):
            return v.tolist()
        if isinstance(v, (str, int, float, bool)):
            return v
        return [plain(x) for x in v]

    def spec(s):
        return [int(s[0]), spec(s[1])] if isinstance(s, tuple) else int(s)

    out: dict = {"metadata": {}, "tensors": []}
    with GGUFReader(path) as r:
        for key in r.metadata:
            v = plain(r.metadata[key])
            if isinstance(v, list) and len(v) > 16:
                v = {"n": len(v), "sha256": hashlib.sha256(json.dumps(v, ensure_ascii=False).encode()).hexdigest()}
            out["metadata"][key] = {"type": spec(r.type_spec(key)), "value": v}
        for t in r.tensors.values():
            out["tensors"].append([t.name, t.type.name, list(t.shape), hashlib.sha256(bytes(t.raw)).hexdigest()])
    return out
