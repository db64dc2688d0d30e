"""gguf-dump: show a GGUF file's header, metadata, tensor table and size totals.

    gguf-dump FILE [--json] [--no-tensors]

Long arrays are summarised (count and first elements); tokenizer arrays are counted.
Totals: parameter count, file size, and bits per weight overall and per tensor type.
A malformed file prints the reader's error (file, problem, byte offset) and exits with 1.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from typing import Any, Sequence

import numpy as np

from ..gguf import GGUFReader, GGUFValueType, StringArray
from ._common import cli_entry

ARRAY_HEAD = 8           # elements shown of a long array
SHORT_ARRAY = 16         # arrays up to this length are shown whole
STRING_CHARS = 72        # text output truncates longer strings


def _spec_name(spec: Any) -> str:
    if isinstance(spec, tuple):
        inner = spec[1]
        inner = "mixed" if isinstance(inner, list) else _spec_name(inner)
        return f"ARRAY[{inner}]"
    return GGUFValueType(spec).name


def _plain(v: Any) -> Any:
    """JSON-friendly value."""
    if isinstance(v, (np.ndarray, StringArray)):
        return v.tolist()
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


def _summary(v: Any, full: bool) -> Any:
    """An array longer than SHORT_ARRAY becomes {count, head}; the rest is returned plain."""
    if isinstance(v, (np.ndarray, StringArray, list)):
        n = len(v)
        if n > SHORT_ARRAY and not full:
            return {"count": n, "head": _plain(v[:ARRAY_HEAD])}
        return _plain(v)
    return v


def _short_text(v: Any) -> str:
    if isinstance(v, str):
        r = repr(v)
        return r if len(r) <= STRING_CHARS else r[:STRING_CHARS - 3] + "...'" + f" ({len(v)} chars)"
    if isinstance(v, dict):
        return f"[{v['count']} items] " + ", ".join(_short_text(x) for x in v["head"]) + ", ..."
    if isinstance(v, list):
        return "[" + ", ".join(_short_text(x) for x in v) + "]"
    return repr(v)


def collect(r: GGUFReader, with_tensors: bool = True) -> dict:
    """Everything gguf-dump shows, as plain data (the --json output)."""
    meta = {}
    for key, value in r.metadata.items():
        meta[key] = {"type": _spec_name(r.type_spec(key)), "value": _summary(value, full=False)}
    by_type: dict[str, dict[str, int]] = defaultdict(lambda: {"tensors": 0, "params": 0, "bytes": 0})
    tensors = []
    for t in r.tensors.values():
        agg = by_type[t.type.name]
        agg["tensors"] += 1
        agg["params"] += t.n_elements
        agg["bytes"] += t.n_bytes
        if with_tensors:
            tensors.append({"name": t.name, "type": t.type.name, "shape": list(t.shape),
                            "n_elements": t.n_elements, "n_bytes": t.n_bytes, "offset": t.offset})
    params = sum(a["params"] for a in by_type.values())
    nbytes = sum(a["bytes"] for a in by_type.values())
    per_type = {name: {**a, "bpw": (a["bytes"] * 8 / a["params"]) if a["params"] else None}
                for name, a in sorted(by_type.items(), key=lambda kv: -kv[1]["bytes"])}
    out = {
        "file": r.path,
        "file_size": r.file_size,
        "version": r.version,
        "alignment": r.alignment,
        "data_offset": r.data_offset,
        "n_metadata": len(r.metadata),
        "n_tensors": len(r.tensors),
        "metadata": meta,
        "totals": {
            "params": params,
            "tensor_bytes": nbytes,
            "file_size": r.file_size,
            "bpw": nbytes * 8 / params if params else None,
            "bpw_file": r.file_size * 8 / params if params else None,
            "per_type": per_type,
        },
    }
    if with_tensors:
        out["tensors"] = tensors
    return out


def _fmt_bytes(n: int) -> str:
    for unit, div in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= div:
            return f"{n / div:.2f} {unit}"
    return f"{n} B"


def render_text(d: dict) -> str:
    lines = [f"{d['file']}",
             f"  GGUF v{d['version']}, {d['n_metadata']} metadata keys, {d['n_tensors']} tensors, "
             f"alignment {d['alignment']}, data at offset {d['data_offset']}, "
             f"file {d['file_size']:,} bytes ({_fmt_bytes(d['file_size'])})",
             "", "metadata:"]
    kw = max((len(k) for k in d["metadata"]), default=0)
    tw = max((len(m["type"]) for m in d["metadata"].values()), default=0)
    for key, m in d["metadata"].items():
        lines.append(f"  {key:<{kw}}  {m['type']:<{tw}}  {_short_text(m['value'])}")
    if "tensors" in d:
        lines += ["", "tensors:"]
        nw = max((len(t["name"]) for t in d["tensors"]), default=4)
        lines.append(f"  {'name':<{nw}}  {'type':<7}  {'shape':<18}  {'elements':>12}  {'bytes':>12}")
        for t in d["tensors"]:
            shape = "x".join(str(s) for s in t["shape"])
            lines.append(f"  {t['name']:<{nw}}  {t['type']:<7}  {shape:<18}  {t['n_elements']:>12,}  "
                         f"{t['n_bytes']:>12,}")
    tot = d["totals"]
    lines += ["", "totals:",
              f"  parameters:   {tot['params']:,}",
              f"  tensor data:  {tot['tensor_bytes']:,} bytes ({_fmt_bytes(tot['tensor_bytes'])})",
              f"  file size:    {tot['file_size']:,} bytes ({_fmt_bytes(tot['file_size'])})"]
    if tot["params"]:
        lines.append(f"  bits/weight:  {tot['bpw']:.3f} (tensor data), {tot['bpw_file']:.3f} (whole file)")
    lines.append("  per type:")
    for name, a in tot["per_type"].items():
        bpw = f"{a['bpw']:.3f}" if a["bpw"] is not None else "-"
        lines.append(f"    {name:<7} {a['tensors']:>5} tensors  {a['params']:>14,} params  "
                     f"{a['bytes']:>14,} bytes  {bpw:>7} bpw")
    return "\n".join(lines)


@cli_entry("gguf-dump")
def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="gguf-dump", description="Show a GGUF file's header, metadata, "
                                 "tensors and size totals.")
    ap.add_argument("file", help="GGUF file")
    ap.add_argument("--json", action="store_true", help="machine-readable output")
    ap.add_argument("--no-tensors", action="store_true", help="leave out the tensor table")
    args = ap.parse_args(argv)
    with GGUFReader(args.file) as r:
        d = collect(r, with_tensors=not args.no_tensors)
    if args.json:
        json.dump(d, sys.stdout, indent=1, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        print(render_text(d))
    return 0


if __name__ == "__main__":
    sys.exit(main())
