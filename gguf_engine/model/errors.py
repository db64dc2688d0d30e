"""Errors raised by the model layer."""
from __future__ import annotations


class ContextFullError(ValueError):
    """Evaluating the tokens would run past the context (n_ctx); nothing was evaluated."""
