"""A deterministic corpus of malformed text and JSON input (issue 12) for `edgeqwen batch`,
`edgeqwen chat --messages`, `edgeqwen run` and the Python API, and the checks of its outcomes.

    python tests/fuzz_inputs.py [OUT_DIR]     # write the corpus, run it, print the counts per class

Every batch input is a file holding one malformed line (or file-level oddity) between two valid
items; it must run (exit 0) with exactly one record per non-blank line, each id once, and the valid
items answered. chat / run inputs must end `ok` or with one clean `error:` line (or click's usage
error); inputs marked valid must end `ok`. The API cases (run in-process by the test) must return
or raise EdgeQwenError with a one-line message.
"""
from __future__ import annotations

import collections
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fuzz_driver import OK_CLASSES, run_corpus  # noqa: E402

DEEP = 100_000
BIG = "9" * 5000
OK_ITEM = '{{"id": "{id}", "prompt": "Hello", "max_tokens": 1}}'
MSG = [{"role": "user", "content": "Hi"}]


def _j(obj) -> bytes:
    return json.dumps(obj).encode()


def batch_lines() -> list[tuple[str, bytes, bool]]:
    """(name, one JSONL line, whether the item is valid and must be answered)."""
    L = []

    def add(name, line, valid=False):
        L.append((name, line if isinstance(line, bytes) else line.encode(), valid))

    for name, line in [
        ("broken", "{broken"), ("list", "[1, 2]"), ("string", '"str"'), ("null", "null"), ("number", "42"),
        ("trailing_garbage", '{"id": "t", "prompt": "x"} junk'), ("two_objects", '{"prompt": "a"} {"prompt": "b"}'),
        ("nul_byte", "\0"), ("only_bom_midfile", "\ufeff"),
    ]:
        add(name, line)
    for name, field, value in [
        ("prompt_int", "prompt", 5), ("prompt_list", "prompt", [1, 2]), ("prompt_null", "prompt", None),
        ("prompt_dict", "prompt", {}), ("prompt_empty", "prompt", ""), ("prompt_bool", "prompt", True),
        ("max_tokens_neg", "max_tokens", -1), ("max_tokens_bool", "max_tokens", True),
        ("max_tokens_float", "max_tokens", 1.5), ("max_tokens_str", "max_tokens", "3"),
        ("max_tokens_huge", "max_tokens", 10**30), ("temperature_str", "temperature", "hot"),
        ("temperature_neg", "temperature", -1), ("top_k_huge", "top_k", 10**20), ("top_k_float", "top_k", 2.5),
        ("top_p_2", "top_p", 2), ("min_p_list", "min_p", [0]), ("seed_neg", "seed", -1),
        ("seed_huge", "seed", 2**70), ("seed_str", "seed", "x"), ("presence_big", "presence_penalty", 1e300),
        ("repetition_zero", "repetition_penalty", 0), ("enable_thinking_str", "enable_thinking", "yes"),
        ("thinking_budget_neg", "thinking_budget", -1), ("thinking_budget_str", "thinking_budget", "x"),
        ("stop_int", "stop", 5), ("stop_empty", "stop", [""]), ("stop_list_int", "stop", [1]),
        ("stop_dict", "stop", {"a": 1}), ("tools_str", "tools", "x"), ("tools_ints", "tools", [1]),
        ("unknown_field", "colour", "blue"), ("unknown_empty_key", "", 1),
    ]:
        add(name, _j({"id": name, "prompt": "Hello", field: value}))
    for name, value in [("float", 1.5), ("true", True), ("null", None), ("list", [1]), ("dict", {"a": 1})]:
        add(f"id_{name}", _j({"id": value, "prompt": "Hello", "max_tokens": 1}))
    for name, value in [("empty", []), ("str", "hi"), ("ints", [1]), ("no_role", [{"content": "x"}]),
                        ("role_int", [{"role": 5, "content": "x"}]), ("content_int", [{"role": "user", "content": 5}]),
                        ("content_dict", [{"role": "user", "content": {"a": 1}}]),
                        ("parts_bad", [{"role": "user", "content": [{"type": "text", "text": 5}]}]),
                        ("no_content", [{"role": "user"}]), ("role_martian", [{"role": "martian", "content": "x"}]),
                        ("tool_calls_bad", [{"role": "assistant", "content": "", "tool_calls": 5}]),
                        ("null", None)]:
        add(f"messages_{name}", _j({"id": f"messages_{name}", "messages": value, "max_tokens": 1}))
    add("both_prompt_messages", _j({"id": "both", "prompt": "x", "messages": MSG}))
    add("neither", _j({"id": "neither"}))
    # lone surrogates (valid JSON escapes, no UTF-8 form)
    add("surrogate_id", b'{"id": "\\ud800", "prompt": "Hello", "max_tokens": 1}', valid=True)
    add("surrogate_id_low", b'{"id": "a\\udfffb", "prompt": "Hello", "max_tokens": 1}', valid=True)
    add("surrogate_prompt", b'{"id": "sp", "prompt": "a\\udc00b"}')
    add("surrogate_content", b'{"id": "sc", "messages": [{"role": "user", "content": "\\ud83d"}]}')
    add("surrogate_role", b'{"id": "sr", "messages": [{"role": "\\ud800", "content": "x"}]}')
    add("surrogate_stop", b'{"id": "ss", "prompt": "x", "stop": ["\\udfff"]}')
    add("surrogate_tool", b'{"id": "st", "messages": [{"role": "user", "content": "x"}], '
                          b'"tools": [{"type": "function", "function": {"name": "\\ud800"}}]}')
    add("surrogate_key", b'{"id": "sk", "prompt": "x", "\\ud800": 1}')
    add("surrogate_pair_ok", b'{"id": "pair", "prompt": "smile \\ud83d\\ude00", "max_tokens": 1}', valid=True)
    # nesting and digits
    add("deep_list", b"[" * DEEP + b"]" * DEEP)
    add("deep_object", b'{"a":' * DEEP + b"1" + b"}" * DEEP)
    add("deep_prompt", b'{"id": "dp", "prompt": ' + b"[" * DEEP + b"]" * DEEP + b"}")
    add("deep_messages", b'{"id": "dm", "messages": [{"role": "user", "content": ' + b"[" * DEEP + b"]" * DEEP + b"}]}")
    add("deep_unclosed", b"[" * DEEP)
    add("digits_max_tokens", f'{{"id": "dmt", "prompt": "x", "max_tokens": {BIG}}}')
    add("digits_id", f'{{"id": {BIG}, "prompt": "x"}}')
    add("digits_temperature", f'{{"id": "dt", "prompt": "x", "temperature": {BIG}}}')
    add("digits_bare", BIG)
    add("float_inf", '{"id": "fi", "prompt": "x", "temperature": 1e999}')
    add("nan_literal", '{"id": "nan", "prompt": "x", "temperature": NaN}')
    add("infinity_literal", '{"id": "inf", "prompt": "x", "top_p": Infinity}')
    # bytes that are not UTF-8
    for name, raw in [("invalid_ff", b"\xff\xfe"), ("overlong", b"\xc0\xaf"), ("cesu_surrogate", b"\xed\xa0\x80"),
                      ("truncated_seq", b"\xe2\x82"), ("latin1", "caf\xe9".encode("latin-1"))]:
        add(f"bytes_{name}", b'{"id": "b_' + name.encode() + b'", "prompt": "' + raw + b'"}')
    # line separators that are not \n: inside a JSON string they are text, not a line break
    for name, sep in [("u2028", "\u2028"), ("u2029", "\u2029"), ("nel", "\x85")]:
        add(f"raw_{name}_in_string", _j({"id": f"sep_{name}", "prompt": f"a{sep}b", "max_tokens": 1})
            .replace(json.dumps(sep)[1:-1].encode(), sep.encode()), valid=True)
    for name, sep in [("vt", "\x0b"), ("ff", "\x0c"), ("fs", "\x1c"), ("gs", "\x1d"), ("rs", "\x1e")]:
        add(f"raw_{name}_in_string", f'{{"id": "c_{name}", "prompt": "a{sep}b", "max_tokens": 1}}')
    add("crlf", b'{"id": "crlf", "prompt": "Hello", "max_tokens": 1}\r', valid=True)
    add("long_id", _j({"id": "x" * 100_000, "prompt": "Hello", "max_tokens": 1}), valid=True)
    add("empty_id", _j({"id": "", "prompt": "Hello", "max_tokens": 1}), valid=True)
    add("control_id", _j({"id": "a\nb\x1b[31m", "prompt": "Hello", "max_tokens": 1}), valid=True)
    add("prompt_too_long", _j({"id": "ptl", "prompt": "word " * 2000}))
    add("duplicate_valid_id", OK_ITEM.format(id="valid-before"))       # the file's first item's id again
    add("explicit_id_of_error_line", '{"id": 2, "prompt": "Hello", "max_tokens": 1}')   # line 2 is not JSON
    return L


def batch_files(out_dir: Path) -> list[dict]:
    """One JSONL file per malformed line, between two valid items; plus file-level cases."""
    files = []

    def put(name, data: bytes, valid: list, fmt="jsonl", extra=()):
        path = out_dir / f"b{len(files):03d}.{'jsonl' if fmt == 'jsonl' else 'txt'}"
        path.write_bytes(data)
        n_lines = sum(1 for ln in data.removeprefix(b"\xef\xbb\xbf").split(b"\n") if ln.strip(b" \t\r"))
        files.append({"name": f"batch {name}", "path": str(path), "out": str(path) + ".out", "fmt": fmt,
                      "valid": valid, "n_lines": n_lines, "extra": list(extra)})

    before, after = OK_ITEM.format(id="valid-before").encode(), OK_ITEM.format(id="valid-after").encode()
    for name, line, valid in batch_lines():
        own = [] if not valid else [json.loads(line.decode("utf-8", "surrogatepass"))["id"]]
        if name == "explicit_id_of_error_line":
            put(name, before + b"\n{broken\n" + line + b"\n" + after + b"\n", ["valid-before", "valid-after", 2])
            continue
        put(name, before + b"\n" + line + b"\n" + after + b"\n", ["valid-before", "valid-after", *own])
    put("bom", b"\xef\xbb\xbf" + before + b"\n" + after + b"\n", ["valid-before", "valid-after"])
    put("bom_crlf", b"\xef\xbb\xbf" + before + b"\r\n" + after + b"\r\n", ["valid-before", "valid-after"])
    put("no_final_newline", before + b"\n" + after, ["valid-before", "valid-after"])
    put("blank_lines", b"\n\n" + before + b"\n   \n\t\n" + after + b"\n\n", ["valid-before", "valid-after"])
    put("all_lines_bad", b"{\n[\n\xff\n", [])
    # text files: one prompt per line, id = line number
    put("text_invalid_line", b"Hello\n\xff\xfe bad\nHello again\n", [1, 3], fmt="text", extra=["--raw"])
    put("text_bom", b"\xef\xbb\xbfHello\nHello again\n", [1, 2], fmt="text", extra=["--raw"])
    put("text_u2028", "Hello\u2028world\nHello\x85again\n".encode(), [1, 2], fmt="text", extra=["--raw"])
    put("text_surrogate_bytes", b"Hello\n\xed\xa0\x80\nbye\n", [1, 3], fmt="text", extra=["--raw"])
    put("text_chat_invalid_line", b"Hi\n\xc3\n", [1], fmt="text")
    return files


def chat_files(out_dir: Path) -> list[tuple[str, Path, bool]]:
    """(name, --messages file, valid)."""
    good = json.dumps(MSG).encode()
    cases = [
        ("valid", good, True), ("bom", b"\xef\xbb\xbf" + good, True),
        ("u2028_in_content", json.dumps([{"role": "user", "content": "a\u2028b"}], ensure_ascii=False).encode(), True),
        ("dict_form", _j({"messages": MSG}), True),
        ("empty_file", b"", False), ("whitespace", b"  \n", False), ("broken", b"[{", False), ("null", b"null", False),
        ("number", b"42", False), ("string", b'"hi"', False), ("empty_list", b"[]", False), ("ints", b"[1, 2]", False),
        ("no_role", _j([{"content": "x"}]), False), ("role_int", _j([{"role": 5, "content": "x"}]), False),
        ("role_null", _j([{"role": None, "content": "x"}]), False),
        ("content_int", _j([{"role": "user", "content": 5}]), False),
        ("content_dict", _j([{"role": "user", "content": {"a": 1}}]), False),
        ("content_null", _j([{"role": "user", "content": None}]), False),
        ("parts_bad", _j([{"role": "user", "content": [{"type": "text", "text": 5}]}]), False),
        ("messages_not_list", _j({"messages": "hi"}), False), ("dict_no_messages", _j({"x": 1}), False),
        ("tools_str", _j({"messages": MSG, "tools": "x"}), False),
        ("tools_ints", _j({"messages": MSG, "tools": [1, 2]}), False),
        ("tools_dict", _j({"messages": MSG, "tools": {"a": 1}}), False),
        ("unknown_key", _j({"messages": MSG, "colour": "blue"}), False),
        ("invalid_utf8", b'[{"role": "user", "content": "\xff"}]', False),
        ("cesu_surrogate", b'[{"role": "user", "content": "\xed\xa0\x80"}]', False),
        ("surrogate_content", b'[{"role": "user", "content": "\\ud800"}]', False),
        ("surrogate_role", b'[{"role": "\\udc00", "content": "x"}]', False),
        ("surrogate_key", b'[{"role": "user", "content": "x", "\\ud800": 1}]', False),
        ("deep", b"[" * DEEP + b"]" * DEEP, False),
        ("deep_content", b'[{"role": "user", "content": ' + b"[" * DEEP + b"]" * DEEP + b"}]", False),
        ("digits", f'[{{"role": "user", "content": "x", "n": {BIG}}}]'.encode(), False),
        ("digits_bare", BIG.encode(), False),
        ("nan", b'[{"role": "user", "content": NaN}]', False),
        ("huge_content", _j([{"role": "user", "content": "word " * 20000}]), False),
        ("only_assistant", _j([{"role": "assistant", "content": "x"}]), False),
        ("nul", b"\0", False),
    ]
    out = []
    for i, (name, data, valid) in enumerate(cases):
        p = out_dir / f"m{i:03d}.json"
        p.write_bytes(data)
        out.append((name, p, valid))
    return out


def run_cases(out_dir: Path) -> list[tuple[str, list[str], bool]]:
    """(name, `run` arguments after -m MODEL, valid)."""
    files = {"bom": b"\xef\xbb\xbfHello", "invalid": b"Hel\xfflo", "nul": b"\0\0\0", "empty": b"",
             "surrogate_bytes": b"\xed\xa0\x80", "u2028": "a\u2028b".encode()}
    paths = {}
    for k, v in files.items():
        paths[k] = out_dir / f"p_{k}.txt"
        paths[k].write_bytes(v)
    return [
        ("valid", ["-p", "Hello"], True),
        ("prompt_file_bom", ["--prompt-file", str(paths["bom"])], True),
        ("prompt_file_u2028", ["--prompt-file", str(paths["u2028"])], True),
        ("prompt_file_invalid", ["--prompt-file", str(paths["invalid"])], False),
        ("prompt_file_nul", ["--prompt-file", str(paths["nul"])], False),
        ("prompt_file_empty", ["--prompt-file", str(paths["empty"])], False),
        ("prompt_file_surrogate_bytes", ["--prompt-file", str(paths["surrogate_bytes"])], False),
        ("prompt_file_missing", ["--prompt-file", str(out_dir / "nope.txt")], False),
        ("prompt_file_dir", ["--prompt-file", str(out_dir)], False),
        ("prompt_surrogate", ["-p", "a\udcffb"], False),
        ("prompt_surrogate_high", ["-p", "\ud800"], False),
        ("prompt_empty", ["-p", ""], False),
        ("prompt_nul", ["-p", "\0"], False),
        ("stop_surrogate", ["-p", "Hello", "--stop", "\udc80"], False),
        ("stop_empty", ["-p", "Hello", "--stop", ""], False),
        ("prompt_and_file", ["-p", "x", "--prompt-file", str(paths["bom"])], False),
        ("prompt_too_long", ["-p", "word " * 3000], False),
    ]


def chat_option_cases() -> list[tuple[str, list[str]]]:
    """(name, `chat --messages` options) that are malformed."""
    return [("system_surrogate", ["--system", "\udcff"]), ("system_nul", ["--system", "\0"]),
            ("tools_missing", ["--tools", "/nonexistent/tools.json"])]


def input_entries(out_dir: Path, model: Path) -> tuple[list[dict], list[dict]]:
    """Manifest entries for tests/fuzz_driver.run_corpus, and per entry what to check."""
    out_dir.mkdir(parents=True, exist_ok=True)
    entries, meta = [], []
    common = ["-n", "1", "-t", "1", "--seed", "0", "-c", "64"]
    for b in batch_files(out_dir):
        entries.append({"name": b["name"], "commands": [["batch", b["path"], "-m", str(model), "-o", b["out"],
                                                          "--format", b["fmt"], "-P", "2", "-q", *b["extra"],
                                                          *common]]})
        meta.append({"kind": "batch", **b})
    for name, path, valid in chat_files(out_dir):
        entries.append({"name": f"chat {name}", "commands": [["chat", "-m", str(model), "--messages", str(path),
                                                               *common]]})
        meta.append({"kind": "chat", "valid": valid})
    good = out_dir / "m000.json"
    for name, opts in chat_option_cases():
        entries.append({"name": f"chat {name}", "commands": [["chat", "-m", str(model), "--messages", str(good),
                                                               *opts, *common]]})
        meta.append({"kind": "chat", "valid": False})
    for name, args, valid in run_cases(out_dir):
        entries.append({"name": f"run {name}", "commands": [["run", "-m", str(model), *args, *common]]})
        meta.append({"kind": "run", "valid": valid})
    return entries, meta


def check_batch(meta: dict) -> str | None:
    """What is wrong with a batch output: lost valid items, an id twice, a wrong number of records."""
    out = Path(meta["out"])
    if not out.exists():
        return "no output"
    recs = [json.loads(x) for x in out.read_bytes().split(b"\n") if x]
    keys = [json.dumps(r["id"], sort_keys=True) for r in recs]
    if len(set(keys)) != len(keys):
        return f"twice: {[k[:40] for k, n in collections.Counter(keys).items() if n > 1]}"
    by_key = dict(zip(keys, recs))
    for v in meta["valid"]:
        r = by_key.get(json.dumps(v, sort_keys=True))
        if r is None or "error" in r:
            return f"lost: {str(v)[:40]!r} {str(r)[:200] if r else ''}"
    if len(recs) != meta["n_lines"]:
        return f"count: {len(recs)} records for {meta['n_lines']} lines"
    for r in recs:
        if "error" in r and ("\n" in r["error"] or len(r["error"]) > 1000):
            return f"bad error text: {r['error'][:200]!r}"
    return None


def classify(entries: list[dict], meta: list[dict], results: dict) -> list[tuple[str, str, str]]:
    """(kind, entry name, class) for every entry; classes outside OK_CLASSES are failures."""
    out = []
    for i, (e, m) in enumerate(zip(entries, meta)):
        cls, detail = results.get((i, 0), ("skipped", ""))
        if m["kind"] == "batch":
            if cls == "ok":
                problem = check_batch(m)
                if problem:
                    cls, detail = problem.split(":")[0], problem
            else:
                cls = "refused" if cls in OK_CLASSES else cls
        elif m["valid"] and cls != "ok":
            cls = f"valid-not-ok({cls})"
        out.append((m["kind"], e["name"], cls, detail))
    return out


# ---------------------------------------------------------------- the Python API

def api_cases():
    """(name, fn(model)) calls that must return or raise EdgeQwenError with one line."""
    ok_msgs = [{"role": "user", "content": "Hi"}]
    c = [
        ("generate_int", lambda m: m.generate(5, max_tokens=1)),
        ("generate_none", lambda m: m.generate(None, max_tokens=1)),
        ("generate_bytes", lambda m: m.generate(b"Hello", max_tokens=1)),
        ("generate_empty_list", lambda m: m.generate([], max_tokens=1)),
        ("generate_str_list", lambda m: m.generate(["a"], max_tokens=1)),
        ("generate_dict", lambda m: m.generate({"a": 1}, max_tokens=1)),
        ("generate_float", lambda m: m.generate(1.5, max_tokens=1)),
        ("generate_surrogate", lambda m: m.generate("a\ud800", max_tokens=1)),
        ("generate_empty", lambda m: m.generate("", max_tokens=1)),
        ("generate_unknown_kw", lambda m: m.generate("Hello", max_tokens=1, colour="blue")),
        ("generate_max_tokens_str", lambda m: m.generate("Hello", max_tokens="1")),
        ("generate_temperature_str", lambda m: m.generate("Hello", max_tokens=1, temperature="hot")),
        ("generate_temperature_huge_int", lambda m: m.generate("Hello", max_tokens=1, temperature=10**5000)),
        ("generate_stop_int", lambda m: m.generate("Hello", max_tokens=1, stop=5)),
        ("generate_stop_surrogate", lambda m: m.generate("Hello", max_tokens=1, stop=["\udfff"])),
        ("generate_seed_huge", lambda m: m.generate("Hello", max_tokens=1, seed=10**5000)),
        ("generate_sampling_str", lambda m: m.generate("Hello", max_tokens=1, sampling="x")),
        ("stream_unknown_kw", lambda m: list(m.stream("Hello", max_tokens=1, foo=1))),
        ("tokenize_int", lambda m: m.tokenize(5)),
        ("tokenize_surrogate", lambda m: m.tokenize("\ud800")),
        ("chat_str", lambda m: m.chat("Hi", max_tokens=1)),
        ("chat_none", lambda m: m.chat(None, max_tokens=1)),
        ("chat_empty", lambda m: m.chat([], max_tokens=1)),
        ("chat_ints", lambda m: m.chat([1, 2], max_tokens=1)),
        ("chat_no_role", lambda m: m.chat([{"content": "x"}], max_tokens=1)),
        ("chat_role_int", lambda m: m.chat([{"role": 5, "content": "x"}], max_tokens=1)),
        ("chat_content_int", lambda m: m.chat([{"role": "user", "content": 5}], max_tokens=1)),
        ("chat_surrogate", lambda m: m.chat([{"role": "user", "content": "\ud800"}], max_tokens=1)),
        ("chat_unknown_kw", lambda m: m.chat(ok_msgs, max_tokens=1, colour="blue")),
        ("chat_tools_str", lambda m: m.chat(ok_msgs, max_tokens=1, tools="x")),
        ("chat_tools_surrogate", lambda m: m.chat(ok_msgs, max_tokens=1, tools=[{"name": "\ud800"}])),
        ("chat_max_tokens_str", lambda m: m.chat(ok_msgs, max_tokens="1")),
        ("chat_deep", lambda m: m.chat([{"role": "user", "content": _deep_list(DEEP)}], max_tokens=1)),
        ("chat_self_ref", lambda m: m.chat(_self_ref_messages(), max_tokens=1)),
        ("apply_template_str", lambda m: m.apply_chat_template("Hi")),
        ("batch_int", lambda m: list(m.batch(5, max_tokens=1))),
        ("batch_str", lambda m: list(m.batch("abc", max_tokens=1))),
        ("batch_none", lambda m: list(m.batch(None, max_tokens=1))),
        ("batch_unknown_kw", lambda m: list(m.batch(["Hello"], max_tokens=1, colour="blue"))),
        ("batch_parallel_str", lambda m: list(m.batch(["Hello"], max_tokens=1, parallel="2"))),
    ]
    return c


def api_batch_cases():
    """(name, items, valid ids) for Model.batch: one record per item, each id once, valid ids answered."""
    return [
        ("items_mixed", [5, None, b"x", 1.5, [1], "Hello"], [6]),      # default ids count from 1
        ("surrogate_prompt", ["a\ud800", {"id": "ok", "prompt": "Hello"}], ["ok"]),
        ("surrogate_id", [{"id": "\ud800", "prompt": "Hello"}, {"id": "ok", "prompt": "Hello"}], ["\ud800", "ok"]),
        ("duplicate", [{"id": "a", "prompt": "Hello"}, {"id": "a", "prompt": "Hello"}], ["a"]),
        ("dup_of_error", [{"id": 1, "prompt": 5}, {"id": 1, "prompt": "Hello"}], [1]),
        ("bad_fields", [{"id": "u", "prompt": "x", "colour": 1}, {"id": "m", "messages": "hi"},
                        {"id": "d", "prompt": _deep_list(DEEP)}, {"id": "ok", "prompt": "Hello"}], ["ok"]),
        ("surrogate_message", [{"id": "s", "messages": [{"role": "user", "content": "\udc00"}]},
                               {"id": "ok", "messages": [{"role": "user", "content": "Hi"}]}], ["ok"]),
    ]


def _deep_list(n):
    x = []
    for _ in range(n):
        x = [x]
    return x


def _self_ref_messages():
    m = {"role": "user", "content": "Hi"}
    m["self"] = m
    return [m]


def run_api(model) -> list[tuple[str, str, str]]:
    """(name, class, detail) for every API case."""
    from edgeqwen.errors import EdgeQwenError

    out = []
    for name, fn in api_cases():
        try:
            fn(model)
            out.append((name, "ok", ""))
        except EdgeQwenError as e:
            msg = str(e)
            out.append((name, "clean" if "\n" not in msg and len(msg) < 1000 else "multiline", msg[:200]))
        except Exception as e:  # noqa: BLE001 -- classified
            out.append((name, f"exc:{type(e).__name__}", str(e)[:200]))
    for name, items, valid in api_batch_cases():
        try:
            recs = list(model.batch(items, parallel=2, max_tokens=1, seed=0))
        except Exception as e:  # noqa: BLE001
            out.append((f"batch_{name}", f"exc:{type(e).__name__}", str(e)[:200]))
            continue
        keys = [json.dumps(r["id"], sort_keys=True, ensure_ascii=True) for r in recs]
        by = dict(zip(keys, recs))
        if len(set(keys)) != len(keys):
            out.append((f"batch_{name}", "twice", str(keys)[:200]))
        elif len(recs) != len(items):
            out.append((f"batch_{name}", "count", f"{len(recs)} records for {len(items)} items"))
        elif any("error" in by.get(json.dumps(v, sort_keys=True, ensure_ascii=True), {"error": 1}) for v in valid):
            out.append((f"batch_{name}", "lost", str(recs)[:200]))
        else:
            out.append((f"batch_{name}", "ok", ""))
    return out


def write_model(out_dir: Path) -> Path:
    from fuzz_gguf import base_spec, serialize

    out_dir.mkdir(parents=True, exist_ok=True)
    p = out_dir / "model.gguf"
    p.write_bytes(serialize(base_spec()))
    return p


def main(out_dir: Path) -> None:
    import edgeqwen

    model = write_model(out_dir)
    entries, meta = input_entries(out_dir / "in", model)
    t0 = time.monotonic()
    rows = classify(entries, meta, run_corpus(entries, out_dir / "work", timeout=120))
    m = edgeqwen.load(model, threads=1, ctx_size=64)
    rows += [("api", n, c, d) for n, c, d in run_api(m)]
    print(f"{len(rows)} inputs, {time.monotonic() - t0:.0f} s")
    cnt = collections.defaultdict(collections.Counter)
    for kind, _, cls, _ in rows:
        cnt[kind][cls] += 1
    for kind, c in sorted(cnt.items()):
        print(f"  {kind:6s} " + ", ".join(f"{k} {v}" for k, v in sorted(c.items())))
    for kind, name, cls, detail in rows:
        if cls not in OK_CLASSES:
            print(f"{cls:24s} {name[:50]!r}: {detail[:160]!r}")


if __name__ == "__main__":
    import tempfile

    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="edgeqwen-fuzz-inputs-")))
