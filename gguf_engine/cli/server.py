"""gguf-server: an OpenAI- and llama-server-compatible HTTP server with continuous batching.

Flags are llama-server's where it has them.  -c is the total context, split evenly over the
-np slots (as llama-server does): each request may use c / np tokens, prompt and answer together.
Logs go to stderr.  SIGTERM or Ctrl-C stops accepting connections, cancels what still runs after
a few seconds and exits 0.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from ._common import (CLIError, add_cache_type_flags, add_context_shift_args, add_reasoning_args, cache_types_of,
                      cli_entry, reasoning_flags)

EXAMPLES = """\
examples:
  gguf-server                                         # the default model on http://127.0.0.1:8080
  gguf-server -m gemma-3-270m -np 8 -c 8192 -t 4      # 8 slots of 1024 tokens, 4 threads
  gguf-server -m model.gguf --port 9000 --api-key secret --metrics -a my-model
  gguf-server --context-shift --keep -1               # full slots drop old tokens instead of stopping
  gguf-server -m Qwen3-0.6B-Q8_0.gguf --reasoning-budget 0   # a thinking model with thinking off
  curl http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' \\
       -d '{"messages": [{"role": "user", "content": "Hi!"}], "max_tokens": 32}'
  # end the thinking of a streamed answer sent with "reasoning_control": true (id: its chatcmpl- id)
  curl http://127.0.0.1:8080/v1/chat/completions/control -d '{"id": "chatcmpl-...", "action": "reasoning_end"}'

exit status: 0 stopped by SIGTERM or Ctrl-C, 1 bad flags or a model that failed to load
"""


def build_parser() -> argparse.ArgumentParser:
    from ..models import DEFAULT_MODEL
    p = argparse.ArgumentParser(prog="gguf-server", description=__doc__.split("\n\n")[0], epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    p.add_argument("-m", "--model", default=DEFAULT_MODEL,
                   help=f"GGUF file or registry name (default: {DEFAULT_MODEL}, fetched on first use)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port to listen on (default: 8080)")
    p.add_argument("-np", "--parallel", type=int, default=4, help="slots: requests served at once (default: 4)")
    p.add_argument("-c", "--ctx-size", type=int, default=4096,
                   help="total context in tokens, split evenly over the slots (default: 4096; "
                        "0 = the model's trained context)")
    p.add_argument("-b", "--batch-size", type=int, default=512,
                   help="tokens per forward pass at most, prompt chunks included (default: 512)")
    p.add_argument("-t", "--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("-ngl", "--n-gpu-layers", "--gpu-layers", dest="n_gpu_layers", type=int, default=0,
                   help="layers to offload to a GPU: only 0 (the batched path is CPU only)")
    p.add_argument("--api-key", default=None, help="API keys, comma-separated (default: none)")
    p.add_argument("--api-key-file", default=None, help="file of API keys, one per line ('#' starts a comment)")
    p.add_argument("--chat-template", default=None, help="built-in template name, template file or text "
                                                          "(default: the model's own)")
    p.add_argument("-a", "--alias", default=None, help="model name reported by the API (default: the model path)")
    p.add_argument("--metrics", action="store_true", help="enable the Prometheus /metrics endpoint")
    p.add_argument("-to", "--timeout", type=float, default=600,
                   help="seconds a request may take, queue wait included, before it is cancelled (default: 600)")
    cb = p.add_mutually_exclusive_group()
    cb.add_argument("-cb", "--cont-batching", dest="cont_batching", action="store_true", default=True,
                    help="new requests join the running batch at once (default: enabled)")
    cb.add_argument("-nocb", "--no-cont-batching", dest="cont_batching", action="store_false",
                    help="new requests wait until every slot is idle")
    p.add_argument("--max-queue", type=int, default=64,
                   help="requests that may wait for a slot; beyond them the answer is 503 (default: 64)")
    add_reasoning_args(p, "in message.reasoning_content, delta.reasoning_content when streamed; a "
                          "request's reasoning_format overrides it")
    add_context_shift_args(p, "a request whose slot is full ends with finish_reason length")
    add_cache_type_flags(p)
    return p


def api_keys(args) -> list[str]:
    keys = [k.strip() for k in (args.api_key or "").split(",") if k.strip()]
    if args.api_key_file:
        path = Path(args.api_key_file)
        if not path.is_file():
            raise CLIError(f"--api-key-file: cannot open {path}")
        for line in path.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                keys.append(line)
    return keys


@cli_entry("gguf-server")
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.parallel < 1:
        raise CLIError(f"-np/--parallel must be at least 1, got {args.parallel}")
    if args.keep < -1:
        raise CLIError(f"--keep must be >= -1, got {args.keep}")
    if args.ctx_size < 0 or args.batch_size < 1 or args.max_queue < 0 or args.timeout <= 0:
        raise CLIError("-c must be >= 0, -b >= 1, --max-queue >= 0 and --timeout > 0")
    reasoning = reasoning_flags(args)
    if args.n_gpu_layers != 0:
        raise CLIError("-ngl: gguf-server runs several sequences per forward pass on the CPU only; "
                       "use -ngl 0 (gguf-run offloads a single sequence)")
    import uvicorn

    from ..models import resolve_model
    from ..server.app import ServerSettings, create_app, make_scheduler

    model = str(resolve_model(args.model))
    n_ctx = args.ctx_size
    if n_ctx == 0:
        from ..gguf import GGUFReader
        with GGUFReader(model) as r:
            arch = r.metadata.get("general.architecture")
            n_ctx = int(r.metadata.get(f"{arch}.context_length", 4096))
    settings = ServerSettings(model=model, host=args.host, port=args.port, n_parallel=args.parallel,
                              n_ctx=n_ctx, n_batch=args.batch_size, n_threads=args.threads,
                              api_keys=api_keys(args), chat_template=args.chat_template, alias=args.alias,
                              metrics=args.metrics, timeout=args.timeout, cont_batching=args.cont_batching,
                              max_queue=args.max_queue, cache_type=cache_types_of(args),
                              context_shift=args.context_shift, n_keep=args.keep,
                              reasoning_format=args.reasoning_format, template_kwargs=reasoning.template_kwargs,
                              reasoning_budget=reasoning.budget)
    sched = make_scheduler(settings)
    try:
        app = create_app(settings, sched)
    except ValueError as e:
        raise CLIError(str(e)) from None
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    log = logging.getLogger("gguf_engine.server")
    log.info(f"gguf-server: model {model}, {args.parallel} slots of {settings.n_ctx_slot} tokens "
             f"(-c {n_ctx}), continuous batching {'on' if args.cont_batching else 'off'}")
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="info", timeout_graceful_shutdown=5,
                            lifespan="on")
    server = uvicorn.Server(config)

    def watch_load():
        sched.ready.wait()
        if sched.load_error is not None:
            log.error(f"gguf-server: error: the model failed to load: {sched.load_error}")
            server.should_exit = True
        else:
            log.info(f"gguf-server: model loaded, listening on http://{args.host}:{args.port}")

    threading.Thread(target=watch_load, daemon=True).start()
    # uvicorn handles SIGTERM / SIGINT while it runs and re-raises them when it has shut down; these
    # handlers take that re-raised signal, so a requested stop exits with status 0
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server.run()
    if sched.load_error is not None:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
