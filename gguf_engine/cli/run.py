"""gguf-run: generate text or chat with a GGUF model from the command line.

Flags follow llama.cpp's completion tool where they overlap.  Generated text streams to stdout;
logs and the closing timing summary go to stderr.

Modes:
  * a prompt (-p / -f) and a chat template in the model file (or --chat-template): the prompt is
    one user turn, formatted with the template; the answer is printed and the program exits
    (stdin is never read), as llama.cpp's tools enable chat formatting when a template is present.
  * a prompt and no template (or -no-cnv): plain text completion of the prompt, printed after it.
  * -cnv: a multi-turn chat reading user turns from stdin, one per line, until end of input
    (Ctrl-D) or Ctrl-C; -p, if given, is the first user turn.  A model without a template uses
    its architecture's built-in one (gemma3), else ChatML.
  * -i / -if: interactive completion: after the model stops (an end-of-generation token, a reverse
    prompt given with -r, or -n tokens) a line read from stdin continues the text, wrapped in
    --in-prefix / --in-suffix; an empty line lets the model go on, end of input exits.  With -if
    the first line is read before anything is generated.
Escape sequences (backslash n, t, r, quotes, backslash, xHH) in the prompt, -r, --in-prefix and --in-suffix are
processed unless --no-escape is given, as llama.cpp does.  Every other llama.cpp flag is refused by
name with exit status 1.
-n defaults to -1 in chat modes (until an end-of-generation token or a full context) and to 256
tokens for plain completion, where a base model may never produce an end-of-generation token.
Exit status: 0 ok, 1 bad input or model error, 130 interrupted by Ctrl-C.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import warnings
from pathlib import Path
from dataclasses import dataclass, field
from typing import Sequence

from ..model.memory import summary_lines
from ._common import (CLIError, add_cache_type_flags, add_context_shift_args, add_reasoning_args, cache_types_of,
                      parse_or_status, reasoning_flags, refuse_other_flags)
from .llama_flags import COMMON

DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_COMPLETION_TOKENS = 256  # -n default for plain completion (a base model may never stop)

EXAMPLES = """\
examples:
  gguf-run -p "What is GGUF?"                         # chat-formatted answer from the default model
  gguf-run -m gemma-3-270m -p "Name three planets."   # another registry model (fetched on first use)
  gguf-run -m model.gguf -no-cnv -p "Once upon a time" -n 64 --temp 0.7 -s 42
  gguf-run -cnv -sys "You are a helpful assistant."   # interactive chat; Ctrl-D or Ctrl-C to leave
  printf 'Hi!\\nTell me a joke.\\n' | gguf-run -cnv   # scripted chat, one user turn per line
  gguf-run -m Qwen3-0.6B-Q8_0.gguf -cnv -rea off          # a thinking model with thinking off
  gguf-run -m Qwen3-0.6B-Q8_0.gguf -cnv --reasoning-budget 256 --reasoning-budget-message "Enough."
                                                      # thinking ended after 256 tokens
  gguf-run -f prompt.txt -n 128 --temp 0              # greedy, prompt read from a file ('-' = stdin)
  gguf-run -p "A person:" -j '{"type": "object", "properties": {"name": {"type": "string"}}}'
  gguf-run -no-cnv -p "2+2=" --grammar 'root ::= [0-9]+' # output constrained by a GBNF grammar
  gguf-run -no-cnv -i -r "User:" -p "User: hi\nBot:" --in-prefix " " --in-suffix "Bot:"

exit status: 0 ok, 1 bad input or model error, 130 interrupted (Ctrl-C)
"""


class UsageError(Exception):
    """Bad command-line input: reported on one line, exit status 1."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gguf-run", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Generate text or chat with a GGUF model. Text streams to stdout; "
                    "logs and timings go to stderr.",
        epilog=EXAMPLES)
    g = p.add_argument_group("model and context")
    g.add_argument("-m", "--model", default=DEFAULT_MODEL,
                   help=f"GGUF file or registry name (default: {DEFAULT_MODEL}, fetched on first use)")
    g.add_argument("-c", "--ctx-size", type=int, default=0,
                   help="context size in tokens (default: 0 = min(model's trained context, 4096))")
    g.add_argument("-b", "--batch-size", type=int, default=512, help="prompt tokens per forward pass (default: 512)")
    g.add_argument("-t", "--threads", type=int, default=None, help="CPU threads (default: all cores)")
    g.add_argument("-ngl", "--n-gpu-layers", "--gpu-layers", dest="n_gpu_layers", type=int, default=0,
                   help="layers to offload to the GPU (default: 0)")
    add_cache_type_flags(g)
    add_context_shift_args(g, "generation stops at a full context")

    g = p.add_argument_group("prompt and conversation")
    g.add_argument("-p", "--prompt", default=None, help="prompt text")
    g.add_argument("-f", "--file", default=None, help="read the prompt from a file ('-' = stdin)")
    g.add_argument("-n", "--n-predict", "--predict", dest="n_predict", type=int, default=None,
                   help="tokens to generate per turn; -1 = until an end-of-generation token or a full context "
                        f"(default: -1 in chat modes, {DEFAULT_COMPLETION_TOKENS} for plain completion)")
    cnv = g.add_mutually_exclusive_group()
    cnv.add_argument("-cnv", "--conversation", dest="conversation", action="store_const", const=True,
                     default=None, help="interactive multi-turn chat with the model's chat template")
    cnv.add_argument("-no-cnv", "--no-conversation", dest="conversation", action="store_const", const=False,
                     help="plain text completion, even when the model has a chat template")
    g.add_argument("-st", "--single-turn", action="store_true",
                   help="with -cnv: answer one turn and exit")
    g.add_argument("-sys", "--system-prompt", default=None, help="system message for chat modes")
    g.add_argument("-sysf", "--system-prompt-file", default=None, help="read the system message from a file")
    g.add_argument("--chat-template", default=None,
                   help="chat template: a built-in name or a Jinja template file (default: the model's)")
    g.add_argument("--chat-template-file", default=None, help="read the chat template from a file")
    g.add_argument("-e", "--escape", dest="escape", action="store_true", default=True,
                   help="process escape sequences (\\n, \\t, \\xHH, ...) in the prompt, -r and --in-* (default)")
    g.add_argument("--no-escape", dest="escape", action="store_false", help="take the prompt literally")
    g.add_argument("-i", "--interactive", action="store_true",
                   help="interactive completion: read a line from stdin whenever the model stops")
    g.add_argument("-if", "--interactive-first", action="store_true",
                   help="interactive completion, reading the first line before generating")
    g.add_argument("-r", "--reverse-prompt", action="append", default=[], metavar="PROMPT",
                   help="stop when the model writes PROMPT (printed), and in -i mode hand over to the user; "
                        "repeatable")
    g.add_argument("--in-prefix", default="", help="text before each line typed in -i mode")
    g.add_argument("--in-suffix", default="", help="text after each line typed in -i mode")
    g.add_argument("-sp", "--special", action="store_true", help="print special (control) tokens")
    add_reasoning_args(g, "in chat modes shown between [Start thinking] and [End thinking], and kept "
                          "apart from the answer in the conversation")
    g.add_argument("--no-display-prompt", action="store_true",
                   help="in completion mode, do not print the prompt before the generated text")
    g.add_argument("--ignore-eos", action="store_true", help="never stop at end-of-generation tokens")

    g = p.add_argument_group("sampling (llama.cpp defaults)")
    g.add_argument("--temp", "--temperature", dest="temp", type=float, default=0.8, help="temperature; <= 0 is greedy (default: 0.8)")
    g.add_argument("--top-k", type=int, default=40, help="top-k; <= 0 = off (default: 40)")
    g.add_argument("--top-p", type=float, default=0.95, help="top-p; 1.0 = off (default: 0.95)")
    g.add_argument("--min-p", type=float, default=0.05, help="min-p; 0.0 = off (default: 0.05)")
    g.add_argument("--repeat-penalty", type=float, default=1.0, help="repetition penalty; 1.0 = off (default: 1.0)")
    g.add_argument("--repeat-last-n", type=int, default=64,
                   help="tokens the penalty looks back over; 0 = off, -1 = context size (default: 64)")
    g.add_argument("--frequency-penalty", "--freq-penalty", dest="frequency_penalty", type=float, default=0.0,
                   help="frequency penalty (default: 0.0)")
    g.add_argument("--presence-penalty", type=float, default=0.0, help="presence penalty (default: 0.0)")
    g.add_argument("-s", "--seed", type=int, default=-1, help="random seed; -1 = random (default: -1)")
    g.add_argument("--mirostat", type=int, default=0,
                   help="mirostat sampling: 0 off, 1 mirostat, 2 mirostat 2.0 (replaces top-k/top-p/min-p "
                        "and penalties, as in llama.cpp; default: 0)")
    g.add_argument("--mirostat-lr", type=float, default=0.1, help="mirostat learning rate eta (default: 0.1)")
    g.add_argument("--mirostat-ent", type=float, default=5.0, help="mirostat target entropy tau (default: 5.0)")
    g.add_argument("-l", "--logit-bias", action="append", default=[], metavar="TOKEN_ID(+/-)BIAS",
                   help="add BIAS to a token's logit, e.g. 15043+1 or 15043-inf; repeatable")

    g = p.add_argument_group("constrained output")
    g.add_argument("--grammar", default=None, help="GBNF grammar the output must follow")
    g.add_argument("--grammar-file", default=None, help="read the GBNF grammar from a file")
    g.add_argument("-j", "--json-schema", default=None, help="JSON schema the output must follow")
    g.add_argument("-jf", "--json-schema-file", default=None, help="read the JSON schema from a file")

    g = p.add_argument_group("output")
    g.add_argument("--verbose", "-v", "--log-verbose", dest="verbose", action="store_true", help="more detail on stderr")
    g.add_argument("--no-perf", action="store_true", help="do not print the timing summary")
    refuse_other_flags(p, COMMON, "gguf-run")
    return p


def log(msg: str = "") -> None:
    print(msg, file=sys.stderr, flush=True)


def out(text: str) -> None:
    if text:
        sys.stdout.write(text)
        sys.stdout.flush()


def read_prompt(args) -> str | None:
    if args.file is not None:
        if args.file == "-":
            return sys.stdin.read()
        return read_text_file(args.file, "prompt")
    return args.prompt


def process_escapes(text: str) -> str:
    """llama.cpp's escape processing: \\n \\r \\t \\' \\" \\\\ and \\xHH (a byte); any other
    backslash stays as it is."""
    src = text.encode("utf-8")
    out = bytearray()
    i = 0
    simple = {ord("n"): b"\n", ord("r"): b"\r", ord("t"): b"\t", ord("'"): b"'", ord('"'): b'"', ord("\\"): b"\\"}
    while i < len(src):
        c = src[i]
        if c == ord("\\") and i + 1 < len(src):
            nxt = src[i + 1]
            if nxt in simple:
                out += simple[nxt]
                i += 2
                continue
            if nxt == ord("x") and i + 3 < len(src) and _is_hex(src[i + 2:i + 4]):
                out.append(int(src[i + 2:i + 4], 16))
                i += 4
                continue
            out += src[i:i + 2]
            i += 2
            continue
        out.append(c)
        i += 1
    return out.decode("utf-8", errors="replace")


def _is_hex(b: bytes) -> bool:
    return len(b) == 2 and all(chr(x) in "0123456789abcdefABCDEF" for x in b)


def read_text_file(path_arg: str, what: str) -> str:
    path = Path(path_arg)
    try:
        return path.read_text(encoding="utf-8")
    except OSError as e:
        raise UsageError(f"cannot read {what} file '{path}': {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise UsageError(f"{what} file '{path}' is not UTF-8 text ({e.reason} at byte {e.start})") from None


def parse_logit_bias(items: Sequence[str]) -> dict[int, float]:
    """-l TOKEN_ID(+/-)BIAS, as llama.cpp reads it (the bias may be inf)."""
    bias: dict[int, float] = {}
    for item in items:
        m = re.fullmatch(r"\s*(\d+)\s*([+-])\s*(\S+)\s*", item)
        try:
            value = float(m.group(3)) if m else None
        except ValueError:
            value = None
        if m is None or value is None or value != value:
            raise UsageError(f"--logit-bias {item!r}: expected TOKEN_ID+BIAS or TOKEN_ID-BIAS, e.g. 15043+1")
        bias[int(m.group(1))] = bias.get(int(m.group(1)), 0.0) + (-value if m.group(2) == "-" else value)
    return bias


def read_grammar(args):
    """The Grammar from --grammar, --grammar-file, -j or -jf (at most one), or None."""
    given = [(n, v) for n, v in (("--grammar", args.grammar), ("--grammar-file", args.grammar_file),
                                 ("--json-schema", args.json_schema), ("--json-schema-file", args.json_schema_file))
             if v is not None]
    if not given:
        return None
    if len(given) > 1:
        raise UsageError(f"give only one of {', '.join(n for n, _ in given)}")
    from ..generation.grammar import Grammar, GrammarError
    name, value = given[0]
    try:
        if name == "--grammar":
            return Grammar.from_gbnf(value, origin="--grammar")
        if name == "--grammar-file":
            return Grammar.from_gbnf(read_text_file(value, "grammar"), origin=value)
        if name == "--json-schema":
            return Grammar.from_json_schema(value, origin="--json-schema")
        return Grammar.from_json_schema(read_text_file(value, "JSON schema"), origin=value)
    except GrammarError as e:
        raise UsageError(str(e)) from None


def read_template(arg: str | None) -> str | None:
    """--chat-template: a file holding a Jinja template, else the value itself (a name or a template)."""
    from ..tokenizer.chat import looks_like_template

    if arg is None:
        return None
    path = Path(arg)
    if path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"cannot read chat template file '{path}': {e}") from None
        if not looks_like_template(text):
            raise UsageError(f"chat template file '{path}' holds no Jinja template (no '{{{{' or '{{%')")
        return text
    return arg


SAMPLING_FLAGS = {"temperature": "--temp", "top_k": "--top-k", "top_p": "--top-p", "min_p": "--min-p",
                  "repeat_penalty": "--repeat-penalty", "repeat_last_n": "--repeat-last-n",
                  "frequency_penalty": "--frequency-penalty", "presence_penalty": "--presence-penalty",
                  "mirostat": "--mirostat", "mirostat_tau": "--mirostat-ent", "mirostat_eta": "--mirostat-lr"}


def validate(args) -> None:
    if args.ctx_size < 0:
        raise UsageError(f"--ctx-size must be >= 0, got {args.ctx_size}")
    if args.batch_size <= 0:
        raise UsageError(f"--batch-size must be > 0, got {args.batch_size}")
    if args.threads is not None and args.threads <= 0:
        raise UsageError(f"--threads must be > 0, got {args.threads}")
    if args.n_predict is not None and args.n_predict < -1:
        raise UsageError(f"--n-predict must be -1 (no limit) or >= 0, got {args.n_predict}")
    if args.keep < -1:
        raise UsageError(f"--keep must be -1 (the whole initial prompt) or >= 0, got {args.keep}")
    from ..generation.sampling import check_sampling

    try:
        check_sampling(SAMPLING_FLAGS, temperature=args.temp, top_k=args.top_k, top_p=args.top_p,
                       min_p=args.min_p, repeat_penalty=args.repeat_penalty, repeat_last_n=args.repeat_last_n,
                       frequency_penalty=args.frequency_penalty, presence_penalty=args.presence_penalty,
                       mirostat=args.mirostat, mirostat_tau=args.mirostat_ent, mirostat_eta=args.mirostat_lr)
    except ValueError as e:
        raise UsageError(str(e)) from None
    try:
        cache_types_of(args)
        reasoning_flags(args)
    except CLIError as e:
        raise UsageError(str(e)) from None
    if args.system_prompt is not None and args.system_prompt_file is not None:
        raise UsageError("give -sys or -sysf, not both")
    if args.chat_template is not None and args.chat_template_file is not None:
        raise UsageError("give --chat-template or --chat-template-file, not both")
    if args.seed < -1 or args.seed > 0xFFFFFFFF:
        raise UsageError(f"--seed must be -1 (random) or in [0, 2^32-1], got {args.seed}")


def has_chat_template(llm) -> bool:
    """A template given on the command line or written in the model file (as llama.cpp decides
    whether to format a prompt as a chat turn); a fallback template does not count."""
    return llm.chat_template_source in ("given", "model")


def log_model(llm, args) -> None:
    cfg = llm.config
    model = llm.model
    backend = model.backend.name + (f" + {model.device.name}" if model.device is not None else "")
    ftype = llm.metadata.get("general.file_type", "?")
    log(f"load: model '{llm.model_path}'")
    log(f"load: arch = {cfg.arch}, n_layer = {cfg.n_layer}, n_embd = {cfg.n_embd}, n_head = {cfg.n_head}, "
        f"n_head_kv = {cfg.n_head_kv}, n_vocab = {cfg.n_vocab}, n_ctx_train = {cfg.n_ctx_train}, file_type = {ftype}")
    log(f"load_tensors: {model.offload_summary} (backend: {backend})")
    log(f"context: n_ctx = {llm.n_ctx()}, n_batch = {args.batch_size}, n_threads = {args.threads or os.cpu_count()}, "
        f"type_k = {args.cache_type_k}, type_v = {args.cache_type_v}")
    log(f"load: chat template: {llm.chat_template_source}")
    log(f"load: model loaded in {llm.perf.t_load_ms:.2f} ms")
    if args.verbose:
        for line in summary_lines(llm.memory_breakdown()):
            log(line)
        for key in ("general.name", "general.architecture", "general.size_label", "tokenizer.ggml.model",
                    "tokenizer.ggml.pre"):
            if key in llm.metadata:
                log(f"load: {key} = {llm.metadata[key]}")


@dataclass
class Turn:
    """What one stretch of generation produced: the text shown, the tokens generated (an
    end-of-generation token not included), and how it ended."""

    text: str = ""
    tokens: list[int] = field(default_factory=list)
    stop_reason: str | None = None
    interrupted: bool = False
    message: dict = field(default_factory=dict)   # chat: the assistant message (reasoning apart)


class ThinkingDisplay:
    """A chat answer printed as llama-cli prints it: reasoning between [Start thinking] and
    [End thinking], then the answer."""

    def __init__(self):
        self.thinking = False
        self.last = "\n"

    def show(self, delta: dict) -> None:
        if "reasoning_content" in delta and not self.thinking:
            self.thinking = True
            out("\n[Start thinking]\n\n")
        elif "content" in delta and self.thinking:
            self.thinking = False
            out(("" if self.last.endswith("\n") else "\n") + "[End thinking]\n\n")
        text = next(iter(delta.values()))
        out(text)
        self.last = text or self.last

    def close(self) -> None:
        if self.thinking:
            out(("" if self.last.endswith("\n") else "\n") + "[End thinking]\n")


class Session:
    """The generation state of one gguf-run invocation: the model, the sampler, and what steers
    every turn (grammar, reverse prompts)."""

    def __init__(self, llm, args, sampler, grammar=None):
        self.llm = llm
        self.args = args
        self.sampler = sampler
        self.grammar = grammar
        self.context_full = False

    def reverse_prompt_hit(self, n_prompt: int):
        """A stopping criterion: the text generated since position n_prompt contains a reverse prompt."""
        prompts = self.args.reverse_prompt
        if not prompts:
            return None
        longest = max(len(r) for r in prompts)

        def hit(ids, _logits) -> bool:
            new = ids[n_prompt:]
            tail = self.llm.detokenize(new[-(longest + 8):], prev_tokens=new[:-(longest + 8)][-8:])
            text = tail.decode("utf-8", errors="ignore")
            return any(r in text for r in prompts)
        return hit

    def run_turn(self, tokens: list[int], reply=None, budget=None) -> Turn:
        """Streams one completion of tokens to stdout; reply: (the ``ReplyParser`` of a chat answer,
        the control tokens it reads), whose reasoning is shown apart (None: the text as it comes);
        budget: the answer's thinking budget (``ReasoningBudget``, None: none)."""
        from ..generation.reasoning import ReplyStream
        engine = self.llm.engine
        turn = Turn(stop_reason="interrupted")
        max_tokens = None if self.args.n_predict < 0 else self.args.n_predict
        if max_tokens == 0:
            return Turn()
        steering = self.llm.steering(stopping_criteria=self.reverse_prompt_hit(len(tokens)), grammar=self.grammar)
        steering.budget = budget
        parts: list[str] = []
        split = ReplyStream(reply[0]) if reply is not None and not self.args.special else None
        display = ThinkingDisplay()
        shown = reply[1] if split is not None else frozenset()
        try:
            for ev in engine.stream(tokens, self.sampler, max_tokens=max_tokens, ignore_eos=self.args.ignore_eos,
                                    steering=steering, special=self.args.special, shown=shown):
                for d in split.push(ev.text) if split is not None else [{"content": ev.text}]:
                    display.show(d)
                parts.append(ev.text)
                if ev.token is not None:
                    turn.tokens.append(ev.token)
                if ev.finish_reason is not None:
                    turn.stop_reason = ev.stop_reason
                if ev.stop_reason == "context_full":
                    self.context_full = True
        except KeyboardInterrupt:
            turn.interrupted = True
        turn.text = "".join(parts)
        turn.message = {"role": "assistant", "content": turn.text}
        if split is not None:
            for d in split.finish()[0]:
                display.show(d)
            parsed, _ = split.parser.split(turn.text)
            turn.message = {"role": "assistant", "content": parsed.content}
            if parsed.reasoning_content:
                turn.message["reasoning_content"] = parsed.reasoning_content
        display.close()
        if self.args.verbose:
            log(f"\n[prompt: {len(tokens)} tokens, {engine.n_reused} reused from the cache; "
                f"stop: {turn.stop_reason}]")
        return turn


def print_context_full(llm) -> None:
    log(f"\ncontext full: the {llm.n_ctx()}-token context is used up; generation stopped "
        f"(use -c to set a larger context, or --context-shift)")


def cached_history(llm, turn: Turn) -> list[int]:
    """The tokens the KV cache stands for after a turn (shifted, when a context shift happened):
    what it holds, plus the turn's last token when generation ended before evaluating it."""
    toks = list(llm.engine.tokens)
    if turn.tokens and turn.stop_reason != "eog":
        toks.append(turn.tokens[-1])
    return toks


def check_prompt_size(llm, text: str, what: str = "prompt") -> None:
    """Refuses a text that cannot fit the context before tokenizing it (a huge file costs seconds
    and hundreds of MB to tokenize just to be refused)."""
    if llm.tokenizer.min_tokens(text) > llm.n_ctx():
        raise UsageError(f"the {what} ({len(text.encode('utf-8')):,} bytes) is more than the context of "
                         f"{llm.n_ctx()} tokens can hold; use -c to set a larger context")


def check_fits(llm, tokens: list[int], what: str) -> None:
    if len(tokens) >= llm.n_ctx():
        raise UsageError(f"{what} has {len(tokens)} tokens but the context holds {llm.n_ctx()}; "
                         f"use -c to set a larger context")


def prompt_tokens(llm, prompt: str) -> list[int]:
    tokens = llm.tokenize(prompt, add_bos=True, special=True)
    if not tokens:
        bos = llm.tokenizer.bos_id
        if bos is None or bos < 0:
            raise UsageError("the prompt is empty and the model adds no BOS token: nothing to generate from")
        tokens = [int(bos)]
    return tokens


def run_completion(session: Session, prompt: str) -> int:
    llm = session.llm
    if not prompt:
        raise UsageError("the prompt is empty: nothing to complete (give -p, or -i / -if to type it)")
    check_prompt_size(llm, prompt)
    tokens = prompt_tokens(llm, prompt)
    check_fits(llm, tokens, "the prompt")
    if not session.args.no_display_prompt:
        out(prompt)
    turn = session.run_turn(tokens)
    out("\n")
    if session.context_full:
        print_context_full(llm)
    return 130 if turn.interrupted else 0


def run_interactive(session: Session, prompt: str | None) -> int:
    """Interactive completion (-i / -if), as llama.cpp's: the model writes until it stops, then a
    line from stdin (between --in-prefix and --in-suffix) continues the text."""
    llm, args = session.llm, session.args
    check_prompt_size(llm, prompt or "")
    tokens = prompt_tokens(llm, prompt or "")
    check_fits(llm, tokens, "the prompt")
    if prompt and not args.no_display_prompt:
        out(prompt)
    waiting = args.interactive_first
    while True:
        if not waiting:
            turn = session.run_turn(tokens)
            # with a context shift the cache holds a shortened history: go on from it
            tokens = cached_history(llm, turn) if args.context_shift else tokens + turn.tokens
            if session.context_full:
                print_context_full(llm)
                return 0
            if turn.stop_reason == "eog" and args.reverse_prompt:  # hand over with the first reverse prompt
                out(args.reverse_prompt[0])
                tokens += llm.tokenize(args.reverse_prompt[0], add_bos=False, special=True)
        waiting = False
        if args.in_prefix:
            out(args.in_prefix)
        line = sys.stdin.readline()  # Ctrl-C here ends the program with status 130 (main)
        if not line:  # end of input
            out("\n")
            return 0
        line = line[:-1] if line.endswith("\n") else line
        if not line:  # an empty line lets the model go on
            continue
        if args.in_suffix:
            out(args.in_suffix)
        if args.escape:
            line = process_escapes(line)
        tokens += (llm.tokenize(args.in_prefix, add_bos=False, special=True)
                   + llm.tokenize(line, add_bos=False, special=False)
                   + llm.tokenize(args.in_suffix, add_bos=False, special=True))
        if not args.context_shift:
            check_fits(llm, tokens, "the text so far")


def chat_tokens(llm, messages, text: str) -> list[int]:
    """The tokens of the conversation messages rendered as text."""
    check_prompt_size(llm, "".join(str(m.get("content", "")) for m in messages), "conversation")
    tokens = llm.encode_chat(text)
    check_fits(llm, tokens, "the conversation")
    return tokens


def run_chat(session: Session, first: str | None, interactive: bool) -> int:
    llm, args = session.llm, session.args
    reasoning = reasoning_flags(args)
    messages: list[dict[str, str]] = []
    if args.system_prompt:
        messages.append({"role": "system", "content": args.system_prompt})
    tty = sys.stdin.isatty()
    pending = first
    shown = None           # with a context shift: (the conversation's text so far, the cache's tokens)
    if pending is not None and interactive and tty:
        out(f"> {pending}\n")
    while True:
        if pending is None:
            if not interactive:
                return 0
            if tty:
                out("\n> ")
            line = sys.stdin.readline()  # Ctrl-C here ends the program with status 130 (main)
            if not line:  # end of input
                if tty:
                    out("\n")
                return 0
            pending = line.rstrip("\r\n")
            if not pending.strip():
                pending = None
                continue
        messages.append({"role": "user", "content": pending})
        pending = None
        try:
            tokens = None
            full = llm.render_chat(messages, template_kwargs=reasoning.template_kwargs)
            if shown is not None:   # a shifted cache: append the new turn's text to what it holds
                if full.startswith(shown[0]):
                    tokens = shown[1] + llm.tokenize(full[len(shown[0]):], add_bos=False, special=True)
            if tokens is None:
                tokens = chat_tokens(llm, messages, full)
        except UsageError:
            if interactive and any(m["role"] == "assistant" for m in messages):
                log("\ncontext full: the conversation no longer fits; use -c to set a larger context")
                return 0
            raise
        parser, preserved = llm.reply_parser(full, None, args.reasoning_format)
        turn = session.run_turn(tokens, (parser, preserved),
                                llm.reasoning_budget(reasoning.budget, parser.syntax))
        if args.context_shift:
            shown = (full + turn.text, cached_history(llm, turn))
        messages.append(turn.message)
        out("\n")
        if session.context_full:
            print_context_full(llm)
            return 0
        if turn.interrupted and not interactive:
            return 130
        if turn.interrupted:
            log("[generation interrupted]")
        if not interactive or args.single_turn:
            return 0


def main(argv: Sequence[str] | None = None) -> int:
    args, status = parse_or_status(build_parser(), argv)  # --help: 0; a usage error or refused flag: 1
    if args is None:
        return status
    try:
        sys.stdout.reconfigure(errors="replace")
    except (AttributeError, ValueError):
        pass

    llm = None
    code = 1
    try:
        validate(args)
        prompt = read_prompt(args)
        if args.escape:
            prompt = None if prompt is None else process_escapes(prompt)
            args.reverse_prompt = [process_escapes(r) for r in args.reverse_prompt]
            args.in_prefix, args.in_suffix = process_escapes(args.in_prefix), process_escapes(args.in_suffix)
        if args.system_prompt_file is not None:
            args.system_prompt = read_text_file(args.system_prompt_file, "system prompt")
        template = read_template(args.chat_template) if args.chat_template_file is None else \
            read_text_file(args.chat_template_file, "chat template")
        interactive = args.interactive or args.interactive_first
        if interactive and args.conversation:
            raise UsageError("-i / -if is interactive completion; -cnv is interactive chat: give one of them")
        if prompt is None and args.conversation is not True and not interactive:
            raise UsageError("no prompt given: use -p PROMPT, -f FILE, -cnv for a chat, or -i / -if")
        grammar = read_grammar(args)
        logit_bias = parse_logit_bias(args.logit_bias)
        log(f"load: loading model '{args.model}'")
        try:
            from ..api import Llama
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                llm = Llama(args.model, n_ctx=args.ctx_size or None, n_batch=args.batch_size,
                            n_threads=args.threads, n_gpu_layers=args.n_gpu_layers, seed=args.seed,
                            verbose=False, chat_template=template, type_k=args.cache_type_k,
                            type_v=args.cache_type_v, flash_attn=args.flash_attn != "off",
                            context_shift=args.context_shift, n_keep=args.keep)
            for w in caught:  # loader warnings as log lines, not Python warning dumps
                log(f"load: warning: {w.message}")
        except KeyboardInterrupt:
            raise
        except Exception as e:
            log(f"error: failed to load model '{args.model}': {e}")
            return 1
        log_model(llm, args)
        sampler = llm.sampler(temp=args.temp, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                              repeat_penalty=args.repeat_penalty, repeat_last_n=args.repeat_last_n,
                              frequency_penalty=args.frequency_penalty, presence_penalty=args.presence_penalty,
                              logit_bias=logit_bias, seed=args.seed, mirostat_mode=args.mirostat,
                              mirostat_tau=args.mirostat_ent, mirostat_eta=args.mirostat_lr)
        from ..generation.sampling import chain_description
        log(f"sampler seed: {sampler.seed}")
        log(f"sampler params: \n\t{sampler.params.describe()}")
        log(f"sampler chain: {('grammar -> ' if grammar else '') + chain_description(sampler.params)}")
        if args.flash_attn == "on":
            log("warning: -fa on: attention is always computed exactly here (no separate flash-attention path)")

        templated = has_chat_template(llm)
        mode = args.conversation
        if interactive:
            mode = "interactive"
        elif mode is None:  # auto: chat format when the model has a template
            mode = "chat-once" if templated else "completion"
        else:
            mode = "chat" if mode else "completion"
        if mode == "chat" and not templated:
            log(f"warning: the model file has no chat template; using {llm.chat_template_source.split(':')[1]} "
                f"(choose one with --chat-template)")
        if args.n_predict is None:
            args.n_predict = DEFAULT_COMPLETION_TOKENS if mode in ("completion", "interactive") else -1
        names = {"chat": "conversation", "chat-once": "single chat turn", "completion": "completion",
                 "interactive": "interactive completion"}
        log(f"generate: n_ctx = {llm.n_ctx()}, n_batch = {args.batch_size}, n_predict = {args.n_predict}, "
            f"mode = {names[mode]}")
        for r in args.reverse_prompt:
            log(f"reverse prompt: {r!r}")
        log("")
        session = Session(llm, args, sampler, grammar)
        if mode == "completion":
            code = run_completion(session, prompt)
        elif mode == "interactive":
            code = run_interactive(session, prompt)
        else:
            code = run_chat(session, prompt, interactive=(mode == "chat"))
    except UsageError as e:
        log(f"error: {e}")
        code = 1
    except KeyboardInterrupt:
        try:
            out("\n")
        except OSError:
            pass
        code = 130
    except BrokenPipeError:  # the reader of stdout went away (e.g. `| head`): stop quietly
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        code = 0
    except Exception as e:  # a model or input error: one clear line, no traceback
        log(f"error: {type(e).__name__}: {e}")
        code = 1
    finally:
        if llm is not None:
            if not args.no_perf:
                log("")
                for line in llm.perf.summary_lines("perf_print"):
                    log(line)
            llm.close()
    return code


if __name__ == "__main__":
    sys.exit(main())
