"""The shapes completions are assembled from: streamed chunks and llama-cpp-python-style logprobs."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class CompletionLogprobs:
    """Per-token log-probabilities in OpenAI's completion shape (parallel lists).

    tokens: each token's text; text_offset: where it starts in the returned text (prompt
    included); token_logprobs: its log-probability (None for the first prompt token with echo);
    top_logprobs: the most likely tokens' texts -> log-probabilities at that position."""

    tokens: list[str] = field(default_factory=list)
    text_offset: list[int] = field(default_factory=list)
    token_logprobs: list[float | None] = field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = field(default_factory=list)

    def extend(self, other: "CompletionLogprobs") -> "CompletionLogprobs":
        self.tokens += other.tokens
        self.text_offset += other.text_offset
        self.token_logprobs += other.token_logprobs
        self.top_logprobs += other.top_logprobs
        return self

    def as_dict(self) -> dict[str, list]:
        return {"tokens": list(self.tokens), "text_offset": list(self.text_offset),
                "token_logprobs": list(self.token_logprobs), "top_logprobs": list(self.top_logprobs)}

    def chat_content(self) -> list[dict[str, Any]]:
        """The same entries in the chat shape (``choices[i].logprobs.content``)."""
        return [{"token": t, "logprob": lp, "bytes": list(t.encode("utf-8")),
                 "top_logprobs": [{"token": k, "logprob": v, "bytes": list(k.encode("utf-8"))}
                                  for k, v in (top or {}).items()]}
                for t, lp, top in zip(self.tokens, self.token_logprobs, self.top_logprobs)]


@dataclass
class Chunk:
    """One emitted piece of a completion: its text, its tokens' logprobs (when asked for), the
    finish reason on the last one, and the prompt / completion token counts so far."""

    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: str | None
    n_prompt: int
    n_completion: int
