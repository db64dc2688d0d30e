"""Thinking budgets (llama.cpp's reasoning-budget sampler) and forced tool calls for gpt-oss's
harmony format.

The budget's state machine on token ids; the Python API on the tiny model steered by a stub that
thinks until it sees the end tag (so only the budget can end its thinking) under a Qwen3-style, a
DeepSeek-R1-style (thinking forced open by the prompt) and gpt-oss's template; the harmony grammar
of a forced call, on the tiny vocabulary (markers as text) and on that vocabulary with gpt-oss's
control tokens added (markers as single tokens, matched by their text as llama.cpp's grammar
matches them).  All comparisons are exact."""
from __future__ import annotations

import json

import numpy as np
import pytest

from gguf_engine import Llama
from gguf_engine.generation.grammar import Constraint, GrammarVocab
from gguf_engine.generation.reasoning import ChatSyntax
from gguf_engine.generation.reasoning_budget import (BudgetSettings, BudgetState, ReasoningBudget, make_budget,
                                                     utf8_complete)
from gguf_engine.generation.tool_calls import plan_tools
from gguf_engine.gguf import GGUFReader
from gguf_engine.tokenizer import Tokenizer

from .conftest import fixture_path
from .test_reasoning import GPT_OSS, QWEN3, R1
from .test_tool_calls import TOOLS

TIME_TOOL = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}


# ----------------------------------------------------------------------------- the state machine

def budget(n: int, pieces: dict[int, bytes] | None = None) -> ReasoningBudget:
    """start tag [1, 2], end tags [3] and [4, 5], forced [7, 8, 3] (message 7 8, the first end tag)."""
    return ReasoningBudget([1, 2], [[3], [4, 5]], [7, 8, 3], n, lambda t: (pieces or {}).get(t, b"x"))


def forced_by(b: ReasoningBudget) -> int | None:
    """The one token the budget leaves in a row of zeros (None: the row is left alone)."""
    row = np.zeros(10, dtype=np.float32)
    out = b.apply(row)
    if out is row:
        return None
    (ok,) = np.flatnonzero(np.isfinite(out))
    return int(ok)


def test_budget_counts_then_forces_message_and_end_tag():
    """Tokens before the start tag are free; after it exactly N are allowed, then the message and the
    first end tag are forced one token at a time; then generation is free again."""
    b = budget(3)
    b.accept_many([9, 9, 1])
    assert b.state is BudgetState.IDLE
    b.accept(2)
    assert b.state is BudgetState.COUNTING
    for _ in range(3):
        assert forced_by(b) is None
        b.accept(6)
    assert b.state is BudgetState.FORCING
    for want in (7, 8, 3):
        assert forced_by(b) == want
        b.accept(want)
    assert b.state is BudgetState.DONE and forced_by(b) is None


def test_budget_natural_end_rearm_and_zero():
    """An end tag (either one, several tokens long) within the budget ends the reasoning without
    forcing; a new start tag re-arms it with a fresh budget; budget 0 forces at once."""
    b = budget(3)
    b.accept_many([1, 2, 6, 4, 5])
    assert b.state is BudgetState.DONE
    b.accept_many([1, 2, 6, 6])
    assert b.state is BudgetState.COUNTING and b.remaining == 1
    z = budget(0)
    z.accept_many([1, 2])
    assert z.state is BudgetState.FORCING and forced_by(z) == 7


def test_budget_waits_for_a_whole_utf8_character():
    """A budget spent on a token that ends inside a UTF-8 character lets the next tokens finish it."""
    b = budget(1, {10: b"\xe2\x82", 11: b"\xac"})
    b.accept_many([1, 2, 10])
    assert b.state is BudgetState.WAITING_UTF8 and forced_by(b) is None
    b.accept(11)
    assert b.state is BudgetState.FORCING
    assert utf8_complete(b"a\xe2\x82\xac") and not utf8_complete(b"\xf0\x9f") and utf8_complete(b"")


def test_force_ends_counting_only():
    """force() (a control request's reasoning_end) from inside a reasoning block forces the message
    and the end tag from the next token on, with no token budget at all (-1); before the block
    opens, while forcing and after the end it does nothing and says so."""
    b = budget(-1)
    assert not b.force() and b.state is BudgetState.IDLE
    b.accept_many([1, 2, 6, 6])
    assert b.state is BudgetState.COUNTING and forced_by(b) is None
    assert b.force() and forced_by(b) == 7
    assert not b.force()
    for want in (7, 8, 3):
        assert forced_by(b) == want
        b.accept(want)
    assert b.state is BudgetState.DONE and not b.force() and forced_by(b) is None


def test_control_arms_a_budget_without_tokens():
    """reasoning_control makes a budget even with no token budget (so that it can be forced); a
    control that is not a boolean is refused by name."""
    assert BudgetSettings(-1, "", True).active and not BudgetSettings().active
    with pytest.raises(ValueError, match="reasoning_control must be a boolean"):
        BudgetSettings(-1, "", 1)


def test_budget_settings_checked():
    """A budget below -1, not an integer, or a message that is not text is refused by name."""
    for bad in (-2, 1.5, "10", True):
        with pytest.raises(ValueError, match="reasoning_budget_tokens must be an integer"):
            BudgetSettings(bad)
    with pytest.raises(ValueError, match="reasoning_budget_message must be a string"):
        BudgetSettings(5, None)


# ----------------------------------------------------------------------------- the Python API

class Thinker:
    """A stub model (a logits processor on the tiny model): writes ``open_tag``, then thinks (one
    token, again and again) until the end tag ``close`` appears in its output, then writes
    ``answer`` and ends.  It favours its choice by +50 without forbidding the rest, so a budget's
    forced tokens win."""

    def __init__(self, llm: Llama, open_tag: str, close: str, answer: str):
        self.llm = llm
        self.open = self.toks(open_tag)
        self.close = self.toks(close)
        self.answer = self.toks(answer)
        (self.think,) = self.toks(" a")
        self.start: int | None = None

    def toks(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode(), add_bos=False, special=True)

    def __call__(self, ids, scores):
        if self.start is None:
            self.start = len(ids)
        gen = [int(t) for t in ids[self.start:]]
        n = len(self.close)
        ends = [i + n for i in range(len(self.open), len(gen) - n + 1) if gen[i:i + n] == self.close]
        if len(gen) < len(self.open):
            want = self.open[len(gen)]
        elif not ends:
            want = self.think
        else:
            k = len(gen) - ends[0]
            want = self.answer[k] if k < len(self.answer) else self.llm.token_eos()
        out = np.array(scores, dtype=np.float32)
        out[want] += 50.0
        return out


MAX = 120       # max_tokens of the stub's answers
HARMONY_OPEN = "<|channel|>analysis<|message|>"
HARMONY_FINAL = "<|start|>assistant<|channel|>final<|message|>Hi there"


@pytest.fixture(scope="module")
def tiny():
    with Llama(str(fixture_path("models", "tiny-llama-f32.gguf")), n_ctx=1024) as llm:
        yield llm


def chat(llm: Llama, template: str, stub: Thinker, **kw) -> dict:
    llm.chat_template = template
    out = llm.create_chat_completion([{"role": "user", "content": "Hi"}], temperature=0.0, max_tokens=MAX,
                                     logits_processor=stub, **kw)
    return out["choices"][0]["message"]


@pytest.mark.parametrize("n", [0, 1, 5])
def test_api_budget_ends_think_after_n_tokens(tiny, n):
    """Qwen3-style template: the stub opens <think> and would think forever; the budget lets exactly
    N thinking tokens through, then forces the message and </think>, and the answer follows."""
    msg = chat(tiny, QWEN3, Thinker(tiny, "<think>", "</think>", "\n\nHello!"), reasoning_budget_tokens=n,
               reasoning_budget_message=" Enough.")
    assert msg == {"role": "assistant", "content": "Hello!", "reasoning_content": ("a " * n + "Enough.").strip()
                   if n else "Enough."}


def test_api_budget_forced_open_think(tiny):
    """DeepSeek-R1-style template whose prompt opens the reasoning ("<think>\\n"): the budget is
    counting from the start, and the prompt's own "\\n" after <think> is one of its tokens, as
    llama.cpp feeds its generation prompt to the budget; 4 tokens leave 3 to the model (no
    message: only </think> is forced)."""
    stub = Thinker(tiny, "", "</think>", "\n\nHello!")
    msg = chat(tiny, R1, stub, reasoning_budget_tokens=4)
    assert msg == {"role": "assistant", "content": "Hello!", "reasoning_content": "a a a"}


def test_api_no_budget_thinks_on(tiny):
    """Without a budget (-1, the default) the stub's thinking runs into max_tokens: nothing is forced."""
    msg = chat(tiny, QWEN3, Thinker(tiny, "<think>", "</think>", "Hello!"))
    assert msg["content"] == "" and msg["reasoning_content"].count("a") == MAX - len(tiny.tokenize(b"<think>",
                                                                                                    add_bos=False))


@pytest.mark.parametrize("n", [0, 3])
def test_api_budget_harmony(tiny, n):
    """gpt-oss's template: the budget counts inside the analysis channel and forces its <|end|>; the
    final message follows.  Budget 0 ends the analysis at once (gpt-oss has no switch to turn its
    thinking off, so this is how --reasoning-budget 0 is honoured there, as in llama.cpp)."""
    stub = Thinker(tiny, HARMONY_OPEN, "<|end|>", HARMONY_FINAL)
    msg = chat(tiny, GPT_OSS, stub, reasoning_budget_tokens=n)
    want = {"role": "assistant", "content": "Hi there"}
    if n:
        want["reasoning_content"] = " a" * n
    assert msg == want
    raw = chat(tiny, GPT_OSS, Thinker(tiny, HARMONY_OPEN, "<|end|>", HARMONY_FINAL), reasoning_budget_tokens=n,
               reasoning_format="none")
    assert raw["content"] == HARMONY_OPEN + " a" * n + "<|end|>Hi there"


def test_api_budget_refused_values(tiny):
    """A bad budget is a ValueError naming the argument, before any token."""
    with pytest.raises(ValueError, match="reasoning_budget_tokens"):
        tiny.create_chat_completion([{"role": "user", "content": "Hi"}], reasoning_budget_tokens=-5)


# ----------------------------------------------------------------------------- forced harmony calls

CALL = ('<|channel|>analysis<|message|>Need the weather.<|end|><|start|>assistant<|channel|>commentary '
        'to=functions.get_weather <|constrain|>json<|message|>{"city": "Paris"}')


def harmony_tokenizer() -> Tokenizer:
    """The tiny vocabulary with gpt-oss's control tokens added (<|return|> and <|call|> end generation)."""
    with GGUFReader(fixture_path("models", "tiny-llama-f32.gguf")) as r:
        md = {k: r.metadata[k] for k in r.metadata if k.startswith("tokenizer.")}
    extra = ["<|start|>", "<|channel|>", "<|message|>", "<|end|>", "<|constrain|>", "<|return|>", "<|call|>"]
    md["tokenizer.ggml.tokens"] = list(md["tokenizer.ggml.tokens"]) + extra
    md["tokenizer.ggml.token_type"] = np.concatenate([np.asarray(md["tokenizer.ggml.token_type"], np.int32),
                                                      np.full(len(extra), 3, np.int32)])
    return Tokenizer.from_metadata(md)


@pytest.mark.parametrize("control_tokens", [False, True])
def test_harmony_forced_call_grammar(control_tokens):
    """tool_choice "required" / a named function under gpt-oss's template: the grammar takes analysis
    messages, commentary preambles and the call (recipient in the channel or the role header,
    optional <|constrain|>), and refuses a final answer, another function, or arguments outside the
    schema.  With gpt-oss's control tokens in the vocabulary, the markers are single tokens that the
    grammar's literals match, as llama.cpp's grammar matches tokens by their text."""
    tok = harmony_tokenizer() if control_tokens else Tokenizer.from_gguf(fixture_path("models", "tiny-llama-f32.gguf"))
    vocab = GrammarVocab.from_tokenizer(tok, tok.n_vocab)
    if control_tokens:
        assert len(tok.encode("<|channel|><|end|>", special=True)) == 2

    def fits(grammar, text: str) -> bool:
        c = Constraint(grammar, vocab)
        for t in tok.encode(text, special=True):
            if not c.allowed()[t]:
                return False
            c.accept(t)
        return c.accepting

    required = plan_tools([*TOOLS, TIME_TOOL], "required", GPT_OSS).grammar
    named = plan_tools([*TOOLS, TIME_TOOL], {"type": "function", "function": {"name": "get_time"}}, GPT_OSS).grammar
    assert fits(required, CALL)
    assert fits(required, '<|channel|>commentary<|message|>Let me check.<|end|><|start|>assistant to=functions.get_time'
                          '<|channel|>commentary<|message|>{}')
    assert fits(required, '<|channel|>commentary to=assistant<|channel|>analysis<|message|>x<|end|><|start|>assistant'
                          '<|channel|>analysis to=functions.get_weather json<|message|>{"city": "Rome"}')
    assert not fits(required, "<|channel|>final<|message|>Sunny")
    assert not fits(required, '<|channel|>commentary to=functions.get_weather<|message|>{"town": "Paris"}')
    assert not fits(named, CALL)
    assert fits(named, "<|channel|>commentary to=functions.get_time<|message|>{}")


def test_api_harmony_forced_call(tiny):
    """The tiny model steered towards a harmony call under tool_choice "required": the grammar lets
    it through and it comes back as message.tool_calls (finish_reason "tool_calls")."""
    from .test_tool_calls import scripted
    tiny.chat_template = GPT_OSS
    out = tiny.create_chat_completion([{"role": "user", "content": "Weather in Paris?"}], tools=TOOLS,
                                      tool_choice="required", max_tokens=200, logits_processor=scripted(tiny, CALL))
    ch = out["choices"][0]
    assert ch["finish_reason"] == "tool_calls" and ch["message"]["reasoning_content"] == "Need the weather."
    assert ch["message"]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert json.loads(ch["message"]["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}


def test_make_budget_tags_from_the_syntax():
    """The budget's tags come from the chat syntax (llama.cpp's thinking start/end tags): harmony's
    <|channel|>analysis<|message|> and <|end|> as single control tokens where the vocabulary has them;
    none for a template without reasoning."""
    tok = harmony_tokenizer()
    b = make_budget(BudgetSettings(2, "Done."), ChatSyntax.detect(GPT_OSS), tok)
    ids = tok.encode("<|channel|>analysis<|message|>", special=True)
    assert b.start.seqs == [tuple(ids)] and b.ends.seqs == [tuple(tok.encode("<|end|>", special=True))]
    assert b.forced == tok.encode("Done.", special=True) + tok.encode("<|end|>", special=True)
    assert make_budget(BudgetSettings(2), ChatSyntax.detect("{{ messages }}"), tok) is None
    assert make_budget(BudgetSettings(-1), ChatSyntax.detect(GPT_OSS), tok) is None
