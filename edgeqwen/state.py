"""A sequence's KV state on disk: the token ids a cache holds and its buffers (any cache type),
so a long prompt's prefill is paid once across processes (`Model.save_state` / `load_state`,
`chat /save`, `batch --prompt-cache`).

File layout: MAGIC, a little-endian uint64 header length, the header (UTF-8 JSON: format version,
the model's identity, cache types and shape, n, the tokens, each buffer's name/dtype/shape and the
payload's sha256), then the payload: each buffer's first n positions, C order, in header order.
Written to a temporary file next to the target and renamed (a crash leaves the old file or none).
Reading checks every field and the payload's size and hash before the cache is touched: a
truncated, corrupt or foreign file is refused with one line naming the file and the problem.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
import warnings
from pathlib import Path

import numpy as np

from .errors import EdgeQwenError
from .kv_cache import KVCache

MAGIC = b"EDGEQWEN-KV-STATE\n"
VERSION = 1
MAX_HEADER = 64 << 20          # the tokens of a 1M-token context fit well below this
_SAMPLE = 16 << 20             # bytes of the model file hashed at its start (metadata, tokenizer) and 1 MiB at its end


def model_identity(model_file) -> dict:
    """What identifies a model file without reading all of it: its size and the sha256 of its
    first 16 MiB (header: metadata, tokenizer, tensor offsets) and last 1 MiB (weights). Not its
    name or place: a copied or renamed file is the same model."""
    path = Path(model_file.path)
    size = path.stat().st_size
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(_SAMPLE))
        if size > _SAMPLE:
            f.seek(max(size - (1 << 20), _SAMPLE))
            h.update(f.read())
    return {"size": size, "sha256_sample": h.hexdigest()}


def _cache_shape(model, cache: KVCache) -> dict:
    c = model.config
    return {"type_k": cache.type_k, "type_v": cache.type_v, "n_layer": c.n_layer, "n_head_kv": c.n_head_kv,
            "head_dim": c.head_dim}


def save(path, model, cache: KVCache, tokens) -> int:
    """Write `tokens` (the ids whose keys/values `cache` holds: len == cache.n) and the cache's
    first cache.n positions to `path` atomically. `model`: an api.Model. Returns the bytes written."""
    tokens = [int(t) for t in tokens]
    n = cache.n
    if len(tokens) != n or n == 0:
        raise EdgeQwenError(f"{path}: nothing to save (the cache holds {n} tokens)" if n == 0 else
                            f"{path}: {len(tokens)} token ids for a cache of {n} positions")
    bufs = list(cache.buffers().items())
    h = hashlib.sha256()
    for _, a in bufs:
        for rows in _rows(a, n):
            h.update(rows)
    header = {"format": "edgeqwen-kv-state", "version": VERSION,
              "model": {"file": Path(model.file.path).name, **model_identity(model.file)},
              **_cache_shape(model, cache), "n": n, "tokens": tokens,
              "buffers": [{"name": name, "dtype": a.dtype.str, "shape": [a.shape[0], n, *a.shape[2:]]}
                          for name, a in bufs],
              "sha256": h.hexdigest()}
    head = json.dumps(header, separators=(",", ":")).encode()
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC + struct.pack("<Q", len(head)) + head)
            for _, a in bufs:
                for rows in _rows(a, n):
                    f.write(rows)
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise EdgeQwenError(f"{path}: cannot write the KV state: {e.strerror or e}") from None
        raise
    return path.stat().st_size


def _check(cond: bool, path, problem: str) -> None:
    if not cond:
        raise EdgeQwenError(f"{path}: not a usable KV state file: {problem}")


def read_header(path) -> tuple[dict, int]:
    """The checked-for-shape header of a state file and the payload's offset."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            start = f.read(len(MAGIC) + 8)
            _check(len(start) == len(MAGIC) + 8 and start[:len(MAGIC)] == MAGIC, path,
                   "it does not start with the edgeqwen KV state signature")
            (hlen,) = struct.unpack("<Q", start[len(MAGIC):])
            _check(hlen <= min(MAX_HEADER, size - len(start)), path,
                   f"header of {hlen} bytes in a file of {size} bytes (truncated?)")
            raw = f.read(hlen)
    except OSError as e:
        raise EdgeQwenError(f"{path}: cannot read the KV state: {e.strerror or e}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise EdgeQwenError(f"{path}: not a usable KV state file: its header is not valid JSON (corrupt)") from None
    want = {"format", "version", "model", "type_k", "type_v", "n_layer", "n_head_kv", "head_dim", "n", "tokens",
            "buffers", "sha256"}
    _check(isinstance(header, dict) and set(header) == want, path,
           f"header keys {sorted(header) if isinstance(header, dict) else type(header).__name__}, expected {sorted(want)}")
    _check(header["format"] == "edgeqwen-kv-state" and header["version"] == VERSION, path,
           f"format {header['format']!r} version {header['version']!r}, expected edgeqwen-kv-state version {VERSION}")
    return header, len(MAGIC) + 8 + hlen


def load(path, model, cache: KVCache) -> list[int]:
    """Fill `cache` (of `model`, an api.Model) from the state file at `path`; returns its token ids.
    Everything is checked before the cache changes."""
    header, offset = read_header(path)
    ident, saved = model_identity(model.file), header["model"]
    if not isinstance(saved, dict) or any(saved.get(k) != v for k, v in ident.items()):
        name = saved.get("file") if isinstance(saved, dict) else None
        raise EdgeQwenError(f"{path}: this KV state belongs to another model file ({name!r}), not "
                            f"{Path(model.file.path).name!r} (size or content differ)")
    shape = _cache_shape(model, cache)
    for key, value in shape.items():
        if header[key] != value:
            what = "cache type" if key.startswith("type") else "model shape"
            raise EdgeQwenError(f"{path}: the KV state has {key} = {header[key]!r}, this session {value!r} "
                                f"({what} differs{'; use --cache-type as when it was saved' if what == 'cache type' else ''})")
    n, tokens = header["n"], header["tokens"]
    _check(isinstance(n, int) and not isinstance(n, bool) and n >= 1, path, f"n = {n!r}, expected an integer >= 1")
    if n > cache.n_ctx:
        raise EdgeQwenError(f"{path}: the KV state holds {n} tokens, more than the context of {cache.n_ctx} "
                            f"(raise -c/--ctx-size)")
    vocab = model.config.n_vocab
    _check(isinstance(tokens, list) and len(tokens) == n
           and all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab for t in tokens), path,
           f"tokens must be {n} ids in 0..{vocab - 1}")
    bufs = cache.buffers()
    specs = header["buffers"]
    _check(isinstance(specs, list) and [s.get("name") if isinstance(s, dict) else None for s in specs] == list(bufs),
           path, f"buffers {specs!r:.200}, expected {list(bufs)}")
    total = 0
    for s in specs:
        a = bufs[s["name"]]
        want = [a.shape[0], n, *a.shape[2:]]
        _check(set(s) == {"name", "dtype", "shape"} and s["dtype"] == a.dtype.str and s["shape"] == want, path,
               f"buffer {s['name']} is {s.get('dtype')!r} {s.get('shape')!r}, expected {a.dtype.str!r} {want}")
        total += int(np.prod(want)) * a.dtype.itemsize
    size = os.path.getsize(path)
    if size != offset + total:
        raise EdgeQwenError(f"{path}: KV state is {size} bytes, expected {offset + total} "
                            f"({'truncated' if size < offset + total else 'trailing data'})")
    try:
        with open(path, "rb") as f:           # two passes: the hash first, the cache only if it matches
            f.seek(offset)
            h = hashlib.sha256()
            while chunk := f.read(16 << 20):
                h.update(chunk)
            if h.hexdigest() != header["sha256"]:
                raise EdgeQwenError(f"{path}: KV state is corrupt (sha256 of its {total} payload bytes differs)")
            f.seek(offset)
            for s in specs:
                for rows in _rows(bufs[s["name"]], n):
                    if f.readinto(rows) != rows.nbytes:
                        raise EdgeQwenError(f"{path}: KV state changed while it was read")
    except OSError as e:
        raise EdgeQwenError(f"{path}: cannot read the KV state: {e.strerror or e}") from None
    cache.n = n
    return list(tokens)


def _rows(a: np.ndarray, n: int):
    """The bytes of positions 0..n-1 of a (layer, position, ...) buffer, layer by layer (each a
    contiguous block: no copy of the cache)."""
    for layer in range(a.shape[0]):
        yield memoryview(a[layer, :n]).cast("B")


class PromptCache:
    """`batch --prompt-cache DIR`: prompt prefixes' KV states on disk, reused across runs. Files are
    DIR/MODEL/LEN-HASH.kv: MODEL a hash of the model file's identity and the cache types, LEN the
    prefix's length in tokens and HASH the sha256 of its ids, so a prompt's stored prefixes are found
    by hashing its own first LEN ids (no file is read until one matches)."""

    MIN_TOKENS = 64       # shorter shared prefixes are cheap to prefill: not worth a file

    def __init__(self, root, model):
        key = json.dumps([model_identity(model.file), model.model.type_k, model.model.type_v], sort_keys=True)
        self.model = model
        self.dir = Path(root) / hashlib.sha256(key.encode()).hexdigest()[:16]
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise EdgeQwenError(f"{root}: cannot use it as the prompt cache directory: {e.strerror or e}") from None
        self.damaged: set[Path] = set()     # files that did not load: rewritten when the prefix comes again
        self.hits = 0               # prefixes loaded from disk
        self.saved = 0              # prefixes written

    @staticmethod
    def _name(ids) -> str:
        return f"{len(ids)}-{hashlib.sha256(np.asarray(ids, '<i8').tobytes()).hexdigest()[:32]}.kv"

    def load_longest(self, ids, longer_than: int, cache: KVCache) -> int:
        """Fill `cache` with the longest stored prefix of `ids` longer than `longer_than` tokens; returns
        its length (0 when there is none). A file that does not load is warned about and skipped."""
        lengths = sorted({int(p.name.split("-")[0]) for p in self.dir.glob("*-*.kv") if p.name.split("-")[0].isdigit()},
                         reverse=True)
        for n in lengths:
            if n <= longer_than:
                break
            path = self.dir / self._name(ids[:n]) if n <= len(ids) else None
            if path is None or not path.is_file():
                continue
            try:
                tokens = load(path, self.model, cache)
            except EdgeQwenError as e:
                warnings.warn(f"prompt cache: skipping {e}", UserWarning, stacklevel=2)
                self.damaged.add(path)
                continue
            if tokens == list(ids[:n]):
                self.hits += 1
                return n
        return 0

    def store(self, cache: KVCache, tokens) -> None:
        """Save the cache (holding exactly `tokens`) as a prefix, unless it is short or already stored."""
        path = self.dir / self._name(tokens)
        if len(tokens) >= self.MIN_TOKENS and (path in self.damaged or not path.exists()):
            save(path, self.model, cache, tokens)
            self.damaged.discard(path)
            self.saved += 1
