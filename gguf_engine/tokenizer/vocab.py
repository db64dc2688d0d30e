"""GGUF tokenizer metadata -> :class:`Vocab` (token texts, scores, attributes, special ids, flags).

Mirrors how llama.cpp loads a vocabulary: default special ids per tokenizer model, the flags each
pre-tokenizer name implies, end-of-generation detection by token text, and the attribute fixes
(control-looking tokens, ``unused`` tokens, Phi-3 right-stripping) it applies at load time.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from ..gguf.values import describe
from .pretokenizers import pre_config

# token attributes (bit flags, llama.cpp's llama_token_attr)
ATTR_UNDEFINED = 0
ATTR_UNKNOWN = 1 << 0
ATTR_UNUSED = 1 << 1
ATTR_NORMAL = 1 << 2
ATTR_CONTROL = 1 << 3
ATTR_USER_DEFINED = 1 << 4
ATTR_BYTE = 1 << 5
ATTR_NORMALIZED = 1 << 6
ATTR_LSTRIP = 1 << 7
ATTR_RSTRIP = 1 << 8

# GGUF token types (tokenizer.ggml.token_type) -> attribute
_TYPE_TO_ATTR = np.array([ATTR_UNDEFINED, ATTR_NORMAL, ATTR_UNKNOWN, ATTR_CONTROL,
                          ATTR_USER_DEFINED, ATTR_UNUSED, ATTR_BYTE], dtype=np.int32)

SUPPORTED_MODELS = ("llama", "gpt2")

# token texts llama.cpp treats as end-of-turn / end-of-message / FIM markers when no id is given
_EOT_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
              "<EOT>", "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>", "<end_of_utterance>")
_EOM_TEXTS = ("<|eom_id|>",)
_FIM_TEXTS = {
    "fim_pre": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>",
                "<|code_prefix|>", "<|prefix|>"),
    "fim_suf": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>",
                "<|code_suffix|>", "<|suffix|>"),
    "fim_mid": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>",
                "<|code_middle|>", "<|middle|>"),
    "fim_pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "fim_rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "fim_sep": ("<|file_sep|>",),
}
# token texts that end generation (llama.cpp's special_eog_ids heuristics)
_EOG_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
              "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
              "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
              "<｜end▁of▁sentence｜>", "[e~[")

_SPECIAL_KEYS = ("bos", "eos", "eot", "eom", "unk", "sep", "pad", "mask",
                 "fim_pre", "fim_suf", "fim_mid", "fim_pad", "fim_rep", "fim_sep")
_KEY_NAMES = {
    "bos": ["bos_token_id"], "eos": ["eos_token_id"], "eot": ["eot_token_id"], "eom": ["eom_token_id"],
    "unk": ["unknown_token_id"], "sep": ["seperator_token_id"], "pad": ["padding_token_id"],
    "mask": ["mask_token_id"],
    "fim_pre": ["fim_pre_token_id", "prefix_token_id"], "fim_suf": ["fim_suf_token_id", "suffix_token_id"],
    "fim_mid": ["fim_mid_token_id", "middle_token_id"], "fim_pad": ["fim_pad_token_id"],
    "fim_rep": ["fim_rep_token_id"], "fim_sep": ["fim_sep_token_id"],
}


class VocabError(ValueError):
    """A GGUF file's tokenizer metadata is missing, malformed or of an unsupported kind."""


@dataclass
class Vocab:
    """Everything the tokenizer needs from a GGUF file's ``tokenizer.*`` metadata."""
    model: str                       # tokenizer.ggml.model: "llama" (SPM) or "gpt2" (byte-level BPE)
    pre: str                         # tokenizer.ggml.pre (BPE only; "default" otherwise)
    tokens: Sequence[str]            # id -> token text
    scores: np.ndarray               # (n_vocab,) float32
    attrs: np.ndarray                # (n_vocab,) int32 attribute bit flags
    token_to_id: dict
    merges: Sequence[str] | None     # BPE merges "a b", in rank order
    special: dict                    # "bos"/"eos"/... -> id or None
    add_bos: bool = False
    add_eos: bool = False
    add_space_prefix: bool = False
    escape_whitespaces: bool = True
    clean_spaces: bool = False
    ignore_merges: bool = False
    eog_ids: set = field(default_factory=set)
    special_cache: list = field(default_factory=list)  # control/user-defined/unknown ids, longest text first
    name: str = ""
    chat_template: str | None = None

    @property
    def kind(self) -> str:
        return "spm" if self.model == "llama" else "bpe"

    @property
    def n_vocab(self) -> int:
        return len(self.tokens)


def _bad(source: str, key: str, want: str, v: Any) -> VocabError:
    return VocabError(f"{source}: metadata key {key!r} must be {want}, got {describe(v)}")


def _as_bool(v: Any, key: str = "", source: str = "<gguf>") -> bool:
    if isinstance(v, (bool, int, np.bool_, np.integer)):
        return bool(v)
    raise _bad(source, key, "a boolean", v)


def _as_int(v: Any, key: str, source: str) -> int:
    if isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)):
        return int(v)
    raise _bad(source, key, "an integer", v)


def _as_string(v: Any, key: str, source: str) -> str:
    if isinstance(v, str):
        return v
    raise _bad(source, key, "a string", v)


def _as_strings(v: Any, key: str, source: str) -> list[str]:
    """An array of strings (the reader's StringArray, or a list of str) as a list."""
    items = v.tolist() if hasattr(v, "tolist") and not isinstance(v, np.ndarray) else v
    if isinstance(items, (list, tuple)) and all(isinstance(t, str) for t in items):
        return list(items)
    if isinstance(items, (list, tuple, np.ndarray)):
        bad = next((t for t in items if not isinstance(t, str)), None)
        raise VocabError(f"{source}: metadata key {key!r} must be an array of strings, got an array "
                         f"holding {describe(bad)}")
    raise _bad(source, key, "an array of strings", v)


def _as_numbers(v: Any, key: str, source: str, dtype) -> np.ndarray:
    """A 1-D numeric array of ``dtype``."""
    if isinstance(v, np.ndarray) and v.ndim == 1 and (v.dtype.kind in "iuf" or v.size == 0):
        return v.astype(dtype, copy=False)
    if isinstance(v, (list, tuple)) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
        return np.asarray(v, dtype=dtype)
    raise _bad(source, key, "an array of numbers", v)


def load_vocab(md: Mapping[str, Any], source: str = "<gguf>") -> Vocab:
    """Build a :class:`Vocab` from GGUF metadata (a dict-like key -> value), as llama.cpp's vocab load does.

    A value of the wrong type raises ``VocabError`` naming the key, the type and the value."""
    def get(key, default=None):
        return md.get(key, default) if hasattr(md, "get") else default

    model = get("tokenizer.ggml.model")
    if model is None:
        raise VocabError(f"{source}: no tokenizer (metadata key 'tokenizer.ggml.model' missing)")
    model = _as_string(model, "tokenizer.ggml.model", source)
    if model not in SUPPORTED_MODELS:
        raise VocabError(f"{source}: tokenizer.ggml.model = {model!r} is not supported "
                         f"(supported: {', '.join(SUPPORTED_MODELS)})")
    tokens = get("tokenizer.ggml.tokens")
    if tokens is None:
        raise VocabError(f"{source}: metadata key 'tokenizer.ggml.tokens' missing")
    tokens = _as_strings(tokens, "tokenizer.ggml.tokens", source)
    n = len(tokens)
    if n == 0:
        raise VocabError(f"{source}: tokenizer.ggml.tokens is empty")
    for i in [i for i, t in enumerate(tokens) if not t]:
        tokens[i] = f"[EMPTY_{i}]"   # as llama.cpp renames empty tokens

    scores = get("tokenizer.ggml.scores")
    if scores is None:
        scores = np.zeros(n, dtype=np.float32)
    else:
        scores = _as_numbers(scores, "tokenizer.ggml.scores", source, np.float32)
        if scores.shape[0] < n:
            raise VocabError(f"{source}: tokenizer.ggml.scores has {scores.shape[0]} entries < {n} tokens")
        scores = scores[:n]
    types = get("tokenizer.ggml.token_type")
    if types is None:
        attrs = np.full(n, ATTR_NORMAL, dtype=np.int32)
    else:
        types = _as_numbers(types, "tokenizer.ggml.token_type", source, np.float64)
        if types.size and not np.all(np.isfinite(types)):
            raise _bad(source, "tokenizer.ggml.token_type", "an array of integers", types)
        types = types.astype(np.int64)
        if types.shape[0] < n:
            raise VocabError(f"{source}: tokenizer.ggml.token_type has {types.shape[0]} entries < {n} tokens")
        types = types[:n]
        attrs = np.where((types >= 0) & (types < len(_TYPE_TO_ATTR)),
                         _TYPE_TO_ATTR[np.clip(types, 0, len(_TYPE_TO_ATTR) - 1)], ATTR_UNDEFINED).astype(np.int32)

    token_to_id = dict(zip(tokens, range(n)))
    if len(token_to_id) != n:
        raise VocabError(f"{source}: tokenizer.ggml.tokens has duplicate entries")

    special: dict[str, int | None] = {k: None for k in _SPECIAL_KEYS}
    pre = "default"
    merges = None
    flags = dict(add_bos=False, add_eos=False, add_space_prefix=False, escape_whitespaces=True,
                 clean_spaces=False, ignore_merges=False)
    if model == "llama":
        special.update(bos=1, eos=2, unk=0)
        flags.update(add_space_prefix=True, add_bos=True)
    else:
        merges = get("tokenizer.ggml.merges")
        if merges is None:
            raise VocabError(f"{source}: BPE tokenizer without 'tokenizer.ggml.merges'")
        merges = _as_strings(merges, "tokenizer.ggml.merges", source)
        special.update(bos=11, eos=11)
        pre = _as_string(get("tokenizer.ggml.pre", ""), "tokenizer.ggml.pre", source) or "default"
        cfg = pre_config(pre, source)           # raises with the list of known names
        flags.update(escape_whitespaces=False, clean_spaces=cfg.clean_spaces,
                     ignore_merges=cfg.ignore_merges, add_bos=cfg.add_bos)
        if cfg.bos_null:
            special["bos"] = None
    v = get("tokenizer.ggml.add_space_prefix")
    if v is not None:
        flags["add_space_prefix"] = _as_bool(v, "tokenizer.ggml.add_space_prefix", source)

    # special token ids: defaults out of range are disabled, metadata overrides in range
    for k in _SPECIAL_KEYS:
        if special[k] is not None and special[k] >= n:
            special[k] = None
        for key in _KEY_NAMES[k]:
            val = get("tokenizer.ggml." + key)
            if val is not None and 0 <= _as_int(val, "tokenizer.ggml." + key, source) < n:
                special[k] = int(val)
    for key, flag in (("add_bos_token", "add_bos"), ("add_eos_token", "add_eos")):
        v = get("tokenizer.ggml." + key)
        if v is not None:
            flags[flag] = _as_bool(v, "tokenizer.ggml." + key, source)

    def mark_control(tid: int) -> None:
        attrs[tid] |= ATTR_CONTROL

    # auto-detect EOT / EOM / FIM tokens by text when not given
    for k, texts in (("eot", _EOT_TEXTS), ("eom", _EOM_TEXTS), *_FIM_TEXTS.items()):
        if special[k] is None:
            found = [token_to_id[t] for t in texts if t in token_to_id]
            if found:
                special[k] = found[0]
                mark_control(found[0])

    # control tokens whose text says "unused" are unused
    ctrl = np.nonzero(attrs & ATTR_CONTROL)[0]
    for tid in ctrl:
        if "unused" in tokens[tid]:
            attrs[tid] |= ATTR_UNUSED

    eog: set[int] = set()
    for k in ("fim_pad", "fim_rep", "fim_sep"):
        if special[k] is not None:
            eog.add(special[k])
    for t in _EOG_TEXTS:
        tid = token_to_id.get(t)
        if tid is not None:
            eog.add(tid)
            mark_control(tid)
    for t in ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"):
        if t in token_to_id:
            attrs[token_to_id[t]] = ATTR_USER_DEFINED
    for k in ("eos", "eot", "eom"):
        if special[k] is not None:
            eog.add(special[k])
    texts_eog = {tokens[i]: i for i in eog}
    if "<|end|>" in texts_eog and (("<|return|>" in texts_eog and "<|call|>" in texts_eog)
                                   or ("<|calls|>" in texts_eog and "<|flush|>" in texts_eog)):
        eog.discard(texts_eog["<|end|>"])
        attrs[texts_eog["<|end|>"]] = ATTR_USER_DEFINED
    if "</s>" in texts_eog and ("<|tool_response>" in texts_eog or "<|plamo:eos|>" in texts_eog):
        eog.discard(texts_eog["</s>"])
        attrs[texts_eog["</s>"]] = ATTR_NORMAL

    # special-token cache: longest text (in bytes) first, ties by id
    cand = np.nonzero(attrs & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN))[0].tolist()
    cand.sort(key=lambda i: (-len(tokens[i].encode("utf-8")), i))

    # per-model attribute fixes (after the cache, as llama.cpp does)
    name = _as_string(get("general.name", ""), "general.name", source)
    lname = name.lower()
    if "phi-3" in lname or "phi3" in lname:
        for tid in cand:
            attrs[tid] |= ATTR_RSTRIP
        for t, on in (("</s>", True), ("<unk>", False), ("<s>", False), ("<|endoftext|>", False)):
            if t in token_to_id:
                if on:
                    attrs[token_to_id[t]] |= ATTR_RSTRIP
                else:
                    attrs[token_to_id[t]] &= ~ATTR_RSTRIP

    tmpl = get("tokenizer.chat_template")
    if tmpl is not None:
        tmpl = _as_string(tmpl, "tokenizer.chat_template", source)
    return Vocab(model=model, pre=pre, tokens=tokens, scores=scores, attrs=attrs, token_to_id=token_to_id,
                 merges=merges, special=special, eog_ids=eog, special_cache=cand, name=name,
                 chat_template=tmpl, **flags)
