"""BPE pre-tokenizers: ``tokenizer.ggml.pre`` name -> llama.cpp pre-tokenizer type -> split regexes.

The regexes are those llama.cpp applies (in sequence: each one splits the pieces the previous left,
keeping unmatched stretches as pieces of their own).  They use ``\\p{..}`` Unicode classes, which the
``tokenizers`` library's Oniguruma engine understands.
"""
from __future__ import annotations

from dataclasses import dataclass

_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3 = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_QWEN2 = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_GPT4O = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+" + _CONTRACTIONS + "?"
          r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*" + _CONTRACTIONS + "?"
          r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_DEEPSEEK3 = (r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
              r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_CJK = "[一-龥぀-ゟ゠-ヿ]+"
# llama.cpp runs regexes without \p{..} classes through std::wregex after turning every non-ASCII
# whitespace character of the text into U+000B: such characters match \s but no literal class, hence
# the "&&\S" intersections in the classes below whose ranges contain Unicode spaces.
_CJK_WIDE = r"[[一-龥ࠀ-一가-퟿]&&\S]+"

# pre-tokenizer type -> regexes applied in sequence
REGEXES: dict[str, list[str]] = {
    "default": [r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"],
    "llama3": [_LLAMA3],
    "dbrx": [_LLAMA3],
    "smaug": [_LLAMA3],
    "chatglm4": [_LLAMA3],
    "deepseek-llm": [
        r"[\r\n]",
        "\\s?[A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af\u0370-\u0373\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5\u03f7-\u0481\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0-\U00010cf2\U000118a0-\U000118df\U0001e900-\U0001e943]+",
        r"\s?[[!-/:-~！-／：-～‘-‟　-。]&&\S]+",
        r"\s+$",
        _CJK_WIDE,
        r"\p{N}+",
    ],
    "deepseek3-llm": [r"\p{N}{1,3}", _CJK, _DEEPSEEK3],
    "deepseek-coder": [r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", _CJK_WIDE, r"\p{N}"],
    "falcon": [r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, r"[0-9][0-9][0-9]"],
    "starcoder": [r"\p{N}", _GPT2],
    "gpt2": [_GPT2],
    "qwen2": [_QWEN2],
    "qwen35": [_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+"],
    "poro": [r" ?[^(\s|.,!?…。，、।۔،)]+"],
    "viking": [r" ?[^(\s|.,!?…。，、।۔،)]+", r"\p{N}"],
    "tekken": [r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+|[^\r\n\p{L}\p{N}]?((?=[\p{L}])"
               r"([^a-z]))+((?=[\p{L}])([^A-Z]))*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"],
    "chameleon": [r"<sentinel:[0-9]+>", r"(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z", r"([\t\n]|    |  )", r"\p{N}",
                  r"[\p{P}!-/:-@\[-`{-~]", _GPT2],
    "gpt4o": [_GPT4O],
    "superbpe": [r"\p{N}+", r"(?=(\d{3})+(?!\d))"],
    "bailingmoe": [r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                   r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"],
    "seed-coder": [_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+"
                   r"|\s+(?!\S)|\s+"],
    "ufakzeka": [r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"],
    "minicpm5": [r"\p{N}{1,3}", _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+"],
    "laguna": [r"[^\n]+|[\n]+", _QWEN2],
    "exaone-moe": [_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?(?:\p{L}\p{M}*(?: \p{L}\p{M}*)*)+|\p{N}"
                   r"| ?[^\s\p{L}\p{N}]+[\r\n/]?|\s*[\r\n]|\s+(?!\S)|\s+"],
}


@dataclass(frozen=True)
class PreConfig:
    """How one ``tokenizer.ggml.pre`` name tokenizes and detokenizes."""
    name: str
    type: str                  # key into REGEXES
    clean_spaces: bool = True  # detokenizer's clean_up_tokenization_spaces
    ignore_merges: bool = False
    add_bos: bool = False      # default before tokenizer.ggml.add_bos_token overrides it
    bos_null: bool = False     # no BOS token at all

    @property
    def regexes(self) -> list[str]:
        return REGEXES[self.type]


def _entries():
    nc = dict(clean_spaces=False)
    yield "default", "default", {}
    for n in ("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2",
              "jina-v5-nano"):
        yield n, "llama3", dict(ignore_merges=True, add_bos=True)
    yield "deepseek-llm", "deepseek-llm", nc
    yield "deepseek-coder", "deepseek-coder", nc
    yield "deepseek-v3", "deepseek3-llm", nc
    for n in ("hunyuan-dense", "hy_v4", "joyai-llm"):
        yield n, "deepseek3-llm", nc
    yield "falcon", "falcon", {}
    yield "mpt", "gpt2", {}
    yield "starcoder", "starcoder", {}
    for n in ("gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de", "a.x-4.0",
              "mellum", "modern-bert", "jina-v1-en", "jina-v2-code", "roberta-bpe", "exaone4", "olmo", "jais"):
        yield n, "gpt2", {}
    yield "trillion", "gpt2", nc
    yield "granite-docling", "gpt2", nc
    yield "refact", "starcoder", {}
    yield "command-r", "starcoder", nc
    yield "smollm", "starcoder", nc
    for n in ("codeshell", "exaone", "minerva-7b", "mellum2"):
        yield n, "starcoder", {}
    for n in ("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "hunyuan", "solar-open"):
        yield n, "qwen2", nc
    yield "megrez", "qwen2", {}
    yield "stablelm2", "qwen2", {}
    yield "qwen35", "qwen35", nc
    yield "dbrx", "dbrx", {}
    yield "smaug-bpe", "smaug", {}
    yield "poro-chat", "poro", nc
    for n in ("bloom", "gpt3-finnish"):
        yield n, "poro", {}
    yield "chatglm-bpe", "chatglm4", dict(bos_null=True)
    for n in ("glm4", "glm5"):
        yield n, "chatglm4", dict(bos_null=True, ignore_merges=True)
    yield "viking", "viking", nc
    yield "tekken", "tekken", dict(clean_spaces=False, ignore_merges=True, add_bos=True)
    yield "chameleon", "chameleon", dict(clean_spaces=False, add_bos=True)
    for n in ("gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"):
        yield n, "gpt4o", nc
    yield "superbpe", "superbpe", nc
    for n in ("bailingmoe", "bailingmoe2", "llada-moe"):
        yield n, "bailingmoe", nc
    yield "seed-coder", "seed-coder", nc
    yield "ufakzeka", "ufakzeka", nc
    yield "grok-2", "qwen2", nc
    yield "minicpm5", "minicpm5", dict(ignore_merges=True)
    yield "laguna", "laguna", nc
    yield "exaone-moe", "exaone-moe", {}


PRE_NAMES: dict[str, PreConfig] = {}
for _name, _type, _kw in _entries():
    PRE_NAMES.setdefault(_name, PreConfig(_name, _type, **_kw))


class UnknownPreTokenizer(ValueError):
    pass


def pre_config(name: str, source: str = "<gguf>") -> PreConfig:
    """The configuration for ``tokenizer.ggml.pre`` = ``name``; unknown names raise, listing the known ones."""
    cfg = PRE_NAMES.get(name)
    if cfg is None:
        raise UnknownPreTokenizer(
            f"{source}: unknown BPE pre-tokenizer tokenizer.ggml.pre = {name!r}; known: {', '.join(sorted(PRE_NAMES))}")
    return cfg
