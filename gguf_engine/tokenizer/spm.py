"""SPM (``tokenizer.ggml.model = llama``) tokenization as llama.cpp does it.

llama.cpp's SPM tokenizer is a bigram merge by score: the text is cut into UTF-8 characters, and the
adjacent pair whose concatenation is a vocabulary token with the highest score (leftmost on ties) is
merged, repeatedly; what is left that is not a token becomes byte tokens ``<0xNN>``.  Every token of
the vocabulary takes part, whatever its type.

SentencePiece's BPE model runs the very same algorithm in C++.  :func:`build_model_proto` writes a
SentencePiece model from the GGUF arrays such that it behaves exactly like llama.cpp: every piece is
NORMAL (so control and user-defined texts merge like any token), the ``<0xNN>`` pieces are BYTE pieces
for byte fallback, the normalizer is the identity (spaces are escaped to ``▁`` beforehand).  Where a
vocabulary cannot be expressed that way (no unknown token, missing byte tokens) :class:`PySPM`, a
plain-Python version of the same algorithm, is used instead.
"""
from __future__ import annotations

import heapq

import numpy as np

from .vocab import ATTR_BYTE, Vocab

_PIECE_NORMAL, _PIECE_UNKNOWN, _PIECE_BYTE = 1, 2, 6
_CHUNK = 2048   # long texts are encoded in pieces of about this many characters where that is exact


def _varint_len(a: np.ndarray) -> np.ndarray:
    n = np.ones_like(a)
    for k in (7, 14, 21, 28):
        n += a >= (1 << k)
    return n


def _put_varints(buf: np.ndarray, pos: np.ndarray, vals: np.ndarray) -> None:
    """Write protobuf varints ``vals`` at byte offsets ``pos`` of ``buf`` (all vectorised)."""
    vals = vals.astype(np.int64).copy()
    pos = pos.copy()
    live = np.ones(len(vals), dtype=bool)
    while live.any():
        idx = np.nonzero(live)[0]
        v = vals[idx]
        more = v >= 0x80
        buf[pos[idx]] = (v & 0x7F) | (more.astype(np.int64) << 7)
        vals[idx] = v >> 7
        pos[idx] += 1
        live[idx] = more


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def build_model_proto(vocab: Vocab) -> bytes | None:
    """A serialized SentencePiece BPE ModelProto equivalent to llama.cpp's SPM tokenizer, or None."""
    n = vocab.n_vocab
    unk = vocab.special.get("unk")
    if unk is None:
        return None
    byte_ids = [vocab.token_to_id.get(f"<0x{b:02X}>") for b in range(256)]
    if any(i is None or not (vocab.attrs[i] & ATTR_BYTE) for i in byte_ids):
        return None
    types = np.full(n, _PIECE_NORMAL, dtype=np.int64)
    types[np.asarray(byte_ids)] = _PIECE_BYTE
    if np.count_nonzero(vocab.attrs & ATTR_BYTE) != 256:
        return None
    types[unk] = _PIECE_UNKNOWN

    # UTF-8 bytes of all pieces, and each piece's byte length (int32 index arrays: a 262k-token
    # vocabulary's transient arrays stay a few MiB each, and none outlive the call)
    flat = np.frombuffer("".join(vocab.tokens).encode("utf-8"), dtype=np.uint8)
    lens = np.fromiter(map(len, map(str.encode, vocab.tokens)), dtype=np.int32, count=n)
    # piece message: 0x0A len(piece) piece 0x15 f32(score) 0x18 type
    body = 1 + _varint_len(lens) + lens + 5 + 2
    entry = 1 + _varint_len(body) + body
    starts = np.zeros(n, dtype=np.int64)
    np.cumsum(entry[:-1], out=starts[1:])
    total = int(entry.sum())
    buf = np.zeros(total, dtype=np.uint8)
    buf[starts] = 0x0A
    _put_varints(buf, starts + 1, body)
    p = starts + 1 + _varint_len(body)
    buf[p] = 0x0A
    _put_varints(buf, p + 1, lens)
    p = p + 1 + _varint_len(lens)
    # piece bytes: byte k of the joined texts goes to its piece's start plus k less the piece's
    # first byte in the joined texts
    offs = np.repeat((p - (np.cumsum(lens) - lens)).astype(np.int32), lens)
    offs += np.arange(len(flat), dtype=np.int32)
    buf[offs] = flat
    del offs
    p = p + lens
    buf[p] = 0x15
    sc = np.ascontiguousarray(vocab.scores, dtype="<f4").view(np.uint8).reshape(n, 4)
    buf[(p + 1)[:, None] + np.arange(4)] = sc
    buf[p + 5] = 0x18
    buf[p + 6] = types.astype(np.uint8)

    minus1 = _varint(-1)
    trainer = (b"\x18\x02"                                   # model_type = BPE
               + b"\x98\x02\x01"                             # byte_fallback = true
               + b"\xc0\x02" + _varint(unk)                  # unk_id
               + b"\xc8\x02" + minus1 + b"\xd0\x02" + minus1 + b"\xd8\x02" + minus1)  # bos/eos/pad = -1
    norm = b"\x0a\x08identity" + b"\x18\x00\x20\x00\x28\x00"  # no dummy prefix / ws removal / escaping
    return (buf.tobytes() + b"\x12" + _varint(len(trainer)) + trainer
            + b"\x1a" + _varint(len(norm)) + norm)


class SentencePieceSPM:
    """llama.cpp's SPM merge run by the ``sentencepiece`` library on a model built from the GGUF arrays."""

    def __init__(self, proto: bytes, vocab: Vocab):
        import sentencepiece as spm
        self._sp = spm.SentencePieceProcessor()
        self._sp.LoadFromSerializedProto(proto)
        self._vocab = vocab
        self._isolated: bool | None = None

    @property
    def _newline_isolated(self) -> bool:
        if self._isolated is None:
            self._isolated = not any(len(t) > 1 and "\n" in t for t in self._vocab.tokens)
        return self._isolated

    def encode_many(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each (already ``▁``-escaped) text."""
        if not texts:
            return []
        chunks: list[str] = []
        counts: list[int] = []
        for t in texts:
            parts = self._split(t)
            chunks.extend(parts)
            counts.append(len(parts))
        if len(chunks) == 1:
            return [self._sp.EncodeAsIds(chunks[0])]
        enc = self._sp.EncodeAsIds(chunks)
        if len(chunks) == len(texts):
            return enc
        out = []
        k = 0
        for c in counts:
            ids: list[int] = []
            for e in enc[k:k + c]:
                ids.extend(e)
            out.append(ids)
            k += c
        return out

    def _split(self, text: str) -> list[str]:
        # Where no token longer than one character contains a newline, a newline can never merge
        # with its neighbours, so cutting right after one changes nothing.
        if len(text) <= 2 * _CHUNK or not self._newline_isolated:
            return [text]
        out = []
        start = 0
        while True:
            cut = text.find("\n", start + _CHUNK)
            if cut < 0:
                out.append(text[start:])
                return out
            out.append(text[start:cut + 1])
            start = cut + 1


class PySPM:
    """The same bigram merge in plain Python (used only where no SentencePiece model can be built)."""

    def __init__(self, vocab: Vocab):
        self.vocab = vocab

    def _byte_token(self, b: int) -> int:
        t2i = self.vocab.token_to_id
        tid = t2i.get(f"<0x{b:02X}>")
        if tid is None:
            tid = t2i.get(chr(b)) if b < 0x80 else None
        if tid is None:
            raise KeyError(f"vocabulary has no token for byte 0x{b:02X}")
        return tid

    def encode(self, text: str) -> list[int]:
        t2i, scores = self.vocab.token_to_id, self.vocab.scores
        sym = list(text)                       # current symbol texts ('' once merged away)
        n = len(sym)
        prev = list(range(-1, n - 1))
        nxt = list(range(1, n + 1))
        if n:
            nxt[-1] = -1
        heap: list = []

        def add(left: int, right: int) -> None:
            if left < 0 or right < 0:
                return
            s = sym[left] + sym[right]
            tid = t2i.get(s)
            if tid is not None:
                heapq.heappush(heap, (-float(scores[tid]), left, right, len(s)))

        for i in range(1, n):
            add(i - 1, i)
        while heap:
            _, left, right, size = heapq.heappop(heap)
            if not sym[left] or not sym[right] or len(sym[left]) + len(sym[right]) != size:
                continue
            sym[left] += sym[right]
            sym[right] = ""
            nxt[left] = nxt[right]
            if nxt[right] >= 0:
                prev[nxt[right]] = left
            add(prev[left], left)
            add(left, nxt[left])
        out: list[int] = []
        i = 0 if n else -1
        while i != -1:
            tid = t2i.get(sym[i])
            if tid is not None:
                out.append(tid)
            else:
                out.extend(self._byte_token(b) for b in sym[i].encode("utf-8"))
            i = nxt[i]
        return out

    def encode_many(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]


def make_spm_engine(vocab: Vocab):
    proto = build_model_proto(vocab)
    if proto is not None:
        try:
            return SentencePieceSPM(proto, vocab)
        except Exception:   # a vocabulary SentencePiece refuses: fall back to the Python merge
            pass
    return PySPM(vocab)
