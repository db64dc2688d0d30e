"""Constrained decoding: JSON schemas on both real models, llama.cpp's GBNF grammars, clear errors.

Checks are exact: generated JSON must parse and validate against its schema (jsonschema); grammar
outputs must parse (json.loads, the list and arithmetic line shapes, or the grammar itself for c and
chess).  max_tokens stays modest and the schemas bound their strings and arrays so that every
answer completes within it.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest

from gguf_engine import Llama
from gguf_engine.generation.grammar import Constraint, Grammar, GrammarError

GRAMMARS = Path(__file__).parent / "data" / "grammars"
S = {"type": "string", "maxLength": 12}

SCHEMAS = [
    {"type": "object", "properties": {"name": S, "age": {"type": "integer", "minimum": 0, "maximum": 120}},
     "required": ["name", "age"]},
    {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]},
    {"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]}}, "required": ["color"]},
    {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 9}, "minItems": 1, "maxItems": 3},
    {"type": "object", "properties": {"tags": {"type": "array", "items": S, "maxItems": 2}}, "required": ["tags"]},
    {"type": "object", "properties": {"point": {"type": "object", "properties": {
        "x": {"type": "integer", "minimum": -9, "maximum": 9}, "y": {"type": "integer", "minimum": -9, "maximum": 9}},
        "required": ["x", "y"]}}, "required": ["point"]},
    {"type": "object", "properties": {"city": S, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
     "required": ["city", "zip"]},
    {"type": "object", "properties": {"title": S, "year": {"type": "integer", "minimum": 1900, "maximum": 2030},
                                      "note": S}, "required": ["title", "year"]},
    {"type": "object", "properties": {"a": {"type": "number", "minimum": 0, "maximum": 1, "multipleOf": 0.25}}, "required": ["a"]},
    {"enum": ["yes", "no"]},
    {"type": "integer", "minimum": 10, "maximum": 99},
    {"type": "object", "properties": {"status": {"const": "done"}, "count": {"type": "integer", "minimum": 0,
                                                                             "maximum": 5}},
     "required": ["status", "count"]},
    {"type": "object", "properties": {"items": {"type": "array", "maxItems": 2, "items": {
        "type": "object", "properties": {"id": {"type": "integer", "minimum": 0, "maximum": 99}, "label": S},
        "required": ["id", "label"]}}}, "required": ["items"]},
    {"type": "object", "properties": {"value": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 9},
                                                          {"type": "boolean"}]}}, "required": ["value"]},
    {"type": "object", "properties": {"maybe": {"type": ["string", "null"], "maxLength": 8}}, "required": ["maybe"]},
    {"type": "object", "properties": {"first": S, "last": S, "middle": S}, "required": ["first", "last"]},
    {"type": "object", "properties": {"grid": {"type": "array", "maxItems": 2, "items": {
        "type": "array", "maxItems": 2, "items": {"type": "integer", "minimum": 0, "maximum": 9}}}}, "required": ["grid"]},
    {"type": "object", "properties": {"price": {"type": "number", "minimum": 0, "maximum": 100, "multipleOf": 0.01},
                                      "currency": {"enum": ["EUR", "USD"]}}, "required": ["price", "currency"]},
    {"type": "object", "properties": {"user": {"type": "object", "properties": {"name": S, "admin": {"type": "boolean"}},
                                               "required": ["name", "admin"]}, "active": {"type": "boolean"}},
     "required": ["user", "active"]},
    {"type": "object", "properties": {"letters": {"type": "array", "minItems": 2, "maxItems": 3, "items": {
        "type": "string", "pattern": "^[a-z]$"}}}, "required": ["letters"]},
]
assert len(SCHEMAS) == 20


@pytest.fixture(scope="module", params=["smollm2", "gemma3"])
def model(request, smollm2_path, gemma3_path):
    path = smollm2_path if request.param == "smollm2" else gemma3_path
    with Llama(str(path), n_ctx=512, seed=7) as llm:
        yield llm


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_json_schemas_validate(model, temperature):
    """Each of 20 schemas (nested objects, arrays, enums, bounded numbers, optional fields, patterns)
    gives JSON that parses and validates, through OpenAI's and llama-cpp-python's response_format."""
    for i, schema in enumerate(SCHEMAS):
        fmt = ({"type": "json_schema", "json_schema": {"name": f"s{i}", "schema": schema}} if i % 2 == 0
               else {"type": "json_object", "schema": schema})
        out = model.create_chat_completion([{"role": "user", "content": "Answer in JSON."}], response_format=fmt,
                                           max_tokens=80, temperature=temperature, seed=i)
        text = out["choices"][0]["message"]["content"]
        assert out["choices"][0]["finish_reason"] == "stop", (i, text)
        jsonschema.validate(json.loads(text), schema)


@pytest.fixture(scope="module")
def smollm2(smollm2_path):
    with Llama(str(smollm2_path), n_ctx=512, seed=3) as llm:
        yield llm


def test_json_object_without_schema(smollm2):
    """response_format {"type": "json_object"} alone: any JSON object."""
    out = smollm2.create_chat_completion(
        [{"role": "user", "content": 'Reply with exactly this JSON object: {"ok": true}'}],
        response_format={"type": "json_object"}, max_tokens=40, temperature=0.0)
    assert isinstance(json.loads(out["choices"][0]["message"]["content"]), dict)


def _parse(llm, grammar: Grammar, text: str) -> tuple[bool, bool]:
    """(text is a valid prefix, text is a whole sentence) of the grammar: a fresh matcher fed its tokens."""
    c = llm.steering(grammar=grammar).constraint
    try:
        c.accept_many(llm.tokenize(text, add_bos=False))
    except GrammarError:
        return False, False
    return True, c.accepting


@pytest.mark.parametrize("name,prompt", [
    ("json", "A JSON object describing a cat:"), ("arithmetic", "Some equations:\n"),
    ("list", "A shopping list:\n"), ("c", "A small C program:\n"), ("chess", "A chess game: ")])
def test_llama_cpp_grammars_compile_and_outputs_parse(smollm2, name, prompt):
    """llama.cpp's grammars compile; every generated text is a sentence of the grammar (when
    generation ended because the grammar or the model finished) or a valid prefix of one (when
    max_tokens cut it), and the complete part parses by the language's own rules."""
    g = Grammar.from_file(GRAMMARS / f"{name}.gbnf")
    out = smollm2.create_completion(prompt, grammar=g, max_tokens=48, temperature=0.0, repeat_penalty=1.1)
    ch = out["choices"][0]
    text = ch["text"]
    assert text
    finished = ch["finish_reason"] == "stop"
    prefix, whole = _parse(smollm2, g, text)
    assert prefix and (whole or not finished), text
    if name == "json":
        assert finished
        json.loads(text)
    elif name == "list":
        lines = text.split("\n")
        assert lines[:-1] and all(re.fullmatch(r"- [^\r\n]+", ln) for ln in lines[:-1])
    elif name == "arithmetic":
        assert re.fullmatch(r"[a-z0-9_()+\-*/ \t\n=]+", text) and "=" in text


@pytest.mark.parametrize("bad", ["root ::= foo", "root ::= \"unclosed", "", "rot ::= \"a\""])
def test_invalid_grammar_is_an_error_before_any_token(smollm2, bad):
    n = smollm2.perf.n_eval
    with pytest.raises(GrammarError):
        smollm2.create_completion("x", grammar=bad, max_tokens=4)
    assert smollm2.perf.n_eval == n


@pytest.mark.parametrize("fmt", [{"type": "json_schema", "json_schema": {"schema": {"type": "object", "properties": 3}}},
                                 {"type": "json_object", "schema": "{not json"},
                                 {"type": "json_schema", "json_schema": {"schema": {"type": "nope"}}},
                                 {"type": "xml"}])
def test_invalid_schema_is_an_error_before_any_token(smollm2, fmt):
    n = smollm2.perf.n_eval
    with pytest.raises(ValueError):
        smollm2.create_chat_completion([{"role": "user", "content": "hi"}], response_format=fmt, max_tokens=4)
    assert smollm2.perf.n_eval == n


def test_grammar_masks_before_sampling_and_ends_generation(smollm2):
    """At temperature 1 with all samplers off every token still fits the grammar, and generation
    ends as soon as the grammar is complete (finish_reason "stop", nothing after)."""
    for seed in range(3):
        out = smollm2.create_completion("Pick:", grammar='root ::= " yes" | " no" | " maybe"', temperature=1.0,
                                        top_k=0, top_p=1.0, min_p=0.0, max_tokens=20, seed=seed)
        assert out["choices"][0]["text"] in (" yes", " no", " maybe")
        assert out["choices"][0]["finish_reason"] == "stop"
