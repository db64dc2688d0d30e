"""Tool calls: each format with a template of its kind and a scripted model output (the tiny
fixture forced token by token through a logits processor), streaming, message normalisation, and
one live forced round trip on SmolLM2.  All comparisons are exact."""
from __future__ import annotations

import json

import numpy as np
import pytest

from gguf_engine import Llama
from gguf_engine.generation.tool_calls import detect_format, normalize_messages

from .conftest import fixture_path

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}]
CHATML_TOOLS = ("{% if tools %}<|im_start|>system\n<tools>{{ tools | tojson }}</tools> answer with <tool_call>"
                "<|im_end|>\n{% endif %}{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
                "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
LLAMA3_TOOLS = ("{% for m in messages %}<|start_header_id|>{{ 'ipython' if m.role == 'tool' else m.role }}"
                "<|end_header_id|>\n\n{{ m.content }}<|eot_id|>{% endfor %}{% if tools %}{{ tools | tojson }}{% endif %}"
                "<|start_header_id|>assistant<|end_header_id|>\n\n")
MISTRAL_TOOLS = ("{% for m in messages %}{% if m.role == 'user' %}[INST] {{ m.content }} [/INST]{% else %}"
                 "{{ m.content }}{% endif %}{% endfor %}{% if tools %}[AVAILABLE_TOOLS]{{ tools | tojson }}"
                 "[/AVAILABLE_TOOLS]{% endif %}{# [TOOL_CALLS] #}")

CASES = {
    "hermes": (CHATML_TOOLS, 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
                             "</tool_call>"),
    "llama3": (LLAMA3_TOOLS, '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}'),
    "mistral": (MISTRAL_TOOLS, '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}]'),
}


def scripted(llm: Llama, text: str):
    """A logits processor that makes the model write exactly text, then end."""
    toks = llm.tokenize(text, add_bos=False)
    state = {"start": None}

    def proc(ids, scores):
        if state["start"] is None:
            state["start"] = len(ids)
        i = len(ids) - state["start"]
        out = np.full_like(scores, -np.inf)
        out[toks[i] if i < len(toks) else llm.token_eos()] = 0.0
        return out
    return proc


@pytest.mark.parametrize("fmt", sorted(CASES))
def test_format_detected_and_parsed(fmt):
    """The template's format is recognised and the scripted call comes back as message.tool_calls
    with finish_reason "tool_calls" (content: the text before the call, or null)."""
    template, script = CASES[fmt]
    assert detect_format(template) == fmt
    with Llama(str(fixture_path("models", "tiny-llama-f32.gguf")), n_ctx=1024, chat_template=template) as llm:
        msgs = [{"role": "user", "content": "Weather in Paris?"}]
        out = llm.create_chat_completion(msgs, tools=TOOLS, temperature=0.0, max_tokens=200,
                                         logits_processor=scripted(llm, script))
        ch = out["choices"][0]
        assert ch["finish_reason"] == "tool_calls"
        (call,) = ch["message"]["tool_calls"]
        assert call["type"] == "function" and call["id"].startswith("call_")
        assert call["function"]["name"] == "get_weather"
        assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
        assert ch["message"]["content"] == ("Let me check." if fmt == "hermes" else None)

        chunks = list(llm.create_chat_completion(msgs, tools=TOOLS, temperature=0.0, max_tokens=200, stream=True,
                                                 logits_processor=scripted(llm, script)))
        deltas = [c["choices"][0]["delta"] for c in chunks]
        text = "".join(d.get("content") or "" for d in deltas)
        calls = [tc for d in deltas for tc in d.get("tool_calls", [])]
        assert "<tool_call>" not in text and "TOOL_CALLS" not in text and "python_tag" not in text
        assert text.strip() == ("Let me check." if fmt == "hermes" else "")
        assert len(calls) == 1 and calls[0]["index"] == 0 and calls[0]["function"]["name"] == "get_weather"
        assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"

        plain = llm.create_chat_completion(msgs, tools=TOOLS, tool_choice="none", temperature=0.0, max_tokens=200,
                                           logits_processor=scripted(llm, script))
        assert "tool_calls" not in plain["choices"][0]["message"]


def test_plain_answer_with_tools_stays_content():
    with Llama(str(fixture_path("models", "tiny-llama-f32.gguf")), n_ctx=1024, chat_template=CHATML_TOOLS) as llm:
        out = llm.create_chat_completion([{"role": "user", "content": "hi"}], tools=TOOLS, max_tokens=50,
                                         logits_processor=scripted(llm, "Hello <there>"))
        assert out["choices"][0]["message"] == {"role": "assistant", "content": "Hello <there>"}
        assert out["choices"][0]["finish_reason"] == "stop"


def test_messages_with_tool_role_null_and_list_content():
    """role "tool", assistant content null with tool_calls, and content given as text parts are rendered."""
    msgs = [{"role": "user", "content": [{"type": "text", "text": "Weather "}, {"type": "text", "text": "in Paris?"}]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    out = normalize_messages(msgs, None, "")
    assert out[0]["content"] == "Weather in Paris?"
    assert out[1]["content"] == '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    assert out[2] == {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}
    with pytest.raises(ValueError, match="image_url"):
        normalize_messages([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}])


def test_bad_tool_choice_is_an_error():
    with Llama(str(fixture_path("models", "tiny-llama-f32.gguf")), n_ctx=128) as llm:
        msgs = [{"role": "user", "content": "hi"}]
        with pytest.raises(ValueError, match="not among the tools"):
            llm.create_chat_completion(msgs, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "x"}})
        with pytest.raises(ValueError, match="tool_choice"):
            llm.create_chat_completion(msgs, tools=TOOLS, tool_choice="always")
        with pytest.raises(ValueError, match="tools\\[0\\]"):
            llm.create_chat_completion(msgs, tools=[{"type": "function"}])


def test_smollm2_forced_tool_round_trip(smollm2_path):
    """A named tool_choice makes SmolLM2 call the tool with arguments that fit its schema; the
    result goes back as a "tool" message and the model answers in text."""
    with Llama(str(smollm2_path), n_ctx=1024, seed=1) as llm:
        msgs = [{"role": "user", "content": "What is the weather in Paris?"}]
        out = llm.create_chat_completion(msgs, tools=TOOLS, temperature=0.0, max_tokens=60,
                                         tool_choice={"type": "function", "function": {"name": "get_weather"}})
        ch = out["choices"][0]
        assert ch["finish_reason"] == "tool_calls"
        (call,) = ch["message"]["tool_calls"]
        args = json.loads(call["function"]["arguments"])
        assert call["function"]["name"] == "get_weather" and isinstance(args["city"], str)
        msgs += [ch["message"], {"role": "tool", "tool_call_id": call["id"], "content": "sunny, 24 C"}]
        answer = llm.create_chat_completion(msgs, tools=TOOLS, tool_choice="none", temperature=0.0, max_tokens=40)
        assert answer["choices"][0]["message"]["content"].strip()
