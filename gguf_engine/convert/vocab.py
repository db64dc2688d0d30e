"""Tokenizer metadata from a Hugging Face model folder, as llama.cpp's converter writes it.

Two vocabulary kinds:

- SentencePiece (``tokenizer.model``, read with the ``sentencepiece`` package): ``tokenizer.ggml.model
  = llama``, pre-tokenizer ``default``, tokens with their scores and types; ids past the model's
  pieces (a vocabulary padded for the embedding matrix) become ``[PAD{i}]`` UNUSED tokens.
- byte-level BPE (``tokenizer.json``, read with the ``tokenizers`` package): ``gpt2``, tokens, types
  and merges; the pre-tokenizer name is found by hashing the token ids of ``CHECK_TEXT``, the way
  llama.cpp's converter does, and an unknown hash is refused (llama.cpp could not run the file).

Both then take the special token ids, ``add_bos``/``add_eos`` and the chat template from
``tokenizer.json``'s added tokens and post-processor, ``tokenizer_config.json`` (or
``chat_template.jinja``) and ``config.json``, following llama.cpp's precedence.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path
from typing import Any

from ..gguf.constants import GGUFValueType as V
from .pretok_hashes import CHECK_TEXT, PRE_TOKENIZER_BY_HASH
from .safetensors import ConvertError

__all__ = ["TokenType", "MetaEntry", "VocabInfo", "load_vocab", "pre_tokenizer_name", "bpe_vocab_size"]


class TokenType:
    """llama.cpp's token types."""
    NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


@dataclass(frozen=True)
class MetaEntry:
    """One metadata key with its GGUF type (``elem`` for arrays)."""
    key: str
    value: Any
    vtype: V
    elem: V | None = None


@dataclass
class VocabInfo:
    entries: list[MetaEntry] = field(default_factory=list)
    n_tokens: int = 0                  # length of the token list written

    def add(self, key: str, value: Any, vtype: V, elem: V | None = None) -> None:
        for i, e in enumerate(self.entries):            # a key set again keeps its first place
            if e.key == key:
                self.entries[i] = MetaEntry(key, value, vtype, elem)
                return
        self.entries.append(MetaEntry(key, value, vtype, elem))


SPECIAL_TYPES = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")
_SPECIAL_KEY = {"bos": "bos_token_id", "eos": "eos_token_id", "unk": "unknown_token_id",
                "sep": "seperator_token_id", "pad": "padding_token_id", "cls": "cls_token_id",
                "mask": "mask_token_id", "eot": "eot_token_id", "eom": "eom_token_id"}
_SPIECE_SPACE = "\u2581"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConvertError(f"{path}: cannot read JSON: {e}") from None


def looks_special(text: str) -> bool:
    """Added tokens some models forget to mark special (llama.cpp treats them as control tokens)."""
    return (text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
            or (text.startswith("<|") and text.endswith("|>"))
            or (text.startswith("<\uff5c") and text.endswith("\uff5c>"))
            or (text.startswith("<unused") and text.endswith(">")))


def pre_tokenizer_name(tokenizer_json: Path) -> str:
    """``tokenizer.ggml.pre`` for a BPE tokenizer: its token ids for CHECK_TEXT, hashed, looked up."""
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(tokenizer_json))
    ids = tok.encode(CHECK_TEXT).ids
    digest = sha256(str(ids).encode()).hexdigest()
    name = PRE_TOKENIZER_BY_HASH.get(digest)
    if name is None:
        raise ConvertError(f"{tokenizer_json}: BPE pre-tokenizer not recognized (check-text hash {digest}); "
                           "llama.cpp knows no pre-tokenizer that splits text this way")
    return name


def bpe_vocab_size(folder: Path) -> int:
    """Number of ids in tokenizer.json (base vocabulary and added tokens)."""
    tj = _read_json(folder / "tokenizer.json")
    ids = set(tj.get("model", {}).get("vocab", {}).values()) | {a["id"] for a in tj.get("added_tokens", [])}
    return max(ids) + 1 if ids else 0


def _bpe_tokens(folder: Path, vocab_size: int | None, info: VocabInfo) -> None:
    path = folder / "tokenizer.json"
    tj = _read_json(path)
    model = tj.get("model") or {}
    if model.get("type") != "BPE":
        raise ConvertError(f"{path}: tokenizer model {model.get('type')!r} is not supported "
                           "(byte-level BPE here, or a SentencePiece tokenizer.model)")
    if model.get("byte_fallback"):
        raise ConvertError(f"{path}: a SentencePiece-style BPE tokenizer.json without tokenizer.model is not "
                           "supported; add the model's tokenizer.model")
    vocab: dict[str, int] = dict(model.get("vocab") or {})
    added = {a["id"]: a for a in tj.get("added_tokens", [])}
    for a in added.values():
        vocab[a["content"]] = a["id"]
    by_id = {i: t for t, i in vocab.items()}
    n = vocab_size if vocab_size is not None else len(vocab)
    if by_id and max(by_id) >= n:
        raise ConvertError(f"{path}: token id {max(by_id)} does not fit vocab_size {n} of config.json")
    tokens, types = [], []
    for i in range(n):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
            continue
        text = by_id[i]
        if i in added:
            if added[i].get("special") or looks_special(text):
                types.append(TokenType.CONTROL)
            else:
                text = text.replace(_SPIECE_SPACE, " ")
                types.append(TokenType.USER_DEFINED)
        else:
            types.append(TokenType.NORMAL)
        tokens.append(text)
    info.add("tokenizer.ggml.model", "gpt2", V.STRING)
    info.add("tokenizer.ggml.pre", pre_tokenizer_name(path), V.STRING)
    info.add("tokenizer.ggml.tokens", tokens, V.ARRAY, V.STRING)
    info.add("tokenizer.ggml.token_type", types, V.ARRAY, V.INT32)
    info.n_tokens = n


def _spm_tokens(folder: Path, vocab_size: int | None, info: VocabInfo, literal_added: bool = False) -> None:
    """SentencePiece pieces, then the added tokens of added_tokens.json and tokenizer_config.json (special
    ones, or ones that look special, become CONTROL).  ``literal_added`` (Phi-3): tokenizer.json's added
    tokens apply too, only the ``special`` flag makes CONTROL, and the text is kept as written."""
    from sentencepiece import SentencePieceProcessor
    path = folder / "tokenizer.model"
    sp = SentencePieceProcessor()
    try:
        sp.LoadFromFile(str(path))
    except (OSError, RuntimeError) as e:
        raise ConvertError(f"{path}: not a SentencePiece model: {e}") from None
    n_sp = sp.vocab_size()
    n = vocab_size or n_sp
    tokens = [f"[PAD{i}]" for i in range(n)]
    scores = [-10000.0] * n
    types = [TokenType.UNUSED] * n
    for i in range(min(n, n_sp)):
        t = TokenType.NORMAL
        if sp.IsUnknown(i):
            t = TokenType.UNKNOWN
        elif sp.IsControl(i):
            t = TokenType.CONTROL
        elif sp.IsUnused(i):
            t = TokenType.UNUSED
        elif sp.IsByte(i):
            t = TokenType.BYTE
        tokens[i], scores[i], types[i] = sp.IdToPiece(i), sp.GetScore(i), t
    added_file = folder / "added_tokens.json"
    if added_file.is_file():
        for text, i in _read_json(added_file).items():
            if 0 <= int(i) < n:
                tokens[i], scores[i], types[i] = text, -1000.0, TokenType.USER_DEFINED
    cfg_file = folder / "tokenizer_config.json"
    added = list((_read_json(cfg_file).get("added_tokens_decoder") or {}).items()) if cfg_file.is_file() else []
    if literal_added:
        tj_file = folder / "tokenizer.json"
        if tj_file.is_file():
            added += [(a["id"], a) for a in _read_json(tj_file).get("added_tokens") or []]
    for key, data in added:
        i, text = int(key), data["content"]
        if i >= n:
            continue
        if data.get("special") or (not literal_added and looks_special(text)):
            types[i] = TokenType.CONTROL
        else:
            text = text if literal_added else text.replace(_SPIECE_SPACE, " ")
            types[i] = TokenType.USER_DEFINED
        scores[i], tokens[i] = -1000.0, text
    info.add("tokenizer.ggml.model", "llama", V.STRING)
    info.add("tokenizer.ggml.pre", "default", V.STRING)
    info.add("tokenizer.ggml.tokens", tokens, V.ARRAY, V.STRING)
    info.add("tokenizer.ggml.scores", scores, V.ARRAY, V.FLOAT32)
    info.add("tokenizer.ggml.token_type", types, V.ARRAY, V.INT32)
    info.n_tokens = n


def _pair_separator(pair: list, first: Any, last: Any, sep: Any, eos: Any) -> bool | None:
    """Whether a TemplateProcessing pair template puts a separator between A and B (None: it says nothing)."""
    def special_id(item: dict) -> Any:
        return item.get("SpecialToken", {}).get("id")

    if not pair:
        return None
    start = 1 if first and special_id(pair[0]) == first else 0
    stop = -1 if last and special_id(pair[-1]) == last else None
    pair = pair[start:stop]
    if not pair or pair[0].get("Sequence", {}).get("id") != "A" or pair[-1].get("Sequence", {}).get("id") != "B":
        return None
    middle = pair[1:-1]
    if not middle:
        return None
    add_sep = bool(special_id(middle[0]) in (sep, eos) and special_id(middle[0]) and not last)
    if len(middle) == 2 and special_id(middle[1]) and special_id(middle[1]) in (sep, eos):
        add_sep = True
    return add_sep


def _special(folder: Path, info: VocabInfo, load_merges: bool) -> None:
    """Merges, special ids, add_* flags and the chat template (llama.cpp's precedence)."""
    n_vocab = info.n_tokens
    types = list(SPECIAL_TYPES)
    ids: dict[str, int] = {}
    add: dict[str, bool] = {}
    tj = _read_json(folder / "tokenizer.json") if (folder / "tokenizer.json").is_file() else None
    cfg_path = folder / "tokenizer_config.json"
    cfg = _read_json(cfg_path) if cfg_path.is_file() else None

    def set_id(typ: str, tid: Any) -> None:
        if isinstance(tid, bool) or not isinstance(tid, int):
            return
        if tid < 0:
            raise ConvertError(f"{folder}: invalid id {tid} for special token {typ}")
        if tid < n_vocab and typ not in ids:
            ids[typ] = tid

    added: list = []
    if tj is not None:
        if load_merges:
            merges = (tj.get("model") or {}).get("merges") or []
            if merges and isinstance(merges[0], list):      # transformers >= 4.45: pairs; spaces -> U+0120
                merges = [f"{a.replace(' ', chr(288))} {b.replace(' ', chr(288))}" for a, b in merges]
            if merges:
                info.add("tokenizer.ggml.merges", list(merges), V.ARRAY, V.STRING)
        added = tj.get("added_tokens") or []
        if cfg:
            bos, cls_, eos, sep = (cfg.get(k) for k in ("bos_token", "cls_token", "eos_token", "sep_token"))
            if not bos and cls_:
                cfg["bos_token"] = bos = cls_
            if not eos and sep:
                cfg["eos_token"] = eos = sep
        else:
            bos = eos = cls_ = sep = None
        post = tj.get("post_processor") or {}
        for proc in post.get("processors", [post]) if post else []:
            kind = proc.get("type")
            if kind == "ByteLevel":
                add.setdefault("bos", False)
                add.setdefault("eos", False)
            elif kind == "TemplateProcessing":
                single = proc.get("single", [])
                first = last = None
                if len(single) > 1:
                    first = single[0].get("SpecialToken", {}).get("id")
                    if first:
                        if not cfg:
                            bos = first
                        elif first not in (bos, cls_):
                            if not bos:
                                cfg["bos_token"] = bos = first
                            if not cls_:
                                cfg["cls_token"] = cls_ = first
                        add["bos"] = first in (bos, cls_)
                    last = single[-1].get("SpecialToken", {}).get("id")
                    if last:
                        if not cfg:
                            eos = last
                        elif last != eos:
                            if "eot" not in types:
                                types.append("eot")
                                cfg["eot_token"] = eos
                            cfg["eos_token"] = eos = last
                        add["eos"] = last == eos
                add_sep = _pair_separator(proc.get("pair", []), first, last, sep, eos)
                if add_sep is not None:
                    add["sep"] = add_sep
            elif kind == "RobertaProcessing":
                raise ConvertError(f"{folder / 'tokenizer.json'}: RobertaProcessing post-processor is not supported")
    if cfg:
        jinja = folder / "chat_template.jinja"
        alt = jinja.read_text(encoding="utf-8") if jinja.is_file() else None
        if alt is None and (folder / "chat_template.json").is_file():
            alt = _read_json(folder / "chat_template.json").get("chat_template")
        template = cfg.get("chat_template", alt)
        for typ in types:
            flag = cfg.get(f"add_{typ}_token")
            if isinstance(flag, bool) and typ not in add:
                add[typ] = flag
            entry = cfg.get(f"{typ}_token")
            content = entry.get("content") if isinstance(entry, dict) else entry
            if not isinstance(content, str):
                continue
            set_id(typ, next((a.get("id") for a in added if a.get("content") == content), None))
    else:
        template = None
    cfg_json = folder / "config.json"
    if cfg_json.is_file():
        conf = _read_json(cfg_json)
        for typ in types:
            tid = conf.get(f"{typ}_token_id")
            if tid is None and isinstance(conf.get("text_config"), dict):
                tid = conf["text_config"].get(f"{typ}_token_id")
            set_id(typ, tid)
    for typ, tid in ids.items():
        info.add(f"tokenizer.ggml.{_SPECIAL_KEY[typ]}", tid, V.UINT32)
    for typ, flag in add.items():
        if typ in ("bos", "eos", "sep"):
            info.add(f"tokenizer.ggml.add_{typ}_token", bool(flag), V.BOOL)
    if isinstance(template, str):
        info.add("tokenizer.chat_template", template, V.STRING)
    elif isinstance(template, list):
        for item in template:
            name, text = item.get("name"), item.get("template")
            if name == "default":
                info.add("tokenizer.chat_template", text, V.STRING)
            elif name and text:
                info.add(f"tokenizer.chat_template.{name}", text, V.STRING)


def load_vocab(folder: str | Path, vocab_size: int | None, kind: str) -> VocabInfo:
    """Tokenizer metadata for ``folder``.  ``kind``: ``"auto"`` (SentencePiece when tokenizer.model
    exists, else BPE), ``"spm"``, ``"bpe"`` or ``"phi3"`` (BPE for a GPT2Tokenizer, else SentencePiece with
    Phi-3's added-token rules).  ``vocab_size``: config.json's, or None."""
    folder = Path(folder)
    info = VocabInfo()
    has_spm = (folder / "tokenizer.model").is_file()
    has_json = (folder / "tokenizer.json").is_file()
    if kind == "auto":
        kind = "spm" if has_spm else "bpe"
    elif kind == "phi3":                 # a GPT2Tokenizer (Phi-4) is BPE, anything else SentencePiece
        cfg_file = folder / "tokenizer_config.json"
        cls = _read_json(cfg_file).get("tokenizer_class") if cfg_file.is_file() else None
        kind = "bpe" if cls == "GPT2Tokenizer" else "spm-literal"
    if kind in ("spm", "spm-literal"):
        if not has_spm:
            raise ConvertError(f"{folder / 'tokenizer.model'}: missing (this model needs its SentencePiece model)")
        _spm_tokens(folder, vocab_size, info, literal_added=kind == "spm-literal")
        _special(folder, info, load_merges=False)
    else:
        if not has_json:
            raise ConvertError(f"{folder}: no tokenizer.json or tokenizer.model")
        _bpe_tokens(folder, vocab_size, info)
        _special(folder, info, load_merges=True)
    return info
