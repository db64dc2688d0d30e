"""Continuous batching over parallel slots, on one engine thread.

Each slot is one region of a ``SlotKVCache`` with the tokens it holds.  Every step the engine
thread builds one ``TokenBatch``: the next token of every generating slot first, then chunks of
the prompts still being read, up to ``n_batch`` tokens in all, and evaluates it in one forward
pass (each weight read once for all of them).  A long prompt is thus read over several steps
while the other slots keep generating.

A request goes to the free slot whose cached tokens share the longest prefix with its prompt;
only the rest of the prompt is evaluated.  A slot that fills its context ends its request with
"length", or, with a ``ShiftPolicy``, is shifted as llama-server shifts it (``model.context_shift``:
the head kept, half of the rest dropped, later keys re-rotated) and goes on generating.  Requests
beyond the slots wait in a bounded queue (``QueueFullError`` past it).  A cancelled request (a client that went away) leaves its slot at
the next step.  Results go back through ``Request.emit``, called on the engine thread: the
HTTP layer hands them to its event loop.  ``control`` acts on a running completion between two
passes (llama-server's control tasks: ending its reasoning at the next token).

All model work (loading, the batches, embeddings, anything passed to ``call``) runs on the
engine thread, which owns the model; other threads only queue work and read counters.
"""
from __future__ import annotations

import collections
import concurrent.futures
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..generation.generate import common_prefix_len
from ..generation.sampling import Sampler, SamplingParams
from ..generation.stops import StopMatcher
from ..model.batch import TokenBatch
from ..model.context_shift import ShiftPolicy, keep_count, plan_shift


class QueueFullError(RuntimeError):
    """Every slot is busy and the waiting queue is at its bound."""


class PromptTooLongError(ValueError):
    """The prompt (plus one generated token) does not fit a slot's context."""


@dataclass
class TokenLogprob:
    """The chosen token's log-probability and the n best alternatives (token id, logprob)."""
    token: int
    logprob: float
    top: list[tuple[int, float]]


@dataclass
class Output:
    """One step of a request's stream, passed to ``Request.emit``.

    text: what may be shown now (stop-string prefixes are held back); token/logprob: the
    sampled token (None on a closing event without one); finish_reason: None while generating,
    else "stop" or "length" (or "cancelled" when the server shut down); error: a message when the
    request failed (then finish_reason is "error").  A request with a grammar stops when the
    grammar is complete."""
    text: str
    token: int | None = None
    logprob: TokenLogprob | None = None
    finish_reason: str | None = None
    n_prompt: int = 0
    n_cached: int = 0
    n_generated: int = 0
    error: str | None = None


@dataclass
class Request:
    """One completion: prompt tokens, sampling settings and where its outputs go."""
    prompt: list[int]
    params: SamplingParams
    emit: Callable[[Output], None]
    max_tokens: int | None = None        # None or <= 0: until end of generation or a full slot
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False
    n_logprobs: int | None = None        # None: no logprobs; k: the chosen token's and the k best
    constraint: Any = None               # this request's own grammar matcher (generation.grammar.Constraint)
    n_keep: int | None = None            # context shift: tokens kept (None: the server's --keep)
    n_discard: int = 0                   # context shift: tokens dropped (0: half of the rest)
    shown: frozenset = frozenset()       # control tokens written into the text (a chat syntax's markers)
    budget: Any = None                   # this request's thinking budget (generation.reasoning_budget)
    cmpl_id: str = ""                    # the completion id the client sees (control requests name it)
    reasoning_control: bool = False      # armed for control: its budget may be forced to end the reasoning
    cancelled: bool = False
    id: int = 0
    t_submit: float = 0.0

    def cancel(self) -> None:
        """Ask the engine to drop this request (it frees its slot at the next step)."""
        self.cancelled = True


@dataclass
class ControlResult:
    """The answer to a control request, as llama-server gives it: success, and why not."""
    success: bool
    message: str = ""

    def to_json(self) -> dict:
        return {"success": self.success, **({"message": self.message} if self.message else {})}


def log_softmax(row: np.ndarray) -> np.ndarray:
    """log(softmax(row)) in float64 for one row of logits (n_vocab,)."""
    row = row.astype(np.float64)
    m = row.max()
    return row - (m + np.log(np.exp(row - m).sum()))


class _Slot:
    """One KV region: the tokens it holds and the request (if any) using it."""

    def __init__(self, sid: int, n_ctx: int):
        self.id, self.n_ctx = sid, n_ctx
        self.tokens: list[int] = []          # tokens whose keys/values the region holds, in order
        self.req: Request | None = None
        self.last_used = 0.0
        self.n_cached = 0                    # prompt tokens the last request took from the cache
        self.n_prompt_done = 0               # prompt tokens of the current request evaluated
        self.n_generated = 0

    def start(self, req: Request, tokenizer, eog: set[int]) -> None:
        n = common_prefix_len(self.tokens, req.prompt)
        if n == len(req.prompt):
            n -= 1                           # the last prompt token is evaluated again for its logits
        del self.tokens[n:]
        self.req, self.n_cached, self.n_generated = req, n, 0
        self.n_prompt_done = n               # prompt tokens in the cache (a shift may drop some later)
        self.sampler = Sampler(req.params, n_ctx=self.n_ctx)
        self.sampler.accept_many(req.prompt)
        if req.ignore_eos:
            for t in eog:                   # as llama.cpp: end-of-generation tokens can no longer be sampled
                self.sampler.add_bias(t, float("-inf"))
        self.decoder = tokenizer.stream_decoder(shown=req.shown)
        self.matcher = StopMatcher(req.stop)
        self.next_token: int | None = None  # sampled, not yet evaluated
        self.last_used = time.monotonic()

    @property
    def busy(self) -> bool:
        return self.req is not None

    @property
    def reading_prompt(self) -> bool:
        return self.req is not None and self.n_prompt_done < len(self.req.prompt)

    def release(self) -> None:
        self.req = None
        self.last_used = time.monotonic()


@dataclass
class Metrics:
    """Counters in llama-server's terms (exported by /metrics)."""
    n_prompt_tokens: int = 0             # prompt tokens evaluated (cache hits excluded)
    n_prompt_cached: int = 0
    t_prompt_s: float = 0.0
    n_predicted: int = 0
    t_predict_s: float = 0.0
    n_decode: int = 0                    # forward passes
    n_busy_slots: int = 0                # summed over passes
    n_tokens_max: int = 0
    n_requests: int = 0
    n_context_shifts: int = 0


class Scheduler:
    """The engine thread and its slots.  ``load`` builds the model on the engine thread
    (a callable returning an object with ``model`` and ``tokenizer``, e.g. a ``Llama``)."""

    def __init__(self, load: Callable[[], Any], n_slots: int, n_ctx_slot: int, n_batch: int = 512,
                 max_queue: int = 64, cont_batching: bool = True, cache_type: str = "f32",
                 context_shift: ShiftPolicy | None = None):
        if n_slots < 1:
            raise ValueError(f"need at least one slot, got {n_slots}")
        self.n_slots, self.n_ctx_slot, self.n_batch = int(n_slots), int(n_ctx_slot), int(n_batch)
        self.max_queue, self.cont_batching, self.cache_type = int(max_queue), bool(cont_batching), cache_type
        self._load = load
        self.context_shift = context_shift   # None: a full slot ends its request
        self.llm: Any = None                 # what load returned, once ready
        self.ready = threading.Event()
        self.load_error: BaseException | None = None
        self.slots = [_Slot(i, self.n_ctx_slot) for i in range(self.n_slots)]
        self.metrics = Metrics()
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._waiting: collections.deque[Request] = collections.deque()
        self._lock = threading.Lock()
        self._n_pending = 0                  # submitted, not yet in a slot
        self._next_id = 0
        self._stop = False
        self._thread = threading.Thread(target=self._main, name="gguf-engine", daemon=True)

    # --- other threads --------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = 30.0) -> None:
        """Cancel what is queued or running and end the engine thread."""
        self._stop = True
        self._inbox.put(None)
        self._thread.join(timeout)

    @property
    def n_pending(self) -> int:
        return self._n_pending

    @property
    def n_processing(self) -> int:
        return sum(1 for s in self.slots if s.busy)

    def submit(self, req: Request) -> Request:
        """Queue a request; QueueFullError when every slot is busy and the queue is full,
        PromptTooLongError when the prompt cannot fit one slot."""
        if not req.prompt:
            raise ValueError("the prompt is empty")
        if len(req.prompt) >= self.n_ctx_slot:
            raise PromptTooLongError(
                f"the request exceeds the available context size: the prompt has {len(req.prompt)} tokens and "
                f"a slot's context is {self.n_ctx_slot} (room for at most {self.n_ctx_slot - 1} prompt tokens)")
        with self._lock:
            free = self.n_slots - self.n_processing
            if self._n_pending - free >= self.max_queue:
                raise QueueFullError(f"the server is busy: {self.n_slots} slots in use and "
                                     f"{self.max_queue} requests waiting")
            self._n_pending += 1
            self._next_id += 1
            req.id = self._next_id
        req.t_submit = time.monotonic()
        self._inbox.put(req)
        return req

    def call(self, fn: Callable[[Any], Any]) -> concurrent.futures.Future:
        """fn(llm) on the engine thread between two passes; its result in the future."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._inbox.put((fn, fut))
        return fut

    def control(self, cmpl_id: str, action: str) -> concurrent.futures.Future:
        """Act on the running completion cmpl_id between two passes (a ``ControlResult`` in the
        future).  ``reasoning_end`` forces the end of its reasoning: the budget's forced sequence
        starts at its next token (a completion that is not inside a reasoning block is left as it
        is, and the answer is still a success, as llama-server's).  A completion still waiting
        for a slot, or finished, is no active completion; every running choice of the id is acted on."""
        def act(_llm) -> ControlResult:
            reqs = [s.req for s in self.slots if s.busy and cmpl_id and s.req.cmpl_id == cmpl_id]
            if not reqs:
                return ControlResult(False, "no active completion for this id")
            if action != "reasoning_end":
                return ControlResult(False, "unknown control action")
            if not all(r.reasoning_control for r in reqs):
                return ControlResult(False, "reasoning control not enabled for this completion")
            for r in reqs:
                r.budget.force()
            return ControlResult(True)
        return self.call(act)

    def slot_info(self) -> list[dict]:
        """llama-server's /slots fields for each slot."""
        out = []
        for s in self.slots:
            req = s.req
            info = {"id": s.id, "n_ctx": s.n_ctx, "speculative": False, "is_processing": req is not None}
            if req is not None:
                info.update({"id_task": req.id, "n_prompt_tokens": len(req.prompt),
                             "n_prompt_tokens_processed": max(0, s.n_prompt_done - s.n_cached),
                             "n_prompt_tokens_cache": s.n_cached,
                             "next_token": [{"has_next_token": True, "n_remain": (req.max_tokens or 0) - s.n_generated
                                             if req.max_tokens and req.max_tokens > 0 else -1,
                                             "n_decoded": s.n_generated}]})
            out.append(info)
        return out

    # --- the engine thread ----------------------------------------------------------------
    def _warm_batched(self, model, tok) -> None:
        """Two passes of two slots before the server reports ready, one of prompt chunks and one of
        decode steps: on a cold kernel cache they compile the multi-sequence prompt products, the
        multi-row decode products and the batched attention (the load's warm-up compiles the
        one-sequence paths only), so the first burst of clients does not wait for them; on a warm
        cache they cost a few milliseconds.  Slots 0 and 1 get throw-away tokens; their token
        lists stay empty, so no request reuses them."""
        t = int(tok.bos_id) if tok.bos_id is not None and tok.bos_id >= 0 else 0
        n = min(8, self.n_ctx_slot - 1)
        model.eval_batch(TokenBatch.build([(0, 0, [t] * n, True), (1, 0, [t] * n, True)]), self._cache)
        model.eval_batch(TokenBatch.build([(0, n, [t], True), (1, n, [t], True)], n_decode=2), self._cache)

    def _main(self) -> None:
        try:
            self.llm = self._load()
            model = self.llm.model
            self._cache = model.slot_cache(self.n_slots, self.n_ctx_slot, self.cache_type)
            tok = self.llm.tokenizer
            if self.n_slots > 1:
                self._warm_batched(model, tok)
            self._eog = {int(t) for t in (getattr(tok, "eog_ids", None) or [])}
            if tok.eos_id is not None and tok.eos_id >= 0:
                self._eog.add(int(tok.eos_id))
        except BaseException as e:          # reported by /health and the CLI
            self.load_error = e
            self.ready.set()
            return
        self.ready.set()
        while not self._stop:
            self._take_inbox(block=not any(s.busy for s in self.slots) and not self._waiting)
            if self._stop:
                break
            self._admit()
            if any(s.busy for s in self.slots):
                self._step()
        self._shutdown()

    def _take_inbox(self, block: bool) -> None:
        while True:
            try:
                item = self._inbox.get(block=block, timeout=0.5 if block else None)
            except queue.Empty:
                return
            block = False
            if item is None:
                return
            if isinstance(item, Request):
                self._waiting.append(item)
            else:
                fn, fut = item
                if fut.set_running_or_notify_cancel():
                    try:
                        fut.set_result(fn(self.llm))
                    except BaseException as e:
                        fut.set_exception(e)

    def _dequeue(self, req: Request) -> None:
        """A waiting request leaves the queue without a slot."""
        with self._lock:
            self._n_pending -= 1

    def _admit(self) -> None:
        """Waiting requests into free slots, each to the free slot sharing its longest prefix
        (ties: the least recently used).  Without continuous batching new requests start only
        when no slot is busy."""
        if not self.cont_batching and any(s.busy for s in self.slots):
            return
        while self._waiting:
            req = self._waiting[0]
            if req.cancelled:
                self._waiting.popleft()
                self._dequeue(req)
                continue
            free = [s for s in self.slots if not s.busy]
            if not free:
                return
            self._waiting.popleft()
            best = max(free, key=lambda s: (common_prefix_len(s.tokens, req.prompt), -s.last_used))
            with self._lock:
                best.start(req, self.llm.tokenizer, self._eog)
                self._n_pending -= 1
            self.metrics.n_requests += 1
            self.metrics.n_prompt_cached += best.n_cached

    def _step(self) -> None:
        """One forward pass over the next token of every generating slot and prompt chunks."""
        for s in self.slots:
            if s.busy and s.req.cancelled:
                s.release()
        parts, who = [], []
        budget = self.n_batch
        for s in self.slots:
            if s.busy and not s.reading_prompt and s.next_token is not None:
                parts.append((s.id, len(s.tokens), [s.next_token], True))
                who.append(s)
                budget -= 1
        n_gen_rows = len(parts)
        for s in self.slots:
            if budget <= 0:
                break
            if s.busy and s.reading_prompt:
                p = s.req.prompt
                chunk = p[s.n_prompt_done:s.n_prompt_done + budget]
                done = s.n_prompt_done + len(chunk) == len(p)
                parts.append((s.id, len(s.tokens), chunk, done))
                if done:
                    who.append(s)
                budget -= len(chunk)
        if not parts:
            return
        batch = TokenBatch.build(parts, n_decode=n_gen_rows)
        t0 = time.perf_counter()
        try:
            logits = self.llm.model.eval_batch(batch, self._cache)
        except Exception as e:               # a failed pass fails its requests, not the server
            for sid, _, _, _ in parts:
                self._finish(self.slots[sid], Output("", finish_reason="error", error=str(e)))
            return
        dt = time.perf_counter() - t0
        n_prompt = int(batch.tokens.size) - n_gen_rows
        m = self.metrics
        m.n_decode += 1
        m.n_busy_slots += sum(1 for s in self.slots if s.busy)
        m.n_prompt_tokens += n_prompt
        m.n_predicted += n_gen_rows
        # the pass's time shared by its prompt and generated tokens
        m.t_prompt_s += dt * n_prompt / batch.tokens.size
        m.t_predict_s += dt * n_gen_rows / batch.tokens.size
        for sid, pos0, chunk, _ in parts:
            s = self.slots[sid]
            s.tokens.extend(chunk)
            if s.reading_prompt:
                s.n_prompt_done += len(chunk)
        for s, row in zip(who, logits):
            self._sample(s, row)

    def _sample(self, s: _Slot, row: np.ndarray) -> None:
        req = s.req
        c, budget = req.constraint, req.budget
        try:
            # forcing the end of the reasoning: only that token is left (logprobs stay the model's)
            steered = row if budget is None else budget.apply(row)
            # a grammar masks its own copy of the row: each sequence's sampler sees only its tokens
            tok = s.sampler.sample(steered if c is None else c.mask(np.array(steered, dtype=np.float32)))
            if budget is not None:
                budget.accept(tok)
            if c is not None:
                c.accept(tok)
        except ValueError as e:              # a grammar that cannot go on (GrammarError)
            self._finish(s, Output(self._tail(s), finish_reason="error", error=str(e)))
            return
        s.sampler.accept(tok)
        lp = None
        if req.n_logprobs is not None:
            ls = log_softmax(row)
            k = min(int(req.n_logprobs), ls.shape[0])
            top = []
            if k > 0:
                best = np.argpartition(-ls, k - 1)[:k]
                top = [(int(t), float(ls[t])) for t in best[np.argsort(-ls[best], kind="stable")]]
            lp = TokenLogprob(int(tok), float(ls[tok]), top)
        self.metrics.n_tokens_max = max(self.metrics.n_tokens_max, len(s.tokens) + 1)
        if tok in self._eog and not req.ignore_eos:
            self._finish(s, Output(self._tail(s), finish_reason="stop"))
            return
        s.n_generated += 1
        text = s.matcher.push(s.decoder.push(tok))
        if s.matcher.stopped:
            self._finish(s, Output(text, tok, lp, "stop"))
            return
        if c is not None and c.done:         # the grammar is complete: nothing more may follow
            self._finish(s, Output(text + self._tail(s), tok, lp, "stop"))
            return
        if req.max_tokens is not None and 0 < req.max_tokens <= s.n_generated:
            text += self._tail(s)
            self._finish(s, Output(text, tok, lp, "stop" if s.matcher.stopped else "length"))
            return
        if len(s.tokens) >= s.n_ctx and not self._shift(s):   # no room left to evaluate this token
            text += self._tail(s)
            self._finish(s, Output(text, tok, lp, "stop" if s.matcher.stopped else "length"))
            return
        s.next_token = tok
        self._emit(s, Output(text, tok, lp))

    def _shift(self, s: _Slot) -> bool:
        """A context shift of a full slot (llama-server's: n_keep tokens of the prompt kept, BOS
        counted, -1 the whole prompt; n_discard or half of the rest dropped); False when not allowed
        or nothing can be dropped."""
        if self.context_shift is None:
            return False
        req = s.req
        n_keep = self.context_shift.n_keep if req.n_keep is None else req.n_keep
        bos = getattr(self.llm.tokenizer, "bos_id", None)
        keep = keep_count(n_keep, len(req.prompt), req.prompt[0] == bos)
        plan = plan_shift(len(s.tokens), keep, s.n_ctx, req.n_discard or self.context_shift.n_discard)
        if plan is None:
            return False
        self.llm.model.shift_slot(self._cache, s.id, plan, len(s.tokens))
        del s.tokens[plan.n_keep:plan.n_keep + plan.n_discard]
        self.metrics.n_context_shifts += 1
        return True

    @staticmethod
    def _tail(s: _Slot) -> str:
        return s.matcher.push(s.decoder.flush()) + s.matcher.flush()

    def _emit(self, s: _Slot, out: Output) -> None:
        out.n_prompt, out.n_cached, out.n_generated = len(s.req.prompt), s.n_cached, s.n_generated
        try:
            s.req.emit(out)
        except Exception:                    # a consumer that is gone: drop the request
            s.req.cancelled = True

    def _finish(self, s: _Slot, out: Output) -> None:
        if s.req is not None:
            self._emit(s, out)
        s.release()

    def _shutdown(self) -> None:
        """Finish what is running or waiting with finish_reason "cancelled"."""
        for s in self.slots:
            if s.busy:
                self._finish(s, Output(s.matcher.flush(), finish_reason="cancelled"))
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, Request):
                self._waiting.append(item)
            elif isinstance(item, tuple):
                item[1].cancel()
        for req in self._waiting:
            try:
                req.emit(Output("", finish_reason="cancelled"))
            except Exception:
                pass
        self._waiting.clear()
