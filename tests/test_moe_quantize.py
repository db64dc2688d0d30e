"""gguf-quantize on mixture-of-experts models: the same tensor types and bytes as llama-quantize.

The references (tests/data/moe_quant, made by tools/moe_quant_references.py) are llama-quantize's
outputs on two tiny random MoE models (qwen3moe written in F16 and gpt-oss written in F32, 8
experts, top-2), for seven ftype mixtures, each without an importance matrix and with the
llama-imatrix files of the model in both formats (GGUF with per-expert counts, legacy .dat), and
for three of them with a GGUF imatrix where some experts saw no tokens.
The source models are rebuilt here from their seed.  Tolerance: none, bytes are compared.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from gguf_engine.quantize import quantize_model

from .test_tools_smoke import _load

refs_tool = _load("moe_quant_references")
DATA = Path(__file__).parent / "data" / "moe_quant"
REFS = json.loads((DATA / "digests.json").read_text())
CASES = [(shape, key) for shape in sorted(REFS) for key in sorted(REFS[shape]["digests"])]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """shape -> (source path, its tensor digests), rebuilt from the seed the references used."""
    d = tmp_path_factory.mktemp("moe_sources")
    out = {}
    for shape in REFS:
        assert REFS[shape]["seed"] == refs_tool.SEED and REFS[shape]["source_type"] == refs_tool.MODELS[shape]
        path = refs_tool.source_model(shape, d)
        out[shape] = (path, refs_tool.tensor_digests(path))
    return out


@pytest.mark.parametrize("shape", sorted(REFS))
def test_source_models_rebuild_identically(sources, shape):
    """The rebuilt source model is the one llama-quantize was given (hash of every tensor's bytes)."""
    assert refs_tool.data_hash(sources[shape][0]) == REFS[shape]["source_hash"]


def _imatrix(shape: str, key: str, tmp_path: Path) -> Path | None:
    variant = key.partition("+")[2]
    if variant == "imatrix-partial":            # experts without tokens, rebuilt as the tool made it
        refs_tool.partial_imatrix(DATA / f"{shape}.imatrix-gguf", tmp_path / "partial.gguf")
        return tmp_path / "partial.gguf"
    return {"": None, "imatrix": DATA / f"{shape}.imatrix-gguf", "imatrix-dat": DATA / f"{shape}.imatrix.dat"}[variant]


@pytest.mark.parametrize("shape,key", CASES)
def test_quantized_tensors_equal_llama_quantize(sources, tmp_path, shape, key):
    """Every tensor llama-quantize converted has the same type and the same bytes (sha256) in
    gguf-quantize's output, and no other tensor is changed (norms, router, biases, sinks copied)."""
    src, source_digests = sources[shape]
    out = tmp_path / "q.gguf"
    quantize_model(src, out, key.partition("+")[0], imatrix=_imatrix(shape, key, tmp_path))
    ours = refs_tool.converted(refs_tool.tensor_digests(out), source_digests)
    ref = REFS[shape]["digests"][key]
    assert {n: d.split(":")[0] for n, d in ours.items()} == {n: d.split(":")[0] for n, d in ref.items()}
    bad = sorted(n for n in ref if ours.get(n) != ref[n])
    assert not bad, f"{len(bad)} tensors differ from llama-quantize's bytes: {bad[:6]}"


mrm = _load("make_random_model")
TYPEMAPS = json.loads((DATA / "typemaps.json").read_text())


@pytest.mark.parametrize("shape", sorted(TYPEMAPS))
def test_real_moe_shapes_get_llama_quantizes_types(shape):
    """For Qwen3-30B-A3B (128 experts, 48 layers), gpt-oss-20b (rows of 2880: k-quant fallbacks)
    and the MoE benchmark shape, the per-tensor types of every quantized ftype, with and without
    an imatrix, are those llama-quantize --dry-run chose (hash of the whole type map)."""
    s = mrm.SHAPES[shape]
    bad = []
    for key, ref in TYPEMAPS[shape].items():
        ftype, _, im = key.partition("+")
        tp, _ = mrm.plan(s, ftype, has_imatrix=bool(im))
        ours = refs_tool.typemap_digest({n: t.name for n, t in tp.types.items()})
        if ours != ref:
            bad.append(f"{key}: ours {ours['counts']} llama-quantize {ref['counts']}")
    assert not bad, "\n".join(bad)
