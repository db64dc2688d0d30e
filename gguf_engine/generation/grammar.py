"""Constrained decoding: GBNF grammars and JSON schemas, enforced token by token with llguidance.

llguidance (MIT, Rust with Python bindings, no further dependencies; llama.cpp, vLLM and SGLang use it)
compiles a grammar against the model's vocabulary, given as the byte string of every token, and
computes for each step the set of tokens that keep the output inside the grammar.  GBNF is first
rewritten into llguidance's Lark dialect by llguidance's own converter; JSON schemas compile directly.

``Grammar`` is a checked grammar definition (independent of any model); ``GrammarVocab`` is a
model's vocabulary prepared for llguidance (built once per model); ``Constraint`` is one
generation's matcher: ``mask(row)`` sets the logits of every token the grammar forbids to -inf
before the sampler sees them, ``accept(token)`` advances it, and ``done`` says that the grammar is
complete and nothing more may follow.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np


class GrammarError(ValueError):
    """A grammar or JSON schema that does not compile (the message says where and why)."""


def _llguidance():
    try:
        import llguidance
        import llguidance.numpy  # noqa: F401  (the bitmask helpers)
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise GrammarError(f"constrained decoding needs the llguidance package ({e})") from None
    return llguidance


@dataclass(frozen=True)
class Grammar:
    """A grammar definition in llguidance's form, checked when made.

    kind: "gbnf", "json_schema" or "lark"; source: the text it was made from; definition: what
    llguidance compiles.  Also offers llama-cpp-python's ``LlamaGrammar`` constructors
    (``from_string``, ``from_file``, ``from_json_schema``)."""

    kind: str
    source: str
    definition: str

    @classmethod
    def from_gbnf(cls, text: str, origin: str = "grammar") -> "Grammar":
        """A GBNF grammar as llama.cpp writes them (``root`` is the start rule)."""
        llg = _llguidance()
        from llguidance.gbnf_to_lark import any_to_lark
        if not isinstance(text, str) or not text.strip():
            raise GrammarError(f"{origin}: the grammar is empty")
        try:
            lark = any_to_lark(text)
        except Exception as e:
            raise GrammarError(f"{origin}: not a valid GBNF grammar: {e}") from None
        return cls._checked("gbnf", text, llg.LLMatcher.grammar_from_lark(lark), origin)

    @classmethod
    def from_json_schema(cls, schema: str | Mapping[str, Any], origin: str = "JSON schema") -> "Grammar":
        """A JSON schema (text or a dict); the output is JSON text that validates against it."""
        llg = _llguidance()
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except json.JSONDecodeError as e:
                raise GrammarError(f"{origin}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
        if not isinstance(schema, Mapping):
            raise GrammarError(f"{origin}: a JSON schema must be an object, got {type(schema).__name__}")
        text = json.dumps(closed_objects(schema))
        try:
            definition = llg.LLMatcher.grammar_from_json_schema(
                text, defaults={"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "})
        except ValueError as e:
            raise GrammarError(f"{origin}: {e}") from None
        return cls._checked("json_schema", text, definition, origin)

    @classmethod
    def from_lark(cls, text: str, origin: str = "grammar") -> "Grammar":
        llg = _llguidance()
        return cls._checked("lark", text, llg.LLMatcher.grammar_from_lark(text), origin)

    @classmethod
    def json_object(cls) -> "Grammar":
        """Any JSON object (response_format {"type": "json_object"} without a schema)."""
        return cls.from_json_schema({"type": "object"})

    @classmethod
    def _checked(cls, kind: str, source: str, definition: str, origin: str) -> "Grammar":
        llg = _llguidance()
        err = llg.LLMatcher.validate_grammar(definition)
        if err:
            raise GrammarError(f"{origin}: {err}")
        return cls(kind, source, definition)

    # llama-cpp-python's LlamaGrammar names
    @classmethod
    def from_string(cls, grammar: str, verbose: bool = True) -> "Grammar":
        return cls.from_gbnf(grammar)

    @classmethod
    def from_file(cls, file: str | Path, verbose: bool = True) -> "Grammar":
        path = Path(file)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise GrammarError(f"cannot read grammar file '{path}': {e}") from None
        return cls.from_gbnf(text, origin=str(path))


def closed_objects(schema: Any) -> Any:
    """The schema with ``additionalProperties: false`` on every object schema that lists
    ``properties`` and says nothing about others: llama.cpp's reading (an object with properties
    gets only those; ``{"type": "object"}`` alone is any object), where JSON Schema itself would
    allow any extra key."""
    if isinstance(schema, Mapping):
        out = {k: closed_objects(v) for k, v in schema.items()}
        if isinstance(schema.get("properties"), Mapping) and "additionalProperties" not in schema:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [closed_objects(v) for v in schema]
    return schema


def as_grammar(grammar: Any) -> Grammar:
    """``grammar=`` as the API takes it: GBNF text, a ``Grammar``, or an object with GBNF text in
    ``_grammar`` (llama-cpp-python's LlamaGrammar keeps it there)."""
    if isinstance(grammar, Grammar):
        return grammar
    if isinstance(grammar, str):
        return Grammar.from_gbnf(grammar)
    text = getattr(grammar, "_grammar", None)
    if isinstance(text, str):
        return Grammar.from_gbnf(text)
    raise TypeError(f"grammar must be GBNF text or a Grammar, got {type(grammar).__name__}")


def response_format_grammar(response_format: Mapping[str, Any]) -> Grammar | None:
    """The grammar for a response_format: {"type": "text"} (none), {"type": "json_object"} with or
    without llama-cpp-python's "schema", or OpenAI's {"type": "json_schema", "json_schema": {"schema": ...}}."""
    if not isinstance(response_format, Mapping) or "type" not in response_format:
        raise ValueError(f"response_format must be an object with a \"type\", got {response_format!r}")
    kind = response_format["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        schema = response_format.get("schema")
        return Grammar.json_object() if schema is None else Grammar.from_json_schema(schema, "response_format.schema")
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, Mapping):
            raise ValueError("response_format of type json_schema needs a \"json_schema\" object")
        schema = spec.get("schema", spec if "type" in spec or "properties" in spec else None)
        if schema is None:
            raise ValueError("response_format.json_schema needs a \"schema\"")
        return Grammar.from_json_schema(schema, "response_format.json_schema.schema")
    raise ValueError(f"response_format type {kind!r} is not one of text, json_object, json_schema")


class _TokenSource:
    """What llguidance's TokenizerWrapper reads: every token's bytes, the special ids, a tokenizer."""

    def __init__(self, tokenizer, tokens: list[bytes], special: list[int]):
        self._tok = tokenizer
        self.tokens = tokens
        self.special_token_ids = special
        self.eos_token_id = tokenizer.eos_id if tokenizer.eos_id is not None else 0
        self.bos_token_id = tokenizer.bos_id

    def __call__(self, text: bytes) -> list[int]:
        return [int(t) for t in self._tok.encode(bytes(text).decode("utf-8", errors="replace"),
                                                 add_bos=False, special=False)]


@dataclass
class GrammarVocab:
    """A model's vocabulary in llguidance's form (an LLTokenizer) and the logits row width."""

    lltokenizer: Any
    n_vocab: int

    @classmethod
    def from_tokenizer(cls, tokenizer, n_vocab: int) -> "GrammarVocab":
        """Token bytes from the GGUF vocabulary.  As llama.cpp's grammar reads tokens by their text,
        a control token (``<|channel|>``, ``<|im_start|>``...) matches its text in a grammar, so a
        literal ``"<|channel|>"`` allows the token as well as the same text spelled by ordinary
        tokens.  End-of-generation tokens and the unknown token are marked with a leading 0xFF byte
        instead (llguidance's special tokens): they never match text, and an end-of-generation
        token may only end a complete sentence."""
        from ..tokenizer.vocab import ATTR_UNKNOWN
        llg = _llguidance()
        vocab = tokenizer.vocab
        eog = sorted(int(t) for t in (tokenizer.eog_ids or ()))
        if tokenizer.eos_id is not None and tokenizer.eos_id >= 0 and tokenizer.eos_id not in eog:
            eog.append(int(tokenizer.eos_id))
        ends = set(eog)
        tokens: list[bytes] = []
        special: list[int] = []
        for tid in range(vocab.n_vocab):
            piece = tokenizer.token_to_piece(tid, True)
            if tid in ends or int(vocab.attrs[tid]) & ATTR_UNKNOWN:
                piece = b"\xff" + piece
                special.append(tid)
            tokens.append(piece)
        tokens += [b""] * (n_vocab - len(tokens))  # a logits row wider than the vocabulary
        wrapper = llg.TokenizerWrapper(_TokenSource(tokenizer, tokens, special))
        ll = llg.LLTokenizer(wrapper, n_vocab=n_vocab, eos_token=eog or None)
        return cls(ll, n_vocab)


class Constraint:
    """One generation's grammar state."""

    def __init__(self, grammar: Grammar, vocab: GrammarVocab):
        llg = _llguidance()
        from llguidance.numpy import allocate_token_bitmask
        self.grammar = grammar
        self._vocab = vocab
        self._matcher = llg.LLMatcher(vocab.lltokenizer, grammar.definition, log_level=0)
        if self._matcher.is_error():
            raise GrammarError(self._matcher.get_error())
        self._bits = allocate_token_bitmask(1, vocab.lltokenizer.vocab_size)  # (1, ceil(V/32)) int32

    def allowed(self) -> np.ndarray:
        """(n_vocab,) bool: the tokens the grammar allows next."""
        from llguidance.numpy import fill_next_token_bitmask
        fill_next_token_bitmask(self._matcher, self._bits, 0)
        self._raise_if_error()
        flags = np.unpackbits(self._bits.view(np.uint8), bitorder="little")
        return flags[: self._vocab.n_vocab].astype(bool)

    def mask(self, row: np.ndarray) -> np.ndarray:
        """Sets the logits of forbidden tokens to -inf in place; row: (n_vocab,) float32."""
        allowed = self.allowed()
        n = min(row.shape[0], allowed.shape[0])
        row[:n][~allowed[:n]] = -np.inf
        row[n:] = -np.inf
        return row

    def accept(self, token: int) -> None:
        if not self._matcher.consume_token(int(token)):
            self._raise_if_error()
            raise GrammarError(f"token {int(token)} does not fit the grammar")

    def accept_many(self, tokens: Sequence[int]) -> None:
        for t in tokens:
            self.accept(t)

    @property
    def done(self) -> bool:
        """The grammar is complete and allows nothing more."""
        return bool(self._matcher.is_stopped())

    @property
    def accepting(self) -> bool:
        """The output so far is a complete sentence of the grammar (it may still go on)."""
        return bool(self._matcher.is_accepting())

    def _raise_if_error(self) -> None:
        if self._matcher.is_error():
            raise GrammarError(f"grammar matcher failed: {self._matcher.get_error()}")
