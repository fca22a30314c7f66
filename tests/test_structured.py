"""Structured output (edgeqwen/constrain.py) on the random-weight fixture model, checked with the
`jsonschema` validator (and `re` / Python for regex and grammar output).

The fixture model never writes JSON by itself (test_unconstrained_output_does_not_validate); with a
response_format every greedy and sampled output over the schema set in tests/data/schemas must parse
and validate, through the Python API, chat (thinking on and off), batch and the CLI."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import edgeqwen
from edgeqwen.cli import main
from edgeqwen.constrain import bounded_numbers, compile_format, tool_call_format
from edgeqwen.errors import EdgeQwenError
from edgeqwen.sampling import Sampler, SamplingParams

jsonschema = pytest.importorskip("jsonschema")

SCHEMA_DIR = Path(__file__).parent / "data" / "schemas"
SCHEMAS = {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted(SCHEMA_DIR.glob("*.json"))}
PROMPT = "Read the ticket and answer with JSON.\nTicket: the invoice total is wrong.\n"


def rf(schema) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "t", "schema": schema, "strict": True}}


def errors(text: str, schema) -> str | None:
    """None if `text` is JSON valid for `schema` (formats checked too), else why not."""
    try:
        value = json.loads(text)
    except ValueError as e:
        return f"not JSON: {e}: {text[:120]!r}"
    v = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    found = [e.message for e in v.iter_errors(value)]
    return f"invalid: {found[0]}: {text[:120]!r}" if found else None


@pytest.fixture(scope="module")
def model_path(gguf_file):
    return gguf_file("tiny", "q8_0")


@pytest.fixture(scope="module")
def model(model_path):
    return edgeqwen.load(model_path, ctx_size=512)


def test_the_schema_set_is_large_and_valid():
    assert len(SCHEMAS) >= 30
    for name, schema in SCHEMAS.items():
        jsonschema.Draft202012Validator.check_schema(schema)
    text = json.dumps(SCHEMAS)
    for keyword in ("minItems", "maxItems", "enum", "minimum", "exclusiveMaximum", "additionalProperties",
                    "pattern", "format", "anyOf", "oneOf", "$ref", "const", "null"):
        assert keyword in text


def test_unconstrained_output_does_not_validate(model):
    """The test can fail: without a constraint the random model writes no valid JSON."""
    items = [{"id": n, "prompt": PROMPT, "temperature": 0, "max_tokens": 24} for n in list(SCHEMAS)[:8]]
    recs = list(model.batch(items, parallel=8))
    assert len(recs) == 8
    assert all(errors(r["content"], SCHEMAS[r["id"]]) for r in recs)


def test_batch_every_schema_greedy_and_sampled(model):
    """Raw completions and chat items (thinking off), each item its own schema, greedy and seeded."""
    items = []
    for n, schema in SCHEMAS.items():
        items.append({"id": f"{n}/greedy", "prompt": PROMPT, "temperature": 0, "response_format": rf(schema)})
        items.append({"id": f"{n}/sampled", "messages": [{"role": "user", "content": PROMPT}], "seed": 7,
                      "enable_thinking": False, "temperature": 1.0, "top_k": 0, "top_p": 1.0,
                      "response_format": rf(schema)})
    recs = list(model.batch(items, parallel=8, max_tokens=200))
    assert len(recs) == len(items)
    for r in recs:
        assert "error" not in r, r
        schema = SCHEMAS[r["id"].split("/")[0]]
        assert r["finish_reason"] == "stop", r
        assert errors(r["content"], schema) is None, (r["id"], errors(r["content"], schema))
        assert r["json"] == json.loads(r["content"])


@pytest.mark.parametrize("name", ["01_ticket", "11_items", "23_recipe", "30_unicode_enum", "31_one_of_objects"])
def test_api_generate_and_stream(model, name):
    schema = SCHEMAS[name]
    for kw in ({"temperature": 0}, {"seed": 1}, {"seed": 2, "temperature": 1.5, "top_k": 0, "min_p": 0}):
        r = model.generate(PROMPT, 200, response_format=rf(schema), **kw)
        assert r.finish_reason == "stop" and errors(r.text, schema) is None, (kw, r.text)
    chunks = list(model.stream(PROMPT, 200, response_format=rf(schema), temperature=0))
    assert "".join(c.text for c in chunks) == model.generate(PROMPT, 200, response_format=rf(schema),
                                                             temperature=0).text


@pytest.mark.parametrize("name", ["02_person", "26_invoice", "32_extraction"])
def test_chat_thinking_on_and_off(model, name):
    schema = SCHEMAS[name]
    msgs = [{"role": "user", "content": PROMPT}]
    off = model.chat(msgs, enable_thinking=False, max_tokens=200, response_format=rf(schema), seed=3)
    assert off.finish_reason == "stop" and errors(off.content, schema) is None, off.content
    # thinking on: the reasoning is free text (the random model writes no JSON there) until the
    # budget's forced </think>; the answer after it is constrained
    for kw in ({"seed": 4}, {"temperature": 0}):
        on = model.chat(msgs, enable_thinking=True, thinking_budget=6, max_tokens=260, response_format=rf(schema),
                        **kw)
        assert on.thinking and on.reasoning_tokens == 6 and on.reasoning, on
        assert errors(on.reasoning, schema) is not None
        assert on.finish_reason == "stop" and errors(on.content, schema) is None, on.content
    stream = list(model.chat(msgs, enable_thinking=False, max_tokens=200, response_format=rf(schema), seed=3,
                             stream=True))
    assert stream[-1].result.content == off.content


def test_openai_shapes_text_json_object_regex_grammar(model):
    assert compile_format(model.tokenizer, {"type": "text"}) is None
    plain = model.generate(PROMPT, 12, temperature=0)
    assert model.generate(PROMPT, 12, temperature=0, response_format={"type": "text"}).text == plain.text
    r = model.generate(PROMPT, 40, temperature=0, response_format={"type": "regex", "regex": r"[0-9]{3}-[a-c]{2,4}"})
    assert r.finish_reason == "stop" and re.fullmatch(r"[0-9]{3}-[a-c]{2,4}", r.text), r.text
    lark = 'start: "answer: " choice "."\nchoice: "yes" | "no" | "maybe"\n'
    for seed in (1, 2, 3):
        r = model.generate(PROMPT, 20, seed=seed, response_format={"type": "grammar", "grammar": lark})
        assert r.finish_reason == "stop" and r.text in ("answer: yes.", "answer: no.", "answer: maybe."), r.text
    # JSON mode: any object. The random model may not close free-form keys, so the output is either a
    # finished object or a cut one that is still a prefix the grammar allowed
    r = model.generate(PROMPT, 60, temperature=0, response_format={"type": "json_object"})
    assert r.text.startswith("{")
    if r.finish_reason == "stop":
        assert isinstance(json.loads(r.text), dict)


def test_mask_comes_before_top_k_and_greedy(model):
    """Logits that favour a forbidden token: greedy and top_k=1 still pick an allowed one."""
    tok = model.tokenizer
    fmt = compile_format(tok, {"type": "regex", "regex": "[0-9]+"})
    logits = np.zeros(tok.n_vocab, dtype=np.float32)
    letters = tok.encode("hello")[0]
    logits[letters] = 100.0
    seven = tok.encode("7")[0]
    logits[seven] = 1.0
    for params in (SamplingParams(temperature=0), SamplingParams(temperature=0.7, top_k=1, seed=0)):
        s = Sampler(params, fmt.start())
        assert s(logits) == seven
    s = Sampler(SamplingParams(temperature=0))
    assert s(logits) == letters                      # without the constraint


def test_no_allowed_token_is_an_error_not_a_hang(model):
    tok = model.tokenizer
    state = compile_format(tok, {"type": "regex", "regex": "[0-9]+"}).start()
    with pytest.raises(EdgeQwenError, match="no token can continue"):
        state.mask(np.zeros(10, dtype=np.float32))   # logits of a model whose vocab lacks every digit
    state.advance(tok.encode("7")[0])
    with pytest.raises(EdgeQwenError, match="does not fit the grammar"):
        state.advance(tok.encode("x")[0])


def test_a_shared_format_compiles_once(model):
    schema = SCHEMAS["01_ticket"]
    a = compile_format(model.tokenizer, rf(schema))
    assert compile_format(model.tokenizer, json.loads(json.dumps(rf(schema)))) is a
    assert a.start().matcher is not a.start().matcher


def test_bounded_numbers_only_narrow_the_schema():
    s = {"type": "object", "properties": {"x": {"type": "number"}, "n": {"type": ["integer", "null"], "minimum": 0},
                                          "e": {"enum": [{"type": "number"}]}}}
    b = bounded_numbers(s)
    assert b["properties"]["x"] == {"type": "number", "minimum": -(10**16 - 1), "maximum": 10**16 - 1,
                                    "multipleOf": 1e-10}
    assert b["properties"]["n"] == {"type": ["integer", "null"], "minimum": 0, "maximum": 10**16 - 1}
    assert b["properties"]["e"] == s["properties"]["e"]          # data is not a schema
    assert s["properties"]["x"] == {"type": "number"}           # the input is not modified


@pytest.mark.parametrize("response_format, needle", [
    ({"type": "json_schema", "json_schema": {"schema": {"type": "object", "propertyNames": {"pattern": "a"}}}},
     "propertyNames"),
    ({"type": "json_schema", "json_schema": {"schema": {"type": "strnig"}}}, "strnig"),
    ({"type": "json_schema", "json_schema": {"schema": "nope"}}, "schema must be a JSON schema object"),
    ({"type": "json_schema"}, "must be an object with a 'schema'"),
    ({"type": "regex", "regex": "[0-9"}, "regex"),
    ({"type": "grammar", "grammar": "start: undefined_rule"}, "undefined_rule"),
    ({"type": "xml"}, "response_format type must be one of"),
    ("json", "response_format must be an object"),
])
def test_bad_formats_are_one_clear_error_before_generation(model, response_format, needle):
    with pytest.raises(EdgeQwenError, match=re.escape(needle)) as e:
        model.stream(PROMPT, 10, response_format=response_format)
    assert "\n" not in str(e.value)
    with pytest.raises(EdgeQwenError, match=re.escape(needle)):
        model.chat([{"role": "user", "content": "hi"}], response_format=response_format)


TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
              "type": "object", "additionalProperties": False, "required": ["city", "days"],
              "properties": {"city": {"enum": ["Paris", "Oslo"]}, "days": {"type": "integer", "minimum": 1, "maximum": 7}}}}},
         {"type": "function", "function": {"name": "refund", "parameters": SCHEMAS["26_invoice"]}}]


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "refund"}}])
def test_tool_choice_constrains_the_tool_call(model, choice):
    """tool_choice "required" / a named function: the answer is one <tool_call> whose arguments validate."""
    fmt = tool_call_format(TOOLS, choice)
    msgs = [{"role": "user", "content": "Weather in Oslo for 3 days?"}]
    for kw in ({"seed": 1, "enable_thinking": False}, {"temperature": 0, "enable_thinking": False},
               {"seed": 2, "enable_thinking": True, "thinking_budget": 4}):
        r = model.chat(msgs, tools=TOOLS, max_tokens=300, response_format=fmt, **kw)
        assert r.finish_reason == "tool_calls" and len(r.tool_calls) == 1 and not r.tool_call_errors, r
        call = r.tool_calls[0]
        if choice != "required":
            assert call["name"] == "refund"
        params = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}[call["name"]]
        assert errors(json.dumps(call["arguments"]), params) is None
    assert tool_call_format(TOOLS, "auto") is None and tool_call_format(TOOLS, None) is None
    with pytest.raises(EdgeQwenError, match="not among the tools"):
        tool_call_format(TOOLS, {"type": "function", "function": {"name": "nope"}})


# ---------------------------------------------------------------- the command line

def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_cli_run_and_chat_with_a_schema_file(model_path, tmp_path):
    schema = SCHEMAS["20_product"]
    path = tmp_path / "product.json"
    path.write_text(json.dumps(schema))
    for extra in (["--temperature", 0], ["--seed", 5]):
        r = cli("run", "-m", model_path, "-p", PROMPT, "-n", 200, "-c", 512, "--json-schema", path, *extra)
        assert r.exit_code == 0, r.output
        assert errors(r.stdout.strip(), schema) is None, r.stdout
    conv = tmp_path / "conv.json"
    conv.write_text(json.dumps([{"role": "user", "content": PROMPT}]))
    for extra in (["--no-think"], ["--think", "--thinking-budget", 5]):
        r = cli("chat", "-m", model_path, "--messages", conv, "-n", 260, "-c", 512, "--seed", 2,
                "--json-schema", path, *extra)
        assert r.exit_code == 0, r.output
        answer = json.loads(r.stdout[r.stdout.index("{"):])
        assert answer["finish_reason"] == "stop" and errors(answer["content"], schema) is None, answer
    r = cli("run", "-m", model_path, "-p", PROMPT, "-n", 40, "--temperature", 0, "--regex", "(yes|no)-[0-9]{2}")
    assert r.exit_code == 0 and re.fullmatch(r"(yes|no)-[0-9]{2}", r.stdout.strip()), r.output
    g = tmp_path / "g.lark"
    g.write_text('start: "[" item ("," item)* "]"\nitem: "a" | "b"\n')
    r = cli("run", "-m", model_path, "-p", PROMPT, "-n", 40, "--seed", 1, "--grammar", g)
    assert r.exit_code == 0 and re.fullmatch(r"\[[ab](,[ab])*\]", r.stdout.strip()), r.output


def test_cli_batch_folder_of_text_files_to_validated_jsonl(model_path, tmp_path):
    """The README's extraction use case: a folder of text files -> JSONL of validated objects."""
    schema = SCHEMAS["01_ticket"]
    (tmp_path / "schema.json").write_text(json.dumps(schema))
    docs = tmp_path / "tickets"
    docs.mkdir()
    for i in range(5):
        (docs / f"t{i}.txt").write_text(f"Ticket {i}: my card was charged twice, please fix it.\n")
    out = tmp_path / "out.jsonl"
    r = cli("batch", docs, "-m", model_path, "-o", out, "-P", 3, "--no-think", "-n", 200, "-c", 512, "--seed", 9,
            "--template", "Classify this ticket as JSON:\n{text}", "--json-schema", tmp_path / "schema.json", "-q")
    assert r.exit_code == 0, r.output
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(rec["id"] for rec in recs) == [f"t{i}.txt" for i in range(5)]
    for rec in recs:
        assert errors(rec["content"], schema) is None and rec["json"] == json.loads(rec["content"]), rec


@pytest.mark.parametrize("args, needle", [
    (["--json-schema", "{missing}"], "cannot read the JSON schema"),
    (["--json-schema", "{bad_json}"], "cannot read the JSON schema"),
    (["--json-schema", "{bad_schema}"], "Unimplemented keys"),
    (["--regex", "(unclosed"], "regex"),
    (["--json", "--regex", "a"], "give at most one of --json, --regex"),
])
def test_cli_bad_constraints_are_one_error_line(model_path, tmp_path, args, needle):
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "bad_schema.json").write_text(json.dumps({"type": "object", "propertyNames": {"pattern": "a"}}))
    files = {"missing": tmp_path / "nope.json", "bad_json": tmp_path / "bad.json",
             "bad_schema": tmp_path / "bad_schema.json"}
    args = [a.format(**files) for a in args]
    (tmp_path / "in.txt").write_text("hello\n")
    for cmd in (["run", "-m", model_path, "-p", "hi", "-n", 5],
                ["batch", tmp_path / "in.txt", "-m", model_path, "-o", tmp_path / "o.jsonl", "-n", 5]):
        r = CliRunner().invoke(main, [str(a) for a in cmd + args])
        assert r.exit_code == 1, r.output
        lines = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
        assert len(lines) == 1 and needle in lines[0], r.output
        assert "Traceback" not in r.output
    assert not (tmp_path / "o.jsonl").exists() or (tmp_path / "o.jsonl").read_text() == ""
