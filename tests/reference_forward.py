"""A plain-numpy Qwen3 forward (float64), written from Hugging Face's Qwen3 definition, over
weights dequantized by gguf-py (file parsed by tests/gguf_spec_reader.py). With `q8_activations`, every input of a quantized matmul is
first quantized/dequantized by gguf-py's Q8_0, as edgeqwen does for every quantized type (ggml
does for Q8_0/Q4_0/Q5_0; it uses Q8_1/Q8_K, which differ slightly, for the others). Independent of edgeqwen's kernels.
RoPE with YaRN scaling when the file has `rope.scaling.type = yarn` (frequencies and attention factor
from the YaRN paper as transformers' `_compute_yarn_parameters` has them, in float64). Checked against
transformers on F32 files in tests/test_model.py."""
import math

import gguf
import numpy as np

from gguf_spec_reader import read_gguf

T = gguf.GGMLQuantizationType


def causal_attention(q, K, V, p0, scale):
    """The definition in float64: out[t, h] = softmax_j<=p0+t(q[t, h] . K[j, h // G] * scale)
    @ V[:, h // G], for q (T, H, D) at positions p0.. and caches K, V (>= p0 + T, Hkv, D)."""
    T, H, D = q.shape
    G = H // K.shape[1]
    out = np.empty((T, H, D))
    for t in range(T):
        n = p0 + t + 1
        for h in range(H):
            s = K[:n, h // G].astype(np.float64) @ q[t, h].astype(np.float64) * scale
            w = np.exp(s - s.max())
            out[t, h] = (w / w.sum()) @ V[:n, h // G].astype(np.float64)
    return out


class NumpyQwen3:
    def __init__(self, path):
        f = read_gguf(path)
        md = {k: v for k, (_, v) in f.kv.items()}
        self.w, self.types = {}, {}
        for t in f.tensors.values():
            shape = tuple(int(s) for s in reversed(t.shape))
            raw = np.frombuffer(f.data(t.name), np.uint8).reshape(shape[0] if len(shape) > 1 else 1, -1)
            self.w[t.name] = gguf.quants.dequantize(raw, t.type).reshape(shape).astype(np.float64)
            self.types[t.name] = t.type
        a = "qwen3."
        self.n_layer = md[a + "block_count"]
        self.n_head, self.n_kv = md[a + "attention.head_count"], md[a + "attention.head_count_kv"]
        self.hd = md[a + "attention.key_length"]
        self.eps = md[a + "attention.layer_norm_rms_epsilon"]
        self.base = md[a + "rope.freq_base"]
        self.inv_freq, self.mscale = yarn_inv_freq(self.hd, self.base, md, a)

    def mm(self, x, name, q8):
        w = self.w[name]
        if q8 and self.types[name] not in (T.F32, T.F16, T.BF16):
            x = gguf.quants.dequantize(gguf.quants.quantize(x.astype(np.float32), T.Q8_0), T.Q8_0).reshape(x.shape)
        return x @ w.T

    def norm(self, x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + self.eps) * w

    def rope(self, x, pos):      # x: (T, H, hd)
        half = self.hd // 2
        ang = pos[:, None] * self.inv_freq[None]
        c, s = np.cos(ang)[:, None, :] * self.mscale, np.sin(ang)[:, None, :] * self.mscale
        a, b = x[..., :half], x[..., half:]
        return np.concatenate([a * c - b * s, b * c + a * s], -1)

    def logits(self, ids, q8_activations=False, p0=0):
        """(len(ids), vocab) float64 logits of `ids` at positions p0.. (p0 > 0: the first p0 tokens
        are `ids[:p0]`'s context; only the last len(ids) - p0 rows are returned)."""
        q8 = q8_activations
        emb = self.w["token_embd.weight"]
        x = emb[np.asarray(ids)]
        n = len(ids)
        pos = np.arange(n, dtype=np.float64)
        g = self.n_head // self.n_kv
        for i in range(self.n_layer):
            p = f"blk.{i}."
            h = self.norm(x, self.w[p + "attn_norm.weight"])
            q = self.mm(h, p + "attn_q.weight", q8).reshape(n, self.n_head, self.hd)
            k = self.mm(h, p + "attn_k.weight", q8).reshape(n, self.n_kv, self.hd)
            v = self.mm(h, p + "attn_v.weight", q8).reshape(n, self.n_kv, self.hd)
            q = self.rope(self.norm(q, self.w[p + "attn_q_norm.weight"]), pos)
            k = self.rope(self.norm(k, self.w[p + "attn_k_norm.weight"]), pos)
            k, v = np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)
            sc = np.einsum("thd,shd->hts", q, k) / np.sqrt(self.hd)
            sc = sc + np.triu(np.full((n, n), -np.inf), 1)
            pr = np.exp(sc - sc.max(-1, keepdims=True))
            pr /= pr.sum(-1, keepdims=True)
            att = np.einsum("hts,shd->thd", pr, v).reshape(n, -1)
            x = x + self.mm(att, p + "attn_output.weight", q8)
            h = self.norm(x, self.w[p + "ffn_norm.weight"])
            gt, up = self.mm(h, p + "ffn_gate.weight", q8), self.mm(h, p + "ffn_up.weight", q8)
            x = x + self.mm(gt / (1 + np.exp(-gt)) * up, p + "ffn_down.weight", q8)
        x = self.norm(x[p0:], self.w["output_norm.weight"])
        out = "output.weight" if "output.weight" in self.w else "token_embd.weight"
        return self.mm(x, out, q8)


def yarn_inv_freq(dim, base, md, arch="qwen3."):
    """(inv_freq (dim/2,) float64, attention factor): plain RoPE, or YaRN (arXiv 2309.00071 as
    transformers implements it: ramp between beta_fast and beta_slow rotations over the original
    context, interpolated frequencies = extrapolated / factor, attention factor 0.1 ln(factor) + 1)."""
    inv = 1.0 / base ** (np.arange(0, dim, 2) / dim)
    if md.get(arch + "rope.scaling.type") != "yarn":
        return inv, 1.0
    factor = md[arch + "rope.scaling.factor"]
    orig = md[arch + "rope.scaling.original_context_length"]
    beta_fast = md.get(arch + "rope.scaling.yarn_beta_fast") or 32.0
    beta_slow = md.get(arch + "rope.scaling.yarn_beta_slow") or 1.0

    def dim_of(rotations):         # the dimension whose wavelength fits `rotations` times in orig
        return dim * math.log(orig / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = max(math.floor(dim_of(beta_fast)), 0), min(math.ceil(dim_of(beta_slow)), dim - 1)
    ramp = np.clip((np.arange(dim // 2) - low) / max(high - low, 0.001), 0, 1)   # 0 = extrapolate
    inv = inv * (1 - ramp) + inv / factor * ramp
    attn = md.get(arch + "rope.scaling.yarn_attn_factor") or (0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0)
    return inv, attn
