"""gguf-run on the tiny F32 llama fixture: help, errors and exit codes, streaming, timings, chat turns.

Most tests call ``main(argv)`` in-process (fast, shares the JIT cache); one runs the module as a
subprocess to check that a bad model path gives exit status 1 and no traceback.
Comparisons are exact (texts, exit codes, presence of log lines).
"""
from __future__ import annotations

import io
import subprocess
import sys

import pytest

from gguf_engine import Llama
from gguf_engine.cli.run import main
from gguf_engine.generation.generate import Engine, TokenEvent

from .conftest import ROOT, fixture_path


@pytest.fixture(scope="module")
def tiny() -> str:
    return str(fixture_path("models", "tiny-llama-f32.gguf"))


def run(argv, capsys, stdin: str | None = None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main(argv)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_help_shows_examples(capsys):
    code, out, _ = run(["--help"], capsys)
    assert code == 0
    assert "examples:" in out and "gguf-run -p" in out and "--n-predict" in out


def test_bad_model_path_exits_1_without_traceback(tmp_path):
    bad = tmp_path / "missing.gguf"
    res = subprocess.run([sys.executable, "-m", "gguf_engine.cli.run", "-m", str(bad), "-p", "hi"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300, stdin=subprocess.DEVNULL)
    assert res.returncode == 1
    assert "error:" in res.stderr and "missing.gguf" in res.stderr
    assert "Traceback" not in res.stderr + res.stdout


def test_not_a_gguf_file_exits_1(tmp_path, capsys):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all")
    code, _, err = run(["-m", str(junk), "-p", "hi"], capsys)
    assert code == 1 and "error: failed to load model" in err


@pytest.mark.parametrize("argv, message", [
    (["--top-p", "2"], "--top-p"),
    (["-f", "no/such/prompt.txt"], "cannot read prompt file"),
    (["-c", "8", "-p", "word " * 40], "context"),
    ([], "no prompt given"),
])
def test_bad_input_exits_1(tiny, capsys, argv, message, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    code, _, err = run(["-m", tiny, "-no-cnv"] + argv, capsys)
    assert code == 1 and message in err
    assert "Traceback" not in err


def test_unknown_flag_exits_1(capsys):
    code, _, err = run(["--no-such-flag"], capsys)
    assert code == 1 and "unrecognized arguments" in err


def test_completion_streams_text_and_prints_timings(tiny, capsys):
    """Greedy completion: stdout = prompt + the same text the API gives; stderr has the summary."""
    code, out, err = run(["-m", tiny, "-p", "Hello world", "-n", "10", "--temp", "0", "-c", "128"], capsys)
    assert code == 0
    with Llama(tiny, n_ctx=128) as llm:
        want = llm("Hello world", max_tokens=10, temperature=0.0)["choices"][0]["text"]
    assert out == "Hello world" + want + "\n"
    assert "offloaded 0/5 layers to GPU" in err
    for key in ("load time =", "prompt eval time =", "eval time =", "total time =", "tokens per second"):
        assert key in err
    assert "mode = completion" in err  # the fixture has no chat template


def test_prompt_from_file_and_seed_reproducibility(tiny, tmp_path, capsys):
    f = tmp_path / "p.txt"
    f.write_text("Once upon a time", encoding="utf-8")
    argv = ["-m", tiny, "-f", str(f), "-n", "12", "-s", "99", "--ignore-eos", "--no-display-prompt", "-c", "128"]
    code1, out1, err1 = run(argv, capsys)
    code2, out2, _ = run(argv, capsys)
    assert code1 == code2 == 0 and out1 == out2 and len(out1) > 1
    assert "sampler seed: 99" in err1


def test_ctrl_c_stops_cleanly_with_summary(tiny, capsys, monkeypatch):
    """A KeyboardInterrupt during generation: exit status 130, text so far kept, summary printed."""
    real_stream = Engine.stream

    def interrupted(self, *a, **k):
        for i, ev in enumerate(real_stream(self, *a, **k)):
            if i == 2:
                raise KeyboardInterrupt
            yield ev

    monkeypatch.setattr(Engine, "stream", interrupted)
    code, out, err = run(["-m", tiny, "-p", "Hi", "-n", "20", "-c", "64"], capsys)
    assert code == 130
    assert out.startswith("Hi")
    assert "total time =" in err and "Traceback" not in err


def test_conversation_reads_turns_from_stdin_and_reuses_cache(tiny, capsys, monkeypatch):
    """-cnv with piped stdin: one answer per line, ends at end of input; turn 2 reuses turn 1's cache."""
    code, out, err = run(["-m", tiny, "-cnv", "--chat-template", "chatml", "-sys", "Be brief.",
                          "-n", "4", "--temp", "0", "--ignore-eos", "-c", "256", "--verbose"],
                         capsys, stdin="hello\n\nhow are you\n", monkeypatch=monkeypatch)
    assert code == 0
    assert "mode = conversation" in err
    turns = [line for line in err.splitlines() if line.startswith("[prompt:")]
    assert len(turns) == 2
    reused = int(turns[1].split(",")[1].split()[0])
    assert reused > 0


def test_conversation_goes_on_past_the_context_with_context_shift(tiny, capsys, monkeypatch):
    """-cnv --context-shift in a 128-token context: five turns of 30 generated tokens each (far more
    than fits) all get their answer, each turn appended to the shifted cache; without the flag the
    conversation stops at the full context."""
    argv = ["-m", tiny, "-cnv", "--chat-template", "chatml", "-sys", "Be brief.", "-n", "30", "--temp", "0",
            "--ignore-eos", "-c", "128", "--verbose"]
    turns_in = "".join(f"question number {i}\n" for i in range(5))
    code, out, err = run(argv + ["--context-shift", "--keep", "4"], capsys, stdin=turns_in, monkeypatch=monkeypatch)
    assert code == 0, err
    turns = [line for line in err.splitlines() if line.startswith("[prompt:")]
    assert len(turns) == 5 and all("stop: max_tokens" in t for t in turns), err
    assert "context full" not in err
    code, out, err = run(argv, capsys, stdin=turns_in, monkeypatch=monkeypatch)
    assert code == 0 and "context full" in err


def test_single_chat_turn_with_template_does_not_read_stdin(tiny, capsys, monkeypatch):
    """A prompt plus a chat template: one formatted turn and exit, stdin untouched."""
    class NoStdin(io.StringIO):
        def readline(self, *a):
            raise AssertionError("stdin must not be read")
    monkeypatch.setattr(sys, "stdin", NoStdin())
    code, out, err = run(["-m", tiny, "--chat-template", "chatml", "-p", "hi", "-n", "3", "--ignore-eos",
                          "-c", "128"], capsys)
    assert code == 0 and "mode = single chat turn" in err
    assert not out.startswith("hi")  # the answer only, not the prompt


def test_chat_shows_reasoning_apart(tiny, tmp_path, capsys, monkeypatch):
    """A <think> answer (forced by a grammar) under a Qwen3-style template: printed as llama-cli
    prints it, the reasoning between [Start thinking] and [End thinking], then the answer; with
    --reasoning-format none as written; --reasoning-budget 0 forces </think> as soon as <think>
    is written (the grammar lets it through), so nothing is shown as reasoning."""
    from .test_reasoning import QWEN3
    tmpl = tmp_path / "qwen3.jinja"
    tmpl.write_text(QWEN3)
    text = "<think>\nI'm thinking\n</think>\n\nHello!"
    argv = ["-m", tiny, "--chat-template", str(tmpl), "-p", "hi", "-c", "256", "--grammar",
            "root ::= " + __import__("json").dumps(text)]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    assert out == "\n[Start thinking]\n\nI'm thinking\n[End thinking]\n\nHello!\n"
    code, out, err = run(argv + ["--reasoning-format", "none"], capsys)
    assert code == 0 and out == text + "\n"
    free = argv[:-1] + ["root ::= \"<think>\" [a-zA-Z' \\n]* \"</think>\\n\\nHello!\""]
    code, out, err = run(free + ["--reasoning-budget", "0", "--reasoning-format", "none"], capsys)
    assert code == 0 and out == "<think></think>\n\nHello!\n", err
    code, out, err = run(free + ["--reasoning-budget", "0"], capsys)
    assert code == 0 and out == "Hello!\n", err
