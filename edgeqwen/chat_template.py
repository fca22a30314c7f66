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
"""
from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Mapping
from datetime import datetime
from importlib import resources

import jinja2
import jinja2.ext
import jinja2.nodes
import numpy as np
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .errors import EdgeQwenError

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
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name):
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"chat templates cannot set underscore attributes ({name!r})")


@functools.lru_cache(maxsize=16)
def compile_template(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now,
                       dict=_TemplateDict(), namespace=_TemplateNamespace)
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise EdgeQwenError(f"the chat template does not parse: {e} (line {e.lineno})") from None


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
                         **kwargs) -> str:
    """Render `messages` (a list of {"role", "content", ...} dicts) with `template`, as transformers'
    `tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=...,
    continue_final_message=..., tokenize=False, **kwargs)` does. `kwargs` (e.g. enable_thinking)
    become template variables, as do `special_tokens` (eos_token, pad_token, ...)."""
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
    try:
        text = compile_template(template).render(messages=chat, tools=tools, documents=None,
                                                 add_generation_prompt=add_generation_prompt, **variables)
    except (jinja2.TemplateError, TypeError) as e:
        raise EdgeQwenError(f"chat template error: {e}") from None
    if final is not None:
        tag = _CONTINUE_TAG.strip()
        if final.strip() not in text or tag not in text:
            raise EdgeQwenError("continue_final_message: the template does not render the final message verbatim")
        at = text.rindex(tag)
        text = text[:at] if text[at:at + len(_CONTINUE_TAG)] == _CONTINUE_TAG else text[:at].rstrip()
    return text
