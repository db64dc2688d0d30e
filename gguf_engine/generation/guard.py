"""One KV cache, one user at a time.

A model's KV cache is shared state: two threads evaluating into it at once, or two token streams
taking turns, would each extend the other's context and silently produce garbage.  ``CacheGuard``
serialises every use of one cache with a re-entrant lock, and gives each user of the cache a ticket.
Starting anything that changes the cache (a new stream, an eval, a reset) takes a new ticket; a
paused stream resumes only while its own ticket is the current one, and otherwise stops with
``StreamInvalidatedError`` instead of continuing on a cache that no longer holds its context.

``serialised`` makes a method of an object with a ``guard`` hold the lock for the whole call (a
non-streaming completion), so callers in other threads wait their turn.
"""
from __future__ import annotations

import functools
import threading
from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar

F = TypeVar("F", bound=Callable)


class StreamInvalidatedError(RuntimeError):
    """A paused token stream was resumed after another call had used the model's KV cache."""


class CacheGuard:
    """The lock over one KV cache and the ticket of its current user."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._ticket = 0

    def claim(self) -> int:
        """A new ticket: whatever stream held the previous one can no longer resume.
        The caller holds ``lock``."""
        self._ticket += 1
        return self._ticket

    @contextmanager
    def resume(self, ticket: int) -> Iterator[None]:
        """Holds the lock for one step of the stream holding ``ticket``; raises when another
        call has used the cache since that stream's previous step."""
        with self.lock:
            if ticket != self._ticket:
                raise StreamInvalidatedError(
                    "this stream was interrupted: another call used the model (a new completion, "
                    "stream, eval, embed or reset) while it was paused, so its context is gone; "
                    "finish or close one stream before starting the next")
            yield


def serialised(method: F) -> F:
    """Runs ``method`` holding ``self.guard.lock`` (calls from other threads wait)."""

    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self.guard.lock:
            return method(self, *args, **kwargs)

    return locked  # type: ignore[return-value]
