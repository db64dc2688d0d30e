"""Request bodies of the server's routes, as pydantic models (OpenAI's fields plus llama-server's
sampling extras).  Out-of-range values and wrong types are rejected by validation (HTTP 400);
fields the server does not implement yet are refused by name (``refused_field``)."""
from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

# fields accepted by OpenAI or llama-server that this server refuses rather than ignores
REFUSED_FIELDS = ("response_format", "grammar", "json_schema", "tools", "tool_choice", "functions",
                  "function_call", "suffix", "n_probs")


class StreamOptions(BaseModel):
    include_usage: bool = False


class SamplingRequest(BaseModel):
    """The fields completions and chat completions share (defaults: llama-server's)."""
    model_config = ConfigDict(extra="allow")     # unknown extras (e.g. "user" metadata) pass

    model: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=-1)
    max_completion_tokens: int | None = Field(None, ge=-1)
    n_predict: int | None = Field(None, ge=-1)   # llama-server's name for max_tokens
    temperature: float = Field(0.8, ge=0.0)
    top_p: float = Field(0.95, ge=0.0, le=1.0)
    top_k: int = Field(40, ge=0)
    min_p: float = Field(0.05, ge=0.0, le=1.0)
    repeat_penalty: float = Field(1.0, gt=0.0)
    repeat_last_n: int = Field(64, ge=-1)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    seed: int | None = Field(None, ge=-1, le=0xFFFFFFFF)
    stop: str | list[str] | None = None
    logit_bias: dict[str, float] | None = None
    n: int = Field(1, ge=1, le=16)
    user: str | None = None
    ignore_eos: bool = False
    # refused for now (a 400 naming the field)
    response_format: Any = None
    grammar: Any = None
    json_schema: Any = None
    tools: Any = None
    tool_choice: Any = None
    functions: Any = None
    function_call: Any = None
    suffix: Any = None
    n_probs: Any = None

    def refused_field(self) -> str | None:
        """The first field given that the server does not implement (None: none)."""
        for name in REFUSED_FIELDS:
            v = getattr(self, name)
            if v is None or v == "" or v == [] or (name == "n_probs" and v == 0):
                continue
            if name == "response_format" and isinstance(v, dict) and v.get("type") == "text":
                continue
            if name == "tool_choice" and v == "none":
                continue
            return name
        return None

    def token_limit(self) -> int | None:
        """max_completion_tokens, else max_tokens, else n_predict; None or -1: no limit."""
        for v in (self.max_completion_tokens, self.max_tokens, self.n_predict):
            if v is not None:
                return None if v < 0 else v
        return None


class CompletionRequest(SamplingRequest):
    prompt: Union[str, list[int], list[str]]
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: Union[str, list[dict[str, Any]], None] = None


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    input: Union[str, list[str]]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = None


class TokenizeRequest(BaseModel):
    content: str
    add_special: bool = False
    with_pieces: bool = False


class DetokenizeRequest(BaseModel):
    tokens: list[int]


class ApplyTemplateRequest(BaseModel):
    messages: list[ChatMessage] = Field(min_length=1)


def message_dicts(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """Chat messages as the template wants them: content parts of type "text" joined into one string."""
    out = []
    for m in messages:
        d = m.model_dump(exclude_none=True)
        c = d.get("content")
        if isinstance(c, list):
            texts = []
            for part in c:
                if part.get("type") != "text":
                    raise ValueError(f"message content of type {part.get('type')!r} is not supported (only text)")
                texts.append(str(part.get("text", "")))
            d["content"] = "".join(texts)
        elif c is None:
            d["content"] = ""
        out.append(d)
    return out
