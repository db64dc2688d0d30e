"""Generation on a loaded model: prompt prefill with cache reuse, the token loop and text streaming.

``Engine`` keeps a mirror of the tokens whose keys/values sit in the model's KV cache.  A new
prompt is compared with it and only the part after the common prefix is evaluated (the cache is
truncated to that prefix first), so a chat follow-up that extends the previous turn costs only
its new tokens.

Generation stops at an end-of-generation token (unless ``ignore_eos``), after ``max_tokens``, at a
stop string (which is not emitted), when a stopping criterion says so, when a grammar is complete
or when the context is full; the reason is given as an OpenAI-style ``finish_reason`` ("stop" or
"length") plus a more precise ``stop_reason``.  With a ``ShiftPolicy`` (``Engine.context_shift``)
a full context is shifted instead (``model.context_shift``) and generation goes on.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from ..model.context_shift import ShiftPolicy, keep_count, plan_shift
from ..model.errors import ContextFullError
from ..model.kv_cache import stored
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
    "stop_string", "grammar", "stopping_criteria", "max_tokens" or "context_full" on the last event.
    """

    token: int | None
    text: str
    logits: np.ndarray | None = None
    finish_reason: str | None = None
    stop_reason: str | None = None


LogitsProcessor = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (input_ids, scores) -> scores
StoppingCriterion = Callable[[np.ndarray, np.ndarray], bool]       # (input_ids, logits) -> stop?


def as_callables(value: Callable | Sequence[Callable] | None) -> tuple[Callable, ...]:
    """One callable (llama-cpp-python's LogitsProcessorList is one), a list of them, or None."""
    if value is None:
        return ()
    if callable(value):
        return (value,)
    return tuple(value)


@dataclass
class Steering:
    """What steers a generation besides the sampler.

    logits_processors: called in order as ``f(input_ids, scores) -> scores`` on each row before
    any other stage (input_ids: int32 tokens in the context; scores: a float32 copy (n_vocab,)).
    stopping_criteria: ``f(input_ids, logits) -> bool`` after each generated token (input_ids
    include it; logits: the row it was sampled from); any true stops with finish_reason "stop".
    constraint: a grammar matcher (``generation.grammar.Constraint``): it masks the tokens that
    would break the grammar before the sampler sees the row, and ends generation when complete.
    budget: a thinking budget (``generation.reasoning_budget.ReasoningBudget``): while it forces
    the end of the reasoning, only the forced token is left (after the processors, before the grammar,
    as llama.cpp applies its budget sampler first).
    """

    logits_processors: tuple[LogitsProcessor, ...] = ()
    stopping_criteria: tuple[StoppingCriterion, ...] = ()
    constraint: Any = None
    budget: Any = None

    def prepare(self, input_ids: Sequence[int], logits: np.ndarray) -> np.ndarray:
        """The row the sampler sees: processed, limited by the budget, then masked by the grammar."""
        if not self.logits_processors and self.constraint is None and self.budget is None:
            return logits
        row = np.array(logits, dtype=np.float32, copy=True).reshape(-1)  # (n_vocab,)
        if self.logits_processors:
            ids = np.asarray(input_ids, dtype=np.intc)
            for proc in self.logits_processors:
                row = np.asarray(proc(ids, row), dtype=np.float32).reshape(-1)
        if self.budget is not None:
            row = self.budget.apply(row)
        if self.constraint is not None:
            self.constraint.mask(row)
        return row

    def accept(self, token: int) -> None:
        if self.budget is not None:
            self.budget.accept(token)
        if self.constraint is not None:
            self.constraint.accept(token)

    def should_stop(self, input_ids: Sequence[int], token: int, logits: np.ndarray) -> bool:
        if not self.stopping_criteria:
            return False
        ids = np.asarray([*input_ids, token], dtype=np.intc)
        return any(bool(f(ids, logits)) for f in self.stopping_criteria)

    @property
    def grammar_done(self) -> bool:
        return self.constraint is not None and self.constraint.done


NO_STEERING = Steering()


@dataclass
class LlamaState:
    """A saved generation state: the tokens in the KV cache, each layer's keys and values for
    them as host arrays, as the cache stores them ((n_tokens, n_head_kv, head_dim) floats, or the
    rows' bytes for a block type), and the latest logits."""

    tokens: list[int]
    k: list[np.ndarray]
    v: list[np.ndarray]
    last_logits: np.ndarray | None

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self.k) + sum(a.nbytes for a in self.v))


def _host(a) -> np.ndarray:
    """A host (numpy) copy of an array that may live on a GPU."""
    return np.array(a.get() if hasattr(a, "get") else a, copy=True)


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
        self.last_logits: np.ndarray | None = None  # the latest evaluation's logits
        self.context_shift: ShiftPolicy | None = None  # None: a full context ends generation
        self.n_shifts = 0             # context shifts done since the cache last started afresh
        self._keep = 0                # tokens a shift keeps, set by the prompt that began the sequence

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

    def save_state(self) -> LlamaState:
        with self.guard.lock:
            cache = self.model.kv_cache
            n = len(self.tokens)
            ks, vs = [], []
            for il in range(int(self.model.config.n_layer)):
                k, v = cache.layer(il)  # (n_ctx, n_head_kv, head_dim or the bytes of a block-type row)
                ks.append(_host(stored(k)[:n]))
                vs.append(_host(stored(v)[:n]))
            last = None if self.last_logits is None else self.last_logits.copy()
            return LlamaState(list(self.tokens), ks, vs, last)

    def load_state(self, state: LlamaState) -> None:
        cache = self.model.kv_cache
        n_layer = int(self.model.config.n_layer)
        if len(state.k) != n_layer or state.n_tokens > self.n_ctx:
            raise ValueError(f"the state ({len(state.k)} layers, {state.n_tokens} tokens) does not fit this "
                             f"model ({n_layer} layers, n_ctx={self.n_ctx})")
        for il in range(n_layer):
            k, v = (stored(a) for a in cache.layer(il))
            for name, a, b in (("keys", state.k[il], k), ("values", state.v[il], v)):
                if tuple(a.shape[1:]) != tuple(b.shape[1:]) or (a.dtype == np.uint8) != (b.dtype == np.uint8):
                    raise ValueError(f"the state's layer {il} has {name} of shape {a.shape[1:]} ({a.dtype}), "
                                     f"this model's cache {tuple(b.shape[1:])} ({b.dtype}): a state loads into "
                                     f"a cache of the same types")
        with self.guard.lock:
            self.guard.claim()
            self._reset()
            for il in range(n_layer):
                k, v = (stored(a) for a in cache.layer(il))
                k[:state.n_tokens] = state.k[il]                 # the rows as they were stored
                v[:state.n_tokens] = state.v[il]
            cache.n_past = state.n_tokens
            self.tokens = list(state.tokens)
            self.last_logits = None if state.last_logits is None else state.last_logits.copy()

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
        self.last_logits = None
        self.n_shifts = 0

    def _shift(self) -> bool:
        """One context shift of the cache (llama.cpp's: keep the head, drop half of the rest, move
        the later keys down re-rotated); False when not allowed or nothing can be dropped."""
        policy = self.context_shift
        if policy is None:
            return False
        plan = plan_shift(len(self.tokens), self._keep, self.n_ctx, policy.n_discard)
        if plan is None:
            return False
        self.model.shift(plan)
        del self.tokens[plan.n_keep:plan.n_keep + plan.n_discard]
        self.n_shifts += 1
        return True

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
        self.last_logits = np.asarray(out, dtype=np.float32)
        return self.last_logits

    def _prefill(self, tokens: Sequence[int], reuse: bool = True) -> np.ndarray:
        toks = [int(t) for t in tokens]
        if not toks:
            raise ValueError("the prompt is empty: nothing to generate from (add a BOS token or some text)")
        if reuse:
            n = common_prefix_len(self.tokens, toks)
            if n == len(toks):
                n -= 1  # the last token must be evaluated again to get its logits
            if len(toks) > self.n_ctx and not (self.context_shift is not None and n == len(self.tokens)):
                raise ContextLimitError(
                    f"Requested tokens ({len(toks)}) exceed context window of {self.n_ctx}")
            self._truncate(n)
        else:
            n = 0
        if self.context_shift is not None:
            if n < self._keep or not self.tokens:   # a new sequence: its prompt sets what a shift keeps
                bos = getattr(self.tokenizer, "bos_id", None)
                self._keep = keep_count(self.context_shift.n_keep, len(toks), bool(toks) and toks[0] == bos)
            # tokens that extend the (shifted) cache past the context: shift the history to make room
            while len(self.tokens) + len(toks) - n > self.n_ctx:
                if not self._shift():
                    raise ContextLimitError(f"Requested tokens ({len(toks) - n} new after {len(self.tokens)} "
                                            f"kept) exceed context window of {self.n_ctx}")
        self.n_reused = n
        self.n_evaluated = len(toks) - n
        return self._eval(toks[n:])

    # ------------------------------------------------------------------ token loop
    def token_loop(self, prompt: Sequence[int], sampler: Sampler, reuse: bool = True,
                   steering: Steering = NO_STEERING) -> Iterator[tuple[int, np.ndarray]]:
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
            tok = self._sample(sampler, logits, steering)
        while True:
            yield tok, logits
            with guard.resume(ticket):
                if len(self.tokens) + 1 > self.n_ctx and not self._shift():
                    self.context_full = True
                    return
                logits = self._eval([tok])
                tok = self._sample(sampler, logits, steering)

    def _sample(self, sampler: Sampler, logits: np.ndarray, steering: Steering = NO_STEERING) -> int:
        """Samples from the steered row (processors, grammar mask) and advances the grammar."""
        t0 = now_ms()
        tok = sampler.sample(steering.prepare(self.tokens, logits))
        steering.accept(tok)
        self.perf.add_sample(now_ms() - t0)
        sampler.accept(tok)
        return tok

    def stream(self, prompt: Sequence[int], sampler: Sampler, max_tokens: int | None = None,
               stop: str | Iterable[str] | None = None, ignore_eos: bool = False,
               want_logits: bool = False, reuse: bool = True,
               steering: Steering = NO_STEERING, special: bool = False,
               shown: frozenset[int] = frozenset()) -> Iterator[TokenEvent]:
        """Streams text events for a completion of ``prompt``; the last event has a finish_reason.
        special: render control tokens in the text (they are otherwise invisible); shown: the
        control tokens rendered anyway (a chat syntax's markers)."""
        tok_api = self.tokenizer
        eog = {int(t) for t in (getattr(tok_api, "eog_ids", None) or [])}
        eos = getattr(tok_api, "eos_id", None)
        if eos is not None and eos >= 0:
            eog.add(int(eos))
        if ignore_eos:
            for t in eog:  # as llama.cpp: end-of-generation tokens can no longer be sampled
                sampler.add_bias(t, float("-inf"))
        decoder = tok_api.stream_decoder(special=special, shown=shown)
        matcher = StopMatcher(stop)
        limit = max_tokens if max_tokens is not None and max_tokens > 0 else None

        def tail() -> str:
            return matcher.push(decoder.flush()) + matcher.flush()

        n = 0
        for tok, logits in self.token_loop(prompt, sampler, reuse=reuse, steering=steering):
            row = np.array(logits, copy=True) if want_logits else None
            if tok in eog and not ignore_eos:
                yield TokenEvent(None, tail(), row, "stop", "eog")
                return
            n += 1
            text = matcher.push(decoder.push(tok))
            if matcher.stopped:
                yield TokenEvent(tok, text, row, "stop", "stop_string")
                return
            for done, reason in ((steering.grammar_done, "grammar"),
                                 (steering.should_stop(self.tokens, tok, logits), "stopping_criteria")):
                if done:
                    text += tail()
                    yield TokenEvent(tok, text, row, "stop", "stop_string" if matcher.stopped else reason)
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
