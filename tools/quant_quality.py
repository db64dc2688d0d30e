"""Quantization quality: size against perplexity and KL divergence, ours beside llama.cpp's.

    python tools/quant_quality.py -m model-f16.gguf --imatrix model.imatrix.gguf -f heldout.txt \
        --llama-quantize PATH/llama-quantize --llama-perplexity PATH/llama-perplexity \
        [--types Q4_K_M Q3_K_M IQ4_XS IQ2_XS] [-c 512] [--chunks 10] [-t 2] \
        [--evaluators llama ours] [--workdir DIR] [--plot quality.png]

For every ftype the F16 model is quantized by our quantizer (the ``gguf-quantize`` command)
and, when its path is given, by ``llama-quantize``, both with the same importance matrix.
Each file is then measured on held-out text (it should not be the imatrix's calibration text):
its size, bits per weight (tensor data bits / weights), perplexity and mean KL divergence
from the F16 model, with the share of tokens whose top choice is unchanged.

Each evaluator (``llama``: llama-perplexity, ``ours``: gguf-perplexity) first runs the F16
model over the text and saves its log-probabilities (``--kl-divergence-base``), then runs each
quantized file against them (``--kl-divergence``), so every file is scored on the same tokens
by the same program.  Measuring both quantizers' files with one evaluator is the fair
comparison of the quantizers; the second evaluator checks our perplexity tool.

Prints a markdown table (with each of our types' perplexity relative to llama.cpp's), and
writes a PNG plot of perplexity and KL divergence against bits per weight so a user can choose
a type at a glance.  Every result is cached in --workdir/results.json and every quantized file
kept there, so an interrupted run resumes where it stopped; a quantized file already present
there (WORKDIR/ours-TYPE.gguf, WORKDIR/llama-TYPE.gguf) is measured as it is (--force redoes
everything).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

from gguf_engine.gguf.reader import GGUFReader  # noqa: E402

DEFAULT_TYPES = ("Q4_K_M", "Q3_K_M", "IQ4_XS", "IQ2_XS")
QUANTIZERS = ("ours", "llama")
LABEL = {"ours": "gguf-engine", "llama": "llama.cpp"}


# -- running the tools --------------------------------------------------------------------------

def _env() -> dict:
    return dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


def run(cmd: list[str], log_path: str) -> str:
    """Run a command, keep its full output in log_path, return it; raise with its tail on failure."""
    t0 = time.perf_counter()
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
    with open(log_path, "w") as f:
        f.write(" ".join(cmd) + "\n\n" + p.stdout)
    if p.returncode != 0:
        raise RuntimeError(f"command failed ({p.returncode}, log {log_path}): {' '.join(cmd)}\n{p.stdout[-2000:]}")
    print(f"    ({time.perf_counter() - t0:.0f} s) {' '.join(os.path.basename(c) if i == 0 else c for i, c in enumerate(cmd))}",
          flush=True)
    return p.stdout


def quantize_cmd(quantizer: str, args, out: str, qtype: str) -> list[str]:
    if quantizer == "ours":
        return [sys.executable, "-m", "gguf_engine.cli.quantize", "--no-progress", "--quiet",
                "--imatrix", args.imatrix, args.model, out, qtype, str(args.threads)]
    return [args.llama_quantize, "--imatrix", args.imatrix, args.model, out, qtype, str(args.threads)]


def perplexity_cmd(evaluator: str, args, model: str, base: str, kld: bool) -> list[str]:
    if evaluator == "ours":
        cmd = [sys.executable, "-m", "gguf_engine.cli.perplexity", "--no-progress", "-m", model,
               "-t", str(args.threads), "--kl-divergence-base", base]
    else:
        cmd = [args.llama_perplexity, "-m", model, "-t", str(args.threads), "--kl-divergence-base", base]
    if kld:
        return cmd + ["--kl-divergence"]
    cmd += ["-f", args.text, "-c", str(args.ctx)]
    return cmd + (["--chunks", str(args.chunks)] if args.chunks else [])


# -- reading the outputs ------------------------------------------------------------------------

_NUM = r"([0-9.]+(?:e[-+]?\d+)?)"


def _grab(pattern: str, text: str, what: str) -> tuple[float, float]:
    m = re.search(pattern, text)
    if not m:
        raise ValueError(f"no {what} in the output")
    return float(m.group(1)), float(m.group(2))


def parse_base(text: str) -> dict:
    ppl, unc = _grab(r"Final estimate: PPL = " + _NUM + r" \+/- " + _NUM, text, "final PPL estimate")
    return {"ppl": ppl, "ppl_unc": unc}


def parse_kld(text: str) -> dict:
    ppl, ppl_unc = _grab(r"Mean PPL\(Q\)\s*:\s*" + _NUM + r"\s*±\s*" + _NUM, text, "Mean PPL(Q)")
    kld, kld_unc = _grab(r"Mean\s+KLD:\s*" + _NUM + r"\s*±\s*" + _NUM, text, "Mean KLD")
    top, top_unc = _grab(r"Same top p:\s*" + _NUM + r"\s*±\s*" + _NUM, text, "Same top p")
    return {"ppl": ppl, "ppl_unc": ppl_unc, "kld": kld, "kld_unc": kld_unc, "same_top": top, "same_top_unc": top_unc}


def file_stats(path: str) -> dict:
    """Size on disk and bits per weight of the tensor data (as llama-quantize reports it)."""
    with GGUFReader(path) as r:
        n_bytes = sum(t.n_bytes for t in r.tensors.values())
        n_el = sum(t.n_elements for t in r.tensors.values())
        types: dict[str, int] = {}
        for t in r.tensors.values():
            if len(t.shape) >= 2:
                types[t.type.name] = types.get(t.type.name, 0) + 1
    return {"mib": os.path.getsize(path) / 2**20, "bpw": n_bytes * 8 / n_el, "types": types}


# -- the measurement ----------------------------------------------------------------------------

class Results:
    """results.json in the work directory: one entry per (what, quantizer, type, evaluator)."""

    def __init__(self, path: str, force: bool):
        self.path = path
        self.data = {} if force or not os.path.exists(path) else json.load(open(path))

    def get(self, key: str):
        return self.data.get(key)

    def put(self, key: str, value) -> None:
        self.data[key] = value
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.data, f, indent=1)
        os.replace(tmp, self.path)


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def _identical_twin(res: Results, work: str, q: str, qtype: str) -> str | None:
    """The other quantizer, if its file for qtype is byte-identical to this one (then measuring it
    again would only repeat the same numbers)."""
    other = "llama" if q == "ours" else "ours"
    a, b = (os.path.join(work, f"{x}-{qtype}.gguf") for x in (q, other))
    if not (os.path.exists(a) and os.path.exists(b)) or os.path.getsize(a) != os.path.getsize(b):
        return None
    return other if _sha256(a) == _sha256(b) else None


def measure(args) -> Results:
    work = args.workdir
    os.makedirs(work, exist_ok=True)
    res = Results(os.path.join(work, "results.json"), args.force)
    quantizers = [q for q in args.quantizers if q == "ours" or args.llama_quantize]
    evaluators = [e for e in args.evaluators if e == "ours" or args.llama_perplexity]
    if not evaluators:
        raise SystemExit("no evaluator: give --llama-perplexity or --evaluators ours")

    res.put("setup", {"model": args.model, "imatrix": args.imatrix, "text": args.text, "ctx": args.ctx,
                      "chunks": args.chunks, "threads": args.threads})
    if res.get("f16:stats") is None:
        res.put("f16:stats", file_stats(args.model))
    for ev in evaluators:
        base = os.path.join(work, f"base-{ev}.kld")
        key = f"f16:{ev}"
        if res.get(key) is None or not os.path.exists(base):
            print(f"[F16] base log-probabilities with the {ev} evaluator", flush=True)
            out = run(perplexity_cmd(ev, args, args.model, base, kld=False), os.path.join(work, f"f16-{ev}.log"))
            res.put(key, parse_base(out))

    for qtype in args.types:
        for q in quantizers:
            path = os.path.join(work, f"{q}-{qtype}.gguf")
            if res.get(f"{q}:{qtype}:stats") is None and os.path.exists(path) and not args.force:
                print(f"[{qtype}] using the existing {path}", flush=True)
                res.put(f"{q}:{qtype}:stats", file_stats(path))
            if res.get(f"{q}:{qtype}:stats") is None or not os.path.exists(path):
                print(f"[{qtype}] quantizing with {LABEL[q]}", flush=True)
                t0 = time.perf_counter()
                try:
                    run(quantize_cmd(q, args, path, qtype), os.path.join(work, f"quantize-{q}-{qtype}.log"))
                except RuntimeError as e:
                    print(f"    FAILED: {str(e).splitlines()[0]}", flush=True)
                    continue
                st = file_stats(path)
                st["seconds"] = time.perf_counter() - t0
                res.put(f"{q}:{qtype}:stats", st)
                for ev in evaluators:                       # a new file invalidates its measurements
                    res.data.pop(f"{q}:{qtype}:{ev}", None)
            twin = _identical_twin(res, work, q, qtype)
            for ev in evaluators:
                key = f"{q}:{qtype}:{ev}"
                if res.get(key) is None and twin and res.get(f"{twin}:{qtype}:{ev}"):
                    print(f"[{qtype}] {LABEL[q]} file is byte-identical to {LABEL[twin]}'s: same measurements",
                          flush=True)
                    res.put(key, dict(res.get(f"{twin}:{qtype}:{ev}"), identical=True))
                if res.get(key) is None:
                    print(f"[{qtype}] {LABEL[q]} file, measured by the {ev} evaluator", flush=True)
                    base = os.path.join(work, f"base-{ev}.kld")
                    try:
                        out = run(perplexity_cmd(ev, args, path, base, kld=True),
                                  os.path.join(work, f"kld-{q}-{qtype}-{ev}.log"))
                        res.put(key, parse_kld(out))
                    except (RuntimeError, ValueError) as e:
                        print(f"    FAILED: {str(e).splitlines()[0]}", flush=True)
    return res


# -- reporting ----------------------------------------------------------------------------------

def table(res: Results, types, evaluators) -> str:
    lines = []
    f16 = res.get("f16:stats")
    for ev in evaluators:
        base = res.get(f"f16:{ev}")
        if base is None:
            continue
        name = "llama-perplexity" if ev == "llama" else "gguf-perplexity"
        lines += [f"Measured with {name}:", "",
                  "| type | quantizer | size MiB | bpw | PPL | PPL vs llama.cpp | mean KLD | same top % |",
                  "|---|---|---:|---:|---:|---:|---:|---:|",
                  f"| F16 | - | {f16['mib']:.1f} | {f16['bpw']:.2f} | {base['ppl']:.4f} ± {base['ppl_unc']:.4f} "
                  f"| | 0 | 100 |"]
        for qtype in types:
            ref = res.get(f"llama:{qtype}:{ev}")
            for q in QUANTIZERS:
                st, m = res.get(f"{q}:{qtype}:stats"), res.get(f"{q}:{qtype}:{ev}")
                if st is None:
                    continue
                rel = ""
                if q == "ours" and m and ref:
                    rel = f"{100 * (m['ppl'] / ref['ppl'] - 1):+.2f} %"
                    if m.get("identical") or ref.get("identical"):
                        rel += " (byte-identical file)"
                if m:
                    lines.append(f"| {qtype} | {LABEL[q]} | {st['mib']:.1f} | {st['bpw']:.3f} | {m['ppl']:.4f} ± "
                                 f"{m['ppl_unc']:.4f} | {rel} | {m['kld']:.5f} ± {m['kld_unc']:.5f} | "
                                 f"{m['same_top']:.2f} |")
                else:
                    lines.append(f"| {qtype} | {LABEL[q]} | {st['mib']:.1f} | {st['bpw']:.3f} | (not measured) | | | |")
        lines.append("")
    return "\n".join(lines)


def plot(res: Results, types, evaluator: str, path: str, title: str) -> bool:
    """PPL and mean KLD against bits per weight, one marker per (type, quantizer)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return False
    base = res.get(f"f16:{evaluator}")
    if base is None:
        return False
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 5))
    style = {"ours": dict(marker="o", color="tab:blue"), "llama": dict(marker="x", color="tab:orange", s=60)}
    for q in QUANTIZERS:
        pts = []
        for qtype in types:
            st, m = res.get(f"{q}:{qtype}:stats"), res.get(f"{q}:{qtype}:{evaluator}")
            if st and m:
                pts.append((st["bpw"], m["ppl"], m["kld"], qtype, st["mib"]))
        if not pts:
            continue
        pts.sort()
        ax1.scatter([p[0] for p in pts], [p[1] for p in pts], label=LABEL[q], **style[q])
        ax2.scatter([p[0] for p in pts], [p[2] for p in pts], label=LABEL[q], **style[q])
        if q == "ours" or not any(res.get(f"ours:{t}:{evaluator}") for t in types):
            for i, (bpw, ppl, kld, qtype, mib) in enumerate(pts):     # neighbours labelled above / below
                off = (6, 5) if i % 2 else (6, -13)
                ax1.annotate(f"{qtype} ({mib:.0f} MiB)", (bpw, ppl), textcoords="offset points", xytext=off,
                             fontsize=8)
                ax2.annotate(qtype, (bpw, kld), textcoords="offset points", xytext=off, fontsize=8)
    ax1.axhline(base["ppl"], color="gray", linestyle="--", linewidth=1, label=f"F16 ({base['ppl']:.2f})")
    ax1.set_xlabel("bits per weight")
    ax1.set_ylabel("perplexity on held-out text (lower is better)")
    ax1.set_title("Perplexity vs size")
    ax2.set_yscale("log")
    ax2.set_xlabel("bits per weight")
    ax2.set_ylabel("mean KL divergence from F16 (lower is better)")
    ax2.set_title("KL divergence vs size")
    for ax in (ax1, ax2):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Size vs quality of quantization types, ours and llama.cpp's.",
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("-m", "--model", required=True, help="F16 (or F32/BF16) GGUF model")
    ap.add_argument("--imatrix", required=True, help="importance matrix used by both quantizers")
    ap.add_argument("-f", "--text", required=True, help="held-out text for perplexity")
    ap.add_argument("--types", nargs="+", default=list(DEFAULT_TYPES), help="ftypes to compare")
    ap.add_argument("--llama-quantize", help="path of llama-quantize (the reference quantizer)")
    ap.add_argument("--llama-perplexity", help="path of llama-perplexity (the reference evaluator)")
    ap.add_argument("--quantizers", nargs="+", choices=QUANTIZERS, default=list(QUANTIZERS))
    ap.add_argument("--evaluators", nargs="+", choices=("llama", "ours"), default=["llama"],
                    help="perplexity programs to measure with (default: llama)")
    ap.add_argument("-c", "--ctx", type=int, default=512, help="tokens per chunk (default 512)")
    ap.add_argument("--chunks", type=int, default=0, help="number of chunks (default: the whole text)")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--workdir", default="quant-quality", help="files, logs and results.json go here")
    ap.add_argument("--plot", help="PNG to write (default WORKDIR/quality.png)")
    ap.add_argument("--force", action="store_true", help="ignore cached results")
    ap.add_argument("--report-only", action="store_true", help="print the table and plot from cached results")
    args = ap.parse_args(argv)
    for tool in ("llama_quantize", "llama_perplexity"):
        p = getattr(args, tool)
        if p and not os.access(p, os.X_OK):
            ap.error(f"{p} is not an executable")

    if args.report_only:
        res = Results(os.path.join(args.workdir, "results.json"), False)
    else:
        res = measure(args)
    evaluators = [e for e in ("llama", "ours") if res.get(f"f16:{e}")]
    print()
    print(table(res, args.types, evaluators))
    if evaluators:
        out = args.plot or os.path.join(args.workdir, "quality.png")
        title = (f"{os.path.basename(args.model)} with imatrix {os.path.basename(args.imatrix)}; "
                 f"held-out text {os.path.basename(args.text)}, measured by "
                 f"{'llama-perplexity' if evaluators[0] == 'llama' else 'gguf-perplexity'}")
        if plot(res, args.types, evaluators[0], out, title):
            print(f"plot: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
