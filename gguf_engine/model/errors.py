"""Errors raised by the model layer."""
from __future__ import annotations


class ContextFullError(ValueError):
    """Evaluating the tokens would run past the context (n_ctx); nothing was evaluated."""


class UnsupportedModelError(ValueError):
    """The file's architecture, one of its settings or one of its tensors is not supported."""


class ModelLoadError(ValueError):
    """A tensor the architecture needs is missing or has the wrong shape."""
