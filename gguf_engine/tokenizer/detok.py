"""Detokenization: token -> bytes (llama.cpp's token_to_piece), ids -> text, and a streaming decoder.

* SPM: ``▁`` becomes a space, ``<0xNN>`` tokens become their byte, and the very first token of a
  detokenized sequence loses one leading space when the vocabulary adds a space prefix.
* BPE: GPT-2's byte alphabet is mapped back to bytes.
* Control and unknown tokens render as nothing unless ``special=True``; user-defined tokens always
  render as their text.
* Vocabularies with ``clean_spaces`` get llama.cpp's clean-up passes (" ," -> ",", " 's" -> "'s", ...).
"""
from __future__ import annotations

from .bpe import unicode_to_byte
from .vocab import (ATTR_BYTE, ATTR_CONTROL, ATTR_NORMAL, ATTR_UNKNOWN, ATTR_USER_DEFINED, Vocab)

_HIDDEN = ATTR_UNKNOWN | ATTR_CONTROL


class PieceTable:
    """Lazily computed token pieces (the bytes each token renders as with ``special=True``)."""

    def __init__(self, vocab: Vocab):
        self.vocab = vocab
        self._cache: dict[int, bytes] = {}

    def _compute(self, tid: int) -> bytes:
        v = self.vocab
        text = v.tokens[tid]
        attr = int(v.attrs[tid])
        if attr & (_HIDDEN | ATTR_USER_DEFINED):
            return text.encode("utf-8")
        if attr & ATTR_NORMAL:
            if v.kind == "spm" or v.escape_whitespaces:
                return text.replace("\u2581", " ").encode("utf-8")
            u2b = unicode_to_byte()
            out = bytearray()
            for ch in text:
                b = u2b.get(ch)
                if b is None:   # not a byte-level character: llama.cpp writes a marker
                    out += b"[UNK_BYTE_0x" + ch.encode("utf-8").hex().encode() + text.encode("utf-8") + b"]"
                else:
                    out.append(b)
            return bytes(out)
        if attr & ATTR_BYTE:
            return bytes([int(text[3:5], 16)])
        return b""

    def piece(self, tid: int, special: bool) -> bytes:
        if not 0 <= tid < self.vocab.n_vocab:
            raise IndexError(f"token id {tid} out of range [0, {self.vocab.n_vocab})")
        if not special and self.vocab.attrs[tid] & _HIDDEN:
            return b""
        p = self._cache.get(tid)
        if p is None:
            p = self._cache[tid] = self._compute(tid)
        return p


def clean_spaces(text: bytes) -> bytes:
    """llama.cpp's clean_up_tokenization_spaces passes on detokenized bytes."""
    t = bytearray(text)
    # " ?", " !", " .", " ,"
    out = bytearray(t[:1])
    for i in range(1, len(t)):
        x = t[i]
        if t[i - 1] == 0x20 and x in b"?!.,":
            out.pop()
        out.append(x)
    # " ' " -> "'"
    t, out = out, bytearray(out[:1])
    i = 1
    while i < len(t):
        x = t[i]
        if x == 0x27 and i + 1 < len(t) and t[i - 1] == 0x20 and t[i + 1] == 0x20:
            out.pop()
            t[i + 1] = 0    # the skipped space reads as NUL to the next comparison, as in llama.cpp
            out.append(x)
            i += 2
            continue
        out.append(x)
        i += 1
    # " 's", " 'm", " 're", " 've"
    t, out = out, bytearray(out[:1])
    for i in range(1, len(t)):
        x = t[i]
        if t[i - 1] == 0x20 and x == 0x27 and i + 1 < len(t):
            x1 = t[i + 1]
            if x1 in b"sm":
                out.pop()
            elif i + 2 < len(t) and ((x1 == 0x72 and t[i + 2] == 0x65) or (x1 == 0x76 and t[i + 2] == 0x65)):
                out.pop()
        out.append(x)
    return bytes(out)


def detokenize(vocab: Vocab, pieces: PieceTable, ids, special: bool = False,
               remove_special: bool = False) -> bytes:
    """Bytes of ``ids`` as llama.cpp's llama_detokenize(remove_special, unparse_special=special)."""
    ids = [int(i) for i in ids]
    remove_space = vocab.add_space_prefix
    bos, eos = vocab.special.get("bos"), vocab.special.get("eos")
    if remove_special and vocab.add_bos and ids and ids[0] == bos:
        remove_space = False
        ids = ids[1:]
    if remove_special and vocab.add_eos and ids and ids[-1] == eos:
        ids = ids[:-1]
    parts = []
    for tid in ids:
        p = pieces.piece(tid, special)
        if remove_space and p[:1] == b" ":
            p = p[1:]
        remove_space = False
        parts.append(p)
    out = b"".join(parts)
    if vocab.clean_spaces:
        out = clean_spaces(out)
    return out


def _utf8_complete(buf: bytes) -> int:
    """Length of the longest prefix of ``buf`` that does not end inside a UTF-8 character."""
    n = len(buf)
    i = n - 1
    # walk back over at most 3 continuation bytes to the lead byte
    while i >= 0 and n - i <= 4 and (buf[i] & 0xC0) == 0x80:
        i -= 1
    if i < 0 or n - i > 4:
        return n
    lead = buf[i]
    need = 1 if lead < 0x80 else 2 if lead >> 5 == 0b110 else 3 if lead >> 4 == 0b1110 else \
        4 if lead >> 3 == 0b11110 else 1
    return n if n - i >= need else i


class StreamDecoder:
    """Incremental detokenizer: ``push(id)`` returns the text that became final, ``flush()`` the rest.

    No half UTF-8 character is ever emitted, and with clean-up vocabularies text near a trailing space
    is held until it is settled.  Pieces keep their leading space, as llama.cpp streams them (a
    continuation of a prompt needs it); with ``strip_leading_space=True`` the first token loses it as
    in ``decode``, and the concatenation of everything returned equals ``decode(ids, special=...)``.
    """

    def __init__(self, vocab: Vocab, pieces: PieceTable, special: bool = False,
                 strip_leading_space: bool = False, shown: frozenset[int] = frozenset()):
        """shown: control tokens rendered even without ``special`` (a chat syntax's markers)."""
        self.vocab = vocab
        self.pieces = pieces
        self.special = special
        self.shown = shown
        self._first = strip_leading_space
        self._buf = b""

    def push(self, tid: int) -> str:
        p = self.pieces.piece(int(tid), self.special or tid in self.shown)
        if self._first:
            if self.vocab.add_space_prefix and p[:1] == b" ":
                p = p[1:]
            self._first = False
        self._buf += p
        cut = len(self._buf)
        if self.vocab.clean_spaces:
            # clean-up patterns start at a space and span at most 4 bytes: cut before any space
            # among the last 3 bytes so the two sides are cleaned independently of each other
            while cut > 0 and b" " in self._buf[max(0, cut - 3):cut]:
                cut -= 1
        cut = _utf8_complete(self._buf[:cut])
        return self._emit(cut)

    def _emit(self, cut: int) -> str:
        if cut <= 0:
            return ""
        head, self._buf = self._buf[:cut], self._buf[cut:]
        if self.vocab.clean_spaces:
            head = clean_spaces(head)
        return head.decode("utf-8", errors="replace")

    def flush(self) -> str:
        """Everything still held back (an incomplete character decodes to U+FFFD)."""
        return self._emit(len(self._buf))
