"""Chat templates: the model's own template, named built-ins, file override, ChatML fallback, and the
sandbox (a template must not reach files or Python object internals).  Outputs are compared exactly."""
from __future__ import annotations

import pytest

from gguf_engine import Tokenizer
from gguf_engine.tokenizer import ChatTemplateError
from gguf_engine.tokenizer.chat import BUILTIN_TEMPLATES, render_chat_template, resolve_template

CONV = [{"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Who are you?"}]

_cache: dict = {}


def tok(path) -> Tokenizer:
    if str(path) not in _cache:
        _cache[str(path)] = Tokenizer.from_gguf(path)
    return _cache[str(path)]


def test_model_template_smollm2(smollm2_path):
    """SmolLM2's own template (from its GGUF) renders ChatML with its default system prompt."""
    t = tok(smollm2_path)
    out = t.apply_chat_template([{"role": "user", "content": "Hi there"}])
    assert out == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                   "<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n")
    ids = t.encode(out, add_bos=True, special=True)
    assert ids.count(t.token_to_id("<|im_start|>")) == 3 and ids.count(t.token_to_id("<|im_end|>")) == 2
    assert not t.apply_chat_template([{"role": "user", "content": "x"}],
                                     add_generation_prompt=False).endswith("assistant\n")


def test_fallback_chatml_and_named_override(gemma3_path):
    """A model without a template gets ChatML; --chat-template NAME picks a built-in (Gemma's turns)."""
    t = tok(gemma3_path)
    assert t.chat_template is None
    assert t.apply_chat_template([{"role": "user", "content": "Hi"}]) == \
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    out = t.apply_chat_template(CONV, template="gemma")
    assert out == ("<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n"
                   "<start_of_turn>user\nWho are you?<end_of_turn>\n<start_of_turn>model\n")
    ids = t.encode(out, add_bos=True, special=True)
    assert ids[:2] == [t.bos_id, t.token_to_id("<start_of_turn>")]


def test_named_templates_match_llama_cpp_formats():
    """Built-ins produce llama.cpp's named-template layouts."""
    r = lambda name: render_chat_template(BUILTIN_TEMPLATES[name], CONV)  # noqa: E731
    assert r("chatml") == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                           "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nWho are you?<|im_end|>\n"
                           "<|im_start|>assistant\n")
    assert r("llama3") == ("<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
                           "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                           "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
                           "<|start_header_id|>user<|end_header_id|>\n\nWho are you?<|eot_id|>"
                           "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert r("llama2") == "[INST] Be brief.\nHi [/INST]Hello!</s>[INST] Who are you? [/INST]"
    assert r("llama2-sys") == \
        "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST]Hello!</s>[INST] Who are you? [/INST]"
    assert r("zephyr") == ("<|system|>\nBe brief.<|endoftext|>\n<|user|>\nHi<|endoftext|>\n<|assistant|>\n"
                           "Hello!<|endoftext|>\n<|user|>\nWho are you?<|endoftext|>\n<|assistant|>\n")
    assert r("mistral-v7") == ("[SYSTEM_PROMPT] Be brief.[/SYSTEM_PROMPT][INST] Hi[/INST] Hello!</s>"
                               "[INST] Who are you?[/INST]")
    assert r("phi3").endswith("<|user|>\nWho are you?<|end|>\n<|assistant|>\n")
    for name in ("chatml", "llama2", "llama3", "gemma", "zephyr", "mistral", "phi3", "vicuna", "deepseek"):
        assert resolve_template(name) == BUILTIN_TEMPLATES[name]


def test_template_from_file_and_bos_handling(tmp_path, smollm2_path):
    """--chat-template FILE reads the template; a leading BOS text is kept only when encoding won't add one."""
    f = tmp_path / "t.jinja"
    f.write_text("{{ bos_token }}{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}"
                 "{% if add_generation_prompt %}[assistant]{% endif %}")
    t = tok(smollm2_path)   # add_bos_token is false: the BOS text stays
    assert t.apply_chat_template([{"role": "user", "content": "q"}], template=str(f)) == \
        "<|im_start|>[user]q[assistant]"
    with pytest.raises(ChatTemplateError, match="neither a known name"):
        resolve_template("no-such-template")


def test_template_variables_and_filters():
    """tools, tojson (as transformers: no ASCII escaping), strftime_now, raise_exception, loop controls."""
    src = ("{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}{{ m.content }}{% endfor %}"
           "|{{ tools | tojson }}|{{ {'k': 'é'} | tojson }}|{{ strftime_now('%Y') | length }}|{{ eos_token }}")
    out = render_chat_template(src, CONV, tools=[{"name": "f"}], eos_token="</s>")
    assert out == 'Be brief.|[{"name": "f"}]|{"k": "é"}|4|</s>'
    with pytest.raises(ChatTemplateError, match="only user and assistant"):
        render_chat_template("{{ raise_exception('only user and assistant') }}", CONV, model_name="M")


def test_broken_template_names_the_model():
    """A template that does not parse is an error naming the model."""
    with pytest.raises(ChatTemplateError, match="Gemma 3 270m"):
        render_chat_template("{% for m in messages %}{{ m.content }", CONV, model_name="Gemma 3 270m")


@pytest.mark.parametrize("src", [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ messages.__class__ }}",
    "{{ cycler.__init__.__globals__.os }}",
    "{{ lipsum.__globals__['os'].popen('id').read() }}",
    "{% include '/etc/passwd' %}",
    "{% import '/etc/passwd' as x %}",
    "{% extends '/etc/hostname' %}",
    "{{ messages.append({'role': 'x'}) }}",
])
def test_sandbox_blocks_files_and_internals(src):
    """Templates reaching files or Python internals fail with a template error (nothing is rendered)."""
    with pytest.raises(ChatTemplateError):
        render_chat_template(src, CONV, model_name="evil")
