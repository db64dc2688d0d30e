"""Tokenizer metadata of the wrong type gives a VocabError naming the key, the type and the value
(no TypeError, AttributeError or numpy conversion error from deep inside), on the tiny llama's vocabulary."""
from __future__ import annotations

import numpy as np
import pytest

from gguf_engine.gguf import GGUFReader
from gguf_engine.tokenizer import VocabError
from gguf_engine.tokenizer.vocab import load_vocab

from .conftest import fixture_path


@pytest.fixture(scope="module")
def meta():
    with GGUFReader(fixture_path("models", "tiny-llama-f32.gguf")) as r:
        return {k: (v.tolist() if hasattr(v, "tolist") and not isinstance(v, np.ndarray) else
                    np.array(v) if isinstance(v, np.ndarray) else v) for k, v in r.metadata.items()}


CASES = [
    ("tokenizer.ggml.tokens", np.arange(768, dtype=np.int32), "array of strings, got an array holding integer"),
    ("tokenizer.ggml.tokens", "abc", "array of strings, got string 'abc'"),
    ("tokenizer.ggml.merges", np.arange(10, dtype=np.int32), "array of strings, got an array holding integer"),
    ("tokenizer.ggml.merges", [["a", "b"]], "array of strings, got an array holding array of 2"),
    ("tokenizer.ggml.scores", ["x"] * 768, "array of numbers, got array of 768"),
    ("tokenizer.ggml.token_type", 5, "array of numbers, got integer 5"),
    ("tokenizer.ggml.model", 7, "a string, got integer 7"),
    ("tokenizer.ggml.pre", [1, 2], "a string, got array of 2"),
    ("tokenizer.ggml.bos_token_id", np.array([1, 2]), "an integer, got array of 2"),
    ("tokenizer.ggml.eos_token_id", 1.5, "an integer, got float 1.5"),
    ("tokenizer.ggml.add_bos_token", np.array([True]), "a boolean, got array of 1"),
    ("tokenizer.ggml.add_space_prefix", "yes", "a boolean, got string 'yes'"),
    ("tokenizer.chat_template", 12, "a string, got integer 12"),
    ("tokenizer.ggml.pre", np.array([], dtype=np.float32), "a string, got array of 0 []"),
    ("general.name", np.array([1.0, 2.0]), "a string, got array of 2 ["),
]


@pytest.mark.parametrize("key,value,message", CASES, ids=[f"{k.split('.')[-1]}-{type(v).__name__}"
                                                          for k, v, _ in CASES])
def test_wrong_type_names_key_type_and_value(meta, key, value, message):
    md = dict(meta)
    md[key] = value
    with pytest.raises(VocabError) as ei:
        load_vocab(md, "tiny.gguf")
    text = str(ei.value)
    assert text.startswith(f"tiny.gguf: metadata key {key!r} must be"), text
    assert message in text, text


def test_unchanged_metadata_loads(meta):
    assert load_vocab(dict(meta), "tiny.gguf").n_vocab == 768
