"""The scheduling thread of one loaded model: continuous batching over the server's requests.

Each request is a step generator (`chat.ChatTurn.steps` or `generate.completion_steps`, the same
ones `Model.chat`, `Model.stream` and `BatchRunner` run), made and checked by the HTTP side before
it is handed over. The thread owns `parallel` slots (a KV cache each). A waiting request takes a
free slot, preferring the one whose cache shares the longest prefix with its prompt, and copies
the longest prefix any slot holds (a shared system prompt is prefilled once). Then every step runs
one batched forward over the active requests (`Qwen3Model.forward_many`), in groups small enough
that each row goes through the single-sequence decode kernels (as `batch.py` does). Output goes
back to the request's asyncio queue as plain event dicts; a request whose client went away is
dropped before the next step, freeing its slot.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import secrets
import threading
import time
from collections import deque

import numpy as np

from ..chat import ChatEngine, ChatTurn
from ..chat_output import ChatDelta
from ..errors import EdgeQwenError
from ..generate import Chunk, Feed, _holdback, completion_steps
from ..kv_cache import KVCache
from ..quants.prefill import PREFILL_MIN_TOKENS
from ..sampling import Sampler, SamplingParams
from .schemas import APIError, ChatRequest, CompletionRequest, bad, openai_tool_call, usage

log = logging.getLogger("edgeqwen.server")
# Structured output (response_format) is passed to the chat engine when it takes one.
FORMATS = "response_format" in inspect.signature(ChatTurn).parameters


class _Slot:
    """A KV cache and the ids it holds (kept after its request ends, for prefix reuse)."""

    def __init__(self, cfg, n_ctx: int, types=("f32", "f32")):
        self.cache = KVCache(cfg, n_ctx, *types)
        self.tokens: list[int] = []

    def common_prefix(self, ids: list[int]) -> int:
        m = min(len(ids), self.cache.n, len(self.tokens))
        if m == 0:
            return 0
        diff = np.flatnonzero(np.asarray(ids[:m], np.int64) != np.asarray(self.tokens[:m], np.int64))
        return int(diff[0]) if diff.size else m


class Job:
    """One request in the engine: its step generator, its slot, and the queue its events go to.
    Events: {"type": "delta", ...}, then {"type": "done", ...} or {"type": "error", "message"}."""

    def __init__(self, gen, loop: asyncio.AbstractEventLoop):
        self.gen, self.loop = gen, loop
        self.events: asyncio.Queue = asyncio.Queue()
        self.slot: _Slot | None = None
        self.pending: Feed | None = None
        self.finished = False
        self.cancelled = False           # set by the HTTP side when the client is gone
        self.cached = 0

    def emit(self, event: dict) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:             # the event loop is closed (shutdown)
            pass

    def fail(self, message: str) -> None:
        if not self.finished:
            self.finished = True
            self.emit({"type": "error", "message": message})

    def cancel(self) -> None:
        self.cancelled = True

    def absorb(self, out) -> None:       # one item the step generator yielded (not a Feed)
        raise NotImplementedError


class ChatJob(Job):
    def __init__(self, turn: ChatTurn, n_ctx: int, stop: list[str], loop):
        super().__init__(turn.steps(n_ctx), loop)
        self.turn, self.stop = turn, stop
        self.content, self.held = [], ""        # content sent; content held back (could start a stop string)
        self.tool_calls: list[dict] = []        # OpenAI-shaped, with the ids sent

    def _tools(self, calls: list[dict]) -> list[dict]:
        out = []
        for c in calls:
            tc = openai_tool_call(c, f"call_{secrets.token_hex(12)}")
            self.tool_calls.append(tc)
            out.append({"index": len(self.tool_calls) - 1, **tc})
        return out

    def _content(self, text: str) -> tuple[str, bool]:
        """Text that may be sent now, and whether a stop string was hit."""
        if not self.stop:
            return text, False
        self.held += text
        hits = [self.held.find(s) for s in self.stop if s in self.held]
        if hits:
            out, self.held = self.held[:min(hits)], ""
            return out, True
        keep = _holdback(self.held, self.stop)
        out, self.held = self.held[:len(self.held) - keep], self.held[len(self.held) - keep:]
        return out, False

    def absorb(self, d: ChatDelta) -> None:
        text, hit = self._content(d.content)
        if d.result is not None and not hit:
            text += self.held
        ev = {"type": "delta", "reasoning": d.reasoning, "content": text, "tool_calls": self._tools(d.tool_calls)}
        if ev["reasoning"] or ev["content"] or ev["tool_calls"]:
            self.content.append(text)
            self.emit(ev)
        if hit:
            r = self.turn.partial_result("stop")
            r.content = "".join(self.content).strip()
            self._done(r)
        elif d.result is not None:
            self._done(d.result)

    def _done(self, r) -> None:
        self.finished = True
        self.emit({"type": "done", "finish_reason": r.finish_reason, "content": r.content,
                   "reasoning": r.reasoning, "tool_calls": self.tool_calls,
                   "usage": usage(r.prompt_tokens, r.completion_tokens, r.cached_tokens, r.reasoning_tokens)})


class CompletionJob(Job):
    def __init__(self, gen, n_prompt: int, loop):
        super().__init__(gen, loop)
        self.n_prompt, self.n_tokens = n_prompt, 0

    def absorb(self, c: Chunk) -> None:
        self.n_tokens += len(c.token_ids)
        if c.text:
            self.emit({"type": "delta", "text": c.text})
        if c.finish_reason is not None:
            self.finished = True
            self.emit({"type": "done", "finish_reason": c.finish_reason,
                       "usage": usage(self.n_prompt, self.n_tokens, self.cached)})


class Engine:
    """One loaded model and its scheduling thread. `submit` hands over a checked Job."""

    def __init__(self, name: str, model, parallel: int = 4, max_queue: int = 64, max_tokens: int | None = None,
                 sampling: dict | None = None):
        self.name, self.m = name, model
        self.sampling = sampling or {}                # server-wide defaults under each request's own values
        self.parallel, self.max_queue, self.max_tokens = parallel, max_queue, max_tokens
        self.renderer = ChatEngine(model)             # renders chat prompts; its own cache is unused
        self.slots = [_Slot(model.config, model.n_ctx, (model.model.type_k, model.model.type_v)) for _ in range(parallel)]
        self.free = list(self.slots)
        self.waiting: deque[Job] = deque()
        self.active: list[Job] = []
        self.cv = threading.Condition()
        self.closing = False
        self.dropped = 0                              # requests whose client went away before the end
        self.step_rows = max(1, min(parallel, PREFILL_MIN_TOKENS - 1))
        self.thread = threading.Thread(target=self._loop, name=f"edgeqwen-engine-{name}", daemon=True)
        self.thread.start()

    # -- the HTTP side (any thread)
    def _budget(self, n_prompt: int, max_tokens: int | None, param: str = "max_tokens") -> int:
        room = self.m.n_ctx - n_prompt
        if room <= 0:
            raise bad(f"the prompt has {n_prompt} tokens, which does not fit the context of {self.m.n_ctx} tokens",
                      "messages", "context_length_exceeded")
        if max_tokens is not None and max_tokens > room:
            raise bad(f"this model's context is {self.m.n_ctx} tokens, but {n_prompt + max_tokens} were asked for "
                      f"({n_prompt} in the prompt, {max_tokens} to generate): lower max_tokens", param,
                      "context_length_exceeded")
        n = room if max_tokens is None else max_tokens
        return n if self.max_tokens is None else min(n, self.max_tokens)

    def chat_job(self, req: ChatRequest, loop) -> ChatJob:
        """Render and check a chat request (template, context, sampling): errors are APIErrors."""
        lp = None
        if req.logit_bias:
            ids = np.fromiter(req.logit_bias, np.int64)
            vals = np.fromiter(req.logit_bias.values(), np.float32)

            def lp(logits, generated):
                logits = np.array(logits, np.float32)
                logits[ids] += vals
                return logits
        fmt = {}
        if req.response_format is not None:
            if not FORMATS:
                raise bad(f"'response_format' of type {req.response_format['type']!r} is not supported by this "
                          f"server (only \"text\")", "response_format")
            fmt["response_format"] = req.response_format
        try:
            turn = ChatTurn(self.renderer, req.messages, req.enable_thinking, req.thinking_budget, req.tools,
                            None, lp, {**self.sampling, **req.sampling}, **fmt)
        except EdgeQwenError as e:
            raise bad(str(e), "response_format" if fmt and "format" in str(e) else "messages") from None
        except (TypeError, AttributeError, ValueError, KeyError) as e:     # a message the template trips on
            raise bad(f"cannot render the messages with the chat template: {e}", "messages") from None
        turn.max_tokens = self._budget(len(turn.prompt_ids), req.max_tokens)
        return ChatJob(turn, self.m.n_ctx, req.stop, loop)

    def completion_job(self, req: CompletionRequest, loop) -> CompletionJob:
        try:
            ids = self.m._prompt_ids(req.prompt)
            params = SamplingParams(**{**self.m.default_sampling().__dict__, **self.sampling, **req.sampling})
            params.validate()
            sampler = Sampler(params)
        except EdgeQwenError as e:
            raise bad(str(e), "prompt") from None
        n = self._budget(len(ids), req.max_tokens)
        return CompletionJob(completion_steps(self.m.tokenizer, ids, sampler, n, self.m.n_ctx, req.stop), len(ids),
                             loop)

    def submit(self, job: Job) -> None:
        with self.cv:
            if self.closing:
                raise APIError(503, "the server is shutting down", code="shutting_down")
            if len(self.waiting) >= self.max_queue:
                raise APIError(503, f"the server is busy ({self.parallel} requests running, {len(self.waiting)} "
                               f"waiting): retry later", code="server_busy", headers={"Retry-After": "1"})
            self.waiting.append(job)
            self.cv.notify()

    def status(self) -> dict:
        return {"slots": self.parallel, "busy": self.parallel - len(self.free), "queued": len(self.waiting),
                "dropped": self.dropped, "n_ctx": self.m.n_ctx}

    @property
    def idle(self) -> bool:
        return not self.waiting and len(self.free) == self.parallel

    def close(self, wait: bool = True) -> None:
        """Stop the thread: requests still running or waiting end with an error event."""
        with self.cv:
            self.closing = True
            self.cv.notify()
        if wait and threading.current_thread() is not self.thread:
            self.thread.join(timeout=30)

    # -- the engine thread
    def _loop(self) -> None:
        while True:
            with self.cv:
                while not (self.closing or self.waiting or self.active):
                    self.cv.wait()
                if self.closing:
                    break
                admit = []
                while self.waiting and len(admit) < len(self.free):
                    admit.append(self.waiting.popleft())
            try:
                for job in admit:
                    self._admit(job)
                self._step()
            except Exception:                     # a bug: keep serving, tell the clients concerned
                log.exception("engine step failed")
                for job in self.active:
                    self._release(job, "internal error in the engine (see the server log)")
                self.active = []
        with self.cv:
            jobs = list(self.waiting) + self.active
            self.waiting.clear()
        for job in jobs:
            job.fail("the server is shutting down")
        self.active = []

    def _release(self, job: Job, error: str | None = None) -> None:
        if error is not None:
            job.fail(error)
        job.finished = True
        try:
            job.gen.close()
        except Exception:
            pass
        if job.slot is not None:
            if job.pending is not None and job.slot.cache.n != len(job.slot.tokens):
                job.slot.cache.n, job.slot.tokens = 0, []
            self.free.append(job.slot)
            job.slot = None

    def _advance(self, job: Job, value) -> None:
        """Send `value` to the job's generator and pass on its output up to the next Feed."""
        try:
            while True:
                out = job.gen.send(value)
                value = None
                if isinstance(out, Feed):
                    job.pending = out
                    return
                job.absorb(out)
                if job.finished:
                    job.pending = None
                    return
        except StopIteration:
            job.pending = None
        except Exception as e:                    # e.g. non-finite logits: this request fails, the rest go on
            job.pending = None
            job.fail(str(e) if isinstance(e, EdgeQwenError) else f"{type(e).__name__}: {e}")

    def _admit(self, job: Job) -> None:
        if job.cancelled:
            self.dropped += 1
            return
        self._advance(job, None)
        if job.pending is not None:
            ids = job.pending.ids
            slot = max(self.free, key=lambda s: s.common_prefix(ids))
            self.free.remove(slot)
            job.slot = slot
            head = ids[:-1]                       # at least one token is run, for the logits
            n, src = slot.common_prefix(head), slot
            for s in self.slots:
                k = s.common_prefix(head)
                if k > n:
                    n, src = k, s
            if src is not slot:
                slot.cache.copy_prefix_from(src.cache, n)
            slot.cache.n, slot.tokens = n, ids[:n]
            job.cached = n
            try:
                logits = self.m.model.forward(ids[n:], slot.cache, "last")
            except Exception as e:
                self._release(job, str(e) if isinstance(e, EdgeQwenError) else f"{type(e).__name__}: {e}")
                return
            slot.tokens = list(ids)
            self._advance(job, (n, logits))
        if job.finished or job.pending is None:
            self._release(job)
        else:
            self.active.append(job)

    def _step(self) -> None:
        for job in self.active:
            if job.cancelled and not job.finished:
                self.dropped += 1
                self._release(job)
        self.active = [j for j in self.active if not j.finished]
        singles = [j for j in self.active if len(j.pending.ids) == 1]
        groups = [[j] for j in self.active if len(j.pending.ids) > 1]   # the thinking budget's text: alone
        groups += [singles[i:i + self.step_rows] for i in range(0, len(singles), self.step_rows)]
        for group in groups:
            try:
                if len(group) == 1 and len(group[0].pending.ids) > 1:
                    rows = [self.m.model.forward(group[0].pending.ids, group[0].slot.cache, "last")]
                else:
                    rows = self.m.model.forward_many([(j.pending.ids, j.slot.cache) for j in group])
            except Exception as e:                # e.g. non-finite values: these requests fail, the rest go on
                for j in group:
                    self._release(j, str(e) if isinstance(e, EdgeQwenError) else f"{type(e).__name__}: {e}")
                continue
            for j, row in zip(group, rows):
                j.slot.tokens.extend(j.pending.ids)
                self._advance(j, row)
        for j in self.active:
            if j.finished or j.pending is None:
                self._release(j)
        self.active = [j for j in self.active if j.slot is not None]


class ModelPool:
    """Named GGUF files, loaded on first use; at most `max_loaded` stay resident (least recently
    used idle ones are unloaded first, as Ollama does)."""

    def __init__(self, paths: dict[str, str], *, threads=None, ctx_size=None, parallel=4, max_loaded=1,
                 max_queue=64, max_tokens=None, sampling=None, cache_type="f16"):
        self.sampling = sampling
        self.paths = paths
        self.opts = dict(threads=threads, ctx_size=ctx_size, cache_type=cache_type)
        self.parallel, self.max_loaded, self.max_queue, self.max_tokens = parallel, max_loaded, max_queue, max_tokens
        self.engines: dict[str, Engine] = {}      # in use order, the most recent last
        self.lock = threading.Lock()
        self.created = int(time.time())
        self.closed = False

    @property
    def default(self) -> str:
        return next(iter(self.paths))

    def resolve(self, name: str | None) -> str:
        if name is None:
            return self.default
        if name not in self.paths:
            raise APIError(404, f"the model {name!r} does not exist (available: {', '.join(self.paths)})", "model",
                           "model_not_found")
        return name

    def get(self, name: str | None) -> Engine:
        """The engine of a model, loading it if needed (blocking: call from a worker thread)."""
        from ..api import Model

        name = self.resolve(name)
        with self.lock:
            if self.closed:
                raise APIError(503, "the server is shutting down", code="shutting_down")
            if name in self.engines:
                self.engines[name] = self.engines.pop(name)
                return self.engines[name]
            while len(self.engines) >= self.max_loaded:
                idle = [n for n, e in self.engines.items() if e.idle]
                if not idle:
                    raise APIError(503, f"cannot load {name!r}: the loaded model(s) are busy (--max-loaded "
                                   f"{self.max_loaded})", "model", "server_busy", {"Retry-After": "5"})
                self.engines.pop(idle[0]).close()
            try:
                model = Model(self.paths[name], batch_size=max(256, self.parallel), **self.opts)
            except EdgeQwenError as e:
                raise APIError(500, f"cannot load the model {name!r}: {e}", "model", "model_load_failed") from None
            log.info("loaded %s from %s (context %d, %d slots)", name, self.paths[name], model.n_ctx, self.parallel)
            self.engines[name] = Engine(name, model, self.parallel, self.max_queue, self.max_tokens, self.sampling)
            return self.engines[name]

    def status(self) -> dict:
        return {n: {"loaded": n in self.engines, **(self.engines[n].status() if n in self.engines else {})}
                for n in self.paths}

    def close(self, wait: bool = True) -> None:
        with self.lock:
            self.closed = True
            engines = list(self.engines.values())
        for e in engines:
            e.close(wait)
