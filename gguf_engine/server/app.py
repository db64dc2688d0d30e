"""The HTTP side of gguf-server: an ASGI app (FastAPI) over a ``Scheduler``.

Routes: OpenAI's /v1/models, /v1/completions, /v1/chat/completions, /v1/embeddings and
llama-server's /health, /tokenize, /detokenize, /apply-template, /props, /slots, /metrics and
/v1/chat/completions/control.
Handlers never run model work themselves: generation and embeddings are queued to the engine
thread and awaited, tokenization runs in the thread pool, so the event loop stays free.

Every error is an OpenAI-style body ``{"error": {"message", "type", "code"}}``.  ``create_app``
is the ASGI app factory (also what Ray Serve runs, see ``gguf_engine.server.ray``).
"""
from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

import numpy as np
from fastapi import FastAPI, Request as HTTPRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..generation import tool_calls as tc
from ..generation.reasoning import ReplyStream
from ..generation.reasoning_budget import BudgetSettings
from ..generation.sampling import SamplingParams
from .protocol import (ApplyTemplateRequest, ChatCompletionRequest, CompletionRequest, ControlRequest,
                       DetokenizeRequest, EmbeddingRequest, SamplingRequest, TokenizeRequest, message_dicts)
from .scheduler import Output, PromptTooLongError, QueueFullError, Request, Scheduler

log = logging.getLogger("gguf_engine.server")

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
               405: "invalid_request_error", 413: "invalid_request_error", 500: "server_error",
               501: "not_supported_error", 503: "unavailable_error"}
PUBLIC_PATHS = ("/health", "/v1/health")


@dataclass
class ServerSettings:
    """What gguf-server's flags set (defaults: llama-server's where it has the setting)."""
    model: str | None = None             # path or registry name (None: the default model)
    host: str = "127.0.0.1"
    port: int = 8080
    n_parallel: int = 4                  # slots
    n_ctx: int = 4096                    # total context, split evenly over the slots
    n_batch: int = 512                   # tokens per forward pass at most
    n_threads: int | None = None
    n_gpu_layers: int = 0
    api_keys: list[str] = field(default_factory=list)
    chat_template: str | None = None
    alias: str | None = None
    metrics: bool = False
    timeout: float = 600.0               # seconds a request may take, queue wait included
    cont_batching: bool = True
    max_queue: int = 64                  # requests waiting for a slot before 503
    max_body: int = 4 << 20              # request body bytes before 413
    cache_type: Any = "f32"               # KV cache types: a KVTypes or one name for K and V
    context_shift: bool = False          # shift a full slot instead of ending its request (llama-server: off)
    n_keep: int = 0                      # tokens a shift keeps after BOS (-1: the whole prompt)
    reasoning_format: str = "auto"       # how thinking is returned (generation.reasoning)
    template_kwargs: dict[str, Any] = field(default_factory=dict)   # chat template variables of every request
    reasoning_budget: BudgetSettings = field(default_factory=BudgetSettings)   # thinking budget unless a request sets one

    @property
    def n_ctx_slot(self) -> int:
        return self.n_ctx // self.n_parallel


class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type = status, message, type_ or ERROR_TYPES.get(status, "server_error")


def error_body(status: int, message: str, type_: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_ or ERROR_TYPES.get(status, "server_error"), "code": status}}


def error_response(status: int, message: str, type_: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, type_), status_code=status)


class _BodyTooLarge(Exception):
    pass


# a refused body is read and dropped up to this many bytes (so the client, still sending, gets
# the 413 instead of a reset connection); past it the connection is simply closed
DRAIN_LIMIT = 64 << 20


class Guard:
    """ASGI middleware: the API key (``Authorization: Bearer KEY`` or ``X-Api-Key``) on every
    route but /health, and the request body bound (413 beyond it)."""

    def __init__(self, app, settings: ServerSettings):
        self.app, self.keys, self.max_body = app, set(settings.api_keys), settings.max_body

    @staticmethod
    async def _drain(receive, limit: int) -> None:
        """Read and drop the rest of a refused body (at most DRAIN_LIMIT bytes)."""
        seen = 0
        while seen <= min(limit, DRAIN_LIMIT):
            msg = await receive()
            seen += len(msg.get("body", b""))
            if msg["type"] != "http.request" or not msg.get("more_body", False):
                return

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.keys and scope["path"] not in PUBLIC_PATHS and scope["method"] != "OPTIONS":
            auth = headers.get("authorization", "")
            key = auth[7:].strip() if auth.lower().startswith("bearer ") else headers.get("x-api-key", "")
            if key not in self.keys:
                return await error_response(401, "Invalid API Key")(scope, receive, send)
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            await self._drain(receive, int(length))
            return await error_response(413, f"the request body has {int(length)} bytes, more than the "
                                             f"{self.max_body} this server accepts")(scope, receive, send)
        if scope["method"] == "POST" and not headers.get("content-type", "").startswith("application/json"):
            # bodies are JSON whatever the client declares (as llama-server reads them; curl -d says form data)
            scope = dict(scope, headers=[(k, v) for k, v in scope["headers"] if k.lower() != b"content-type"]
                         + [(b"content-type", b"application/json")])
        seen = 0
        started = False

        async def counted_receive():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_body:
                    raise _BodyTooLarge()
            return msg

        async def tracked_send(msg):
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except _BodyTooLarge:
            if not started:
                await self._drain(receive, DRAIN_LIMIT)
                await error_response(413, f"the request body is larger than the {self.max_body} bytes "
                                          f"this server accepts")(scope, receive, send)


def _sampling(req: SamplingRequest, tokenizer, index: int) -> SamplingParams:
    bias = {}
    for k, v in (req.logit_bias or {}).items():
        try:
            tid = int(k)
        except ValueError:
            raise APIError(400, f"logit_bias: key {k!r} is not a token id") from None
        if not 0 <= tid < tokenizer.n_vocab:
            raise APIError(400, f"logit_bias: token id {tid} is outside the vocabulary (0..{tokenizer.n_vocab - 1})")
        bias[tid] = float(v)
    seed = req.seed if req.seed is not None else -1
    if seed != -1 and index:
        seed = (seed + index) & 0xFFFFFFFF    # n > 1: each choice its own stream
    return SamplingParams(temperature=req.temperature, top_k=req.top_k, top_p=req.top_p, min_p=req.min_p,
                          repeat_penalty=req.repeat_penalty, repeat_last_n=req.repeat_last_n,
                          frequency_penalty=req.frequency_penalty, presence_penalty=req.presence_penalty,
                          logit_bias=bias or None, seed=seed)


class _Run:
    """The n requests of one HTTP call and the queue their outputs arrive on (event-loop side)."""

    def __init__(self, sched: Scheduler, prompt: list[int], req: SamplingRequest, n_logprobs: int | None,
                 tokenizer, timeout: float, constraints: list | None = None, shown: frozenset = frozenset(),
                 budgets: list | None = None, cmpl_id: str = "", reasoning_control: bool = False):
        """constraints: one grammar matcher per choice (None: unconstrained); shown: control tokens
        written into the text; budgets: one thinking budget per choice (None: none); cmpl_id: the
        completion's id, by which a control request finds it; reasoning_control: the budgets may be
        forced through the control route."""
        if not prompt:
            raise APIError(400, "the prompt is empty")
        loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.deadline = time.monotonic() + timeout
        self.reqs: list[Request] = []
        stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        for i in range(req.n):
            def emit(out: Output, i=i) -> None:
                loop.call_soon_threadsafe(self.queue.put_nowait, (i, out))
            r = Request(list(prompt), _sampling(req, tokenizer, i), emit, max_tokens=req.token_limit(),
                        stop=stops, ignore_eos=req.ignore_eos, n_logprobs=n_logprobs,
                        constraint=constraints[i] if constraints else None, n_keep=req.n_keep,
                        n_discard=req.n_discard, shown=shown, budget=budgets[i] if budgets else None,
                        cmpl_id=cmpl_id, reasoning_control=reasoning_control)
            try:
                sched.submit(r)
            except PromptTooLongError as e:
                self.cancel()
                raise APIError(400, str(e), "exceed_context_size_error") from None
            except QueueFullError as e:
                self.cancel()
                raise APIError(503, str(e)) from None
            self.reqs.append(r)
        self.n_open = req.n
        self.n_prompt = len(prompt)
        self.n_generated = 0          # over all choices, once finished
        self.n_cached = 0

    def usage(self) -> dict:
        """OpenAI's usage object (cached prompt tokens in prompt_tokens_details)."""
        return {"prompt_tokens": self.n_prompt, "completion_tokens": self.n_generated,
                "total_tokens": self.n_prompt + self.n_generated,
                "prompt_tokens_details": {"cached_tokens": self.n_cached}}

    async def collect(self, http: HTTPRequest) -> list[list[Output]]:
        """Every choice's outputs, in order, once all have finished (a non-streamed answer)."""
        outs: list[list[Output]] = [[] for _ in self.reqs]
        try:
            async for i, out in self.outputs(http):
                outs[i].append(out)
        finally:
            self.cancel()
        return outs

    def stream(self, chunks, tail) -> StreamingResponse:
        """Server-sent events: the chunks of chunks(i, output) for every output, then those of
        tail(), then ``data: [DONE]``.  An error on the way ends the stream with an error event; the
        requests are cancelled when it ends, the client going away included."""
        async def events():
            try:
                async for i, out in self.outputs():
                    for chunk in chunks(i, out):
                        yield _sse(chunk)
                for chunk in tail():
                    yield _sse(chunk)
                yield "data: [DONE]\n\n"
            except APIError as e:
                yield _sse(error_body(e.status, e.message, e.type))
            finally:
                self.cancel()
        return StreamingResponse(events(), media_type="text/event-stream")

    def cancel(self) -> None:
        for r in self.reqs:
            r.cancel()

    async def outputs(self, http: HTTPRequest | None = None) -> AsyncIterator[tuple[int, Output]]:
        """(choice index, output) until every choice has finished; a client gone (checked each
        second when ``http`` is given) or the deadline passed cancels the rest."""
        while self.n_open:
            left = self.deadline - time.monotonic()
            if left <= 0:
                self.cancel()
                raise APIError(503, "the request took longer than the server's --timeout")
            try:
                i, out = await asyncio.wait_for(self.queue.get(), timeout=min(1.0, left))
            except asyncio.TimeoutError:
                if http is not None and await http.is_disconnected():
                    self.cancel()
                    return
                continue
            if out.finish_reason is not None:
                self.n_open -= 1
                self.n_generated += out.n_generated
                self.n_cached = max(self.n_cached, out.n_cached)
            if out.finish_reason == "cancelled":
                self.cancel()
                raise APIError(503, "the server is shutting down")
            if out.error is not None:
                self.cancel()
                raise APIError(500, out.error)
            yield i, out


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def make_scheduler(settings: ServerSettings) -> Scheduler:
    """The scheduler for these settings; its engine thread loads the model once started."""
    def load():
        from ..api import Llama
        return Llama(settings.model, n_ctx=settings.n_ctx_slot, n_batch=settings.n_batch,
                     n_threads=settings.n_threads, chat_template=settings.chat_template,
                     cache_type=settings.cache_type)

    from ..model.context_shift import ShiftPolicy
    return Scheduler(load, settings.n_parallel, settings.n_ctx_slot, n_batch=settings.n_batch,
                     max_queue=settings.max_queue, cont_batching=settings.cont_batching,
                     cache_type=settings.cache_type,
                     context_shift=ShiftPolicy(settings.n_keep) if settings.context_shift else None)


def create_app(settings: ServerSettings, scheduler: Scheduler | None = None, wait_ready: bool = False) -> FastAPI:
    """The ASGI app factory.  Its lifespan starts the engine thread of ``scheduler`` (made from the
    settings there when not given, so a pickled app builds its own in the process that runs it),
    which loads the model (/health says 503 until it is ready), and stops it on shutdown,
    cancelling what still runs.  wait_ready: the startup lasts until the model is loaded and
    fails if it cannot be (for a serving framework that routes to a replica once it started)."""
    if settings.n_parallel < 1:
        raise ValueError(f"--parallel must be at least 1, got {settings.n_parallel}")
    if settings.n_ctx_slot < 8:
        raise ValueError(f"a context of {settings.n_ctx} over {settings.n_parallel} slots leaves "
                         f"{settings.n_ctx_slot} tokens per slot; raise -c")
    if settings.n_gpu_layers != 0:
        raise ValueError("gguf-server runs several sequences per pass on the CPU only: -ngl must be 0")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if app.state.scheduler is None:           # made here, in the process that serves (e.g. a replica)
            app.state.scheduler = make_scheduler(settings)
        app.state.scheduler.start()
        if wait_ready:
            await run_in_threadpool(app.state.scheduler.ready.wait)
            if app.state.scheduler.load_error is not None:
                raise RuntimeError(f"the model failed to load: {app.state.scheduler.load_error}")
        try:
            yield
        finally:
            await run_in_threadpool(app.state.scheduler.stop)

    app = FastAPI(title="gguf-server", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.scheduler = scheduler
    app.state.settings = settings
    app.add_middleware(Guard, settings=settings)
    created = int(time.time())

    # --- errors -------------------------------------------------------------------------
    @app.exception_handler(APIError)
    async def _api_error(request, exc: APIError):
        return error_response(exc.status, exc.message, exc.type)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        parts = []
        for e in exc.errors()[:5]:
            where = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
            parts.append(f"{where or 'body'}: {e.get('msg')}")
        return error_response(400, "invalid request: " + "; ".join(parts))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc: StarletteHTTPException):
        msg = "File Not Found" if exc.status_code == 404 else str(exc.detail)
        return error_response(exc.status_code, msg)

    @app.exception_handler(Exception)
    async def _internal(request, exc: Exception):
        log.exception("internal error")
        return error_response(500, f"internal error: {type(exc).__name__}: {exc}")

    # --- helpers --------------------------------------------------------------------------
    def llm():
        sched = app.state.scheduler
        if sched is None or not sched.ready.is_set():
            raise APIError(503, "Loading model")
        if sched.load_error is not None:
            raise APIError(500, f"the model failed to load: {sched.load_error}")
        return sched.llm

    def model_name() -> str:
        return settings.alias or (llm().model_path)

    def check_fields(req: SamplingRequest) -> None:
        name = req.refused_field()
        if name is not None:
            raise APIError(400, f"the field {name!r} is not supported by this server yet")

    async def constraints(req: SamplingRequest, grammar, syntax=None) -> list | None:
        """One grammar matcher per choice for grammar (None: none; a lazy one is closed inside the
        reasoning of syntax); built off the event loop."""
        if grammar is None:
            return None
        return await run_in_threadpool(lambda: [llm().constraint(grammar, syntax) for _ in range(req.n)])

    def output_grammar(req: SamplingRequest):
        try:
            return req.output_grammar()
        except ValueError as e:
            raise APIError(400, str(e)) from None

    def encode(text: str) -> list[int]:
        return [int(t) for t in app.state.scheduler.llm.tokenizer.encode(text, add_bos=True, special=True)]

    def request_kwargs(body) -> dict:
        """The chat template variables of a request (400 for a bad one)."""
        try:
            return body.template_kwargs(settings.template_kwargs)
        except ValueError as e:
            raise APIError(400, str(e)) from None

    def chat_prompt(messages, plan: tc.ToolPlan | None, kwargs: dict) -> tuple[str, list[int]]:
        """The rendered conversation and its tokens (with the tools of plan, if any, and the
        template variables kwargs)."""
        try:
            text = app.state.scheduler.llm.render_chat(message_dicts(messages), True,
                                                       plan.tools if plan else None, plan.system_note if plan else None,
                                                       kwargs)
        except ValueError as e:
            raise APIError(400, f"messages: {e}") from None
        return text, encode(text)

    def tool_plan(body: ChatCompletionRequest) -> tc.ToolPlan:
        """How the request uses tools (llama-server's rules: no custom grammar beside tools)."""
        m = llm()
        try:
            tools, choice = tc.merge_functions(body.tools, body.tool_choice, body.functions, body.function_call)
            parallel = body.parallel_tool_calls
            if parallel is None and tools:
                parallel = m.renders_parallel_tool_calls()
            plan = tc.plan_tools(tools, choice, m.chat_template_text(), bool(parallel))
        except ValueError as e:
            raise APIError(400, str(e)) from None
        if plan.parse and plan.tools and body.grammar:
            raise APIError(400, "Cannot use custom grammar constraints with tools.")
        return plan

    def piece(t: int) -> str:
        return app.state.scheduler.llm.tokenizer.decode([t])

    # --- native routes ----------------------------------------------------------------------
    @app.get("/health")
    @app.get("/v1/health")
    async def health():
        llm()
        return {"status": "ok"}

    @app.get("/v1/models")
    @app.get("/models")
    async def models():
        m = llm()
        cfg = m.model.config
        return {"object": "list", "data": [{
            "id": model_name(), "object": "model", "created": created, "owned_by": "gguf-engine",
            "meta": {"n_vocab": cfg.n_vocab, "n_ctx_train": cfg.n_ctx_train, "n_embd": cfg.n_embd}}]}

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest):
        tok = llm().tokenizer
        ids = await run_in_threadpool(tok.encode, body.content, body.add_special, True)
        if body.with_pieces:
            return {"tokens": [{"id": int(t), "piece": piece(int(t))} for t in ids]}
        return {"tokens": [int(t) for t in ids]}

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest):
        tok = llm().tokenizer
        bad = [t for t in body.tokens if not 0 <= t < tok.n_vocab]
        if bad:
            raise APIError(400, f"tokens: id {bad[0]} is outside the vocabulary (0..{tok.n_vocab - 1})")
        return {"content": await run_in_threadpool(tok.decode, body.tokens)}

    @app.post("/apply-template")
    async def apply_template(body: ApplyTemplateRequest):
        llm()
        text, _ = await run_in_threadpool(chat_prompt, body.messages, None, request_kwargs(body))
        return {"prompt": text}

    @app.get("/props")
    async def props():
        m = llm()
        tok = m.tokenizer
        p = SamplingParams()
        return {"default_generation_settings": {
                    "n_ctx": settings.n_ctx_slot,
                    "params": {"temperature": p.temperature, "top_k": p.top_k, "top_p": p.top_p, "min_p": p.min_p,
                               "repeat_penalty": p.repeat_penalty, "repeat_last_n": p.repeat_last_n,
                               "presence_penalty": p.presence_penalty, "frequency_penalty": p.frequency_penalty,
                               "n_predict": -1, "seed": -1, "n_keep": settings.n_keep, "n_discard": 0}},
                "total_slots": settings.n_parallel, "model_alias": model_name(), "model_path": m.model_path,
                "modalities": {"vision": False, "audio": False}, "endpoint_slots": True, "endpoint_props": True,
                "endpoint_metrics": settings.metrics,
                "chat_template": tok.chat_template or m.chat_template or "",
                "bos_token": tok.token_text(tok.bos_id) if tok.bos_id is not None and tok.bos_id >= 0 else "",
                "eos_token": tok.token_text(tok.eos_id) if tok.eos_id is not None and tok.eos_id >= 0 else "",
                "build_info": "gguf-engine", "cont_batching": settings.cont_batching,
                "context_shift": settings.context_shift}

    @app.get("/slots")
    async def slots():
        llm()
        return app.state.scheduler.slot_info()

    @app.get("/metrics")
    async def metrics():
        if not settings.metrics:
            raise APIError(501, "This server does not support metrics endpoint. Start it with `--metrics`")
        llm()
        m = app.state.scheduler.metrics
        counters = [
            ("prompt_tokens_total", "Number of prompt tokens processed, excluding cached tokens", m.n_prompt_tokens),
            ("prompt_tokens_cached_total", "Number of prompt tokens reused from the cache", m.n_prompt_cached),
            ("prompt_seconds_total", "Total time spent processing prompts", m.t_prompt_s),
            ("tokens_predicted_total", "Number of generation tokens processed", m.n_predicted),
            ("tokens_predicted_seconds_total", "Total time spent generating tokens", m.t_predict_s),
            ("n_decode_total", "Total number of forward passes", m.n_decode),
            ("n_tokens_max", "Largest observed sequence length (prompt + generation)", m.n_tokens_max),
            ("n_context_shifts_total", "Total number of context shifts", m.n_context_shifts)]
        gauges = [
            ("prompt_tokens_seconds", "Average prompt throughput in tokens/s",
             m.n_prompt_tokens / m.t_prompt_s if m.t_prompt_s else 0.0),
            ("predicted_tokens_seconds", "Average generation throughput in tokens/s",
             m.n_predicted / m.t_predict_s if m.t_predict_s else 0.0),
            ("requests_processing", "Number of requests processing", app.state.scheduler.n_processing),
            ("requests_deferred", "Number of requests deferred", max(0, app.state.scheduler.n_pending)),
            ("n_busy_slots_per_decode", "Average number of busy slots per forward pass",
             m.n_busy_slots / max(m.n_decode, 1))]
        lines = []
        for kind, items in (("counter", counters), ("gauge", gauges)):
            for name, help_, value in items:
                lines += [f"# HELP llamacpp:{name} {help_}", f"# TYPE llamacpp:{name} {kind}",
                          f"llamacpp:{name} {float(value):g}"]
        return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    # --- OpenAI routes -----------------------------------------------------------------------
    @app.post("/v1/embeddings")
    @app.post("/embeddings")
    async def embeddings(body: EmbeddingRequest):
        m = llm()
        texts = [body.input] if isinstance(body.input, str) else list(body.input)
        if not texts or any(not t for t in texts):
            raise APIError(400, "input: every text must be non-empty")
        counts = await run_in_threadpool(lambda: [len(m.tokenize(t)) for t in texts])
        for i, n in enumerate(counts):
            if n > settings.n_ctx_slot:
                raise APIError(400, f"input[{i}] has {n} tokens, more than a slot's context of "
                                    f"{settings.n_ctx_slot}", "exceed_context_size_error")
        vecs = await asyncio.wrap_future(app.state.scheduler.call(lambda llm_: llm_.embed(texts, normalize=True)))
        data = []
        for i, v in enumerate(vecs):
            emb: Any = v
            if body.encoding_format == "base64":
                emb = base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode("ascii")
            data.append({"object": "embedding", "index": i, "embedding": emb})
        n = sum(counts)
        return {"object": "list", "model": model_name(), "data": data,
                "usage": {"prompt_tokens": n, "total_tokens": n}}

    @app.post("/v1/completions")
    @app.post("/completions")
    async def completions(body: CompletionRequest, http: HTTPRequest):
        m = llm()
        check_fields(body)
        extra = [k for k in ("tools", "tool_choice", "functions", "function_call")
                 if (body.model_extra or {}).get(k) is not None]
        if (body.model_extra or {}).get("reasoning_control"):
            extra.append("reasoning_control")
        if extra:
            raise APIError(400, f"the field {extra[0]!r} belongs to /v1/chat/completions, not to completions")
        if body.echo:
            raise APIError(400, "the field 'echo' is not supported by this server yet")
        prompt = body.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            if len(prompt) != 1:
                raise APIError(400, "prompt: a list of several prompts is not supported; send one per request")
            prompt = prompt[0]
        if isinstance(prompt, str):
            toks = await run_in_threadpool(encode, prompt)
        else:
            toks = [int(t) for t in prompt]
            bad = [t for t in toks if not 0 <= t < m.tokenizer.n_vocab]
            if bad:
                raise APIError(400, f"prompt: token id {bad[0]} is outside the vocabulary")
        run = _Run(app.state.scheduler, toks, body, body.logprobs, m.tokenizer, settings.timeout,
                   await constraints(body, output_grammar(body)))
        cid, name, now = f"cmpl-{uuid.uuid4().hex}", model_name(), int(time.time())
        offsets = [0] * body.n

        def lp_of(i: int, out: Output) -> dict | None:
            """OpenAI's completion logprobs of one output (advancing choice i's text offset)."""
            at = offsets[i]
            offsets[i] += len(out.text)
            if out.logprob is None:
                return None
            lp = out.logprob
            return {"tokens": [piece(lp.token)], "token_logprobs": [lp.logprob],
                    "top_logprobs": [{piece(t): v for t, v in lp.top}], "text_offset": [at]}

        def chunk(choices: list, **extra) -> dict:
            return {"id": cid, "object": "text_completion", "created": now, "model": name, "choices": choices,
                    **extra}

        if body.stream:
            def chunks(i: int, out: Output):
                lp = lp_of(i, out)
                if out.text or lp is not None or out.finish_reason is not None:
                    yield chunk([{"text": out.text, "index": i, "logprobs": lp, "finish_reason": out.finish_reason}])

            def tail():
                if body.stream_options and body.stream_options.include_usage:
                    yield chunk([], usage=run.usage())
            return run.stream(chunks, tail)

        choices = []
        for i, outs in enumerate(await run.collect(http)):
            lps = [lp_of(i, out) for out in outs]
            merged = None if body.logprobs is None else {
                k: [v for lp in lps if lp is not None for v in lp[k]]
                for k in ("tokens", "token_logprobs", "top_logprobs", "text_offset")}
            choices.append({"text": "".join(o.text for o in outs), "index": i, "logprobs": merged,
                            "finish_reason": outs[-1].finish_reason if outs else None})
        return chunk(choices, usage=run.usage())

    @app.post("/v1/chat/completions")
    @app.post("/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, http: HTTPRequest):
        m = llm()
        check_fields(body)
        plan = await run_in_threadpool(tool_plan, body)
        grammar = output_grammar(body)
        if grammar is not None and plan.forcing:
            raise APIError(400, "give only one of response_format, grammar, json_schema and a forced tool_choice")
        prompt, toks = await run_in_threadpool(chat_prompt, body.messages, plan, request_kwargs(body))
        parser, shown = m.reply_parser(prompt, plan, body.reasoning_format or settings.reasoning_format)
        budget = body.reasoning_budget(settings.reasoning_budget)
        budgets = [m.reasoning_budget(budget, parser.syntax) for _ in range(body.n)]
        n_top = (body.top_logprobs or 0) if body.logprobs else None
        cid, name, now = f"chatcmpl-{uuid.uuid4().hex}", model_name(), int(time.time())
        # armed only where a budget exists: a template without thinking tags has nothing to end
        run = _Run(app.state.scheduler, toks, body, n_top, m.tokenizer, settings.timeout,
                   await constraints(body, plan.grammar_beside(grammar), parser.syntax), shown, budgets, cid,
                   budget.control and budgets[0] is not None)

        def lp_of(out: Output) -> list[dict]:
            """OpenAI's chat logprobs entries of one output (none without a token)."""
            if out.logprob is None:
                return []
            lp = out.logprob
            tok_piece = piece(lp.token)
            return [{"token": tok_piece, "logprob": lp.logprob, "bytes": list(tok_piece.encode("utf-8")),
                     "top_logprobs": [{"token": piece(t), "logprob": v, "bytes": list(piece(t).encode("utf-8"))}
                                      for t, v in lp.top]}]

        if body.stream:
            base = {"id": cid, "object": "chat.completion.chunk", "created": now, "model": name}

            splits = [ReplyStream(parser) for _ in range(body.n)]   # each choice's text, reasoning and calls

            def delta(i: int, d: dict, lp=None, finish=None) -> dict:
                return {**base, "choices": [{"index": i, "delta": d, "logprobs": lp, "finish_reason": finish}]}

            def chunks(i: int, out: Output):
                if not started:
                    started.append(True)          # the role first, for every choice
                    for k in range(body.n):
                        yield delta(k, {"role": "assistant", "content": ""})
                lp = lp_of(out)
                deltas = splits[i].push(out.text)
                if lp and not deltas:
                    deltas = [{"content": ""}]
                for k, d in enumerate(deltas):
                    yield delta(i, d, {"content": lp} if lp and k == 0 else None)
                if out.finish_reason is not None:
                    finish = out.finish_reason
                    rest, calls = splits[i].finish()
                    for d in rest:
                        yield delta(i, d)
                    if calls:
                        for d in tc.tool_call_deltas(calls):
                            yield delta(i, d)
                        finish = "tool_calls"
                    yield delta(i, {}, None, finish)

            def tail():
                if body.stream_options and body.stream_options.include_usage:
                    yield {**base, "choices": [], "usage": run.usage()}
            started: list = []
            return run.stream(chunks, tail)

        choices = []
        for i, outs in enumerate(await run.collect(http)):
            message = parser.message("".join(o.text for o in outs))
            finish = "tool_calls" if message.get("tool_calls") else (outs[-1].finish_reason if outs else None)
            choices.append({"index": i, "message": message,
                            "logprobs": {"content": [e for o in outs for e in lp_of(o)]} if body.logprobs else None,
                            "finish_reason": finish})
        return {"id": cid, "object": "chat.completion", "created": now, "model": name, "choices": choices,
                "usage": run.usage()}

    @app.post("/v1/chat/completions/control")
    async def chat_control(body: ControlRequest):
        """llama-server's control of a running chat completion: 400 for a body without a completion
        id or with another action than ``reasoning_end``; otherwise ``{"success": ...}`` with a
        ``message`` saying why not (no running completion with that id, or one not armed with
        ``reasoning_control: true``)."""
        llm()
        problem = body.problem()
        if problem is not None:
            raise APIError(400, problem)
        result = await asyncio.wrap_future(app.state.scheduler.control(body.id, body.action))
        return result.to_json()

    return app
