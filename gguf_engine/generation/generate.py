"""Generation on a loaded model: prompt prefill with cache reuse, the token loop and text streaming.

``Engine`` keeps a mirror of the tokens whose keys/values sit in the model's KV cache.  A new
prompt is compared with it and only the part after the common prefix is evaluated (the cache is
truncated to that prefix first), so a chat follow-up that extends the previous turn costs only
its new tokens.

Generation stops at an end-of-generation token (unless ``ignore_eos``), after ``max_tokens``, at a
stop string (which is not emitted) or when the context is full; the reason is given as an
OpenAI-style ``finish_reason`` ("stop" or "length") plus a more precise ``stop_reason``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import numpy as np

from ..model.errors import ContextFullError
from ..timing import PerfStats, now_ms
from .guard import CacheGuard, StreamInvalidatedError  # noqa: F401 (re-exported)
from .sampling import Sampler
from .stops import StopMatcher


# The tokens to evaluate do not fit in the context window (the model layer's error, so callers
# catch one class whichever layer noticed).
ContextLimitError = ContextFullError


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass
class TokenEvent:
    """One step of streamed generation.

    token: the generated token (None for the closing event after an end-of-generation token or a
    full context); text: the text that may be shown now (stop-string prefixes are held back, so it
    can be empty); logits: the raw logits row (n_vocab,) the token was sampled from (only when
    asked for); finish_reason: None while generating, then "stop" or "length"; stop_reason: "eog",
    "stop_string", "max_tokens" or "context_full" on the last event.
    """

    token: int | None
    text: str
    logits: np.ndarray | None = None
    finish_reason: str | None = None
    stop_reason: str | None = None


class Engine:
    """Model + tokenizer + the record of what the KV cache holds.

    Every method that changes the cache holds ``guard.lock`` and takes a new ticket, so calls from
    several threads are serialised and a paused stream started earlier raises
    ``StreamInvalidatedError`` when it resumes (see ``guard``)."""

    def __init__(self, model, tokenizer, perf: PerfStats | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.perf = perf if perf is not None else PerfStats()
        self.tokens: list[int] = []   # tokens in the KV cache, in order (len == model.n_past)
        self.n_reused = 0             # prompt tokens taken from the cache by the last prefill
        self.n_evaluated = 0          # prompt tokens evaluated by the last prefill
        self.guard = CacheGuard()

    @property
    def n_ctx(self) -> int:
        return int(self.model.n_ctx)

    @property
    def n_vocab(self) -> int:
        return int(self.model.config.n_vocab)

    # ------------------------------------------------------------------ cache management
    def reset(self) -> None:
        with self.guard.lock:
            self.guard.claim()
            self._reset()

    def truncate(self, n: int) -> None:
        with self.guard.lock:
            self.guard.claim()
            self._truncate(n)

    def eval(self, tokens: Sequence[int], logits_all: bool = False) -> np.ndarray:
        """Evaluates tokens after what the cache holds; logits (n_vocab,) or (n_tokens, n_vocab) float32.
        The model checks the ids (ValueError) and the room left (``ContextLimitError``) before evaluating."""
        with self.guard.lock:
            self.guard.claim()
            return self._eval(tokens, logits_all)

    def prefill(self, tokens: Sequence[int], reuse: bool = True) -> np.ndarray:
        """Makes the cache hold exactly ``tokens`` and returns the logits (n_vocab,) after the last one.

        With ``reuse`` the longest common prefix with the cache is kept and only the rest is
        evaluated (at least the last token, whose logits are needed); without it the tokens are
        evaluated after whatever the cache holds.
        """
        with self.guard.lock:
            self.guard.claim()
            return self._prefill(tokens, reuse)

    # the unguarded steps (the caller holds the lock)
    def _reset(self) -> None:
        self.model.reset()
        self.tokens = []

    def _truncate(self, n: int) -> None:
        if n < len(self.tokens):
            self.model.truncate(n)
            del self.tokens[n:]

    def _eval(self, tokens: Sequence[int], logits_all: bool = False) -> np.ndarray:
        toks = [int(t) for t in tokens]
        n_past = len(self.tokens)
        t0 = now_ms()
        try:
            out = self.model.eval(toks, logits_all=logits_all)
        except BaseException:
            # keep the cache and our record consistent when interrupted (Ctrl-C) or on error
            try:
                self.model.truncate(n_past)
            except Exception:  # pragma: no cover - the model could not roll back; start afresh
                self._reset()
            raise
        self.perf.add_eval(len(toks), now_ms() - t0)
        self.tokens.extend(toks)
        return np.asarray(out, dtype=np.float32)

    def _prefill(self, tokens: Sequence[int], reuse: bool = True) -> np.ndarray:
        toks = [int(t) for t in tokens]
        if not toks:
            raise ValueError("the prompt is empty: nothing to generate from (add a BOS token or some text)")
        if reuse:
            if len(toks) > self.n_ctx:
                raise ContextLimitError(
                    f"Requested tokens ({len(toks)}) exceed context window of {self.n_ctx}")
            n = common_prefix_len(self.tokens, toks)
            if n == len(toks):
                n -= 1  # the last token must be evaluated again to get its logits
            self._truncate(n)
        else:
            n = 0
        self.n_reused = n
        self.n_evaluated = len(toks) - n
        return self._eval(toks[n:])

    # ------------------------------------------------------------------ token loop
    def token_loop(self, prompt: Sequence[int], sampler: Sampler, reuse: bool = True,
                   ) -> Iterator[tuple[int, np.ndarray]]:
        """Yields (token, logits it was sampled from) until the consumer stops or the context is full.

        Each yielded token is accepted by the sampler; it is evaluated into the cache only when
        the consumer asks for the next one.  When the cache is full the loop ends after yielding,
        and ``self.context_full`` is set.  Each step holds the guard's lock; a step resumed after
        another call used the cache raises ``StreamInvalidatedError``.
        """
        guard = self.guard
        with guard.lock:
            ticket = guard.claim()
            self.context_full = False
            logits = self._prefill(prompt, reuse=reuse)
            sampler.accept_many(prompt)
            tok = self._sample(sampler, logits)
        while True:
            yield tok, logits
            with guard.resume(ticket):
                if len(self.tokens) + 1 > self.n_ctx:
                    self.context_full = True
                    return
                logits = self._eval([tok])
                tok = self._sample(sampler, logits)

    def _sample(self, sampler: Sampler, logits: np.ndarray) -> int:
        t0 = now_ms()
        tok = sampler.sample(logits)
        self.perf.add_sample(now_ms() - t0)
        sampler.accept(tok)
        return tok

    def stream(self, prompt: Sequence[int], sampler: Sampler, max_tokens: int | None = None,
               stop: str | Iterable[str] | None = None, ignore_eos: bool = False,
               want_logits: bool = False, reuse: bool = True) -> Iterator[TokenEvent]:
        """Streams text events for a completion of ``prompt``; the last event has a finish_reason."""
        tok_api = self.tokenizer
        eog = {int(t) for t in (getattr(tok_api, "eog_ids", None) or [])}
        eos = getattr(tok_api, "eos_id", None)
        if eos is not None and eos >= 0:
            eog.add(int(eos))
        if ignore_eos:
            for t in eog:  # as llama.cpp: end-of-generation tokens can no longer be sampled
                sampler.add_bias(t, float("-inf"))
        decoder = tok_api.stream_decoder()
        matcher = StopMatcher(stop)
        limit = max_tokens if max_tokens is not None and max_tokens > 0 else None

        def tail() -> str:
            return matcher.push(decoder.flush()) + matcher.flush()

        n = 0
        for tok, logits in self.token_loop(prompt, sampler, reuse=reuse):
            row = np.array(logits, copy=True) if want_logits else None
            if tok in eog and not ignore_eos:
                yield TokenEvent(None, tail(), row, "stop", "eog")
                return
            n += 1
            text = matcher.push(decoder.push(tok))
            if matcher.stopped:
                yield TokenEvent(tok, text, row, "stop", "stop_string")
                return
            if limit is not None and n >= limit:
                text += tail()
                reason = "stop_string" if matcher.stopped else "max_tokens"
                yield TokenEvent(tok, text, row, "stop" if matcher.stopped else "length", reason)
                return
            yield TokenEvent(tok, text, row)
        # the context filled up
        text = tail()
        yield TokenEvent(None, text, None, "stop" if matcher.stopped else "length",
                         "stop_string" if matcher.stopped else "context_full")
