"""Random-weight GGUF files with the shapes of real models, written directly in a quantized type.

    python tools/make_random_model.py llama-3.2-1b Q4_K_M llama-3.2-1b-q4_k_m.gguf
    python tools/make_random_model.py llama-3.1-8b Q4_0 llama-3.1-8b-q4_0.gguf --seed 7
    python tools/make_random_model.py qwen3-1.7b Q4_K_M q.gguf --pure          # every matrix Q4_K
    python tools/make_random_model.py smollm2-135m Q8_0 s.gguf --vocab-from smollm2.gguf
    python tools/make_random_model.py qwen3moe-16l-32e Q4_K_M moe.gguf          # the MoE benchmark shape
    python tools/make_random_model.py gpt-oss-20b MXFP4_MOE g.gguf              # as published: MXFP4 experts
    python tools/make_random_model.py --list

TYPE is a llama-quantize type name (Q4_K_M, Q4_0, Q8_0, IQ4_XS, F16, ...).  Each tensor gets the
type llama-quantize would choose for that ftype (the project's mixture rules, ``plan_types``);
``--pure`` gives every matrix the ftype's base type instead, as ``llama-quantize --pure`` does.

The file is meant for speed and memory measurements at real sizes, not for text: no F16 copy
of the model is ever made and nothing is quantized per tensor.  For each (type, row length) a
pool of blocks is quantized once from gaussian rows of standard deviation 1/sqrt(row length)
(the fan-in, so activations keep their scale through the layers), and every tensor is filled
with blocks drawn from that pool at random (seeded per tensor name), streamed tensor by tensor
to disk, so peak memory is one tensor, not the file.  Norm weights are 1 +- a little noise;
Llama 3 shapes carry the ``rope_freqs`` factors Llama 3's converter writes.

Mixture-of-experts shapes (qwen3moe, gpt-oss) have a router ``ffn_gate_inp`` (kept F32, as
llama-quantize keeps it) and 3-D expert tensors ``ffn_{gate,up,down}_exps`` of numpy shape
(n_expert, rows, row length), the layout llama.cpp's converter writes, with the
``expert_count``, ``expert_used_count`` and ``expert_feed_forward_length`` keys.  gpt-oss adds
attention biases, per-head attention sinks, router and expert biases, a post-attention norm in
place of ``ffn_norm``, a sliding window and YaRN rope scaling; its published files are the
MXFP4_MOE mixture (experts MXFP4, other matrices Q8_0).  Biases are small gaussians, sinks
standard gaussians.

The vocabulary is a synthetic byte-level BPE one of the shape's size (256 byte tokens, merged
tokens, two control tokens at the end for BOS/EOS) that both gguf-engine and llama.cpp load;
``--vocab-from FILE`` copies a real model's tokenizer arrays instead, when its size matches.
"""
from __future__ import annotations

import argparse
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from arch_models import llama3_rope_factors  # noqa: E402
from gguf_engine.gguf.reader import GGUFReader  # noqa: E402
from gguf_engine.gguf.writer import GGUFWriter  # noqa: E402
from gguf_engine.tokenizer.bpe import byte_to_unicode  # noqa: E402
from gguf_engine.quantize import MixtureOptions, ModelInfo, TensorPlan, parse_ftype, plan_types  # noqa: E402
from kernels import quantize  # noqa: E402
from kernels.types import BLOCK_SIZES, GGMLType  # noqa: E402

POOL_BLOCKS = 4096          # distinct blocks per (type, row length): 1-2 MB of encoded data


@dataclass(frozen=True)
class RopeScaling:
    """Llama 3's long-context rope factors (HF ``rope_scaling`` with rope_type "llama3")."""
    factor: float
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_context: int = 8192


@dataclass(frozen=True)
class Yarn:
    """YaRN rope scaling (HF ``rope_scaling`` with rope_type "yarn")."""
    factor: float
    original_context: int
    beta_fast: float = 32.0
    beta_slow: float = 1.0


@dataclass(frozen=True)
class Experts:
    """A mixture-of-experts FFN in every layer: n_expert experts of width n_ff, n_used per token."""
    n_expert: int
    n_used: int
    n_ff: int


@dataclass(frozen=True)
class Shape:
    """A model's hyper-parameters, from its published config.json."""
    arch: str
    n_vocab: int
    d: int                      # hidden size
    n_layer: int
    n_head: int
    n_head_kv: int
    n_ff: int
    head_dim: int = 0           # 0: d // n_head
    n_ctx_train: int = 8192
    rope_base: float = 10000.0
    rms_eps: float = 1e-5
    tied: bool = True           # output projection shares token_embd
    qk_norm: bool = False       # per-head Q/K RMS norms (Qwen3)
    rope_scaling: RopeScaling | None = None
    pre: str = "gpt-2"          # tokenizer.ggml.pre of the synthetic vocabulary
    experts: Experts | None = None  # MoE FFN (router + 3-D expert tensors) instead of the dense one
    attn_bias: bool = False     # biases on Q, K, V and the attention output (gpt-oss)
    sinks: bool = False         # per-head attention sinks (gpt-oss)
    post_attn_norm: bool = False  # the FFN's input norm is named post_attention_norm (gpt-oss)
    expert_bias: bool = False   # biases on the router and the experts (gpt-oss)
    swa: int = 0                # sliding window (tokens), 0: none
    yarn: Yarn | None = None

    @property
    def hd(self) -> int:
        return self.head_dim or self.d // self.n_head


SHAPES: dict[str, Shape] = {
    # meta-llama/Llama-3.2-1B
    "llama-3.2-1b": Shape("llama", 128256, 2048, 16, 32, 8, 8192, n_ctx_train=131072, rope_base=500000.0,
                          rope_scaling=RopeScaling(32.0), pre="llama-bpe"),
    # Qwen/Qwen3-1.7B
    "qwen3-1.7b": Shape("qwen3", 151936, 2048, 28, 16, 8, 6144, head_dim=128, n_ctx_train=40960,
                        rope_base=1000000.0, rms_eps=1e-6, qk_norm=True, pre="qwen2"),
    # meta-llama/Llama-3.1-8B
    "llama-3.1-8b": Shape("llama", 128256, 4096, 32, 32, 8, 14336, n_ctx_train=131072, rope_base=500000.0,
                          tied=False, rope_scaling=RopeScaling(8.0), pre="llama-bpe"),
    # HuggingFaceTB/SmolLM2-135M
    "smollm2-135m": Shape("llama", 49152, 576, 30, 9, 3, 1536, rope_base=100000.0),
    # the MoE benchmark shape: 16 layers of 32 experts (top-4, width 512) at d 1024, with the
    # attention and vocabulary of the Qwen3 family
    "qwen3moe-16l-32e": Shape("qwen3moe", 151936, 1024, 16, 16, 4, 3072, head_dim=128, n_ctx_train=40960,
                              rope_base=1000000.0, rms_eps=1e-6, tied=False, qk_norm=True, pre="qwen2",
                              experts=Experts(32, 4, 512)),
    # Qwen/Qwen3-30B-A3B
    "qwen3-30b-a3b": Shape("qwen3moe", 151936, 2048, 48, 32, 4, 6144, head_dim=128, n_ctx_train=40960,
                           rope_base=1000000.0, rms_eps=1e-6, tied=False, qk_norm=True, pre="qwen2",
                           experts=Experts(128, 8, 768)),
    # openai/gpt-oss-20b
    "gpt-oss-20b": Shape("gpt-oss", 201088, 2880, 24, 64, 8, 2880, head_dim=64, n_ctx_train=131072,
                         rope_base=150000.0, tied=False, pre="gpt-4o", experts=Experts(32, 4, 2880),
                         attn_bias=True, sinks=True, post_attn_norm=True, expert_bias=True, swa=128,
                         yarn=Yarn(32.0, 4096)),
    # tiny shapes for tests (rows a multiple of 256, so every block type applies); tiny-llama has the
    # shape of the shared tiny llama, whose llama-quantize type choices the tests compare against
    "tiny-llama": Shape("llama", 768, 256, 4, 4, 2, 512, n_ctx_train=512, tied=False,
                        rope_scaling=RopeScaling(8.0, original_context=64), rope_base=500000.0),
    "tiny-qwen3": Shape("qwen3", 1024, 256, 2, 4, 2, 512, head_dim=64, n_ctx_train=512, rms_eps=1e-6,
                        qk_norm=True),
    # tiny MoE shapes: 8 experts, top-2; tiny-gpt-oss has expert rows of 288 (a multiple of 32, not
    # of 256), as gpt-oss-20b's 2880, so its k-quant mixtures take llama-quantize's fallbacks
    "tiny-qwen3moe": Shape("qwen3moe", 1024, 256, 2, 4, 2, 512, head_dim=64, n_ctx_train=512, rms_eps=1e-6,
                           tied=False, qk_norm=True, experts=Experts(8, 2, 256)),
    "tiny-gpt-oss": Shape("gpt-oss", 1024, 256, 2, 4, 2, 288, head_dim=64, n_ctx_train=4096,
                          rope_base=150000.0, tied=False, pre="gpt-4o", experts=Experts(8, 2, 288),
                          attn_bias=True, sinks=True, post_attn_norm=True, expert_bias=True, swa=16,
                          yarn=Yarn(4.0, 1024)),
}


# ------------------------------------------------------------------------------ tensors

def tensor_shapes(s: Shape) -> dict[str, tuple[int, ...]]:
    """Every tensor's numpy-order shape (outermost first), in the converter's order."""
    d, hd = s.d, s.hd
    t: dict[str, tuple[int, ...]] = {}
    if s.rope_scaling is not None:
        t["rope_freqs.weight"] = (hd // 2,)
    t["token_embd.weight"] = (s.n_vocab, d)
    for il in range(s.n_layer):
        p = f"blk.{il}."
        t[p + "attn_norm.weight"] = (d,)
        t[p + "attn_q.weight"] = (s.n_head * hd, d)
        t[p + "attn_k.weight"] = (s.n_head_kv * hd, d)
        t[p + "attn_v.weight"] = (s.n_head_kv * hd, d)
        if s.qk_norm:
            t[p + "attn_q_norm.weight"] = (hd,)
            t[p + "attn_k_norm.weight"] = (hd,)
        if s.attn_bias:
            t[p + "attn_q.bias"] = (s.n_head * hd,)
            t[p + "attn_k.bias"] = (s.n_head_kv * hd,)
            t[p + "attn_v.bias"] = (s.n_head_kv * hd,)
        t[p + "attn_output.weight"] = (d, s.n_head * hd)
        if s.attn_bias:
            t[p + "attn_output.bias"] = (d,)
        if s.sinks:
            t[p + "attn_sinks.weight"] = (s.n_head,)
        t[p + ("post_attention_norm.weight" if s.post_attn_norm else "ffn_norm.weight")] = (d,)
        e = s.experts
        if e is None:
            t[p + "ffn_gate.weight"] = (s.n_ff, d)
            t[p + "ffn_up.weight"] = (s.n_ff, d)
            t[p + "ffn_down.weight"] = (d, s.n_ff)
            continue
        t[p + "ffn_gate_inp.weight"] = (e.n_expert, d)
        if s.expert_bias:
            t[p + "ffn_gate_inp.bias"] = (e.n_expert,)
        # (n_expert, rows, row length): one 2-D matrix per expert, experts outermost
        for kind, rows, cols in (("gate", e.n_ff, d), ("up", e.n_ff, d), ("down", d, e.n_ff)):
            t[p + f"ffn_{kind}_exps.weight"] = (e.n_expert, rows, cols)
            if s.expert_bias:
                t[p + f"ffn_{kind}_exps.bias"] = (e.n_expert, rows)
    t["output_norm.weight"] = (d,)
    if not s.tied:
        t["output.weight"] = (s.n_vocab, d)
    return t


def plan(s: Shape, type_name: str, pure: bool = False, has_imatrix: bool = False) -> tuple[TensorPlan, int]:
    """The per-tensor types llama-quantize would give a float32 model of this shape (with an
    importance matrix or not: some mixtures differ), and the ftype id."""
    parsed = parse_ftype(type_name)
    if parsed.only_copy:
        raise ValueError("TYPE COPY has no meaning for a random model; name a tensor type")
    shapes = tensor_shapes(s)
    info = ModelInfo(arch=s.arch, n_layer=s.n_layer, n_head=s.n_head, n_head_kv=s.n_head_kv,
                     n_expert=s.experts.n_expert if s.experts else 0)
    opts = MixtureOptions(ftype=parsed.ftype, pure=pure, has_imatrix=has_imatrix)
    return plan_types({n: (sh, GGMLType.F32) for n, sh in shapes.items()}, info, opts), int(parsed.ftype)


class BlockPool:
    """Encoded random blocks per (type, row length), quantized once and drawn from per tensor."""

    def __init__(self, seed: int, n_blocks: int = POOL_BLOCKS):
        self.seed, self.n_blocks = seed, n_blocks
        self._pools: dict[tuple[GGMLType, int], np.ndarray] = {}

    def blocks(self, qtype: GGMLType, row_len: int) -> np.ndarray:
        """uint8 (n_blocks, type_size): valid blocks of gaussian weights, std 1/sqrt(row_len)."""
        key = (qtype, row_len)
        if key not in self._pools:
            bs, ts = BLOCK_SIZES[qtype]
            rng = np.random.default_rng([self.seed, int(qtype), row_len])
            per_row = 256 if 256 % bs == 0 else bs
            n_rows = max(1, self.n_blocks * bs // per_row)
            x = (rng.standard_normal((n_rows, per_row)) / np.sqrt(row_len)).astype(np.float32)
            # a uniform importance: types that need an imatrix get a neutral one
            q = quantize(x, qtype, np.ones(per_row, np.float32))
            self._pools[key] = np.ascontiguousarray(q).reshape(-1, ts)
        return self._pools[key]

    def tensor(self, name: str, shape: tuple[int, ...], qtype: GGMLType) -> np.ndarray:
        """A tensor's bytes: blocks drawn from the pool, seeded by the tensor name."""
        pool = self.blocks(qtype, shape[-1])
        bs, _ = BLOCK_SIZES[qtype]
        n = int(np.prod(shape)) // bs
        idx = np.random.default_rng([self.seed, zlib.crc32(name.encode())]).integers(0, len(pool), n)
        return pool[idx]


def float_tensor(name: str, shape: tuple[int, ...], qtype: GGMLType, seed: int, s: Shape) -> np.ndarray:
    """A vector or bias (F32) or an unquantized matrix (F32, F16 or BF16; gaussian, std 1/sqrt(row
    length)), drawn in slices of rows so that only the output array is ever whole."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    if name == "rope_freqs.weight":
        r = s.rope_scaling
        return llama3_rope_factors(s.hd, s.rope_base, r.factor, r.low_freq_factor, r.high_freq_factor,
                                   r.original_context)
    if name.endswith(".bias"):
        return (0.1 * rng.standard_normal(shape)).astype(np.float32)
    if name.endswith("attn_sinks.weight"):
        return rng.standard_normal(shape).astype(np.float32)
    if len(shape) == 1:
        return (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    n = shape[-1]
    rows = int(np.prod(shape)) // n
    bs, ts = BLOCK_SIZES[qtype]
    out = np.empty((rows, n // bs * ts), np.uint8)          # (rows, row bytes)
    step = max(1, (1 << 22) // n)
    for r0 in range(0, rows, step):
        x = (rng.standard_normal((min(step, rows - r0), n)) / np.sqrt(n)).astype(np.float32)
        enc = x if qtype == GGMLType.F32 else x.astype(np.float16) if qtype == GGMLType.F16 else quantize(x, qtype)
        out[r0:r0 + len(x)] = enc.view(np.uint8).reshape(len(x), -1)
    return out


# ------------------------------------------------------------------------------ vocabulary

def byte_tokens() -> list[str]:
    """GPT-2's printable stand-ins for the 256 byte values, in byte order."""
    m = byte_to_unicode()
    return [m[b] for b in range(256)]


@dataclass
class Vocab:
    """Tokenizer arrays and ids to write."""
    tokens: list[str]
    token_type: np.ndarray
    merges: list[str]
    bos: int
    eos: int


def synthetic_vocab(n_vocab: int, seed: int = 0) -> Vocab:
    """A byte-level BPE vocabulary of exactly n_vocab tokens: 256 byte tokens, merged tokens
    (each the join of two earlier tokens, with its merge rule), and two control tokens last."""
    if n_vocab < 260:
        raise ValueError(f"vocabulary of {n_vocab} tokens is too small (at least 260)")
    tokens = byte_tokens()
    seen = set(tokens)
    merges: list[str] = []
    rng = np.random.default_rng([seed, n_vocab])
    n_merged = n_vocab - 256 - 2
    while len(merges) < n_merged:
        # pairs of any earlier tokens, joined tokens kept short and distinct
        cand = rng.integers(0, len(tokens), size=(4096, 2))
        for a, b in cand:
            ta, tb = tokens[a], tokens[b]
            t = ta + tb
            if len(t) > 12 or t in seen:
                continue
            seen.add(t)
            tokens.append(t)
            merges.append(f"{ta} {tb}")
            if len(merges) == n_merged:
                break
    tokens += ["<|begin_of_text|>", "<|end_of_text|>"]
    tt = np.ones(n_vocab, np.int32)
    tt[-2:] = 3                                              # CONTROL
    return Vocab(tokens, tt, merges, n_vocab - 2, n_vocab - 1)


def copy_vocab(w: GGUFWriter, path: str, n_vocab: int) -> None:
    """Copy every tokenizer.* key of a real model whose vocabulary has n_vocab tokens."""
    with GGUFReader(path) as r:
        toks = r.metadata.get("tokenizer.ggml.tokens")
        if toks is None or len(toks) != n_vocab:
            got = "none" if toks is None else len(toks)
            raise ValueError(f"{path}: --vocab-from needs a vocabulary of {n_vocab} tokens, the file has {got}")
        for key in r.metadata:
            if key.startswith("tokenizer."):
                w.add_key(key, r.metadata[key], r.type_spec(key))


def write_vocab(w: GGUFWriter, s: Shape, seed: int) -> None:
    v = synthetic_vocab(s.n_vocab, seed)
    w.add_string("tokenizer.ggml.model", "gpt2")
    w.add_string("tokenizer.ggml.pre", s.pre)
    w.add_array("tokenizer.ggml.tokens", v.tokens, "STRING")
    w.add_array("tokenizer.ggml.token_type", v.token_type, "INT32")
    w.add_array("tokenizer.ggml.merges", v.merges, "STRING")
    w.add_uint32("tokenizer.ggml.bos_token_id", v.bos)
    w.add_uint32("tokenizer.ggml.eos_token_id", v.eos)
    w.add_bool("tokenizer.ggml.add_bos_token", True)


# ------------------------------------------------------------------------------ file

def write_metadata(w: GGUFWriter, name: str, s: Shape, ftype: int) -> None:
    """The hyper-parameter keys llama.cpp's converter writes for these architectures."""
    a = s.arch
    w.add_string("general.name", f"random-{name}")
    ints = {"block_count": s.n_layer, "context_length": s.n_ctx_train, "embedding_length": s.d,
            "feed_forward_length": s.n_ff, "attention.head_count": s.n_head,
            "attention.head_count_kv": s.n_head_kv, "attention.key_length": s.hd,
            "attention.value_length": s.hd, "rope.dimension_count": s.hd, "vocab_size": s.n_vocab}
    for key, value in ints.items():
        w.add_uint32(f"{a}.{key}", value)
    w.add_float32(f"{a}.rope.freq_base", s.rope_base)
    w.add_float32(f"{a}.attention.layer_norm_rms_epsilon", s.rms_eps)
    if s.experts is not None:
        w.add_uint32(f"{a}.expert_count", s.experts.n_expert)
        w.add_uint32(f"{a}.expert_used_count", s.experts.n_used)
        w.add_uint32(f"{a}.expert_feed_forward_length", s.experts.n_ff)
    if s.swa:
        w.add_uint32(f"{a}.attention.sliding_window", s.swa)
    if s.yarn is not None:
        y = s.yarn
        w.add_string(f"{a}.rope.scaling.type", "yarn")
        w.add_float32(f"{a}.rope.scaling.factor", y.factor)
        w.add_uint32(f"{a}.rope.scaling.original_context_length", y.original_context)
        w.add_float32(f"{a}.rope.scaling.yarn_beta_fast", y.beta_fast)
        w.add_float32(f"{a}.rope.scaling.yarn_beta_slow", y.beta_slow)
    w.add_uint32("general.file_type", ftype)


@dataclass
class MadeModel:
    """What make_model wrote."""
    path: Path
    types: dict[str, GGMLType]
    n_bytes: int
    seconds: float


def make_model(shape_name: str, type_name: str, out: str | Path, *, seed: int = 0, pure: bool = False,
               vocab_from: str | None = None, log=print) -> MadeModel:
    """Write a random model of SHAPES[shape_name] in the ftype (mixture) type_name to out."""
    if shape_name not in SHAPES:
        raise ValueError(f"unknown shape {shape_name!r}; known: {', '.join(SHAPES)}")
    s = SHAPES[shape_name]
    t0 = time.perf_counter()
    tp, ftype = plan(s, type_name, pure)
    shapes = tensor_shapes(s)
    pool = BlockPool(seed)
    with GGUFWriter(out, s.arch) as w:
        write_metadata(w, shape_name, s, ftype)
        if vocab_from:
            copy_vocab(w, vocab_from, s.n_vocab)
        else:
            write_vocab(w, s, seed)
        for name, shape in shapes.items():
            w.add_tensor_info(name, shape, tp.types[name])
        n_bytes = 0
        for i, (name, shape) in enumerate(shapes.items()):
            qt = tp.types[name]
            if qt in (GGMLType.F32, GGMLType.F16, GGMLType.BF16):
                data = float_tensor(name, shape, qt, seed, s)
            else:
                data = pool.tensor(name, shape, qt)
            n_bytes += data.nbytes
            w.write_tensor_data(name, data)
            log(f"[{i + 1:4d}/{len(shapes)}] {name:32s} {qt.name:7s} {'x'.join(map(str, shape))}")
    return MadeModel(Path(out), dict(tp.types), n_bytes, time.perf_counter() - t0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("shape", nargs="?", help="model shape: " + ", ".join(SHAPES))
    ap.add_argument("type", nargs="?", help="llama-quantize type name: Q4_K_M, Q4_0, Q8_0, IQ4_XS, F16, ...")
    ap.add_argument("out", nargs="?", help="output GGUF path")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ap.add_argument("--pure", action="store_true", help="every matrix in the type's base type (no mixture)")
    ap.add_argument("--vocab-from", metavar="GGUF", help="copy the tokenizer of a model of the same vocab size")
    ap.add_argument("--list", action="store_true", help="list the shapes and exit")
    ap.add_argument("-q", "--quiet", action="store_true", help="no per-tensor lines")
    args = ap.parse_args(argv)
    if args.list:
        for n, s in SHAPES.items():
            e = s.experts
            ffn = f"experts {e.n_expert} top-{e.n_used} ffn {e.n_ff}" if e else f"ffn {s.n_ff}"
            print(f"{n:16s} {s.arch:8s} vocab {s.n_vocab:6d}  d {s.d:5d}  layers {s.n_layer:3d}  "
                  f"heads {s.n_head}/{s.n_head_kv}  {ffn}")
        return 0
    if not (args.shape and args.type and args.out):
        ap.error("give SHAPE TYPE OUT (or --list)")
    try:
        made = make_model(args.shape, args.type, args.out, seed=args.seed, pure=args.pure,
                          vocab_from=args.vocab_from, log=(lambda m: None) if args.quiet else print)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {made.path}: {made.n_bytes / 2**20:.1f} MiB of tensors in {made.seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
