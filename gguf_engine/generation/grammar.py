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

A ``LazyGrammar`` (llama.cpp's lazy grammar, how an ``auto`` tool choice constrains a call) leaves
the output free until it matches one of its trigger patterns; its ``LazyConstraint`` then hands
the grammar the output from the trigger on and constrains the rest.
"""
from __future__ import annotations

import json
import re
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
    """A model's vocabulary in llguidance's form (an LLTokenizer), the logits row width, every
    token's text as the grammar reads it (control tokens by their text) and the tokenizer's
    encoder of text with control tokens recognised (for a lazy grammar's replayed text)."""

    lltokenizer: Any
    n_vocab: int
    pieces: list[bytes]
    encode: Any

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
        pieces: list[bytes] = []
        special: list[int] = []
        for tid in range(vocab.n_vocab):
            piece = tokenizer.token_to_piece(tid, True)
            pieces.append(piece)
            if tid in ends or int(vocab.attrs[tid]) & ATTR_UNKNOWN:
                piece = b"\xff" + piece
                special.append(tid)
            tokens.append(piece)
        tokens += [b""] * (n_vocab - len(tokens))  # a logits row wider than the vocabulary
        pieces += [b""] * (n_vocab - len(pieces))
        wrapper = llg.TokenizerWrapper(_TokenSource(tokenizer, tokens, special))
        ll = llg.LLTokenizer(wrapper, n_vocab=n_vocab, eos_token=eog or None)

        def encode(text: bytes) -> list[int]:
            return [int(t) for t in tokenizer.encode(text.decode("utf-8", errors="replace"), add_bos=False,
                                                     special=True)]
        return cls(ll, n_vocab, pieces, encode)


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


@dataclass(frozen=True)
class LazyGrammar:
    """A grammar that applies only from a trigger on (llama.cpp's lazy grammar).

    grammar: the sentences from the trigger on; triggers: regular expressions searched in the
    output generated so far (one that starts with ``^`` and ends with ``$`` must match all of it);
    the grammar is given the output from the first non-empty capture group of the match (or the
    match itself, without one) and constrains everything after it."""

    grammar: Grammar
    triggers: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.triggers:
            raise GrammarError("a lazy grammar needs at least one trigger")
        for t in self.triggers:
            try:
                re.compile(t)
            except re.error as e:
                raise GrammarError(f"grammar trigger {t!r}: {e}") from None


def trigger_start(pattern: re.Pattern, text: bytes) -> int | None:
    """Where the grammar starts in text when pattern triggers it (None: no trigger), as llama.cpp
    reads its trigger patterns (see ``LazyGrammar``)."""
    m = pattern.fullmatch(text) if pattern.pattern.startswith(b"^") and pattern.pattern.endswith(b"$") else None
    m = m or pattern.search(text)
    if m is None:
        return None
    for g in range(1, (m.re.groups or 0) + 1):
        if m.start(g) >= 0 and m.end(g) > m.start(g):
            return m.start(g)
    return m.start()


class LazyConstraint:
    """One generation's lazy grammar state: ``mask`` leaves the row alone and ``accept`` only
    collects the output until a trigger matches; then the grammar is given the output from the
    trigger on (the tokens after it, and the rest of a token the trigger starts inside, re-encoded)
    and constrains every later token, as a ``Constraint`` does.

    gate: a thinking tracker (``generation.reasoning_budget.ReasoningBudget`` without a budget) or
    None.  As llama.cpp runs a lazy grammar beside its reasoning-budget sampler, the grammar neither
    masks nor reads the tokens inside a reasoning block; the end tag that closes it is read."""

    def __init__(self, lazy: LazyGrammar, vocab: GrammarVocab, gate: Any = None):
        self.grammar = lazy
        self.inner = Constraint(lazy.grammar, vocab)
        self._vocab = vocab
        self._triggers = [re.compile(t.encode("utf-8"), re.DOTALL) for t in lazy.triggers]
        self.gate = gate
        self.awaiting = True
        self._text = b""                              # the output while awaiting a trigger
        self._spans: list[tuple[int, int, int]] = []  # (token, start, end) of each token in _text

    def _open(self) -> bool:
        """The grammar applies now: outside a reasoning block."""
        from .reasoning_budget import BudgetState
        return self.gate is None or self.gate.state in (BudgetState.IDLE, BudgetState.DONE)

    def mask(self, row: np.ndarray) -> np.ndarray:
        if self.awaiting or not self._open():
            return row
        return self.inner.mask(row)

    def accept(self, token: int) -> None:
        if self.gate is None:
            self._take(token)
            return
        was_open = self._open()
        self.gate.accept(token)
        if was_open:
            self._take(token)
        elif self._open():                            # a reasoning block just ended: its end tag
            for t in self.gate.last_end:
                self._take(t)

    def accept_many(self, tokens: Sequence[int]) -> None:
        for t in tokens:
            self.accept(t)

    def _take(self, token: int) -> None:
        if not self.awaiting:
            self.inner.accept(token)
            return
        token = int(token)
        piece = self._vocab.pieces[token] if 0 <= token < len(self._vocab.pieces) else b""
        self._spans.append((token, len(self._text), len(self._text) + len(piece)))
        self._text += piece
        for pattern in self._triggers:
            start = trigger_start(pattern, self._text)
            if start is None:
                continue
            self.awaiting = False
            for tok, a, b in self._spans:
                if b <= start:
                    continue
                if a >= start:
                    self.inner.accept(tok)
                else:                                 # the trigger starts inside this token
                    self.inner.accept_many(self._vocab.encode(self._text[start:b]))
            self._text, self._spans = b"", []
            return

    @property
    def done(self) -> bool:
        return not self.awaiting and self.inner.done

    @property
    def accepting(self) -> bool:
        return self.awaiting or self.inner.accepting
