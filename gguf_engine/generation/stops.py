"""Stop strings over streamed text.

Text arrives in pieces (one token's worth at a time).  ``StopMatcher.push`` returns the part that
can be shown now: anything that could still turn out to be the start of a stop string is held
back until the next piece decides it.  When a stop string appears, the text before it is released
and the rest (the stop string included) is dropped.
"""
from __future__ import annotations

from typing import Iterable


def normalize_stops(stop: str | Iterable[str] | None) -> list[str]:
    """None, one string or a list of strings -> list of non-empty stop strings."""
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    return [s for s in stop if s]


class StopMatcher:
    def __init__(self, stops: str | Iterable[str] | None):
        self.stops = normalize_stops(stops)
        self._held = ""
        self.stopped = False
        self.matched: str | None = None

    def push(self, text: str) -> str:
        """Adds a piece of text; returns what can be emitted now (may be empty)."""
        if self.stopped or not text:
            return ""
        if not self.stops:
            return text
        buf = self._held + text
        # earliest stop string in the buffer (the longest one on a tie at the same position)
        best = None
        for s in self.stops:
            i = buf.find(s)
            if i >= 0 and (best is None or i < best[0] or (i == best[0] and len(s) > len(best[1]))):
                best = (i, s)
        if best is not None:
            self.stopped = True
            self.matched = best[1]
            self._held = ""
            return buf[:best[0]]
        hold = self._partial_suffix(buf)
        self._held = buf[len(buf) - hold:] if hold else ""
        return buf[:len(buf) - hold]

    def flush(self) -> str:
        """Releases held-back text at the end of generation (no stop string can follow any more)."""
        out, self._held = ("" if self.stopped else self._held), ""
        return out

    @property
    def held(self) -> str:
        return self._held

    def _partial_suffix(self, buf: str) -> int:
        """Length of the longest suffix of buf that is a proper prefix of some stop string."""
        longest = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(buf)), longest, -1):
                if buf.endswith(s[:n]):
                    longest = n
                    break
        return longest
