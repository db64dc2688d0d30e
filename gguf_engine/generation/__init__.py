"""Sampling and text generation on top of a loaded model."""
from .sampling import Sampler, SamplingParams
from .stops import StopMatcher

__all__ = ["Sampler", "SamplingParams", "StopMatcher"]
