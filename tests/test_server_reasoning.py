"""gguf-server's reasoning output over real HTTP: the tiny model under a Qwen3-style template and
under gpt-oss's template, its answer forced by a GBNF grammar, comes back split into
``message.reasoning_content`` and ``message.content`` (``delta.reasoning_content`` and
``delta.content`` when streamed), with llama-server's field names; ``reasoning_format`` per request
and ``--reasoning-format`` / ``-rea off`` / ``chat_template_kwargs`` as llama-server reads them;
the thinking budget (``--reasoning-budget`` and a request's ``reasoning_budget_tokens`` /
``reasoning_budget_message``) ending gpt-oss's analysis channel, and the 400 for a bad one.  All
comparisons are exact."""
from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

import pytest

from .conftest import fixture_path
from .test_reasoning import GPT_OSS, QWEN3
from .test_server import _Server, http


def gbnf(text: str) -> str:
    return "root ::= " + json.dumps(text)


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    d = tmp_path_factory.mktemp("templates")
    (d / "qwen3.jinja").write_text(QWEN3)
    (d / "gpt-oss.jinja").write_text(GPT_OSS)
    out = {}
    try:
        out["think"] = _start(d / "qwen3.jinja")
        out["harmony"] = _start(d / "gpt-oss.jinja", "--reasoning-format", "deepseek")
        out["off"] = _start(d / "qwen3.jinja", "-rea", "off", "--reasoning-format", "none")
        out["oss0"] = _start(d / "gpt-oss.jinja", "--reasoning-budget", "0")
        yield out
    finally:
        for s in out.values():
            s.stop()


def _start(template, *flags) -> _Server:
    """gguf-server on the tiny model with a chat template file, one slot."""
    return _Server("-np", "1", "-c", "1024", "--chat-template", str(template), *flags,
                   model=str(fixture_path("models", "tiny-llama-f32.gguf")))


def sse(url: str, body: dict) -> list[dict]:
    """The JSON events of a streamed request, [DONE] left out."""
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        lines = r.read().decode().splitlines()
    return [json.loads(x[6:]) for x in lines if x.startswith("data: ") and x != "data: [DONE]"]


ASK = [{"role": "user", "content": "Hi"}]
THINK = "<think>\nI'm thinking\n</think>\n\nHello!"
HARMONY = ("<|channel|>analysis<|message|>Let me think.<|end|><|start|>assistant<|channel|>final"
           "<|message|>Hi there")


def check_split(url: str, body: dict, reasoning: str, content: str) -> None:
    """The answer to body, plain and streamed, is split into reasoning and content, with
    llama-server's field names and nothing else in the deltas."""
    status, out = http(url, json.dumps(body))
    assert status == 200, out
    assert out["choices"][0]["message"] == {"role": "assistant", "content": content,
                                            "reasoning_content": reasoning}
    events = sse(url, {**body, "stream": True})
    deltas = [e["choices"][0]["delta"] for e in events if e["choices"]]
    assert "".join(d.get("reasoning_content", "") for d in deltas) == reasoning
    assert "".join(d.get("content") or "" for d in deltas) == content
    assert set().union(*deltas) <= {"role", "content", "reasoning_content"}
    assert events[-1]["choices"][0]["finish_reason"] == "stop"


def test_think_answer_split(servers):
    """A <think> answer: message.reasoning_content and message.content; streamed, the deltas carry
    reasoning_content then content, no tag text; reasoning_format none keeps it all in content."""
    url = servers["think"].url + "/v1/chat/completions"
    body = {"messages": ASK, "grammar": gbnf(THINK), "max_tokens": 64, "temperature": 0}
    check_split(url, body, "I'm thinking", "Hello!")
    status, out = http(url, json.dumps({**body, "reasoning_format": "none"}))
    assert out["choices"][0]["message"] == {"role": "assistant", "content": THINK}
    status, out = http(url, json.dumps({**body, "reasoning_format": "short"}))
    assert status == 400 and "reasoning_format" in out["error"]["message"]


def test_harmony_answer_split(servers):
    """gpt-oss's template: an analysis message and a final one come back as reasoning_content and
    content, plain and streamed; reasoning_effort sets the template's reasoning level."""
    url = servers["harmony"].url + "/v1/chat/completions"
    body = {"messages": ASK, "grammar": gbnf(HARMONY), "max_tokens": 128, "temperature": 0}
    check_split(url, body, "Let me think.", "Hi there")
    # OpenAI's reasoning_effort reaches the template as its reasoning_effort variable
    status, out = http(servers["harmony"].url + "/apply-template",
                       json.dumps({"messages": ASK, "reasoning_effort": "high"}))
    assert status == 200 and "\nReasoning: high\n" in out["prompt"]


def test_reasoning_off_and_template_kwargs(servers):
    """-rea off gives the template enable_thinking=false (Qwen3's empty think block); a
    request's chat_template_kwargs override it; a non-boolean enable_thinking is a 400.  The server's
    --reasoning-format none leaves a <think> answer in content."""
    base = servers["off"].url
    status, out = http(base + "/apply-template", json.dumps({"messages": ASK}))
    assert status == 200 and out["prompt"].endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    status, out = http(base + "/apply-template",
                       json.dumps({"messages": ASK, "chat_template_kwargs": {"enable_thinking": True}}))
    assert out["prompt"].endswith("<|im_start|>assistant\n")
    status, out = http(base + "/v1/chat/completions",
                       json.dumps({"messages": ASK, "chat_template_kwargs": {"enable_thinking": "yes"}}))
    assert status == 400 and "enable_thinking" in out["error"]["message"]
    status, out = http(base + "/v1/chat/completions",
                       json.dumps({"messages": ASK, "grammar": gbnf(THINK), "max_tokens": 64}))
    assert out["choices"][0]["message"] == {"role": "assistant", "content": THINK}


# the model thinks in letters until the budget (or, left alone, its own choice) ends the analysis
THINKING = ('root ::= "<|channel|>analysis<|message|>" [a-zA-Z. ]* "<|end|><|start|>assistant<|channel|>final'
            '<|message|>Hi there"')
OPEN = "<|channel|>analysis<|message|>"


def budget_tokens(out: dict) -> tuple[list[str], int]:
    """The answer's token pieces (from logprobs) and how many of them make up the analysis tag."""
    pieces = [e["token"] for e in out["choices"][0]["logprobs"]["content"]]
    return pieces, next(i for i in range(len(pieces) + 1) if "".join(pieces[:i]) == OPEN)


def test_request_budget_harmony(servers):
    """A request's reasoning_budget_tokens N and reasoning_budget_message: after the analysis tag the
    model writes exactly N tokens, then the message and <|end|> are forced, and the final message
    follows (counted on the answer's own tokens, from logprobs)."""
    url = servers["harmony"].url + "/v1/chat/completions"
    body = {"messages": ASK, "grammar": THINKING, "max_tokens": 200, "temperature": 0, "logprobs": True,
            "reasoning_budget_tokens": 3, "reasoning_budget_message": "Enough."}
    status, out = http(url, json.dumps(body))
    assert status == 200, out
    pieces, k = budget_tokens(out)
    assert out["choices"][0]["message"] == {"role": "assistant", "content": "Hi there",
                                            "reasoning_content": "".join(pieces[k:k + 3]) + "Enough."}
    assert "".join(pieces[k + 3:]).startswith("Enough.<|end|>")


def test_server_budget_zero_harmony(servers):
    """--reasoning-budget 0 on gpt-oss's template (which has no enable_thinking switch): the analysis
    ends as soon as it opens, so no reasoning comes back; a request's -1 keeps the server's budget,
    its own N replaces it (under llama-server's other name thinking_budget_tokens too)."""
    url = servers["oss0"].url + "/v1/chat/completions"
    body = {"messages": ASK, "grammar": THINKING, "max_tokens": 200, "temperature": 0}
    for extra in ({}, {"reasoning_budget_tokens": -1}):
        status, out = http(url, json.dumps({**body, **extra}))
        assert status == 200 and out["choices"][0]["message"] == {"role": "assistant", "content": "Hi there"}
    status, out = http(url, json.dumps({**body, "reasoning_format": "none"}))
    assert out["choices"][0]["message"]["content"] == OPEN + "<|end|>Hi there"
    for key in ("reasoning_budget_tokens", "thinking_budget_tokens"):
        status, out = http(url, json.dumps({**body, key: 2, "logprobs": True}))
        pieces, k = budget_tokens(out)
        assert out["choices"][0]["message"]["reasoning_content"] == "".join(pieces[k:k + 2])


@pytest.mark.parametrize("field,value", [("reasoning_budget_tokens", -2), ("reasoning_budget_tokens", "many"),
                                         ("reasoning_budget_tokens", 2**31), ("thinking_budget_tokens", 1.5),
                                         ("reasoning_budget_message", 5)])
def test_bad_budget_is_400(servers, field, value):
    """A budget that is not an integer >= -1, or a message that is not text: HTTP 400 with an
    OpenAI-style error body naming the field."""
    status, out = http(servers["oss0"].url + "/v1/chat/completions",
                       json.dumps({"messages": ASK, field: value, "max_tokens": 4}))
    assert status == 400 and out["error"]["type"] == "invalid_request_error" and field in out["error"]["message"]


def test_reasoning_flags_checked():
    """A budget below -1 is refused with exit status 1, never ignored; an unknown --reasoning-format
    or -rea value is a usage error (status 2)."""
    r = subprocess.run([sys.executable, "-m", "gguf_engine.cli.server", "--reasoning-budget", "-2"],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "--reasoning-budget must be -1" in r.stderr
    for flags in (["--reasoning-format", "short"], ["-rea", "maybe"]):
        r = subprocess.run([sys.executable, "-m", "gguf_engine.cli.server", *flags], capture_output=True, text=True)
        assert r.returncode == 2 and flags[0] in r.stderr
