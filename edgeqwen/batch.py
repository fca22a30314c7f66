"""Batch processing: push a file or folder of prompts through a model, resumably.

    edgeqwen batch -m MODEL.gguf INPUT -o OUT.jsonl [--parallel 4] [--seed 0]

From the top:
- `read_items(INPUT)`: a JSONL file (`id`, `prompt` or `messages`, per-item options), a text file
  (one prompt per line, id = line number) or a directory of text files (id = relative path).
  A bad item (invalid JSON, unknown field, ...) becomes an `Item` with `error` set: it is written
  as an error record and the batch goes on.
- `BatchRunner.run(items)`: continuous batching. Up to `parallel` sequences decode together, one
  batched forward per step (`Qwen3Model.forward_many`: each weight read once for all of them),
  each with its own KV cache slot, sampler and stop conditions; a finished sequence's slot takes
  the next item at once. A new prompt reuses the longest prefix already in any slot's cache (same
  system prompt or template head) and prefills only the rest. Items are the same step generators
  that `Model.stream` and `Model.chat` run (`generate.completion_steps`, `chat.ChatTurn.steps`).
- `OutputFile`: OUT.jsonl, appended one whole line per finished item (flushed and fsynced), locked
  against a second writer. On resume the ids already there are skipped, and a torn last line (the
  process was killed mid-write, or the power went) is cut off.

Reproducibility: with `seed`, item i samples with a seed derived from (seed, id), so its output does
not depend on `parallel`, on the order items run, or on resuming. Decode steps are split into
forwards of fewer than `quants.prefill.PREFILL_MIN_TOKENS` rows so every row goes through the same
kernels as a single-sequence decode.
"""
from __future__ import annotations

import dataclasses
import fcntl
import glob as globlib
import hashlib
import json
import os
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from .chat import ChatEngine, ChatTurn, chat_sampling
from .constrain import compile_format
from .errors import EdgeQwenError, check_text, quote
from .inputs import (MAX_INT_BITS, check_messages, check_stop, check_tools, check_value, decode_utf8, parse_json,
                     split_lines)
from .generate import Chunk, Feed, completion_steps
from .kv_cache import KVCache
from .state import PromptCache
from .quants.prefill import PREFILL_MIN_TOKENS
from .sampling import Sampler, SamplingParams

SAMPLING_FIELDS = ("temperature", "top_k", "top_p", "min_p", "presence_penalty", "repetition_penalty", "seed")
ITEM_FIELDS = ("id", "prompt", "messages", "tools", "max_tokens", "enable_thinking", "thinking_budget", "stop",
               "response_format", *SAMPLING_FIELDS)
DEFAULT_MAX_TOKENS = 512


# ---------------------------------------------------------------- input

@dataclass
class Item:
    """One unit of work. `key` (the id as canonical JSON) identifies it in the output."""
    id: object
    index: int                                   # position in the input
    prompt: str | None = None                    # raw completion
    messages: list | None = None                 # chat
    options: dict = field(default_factory=dict)  # per-item overrides (ITEM_FIELDS)
    error: str | None = None                     # an input error: written as the item's record
    where: str | None = None                     # "line 7" / "docs/a.txt", for error records

    @property
    def key(self) -> str:
        return id_key(self.id)


def id_key(item_id) -> str:
    return json.dumps(item_id, ensure_ascii=False, sort_keys=True)


def item_from_dict(d, index: int, default_id, where: str | None = None) -> Item:
    """An Item from a JSONL object or an API dict; problems become `error` (never an exception)."""
    if not isinstance(d, dict):
        return Item(default_id, index, error=f"expected a JSON object, got {type(d).__name__}", where=where)
    item_id = d.get("id", default_id)
    if isinstance(item_id, bool) or not isinstance(item_id, (str, int)) or \
            isinstance(item_id, int) and item_id.bit_length() > MAX_INT_BITS:
        return Item(default_id, index, error=f"id must be a string or an integer, got {quote(item_id, 80)}",
                    where=where)
    item = Item(item_id, index, where=where)
    unknown = sorted(set(d) - set(ITEM_FIELDS), key=str)
    try:
        if unknown:
            raise EdgeQwenError(f"unknown field(s) {', '.join(quote(k, 40) for k in unknown)}; allowed: "
                                f"{', '.join(ITEM_FIELDS)}")
        check_value(d, "item", skip_keys=("id",))          # an id with a lone surrogate is written escaped
        if ("prompt" in d) == ("messages" in d):
            raise EdgeQwenError("give exactly one of 'prompt' (raw completion) or 'messages' (chat)")
        if "prompt" in d and not (isinstance(d["prompt"], str) and d["prompt"]):
            raise EdgeQwenError(f"'prompt' must be a non-empty string, got {quote(d['prompt'], 60)}")
        if "messages" in d:
            check_messages(d["messages"], "'messages'")
        if "tools" in d:
            check_tools(d["tools"], "'tools'")
        if "stop" in d:
            check_stop(d["stop"])
    except EdgeQwenError as e:
        item.error = str(e)
        return item
    item.prompt, item.messages = d.get("prompt"), d.get("messages")
    item.options = {k: v for k, v in d.items() if k not in ("id", "prompt", "messages")}
    return item


def _text_item(text: str, item_id, index: int, where: str, template: str | None, chat: bool,
               system: str | None) -> Item:
    if not text.strip():
        return Item(item_id, index, error="empty text", where=where)
    if template is not None:
        text = template.replace("{text}", text)
    if not chat:
        return Item(item_id, index, prompt=text, where=where)
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
    return Item(item_id, index, messages=messages, where=where)


def read_items(source, *, template: str | None = None, glob: str | None = None, chat: bool = True,
               system: str | None = None, fmt: str | None = None) -> list[Item]:
    """Items of a JSONL file, a text file (one prompt per line) or a directory of text files.
    `fmt` forces "jsonl" or "text" for a file; by default `.jsonl`/`.ndjson` files are JSONL.
    `template` ("Summarize:\\n{text}") wraps text items; `chat` sends them as a user message
    (with `system`) rather than as a raw completion prompt. Duplicate ids become error items."""
    path = Path(source)
    if template is not None and "{text}" not in template:
        raise EdgeQwenError(f"--template must contain {{text}}, got {quote(template, 80)}")
    for value, name in ((template, "--template"), (system, "--system")):
        if value is not None:
            check_text(value, name)
    if path.is_dir():
        pattern = glob or "**/*"
        files = sorted(p for p in path.glob(pattern) if p.is_file() and not p.name.startswith("."))
        if not files:
            raise EdgeQwenError(f"no files match {pattern!r} in {path}")
        items = []
        for i, f in enumerate(files):
            rel = f.relative_to(path).as_posix()
            try:
                text = decode_utf8(f.read_bytes(), f"{rel}")
            except OSError as e:
                items.append(Item(rel, i, error=f"cannot read {rel}: {e.strerror or e}", where=rel))
                continue
            except EdgeQwenError as e:
                items.append(Item(rel, i, error=str(e), where=rel))
                continue
            items.append(_text_item(text, rel, i, rel, template, chat, system))
    else:
        if glob is not None:
            raise EdgeQwenError("--glob applies to a directory INPUT only")
        try:
            raw = sys.stdin.buffer.read() if str(source) == "-" else path.read_bytes()
        except OSError as e:
            raise EdgeQwenError(f"cannot read {path}: {e.strerror or e}") from None
        if str(source) == "-":                   # stdin: JSONL when it starts with an object
            fmt = fmt or ("jsonl" if raw.lstrip().startswith(b"{") else "text")
        fmt = fmt or ("jsonl" if path.suffix.lower() in (".jsonl", ".ndjson") else "text")
        items = []
        for n, data in split_lines(raw):                 # \n only: U+2028 in a JSON string is text
            where = f"line {n}"
            try:
                line = decode_utf8(data, "the line", bom=False)
            except EdgeQwenError as e:                   # this item's error; the rest go on
                items.append(Item(n, len(items), error=str(e), where=where))
                continue
            if not line.strip():
                continue
            if fmt == "jsonl":
                try:
                    d = parse_json(line, where)
                except EdgeQwenError as e:
                    items.append(Item(n, len(items), error=str(e).removeprefix(f"{where}: "), where=where))
                    continue
                items.append(item_from_dict(d, len(items), n, where))
            else:
                items.append(_text_item(line, n, len(items), where, template, chat, system))
    dedupe(items)
    return items


# ---------------------------------------------------------------- output

def record_line(record: dict) -> bytes:
    """The output line of a record, as UTF-8 with its newline."""
    try:
        return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
    except UnicodeEncodeError:                   # a lone surrogate (in the id): written as a \uXXXX escape
        return (json.dumps(record, ensure_ascii=True) + "\n").encode("utf-8")


class OutputFile:
    """OUT.jsonl, append-only, one complete line per item. Opening it repairs a torn tail, reads the
    ids already done and takes an exclusive lock (a second `edgeqwen batch` on the same file fails)."""

    def __init__(self, path, overwrite: bool = False, retry_errors: bool = False):
        self.path = Path(path)
        self.repaired = 0                      # bytes cut from a torn tail
        self.done: set[str] = set()
        self.errors_before = 0
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as e:
            raise EdgeQwenError(f"cannot open the output {self.path}: {e.strerror or e}") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            raise EdgeQwenError(f"{self.path} is being written by another process (an `edgeqwen batch` "
                                f"still running?)") from None
        if overwrite:
            os.ftruncate(self.fd, 0)
        self._scan(retry_errors)

    def _scan(self, retry_errors: bool) -> None:
        with open(self.path, "rb") as f:
            data = f.read()
        good = 0                                 # bytes of complete, valid lines
        bad_at = None
        for n, line in enumerate(data.split(b"\n")[:-1], 1):   # the piece after the last \n is torn
            try:
                rec = json.loads(line)
                key = id_key(rec["id"])
            except (ValueError, KeyError, TypeError):
                bad_at = bad_at or n
                continue
            if bad_at is not None:
                raise EdgeQwenError(f"{self.path} line {bad_at} is not a record written by edgeqwen batch, but "
                                    f"later lines are: fix or remove that line (or use --overwrite)")
            good += len(line) + 1
            if "error" in rec:
                self.errors_before += 1
                if retry_errors:
                    continue
            self.done.add(key)
        if good < len(data):                     # a torn or garbage tail: cut it off
            self.repaired = len(data) - good
            os.ftruncate(self.fd, good)
        if retry_errors and self.errors_before:  # rewrite without the error records, atomically
            keep = [ln for ln in data[:good].split(b"\n")[:-1] if "error" not in json.loads(ln)]
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_bytes(b"".join(ln + b"\n" for ln in keep))
            os.replace(tmp, self.path)
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.close(self.fd)
            self.fd = fd

    def write(self, record: dict) -> None:
        os.write(self.fd, record_line(record))   # one write of a whole line, then to disk
        os.fsync(self.fd)
        self.done.add(id_key(record["id"]))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---------------------------------------------------------------- scheduling

def item_seed(seed: int, key: str) -> int:
    """The sampling seed of one item: depends only on the run's seed and the item's id."""
    data = f"{seed}\0{key}".encode("utf-8", "surrogatepass")       # an id may hold a lone surrogate
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "little") >> 1


class _Slot:
    """A KV cache and the ids it holds (kept after its item ends, for prefix reuse)."""

    def __init__(self, cfg, n_ctx: int, types=("f32", "f32")):
        self.cache = KVCache(cfg, n_ctx, *types)
        self.tokens: list[int] = []


def _common_prefix(ids: list[int], slot: _Slot) -> int:
    """How many leading `ids` the slot's cache already holds."""
    m = min(len(ids), slot.cache.n)
    if m == 0:
        return 0
    diff = np.flatnonzero(np.asarray(ids[:m], dtype=np.int64) != np.asarray(slot.tokens[:m], dtype=np.int64))
    return int(diff[0]) if diff.size else m


class _Seq:
    """One item being generated: its step generator, slot, pending Feed and output so far."""

    def __init__(self, item: Item, gen, turn: ChatTurn | None, stop: list[str]):
        self.item, self.gen, self.turn, self.stop = item, gen, turn, stop
        self.slot: _Slot | None = None
        self.pending: Feed | None = None
        self.parts: list[str] = []
        self.n_tokens = 0
        self.record: dict | None = None
        self.cached = 0                         # prompt tokens taken from a cache
        self.t0 = time.perf_counter()
        self.json = False                       # structured JSON output: the record gets the parsed "json"

    def absorb(self, out) -> None:
        if isinstance(out, Chunk):                           # raw completion
            self.parts.append(out.text)
            self.n_tokens += len(out.token_ids)
            if out.finish_reason is not None:
                t = out.timings
                self.record = {"id": self.item.id, "content": "".join(self.parts), "finish_reason": out.finish_reason,
                               "prompt_tokens": t.prompt_tokens + self.cached, "cached_tokens": self.cached,
                               "completion_tokens": self.n_tokens, "timings": t.as_dict()}
                if out.message:
                    self.record["message"] = out.message
            return
        if out.content:                                      # chat delta
            self.parts.append(out.content)
        if out.result is not None:
            self.record = self._chat_record(out.result)
        elif self.stop and out.content:
            text = "".join(self.parts)
            hits = [text.find(s) for s in self.stop if s in text]
            if hits:
                r = self.turn.partial_result("stop")
                r.content = text[:min(hits)].strip()
                self.record = self._chat_record(r)

    def _chat_record(self, r) -> dict:
        """The id, then the assistant message in OpenAI's shape (chat_output.openai_message), token counts."""
        from .chat_output import openai_message

        msg = openai_message(r)
        del msg["usage"]                             # the flat counts below
        rec = {"id": self.item.id, **msg,
               "prompt_tokens": r.prompt_tokens, "cached_tokens": r.cached_tokens,
               "completion_tokens": r.completion_tokens, "reasoning_tokens": r.reasoning_tokens}
        return rec


class StdoutOutput:
    """OUT = '-': records go to stdout, one line each, flushed (nothing to resume from)."""
    repaired, errors_before = 0, 0

    def __init__(self):
        self.done: set[str] = set()

    def write(self, record: dict) -> None:
        sys.stdout.flush()
        sys.stdout.buffer.write(record_line(record))
        sys.stdout.buffer.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def error_record(item: Item, message: str) -> dict:
    rec = {"id": item.id, "error": message}
    if item.where and item.where != item.id:
        rec["where"] = item.where
    return rec


class BatchRunner:
    """Runs items through a loaded `Model` with continuous batching; see the module docstring."""

    def __init__(self, model, parallel: int = 1, seed: int | None = None, prefix_cache: bool = True,
                 max_tokens: int = DEFAULT_MAX_TOKENS, enable_thinking: bool = True,
                 thinking_budget: int | None = None, sampling: dict | None = None, response_format=None,
                 prompt_cache=None):
        """prompt_cache: a directory where shared prompt prefixes' KV states are kept across runs (state.py)."""
        if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1:
            raise EdgeQwenError(f"parallel must be an integer >= 1, got {parallel!r}")
        if parallel > model.model.max_batch:
            raise EdgeQwenError(f"parallel {parallel} > the model's batch size {model.model.max_batch}")
        unknown = set(sampling or {}) - set(SAMPLING_FIELDS)
        if unknown:
            raise EdgeQwenError(f"unknown option(s) {', '.join(sorted(map(quote, unknown)))}; sampling options: "
                                f"{', '.join(SAMPLING_FIELDS)}")
        self.m, self.parallel, self.seed, self.prefix_cache = model, parallel, seed, prefix_cache
        self.defaults = {"max_tokens": max_tokens, "enable_thinking": enable_thinking,
                         "thinking_budget": thinking_budget, **{k: v for k, v in (sampling or {}).items()
                                                                 if v is not None}}
        if response_format is not None:        # compiled once here (a bad schema fails before any item)
            self.defaults["response_format"] = compile_format(model.tokenizer, response_format)
        self.engine = ChatEngine(model)          # renders chat prompts; its own cache is unused
        self.slots = [_Slot(model.config, model.n_ctx, (model.model.type_k, model.model.type_v)) for _ in range(parallel)]
        self.generated_tokens = 0
        self.reused_tokens = 0
        self.prompt_cache = PromptCache(prompt_cache, model) if prompt_cache is not None and prefix_cache else None

    # -- one item
    def _start(self, item: Item) -> _Seq:
        o = {**self.defaults, **item.options}
        sampling = {k: o[k] for k in SAMPLING_FIELDS if k in o}
        if "seed" not in item.options and self.seed is not None:
            sampling["seed"] = item_seed(self.seed, item.key)
        stop = check_stop(o.get("stop"))
        max_tokens = o.get("max_tokens")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 0:
            raise EdgeQwenError(f"'max_tokens' must be an integer >= 0, got {quote(max_tokens, 60)}")
        fmt = compile_format(self.m.tokenizer, o.get("response_format"))    # cached: a shared schema compiles once
        if item.messages is not None:
            for k in ("enable_thinking",):
                if not isinstance(o[k], bool):
                    raise EdgeQwenError(f"'{k}' must be true or false, got {o[k]!r}")
            try:
                turn = ChatTurn(self.engine, item.messages, o["enable_thinking"], o.get("thinking_budget"),
                                o.get("tools"), max_tokens, None, sampling, fmt)
            except (TypeError, AttributeError, ValueError) as e:   # a malformed message the template trips on
                raise EdgeQwenError(f"cannot render the messages: {e}") from None
            return self._structured(_Seq(item, turn.steps(self.m.n_ctx), turn, stop), fmt)
        base = self.m.default_sampling().__dict__
        try:
            params = SamplingParams(**{**base, **sampling})
        except TypeError as e:
            raise EdgeQwenError(str(e)) from None
        ids = self.m._prompt_ids(item.prompt)
        sampler = Sampler(params, fmt.start() if fmt is not None else None)
        gen = completion_steps(self.m.tokenizer, ids, sampler, max_tokens, self.m.n_ctx, stop)
        return self._structured(_Seq(item, gen, None, []), fmt)

    @staticmethod
    def _structured(seq: _Seq, fmt) -> _Seq:
        seq.json = fmt is not None and fmt.kind in ("json_object", "json_schema")
        return seq

    def _advance(self, seq: _Seq, value) -> None:
        """Send `value` to the item's generator and take what it yields up to its next Feed;
        `seq.pending` is None once the item has its record."""
        while True:
            try:
                out = seq.gen.send(value)
            except StopIteration:
                seq.pending = None
                return
            value = None
            if isinstance(out, Feed):
                seq.pending = out
                return
            seq.absorb(out)
            if seq.record is not None and seq.json and seq.record.get("finish_reason") == "stop":
                try:                             # the grammar guarantees it unless the output was cut
                    seq.record["json"] = json.loads(seq.record["content"])
                except ValueError:
                    pass
            if seq.record is not None:           # finished (or a stop string ended a chat item)
                seq.gen.close()
                seq.pending = None
                return

    def _safe_advance(self, seq: _Seq, value) -> None:
        try:
            self._advance(seq, value)
        except Exception as e:                   # e.g. non-finite logits: this item fails, the rest go on
            msg = str(e) if isinstance(e, EdgeQwenError) else f"{type(e).__name__}: {e}"
            seq.record, seq.pending = error_record(seq.item, msg), None

    def _prefill(self, seq: _Seq, slot: _Slot) -> None:
        """Run the prompt in `slot`, reusing the longest prefix of it that any slot's cache holds."""
        ids = seq.pending.ids
        n, src = 0, slot
        if self.prefix_cache:
            head = ids[:-1]                                       # at least one token is run, for the logits
            for s in [slot] + [x for x in self.slots if x is not slot]:
                k = _common_prefix(head, s)
                if k > n:
                    n, src = k, s
        if self.prompt_cache is not None:         # a longer prefix saved by an earlier run
            k = self.prompt_cache.load_longest(ids[:-1], n, slot.cache)
            if k:
                n, src = k, slot
        if src is not slot:
            slot.cache.copy_prefix_from(src.cache, n)
        slot.cache.n, slot.tokens = n, list(ids)
        if self.prompt_cache is not None:         # a prefix shared with an earlier item: kept for later runs
            self.prompt_cache.store(slot.cache, ids[:n])
        self.reused_tokens += n
        seq.cached = n
        logits = self.m.model.forward(ids[n:], slot.cache, "last")
        self._advance(seq, (n, logits))

    def run(self, items: Iterable[Item]) -> Iterator[dict]:
        """Yield one record per item (in completion order)."""
        queue = deque(items)
        free = list(self.slots)
        active: list[_Seq] = []
        step_rows = max(1, min(self.parallel, PREFILL_MIN_TOKENS - 1))

        def finish(seq: _Seq) -> dict:
            self.generated_tokens += seq.record.get("completion_tokens", 0) if seq.record else 0
            if seq.slot is not None:
                free.append(seq.slot)
            rec = seq.record or error_record(seq.item, "generation ended without a result")
            rec["seconds"] = round(time.perf_counter() - seq.t0, 3)
            return rec

        while queue or active:
            while free and queue:
                item = queue.popleft()
                if item.error:
                    yield error_record(item, item.error)
                    continue
                seq = None
                try:
                    seq = self._start(item)
                    self._advance(seq, None)
                    if seq.pending is not None:                   # the prompt: prefill it now, alone
                        seq.slot = self._pick_slot(free, seq.pending.ids)
                        free.remove(seq.slot)
                        self._prefill(seq, seq.slot)
                except Exception as e:                            # this item's problem: record it, go on
                    if seq is not None and seq.slot is not None:
                        seq.slot.cache.n, seq.slot.tokens = 0, []
                        free.append(seq.slot)
                    msg = str(e) if isinstance(e, EdgeQwenError) else f"{type(e).__name__}: {e}"
                    yield error_record(item, msg)
                    continue
                if seq.pending is None:
                    yield finish(seq)
                else:
                    active.append(seq)
            if not active:
                continue
            singles = [s for s in active if len(s.pending.ids) == 1]
            for s in active:                                      # multi-token feeds (thinking budget) alone
                if len(s.pending.ids) > 1:
                    logits = self.m.model.forward(s.pending.ids, s.slot.cache, "last")
                    s.slot.tokens.extend(s.pending.ids)
                    self._safe_advance(s, logits)
            for i in range(0, len(singles), step_rows):
                group = singles[i:i + step_rows]
                logits = self.m.model.forward_many([(s.pending.ids, s.slot.cache) for s in group])
                for s, row in zip(group, logits):
                    s.slot.tokens.extend(s.pending.ids)
                    self._safe_advance(s, row)
            still = []
            for s in active:
                if s.pending is None:
                    yield finish(s)
                else:
                    still.append(s)
            active = still

    def _pick_slot(self, free: list[_Slot], ids: list[int]) -> _Slot:
        """The free slot whose cache shares the longest prefix with `ids` (else the first)."""
        if not self.prefix_cache or len(free) == 1:
            return free[0]
        return max(free, key=lambda s: _common_prefix(ids, s))


# ---------------------------------------------------------------- a whole run

@dataclass
class BatchSummary:
    total: int = 0               # items in the input
    skipped: int = 0             # already in the output (resume)
    done: int = 0                # written this run
    errors: int = 0              # of which error records
    generated_tokens: int = 0
    reused_tokens: int = 0       # prompt tokens taken from the prefix cache
    seconds: float = 0.0
    interrupted: bool = False
    repaired_bytes: int = 0

    @property
    def tok_s(self) -> float:
        return self.generated_tokens / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "tok_s": round(self.tok_s, 2)}


def run_batch(model, items: list[Item], out_path, *, parallel: int = 1, seed: int | None = None,
              ordered: bool = False, overwrite: bool = False, retry_errors: bool = False,
              prefix_cache: bool = True, on_record: Callable[[dict, BatchSummary], None] | None = None,
              on_start: Callable[[BatchSummary], None] | None = None, **defaults) -> BatchSummary:
    """Run `items` into the JSONL file `out_path`, skipping ids already there. Returns a summary;
    on KeyboardInterrupt the summary has interrupted=True (whole lines only were written)."""
    runner = BatchRunner(model, parallel=parallel, seed=seed, prefix_cache=prefix_cache, **defaults)
    return write_records(items, out_path, runner.run, lambda: (runner.generated_tokens, runner.reused_tokens),
                         ordered=ordered, overwrite=overwrite, retry_errors=retry_errors, on_record=on_record,
                         on_start=on_start)


def write_records(items: list[Item], out_path, run: Callable[[list[Item]], Iterable[dict]],
                  counts: Callable[[], tuple[int, int]], *, ordered: bool = False, overwrite: bool = False,
                  retry_errors: bool = False, on_record: Callable[[dict, BatchSummary], None] | None = None,
                  on_start: Callable[[BatchSummary], None] | None = None) -> BatchSummary:
    """The output side of `run_batch`: `run(todo)` yields the records of the items not yet in `out_path`,
    each written as it comes (or in input order with `ordered`); `counts()` gives the tokens generated
    and reused so far. Also used by the Ray driver (integrations/ray.py), whose records come from a cluster."""
    summary = BatchSummary(total=len(items))
    t0 = time.perf_counter()
    output = StdoutOutput() if str(out_path) == "-" else OutputFile(out_path, overwrite=overwrite,
                                                                     retry_errors=retry_errors)
    with output as out:
        summary.repaired_bytes = out.repaired
        todo = [it for it in items if it.key not in out.done]
        summary.skipped = len(items) - len(todo)
        if on_start:
            on_start(summary)
        pending: dict[int, dict] = {}
        order = [it.index for it in todo]
        next_i = 0

        def emit(rec: dict) -> None:
            out.write(rec)
            summary.done += 1
            summary.errors += "error" in rec
            summary.generated_tokens, summary.reused_tokens = counts()
            summary.seconds = time.perf_counter() - t0
            if on_record:
                on_record(rec, summary)

        index_of = {it.key: it.index for it in todo}
        try:
            for rec in run(todo):
                if not ordered:
                    emit(rec)
                    continue
                pending[index_of[id_key(rec["id"])]] = rec
                while next_i < len(order) and order[next_i] in pending:
                    emit(pending.pop(order[next_i]))
                    next_i += 1
        except KeyboardInterrupt:
            summary.interrupted = True
        summary.seconds = time.perf_counter() - t0
    return summary


def dedupe(items: list[Item]) -> None:
    """One record per id: valid items claim their ids first (in input order), so an error item whose
    default id (its line number) equals a valid item's id never takes that id. A later item with a
    taken id becomes an error item whose id is {"duplicate_id": id, "where": where} (unique: an input
    id is never an object), so the output never has two records for one id."""
    seen: dict[str, str | None] = {}
    for it in sorted(items, key=lambda it: (it.error is not None, it.index)):
        if it.key not in seen:
            seen[it.key] = it.where
            continue
        if it.error is None:
            it.error = (f"duplicate id {quote(it.id, 80)} (first at {seen[it.key]}): not run; give each item "
                        f"its own id")
        it.id = {"duplicate_id": it.id, "where": it.where}


def items_from_api(items: Iterable) -> list[Item]:
    """API input: strings (raw prompts) or dicts with the JSONL fields. The default id is the position
    counted from 1, as a text file's line numbers are."""
    if isinstance(items, (str, bytes, dict)) or not hasattr(items, "__iter__"):
        raise EdgeQwenError(f"items must be a list of prompts (strings) or dicts, got {type(items).__name__}")
    out = []
    for i, x in enumerate(items, 1):
        if isinstance(x, str):
            try:
                out.append(Item(i, i - 1, prompt=check_text(x, "the prompt"), where=f"item {i}"))
            except EdgeQwenError as e:
                out.append(Item(i, i - 1, error=str(e), where=f"item {i}"))
        else:
            out.append(item_from_dict(x, i - 1, i, f"item {i}"))
    dedupe(out)
    return out
