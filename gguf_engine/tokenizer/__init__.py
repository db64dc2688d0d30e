"""Tokenizer rebuilt from a GGUF file's metadata alone, matching llama.cpp token for token.

    tok = Tokenizer.from_gguf("model.gguf")
    ids = tok.encode("Hello world", add_bos=True)
    text = tok.decode(ids)
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}])
"""
from __future__ import annotations

import os
from typing import Any, Iterable, Mapping

from .chat import BUILTIN_TEMPLATES, ChatTemplateError, render_chat_template, resolve_template
from .detok import PieceTable, StreamDecoder, detokenize
from .pretokenizers import PRE_NAMES, UnknownPreTokenizer
from .special import SpecialMatcher
from .vocab import Vocab, VocabError, load_vocab

__all__ = ["Tokenizer", "Vocab", "VocabError", "UnknownPreTokenizer", "ChatTemplateError", "StreamDecoder",
           "BUILTIN_TEMPLATES", "PRE_NAMES", "load_vocab"]


class Tokenizer:
    """Text <-> token ids for one GGUF vocabulary (SPM or byte-level BPE)."""

    def __init__(self, vocab: Vocab, source: str = "<gguf>"):
        self.vocab = vocab
        self.source = source
        self._special = SpecialMatcher(vocab)
        self._pieces = PieceTable(vocab)
        self._max_token_bytes: int | None = None
        self._ids_by_text: dict[str, int] | None = None
        if vocab.kind == "spm":
            from .spm import make_spm_engine
            self._engine = make_spm_engine(vocab)
        else:
            from .bpe import ByteLevelBPE
            self._engine = ByteLevelBPE(vocab, source)

    # -- construction ------------------------------------------------------
    @classmethod
    def from_gguf(cls, path: str | os.PathLike) -> "Tokenizer":
        """Load the tokenizer of any GGUF file (vocabulary-only files included)."""
        from ..gguf import GGUFReader
        with GGUFReader(path) as reader:
            return cls.from_reader(reader, source=os.fspath(path))

    @classmethod
    def from_reader(cls, reader, source: str | None = None) -> "Tokenizer":
        """Build from an open GGUFReader (metadata only), so a model loader reads the file once."""
        return cls.from_metadata(reader.metadata, source or str(getattr(reader, "path", "<gguf>")))

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any], source: str = "<gguf>") -> "Tokenizer":
        return cls(load_vocab(metadata, source), source)

    # -- properties -----------------------------------------------------------
    @property
    def n_vocab(self) -> int:
        return self.vocab.n_vocab

    def min_tokens(self, text: str) -> int:
        """A lower bound on the number of tokens ``text`` encodes to, without encoding it: no token
        stands for more bytes than its own (UTF-8) text in the vocabulary holds.  Lets a caller refuse
        a text far too long for its context before paying for its tokenization."""
        if self._max_token_bytes is None:
            self._max_token_bytes = max(1, max(len(t.encode("utf-8")) for t in self.vocab.tokens))
        return len(text.encode("utf-8")) // self._max_token_bytes

    @property
    def bos_id(self) -> int | None:
        return self.vocab.special["bos"]

    @property
    def eos_id(self) -> int | None:
        return self.vocab.special["eos"]

    @property
    def eot_id(self) -> int | None:
        return self.vocab.special["eot"]

    @property
    def unk_id(self) -> int | None:
        return self.vocab.special["unk"]

    @property
    def pad_id(self) -> int | None:
        return self.vocab.special["pad"]

    @property
    def eog_ids(self) -> set[int]:
        """Token ids that end generation (EOS, EOT, <|im_end|>, <end_of_turn>, ...)."""
        return set(self.vocab.eog_ids)

    def is_eog(self, tid: int) -> bool:
        return tid in self.vocab.eog_ids

    @property
    def add_bos(self) -> bool:
        return self.vocab.add_bos

    @property
    def add_eos(self) -> bool:
        return self.vocab.add_eos

    @property
    def model_name(self) -> str:
        return self.vocab.name or os.path.basename(self.source)

    def token_text(self, tid: int) -> str:
        """The vocabulary's raw text for a token (``▁Hello``, ``Ġworld``, ``<0x0A>``...)."""
        return self.vocab.tokens[tid]

    def token_to_id(self, text: str) -> int | None:
        return self.vocab.token_to_id.get(text)

    # -- encoding -----------------------------------------------------------
    def encode(self, text: str | bytes, add_bos: bool = False, special: bool = False) -> list[int]:
        """Token ids of ``text``.

        ``add_bos``: add the model's BOS (and EOS where the model asks for it) as llama.cpp's
        ``add_special`` does, i.e. only when the model's ``add_bos_token`` flag is set.
        ``special``: recognise control tokens written in the text (``<|im_start|>``...).
        """
        if isinstance(text, (bytes, bytearray, memoryview)):
            try:
                text = bytes(text).decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"text is not valid UTF-8 at byte {e.start}") from None
        v = self.vocab
        frags = self._special.partition(text, special)
        out: list[int] = []
        if add_bos and v.add_bos:
            if v.special["bos"] is None:
                raise VocabError(f"{self.source}: the model asks for a BOS token but has none")
            out.append(v.special["bos"])
        texts: list[str] = []
        if v.kind == "spm":
            prev_special = True
            for f in frags:
                if isinstance(f, int):
                    prev_special = True
                    continue
                s = text[f[0]:f[1]]
                if v.add_space_prefix and prev_special:
                    s = " " + s
                texts.append(s.replace(" ", "\u2581"))
                prev_special = False
        else:
            for f in frags:
                if not isinstance(f, int):
                    s = text[f[0]:f[1]]
                    texts.append(s.replace(" ", "\u2581") if v.escape_whitespaces else s)
        encoded = iter(self._engine.encode_many(texts))
        for f in frags:
            if isinstance(f, int):
                out.append(f)
            else:
                out.extend(next(encoded))
        if add_bos and v.add_eos:
            if v.special["eos"] is None:
                raise VocabError(f"{self.source}: the model asks for an EOS token but has none")
            out.append(v.special["eos"])
        return out

    def tokenize(self, text: str | bytes, add_bos: bool = False, special: bool = False) -> list[int]:
        return self.encode(text, add_bos=add_bos, special=special)

    # -- decoding -----------------------------------------------------------
    def token_to_piece(self, tid: int, special: bool = False) -> bytes:
        """The bytes one token renders as (control tokens only with ``special=True``)."""
        return self._pieces.piece(int(tid), special)

    def decode_bytes(self, ids: Iterable[int], special: bool = False, remove_special: bool = False) -> bytes:
        """Bytes of ``ids`` (llama.cpp's detokenize: SPM leading space dropped, clean-up applied)."""
        return detokenize(self.vocab, self._pieces, ids, special=special, remove_special=remove_special)

    def decode(self, ids: Iterable[int], special: bool = False, remove_special: bool = False) -> str:
        """Text of ``ids``; invalid UTF-8 (e.g. a cut multi-byte character) becomes U+FFFD."""
        return self.decode_bytes(ids, special, remove_special).decode("utf-8", errors="replace")

    def detokenize(self, ids: Iterable[int], special: bool = False) -> str:
        return self.decode(ids, special=special)

    def stream_decoder(self, special: bool = False, strip_leading_space: bool = False,
                       shown: frozenset[int] = frozenset()) -> StreamDecoder:
        """An incremental decoder for streaming generation (``.push(id) -> str``, ``.flush() -> str``).

        Never emits half a UTF-8 character.  By default pieces keep their leading space, as llama.cpp
        streams them; ``strip_leading_space=True`` applies decode()'s SPM rule (the first token of
        the sequence loses one leading space when the vocabulary adds a space prefix).  ``shown``:
        control tokens written out anyway (llama-server's preserved tokens)."""
        return StreamDecoder(self.vocab, self._pieces, special, strip_leading_space, shown)

    def token_ids(self, texts) -> frozenset[int]:
        """Ids of the tokens whose text is one of texts (texts the vocabulary lacks are skipped)."""
        if not texts:
            return frozenset()
        if self._ids_by_text is None:
            self._ids_by_text = {t: i for i, t in enumerate(self.vocab.tokens)}
        return frozenset(self._ids_by_text[t] for t in texts if t in self._ids_by_text)

    # -- chat -------------------------------------------------------------------
    @property
    def chat_template(self) -> str | None:
        return self.vocab.chat_template

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True,
                            tools: list | None = None, template: str | None = None, **kwargs) -> str:
        """Render a conversation with the model's template (or ``template``: a built-in name, a file
        path or template text); models without one get ChatML.  Encode the result with
        ``encode(text, add_bos=True, special=True)``: a leading BOS text the template writes is
        dropped here when the model adds BOS on encoding, as llama.cpp does."""
        src = resolve_template(template) if template is not None else self.vocab.chat_template
        v = self.vocab
        bos = v.tokens[v.special["bos"]] if v.special["bos"] is not None else ""
        eos = v.tokens[v.special["eos"]] if v.special["eos"] is not None else ""
        text = render_chat_template(src, messages, add_generation_prompt=add_generation_prompt,
                                    bos_token=bos, eos_token=eos, tools=tools, model_name=self.model_name,
                                    **kwargs)
        # as llama.cpp: the BOS the template writes is dropped when encoding adds one anyway
        if v.add_bos and bos and text.startswith(bos):
            text = text[len(bos):]
        return text

    def __repr__(self) -> str:
        return (f"Tokenizer({self.model_name!r}, {self.vocab.kind.upper()}, n_vocab={self.n_vocab}, "
                f"pre={self.vocab.pre!r}, bos={self.bos_id}, eos={self.eos_id})")
