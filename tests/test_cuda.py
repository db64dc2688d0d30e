"""The CUDA backend (CuPy) against the CPU kernels and the reference fixtures.

Skipped as a whole where CuPy or a CUDA GPU is missing (CI has neither); the split logic
and the device boundary are tested without a GPU in test_offload.py.  Tolerances:

- decoding: bit-exact with the CPU decoders (and so with ggml) on llama.cpp's blocks and on
  random blocks of every type;
- matvec and matmul: |y - W x| <= 2e-5 * sum |w x| per output against float64 products of the
  exactly decoded weights (float32 accumulation over up to 4096 terms);
- layer operations: within 2e-5 of the CPU backend (same formulas; the GPU contracts
  multiply-adds and uses the hardware exponential);
- models with every layer offloaded: the accuracy bar of test_model (mean KL from the exact
  logits within llama.cpp's own) and the greedy continuation up to the first near-tie; graph
  replay bit-identical to eager launches.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from kernels import GGMLType, dequantize
from kernels.types import BLOCK_SIZES

from .conftest import SHARED, fixture_path, real_model
from .test_model import check_greedy, check_kl, reference

try:
    from gguf_engine.backends.cuda import CudaBackend
    HAVE_GPU = CudaBackend.available()
except Exception:                      # no cupy, or cupy without a usable CUDA runtime
    HAVE_GPU = False

pytestmark = pytest.mark.skipif(not HAVE_GPU, reason="needs CuPy and a CUDA GPU")

MATVEC_TOL = 2e-5
OPS_TOL = 2e-5
FIXTURE_TYPES = sorted(p.stem for p in (SHARED / "quant_blocks").glob("*.npz"))
PLAIN = ["F32", "F16", "BF16"]


@pytest.fixture(scope="module")
def gpu():
    return CudaBackend(graphs=False)


def tensor(raw: np.ndarray, qtype: str, shape) -> SimpleNamespace:
    """A stand-in reader tensor: what Backend.upload_weight reads."""
    return SimpleNamespace(raw=np.ascontiguousarray(raw).view(np.uint8), type=GGMLType[qtype], shape=tuple(shape),
                           name=f"test.{qtype}")


def blocks(name: str, key: str = "q"):
    """(raw blocks, llama.cpp's decoding); key "q" or "q_im" (the imatrix-quantized set; IQ1_S,
    IQ2_XXS and IQ2_XS have only that one, as llama.cpp needs an imatrix for them)."""
    z = np.load(fixture_path("quant_blocks", name + ".npz"))
    if key not in z.files:
        key = "q_im"
    return z[key], z["deq" + key[1:]]


# fp16 scale fields of the types test_dequant's random_blocks does not cover
_EXTRA_FP16_FIELDS = {"Q8_1": [0, 2], "Q1_0": [0], "Q2_0": [0], "NVFP4": []}


def random_weight(name: str, rows: int, cols: int, seed: int) -> np.ndarray:
    """Random valid bytes of a (rows, cols) weight (scale fields finite), as test_dequant makes them."""
    rng = np.random.default_rng(seed)
    if name in PLAIN:
        v = rng.standard_normal((rows, cols)).astype(np.float32)
        if name == "F16":
            return v.astype(np.float16).view(np.uint8)
        if name == "BF16":
            return (v.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
        return v.view(np.uint8)
    from .test_dequant import finite_fp16, random_blocks
    qk, ts = BLOCK_SIZES[GGMLType[name]]
    nb = rows * cols // qk
    if name == "Q8_K":
        b = rng.integers(0, 256, (nb, ts), dtype=np.uint8)
        b[:, :4] = rng.standard_normal(nb).astype(np.float32).view(np.uint8).reshape(nb, 4)
    elif name in _EXTRA_FP16_FIELDS:
        b = rng.integers(0, 256, (nb, ts), dtype=np.uint8)
        for off in _EXTRA_FP16_FIELDS[name]:
            b[:, off:off + 2] = finite_fp16(rng, nb).view(np.uint8).reshape(nb, 2)
    else:
        b = random_blocks(name, nb, seed)
    return b.reshape(rows, -1)


def bits_equal(got: np.ndarray, want: np.ndarray) -> bool:
    return np.array_equal(np.ascontiguousarray(got, np.float32).view(np.uint32),
                          np.ascontiguousarray(want, np.float32).view(np.uint32))


# ------------------------------------------------------------------------------ decoding

@pytest.mark.parametrize("name", FIXTURE_TYPES)
def test_gpu_decodes_llamacpp_blocks_bit_exact(gpu, name):
    """Every type: llama.cpp's blocks (plain and imatrix-quantized) decode on the GPU bit for bit."""
    for key in ("q", "q_im"):
        q, deq = blocks(name, key)
        w = gpu.upload_weight(tensor(q, name, deq.shape))
        got = gpu.to_host(gpu.dequantize(w))
        assert bits_equal(got, deq), f"{name} {key}"


@pytest.mark.parametrize("name", FIXTURE_TYPES + ["F32", "Q8_1", "Q8_K", "Q1_0", "Q2_0", "NVFP4"])
def test_gpu_decodes_random_blocks_like_cpu(gpu, name):
    """Random blocks with finite scales (plain types: random values): bit-identical with the CPU
    decoders, also when only some rows are gathered (the embedding path)."""
    qk = max(BLOCK_SIZES[GGMLType[name]][0], 8)
    rows, cols = 7, 4 * max(qk, 64)
    raw = random_weight(name, rows, cols, seed=len(name))
    want = dequantize(raw.reshape(-1), GGMLType[name], (rows, cols))
    w = gpu.upload_weight(tensor(raw, name, (rows, cols)))
    assert bits_equal(gpu.to_host(gpu.dequantize(w)), want), name
    ids = np.array([5, 0, 5, 3])
    assert bits_equal(gpu.to_host(gpu.embed(w, ids)), want[ids]), name


# ------------------------------------------------------------------------------ products

def _bound(deq: np.ndarray, X: np.ndarray) -> np.ndarray:
    """(n, rows) error allowance: MATVEC_TOL * sum |w x|."""
    return MATVEC_TOL * (np.abs(X.astype(np.float64)) @ np.abs(deq.astype(np.float64)).T) + 1e-30


@pytest.mark.parametrize("name", FIXTURE_TYPES)
def test_gpu_matvec_and_matmul_every_type(gpu, name):
    """matvec (one token) and matmul (2, 7 and 33 tokens) against float64 products of the exact
    weights, on all 16 rows, 13 rows and a single row."""
    q, deq = blocks(name)
    rng = np.random.default_rng(3)
    for rows in (16, 13, 1):
        w = gpu.upload_weight(tensor(q[:rows], name, (rows, deq.shape[1])))
        for n in (1, 2, 7, 33):
            X = rng.standard_normal((n, deq.shape[1])).astype(np.float32)
            want = X.astype(np.float64) @ deq[:rows].astype(np.float64).T
            got = gpu.to_host(gpu.linear(w, gpu.from_host(X)))
            assert got.shape == (n, rows)
            err = np.abs(got - want)
            assert (err <= _bound(deq[:rows], X)).all(), f"{name} rows={rows} n={n}: max err {err.max():.3g}"


@pytest.mark.parametrize("shape", [(576, 1536), (1536, 768), (4096, 256)])
def test_gpu_matvec_model_shapes(gpu, shape):
    """Model-sized Q4_K / Q8_0 / Q6_K matrices (random valid blocks) against float64."""
    rows, cols = shape
    rng = np.random.default_rng(1)
    for name in ("Q4_K", "Q8_0", "Q6_K", "IQ2_XXS"):
        raw = random_weight(name, rows, cols, seed=rows)
        deq = dequantize(raw.reshape(-1), GGMLType[name], (rows, cols))
        deq = np.where(np.isfinite(deq), deq, 0).astype(np.float32)
        w = gpu.upload_weight(tensor(raw, name, (rows, cols)))
        x = rng.standard_normal((1, cols)).astype(np.float32)
        got = gpu.to_host(gpu.linear(w, gpu.from_host(x)))
        want = x.astype(np.float64) @ deq.astype(np.float64).T
        ok = np.abs(got - want) <= _bound(deq, x)
        finite = np.isfinite(dequantize(raw.reshape(-1), GGMLType[name], (rows, cols))).all(axis=1)
        assert ok[:, finite].all(), f"{name} {shape}"


def test_gpu_fused_weights_of_mixed_types(gpu):
    """fuse() stacks same-type neighbours; linear_fused concatenates the outputs in order."""
    parts = [("Q4_K", 8), ("Q4_K", 4), ("Q6_K", 4)]
    ws, deqs = [], []
    for i, (name, rows) in enumerate(parts):
        raw = random_weight(name, rows, 512, seed=10 + i)
        deqs.append(dequantize(raw.reshape(-1), GGMLType[name], (rows, 512)))
        ws.append(gpu.upload_weight(tensor(raw, name, (rows, 512))))
    fused = gpu.fuse(ws)
    assert [w.shape[0] for w in fused] == [12, 4]
    deq = np.concatenate(deqs)
    rng = np.random.default_rng(2)
    for n in (1, 5):
        X = rng.standard_normal((n, 512)).astype(np.float32)
        got = gpu.to_host(gpu.linear_fused(fused, gpu.from_host(X)))
        want = X.astype(np.float64) @ deq.astype(np.float64).T
        assert (np.abs(got - want) <= _bound(deq, X)).all()


# ------------------------------------------------------------------------------ layer operations

def _both(gpu, *arrays):
    return [gpu.from_host(a) for a in arrays]


def test_gpu_norms_activation_softcap_match_cpu(gpu):
    from gguf_engine.backends.cpu import CPUBackend
    cpu = CPUBackend(1)
    rng = np.random.default_rng(4)
    n, d, ff = 5, 576, 1536
    x = rng.standard_normal((n, d)).astype(np.float32)
    delta = rng.standard_normal((n, d)).astype(np.float32)
    w = rng.standard_normal(d).astype(np.float32)
    pw = rng.standard_normal(d).astype(np.float32)
    out = np.empty_like(x)
    cpu.rms_norm(x, w, 1e-6, out)
    gx, gw, gout = _both(gpu, x, w, out)
    gpu.rms_norm(gx, gw, 1e-6, gout)
    np.testing.assert_allclose(gpu.to_host(gout), out, atol=OPS_TOL, rtol=OPS_TOL)
    for post in (None, pw):
        xc = x.copy()
        cpu.add_rms_norm(xc, delta, post, w, 1e-6, out)
        gx, gd, gw, gout = _both(gpu, x, delta, w, out)
        gpu.add_rms_norm(gx, gd, None if post is None else gpu.from_host(post), gw, 1e-6, gout)
        np.testing.assert_allclose(gpu.to_host(gx), xc, atol=OPS_TOL, rtol=OPS_TOL)
        np.testing.assert_allclose(gpu.to_host(gout), out, atol=OPS_TOL, rtol=OPS_TOL)
    gu = rng.standard_normal((n, 2 * ff)).astype(np.float32) * 3
    for gelu in (False, True):
        act = np.empty((n, ff), np.float32)
        cpu.gated_act(gu[:, :ff], gu[:, ff:], gelu, act)
        ggu, gact = _both(gpu, gu, act)
        gpu.gated_act(ggu[:, :ff], ggu[:, ff:], gelu, gact)
        np.testing.assert_allclose(gpu.to_host(gact), act, atol=OPS_TOL, rtol=OPS_TOL)
    logits = rng.standard_normal((n, 100)).astype(np.float32) * 50
    gl = gpu.from_host(logits)
    cpu.softcap(logits, 30.0)
    gpu.softcap(gl, 30.0)
    np.testing.assert_allclose(gpu.to_host(gl), logits, atol=OPS_TOL, rtol=OPS_TOL)


@pytest.mark.parametrize("cache", ["f32", "f16"])
@pytest.mark.parametrize("n,pos0,window,softcap,neox,hd", [
    (1, 0, 0, 0.0, False, 64), (1, 37, 0, 0.0, True, 64), (6, 11, 0, 0.0, False, 256),
    (5, 20, 8, 0.0, True, 256), (3, 9, 0, 20.0, False, 48), (40, 0, 0, 0.0, True, 64)])
def test_gpu_qkv_prepare_and_attention_match_cpu(gpu, cache, n, pos0, window, softcap, neox, hd):
    """Bias + head norms + RoPE + cache store, then causal attention (sliding window, soft-cap,
    grouped heads, f32/f16 cache) on the GPU against the CPU backend."""
    from gguf_engine.backends.cpu import CPUBackend
    from gguf_engine.model.transformer import rope_tables
    cpu = CPUBackend(1)
    rng = np.random.default_rng(n * 100 + pos0)
    H, Hkv, C = 8, 2, 64
    qkv = rng.standard_normal((n, (H + 2 * Hkv) * hd)).astype(np.float32)
    bias = [rng.standard_normal((h, hd)).astype(np.float32) for h in (H, Hkv, Hkv)]
    norms = [rng.standard_normal(hd).astype(np.float32) for _ in range(2)]
    cos, sin = rope_tables(C, hd, hd, 10000.0, 1.0)
    dtype = np.float16 if cache == "f16" else np.float32
    prior_k = rng.standard_normal((C, Hkv, hd)).astype(dtype)     # earlier positions already cached
    prior_v = rng.standard_normal((C, Hkv, hd)).astype(dtype)

    def run(be, to):
        buf = to(qkv)
        q3 = buf[:, :H * hd].reshape(n, H, hd)
        k3 = buf[:, H * hd:(H + Hkv) * hd].reshape(n, Hkv, hd)
        v3 = buf[:, (H + Hkv) * hd:].reshape(n, Hkv, hd)
        kc, vc = to(prior_k), to(prior_v)
        be.qkv_prepare(q3, k3, v3, *[to(b) for b in bias], *[to(w) for w in norms], 1e-6,
                       (to(cos), to(sin)), pos0, neox, kc, vc)
        out = to(np.zeros((n, H, hd), np.float32))
        be.attention(q3, kc, vc, pos0, 1.0 / np.sqrt(hd), window, softcap, out)
        return [np.asarray(be.to_host(a), np.float32) for a in (buf, kc, vc, out)]

    def to_gpu(a):
        return gpu.xp.asarray(a)

    want = run(cpu, lambda a: a.copy())
    got = run(gpu, to_gpu)
    for g, w_, what in zip(got, want, ("q/k/v", "k cache", "v cache", "attention")):
        np.testing.assert_allclose(g, w_, atol=OPS_TOL * 5, rtol=OPS_TOL, err_msg=what)


# ------------------------------------------------------------------------------ models

TINY = ["tiny-llama-f32.gguf", "tiny-qwen2-f32.gguf", "tiny-qwen3-f32.gguf", "tiny-llama-f16.gguf",
        "q/tiny-llama-Q4_K_M.gguf", "q/tiny-llama-Q3_K_M.gguf", "q/tiny-llama-IQ4_XS.gguf"]


def _load(path, ngl, graphs=True, **kw):
    from gguf_engine.model import load_model
    return load_model(path, n_ctx=kw.pop("n_ctx", 128), n_gpu_layers=ngl, device=CudaBackend(graphs=graphs), **kw)


@pytest.mark.parametrize("name", TINY)
def test_gpu_tiny_models_offloaded(name):
    """Every layer and the output on the GPU: prefill and token-by-token logits pass test_model's
    KL bar, the greedy continuation matches, and half the layers agree with all of them."""
    path = fixture_path("models", *name.split("/"))
    ref = reference(path)
    with _load(path, -1) as m:
        assert m.n_gpu_layers == m.config.n_layer + 1
        for stepwise in (False, True):
            kl, bound = check_kl(m, ref, stepwise=stepwise)
            assert kl <= bound, f"{name} stepwise={stepwise}: KL {kl:.3g} > {bound:.3g}"
        check_greedy(m, ref)
        m.reset()
        full = m.eval(ref["tokens"][:12], logits_all=True)
        n_layer = m.config.n_layer
    with _load(path, n_layer // 2) as m:
        half = m.eval(ref["tokens"][:12], logits_all=True)
    np.testing.assert_allclose(half, full, atol=1e-3 * max(1.0, float(np.abs(full).max())), rtol=0)


@pytest.mark.parametrize("ngl", [-1, 2])
def test_gpu_graph_replay_equals_eager(ngl):
    """Token-by-token logits with captured graphs are bit-identical to eager launches, over a
    reset and a truncation (the position lives in device memory), with every layer on the GPU
    and with half of them (the graph then starts at the device boundary)."""
    path = fixture_path("models", "tiny-qwen3-f32.gguf")
    tokens = reference(path)["tokens"][:10]
    results = []
    for graphs in (False, True):
        with _load(path, ngl, graphs=graphs) as m:
            rows = [m.eval(tokens[:3])]
            rows += [m.eval([t]) for t in tokens[3:]]
            m.truncate(5)
            rows += [m.eval([t]) for t in tokens[5:8]]
            m.reset()
            rows += [m.eval([t]) for t in tokens[:3]]
            results.append(np.stack(rows))
    assert np.array_equal(results[0], results[1])


def test_gguf_run_reports_gpu_offload(capsys):
    """gguf-run -ngl 99 on a GPU: every layer offloaded, said on stderr, exit status 0."""
    from gguf_engine.cli.run import main as run_main
    code = run_main(["-m", str(fixture_path("models", "tiny-llama-f32.gguf")), "-p", "Hello", "-n", "4",
                     "--temp", "0", "-c", "64", "-ngl", "99", "--no-perf"])
    assert code == 0
    assert "offloaded 5/5 layers to GPU" in capsys.readouterr().err


@pytest.mark.parametrize("which", ["smollm2", "gemma3"])
def test_gpu_real_models_all_layers(which):
    """-ngl 99 on SmolLM2 and Gemma 3: prefill and token-by-token KL within llama.cpp's own,
    and the greedy reference continuation."""
    path = real_model({"smollm2": "smollm2-135m-instruct", "gemma3": "gemma-3-270m"}[which])
    ref_name = {"smollm2": "smollm2-135m-instruct-q4_1", "gemma3": "gemma-3-270m-q4_k_m"}[which]
    ref = reference(SHARED / "models" / (ref_name + ".gguf"))
    with _load(path, 99, n_ctx=256) as m:
        assert m.n_gpu_layers == m.config.n_layer + 1
        for stepwise in (False, True):
            kl, bound = check_kl(m, ref, stepwise=stepwise)
            assert kl <= bound, f"{which} stepwise={stepwise}: KL {kl:.3g} > {bound:.3g}"
        check_greedy(m, ref)
