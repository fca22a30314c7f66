"""Weight formats: one module per block format (numpy reference + numba kernel), dispatched here.

A `Weight` wraps a zero-copy view of one GGUF matrix; its matmul kernel is chosen once, at load:
the explicit-SIMD kernel of `edgeqwen/simd/` when this machine's path has one for the type
(`Weight.simd`, a GGML type code), else the portable numba kernel of the format's module here
(also the reference the SIMD kernels are tested against). Batches of PREFILL_MIN_TOKENS and more
go through the SIMD path's prompt GEMM (`simd.gemm`: int8, eight rows per vector) for the types it
has, else through `prefill` (BLAS on dequantized tiles) for the types that supports.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import gguf
import numpy as np

from .common import F16_TABLE, QK, QuantizedActivation
from .floats import matmul_bf16, matmul_f16, matmul_f32
from .q4_0 import dequantize_row_q4_0, ffn_q4_0, matmul3_q4_0, matmul_q4_0
from .q8_0 import dequantize_row_q8_0, ffn_q8_0, matmul3_q8_0, matmul_q8_0
from . import kquants, q4_1, q5
from ..kernels import silu_mul
from . import prefill
from .. import simd

T = gguf.GGMLQuantizationType


class UnpackedKernels(NamedTuple):
    """The drivers of one row-unpacked format (q4_1.py, q5.py, kquants.py; see unpacked.py)."""
    matmul: Callable      # (w, xq, xd, xs, out, f16)
    matmul3: Callable     # (w0, w1, w2, xq, xd, xs, out0, out1, out2, f16)
    ffn: Callable         # (wg, wu, xq, xd, xs, g, u, f16)
    row: Callable         # (w, r, out, f16)


def _kernels(mod, fmt: str) -> UnpackedKernels:
    return UnpackedKernels(*(getattr(mod, f"{k}_{fmt}") for k in ("matmul", "matmul3", "ffn", "dequantize_row")))


# Formats whose rows are unpacked to int16 and dotted with the Q8_0 activation.
UNPACKED = {T.Q4_1: _kernels(q4_1, "q4_1"), T.Q5_0: _kernels(q5, "q5_0"), T.Q5_1: _kernels(q5, "q5_1"),
            T.Q2_K: _kernels(kquants, "q2_k"), T.Q3_K: _kernels(kquants, "q3_k"),
            T.Q4_K: _kernels(kquants, "q4_k"), T.Q5_K: _kernels(kquants, "q5_k"),
            T.Q6_K: _kernels(kquants, "q6_k")}
SUPPORTED_TYPES = (T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, *UNPACKED)
QUANTIZED = (T.Q8_0, T.Q4_0, *UNPACKED)


class Weight:
    """A (rows, cols) weight matrix of a GGUF file: y = x @ W.T computed on its own blocks."""

    def __init__(self, name: str, qtype: T, shape: tuple[int, int], raw: np.ndarray):
        self.name, self.qtype = name, qtype
        self.rows, self.cols = shape
        self.raw = raw                                   # (rows, bytes_per_row) uint8
        self.kernels = UNPACKED.get(qtype)               # drivers of a row-unpacked format, else None
        self.simd = simd.code_for(qtype)                 # explicit-SIMD kernel code, else None
        if self.kernels is not None:
            self.data = raw
        elif qtype == T.F32:
            self.data = raw.view(np.float32)             # (rows, cols)
        elif qtype in (T.F16, T.BF16):
            self.data = raw.view(np.uint16)              # (rows, cols) bit patterns
        elif qtype == T.Q8_0:
            self.data = raw
            self.idata = raw.view(np.int8)
        elif qtype == T.Q4_0:
            self.data = raw
        else:
            raise ValueError(f"{name}: type {qtype.name} has no kernel")

    @property
    def wants_q8_activation(self) -> bool:
        return self.qtype in QUANTIZED

    def matmul(self, x: np.ndarray, out: np.ndarray, act=None) -> np.ndarray:
        """out (T, rows) = x (T, cols) @ W.T. `act` = (xq, xd, xs) from QuantizedActivation."""
        if x.shape[0] >= prefill.PREFILL_MIN_TOKENS and self.simd in simd.GEMM_CODES:
            return simd.gemm(self.simd, self.raw, act, out)       # int8 GEMM, many tokens per tile
        if x.shape[0] >= prefill.PREFILL_MIN_TOKENS and prefill.supports(self):
            xf = prefill.activation(x, act) if self.wants_q8_activation else x
            return prefill.matmul(self, x, out, xf)
        if self.simd is not None:
            xq, xd, xs = act
            simd.kernels.matmul(self.simd, self.raw, xq, xd, xs, out)
            return out
        if self.kernels is not None:
            xq, xd, xs = act
            self.kernels.matmul(self.data, xq, xd, xs, out, F16_TABLE)
            return out
        q = self.qtype
        if q == T.Q8_0:
            xq, xd, _ = act
            matmul_q8_0(self.data, self.idata, xq, xd, out, F16_TABLE)
        elif q == T.Q4_0:
            xq, xd, _ = act
            matmul_q4_0(self.data, xq, xd, out, F16_TABLE)
        elif q == T.F32:
            matmul_f32(self.data, x, out)
        elif q == T.F16 and simd.PATH == "avx2" and self.cols % 8 == 0 and x.flags.c_contiguous:
            simd.kernels.matmul_f16(self.data, x, out)     # F16C conversion in registers
        elif q == T.F16:
            matmul_f16(self.data, x, out, F16_TABLE)
        else:
            matmul_bf16(self.data, x, out)
        return out

    def row(self, r: int, out: np.ndarray) -> np.ndarray:
        """Row r as float32 (the embedding lookup)."""
        if self.kernels is not None:
            self.kernels.row(self.data, r, out, F16_TABLE)
            return out
        q = self.qtype
        if q == T.Q8_0:
            dequantize_row_q8_0(self.data, r, out, F16_TABLE)
        elif q == T.Q4_0:
            dequantize_row_q4_0(self.data, r, out, F16_TABLE)
        elif q == T.F32:
            out[:] = self.data[r]
        elif q == T.F16:
            out[:] = F16_TABLE[self.data[r]]
        else:
            out[:] = (self.data[r].astype(np.uint32) << 16).view(np.float32)
        return out


def matmul3(ws: tuple[Weight, Weight, Weight], x: np.ndarray, act, outs) -> None:
    """outs[i] = x @ ws[i].T for three weights sharing the input (Q, K, V): one parallel region
    when they share a quantized type."""
    a, b, c = ws
    if x.shape[0] < prefill.PREFILL_MIN_TOKENS and None not in (a.simd, b.simd, c.simd):
        xq, xd, xs = act
        simd.kernels.matmul3(a.simd, a.raw, b.simd, b.raw, c.simd, c.raw, xq, xd, xs, *outs)
    elif x.shape[0] >= prefill.PREFILL_MIN_TOKENS:
        for w, out in zip(ws, outs):
            w.matmul(x, out, act if w.wants_q8_activation else None)
    elif a.qtype == b.qtype == c.qtype == T.Q8_0:
        xq, xd, _ = act
        matmul3_q8_0(a.data, a.idata, b.data, b.idata, c.data, c.idata, xq, xd, *outs, F16_TABLE)
    elif a.qtype == b.qtype == c.qtype == T.Q4_0:
        xq, xd, _ = act
        matmul3_q4_0(a.data, b.data, c.data, xq, xd, *outs, F16_TABLE)
    elif a.kernels is not None and a.qtype == b.qtype == c.qtype:
        xq, xd, xs = act
        a.kernels.matmul3(a.data, b.data, c.data, xq, xd, xs, *outs, F16_TABLE)
    else:
        for w, out in zip(ws, outs):
            w.matmul(x, out, act if w.wants_q8_activation else None)


def ffn_gate_up(gate: Weight, up: Weight, x: np.ndarray, act, g: np.ndarray, u: np.ndarray) -> np.ndarray:
    """g = silu(x @ gate.T) * (x @ up.T), in one parallel region when the types allow."""
    if x.shape[0] < prefill.PREFILL_MIN_TOKENS and None not in (gate.simd, up.simd):
        xq, xd, xs = act
        simd.kernels.ffn(gate.simd, gate.raw, up.simd, up.raw, xq, xd, xs, g, u)
    elif x.shape[0] >= prefill.PREFILL_MIN_TOKENS:
        gate.matmul(x, g, act if gate.wants_q8_activation else None)
        up.matmul(x, u, act if up.wants_q8_activation else None)
        vector = simd.PATH == "avx2" and g.flags.c_contiguous and u.flags.c_contiguous
        (simd.kernels.silu_mul if vector else silu_mul)(g, u, g)
    elif gate.qtype == up.qtype == T.Q8_0:
        xq, xd, _ = act
        ffn_q8_0(gate.data, gate.idata, up.data, up.idata, xq, xd, g, u, F16_TABLE)
    elif gate.qtype == up.qtype == T.Q4_0:
        xq, xd, _ = act
        ffn_q4_0(gate.data, up.data, xq, xd, g, u, F16_TABLE)
    elif gate.kernels is not None and gate.qtype == up.qtype:
        xq, xd, xs = act
        gate.kernels.ffn(gate.data, up.data, xq, xd, xs, g, u, F16_TABLE)
    else:
        gate.matmul(x, g, act if gate.wants_q8_activation else None)
        up.matmul(x, u, act if up.wants_q8_activation else None)
        silu_mul(g, u, g)
    return g


def dequantize(w: Weight) -> np.ndarray:
    """The whole matrix as float32 via gguf-py (reference and tests only)."""
    return gguf.quants.dequantize(np.asarray(w.raw), w.qtype).reshape(w.rows, w.cols).astype(np.float32)


__all__ = ["Weight", "QuantizedActivation", "SUPPORTED_TYPES", "dequantize", "matmul3", "ffn_gate_up", "QK"]
