"""Request bodies of the server's routes, as pydantic models (OpenAI's fields plus llama-server's
sampling extras).  Out-of-range values and wrong types are rejected by validation (HTTP 400);
fields the server does not implement yet are refused by name (``refused_field``).  Structured
output comes as OpenAI's ``response_format`` or llama-server's ``grammar`` (GBNF) and
``json_schema`` fields (``output_grammar``); tools as ``tools``/``tool_choice`` (or the older
``functions``/``function_call``) and ``parallel_tool_calls``; reasoning output as llama-server's
``reasoning_format`` and ``chat_template_kwargs``; a thinking budget as llama-server's
``reasoning_budget_tokens`` and ``reasoning_budget_message``, and ``reasoning_control`` arming a
completion for ``POST /v1/chat/completions/control`` (``ControlRequest``)."""
from __future__ import annotations

from typing import Any, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from ..generation.reasoning_budget import BudgetSettings

# fields accepted by OpenAI or llama-server that this server refuses rather than ignores
REFUSED_FIELDS = ("suffix", "n_probs")


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
    n_keep: int | None = Field(None, ge=-1)       # context shift: prompt tokens kept (None: --keep)
    n_discard: int = Field(0, ge=0)               # context shift: tokens dropped (0: half)
    # structured output
    response_format: dict[str, Any] | None = None
    grammar: str | None = None                    # GBNF text (llama-server)
    json_schema: dict[str, Any] | None = None     # a JSON schema (llama-server)
    # refused for now (a 400 naming the field)
    suffix: Any = None
    n_probs: Any = None

    def refused_field(self) -> str | None:
        """The first field given that the server does not implement (None: none)."""
        for name in REFUSED_FIELDS:
            v = getattr(self, name)
            if v is None or v == "" or v == [] or (name == "n_probs" and v == 0):
                continue
            return name
        return None

    def output_grammar(self):
        """The ``Grammar`` the output must follow, as llama-server reads the fields: ``grammar``
        (GBNF) or ``json_schema`` (not both; an empty schema is any object), or a
        ``response_format`` of type json_object (any object, or its "schema") or json_schema;
        None when none is given.  ValueError (GrammarError) for a bad combination or definition."""
        from ..generation.grammar import Grammar, response_format_grammar
        if self.grammar and self.json_schema is not None:
            raise ValueError("Cannot use both json_schema and grammar")
        fmt = response_format_grammar(self.response_format) if self.response_format is not None else None
        given = [g for g in (fmt, self.grammar or None, self.json_schema) if g is not None]
        if len(given) > 1:
            raise ValueError("give only one of response_format, grammar and json_schema")
        if self.grammar:
            return Grammar.from_gbnf(self.grammar, origin="grammar")
        if self.json_schema is not None:
            return Grammar.from_json_schema(self.json_schema or {"type": "object"}, origin="json_schema")
        return fmt

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


class TemplateVars(BaseModel):
    """The fields that set chat template variables, as llama-server reads them."""
    chat_template_kwargs: dict[str, Any] | None = None   # extra variables for the chat template
    reasoning_effort: str | None = None           # OpenAI's: the template's reasoning_effort ("none": thinking off)

    def template_kwargs(self, defaults: dict[str, Any]) -> dict[str, Any]:
        """The template's extra variables: the server's defaults, then ``chat_template_kwargs``, then
        ``reasoning_effort``; ValueError for an ``enable_thinking`` that is not a boolean."""
        out = {**defaults, **(self.chat_template_kwargs or {})}
        if "enable_thinking" in out and not isinstance(out["enable_thinking"], bool):
            raise ValueError("invalid type for \"enable_thinking\" (expected boolean, got "
                             f"{type(out['enable_thinking']).__name__})")
        if self.reasoning_effort == "none":
            out["enable_thinking"] = False
            out.pop("reasoning_effort", None)
        elif self.reasoning_effort:
            out["reasoning_effort"] = self.reasoning_effort
        return out


class BudgetFields(BaseModel):
    """llama-server's per-request thinking budget (``generation.reasoning_budget``)."""
    reasoning_budget_tokens: int | None = Field(None, ge=-1, le=2**31 - 1)   # -1: the server's --reasoning-budget
    thinking_budget_tokens: int | None = Field(None, ge=-1, le=2**31 - 1)    # llama-server's other name for it
    reasoning_budget_message: str | None = None    # None: the server's --reasoning-budget-message
    reasoning_control: StrictBool = False          # the reasoning may be ended through the control route

    def reasoning_budget(self, default: BudgetSettings) -> BudgetSettings:
        """The request's budget: its tokens unless absent or -1, its message unless absent, else the
        server's; armed for control when the request asks."""
        tokens = self.reasoning_budget_tokens if self.reasoning_budget_tokens is not None \
            else self.thinking_budget_tokens
        return BudgetSettings(default.tokens if tokens is None or tokens == -1 else tokens,
                              default.message if self.reasoning_budget_message is None
                              else self.reasoning_budget_message, self.reasoning_control)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: Union[str, list[dict[str, Any]], None] = None


class ChatCompletionRequest(SamplingRequest, TemplateVars, BudgetFields):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[dict[str, Any]] | None = None
    tool_choice: Union[str, dict[str, Any], None] = None
    functions: list[dict[str, Any]] | None = None
    function_call: Union[str, dict[str, Any], None] = None
    parallel_tool_calls: bool | None = None     # None: whether the chat template shows several calls
    reasoning_format: Literal["none", "auto", "deepseek", "deepseek-legacy"] | None = None   # None: --reasoning-format


class ControlRequest(BaseModel):
    """llama-server's ``POST /v1/chat/completions/control`` body: the ``id`` of a running chat
    completion (as streamed back) and the ``action`` (only ``reasoning_end``).  Both are read as
    llama-server reads them: a missing or non-string value counts as absent (``problem``);
    ``model`` routes in llama-server's router mode and is ignored here, as in its single-model mode."""
    model_config = ConfigDict(extra="allow")
    id: Any = None
    action: Any = None
    model: Any = None

    ACTIONS: ClassVar[tuple[str, ...]] = ("reasoning_end",)

    def problem(self) -> str | None:
        """llama-server's message for a body it refuses with 400 (None: the body is fine)."""
        if not isinstance(self.id, str) or not self.id:
            return "missing completion id"
        if self.action not in self.ACTIONS:
            return "unknown control action"
        return None


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


class ApplyTemplateRequest(TemplateVars):
    messages: list[ChatMessage] = Field(min_length=1)


def message_dicts(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """Chat messages as plain dicts (fields left out when null), as the chat template renders them
    once normalized (``generation.tool_calls.normalize_messages``)."""
    return [m.model_dump(exclude_none=True) for m in messages]
