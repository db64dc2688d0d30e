"""One ``Llama`` shared by threads, and token streams that take turns, on the tiny F32 llama fixture.

Calls from several threads are serialised: each thread's greedy completions equal the same calls
made one after another (token texts compared exactly).  A stream paused while another call uses the
model raises ``StreamInvalidatedError`` when it resumes, and the call that interrupted it is
unaffected (exact comparison again).
"""
from __future__ import annotations

import threading

import pytest

from gguf_engine import Llama
from gguf_engine.api import StreamInvalidatedError

from .conftest import fixture_path

PROMPTS = ["The quick brown fox", "Once upon a time", "In the beginning", "A B C D E F"]
N = 8


@pytest.fixture(scope="module")
def llm():
    with Llama(str(fixture_path("models", "tiny-llama-f32.gguf")), n_ctx=128, seed=7) as model:
        yield model


@pytest.fixture(scope="module")
def serial(llm):
    """Each prompt's greedy completion, computed alone (fresh cache each time)."""
    out = {}
    for p in PROMPTS:
        llm.reset()
        out[p] = llm(p, max_tokens=N, temperature=0.0)["choices"][0]["text"]
    return out


def test_threads_take_turns(llm, serial):
    """Four threads x three completions each on one Llama: every text equals the serial one."""
    results: dict[tuple[int, int], str] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(len(PROMPTS))

    def work(i: int) -> None:
        try:
            start.wait()
            for rep in range(3):
                p = PROMPTS[(i + rep) % len(PROMPTS)]
                results[(i, rep)] = (p, llm(p, max_tokens=N, temperature=0.0)["choices"][0]["text"])
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert len(results) == 3 * len(PROMPTS)
    for p, text in results.values():
        assert text == serial[p]


def test_threaded_chat_and_embed(llm):
    """Chat completions and embeddings from two threads equal the same calls made serially."""
    msgs = [{"role": "user", "content": "Hello there"}]
    ref_chat = llm.create_chat_completion(msgs, max_tokens=N, temperature=0.0)["choices"][0]["message"]["content"]
    ref_emb = llm.embed("Some text to embed")
    out: list = []

    def chat():
        for _ in range(3):
            out.append(("chat", llm.create_chat_completion(msgs, max_tokens=N, temperature=0.0)
                        ["choices"][0]["message"]["content"]))

    def emb():
        for _ in range(3):
            out.append(("emb", llm.embed("Some text to embed")))

    ts = [threading.Thread(target=chat), threading.Thread(target=emb)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=300)
    assert len(out) == 6
    for kind, v in out:
        assert v == (ref_chat if kind == "chat" else ref_emb)


def test_second_stream_invalidates_first(llm, serial):
    """Stream A paused, stream B run to the end: B is exact, A raises StreamInvalidatedError on resume."""
    a = llm(PROMPTS[0], max_tokens=N, temperature=0.0, stream=True)
    first = next(a)["choices"][0]["text"]
    b = "".join(c["choices"][0]["text"] for c in llm(PROMPTS[1], max_tokens=N, temperature=0.0, stream=True))
    assert b == serial[PROMPTS[1]]
    with pytest.raises(StreamInvalidatedError, match="another call used the model"):
        for _ in a:
            pass
    assert serial[PROMPTS[0]].startswith(first)
    # a stream left alone runs to the end, and the model works normally afterwards
    c = "".join(ch["choices"][0]["text"] for ch in llm(PROMPTS[0], max_tokens=N, temperature=0.0, stream=True))
    assert c == serial[PROMPTS[0]]


@pytest.mark.parametrize("interrupt", ["eval", "reset", "completion", "generate"])
def test_any_cache_use_invalidates_paused_stream(llm, serial, interrupt):
    """eval, reset, a completion or a generate() started while a stream is paused invalidate it."""
    s = llm.create_chat_completion([{"role": "user", "content": "Hi"}], max_tokens=N, temperature=0.0, stream=True)
    next(s), next(s)
    if interrupt == "eval":
        llm.eval(llm.tokenize(b"Hello"))
    elif interrupt == "reset":
        llm.reset()
    elif interrupt == "completion":
        assert llm(PROMPTS[2], max_tokens=N, temperature=0.0)["choices"][0]["text"] == serial[PROMPTS[2]]
    else:
        g = llm.generate(llm.tokenize(PROMPTS[3].encode()), temp=0.0)
        next(g)
    with pytest.raises(StreamInvalidatedError):
        list(s)


def test_stream_in_other_thread_is_exact_or_invalidated(llm, serial):
    """A stream consumed slowly in one thread while another thread runs completions: the completions
    are exact, and the stream either finishes exactly or stops with StreamInvalidatedError."""
    outcome: list = []
    stop = threading.Event()

    def streamer():
        parts = []
        try:
            for ch in llm(PROMPTS[0], max_tokens=N, temperature=0.0, stream=True):
                parts.append(ch["choices"][0]["text"])
                stop.wait(0.01)
            outcome.append("".join(parts))
        except StreamInvalidatedError:
            outcome.append(None)

    t = threading.Thread(target=streamer)
    t.start()
    texts = [llm(PROMPTS[1], max_tokens=N, temperature=0.0)["choices"][0]["text"] for _ in range(3)]
    t.join(timeout=300)
    assert texts == [serial[PROMPTS[1]]] * 3
    assert outcome in ([None], [serial[PROMPTS[0]]])
