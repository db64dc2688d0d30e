"""Byte-level BPE (``tokenizer.ggml.model = gpt2``) with the ``tokenizers`` library.

The text is split by the pre-tokenizer regexes of ``tokenizer.ggml.pre`` (see pretokenizers.py), each
piece's bytes are mapped to GPT-2's printable byte alphabet, and merges are applied by rank, lowest
first and leftmost on ties, exactly as llama.cpp's BPE session does.  ``ignore_merges`` vocabularies
(Llama 3 and others) take a whole piece as one token when it is in the vocabulary.
"""
from __future__ import annotations

import re
from functools import lru_cache

from .pretokenizers import pre_config
from .vocab import Vocab, VocabError


@lru_cache(maxsize=1)
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    out = {}
    extra = 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return out


@lru_cache(maxsize=1)
def unicode_to_byte() -> dict[str, int]:
    return {c: b for b, c in byte_to_unicode().items()}


def _split_merge(m: str) -> tuple[str, str] | None:
    pos = m.find(" ", 1)           # as llama.cpp: the first space after the first character
    return (m[:pos], m[pos + 1:]) if pos > 0 else None


def _parse_merges(merges, token_to_id: dict) -> list[tuple[str, str]]:
    """Merges "a b" -> pairs in rank order, first occurrence kept, pairs whose parts or result are not
    tokens dropped (the BPE library cannot represent them)."""
    out = []
    seen = set()
    for m in merges:
        p = _split_merge(m)
        if p is None or p in seen:
            continue
        a, b = p
        if a not in token_to_id or b not in token_to_id or a + b not in token_to_id:
            continue
        seen.add(p)
        out.append(p)
    return out


class ByteLevelBPE:
    """Encodes raw-text fragments (no special tokens inside) to token ids."""

    def __init__(self, vocab: Vocab, source: str = "<gguf>"):
        from tokenizers import Regex, Tokenizer, models, pre_tokenizers

        cfg = pre_config(vocab.pre, source)
        model = None
        if len(set(vocab.merges)) == len(vocab.merges):
            # fast path: every merge well formed and made of tokens (the usual case)
            pairs = [(m[:k], m[k + 1:]) for m in vocab.merges for k in (m.find(" ", 1),) if k > 0]
            try:
                model = models.BPE(vocab=vocab.token_to_id, merges=pairs, fuse_unk=False,
                                   ignore_merges=vocab.ignore_merges)
            except Exception:
                model = None
        if model is None:
            pairs = _parse_merges(vocab.merges, vocab.token_to_id)
            try:
                model = models.BPE(vocab=vocab.token_to_id, merges=pairs, fuse_unk=False,
                                   ignore_merges=vocab.ignore_merges)
            except Exception as e:   # the tokenizers library rejects the vocabulary
                raise VocabError(f"{source}: cannot build the BPE model: {e}") from e
        tok = Tokenizer(model)
        splits = [pre_tokenizers.Split(Regex(r), behavior="isolated", invert=False) for r in cfg.regexes]
        after = [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
        # A byte whose character is not a token stays a symbol of its own in llama.cpp (blocking
        # merges across it) and is dropped at the end; the BPE library would drop it first and
        # merge its neighbours.  Isolating such characters reproduces llama.cpp.
        missing = [c for c in byte_to_unicode().values() if c not in vocab.token_to_id]
        if missing:
            cls = "".join(f"\\x{{{ord(c):X}}}" for c in missing)
            after.append(pre_tokenizers.Split(Regex(f"[{cls}]"), behavior="isolated", invert=False))
        tok.pre_tokenizer = pre_tokenizers.Sequence(splits + after)
        self._tok = tok
        # the offset-free batch encoder where the library has it (same ids, less work)
        self._encode_batch = getattr(tok, "encode_batch_fast", tok.encode_batch)

    def encode_many(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text.  Long texts are cut into chunks where no pre-tokenizer piece
        can straddle the cut, and all chunks are encoded as one parallel batch."""
        if not texts:
            return []
        chunks: list[str] = []
        counts: list[int] = []
        for t in texts:
            before = len(chunks)
            chunks.extend(split_safe(t))
            counts.append(len(chunks) - before)
        enc = self._encode_batch(chunks, add_special_tokens=False)
        out = []
        k = 0
        for c in counts:
            ids: list[int] = []
            for e in enc[k:k + c]:
                ids.extend(e.ids)
            out.append(ids)
            k += c
        return out


# A newline preceded by a non-space and followed by an ASCII letter: none of the pre-tokenizer
# regexes has a match that contains "\n" followed by a letter (newlines only end a match, or are
# split off on their own), and no lookahead can see across it differently, so text cut right
# after such a newline pre-tokenizes exactly as the whole.
_SAFE_CUT = re.compile(r"(?<=\S)\n(?=[A-Za-z])")
CHUNK_CHARS = 8192


def split_safe(text: str, size: int = CHUNK_CHARS) -> list[str]:
    """``text`` cut at safe newlines into pieces of roughly ``size`` characters (or more)."""
    if len(text) <= 2 * size:
        return [text]
    out = []
    start = 0
    while True:
        m = _SAFE_CUT.search(text, start + size)
        if m is None:
            out.append(text[start:])
            return out
        out.append(text[start:m.end()])
        start = m.end()
