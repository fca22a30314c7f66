"""`edgeqwen batch` on a Ray cluster (pip install "edgeqwen[ray]"). Two ways in:

- `EdgeQwenBatch`, a callable class for `ray.data.Dataset.map_batches` in your own pipeline:

      out = ray.data.read_json("tickets.jsonl").map_batches(
          EdgeQwenBatch, fn_constructor_kwargs={"model": "/shared/qwen3.gguf", "seed": 0},
          concurrency=2, num_cpus=2, batch_size=16, batch_format="pyarrow")

  Each actor (a replica) loads the model once, with threads = its num_cpus, and runs each batch through
  `batch.BatchRunner` (continuous batching, prefix reuse). Every input row is an item (the JSONL fields as
  columns, or one column `item` holding the item's JSON) and gives one output row: `record`, the line
  `edgeqwen batch` writes for it (without the newline), and `generated_tokens` / `reused_tokens`.
- `RayBatch`, the driver of `edgeqwen batch ... --ray [ADDRESS]`: `run` takes the items `batch.read_items`
  made, skips the ids already in the output, sends the others through `EdgeQwenBatch` replicas and appends
  each record as it comes back with `batch.write_records` (one write + fsync per record, as locally).
  A killed replica's batch is run again by Ray Data (its actors restart and retry their tasks); a batch's
  records come back only once the whole batch is done, and the driver drops an id it already wrote in this
  run, so no id is written twice. A killed driver resumes like the local command: run it again.

The model file must be at the same path on every node (a shared filesystem, or copied there), or be
shipped once through Ray's object store (`RayBatch(..., ship=True)` / `ship_model(path)`): each node then
writes it once into its edgeqwen cache (`~/.cache/edgeqwen/ray/`) and maps it from there. edgeqwen must be
installed on every node.

Records equal the local command's for the same seed (each item's seed derives from (seed, id)), except the
fields that depend on timing or on which items shared a replica: `timings`, `seconds`, `cached_tokens`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from ..batch import BatchRunner, BatchSummary, Item, error_record, id_key, item_from_dict, record_line, write_records
from ..errors import EdgeQwenError, one_line, quote
from ..limits import MAX_CTX

DEFAULT_BATCH_SIZE = 16          # items per map_batches call at most: a replica's unit of work and of retry
INSTALL = 'pip install "edgeqwen[ray]"'


def import_ray():
    """The `ray` module (with Ray Data), or one clear line saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise EdgeQwenError(f"running on Ray needs Ray Data ({INSTALL}): {one_line(str(e), 120)}") from None
    return ray


def connect(address: str | None = None):
    """The `ray` module, connected: to this process's session if it has one, else to `address` (`HOST:PORT`
    of the head node, `ray://HOST:PORT` for Ray Client, `auto` for the cluster `ray start` made on this
    machine; None: $RAY_ADDRESS, else a new cluster on this machine). An address that does not answer
    fails at once with one line (ray.init would retry it for minutes)."""
    ray = import_ray()
    if not ray.is_initialized():
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        target = address if address is not None else os.environ.get("RAY_ADDRESS")
        if target and target not in ("auto", "local"):
            _check_reachable(target)
        try:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        except Exception as e:                  # ConnectionError, a version mismatch, ...
            why = _root_message(e)
            if any("InvalidAuthToken" in str(x) for x in _chain(e)):
                why = ("the cluster wants its authentication token: set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN "
                       "(or put the token in ~/.ray/auth_token)")
            raise EdgeQwenError(f"cannot connect to Ray at {target or 'a new local cluster'}: {why}") from None
    logging.getLogger("ray.data").setLevel(logging.WARNING)     # no progress lines of Ray Data's own
    return ray


def _check_reachable(address: str) -> None:
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not (sep and host and port.isdigit() and 0 < int(port) < 65536):
        raise EdgeQwenError(f"Ray address {quote(address, 100)}: expected HOST:PORT, ray://HOST:PORT or auto")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as e:
        raise EdgeQwenError(f"cannot reach a Ray cluster at {address}: {e.strerror or e}") from None


# ---------------------------------------------------------------- the model on the nodes

@dataclass(frozen=True)
class ShippedModel:
    """A GGUF file put once into Ray's object store (`ship_model`); each node writes it once to its cache."""
    name: str
    size: int
    sha256: str
    ref: object                                   # ray.ObjectRef of the file's bytes (a uint8 array)

    def local_path(self) -> Path:
        import ray

        from ..demo import cache_dir

        path = cache_dir() / "ray" / f"{self.sha256[:16]}-{self.name}"
        if path.is_file() and path.stat().st_size == self.size:
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")     # replicas of one node may race: rename wins
        with open(tmp, "wb") as f:
            f.write(memoryview(ray.get(self.ref)))
        os.replace(tmp, path)
        return path


def ship_model(path) -> ShippedModel:
    """Put the GGUF file at `path` (on the driver) into the object store of the connected cluster. It must
    fit there (ray.init's object_store_memory, default 30% of RAM)."""
    import numpy as np

    ray = import_ray()
    data = np.memmap(path, dtype=np.uint8, mode="r")
    return ShippedModel(Path(path).name, int(data.size), hashlib.sha256(data).hexdigest(), ray.put(data))


def replica_cpus() -> int:
    """The CPUs Ray gave this actor (map_batches' num_cpus), at least 1."""
    import ray

    try:
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 0)
    except (AssertionError, RuntimeError):      # not in a Ray worker
        cpus = 0
    return max(1, int(cpus))


# ---------------------------------------------------------------- a replica

class EdgeQwenBatch:
    """A model replica for `Dataset.map_batches` (see the module docstring). `model`: a GGUF path that exists
    on the node, or a `ship_model` handle. `threads`: the actor's num_cpus unless given. The other options
    are `BatchRunner`'s: parallel, seed, prefix_cache, max_tokens, enable_thinking, thinking_budget,
    sampling (a dict of SamplingParams fields), response_format."""

    def __init__(self, model, *, threads: int | None = None, ctx_size: int | None = None, parallel: int = 4,
                 seed: int | None = None, prefix_cache: bool = True, **options):
        from ..api import load

        path = model.local_path() if isinstance(model, ShippedModel) else model
        self.model = load(path, threads=threads or replica_cpus(), ctx_size=ctx_size)
        self.runner = BatchRunner(self.model, parallel=parallel, seed=seed, prefix_cache=prefix_cache, **options)

    def __call__(self, batch):
        return _table(self.records(batch))

    def records(self, batch) -> dict[str, list]:
        """The batch's records (as lines, in completion order) and the tokens generated / reused for each."""
        runner = self.runner
        items = [_item(row, i) for i, row in enumerate(_rows(batch))]
        out = {"record": [], "generated_tokens": [], "reused_tokens": []}
        gen, reused = runner.generated_tokens, runner.reused_tokens
        for rec in runner.run(items):
            out["record"].append(record_line(rec).decode("utf-8")[:-1])
            out["generated_tokens"].append(runner.generated_tokens - gen)
            out["reused_tokens"].append(runner.reused_tokens - reused)
            gen, reused = runner.generated_tokens, runner.reused_tokens
        return out


class _DriverBatch(EdgeQwenBatch):
    """The replica `RayBatch` runs. A task of Ray Data may hold several batches, and its output goes back in
    blocks of the target block size (128 MiB by default: at the task's end). With a 1-byte target each row
    is a block, sent as soon as a later row follows it; so a batch gives two rows: its records (lines joined
    by newlines, with the token totals), then an empty row that stays behind until the next batch."""

    def __call__(self, batch):
        out = self.records(batch)
        return _table({"record": ["\n".join(out["record"]), ""],
                       "generated_tokens": [sum(out["generated_tokens"]), 0],
                       "reused_tokens": [sum(out["reused_tokens"]), 0]})


def _table(cols: dict):
    import pyarrow as pa

    return pa.table(cols, schema=pa.schema([("record", pa.string()), ("generated_tokens", pa.int64()),
                                            ("reused_tokens", pa.int64())]))


def _rows(batch) -> list[dict]:
    """The rows of a batch in any of Ray Data's formats, as JSON's Python types."""
    if hasattr(batch, "to_pylist"):                         # pyarrow.Table
        rows = batch.to_pylist()
    elif hasattr(batch, "to_dict"):                         # pandas.DataFrame
        rows = batch.to_dict("records")
    else:                                                   # dict of numpy arrays
        cols = {k: list(v) for k, v in batch.items()}
        rows = [dict(zip(cols, values)) for values in zip(*cols.values())]
    return [_plain(r) for r in rows]


def _plain(v):
    """numpy values as Python's; in dicts, a null (how Arrow fills a field a row does not have) is absent."""
    import numpy as np

    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items() if not (x is None or isinstance(x, float) and math.isnan(x))}
    if isinstance(v, np.ndarray):
        v = v.tolist()
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v.item() if isinstance(v, np.generic) else v


def _item(row: dict, index: int) -> Item:
    """An item from a row: its JSONL fields, or a column `item` with its JSON (and `where`: the driver's)."""
    if "item" not in row:
        return item_from_dict(row, index, None)
    try:
        d = json.loads(row["item"])
    except (TypeError, ValueError) as e:
        return Item(None, index, error=f"the column 'item' must hold an item's JSON: {one_line(str(e), 100)}")
    return item_from_dict(d, index, None, row.get("where"))


# ---------------------------------------------------------------- the driver

class RayBatch:
    """`edgeqwen batch --ray`: the items' records computed by `replicas` actors of `cpus_per_replica` CPUs
    each on a Ray cluster, appended to the output as they come back. `config`, `n_ctx` and `threads`
    describe the model without loading it here (the replicas do).

        rb = RayBatch("/shared/qwen3-0.6b-q4_0.gguf", replicas=2, cpus_per_replica=2)
        summary = rb.run(read_items("tickets.jsonl"), "answers.jsonl", parallel=4, seed=0, max_tokens=256)
    """

    def __init__(self, model_path=None, *, address: str | None = None, replicas: int | None = None,
                 cpus_per_replica: float | None = None, threads: int | None = None, ctx_size: int | None = None,
                 ship: bool = False, batch_size: int = DEFAULT_BATCH_SIZE):
        from ..api import DEFAULT_CTX
        from ..demo import demo_model_path
        from ..gguf_model import ModelFile

        replicas = 1 if replicas is None else replicas
        cpus_per_replica = 1 if cpus_per_replica is None else cpus_per_replica
        for name, value, low, high in (("replicas", replicas, 1, 4096), ("batch_size", batch_size, 1, 2**20),
                                       ("ctx_size", ctx_size, 1, MAX_CTX), ("threads", threads, 1, 1024)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or
                                      not low <= value <= high):
                raise EdgeQwenError(f"{name} must be an integer in {low}..{high}, got {quote(value, 40)}")
        if isinstance(cpus_per_replica, bool) or not isinstance(cpus_per_replica, (int, float)) or \
                not 0 < cpus_per_replica <= 1024:
            raise EdgeQwenError(f"cpus_per_replica must be a number in (0, 1024], got {quote(cpus_per_replica, 40)}")
        self.path = os.path.abspath(model_path if model_path is not None else demo_model_path())
        self.file = ModelFile(self.path)          # a bad file fails here, once (the replicas open it again)
        self.config = self.file.config
        self.n_ctx = min(self.config.n_ctx_train, DEFAULT_CTX) if ctx_size is None else ctx_size
        self.threads = threads or max(1, int(cpus_per_replica))
        self.replicas, self.cpus_per_replica, self.batch_size = replicas, cpus_per_replica, batch_size
        self.ray = connect(address)
        cpus = self.ray.cluster_resources().get("CPU", 0)
        if replicas * cpus_per_replica > cpus:    # Ray Data would wait for them forever
            raise EdgeQwenError(f"{replicas} replicas x {cpus_per_replica:g} CPUs need {replicas * cpus_per_replica:g} "
                                f"CPUs; the Ray cluster has {cpus:g}")
        self.model = ship_model(self.path) if ship else self.path

    def run(self, items: list[Item], out_path, *, parallel: int = 1, seed: int | None = None, ordered: bool = False,
            overwrite: bool = False, retry_errors: bool = False, prefix_cache: bool = True, on_record=None,
            on_start=None, **defaults) -> BatchSummary:
        """As `batch.run_batch(model, ...)`: the same arguments and output file."""
        if defaults.get("response_format") is not None:    # a bad schema fails here, not in every replica
            from ..constrain import compile_format
            from ..tokenizer import Tokenizer

            compile_format(Tokenizer.from_gguf_metadata(self.file.metadata, self.path), defaults["response_format"])
        options = dict(model=self.model, threads=self.threads, ctx_size=self.n_ctx, parallel=parallel, seed=seed,
                       prefix_cache=prefix_cache, **defaults)
        counts = [0, 0]                                     # tokens generated, prompt tokens reused

        def records(todo: list[Item]):
            yield from (error_record(it, it.error) for it in todo if it.error)    # as BatchRunner.run does
            rows = [{"item": json.dumps(_fields(it)), "where": it.where} for it in todo if not it.error]
            if not rows:
                return
            size = max(1, min(self.batch_size, math.ceil(len(rows) / (2 * self.replicas))))  # 2+ per replica
            ctx = self.ray.data.DataContext.get_current()
            target = ctx.target_max_block_size
            ctx.target_max_block_size = 1       # each row a block, returned at once (see _DriverBatch)
            try:                                # (the dataset keeps the context it was made with)
                ds = self.ray.data.from_items(rows, override_num_blocks=math.ceil(len(rows) / size))
                out = ds.map_batches(_DriverBatch, fn_constructor_kwargs=options, batch_size=size,
                                     batch_format="pyarrow", num_cpus=self.cpus_per_replica,
                                     compute=self.ray.data.ActorPoolStrategy(size=self.replicas))
            finally:
                ctx.target_max_block_size = target
            seen: set[str] = set()
            for batch in _cluster_errors(out.iter_batches(batch_size=None, batch_format="pyarrow")):
                cols = (batch[c].to_pylist() for c in ("record", "generated_tokens", "reused_tokens"))
                for lines, gen, reused in zip(*cols):
                    counts[0] += gen
                    counts[1] += reused
                    for line in filter(None, lines.split("\n")):
                        rec = json.loads(line)
                        key = id_key(rec["id"])
                        if key not in seen:     # a retried batch's records, had they come twice
                            seen.add(key)
                            yield rec

        return write_records(items, out_path, records, lambda: (counts[0], counts[1]), ordered=ordered,
                             overwrite=overwrite, retry_errors=retry_errors, on_record=on_record, on_start=on_start)


def _fields(item: Item) -> dict:
    """An item as the JSONL object it came from (read again by `batch.item_from_dict` in the replica)."""
    text = {"prompt": item.prompt} if item.prompt is not None else {"messages": item.messages}
    return {"id": item.id, **text, **item.options}


def _cluster_errors(batches):
    """Ray's exceptions (a replica that cannot start, a lost cluster) as one EdgeQwenError line."""
    try:
        yield from batches
    except EdgeQwenError:
        raise
    except Exception as e:
        raise EdgeQwenError(f"the Ray job failed: {_root_message(e)}") from None


def _chain(e: BaseException):
    """`e` and the exceptions it wraps (Ray's `cause`, Python's __cause__ / __context__)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = getattr(e, "cause", None) or e.__cause__ or e.__context__


def _root_message(e: BaseException) -> str:
    """An edgeqwen error inside Ray's wrappers, else the last line of the outermost message."""
    for x in _chain(e):
        if isinstance(x, EdgeQwenError):
            return one_line(str(x), 400)
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    return one_line(lines[-1] if lines else "unknown error", 400)
