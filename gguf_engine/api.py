"""``Llama``: a Python API shaped after llama-cpp-python's.

    from gguf_engine import Llama

    with Llama("smollm2-135m-instruct", n_ctx=2048, seed=42) as llm:
        out = llm("The capital of France is", max_tokens=16, temperature=0.0)
        print(out["choices"][0]["text"])
        chat = llm.create_chat_completion([{"role": "user", "content": "What is GGUF?"}])
        print(chat["choices"][0]["message"]["content"])

Completions come back as OpenAI-style dicts ("text_completion", "chat.completion"), or as an
iterator of chunks with ``stream=True``.  The KV cache is kept between calls: a prompt that
extends the previous one only evaluates its new tokens.
"""
from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from .generation.generate import ContextFullError, ContextLimitError, Engine, TokenEvent
from .generation.guard import StreamInvalidatedError, serialised
from .generation.sampling import Sampler, SamplingParams, check_sampling
from .timing import PerfStats, now_ms

Message = Mapping[str, Any]


def _metadata_strings(meta: Mapping[str, Any]) -> dict[str, str]:
    """Scalar metadata as strings (as llama-cpp-python exposes it); arrays are left out."""
    out: dict[str, str] = {}
    for k, v in meta.items():
        if isinstance(v, (str, bool, int, float, np.integer, np.floating, np.bool_)):
            out[k] = str(v)
    return out


def _log_softmax(row: np.ndarray) -> np.ndarray:
    row = row.astype(np.float64)
    m = row.max()
    return row - (m + np.log(np.exp(row - m).sum()))


class Llama:
    """A loaded GGUF model with its tokenizer, KV cache, sampler settings and timings.

    model_path: a GGUF file or a registry name (fetched on first use).  n_ctx: None or 0 for
    min(trained context, 4096).  seed: -1 draws a fresh random seed for every call; any other
    value seeds every call alike (a call's own ``seed`` wins), so repeated calls reproduce.
    chat_template: a built-in name, a file or template text; default: the model's own, else the
    architecture's built-in one (gemma3), else ChatML.  Other llama-cpp-python keyword arguments
    (use_mmap, logits_all, ...) are accepted and ignored.

    One ``Llama`` may be shared by threads: calls take turns on its KV cache.  A stream paused while
    another call uses the model raises ``StreamInvalidatedError`` when it resumes.
    """

    def __init__(self, model_path: str | Path, *, n_ctx: int | None = None, n_batch: int = 512,
                 n_threads: int | None = None, n_gpu_layers: int = 0, seed: int = -1,
                 verbose: bool = False, chat_template: str | None = None, cache_type: str = "f32",
                 **kwargs: Any):
        from .gguf import GGUFReader
        from .model import load_model
        from .models import resolve_model
        from .tokenizer import Tokenizer

        self.verbose = verbose
        self.perf = PerfStats()
        t0 = now_ms()
        self.model_path = str(resolve_model(model_path))  # a path, or a registry name such as "smollm2-135m-instruct"
        self._reader = GGUFReader(self.model_path)
        try:
            self.tokenizer = Tokenizer.from_reader(self._reader)
            self._model = load_model(self._reader, n_ctx=(n_ctx or None), n_batch=n_batch,
                                     cache_type=cache_type, n_threads=n_threads, n_gpu_layers=n_gpu_layers)
        except BaseException:
            self._reader.close()
            raise
        self.perf.t_load_ms = now_ms() - t0
        self.perf.reset()  # the run's clock starts once the model is loaded
        self._engine = Engine(self._model, self.tokenizer, self.perf)
        self._seed = seed if seed is not None else -1
        self.chat_template, self.chat_template_source = self._pick_template(chat_template)
        self.n_batch = n_batch
        self.n_threads = n_threads
        self.n_gpu_layers = n_gpu_layers
        self.cache_type = cache_type
        self.metadata: dict[str, str] = _metadata_strings(self._reader.metadata)
        self.last_stop_reason: str | None = None
        self._closed = False
        if verbose:
            cfg = self._model.config
            print(f"llama: loaded {self.model_path} ({cfg.arch}, n_vocab = {cfg.n_vocab}, "
                  f"n_ctx = {self.n_ctx()}, n_ctx_train = {cfg.n_ctx_train}) in {self.perf.t_load_ms:.2f} ms",
                  file=sys.stderr)

    def _pick_template(self, chat_template: str | None) -> tuple[str | None, str]:
        """The chat template to use and where it comes from ("given", "model", "builtin:NAME" or
        "default:chatml").  A model without a template whose architecture has a built-in one (gemma3)
        gets that rather than ChatML, which such models were not trained on."""
        if chat_template:
            return chat_template, "given"
        if getattr(self.tokenizer, "chat_template", None):
            return None, "model"
        from .tokenizer.chat import BUILTIN_TEMPLATES
        arch = str(self._model.config.arch)
        for name in (arch, arch.rstrip("0123456789")):
            if name in BUILTIN_TEMPLATES:
                return name, f"builtin:{name}"
        return None, "default:chatml"

    # ------------------------------------------------------------------ properties
    @property
    def model(self):
        """The underlying model (``gguf_engine.model``)."""
        return self._model

    @property
    def config(self):
        return self._model.config

    @property
    def n_tokens(self) -> int:
        """Tokens currently in the KV cache."""
        return len(self._engine.tokens)

    @property
    def input_ids(self) -> list[int]:
        """The tokens currently in the KV cache."""
        return list(self._engine.tokens)

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def guard(self):
        """The lock over this model's KV cache (calls from several threads take turns)."""
        return self._engine.guard

    def n_ctx(self) -> int:
        return self._engine.n_ctx

    def n_vocab(self) -> int:
        return self._engine.n_vocab

    def n_embd(self) -> int:
        return int(self._model.config.n_embd)

    def token_bos(self) -> int:
        return int(self.tokenizer.bos_id)

    def token_eos(self) -> int:
        return int(self.tokenizer.eos_id)

    # ------------------------------------------------------------------ tokens
    def tokenize(self, text: bytes | str, add_bos: bool = True, special: bool = False) -> list[int]:
        """Token ids of text; ``add_bos`` adds BOS when the model asks for one (as llama.cpp's add_special)."""
        if isinstance(text, (bytes, bytearray)):
            text = bytes(text).decode("utf-8", errors="replace")
        # the tokenizer adds BOS only when the model asks for it (llama.cpp's add_special)
        return [int(t) for t in self.tokenizer.encode(text, add_bos=add_bos, special=special)]

    def detokenize(self, tokens: Sequence[int], prev_tokens: Sequence[int] | None = None,
                   special: bool = False) -> bytes:
        """The bytes of tokens (control tokens such as BOS render as nothing)."""
        return bytes(self.tokenizer.decode_bytes([int(t) for t in tokens]))

    # ------------------------------------------------------------------ evaluation
    def eval(self, tokens: Sequence[int], logits_all: bool = False) -> np.ndarray:
        """Evaluates tokens after what is in the cache; float32 logits (n_vocab,) for the last
        position, or (n_tokens, n_vocab) for every evaluated position with ``logits_all``."""
        self._check_open()
        return self._engine.eval(tokens, logits_all=logits_all)

    def reset(self) -> None:
        """Empties the KV cache."""
        self._check_open()
        self._engine.reset()

    def sampler(self, temp: float = 0.8, top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05,
                repeat_penalty: float = 1.0, repeat_last_n: int = 64, frequency_penalty: float = 0.0,
                presence_penalty: float = 0.0, logit_bias: Mapping[int, float] | None = None,
                seed: int | None = None) -> Sampler:
        """A sampler with these settings (seed: this call's, else the one given to Llama)."""
        params = SamplingParams(temperature=temp, top_k=top_k, top_p=top_p, min_p=min_p,
                                repeat_penalty=repeat_penalty, repeat_last_n=repeat_last_n,
                                frequency_penalty=frequency_penalty, presence_penalty=presence_penalty,
                                logit_bias=logit_bias, seed=self._seed if seed is None else seed)
        return Sampler(params, n_ctx=self.n_ctx())

    def generate(self, tokens: Sequence[int], top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05,
                 temp: float = 0.80, repeat_penalty: float = 1.0, reset: bool = True,
                 frequency_penalty: float = 0.0, presence_penalty: float = 0.0,
                 logit_bias: Mapping[int, float] | None = None, seed: int | None = None,
                 repeat_last_n: int = 64, **kwargs: Any) -> Iterator[int]:
        """Yields sampled tokens after ``tokens`` for as long as the caller iterates (or the context lasts).

        With ``reset`` (default) the cache keeps its common prefix with ``tokens`` and evaluates the
        rest; with ``reset=False`` the tokens are evaluated after everything in the cache.
        End-of-generation tokens are yielded too: the caller decides when to stop.
        """
        self._check_open()
        smp = self.sampler(temp, top_k, top_p, min_p, repeat_penalty, repeat_last_n,
                           frequency_penalty, presence_penalty, logit_bias, seed)
        for tok, _ in self._engine.token_loop(tokens, smp, reuse=reset):
            yield tok

    # ------------------------------------------------------------------ embeddings
    @serialised
    def embed(self, input: str | Sequence[str], normalize: bool = False, truncate: bool = True,
              ) -> list[float] | list[list[float]]:
        """Mean-pooled final hidden states of each text (a list of floats, or one list per text).

        The texts run through the KV cache, which is empty afterwards."""
        self._check_open()
        texts = [input] if isinstance(input, str) else list(input)
        out = []
        for text in texts:
            toks = self.tokenize(text, add_bos=True, special=False)
            if not toks:
                raise ValueError("cannot embed an empty text")
            if len(toks) > self.n_ctx():
                if not truncate:
                    raise ContextLimitError(
                        f"Requested tokens ({len(toks)}) exceed context window of {self.n_ctx()}")
                toks = toks[: self.n_ctx()]
            self._engine.reset()  # embedding runs its own forward pass through the cache
            try:
                hidden = np.asarray(self._model.embed(toks), dtype=np.float32)  # (n_tokens, n_embd)
            finally:
                self._engine.reset()
            vec = hidden.mean(axis=0)
            if normalize:
                norm = float(np.linalg.norm(vec))
                vec = vec / norm if norm > 0 else vec
            out.append(vec.astype(np.float32).tolist())
        return out[0] if isinstance(input, str) else out

    @serialised
    def create_embedding(self, input: str | Sequence[str], model: str | None = None,
                         normalize: bool = False) -> dict[str, Any]:
        texts = [input] if isinstance(input, str) else list(input)
        vecs = self.embed(texts, normalize=normalize)
        n_tok = sum(len(self.tokenize(t)) for t in texts)
        return {"object": "list", "model": model or self.model_path,
                "data": [{"object": "embedding", "embedding": v, "index": i} for i, v in enumerate(vecs)],
                "usage": {"prompt_tokens": n_tok, "total_tokens": n_tok}}

    # ------------------------------------------------------------------ completions
    def stream_events(self, prompt_tokens: Sequence[int], *, max_tokens: int | None = 16,
                      temperature: float = 0.8, top_p: float = 0.95, top_k: int = 40, min_p: float = 0.05,
                      repeat_penalty: float = 1.0, repeat_last_n: int = 64, frequency_penalty: float = 0.0,
                      presence_penalty: float = 0.0, stop: str | Iterable[str] | None = None,
                      seed: int | None = None, logit_bias: Mapping[int, float] | None = None,
                      ignore_eos: bool = False, want_logits: bool = False) -> Iterator[TokenEvent]:
        """Text events of a completion (the lowest level with stop strings and streaming text)."""
        self._check_open()
        smp = self.sampler(temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n,
                           frequency_penalty, presence_penalty, logit_bias, seed)
        self.last_stop_reason = None
        for ev in self._engine.stream(prompt_tokens, smp, max_tokens=max_tokens, stop=stop,
                                      ignore_eos=ignore_eos, want_logits=want_logits):
            if ev.finish_reason is not None:
                self.last_stop_reason = ev.stop_reason
            yield ev

    def _prompt_tokens(self, prompt: str | bytes | Sequence[int]) -> list[int]:
        if isinstance(prompt, (str, bytes, bytearray)):
            text = prompt if isinstance(prompt, str) else bytes(prompt).decode("utf-8", errors="replace")
            n_min = self.tokenizer.min_tokens(text)  # a text far too long is refused before it is tokenized
            if n_min > self.n_ctx():
                raise ContextLimitError(f"Requested tokens (at least {n_min}) exceed context window of {self.n_ctx()}")
            toks = self.tokenize(text, add_bos=True, special=True)
        else:
            toks = [int(t) for t in prompt]
        if not toks:  # an empty prompt with a model that adds no BOS: start from BOS anyway
            bos = getattr(self.tokenizer, "bos_id", None)
            toks = [int(bos)] if bos is not None and bos >= 0 else []
        return toks

    def _logprob_entry(self, row: np.ndarray, tok: int, n_top: int) -> tuple[str, float, dict[str, float]]:
        lp = _log_softmax(row)
        piece = self.tokenizer.decode([tok])
        top = {}
        if n_top > 0:
            n_top = min(n_top, lp.shape[0])
            best = np.argpartition(-lp, n_top - 1)[:n_top]
            for t in best[np.argsort(-lp[best], kind="stable")]:
                top[self.tokenizer.decode([int(t)])] = float(lp[t])
        top[piece] = float(lp[tok])
        return piece, float(lp[tok]), top

    def _completion_chunks(self, prompt, max_tokens, stop, seed, logprobs, echo, **sampling
                           ) -> Iterator[tuple[str, dict | None, str | None, int, int]]:
        """Yields (text, logprobs or None, finish_reason, n_prompt, n_completion) per emitted piece."""
        toks = self._prompt_tokens(prompt)
        n_prompt = len(toks)
        want = logprobs is not None
        offset = 0
        if echo:
            text = prompt if isinstance(prompt, str) else self.detokenize(toks).decode("utf-8", "replace")
            lp = None
            if want:
                lp = {"tokens": [self.tokenizer.decode([t]) for t in toks], "text_offset": [],
                      "token_logprobs": [None] + [None] * (len(toks) - 1), "top_logprobs": [None] * len(toks)}
                pos = 0
                for piece in lp["tokens"]:
                    lp["text_offset"].append(pos)
                    pos += len(piece)
            offset = len(text)
            yield text, lp, None, n_prompt, 0
        n_done = 0
        for ev in self.stream_events(toks, max_tokens=max_tokens, stop=stop, seed=seed,
                                     want_logits=want, **sampling):
            if ev.token is not None:
                n_done += 1
            lp = None
            if want and ev.token is not None and ev.logits is not None:
                piece, tlp, top = self._logprob_entry(ev.logits, ev.token, int(logprobs))
                lp = {"tokens": [piece], "text_offset": [offset], "token_logprobs": [tlp],
                      "top_logprobs": [top]}
            offset += len(ev.text)
            if ev.text or lp is not None or ev.finish_reason is not None:
                yield ev.text, lp, ev.finish_reason, n_prompt, n_done

    @serialised
    def create_completion(self, prompt: str | bytes | Sequence[int], suffix: str | None = None,
                          max_tokens: int | None = 16, temperature: float = 0.8, top_p: float = 0.95,
                          min_p: float = 0.05, typical_p: float = 1.0, logprobs: int | None = None,
                          echo: bool = False, stop: str | list[str] | None = None,
                          frequency_penalty: float = 0.0, presence_penalty: float = 0.0,
                          repeat_penalty: float = 1.0, top_k: int = 40, stream: bool = False,
                          seed: int | None = None, logit_bias: Mapping[int, float] | None = None,
                          model: str | None = None, ignore_eos: bool = False, repeat_last_n: int = 64,
                          **kwargs: Any) -> dict[str, Any] | Iterator[dict[str, Any]]:
        """Completes ``prompt``; an OpenAI-style "text_completion" dict, or its chunks with ``stream``.

        max_tokens None or <= 0: until an end-of-generation token or the context is full.
        """
        self._check_open()
        if suffix:
            raise ValueError("suffix (fill-in-the-middle) is not supported")
        if typical_p != 1.0:
            raise ValueError(f"typical_p={typical_p} is not supported (only 1.0, i.e. off)")
        check_sampling(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, repeat_penalty=repeat_penalty,
                       repeat_last_n=repeat_last_n, frequency_penalty=frequency_penalty,
                       presence_penalty=presence_penalty, logprobs=logprobs)
        if logit_bias:
            logit_bias = {int(k): float(v) for k, v in logit_bias.items()}
        cid = f"cmpl-{uuid.uuid4()}"
        created = int(time.time())
        name = model or self.model_path
        sampling = dict(temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
                        repeat_penalty=repeat_penalty, repeat_last_n=repeat_last_n,
                        frequency_penalty=frequency_penalty, presence_penalty=presence_penalty,
                        logit_bias=logit_bias, ignore_eos=ignore_eos)
        chunks = self._completion_chunks(prompt, max_tokens, stop, seed, logprobs, echo, **sampling)
        if stream:
            def gen() -> Iterator[dict[str, Any]]:
                for text, lp, fr, _, _ in chunks:
                    yield {"id": cid, "object": "text_completion", "created": created, "model": name,
                           "choices": [{"text": text, "index": 0, "logprobs": lp, "finish_reason": fr}]}
            return gen()
        parts: list[str] = []
        merged: dict[str, list] | None = None
        finish, n_prompt, n_done = None, 0, 0
        for text, lp, fr, n_prompt, n_done in chunks:
            parts.append(text)
            if lp is not None:
                if merged is None:
                    merged = {"tokens": [], "text_offset": [], "token_logprobs": [], "top_logprobs": []}
                for k in merged:
                    merged[k].extend(lp[k])
            if fr is not None:
                finish = fr
        return {"id": cid, "object": "text_completion", "created": created, "model": name,
                "choices": [{"text": "".join(parts), "index": 0, "logprobs": merged, "finish_reason": finish}],
                "usage": {"prompt_tokens": n_prompt, "completion_tokens": n_done,
                          "total_tokens": n_prompt + n_done}}

    def __call__(self, prompt: str | bytes | Sequence[int], **kwargs: Any):
        return self.create_completion(prompt, **kwargs)

    # ------------------------------------------------------------------ chat
    def format_chat(self, messages: Sequence[Message], add_generation_prompt: bool = True,
                    tools: Sequence[Mapping[str, Any]] | None = None) -> list[int]:
        """Prompt tokens for a conversation rendered with the model's (or the given) chat template."""
        text = self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=add_generation_prompt,
                                                  tools=tools, template=self.chat_template)
        # the tokenizer drops a leading BOS the template writes when encoding adds one itself
        return [int(t) for t in self.tokenizer.encode(text, add_bos=True, special=True)]

    @serialised
    def create_chat_completion(self, messages: Sequence[Message], tools=None, tool_choice=None,
                               temperature: float = 0.2, top_p: float = 0.95, top_k: int = 40,
                               min_p: float = 0.05, typical_p: float = 1.0, stream: bool = False,
                               stop: str | list[str] | None = None, seed: int | None = None,
                               max_tokens: int | None = None, presence_penalty: float = 0.0,
                               frequency_penalty: float = 0.0, repeat_penalty: float = 1.0,
                               logit_bias: Mapping[int, float] | None = None, logprobs: bool | None = None,
                               top_logprobs: int | None = None, model: str | None = None,
                               ignore_eos: bool = False, repeat_last_n: int = 64, **kwargs: Any,
                               ) -> dict[str, Any] | Iterator[dict[str, Any]]:
        """Answers a conversation; an OpenAI-style "chat.completion" dict, or "chat.completion.chunk"s.

        max_tokens None: until an end-of-generation token or the context is full."""
        self._check_open()
        if typical_p != 1.0:
            raise ValueError(f"typical_p={typical_p} is not supported (only 1.0, i.e. off)")
        check_sampling(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, repeat_penalty=repeat_penalty,
                       repeat_last_n=repeat_last_n, frequency_penalty=frequency_penalty,
                       presence_penalty=presence_penalty, top_logprobs=top_logprobs)
        toks = self.format_chat(messages, tools=tools)
        cid = f"chatcmpl-{uuid.uuid4()}"
        created = int(time.time())
        name = model or self.model_path
        n_top = (top_logprobs or 0) if logprobs else None
        chunks = self._completion_chunks(
            toks, max_tokens, stop, seed, n_top, False, temperature=temperature, top_p=top_p,
            top_k=top_k, min_p=min_p, repeat_penalty=repeat_penalty, repeat_last_n=repeat_last_n,
            frequency_penalty=frequency_penalty, presence_penalty=presence_penalty,
            logit_bias={int(k): float(v) for k, v in (logit_bias or {}).items()}, ignore_eos=ignore_eos)

        def chat_lp(lp):
            if lp is None:
                return None
            return {"content": [{"token": t, "logprob": l, "bytes": list(t.encode("utf-8")),
                                 "top_logprobs": [{"token": k, "logprob": v, "bytes": list(k.encode("utf-8"))}
                                                  for k, v in (top or {}).items()]}
                                for t, l, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"])]}

        if stream:
            def gen() -> Iterator[dict[str, Any]]:
                base = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": name}
                yield {**base, "choices": [{"index": 0, "delta": {"role": "assistant"}, "logprobs": None,
                                            "finish_reason": None}]}
                for text, lp, fr, _, _ in chunks:
                    if text or lp is not None:
                        yield {**base, "choices": [{"index": 0, "delta": {"content": text},
                                                    "logprobs": chat_lp(lp), "finish_reason": None}]}
                    if fr is not None:
                        yield {**base, "choices": [{"index": 0, "delta": {}, "logprobs": None,
                                                    "finish_reason": fr}]}
            return gen()
        parts, lps = [], []
        finish, n_prompt, n_done = None, len(toks), 0
        for text, lp, fr, n_prompt, n_done in chunks:
            parts.append(text)
            if lp is not None:
                lps.extend(chat_lp(lp)["content"])
            if fr is not None:
                finish = fr
        return {"id": cid, "object": "chat.completion", "created": created, "model": name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(parts)},
                             "logprobs": {"content": lps} if logprobs else None, "finish_reason": finish}],
                "usage": {"prompt_tokens": n_prompt, "completion_tokens": n_done,
                          "total_tokens": n_prompt + n_done}}

    # ------------------------------------------------------------------ lifetime
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this Llama has been closed")

    def close(self) -> None:
        """Frees the model and closes the file; the object cannot be used afterwards."""
        if getattr(self, "_closed", True):
            return
        self._closed = True
        try:
            self._model.close()
        finally:
            self._reader.close()

    def __enter__(self) -> "Llama":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def print_timings(self, file=None) -> None:
        print(self.perf.summary(), file=file or sys.stderr)


__all__ = ["Llama", "ContextFullError", "ContextLimitError", "StreamInvalidatedError"]
