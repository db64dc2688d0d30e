"""Chat templates: a model's ``tokenizer.chat_template`` rendered in a jinja2 sandbox, HF-style.

A template is untrusted input.  It runs in a bounded jinja2 sandbox (``sandbox``): no loader
(no include/import/extends, so no file access), touching an unsafe attribute (``__class__``,
``__mro__``, ...) raises instead of rendering as empty, values it builds are bounded in size and a
render is stopped after ``RENDER_SECONDS``.  The variables are those Hugging Face
templates use: ``messages``, ``add_generation_prompt``, ``bos_token``, ``eos_token``, ``tools``,
``raise_exception(msg)`` and ``strftime_now(fmt)``; ``tojson`` behaves as in transformers.

Models without a template get ChatML.  A template can also be chosen by name (the built-ins below,
written to produce what llama.cpp's named templates produce) or read from a file.
"""
from __future__ import annotations

import os
from datetime import datetime
from functools import lru_cache


class ChatTemplateError(ValueError):
    """A chat template failed to parse or render (the message names the model)."""


RENDER_SECONDS = 1.0               # time budget of one render
MAX_TEMPLATE_CHARS = 1 << 20       # longest template source accepted


BUILTIN_TEMPLATES: dict[str, str] = {
    "chatml": (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
        "+ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"),
    "llama2": (
        "{{ '[INST] ' }}{% set ns = namespace(inside=true) %}{% for message in messages %}"
        "{% if not ns.inside %}{{ '[INST] ' }}{% set ns.inside = true %}{% endif %}"
        "{% if message['role'] == 'system' %}{{ message['content'] + '\n' }}"
        "{% elif message['role'] == 'user' %}{{ message['content'] + ' [/INST]' }}"
        "{% else %}{{ message['content'] + '</s>' }}{% set ns.inside = false %}{% endif %}{% endfor %}"),
    "llama2-sys": (
        "{{ '[INST] ' }}{% set ns = namespace(inside=true) %}{% for message in messages %}"
        "{% if not ns.inside %}{{ '[INST] ' }}{% set ns.inside = true %}{% endif %}"
        "{% if message['role'] == 'system' %}{{ '<<SYS>>\n' + message['content'] + '\n<</SYS>>\n\n' }}"
        "{% elif message['role'] == 'user' %}{{ message['content'] + ' [/INST]' }}"
        "{% else %}{{ message['content'] + '</s>' }}{% set ns.inside = false %}{% endif %}{% endfor %}"),
    "llama3": (
        "{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' "
        "+ message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"),
    "gemma": (
        "{% set ns = namespace(system='') %}{% for message in messages %}"
        "{% if message['role'] == 'system' %}{% set ns.system = ns.system + message['content'] | trim %}"
        "{% else %}{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
        "{{ '<start_of_turn>' + role + '\n' }}"
        "{% if ns.system and role != 'model' %}{{ ns.system + '\n\n' }}{% set ns.system = '' %}{% endif %}"
        "{{ message['content'] | trim + '<end_of_turn>\n' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"),
    "zephyr": (
        "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|endoftext|>\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"),
    "phi3": (
        "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"),
    "mistral-v1": (
        "{% set ns = namespace(inside=false) %}{% for message in messages %}"
        "{% if not ns.inside %}{{ ' [INST] ' }}{% set ns.inside = true %}{% endif %}"
        "{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
        "{% elif message['role'] == 'user' %}{{ message['content'] + ' [/INST]' }}"
        "{% else %}{{ ' ' + message['content'] + '</s>' }}{% set ns.inside = false %}{% endif %}{% endfor %}"),
    "mistral-v3": (
        "{% set ns = namespace(inside=false) %}{% for message in messages %}"
        "{% if not ns.inside %}{{ '[INST] ' }}{% set ns.inside = true %}{% endif %}"
        "{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
        "{% elif message['role'] == 'user' %}{{ message['content'] + '[/INST]' }}"
        "{% else %}{{ ' ' + message['content'] | trim + '</s>' }}{% set ns.inside = false %}{% endif %}{% endfor %}"),
    "mistral-v7": (
        "{% for message in messages %}{% if message['role'] == 'system' %}"
        "{{ '[SYSTEM_PROMPT] ' + message['content'] + '[/SYSTEM_PROMPT]' }}"
        "{% elif message['role'] == 'user' %}{{ '[INST] ' + message['content'] + '[/INST]' }}"
        "{% else %}{{ ' ' + message['content'] + '</s>' }}{% endif %}{% endfor %}"),
    "vicuna": (
        "{% for message in messages %}{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
        "{% elif message['role'] == 'user' %}{{ 'USER: ' + message['content'] + '\n' }}"
        "{% elif message['role'] == 'assistant' %}{{ 'ASSISTANT: ' + message['content'] + '</s>\n' }}{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"),
    "deepseek": (
        "{% for message in messages %}{% if message['role'] == 'system' %}{{ message['content'] }}"
        "{% elif message['role'] == 'user' %}{{ '### Instruction:\n' + message['content'] + '\n' }}"
        "{% elif message['role'] == 'assistant' %}{{ '### Response:\n' + message['content'] + '\n<|EOT|>\n' }}"
        "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '### Response:\n' }}{% endif %}"),
}
BUILTIN_TEMPLATES["mistral"] = BUILTIN_TEMPLATES["mistral-v7"]
BUILTIN_TEMPLATES["gemma3"] = BUILTIN_TEMPLATES["gemma"]

DEFAULT_TEMPLATE = "chatml"


def looks_like_template(text: str) -> bool:
    """Whether text holds Jinja markup (``{{`` or ``{%``), as a chat template does."""
    return "{{" in text or "{%" in text


def resolve_template(spec: str) -> str:
    """``--chat-template`` argument -> template text: a built-in name, a file path, or template text."""
    if spec in BUILTIN_TEMPLATES:
        return BUILTIN_TEMPLATES[spec]
    if looks_like_template(spec):
        return spec
    shown = repr(spec if len(spec) <= 60 else spec[:60] + "...")
    if os.path.isfile(spec):
        with open(spec, encoding="utf-8") as f:
            text = f.read()
        if not looks_like_template(text):
            raise ChatTemplateError(f"chat template file {shown} holds no Jinja template (no '{{{{' or '{{%')")
        return text
    raise ChatTemplateError(f"chat template {shown} is neither a known name ({', '.join(sorted(BUILTIN_TEMPLATES))}) "
                            "nor an existing file")


def _raise_exception(message):
    from jinja2.exceptions import TemplateError
    raise TemplateError(message)


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=1)
def _environment():
    from .sandbox import BoundedSandbox

    env = BoundedSandbox(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


@lru_cache(maxsize=16)
def _compile(source: str):
    return _environment().from_string(source)


def render_chat_template(source: str | None, messages: list, add_generation_prompt: bool = True,
                         bos_token: str = "", eos_token: str = "", tools: list | None = None,
                         model_name: str = "model", seconds: float = RENDER_SECONDS, **kwargs) -> str:
    """Render ``messages`` with template ``source`` (ChatML when None); errors name the model.

    The template is untrusted: it renders in a bounded sandbox (``sandbox``) within ``seconds``, and
    every way it can fail (a template error, a sandbox limit, the time budget, recursion, memory,
    overflow, ...) raises ``ChatTemplateError``."""
    from .sandbox import RenderTimeout, bounded_output, watchdog

    if source is None:
        source = BUILTIN_TEMPLATES[DEFAULT_TEMPLATE]
    if len(source) > MAX_TEMPLATE_CHARS:
        raise ChatTemplateError(f"chat template of {model_name!r} is too long "
                                f"({len(source):,} characters, at most {MAX_TEMPLATE_CHARS:,})")
    ctx = dict(kwargs)
    ctx.update(messages=messages, add_generation_prompt=add_generation_prompt, bos_token=bos_token,
               eos_token=eos_token)
    if tools is not None:
        ctx["tools"] = tools
    stage, out = "does not parse", ""
    wd = watchdog(seconds)
    try:
        with wd:
            tmpl = _compile(source)
            stage = "failed"
            out = bounded_output(tmpl.generate(**ctx))
    except RenderTimeout:
        pass  # wd.fired says so
    except Exception as e:  # untrusted code: whatever it raised is the template's failure
        raise ChatTemplateError(f"chat template of {model_name!r} {stage}: {type(e).__name__}: {e}") from e
    if wd.fired:
        raise ChatTemplateError(f"chat template of {model_name!r} failed: it ran past its time budget of "
                                f"{seconds:g} s")
    return out
