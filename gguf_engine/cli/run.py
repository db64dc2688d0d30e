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
-n defaults to -1 in chat modes (until an end-of-generation token or a full context) and to 256
tokens for plain completion, where a base model may never produce an end-of-generation token.
Exit status: 0 ok, 1 bad input or model error, 130 interrupted by Ctrl-C.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path
from typing import Sequence

DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_COMPLETION_TOKENS = 256  # -n default for plain completion (a base model may never stop)

EXAMPLES = """\
examples:
  gguf-run -p "What is GGUF?"                         # chat-formatted answer from the default model
  gguf-run -m gemma-3-270m -p "Name three planets."   # another registry model (fetched on first use)
  gguf-run -m model.gguf -no-cnv -p "Once upon a time" -n 64 --temp 0.7 -s 42
  gguf-run -cnv -sys "You are a helpful assistant."   # interactive chat; Ctrl-D or Ctrl-C to leave
  printf 'Hi!\\nTell me a joke.\\n' | gguf-run -cnv   # scripted chat, one user turn per line
  gguf-run -f prompt.txt -n 128 --temp 0              # greedy, prompt read from a file ('-' = stdin)

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
    g.add_argument("--cache-type", "-ctk", "--cache-type-k", dest="cache_type", choices=["f32", "f16"],
                   default="f32", help="KV cache element type (default: f32)")

    g = p.add_argument_group("prompt and conversation")
    g.add_argument("-p", "--prompt", default=None, help="prompt text")
    g.add_argument("-f", "--file", default=None, help="read the prompt from a file ('-' = stdin)")
    g.add_argument("-n", "--n-predict", type=int, default=None,
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
    g.add_argument("--chat-template", default=None,
                   help="chat template: a built-in name or a Jinja template file (default: the model's)")
    g.add_argument("--no-display-prompt", action="store_true",
                   help="in completion mode, do not print the prompt before the generated text")
    g.add_argument("--ignore-eos", action="store_true", help="never stop at end-of-generation tokens")

    g = p.add_argument_group("sampling (llama.cpp defaults)")
    g.add_argument("--temp", type=float, default=0.8, help="temperature; <= 0 is greedy (default: 0.8)")
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

    g = p.add_argument_group("output")
    g.add_argument("--verbose", "-v", action="store_true", help="more detail on stderr")
    g.add_argument("--no-perf", action="store_true", help="do not print the timing summary")
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
        path = Path(args.file)
        try:
            return path.read_text(encoding="utf-8")
        except OSError as e:
            raise UsageError(f"cannot read prompt file '{path}': {e.strerror or e}") from None
        except UnicodeDecodeError as e:
            raise UsageError(f"prompt file '{path}' is not UTF-8 text ({e.reason} at byte {e.start})") from None
    return args.prompt


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
                  "frequency_penalty": "--frequency-penalty", "presence_penalty": "--presence-penalty"}


def validate(args) -> None:
    if args.ctx_size < 0:
        raise UsageError(f"--ctx-size must be >= 0, got {args.ctx_size}")
    if args.batch_size <= 0:
        raise UsageError(f"--batch-size must be > 0, got {args.batch_size}")
    if args.threads is not None and args.threads <= 0:
        raise UsageError(f"--threads must be > 0, got {args.threads}")
    if args.n_predict is not None and args.n_predict < -1:
        raise UsageError(f"--n-predict must be -1 (no limit) or >= 0, got {args.n_predict}")
    from ..generation.sampling import check_sampling

    try:
        check_sampling(SAMPLING_FLAGS, temperature=args.temp, top_k=args.top_k, top_p=args.top_p,
                       min_p=args.min_p, repeat_penalty=args.repeat_penalty, repeat_last_n=args.repeat_last_n,
                       frequency_penalty=args.frequency_penalty, presence_penalty=args.presence_penalty)
    except ValueError as e:
        raise UsageError(str(e)) from None
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
        f"cache_type = {args.cache_type}")
    log(f"load: chat template: {llm.chat_template_source}")
    log(f"load: model loaded in {llm.perf.t_load_ms:.2f} ms")
    if args.verbose:
        for key in ("general.name", "general.architecture", "general.size_label", "tokenizer.ggml.model",
                    "tokenizer.ggml.pre"):
            if key in llm.metadata:
                log(f"load: {key} = {llm.metadata[key]}")


class Session:
    """The generation state of one gguf-run invocation."""

    def __init__(self, llm, args, sampler):
        self.llm = llm
        self.args = args
        self.sampler = sampler
        self.context_full = False

    def run_turn(self, tokens: list[int]) -> tuple[str, bool]:
        """Streams one completion of tokens to stdout; returns (text, interrupted)."""
        engine = self.llm.engine
        parts: list[str] = []
        stop_reason = "interrupted"
        max_tokens = None if self.args.n_predict < 0 else self.args.n_predict
        if max_tokens == 0:
            return "", False
        try:
            for ev in engine.stream(tokens, self.sampler, max_tokens=max_tokens, ignore_eos=self.args.ignore_eos):
                out(ev.text)
                parts.append(ev.text)
                if ev.finish_reason is not None:
                    stop_reason = ev.stop_reason
                if ev.stop_reason == "context_full":
                    self.context_full = True
        except KeyboardInterrupt:
            return "".join(parts), True
        if self.args.verbose:
            log(f"\n[prompt: {len(tokens)} tokens, {engine.n_reused} reused from the cache; "
                f"stop: {stop_reason}]")
        return "".join(parts), False


def print_context_full(llm) -> None:
    log(f"\ncontext full: the {llm.n_ctx()}-token context is used up; generation stopped "
        f"(use -c to set a larger context)")


def check_prompt_size(llm, text: str, what: str = "prompt") -> None:
    """Refuses a text that cannot fit the context before tokenizing it (a huge file costs seconds
    and hundreds of MB to tokenize just to be refused)."""
    if llm.tokenizer.min_tokens(text) > llm.n_ctx():
        raise UsageError(f"the {what} ({len(text.encode('utf-8')):,} bytes) is more than the context of "
                         f"{llm.n_ctx()} tokens can hold; use -c to set a larger context")


def run_completion(session: Session, prompt: str) -> int:
    llm = session.llm
    check_prompt_size(llm, prompt)
    tokens = llm.tokenize(prompt, add_bos=True, special=True)
    if not tokens:
        raise UsageError("the prompt is empty and the model adds no BOS token: nothing to generate from")
    if len(tokens) >= llm.n_ctx():
        raise UsageError(f"the prompt has {len(tokens)} tokens but the context holds {llm.n_ctx()}; "
                         f"use -c to set a larger context")
    if not session.args.no_display_prompt:
        out(prompt)
    _, interrupted = session.run_turn(tokens)
    out("\n")
    if session.context_full:
        print_context_full(llm)
    return 130 if interrupted else 0


def chat_tokens(llm, messages) -> list[int]:
    check_prompt_size(llm, "".join(str(m.get("content", "")) for m in messages), "conversation")
    tokens = llm.format_chat(messages)
    if len(tokens) >= llm.n_ctx():
        raise UsageError(f"the conversation has {len(tokens)} tokens but the context holds {llm.n_ctx()}; "
                         f"use -c to set a larger context")
    return tokens


def run_chat(session: Session, first: str | None, interactive: bool) -> int:
    llm, args = session.llm, session.args
    messages: list[dict[str, str]] = []
    if args.system_prompt:
        messages.append({"role": "system", "content": args.system_prompt})
    tty = sys.stdin.isatty()
    pending = first
    if pending is not None and interactive and tty:
        out(f"> {pending}\n")
    while True:
        if pending is None:
            if not interactive:
                return 0
            if tty:
                out("\n> ")
            try:
                line = sys.stdin.readline()
            except KeyboardInterrupt:
                out("\n")
                return 130
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
            tokens = chat_tokens(llm, messages)
        except UsageError:
            if interactive and any(m["role"] == "assistant" for m in messages):
                log("\ncontext full: the conversation no longer fits; use -c to set a larger context")
                return 0
            raise
        text, interrupted = session.run_turn(tokens)
        messages.append({"role": "assistant", "content": text})
        out("\n")
        if session.context_full:
            print_context_full(llm)
            return 0
        if interrupted and not interactive:
            return 130
        if interrupted:
            log("[generation interrupted]")
        if not interactive or args.single_turn:
            return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (argparse's 2 -> 1)
        return 0 if e.code in (0, None) else 1
    try:
        sys.stdout.reconfigure(errors="replace")
    except (AttributeError, ValueError):
        pass

    llm = None
    code = 1
    try:
        validate(args)
        prompt = read_prompt(args)
        template = read_template(args.chat_template)
        if prompt is None and args.conversation is not True:
            raise UsageError("no prompt given: use -p PROMPT, -f FILE, or -cnv for a chat")
        log(f"load: loading model '{args.model}'")
        try:
            from ..api import Llama
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                llm = Llama(args.model, n_ctx=args.ctx_size or None, n_batch=args.batch_size,
                            n_threads=args.threads, n_gpu_layers=args.n_gpu_layers, seed=args.seed,
                            verbose=False, chat_template=template, cache_type=args.cache_type)
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
                              seed=args.seed)
        from ..generation.sampling import chain_description
        log(f"sampler seed: {sampler.seed}")
        log(f"sampler params: \n\t{sampler.params.describe()}")
        log(f"sampler chain: {chain_description(sampler.params)}")

        templated = has_chat_template(llm)
        mode = args.conversation
        if mode is None:  # auto: chat format when the model has a template
            mode = "chat-once" if templated else "completion"
        else:
            mode = "chat" if mode else "completion"
        if mode == "chat" and not templated:
            log(f"warning: the model file has no chat template; using {llm.chat_template_source.split(':')[1]} "
                f"(choose one with --chat-template)")
        if args.n_predict is None:
            args.n_predict = DEFAULT_COMPLETION_TOKENS if mode == "completion" else -1
        log(f"generate: n_ctx = {llm.n_ctx()}, n_batch = {args.batch_size}, n_predict = {args.n_predict}, "
            f"mode = {'conversation' if mode == 'chat' else 'single chat turn' if mode == 'chat-once' else 'completion'}")
        log("")
        session = Session(llm, args, sampler)
        if mode == "completion":
            code = run_completion(session, prompt)
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
