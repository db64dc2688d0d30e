"""Hostile chat templates: sandbox escapes and resource bombs, fixed and seeded-random.

Each template renders in a subprocess whose address space is capped with ``resource.setrlimit``
(1 GiB above what the interpreter already maps, so a bomb cannot hurt the test process).  Pass
criteria for every case: it ends in ``ChatTemplateError`` (naming the model), within the render's
time budget plus 2 s of slack for a loaded machine; nothing renders and no other exception escapes.
The built-in templates still render exactly under the same cap.
"""
from __future__ import annotations

import json
import random
import subprocess
import sys

from gguf_engine.tokenizer.chat import RENDER_SECONDS

SLACK_S = 2.0

ESCAPES = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ (''|attr('__class__')).__base__ }}",
    "{{ raise_exception.__globals__['os'] }}",
    "{{ strftime_now.__globals__ }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ joiner.__init__.__globals__ }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ lipsum.__globals__['os'] }}",
    "{{ self.__init__.__globals__ }}",
    "{{ messages.__class__ }}",
    "{{ messages.append(1) }}",
    "{{ messages[0].update({'role': 'x'}) }}",
    "{% include '/etc/passwd' %}",
    "{% import 'os' as os %}{{ os }}",
    "{% extends '/etc/hostname' %}",
    "{{ '{0.__class__}'.format('') }}",
    "{{ '%s'.format_map.__self__.__class__ }}",
    "{{ range.__globals__ }}",
    "{{ config }}{{ request.environ }}{{ foo() }}",
]

BOMBS = [
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
    "{{ lipsum(n=10000000) }}",
    "{{ lipsum(n=5, min=1000000, max=10000000) }}",
    "{{ 'a' * 10**10 }}",
    "{{ ['a'] * 10**10 }}",
    "{{ messages|tojson(indent=1000000000) }}",
    "{{ messages|tojson(indent=1e9) }}",
    "{{ 10**(10**8) }}",
    "{{ 2**(64**64) }}",
    "{{ 10.0**400 }}",
    "{% set ns = namespace(x=3) %}{% for i in range(100) %}{% set ns.x = ns.x * ns.x %}{% endfor %}{{ ns.x }}",
    "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
    "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
    "{% set ns = namespace(s=['a']) %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
    "{{ '{:>1000000000}'.format(1) }}",
    "{{ '{:{}}'.format(1, 1000000000) }}",
    "{{ '%1000000000d' % 1 }}",
    "{{ '%*d' % (1000000000, 1) }}",
    "{{ '%.1000000000f'|format(1.5) }}",
    "{{ 'a'.center(10**9) }}{{ 'a'.ljust(10**9) }}",
    "{{ 'a'|center(10**9) }}",
    "{{ ('a'*1000000).replace('a', 'b'*100) }}",
    "{{ ('a'*1000000)|replace('', 'b'*100) }}",
    "{{ ('\n'*1000000)|indent(1000) }}",
    "{{ ('x'*1000000)|join('y'*100) }}",
    "{{ ('y'*100).join('x'*1000000) }}",
    "{{ ('\t'*1000000).expandtabs(1000000) }}",
    "{{ ('a '*3000000)|wordwrap(1) }}",         # about 3 s of wrapping: stopped by the time budget
    "{{ range(10)|slice(1000000000)|list }}",
    "{{ ([[1]*1000]*100000)|sum(start=[]) }}",
    "{% macro f(n) %}{{ f(n+1) }}{% endmacro %}{{ f(0) }}",
    "{% for i in range(100000) recursive %}{{ loop(range(100000)) }}{% endfor %}",
    "{% set ns = namespace(s='a'*1000000) %}{% for i in range(100) %}{% set x %}{{ ns.s }}{{ ns.s }}"
    "{{ ns.s }}{{ ns.s }}{{ ns.s }}{{ ns.s }}{{ ns.s }}{{ ns.s }}{{ ns.s }}{{ ns.s }}{% endset %}"
    "{% set ns.s = x %}{% endfor %}",
    "{% macro m() %}{% for i in range(100000) %}{{ 'z' * 1000 }}{% endfor %}{% endmacro %}{{ m() ~ m() }}",
    "{% for i in range(100000) %}{{ 'q' * 8000000 }}{% endfor %}",
    "{{ range(100000)|map('string')|join(' ' * 1000) }}",
    "{{ raise_exception('refused') }}",
    "{{ 1 // 0 }}",
    "{% for m in messages %}{{ m.content * 10**9 }}{% endfor %}",
]


def random_bombs(seed: int, n: int) -> list[str]:
    """Bombs built from random operations, sizes and wrappers (seeded, so a failure reproduces)."""
    rng = random.Random(seed)
    big = lambda: rng.choice([10**7, 10**9, 2**31, 2**63, 10**12])  # noqa: E731
    ops = [
        lambda: f"'{rng.choice('ab')}' * {big()}",
        lambda: f"[0] * {big()}",
        lambda: f"{rng.randint(2, 99)} ** {big()}",
        lambda: f"'x'.center({big()})",
        lambda: f"'x'|center({big()})",
        lambda: f"'%{big()}s' % 'x'",
        lambda: f"'{{:{big()}}}'.format('x')",
        lambda: f"lipsum(n={big()})",
        lambda: f"messages|tojson(indent={big()})",
        lambda: f"('a' * 1000000).replace('a', 'a' * {rng.randint(10, 1000)})",
        lambda: f"range({big()})|list",
        lambda: f"'x'.zfill({big()})",
    ]
    wrappers = [
        lambda e: "{{ " + e + " }}",
        lambda e: "{% set x = " + e + " %}{{ x|length }}",
        lambda e: "{% macro m() %}{{ " + e + " }}{% endmacro %}{{ m() }}",
        lambda e: "{% for m in messages %}{% if true %}{{ " + e + " }}{% endif %}{% endfor %}",
        lambda e: "{% set ns = namespace(v=none) %}{% set ns.v = " + e + " %}{{ ns.v }}",
    ]
    return [rng.choice(wrappers)(rng.choice(ops)()) for _ in range(n)]


CHILD = r"""
import json, resource, sys, time
from gguf_engine.tokenizer.chat import BUILTIN_TEMPLATES, ChatTemplateError, render_chat_template
M = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
expected = {k: render_chat_template(v, M) for k, v in BUILTIN_TEMPLATES.items()}
with open("/proc/self/statm") as f:
    mapped = int(f.read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (mapped + (1 << 30), resource.RLIM_INFINITY))
cases = json.loads(sys.stdin.read())
out = {"builtins_equal": all(render_chat_template(v, M) == expected[k] for k, v in BUILTIN_TEMPLATES.items()),
       "cases": []}
for src in cases:
    t0 = time.perf_counter()
    try:
        text = render_chat_template(src, M, model_name="hostile-model")
        kind, msg = "rendered", text[:200]
    except ChatTemplateError as e:
        kind, msg = "template_error", str(e)[:300]
    except BaseException as e:
        kind, msg = "escape:" + type(e).__name__, str(e)[:300]
    out["cases"].append({"src": src[:200], "kind": kind, "msg": msg, "seconds": time.perf_counter() - t0})
print(json.dumps(out))
"""


def run_capped(cases: list[str]) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD], input=json.dumps(cases), capture_output=True,
                          text=True, timeout=60 + len(cases) * (RENDER_SECONDS + SLACK_S))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def check(result: dict) -> None:
    assert result["builtins_equal"]
    bad = [c for c in result["cases"] if c["kind"] != "template_error"
           or "hostile-model" not in c["msg"] or c["seconds"] > RENDER_SECONDS + SLACK_S]
    assert not bad, json.dumps(bad, indent=1)


def test_escape_attempts_fail_cleanly():
    """Every escape attempt (dunder attributes, globals of exposed functions, mutation of the
    inputs, include/import/extends, format-string attribute access) ends in ChatTemplateError."""
    check(run_capped(ESCAPES))


def test_resource_bombs_fail_within_budget():
    """Time, memory and size bombs (nested loops, lipsum, repetition, powers, padding, formatting,
    joining, recursion) each end in ChatTemplateError within the budget, under a 1 GiB cap."""
    check(run_capped(BOMBS))


def test_random_bombs_fail_within_budget():
    """60 seeded random bombs (operation x size x wrapper) each end in ChatTemplateError in time."""
    check(run_capped(random_bombs(22, 60)))


def test_budget_per_thread_and_no_stray_timeout():
    """A time bomb in one thread stops at its own budget while other threads render normally; a
    render that finishes just before its budget leaves no pending timeout behind (exact outputs)."""
    import threading
    import time

    from gguf_engine.tokenizer.chat import BUILTIN_TEMPLATES, ChatTemplateError, render_chat_template

    msgs = [{"role": "user", "content": "Hi"}]
    want = render_chat_template(BUILTIN_TEMPLATES["chatml"], msgs)
    bomb = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    outcome: dict = {}

    def hostile():
        t0 = time.perf_counter()
        try:
            render_chat_template(bomb, msgs, model_name="m", seconds=0.5)
        except ChatTemplateError as e:
            outcome["hostile"] = (str(e), time.perf_counter() - t0)

    def benign():
        outcome["benign"] = all(render_chat_template(BUILTIN_TEMPLATES["chatml"], msgs) == want for _ in range(200))

    ts = [threading.Thread(target=hostile), threading.Thread(target=benign)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=60)
    assert outcome["benign"] is True
    msg, dt = outcome["hostile"]
    assert "time budget of 0.5 s" in msg and dt < 0.5 + SLACK_S
    # budgets that run out around the end of short renders: never an exception after the render
    for i in range(200):
        try:
            render_chat_template(BUILTIN_TEMPLATES["chatml"], msgs, seconds=1e-4 * (i % 5))
        except ChatTemplateError:
            pass
    x = 0
    for i in range(200000):  # a pending timeout would be raised in this loop
        x += i
    assert x == sum(range(200000))
