"""The assistant's text, split as it streams: reasoning (inside <think>...</think>), content (the
answer), and <tool_call> blocks (removed from the content and parsed into {"name", "arguments"}).

The split does not depend on where the text is cut into pieces (tokens): a tag cut across pieces is
held back until it is complete. Reasoning and content are stripped of surrounding whitespace, so
the empty block of non-thinking mode (`<think>\\n\\n</think>\\n\\n`) shows nothing. Malformed tool
calls are reported in `tool_call_errors`, never raised.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
TOOL_OPEN, TOOL_CLOSE = "<tool_call>", "</tool_call>"


class _Trim:
    """Streams text without its leading and trailing whitespace (trailing whitespace waits for more text)."""

    def __init__(self):
        self.started, self.held = False, ""

    def __call__(self, s: str) -> str:
        if not self.started:
            s = s.lstrip()
            if not s:
                return ""
            self.started = True
        s = self.held + s
        out = s.rstrip()
        self.held = s[len(out):]
        return out


def _partial(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag`."""
    for k in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:k]):
            return k
    return 0


def parse_tool_call(raw: str) -> tuple[dict | None, str | None]:
    """The inside of a <tool_call> block -> ({"name", "arguments": dict}, None) or (None, error)."""
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as e:
        return None, f"invalid JSON: {e}"
    if not isinstance(obj, dict):
        return None, "not a JSON object"
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        return None, "no function name"
    args = obj.get("arguments", {})
    if isinstance(args, str):          # arguments given as a JSON string
        try:
            args = json.loads(args)
        except json.JSONDecodeError as e:
            return None, f"arguments are not valid JSON: {e}"
    if not isinstance(args, dict):
        return None, "arguments are not a JSON object"
    return {"name": name, "arguments": args}, None


@dataclass
class ChatDelta:
    """A streamed piece of the assistant message; the last one carries the full `result`."""
    reasoning: str = ""
    content: str = ""
    tool_calls: list = field(default_factory=list)     # calls whose block closed in this piece
    result: ChatResult | None = None                    # chat.ChatResult, on the last piece

    def __bool__(self):
        return bool(self.reasoning or self.content or self.tool_calls or self.result)


class OutputParser:
    """Splits assistant text, fed in pieces, into reasoning (inside <think>...</think>), content, and
    <tool_call> blocks (removed from the content, parsed). Any split of the same text gives the same
    result: a tag cut across pieces is held back until it is complete. Reasoning and content are
    stripped of surrounding whitespace, so the empty block `<think>\\n\\n</think>\\n\\n` shows nothing.
    Feed the prompt's assistant prefix first (e.g. `<think>\\n` when the template opens the block)."""
    START, REASONING, CONTENT, TOOL = range(4)

    def __init__(self):
        self.state, self.buf = self.START, ""
        self._r, self._c = _Trim(), _Trim()
        self.reasoning: list[str] = []
        self.content: list[str] = []
        self.tool_calls: list[dict] = []
        self.tool_call_errors: list[dict] = []

    @property
    def in_reasoning(self) -> bool:
        return self.state == self.REASONING

    def feed(self, text: str) -> ChatDelta:
        self.buf += text
        d = ChatDelta()
        while True:
            b = self.buf
            if self.state == self.START:
                s = b.lstrip()
                if s.startswith(THINK_OPEN):
                    self.buf, self.state = s[len(THINK_OPEN):], self.REASONING
                elif THINK_OPEN.startswith(s):          # nothing yet, or a partial "<think>"
                    break
                else:
                    self.state = self.CONTENT
            elif self.state == self.REASONING:
                i = b.find(THINK_CLOSE)
                if i < 0:
                    i = len(b) - _partial(b, THINK_CLOSE)
                    d.reasoning += self._r(b[:i])
                    self.buf = b[i:]
                    break
                d.reasoning += self._r(b[:i])
                self.buf, self.state = b[i + len(THINK_CLOSE):], self.CONTENT
            elif self.state == self.CONTENT:
                i = b.find(TOOL_OPEN)
                if i < 0:
                    i = len(b) - _partial(b, TOOL_OPEN)
                    d.content += self._c(b[:i])
                    self.buf = b[i:]
                    break
                d.content += self._c(b[:i])
                self.buf, self.state = b[i + len(TOOL_OPEN):], self.TOOL
            else:                                       # inside <tool_call>
                i = b.find(TOOL_CLOSE)
                if i < 0:
                    break
                call = self._tool_block(b[:i])
                if call:
                    d.tool_calls.append(call)
                self.buf, self.state = b[i + len(TOOL_CLOSE):], self.CONTENT
        self.reasoning.append(d.reasoning)
        self.content.append(d.content)
        return d

    def _tool_block(self, raw: str, error: str | None = None) -> dict | None:
        call, err = (None, error) if error else parse_tool_call(raw.strip())
        if call:
            self.tool_calls.append(call)
        else:
            self.tool_call_errors.append({"raw": raw.strip(), "error": err})
        return call

    def flush(self) -> ChatDelta:
        """End of the text: whatever was held back (a partial tag is text; an unclosed block an error)."""
        b, self.buf = self.buf, ""
        d = ChatDelta()
        if self.state == self.REASONING:
            d.reasoning = self._r(b)
        elif self.state == self.TOOL:
            self._tool_block(b, f"no {TOOL_CLOSE} (unterminated)")
        else:
            d.content = self._c(b)
        self.reasoning.append(d.reasoning)
        self.content.append(d.content)
        return d


def parse_output(text: str) -> dict:
    """Parse a whole assistant text at once: {"reasoning", "content", "tool_calls", "tool_call_errors"}."""
    p = OutputParser()
    p.feed(text)
    p.flush()
    return {"reasoning": "".join(p.reasoning), "content": "".join(p.content),
            "tool_calls": p.tool_calls, "tool_call_errors": p.tool_call_errors}


def openai_message(result) -> dict:
    """A chat.ChatResult as OpenAI's assistant message (`role`, `content`, `reasoning_content`, `tool_calls`
    with `id`, `type: "function"`, `function.name`, `function.arguments` as a JSON string), followed by what
    edgeqwen adds: finish_reason, thinking (the mode used), usage, timings, and, only when there are any,
    tool_call_errors, message (why generation ended) and warnings. What `chat --messages` prints and each
    chat record of `batch` holds."""
    import secrets

    from .server.schemas import openai_tool_call

    d = result.as_dict()
    calls = [openai_tool_call(c, f"call_{secrets.token_hex(12)}") for c in result.tool_calls]
    out = {"role": "assistant", "content": d["content"] if d["content"] or not calls else None,
           "reasoning_content": d["reasoning"]}
    if calls:
        out["tool_calls"] = calls
    out.update(finish_reason=d["finish_reason"], thinking=d["thinking"], usage=d["usage"], timings=d["timings"])
    for k in ("tool_call_errors", "message", "warnings"):
        if d.get(k):
            out[k] = d[k]
    return out
