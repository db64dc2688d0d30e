"""Per-tensor type selection (the quantizer's mixture rules) against llama-quantize's own choices."""
from __future__ import annotations

import json
import re

import pytest

from gguf_engine.gguf.reader import GGUFReader
from gguf_engine.quantize.ftypes import QUANT_OPTIONS, LlamaFileType, default_type, parse_ftype
from gguf_engine.quantize.mixture import (MixtureOptions, ModelInfo, MixturePlanner, plan_types,
                                          tensor_category, Category, weight_order)
from kernels.types import GGMLType

from .conftest import fixture_path

_SHAPE_KEY = re.compile(r"(\w+) L=(\d+) heads=(\d+) kv_heads=(\d+) dim=(\d+) ff=(\d+) vocab=(\d+) (\w+)")


def _options(key: str) -> MixtureOptions:
    ftype, _, imatrix = key.partition("+")
    return MixtureOptions(parse_ftype(ftype).ftype, has_imatrix=bool(imatrix))


def _tiny_llama():
    with GGUFReader(fixture_path("models", "tiny-llama-f16.gguf")) as r:
        return ModelInfo.from_metadata(r.metadata), {n: (t.shape, t.type) for n, t in r.tensors.items()}


def test_tiny_llama_typemaps_exact():
    """Every ftype (with and without imatrix) gives exactly llama-quantize's type for every tensor (no tolerance)."""
    info, tensors = _tiny_llama()
    expected = json.loads(fixture_path("models", "tiny-llama.typemaps.json").read_text())
    assert len(expected) >= 40
    mismatches = {}
    for key, want in expected.items():
        got = {n: t.name for n, t in plan_types(tensors, info, _options(key)).types.items()}
        assert set(got) == set(want), key
        diff = {n: (got[n], t) for n, t in want.items() if got[n] != t}
        if diff:
            mismatches[key] = diff
    assert not mismatches


def _shape_tensors(names, dim, ff, heads, kv_heads, vocab):
    head_dim = dim // heads
    out = {}
    for n in names:
        if "ffn_down" in n:
            shape = (dim, ff)
        elif "ffn_" in n:
            shape = (ff, dim)
        elif ".attn_k." in n or ".attn_v." in n:
            shape = (kv_heads * head_dim, dim)
        elif n in ("token_embd.weight", "output.weight"):
            shape = (vocab, dim)
        else:
            shape = (dim, dim)
        out[n] = (shape, GGMLType.F32)
    return out


def test_shape_typemaps_exact():
    """Deeper models (8/16/32 layers) and wider GQA (up to 8:1): exactly llama-quantize's types (no tolerance)."""
    data = json.loads(fixture_path("models", "shape-typemaps.json").read_text())
    assert len(data) == 3
    mismatches = {}
    for shape_key, maps in data.items():
        arch, L, H, KV, D, FF, V, _tied = _SHAPE_KEY.match(shape_key).groups()
        L, H, KV, D, FF, V = map(int, (L, H, KV, D, FF, V))
        info = ModelInfo(arch, L, H, KV)
        for key, want in maps.items():
            tensors = _shape_tensors(want, D, FF, H, KV, V)
            got = plan_types(tensors, info, _options(key)).types
            diff = {n: (got[n].name, t) for n, t in want.items() if got[n].name != t}
            if diff:
                mismatches[(shape_key, key)] = diff
    assert not mismatches


def test_weight_order_is_llama_cpp_order():
    """Non-block tensors first, then blocks by number (not by string), names sorted within a block."""
    names = ["blk.10.ffn_up.weight", "blk.2.attn_q.weight", "token_embd.weight", "blk.2.attn_k.weight",
             "output.weight"]
    assert weight_order(names) == ["output.weight", "token_embd.weight", "blk.2.attn_k.weight",
                                   "blk.2.attn_q.weight", "blk.10.ffn_up.weight"]


def test_fallback_for_rows_not_multiple_of_256():
    """Row lengths that k/i-quants cannot hold fall back as llama.cpp does, and are counted."""
    info = ModelInfo("llama", 4, 4, 4)
    cases = [("Q4_K_S", GGMLType.Q5_0), ("Q5_K_S", GGMLType.Q5_1), ("Q6_K", GGMLType.Q8_0),
             ("IQ4_XS", GGMLType.IQ4_NL), ("Q3_K_S", GGMLType.Q4_0), ("Q4_0", GGMLType.Q4_0)]
    for ftype, want in cases:
        p = MixturePlanner(info, MixtureOptions(parse_ftype(ftype).ftype), ["blk.0.attn_q.weight"])
        assert p.choose("blk.0.attn_q.weight", (96, 96), GGMLType.F16) == want, ftype
        assert p.n_fallback == (1 if ftype != "Q4_0" else 0)
    p = MixturePlanner(info, MixtureOptions(LlamaFileType.MOSTLY_Q4_K_M), ["blk.0.attn_q.weight"])
    assert p.choose("blk.0.attn_q.weight", (80, 80), GGMLType.F16) == GGMLType.F16   # not even /32
    # the output tensor of a model whose width is not /256 goes to Q8_0 without a fallback count
    p = MixturePlanner(info, MixtureOptions(LlamaFileType.MOSTLY_Q4_K_M), ["output.weight"])
    assert p.choose("output.weight", (1000, 96), GGMLType.F16) == GGMLType.Q8_0
    assert p.n_fallback == 0


def test_user_overrides():
    """--tensor-type regexes, --pure, --output-tensor-type, --token-embedding-type, --leave-output-tensor."""
    info, tensors = _tiny_llama()
    opts = MixtureOptions(LlamaFileType.MOSTLY_Q4_K_M, tensor_types=[("attn_q", GGMLType.Q8_0)],
                          output_tensor_type=GGMLType.Q4_0, token_embedding_type=GGMLType.Q8_0)
    t = plan_types(tensors, info, opts).types
    assert all(t[f"blk.{i}.attn_q.weight"] == GGMLType.Q8_0 for i in range(4))
    assert t["output.weight"] == GGMLType.Q4_0 and t["token_embd.weight"] == GGMLType.Q8_0
    assert t["blk.3.attn_v.weight"] == GGMLType.Q6_K     # the rest of the mixture is unchanged
    pure = plan_types(tensors, info, MixtureOptions(LlamaFileType.MOSTLY_Q4_K_M, pure=True)).types
    assert {v for n, v in pure.items() if "norm" not in n} == {GGMLType.Q4_K}
    leave = plan_types(tensors, info, MixtureOptions(LlamaFileType.MOSTLY_Q4_K_M, quantize_output_tensor=False))
    assert leave.types["output.weight"] == GGMLType.F16 and not leave.quantizable["output.weight"]
    assert leave.types["blk.0.attn_norm.weight"] == GGMLType.F32


def test_ftype_table():
    """ftype ids and names as llama.cpp numbers them; names are case-insensitive, aliases resolve."""
    assert LlamaFileType.MOSTLY_Q4_0 == 2 and LlamaFileType.MOSTLY_Q4_K_M == 15
    assert LlamaFileType.MOSTLY_IQ4_XS == 30 and LlamaFileType.MOSTLY_TQ2_0 == 37
    assert parse_ftype("q4_k_m").ftype == LlamaFileType.MOSTLY_Q4_K_M
    assert parse_ftype("Q4_K").ftype == LlamaFileType.MOSTLY_Q4_K_M
    assert parse_ftype("15").ftype == LlamaFileType.MOSTLY_Q4_K_M   # first listed name (the alias), as llama.cpp
    assert parse_ftype("0").name == "F32" and parse_ftype("copy").only_copy
    assert default_type(LlamaFileType.MOSTLY_IQ2_S) == GGMLType.IQ2_XS
    with pytest.raises(ValueError, match="Q4_K_M"):
        parse_ftype("Q4_K_Z")
    for opt in QUANT_OPTIONS:
        default_type(opt.ftype)
    assert tensor_category("blk.0.ffn_down_exps.weight") == Category.FFN_DOWN
