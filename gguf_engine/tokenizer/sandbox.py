"""A bounded jinja2 sandbox for untrusted chat templates.

jinja2's ImmutableSandboxedEnvironment keeps a template away from files and Python internals, but
not from the machine's time and memory: ``'a' * 10**10``, ``10**(10**8)``, ``lipsum(n=10**7)``,
``tojson(indent=10**9)`` or two nested ``range(100000)`` loops hang the engine or ask for gigabytes.
``BoundedSandbox`` closes those holes in the same process:

- every operation that can build a large value is checked *before* it runs: string and list
  repetition and concatenation (``*``, ``+``, ``~``), powers and products of big integers,
  ``%``-formatting and ``str.format`` (their widths and precisions), padding and joining methods and
  filters, ``tojson``'s indent and ``lipsum``'s size; size-like arguments of filters and string
  methods are bounded;
- every filter and method result, and every captured block or macro output, is checked after;
- the rendered output is counted while it streams;
- ``watchdog`` stops a render that runs past its time budget, from a timer thread that raises
  ``RenderTimeout`` in the rendering thread (CPython delivers it between two bytecodes, so the
  checks above keep single operations short).

A failed check raises ``TemplateLimitError`` (a jinja2 ``SecurityError``).
"""
from __future__ import annotations

import ctypes
import functools
import json
import math
import re
import string
import threading
import time
from typing import Any, Callable

from jinja2.compiler import CodeGenerator
from jinja2.exceptions import SecurityError
from jinja2.ext import loopcontrols
from jinja2.filters import make_attrgetter
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import generate_lorem_ipsum, pass_environment

MAX_CHARS = 8 << 20        # longest string a template may build, and its longest output
MAX_ITEMS = 1 << 20        # longest list, and largest size-like argument of a filter or method
MAX_INT_BITS = 1 << 16     # largest integer a template may compute (about 20,000 digits)
MAX_INDENT = 64            # tojson's indent
MAX_LIPSUM = 100           # lipsum paragraphs (and 10x that words per paragraph)


class TemplateLimitError(SecurityError):
    """A template asked for a value larger than the sandbox allows."""


class RenderTimeout(BaseException):
    """Raised inside a render that ran past its time budget (a BaseException, so that no
    ``except Exception`` in jinja2's runtime swallows it)."""


def _too_big(what: str, size: int, limit: int) -> TemplateLimitError:
    return TemplateLimitError(f"{what} would be too large ({size:,} > {limit:,})")


def _check_result(value: Any, what: str) -> Any:
    if isinstance(value, str):
        if len(value) > MAX_CHARS:
            raise _too_big(f"the string made by {what}", len(value), MAX_CHARS)
    elif isinstance(value, (list, tuple, dict, set, frozenset)):
        if len(value) > MAX_ITEMS:
            raise _too_big(f"the collection made by {what}", len(value), MAX_ITEMS)
    elif isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise _too_big(f"the integer made by {what} (bits)", value.bit_length(), MAX_INT_BITS)
    return value


def _check_args(what: str, args: tuple, kwargs: dict) -> None:
    """Size-like arguments (widths, counts, indents) of filters and methods stay below MAX_ITEMS."""
    for a in (*args, *kwargs.values()):
        if isinstance(a, (int, float)) and not isinstance(a, bool) and not abs(a) <= MAX_ITEMS:
            size = int(abs(a)) if isinstance(a, int) or math.isfinite(a) else 2 ** 63
            raise _too_big(f"argument {a!r} of {what}", size, MAX_ITEMS)


def _int_bits(x: Any) -> int:
    return abs(x).bit_length() if isinstance(x, int) else 0


def _check_binop(op: str, a: Any, b: Any) -> None:
    """Predicts the size of ``a op b`` and refuses it before Python allocates it."""
    if op == "*":
        for seq, n in ((a, b), (b, a)):
            if isinstance(seq, (str, list, tuple)) and isinstance(n, int):
                size = len(seq) * max(n, 0)
                limit = MAX_CHARS if isinstance(seq, str) else MAX_ITEMS
                if size > limit:
                    raise _too_big(f"{type(seq).__name__} * {n}", size, limit)
        if isinstance(a, int) and isinstance(b, int) and _int_bits(a) + _int_bits(b) > MAX_INT_BITS:
            raise _too_big("integer product (bits)", _int_bits(a) + _int_bits(b), MAX_INT_BITS)
    elif op == "**":
        if isinstance(a, int) and isinstance(b, int) and b > 0 and abs(a) > 1:
            if b > MAX_INT_BITS or _int_bits(a) * b > MAX_INT_BITS:
                raise _too_big("integer power (bits)", _int_bits(a) * min(b, 2 ** 63), MAX_INT_BITS)
    elif op == "+":
        if isinstance(a, (str, list, tuple)) and isinstance(b, type(a)):
            limit = MAX_CHARS if isinstance(a, str) else MAX_ITEMS
            if len(a) + len(b) > limit:
                raise _too_big(f"{type(a).__name__} concatenation", len(a) + len(b), limit)
    elif op == "%" and isinstance(a, str):
        _check_printf(a, b)


_PRINTF = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?")


def _check_printf(fmt: str, args: Any) -> None:
    """``fmt % args``: the widths and precisions it asks for, plus the arguments' own lengths (a
    ``*`` width comes from the arguments, whose numbers are bounded like any size argument)."""
    if isinstance(args, tuple):
        _check_args("%-formatting", args, {})
    total = len(fmt)
    for m in _PRINTF.finditer(fmt):
        for g in m.groups():
            if g:
                total += MAX_ITEMS if g == "*" else int(g)
    vals = args.values() if isinstance(args, dict) else args if isinstance(args, tuple) else (args,)
    total += sum(len(v) for v in vals if isinstance(v, str))
    if total > MAX_CHARS:
        raise _too_big("%-formatting", total, MAX_CHARS)


def _check_format(fmt: str, args: tuple, kwargs: dict) -> None:
    """``fmt.format(...)``: the widths and precisions in its replacement fields."""
    total = len(fmt)
    try:
        fields = list(string.Formatter().parse(fmt))
    except ValueError:
        return  # str.format raises the same error itself
    for _, name, spec, _ in fields:
        if name is None:
            continue
        spec = spec or ""
        total += MAX_ITEMS if "{" in spec else sum(int(n) for n in re.findall(r"\d+", spec))
    total += sum(len(v) for v in (*args, *kwargs.values()) if isinstance(v, str))
    if total > MAX_CHARS:
        raise _too_big("str.format", total, MAX_CHARS)


def _sized_str(x: Any) -> str:
    s = x if isinstance(x, str) else str(x)
    if len(s) > MAX_CHARS:
        raise _too_big("a joined item", len(s), MAX_CHARS)
    return s


def bounded_join(sep: str, items: Any) -> str:
    """``sep.join(map(str, items))`` that stops as soon as the result would be too long."""
    parts, total = [], 0
    for it in items:
        s = _sized_str(it)
        total += len(s) + len(sep)
        if total > MAX_CHARS + len(sep):
            raise _too_big("joined string", total, MAX_CHARS)
        parts.append(s)
    return sep.join(parts)


def _predict_str_method(s: str, name: str, args: tuple, kwargs: dict) -> int:
    """Upper bound of the length of ``s.name(*args)`` for the methods that can grow a string."""
    ints = [a for a in (*args, *kwargs.values()) if isinstance(a, int)]
    if name in ("center", "ljust", "rjust", "zfill"):
        return max([len(s), *ints])
    if name == "expandtabs":
        return len(s) + s.count("\t") * (ints[0] if ints else 8)
    if name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        n = s.count(args[0]) if args[0] else len(s) + 1
        if len(args) > 2 and isinstance(args[2], int) and args[2] >= 0:
            n = min(n, args[2])
        return len(s) + n * max(len(args[1]) - len(args[0]), 0)
    return len(s)


def _guard_filter(name: str, f: Callable) -> Callable:
    """A filter with its size-like arguments and its result checked (``value`` follows the context,
    environment or eval context jinja2 passes first to some filters)."""
    skip = 1 if getattr(f, "jinja_pass_arg", None) is not None else 0

    @functools.wraps(f)
    def checked(*args, **kwargs):
        value, rest = (args[skip], args[skip + 1:]) if len(args) > skip else (None, ())
        _check_args(f"filter {name!r}", rest, kwargs)
        if name == "replace" and isinstance(value, str):
            size = _predict_str_method(value, "replace", tuple(str(a) if not isinstance(a, int) else a
                                                                for a in rest), {})
            if size > MAX_CHARS:
                raise _too_big("filter 'replace'", size, MAX_CHARS)
        elif name == "indent" and isinstance(value, str):
            width = rest[0] if rest else kwargs.get("width", 4)
            width = len(width) if isinstance(width, str) else int(width)
            size = len(value) + (value.count("\n") + 1) * width
            if size > MAX_CHARS:
                raise _too_big("filter 'indent'", size, MAX_CHARS)
        elif name == "format" and isinstance(value, str):
            _check_printf(value, kwargs or rest)
        return _check_result(f(*args, **kwargs), f"filter {name!r}")

    return checked


@pass_environment
def _join_filter(env, value: Any, d: str = "", attribute: Any = None) -> str:
    """jinja2's ``join`` filter, bounded (without Markup handling: chat templates never escape)."""
    if attribute is not None:
        value = map(make_attrgetter(env, attribute), value)
    return bounded_join(str(d), value)


def _sum_filter(iterable: Any, attribute: Any = None, start: Any = 0) -> Any:
    """jinja2's ``sum`` filter for numbers only (summing strings or lists would build them in one C loop)."""
    if attribute is not None:
        raise TemplateLimitError("sum(attribute=...) is not supported in chat templates")
    total = start
    for x in iterable:
        if not isinstance(x, (int, float)) or not isinstance(total, (int, float)):
            raise TemplateLimitError("sum() adds numbers only in chat templates")
        total = _check_result(total + x, "sum")
    return total


def _tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    """transformers' ``tojson``: no HTML escaping, non-ASCII kept; the indent is bounded."""
    if indent is not None and not ((isinstance(indent, int) and 0 <= indent <= MAX_INDENT)
                                   or (isinstance(indent, str) and len(indent) <= MAX_INDENT)):
        raise TemplateLimitError(f"tojson indent must be at most {MAX_INDENT}, got {indent!r}")
    return _check_result(json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                                    sort_keys=sort_keys), "tojson")


def _lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
    if not (0 <= n <= MAX_LIPSUM and 0 <= min <= max <= 10 * MAX_LIPSUM):
        raise TemplateLimitError(f"lipsum allows at most {MAX_LIPSUM} paragraphs of {10 * MAX_LIPSUM} words")
    return generate_lorem_ipsum(n=n, html=html, min=min, max=max)


class _BoundedCodeGenerator(CodeGenerator):
    """Compiles ``a ~ b`` to the environment's bounded concatenation instead of ``str_join``."""

    def visit_Concat(self, node, frame) -> None:
        self.write("environment.bounded_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """ImmutableSandboxedEnvironment whose operations are bounded in size (see the module docstring).
    Unsafe attributes raise instead of rendering as empty; there is no loader (no include/import)."""

    intercepted_binops = frozenset(["*", "**", "+", "%"])
    code_generator_class = _BoundedCodeGenerator

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(loader=None, extensions=[loopcontrols], **kwargs)
        for name, f in list(self.filters.items()):
            self.filters[name] = _guard_filter(name, f)
        self.filters["join"] = _join_filter
        self.filters["sum"] = _sum_filter
        self.filters["tojson"] = _tojson
        self.globals["lipsum"] = _lipsum
        # macro and block outputs are joined through this
        self.concat = functools.partial(bounded_join, "")

    def bounded_concat(self, parts: tuple) -> str:
        return bounded_join("", parts)

    def unsafe_undefined(self, obj, attribute):
        raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe")

    def call_binop(self, context, op: str, left: Any, right: Any) -> Any:
        _check_binop(op, left, right)
        return _check_result(self.binop_table[op](left, right), f"operator {op!r}")

    def wrap_str_format(self, value: Any):
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        fmt = value.__self__

        @functools.wraps(wrapped)
        def checked(*args, **kwargs):
            _check_args(f"str.{value.__name__}", args, kwargs)
            if value.__name__ == "format_map":
                _check_format(fmt, (), dict(args[0]) if args and isinstance(args[0], dict) else {})
            else:
                _check_format(fmt, args, kwargs)
            return _check_result(wrapped(*args, **kwargs), "str.format")

        return checked

    def call(__self, __context, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 (jinja2's form)
        owner = getattr(__obj, "__self__", None)
        name = getattr(__obj, "__name__", "call")
        if isinstance(owner, (str, list, dict, tuple)):
            _check_args(f"method {name!r}", args, kwargs)
            if isinstance(owner, str):
                if name == "join" and args:
                    return bounded_join(owner, args[0])
                size = _predict_str_method(owner, name, args, kwargs)
                if size > MAX_CHARS:
                    raise _too_big(f"str.{name}", size, MAX_CHARS)
        return _check_result(super().call(__context, __obj, *args, **kwargs), f"{name}()")


def bounded_output(chunks, limit: int = MAX_CHARS) -> str:
    """Joins a render's output stream, refusing it once it grows past ``limit`` characters."""
    parts, total = [], 0
    for c in chunks:
        total += len(c)
        if total > limit:
            raise _too_big("the rendered template", total, limit)
        parts.append(c)
    return "".join(parts)


class _Timekeeper:
    """One daemon thread serving every ``watchdog``: it sleeps until the earliest deadline and
    raises ``RenderTimeout`` in the thread whose budget ran out.  (A thread per render would cost
    more than a typical render itself.)"""

    def __init__(self) -> None:
        self.cv = threading.Condition()
        self.active: set["watchdog"] = set()
        self._thread: threading.Thread | None = None

    def add(self, wd: "watchdog") -> None:
        with self.cv:
            self.active.add(wd)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="template-watchdog", daemon=True)
                self._thread.start()
            self.cv.notify()

    def _run(self) -> None:
        with self.cv:
            while True:
                now = time.monotonic()
                for wd in [w for w in self.active if w.deadline <= now]:
                    self.active.discard(wd)
                    wd.fired = True
                    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(wd.tid),
                                                               ctypes.py_object(RenderTimeout))
                self.cv.wait(min((w.deadline for w in self.active), default=now + 3600) - now)


_TIMEKEEPER = _Timekeeper()


class watchdog:
    """``with watchdog(seconds):`` raises ``RenderTimeout`` in this thread once ``seconds`` have passed.

    The exception is delivered by ``PyThreadState_SetAsyncExc`` between two bytecodes of the running
    thread.  On leaving the block the deadline is dropped and an exception fired but not yet
    delivered is withdrawn; ``fired`` tells whether the budget ran out."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.fired = False
        self.tid = threading.get_ident()
        self.deadline = 0.0

    def __enter__(self) -> "watchdog":
        self.deadline = time.monotonic() + self.seconds
        _TIMEKEEPER.add(self)
        return self

    def __exit__(self, *exc: Any) -> bool:
        with _TIMEKEEPER.cv:
            _TIMEKEEPER.active.discard(self)
            if self.fired:  # withdraw it if it is still pending
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.tid), None)
        return False


__all__ = ["BoundedSandbox", "TemplateLimitError", "RenderTimeout", "watchdog", "bounded_output",
           "bounded_join", "MAX_CHARS", "MAX_ITEMS", "MAX_INT_BITS"]
