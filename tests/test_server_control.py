"""llama-server's ``reasoning_control`` and ``POST /v1/chat/completions/control`` over real HTTP.

The tiny model under gpt-oss's template thinks in lower-case letters; the grammar's only way out of
the analysis is the message ``Stop.`` then ``<|end|>`` and the final answer, and a logit bias of
-100 on every token holding an ``S`` keeps the model from taking it by itself (a forced token is
still the only finite one of its row, so the budget can write it).  So only the control
route can end the reasoning: a streamed completion armed with ``reasoning_control: true`` gets the
message and end tag forced and answers, while a second client's completion, streamed meanwhile in
the other slot, thinks until its token limit.  The errors are llama-server's: HTTP 400 with an
OpenAI-style body for a body without a completion id or with another action, and
``{"success": false, "message": ...}`` for an id that names no running completion or one not
armed.  All comparisons are exact."""
from __future__ import annotations

import json
import re
import urllib.request

import pytest

from gguf_engine.tokenizer import Tokenizer

from .conftest import fixture_path
from .test_reasoning import GPT_OSS
from .test_server import _Server, http

MESSAGE = "Stop."
EXIT = MESSAGE + "<|end|><|start|>assistant<|channel|>final<|message|>Hi there"
GRAMMAR = 'root ::= "<|channel|>analysis<|message|>" [a-z ]* ' + json.dumps(EXIT)
ASK = [{"role": "user", "content": "Hi"}]
LIMIT = 300                    # tokens: far more than the control needs to arrive


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    template = tmp_path_factory.mktemp("templates") / "gpt-oss.jinja"
    template.write_text(GPT_OSS)
    s = _Server("-np", "2", "-c", "2048", "--chat-template", str(template), "--reasoning-format", "deepseek",
                model=str(fixture_path("models", "tiny-llama-f32.gguf")))
    yield s
    assert s.stop() == 0, "".join(s.log)


@pytest.fixture(scope="module")
def body() -> dict:
    """A chat request whose reasoning never ends by itself (see the module's note)."""
    tok = Tokenizer.from_gguf(fixture_path("models", "tiny-llama-f32.gguf"))
    blocked = {str(t): -100.0 for t in range(tok.n_vocab) if "S" in tok.decode([t])}
    assert blocked
    return {"messages": ASK, "grammar": GRAMMAR, "max_tokens": LIMIT, "temperature": 0,
            "reasoning_budget_message": MESSAGE, "logit_bias": blocked}


class Stream:
    """A streamed chat completion read event by event."""

    def __init__(self, url: str, body: dict):
        req = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps({**body, "stream": True}).encode(),
                                     headers={"Content-Type": "application/json"})
        self.r = urllib.request.urlopen(req, timeout=120)
        self.events: list[dict] = []

    def next(self) -> dict | None:
        """The next JSON event (None after [DONE])."""
        for line in self.r:
            line = line.decode().strip()
            if line == "data: [DONE]":
                return None
            if line.startswith("data: "):
                self.events.append(json.loads(line[6:]))
                return self.events[-1]
        return None

    def read_until(self, n_reasoning: int) -> str:
        """Events until n_reasoning reasoning deltas came; the completion's id."""
        seen = 0
        while seen < n_reasoning:
            e = self.next()
            assert e is not None, "the stream ended early"
            seen += sum(1 for c in e["choices"] if c["delta"].get("reasoning_content"))
        return self.events[0]["id"]

    def finish(self) -> tuple[str, str, str]:
        """Reads to the end: (reasoning, content, finish_reason)."""
        while self.next() is not None:
            pass
        self.r.close()
        deltas = [c for e in self.events for c in e["choices"]]
        return ("".join(c["delta"].get("reasoning_content") or "" for c in deltas),
                "".join(c["delta"].get("content") or "" for c in deltas),
                next(c["finish_reason"] for c in reversed(deltas) if c["finish_reason"]))


def control(url: str, body: dict) -> tuple[int, dict]:
    return http(url + "/v1/chat/completions/control", json.dumps(body))


def test_control_ends_reasoning_of_one_completion(server, body):
    """Two armed completions stream at once in two slots; reasoning_end on the first one's id
    answers {"success": true}, and that completion's reasoning ends with the message, then its
    answer follows; the second completion, never controlled, thinks until its token limit."""
    armed = {**body, "reasoning_control": True}
    a, b = Stream(server.url, armed), Stream(server.url, armed)
    a_id, b_id = a.read_until(5), b.read_until(5)
    assert a_id != b_id and a_id.startswith("chatcmpl-")
    assert control(server.url, {"id": a_id, "action": "reasoning_end"}) == (200, {"success": True})
    reasoning, content, finish = a.finish()
    assert re.fullmatch(r"[a-z ]*Stop\.", reasoning) and content == "Hi there" and finish == "stop", reasoning
    reasoning, content, finish = b.finish()
    assert re.fullmatch(r"[a-z ]*", reasoning) and content == "" and finish == "length", reasoning
    # a finished completion is no longer active
    assert control(server.url, {"id": a_id, "action": "reasoning_end"}) == \
        (200, {"success": False, "message": "no active completion for this id"})


def test_control_of_unarmed_completion(server, body):
    """A running completion without reasoning_control: {"success": false} with llama-server's
    message, and its reasoning goes on untouched."""
    s = Stream(server.url, body)
    cid = s.read_until(3)
    assert control(server.url, {"id": cid, "action": "reasoning_end"}) == \
        (200, {"success": False, "message": "reasoning control not enabled for this completion"})
    reasoning, content, finish = s.finish()
    assert re.fullmatch(r"[a-z ]*", reasoning) and content == "" and finish == "length"


@pytest.mark.parametrize("req,message", [({"action": "reasoning_end"}, "missing completion id"),
                                         ({"id": "", "action": "reasoning_end"}, "missing completion id"),
                                         ({"id": 7, "action": "reasoning_end"}, "missing completion id"),
                                         ({"id": "chatcmpl-x"}, "unknown control action"),
                                         ({"id": "chatcmpl-x", "action": "stop"}, "unknown control action")])
def test_bad_control_body_is_400(server, req, message):
    """A body without a (string) completion id, or without the one known action: HTTP 400 with
    llama-server's message in an OpenAI-style error body."""
    assert control(server.url, req) == (400, {"error": {"message": message, "type": "invalid_request_error",
                                                        "code": 400}})


def test_unknown_id_and_bad_field(server):
    """An id no completion has: {"success": false}; a reasoning_control that is not a boolean, or
    given to /v1/completions (which has no reasoning), is a 400 naming the field."""
    assert control(server.url, {"id": "chatcmpl-none", "action": "reasoning_end", "model": "any"}) == \
        (200, {"success": False, "message": "no active completion for this id"})
    status, out = http(server.url + "/v1/chat/completions",
                       json.dumps({"messages": ASK, "max_tokens": 1, "reasoning_control": "yes"}))
    assert status == 400 and "reasoning_control" in out["error"]["message"]
    status, out = http(server.url + "/v1/completions",
                       json.dumps({"prompt": "Hi", "max_tokens": 1, "reasoning_control": True}))
    assert status == 400 and "reasoning_control" in out["error"]["message"]
