"""Request checking and response shapes of the OpenAI-compatible API (field names as the `openai`
package's types: ChatCompletion, ChatCompletionChunk, Completion, CompletionUsage, Model).

Every problem with a request becomes an `APIError` (status, one-line message, the offending field)
before anything reaches an engine thread. Fields the `openai` client or Open WebUI send that change
nothing here (user, metadata, store, ...) are accepted and ignored; values this server cannot honour
(n > 1, logprobs, a JSON schema response format, ...) are refused with 400.
"""
from __future__ import annotations

import json
import math
import numbers
import secrets
import time
from dataclasses import dataclass, field

from ..errors import EdgeQwenError, quote
from ..inputs import check_messages, check_stop, check_tools, check_value
from ..limits import MAX_SEED, MAX_TOKENS, MAX_TOP_K


class APIError(Exception):
    """An error answered as OpenAI does: {"error": {"message", "type", "param", "code"}}."""
    TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
             405: "invalid_request_error", 413: "invalid_request_error", 500: "server_error", 503: "server_error"}

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.TYPES.get(self.status, "server_error"),
                          "param": self.param, "code": self.code}}


def bad(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param, code)


# ---------------------------------------------------------------- field checks

def _number(body: dict, name: str, low: float, high: float) -> float | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or not low <= v <= high:
        raise bad(f"'{name}' must be a number in [{low:g}, {high:g}], got {quote(v, 60)}", name)
    return float(v)


def _integer(body: dict, name: str, low: int, high: int) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
        raise bad(f"'{name}' must be an integer in {low}..{high}, got {quote(v, 60)}", name)
    return v


def _boolean(body: dict, name: str, default: bool | None) -> bool | None:
    v = body.get(name, default)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise bad(f"'{name}' must be true or false, got {quote(v, 60)}", name)
    return v


def _string(body: dict, name: str, required: bool = False) -> str | None:
    v = body.get(name)
    if v is None and not required:
        return None
    if not isinstance(v, str) or not v:
        raise bad(f"'{name}' must be a non-empty string, got {quote(v, 60)}", name)
    return v


def _refuse(body: dict, name: str, allowed, why: str) -> None:
    """400 if `name` is given with a value other than those in `allowed` (None = absent is always fine)."""
    v = body.get(name)
    if v is not None and v not in allowed:
        raise bad(f"'{name}' = {quote(v, 60)} is not supported: {why}", name)


def _sampling(body: dict) -> dict:
    """SamplingParams overrides; absent fields are left out (the mode's or the file's defaults apply)."""
    s = {"temperature": _number(body, "temperature", 0, 2),
         "top_p": _number(body, "top_p", 0, 1),
         "top_k": _integer(body, "top_k", -1, MAX_TOP_K),
         "min_p": _number(body, "min_p", 0, 1),
         "presence_penalty": _number(body, "presence_penalty", -2, 2),
         "frequency_penalty": _number(body, "frequency_penalty", -2, 2),
         "repetition_penalty": _number(body, "repetition_penalty", 0, 10),
         "seed": _integer(body, "seed", -(2**63), MAX_SEED)}
    if s["top_p"] == 0:
        raise bad("'top_p' must be > 0 (1 = off)", "top_p")
    if s["repetition_penalty"] == 0:
        raise bad("'repetition_penalty' must be > 0 (1 = off)", "repetition_penalty")
    if s["top_k"] == -1:                      # vLLM's "off"
        s["top_k"] = 0
    if s["seed"] is not None and s["seed"] < 0:
        s["seed"] %= 2**64
    return {k: v for k, v in s.items() if v is not None}


def _max_tokens(body: dict) -> int | None:
    a = _integer(body, "max_completion_tokens", 0, MAX_TOKENS)
    b = _integer(body, "max_tokens", 0, MAX_TOKENS)
    return a if a is not None else b


def _stop(body: dict) -> list[str]:
    try:
        stop = check_stop(body.get("stop"))
    except EdgeQwenError as e:
        raise bad(str(e), "stop") from None
    if len(stop) > 16:
        raise bad(f"at most 16 stop strings, got {len(stop)}", "stop")
    return stop


def _common(body: dict) -> None:
    _refuse(body, "n", (1,), "this server returns one choice per request")
    _refuse(body, "best_of", (1,), "this server returns one choice per request")
    _refuse(body, "logprobs", (False, 0), "log probabilities are not returned")
    _refuse(body, "top_logprobs", (0,), "log probabilities are not returned")
    _refuse(body, "echo", (False,), "the prompt is not echoed")
    so = body.get("stream_options")
    if so is not None and not isinstance(so, dict):
        raise bad(f"'stream_options' must be an object, got {quote(so, 60)}", "stream_options")


def _logit_bias(body: dict, n_vocab: int) -> dict[int, float]:
    lb = body.get("logit_bias")
    if lb is None:
        return {}
    if not isinstance(lb, dict) or len(lb) > 1024:
        raise bad("'logit_bias' must be an object of at most 1024 token ids -> bias", "logit_bias")
    out = {}
    for k, v in lb.items():
        try:
            t = int(k)
        except (TypeError, ValueError):
            t = -1
        if not 0 <= t < n_vocab or isinstance(v, bool) or not isinstance(v, numbers.Real) or not -100 <= v <= 100:
            raise bad(f"'logit_bias': {quote(k, 40)}: {quote(v, 40)} must map a token id in 0..{n_vocab - 1} to a "
                      f"number in [-100, 100]", "logit_bias")
        out[t] = float(v)
    return out


# ---------------------------------------------------------------- requests

@dataclass
class ChatRequest:
    model: str | None
    messages: list
    tools: list | None
    stream: bool
    include_usage: bool
    max_tokens: int | None
    enable_thinking: bool
    thinking_budget: int | None
    stop: list[str]
    sampling: dict
    logit_bias: dict = field(default_factory=dict)
    response_format: dict | None = None            # checked by the chat engine (constrain.py) where it has one


@dataclass
class CompletionRequest:
    model: str | None
    prompt: str | list[int]
    stream: bool
    include_usage: bool
    max_tokens: int | None
    stop: list[str]
    sampling: dict


def _flatten_content(messages: list) -> list:
    """Content parts [{"type": "text", "text": ...}] joined into a string (the chat template wants text);
    no content (an assistant message with tool calls only) is ""."""
    out = []
    for i, m in enumerate(messages):
        c = m.get("content")
        if c is None:
            m = {**m, "content": ""}
        if isinstance(c, list):
            texts = []
            for p in c:
                if p.get("type") != "text" or not isinstance(p.get("text"), str):
                    raise bad(f"messages[{i}]: only text content parts are supported, got {quote(p.get('type'), 40)}",
                              "messages")
                texts.append(p["text"])
            m = {**m, "content": "".join(texts)}
        out.append(m)
    return out


def parse_chat(body, n_vocab: int) -> ChatRequest:
    if not isinstance(body, dict):
        raise bad(f"the request body must be a JSON object, got {type(body).__name__}")
    _common(body)
    try:
        messages = check_messages(body.get("messages"), "'messages'")
        tools = check_tools(body.get("tools"), "'tools'")
    except EdgeQwenError as e:
        raise bad(str(e), "messages" if "messages" in str(e) else "tools") from None
    messages = _flatten_content(messages)
    tc = body.get("tool_choice")
    if tc not in (None, "auto", "none"):
        raise bad(f"'tool_choice' = {quote(tc, 80)} is not supported (supported: \"auto\", \"none\")", "tool_choice")
    if tc == "none":
        tools = None
    rf = body.get("response_format")
    if rf is not None and not (isinstance(rf, dict) and isinstance(rf.get("type"), str)):
        raise bad(f"'response_format' must be an object with a 'type', got {quote(rf, 80)}", "response_format")
    if rf is not None and rf["type"] == "text":
        rf = None
    kwargs = body.get("chat_template_kwargs")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise bad(f"'chat_template_kwargs' must be an object, got {quote(kwargs, 60)}", "chat_template_kwargs")
    thinking = _boolean(body, "enable_thinking", None)
    if kwargs and "enable_thinking" in kwargs:
        thinking = _boolean(kwargs, "enable_thinking", True)
    so = body.get("stream_options") or {}
    return ChatRequest(
        model=_string(body, "model"), messages=messages, tools=tools or None,
        stream=bool(_boolean(body, "stream", False)), include_usage=bool(_boolean(so, "include_usage", False)),
        max_tokens=_max_tokens(body), enable_thinking=True if thinking is None else thinking,
        thinking_budget=_integer(body, "thinking_budget", 0, MAX_TOKENS), stop=_stop(body),
        sampling=_sampling(body), logit_bias=_logit_bias(body, n_vocab), response_format=rf)


def parse_completion(body, n_vocab: int) -> CompletionRequest:
    if not isinstance(body, dict):
        raise bad(f"the request body must be a JSON object, got {type(body).__name__}")
    _common(body)
    if body.get("suffix"):
        raise bad("'suffix' (fill-in-the-middle) is not supported", "suffix")
    if body.get("logit_bias"):
        raise bad("'logit_bias' is supported on /v1/chat/completions only", "logit_bias")
    p = body.get("prompt")
    if isinstance(p, list) and len(p) == 1 and isinstance(p[0], (str, list)):
        p = p[0]                                          # a batch of one
    if isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
        if not all(0 <= t < n_vocab for t in p):
            raise bad(f"'prompt': token ids must be in 0..{n_vocab - 1}", "prompt")
    elif not (isinstance(p, str) and p):
        raise bad("'prompt' must be a non-empty string or a list of token ids (one prompt per request)", "prompt")
    else:
        try:
            check_value(p, "'prompt'")
        except EdgeQwenError as e:
            raise bad(str(e), "prompt") from None
    so = body.get("stream_options") or {}
    return CompletionRequest(
        model=_string(body, "model"), prompt=p, stream=bool(_boolean(body, "stream", False)),
        include_usage=bool(_boolean(so, "include_usage", False)), max_tokens=_max_tokens(body), stop=_stop(body),
        sampling=_sampling(body))


# ---------------------------------------------------------------- responses

def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def usage(prompt: int, completion: int, cached: int = 0, reasoning: int = 0) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached},
            "completion_tokens_details": {"reasoning_tokens": reasoning}}


def openai_tool_call(call: dict, call_id: str) -> dict:
    return {"id": call_id, "type": "function",
            "function": {"name": call["name"], "arguments": json.dumps(call["arguments"], ensure_ascii=False)}}


class ChatShaper:
    """Builds the chat.completion / chat.completion.chunk objects of one request."""

    def __init__(self, model: str):
        self.id, self.model, self.created = new_id("chatcmpl"), model, int(time.time())

    def _head(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "system_fingerprint": "edgeqwen"}

    def chunk(self, delta: dict | None, finish_reason: str | None = None, usage_: dict | None = None,
              with_usage: bool = False) -> dict:
        d = self._head("chat.completion.chunk")
        d["choices"] = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None,
                                                  "finish_reason": finish_reason}]
        if with_usage:
            d["usage"] = usage_
        return d

    def whole(self, content: str, reasoning: str, tool_calls: list, finish_reason: str, usage_: dict) -> dict:
        msg = {"role": "assistant", "content": content if content or not tool_calls else None,
               "reasoning_content": reasoning or None, "refusal": None}
        if tool_calls:
            msg["tool_calls"] = tool_calls
        d = self._head("chat.completion")
        d["choices"] = [{"index": 0, "message": msg, "logprobs": None, "finish_reason": finish_reason}]
        d["usage"] = usage_
        return d


class CompletionShaper:
    def __init__(self, model: str):
        self.id, self.model, self.created = new_id("cmpl"), model, int(time.time())

    def obj(self, text: str | None, finish_reason: str | None = None, usage_: dict | None = None,
            with_usage: bool = False) -> dict:
        d = {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
             "system_fingerprint": "edgeqwen"}
        d["choices"] = [] if text is None else [{"index": 0, "text": text, "logprobs": None,
                                                 "finish_reason": finish_reason}]
        if with_usage:
            d["usage"] = usage_
        return d
