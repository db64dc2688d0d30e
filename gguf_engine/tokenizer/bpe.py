"""Byte-level BPE (``tokenizer.ggml.model = gpt2``) with the ``tokenizers`` library.

The text is split by the pre-tokenizer regexes of ``tokenizer.ggml.pre`` (see pretokenizers.py), each
piece's bytes are mapped to GPT-2's printable byte alphabet, and merges are applied by rank, lowest
first and leftmost on ties, exactly as llama.cpp's BPE session does.  ``ignore_merges`` vocabularies
(Llama 3 and others) take a whole piece as one token when it is in the vocabulary.
"""
from __future__ import annotations

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


def _parse_merges(merges, token_to_id: dict, source: str) -> list[tuple[str, str]]:
    """Merges "a b" -> pairs, first occurrence kept; pairs whose parts or result are not tokens dropped."""
    out = []
    seen = set()
    for m in merges:
        pos = m.find(" ", 1)
        if pos < 0:
            continue
        a, b = m[:pos], m[pos + 1:]
        if (a, b) in seen or a not in token_to_id or b not in token_to_id or a + b not in token_to_id:
            continue
        seen.add((a, b))
        out.append((a, b))
    return out


class ByteLevelBPE:
    """Encodes raw-text fragments (no special tokens inside) to token ids."""

    def __init__(self, vocab: Vocab, source: str = "<gguf>"):
        from tokenizers import Regex, Tokenizer, models, pre_tokenizers

        cfg = pre_config(vocab.pre, source)
        merges = _parse_merges(vocab.merges, vocab.token_to_id, source)
        try:
            model = models.BPE(vocab=vocab.token_to_id, merges=merges, fuse_unk=False,
                               ignore_merges=vocab.ignore_merges)
        except Exception as e:   # pragma: no cover - the tokenizers library rejects the vocabulary
            raise VocabError(f"{source}: cannot build the BPE model: {e}") from e
        tok = Tokenizer(model)
        splits = [pre_tokenizers.Split(Regex(r), behavior="isolated", invert=False) for r in cfg.regexes]
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            splits + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        self._tok = tok

    def encode_many(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        if len(texts) == 1:
            return [self._tok.encode(texts[0], add_special_tokens=False).ids]
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]
