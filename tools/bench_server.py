"""Server benchmark: N concurrent streaming clients against gguf-server and llama-server.

    python tools/bench_server.py [-m MODEL] [-t THREADS] [--clients 1,2,4,8,16] [--gen 128]
                                 [--llama-server PATH] [--rounds R] [--ctx-per-slot C]

For each N, each server is started with -np N, -c N*C and the same threads, and N clients each
stream one completion of a distinct ~100-token prompt, generating --gen tokens (ignore_eos, so
every client generates them all; temperature 0).  The two servers alternate, --rounds times
per N, and the best round of each is kept (the machine may be shared; say so with the numbers).

Reported per server and N:
  agg t/s      all generated tokens / wall time from the first request to the last token
  TTFT p50/p95 time to the first streamed token of each client, in ms
  client t/s   median over clients of generated tokens / that client's time after its first token
and, with --llama-server, the ratios ours / llama-server.  A warm-up request runs first on each
start (the Numba cache and llama-server's first pass), outside the timings.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import httpx

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

from gguf_engine.models import DEFAULT_MODEL, resolve_model  # noqa: E402

PASSAGE = ("The river rose slowly through the night, and by morning the low fields beside the old mill were "
           "under water. The miller's daughter walked along the embankment with a lantern, counting the "
           "posts that still stood above the current, and wondered whether the bridge would hold until the "
           "carts from the northern villages had crossed. Somewhere upstream a bell was ringing.")


def prompt(i: int) -> str:
    """A distinct prompt of about 100 tokens for client i (different from its first words on)."""
    return f"Story {i} of many, told by narrator number {i * 7919 % 1000}. {PASSAGE} Continue the story:"


@dataclass
class ClientResult:
    ttft: float          # seconds from sending to the first token
    t_end: float         # seconds from the load's start to the last token
    n_tokens: int
    gen_time: float      # seconds from the first token to the last


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], url: str, log) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{cmd[0]} exited with {proc.returncode}; see its log")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"{cmd[0]} did not become healthy in 300 s")


def stream_one(url: str, text: str, n_gen: int, t0: float, out: list, i: int) -> None:
    body = {"prompt": text, "max_tokens": n_gen, "temperature": 0, "stream": True, "ignore_eos": True,
            "n_predict": n_gen}
    sent = time.perf_counter()
    first = None
    n = 0
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(chunk["error"])
            ch = chunk.get("choices") or []
            if ch and (ch[0].get("text") or ch[0].get("finish_reason") is None):
                if first is None:
                    first = time.perf_counter()
                n += 1
            usage = chunk.get("usage")
            if usage:
                n = usage.get("completion_tokens", n)
    end = time.perf_counter()
    out[i] = ClientResult(first - sent, end - t0, n, max(end - first, 1e-9))


def run_load(url: str, n_clients: int, n_gen: int) -> dict:
    out: list = [None] * n_clients
    t0 = time.perf_counter()
    threads = [threading.Thread(target=stream_one, args=(url, prompt(i), n_gen, t0, out, i))
               for i in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if any(r is None for r in out):
        raise SystemExit("a client failed")
    ttfts = sorted(r.ttft for r in out)
    wall = max(r.t_end for r in out)
    return {"agg": sum(r.n_tokens for r in out) / wall,
            "ttft_p50": statistics.median(ttfts) * 1000,
            "ttft_p95": ttfts[min(len(ttfts) - 1, int(round(0.95 * (len(ttfts) - 1))))] * 1000,
            "client": statistics.median(r.n_tokens / r.gen_time for r in out),
            "tokens": sum(r.n_tokens for r in out)}


def bench_server(kind: str, exe: str, model: str, n: int, threads: int, ctx: int, n_gen: int) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    common = ["-m", model, "--port", str(port), "-np", str(n), "-c", str(n * ctx), "-t", str(threads)]
    cmd = ([sys.executable, "-m", "gguf_engine.cli.server", *common] if kind == "gguf-server"
           else [exe, *common, "-ngl", "0", "--no-webui"])
    with open(f"/tmp/bench_server_{kind}.log", "ab") as log:
        proc = start(cmd, url, log)
        try:
            run_load(url, 1, 4)                                  # warm-up
            return run_load(url, n, n_gen)
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", default=DEFAULT_MODEL)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--clients", default="1,2,4,8,16")
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--ctx-per-slot", type=int, default=512)
    ap.add_argument("--llama-server", default=None, help="path of llama-server to compare with")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    model = str(resolve_model(args.model))
    kinds = ["gguf-server"] + (["llama-server"] if args.llama_server else [])
    results: dict = {}
    for n in [int(x) for x in args.clients.split(",")]:
        for rnd in range(args.rounds):
            for kind in kinds:                                   # alternating, one round at a time
                r = bench_server(kind, args.llama_server, model, n, args.threads, args.ctx_per_slot, args.gen)
                print(f"N={n} round {rnd + 1} {kind}: {r['agg']:.1f} t/s, TTFT p50 {r['ttft_p50']:.0f} ms",
                      file=sys.stderr, flush=True)
                best = results.setdefault((n, kind), r)
                if r["agg"] > best["agg"]:
                    results[(n, kind)] = r
    print(f"\nmodel {os.path.basename(model)}, {args.threads} threads, {args.gen} tokens per client, "
          f"best of {args.rounds} alternating rounds\n")
    print("| N | server | agg t/s | TTFT p50 ms | TTFT p95 ms | client t/s | agg vs llama-server | TTFT p50 vs llama-server |")
    print("|---|---|---|---|---|---|---|---|")
    for (n, kind), r in sorted(results.items(), key=lambda kv: (kv[0][0], kv[0][1] != "gguf-server")):
        ref = results.get((n, "llama-server"))
        ratio = f"{r['agg'] / ref['agg']:.2f}x" if ref and kind == "gguf-server" else ""
        tratio = f"{r['ttft_p50'] / ref['ttft_p50']:.2f}x" if ref and kind == "gguf-server" else ""
        print(f"| {n} | {kind} | {r['agg']:.1f} | {r['ttft_p50']:.0f} | {r['ttft_p95']:.0f} | {r['client']:.1f} "
              f"| {ratio} | {tratio} |")
    one = results.get((1, "gguf-server"))
    eight = results.get((8, "gguf-server"))
    if one and eight:
        print(f"\ngguf-server aggregate at 8 clients / at 1 client: {eight['agg'] / one['agg']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({f"{n}/{k}": v for (n, k), v in results.items()}, f, indent=2)


if __name__ == "__main__":
    main()
