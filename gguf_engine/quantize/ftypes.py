"""Model file types ("ftypes"): the quantization presets a whole model is made with.

The numbering is llama.cpp's ``llama_ftype`` (stored in ``general.file_type``), the
names are the ones ``llama-quantize`` accepts on its command line, and each ftype
has a default tensor type that the mixture rules (see ``mixture.py``) start from.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from kernels.types import GGMLType


class LlamaFileType(IntEnum):
    """``general.file_type`` values (gaps are retired ftypes)."""
    ALL_F32 = 0
    MOSTLY_F16 = 1
    MOSTLY_Q4_0 = 2
    MOSTLY_Q4_1 = 3
    MOSTLY_Q8_0 = 7
    MOSTLY_Q5_0 = 8
    MOSTLY_Q5_1 = 9
    MOSTLY_Q2_K = 10
    MOSTLY_Q3_K_S = 11
    MOSTLY_Q3_K_M = 12
    MOSTLY_Q3_K_L = 13
    MOSTLY_Q4_K_S = 14
    MOSTLY_Q4_K_M = 15
    MOSTLY_Q5_K_S = 16
    MOSTLY_Q5_K_M = 17
    MOSTLY_Q6_K = 18
    MOSTLY_IQ2_XXS = 19
    MOSTLY_IQ2_XS = 20
    MOSTLY_Q2_K_S = 21
    MOSTLY_IQ3_XS = 22
    MOSTLY_IQ3_XXS = 23
    MOSTLY_IQ1_S = 24
    MOSTLY_IQ4_NL = 25
    MOSTLY_IQ3_S = 26
    MOSTLY_IQ3_M = 27
    MOSTLY_IQ2_S = 28
    MOSTLY_IQ2_M = 29
    MOSTLY_IQ4_XS = 30
    MOSTLY_IQ1_M = 31
    MOSTLY_BF16 = 32
    MOSTLY_TQ1_0 = 36
    MOSTLY_TQ2_0 = 37
    MOSTLY_MXFP4_MOE = 38
    MOSTLY_NVFP4 = 39
    MOSTLY_Q1_0 = 40
    MOSTLY_Q2_0 = 41


F = LlamaFileType
T = GGMLType

# ftype -> the tensor type the mixture starts from
DEFAULT_TYPE: dict[LlamaFileType, GGMLType] = {
    F.MOSTLY_Q4_0: T.Q4_0,
    F.MOSTLY_Q4_1: T.Q4_1,
    F.MOSTLY_Q5_0: T.Q5_0,
    F.MOSTLY_Q5_1: T.Q5_1,
    F.MOSTLY_Q8_0: T.Q8_0,
    F.MOSTLY_F16: T.F16,
    F.MOSTLY_BF16: T.BF16,
    F.ALL_F32: T.F32,
    F.MOSTLY_Q1_0: T.Q1_0,
    F.MOSTLY_Q2_0: T.Q2_0,
    F.MOSTLY_MXFP4_MOE: T.MXFP4,
    F.MOSTLY_Q2_K_S: T.Q2_K,
    F.MOSTLY_Q2_K: T.Q2_K,
    F.MOSTLY_IQ3_XS: T.IQ3_S,
    F.MOSTLY_Q3_K_S: T.Q3_K,
    F.MOSTLY_Q3_K_M: T.Q3_K,
    F.MOSTLY_Q3_K_L: T.Q3_K,
    F.MOSTLY_Q4_K_S: T.Q4_K,
    F.MOSTLY_Q4_K_M: T.Q4_K,
    F.MOSTLY_Q5_K_S: T.Q5_K,
    F.MOSTLY_Q5_K_M: T.Q5_K,
    F.MOSTLY_Q6_K: T.Q6_K,
    F.MOSTLY_TQ1_0: T.TQ1_0,
    F.MOSTLY_TQ2_0: T.TQ2_0,
    F.MOSTLY_IQ2_XXS: T.IQ2_XXS,
    F.MOSTLY_IQ2_XS: T.IQ2_XS,
    F.MOSTLY_IQ2_S: T.IQ2_XS,
    F.MOSTLY_IQ2_M: T.IQ2_S,
    F.MOSTLY_IQ3_XXS: T.IQ3_XXS,
    F.MOSTLY_IQ1_S: T.IQ1_S,
    F.MOSTLY_IQ1_M: T.IQ1_M,
    F.MOSTLY_IQ4_NL: T.IQ4_NL,
    F.MOSTLY_IQ4_XS: T.IQ4_XS,
    F.MOSTLY_IQ3_S: T.IQ3_S,
    F.MOSTLY_IQ3_M: T.IQ3_S,
}

# human-readable ftype names, as model loaders print them
FTYPE_DESCRIPTION: dict[LlamaFileType, str] = {
    F.ALL_F32: "all F32", F.MOSTLY_F16: "F16", F.MOSTLY_BF16: "BF16",
    F.MOSTLY_Q1_0: "Q1_0", F.MOSTLY_Q2_0: "Q2_0",
    F.MOSTLY_Q4_0: "Q4_0", F.MOSTLY_Q4_1: "Q4_1", F.MOSTLY_Q5_0: "Q5_0", F.MOSTLY_Q5_1: "Q5_1",
    F.MOSTLY_Q8_0: "Q8_0", F.MOSTLY_MXFP4_MOE: "MXFP4 MoE", F.MOSTLY_NVFP4: "NVFP4",
    F.MOSTLY_Q2_K: "Q2_K - Medium", F.MOSTLY_Q2_K_S: "Q2_K - Small",
    F.MOSTLY_Q3_K_S: "Q3_K - Small", F.MOSTLY_Q3_K_M: "Q3_K - Medium", F.MOSTLY_Q3_K_L: "Q3_K - Large",
    F.MOSTLY_Q4_K_S: "Q4_K - Small", F.MOSTLY_Q4_K_M: "Q4_K - Medium",
    F.MOSTLY_Q5_K_S: "Q5_K - Small", F.MOSTLY_Q5_K_M: "Q5_K - Medium", F.MOSTLY_Q6_K: "Q6_K",
    F.MOSTLY_TQ1_0: "TQ1_0 - 1.69 bpw ternary", F.MOSTLY_TQ2_0: "TQ2_0 - 2.06 bpw ternary",
    F.MOSTLY_IQ2_XXS: "IQ2_XXS - 2.0625 bpw", F.MOSTLY_IQ2_XS: "IQ2_XS - 2.3125 bpw",
    F.MOSTLY_IQ2_S: "IQ2_S - 2.5 bpw", F.MOSTLY_IQ2_M: "IQ2_M - 2.7 bpw",
    F.MOSTLY_IQ3_XS: "IQ3_XS - 3.3 bpw", F.MOSTLY_IQ3_XXS: "IQ3_XXS - 3.0625 bpw",
    F.MOSTLY_IQ1_S: "IQ1_S - 1.5625 bpw", F.MOSTLY_IQ1_M: "IQ1_M - 1.75 bpw",
    F.MOSTLY_IQ4_NL: "IQ4_NL - 4.5 bpw", F.MOSTLY_IQ4_XS: "IQ4_XS - 4.25 bpw",
    F.MOSTLY_IQ3_S: "IQ3_S - 3.4375 bpw", F.MOSTLY_IQ3_M: "IQ3_S mix - 3.66 bpw",
}


@dataclass(frozen=True)
class QuantOption:
    """One TYPE the quantize command accepts."""
    name: str
    ftype: LlamaFileType
    desc: str


# The command-line TYPE names, in the order the help lists them.  Aliases (Q3_K,
# Q4_K, Q5_K) map to the medium mixtures; COPY copies tensors without quantizing.
QUANT_OPTIONS: tuple[QuantOption, ...] = (
    QuantOption("Q1_0", F.MOSTLY_Q1_0, " 1.125 bpw quantization"),
    QuantOption("Q2_0", F.MOSTLY_Q2_0, " 2.25 bpw quantization (group 64)"),
    QuantOption("Q4_0", F.MOSTLY_Q4_0, " 4.34G, +0.4685 ppl @ Llama-3-8B"),
    QuantOption("Q4_1", F.MOSTLY_Q4_1, " 4.78G, +0.4511 ppl @ Llama-3-8B"),
    QuantOption("MXFP4_MOE", F.MOSTLY_MXFP4_MOE, " MXFP4 MoE"),
    QuantOption("Q5_0", F.MOSTLY_Q5_0, " 5.21G, +0.1316 ppl @ Llama-3-8B"),
    QuantOption("Q5_1", F.MOSTLY_Q5_1, " 5.65G, +0.1062 ppl @ Llama-3-8B"),
    QuantOption("IQ2_XXS", F.MOSTLY_IQ2_XXS, " 2.06 bpw quantization"),
    QuantOption("IQ2_XS", F.MOSTLY_IQ2_XS, " 2.31 bpw quantization"),
    QuantOption("IQ2_S", F.MOSTLY_IQ2_S, " 2.5  bpw quantization"),
    QuantOption("IQ2_M", F.MOSTLY_IQ2_M, " 2.7  bpw quantization"),
    QuantOption("IQ1_S", F.MOSTLY_IQ1_S, " 1.56 bpw quantization"),
    QuantOption("IQ1_M", F.MOSTLY_IQ1_M, " 1.75 bpw quantization"),
    QuantOption("TQ1_0", F.MOSTLY_TQ1_0, " 1.69 bpw ternarization"),
    QuantOption("TQ2_0", F.MOSTLY_TQ2_0, " 2.06 bpw ternarization"),
    QuantOption("Q2_K", F.MOSTLY_Q2_K, " 2.96G, +3.5199 ppl @ Llama-3-8B"),
    QuantOption("Q2_K_S", F.MOSTLY_Q2_K_S, " 2.96G, +3.1836 ppl @ Llama-3-8B"),
    QuantOption("IQ3_XXS", F.MOSTLY_IQ3_XXS, " 3.06 bpw quantization"),
    QuantOption("IQ3_S", F.MOSTLY_IQ3_S, " 3.44 bpw quantization"),
    QuantOption("IQ3_M", F.MOSTLY_IQ3_M, " 3.66 bpw quantization mix"),
    QuantOption("Q3_K", F.MOSTLY_Q3_K_M, "alias for Q3_K_M"),
    QuantOption("IQ3_XS", F.MOSTLY_IQ3_XS, " 3.3 bpw quantization"),
    QuantOption("Q3_K_S", F.MOSTLY_Q3_K_S, " 3.41G, +1.6321 ppl @ Llama-3-8B"),
    QuantOption("Q3_K_M", F.MOSTLY_Q3_K_M, " 3.74G, +0.6569 ppl @ Llama-3-8B"),
    QuantOption("Q3_K_L", F.MOSTLY_Q3_K_L, " 4.03G, +0.5562 ppl @ Llama-3-8B"),
    QuantOption("IQ4_NL", F.MOSTLY_IQ4_NL, " 4.50 bpw non-linear quantization"),
    QuantOption("IQ4_XS", F.MOSTLY_IQ4_XS, " 4.25 bpw non-linear quantization"),
    QuantOption("Q4_K", F.MOSTLY_Q4_K_M, "alias for Q4_K_M"),
    QuantOption("Q4_K_S", F.MOSTLY_Q4_K_S, " 4.37G, +0.2689 ppl @ Llama-3-8B"),
    QuantOption("Q4_K_M", F.MOSTLY_Q4_K_M, " 4.58G, +0.1754 ppl @ Llama-3-8B"),
    QuantOption("Q5_K", F.MOSTLY_Q5_K_M, "alias for Q5_K_M"),
    QuantOption("Q5_K_S", F.MOSTLY_Q5_K_S, " 5.21G, +0.1049 ppl @ Llama-3-8B"),
    QuantOption("Q5_K_M", F.MOSTLY_Q5_K_M, " 5.33G, +0.0569 ppl @ Llama-3-8B"),
    QuantOption("Q6_K", F.MOSTLY_Q6_K, " 6.14G, +0.0217 ppl @ Llama-3-8B"),
    QuantOption("Q8_0", F.MOSTLY_Q8_0, " 7.96G, +0.0026 ppl @ Llama-3-8B"),
    QuantOption("F16", F.MOSTLY_F16, "14.00G, +0.0020 ppl @ Mistral-7B"),
    QuantOption("BF16", F.MOSTLY_BF16, "14.00G, -0.0050 ppl @ Mistral-7B"),
    QuantOption("F32", F.ALL_F32, "26.00G              @ 7B"),
    QuantOption("COPY", F.ALL_F32, "only copy tensors, no quantizing"),
)


@dataclass(frozen=True)
class ParsedFType:
    """A resolved TYPE argument: its canonical name, ftype and whether it only copies."""
    name: str
    ftype: LlamaFileType

    @property
    def only_copy(self) -> bool:
        return self.name == "COPY"

    @property
    def default_type(self) -> GGMLType:
        return default_type(self.ftype)


def parse_ftype(text: "str | int | LlamaFileType | ParsedFType") -> ParsedFType:
    """TYPE name (case-insensitive), alias or numeric ftype id -> ParsedFType.

    Numbers resolve to the first option with that id (so 0 is F32, never COPY).
    Raises ValueError naming the accepted types otherwise.
    """
    if isinstance(text, ParsedFType):
        return text
    if isinstance(text, LlamaFileType):
        for opt in QUANT_OPTIONS:
            if opt.ftype == text:
                return ParsedFType(opt.name, opt.ftype)
        raise ValueError(f"ftype {text.name} ({int(text)}) cannot be produced by the quantizer")
    s = str(text).strip()
    up = s.upper()
    for opt in QUANT_OPTIONS:
        if opt.name == up:
            return ParsedFType(opt.name, opt.ftype)
    if up.startswith("MOSTLY_") or up.startswith("ALL_"):
        try:
            return parse_ftype(LlamaFileType[up])
        except KeyError:
            pass
    try:
        num = int(s)
    except ValueError:
        num = None
    if num is not None:
        for opt in QUANT_OPTIONS:
            if int(opt.ftype) == num:
                return ParsedFType(opt.name, opt.ftype)
    raise ValueError(f"invalid quantization type {text!r}; accepted: "
                     + ", ".join(o.name for o in QUANT_OPTIONS))


def default_type(ftype: "LlamaFileType | int") -> GGMLType:
    """The tensor type an ftype's mixture starts from; ValueError for ftypes with none."""
    try:
        return DEFAULT_TYPE[LlamaFileType(int(ftype))]
    except (KeyError, ValueError):
        raise ValueError(f"invalid output file type {ftype!r}") from None


def ftype_description(ftype: "LlamaFileType | int") -> str:
    try:
        return FTYPE_DESCRIPTION[LlamaFileType(int(ftype))]
    except (KeyError, ValueError):
        return "unknown, may not work"


def help_lines() -> list[str]:
    """The help table of accepted TYPEs: id, name, description, nominal bits per weight of the base type."""
    from kernels.types import bits_per_weight
    out = []
    for opt in QUANT_OPTIONS:
        prefix = f"  {int(opt.ftype):2d}  or  " if opt.name != "COPY" else "          "
        bpw = ""
        if opt.name != "COPY":
            bpw = f"  [base type {default_type(opt.ftype).name}, {bits_per_weight(default_type(opt.ftype)):.4g} bpw]"
        out.append(f"{prefix}{opt.name:<9s}: {opt.desc}{bpw}")
    return out
