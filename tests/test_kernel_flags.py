"""Every kernel's fast-math flags are its own.

Numba compiles a jitted helper that names no ``fastmath`` flags with the flags of the kernel whose
compilation first reaches it (``inherit_if_not_set``), and caches that version for every later
caller.  A helper called from a fast-math kernel without flags of its own therefore has bits that
depend on which kernel compiled it first in a cache's history (the activation rounding did:
``amax / 127`` became ``amax * (1/127)`` under a caller's ``arcp``).  This test walks each fast-math
kernel's callees (through helpers inlined into it, which take the caller's flags by design) and
fails on any that is compiled separately but names no flags.  No kernel is compiled.
"""
from __future__ import annotations

import importlib
import pkgutil

import kernels
from numba.core.registry import CPUDispatcher


def _kernel_modules():
    mods = []
    for info in pkgutil.walk_packages(kernels.__path__, "kernels."):
        if info.name.startswith("kernels.cuda"):       # CuPy sources, no Numba kernels
            continue
        mods.append(importlib.import_module(info.name))
    return mods


def _code_names(code) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if hasattr(const, "co_names"):              # nested functions and comprehensions
            names |= _code_names(const)
    return names


def _callees(d: CPUDispatcher) -> list[CPUDispatcher]:
    g = d.py_func.__globals__
    return [g[n] for n in sorted(_code_names(d.py_func.__code__)) if isinstance(g.get(n), CPUDispatcher)]


def _name(d: CPUDispatcher) -> str:
    return f"{d.py_func.__module__}.{d.py_func.__qualname__}"


def test_no_helper_borrows_a_callers_fastmath_flags():
    """For each kernel with fast-math flags, every separately compiled helper it reaches names its
    own ``fastmath`` (tolerance: none; the list of offenders must be empty)."""
    dispatchers = {id(v): v for m in _kernel_modules() for v in vars(m).values() if isinstance(v, CPUDispatcher)}
    assert len(dispatchers) > 100, "the kernels were not found"
    offenders: dict[str, set[str]] = {}
    for d in dispatchers.values():
        if not d.targetoptions.get("fastmath"):
            continue
        seen: set[int] = set()
        stack = _callees(d)
        while stack:
            c = stack.pop()
            if id(c) in seen:
                continue
            seen.add(id(c))
            if c.targetoptions.get("inline") == "always":    # compiled inside the caller, as the caller
                stack.extend(_callees(c))
            elif "fastmath" not in c.targetoptions:
                offenders.setdefault(_name(c), set()).add(_name(d))
    assert not offenders, "helpers that take their first caller's fast-math flags (give them their own): " + \
        "; ".join(f"{k} <- {', '.join(sorted(v))}" for k, v in sorted(offenders.items()))
