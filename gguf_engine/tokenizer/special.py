"""Splitting text around special tokens, as llama.cpp's tokenizer_st_partition does.

Special tokens (control, user-defined, unknown) are taken out of the text before the SPM/BPE
tokenizer sees it, longest token text first; each one splits every remaining text fragment at all of
its occurrences.  Control and unknown tokens take part only when special-token parsing is on;
user-defined tokens always do.  Tokens flagged LSTRIP/RSTRIP eat ASCII whitespace beside them.

A fragment is either an ``int`` (a token id) or a ``(start, end)`` span of the input text.
"""
from __future__ import annotations

from collections import defaultdict

from .vocab import ATTR_CONTROL, ATTR_LSTRIP, ATTR_RSTRIP, ATTR_UNKNOWN, Vocab

_SPACE = " \t\n\v\f\r"


class SpecialMatcher:
    """Precomputed special-token tables for one vocabulary."""

    def __init__(self, vocab: Vocab):
        self.vocab = vocab
        self._order = {tid: k for k, tid in enumerate(vocab.special_cache)}
        self._groups = {}
        for parse in (False, True):
            groups: dict[str, dict[str, int]] = defaultdict(dict)
            for tid in vocab.special_cache:
                if not parse and vocab.attrs[tid] & (ATTR_CONTROL | ATTR_UNKNOWN):
                    continue
                text = vocab.tokens[tid]
                groups[text[0]].setdefault(text, tid)
            self._groups[parse] = {c: (g, sorted({len(t) for t in g}, reverse=True)) for c, g in groups.items()}

    def _present(self, text: str, parse_special: bool) -> list[int]:
        """Ids of the special tokens that occur somewhere in ``text``, in partition order."""
        found = []
        n_text = len(text)
        for c, (group, lengths) in self._groups[parse_special].items():
            count = text.count(c)
            if not count:
                continue
            # either test each token with a substring search over the text, or look at every
            # position of the first character for each token length: take the cheaper one
            if count * len(lengths) * 200 < len(group) * n_text:
                hits = set()
                pos = text.find(c)
                while pos >= 0:
                    for n in lengths:
                        tid = group.get(text[pos:pos + n])
                        if tid is not None:
                            hits.add(tid)
                    pos = text.find(c, pos + 1)
                found.extend(hits)
            else:
                found.extend(tid for t, tid in group.items() if t in text)
        found.sort(key=self._order.__getitem__)
        return found

    def partition(self, text: str, parse_special: bool) -> list:
        """Split ``text`` into token ids and ``(start, end)`` raw-text spans.

        Equivalent to splitting every fragment by each special token in turn (longest first): a
        token claims its leftmost non-overlapping occurrences that lie wholly inside text not yet
        claimed.  ``claimed`` marks the characters taken so far (tokens and stripped whitespace).
        """
        if not text:
            return []
        attrs = self.vocab.attrs
        tokens = self.vocab.tokens
        n_text = len(text)
        claimed = bytearray(n_text)
        claims: list[tuple[int, int, int]] = []
        for tid in self._present(text, parse_special):
            tok = tokens[tid]
            n = len(tok)
            lstrip = bool(attrs[tid] & ATTR_LSTRIP)
            rstrip = bool(attrs[tid] & ATTR_RSTRIP)
            pos = text.find(tok)
            while pos >= 0:
                end = pos + n
                c = claimed.find(1, pos, end)
                if c >= 0:
                    # overlaps an earlier claim at c: any occurrence starting before the end of
                    # that claimed run overlaps it too
                    c = claimed.find(0, c)
                    pos = text.find(tok, c) if c >= 0 else -1
                    continue
                lo, hi = pos, end
                if lstrip:
                    while lo > 0 and not claimed[lo - 1] and text[lo - 1] in _SPACE:
                        lo -= 1
                if rstrip:
                    while hi < n_text and not claimed[hi] and text[hi] in _SPACE:
                        hi += 1
                claimed[lo:hi] = b"\x01" * (hi - lo)
                claims.append((lo, hi, tid))
                pos = text.find(tok, hi)
        claims.sort()
        frags: list = []
        prev = 0
        for lo, hi, tid in claims:
            if lo > prev:
                frags.append((prev, lo))
            frags.append(tid)
            prev = hi
        if prev < n_text:
            frags.append((prev, n_text))
        return frags
