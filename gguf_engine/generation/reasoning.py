"""Reasoning output: an answer split into ``reasoning_content``, ``content`` and tool calls, as
llama-server splits it.

A chat template's answer layout is recognised from its text (``ChatSyntax.detect``):
  * "harmony" (gpt-oss): the template writes ``<|channel|>``.  The answer is a run of messages
    ``<|channel|>NAME<|message|>BODY<|end|>``, each after ``<|start|>assistant`` (the prompt ends
    with the first one).  The ``analysis`` channel is reasoning, ``final`` and plain ``commentary``
    are content, and a header with ``to=functions.NAME`` (in the role or the channel part, with an
    optional ``<|constrain|>json``) is a call of tool NAME whose arguments are the body.  Calls to
    other recipients (built-in tools) are dropped.
  * "think" (Qwen3, DeepSeek-R1, QwQ...): the template writes ``<think>`` and ``</think>``; the text
    between them is reasoning.  When the prompt already ends inside ``<think>`` (thinking forced
    open), the answer starts in the reasoning.  An unclosed ``<think>`` at the end of the answer is
    all reasoning (llama.cpp's lenient parse).
  * "plain": every other template; the answer is content.

``reasoning_format`` (llama-server's ``--reasoning-format`` and per-request field): "none" leaves
the answer as it was in ``content`` (harmony: an analysis message keeps its markers there), "auto"
(the default), "deepseek" and "deepseek-legacy" extract the reasoning.  As in llama.cpp's parser,
"deepseek-legacy" extracts exactly as "deepseek" does.

Streaming (``ReplyStream``) re-parses the text received so far at every piece and sends what grew:
``reasoning_content`` and ``content`` deltas.  A tail that could be the start of a marker is held back
until the next piece settles it, so no marker text reaches ``content``; tool calls go out whole
once the answer has ended.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

REASONING_FORMATS = ("none", "auto", "deepseek", "deepseek-legacy")

THINK_START, THINK_END = "<think>", "</think>"
H_START, H_CHANNEL, H_MESSAGE, H_END = "<|start|>assistant", "<|channel|>", "<|message|>", "<|end|>"
H_CONSTRAIN = "<|constrain|>"
# control tokens of gpt-oss's vocabulary that the parser reads, so generation must render them
# (llama-server's "preserved tokens"); <|return|> and <|call|> end generation and are never text
HARMONY_PRESERVED = ("<|channel|>", "<|constrain|>", "<|message|>", "<|start|>", "<|end|>")


def check_reasoning_format(value: str) -> str:
    """value when it is one of REASONING_FORMATS, else ValueError naming the choices."""
    if value not in REASONING_FORMATS:
        raise ValueError(f"reasoning_format must be one of {', '.join(REASONING_FORMATS)}, got {value!r}")
    return value


@dataclass(frozen=True)
class ChatSyntax:
    """How one request's answer is laid out and read.

    kind: "harmony", "think" or "plain"; reasoning_format: see the module's note; prefix: the end
    of the rendered prompt that the answer continues (the part from an open ``<think>`` on, so a
    forced-open think is parsed as reasoning); tool_names: harmony functions whose calls are parsed
    (empty: none)."""

    kind: str = "plain"
    reasoning_format: str = "auto"
    prefix: str = ""
    tool_names: tuple[str, ...] = ()

    @staticmethod
    def detect(template_text: str, prompt: str = "", reasoning_format: str = "auto",
               tool_names: Sequence[str] = ()) -> "ChatSyntax":
        """The syntax of a template (prompt: the rendered conversation the answer continues)."""
        check_reasoning_format(reasoning_format)
        if H_CHANNEL in template_text:
            return ChatSyntax("harmony", reasoning_format, "", tuple(tool_names))
        if THINK_START in template_text and THINK_END in template_text:
            opened = prompt.rstrip().endswith(THINK_START)
            return ChatSyntax("think", reasoning_format, prompt[prompt.rfind(THINK_START):] if opened else "")
        return ChatSyntax("plain", reasoning_format)

    @property
    def extract(self) -> bool:
        return self.kind != "plain" and self.reasoning_format != "none"

    @property
    def markers(self) -> tuple[str, ...]:
        """Marker texts whose partial start at the end of a streamed text is held back."""
        if self.kind == "harmony":
            return (H_START, H_CHANNEL, H_MESSAGE, H_END, H_CONSTRAIN)
        return (THINK_START, THINK_END) if self.kind == "think" else ()

    @property
    def thinking_tags(self) -> tuple[str, tuple[str, ...]] | None:
        """(start tag, end tags) of a reasoning block, as llama.cpp's chat formats give them to
        its reasoning budget (None: no reasoning to limit)."""
        if self.kind == "harmony":
            return H_CHANNEL + "analysis" + H_MESSAGE, (H_END,)
        return (THINK_START, (THINK_END,)) if self.kind == "think" else None

    @property
    def preserved(self) -> tuple[str, ...]:
        """Control-token texts generation must write out for this syntax to be parsed."""
        return HARMONY_PRESERVED if self.kind == "harmony" else ()


@dataclass
class ParsedReply:
    """One answer split: the text content, the reasoning and the tool calls (OpenAI shape)."""
    content: str = ""
    reasoning_content: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)


def settled_end(text: str, markers: Sequence[str]) -> int:
    """How much of a streamed text is settled: all of it but a tail that could begin a marker."""
    hold = 0
    for m in markers:
        for n in range(min(len(m) - 1, len(text)), hold, -1):
            if text.endswith(m[:n]):
                hold = n
                break
    return len(text) - hold


def parse_reply(syntax: ChatSyntax, text: str) -> ParsedReply:
    """The answer text split as the syntax reads it (tool calls only for harmony; other formats'
    calls are read from the content by ``tool_calls.ToolCallParser``)."""
    if syntax.kind == "harmony":
        return _parse_harmony(syntax, text)
    if syntax.kind == "think":
        return _parse_think(syntax, text)
    return ParsedReply(text)


def _parse_think(syntax: ChatSyntax, text: str) -> ParsedReply:
    s = syntax.prefix + text
    if not syntax.extract:
        return ParsedReply(s)
    body = s.lstrip()
    if not body.startswith(THINK_START):
        return ParsedReply(s)
    body = body[len(THINK_START):]
    j = body.find(THINK_END)
    if j < 0:        # still thinking, or the answer ended inside the think (less a cut end tag)
        return ParsedReply("", body[:settled_end(body, (THINK_END,))].strip())
    return ParsedReply(body[j + len(THINK_END):].lstrip(), body[:j].strip())


@dataclass
class _Header:
    channel: str | None
    recipient: str | None


def _read_header(header: str) -> _Header:
    """A harmony message header: `` to=R`` and ``<|channel|>NAME`` in either order, a stray
    ``<|channel|>commentary to=assistant`` before the real channel, ``[ ]<|constrain|>TYPE`` after."""
    channel = recipient = None
    for part in header.split(H_CHANNEL):
        part = part.split(H_CONSTRAIN)[0]
        words = part.split()
        if not words:
            continue
        name, rest = (None, words) if words[0].startswith("to=") else (words[0], words[1:])
        to = next((w[3:] for w in rest if w.startswith("to=")), None)
        if to == "assistant":               # the stray "<|channel|>commentary to=assistant"
            continue
        if name is not None:
            channel = name
        if to is not None:
            recipient = to
    return _Header(channel, recipient)


def _parse_harmony(syntax: ChatSyntax, text: str) -> ParsedReply:
    out = ParsedReply()
    pos = 0
    while True:
        at_message = text.find(H_MESSAGE, pos)
        if at_message < 0:                  # a header still being written (or nothing more)
            break
        header_text = text[pos:at_message]
        head = _read_header(header_text)
        body_at = at_message + len(H_MESSAGE)
        end = text.find(H_END, body_at)
        body = text[body_at:end] if end >= 0 else text[body_at:settled_end(text, (H_END,))]
        if head.recipient is not None:
            name = head.recipient[len("functions."):] if head.recipient.startswith("functions.") else None
            if name in syntax.tool_names:
                out.tool_calls.append({"name": name, "arguments": body.strip()})
            break                           # a call ends the answer (unsolicited ones are dropped)
        if head.channel == "analysis":
            if syntax.extract:
                out.reasoning_content += body
            else:
                out.content += header_text + H_MESSAGE + body + (H_END if end >= 0 else "")
        elif head.channel in ("final", "commentary"):
            out.content += body
            if head.channel == "final":
                break
        if end < 0:
            break
        pos = end + len(H_END)
        if not text.startswith(H_START, pos):
            break
        pos += len(H_START)
    if not out.reasoning_content.strip():
        out.reasoning_content = ""
    return out


def reply_calls(parsed: ParsedReply, parallel: bool = True) -> list[dict[str, Any]]:
    """The harmony calls of a finished answer in OpenAI's shape (arguments that are not JSON are
    dropped with their call, as llama.cpp's schema-checked parse fails on them)."""
    from .tool_calls import openai_call
    calls = []
    for c in parsed.tool_calls:
        try:
            json.loads(c["arguments"])
        except json.JSONDecodeError:
            continue
        calls.append(openai_call(c["name"], c["arguments"]))
    return calls if parallel else calls[:1]


def message_fields(content: str, reasoning: str, calls: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The assistant message as llama-server writes it: ``reasoning_content`` only when there is
    some; with tool calls, empty content is null."""
    msg: dict[str, Any] = {"role": "assistant", "content": content if content or not calls else None}
    if reasoning:
        msg["reasoning_content"] = reasoning
    if calls:
        msg["tool_calls"] = list(calls)
    return msg


class ReplyParser:
    """An answer's syntax plus the tool-call parser of its template (None: calls not parsed)."""

    def __init__(self, syntax: ChatSyntax, tools=None):
        self.syntax, self.tools = syntax, tools

    def split(self, text: str) -> tuple[ParsedReply, list[dict[str, Any]]]:
        """(the parsed answer with its tool-call text removed from the content, the calls)."""
        parsed = parse_reply(self.syntax, text)
        if self.tools is None:
            return parsed, []
        if self.syntax.kind == "harmony":
            return parsed, reply_calls(parsed, self.tools.parallel)
        content, calls = self.tools.parse(parsed.content)
        if calls:
            parsed.content = content
        return parsed, calls

    def message(self, text: str) -> dict[str, Any]:
        """The assistant message of a whole answer."""
        parsed, calls = self.split(text)
        return message_fields(parsed.content, parsed.reasoning_content, calls)


class ReplyStream:
    """One streamed answer: ``push`` gives the deltas its new text settles, ``finish`` the last
    deltas and the tool calls (see the module's note)."""

    def __init__(self, parser: ReplyParser):
        self.parser = parser
        self.text = ""
        self.sent_reasoning = ""
        self.sent_content = ""

    def _deltas(self, parsed: ParsedReply, content_end: int) -> list[dict[str, str]]:
        out = []
        r = parsed.reasoning_content
        if r != self.sent_reasoning and r.startswith(self.sent_reasoning):
            out.append({"reasoning_content": r[len(self.sent_reasoning):]})
            self.sent_reasoning = r
        c = parsed.content[:content_end]
        if len(c) > len(self.sent_content) and c.startswith(self.sent_content):
            out.append({"content": c[len(self.sent_content):]})
            self.sent_content = c
        return out

    def push(self, text: str) -> list[dict[str, str]]:
        """Deltas ({"reasoning_content": ...} or {"content": ...}) after text arrived (maybe none)."""
        self.text += text
        syntax = self.parser.syntax
        if syntax.kind == "plain" and self.parser.tools is None:     # no parse: the text is the content
            self.sent_content = self.text
            return [{"content": text}] if text else []
        settled = self.text[:settled_end(self.text, syntax.markers)]
        parsed = parse_reply(syntax, settled)
        tools = self.parser.tools
        end = len(parsed.content)
        if tools is not None and syntax.kind != "harmony":
            end = tools.content_end(parsed.content)
        return self._deltas(parsed, end)

    def finish(self) -> tuple[list[dict[str, str]], list[dict[str, Any]]]:
        """(the deltas not sent yet, the tool calls) once the answer has ended."""
        parsed, calls = self.parser.split(self.text)
        if calls and self.parser.syntax.kind != "harmony":
            parsed.content = self.sent_content      # the text held back was the calls'
        return self._deltas(parsed, len(parsed.content)), calls


def chat_stream(chunks: Iterator, parser: ReplyParser, base: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """"chat.completion.chunk"s of one answer: reasoning and content deltas as text arrives; tool
    calls as ``delta.tool_calls`` once complete, with finish_reason "tool_calls"."""
    from .tool_calls import tool_call_deltas

    def chunk(delta, lp=None, finish=None):
        return {**base, "choices": [{"index": 0, "delta": delta, "logprobs": lp, "finish_reason": finish}]}

    yield chunk({"role": "assistant"})
    split, finish = ReplyStream(parser), None
    for c in chunks:
        lp = {"content": c.logprobs.chat_content()} if c.logprobs is not None else None
        deltas = split.push(c.text)
        if lp is not None and not deltas:
            deltas = [{"content": ""}]
        for k, d in enumerate(deltas):
            yield chunk(d, lp if k == 0 else None)
        finish = c.finish_reason or finish
    deltas, calls = split.finish()
    for d in deltas:
        yield chunk(d)
    if calls:
        for d in tool_call_deltas(calls):
            yield chunk(d)
        finish = "tool_calls"
    yield chunk({}, None, finish)
