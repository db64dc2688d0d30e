"""tools/make_random_model.py: random-weight models of real shapes, written straight in quantized types."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

from gguf_engine import Llama
from gguf_engine.gguf.reader import GGUFReader
from kernels import dequantize
from kernels.types import GGMLType

from .conftest import fixture_path
from .test_tools_smoke import _load

mrm = _load("make_random_model")
ROOT = Path(__file__).resolve().parents[1]

ENGINE_TYPES = ["Q4_K_M", "Q4_0", "Q8_0", "IQ4_XS", "F16"]


def last_logits(llm: Llama) -> np.ndarray:
    """Logits (n_vocab,) of the last position after evaluating BOS and one more token."""
    return np.asarray(llm.eval([llm.token_bos(), 65])).reshape(-1, llm.n_vocab())[-1]


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """One tiny-llama file per type (made once for the module)."""
    d = tmp_path_factory.mktemp("random_models")
    return {t: mrm.make_model("tiny-llama", t, d / f"tiny-{t}.gguf", seed=3, log=lambda m: None)
            for t in ENGINE_TYPES}


@pytest.mark.parametrize("type_name", ENGINE_TYPES)
def test_random_model_is_valid_gguf_for_the_gguf_package(tiny_models, type_name):
    """llama.cpp's own Python reader opens the file; every tensor has the planned type and shape,
    general.file_type is the ftype id, the data section holds exactly the declared bytes."""
    made = tiny_models[type_name]
    r = gguf.GGUFReader(made.path)
    shapes = mrm.tensor_shapes(mrm.SHAPES["tiny-llama"])
    assert [t.name for t in r.tensors] == list(shapes)
    for t in r.tensors:
        assert t.tensor_type.name == made.types[t.name].name, t.name
        assert tuple(int(x) for x in reversed(t.shape)) == shapes[t.name], t.name
    ft = r.fields["general.file_type"]
    assert int(ft.parts[ft.data[0]][0]) == int(mrm.parse_ftype(type_name).ftype)
    assert made.n_bytes == sum(int(t.n_bytes) for t in r.tensors)


@pytest.mark.parametrize("type_name", ENGINE_TYPES)
def test_random_model_runs_one_token_in_the_engine(tiny_models, type_name):
    """gguf-engine loads the file and evaluates BOS plus one token: logits are finite and of sane
    size (standard deviation between 0.1 and 10: the fan-in scaling keeps activations at unit scale)."""
    with Llama(str(tiny_models[type_name].path), n_ctx=32, verbose=False) as llm:
        assert llm.n_vocab() == 768
        logits = last_logits(llm)
    assert np.isfinite(logits).all()
    assert 0.1 < float(logits.std()) < 10.0


def test_qwen3_shape_runs_in_the_engine(tmp_path):
    """The Qwen3 layout (per-head Q/K norms, head_dim stated, tied output) loads and runs a token."""
    made = mrm.make_model("tiny-qwen3", "Q4_K_M", tmp_path / "q.gguf", log=lambda m: None)
    assert "output.weight" not in made.types and "blk.0.attn_q_norm.weight" in made.types
    with Llama(str(made.path), n_ctx=32, verbose=False) as llm:
        logits = last_logits(llm)
    assert np.isfinite(logits).all() and 0.1 < float(logits.std()) < 10.0


@pytest.mark.parametrize("type_name", ["Q4_K_M", "MXFP4_MOE"])
def test_qwen3moe_shape_runs_in_the_engine(tmp_path, type_name):
    """The qwen3moe layout (router, 3-D expert tensors, 8 experts top-2, Q/K norms) loads and runs a
    token: logits finite and of sane size."""
    made = mrm.make_model("tiny-qwen3moe", type_name, tmp_path / "moe.gguf", log=lambda m: None)
    with Llama(str(made.path), n_ctx=32, verbose=False) as llm:
        logits = last_logits(llm)
    assert np.isfinite(logits).all() and 0.1 < float(logits.std()) < 10.0


@pytest.mark.parametrize("key", ["Q4_K_M", "Q4_0", "IQ4_XS", "Q8_0+imatrix", "F16+imatrix"])
def test_mixture_types_are_llama_quantizes(key):
    """Per-tensor types of the tiny-llama shape equal what llama-quantize chose for the shared tiny
    llama of the same shape (the fixture type maps; an imatrix does not change Q8_0's or F16's
    choices), and equal the project's plan_types; rope_freqs, absent there, stays F32."""
    ftype = key.split("+")[0]
    ref = json.loads(fixture_path("models", "tiny-llama.typemaps.json").read_text())[key]
    tp, _ = mrm.plan(mrm.SHAPES["tiny-llama"], ftype)
    ours = {n: t.name for n, t in tp.types.items()}
    assert ours.pop("rope_freqs.weight") == "F32"
    assert ours == ref


def test_pure_gives_every_matrix_the_base_type():
    """--pure: every 2-D tensor in the ftype's base type (Q4_K for Q4_K_M), vectors F32."""
    tp, _ = mrm.plan(mrm.SHAPES["tiny-llama"], "Q4_K_M", pure=True)
    shapes = mrm.tensor_shapes(mrm.SHAPES["tiny-llama"])
    for n, t in tp.types.items():
        assert t == (GGMLType.Q4_K if len(shapes[n]) == 2 else GGMLType.F32), n


def test_blocks_are_seeded_and_have_fan_in_scale(tiny_models, tmp_path):
    """The same seed gives the same bytes; a Q4_K tensor's weights have standard deviation within
    10% of 1/sqrt(row length); different tensors of one type get different blocks."""
    again = mrm.make_model("tiny-llama", "Q4_K_M", tmp_path / "again.gguf", seed=3, log=lambda m: None)
    assert again.path.read_bytes() == tiny_models["Q4_K_M"].path.read_bytes()
    with GGUFReader(again.path) as r:
        t = r.tensors["blk.0.ffn_up.weight"]
        assert t.type == GGMLType.Q4_K
        w = dequantize(t.raw, t.type, t.shape)
        assert abs(float(w.std()) * np.sqrt(t.shape[-1]) - 1.0) < 0.1
        assert bytes(t.raw) != bytes(r.tensors["blk.0.ffn_gate.weight"].raw)


def test_synthetic_vocab_is_consistent_bpe():
    """Exactly n tokens, all distinct; each merge joins two earlier tokens into the next one;
    BOS/EOS are the last two, marked CONTROL."""
    v = mrm.synthetic_vocab(2000, seed=1)
    assert len(v.tokens) == 2000 == len(set(v.tokens)) == len(v.token_type)
    ids = {t: i for i, t in enumerate(v.tokens)}
    for k, m in enumerate(v.merges):
        a, b = m.split(" ")
        assert ids[a] < 256 + k and ids[b] < 256 + k and ids[a + b] == 256 + k
    assert (v.bos, v.eos) == (1998, 1999) and list(v.token_type[-2:]) == [3, 3]


def test_bad_arguments_are_refused(tmp_path):
    """Unknown shape, unknown type, and a --vocab-from file of the wrong size: exit 1 with a message,
    no output file."""
    out = tmp_path / "x.gguf"
    assert mrm.main(["no-such-shape", "Q4_0", str(out)]) == 1
    assert mrm.main(["tiny-llama", "Q9_9", str(out)]) == 1
    vocab = fixture_path("models", "tiny-llama-f32.gguf")          # 768 tokens, tiny-qwen3 has 1024
    assert mrm.main(["tiny-qwen3", "Q4_0", str(out), "--vocab-from", str(vocab), "-q"]) == 1
    assert not out.exists()


def test_bench_bytes_per_token_and_ceiling(tiny_models, tmp_path):
    """bench_vs_llamacpp: a generated token reads every tensor but token_embd (untied), or all of
    them (tied); the ceiling fraction is t/s x bytes per token / bandwidth (2 decimals)."""
    bench = _load("bench_vs_llamacpp")
    path = tiny_models["Q8_0"].path
    with GGUFReader(path) as r:
        total = sum(t.n_bytes for t in r.tensors.values())
        embd = r.tensors["token_embd.weight"].n_bytes
    assert bench.bytes_per_token(str(path)) == total - embd
    tied = mrm.make_model("tiny-qwen3", "Q8_0", tmp_path / "tied.gguf", log=lambda m: None)
    with GGUFReader(tied.path) as r:
        assert bench.bytes_per_token(str(tied.path)) == sum(t.n_bytes for t in r.tensors.values())
    run = bench.ModelRun("m.gguf", 2, bandwidth_gbs=10.0, bytes_per_token=500_000_000)   # ceiling 20 t/s
    rows = [bench.Row("m.gguf", 2, "tg128", [5.0, 7.0], [9.0, 11.0]), bench.Row("m.gguf", 2, "pp64", [30.0], [45.0])]
    table = bench.throughput_table(rows, {("m.gguf", 2): run})
    assert "| m.gguf | 2 | tg128 | 6.00 | 10.00 | 1.67 | 3.00 | 5.00 | 0.30 | 0.50 |" in table
    assert "| m.gguf | 2 | pp64 | 30.00 | 45.00 | 1.50 | - | - | - | - |" in table


def test_bench_bytes_per_token_of_a_moe_model(tmp_path):
    """For a mixture-of-experts file, a generated token reads expert_used_count / expert_count of
    every expert tensor (2 of 8 here; biases too) and the whole of every other tensor but token_embd."""
    bench = _load("bench_vs_llamacpp")
    made = mrm.make_model("tiny-gpt-oss", "MXFP4_MOE", tmp_path / "moe.gguf", log=lambda m: None)
    with GGUFReader(made.path) as r:
        experts = sum(t.n_bytes for n, t in r.tensors.items() if "_exps." in n)
        rest = sum(t.n_bytes for n, t in r.tensors.items() if "_exps." not in n and n != "token_embd.weight")
    assert experts > 0
    assert bench.bytes_per_token(str(made.path)) == rest + experts // 4


def test_bench_peak_rss_is_the_childs_own():
    """run_measured reports the child's peak resident set: a child touching 200 MB reports at least
    that, a bare interpreter far less (the benchmark process's own memory is not counted)."""
    bench = _load("bench_vs_llamacpp")
    ballast = np.ones(1 << 26)  # noqa: F841  (512 MB resident in this, the parent, process)
    big = bench.run_measured([sys.executable, "-c", "import time; b = bytearray(200 << 20); time.sleep(0.3)"])
    small = bench.run_measured([sys.executable, "-c", "import time; time.sleep(0.3)"])
    assert big.peak_rss >= 200 << 20
    assert small.peak_rss < 100 << 20
    assert bench.int_list("1,2") == [1, 2]


@pytest.mark.parametrize("shape", ["tiny-qwen3moe", "tiny-gpt-oss"])
@pytest.mark.parametrize("type_name", ["Q4_K_M", "MXFP4_MOE"])
def test_moe_model_layout_for_the_gguf_package(tmp_path, shape, type_name):
    """A random MoE file as llama.cpp's converter lays it out, read with the gguf package: 3-D expert
    tensors ffn_{gate,up,down}_exps of GGUF shape (row length, rows, n_expert), an F32 router, the
    expert_count / expert_used_count / expert_feed_forward_length keys; gpt-oss also has attention
    and expert biases, sinks, post_attention_norm, sliding window and YaRN keys.  Every matrix has
    the type llama-quantize gave the same tensor of a model of this shape (tests/data/moe_quant)."""
    s = mrm.SHAPES[shape]
    made = mrm.make_model(shape, type_name, tmp_path / "m.gguf", seed=1, log=lambda m: None)
    r = gguf.GGUFReader(made.path)
    f = {k: r.fields[k].contents() for k in r.fields}
    a = s.arch
    assert (f[f"{a}.expert_count"], f[f"{a}.expert_used_count"], f[f"{a}.expert_feed_forward_length"]) == (8, 2, s.experts.n_ff)
    t = {x.name: x for x in r.tensors}
    e, d = s.experts, s.d
    assert [int(v) for v in t["blk.1.ffn_gate_exps.weight"].shape] == [d, e.n_ff, e.n_expert]
    assert [int(v) for v in t["blk.1.ffn_up_exps.weight"].shape] == [d, e.n_ff, e.n_expert]
    assert [int(v) for v in t["blk.1.ffn_down_exps.weight"].shape] == [e.n_ff, d, e.n_expert]
    assert t["blk.0.ffn_gate_inp.weight"].tensor_type.name == "F32"
    if a == "gpt-oss":
        assert f[f"{a}.attention.sliding_window"] == 16 and f[f"{a}.rope.scaling.type"] == "yarn"
        for name in ("attn_q.bias", "attn_output.bias", "attn_sinks.weight", "post_attention_norm.weight",
                     "ffn_gate_inp.bias", "ffn_down_exps.bias"):
            assert t[f"blk.0.{name}"].tensor_type.name == "F32", name
        assert [int(v) for v in t["blk.0.ffn_up_exps.bias"].shape] == [e.n_ff, e.n_expert]
    else:
        assert "blk.0.attn_q_norm.weight" in t and "blk.0.ffn_norm.weight" in t
    refs = json.loads((ROOT / "tests" / "data" / "moe_quant" / "digests.json").read_text())
    ref_types = {n: v.split(":")[0] for n, v in refs[shape]["digests"][type_name].items()}
    assert {n: made.types[n].name for n in ref_types} == ref_types
    assert all(made.types[n] == GGMLType.F32 for n in made.types if n not in ref_types)
