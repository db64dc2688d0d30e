"""Input checks shared by the API and the CLI, on the tiny F32 llama fixture.

Sampling settings the CLI refuses are refused by the API too (ValueError naming the setting); a
``--chat-template`` file without Jinja markup is refused without echoing it; a prompt far longer than
the context is refused before it is tokenized.  Comparisons are exact (messages, exit codes).
"""
from __future__ import annotations

import io
import math
import sys

import pytest

from gguf_engine import Llama
from gguf_engine.api import ContextLimitError
from gguf_engine.cli.run import main as run_main
from gguf_engine.generation.sampling import check_sampling
from gguf_engine.tokenizer import ChatTemplateError
from gguf_engine.tokenizer.chat import resolve_template

from .conftest import fixture_path


@pytest.fixture(scope="module")
def llm():
    with Llama(str(fixture_path("models", "tiny-llama-f32.gguf")), n_ctx=64, seed=1) as model:
        yield model


BAD = [("top_p", 5, "top_p must be in [0, 1], got 5"), ("min_p", 2, "min_p must be in [0, 1], got 2"),
       ("top_k", -3, "top_k must be an integer >= -1"), ("temperature", math.nan, "temperature must be a finite"),
       ("repeat_penalty", 0, "repeat_penalty must be a finite number > 0"),
       ("repeat_last_n", -2, "repeat_last_n must be an integer >= -1"),
       ("frequency_penalty", math.inf, "frequency_penalty must be a finite number"),
       ("logprobs", -1, "logprobs must be None or an integer >= 0")]


@pytest.mark.parametrize("key,value,message", BAD, ids=[b[0] for b in BAD])
def test_api_refuses_what_the_cli_refuses(llm, key, value, message):
    """create_completion raises ValueError naming the setting, before evaluating anything."""
    with pytest.raises(ValueError) as ei:
        llm("Hello", max_tokens=2, **{key: value})
    assert message in str(ei.value)
    if key != "logprobs":
        with pytest.raises(ValueError, match=key):
            llm.create_chat_completion([{"role": "user", "content": "Hi"}], max_tokens=2, **{key: value})
    with pytest.raises(ValueError, match="top_logprobs"):
        llm.create_chat_completion([{"role": "user", "content": "Hi"}], logprobs=True, top_logprobs=-1)


def test_accepted_edges():
    """The range edges stay accepted: top_k 0 and -1, top_p/min_p 0 and 1, repeat_last_n -1, logprobs None."""
    check_sampling(top_k=0, top_p=0.0, min_p=1.0, repeat_last_n=-1, temperature=-1.0, logprobs=None)
    check_sampling(top_k=-1, top_p=1, min_p=0, repeat_penalty=1e-3, logprobs=0)


@pytest.mark.parametrize("argv,message", [(["--top-k", "-3"], "--top-k must be an integer >= -1"),
                                          (["--temp", "nan"], "--temp must be a finite number"),
                                          (["--presence-penalty", "inf"], "--presence-penalty must be a finite")])
def test_cli_names_the_flag(capsys, argv, message):
    code = run_main(["-m", str(fixture_path("models", "tiny-llama-f32.gguf")), "-no-cnv", "-p", "x"] + argv)
    err = capsys.readouterr().err
    assert code == 1 and message in err


def test_template_file_without_markup(tmp_path, capsys):
    """A --chat-template file without '{{' or '{%' is refused, naming the file, not echoing it."""
    f = tmp_path / "tmpl.txt"
    secret = "SECRET-CONTENT " * 200
    f.write_text(secret)
    code = run_main(["-m", str(fixture_path("models", "tiny-llama-f32.gguf")), "-p", "x", "--chat-template", str(f)])
    err = capsys.readouterr().err
    assert code == 1 and f"chat template file '{f}' holds no Jinja template" in err and "SECRET" not in err
    with pytest.raises(ChatTemplateError, match="holds no Jinja template") as ei:
        resolve_template(str(f))
    assert "SECRET" not in str(ei.value)
    with pytest.raises(ChatTemplateError) as ei:
        resolve_template(secret)                     # not a name, not a file: shown shortened
    assert len(str(ei.value)) < 300


def test_huge_prompt_refused_before_tokenizing(llm, tmp_path, capsys, monkeypatch):
    """A 4 MB prompt (file or API) against a 64-token context is refused without being tokenized."""
    big = "lorem ipsum dolor sit amet " * 160_000
    f = tmp_path / "big.txt"
    f.write_text(big)

    def no_tokenizing(*a, **k):
        raise AssertionError("the prompt was tokenized")

    monkeypatch.setattr(Llama, "tokenize", no_tokenizing)
    with pytest.raises(ContextLimitError, match="exceed context window of 64"):
        llm(big, max_tokens=1)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    code = run_main(["-m", str(fixture_path("models", "tiny-llama-f32.gguf")), "-no-cnv", "-c", "64", "-f", str(f)])
    err = capsys.readouterr().err
    assert code == 1 and "is more than the context of 64 tokens can hold" in err


def test_min_tokens_is_a_lower_bound(llm):
    """Tokenizer.min_tokens never exceeds the real token count (assorted texts, special tokens included)."""
    tok = llm.tokenizer
    texts = ["", "a", "Hello world", "  spaces   everywhere  ", "ünïcödé ✓ 漢字 🙂" * 20,
             "<|im_start|>user\nHi<|im_end|>" * 5, "x" * 5000, open(fixture_path("models", "calibration.txt")).read()]
    for t in texts:
        assert tok.min_tokens(t) <= len(tok.encode(t, add_bos=False, special=True))
