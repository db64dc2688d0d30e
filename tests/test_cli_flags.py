"""Every command-line flag, table-driven: each flag gguf-run and gguf-bench implement is run and
its effect checked; every other llama.cpp flag is refused by name with exit status 1 (multi-letter
short flags such as -fa are read whole, never as -f a).  Tiny F32 llama fixture; exact checks.
"""
from __future__ import annotations

import io
import json
import sys

import pytest

from gguf_engine.cli import bench as bench_cli
from gguf_engine.cli import run as run_cli
from gguf_engine.cli._common import RefuseFlag
from gguf_engine.cli.llama_flags import BENCH, COMMON

from .conftest import fixture_path

P = "Hello"
BASE = ["-n", "4", "--temp", "0", "-c", "128", "--ignore-eos", "-no-cnv"]


@pytest.fixture(scope="module")
def tiny() -> str:
    return str(fixture_path("models", "tiny-llama-f32.gguf"))


def implemented(parser) -> list[set[str]]:
    """The option strings of each implemented flag (aliases together)."""
    return [set(a.option_strings) for a in parser._actions if a.option_strings and not isinstance(a, RefuseFlag)]


def call(main, argv, capsys, monkeypatch, stdin=""):
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main(argv)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def gen(out: str, prompt: str = P) -> str:
    """The generated part of a completion's stdout (after the echoed prompt, before the final newline)."""
    assert out.startswith(prompt), out
    return out[len(prompt):-1]


def greedy(tiny, capsys, monkeypatch) -> str:
    return gen(call(run_cli.main, ["-m", tiny, "-p", P] + BASE, capsys, monkeypatch)[1])


# (flags covered, extra argv, stdin, check(code, out, err, ctx)); ctx has the model path, a tmp dir and greedy text
RUN_CASES = [
    ({"-h"}, ["-h"], "", lambda c, o, e, x: c == 0 and "examples:" in o),
    ({"-m", "-p", "-n", "--temp", "-c", "--ignore-eos", "-no-cnv"}, [], "",
     lambda c, o, e, x: c == 0 and gen(o) == x["greedy"] and "n_ctx = 128" in e and "n_predict = 4" in e),
    ({"-b"}, ["-b", "7"], "", lambda c, o, e, x: c == 0 and "n_batch = 7" in e and gen(o) == x["greedy"]),
    ({"-t"}, ["-t", "1"], "", lambda c, o, e, x: c == 0 and "n_threads = 1" in e),
    ({"-ngl"}, ["-ngl", "0"], "", lambda c, o, e, x: c == 0 and gen(o) == x["greedy"]),
    ({"-ctk", "-ctv"}, ["-ctk", "f16", "-ctv", "f16"], "", lambda c, o, e, x: c == 0 and "type_k = f16, type_v = f16" in e),
    ({"-ctk", "-ctv"}, ["-ctk", "q8_0", "-ctv", "q4_0"], "",
     lambda c, o, e, x: c == 0 and "type_k = q8_0, type_v = q4_0" in e),
    ({"-ctv"}, ["-ctv", "q8_0", "-fa", "off"], "",
     lambda c, o, e, x: c == 1 and "quantized V cache (q8_0) requires flash attention" in e),
    ({"-ctk"}, ["-ctk", "q3_k"], "", lambda c, o, e, x: c == 1 and "q3_k" in e),
    ({"-fa"}, ["-fa", "on"], "", lambda c, o, e, x: c == 0 and "-fa on" in e and gen(o) == x["greedy"]),
    ({"--no-display-prompt"}, ["--no-display-prompt"], "", lambda c, o, e, x: c == 0 and o == x["greedy"] + "\n"),
    ({"-e"}, ["-e", "-p", "a\\tb"], "", lambda c, o, e, x: c == 0 and o.startswith("a\tb")),
    ({"--no-escape"}, ["--no-escape", "-p", "a\\tb"], "", lambda c, o, e, x: c == 0 and o.startswith("a\\tb")),
    ({"-f"}, ["-f", "{tmp}/prompt.txt"], "", lambda c, o, e, x: c == 0 and gen(o) == x["greedy"]),
    ({"-s"}, ["-s", "7", "--temp", "1"], "", lambda c, o, e, x: c == 0 and "sampler seed: 7" in e),
    ({"--top-k"}, ["--top-k", "1", "--temp", "1", "-s", "3"], "", lambda c, o, e, x: c == 0 and gen(o) == x["greedy"]),
    ({"--top-p"}, ["--top-p", "0", "--temp", "1", "-s", "3"], "", lambda c, o, e, x: c == 0 and gen(o) == x["greedy"]),
    ({"--min-p"}, ["--min-p", "1", "--temp", "1", "-s", "3"], "", lambda c, o, e, x: c == 0 and gen(o) == x["greedy"]),
    ({"--repeat-penalty", "--repeat-last-n", "--frequency-penalty", "--presence-penalty"},
     ["--repeat-penalty", "1.5", "--repeat-last-n", "8", "--frequency-penalty", "0.5", "--presence-penalty", "0.25"], "",
     lambda c, o, e, x: c == 0 and "repeat_last_n = 8, repeat_penalty = 1.500, frequency_penalty = 0.500, "
                                   "presence_penalty = 0.250" in e),
    ({"--mirostat", "--mirostat-lr", "--mirostat-ent"},
     ["--mirostat", "2", "--mirostat-lr", "0.2", "--mirostat-ent", "3", "--temp", "1"], "",
     lambda c, o, e, x: c == 0 and "temp -> mirostat-v2" in e),
    ({"--mirostat"}, ["--mirostat", "3"], "", lambda c, o, e, x: c == 1 and "--mirostat must be" in e),
    ({"-l"}, ["-l", "0+100", "-n", "3"], "", lambda c, o, e, x: c == 0 and "logit-bias" in e),
    ({"--grammar"}, ["--grammar", 'root ::= "abc"', "-n", "20"], "", lambda c, o, e, x: c == 0 and gen(o) == "abc"),
    ({"--grammar-file"}, ["--grammar-file", "{tmp}/g.gbnf", "-n", "20"], "",
     lambda c, o, e, x: c == 0 and gen(o) == "xy"),
    ({"-j"}, ["-j", '{"enum": ["yes"]}', "-n", "20"], "", lambda c, o, e, x: c == 0 and gen(o) == '"yes"'),
    ({"-jf"}, ["-jf", "{tmp}/s.json", "-n", "20"], "", lambda c, o, e, x: c == 0 and json.loads(gen(o)) == 5),
    ({"-r"}, ["-r", "yy", "--grammar", "root ::= [xy]+", "--temp", "1", "-s", "1", "-n", "100"], "",
     lambda c, o, e, x: c == 0 and "yy" in gen(o) and len(gen(o)) - gen(o).index("yy") <= 4),
    ({"-i", "--in-prefix", "--in-suffix"}, ["-i", "--in-prefix", "[P]", "--in-suffix", "[S]"], "more\n",
     lambda c, o, e, x: c == 0 and "[P][S]" in o and "interactive completion" in e),
    ({"-if"}, ["-if", "-p", ""], "go\n", lambda c, o, e, x: c == 0 and "interactive completion" in e),
    ({"-sp"}, ["-sp"], "", lambda c, o, e, x: c == 0 and gen(o) == x["greedy"]),
    ({"-cnv", "-sys", "--chat-template"}, ["-cnv", "-sys", "be brief", "--chat-template", "chatml"], "hi\n",
     lambda c, o, e, x: c == 0 and "mode = conversation" in e),
    ({"-st"}, ["-cnv", "-st", "--chat-template", "chatml"], "hi\nagain\n",
     lambda c, o, e, x: c == 0 and o.count("\n") == 1),
    ({"-sysf", "--chat-template-file"}, ["-cnv", "-sysf", "{tmp}/sys.txt", "--chat-template-file", "{tmp}/t.jinja"],
     "hi\n", lambda c, o, e, x: c == 0 and "chat template: given" in e),
    ({"-v"}, ["-v"], "", lambda c, o, e, x: c == 0 and "[prompt:" in e and "CPU_REPACK model buffer size" in e
     and "llama_kv_cache: size =" in e and "compute buffer size" in e and "resident set after load" in e),
    ({"--no-perf"}, ["--no-perf"], "", lambda c, o, e, x: c == 0 and "total time" not in e),
    ({"--context-shift", "--keep"}, ["--context-shift", "--keep", "1", "-c", "16", "-n", "40", "-v"], "",
     lambda c, o, e, x: c == 0 and "stop: max_tokens" in e and "context full" not in e),
    ({"--no-context-shift"}, ["--no-context-shift", "-c", "16", "-n", "40"], "",
     lambda c, o, e, x: c == 0 and "context full" in e),
    ({"--keep"}, ["--keep", "-2"], "", lambda c, o, e, x: c == 1 and "--keep must be" in e),
    ({"--reasoning-format"}, ["-cnv", "-st", "--chat-template-file", "{tmp}/think.jinja", "-n", "64", "--grammar",
                              'root ::= "<think>a</think>b"', "--reasoning-format", "none"], "hi\n",
     lambda c, o, e, x: c == 0 and o == "<think>a</think>b\n"),
    ({"--reasoning-format"}, ["-cnv", "-st", "--chat-template-file", "{tmp}/think.jinja", "-n", "64", "--grammar",
                              'root ::= "<think>a</think>b"'], "hi\n",
     lambda c, o, e, x: c == 0 and o == "\n[Start thinking]\n\na\n[End thinking]\n\nb\n"),
    ({"--reasoning-budget", "--reasoning-budget-message"},
     ["-cnv", "-st", "--chat-template-file", "{tmp}/think.jinja", "-n", "64", "--grammar",
      'root ::= "<think>" [a-y]* "z"? "</think>b"', "--reasoning-budget", "0", "--reasoning-budget-message", "z",
      "--reasoning-format", "none"], "hi\n", lambda c, o, e, x: c == 0 and o == "<think>z</think>b\n"),
    ({"--reasoning-budget"}, ["--reasoning-budget", "-3"], "",
     lambda c, o, e, x: c == 1 and "--reasoning-budget must be -1" in e),
    ({"-rea", "--reasoning"}, ["-cnv", "-st", "--chat-template-file", "{tmp}/switch.jinja", "-n", "8", "-rea", "off",
                               "--grammar", 'root ::= "b"'], "hi\n", lambda c, o, e, x: c == 0 and o == "b\n"),
    ({"--reasoning"}, ["--reasoning", "maybe"], "", lambda c, o, e, x: c == 1 and "--reasoning" in e),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("flags")
    (d / "prompt.txt").write_text(P)
    (d / "g.gbnf").write_text('root ::= "x" "y"\n')
    (d / "s.json").write_text('{"const": 5}')
    (d / "sys.txt").write_text("be brief")
    (d / "t.jinja").write_text("{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}assistant:")
    (d / "think.jinja").write_text("{% for m in messages %}{{ m.content }}{% endfor %}{# <think> </think> #}")
    # a template that refuses to render unless thinking is switched off
    (d / "switch.jinja").write_text("{% if enable_thinking %}{{ raise_exception('thinking on') }}{% endif %}"
                                    "{% for m in messages %}{{ m.content }}{% endfor %}")
    return d


@pytest.mark.parametrize("case", range(len(RUN_CASES)), ids=[" ".join(sorted(c[0])) for c in RUN_CASES])
def test_run_flag(case, tiny, files, capsys, monkeypatch):
    flags, extra, stdin, check = RUN_CASES[case]
    ctx = {"greedy": greedy(tiny, capsys, monkeypatch)}
    argv = ["-m", tiny, "-p", P] + BASE + [a.replace("{tmp}", str(files)) for a in extra]
    if "-cnv" in extra:
        argv.remove("-no-cnv")
    code, out, err = call(run_cli.main, argv, capsys, monkeypatch, stdin)
    assert check(code, out, err, ctx), (code, out, err)


def test_every_run_flag_has_a_case():
    covered = set().union(*(c[0] for c in RUN_CASES))
    for names in implemented(run_cli.build_parser()):
        assert names & covered, f"no table case for {sorted(names)}"


@pytest.mark.parametrize("flag", sorted(set(COMMON) - set().union(*implemented(run_cli.build_parser()))))
def test_run_refuses_other_llama_flags_by_name(flag, capsys):
    code = run_cli.main([flag, "1"])
    err = capsys.readouterr().err
    assert code == 1 and f"the llama.cpp option {flag} is not implemented" in err or "no model hub" in err


@pytest.mark.parametrize("flag", ["-fa", "-ctk", "-ctv", "-sp", "-sys", "-sysf", "-tb", "-ub", "-np", "-md", "-hf",
                                  "-mli", "-ptc", "-ofreq", "-cnv", "-no-cnv", "-st"])
def test_multi_letter_short_flags_are_read_whole(flag, capsys):
    """Each is either implemented (not misread as a one-letter flag with a value) or refused by name."""
    action = next(a for a in run_cli.build_parser()._actions if flag in a.option_strings)
    assert flag in action.option_strings
    if isinstance(action, RefuseFlag):
        assert run_cli.main([flag, "x"]) == 1 and flag in capsys.readouterr().err


def test_hub_flag_points_to_the_registry(capsys):
    assert run_cli.main(["-hf", "org/model"]) == 1
    err = capsys.readouterr().err
    assert "no model hub is reachable" in err and "smollm2-135m-instruct" in err
    assert bench_cli.main(["-hf", "org/model"]) == 1


BENCH_CASES = [
    ({"-h"}, ["-h"], lambda c, o, x: c == 0 and "examples:" in o),
    ({"-m", "-p", "-n", "-r", "-t"}, ["-p", "8,16", "-n", "2", "-r", "1", "-t", "1,2"],
     lambda c, o, x: c == 0 and [ln.split("|")[6].strip() for ln in o.splitlines()[2:8]]
     == ["pp8", "pp16", "tg2", "pp8", "pp16", "tg2"]),
    ({"-pg"}, ["-p", "0", "-n", "0", "-pg", "8,2", "-r", "1"], lambda c, o, x: c == 0 and "pp8+tg2" in o),
    ({"-b"}, ["-p", "8", "-n", "0", "-b", "4", "-r", "1", "-o", "json"],
     lambda c, o, x: c == 0 and json.loads(o)[0]["n_batch"] == 4),
    ({"-ngl"}, ["-p", "8", "-n", "0", "-ngl", "0", "-r", "1", "-o", "jsonl"],
     lambda c, o, x: c == 0 and json.loads(o.splitlines()[0])["n_gpu_layers"] == 0),
    ({"-o"}, ["-p", "8", "-n", "2", "-r", "2", "-o", "json"],
     lambda c, o, x: c == 0 and [r["n_prompt"] for r in json.loads(o)] == [8, 0]
     and all(len(r["samples_ns"]) == 2 and r["avg_ts"] > 0 and "model_n_params" in r for r in json.loads(o))),
    ({"-o"}, ["-p", "8", "-n", "0", "-r", "1", "-o", "csv"], lambda c, o, x: c == 0 and o.startswith("build_commit,")),
    ({"-p"}, ["-p", "x"], lambda c, o, x: c == 1),
    ({"-ctk", "-ctv"}, ["-p", "8", "-n", "2", "-r", "1", "-ctk", "f16,q8_0", "-ctv", "q4_0", "-o", "json"],
     lambda c, o, x: c == 0 and [(r["type_k"], r["type_v"]) for r in json.loads(o)][::2]
     == [("f16", "q4_0"), ("q8_0", "q4_0")]),
    ({"-ctk"}, ["-ctk", "q2_k"], lambda c, o, x: c == 1),
    ({"-c"}, ["-p", "8", "-n", "0", "-r", "1", "-c", "64", "-ctk", "q8_0"],
     lambda c, o, x: c == 0 and "| q8_0 " in o),
    ({"-c"}, ["-p", "8", "-n", "0", "-r", "1", "-c", "4"], lambda c, o, x: c == 1),
    ({"-d"}, ["-p", "8", "-n", "2", "-d", "0,16", "-r", "1"],
     lambda c, o, x: c == 0 and [ln.split("|")[6].strip() for ln in o.splitlines()[2:6]]
     == ["pp8", "tg2", "pp8 @ d16", "tg2 @ d16"]),
    ({"-d"}, ["-p", "8", "-n", "0", "-d", "16", "-r", "1", "-o", "json"],
     lambda c, o, x: c == 0 and [(r["n_prompt"], r["n_depth"]) for r in json.loads(o)] == [(8, 16)]),
    ({"-d"}, ["-p", "0", "-n", "2", "-d", "16", "-r", "1", "-o", "csv"],
     lambda c, o, x: c == 0 and dict(zip(*[ln.split(",") for ln in o.splitlines()[:2]]))["n_depth"] == "16"),
    ({"-d"}, ["-d", "-1"], lambda c, o, x: c == 1),
    ({"-d"}, ["-d", "x"], lambda c, o, x: c == 1),
    ({"-d"}, ["-p", "8", "-n", "0", "-d", "16", "-r", "1", "-c", "20"], lambda c, o, x: c == 1),
]


@pytest.mark.parametrize("case", range(len(BENCH_CASES)), ids=[" ".join(sorted(c[0])) for c in BENCH_CASES])
def test_bench_flag(case, tiny, capsys, monkeypatch):
    _, extra, check = BENCH_CASES[case]
    code, out, err = call(bench_cli.main, ["-m", tiny] + extra, capsys, monkeypatch)
    assert check(code, out, {}), (code, out, err)


def test_every_bench_flag_has_a_case():
    """--cold is left out: it compiles every kernel in a fresh process (minutes); the benchmark tools cover it."""
    covered = set().union(*(c[0] for c in BENCH_CASES)) | {"--cold"}
    for names in implemented(bench_cli.build_parser()):
        assert names & covered, f"no table case for {sorted(names)}"


@pytest.mark.parametrize("flag", sorted(set(BENCH) - set().union(*implemented(bench_cli.build_parser()))))
def test_bench_refuses_other_llama_bench_flags_by_name(flag, capsys):
    assert bench_cli.main([flag, "1"]) == 1
    assert flag in capsys.readouterr().err


@pytest.mark.parametrize("prog", ["perplexity", "imatrix"])
@pytest.mark.parametrize("flag", ["-fa", "-ctk", "-ctv", "-tb", "-ub", "-np", "-hf", "-sp"])
def test_other_llama_tools_read_multi_letter_flags_whole(prog, flag, capsys):
    """gguf-perplexity and gguf-imatrix take llama.cpp's common flags too: the ones they do not
    implement are refused by name (exit status 1), never read as a one-letter flag with a value."""
    import importlib
    main = importlib.import_module(f"gguf_engine.cli.{prog}").main
    assert main(["-m", "x", flag, "1"]) == 1
    assert flag in capsys.readouterr().err
