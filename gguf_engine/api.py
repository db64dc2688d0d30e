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

from .generation.generate import (ContextFullError, ContextLimitError, Engine, LlamaState, Steering,
                                  TokenEvent, as_callables)
from .generation.guard import StreamInvalidatedError, serialised
from .generation.results import Chunk, CompletionLogprobs
from .generation.sampling import Sampler, SamplingParams, check_sampling
from .generation.warmup import warm_up
from .model.kv_cache import KVTypes
from .model.memory import MemoryBreakdown, resident_bytes
from .timing import PerfStats, now_ms

Message = Mapping[str, Any]


def _metadata_strings(meta: Mapping[str, Any]) -> dict[str, str]:
    """Scalar metadata as strings (as llama-cpp-python exposes it); arrays are left out."""
    out: dict[str, str] = {}
    for k, v in meta.items():
        if isinstance(v, (str, bool, int, float, np.integer, np.floating, np.bool_)):
            out[k] = str(v)
    return out


# llama-cpp-python's chat_format names that have a built-in template of the same output
CHAT_FORMATS = {"chatml": "chatml", "llama-2": "llama2", "llama-3": "llama3", "gemma": "gemma",
                "zephyr": "zephyr", "phi3": "phi3"}


def refuse_non_defaults(where: str, values: Mapping[str, tuple[Any, Any]]) -> None:
    """NotImplementedError naming every argument given a value other than its default
    (values: name -> (given, default)); NaN counts as non-default."""
    bad = [name for name, (given, default) in values.items()
           if not (given is default or (given == default and given == given))]
    if bad:
        raise NotImplementedError(f"{where}: {', '.join(f'{n}={values[n][0]!r}' for n in bad)} "
                                  f"{'is' if len(bad) == 1 else 'are'} not implemented")


def _int_keys(bias: Mapping[int, float] | None) -> dict[int, float] | None:
    """logit_bias with int token ids (JSON gives them as strings)."""
    return {int(k): float(v) for k, v in bias.items()} if bias else None


def _response_format_grammar(response_format):
    if response_format is None:
        return None
    from .generation.grammar import response_format_grammar
    return response_format_grammar(response_format)


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
    architecture's built-in one (gemma3), else ChatML.  cache_type: the KV cache type of keys and
    values (f32, f16, bf16, q8_0, q4_0, q4_1, iq4_nl, q5_0, q5_1); llama-cpp-python's ``type_k`` and
    ``type_v`` (GGML type ids, e.g. 8 for Q8_0, or these names) set each side.  As in llama.cpp, a
    quantized V cache needs ``flash_attn=True``.  warm_up_kernels: on a cold
    kernel cache (the first run on a machine), compile the kernels at load, saying so on stderr with
    the time taken (``t_compile_s``), so that no prompt's timing includes it.
    context_shift: when generation fills the context, do llama.cpp's context shift instead of
    stopping (off by default, as in llama.cpp): keep the first n_keep tokens of the prompt that
    began the sequence (after BOS; -1: all of it), drop half of the rest and go on; a prompt that
    extends the cache past the context shifts the history the same way.

    One ``Llama`` may be shared by threads: calls take turns on its KV cache.  A stream paused while
    another call uses the model raises ``StreamInvalidatedError`` when it resumes.

    The other llama-cpp-python arguments are all declared; an unknown keyword is a TypeError.
    Implemented: n_gpu_layers, seed, n_ctx, n_batch, n_threads, verbose, chat_format (the names of
    built-in templates: chatml, llama-2, llama-3, gemma, zephyr, phi3), type_k/type_v (llama.cpp's
    cache types), flash_attn (required for a quantized V cache, as there),
    last_n_tokens_size (the default penalty window).  Accepted and ignored because they only tune
    speed or memory: split_mode, main_gpu, tensor_split, use_mmap, use_mlock, n_ubatch,
    n_threads_batch, logits_all, embedding, offload_kqv, op_offload, swa_full, no_perf,
    numa.  Refused with NotImplementedError when given a value other than the default, because
    they would change results and are not implemented: vocab_only, kv_overrides,
    rope_scaling_type, pooling_type, attention_type, rope_freq_base, rope_freq_scale,
    yarn_ext_factor, yarn_attn_factor, yarn_beta_fast, yarn_beta_slow, yarn_orig_ctx, lora_base,
    lora_path (and lora_scale with it), chat_handler, draft_model, tokenizer, spm_infill.
    """

    def __init__(self, model_path: str | Path, *, n_gpu_layers: int = 0, split_mode: int = 1,
                 main_gpu: int = 0, tensor_split: Sequence[float] | None = None, vocab_only: bool = False,
                 use_mmap: bool = True, use_mlock: bool = False, kv_overrides: Mapping[str, Any] | None = None,
                 seed: int = -1, n_ctx: int | None = None, n_batch: int = 512, n_ubatch: int = 512,
                 n_threads: int | None = None, n_threads_batch: int | None = None,
                 rope_scaling_type: int | None = -1, pooling_type: int = -1, attention_type: int = -1,
                 rope_freq_base: float = 0.0, rope_freq_scale: float = 0.0, yarn_ext_factor: float = -1.0,
                 yarn_attn_factor: float = 1.0, yarn_beta_fast: float = 32.0, yarn_beta_slow: float = 1.0,
                 yarn_orig_ctx: int = 0, logits_all: bool = False, embedding: bool = False,
                 offload_kqv: bool = True, flash_attn: bool = False, op_offload: bool | None = None,
                 swa_full: bool | None = None, no_perf: bool = False, last_n_tokens_size: int = 64,
                 lora_base: str | None = None, lora_scale: float = 1.0, lora_path: str | None = None,
                 numa: bool | int = False, chat_format: str | None = None, chat_handler: Any = None,
                 draft_model: Any = None, tokenizer: Any = None, type_k: int | None = None,
                 type_v: int | None = None, spm_infill: bool = False, verbose: bool = False,
                 chat_template: str | None = None, cache_type: str = "f32", warm_up_kernels: bool = True,
                 context_shift: bool = False, n_keep: int = 0):
        from .gguf import GGUFReader
        from .model import load_model
        from .models import resolve_model
        from .tokenizer import Tokenizer

        refuse_non_defaults("Llama", dict(
            vocab_only=(vocab_only, False), kv_overrides=(kv_overrides or None, None),
            rope_scaling_type=(rope_scaling_type, -1), pooling_type=(pooling_type, -1),
            attention_type=(attention_type, -1), rope_freq_base=(rope_freq_base, 0.0),
            rope_freq_scale=(rope_freq_scale, 0.0), yarn_ext_factor=(yarn_ext_factor, -1.0),
            yarn_attn_factor=(yarn_attn_factor, 1.0), yarn_beta_fast=(yarn_beta_fast, 32.0),
            yarn_beta_slow=(yarn_beta_slow, 1.0), yarn_orig_ctx=(yarn_orig_ctx, 0), lora_base=(lora_base, None),
            lora_path=(lora_path, None), chat_handler=(chat_handler, None), draft_model=(draft_model, None),
            tokenizer=(tokenizer, None), spm_infill=(spm_infill, False)))
        try:
            cache_type = KVTypes.from_options(type_k, type_v, cache_type)
            cache_type.check_flash_attn(flash_attn, "flash_attn=False")
        except ValueError as e:
            raise ValueError(f"Llama: {e}") from None
        if chat_format is not None:
            if chat_template is not None:
                raise ValueError("give chat_format or chat_template, not both")
            if chat_format not in CHAT_FORMATS:
                raise NotImplementedError(f"Llama: chat_format={chat_format!r} is not implemented "
                                          f"(known: {', '.join(sorted(CHAT_FORMATS))}; or give chat_template)")
            chat_template = CHAT_FORMATS[chat_format]
        if last_n_tokens_size < -1:
            raise ValueError(f"last_n_tokens_size must be >= -1, got {last_n_tokens_size}")
        self.last_n_tokens_size = int(last_n_tokens_size)

        self.verbose = verbose
        self.t_compile_s: float | None = None
        self.perf = PerfStats()
        t0 = now_ms()
        self.model_path = str(resolve_model(model_path))  # a path, or a registry name such as "smollm2-135m-instruct"
        self._reader = GGUFReader(self.model_path)
        try:
            self.tokenizer = Tokenizer.from_reader(self._reader)
            self._model = load_model(self._reader, n_ctx=(n_ctx or None), n_batch=n_batch,
                                     cache_type=cache_type, n_threads=n_threads, n_gpu_layers=n_gpu_layers)
            self.perf.t_load_ms = now_ms() - t0
            if warm_up_kernels:  # a cold kernel cache compiles here, not in the first prompt's timing
                self.t_compile_s = warm_up(self._model, self.tokenizer.bos_id)
        except BaseException:
            self._reader.close()
            raise
        self._rss_after_load = resident_bytes()
        self.perf.reset()  # the run's clock starts once the model is loaded (and the kernels compiled)
        self._engine = Engine(self._model, self.tokenizer, self.perf)
        if n_keep < -1:
            raise ValueError(f"n_keep must be >= -1, got {n_keep}")
        if context_shift:
            from .model.context_shift import ShiftPolicy
            self._engine.context_shift = ShiftPolicy(int(n_keep))
        self._seed = seed if seed is not None else -1
        self.chat_template, self.chat_template_source = self._pick_template(chat_template)
        self.n_batch = n_batch
        self.n_threads = n_threads
        self.n_gpu_layers = n_gpu_layers
        self.cache_type = str(cache_type)      # "f16", or "k=q8_0, v=f16" when the sides differ
        self.type_k, self.type_v = cache_type.k, cache_type.v
        self.metadata: dict[str, str] = _metadata_strings(self._reader.metadata)
        self.last_stop_reason: str | None = None
        self._grammar_vocab = None  # built on the first constrained generation
        self._parallel_calls: bool | None = None  # the template's capability, probed on first use
        self._closed = False
        if verbose:
            cfg = self._model.config
            print(f"llama: loaded {self.model_path} ({cfg.arch}, n_vocab = {cfg.n_vocab}, "
                  f"n_ctx = {self.n_ctx()}, n_ctx_train = {cfg.n_ctx_train}) in {self.perf.t_load_ms:.2f} ms",
                  file=sys.stderr)

    def memory_breakdown(self) -> MemoryBreakdown:
        """What the loaded model holds, as llama.cpp's load summary reports it (bytes): model
        buffers per backend (``CPU_REPACK`` repacked weights, ``CPU`` float arrays, ``CUDA0`` ...),
        the KV cache with its types, the compute buffers of an n_batch pass, a breakdown by device
        (``Host``, GPUs), the file size, and ``rss``, the process's resident set measured right
        after loading (kernels warmed up).  ``gguf_engine.model.memory.summary_lines`` formats it."""
        return self._model.memory_breakdown(self._rss_after_load)

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
        """The bytes of tokens, as llama-cpp-python gives them.

        special: render control tokens (BOS, <|im_end|>, ...) as their text instead of nothing.
        prev_tokens: the tokens before these; the result is then the bytes these tokens add after
        them (so a word-initial space the first token would lose at the start of a text is kept)."""
        toks = [int(t) for t in tokens]
        if prev_tokens is None:
            return bytes(self.tokenizer.decode_bytes(toks, special=special))
        prev = [int(t) for t in prev_tokens]
        before = self.tokenizer.decode_bytes(prev, special=special)
        whole = self.tokenizer.decode_bytes(prev + toks, special=special)
        return bytes(whole[len(before):]) if whole.startswith(before) else bytes(
            b"".join(self.tokenizer.token_to_piece(t, special) for t in toks))

    def token_piece(self, token: int) -> str:
        """One token's text as it appears inside a text (leading space kept), invalid UTF-8 dropped."""
        return self.tokenizer.token_to_piece(int(token), False).decode("utf-8", errors="ignore")

    # ------------------------------------------------------------------ evaluation
    def eval(self, tokens: Sequence[int], logits_all: bool = False) -> np.ndarray:
        """Evaluates tokens after what is in the cache; float32 logits (n_vocab,) for the last
        position, or (n_tokens, n_vocab) for every evaluated position with ``logits_all``."""
        self._check_open()
        return self._engine.eval(tokens, logits_all=logits_all)

    @property
    def scores(self) -> np.ndarray:
        """The logits of the latest evaluation as rows (n_rows, n_vocab): the last position, or
        every evaluated position after ``eval(..., logits_all=True)``; (0, n_vocab) before any."""
        last = self._engine.last_logits
        if last is None:
            return np.zeros((0, self.n_vocab()), dtype=np.float32)
        return last.reshape(-1, last.shape[-1])

    def reset(self) -> None:
        """Empties the KV cache."""
        self._check_open()
        self._engine.reset()

    def save_state(self) -> "LlamaState":
        """A copy of the KV cache contents, the tokens they hold and the latest logits."""
        self._check_open()
        return self._engine.save_state()

    def load_state(self, state: "LlamaState") -> None:
        """Restores a state saved from a model of the same shape (the cache afterwards holds its tokens)."""
        self._check_open()
        self._engine.load_state(state)

    def sampler(self, temp: float = 0.8, top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05,
                repeat_penalty: float = 1.0, repeat_last_n: int | None = None, frequency_penalty: float = 0.0,
                presence_penalty: float = 0.0, logit_bias: Mapping[int, float] | None = None,
                seed: int | None = None, *, mirostat_mode: int = 0, mirostat_tau: float = 5.0,
                mirostat_eta: float = 0.1) -> Sampler:
        """A sampler with these settings (seed: this call's, else the one given to Llama;
        repeat_last_n: None for ``last_n_tokens_size``).  Out-of-range values raise ValueError."""
        params = SamplingParams(temperature=temp, top_k=top_k, top_p=top_p, min_p=min_p,
                                repeat_penalty=repeat_penalty,
                                repeat_last_n=self.last_n_tokens_size if repeat_last_n is None else repeat_last_n,
                                frequency_penalty=frequency_penalty, presence_penalty=presence_penalty,
                                logit_bias=_int_keys(logit_bias), seed=self._seed if seed is None else seed,
                                mirostat=mirostat_mode, mirostat_tau=mirostat_tau, mirostat_eta=mirostat_eta)
        return Sampler(params, n_ctx=self.n_ctx())

    def steering(self, logits_processor=None, stopping_criteria=None, grammar=None, syntax=None) -> Steering:
        """What steers a generation besides the sampler (see ``generation.generate.Steering``);
        grammar: GBNF text, a ``Grammar`` or a ``LazyGrammar`` (closed inside the reasoning of syntax,
        a chat answer's ``ChatSyntax``), compiled here so an invalid one fails before any token."""
        constraint = None if grammar is None else self.constraint(grammar, syntax)
        return Steering(as_callables(logits_processor), as_callables(stopping_criteria), constraint)

    def generate(self, tokens: Sequence[int], top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05,
                 typical_p: float = 1.0, temp: float = 0.80, repeat_penalty: float = 1.0, reset: bool = True,
                 frequency_penalty: float = 0.0, presence_penalty: float = 0.0, tfs_z: float = 1.0,
                 mirostat_mode: int = 0, mirostat_tau: float = 5.0, mirostat_eta: float = 0.1,
                 penalize_nl: bool = True, logits_processor=None, stopping_criteria=None, grammar=None,
                 *, logit_bias: Mapping[int, float] | None = None, seed: int | None = None,
                 repeat_last_n: int | None = None) -> Iterator[int]:
        """Yields sampled tokens after ``tokens`` for as long as the caller iterates (or the context
        lasts, a stopping criterion is met or the grammar is complete).

        With ``reset`` (default) the cache keeps its common prefix with ``tokens`` and evaluates the
        rest; with ``reset=False`` the tokens are evaluated after everything in the cache.
        End-of-generation tokens are yielded too: the caller decides when to stop.
        """
        self._check_open()
        refuse_non_defaults("generate", dict(typical_p=(typical_p, 1.0), tfs_z=(tfs_z, 1.0),
                                             penalize_nl=(penalize_nl, True)))
        smp = self.sampler(temp, top_k, top_p, min_p, repeat_penalty, repeat_last_n, frequency_penalty,
                           presence_penalty, logit_bias, seed, mirostat_mode=mirostat_mode,
                           mirostat_tau=mirostat_tau, mirostat_eta=mirostat_eta)
        steer = self.steering(logits_processor, stopping_criteria, grammar)
        return self._generate(tokens, smp, steer, reset)

    def _generate(self, tokens, smp: Sampler, steer: Steering, reset: bool) -> Iterator[int]:
        for tok, logits in self._engine.token_loop(tokens, smp, reuse=reset, steering=steer):
            yield tok
            if steer.grammar_done or steer.should_stop(self._engine.tokens, tok, logits):
                return

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
    def stream_events(self, prompt_tokens: Sequence[int], sampler: Sampler, steering: Steering | None = None, *,
                      max_tokens: int | None = 16, stop: str | Iterable[str] | None = None,
                      ignore_eos: bool = False, want_logits: bool = False,
                      shown: frozenset[int] = frozenset()) -> Iterator[TokenEvent]:
        """Text events of a completion (the lowest level with stop strings and streaming text), sampled
        by ``sampler`` (``Llama.sampler``) and steered by ``steering`` (``Llama.steering``); shown:
        control tokens written into the text (a chat syntax's markers)."""
        self._check_open()
        steer = steering if steering is not None else self.steering()
        self.last_stop_reason = None
        for ev in self._engine.stream(prompt_tokens, sampler, max_tokens=max_tokens, stop=stop,
                                      ignore_eos=ignore_eos, want_logits=want_logits, steering=steer,
                                      shown=shown):
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

    def _top_logprobs(self, lp: np.ndarray, tok: int, n_top: int) -> dict[str, float]:
        """The n_top most likely tokens' pieces -> log-probabilities, plus the chosen token's."""
        top: dict[str, float] = {}
        if n_top > 0:
            n_top = min(n_top, lp.shape[0])
            best = np.argpartition(-lp, n_top - 1)[:n_top]
            for t in best[np.argsort(-lp[best], kind="stable")]:
                top[self.token_piece(int(t))] = float(lp[t])
        top[self.token_piece(tok)] = float(lp[tok])
        return top

    def _echo_logprobs(self, toks: list[int], n_top: int) -> CompletionLogprobs:
        """Log-probabilities of the prompt's tokens (BOS left out; the first entry has none), as
        llama-cpp-python gives them with ``echo``.  Evaluates the whole prompt with every row's logits."""
        self._engine.reset()
        rows = self._engine.eval(toks, logits_all=True).reshape(len(toks), -1)  # (n_prompt, n_vocab)
        start = 1 if toks and toks[0] == self.token_bos() else 0
        out = CompletionLogprobs()
        for i in range(start, len(toks)):
            out.tokens.append(self.token_piece(toks[i]))
            out.text_offset.append(len(self.detokenize(toks[start:i]).decode("utf-8", errors="ignore")))
            if i == start:
                out.token_logprobs.append(None)
                out.top_logprobs.append(None)
            else:
                lp = _log_softmax(rows[i - 1])
                out.token_logprobs.append(float(lp[toks[i]]))
                out.top_logprobs.append(self._top_logprobs(lp, toks[i], n_top))
        return out

    def _completion_chunks(self, toks: list[int], prompt_text: str, events: Iterator[TokenEvent] | None,
                           logprobs: int | None, echo: bool) -> Iterator[Chunk]:
        """One Chunk per emitted piece; text offsets count from the start of prompt_text (the
        text before the completion), as llama-cpp-python's do."""
        n_prompt = len(toks)
        want = logprobs is not None
        if echo:
            yield Chunk(prompt_text, self._echo_logprobs(toks, logprobs) if want else None, None, n_prompt, 0)
        n_done = 0
        done: list[int] = []
        for ev in events:
            lp = None
            if ev.token is not None:
                n_done += 1
                if want and ev.logits is not None:
                    offset = len(prompt_text) + len(self.detokenize(done, prev_tokens=toks).decode(
                        "utf-8", errors="ignore"))
                    lrow = _log_softmax(ev.logits)
                    lp = CompletionLogprobs([self.token_piece(ev.token)], [offset], [float(lrow[ev.token])],
                                            [self._top_logprobs(lrow, ev.token, int(logprobs))])
                done.append(ev.token)
            if ev.text or lp is not None or ev.finish_reason is not None:
                yield Chunk(ev.text, lp, ev.finish_reason, n_prompt, n_done)

    @serialised
    def create_completion(self, prompt: str | bytes | Sequence[int], suffix: str | None = None,
                          max_tokens: int | None = 16, temperature: float = 0.8, top_p: float = 0.95,
                          min_p: float = 0.05, typical_p: float = 1.0, logprobs: int | None = None,
                          echo: bool = False, stop: str | list[str] | None = None,
                          frequency_penalty: float = 0.0, presence_penalty: float = 0.0,
                          repeat_penalty: float = 1.0, top_k: int = 40, stream: bool = False,
                          seed: int | None = None, tfs_z: float = 1.0, mirostat_mode: int = 0,
                          mirostat_tau: float = 5.0, mirostat_eta: float = 0.1, model: str | None = None,
                          stopping_criteria=None, logits_processor=None, grammar=None,
                          logit_bias: Mapping[int, float] | None = None, *, ignore_eos: bool = False,
                          repeat_last_n: int | None = None) -> dict[str, Any] | Iterator[dict[str, Any]]:
        """Completes ``prompt``; an OpenAI-style "text_completion" dict, or its chunks with ``stream``.

        llama-cpp-python's arguments, all implemented but ``suffix``, ``typical_p`` and ``tfs_z``
        (NotImplementedError when given).  max_tokens None or <= 0: until an end-of-generation token
        or the context is full.  grammar: GBNF text or a ``Grammar`` (generation ends when it is
        complete).  logits_processor / stopping_criteria: llama-cpp-python's callables (or lists).
        Bad values raise ValueError before any token is generated.
        """
        self._check_open()
        refuse_non_defaults("create_completion", dict(suffix=(suffix, None), typical_p=(typical_p, 1.0),
                                                      tfs_z=(tfs_z, 1.0)))
        check_sampling(logprobs=logprobs)
        toks = self._prompt_tokens(prompt)
        if isinstance(prompt, str):
            prompt_text = prompt
        elif isinstance(prompt, (bytes, bytearray)):
            prompt_text = bytes(prompt).decode("utf-8", errors="ignore")
        else:
            prompt_text = self.detokenize(toks).decode("utf-8", errors="ignore")
        smp = self.sampler(temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n, frequency_penalty,
                           presence_penalty, logit_bias, seed, mirostat_mode=mirostat_mode,
                           mirostat_tau=mirostat_tau, mirostat_eta=mirostat_eta)
        steer = self.steering(logits_processor, stopping_criteria, grammar)
        events = self.stream_events(toks, smp, steer, max_tokens=max_tokens, stop=stop, ignore_eos=ignore_eos,
                                    want_logits=logprobs is not None)
        cid = f"cmpl-{uuid.uuid4()}"
        created = int(time.time())
        name = model or self.model_path
        chunks = self._completion_chunks(toks, prompt_text, events, logprobs, echo)
        if stream:
            def gen() -> Iterator[dict[str, Any]]:
                for c in chunks:
                    yield {"id": cid, "object": "text_completion", "created": created, "model": name,
                           "choices": [{"text": c.text, "index": 0,
                                        "logprobs": c.logprobs.as_dict() if c.logprobs else None,
                                        "finish_reason": c.finish_reason}]}
            return gen()
        parts: list[str] = []
        merged: CompletionLogprobs | None = None
        finish, n_prompt, n_done = None, len(toks), 0
        for c in chunks:
            parts.append(c.text)
            if c.logprobs is not None:
                merged = c.logprobs if merged is None else merged.extend(c.logprobs)
            finish = c.finish_reason or finish
            n_prompt, n_done = c.n_prompt, c.n_completion
        return {"id": cid, "object": "text_completion", "created": created, "model": name,
                "choices": [{"text": "".join(parts), "index": 0,
                             "logprobs": merged.as_dict() if merged is not None else None,
                             "finish_reason": finish}],
                "usage": {"prompt_tokens": n_prompt, "completion_tokens": n_done,
                          "total_tokens": n_prompt + n_done}}

    __call__ = create_completion  # llama-cpp-python's ``llm(prompt, ...)``: the same arguments

    # ------------------------------------------------------------------ chat
    def format_chat(self, messages: Sequence[Message], add_generation_prompt: bool = True,
                    tools: Sequence[Mapping[str, Any]] | None = None, tool_note: str | None = None,
                    template_kwargs: Mapping[str, Any] | None = None) -> list[int]:
        """Prompt tokens for a conversation rendered with the model's (or the given) chat template.
        tool_note: a description of the tools added to the system message (for templates without tools)."""
        text = self.render_chat(messages, add_generation_prompt, tools, tool_note, template_kwargs)
        return self.encode_chat(text)

    def encode_chat(self, text: str) -> list[int]:
        """The tokens of a rendered conversation (control tokens written in it recognised)."""
        # the tokenizer drops a leading BOS the template writes when encoding adds one itself
        return [int(t) for t in self.tokenizer.encode(text, add_bos=True, special=True)]

    def render_chat(self, messages: Sequence[Message], add_generation_prompt: bool = True,
                    tools: Sequence[Mapping[str, Any]] | None = None, tool_note: str | None = None,
                    template_kwargs: Mapping[str, Any] | None = None) -> str:
        """The text of a conversation rendered with the chat template (see ``format_chat``);
        messages are normalized first (text parts joined, tool calls written for templates
        that do not render them).  The template sees ``enable_thinking`` (true unless
        template_kwargs says otherwise) and template_kwargs, as llama.cpp passes
        ``chat_template_kwargs``.  ValueError for a message the template cannot take."""
        from .generation.tool_calls import normalize_messages
        msgs = normalize_messages(messages, tool_note, self.chat_template_text())
        extra = {"enable_thinking": True, **(template_kwargs or {})}
        return self.tokenizer.apply_chat_template(msgs, add_generation_prompt=add_generation_prompt,
                                                  tools=list(tools) if tools else None, template=self.chat_template,
                                                  **extra)

    def reply_parser(self, prompt: str, plan, reasoning_format: str = "auto"):
        """How the answer to a rendered prompt is split (``generation.reasoning.ReplyParser``) and
        the control tokens generation must write for it; plan: the request's ``ToolPlan`` (None: no tools)."""
        from .generation import tool_calls as tc
        from .generation.reasoning import ChatSyntax, ReplyParser
        parse_tools = bool(plan is not None and plan.parse and plan.tools)
        names = [t["function"]["name"] for t in plan.tools] if parse_tools else []
        syntax = ChatSyntax.detect(self.chat_template_text(), prompt, reasoning_format, names)
        parser = ReplyParser(syntax, tc.ToolCallParser(plan) if parse_tools else None)
        return parser, self.tokenizer.token_ids(syntax.preserved)

    def reasoning_budget(self, settings, syntax):
        """The thinking budget of one chat answer (``generation.reasoning_budget.ReasoningBudget``)
        for settings (``BudgetSettings``) and the answer's ``ChatSyntax``; None when there is none."""
        from .generation.reasoning_budget import make_budget
        return make_budget(settings, syntax, self.tokenizer)

    def renders_parallel_tool_calls(self) -> bool:
        """Whether the chat template shows several tool calls of one message (the default of
        ``parallel_tool_calls``, as llama-server decides it)."""
        if self._parallel_calls is None:
            from .generation.tool_calls import renders_parallel_calls
            self._parallel_calls = renders_parallel_calls(lambda m: self.render_chat(m, False))
        return self._parallel_calls

    def constraint(self, grammar, syntax=None):
        """A fresh grammar matcher for one generation (``generation.grammar.Constraint``) of
        grammar (GBNF text or a ``Grammar``), or a ``LazyConstraint`` of a ``LazyGrammar`` (closed
        inside the reasoning blocks of syntax, a ``ChatSyntax``, when given); the vocabulary is
        prepared on first use."""
        from .generation.grammar import Constraint, GrammarVocab, LazyConstraint, LazyGrammar, as_grammar
        if self._grammar_vocab is None:
            self._grammar_vocab = GrammarVocab.from_tokenizer(self.tokenizer, self.n_vocab())
        if isinstance(grammar, LazyGrammar):
            from .generation.reasoning_budget import thinking_tracker
            gate = None if syntax is None else thinking_tracker(syntax, self.tokenizer)
            return LazyConstraint(grammar, self._grammar_vocab, gate)
        return Constraint(as_grammar(grammar), self._grammar_vocab)

    @serialised
    def create_chat_completion(self, messages: Sequence[Message], functions=None, function_call=None,
                               tools=None, tool_choice=None, temperature: float = 0.2, top_p: float = 0.95,
                               top_k: int = 40, min_p: float = 0.05, typical_p: float = 1.0,
                               stream: bool = False, stop: str | list[str] | None = None,
                               seed: int | None = None, response_format=None, max_tokens: int | None = None,
                               presence_penalty: float = 0.0, frequency_penalty: float = 0.0,
                               repeat_penalty: float = 1.0, tfs_z: float = 1.0, mirostat_mode: int = 0,
                               mirostat_tau: float = 5.0, mirostat_eta: float = 0.1, model: str | None = None,
                               logits_processor=None, grammar=None,
                               logit_bias: Mapping[int, float] | None = None, logprobs: bool | None = None,
                               top_logprobs: int | None = None, *, ignore_eos: bool = False,
                               repeat_last_n: int | None = None, reasoning_format: str = "auto",
                               chat_template_kwargs: Mapping[str, Any] | None = None,
                               reasoning_budget_tokens: int = -1, reasoning_budget_message: str = "",
                               ) -> dict[str, Any] | Iterator[dict[str, Any]]:
        """Answers a conversation; an OpenAI-style "chat.completion" dict, or "chat.completion.chunk"s.

        llama-cpp-python's arguments, all implemented but ``typical_p`` and ``tfs_z``.
        max_tokens None: until an end-of-generation token or the context is full.
        response_format: {"type": "json_object"} (any JSON object), {"type": "json_object", "schema":
        {...}} or {"type": "json_schema", "json_schema": {"schema": {...}}}: the answer is constrained
        to it.  tools / tool_choice ("auto", "none", "required" or {"type": "function", "function":
        {"name": ...}}): tool calls the model writes come back as ``message.tool_calls`` with
        finish_reason "tool_calls"; "required" and a named function are enforced by a grammar.
        functions / function_call: the older OpenAI form of tools / tool_choice.
        reasoning_format ("auto", "deepseek", "deepseek-legacy" or "none") and chat_template_kwargs:
        as llama-server reads them; a thinking model's reasoning comes back as
        ``message.reasoning_content`` (``delta.reasoning_content`` when streamed), apart from the
        answer in ``content`` (see ``generation.reasoning``).  reasoning_budget_tokens (-1: none, 0:
        end the thinking at once, N: after N tokens) and reasoning_budget_message: llama-server's
        thinking budget, whose end tag is forced token by token (see ``generation.reasoning_budget``).
        """
        self._check_open()
        refuse_non_defaults("create_chat_completion", dict(typical_p=(typical_p, 1.0), tfs_z=(tfs_z, 1.0)))
        check_sampling(top_logprobs=top_logprobs)
        from .generation import tool_calls as tc
        from .generation.reasoning import chat_stream, check_reasoning_format
        from .generation.reasoning_budget import BudgetSettings
        check_reasoning_format(reasoning_format)
        budget = BudgetSettings(reasoning_budget_tokens, reasoning_budget_message)
        tools, tool_choice = tc.merge_functions(tools, tool_choice, functions, function_call)
        plan = tc.plan_tools(tools, tool_choice, self.chat_template_text())
        given = [g for g in (grammar, _response_format_grammar(response_format)) if g is not None]
        if len(given) + plan.forcing > 1:
            raise ValueError("give only one of grammar, response_format and a forced tool_choice")
        constraint = plan.grammar_beside(given[0] if given else None)
        prompt = self.render_chat(messages, True, plan.tools, plan.system_note, chat_template_kwargs)
        toks = self.encode_chat(prompt)
        parser, shown = self.reply_parser(prompt, plan, reasoning_format)
        n_top = (top_logprobs or 0) if logprobs else None
        smp = self.sampler(temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n, frequency_penalty,
                           presence_penalty, logit_bias, seed, mirostat_mode=mirostat_mode,
                           mirostat_tau=mirostat_tau, mirostat_eta=mirostat_eta)
        steer = self.steering(logits_processor, None, constraint, parser.syntax)
        steer.budget = self.reasoning_budget(budget, parser.syntax)
        events = self.stream_events(toks, smp, steer, max_tokens=max_tokens, stop=stop, ignore_eos=ignore_eos,
                                    want_logits=n_top is not None, shown=shown)
        cid = f"chatcmpl-{uuid.uuid4()}"
        created = int(time.time())
        name = model or self.model_path
        chunks = self._completion_chunks(toks, "", events, n_top, False)
        if stream:
            return chat_stream(chunks, parser, {"id": cid, "object": "chat.completion.chunk",
                                                   "created": created, "model": name})
        parts, lps = [], []
        finish, n_prompt, n_done = None, len(toks), 0
        for c in chunks:
            parts.append(c.text)
            if c.logprobs is not None:
                lps.extend(c.logprobs.chat_content())
            finish = c.finish_reason or finish
            n_prompt, n_done = c.n_prompt, c.n_completion
        message = parser.message("".join(parts))
        if message.get("tool_calls"):
            finish = "tool_calls"
        return {"id": cid, "object": "chat.completion", "created": created, "model": name,
                "choices": [{"index": 0, "message": message,
                             "logprobs": {"content": lps} if logprobs else None, "finish_reason": finish}],
                "usage": {"prompt_tokens": n_prompt, "completion_tokens": n_done,
                          "total_tokens": n_prompt + n_done}}

    def chat_template_text(self) -> str:
        """The text of the chat template in use (for recognising its tool-call format)."""
        from .tokenizer.chat import BUILTIN_TEMPLATES, DEFAULT_TEMPLATE, resolve_template
        if self.chat_template is not None:
            return resolve_template(self.chat_template)
        return self.tokenizer.chat_template or BUILTIN_TEMPLATES[DEFAULT_TEMPLATE]

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


__all__ = ["Llama", "LlamaState", "ContextFullError", "ContextLimitError", "StreamInvalidatedError"]
