"""Reference renderings of chat templates by llama-server's /apply-template, for tests/test_reasoning.py.

    python tools/make_chat_references.py --server LLAMA_BUILD/bin/llama-server --model tiny.gguf \\
        --template gpt-oss=tests/data/templates/gpt-oss.jinja

For each template, llama-server is started with ``--jinja --chat-template-file`` and asked to render
the conversations below (earlier assistant turns with ``reasoning_content`` and ``tool_calls``, as
clients send them back).  The rendered prompts go to tests/data/chat-template-references.json; the
template's date line (it reads the clock) is left for the test to mask.  Any small model will do: only
its vocabulary's BOS/EOS texts reach the template.
"""
from __future__ import annotations

import argparse
import json
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "data" / "chat-template-references.json"

WEATHER = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                             "parameters": {"type": "object",
                                                            "properties": {"city": {"type": "string"}},
                                                            "required": ["city"]}}}]
CONVERSATIONS = {
    "reasoning_then_answer": {"messages": [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4.", "reasoning_content": "Simple sum."},
        {"role": "user", "content": "And 3+3?"}]},
    "tool_call_round": {"tools": WEATHER, "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "reasoning_content": "I should call get_weather.",
         "tool_calls": [{"id": "call_1", "type": "function",
                         "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": 20}"}]},
    "tool_call_then_final": {"tools": WEATHER, "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "reasoning_content": "Call the tool.",
         "tool_calls": [{"id": "call_1", "type": "function",
                         "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": 20}"},
        {"role": "assistant", "content": "It is 20 degrees.", "reasoning_content": "Report it."},
        {"role": "user", "content": "Thanks"}]},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def render_all(server: str, model: str, template: Path) -> dict[str, str]:
    port = _free_port()
    proc = subprocess.Popen([server, "-m", model, "--port", str(port), "--jinja", "--chat-template-file",
                             str(template), "-c", "512", "-np", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        return {name: _post(url + "/apply-template", conv)["prompt"] for name, conv in CONVERSATIONS.items()}
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server", required=True, help="llama-server binary")
    ap.add_argument("--model", required=True, help="any small GGUF model")
    ap.add_argument("--template", action="append", required=True, help="NAME=PATH of a chat template file")
    args = ap.parse_args()
    out = {"conversations": CONVERSATIONS, "prompts": {}}
    for spec in args.template:
        name, path = spec.split("=", 1)
        out["prompts"][name] = render_all(args.server, args.model, Path(path))
    OUT.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
