"""Structured output: JSON schema, JSON mode, regex and Lark grammars as a mask on the logits.

    fmt = compile_format(tokenizer, {"type": "json_schema", "json_schema": {"schema": {...}}})
    state = fmt.start()                   # one per sequence (cheap: a copy of the compiled matcher)
    x = state.mask(logits)                # disallowed tokens -> -inf (a copy; raises if none is allowed)
    state.advance(token)                  # after every accepted token

The grammar engine is llguidance (the Rust library behind llama.cpp's `--llguidance`; JSON schema,
regex and Lark): its token trie is built once per tokenizer from our exact token bytes, and a
compiled format is cached by (tokenizer, format), so a schema shared by many batch items is compiled
once. The grammar's accepting state allows the end-of-generation tokens, so a finished object ends
generation cleanly. Special tokens (`<|im_end|>`, `<think>`, `<tool_call>`, ...) never appear inside
the constrained text.

Accepted `response_format` shapes (OpenAI's, plus two extensions for the CLI's --regex/--grammar):
    {"type": "text"}                                    no constraint (None)
    {"type": "json_object"}                             any JSON object
    {"type": "json_schema", "json_schema": {"name": ..., "schema": {...}, "strict": true}}
    {"type": "regex", "regex": "[0-9]{3}-[0-9]{4}"}
    {"type": "grammar", "grammar": "start: ..."}         Lark syntax, as llguidance reads it
"""
from __future__ import annotations

import functools
import json
import threading
import weakref

import numpy as np

from .errors import EdgeQwenError, one_line, quote
from .tokenizer import Tokenizer

__all__ = ["Format", "Constraint", "compile_format", "format_from_options", "tool_call_format", "FORMAT_TYPES"]

FORMAT_TYPES = ("text", "json_object", "json_schema", "regex", "grammar")
# Compact JSON: no free whitespace between tokens, so a model cannot pad an object forever.
_JSON_OPTIONS = {"whitespace_flexible": False}
# Numbers get at most 16 integer digits and 10 decimals (llama.cpp's JSON-schema grammar bounds them
# to 16 and 16): a model repeating a digit ends its number, and longer numbers carry no float64 precision.
_INT_LIMIT = 10**16 - 1
_DECIMAL_STEP = 1e-10
_DATA_KEYS = ("enum", "const", "default", "examples")
_lock = threading.Lock()


def _llguidance():
    try:
        import llguidance
        import llguidance.numpy  # noqa: F401
    except ImportError:
        raise EdgeQwenError("structured output needs the llguidance package: pip install llguidance") from None
    return llguidance


class _TokenBytes:
    """The object llguidance's TokenizerWrapper reads: every token's bytes, the special ids, an encoder."""

    def __init__(self, tok: Tokenizer):
        self.tokens = tok.all_token_bytes()
        self.eos_token_id, self.bos_token_id = tok.eos_id, None
        # added tokens (control and user-defined: <|im_end|>, <think>, <tool_call>) and unused padding ids
        # are never text inside a grammar. (tokenizer.py gives every added token to HF `tokenizers`.)
        added = set(tok._hf.get_added_tokens_decoder())
        self.special_token_ids = sorted(added | {i for i, b in enumerate(self.tokens) if not b})
        self._tok = tok

    def __call__(self, s):
        return self._tok.encode(s.decode("utf-8", "replace") if isinstance(s, bytes) else s, special=False)


_ll_tokenizers: "weakref.WeakKeyDictionary[Tokenizer, object]" = weakref.WeakKeyDictionary()


def _ll_tokenizer(tok: Tokenizer):
    """llguidance's tokenizer (its token trie) for `tok`, built once (~1 s for 151,936 tokens)."""
    with _lock:
        lt = _ll_tokenizers.get(tok)
        if lt is None:
            ll = _llguidance()
            lt = ll.LLTokenizer(ll.TokenizerWrapper(_TokenBytes(tok)), n_vocab=tok.n_vocab,
                                eos_token=sorted(tok.stop_ids))
            _ll_tokenizers[tok] = lt
        return lt


class Constraint:
    """One sequence's position in a grammar: `mask` the next logits, `advance` by the chosen token."""

    __slots__ = ("fmt", "matcher", "_bits", "_n_tokens")

    def __init__(self, fmt: Format, matcher):
        self.fmt, self.matcher = fmt, matcher
        self._bits = np.zeros((1, (fmt.n_vocab + 31) // 32), dtype=np.int32)  # (1, words) one bit per token
        self._n_tokens = 0

    def allowed(self) -> np.ndarray:
        """(n_vocab,) bool: the tokens the grammar allows next (end-of-generation ids when it accepts)."""
        self._check()
        _llguidance().numpy.fill_next_token_bitmask(self.matcher, self._bits)
        self._check()
        return np.unpackbits(self._bits.view(np.uint8), bitorder="little", count=self.fmt.n_vocab).view(bool)

    def mask(self, logits: np.ndarray) -> np.ndarray:
        """A copy of `logits` (vocab,) with every token the grammar forbids at -inf."""
        ok = self.allowed()
        n = min(ok.shape[0], logits.shape[0])   # logits past the tokenizer's vocab are never allowed
        out = np.full(logits.shape, -np.inf, dtype=logits.dtype)
        np.copyto(out[:n], logits[:n], where=ok[:n])
        if not ok[:n].any():
            raise EdgeQwenError(f"{self.fmt.what}: no token can continue the output after {self._n_tokens} "
                                f"token(s) (the grammar allows none, or only tokens outside the model's vocabulary)")
        return out

    def advance(self, token: int) -> None:
        if not self.matcher.consume_token(int(token)):
            raise EdgeQwenError(f"{self.fmt.what}: token {token} does not fit the grammar after {self._n_tokens} "
                                f"token(s): {one_line(self.matcher.get_error())}")
        self._n_tokens += 1

    @property
    def done(self) -> bool:
        """The grammar is complete: only an end-of-generation token can follow."""
        return self.matcher.is_stopped()

    def is_accepting(self) -> bool:
        return self.matcher.is_accepting()

    def _check(self) -> None:
        if self.matcher.is_error():
            raise EdgeQwenError(f"{self.fmt.what}: {one_line(self.matcher.get_error())}")


class Format:
    """A compiled response format, immutable and shared: `start()` gives a sequence its Constraint."""

    def __init__(self, tok: Tokenizer, grammar: str, what: str, kind: str):
        ll = _llguidance()
        self.what, self.kind, self.n_vocab = what, kind, tok.n_vocab
        lt = _ll_tokenizer(tok)
        is_error, messages = ll.LLMatcher.validate_grammar_with_warnings(grammar, lt)
        if is_error:
            raise EdgeQwenError(f"{what}: {one_line(messages[0] if messages else 'invalid grammar')}")
        self._matcher = ll.LLMatcher(lt, grammar, log_level=0)
        if self._matcher.is_error():
            raise EdgeQwenError(f"{what}: {one_line(self._matcher.get_error())}")

    def start(self) -> Constraint:
        return Constraint(self, self._matcher.deep_copy())

    def __repr__(self) -> str:
        return f"<Format {self.what}>"


def bounded_numbers(schema):
    """A copy of `schema` whose numbers have bounded digits (see _INT_LIMIT): a range added where the
    schema gives none, and a decimal step where a number has no multipleOf. Every value it allows is
    allowed by `schema`."""
    if isinstance(schema, list):
        return [bounded_numbers(v) for v in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: v if k in _DATA_KEYS else bounded_numbers(v) for k, v in schema.items()}
    types = out.get("type")
    types = [types] if isinstance(types, str) else types if isinstance(types, list) else []
    if "number" in types or "integer" in types:
        if "minimum" not in out and "exclusiveMinimum" not in out:
            out["minimum"] = -_INT_LIMIT
        if "maximum" not in out and "exclusiveMaximum" not in out:
            out["maximum"] = _INT_LIMIT
        if "number" in types and "multipleOf" not in out:
            out["multipleOf"] = _DECIMAL_STEP
    return out


def _json_grammar(schema, what: str) -> str:
    M = _llguidance().LLMatcher
    try:
        g = M.grammar_from_json_schema(bounded_numbers(schema), defaults=_JSON_OPTIONS)
        if M.validate_grammar(g):            # e.g. a bound too large for the digit limit: as given
            g = M.grammar_from_json_schema(schema, defaults=_JSON_OPTIONS)
        return g
    except (ValueError, TypeError) as e:
        raise EdgeQwenError(f"{what}: {one_line(str(e))}") from None


def _schema_of(rf: dict) -> tuple[object, str]:
    js = rf.get("json_schema")
    if not isinstance(js, dict):
        raise EdgeQwenError(f"response_format json_schema must be an object with a 'schema', got {quote(js, 80)}")
    schema = js.get("schema")
    if not isinstance(schema, (dict, bool)):
        raise EdgeQwenError(f"response_format json_schema.schema must be a JSON schema object, got {quote(schema, 80)}")
    name = js.get("name")
    return schema, f"JSON schema {quote(name, 60)}" if isinstance(name, str) else "the JSON schema"


def _grammar_of(rf) -> tuple[str, str, str]:
    """(llguidance grammar, description, kind) of a response_format, or ("", "", "text")."""
    if not isinstance(rf, dict):
        raise EdgeQwenError(f"response_format must be an object such as {{\"type\": \"json_object\"}}, "
                            f"got {quote(rf, 80)}")
    kind = rf.get("type")
    if kind not in FORMAT_TYPES:
        raise EdgeQwenError(f"response_format type must be one of {', '.join(FORMAT_TYPES)}, got {quote(kind, 60)}")
    M = _llguidance().LLMatcher
    if kind == "text":
        return "", "", kind
    if kind == "json_object":
        return _json_grammar({"type": "object"}, "JSON mode"), "JSON mode", kind
    if kind == "json_schema":
        schema, what = _schema_of(rf)
        if schema is True or schema == {}:
            schema = {}                                   # any JSON value
        elif schema is False:
            raise EdgeQwenError(f"{what} is `false`: no output can match it")
        return _json_grammar(schema, what), what, kind
    key = "regex" if kind == "regex" else "grammar"
    text = rf.get(key)
    if not isinstance(text, str) or not text:
        raise EdgeQwenError(f"response_format {kind} needs a non-empty string '{key}', got {quote(text, 80)}")
    if kind == "regex":
        return M.grammar_from_regex(text), f"the regex {quote(text, 80)}", kind
    return M.grammar_from_lark(text), "the Lark grammar", kind


@functools.lru_cache(maxsize=64)
def _compile(tok: Tokenizer, key: str) -> Format | None:
    grammar, what, kind = _grammar_of(json.loads(key))
    return Format(tok, grammar, what, kind) if grammar else None


def compile_format(tok: Tokenizer, response_format) -> Format | None:
    """The compiled `response_format` (see the module docstring), None for no constraint (None or
    {"type": "text"}). A bad schema, regex or grammar raises one EdgeQwenError line naming it.
    Compiled formats are cached: the same format on the same tokenizer compiles once."""
    if response_format is None or isinstance(response_format, Format):
        return response_format
    try:
        key = json.dumps(response_format, sort_keys=True, ensure_ascii=False)
    except (TypeError, ValueError) as e:
        raise EdgeQwenError(f"response_format must be JSON data: {e}") from None
    return _compile(tok, key)


def format_from_options(json_schema: dict | None = None, json_mode: bool = False, regex: str | None = None,
                        grammar: str | None = None, name: str | None = None) -> dict | None:
    """The response_format of the CLI's --json-schema / --json / --regex / --grammar (at most one)."""
    given = [k for k, v in (("--json-schema", json_schema is not None), ("--json", json_mode),
                            ("--regex", regex is not None), ("--grammar", grammar is not None)) if v]
    if len(given) > 1:
        raise EdgeQwenError(f"give at most one of {', '.join(given)}")
    if json_schema is not None:
        js = {"schema": json_schema, "strict": True}
        if name:
            js["name"] = name
        return {"type": "json_schema", "json_schema": js}
    if json_mode:
        return {"type": "json_object"}
    if regex is not None:
        return {"type": "regex", "regex": regex}
    if grammar is not None:
        return {"type": "grammar", "grammar": grammar}
    return None


def tool_call_format(tools, tool_choice) -> dict | None:
    """The response_format that makes the answer one Qwen3 `<tool_call>` block whose JSON calls a
    function of `tools` (OpenAI's list) with arguments valid for its `parameters` schema:
    tool_choice "required" (any of them) or {"type": "function", "function": {"name": ...}} (that
    one). None for "auto", "none" or None (the model chooses freely)."""
    if tool_choice in (None, "auto", "none"):
        return None
    if not isinstance(tools, list) or not tools:
        raise EdgeQwenError(f"tool_choice {quote(tool_choice, 80)} needs a non-empty list of tools")
    functions = [t.get("function", t) if isinstance(t, dict) else None for t in tools]
    if not all(isinstance(f, dict) and isinstance(f.get("name"), str) for f in functions):
        raise EdgeQwenError("every tool must be a function with a 'name' (OpenAI's tools shape)")
    if tool_choice != "required":
        name = tool_choice.get("function", {}).get("name") if isinstance(tool_choice, dict) else None
        if not isinstance(name, str):
            raise EdgeQwenError(f"tool_choice must be \"auto\", \"none\", \"required\" or {{\"type\": "
                                f"\"function\", \"function\": {{\"name\": ...}}}}, got {quote(tool_choice, 80)}")
        functions = [f for f in functions if f["name"] == name]
        if not functions:
            raise EdgeQwenError(f"tool_choice names {quote(name, 60)}, which is not among the tools")
    calls = [{"type": "object", "additionalProperties": False, "required": ["name", "arguments"],
              "properties": {"name": {"const": f["name"]},
                             "arguments": bounded_numbers(f.get("parameters") or {"type": "object"})}}
             for f in functions]
    schema = {**(calls[0] if len(calls) == 1 else {"anyOf": calls}), "x-guidance": _JSON_OPTIONS}
    return {"type": "grammar",
            "grammar": 'start: <tool_call> "\\n" call "\\n" </tool_call>\ncall: %json ' + json.dumps(schema)}
