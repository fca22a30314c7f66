"""Chat with Qwen3: thinking modes, reasoning apart from the answer, a thinking budget, tool calls,
and KV-cache reuse across turns.

    r = model.chat(messages, enable_thinking=True, thinking_budget=None, tools=None, **sampling)
    r.reasoning, r.content, r.tool_calls, r.finish_reason, r.timings
    session = ChatSession(model); session.send("Hi"); session.send("And then? /no_think")

From the top:
- `ChatSession`: one conversation (messages, hard switch, system prompt, save/load); `edgeqwen chat`.
- `ChatEngine`: one KV cache and the token ids in it. `start(messages, ...)` renders the prompt
  (`chat_template.py`), keeps the longest common prefix of those ids and the cache's, prefills only
  the rest, and returns a `ChatTurn`, which samples (defaults by mode), applies the thinking budget
  by feeding Qwen's early-stop text through the model, and parses the output as it streams.
- `OutputParser` (`chat_output.py`): splits the assistant text into reasoning, content and
  `<tool_call>` blocks, the same whatever the token boundaries.
- `chat_repl.py`: the terminal side of `edgeqwen chat` (REPL, JSON mode).
- Modes: `enable_thinking` is the hard switch; `/think` and `/no_think` in user or system messages
  are soft switches (the latest wins). With thinking on and `/no_think` last, the runtime writes the
  empty think block the model is trained to write, so the switch is always honoured.
"""
from __future__ import annotations

import dataclasses
import json
import os
import numbers
import re
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np

from .chat_output import (THINK_CLOSE, THINK_OPEN, TOOL_CLOSE, TOOL_OPEN, ChatDelta, OutputParser,  # noqa: F401
                          parse_output, parse_tool_call)
from .chat_template import builtin_chat_template, render_chat_template
from .constrain import compile_format
from .context_shift import check_keep, fit_prompt, shift, shift_tokens
from .errors import EdgeQwenError, quote
from .inputs import check_messages, check_prompt, check_tools, read_json_file
from .limits import MAX_PROMPT_BYTES
from .generate import Feed, Timings, drive
from .sampling import Sampler, SamplingParams

EMPTY_THINK = "<think>\n\n</think>\n\n"
# Qwen's recipe for a thinking budget: this text is fed through the model when the budget is spent.
EARLY_STOP = ("\n\nConsidering the limited time by the user, I have to give the solution based on the "
              "thinking directly now.\n</think>\n\n")

# Qwen3 model card: recommended sampling per mode.
THINKING_SAMPLING = SamplingParams(temperature=0.6, top_k=20, top_p=0.95, min_p=0.0)
NON_THINKING_SAMPLING = SamplingParams(temperature=0.7, top_k=20, top_p=0.8, min_p=0.0)
GREEDY_THINKING_WARNING = ("greedy decoding (temperature 0) in thinking mode can repeat endlessly (Qwen3 model "
                           "card); prefer temperature 0.6, top_p 0.95, top_k 20, or set presence_penalty (e.g. 1.5)")

# logits_processor(logits, generated_ids) -> logits, applied before sampling (e.g. to ban or force tokens)
LogitsProcessor = Callable[[np.ndarray, list], np.ndarray]
CONTEXT_FULL = "context full ({} tokens): the answer was cut; start over (/reset) or raise the context size"


# ---------------------------------------------------------------- modes and sampling

_SOFT_SWITCH = re.compile(r"(?<![\w/])/(think|no_think)(?![\w/])")


def _texts(content) -> list[str]:
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):      # content parts: [{"type": "text", "text": ...}, ...]
        return [p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
    return []


def soft_switch(messages: Sequence[dict]) -> str | None:
    """The latest soft switch in user/system messages: "think", "no_think", or None."""
    last = None
    for m in messages:
        if m.get("role") in ("user", "system"):
            for text in _texts(m.get("content")):
                for hit in _SOFT_SWITCH.finditer(text):
                    last = hit.group(1)
    return last


def thinking_mode(messages: Sequence[dict], enable_thinking: bool = True) -> bool:
    """Whether the next answer thinks: the hard switch, then the latest soft switch."""
    return bool(enable_thinking) and soft_switch(messages) != "no_think"


def chat_sampling(thinking: bool, **overrides) -> SamplingParams:
    """The model card's sampling for the mode, with `overrides` (SamplingParams fields; None = default)."""
    unknown = set(overrides) - {f.name for f in dataclasses.fields(SamplingParams)}
    if unknown:
        raise EdgeQwenError(f"unknown sampling option(s): {', '.join(sorted(unknown))}")
    base = THINKING_SAMPLING if thinking else NON_THINKING_SAMPLING
    params = dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})
    params.validate()
    return params


# ---------------------------------------------------------------- results

@dataclass
class ChatResult:
    """One assistant message and how it was made."""
    content: str
    reasoning: str
    tool_calls: list[dict]            # [{"name": str, "arguments": dict}]
    tool_call_errors: list[dict]      # [{"raw": str, "error": str}] for malformed <tool_call> blocks
    finish_reason: str                # "stop" | "tool_calls" | "length" | "interrupted"
    prompt_tokens: int                # the whole rendered prompt
    cached_tokens: int                # of which were already in the KV cache (not prefilled again)
    completion_tokens: int            # tokens after the prompt, including any inserted by the budget
    reasoning_tokens: int             # sampled inside the think block
    timings: Timings
    thinking: bool                    # the mode used (hard switch and soft switches)
    message: str | None = None        # why generation ended, when worth telling (e.g. context full)
    warnings: list[str] = field(default_factory=list)
    role: str = "assistant"

    def to_message(self) -> dict:
        """The message to append to the conversation (OpenAI style, `reasoning_content` for the template)."""
        m = {"role": "assistant", "content": self.content, "reasoning_content": self.reasoning}
        if self.tool_calls:
            m["tool_calls"] = [{"type": "function", "function": c} for c in self.tool_calls]
        return m

    def as_dict(self) -> dict:
        return {"role": self.role, "content": self.content, "reasoning": self.reasoning,
                "tool_calls": self.tool_calls, "tool_call_errors": self.tool_call_errors,
                "finish_reason": self.finish_reason, "message": self.message, "thinking": self.thinking,
                "usage": {"prompt_tokens": self.prompt_tokens, "cached_tokens": self.cached_tokens,
                          "completion_tokens": self.completion_tokens, "reasoning_tokens": self.reasoning_tokens,
                          "total_tokens": self.prompt_tokens + self.completion_tokens},
                "timings": self.timings.as_dict(), "warnings": self.warnings}


# ---------------------------------------------------------------- generation

def _assistant_prefix(prompt: str) -> str:
    """Text of the open assistant turn at the end of a ChatML prompt (e.g. '<think>\\n'), else ''."""
    i = prompt.rfind("<|im_start|>")
    head = prompt[i + len("<|im_start|>"):] if i >= 0 else ""
    return head[len("assistant\n"):] if head.startswith("assistant\n") else ""


class ChatEngine:
    """A model's chat state: one KV cache and `tokens`, the ids whose keys/values it holds.
    One turn at a time: starting a turn makes any unfinished earlier one stop with an error."""

    def __init__(self, model, chat_template: str | None = None):
        self.model = model
        self.template = chat_template or model.chat_template or builtin_chat_template()
        self.template_name = ("the given chat template" if chat_template else
                              f"{model.file.path}: tokenizer.chat_template" if model.chat_template else
                              "the built-in Qwen3 chat template")
        tok = model.tokenizer
        names = {"eos_token": tok.eos_id, "pad_token": tok.pad_id, "bos_token": tok.bos_id if tok.add_bos else None}
        self.special_tokens = {k: tok.decode([i]) for k, i in names.items() if i is not None}
        self.cache = None
        self.tokens: list[int] = []
        self.active: ChatTurn | None = None
        # context shift (context_shift.py) when the cache is full: None = off (finish "length"), else the
        # tokens kept at the start ("system" = the system message's)
        self.context_shift: int | str | None = None

    def render(self, messages, tools=None, add_generation_prompt=True, enable_thinking=True, **kwargs) -> str:
        messages = check_messages(list(messages) if isinstance(messages, tuple) else messages)
        check_tools(tools)
        return render_chat_template(self.template, messages, tools=tools, add_generation_prompt=add_generation_prompt,
                                    special_tokens=self.special_tokens, enable_thinking=enable_thinking,
                                    template_name=self.template_name, **kwargs)

    def feed(self, ids: Sequence[int], logits: str = "last", turn: ChatTurn | None = None):
        """Run `ids` through the model after the cached tokens. On an interrupt `tokens` keeps what the
        cache really holds (whole finished batches)."""
        if turn is not None and turn is not self.active:
            raise EdgeQwenError("this chat turn was superseded by a newer one on the same model/session")
        keep = turn.n_keep if turn is not None else None
        while keep is not None and self.cache.n + len(ids) > self.cache.n_ctx and self.cache.n - keep >= 2:
            shift_tokens(self.tokens, keep, shift(self.model.model, self.cache, keep))
        self.tokens.extend(ids)
        try:
            return self.model.model.forward(ids, self.cache, logits)
        finally:
            del self.tokens[self.cache.n:]

    def prefill(self, ids: Sequence[int], turn: ChatTurn | None = None) -> tuple[int, np.ndarray]:
        """Keep the longest common prefix of `ids` and the cache (at least one token is run, for the
        logits), prefill the rest. Returns (tokens reused, logits of the last position)."""
        if self.cache is None:
            self.cache = self.model.model.new_cache()
        if turn is not None and turn.n_keep is not None:      # a prompt over the context loses its middle
            ids = fit_prompt(ids, turn.n_keep, self.cache.n_ctx)
        n, limit = 0, min(len(self.tokens), len(ids) - 1)
        while n < limit and self.tokens[n] == ids[n]:
            n += 1
        self.cache.truncate(n)
        del self.tokens[n:]
        return n, self.feed(ids[n:], turn=turn)

    def save_state(self, path) -> int:
        """Write the cache and the ids it holds to `path` (state.py; atomic). Returns the bytes written."""
        from . import state

        if self.cache is None or self.cache.n == 0:
            raise EdgeQwenError(f"{path}: nothing to save: no chat turn has run yet")
        return state.save(path, self.model, self.cache, self.tokens)

    def load_state(self, path) -> int:
        """Take the cache and ids saved at `path` (same model file and cache types; checked before the
        cache changes): a prompt starting with those ids prefills only the rest. Returns their number."""
        from . import state

        cache = self.cache if self.cache is not None else self.model.model.new_cache()
        self.tokens = state.load(path, self.model, cache)
        self.cache = cache
        return len(self.tokens)

    def start(self, messages, *, enable_thinking=True, thinking_budget=None, tools=None, max_tokens=None,
              logits_processor: LogitsProcessor | None = None, response_format=None, **sampling) -> ChatTurn:
        """Prepare the next assistant message (rendering and checks happen now); iterate the turn to run it.
        When the last message is from the assistant, it is continued (HF's continue_final_message).
        `response_format` (constrain.py: OpenAI's json_object / json_schema shapes, regex, grammar) constrains
        the content; in thinking mode the reasoning stays free and the constraint starts after </think>."""
        self.active = ChatTurn(self, messages, enable_thinking, thinking_budget, tools, max_tokens, logits_processor,
                               sampling, response_format)
        return self.active

    def complete(self, messages, *, stream=False, **kw):
        """A ChatResult, or with stream=True an iterator of ChatDelta whose last item has `.result`."""
        turn = self.start(messages, **kw)
        if stream:
            return iter(turn)
        for _ in turn:
            pass
        return turn.result


class ChatTurn:
    """One assistant message being generated. Iterate it for ChatDelta pieces; then `.result`."""

    def __init__(self, engine: ChatEngine, messages, enable_thinking, thinking_budget, tools, max_tokens,
                 logits_processor, sampling, response_format=None):
        model = engine.model
        if isinstance(messages, (list, tuple)) and not messages:
            raise EdgeQwenError("the conversation is empty")
        messages = check_messages(list(messages) if isinstance(messages, tuple) else messages)
        check_tools(tools)
        for name, v in (("max_tokens", max_tokens), ("thinking_budget", thinking_budget)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0):
                raise EdgeQwenError(f"{name} must be an integer >= 0 or None, got {v!r}")
        self.engine, self.max_tokens, self.budget = engine, max_tokens, thinking_budget
        self.logits_processor = logits_processor
        self.continued = messages[-1].get("role") == "assistant"
        self.thinking = thinking_mode(messages, enable_thinking)
        prompt = engine.render(messages, tools=tools, add_generation_prompt=not self.continued,
                               continue_final_message=self.continued, enable_thinking=bool(enable_thinking))
        if enable_thinking and not self.thinking and not self.continued and not _assistant_prefix(prompt).strip():
            prompt += EMPTY_THINK              # soft /no_think: the empty block the model would write
        self.prompt, self.prefix = prompt, _assistant_prefix(prompt)
        self.prompt_ids = model.tokenize(prompt)
        if not self.prompt_ids:
            raise EdgeQwenError(f"{engine.template_name}: the chat template rendered an empty prompt")
        self.n_keep = None if engine.context_shift is None else check_keep(
            self._system_tokens(messages, tools) if engine.context_shift == "system" else engine.context_shift,
            model.n_ctx, "the tokens kept by a context shift (--keep, default: the system prompt's)")
        if len(self.prompt_ids) >= model.n_ctx and self.n_keep is None:
            raise EdgeQwenError(f"the conversation has {len(self.prompt_ids)} tokens and does not fit the context "
                                f"of {model.n_ctx} tokens: start over (/reset) or raise the context size")
        self.params = chat_sampling(self.thinking, **sampling)
        self.format = compile_format(model.tokenizer, response_format)      # checked before any generation
        self.warnings = [GREEDY_THINKING_WARNING] if self.thinking and self.params.greedy else []
        for w in self.warnings:
            warnings.warn(w, UserWarning, stacklevel=4)
        self.early_stop_ids = model.tokenize(EARLY_STOP)
        self.parser = OutputParser()
        self.timings = Timings()
        self.generated: list[int] = []
        self.cached_tokens = self.reasoning_tokens = 0
        self.result: ChatResult | None = None
        self._started = self._flushed = False

    def _system_tokens(self, messages, tools) -> int:
        """The length of the system message's part of the prompt (0 without one)."""
        if messages[0].get("role") != "system":
            return 0
        e = self.engine
        return len(e.model.tokenize(e.render(messages[:1], tools=tools, add_generation_prompt=False)))

    def __iter__(self) -> Iterator[ChatDelta]:
        if self._started:
            raise EdgeQwenError("a chat turn can only run once")
        self._started = True
        return self._run()

    def _run(self) -> Iterator[ChatDelta]:
        e = self.engine

        def feed(f: Feed):
            return e.prefill(f.ids, self) if f.prefill else e.feed(f.ids, turn=self)
        if e.cache is None:
            e.cache = e.model.model.new_cache()
        return drive(self.steps(e.cache.n_ctx if self.n_keep is None else sys.maxsize), feed)

    def steps(self, n_ctx: int) -> Iterator:
        """The turn as a step generator (see generate.Feed): yields Feed requests, answered with
        logits by the driver (`_run` here, `batch.py` for many turns at once), and ChatDeltas."""
        t, tok = self.timings, self.engine.model.tokenizer
        t0 = time.perf_counter()
        self.cached_tokens, logits = yield Feed(list(self.prompt_ids), prefill=True)
        t.prompt_tokens, t.prompt_seconds = len(self.prompt_ids) - self.cached_tokens, time.perf_counter() - t0
        n = len(self.prompt_ids)                 # positions in the cache
        first = self.parser.feed(self.prefix)  # the assistant text already in the prompt
        if first:
            yield first
        dec = tok.stream(skip_special=True)
        sampler = Sampler(self.params)
        constraint = self.format.start() if self.format is not None else None
        budget_done, t_first = self.budget is None or not self.thinking, None
        full = lambda: self.max_tokens is not None and len(self.generated) >= self.max_tokens  # noqa: E731
        while True:
            if full():
                yield self._finish("length")
                return
            if not budget_done and self.parser.in_reasoning and self.reasoning_tokens >= self.budget:
                budget_done = True             # close the think block ourselves, then let the model answer
                if n + len(self.early_stop_ids) > n_ctx:
                    yield self._finish("length", CONTEXT_FULL.format(n_ctx))
                    return
                self.generated.extend(self.early_stop_ids)
                d = self.parser.feed("".join(dec.feed(i) for i in self.early_stop_ids))
                logits = yield Feed(list(self.early_stop_ids))
                n += len(self.early_stop_ids)
                if d:
                    yield d
                continue
            if self.logits_processor is not None:
                logits = self.logits_processor(logits, list(self.generated))
            if constraint is not None and sampler.constraint is None:
                logits = self._before_answer(logits, sampler, constraint)
            token = sampler(logits, self.prompt_ids, self.generated)
            if t_first is None:
                t_first = time.perf_counter()
            t.decode_seconds = time.perf_counter() - t_first
            if token in tok.stop_ids:
                yield self._finish("stop")
                return
            self.generated.append(token)
            was_reasoning = self.parser.in_reasoning
            d = self.parser.feed(dec.feed(token))
            self.reasoning_tokens += was_reasoning and self.parser.in_reasoning
            if d:
                yield d
            if sampler.constraint is not None and sampler.constraint.done:
                yield self._finish("stop")     # the grammar is complete: only an end token could follow
                return
            if full():
                yield self._finish("length")
                return
            if n + 1 > n_ctx:
                yield self._finish("length", CONTEXT_FULL.format(n_ctx))
                return
            logits = yield Feed([token])
            n += 1

    def _before_answer(self, logits, sampler: Sampler, constraint) -> np.ndarray:
        """Structured output constrains the answer only. In thinking mode the turn first opens its think
        block (as Qwen3 always does) and cannot end inside it; the constraint starts once the block is
        closed (by the model, or by the thinking budget's forced </think>)."""
        p, tok = self.parser, self.engine.model.tokenizer
        think = tok.token_id(THINK_OPEN)
        if self.thinking and p.state == p.START and think is not None:
            out = np.full(np.shape(logits), -np.inf, dtype=np.float32)
            out[think] = 0.0
            return out
        if p.in_reasoning:
            out = np.array(logits, dtype=np.float32)
            out[sorted(tok.stop_ids)] = -np.inf
            return out
        sampler.constraint = constraint
        return logits

    def _flush(self) -> ChatDelta:
        if self._flushed:
            return ChatDelta()
        self._flushed = True
        return self.parser.flush()

    def partial_result(self, finish_reason: str = "interrupted", message: str | None = None) -> ChatResult:
        """The result of what was generated so far (e.g. after Ctrl-C)."""
        self._flush()
        p = self.parser
        if finish_reason == "stop" and p.tool_calls:
            finish_reason = "tool_calls"
        self.timings.generated_tokens = len(self.generated)
        return ChatResult(content="".join(p.content), reasoning="".join(p.reasoning), tool_calls=p.tool_calls,
                          tool_call_errors=p.tool_call_errors, finish_reason=finish_reason,
                          prompt_tokens=len(self.prompt_ids), cached_tokens=self.cached_tokens,
                          completion_tokens=len(self.generated), reasoning_tokens=self.reasoning_tokens,
                          timings=self.timings, thinking=self.thinking, message=message,
                          warnings=list(self.warnings))

    def _finish(self, finish_reason: str, message: str | None = None) -> ChatDelta:
        d = self._flush()
        self.result = self.partial_result(finish_reason, message)
        d.result = self.result
        return d


# ---------------------------------------------------------------- conversations

def load_conversation(path) -> tuple[list[dict], list | None]:
    """A JSON file holding a list of messages, or {"messages": [...], "tools": [...]} (UTF-8, a BOM is
    dropped; checked as every other input: edgeqwen/inputs.py)."""
    data = read_json_file(path, "conversation", MAX_PROMPT_BYTES)
    if isinstance(data, dict):
        unknown = sorted(set(data) - {"messages", "tools"}, key=str)
        if unknown:
            raise EdgeQwenError(f"{path}: unknown key(s) {', '.join(quote(k, 40) for k in unknown)} in the "
                                f"conversation (expected \"messages\" and optionally \"tools\")")
        messages, tools = data.get("messages"), data.get("tools")
    elif isinstance(data, list):
        messages, tools = data, None
    else:
        raise EdgeQwenError(f"{path}: expected a JSON list of messages (dicts with 'role' and 'content'), got "
                            f"{type(data).__name__}")
    return check_messages(messages, f"{path}: messages"), check_tools(tools, f"{path}: tools")


class ChatSession:
    """A multi-turn conversation over one KV cache: each turn prefills only what changed."""

    def __init__(self, model, *, system: str | None = None, enable_thinking: bool = True,
                 thinking_budget: int | None = None, tools: list | None = None, max_tokens: int | None = None,
                 chat_template: str | None = None, context_shift: bool = False, keep: int | None = None,
                 **sampling):
        """context_shift: when the context is full, drop the oldest half after the first `keep` tokens
        (default: the system prompt's) and go on, also for a conversation longer than the context."""
        chat_sampling(True, **{k: v for k, v in sampling.items() if k not in ("logits_processor", "response_format")})
        compile_format(model.tokenizer, sampling.get("response_format"))       # fail early
        self.engine = ChatEngine(model, chat_template)
        if not isinstance(context_shift, bool):
            raise EdgeQwenError(f"context_shift must be True or False, got {quote(context_shift)}")
        if context_shift:
            self.engine.context_shift = "system" if keep is None else check_keep(
                keep, model.n_ctx, "the tokens kept by a context shift (--keep)")
        self.messages: list[dict] = []
        self.enable_thinking, self.thinking_budget = enable_thinking, thinking_budget
        self.tools, self.max_tokens, self.sampling = tools, max_tokens, sampling
        self.last_result: ChatResult | None = None
        self.set_system(system)

    @property
    def thinking(self) -> bool:
        """The mode of the next answer (hard switch and the latest soft switch so far)."""
        return thinking_mode(self.messages, self.enable_thinking)

    def set_system(self, text: str | None) -> None:
        if text is not None:
            check_prompt(text, "the system prompt")
        if self.messages and self.messages[0].get("role") == "system":
            self.messages.pop(0)
        if text:
            self.messages.insert(0, {"role": "system", "content": text})

    def reset(self) -> None:
        """Forget the conversation, keeping the system prompt."""
        self.messages = [m for m in self.messages[:1] if m.get("role") == "system"]

    def stream(self, text: str | None = None, **kw) -> Iterator[ChatDelta]:
        """Add a user message (if given), then yield the answer's pieces. The answer joins the conversation
        when it ends, also when the stream is closed early (Ctrl-C): then with finish_reason "interrupted"."""
        if text is not None:
            self.messages.append({"role": "user", "content": text})
        opts = dict(enable_thinking=self.enable_thinking, thinking_budget=self.thinking_budget, tools=self.tools,
                    max_tokens=self.max_tokens, **self.sampling)
        try:
            turn = self.engine.start(self.messages, **{**opts, **kw})
        except BaseException:
            if text is not None:
                self.messages.pop()
            raise
        try:
            yield from turn
        finally:
            self.last_result = turn.result or turn.partial_result()
            if turn.continued:
                self.messages[-1] = self.last_result.to_message()
            else:
                self.messages.append(self.last_result.to_message())

    def send(self, text: str | None = None, **kw) -> ChatResult:
        for _ in self.stream(text, **kw):
            pass
        return self.last_result

    def save(self, path) -> int:
        """Write the conversation as a JSON list of messages (readable by `load` and `--messages`) and, once
        a turn has run, the KV cache to PATH.kv (state.py), so that `load` resumes without a prefill.
        Returns the number of tokens whose cache was saved."""
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.messages, f, ensure_ascii=False, indent=2)
        if self.engine.cache is None or not self.engine.cache.n:
            return 0
        self.engine.save_state(f"{path}.kv")
        return self.engine.cache.n

    def load(self, path) -> int:
        """Read a conversation written by `save` (or any --messages file), and its KV cache PATH.kv when
        there is one (a cache of another model or cache type is refused). Returns the tokens restored."""
        messages, tools = load_conversation(path)
        restored = self.engine.load_state(f"{path}.kv") if os.path.exists(f"{path}.kv") else 0
        self.messages = messages
        if tools is not None:
            self.tools = tools
        return restored
