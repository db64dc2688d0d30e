"""Tokenizer vs llama.cpp: exact token ids (tolerance: none, every id must match).

References: llama.cpp's own tokenizer test vectors (vocab/NAME.gguf.inp/.out), its ids for the two real
models (models/real-model-tokenization.json) and the ``text``/``tokens`` pairs of every reference.npz.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gguf_engine import Tokenizer
from gguf_engine.tokenizer import UnknownPreTokenizer
from gguf_engine.tokenizer.detok import clean_spaces
from tests.conftest import fixture_path

VOCABS = ["deepseek-llm", "falcon", "gpt-2", "llama-bpe", "llama-spm", "mpt", "phi-3", "qwen2", "starcoder"]
SEP = "\n__ggml_vocab_test__\n"

_cache: dict = {}


def tok_for(path) -> Tokenizer:
    key = str(path)
    if key not in _cache:
        _cache[key] = Tokenizer.from_gguf(path)
    return _cache[key]


def read_vocab_tests(name: str) -> list[tuple[str, list[int]]]:
    """Test strings and ids as llama.cpp's test-tokenizer-0 reads them (strings split on the separator
    line; the last string ends before the final separator; one id line per string)."""
    base = fixture_path("vocab", f"ggml-vocab-{name}.gguf")
    raw = Path(str(base) + ".inp").read_bytes().decode("utf-8")
    strings = []
    pos = 0
    while pos < len(raw):
        nxt = raw.find(SEP, pos)
        if nxt < 0:
            strings.append(raw[pos:])
            break
        strings.append(raw[pos:nxt])
        pos = nxt + len(SEP)
    lines = Path(str(base) + ".out").read_bytes().decode("utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    assert len(lines) == len(strings), f"{name}: {len(strings)} strings but {len(lines)} id lines"
    return [(s, [int(x) for x in line.split()]) for s, line in zip(strings, lines)]


@pytest.mark.parametrize("name", VOCABS)
def test_vocab_fixture_ids_and_roundtrip(name):
    """Every llama.cpp test string tokenizes (no BOS, no special parsing) to exactly the expected ids,
    and detokenizes back to the string (after llama.cpp's space clean-up where the vocabulary uses it)."""
    tok = tok_for(fixture_path("vocab", f"ggml-vocab-{name}.gguf"))
    bad = []
    for text, ids in read_vocab_tests(name):
        got = tok.encode(text)
        if got != ids:
            bad.append((text, ids, got))
    assert not bad, f"{name}: {len(bad)} strings differ, first: {bad[0]!r}"
    for text, ids in read_vocab_tests(name):
        want = text
        if tok.vocab.clean_spaces:
            want = clean_spaces(text.encode("utf-8")).decode("utf-8")
        assert tok.decode(ids) == want, f"{name}: round trip of {text!r}"
        assert tok.encode(text.encode("utf-8")) == ids   # bytes input gives the same ids


def test_vocab_only_file_metadata():
    """A vocabulary-only GGUF (no tensors) loads; special ids and flags come from its metadata."""
    tok = tok_for(fixture_path("vocab", "ggml-vocab-llama-spm.gguf"))
    assert (tok.n_vocab, tok.bos_id, tok.eos_id, tok.add_bos, tok.add_eos) == (32000, 1, 2, True, False)
    assert tok.encode("Hello", add_bos=True)[0] == 1
    assert 2 in tok.eog_ids


def _real(name, smollm2_path, gemma3_path):
    return tok_for(smollm2_path if name == "smollm2" else gemma3_path)


@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_real_model_tokenization(name, smollm2_path, gemma3_path):
    """llama.cpp's ids for every case (both BOS settings, both special-parsing settings) match exactly."""
    cases = json.loads(fixture_path("models", "real-model-tokenization.json").read_text(encoding="utf-8"))[name]
    tok = _real(name, smollm2_path, gemma3_path)
    assert len(cases) > 0
    for c in cases:
        got = tok.encode(c["text"], add_bos=c["add_bos"], special=c["special"])
        assert got == c["ids"], f"{name}: {c['text'][:60]!r} add_bos={c['add_bos']} special={c['special']}"


def _reference_pairs(smollm2_path, gemma3_path):
    root = fixture_path("models")
    for npz in sorted(root.rglob("*.reference.npz")):
        if npz.name.startswith("smollm2"):
            yield npz, smollm2_path
        elif npz.name.startswith("gemma-3"):
            yield npz, gemma3_path
        else:
            yield npz, npz.with_name(npz.name.replace(".reference.npz", ".gguf"))


def test_reference_npz_text_prefix(smollm2_path, gemma3_path):
    """Each reference.npz's ``text`` tokenizes (no BOS, no special parsing) to ids beginning with ``tokens``."""
    n = 0
    for npz, gguf in _reference_pairs(smollm2_path, gemma3_path):
        z = np.load(npz)
        want = z["tokens"].tolist()
        got = tok_for(gguf).encode(str(z["text"]))
        assert got[:len(want)] == want, f"{npz.name}: tokenization differs from llama.cpp's"
        n += 1
    assert n >= 6


def test_eog_and_special_parsing(smollm2_path, gemma3_path):
    """End-of-generation sets as llama.cpp derives them; control tokens parsed only with special=True."""
    smol = tok_for(smollm2_path)
    assert {smol.token_to_id("<|im_end|>"), smol.token_to_id("<|endoftext|>")} <= smol.eog_ids
    assert smol.encode("<|im_start|>user", special=True)[0] == smol.token_to_id("<|im_start|>")
    assert smol.token_to_id("<|im_start|>") not in smol.encode("<|im_start|>user", special=False)
    gem = tok_for(gemma3_path)
    assert {gem.eos_id, gem.token_to_id("<end_of_turn>")} <= gem.eog_ids
    ids = gem.encode("<start_of_turn>user\nHi", special=True)
    assert ids[0] == gem.token_to_id("<start_of_turn>") and gem.decode(ids[1:]) == "user\nHi"
    assert gem.token_to_id("<start_of_turn>") not in gem.encode("<start_of_turn>user\nHi")
    # control tokens render only when asked
    assert gem.token_to_piece(gem.token_to_id("<end_of_turn>")) == b""
    assert gem.token_to_piece(gem.token_to_id("<end_of_turn>"), special=True) == b"<end_of_turn>"


def test_spm_python_merge_matches_sentencepiece():
    """The plain-Python SPM merge (fallback engine) gives the same ids as the SentencePiece engine."""
    from gguf_engine.tokenizer.spm import PySPM, SentencePieceSPM
    tok = tok_for(fixture_path("vocab", "ggml-vocab-llama-spm.gguf"))
    assert isinstance(tok._engine, SentencePieceSPM)
    py = PySPM(tok.vocab)
    texts = [("▁" + s).replace(" ", "▁") for s, _ in read_vocab_tests("llama-spm")]
    assert py.encode_many(texts) == tok._engine.encode_many(texts)


def test_long_text_chunking_is_exact(gemma3_path):
    """Long texts are encoded in chunks; with tiny chunks the ids equal llama.cpp's whole-text result
    (the real-model strings repeated into a long text, compared with the per-piece reference)."""
    import gguf_engine.tokenizer.bpe as bpe
    import gguf_engine.tokenizer.spm as spm
    calib = fixture_path("models", "calibration.txt").read_text(encoding="utf-8")[:20000]
    for path in [fixture_path("vocab", f"ggml-vocab-{n}.gguf") for n in ("llama-bpe", "qwen2", "deepseek-llm",
                                                                         "falcon", "llama-spm")] + [gemma3_path]:
        tok = tok_for(path)
        texts = [s for s, _ in read_vocab_tests("llama-bpe")] + [calib]
        text = "\n".join(texts)
        old_b, old_s = bpe.CHUNK_CHARS, spm._CHUNK
        try:
            bpe.CHUNK_CHARS, spm._CHUNK = 1 << 30, 1 << 30
            bpe.split_safe.__defaults__ = (1 << 30,)
            whole = tok.encode(text)
            bpe.CHUNK_CHARS, spm._CHUNK = 64, 64
            bpe.split_safe.__defaults__ = (64,)
            chunked = tok.encode(text)
        finally:
            bpe.CHUNK_CHARS, spm._CHUNK = old_b, old_s
            bpe.split_safe.__defaults__ = (old_b,)
        assert chunked == whole, path.name


@pytest.mark.parametrize("name", ["llama-spm", "gpt-2", "qwen2"])
def test_stream_decoder_matches_decode(name, gemma3_path):
    """Streaming pieces concatenate to decode(ids) and never contain a broken (replacement) character."""
    tok = tok_for(fixture_path("vocab", f"ggml-vocab-{name}.gguf"))
    for text, ids in read_vocab_tests(name):
        dec = tok.stream_decoder(strip_leading_space=True)
        parts = [dec.push(i) for i in ids] + [dec.flush()]
        assert "".join(parts) == tok.decode(ids), repr(text)
        assert all("\ufffd" not in p for p in parts), repr(text)
        raw = tok.stream_decoder()   # llama.cpp's streaming: pieces as they are
        pieces = b"".join(tok.token_to_piece(i) for i in ids)
        if not tok.vocab.clean_spaces:
            assert "".join([raw.push(i) for i in ids] + [raw.flush()]) == pieces.decode("utf-8", "replace")


def test_stream_decoder_spm_bytes_and_leading_space(gemma3_path):
    """An emoji spelled as byte tokens comes out whole; the first SPM piece's leading space is dropped."""
    tok = tok_for(fixture_path("vocab", "ggml-vocab-llama-spm.gguf"))
    ids = tok.encode(" 🦙 hello")
    dec = tok.stream_decoder(strip_leading_space=True)
    parts = [dec.push(i) for i in ids]
    assert all("\ufffd" not in p for p in parts)
    assert "".join(parts) + dec.flush() == tok.decode(ids) == " 🦙 hello"
    dec = tok.stream_decoder()
    assert "".join(dec.push(i) for i in tok.encode("Paris")) == " Paris"   # a continuation keeps its space
    # as llama.cpp: only a leading token (not one after BOS) loses its space
    assert tok.decode(tok.encode("Hello")) == "Hello"
    assert tok.decode(tok.encode("Hello", add_bos=True)) == " Hello"
    assert tok.decode(tok.encode("Hello", add_bos=True), remove_special=True) == " Hello"


def test_unknown_pre_tokenizer_lists_known_names():
    """An unknown tokenizer.ggml.pre is a clear error naming the known pre-tokenizers."""
    md = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "no-such-pre",
          "tokenizer.ggml.tokens": ["a", "b", "ab"], "tokenizer.ggml.merges": ["a b"]}
    with pytest.raises(UnknownPreTokenizer) as e:
        Tokenizer.from_metadata(md, "x.gguf")
    for known in ("smollm", "llama-bpe", "qwen2", "gpt-2", "tekken", "poro-chat"):
        assert known in str(e.value)


def test_every_known_pre_tokenizer_builds():
    """Each recognised pre-tokenizer name yields regexes the BPE library accepts."""
    from gguf_engine.tokenizer.pretokenizers import PRE_NAMES
    byte_chars = [chr(c) for c in range(33, 127)]
    for name in PRE_NAMES:
        md = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": name, "tokenizer.ggml.tokens": byte_chars + ["ab"],
              "tokenizer.ggml.merges": ["a b"]}
        tok = Tokenizer.from_metadata(md, name)
        assert tok.encode("ab")[0] == len(byte_chars), name


# ids below were produced by llama.cpp (llama_tokenize, no BOS) for strings outside its test vectors
_LLAMA_CPP_EXTRA = [
    ("falcon", " l: \n\x0b   )7", False, [282, 37, 4610, 466, 20, 34]),   # byte with no token blocks merges
    ("falcon", "a\x0b\x0bb", False, [76, 77]),
    ("deepseek-llm", "   \u3000", False, [300, 88946]),          # non-ASCII space: \s but no literal class
    ("deepseek-llm", "\xa0m", False, [37725]),
    ("deepseek-llm", "\t \u3000x", False, [11969, 88946, 87]),
    ("deepseek-llm", "中\u3000文 \u2028x", False, [764, 88946, 1930, 207, 350, 101, 87]),
    ("phi-3", "<|user|>  hi </s> there<|end|>\n ok", True, [32010, 7251, 29871, 2, 727, 32007, 3431]),  # rstrip
    ("phi-3", "<|user|>  hi </s> there<|end|>\n ok", False,
     [529, 29989, 1792, 29989, 29958, 29871, 7251, 1533, 29879, 29958, 727, 29966, 29989, 355, 29989, 29958, 13, 3431]),
    ("llama-spm", "<s> hello </s>", True, [1, 29871, 22172, 29871, 2]),
    ("llama-spm", "é🦙\x00x", False, [904, 243, 162, 169, 156, 3, 29916]),   # byte fallback
]


@pytest.mark.parametrize("name,text,special,ids", _LLAMA_CPP_EXTRA)
def test_llama_cpp_edge_cases(name, text, special, ids):
    """Edge cases found by comparing with llama.cpp on random text: exact ids."""
    assert tok_for(fixture_path("vocab", f"ggml-vocab-{name}.gguf")).encode(text, special=special) == ids
