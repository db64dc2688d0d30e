"""Tool calls in chat completions: choosing the format, forcing a call, parsing the model's output.

A chat template's tool-call format is recognised from its text:
  * "hermes" (Qwen 2.5/3, Hermes): ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, one
    block per call; also the format used for templates that know no tools (the tools are then
    described to the model in a system message);
  * "llama3" (Llama 3.x): the answer is a JSON object ``{"name": ..., "parameters": {...}}``,
    optionally after ``<|python_tag|>``; several are separated by ``;``;
  * "mistral": ``[TOOL_CALLS]`` followed by a JSON list of ``{"name": ..., "arguments": {...}}``;
  * "harmony" (gpt-oss): a message ``<|channel|>commentary to=functions.NAME <|constrain|>json
    <|message|>{...}``; read with the answer's channels by ``generation.reasoning``; a forcing
    grammar lets analysis messages and commentary preambles come before the call
    (``harmony_call_lark``).

``tool_choice``: "none" (no parsing), "auto" (the model decides; calls it writes are parsed, and
from the format's call marker on a lazy grammar makes the call valid, as llama.cpp's lazy grammars
do: ``auto_call_grammar``), "required" (a grammar makes the answer a call to any of the tools) or
{"type": "function", "function": {"name": N}} (a grammar makes it a call to N).  ``parallel_tool_calls`` (llama-server's
reading): with it the answer may hold several calls, without it only the first is kept (and a
forcing grammar allows exactly one).  Parsed calls come back in OpenAI's ``message.tool_calls``
shape (arguments as a JSON string) with finish_reason "tool_calls".
"""
from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

from .reasoning import settled_end

MARKERS = {"hermes": "<tool_call>", "mistral": "[TOOL_CALLS]", "llama3": "<|python_tag|>",
           "harmony": "<|channel|>"}


@dataclass
class ToolPlan:
    """How one chat request uses tools.

    tools: what the template sees (None: no tools); parse: whether output is parsed for calls;
    format: "hermes", "llama3", "mistral" or "harmony"; grammar: the Grammar forcing a call, the
    LazyGrammar constraining the calls of an "auto" choice, or None;
    system_note: a system message describing the tools, for templates that do not render them;
    parallel: several calls allowed in one answer (else only the first is kept)."""

    tools: list[dict[str, Any]] | None
    parse: bool
    format: str
    grammar: Any
    system_note: str | None
    parallel: bool = True

    @property
    def forcing(self) -> bool:
        """A call is forced (a grammar from the first token on, not an "auto" choice's lazy one)."""
        from .grammar import LazyGrammar
        return self.grammar is not None and not isinstance(self.grammar, LazyGrammar)

    def grammar_beside(self, given):
        """The answer's one grammar when the request gives its own (None: none): a forced call's
        grammar or the given one (both: ValueError, the caller names the fields); an "auto"
        choice's lazy grammar gives way to a given one, as llama.cpp's response format replaces it."""
        if given is None:
            return self.grammar
        if self.forcing:
            raise ValueError("a forced tool_choice and another grammar")
        return given


def detect_format(template_text: str) -> str:
    """The tool-call format a chat template writes (hermes for templates without one)."""
    if "<|channel|>" in template_text:
        return "harmony"
    if "[TOOL_CALLS]" in template_text:
        return "mistral"
    if "<|start_header_id|>" in template_text and ("ipython" in template_text or "python_tag" in template_text):
        return "llama3"
    return "hermes"


def merge_functions(tools, tool_choice, functions, function_call):
    """OpenAI's older functions / function_call turned into tools / tool_choice."""
    if functions is not None:
        if tools is not None:
            raise ValueError("give tools or functions, not both")
        tools = [{"type": "function", "function": f} for f in functions]
    if function_call is not None:
        if tool_choice is not None:
            raise ValueError("give tool_choice or function_call, not both")
        if isinstance(function_call, Mapping):
            tool_choice = {"type": "function", "function": {"name": function_call.get("name")}}
        else:
            tool_choice = {"none": "none", "auto": "auto"}.get(function_call, function_call)
    return tools, tool_choice


def _function(tool: Any, i: int) -> dict[str, Any]:
    if not isinstance(tool, Mapping) or tool.get("type", "function") != "function" \
            or not isinstance(tool.get("function"), Mapping) or not isinstance(tool["function"].get("name"), str):
        raise ValueError(f"tools[{i}] must be {{\"type\": \"function\", \"function\": {{\"name\": ..., "
                         f"\"parameters\": {{...}}}}}}, got {tool!r}")
    return dict(tool["function"])


def _call_schema(fn: Mapping[str, Any], fmt: str) -> dict[str, Any]:
    params = fn.get("parameters") or {"type": "object"}
    key = "parameters" if fmt == "llama3" else "arguments"
    return {"type": "object", "properties": {"name": {"const": fn["name"]}, key: params},
            "required": ["name", key], "additionalProperties": False}


def plan_tools(tools: Sequence[Any] | None, tool_choice: Any, template_text: str,
               parallel: bool = True) -> ToolPlan:
    """Checks tools / tool_choice and decides the format and any grammar that forces a call
    (parallel: several calls allowed, see the module's note)."""
    fmt = detect_format(template_text)
    if not tools:
        if tool_choice not in (None, "none", "auto"):
            raise ValueError(f"tool_choice={tool_choice!r} needs tools")
        return ToolPlan(None, False, fmt, None, None, parallel)
    fns = [_function(t, i) for i, t in enumerate(tools)]
    tools = [{"type": "function", "function": f} for f in fns]
    choice = "auto" if tool_choice is None else tool_choice
    if isinstance(choice, Mapping):
        name = (choice.get("function") or {}).get("name") if choice.get("type") == "function" else None
        chosen = [f for f in fns if f["name"] == name]
        if not chosen:
            raise ValueError(f"tool_choice names function {name!r}, which is not among the tools "
                             f"({', '.join(f['name'] for f in fns)})")
        forced = chosen
    elif choice == "required":
        forced = fns
    elif choice in ("auto", "none"):
        forced = None
    else:
        raise ValueError(f"tool_choice must be \"auto\", \"none\", \"required\" or a named function, got {choice!r}")
    note = None if "tools" in template_text else tool_system_note(fns, fmt)
    if forced:
        grammar = call_grammar(forced, fmt, parallel)
    else:
        grammar = auto_call_grammar(fns, fmt, parallel) if choice == "auto" else None
    return ToolPlan(tools, choice != "none", fmt, grammar, note, parallel)


# where a call starts in each format: llama.cpp's lazy-grammar triggers (regular expressions
# searched in the output; see generation.grammar.LazyGrammar).  gpt-oss: the recipient in the role
# (" to=functions..." right after the prompt's or a later "<|start|>assistant") or in the channel
# header ("<|channel|>commentary to=functions..."); the others: their call marker.  Llama 3's calls
# are bare JSON with no marker (<|python_tag|> is optional), so llama.cpp has no trigger for them.
AUTO_TRIGGERS = {
    "harmony": (r"^\s+to$", r"^<\|channel\|>(?:commentary|analysis)\s+to=functions$",
                r"<\|start\|>assistant(\s+to)", r"<\|start\|>assistant(<\|channel\|>(?:commentary|analysis)\s+to)"),
    "hermes": (re.escape(MARKERS["hermes"]),),
    "mistral": (re.escape(MARKERS["mistral"]),),
}


def auto_call_grammar(fns: Sequence[Mapping[str, Any]], fmt: str, parallel: bool = True):
    """The lazy grammar of an "auto" tool choice (None where the format has no trigger): the
    output is free until a call starts, then the call (its name one of fns', its arguments valid
    for that function's parameters) is the grammar's, as a forced call is."""
    from .grammar import Grammar, LazyGrammar
    if fmt not in AUTO_TRIGGERS:
        return None
    if fmt == "harmony":
        grammar = Grammar.from_lark(harmony_call_lark(fns, lazy=True), origin="tools")
    else:
        grammar = call_grammar(fns, fmt, parallel)
    return LazyGrammar(grammar, AUTO_TRIGGERS[fmt])


def tool_system_note(fns: Sequence[Mapping[str, Any]], fmt: str) -> str:
    """The tools described for a template that does not render them (Hermes' wording of the task)."""
    listing = "\n".join(json.dumps({"type": "function", "function": f}, ensure_ascii=False) for f in fns)
    if fmt == "hermes":
        how = ("For each function call, return a JSON object with the function name and arguments within "
               "<tool_call></tool_call> tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": "
               "<args-json-object>}\n</tool_call>")
    elif fmt == "mistral":
        how = "To call functions, answer [TOOL_CALLS] followed by a JSON list of {\"name\": ..., \"arguments\": {...}}."
    else:
        how = "To call a function, answer only a JSON object {\"name\": <function-name>, \"parameters\": <args>}."
    return ("You may call one or more functions to assist with the user query. The functions are:\n"
            f"{listing}\n{how}")


def call_grammar(fns: Sequence[Mapping[str, Any]], fmt: str, parallel: bool = False):
    """A Grammar whose sentences are one call to one of fns in the format (one or more calls
    with ``parallel``)."""
    from .grammar import Grammar
    if fmt == "harmony":
        return Grammar.from_lark(harmony_call_lark(fns), origin="tool_choice")
    schema = _call_schema(fns[0], fmt) if len(fns) == 1 else {"anyOf": [_call_schema(f, fmt) for f in fns]}
    body = f"%json {json.dumps(schema)}"
    if fmt == "hermes":
        block = 'block: "<tool_call>\\n" call "\\n</tool_call>"\n'
        lark = ('start: block ("\\n" block)*\n' if parallel else "start: block\n") + block
    elif fmt == "mistral":
        lark = 'start: "[TOOL_CALLS][" call (", " call)* "]"\n' if parallel else 'start: "[TOOL_CALLS][" call "]"\n'
    else:
        lark = 'start: call ("; " call)*\n' if parallel else "start: call\n"
    return Grammar.from_lark(lark + f"call: {body}\n", origin="tool_choice")


# gpt-oss's answer up to a forced call: messages of the analysis channel (after an optional stray
# "<|channel|>commentary[ to=assistant]") or commentary preambles, each body ended by the first
# <|end|>, then the call with its recipient in the role or in the channel header
HARMONY_CALL_LARK = r"""
start: (message "<|start|>assistant")* call
message: ("<|channel|>" "commentary" " to=assistant"?)? "<|channel|>" "analysis" "<|message|>" BODY_END
       | "<|channel|>" "commentary" "<|message|>" BODY_END
BODY_END: /(?s:.*)<\|end\|>/ & ~/(?s:.*<\|end\|>.+)/
"""
# the call itself (what a lazy grammar constrains from its trigger on)
HARMONY_CALL_RULES = r"""
channel: "<|channel|>" ("commentary" | "analysis")
constraint: SPACE? "<|constrain|>"? /[A-Za-z0-9_-]+/
SPACE: /[ \t\r\n]+/
"""


def harmony_call_lark(fns: Sequence[Mapping[str, Any]], lazy: bool = False) -> str:
    """The Lark grammar of a gpt-oss answer that ends in a call to one of fns, as llama.cpp's gpt-oss
    handler builds it for a forced tool_choice: the answer continues the prompt's
    ``<|start|>assistant``; a call is ``<|channel|>commentary to=functions.NAME <|constrain|>json
    <|message|>`` (or the recipient before the channel) and arguments valid for the function's
    parameters.  lazy: the call alone (from the trigger of an "auto" choice on).  Harmony answers
    hold one call, whatever ``parallel_tool_calls`` says."""
    from .grammar import closed_objects
    calls, rules = [], []
    for i, fn in enumerate(fns):
        to = json.dumps(" to=functions." + fn["name"])
        args = json.dumps(closed_objects(fn.get("parameters") or {"type": "object"}))
        calls.append(f"call_{i}")
        rules.append(f"call_{i}: {to} channel constraint? \"<|message|>\" args_{i}\n"
                     f"    | channel {to} constraint? \"<|message|>\" args_{i}\n"
                     f"args_{i}: %json {args}\n")
    head = "start: call\n" if lazy else HARMONY_CALL_LARK
    return head + HARMONY_CALL_RULES + f"call: {' | '.join(calls)}\n" + "".join(rules)


def renders_parallel_calls(render) -> bool:
    """Whether a chat template shows a second tool call of one assistant message (llama.cpp's
    capability probe, which decides the default of ``parallel_tool_calls``); render(messages)
    is the template applied to normalized messages."""
    calls = [{"id": f"call0000{i}", "type": "function",
              "function": {"name": name, "arguments": {"arg": "value"}}}
             for i, name in enumerate(("probe_tool_first", "probe_tool_second"))]
    try:
        text = render([{"role": "user", "content": "User message"},
                       {"role": "assistant", "content": "", "tool_calls": calls}])
    except Exception:
        return False
    return "probe_tool_second" in text


def normalize_messages(messages: Sequence[Mapping[str, Any]], note: str | None = None,
                       template_text: str = "") -> list[dict[str, Any]]:
    """Messages as templates can render them: content given as a list of parts is joined into text
    (only "text" parts), null content becomes "" and role "tool" is kept.  Assistant tool calls are
    written into the content (Hermes style) for templates that do not render ``tool_calls``;
    ``note`` (the tools' description) joins the system message, or becomes one.  For a harmony
    (gpt-oss) template, as llama.cpp passes them: an earlier answer's ``reasoning_content`` is
    its ``thinking`` field, a call's JSON-string arguments an object, and a message with reasoning
    and calls has no content."""
    harmony = detect_format(template_text) == "harmony"
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str):
            raise ValueError(f"messages[{i}] must be an object with a \"role\", got {m!r}")
        msg = dict(m)
        msg["content"] = _text_content(msg.get("content"), i)
        if harmony:
            _harmony_fields(msg)
        if msg.get("tool_calls") and "tool_calls" not in template_text:
            calls = "\n".join(f"<tool_call>\n{json.dumps(_call_json(c), ensure_ascii=False)}\n</tool_call>"
                              for c in msg["tool_calls"])
            msg["content"] = (msg["content"] + "\n" if msg["content"] else "") + calls
        out.append(msg)
    if note:
        if out and out[0]["role"] == "system":
            out[0]["content"] = f"{out[0]['content']}\n\n{note}"
        else:
            out.insert(0, {"role": "system", "content": note})
    return out


def _harmony_fields(msg: dict[str, Any]) -> None:
    """One message's fields renamed and shaped as gpt-oss's template reads them."""
    if msg.get("tool_calls"):
        msg["tool_calls"] = [{**c, "function": {**c["function"], "arguments": _call_json(c)["arguments"]}}
                             if isinstance(c, Mapping) and isinstance(c.get("function"), Mapping) else c
                             for c in msg["tool_calls"]]
    if isinstance(msg.get("reasoning_content"), str):
        msg["thinking"] = msg["reasoning_content"]
        if msg.get("tool_calls"):
            del msg["content"]


def _call_json(call: Mapping[str, Any]) -> dict[str, Any]:
    fn = call.get("function", call)
    args = fn.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            pass
    return {"name": fn.get("name"), "arguments": args}


def _text_content(content: Any, i: int) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        texts = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, Mapping) and part.get("type") == "text":
                texts.append(str(part.get("text", "")))
            else:
                kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
                raise ValueError(f"messages[{i}].content: parts of type {kind!r} are not supported (only text)")
        return "".join(texts)
    raise ValueError(f"messages[{i}].content must be a string, a list of parts or null")


# ----------------------------------------------------------------------------- parsing

def openai_call(name: str, args: Any) -> dict[str, Any]:
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
            "function": {"name": name, "arguments": args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)}}


def _as_call(obj: Any, key: str = "arguments") -> dict[str, Any] | None:
    if isinstance(obj, Mapping) and isinstance(obj.get("name"), str):
        args = obj.get(key, obj.get("arguments", obj.get("parameters", {})))
        return openai_call(obj["name"], args if args is not None else {})
    return None


_DECODER = json.JSONDecoder()


def _json_values(text: str) -> list[Any]:
    """Consecutive JSON values in text (separated by whitespace or ';'); stops at the first non-JSON."""
    vals, i = [], 0
    while True:
        while i < len(text) and text[i] in " \t\r\n;":
            i += 1
        if i >= len(text):
            return vals
        try:
            v, i = _DECODER.raw_decode(text, i)
        except json.JSONDecodeError:
            return vals
        vals.append(v)


class ToolCallParser:
    """Splits a chat answer into its text content and its tool calls (OpenAI shape)."""

    def __init__(self, plan: ToolPlan):
        self.format = plan.format
        self.marker = MARKERS[plan.format]
        self.parallel = plan.parallel

    def parse(self, text: str) -> tuple[str, list[dict[str, Any]]]:
        """(content, calls); without ``parallel`` only the first call is kept."""
        content, calls = self._parse(text)
        return content, calls if self.parallel else calls[:1]

    def _parse(self, text: str) -> tuple[str, list[dict[str, Any]]]:
        if self.format == "hermes":
            calls, content = [], []
            pos = 0
            for m in re.finditer(r"<tool_call>(.*?)(?:</tool_call>|$)", text, re.S):
                vals = _json_values(m.group(1))
                found = [c for c in (_as_call(v) for v in vals) if c]
                if not found:
                    continue
                calls += found
                content.append(text[pos:m.start()])
                pos = m.end()
            content.append(text[pos:])
            return "".join(content).strip(), calls
        if self.format == "mistral":
            i = text.find(self.marker)
            if i < 0:
                return text, []
            vals = _json_values(text[i + len(self.marker):])
            items = vals[0] if vals and isinstance(vals[0], list) else vals
            calls = [c for c in (_as_call(v) for v in items) if c]
            return (text[:i].strip(), calls) if calls else (text, [])
        body = text.strip()
        if body.startswith(self.marker):
            body = body[len(self.marker):]
        if not body.lstrip().startswith(("{", "[")):
            return text, []
        vals = _json_values(body)
        items = [x for v in vals for x in (v if isinstance(v, list) else [v])]
        calls = [c for c in (_as_call(v, "parameters") for v in items) if c]
        return ("", calls) if calls else (text, [])

    def content_end(self, text: str) -> int:
        """How much of text is surely plain content (streamed as it comes): everything before a
        call's start, minus a tail that could be the beginning of one."""
        if self.format == "llama3":
            s = text.lstrip()
            return 0 if not s or s.startswith(("{", "[")) or self.marker.startswith(s[:len(self.marker)]) \
                else len(text)
        i = text.find(self.marker)
        return i if i >= 0 else settled_end(text, (self.marker,))


def tool_call_deltas(calls: Sequence[Mapping[str, Any]]) -> Iterator[dict[str, Any]]:
    """OpenAI's stream deltas of complete tool calls, one per call."""
    for i, call in enumerate(calls):
        yield {"tool_calls": [{"index": i, **call}]}
