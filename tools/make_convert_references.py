"""Make the reference digests that tests/test_convert.py compares gguf-convert with.

For every test checkpoint (``CASES`` in tests/hf_checkpoints.py: tiny random weights in Hugging Face layout,
tokenizers rebuilt from real vocabularies) this writes the checkpoint, runs llama.cpp's own
``convert_hf_to_gguf.py`` on it in a separate Python environment that has torch and transformers, and
stores a digest of the result (every metadata key with its type and value, long arrays by sha256; every
tensor's type, shape and sha256) as ``tools/convert_references/CASE.json``.  The test suite needs only
these small files, never torch.

    python tools/make_convert_references.py --llama-cpp PATH/llama.cpp --python PATH/venv/bin/python [CASE ...]

The environment named by ``--python`` needs torch, transformers, sentencepiece and protobuf; the converter's
own gguf-py is taken from the llama.cpp tree.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.hf_checkpoints import CASES, build_case, gguf_digest  # noqa: E402

OUT_DIR = ROOT / "tools" / "convert_references"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--llama-cpp", required=True, help="llama.cpp source tree (convert_hf_to_gguf.py, gguf-py)")
    p.add_argument("--python", required=True, help="python of an environment with torch and transformers")
    p.add_argument("cases", nargs="*", help=f"cases to make (default: all of {', '.join(CASES)})")
    args = p.parse_args(argv)
    llama = Path(args.llama_cpp).resolve()
    env = dict(os.environ, PYTHONPATH=str(llama / "gguf-py"), HF_HUB_OFFLINE="1")
    version = subprocess.run([args.python, "-c", "import torch, transformers; "
                              "print(torch.__version__, transformers.__version__)"],
                             capture_output=True, text=True, check=True).stdout.split()
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for name in args.cases or list(CASES):
        case = CASES[name]
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / name
            build_case(name, folder)
            out = Path(tmp) / "ref.gguf"
            r = subprocess.run([args.python, str(llama / "convert_hf_to_gguf.py"), str(folder), "--outfile", str(out),
                                "--outtype", case.outtype], env=env, capture_output=True, text=True)
            if r.returncode != 0:
                print(r.stderr[-4000:], file=sys.stderr)
                raise SystemExit(f"{name}: llama.cpp's converter failed")
            digest = gguf_digest(out)
        digest["made_by"] = {"converter": "llama.cpp convert_hf_to_gguf.py", "outtype": case.outtype,
                             "torch": version[0], "transformers": version[1]}
        (OUT_DIR / f"{name}.json").write_text(json.dumps(digest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"{name}: {len(digest['metadata'])} keys, {len(digest['tensors'])} tensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
