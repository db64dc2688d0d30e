"""Reasoning output and gpt-oss's harmony format: hand-written answers split into reasoning_content,
content and tool calls as llama.cpp's chat parsers split them (its tests/test-chat.cpp cases), the
streamed deltas of answers cut at awkward points (inside markers), gpt-oss's template given earlier
turns as llama.cpp gives them (against llama-server's /apply-template renderings, committed with
tools/make_chat_references.py), and the Python API on the tiny model with a scripted output.
All comparisons are exact."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from gguf_engine import Llama
from gguf_engine.generation.reasoning import (ChatSyntax, ReplyParser, ReplyStream, parse_reply,
                                              settled_end)
from gguf_engine.generation.tool_calls import ToolCallParser, normalize_messages, plan_tools

from .conftest import fixture_path
from .test_tool_calls import CHATML_TOOLS, TOOLS, scripted

DATA = Path(__file__).parent / "data"
GPT_OSS = (DATA / "templates" / "gpt-oss.jinja").read_text()
# a Qwen3-style template: <think> in the text, an empty think block when thinking is off
QWEN3 = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
         "{% if add_generation_prompt %}<|im_start|>assistant\n{% if enable_thinking is defined and "
         "enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}")
# a DeepSeek-R1-style template whose prompt opens the think block itself (thinking forced open)
R1 = ("{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
      "{% if add_generation_prompt %}assistant: <think>\n{% endif %}{# </think> #}")

HARMONY_THOUGHT = ("<|channel|>analysis<|message|>I'm\nthinking<|end|><|start|>assistant<|channel|>final"
                   "<|message|>Hello, world!\nWhat's up?")
HARMONY_CALL = ("<|channel|>analysis<|message|>Need the weather.<|end|><|start|>assistant<|channel|>commentary "
                "to=functions.get_weather <|constrain|>json<|message|>{\"city\": \"Paris\"}")


def harmony(fmt: str = "auto", tools: tuple[str, ...] = ()) -> ChatSyntax:
    return ChatSyntax.detect(GPT_OSS, "", fmt, tools)


def think(prompt: str = "", fmt: str = "auto", template: str = QWEN3) -> ChatSyntax:
    return ChatSyntax.detect(template, prompt, fmt)


def test_detect():
    """The syntax is recognised from the template text; a prompt ending in an open <think> makes it
    the start of the answer, a closed one (thinking off) does not."""
    assert harmony().kind == "harmony" and think().kind == "think"
    assert ChatSyntax.detect(CHATML_TOOLS).kind == "plain"
    assert think("user: hi\nassistant: <think>\n", template=R1).prefix == "<think>\n"
    assert think("<|im_start|>assistant\n<think>\n\n</think>\n\n").prefix == ""
    with pytest.raises(ValueError, match="reasoning_format must be one of"):
        ChatSyntax.detect(QWEN3, "", "deepseek-v4")


@pytest.mark.parametrize("text,content,reasoning", [
    (HARMONY_THOUGHT, "Hello, world!\nWhat's up?", "I'm\nthinking"),                # analysis + final
    ("<|channel|>final<|message|>Hello, world!\nWhat's up?", "Hello, world!\nWhat's up?", ""),   # final only
    ("<|channel|>commentary<|message|>Hello, world!\nWhat's up?", "Hello, world!\nWhat's up?", ""),  # preamble
    ("<|channel|>analysis<|message|>I'm\nthinking", "", "I'm\nthinking"),         # still thinking
    ("<|channel|>final<|message|>Hello<|en", "Hello", ""),                        # ended inside <|end|>
    # a stray "<|channel|>commentary to=assistant" before a channel
    ("<|channel|>commentary to=assistant<|channel|>analysis<|message|>I'm\nthinking<|end|><|start|>assistant"
     "<|channel|>final<|message|>Hello", "Hello", "I'm\nthinking"),
    ("<|channel|>analysis<|message|>I'm\nthinking<|end|><|start|>assistant<|channel|>commentary to=assistant"
     "<|channel|>final<|message|>Hello", "Hello", "I'm\nthinking"),
    # unsolicited calls (built-in tools) are dropped, in the role and in the channel header
    ("<|channel|>analysis<|message|>Run python<|end|><|start|>assistant to=container.exec<|channel|>commentary"
     "<|message|>python3 -c 'print(1)'", "", "Run python"),
    ("<|channel|>analysis<|message|>Run python<|end|><|start|>assistant<|channel|>commentary to=python "
     "<|constrain|>code<|message|>print(1)", "", "Run python"),
])
def test_harmony_parse(text, content, reasoning):
    """Harmony answers as llama.cpp's gpt-oss parser splits them."""
    r = parse_reply(harmony(), text)
    assert (r.content, r.reasoning_content, r.tool_calls) == (content, reasoning, [])


def test_harmony_reasoning_format_none():
    """reasoning_format none: the analysis message stays in content with its markers (llama.cpp's
    expected string), the final message's text follows it."""
    r = parse_reply(harmony("none"), HARMONY_THOUGHT)
    assert r.content == "<|channel|>analysis<|message|>I'm\nthinking<|end|>Hello, world!\nWhat's up?"
    assert r.reasoning_content == ""


@pytest.mark.parametrize("text", [
    HARMONY_CALL,
    # recipient in the role header, analysis channel, no constraint
    "<|channel|>analysis<|message|>Need the weather.<|end|><|start|>assistant to=functions.get_weather"
    "<|channel|>analysis<|message|>{\"city\": \"Paris\"}",
    "<|channel|>analysis<|message|>Need the weather.<|end|><|start|>assistant to=functions.get_weather"
    "<|channel|>commentary <|constrain|>json<|message|>{\"city\": \"Paris\"}",
])
def test_harmony_tool_call(text):
    """analysis + a commentary call to functions.NAME: reasoning, no content, one call with the
    body as its arguments (a JSON string), in any of the header layouts llama.cpp accepts."""
    plan = plan_tools(TOOLS, "auto", GPT_OSS)
    assert plan.format == "harmony"
    parser = ReplyParser(harmony(tools=("get_weather",)), ToolCallParser(plan))
    msg = parser.message(text)
    assert msg["role"] == "assistant" and msg["content"] is None
    assert msg["reasoning_content"] == "Need the weather."
    [call] = msg["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"] == {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}
    # without tools in the request the call is unsolicited: dropped
    assert ReplyParser(harmony(), None).message(text) == {"role": "assistant", "content": "",
                                                           "reasoning_content": "Need the weather."}


@pytest.mark.parametrize("prompt,text,content,reasoning", [
    ("", "<think>\nI'm\nthinking\n</think>\n\nHello, world!", "Hello, world!", "I'm\nthinking"),
    ("", "Hello, world!", "Hello, world!", ""),                                # no think block
    ("", "<think>\n\n</think>\n\nHello", "Hello", ""),                         # an empty one
    ("", "<think>\nI'm\nthinking", "", "I'm\nthinking"),                       # unclosed at the end
    ("", "<think>\nI'm\nthinking</thi", "", "I'm\nthinking"),                  # ended inside the end tag
    ("p: <think>\n", "I'm\nthinking</think>Hello, world!", "Hello, world!", "I'm\nthinking"),   # forced open
    ("p: <think>\n", "</think>Hello, world!", "Hello, world!", ""),
    ("p: <think>\n", "I'm\nthinking", "", "I'm\nthinking"),                    # forced open, unclosed
])
def test_think_parse(prompt, text, content, reasoning):
    """<think> answers (Qwen3, and DeepSeek-R1's forced-open prompt) as llama.cpp splits them:
    the unclosed block at the end of generation is all reasoning, as its lenient parse leaves it."""
    tmpl = R1 if prompt else QWEN3
    r = parse_reply(think(prompt, template=tmpl), text)
    assert (r.content, r.reasoning_content) == (content, reasoning)


def test_think_reasoning_format_none():
    """reasoning_format none: the text stays in content as it was (a forced-open prompt's <think>
    included, as llama.cpp gives it)."""
    text = "<think>\nI'm\nthinking\n</think>\n\nHello"
    assert parse_reply(think(fmt="none"), text).content == text
    assert parse_reply(think("p: <think>\n", "none", R1), "I'm\nthinking</think>Hello").content == \
        "<think>\nI'm\nthinking</think>Hello"
    assert ReplyParser(think(fmt="none")).message(text) == {"role": "assistant", "content": text}


def test_think_then_hermes_call():
    """A Qwen3-style answer that thinks and then calls a tool: reasoning, and the call parsed from
    the rest by the template's tool-call format."""
    plan = plan_tools(TOOLS, "auto", CHATML_TOOLS + QWEN3)
    parser = ReplyParser(think(), ToolCallParser(plan))
    msg = parser.message("<think>\nCall it.\n</think>\n\n<tool_call>\n{\"name\": \"get_weather\", "
                         "\"arguments\": {\"city\": \"Paris\"}}\n</tool_call>")
    assert msg["reasoning_content"] == "Call it." and msg["content"] is None
    assert msg["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}


def stream(parser: ReplyParser, pieces: list[str]) -> tuple[list[dict], list[dict]]:
    s = ReplyStream(parser)
    deltas = [d for p in pieces for d in s.push(p)]
    rest, calls = s.finish()
    return deltas + rest, calls


def cut(text: str, marks: list[str]) -> list[str]:
    """text cut after each of marks' first occurrence (marks may end inside a marker)."""
    pieces, pos = [], 0
    for m in marks:
        i = text.index(m, pos) + len(m)
        pieces.append(text[pos:i])
        pos = i
    return pieces + [text[pos:]]


def joined(deltas: list[dict], key: str) -> str:
    return "".join(d.get(key, "") for d in deltas)


def test_harmony_stream_split_inside_markers():
    """Streamed in pieces cut inside markers (<|chan, <|mess, <|en, <|start|>assi, fin): the
    deltas are the reasoning then the content, each delta one field, and no marker text in either;
    together they equal the whole answer's parse."""
    pieces = cut(HARMONY_THOUGHT, ["<|chan", "analysis<|mess", "I'm", "\nthinking<|en", "d|><|start|>assi",
                                   "<|channel|>fin", "al<|message|>Hello", ", world!"])
    deltas, calls = stream(ReplyParser(harmony()), pieces)
    assert calls == [] and all(len(d) == 1 for d in deltas)
    assert deltas == [{"reasoning_content": "I'm"}, {"reasoning_content": "\nthinking"}, {"content": "Hello"},
                      {"content": ", world!"}, {"content": "\nWhat's up?"}]
    # one character at a time
    deltas, _ = stream(ReplyParser(harmony()), list(HARMONY_THOUGHT))
    assert joined(deltas, "reasoning_content") == "I'm\nthinking"
    assert joined(deltas, "content") == "Hello, world!\nWhat's up?"
    assert not any("<|" in v or "|>" in v for d in deltas for v in d.values())


def test_harmony_stream_tool_call():
    """A streamed harmony call: reasoning deltas, no content at all (the call's header and body are
    never content), then the call once the answer has ended."""
    plan = plan_tools(TOOLS, "auto", GPT_OSS)
    parser = ReplyParser(harmony(tools=("get_weather",)), ToolCallParser(plan))
    deltas, calls = stream(parser, list(HARMONY_CALL))
    assert joined(deltas, "reasoning_content") == "Need the weather." and joined(deltas, "content") == ""
    assert [c["function"]["name"] for c in calls] == ["get_weather"]


def test_think_stream_split_inside_markers():
    """A <think> answer cut inside both tags: reasoning deltas, then content deltas, no tag text."""
    text = "<think>\nI'm\nthinking\n</think>\n\nHello, world!"
    pieces = cut(text, ["<thi", "nk>\nI'm", "\nthinking\n</th", "ink>", "\n\nHel"])
    deltas, _ = stream(ReplyParser(think()), pieces)
    assert deltas == [{"reasoning_content": "I'm"}, {"reasoning_content": "\nthinking"}, {"content": "Hel"},
                      {"content": "lo, world!"}]
    deltas, _ = stream(ReplyParser(think()), list(text))
    assert joined(deltas, "reasoning_content") == "I'm\nthinking" and joined(deltas, "content") == "Hello, world!"
    assert not any("<" in v or ">" in v for d in deltas for v in d.values())
    # reasoning_format none: every character is content, as it came
    deltas, _ = stream(ReplyParser(think(fmt="none")), list(text))
    assert joined(deltas, "content") == text and joined(deltas, "reasoning_content") == ""


def test_settled_end():
    """A tail that could begin a marker is held back; anything else is settled."""
    assert settled_end("abc<|en", ("<|end|>",)) == 3
    assert settled_end("abc<", ("<think>", "</think>")) == 3
    assert settled_end("abc</th", ("<think>", "</think>")) == 3
    assert settled_end("abc", ("<think>",)) == 3


# ----------------------------------------------------------------------------- the template side

def _mask_date(text: str) -> str:
    return re.sub(r"Current date: \d{4}-\d{2}-\d{2}", "Current date: DATE", text)


@pytest.mark.parametrize("name", ["reasoning_then_answer", "tool_call_round", "tool_call_then_final"])
def test_gpt_oss_template_renders_earlier_turns_as_llama_server(name):
    """Earlier assistant turns with reasoning_content and tool_calls (arguments as a JSON string) render
    through gpt-oss's template exactly as llama-server's /apply-template renders them (reasoning as
    the template's "thinking" field, arguments as an object, no content beside reasoning and calls);
    the template's date line is masked."""
    from gguf_engine.tokenizer.chat import render_chat_template
    ref = json.loads((DATA / "chat-template-references.json").read_text())
    conv = ref["conversations"][name]
    msgs = normalize_messages(conv["messages"], None, GPT_OSS)
    got = render_chat_template(GPT_OSS, msgs, True, tools=conv.get("tools"), enable_thinking=True)
    assert _mask_date(got) == _mask_date(ref["prompts"]["gpt-oss"][name])


# ----------------------------------------------------------------------------- the Python API

def test_api_reasoning_content_plain_and_streamed():
    """Llama.create_chat_completion on the tiny model writing a scripted <think> answer:
    message.reasoning_content and content (llama-server's names), streamed as delta.reasoning_content
    and delta.content; reasoning_format none keeps it all in content."""
    text = "<think>\nI'm thinking\n</think>\n\nHello!"
    with Llama(str(fixture_path("models", "tiny-llama-f32.gguf")), n_ctx=512, chat_template=QWEN3) as llm:
        msgs = [{"role": "user", "content": "Hi"}]
        out = llm.create_chat_completion(msgs, max_tokens=64, logits_processor=scripted(llm, text))
        assert out["choices"][0]["message"] == {"role": "assistant", "content": "Hello!",
                                                "reasoning_content": "I'm thinking"}
        chunks = list(llm.create_chat_completion(msgs, max_tokens=64, stream=True,
                                                 logits_processor=scripted(llm, text)))
        deltas = [c["choices"][0]["delta"] for c in chunks]
        assert joined(deltas, "reasoning_content") == "I'm thinking" and joined(deltas, "content") == "Hello!"
        none = llm.create_chat_completion(msgs, max_tokens=64, reasoning_format="none",
                                          logits_processor=scripted(llm, text))
        assert none["choices"][0]["message"] == {"role": "assistant", "content": text}
        off = llm.render_chat(msgs, template_kwargs={"enable_thinking": False})
        assert off.endswith("<think>\n\n</think>\n\n")


def test_api_harmony_tool_call():
    """The tiny model writing a scripted harmony answer under gpt-oss's template: the reasoning, and
    the commentary call as message.tool_calls with finish_reason "tool_calls"."""
    with Llama(str(fixture_path("models", "tiny-llama-f32.gguf")), n_ctx=2048, chat_template=GPT_OSS) as llm:
        msgs = [{"role": "user", "content": "Weather in Paris?"}]
        out = llm.create_chat_completion(msgs, tools=TOOLS, max_tokens=200,
                                         logits_processor=scripted(llm, HARMONY_CALL))
        ch = out["choices"][0]
        assert ch["finish_reason"] == "tool_calls" and ch["message"]["reasoning_content"] == "Need the weather."
        assert ch["message"]["tool_calls"][0]["function"] == {"name": "get_weather",
                                                              "arguments": "{\"city\": \"Paris\"}"}


def test_preserved_control_tokens_are_written(smollm2_path):
    """A chat syntax's control tokens (gpt-oss's <|channel|>... there, SmolLM2's <|im_start|> here)
    are written into the streamed text when named in ``shown``, and stay invisible otherwise, as
    llama-server renders its preserved tokens; a text the vocabulary lacks names no token."""
    from gguf_engine.tokenizer import Tokenizer
    tok = Tokenizer.from_gguf(smollm2_path)
    ids = tok.encode("<|im_start|>assistant", special=True)
    shown = tok.token_ids(["<|im_start|>", "<|no such token|>"])
    assert shown == {ids[0]}
    for kw, want in (({}, "assistant"), ({"shown": shown}, "<|im_start|>assistant")):
        d = tok.stream_decoder(**kw)
        assert "".join(d.push(t) for t in ids) + d.flush() == want
    assert ChatSyntax.detect(GPT_OSS).preserved == ("<|channel|>", "<|constrain|>", "<|message|>", "<|start|>",
                                                    "<|end|>")


def test_stream_text_after_hermes_calls_is_not_content():
    """A streamed Hermes answer whose text after its call (here the start of a second block cut by
    the token limit) is held back: once calls are found no more content follows, as before."""
    plan = plan_tools(TOOLS, "auto", CHATML_TOOLS)
    text = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>"
    deltas, calls = stream(ReplyParser(ChatSyntax.detect(CHATML_TOOLS), ToolCallParser(plan)), list(text))
    assert deltas == [] and [c["function"]["name"] for c in calls] == ["get_weather"]
