"""Lazy grammars (llama.cpp's): an "auto" tool choice leaves the answer free until a call starts
(the format's trigger), then the call must fit the tools.

The trigger semantics on plain text; the gpt-oss (harmony) lazy grammar on the tiny vocabulary with
and without gpt-oss's control tokens: any text passes before a trigger, after it only a call to one
of the tools with arguments valid for its parameters, and a trigger written inside the analysis
(reasoning) is not one, as llama.cpp's grammar is closed while its reasoning budget counts; the
Hermes and Mistral markers; and the tiny gpt-oss model (tools/arch_models.py) under gpt-oss's
template, steered towards a call with wrong arguments after free analysis text: the grammar turns
the call into a valid one.  All comparisons are exact."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from gguf_engine import Llama
from gguf_engine.generation.grammar import GrammarVocab, LazyConstraint, LazyGrammar, trigger_start
from gguf_engine.generation.reasoning import ChatSyntax
from gguf_engine.generation.reasoning_budget import thinking_tracker
from gguf_engine.generation.tool_calls import plan_tools
from gguf_engine.tokenizer import Tokenizer

from .conftest import fixture_path
from .test_arch import _tool
from .test_reasoning import GPT_OSS
from .test_reasoning_budget import TIME_TOOL, harmony_tokenizer
from .test_tool_calls import CHATML_TOOLS, LLAMA3_TOOLS, MISTRAL_TOOLS, TOOLS


def test_trigger_semantics():
    """A ^...$ pattern must match the whole output, another anywhere; the grammar starts at the
    first non-empty capture group, else at the match."""
    def start(p: str, text: str):
        return trigger_start(re.compile(p.encode(), re.DOTALL), text.encode())
    assert start(r"^\s+to$", " to") == 0 and start(r"^\s+to$", "x to") is None
    assert start(r"<\|start\|>assistant(\s+to)", "ab<|start|>assistant to") == len("ab<|start|>assistant")
    assert start(r"<tool_call>", "Sure. <tool_call>") == len("Sure. ")
    assert start(r"<tool_call>", "Sure. <tool_") is None


def lazy_fits(c: LazyConstraint, tok: Tokenizer, text: str) -> bool:
    """Feeds text token by token; False at the first token the constraint masks."""
    for t in tok.encode(text, add_bos=False, special=True):
        row = np.zeros(tok.n_vocab, dtype=np.float32)
        if not np.isfinite(c.mask(row)[t]):
            return False
        c.accept(t)
    return True


ANALYSIS = "<|channel|>analysis<|message|>I will call get_time with {\"town\": 1}.<|end|>"
CALL = "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>"


@pytest.mark.parametrize("control_tokens", [False, True])
def test_harmony_auto_grammar(control_tokens):
    """Before a trigger anything passes (an analysis naming a wrong call, a final answer); after
    "<|start|>assistant<|channel|>commentary to" (or " to" right after the prompt) only a call to one
    of the tools fits, with valid arguments, and the grammar ends with the call."""
    tok = harmony_tokenizer() if control_tokens else Tokenizer.from_gguf(fixture_path("models", "tiny-llama-f32.gguf"))
    vocab = GrammarVocab.from_tokenizer(tok, tok.n_vocab)
    lazy = plan_tools([*TOOLS, TIME_TOOL], "auto", GPT_OSS).grammar
    assert isinstance(lazy, LazyGrammar)

    def fresh() -> LazyConstraint:
        return LazyConstraint(lazy, vocab, thinking_tracker(ChatSyntax.detect(GPT_OSS), tok))

    c = fresh()
    assert lazy_fits(c, tok, "<|channel|>final<|message|>{\"town\": 1} is free text") and c.awaiting
    c = fresh()
    assert lazy_fits(c, tok, ANALYSIS + CALL + '{"city": "Paris"}') and not c.awaiting and c.done
    assert not lazy_fits(fresh(), tok, ANALYSIS + CALL + '{"town": "Paris"}')
    assert not lazy_fits(fresh(), tok, ANALYSIS + "<|start|>assistant<|channel|>commentary to=functions.get_wether")
    c = fresh()
    assert lazy_fits(c, tok, " to=functions.get_time<|channel|>commentary<|message|>{}") and c.done
    # a trigger inside the reasoning is none: the grammar is closed until <|end|>
    c = fresh()
    assert lazy_fits(c, tok, "<|channel|>analysis<|message|>maybe <|start|>assistant to=functions.x then") and c.awaiting
    assert lazy_fits(c, tok, "<|end|>" + CALL) and not c.awaiting
    assert not lazy_fits(c, tok, '{"town"')


@pytest.mark.parametrize("template,call,bad", [
    (CHATML_TOOLS, '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
     '<tool_call>\n{"name": "get_weather", "arguments": {"town": "Paris"}}'),
    (MISTRAL_TOOLS, '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}]',
     '[TOOL_CALLS][{"name": "get_time"'),
])
def test_marker_auto_grammar(template, call, bad):
    """Hermes and Mistral: text before the call marker is free; from the marker on the calls must
    fit the tools (llama.cpp triggers its lazy grammar on the marker word)."""
    tok = Tokenizer.from_gguf(fixture_path("models", "tiny-llama-f32.gguf"))
    vocab = GrammarVocab.from_tokenizer(tok, tok.n_vocab)
    lazy = plan_tools(TOOLS, "auto", template).grammar
    c = LazyConstraint(lazy, vocab)
    assert lazy_fits(c, tok, "Let me see {\"town\"}. " + call) and c.accepting
    assert not lazy_fits(LazyConstraint(lazy, vocab), tok, "Free text. " + bad)


def test_plan_grammars():
    """auto: a lazy grammar where llama.cpp has a trigger (not for Llama 3's bare JSON calls); none:
    no grammar; only a forced call's grammar is exclusive of a request's own grammar."""
    assert plan_tools(TOOLS, "auto", LLAMA3_TOOLS).grammar is None
    assert plan_tools(TOOLS, "none", GPT_OSS).grammar is None
    auto, req = plan_tools(TOOLS, "auto", GPT_OSS), plan_tools(TOOLS, "required", GPT_OSS)
    assert not auto.forcing and req.forcing
    assert auto.grammar_beside("mine") == "mine" and auto.grammar_beside(None) is auto.grammar
    with pytest.raises(ValueError):
        req.grammar_beside("mine")


def steer(llm: Llama, *scripts: str):
    """A logits processor favouring the first script that the output still follows (+100 on its
    next token), then the next one (+50): where a grammar masks the first one's token, the second
    one's wins.  Scripts are lists of segments, each tokenized on its own (markers as tokens)."""
    toks = [[t for seg in s for t in llm.tokenize(seg.encode(), add_bos=False, special=True)] for s in scripts]
    state = {"start": None}

    def proc(ids, scores):
        if state["start"] is None:
            state["start"] = len(ids)
        gen = [int(t) for t in ids[state["start"]:]]
        out = np.array(scores, dtype=np.float32)
        bonus = 100.0
        for s in toks:
            if s[:len(gen)] == gen:
                out[s[len(gen)] if len(gen) < len(s) else llm.token_eos()] += bonus
                bonus /= 2
        return out
    return proc


@pytest.fixture(scope="module")
def oss(tmp_path_factory):
    path = tmp_path_factory.mktemp("oss") / "gpt-oss-f32.gguf"
    _tool().build("gpt-oss-f32", path)
    with Llama(str(path), n_ctx=1024, chat_template=GPT_OSS) as llm:
        yield llm


HEAD = ["<|channel|>", "analysis", "<|message|>", "Call it with {\"town\": \"Paris\"}.", "<|end|>",
        "<|start|>", "assistant", "<|channel|>", "commentary to=functions.get_weather ", "<|constrain|>",
        "json", "<|message|>"]


def test_api_auto_call_constrained_after_trigger(oss):
    """The tiny gpt-oss model steered to write free analysis text, then a call with a wrong argument
    name (favoured over a second script with the valid one): the analysis comes back as written
    (free before the trigger), the call as the grammar allows it (the second script's arguments),
    finish_reason "tool_calls".  Steered to a
    final answer, tools on "auto" leave it alone."""
    msgs = [{"role": "user", "content": "Weather in Paris?"}]
    out = oss.create_chat_completion(msgs, tools=TOOLS, temperature=0.0, max_tokens=200, logits_processor=steer(
        oss, HEAD + ['{"town": "Paris"}'], HEAD + ['{"city": "Paris"}']))
    ch = out["choices"][0]
    assert ch["finish_reason"] == "tool_calls" and ch["message"]["reasoning_content"] == HEAD[3]
    assert json.loads(ch["message"]["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}
    final = ["<|channel|>", "final", "<|message|>", "It is {\"town\": 1}"]
    out = oss.create_chat_completion(msgs, tools=TOOLS, temperature=0.0, max_tokens=200,
                                     logits_processor=steer(oss, final))
    assert out["choices"][0]["message"]["content"] == final[3] and out["choices"][0]["finish_reason"] == "stop"
