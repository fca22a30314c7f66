"""A fast, validating GGUF parser over one read-only mmap.

gguf-py's `GGUFReader` builds a numpy view per array element and takes many seconds on a
151,936-token vocabulary; start-up time matters here, so the header is parsed with `struct`
directly. Tensor data stays in the mmap: `TensorInfo.raw()` is a zero-copy uint8 view.
Every read is bounds-checked, so a truncated or corrupt file is a clear error, never a crash.
"""
from __future__ import annotations

import codecs
import math
import mmap
import os
import re
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import gguf
import numba
import numpy as np

from .errors import EdgeQwenError, quote

GGUF_MAGIC = b"GGUF"
_SCALAR = {  # GGUFValueType -> struct format
    0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d",
}
_NP = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "<u1", 10: "<u8", 11: "<i8", 12: "<f8"}
STRING, ARRAY = 8, 9
MAX_ARRAY_NESTING = 4         # arrays of arrays: gguf-py writes them, no model needs them deep


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]        # numpy order: (rows, cols) for a matrix, i.e. GGUF dims reversed
    qtype: gguf.GGMLQuantizationType
    offset: int                   # absolute byte offset in the file
    nbytes: int
    _buf: object = None

    def raw(self) -> np.ndarray:
        """The tensor's bytes as a read-only uint8 array of shape (rows, bytes_per_row)."""
        rows = int(np.prod(self.shape[:-1])) if len(self.shape) > 1 else 1
        a = np.frombuffer(self._buf, dtype=np.uint8, count=self.nbytes, offset=self.offset)
        return a.reshape(rows, self.nbytes // rows)


@numba.njit(cache=True, nogil=True)
def _string_ends(buf, start, count):
    """End offsets of `count` GGUF strings (u64 little-endian length + bytes) from `start`; the last
    entry is -1 if the run does not fit in `buf`."""
    ends = np.empty(count, np.int64)
    p, size = start, len(buf)
    for i in range(count):
        if p + 8 > size:
            ends[count - 1] = -1
            return ends
        n = np.uint64(0)
        for k in range(8):
            n |= np.uint64(buf[p + k]) << np.uint64(8 * k)
        if n > np.uint64(size - p - 8):
            ends[count - 1] = -1
            return ends
        p += 8 + np.int64(n)
        ends[i] = p
    return ends


@numba.njit(cache=True, nogil=True)
def _join_strings(buf, start, ends):
    """The bytes of the strings whose ends `_string_ends` found, joined with NUL separators."""
    n = len(ends)
    out = np.empty(ends[n - 1] - start - 8 * n + n - 1, np.uint8)
    o, p = 0, start
    for i in range(n):
        if i:
            out[o] = 0
            o += 1
        for j in range(p + 8, ends[i]):
            out[o] = buf[j]
            o += 1
        p = ends[i]
    return out


class GGUFFile:
    """Metadata (key -> value) and tensor infos of a GGUF file, data mmapped read-only."""

    def __init__(self, path: str | os.PathLike, _shard: bool = False):
        self.path = Path(path)
        if sys.byteorder != "little":
            # GGUF data are little-endian and the kernels read them in place (x86-64, aarch64, ...)
            raise EdgeQwenError(f"{self.path}: this machine is big-endian; edgeqwen reads GGUF's "
                                f"little-endian tensor data in place and needs a little-endian CPU")
        try:
            f = open(self.path, "rb")
        except FileNotFoundError:
            raise EdgeQwenError(f"{self.path}: no such file") from None
        except IsADirectoryError:
            raise EdgeQwenError(f"{self.path}: is a directory, expected a .gguf file") from None
        with f:
            self.size = os.fstat(f.fileno()).st_size
            if self.size < 24:
                if f.read(4) == GGUF_MAGIC:
                    raise EdgeQwenError(f"{self.path}: truncated GGUF file (only {self.size} bytes, "
                                        f"the header needs 24)")
                raise EdgeQwenError(f"{self.path}: not a GGUF file (only {self.size} bytes)")
            self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self._pos = 0
        self.metadata: dict[str, object] = {}
        self.tensors: dict[str, TensorInfo] = {}
        self._parse()
        self.shards = [self]
        if not _shard and self.metadata.get(gguf.Keys.Split.LLM_KV_SPLIT_COUNT, 1) != 1:
            self._add_shards()

    def _add_shards(self) -> None:
        """A split model (llama.cpp's `NAME-00001-of-00003.gguf`, gguf-split / convert --split-max-*):
        opened from its first file, the others' tensors are added (each stays mapped in its own file)."""
        n = self.metadata[gguf.Keys.Split.LLM_KV_SPLIT_COUNT]
        m = re.match(r"^(.*)-(\d{5})-of-(\d{5})\.gguf$", self.path.name)
        if not m or int(m[2]) != 1 or int(m[3]) != n or not isinstance(n, int) or not 1 < n <= 9999:
            raise EdgeQwenError(f"{self.path}: part of a model split in {n!r} files: open its first file, "
                                f"NAME-00001-of-{n if isinstance(n, int) else 0:05d}.gguf")
        for i in range(2, n + 1):
            shard = GGUFFile(self.path.with_name(f"{m[1]}-{i:05d}-of-{n:05d}.gguf"), _shard=True)
            if shard.metadata.get(gguf.Keys.Split.LLM_KV_SPLIT_NO) != i - 1:
                raise EdgeQwenError(f"{shard.path}: {gguf.Keys.Split.LLM_KV_SPLIT_NO} is "
                                    f"{shard.metadata.get(gguf.Keys.Split.LLM_KV_SPLIT_NO)!r}, expected {i - 1}")
            for name, t in shard.tensors.items():
                if name in self.tensors:
                    raise EdgeQwenError(f"{shard.path}: tensor {quote(name)} is also in another part of the model")
                self.tensors[name] = t
            self.shards.append(shard)
            self.size += shard.size

    # -- low-level reads, all bounds-checked
    def _take(self, n: int) -> int:
        p = self._pos
        if n < 0 or p + n > self.size:
            raise EdgeQwenError(f"{self.path}: truncated or corrupt GGUF header (read of {n} bytes at offset {p}, "
                                f"file has {self.size})")
        self._pos = p + n
        return p

    def _scalar(self, vtype: int):
        fmt = _SCALAR[vtype]
        return struct.unpack_from(fmt, self._mm, self._take(struct.calcsize(fmt)))[0]

    def _string(self) -> str:
        n = self._scalar(10)
        p = self._take(n)
        return self._mm[p:p + n].decode("utf-8", errors="replace")

    def _value(self, vtype: int, key: str, depth: int = 0):
        if vtype in _SCALAR:
            return self._scalar(vtype)
        if vtype == STRING:
            return self._string()
        if vtype == ARRAY:
            etype = self._scalar(4)
            count = self._scalar(10)
            if etype in _NP:
                dt = np.dtype(_NP[etype])
                p = self._take(count * dt.itemsize)
                arr = np.frombuffer(self._mm, dtype=dt, count=count, offset=p)
                return [bool(x) for x in arr] if etype == 7 else arr.tolist()
            if etype == STRING:
                return self._string_array(count)
            if etype == ARRAY and depth >= MAX_ARRAY_NESTING:
                raise EdgeQwenError(f"{self.path}: key {quote(key)} has arrays nested more than "
                                    f"{MAX_ARRAY_NESTING} deep")
            return [self._value(etype, key, depth + 1) for _ in range(count)]
        raise EdgeQwenError(f"{self.path}: key {quote(key)} has unknown value type {vtype}")

    def _string_array(self, count: int) -> list[str]:
        """`count` strings (u64 length + bytes each). The vocabulary's 150k strings are decoded at once:
        the length fields become NUL separators and the whole run is decoded and split in one call; a
        run with invalid UTF-8 or a NUL inside a string is decoded string by string (errors replaced)."""
        start = self._pos
        if count > (self.size - start) // 8:       # each string takes at least its 8-byte length
            raise EdgeQwenError(f"{self.path}: truncated string array ({count} strings in "
                                f"{self.size - start} bytes)")
        ends = _string_ends(np.frombuffer(self._mm, dtype=np.uint8), start, count)
        if count and ends[-1] < 0:
            raise EdgeQwenError(f"{self.path}: truncated string array")
        p = int(ends[-1]) if count else start
        self._pos = p
        if not count:
            return []
        joined = _join_strings(np.frombuffer(self._mm, dtype=np.uint8), start, ends)
        try:
            out = codecs.utf_8_decode(joined, "strict", True)[0].split("\0")     # no bytes copy
            if len(out) == count:
                return out
        except UnicodeDecodeError:
            pass
        heads = [start, *ends[:-1].tolist()]
        return [self._mm[h + 8:e].decode("utf-8", errors="replace") for h, e in zip(heads, ends.tolist())]

    def _parse(self) -> None:
        if self._mm[:4] != GGUF_MAGIC:
            raise EdgeQwenError(f"{self.path}: not a GGUF file (magic {bytes(self._mm[:4])!r}, expected b'GGUF')")
        self._pos = 4
        version = self._scalar(4)
        if version not in (2, 3):
            raise EdgeQwenError(f"{self.path}: GGUF version {version} is not supported (expected 2 or 3)")
        n_tensors, n_kv = self._scalar(10), self._scalar(10)
        if n_tensors > 1_000_000 or n_kv > 1_000_000:
            raise EdgeQwenError(f"{self.path}: corrupt GGUF header ({n_tensors} tensors, {n_kv} keys)")
        for _ in range(n_kv):
            key = self._string()
            if key in self.metadata:
                raise EdgeQwenError(f"{self.path}: metadata key {quote(key)} appears twice")
            self.metadata[key] = self._value(self._scalar(4), key)
        infos = []
        for _ in range(n_tensors):
            name = self._string()
            n_dims = self._scalar(4)
            if not 1 <= n_dims <= 4:
                raise EdgeQwenError(f"{self.path}: tensor {quote(name)} has {n_dims} dimensions (expected 1 to 4)")
            dims = [self._scalar(10) for _ in range(n_dims)]
            if 0 in dims:
                raise EdgeQwenError(f"{self.path}: tensor {quote(name)} has an empty dimension {dims}")
            t, off = self._scalar(4), self._scalar(10)
            infos.append((name, tuple(reversed(dims)), t, off))
        align = self.metadata.get(gguf.Keys.General.ALIGNMENT, 32)
        if not isinstance(align, int) or isinstance(align, bool) or align <= 0 or align & (align - 1):
            raise EdgeQwenError(f"{self.path}: {gguf.Keys.General.ALIGNMENT} = {align!r} is not a power of two")
        data_start = (self._pos + align - 1) // align * align
        for name, shape, t, off in infos:
            qname = quote(name)
            if name in self.tensors:
                raise EdgeQwenError(f"{self.path}: tensor {qname} appears twice")
            try:
                qtype = gguf.GGMLQuantizationType(t)
                block, size = gguf.GGML_QUANT_SIZES[qtype]
            except (ValueError, KeyError):
                raise EdgeQwenError(f"{self.path}: tensor {qname} has unknown type id {t}") from None
            n = math.prod(shape)          # Python ints: corrupt dims cannot overflow past the bounds check
            if shape[-1] % block:
                raise EdgeQwenError(f"{self.path}: tensor {qname} row length {shape[-1]} is not a multiple of "
                                    f"the {qtype.name} block size {block}")
            nbytes = n // block * size
            if off % align:
                raise EdgeQwenError(f"{self.path}: tensor {qname} data offset {off} is not a multiple of the "
                                    f"alignment {align}")
            start = data_start + off
            if start + nbytes > self.size:
                raise EdgeQwenError(f"{self.path}: truncated: tensor {qname} needs bytes {start}..{start + nbytes}, "
                                    f"file has {self.size} bytes")
            self.tensors[name] = TensorInfo(name, shape, qtype, start, nbytes, self._mm)
        self._check_overlaps()

    def _check_overlaps(self) -> None:
        """Tensor data must not share bytes: a corrupt offset would alias two weights."""
        spans = sorted((t.offset, t.offset + t.nbytes, t.name) for t in self.tensors.values())
        for (_, end, a), (start, _, b) in zip(spans, spans[1:]):
            if start < end:
                raise EdgeQwenError(f"{self.path}: tensors {quote(a)} and {quote(b)} overlap in the file "
                                    f"(bytes {start}..{end}); corrupt tensor offsets")
