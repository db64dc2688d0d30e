"""Context shift: kept keys re-rotated by RoPE to their new positions, on every RoPE variant.

The oracle is the forward pass's own kernel: while the prompt is evaluated, each layer's keys are
captured before RoPE (the same ``qkv_prepare`` run with identity tables); after the shift, the
forward pass's RoPE applied to those keys at the new positions is what the cache must hold.  This
is "a fresh evaluation of the kept tokens at their new positions" in the only sense a shift can
meet: the kept tokens' values and pre-RoPE keys are the ones computed while the dropped tokens were
still there, as in llama.cpp (a shift does not re-evaluate them).

Tolerances: keys within 2e-6 of their scale (float32 rounding of two rotations vs one; the f16
cache within its own rounding, 2e-3); the logits of the next token on the shifted cache within
4e-4 of the largest logit of those on the reference cache (float32 models agree to ~1e-6; the
quantized ones round activations to 8-bit blocks before each product, as llama.cpp does, which
turns key differences of 1e-7 into logit differences of about 1e-4).
"""
from __future__ import annotations

import numpy as np
import pytest

from gguf_engine import Llama
from gguf_engine.model import load_model
from gguf_engine.model.context_shift import ShiftPlan, keep_count, plan_shift
from tests.conftest import fixture_path
from tests.test_arch import _tool

N_CTX = 64
LOGIT_TOL = 4e-4      # max |difference| of the next logits, relative to the largest logit


def _capture_pre_rope(m):
    """Wraps the backend's qkv_prepare so each call also records, per layer, the keys it stores
    before RoPE (its own bias and norm applied, rotation by identity tables).  Returns the record
    {layer: (n, Hkv, hd)} and the original method."""
    be = m._tf.backend
    orig = be.qkv_prepare
    record: dict[int, np.ndarray] = {}
    n_layer = m.config.n_layer

    def spy(q3, k3, v3, bq, bk, bv, qn, kn, eps, rope, pos0, neox, k_cache, v_cache):
        il = len(record) % n_layer
        kc = np.zeros((pos0 + k3.shape[0],) + k3.shape[1:], np.float32)
        ident = (np.ones_like(rope[0]), np.zeros_like(rope[1]))
        orig(q3.copy(), k3.copy(), v3.copy(), bq, bk, bv, qn, kn, eps, ident, pos0, neox, kc, kc.copy())
        record[il] = kc[pos0:].copy()
        orig(q3, k3, v3, bq, bk, bv, qn, kn, eps, rope, pos0, neox, k_cache, v_cache)
    be.qkv_prepare = spy
    return record, orig


def _check_shift(m, cache_type: str) -> None:
    cfg = m.config
    rng = np.random.default_rng(0)
    n = 48
    toks = rng.integers(3, cfg.n_vocab, size=n).astype(np.int32)
    record, orig = _capture_pre_rope(m)
    m.eval(toks)
    m._tf.backend.qkv_prepare = orig
    assert len(record) == cfg.n_layer

    plan = plan_shift(n, 5, N_CTX)
    assert plan == ShiftPlan(5, 21)
    before = [m.kv_cache.read_k(il, 0, n) for il in range(cfg.n_layer)]
    m.shift(plan)
    n_after = n - plan.n_discard
    assert m.n_past == n_after
    tail = slice(plan.n_keep + plan.n_discard, n)
    tol = 2e-6 if cache_type == "f32" else 2e-3
    for il, blk in enumerate(m._tf.blk):
        got = m.kv_cache.read_k(il, 0, n_after)
        np.testing.assert_array_equal(got[:plan.n_keep], before[il][:plan.n_keep])   # the head is untouched
        ref = np.zeros((N_CTX,) + got.shape[1:], np.float32)
        pre = record[il][tail].copy()                                                 # (n_moved, Hkv, hd)
        orig(np.zeros((pre.shape[0], cfg.n_head, cfg.head_dim), np.float32), pre, np.zeros_like(pre),
             None, None, None, None, None, cfg.norm_eps, blk.rope, plan.n_keep, cfg.rope_neox, ref, ref.copy())
        want = ref[plan.n_keep:n_after]
        scale = float(np.abs(want).max())
        err = float(np.abs(got[plan.n_keep:] - want).max())
        assert err <= tol * scale, f"layer {il}: keys off by {err:.3g} (scale {scale:.3g})"

    # the next token's logits on the shifted cache and on one holding the reference keys
    nxt = [int(toks[0])]
    shifted = m.eval(nxt).copy()
    m.truncate(n_after)
    for il, blk in enumerate(m._tf.blk):
        pre = record[il][tail].copy()
        ref = np.zeros((N_CTX,) + pre.shape[1:], np.float32)
        orig(np.zeros((pre.shape[0], cfg.n_head, cfg.head_dim), np.float32), pre, np.zeros_like(pre),
             None, None, None, None, None, cfg.norm_eps, blk.rope, plan.n_keep, cfg.rope_neox, ref, ref.copy())
        m.kv_cache.write_k(il, plan.n_keep, ref[plan.n_keep:n_after])
    fresh = m.eval(nxt)
    err = float(np.abs(shifted - fresh).max())
    print(f"logits: max abs diff {err:.3g}, scale {float(np.abs(fresh).max()):.3g}")
    assert err <= LOGIT_TOL * float(np.abs(fresh).max())


@pytest.mark.parametrize("name", ["llama-rope-freqs", "llama-yarn", "phi3-long", "gemma2"])
def test_shift_rerotates_keys_tiny_variants(tmp_path, name):
    """Llama 3 rope_freqs (adjacent pairs), YaRN (its attention factor divided out), Phi-3 LongRoPE
    factors (NeoX pairs) and Gemma 2's sliding-window layers: the shifted keys equal the forward
    pass's RoPE at the new positions, and the next logits agree (tolerances in the module note)."""
    fixture_path("models", "tiny-llama-f32.gguf")
    path = tmp_path / f"{name}.gguf"
    _tool().build(name, path)
    with load_model(path, n_threads=2, n_ctx=N_CTX) as m:
        _check_shift(m, "f32")


@pytest.mark.parametrize("cache_type", ["f32", "f16"])
def test_shift_rerotates_keys_smollm2(smollm2_path, cache_type):
    """SmolLM2 (llama, adjacent pairs), with an f32 and an f16 cache."""
    with load_model(smollm2_path, n_threads=2, n_ctx=N_CTX, cache_type=cache_type) as m:
        _check_shift(m, cache_type)


def test_shift_rerotates_keys_gemma3(gemma3_path):
    """Gemma 3: NeoX pairs, sliding-window layers with their own RoPE base beside the global ones."""
    with load_model(gemma3_path, n_threads=2, n_ctx=N_CTX) as m:
        assert any(m.config.swa_layers) and not all(m.config.swa_layers)
        _check_shift(m, "f32")


def test_plan_and_keep_follow_llama_cpp():
    """n_keep: -1 (or more than the prompt) keeps the whole initial prompt, else n_keep after BOS;
    at most n_ctx - 4 kept; half of the rest dropped, at least one token left after the gap."""
    assert keep_count(-1, 30, True) == 30 and keep_count(100, 30, True) == 30
    assert keep_count(4, 30, True) == 5 and keep_count(4, 30, False) == 4
    assert plan_shift(64, 0, 64) == ShiftPlan(0, 32)
    assert plan_shift(64, 63, 64) == ShiftPlan(60, 2)
    assert plan_shift(64, 10, 64, n_discard=5) == ShiftPlan(10, 5)
    assert plan_shift(2, 1, 64) is None


def test_generation_goes_on_past_the_context():
    """Llama(context_shift=True): greedy generation runs past a 64-token context (the cache shifted,
    never holding more than n_ctx); without it, generation stops at the full context ("length")."""
    path = str(fixture_path("models", "tiny-llama-f32.gguf"))
    prompt = "The quick brown fox jumps over the lazy dog."
    with Llama(path, n_ctx=N_CTX, context_shift=True, n_keep=-1) as llm:
        out = llm.create_completion(prompt, max_tokens=120, temperature=0.0, ignore_eos=True)
        assert out["usage"]["completion_tokens"] == 120 and out["choices"][0]["finish_reason"] == "length"
        assert llm.engine.n_shifts >= 2 and llm.n_tokens <= N_CTX == llm.model.n_ctx
        n_prompt = out["usage"]["prompt_tokens"]
        assert llm.input_ids[:n_prompt] == llm.tokenize(prompt, special=True)   # -1 kept the whole prompt
    with Llama(path, n_ctx=N_CTX) as llm:
        out = llm.create_completion(prompt, max_tokens=120, temperature=0.0, ignore_eos=True)
        assert out["usage"]["completion_tokens"] < 120 and llm.last_stop_reason == "context_full"


def test_server_slots_shift_like_the_single_sequence_path():
    """The server's scheduler with a ShiftPolicy: two requests generate past their 64-token slots
    side by side, each slot shifted on its own; a slot's greedy tokens equal Llama(context_shift)'s
    up to the first near-tie (top-2 log-probability gap < 0.05, as the batched tests state it).
    Without the policy the request ends with "length" when its slot is full."""
    import threading

    from gguf_engine.generation.sampling import SamplingParams
    from gguf_engine.model.context_shift import ShiftPolicy
    from gguf_engine.server.scheduler import Request, Scheduler

    path = str(fixture_path("models", "tiny-llama-f32.gguf"))
    prompts = ["The quick brown fox jumps over the lazy dog.", "Once upon a time there was"]
    def run(policy, n_gen):
        sched = Scheduler(lambda: Llama(path, n_ctx=N_CTX), 2, N_CTX, context_shift=policy)
        sched.start()
        sched.ready.wait()
        done = [threading.Event() for _ in prompts]
        outs: list[list] = [[] for _ in prompts]
        for i, p in enumerate(prompts):
            def emit(o, i=i):
                outs[i].append(o)
                if o.finish_reason is not None:
                    done[i].set()
            sched.submit(Request(sched.llm.tokenize(p, special=True), SamplingParams(temperature=0.0), emit,
                                 max_tokens=n_gen, ignore_eos=True, n_logprobs=2))
        for d in done:
            assert d.wait(120)
        shifts = sched.metrics.n_context_shifts
        sched.stop()
        return outs, shifts

    outs, shifts = run(None, 100)
    assert all(o[-1].finish_reason == "length" and o[-1].n_generated < 100 for o in outs)
    assert shifts == 0
    outs, shifts = run(ShiftPolicy(2), 100)
    assert shifts >= 4
    with Llama(path, n_ctx=N_CTX, context_shift=True, n_keep=2) as llm:
        for i, p in enumerate(prompts):
            assert outs[i][-1].finish_reason == "length" and outs[i][-1].n_generated == 100
            got = [o.token for o in outs[i] if o.token is not None]
            ref = []
            eog = {int(t) for t in (llm.tokenizer.eog_ids or [])} | {llm.token_eos()}
            for tok in llm.generate(llm.tokenize(p, special=True), temp=0.0,
                                    logit_bias={t: float("-inf") for t in eog}):   # as ignore_eos
                ref.append(tok)
                if len(ref) == 100:
                    break
            for j, (a, b) in enumerate(zip(ref, got)):
                if a != b:
                    top = [v for _, v in outs[i][j].logprob.top]
                    assert top[0] - top[1] < 0.05, f"request {i}: token {j} differs with a gap of {top[0] - top[1]:.3f}"
                    break


def test_server_flags_reach_the_scheduler():
    """gguf-server's --context-shift and --keep (default: off, 0, as llama-server) become the
    scheduler's ShiftPolicy; --keep below -1 is refused."""
    from gguf_engine.cli.server import build_parser, main
    from gguf_engine.model.context_shift import ShiftPolicy
    from gguf_engine.server.app import ServerSettings, make_scheduler

    args = build_parser().parse_args([])
    assert args.context_shift is False and args.keep == 0
    args = build_parser().parse_args(["--context-shift", "--keep", "-1"])
    assert args.context_shift is True and args.keep == -1
    assert build_parser().parse_args(["--context-shift", "--no-context-shift"][1:]).context_shift is False
    assert make_scheduler(ServerSettings(context_shift=True, n_keep=3)).context_shift == ShiftPolicy(3)
    assert make_scheduler(ServerSettings()).context_shift is None
    assert main(["--keep", "-2"]) == 1
