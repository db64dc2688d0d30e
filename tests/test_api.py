"""The ``Llama`` API on the tiny random F32 llama fixture (fast) and on SmolLM2 (one chat turn).

Tolerances: logits within 1e-4 absolute of the float64 reference (``logits_exact``) and of each
other for cached vs one-shot evaluation; generated tokens and texts compared exactly.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from gguf_engine import Llama
from gguf_engine.model import ContextFullError

from .conftest import fixture_path

TOL = 1e-4


@pytest.fixture(scope="module")
def ref():
    return np.load(fixture_path("models", "tiny-llama-f32.reference.npz"))


@pytest.fixture(scope="module")
def llm():
    with Llama(str(fixture_path("models", "tiny-llama-f32.gguf")), n_ctx=256, seed=1234) as model:
        yield model


def test_basic_properties(llm):
    assert llm.n_ctx() == 256
    assert llm.n_vocab() == 768
    assert llm.token_bos() == 0 and llm.token_eos() == 0
    assert llm.metadata["general.architecture"] == "llama"


def test_eval_matches_reference_logits(llm, ref):
    """eval(logits_all) reproduces the float64 reference for every position within 1e-4."""
    toks = ref["tokens"][:24].tolist()
    llm.reset()
    all_logits = llm.eval(toks, logits_all=True)
    assert all_logits.dtype == np.float32 and all_logits.shape == (24, 768)
    np.testing.assert_allclose(all_logits, ref["logits_exact"][:24], atol=TOL, rtol=0)
    llm.reset()
    last = llm.eval(toks)
    assert last.shape == (768,)
    np.testing.assert_allclose(last, ref["logits_exact"][23], atol=TOL, rtol=0)


def test_eval_continues_after_cache(llm, ref):
    """eval evaluates after what the cache holds: two calls equal one call, within 1e-4."""
    toks = ref["tokens"][:20].tolist()
    llm.reset()
    llm.eval(toks[:12])
    tail = llm.eval(toks[12:], logits_all=True)
    assert llm.n_tokens == 20
    np.testing.assert_allclose(tail, ref["logits_exact"][12:20], atol=TOL, rtol=0)
    llm.reset()
    assert llm.n_tokens == 0 and llm.model.n_past == 0


def test_greedy_generate_matches_reference(llm, ref):
    """Greedy tokens reproduce the float64 greedy continuation up to its first near-tie (gap < 0.05)."""
    gaps = ref["greedy_exact_gap"]
    n = int(np.argmax(gaps < 0.05)) if (gaps < 0.05).any() else len(gaps)
    assert n > 0
    got = list(itertools.islice(llm.generate(ref["greedy_prompt"].tolist(), temp=0.0), n))
    assert got == ref["greedy_exact"][:n].tolist()


def test_prefix_reuse_evaluates_only_new_tokens(llm, ref):
    """A prompt extending the cached tokens evaluates only its new tokens; logits unchanged."""
    toks = ref["tokens"][:30].tolist()
    llm.reset()
    llm.eval(toks[:20])
    n_p_before = llm.perf.n_p_eval
    first = next(iter(llm.generate(toks, temp=0.0)))
    assert llm.engine.n_reused == 20 and llm.engine.n_evaluated == 10
    assert llm.perf.n_p_eval - n_p_before == 10
    assert first == int(np.argmax(ref["logits_exact"][29]))
    # a prompt that diverges inside the cache keeps only the common prefix
    other = toks[:15] + toks[25:30]
    next(iter(llm.generate(other, temp=0.0)))
    assert llm.engine.n_reused == 15 and llm.engine.n_evaluated == 5
    assert llm.input_ids == other
    # the same prompt again re-evaluates just its last token
    next(iter(llm.generate(other, temp=0.0)))
    assert llm.engine.n_reused == 19 and llm.engine.n_evaluated == 1


def test_seed_reproducibility(llm, ref):
    """Same seed => same completion; another seed gives another one (sampling at temperature 1)."""
    prompt = ref["greedy_prompt"].tolist()
    kw = dict(max_tokens=24, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, ignore_eos=True)
    a = llm.create_completion(prompt, seed=42, **kw)["choices"][0]["text"]
    b = llm.create_completion(prompt, seed=42, **kw)["choices"][0]["text"]
    c = llm.create_completion(prompt, seed=43, **kw)["choices"][0]["text"]
    assert a == b and a != c


def test_completion_dict_shape(llm, ref):
    out = llm(ref["greedy_prompt"].tolist(), max_tokens=8, temperature=0.0, ignore_eos=True)
    assert out["object"] == "text_completion" and out["id"].startswith("cmpl-")
    ch = out["choices"][0]
    assert ch["index"] == 0 and ch["finish_reason"] == "length" and ch["logprobs"] is None
    assert out["usage"] == {"prompt_tokens": 16, "completion_tokens": 8, "total_tokens": 24}
    assert ch["text"] == llm.detokenize(ref["greedy_exact"][:8].tolist()).decode("utf-8", "replace")


def test_stop_string_is_not_emitted(llm):
    """The completion ends right before the stop string, with finish_reason 'stop'."""
    kw = dict(max_tokens=40, temperature=0.0, ignore_eos=True)
    full = llm.create_completion("The story", **kw)["choices"][0]["text"]
    assert len(full) > 12
    stop = full[8:11]
    cut = full[: full.index(stop)]
    out = llm.create_completion("The story", stop=[stop, "\x00never"], **kw)
    assert out["choices"][0]["text"] == cut
    assert out["choices"][0]["finish_reason"] == "stop"


def test_streaming_equals_non_streaming(llm):
    """Concatenated stream chunks equal the non-streamed text (seeded sampling, with a stop string)."""
    kw = dict(max_tokens=30, temperature=0.9, seed=7, ignore_eos=True)
    full = llm.create_completion("Once upon", **kw)["choices"][0]["text"]
    chunks = list(llm.create_completion("Once upon", stream=True, **kw))
    assert all(c["object"] == "text_completion" for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks) == full
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    stop = full[10:12]
    a = llm.create_completion("Once upon", stop=stop, **kw)["choices"][0]["text"]
    b = "".join(c["choices"][0]["text"] for c in llm.create_completion("Once upon", stop=stop, stream=True, **kw))
    assert a == b == full[: full.index(stop)]


def test_logprobs_and_echo(llm, ref):
    prompt = ref["greedy_prompt"].tolist()
    out = llm.create_completion(prompt, max_tokens=5, temperature=0.0, logprobs=3, ignore_eos=True)
    lp = out["choices"][0]["logprobs"]
    assert len(lp["token_logprobs"]) == 5 and all(v <= 0 for v in lp["token_logprobs"])
    assert all(len(t) >= 1 for t in lp["top_logprobs"])
    # greedy picks the most likely token: its log-probability is the best of the top ones
    assert all(abs(max(t.values()) - v) < 1e-9 for t, v in zip(lp["top_logprobs"], lp["token_logprobs"]))
    echo = llm.create_completion("Hello", max_tokens=3, temperature=0.0, echo=True, ignore_eos=True)
    assert echo["choices"][0]["text"].startswith("Hello")


def test_tokenize_detokenize_round_trip(llm, ref):
    text = str(ref["text"])[:200]
    toks = llm.tokenize(text.encode("utf-8"), add_bos=True)  # this vocabulary adds no BOS
    assert toks[: len(ref["tokens"][:10])] == ref["tokens"][:10].tolist()
    assert llm.detokenize(toks).decode("utf-8") == text


def test_context_overflow_is_reported(ref):
    """A prompt longer than n_ctx raises a clear error; generation stops at a full context."""
    with Llama(str(fixture_path("models", "tiny-llama-f32.gguf")), n_ctx=32, seed=1) as small:
        with pytest.raises(ContextFullError, match="exceed context window of 32"):
            small.create_completion(ref["tokens"][:40].tolist(), max_tokens=4)
        out = small.create_completion(ref["tokens"][:20].tolist(), max_tokens=None, temperature=0.0,
                                      ignore_eos=True)
        assert out["choices"][0]["finish_reason"] == "length"
        assert small.last_stop_reason == "context_full"
        assert out["usage"]["completion_tokens"] == 32 - 20 + 1  # the last one needs no cache slot
        assert small.n_tokens == 32
        with pytest.raises(ContextFullError, match="context full"):
            small.eval([1])


def test_embed_is_mean_of_hidden_states(llm):
    v = np.array(llm.embed("hello world"))
    assert v.shape == (256,) and np.isfinite(v).all()
    u = np.array(llm.embed("hello world", normalize=True))
    assert abs(np.linalg.norm(u) - 1.0) < 1e-5
    np.testing.assert_allclose(u, v / np.linalg.norm(v), atol=1e-6)
    both = llm.embed(["hello world", "bye"])
    assert len(both) == 2 and np.allclose(both[0], v, atol=1e-6)


def test_close_and_context_manager():
    m = Llama(str(fixture_path("models", "tiny-llama-f32.gguf")), n_ctx=16)
    with m:
        assert m.n_ctx() == 16
    with pytest.raises(RuntimeError, match="closed"):
        m.eval([1])
    m.close()  # closing twice is harmless


# ------------------------------------------------------------------ a real model

@pytest.fixture(scope="module")
def smollm2(smollm2_path):
    with Llama(str(smollm2_path), n_ctx=512, seed=0) as model:
        yield model


def test_smollm2_chat_completion_answers_in_english(smollm2):
    """A greedy chat turn gives a non-empty English answer naming Paris; streaming gives the same text."""
    msgs = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
    out = smollm2.create_chat_completion(msgs, temperature=0.0, max_tokens=24)
    assert out["object"] == "chat.completion"
    msg = out["choices"][0]["message"]
    assert msg["role"] == "assistant"
    assert "Paris" in msg["content"]
    assert out["choices"][0]["finish_reason"] in ("stop", "length")
    chunks = list(smollm2.create_chat_completion(msgs, temperature=0.0, max_tokens=24, stream=True))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == msg["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == out["choices"][0]["finish_reason"]
    # the second call reused the cached prompt
    assert smollm2.engine.n_evaluated == 1
