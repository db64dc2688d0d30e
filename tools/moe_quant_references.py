"""Reference digests of llama-quantize's output on tiny random mixture-of-experts models.

    python tools/moe_quant_references.py --llama-bin LLAMA_CPP_BUILD/bin [--out tests/data/moe_quant]

For each tiny MoE shape of tools/make_random_model.py (``MODELS``: a qwen3moe layout written in
F16 and a gpt-oss layout written in F32, 8 experts, top-2), this script

1. writes the source model from a fixed seed (a test rebuilds it and checks its hash);
2. runs ``llama-imatrix`` on it over the shared calibration text, in both file formats: the GGUF
   one (raw sums with one count per expert) and the legacy ``.dat`` one (values scaled by the
   per-tensor call count); both files are kept in ``--out`` for the tests;
   For tiny-qwen3moe it also makes, with llama-imatrix (``--in-file``, no model):
   ``.imatrix-combined-gguf``, the GGUF and the legacy file combined (legacy values scaled back
   by the chunk size, per-expert counts collapsing to the legacy single count), and
   ``.imatrix-partial.dat``, the legacy form of ``partial_imatrix`` (the GGUF file with experts
   that saw no tokens: 1.0 stored, scaled by the call count), which the tests rebuild;
3. runs ``llama-quantize`` for every ftype of ``FTYPES``, without an imatrix and with each of
   the two imatrix files, and records in ``--out/digests.json`` the GGML type and the sha256 of
   the bytes (first 16 hex digits) of every tensor it converted; the other tensors (norms,
   router, biases, sinks) are copied, and the test checks that they are, byte for byte.

With ``--typemaps`` it also records, for the real MoE shapes of ``TYPEMAP_SHAPES``, the tensor
types llama-quantize chooses in every quantized ftype, without and with an importance matrix
(``--dry-run`` on a sparse F16 file of the shape: header and tensor infos, data all holes), as
the sha256 of the sorted "name:TYPE" lines and the count per type, in ``--out/typemaps.json``.

tests/test_moe_quantize.py quantizes the same sources with gguf-quantize and compares.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from make_random_model import SHAPES, make_model, plan, tensor_shapes, write_metadata  # noqa: E402
from gguf_engine.gguf.reader import GGUFReader  # noqa: E402
from gguf_engine.quantize.ftypes import QUANT_OPTIONS  # noqa: E402
from kernels.types import GGMLType, row_bytes  # noqa: E402

CALIBRATION = ROOT.parent / "shared" / "fixtures" / "models" / "calibration.txt"
SEED = 17
# shape -> source type (llama-quantize's input)
MODELS = {"tiny-qwen3moe": "F16", "tiny-gpt-oss": "F32"}
FTYPES = ["Q4_K_M", "Q3_K_M", "Q2_K", "IQ4_XS", "Q8_0", "Q4_0", "MXFP4_MOE"]
# imatrix variant -> file suffix (None: no imatrix)
IMATRIX_VARIANTS = {"": None, "+imatrix": ".imatrix-gguf", "+imatrix-dat": ".imatrix.dat"}
# the partially exercised imatrix (experts with no tokens), for a few ftypes of one model
PARTIAL_SHAPE = "tiny-qwen3moe"
PARTIAL_FTYPES = ["Q4_K_M", "Q2_K", "IQ4_XS"]
PARTIAL_VARIANT = "+imatrix-partial"
IMATRIX_ARGS = ["-c", "64", "--chunks", "24", "-b", "64", "-ub", "64", "-t", "2", "--no-ppl"]
TYPEMAP_SHAPES = ["qwen3moe-16l-32e", "qwen3-30b-a3b", "gpt-oss-20b"]
# every quantized ftype llama-quantize accepts (not the float ones, not COPY, not the aliases)
TYPEMAP_FTYPES = [o.name for o in QUANT_OPTIONS
                  if o.name not in ("F16", "BF16", "F32", "COPY", "Q3_K", "Q4_K", "Q5_K", "Q1_0", "Q2_0")]
_DRY_RUN_LINE = re.compile(r"^\[\s*\d+/\s*\d+\]\s+(\S+)\s+- \[.*\], type =\s*(\S+), size = [^(]*(?:\((\S+)\))?\s*$")


def tensor_digests(path: str | os.PathLike) -> dict[str, str]:
    """name -> "TYPE:sha256 of the tensor's bytes (16 hex digits)", in file order."""
    with GGUFReader(path) as r:
        return {n: f"{t.type.name}:{hashlib.sha256(bytes(t.raw)).hexdigest()[:16]}" for n, t in r.tensors.items()}


def converted(digests: dict[str, str], source: dict[str, str]) -> dict[str, str]:
    """The digests of the tensors whose bytes differ from the source's (those the quantizer converted)."""
    return {n: d for n, d in digests.items() if d != source.get(n)}


def data_hash(path: str | os.PathLike) -> str:
    """One sha256 over every tensor's name, type and bytes (the source model's identity)."""
    h = hashlib.sha256()
    for name, digest in tensor_digests(path).items():
        h.update(f"{name}:{digest};".encode())
    return h.hexdigest()


def source_model(shape: str, out_dir: Path) -> Path:
    """The tiny source model of a shape, written from SEED in its MODELS type."""
    path = out_dir / f"{shape}-{MODELS[shape].lower()}.gguf"
    make_model(shape, MODELS[shape], path, seed=SEED, log=lambda m: None)
    return path


def partial_imatrix(src: Path, dst: Path) -> None:
    """The GGUF imatrix src with missing data, as a MoE model with unused experts gives: expert 3
    of every layer-0 expert tensor has no tokens (sums and count 0), and blk.1.ffn_up_exps has
    none at all."""
    from gguf_engine.quantize.imatrix import read_imatrix, write_imatrix_gguf
    im = read_imatrix(src)
    for name, e in im.entries.items():
        per = e.sums.reshape(e.n_mat, -1)
        if name.startswith("blk.0.") and "_exps" in name:
            per[3] = 0.0
            e.counts[3] = 0
        elif name == "blk.1.ffn_up_exps.weight":
            per[:] = 0.0
            e.counts[:] = 0
    write_imatrix_gguf(im, dst)


def run(cmd: list[str], cwd: Path | None = None) -> str:
    """Run a llama.cpp program; its stdout and stderr together."""
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    if p.returncode != 0:
        sys.stderr.write(p.stdout[-4000:] + p.stderr[-4000:])
        raise SystemExit(f"failed ({p.returncode}): {' '.join(cmd)}")
    return p.stdout + p.stderr


def typemap_digest(types: dict[str, str]) -> dict:
    """{"sha256": of the sorted "name:TYPE" lines, "counts": tensors per type}."""
    lines = "".join(f"{n}:{t}\n" for n, t in sorted(types.items()))
    counts: dict[str, int] = {}
    for t in types.values():
        counts[t] = counts.get(t, 0) + 1
    return {"sha256": hashlib.sha256(lines.encode()).hexdigest(), "counts": dict(sorted(counts.items()))}


def sparse_f16_model(shape: str, path: Path) -> None:
    """A GGUF file of a shape in F16 (norms, router, biases F32) whose data section is a hole:
    enough for llama-quantize --dry-run, which reads only the header."""
    import gguf
    s = SHAPES[shape]
    tp, ftype = plan(s, "F16")
    w = gguf.GGUFWriter(str(path), s.arch)
    write_metadata(w, shape, s, ftype)
    size = 0
    for name, sh in tensor_shapes(s).items():
        t = tp.types[name]
        nbytes = int(np.prod(sh[:-1], dtype=np.int64)) * row_bytes(t, int(sh[-1]))
        w.add_tensor_info(name, sh, np.float16 if t == GGMLType.F16 else np.float32, nbytes,
                          raw_dtype=gguf.GGMLQuantizationType[t.name])
        size += nbytes + (-nbytes) % w.data_alignment
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    head = path.stat().st_size
    os.truncate(path, head + (-head) % w.data_alignment + size)


def dry_run_types(bin_dir: Path, src: Path, ftype: str, imatrix: Path | None) -> dict[str, str]:
    """name -> GGML type name llama-quantize --dry-run chooses for every tensor."""
    im = ["--imatrix", str(imatrix)] if imatrix else []
    out = run([str(bin_dir / "llama-quantize"), "--dry-run", *im, str(src), str(src) + ".out", ftype, "2"])
    types = {}
    for line in out.splitlines():
        m = _DRY_RUN_LINE.match(line.strip())
        if m:
            types[m.group(1)] = (m.group(3) or m.group(2)).upper()
    if not types:
        raise SystemExit(f"no tensor lines in llama-quantize --dry-run output for {src} {ftype}")
    return types


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-bin", required=True, help="directory of llama-quantize and llama-imatrix")
    ap.add_argument("--out", default=str(ROOT / "tests" / "data" / "moe_quant"), help="output directory")
    ap.add_argument("--typemaps", action="store_true", help="only the real shapes' type maps (typemaps.json)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bin_dir = Path(args.llama_bin)
    env_lib = os.environ.get("LD_LIBRARY_PATH", "")
    os.environ["LD_LIBRARY_PATH"] = f"{bin_dir}:{env_lib}" if env_lib else str(bin_dir)
    if args.typemaps:
        maps: dict = {}
        with tempfile.TemporaryDirectory() as tmp_s:
            for shape in TYPEMAP_SHAPES:
                src = Path(tmp_s) / f"{shape}.gguf"
                sparse_f16_model(shape, src)
                maps[shape] = {}
                for ftype in TYPEMAP_FTYPES:
                    for variant, im in (("", None), ("+imatrix", out / "tiny-qwen3moe.imatrix-gguf")):
                        maps[shape][ftype + variant] = typemap_digest(dry_run_types(bin_dir, src, ftype, im))
                print(shape, flush=True)
                src.unlink()
        (out / "typemaps.json").write_text(json.dumps(maps, indent=0, sort_keys=True) + "\n")
        print(f"wrote {out / 'typemaps.json'}")
        return 0
    refs: dict = {}
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        for shape in MODELS:
            src = source_model(shape, tmp)
            for suffix, fmt in ((".imatrix-gguf", "gguf"), (".imatrix.dat", "dat")):
                # run beside the text, so that the dataset name recorded is its bare file name
                run([str(bin_dir / "llama-imatrix"), "-m", str(src), "-f", CALIBRATION.name,
                     "-o", str((out / f"{shape}{suffix}").resolve()), "--output-format", fmt, *IMATRIX_ARGS],
                    cwd=CALIBRATION.parent)
            imatrix_bin = str(bin_dir / "llama-imatrix")
            if shape == PARTIAL_SHAPE:
                g, d = out / f"{shape}.imatrix-gguf", out / f"{shape}.imatrix.dat"
                run([imatrix_bin, "-m", str(src), "--in-file", str(g), "--in-file", str(d), "-c", "64",
                     "-o", str(out / f"{shape}.imatrix-combined-gguf"), "--output-format", "gguf"])
                partial = tmp / f"{shape}.imatrix-partial.gguf"
                partial_imatrix(g, partial)
                run([imatrix_bin, "-m", str(src), "--in-file", str(partial), "-c", "64", "--output-format", "dat",
                     "-o", str(out / f"{shape}.imatrix-partial.dat")])
            source = tensor_digests(src)
            entry = {"source_type": MODELS[shape], "seed": SEED, "source_hash": data_hash(src), "digests": {}}
            for ftype in FTYPES:
                for variant, suffix in IMATRIX_VARIANTS.items():
                    dst = tmp / f"{shape}-{ftype}{variant}.gguf"
                    im = ["--imatrix", str(out / f"{shape}{suffix}")] if suffix else []
                    run([str(bin_dir / "llama-quantize"), *im, str(src), str(dst), ftype, "2"])
                    entry["digests"][ftype + variant] = converted(tensor_digests(dst), source)
                    dst.unlink()
                    print(f"{shape} {ftype}{variant}", flush=True)
                if shape == PARTIAL_SHAPE and ftype in PARTIAL_FTYPES:
                    dst = tmp / f"{shape}-{ftype}-partial.gguf"
                    run([str(bin_dir / "llama-quantize"), "--imatrix", str(partial), str(src), str(dst), ftype, "2"])
                    entry["digests"][ftype + PARTIAL_VARIANT] = converted(tensor_digests(dst), source)
                    dst.unlink()
            refs[shape] = entry
    (out / "digests.json").write_text(json.dumps(refs, indent=0, sort_keys=True) + "\n")
    print(f"wrote {out / 'digests.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
