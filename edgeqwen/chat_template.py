"""Chat templates rendered with jinja2 exactly as Hugging Face's `apply_chat_template` renders them.

Same environment as transformers (`utils/chat_template_utils.py`): an `ImmutableSandboxedEnvironment`
with trim_blocks and lstrip_blocks, the loopcontrols extension and the `{% generation %}` tag, the
`tojson` filter with HF's semantics (non-ASCII kept, `indent`/`separators`/`sort_keys` options, no HTML
escaping), the globals `raise_exception`, `strftime_now`, a restricted `dict` and `namespace`; the
same input normalization (keys whose value is None dropped, plain JSON data only, `reasoning` /
`thinking` aliased to `reasoning_content`), the tokenizer's special tokens as variables, and
`continue_final_message`.

The template is the GGUF's `tokenizer.chat_template`, or the official Qwen3 template
(`edgeqwen/data/tokenizer_config.json`) when a file has none.

A template is code from a file, so rendering has a budget on top of the sandbox (which already
refuses `__class__`-style access and ranges over 100,000): the source is at most MAX_SOURCE_CHARS,
strings and lists a template builds (`*`, `+`, `~`, filters, str methods, namespace attributes, the
output) at most MAX_RENDER_CHARS, integers at most MAX_INT_BITS bits, `lipsum` at most 100
paragraphs, and the whole compile + render at most MAX_RENDER_SECONDS (a trace function checks
the clock, so an empty nested loop cannot hang the process). Whatever goes wrong -- syntax,
`raise_exception`, a budget, a Python error inside the template -- is one line naming the template.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import re
import sys
import time
from collections.abc import Mapping
from datetime import datetime
from importlib import resources

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.utils
import numpy as np
from jinja2.compiler import CodeGenerator
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .errors import EdgeQwenError, one_line

MAX_SOURCE_CHARS = 1_000_000
MAX_RENDER_CHARS = 16_000_000
MAX_INT_BITS = 4096
MAX_RENDER_SECONDS = 5.0
MAX_LIPSUM = 100

_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


@functools.lru_cache(maxsize=1)
def builtin_chat_template() -> str:
    """The official Qwen3 chat template (from Qwen3's tokenizer_config.json, shipped with edgeqwen)."""
    data = resources.files("edgeqwen") / "data" / "tokenizer_config.json"
    return json.loads(data.read_text(encoding="utf-8"))["chat_template"]


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` (HF's assistant-mask marker): renders its body."""
    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller):
        return caller()


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


class _TemplateDict:
    """`dict(...)` in templates, without attribute access to the dict type."""

    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """jinja2's namespace, refusing underscore-prefixed attributes."""

    def __init__(*args, **kwargs):
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _TemplateNamespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _TemplateNamespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, _check_size(value))

    @staticmethod
    def _check(name):
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"chat templates cannot set underscore attributes ({name!r})")


class _BudgetExceeded(jinja2.exceptions.SecurityError):
    pass


class _Timeout(BaseException):
    """Raised by the trace function; a BaseException so that no `except Exception` inside jinja2
    swallows it (tracing stops once it is raised)."""


def _check_size(value, what: str = "a value"):
    if isinstance(value, (str, list, tuple, dict)) and len(value) > MAX_RENDER_CHARS:
        raise _BudgetExceeded(f"{what} of {len(value)} items is over the limit of {MAX_RENDER_CHARS}")
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > MAX_INT_BITS:
        raise _BudgetExceeded(f"an integer of {value.bit_length()} bits is over the limit of {MAX_INT_BITS}")
    return value


def _sized(x) -> int | None:
    return len(x) if isinstance(x, (str, list, tuple)) else None


class _BudgetCodeGenerator(CodeGenerator):
    """Compiles `a ~ b` so that the joined string is size-checked."""

    def visit_Concat(self, node, frame):
        self.write("environment.check_size(")
        super().visit_Concat(node, frame)
        self.write(")")


def _check_widths(fmt):
    """A format string ('%9s', '{:>9}') must not ask for a field wider than the budget."""
    if isinstance(fmt, str) and any(len(d) > 7 and int(d) > MAX_RENDER_CHARS for d in re.findall(r"\d+", fmt)):
        raise _BudgetExceeded(f"a format field width over the limit of {MAX_RENDER_CHARS}")


class _BudgetSandbox(ImmutableSandboxedEnvironment):
    """jinja2's immutable sandbox with the size budget (see the module docstring)."""
    code_generator_class = _BudgetCodeGenerator
    intercepted_binops = frozenset(["*", "**", "+", "%"])

    def __init__(self, **kw):
        super().__init__(**kw)
        self.check_size = _check_size
        self.filters = {name: _bounded(f) for name, f in self.filters.items()}

    def call_binop(self, context, operator, left, right):
        ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (left, right))
        if operator == "**" and ints and right > 0 and abs(left) > 1 and \
                right * abs(left).bit_length() > MAX_INT_BITS:
            raise _BudgetExceeded(f"{left} ** {right} is over the integer limit of {MAX_INT_BITS} bits")
        if operator == "*":
            if ints and left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise _BudgetExceeded(f"a product over the integer limit of {MAX_INT_BITS} bits")
            for seq, n in ((left, right), (right, left)):
                if _sized(seq) is not None and isinstance(n, int) and _sized(seq) * max(n, 0) > MAX_RENDER_CHARS:
                    raise _BudgetExceeded(f"a repetition of {_sized(seq)} x {n} items is over the limit of "
                                          f"{MAX_RENDER_CHARS}")
        if operator == "%":
            _check_widths(left)
        if operator == "+" and _sized(left) is not None and _sized(right) is not None and \
                _sized(left) + _sized(right) > MAX_RENDER_CHARS:
            raise _BudgetExceeded(f"a string or list over the limit of {MAX_RENDER_CHARS} items")
        return _check_size(super().call_binop(context, operator, left, right))

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 -- jinja2's signature
        name = getattr(__obj, "__name__", "")
        if isinstance(getattr(__obj, "__self__", None), str) and name in ("center", "ljust", "rjust", "zfill"):
            width = args[0] if args else kwargs.get("width", 0)
            if isinstance(width, int) and width > MAX_RENDER_CHARS:
                raise _BudgetExceeded(f"str.{name}({width}) is over the limit of {MAX_RENDER_CHARS} characters")
        if name in ("format", "format_map"):       # the sandbox's wrapper of str.format keeps __wrapped__
            _check_widths(getattr(getattr(__obj, "__wrapped__", __obj), "__self__", None))
        return _check_size(super().call(__context, __obj, *args, **kwargs))


def _bounded(f):
    """A filter whose integer arguments (widths, counts) and result are size-checked."""
    @functools.wraps(f)
    def filt(*args, **kwargs):
        for a in (*args, *kwargs.values()):
            if isinstance(a, int) and not isinstance(a, bool) and a > MAX_RENDER_CHARS:
                raise _BudgetExceeded(f"filter {f.__name__} argument {a} is over the limit of {MAX_RENDER_CHARS}")
        return _check_size(f(*args, **kwargs))
    return filt


def _lipsum(n=5, html=True, min=20, max=100):  # noqa: A002 -- jinja2's signature
    if not isinstance(n, int) or n > MAX_LIPSUM:
        raise _BudgetExceeded(f"lipsum({n!r}): at most {MAX_LIPSUM} paragraphs")
    return jinja2.utils.generate_lorem_ipsum(n=n, html=html, min=min, max=max)


class _Deadline:
    """A trace function that raises _Timeout once `seconds` have passed, checked every 256
    events: every Python call, and every line of the compiled template's own code (loops) --
    not the lines of jinja2's or Python's functions, which would make rendering 5x slower."""

    def __init__(self, seconds: float):
        self.end, self.n = time.monotonic() + seconds, 0

    def __call__(self, frame, event, arg):
        self.n += 1
        if not self.n & 255 and time.monotonic() > self.end:
            raise _Timeout
        return self if frame.f_code.co_filename == "<template>" else None

    def __enter__(self):
        self.old = sys.gettrace()
        sys.settrace(self)
        return self

    def __exit__(self, *exc):
        sys.settrace(self.old)


def _fail(name: str, e: BaseException) -> EdgeQwenError:
    """One line for anything that went wrong in a template."""
    if isinstance(e, _Timeout):
        why = f"rendering took more than {MAX_RENDER_SECONDS:g} s (a loop too long?)"
    elif isinstance(e, RecursionError):
        why = "recursion too deep"
    elif isinstance(e, MemoryError):
        why = "out of memory"
    elif isinstance(e, jinja2.TemplateSyntaxError):
        why = f"does not parse: {one_line(str(e.message or e))} (line {e.lineno})"
    elif isinstance(e, jinja2.TemplateError):
        why = one_line(str(e.message if getattr(e, "message", None) else e))
    else:
        why = f"{type(e).__name__}: {one_line(str(e))}"
    return EdgeQwenError(f"{name}: chat template error: {why}")


@functools.lru_cache(maxsize=16)
def _compile(source: str) -> jinja2.Template:
    env = _BudgetSandbox(trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _bounded(_tojson)
    env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now,
                       dict=_TemplateDict(), namespace=_TemplateNamespace, lipsum=_lipsum)
    return env.from_string(source)


def compile_template(source: str, name: str = "the chat template") -> jinja2.Template:
    """The compiled template (cached); EdgeQwenError naming `name` if it is not a valid one."""
    if not isinstance(source, str):
        raise EdgeQwenError(f"{name}: the chat template must be a string, got {type(source).__name__}")
    if len(source) > MAX_SOURCE_CHARS:
        raise EdgeQwenError(f"{name}: the chat template has {len(source)} characters, over the limit of "
                            f"{MAX_SOURCE_CHARS}")
    try:
        with _Deadline(MAX_RENDER_SECONDS):
            return _compile(source)
    except (Exception, _Timeout) as e:      # any failure of untrusted template code is the template's
        raise _fail(name, e) from None


def _plain(value):
    """Rebuild `value` from plain JSON types (what the sandbox may see); anything else -> '<TypeName>'."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, np.generic):
        return _plain(value.item())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return f"<{type(value).__name__}>"


def _alias_reasoning(message: dict) -> dict:
    reasoning = next((message[k] for k in _REASONING_FIELDS if message.get(k) is not None), None)
    if reasoning is None:
        return message
    return {"thinking": reasoning, **message, "reasoning_content": reasoning}


def render_chat_template(template: str, messages, *, tools=None, add_generation_prompt: bool = True,
                         continue_final_message: bool = False, special_tokens: Mapping | None = None,
                         template_name: str = "the chat template", **kwargs) -> str:
    """Render `messages` (a list of {"role", "content", ...} dicts) with `template`, as transformers'
    `tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=...,
    continue_final_message=..., tokenize=False, **kwargs)` does. `kwargs` (e.g. enable_thinking)
    become template variables, as do `special_tokens` (eos_token, pad_token, ...). Errors name the
    template as `template_name` (where it came from)."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise EdgeQwenError("the conversation must be a non-empty list of messages")
    chat = []
    for m in messages:
        if not isinstance(m, Mapping):
            raise EdgeQwenError(f"a message must be a dict with 'role' and 'content', got {m!r}")
        chat.append(_alias_reasoning(_plain({k: v for k, v in m.items() if v is not None})))
    if tools is not None:
        if not all(isinstance(t, Mapping) for t in tools):
            raise EdgeQwenError("tools must be a list of JSON schemas (dicts)")
        tools = _plain(list(tools))
    variables = {**_plain(dict(special_tokens or {})), **_plain(kwargs)}
    final = None
    if continue_final_message:
        if add_generation_prompt:
            raise EdgeQwenError("continue_final_message and add_generation_prompt are not compatible")
        final = chat[-1].get("content")
        if not isinstance(final, str):
            raise EdgeQwenError("continue_final_message needs a final message with text content")
        chat[-1]["content"] = final + _CONTINUE_TAG
    compiled = compile_template(template, template_name)
    try:
        with _Deadline(MAX_RENDER_SECONDS):
            text = compiled.render(messages=chat, tools=tools, documents=None,
                                   add_generation_prompt=add_generation_prompt, **variables)
        _check_size(text, "the rendered prompt")
    except (Exception, _Timeout) as e:      # any failure of untrusted template code is the template's
        raise _fail(template_name, e) from None
    if final is not None:
        tag = _CONTINUE_TAG.strip()
        if final.strip() not in text or tag not in text:
            raise EdgeQwenError("continue_final_message: the template does not render the final message verbatim")
        at = text.rindex(tag)
        text = text[:at] if text[at:at + len(_CONTINUE_TAG)] == _CONTINUE_TAG else text[:at].rstrip()
    return text
