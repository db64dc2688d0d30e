"""The Llama API refuses what it does not do, checks what it is given, and implements
llama-cpp-python's cheap extras (tiny random llama fixture; fast).

Tolerances: log-probabilities compared with a float64 log-softmax of the same logits within 1e-6;
tokens and texts exactly.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from gguf_engine import Llama
from gguf_engine.generation.sampling import Sampler, SamplingParams, mirostat_v2, softmax

from .conftest import fixture_path


@pytest.fixture(scope="module")
def llm():
    with Llama(str(fixture_path("models", "tiny-llama-f32.gguf")), n_ctx=256, seed=1234) as model:
        yield model


@pytest.mark.parametrize("call", ["create_completion", "__call__", "create_chat_completion", "generate"])
def test_unknown_keyword_is_a_type_error(llm, call):
    """A misspelt keyword (max_token) raises TypeError, as in llama-cpp-python, before any work."""
    first = [{"role": "user", "content": "hi"}] if call == "create_chat_completion" else (
        [1, 2] if call == "generate" else "hi")
    with pytest.raises(TypeError, match="max_token"):
        getattr(llm, call)(first, max_token=2)


def test_llama_unknown_keyword_is_a_type_error():
    with pytest.raises(TypeError, match="n_ctxx"):
        Llama(str(fixture_path("models", "tiny-llama-f32.gguf")), n_ctxx=64)


@pytest.mark.parametrize("kw", [dict(lora_path="/nonexistent.gguf"), dict(rope_freq_base=10000.0),
                                dict(kv_overrides={"a": 1}), dict(yarn_ext_factor=0.5),
                                dict(chat_format="no-such-format"), dict(draft_model=object())])
def test_llama_options_that_change_results_are_refused(kw):
    """Options that would change results and are not implemented raise NotImplementedError naming them."""
    name = next(iter(kw))
    with pytest.raises(NotImplementedError, match=name):
        Llama(str(fixture_path("models", "tiny-llama-f32.gguf")), n_ctx=64, **kw)


def test_llama_speed_options_and_type_k_are_accepted():
    with Llama(str(fixture_path("models", "tiny-llama-f32.gguf")), n_ctx=64, use_mmap=False, n_ubatch=64,
               flash_attn=True, type_k=1, type_v=1, chat_format="chatml") as m:
        assert m.cache_type == "f16" and m.chat_template == "chatml"


@pytest.mark.parametrize("kw,name", [(dict(suffix="end"), "suffix"), (dict(typical_p=0.5), "typical_p"),
                                     (dict(tfs_z=0.9), "tfs_z")])
def test_unimplemented_parameters_raise(llm, kw, name):
    with pytest.raises(NotImplementedError, match=name):
        llm.create_completion("hi", **kw)


@pytest.mark.parametrize("kw,name", [(dict(top_p=5), "top_p"), (dict(min_p=2), "min_p"), (dict(top_k=-3), "top_k"),
                                     (dict(temperature=float("nan")), "temperature"), (dict(logprobs=-1), "logprobs"),
                                     (dict(repeat_penalty=0), "repeat_penalty"), (dict(mirostat_mode=3), "mirostat"),
                                     (dict(mirostat_mode=2, mirostat_tau=-1.0), "mirostat_tau")])
def test_bad_sampling_values_are_errors(llm, kw, name):
    """Out-of-range sampling values raise ValueError naming the setting, in completions and chats."""
    with pytest.raises(ValueError, match=name):
        llm.create_completion("hi", max_tokens=2, **kw)
    if name != "logprobs":
        with pytest.raises(ValueError, match=name):
            llm.create_chat_completion([{"role": "user", "content": "hi"}], max_tokens=2, **kw)


def test_logprobs_as_llama_cpp_python_gives_them(llm):
    """Without echo: one entry per generated token, offsets counted from the prompt's end; the
    chosen token's log-probability equals the float64 log-softmax of its logits (1e-6)."""
    prompt = "Once upon a time"
    out = llm.create_completion(prompt, max_tokens=4, temperature=0.0, logprobs=2, ignore_eos=True)
    ch = out["choices"][0]
    lp = ch["logprobs"]
    assert len(lp["tokens"]) == 4 and "".join(lp["tokens"]) == ch["text"]
    offs = [len(prompt) + len("".join(lp["tokens"][:i])) for i in range(4)]
    assert lp["text_offset"] == offs
    toks = llm.tokenize(prompt)
    llm.reset()
    logits = llm.eval(toks)
    ref = logits.astype(np.float64) - np.log(np.exp(logits.astype(np.float64) - logits.max()).sum()) - logits.max()
    assert abs(lp["token_logprobs"][0] - ref.max()) < 1e-6


def test_echo_fills_prompt_logprobs(llm):
    """With echo: the prompt's tokens come first (no BOS entry), offsets start at 0 and run through
    the prompt into the completion, and all but the first prompt token have log-probabilities
    equal to the log-softmax of the previous position's logits (1e-6)."""
    prompt = "Once upon a time"
    toks = llm.tokenize(prompt)
    out = llm.create_completion(prompt, max_tokens=3, temperature=0.0, logprobs=1, echo=True, ignore_eos=True)
    ch = out["choices"][0]
    lp = ch["logprobs"]
    body = toks[1:] if toks[0] == llm.token_bos() else toks
    assert len(lp["tokens"]) == len(body) + 3
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert all(v is not None for v in lp["token_logprobs"][1:])
    assert lp["text_offset"][0] == 0 and lp["text_offset"][len(body)] == len(prompt)
    assert ch["text"].startswith(prompt)
    llm.reset()
    rows = llm.eval(toks, logits_all=True).astype(np.float64)
    start = len(toks) - len(body)
    for j in range(1, len(body)):
        r = rows[start + j - 1]
        ref = r - r.max() - np.log(np.exp(r - r.max()).sum())
        assert abs(lp["token_logprobs"][j] - ref[body[j]]) < 1e-6


def test_detokenize_special_and_prev_tokens(llm):
    """special=True renders control tokens; prev_tokens gives the bytes the tokens add after them."""
    bos = llm.token_bos()
    assert llm.detokenize([bos]) == b""
    assert llm.detokenize([bos], special=True) == llm.tokenizer.token_text(bos).encode("utf-8")
    toks = llm.tokenize(b"hello world", add_bos=False)
    whole = llm.detokenize(toks)
    assert llm.detokenize(toks[:1]) + llm.detokenize(toks[1:], prev_tokens=toks[:1]) == whole


def test_save_and_load_state_reproduce_a_continuation(llm):
    """A saved state restores the cache: the greedy continuation after loading equals the one after saving."""
    llm.reset()
    llm.eval(llm.tokenize("Once upon a time"))
    state = llm.save_state()
    assert state.n_tokens == llm.n_tokens and llm.scores.shape == (1, llm.n_vocab())
    first = list(_take(llm.generate(llm.input_ids, temp=0.0), 6))
    llm.reset()
    llm.load_state(state)
    assert llm.input_ids == state.tokens
    again = list(_take(llm.generate(state.tokens, temp=0.0), 6))
    assert again == first and llm.engine.n_reused == state.n_tokens - 1


def _take(it, n):
    for i, t in enumerate(it):
        if i >= n:
            return
        yield t


def test_logits_processor_and_stopping_criteria(llm):
    """A processor that allows only one token makes every token that one; a stopping criterion
    ends generation with finish_reason "stop"."""
    only = 42

    def proc(ids, scores):
        assert ids.dtype == np.intc and scores.shape == (llm.n_vocab(),)
        out = np.full_like(scores, -np.inf)
        out[only] = 0.0
        return out

    out = llm.create_completion("hi", max_tokens=5, temperature=0.8, logits_processor=[proc], ignore_eos=True)
    assert out["usage"]["completion_tokens"] == 5
    assert out["choices"][0]["text"] == llm.detokenize([only] * 5, prev_tokens=llm.tokenize("hi")).decode()
    n_prompt = len(llm.tokenize("hi"))
    out = llm.create_completion("hi", max_tokens=20, temperature=0.0, ignore_eos=True,
                                stopping_criteria=lambda ids, logits: len(ids) >= n_prompt + 3)
    assert out["usage"]["completion_tokens"] == 3 and out["choices"][0]["finish_reason"] == "stop"


def test_mirostat_v2_cut_and_mu_update():
    """Mirostat 2 keeps the leading candidates with surprise <= mu and moves mu by eta * (tau - surprise)."""
    logits = np.log(np.array([0.5, 0.25, 0.125, 0.125], dtype=np.float32))
    ids, kept = mirostat_v2(np.arange(4), logits, mu=1.5)   # surprises 1, 2, 3, 3 bits
    assert ids.tolist() == [0]
    ids, kept = mirostat_v2(np.arange(4), logits, mu=2.5)
    assert ids.tolist() == [0, 1]
    s = Sampler(SamplingParams(mirostat=2, mirostat_tau=2.5, mirostat_eta=0.5, temperature=1.0, seed=1))
    assert s.mu == 5.0
    tok = s.sample(logits)
    p = float(softmax(logits)[tok])
    assert math.isclose(s.mu, 5.0 - 0.5 * (-math.log2(p) - 2.5), rel_tol=1e-5)


def test_mirostat_is_reproducible(llm):
    a = llm.create_completion("hi", max_tokens=6, mirostat_mode=1, seed=5, ignore_eos=True)["choices"][0]["text"]
    b = llm.create_completion("hi", max_tokens=6, mirostat_mode=1, seed=5, ignore_eos=True)["choices"][0]["text"]
    assert a == b


def test_cold_kernel_cache_is_announced_once(tmp_path, monkeypatch, capsys):
    """With no marker of a warm cache, loading says it compiles kernels, with per-path progress and
    the time taken, and writes the marker; the next load says nothing.  The prompt timing starts
    after it (no prompt evaluated at load)."""
    from gguf_engine.generation import warmup
    monkeypatch.setattr(warmup, "cache_dir", lambda: tmp_path)
    path = str(fixture_path("models", "tiny-llama-f32.gguf"))
    with Llama(path, n_ctx=64) as m:
        err = capsys.readouterr().err
        assert "compiling kernels for this CPU, first run only" in err
        assert "[1/2] prompt path" in err and "[2/2] generation path" in err and "kernels compiled in" in err
        assert m.t_compile_s is not None and m.perf.n_p_eval == 0 and m.n_tokens == 0
    assert list(tmp_path.glob("gguf-engine-warm-*.json"))
    with Llama(path, n_ctx=64) as m:
        assert "compiling" not in capsys.readouterr().err and m.t_compile_s is None
