"""Layer offload (``n_gpu_layers``): the split, the device boundary and the no-GPU fallback.

The device is ``tests.device_standin.StandinDevice``: NumPy underneath, but its arrays and
weights are holder types that raise when mixed with host arrays, and it counts every
host<->device transfer.  Its arithmetic is the CPU backend's, so any split must reproduce
the CPU logits (tolerance 1e-4 absolute on the logits).
"""
from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest

from gguf_engine.backends import device_backend
from gguf_engine.cli.run import main as run_main
from gguf_engine.model import load_model
from gguf_engine.model.loader import offload_split

from .conftest import ROOT, fixture_path
from .device_standin import DeviceArray, DeviceWeight, StandinDevice

MODELS = ["tiny-llama-f32.gguf", "tiny-qwen2-f32.gguf", "tiny-qwen3-f32.gguf", "q/tiny-llama-Q4_K_M.gguf"]
TOL = 1e-4
N_CTX = 64


def model_path(name: str) -> str:
    return str(fixture_path("models", *name.split("/")))


def prompt(name: str, n: int = 12) -> np.ndarray:
    ref = fixture_path("models", *name.replace(".gguf", ".reference.npz").split("/"))
    return np.load(ref)["tokens"][:n]


def load(name: str, ngl: int, device=None, **kw):
    return load_model(model_path(name), n_ctx=N_CTX, n_gpu_layers=ngl, device=device, **kw)


def no_gpu(monkeypatch):
    """Make the GPU backend unimportable, as on a machine without CuPy."""
    monkeypatch.setitem(sys.modules, "gguf_engine.backends.cuda", None)
    monkeypatch.setitem(sys.modules, "cupy", None)


def run_steps(model, tokens: np.ndarray) -> np.ndarray:
    """Prefill all but the last two tokens (batched path, logits of every row), then two
    single-token steps (matvec path): (n, n_vocab) float32."""
    rows = [model.eval(tokens[:-2], logits_all=True)]
    for t in tokens[-2:]:
        rows.append(model.eval([t])[None, :])
    return np.concatenate(rows, axis=0)


# ------------------------------------------------------------------------------------ the split

@pytest.mark.parametrize("n_layer,ngl,expect", [
    (4, 0, (0, False)), (4, 2, (2, False)), (4, 4, (4, False)), (4, 5, (4, True)),
    (4, 99, (4, True)), (4, -1, (4, True)), (30, 7, (7, False))])
def test_offload_split_counts_like_llama_cpp(n_layer, ngl, expect):
    """n_gpu_layers -> (repeating layers offloaded, output layer offloaded): exact."""
    assert offload_split(n_layer, ngl) == expect


@pytest.mark.parametrize("name", MODELS)
def test_split_logits_agree(name):
    """-ngl 0, half, all layers, all + output (and -1) give the CPU-only logits (|diff| <= 1e-4),
    prefill and decode steps alike, with the stand-in device rejecting any host/device mix."""
    tokens = prompt(name)
    with load(name, 0) as m:
        n_layer = m.config.n_layer
        want = run_steps(m, tokens)
    for ngl in (0, n_layer // 2, n_layer, n_layer + 1, -1):
        with load(name, ngl, StandinDevice()) as m:
            got = run_steps(m, tokens)
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= TOL, f"{name} -ngl {ngl}"


@pytest.mark.parametrize("ngl,up,down", [(0, 0, 0), (2, 1, 1), (4, 1, 1), (5, 1, 1)])
def test_crossings_per_forward_pass(ngl, up, down):
    """Transfers per forward pass are exactly the split's boundaries: none with -ngl 0, else one
    up (before the first offloaded layer) and one down (hidden states, or logits when the output
    layer is offloaded) -- for a batched prompt and for a single-token step (exact counts)."""
    dev = StandinDevice()
    name = "tiny-llama-f32.gguf"
    tokens = prompt(name, 10)
    with load(name, ngl, dev, n_batch=16) as m:
        assert m.config.n_layer == 4
        dev.reset_counts()
        m.eval(tokens[:8], logits_all=True)
        assert (dev.n_up, dev.n_down) == (up, down)
        dev.reset_counts()
        m.eval(tokens[8:9])
        assert (dev.n_up, dev.n_down) == (up, down)
        dev.reset_counts()
        m.embed(tokens[9:10])
        assert (dev.n_up, dev.n_down) == (up, down)


def test_chunked_prompt_crosses_down_only_for_the_result():
    """A 12-token prompt in chunks of 4 with every layer offloaded: each chunk goes up once, only
    the last chunk's logits come down (3 up, 1 down; exact)."""
    dev = StandinDevice()
    name = "tiny-llama-f32.gguf"
    with load(name, -1, dev, n_batch=4) as m:
        dev.reset_counts()
        m.eval(prompt(name, 12))
        assert (dev.n_up, dev.n_down) == (3, 1)


def test_placement_of_layers_weights_and_kv_cache():
    """-ngl 2 of 4: layers 2, 3 (weights, norms, RoPE tables, KV cache) on the device, layers 0, 1,
    the embedding and the output layer on the host; the cache keeps its full size (exact)."""
    dev = StandinDevice()
    with load("tiny-qwen2-f32.gguf", 2, dev) as m, load("tiny-qwen2-f32.gguf", 0) as ref:
        tf = m._tf
        n_layer = m.config.n_layer
        first = n_layer - 2
        assert m.n_gpu_layers == 2 and m.device is dev
        for il, b in enumerate(tf.blk):
            on_dev = il >= first
            assert (b.backend is dev) == on_dev
            k, v = m.kv_cache.layer(il)
            assert isinstance(k, DeviceArray) == on_dev and isinstance(v, DeviceArray) == on_dev
            assert isinstance(b.attn_norm, DeviceArray) == on_dev
            assert isinstance(b.attn_q_bias, DeviceArray) == on_dev
            assert isinstance(b.rope[0], DeviceArray) == on_dev
            assert all(isinstance(w, DeviceWeight) == on_dev for w in b.attn_qkv + b.ffn_gate_up)
            assert isinstance(b.ffn_down, DeviceWeight) == on_dev
            # the norm closing each layer lives beside it, even across the boundary
            assert isinstance(b.next_norm, DeviceArray) == on_dev
        assert not isinstance(tf.token_embd, DeviceWeight) and not isinstance(tf.output, DeviceWeight)
        assert tf.output_backend is m.backend
        assert m.kv_cache.nbytes == ref.kv_cache.nbytes and m.kv_cache.n_ctx == N_CTX


def test_output_layer_offloaded_beyond_n_layer():
    """-ngl n_layer keeps the output layer on the host; -ngl n_layer + 1 moves the output norm and
    matmul (a device copy of the tied embedding when tied) to the device (exact)."""
    dev = StandinDevice()
    with load("tiny-llama-f32.gguf", 4, dev) as m:
        assert m.n_gpu_layers == 4 and m._tf.output_backend is m.backend
        assert not isinstance(m._tf.output, DeviceWeight)
    with load("tiny-llama-f32.gguf", 5, dev) as m:
        assert m.n_gpu_layers == 5 and m._tf.output_backend is dev
        assert isinstance(m._tf.output, DeviceWeight) and isinstance(m._tf.output_norm, DeviceArray)
        assert not isinstance(m._tf.token_embd, DeviceWeight)     # the lookup stays on the host


@pytest.mark.parametrize("ngl,summary", [(0, "offloaded 0/5"), (1, "offloaded 1/5"), (4, "offloaded 4/5"),
                                         (5, "offloaded 5/5"), (99, "offloaded 5/5"), (-1, "offloaded 5/5")])
def test_offload_summary(ngl, summary):
    """``Model.offload_summary`` reads as llama.cpp's line, the output layer counted (exact text)."""
    with load("tiny-llama-f32.gguf", ngl, StandinDevice()) as m:
        assert m.offload_summary == summary + " layers to GPU"


# ------------------------------------------------------------------------------ without a GPU

def test_device_backend_is_none_without_cupy(monkeypatch):
    """With the GPU backend unimportable, ``device_backend`` returns None (exact)."""
    no_gpu(monkeypatch)
    assert device_backend(1) is None


def test_layers_requested_without_gpu_warn_once_and_run_on_cpu(monkeypatch):
    """n_gpu_layers=3 with no GPU: exactly one warning naming the request, nothing offloaded,
    CPU logits (|diff| <= 1e-4, in fact identical)."""
    no_gpu(monkeypatch)
    name = "tiny-qwen3-f32.gguf"
    tokens = prompt(name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = load(name, 3)
    with m:
        got = run_steps(m, tokens)
        assert m.n_gpu_layers == 0 and m.device is None
        assert m.offload_summary == f"offloaded 0/{m.config.n_layer + 1} layers to GPU"
    msgs = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert msgs == ["n_gpu_layers=3 requested but CuPy/GPU is not available; running on the CPU"]
    with load(name, 0) as ref:
        want = run_steps(ref, tokens)
    assert np.abs(got - want).max() <= TOL


def test_gguf_run_reports_offload_and_warns_without_gpu(monkeypatch, capsys):
    """gguf-run -ngl 2 without a GPU logs the one warning and ``offloaded 0/5 layers to GPU`` on
    stderr, and still completes (exact text)."""
    no_gpu(monkeypatch)
    code = run_main(["-m", model_path("tiny-llama-f32.gguf"), "-p", "Hello", "-n", "2", "--temp", "0",
                     "-c", "32", "-ngl", "2", "--no-perf"])
    err = capsys.readouterr().err
    assert code == 0
    assert "offloaded 0/5 layers to GPU" in err
    assert err.count("requested but CuPy/GPU is not available") == 1


def test_package_imports_without_cupy():
    """Importing the package, its backends and the model code never imports cupy (exact)."""
    code = ("import sys; import gguf_engine, gguf_engine.backends, gguf_engine.backends.cpu, gguf_engine.model; "
            "from gguf_engine.backends import device_backend; "
            "assert 'cupy' not in sys.modules, 'cupy imported'")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)


# -------------------------------------------------------------------------- the stand-in itself

def test_standin_rejects_host_device_mixing():
    """The stand-in is strict, so the agreement tests above prove the boundary is clean: device
    arrays refuse NumPy and the CPU backend, the device refuses host arrays and host weights."""
    dev = StandinDevice()
    a = dev.from_host(np.ones((1, 4), dtype=np.float32))
    with pytest.raises(TypeError):
        np.asarray(a)
    with pytest.raises(TypeError):
        a + np.ones((1, 4), dtype=np.float32)
    with pytest.raises(TypeError):
        dev.rms_norm(np.ones((1, 4), dtype=np.float32), dev.upload_array(np.ones(4, np.float32)), 1e-5, a)
    with pytest.raises(TypeError):
        dev.from_host(a)
    with pytest.raises(Exception):            # a Numba kernel cannot take a device array
        dev.cpu.rms_norm(a, np.ones(4, np.float32), 1e-5, np.empty((1, 4), np.float32))
    assert np.array_equal(dev.to_host(a), np.ones((1, 4), dtype=np.float32))
    assert (dev.n_up, dev.n_down) == (1, 1)
