"""Each weight kernel against gguf-py: numpy dequantize of the weight, times the activation
quantized by gguf-py's Q8_0 (for quantized weights) or as is (float weights)."""
import gguf
import numpy as np
import pytest

from edgeqwen.quants import QuantizedActivation, Weight
from edgeqwen import simd
from edgeqwen.quants.common import quantize_act_q8_0

T = gguf.GGMLQuantizationType


def encode(w: np.ndarray, qtype) -> np.ndarray:
    if qtype == T.F32:
        return w.astype(np.float32).view(np.uint8)
    if qtype == T.F16:
        return w.astype(np.float16).view(np.uint8)
    return gguf.quants.quantize(w, qtype)


def reference(raw, qtype, shape, x):
    wd = gguf.quants.dequantize(raw, qtype).reshape(shape).astype(np.float64)
    if qtype in (T.Q8_0, T.Q4_0):
        xq = gguf.quants.quantize(x, T.Q8_0)
        x = gguf.quants.dequantize(xq, T.Q8_0).reshape(x.shape)
    return x.astype(np.float64) @ wd.T


CASES = [(np.random.default_rng(s), n, k, t) for s, (n, k, t) in enumerate([(64, 32, 1), (96, 256, 3), (200, 1024, 1), (33, 512, 17)])]


@pytest.mark.parametrize("qtype", [T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_matmul_matches_gguf_reference(qtype, case):
    rng, n, k, t = CASES[case]
    w = rng.standard_normal((n, k)).astype(np.float32)
    w[0] = 0.0                                  # an all-zero row
    w[1, :32] = 1e4                             # a huge block next to normal ones
    x = rng.standard_normal((t, k)).astype(np.float32)
    x[0, :32] = 0.0
    raw = encode(w, qtype).reshape(n, -1)
    weight = Weight("w", qtype, (n, k), raw)
    act = QuantizedActivation(t, k).quantize(x) if weight.wants_q8_activation else None
    out = weight.matmul(x, np.empty((t, n), np.float32), act)
    ref = reference(raw, qtype, (n, k), x)
    scale = np.abs(ref).max()
    # measured 1.5e-7 (F32) .. 4.5e-7 (Q4_0): float32 summation against float64
    assert np.abs(out - ref).max() <= 3e-6 * scale, np.abs(out - ref).max() / scale


@pytest.mark.parametrize("qtype", [T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0])
def test_row_lookup_matches_dequantize(qtype):
    rng = np.random.default_rng(7)
    w = rng.standard_normal((10, 128)).astype(np.float32)
    raw = encode(w, qtype).reshape(10, -1)
    weight = Weight("w", qtype, (10, 128), raw)
    ref = gguf.quants.dequantize(raw, qtype).reshape(10, 128)
    for r in (0, 3, 9):
        assert np.array_equal(weight.row(r, np.empty(128, np.float32)), ref[r])


ACT_QUANTIZERS = {"scalar": quantize_act_q8_0}
if simd.PATH == "avx2":     # the vector code QuantizedActivation uses there (serial: decode, parallel: prompts)
    ACT_QUANTIZERS.update({"avx2": simd.kernels.quantize_act, "avx2-parallel": simd.kernels.quantize_act_parallel})


@pytest.mark.parametrize("impl", sorted(ACT_QUANTIZERS))
def test_activation_quantization_bit_exact_with_gguf(impl):
    rng = np.random.default_rng(3)
    for scale in (1e-7, 1e-3, 1.0, 1e4):
        x = (rng.standard_normal((5, 256)) * scale).astype(np.float32)
        x[1, 32:64] = 0.0
        x[2, 64:96] *= np.float32(1e-30)            # scale in float16's subnormal range / flushed to 0
        x[3, 96] = -x[3, 96:128].__abs__().max() * 3  # a negative extreme sets the block's scale
        xq = np.zeros((5, 256), np.int8)
        xd = np.zeros((5, 8), np.float32)
        xs = np.zeros((5, 8), np.int32)
        ACT_QUANTIZERS[impl](x, xq, xd, xs)
        ref = gguf.quants.quantize(x, T.Q8_0).reshape(5, 8, 34)
        assert np.array_equal(ref[:, :, 2:].copy().view(np.int8).reshape(5, 256), xq)
        assert np.array_equal(ref[:, :, :2].copy().view(np.float16)[..., 0].astype(np.float32), xd)
        assert np.array_equal(xq.reshape(5, 8, 32).astype(np.int32).sum(-1), xs)
