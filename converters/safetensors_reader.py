"""A streaming, validating reader of safetensors files (single file or sharded index).

Tensors are memory-mapped and handed out one row-chunk at a time, so converting a model needs
memory for about one chunk, not the model. BF16 is read without torch (upper half of a float32).
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from edgeqwen.errors import EdgeQwenError

_DTYPES = {
    "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"),
    "F64": np.dtype("<f8"),
}


@dataclass(frozen=True)
class TensorRef:
    name: str
    file: Path
    dtype: str          # safetensors dtype string: F32, F16, BF16, F64
    shape: tuple[int, ...]
    offset: int         # absolute byte offset in the file
    nbytes: int

    def rows(self, chunk_rows: int) -> Iterator[np.ndarray]:
        """Yield float32 chunks of `chunk_rows` rows (a 1-D tensor is one chunk).

        Plain reads, not mmap: resident memory stays at one chunk whatever the tensor size.
        """
        dt = _DTYPES[self.dtype]
        n_rows = self.shape[0] if len(self.shape) >= 2 else 1
        row_elems = int(np.prod(self.shape)) // max(n_rows, 1) if self.shape else 1
        inner = self.shape[1:] if len(self.shape) >= 2 else self.shape
        with open(self.file, "rb") as f:
            f.seek(self.offset)
            for start in range(0, n_rows, chunk_rows):
                n = min(chunk_rows, n_rows - start)
                raw = np.fromfile(f, dtype=dt, count=n * row_elems)
                if raw.size != n * row_elems:
                    raise EdgeQwenError(f"{self.file}: truncated while reading tensor {self.name}")
                shape = (n, *inner) if len(self.shape) >= 2 else self.shape
                yield _to_f32(self.dtype, raw.reshape(shape))

    def read(self) -> np.ndarray:
        return np.concatenate(list(self.rows(1 << 30)), axis=0) if len(self.shape) >= 2 else next(self.rows(1))


def _to_f32(dtype: str, a: np.ndarray) -> np.ndarray:
    if dtype == "BF16":
        return (a.astype(np.uint32) << 16).view(np.float32)
    return a.astype(np.float32)


def _read_header(path: Path) -> dict[str, TensorRef]:
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise EdgeQwenError(f"{path}: not a safetensors file (only {size} bytes)")
        (hlen,) = struct.unpack("<Q", head)
        if hlen > min(size - 8, 100 * 2**20):
            raise EdgeQwenError(f"{path}: not a safetensors file or truncated (header length {hlen}, file size {size})")
        try:
            header = json.loads(f.read(hlen))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise EdgeQwenError(f"{path}: corrupt safetensors header ({e})") from None
    base = 8 + hlen
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = info.get("dtype")
        if dtype not in _DTYPES:
            raise EdgeQwenError(f"{path}: tensor {name} has dtype {dtype}, supported: {', '.join(_DTYPES)}")
        shape = tuple(int(s) for s in info["shape"])
        begin, end = (int(x) for x in info["data_offsets"])
        expected = int(np.prod(shape)) * _DTYPES[dtype].itemsize if shape else _DTYPES[dtype].itemsize
        if end - begin != expected:
            raise EdgeQwenError(f"{path}: tensor {name} has {end - begin} bytes, expected {expected} for {dtype}{list(shape)}")
        if base + end > size:
            raise EdgeQwenError(
                f"{path}: truncated: tensor {name} ends at byte {base + end}, file has {size} bytes")
        out[name] = TensorRef(name, path, dtype, shape, base + begin, end - begin)
    return out


def open_checkpoint(model_dir: Path) -> dict[str, TensorRef]:
    """All tensors of a checkpoint directory, from model.safetensors or its shard index."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise EdgeQwenError(f"{index}: not a valid shard index ({e})") from None
        files = sorted(set(weight_map.values()))
    else:
        files = sorted(p.name for p in model_dir.glob("*.safetensors"))
        weight_map = None
    if not files:
        raise EdgeQwenError(f"{model_dir}: no weights found (expected model.safetensors or model.safetensors.index.json)")
    tensors: dict[str, TensorRef] = {}
    for fname in files:
        path = model_dir / fname
        if not path.is_file():
            raise EdgeQwenError(f"{path}: weight shard listed in the index is missing")
        for name, ref in _read_header(path).items():
            if name in tensors:
                raise EdgeQwenError(f"{path}: tensor {name} also appears in {tensors[name].file.name}")
            tensors[name] = ref
    if weight_map is not None:
        missing = sorted(set(weight_map) - set(tensors))
        if missing:
            raise EdgeQwenError(f"{index}: tensors listed but not found in the shards: {', '.join(missing[:5])}")
    return tensors

