"""One policy for text and JSON input (issue 12), used by every entry point: `run` (-p, --prompt-file),
`chat --messages` / `--tools`, `batch` (JSONL, text files, directories) and the Python API
(`Model.generate` / `stream` / `chat` / `batch`).

- Bytes are strict UTF-8; a UTF-8 BOM at the start is dropped; anything else undecodable is an error
  naming the byte and its offset.
- JSONL is split on b"\\n" only (a trailing \\r is dropped), never `str.splitlines`: a raw U+2028,
  U+2029 or \\x85 inside a JSON string is text, not a line break.
- JSON is parsed with Python's own limits turned into clean errors: nesting deeper than the recursion
  limit (RecursionError) and integers past `sys.get_int_max_str_digits()` (ValueError).
- Parsed values (and API arguments) are checked by `check_value`: every string and key must have a
  UTF-8 form (no lone surrogates such as `"\\ud800"`), nesting is bounded (a self-referencing
  structure is refused, not recursed into), integers are bounded.
All failures are `EdgeQwenError`s with one line of text.
"""
from __future__ import annotations

import json
import sys

from .errors import EdgeQwenError, check_text, quote

BOM = b"\xef\xbb\xbf"
MAX_DEPTH = 100          # nesting of an item, a message list or a tool schema
MAX_INT_BITS = 128       # no option needs more (seeds are < 2**64)

__all__ = ["BOM", "EdgeQwenError", "check_text", "decode_utf8", "read_text_file", "split_lines", "parse_json",
           "read_json_file", "check_value", "check_messages", "check_tools", "check_stop", "check_prompt"]


def decode_utf8(data: bytes, what: str, bom: bool = True) -> str:
    """`data` as strict UTF-8 text, without a leading BOM (kept with bom=False: a line inside a file)."""
    if bom and data.startswith(BOM):
        data = data[len(BOM):]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise EdgeQwenError(f"{what} is not UTF-8 text (invalid byte {data[e.start]:#04x} at offset "
                            f"{e.start})") from None


def read_text_file(path, what: str, limit: int) -> str:
    """A UTF-8 text file ('-' = stdin) of at most `limit` bytes."""
    try:
        if str(path) == "-":
            data = sys.stdin.buffer.read(limit + 1)
        else:
            with open(path, "rb") as f:
                data = f.read(limit + 1)
    except OSError as e:
        raise EdgeQwenError(f"cannot read the {what} {path}: {e.strerror or e}") from None
    if len(data) > limit:
        raise EdgeQwenError(f"{path}: the {what} is larger than {limit / 2**20:g} MiB")
    return decode_utf8(data, f"{path}: the {what}")


def split_lines(data: bytes) -> list[tuple[int, bytes]]:
    """(line number, bytes) of each line: split on b"\\n" only, BOM at the start and a trailing \\r
    dropped. Blank lines are kept (numbering stays true); callers skip them."""
    if data.startswith(BOM):
        data = data[len(BOM):]
    parts = data.split(b"\n")
    if parts and parts[-1] == b"":
        parts.pop()
    return [(n, p[:-1] if p.endswith(b"\r") else p) for n, p in enumerate(parts, 1)]


def parse_json(text: str | bytes, what: str):
    """The JSON value of `text`; every problem is one EdgeQwenError line starting with `what`."""
    if isinstance(text, (bytes, bytearray)):
        text = decode_utf8(bytes(text), what)
    if text.startswith("\ufeff"):
        text = text[1:]
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        at = f"column {e.colno}" if e.lineno == 1 else f"line {e.lineno} column {e.colno}"
        raise EdgeQwenError(f"{what}: invalid JSON: {e.msg} ({at})") from None
    except RecursionError:
        raise EdgeQwenError(f"{what}: JSON nested too deeply") from None
    except ValueError:      # Python's int-digit limit
        raise EdgeQwenError(f"{what}: a number with more than {sys.get_int_max_str_digits()} digits") from None


def read_json_file(path, what: str, limit: int):
    return parse_json(read_text_file(path, what, limit), f"cannot read the {what} {path}")


def _path(parts) -> str:
    return "".join(f"[{quote(p, 40)}]" for p in parts)


def check_value(obj, what: str, *, skip_keys: tuple = ()) -> None:
    """Refuse lone surrogates in any string or key, nesting deeper than MAX_DEPTH (a structure that
    contains itself), and integers wider than MAX_INT_BITS. Top-level keys in `skip_keys` are not
    looked at. Iterative: never a RecursionError."""
    stack = [(obj, (), 0)]
    while stack:
        x, path, depth = stack.pop()
        if isinstance(x, str):
            try:
                x.encode("utf-8")
            except UnicodeEncodeError as e:
                raise EdgeQwenError(f"{what}{_path(path)} is not valid text: a lone surrogate {x[e.start]!r} at "
                                    f"character {e.start}") from None
        elif isinstance(x, bool) or x is None or isinstance(x, float):
            pass
        elif isinstance(x, int):
            if x.bit_length() > MAX_INT_BITS:
                raise EdgeQwenError(f"{what}{_path(path)}: an integer of {x.bit_length()} bits is out of range")
        elif isinstance(x, (dict, list, tuple)):
            if depth >= MAX_DEPTH:
                raise EdgeQwenError(f"{what}: nested more than {MAX_DEPTH} levels deep (or it contains itself)")
            if isinstance(x, dict):
                for k, v in x.items():
                    if depth == 0 and k in skip_keys:
                        continue
                    if isinstance(k, str):
                        try:
                            k.encode("utf-8")
                        except UnicodeEncodeError:
                            raise EdgeQwenError(f"{what}{_path(path)}: the key {k!r} is not valid text (a lone "
                                                f"surrogate)") from None
                    stack.append((v, path + (k,), depth + 1))
            else:
                stack.extend((v, path + (i,), depth + 1) for i, v in enumerate(x))


def check_prompt(prompt, what: str = "the prompt") -> str:
    if not isinstance(prompt, str):
        raise EdgeQwenError(f"{what} must be a string, got {type(prompt).__name__}")
    return check_text(prompt, what)


def check_messages(messages, what: str = "messages") -> list:
    """A chat conversation: a non-empty list of dicts, each with a string 'role' and a 'content' that
    is a string, a list of parts or null; all text valid."""
    if not isinstance(messages, list) or not messages:
        got = type(messages).__name__ if not isinstance(messages, list) else "an empty list"
        raise EdgeQwenError(f"{what} must be a non-empty list of {{\"role\": ..., \"content\": ...}} objects, "
                            f"got {got}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise EdgeQwenError(f"{what}[{i}] must be an object with 'role' and 'content', got {type(m).__name__}")
        if not isinstance(m.get("role"), str):
            raise EdgeQwenError(f"{what}[{i}]: 'role' must be a string, got {quote(m.get('role'), 60)}")
        c = m.get("content")
        if not (c is None or isinstance(c, str) or isinstance(c, list) and all(isinstance(p, dict) for p in c)):
            raise EdgeQwenError(f"{what}[{i}]: 'content' must be a string, a list of parts or null, got "
                                f"{type(c).__name__}")
    check_value(messages, what)
    return messages


def check_tools(tools, what: str = "tools") -> list | None:
    if tools is None:
        return None
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise EdgeQwenError(f"{what} must be a list of tool schemas (objects), got {type(tools).__name__}")
    check_value(tools, what)
    return tools


def check_stop(stop, what: str = "stop") -> list[str]:
    """A stop string or a list of them: non-empty, valid text."""
    if stop is None:
        return []
    items = [stop] if isinstance(stop, str) else stop
    if not isinstance(items, (list, tuple)) or not all(isinstance(s, str) and s for s in items):
        raise EdgeQwenError(f"'{what}' must be a non-empty string or a list of them, got {quote(stop, 80)}")
    for s in items:
        check_text(s, f"a {what} string")
    return list(items)
