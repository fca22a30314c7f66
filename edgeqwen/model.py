"""The Qwen3 forward pass over a batch of tokens and a KV cache. Orchestration only: the
arithmetic is in `kernels.py` and the weight formats' kernels in `quants/`.

One decoder layer (pre-norm):
    h   = x + o( attention( rope(q_norm(q)), rope(k_norm(k)), v ) )   q, k, v = projections of rmsnorm(x)
    out = h + down( silu(gate(rmsnorm(h))) * up(rmsnorm(h)) )
"""
from __future__ import annotations

import numba
import numpy as np

from .gguf_model import ModelFile
from .kernels import qk_norm_rope, rmsnorm, rope_tables, silu_mul
from . import simd
from .kernels import PREFILL_MIN_TOKENS
from .attention import attend
from .kv_cache import KVCache, check_type
from .moe import SparseFFN
from .quants import QuantizedActivation, Weight, ffn_gate_up, matmul3


class Qwen3Model:
    def __init__(self, mf: ModelFile, n_ctx: int, max_batch: int = 256, type_k: str = "f32", type_v: str = "f32"):
        self.mf, self.cfg = mf, mf.config
        c = self.cfg
        self.n_ctx, self.max_batch = n_ctx, max_batch
        self.type_k, self.type_v = check_type("cache type of K", type_k), check_type("cache type of V", type_v)
        self.cos, self.sin = rope_tables(n_ctx, c.head_dim, c.rope_base, c.rope_scaling)  # (n_ctx, hd/2)
        self.scale = np.float32(1.0 / np.sqrt(c.head_dim))
        self.act_d = QuantizedActivation(max_batch, c.n_embd)                       # for inputs of width d
        self.act_q = QuantizedActivation(max_batch, c.n_head * c.head_dim)          # input of o
        self.act_f = QuantizedActivation(max_batch, c.n_ff)                         # input of down
        self.moe = SparseFFN(c, max_batch) if c.n_expert else None          # qwen3moe's sparse FFN
        self.fused = self._fused_step_args()

    def _fused_step_args(self):
        """The arguments of the one-region decoder stack (simd.kernels.layers) when this machine's
        SIMD path has kernels for every matrix of every layer, else None (per-op path)."""
        c, layers = self.cfg, self.mf.layers
        if c.n_expert:                            # the one-region step is dense-only
            return None
        mats = [[L.q, L.k, L.v, L.o, L.gate, L.up, L.down] for L in layers]
        if (getattr(simd.kernels, "layers", None) is None or c.head_dim % 8
                or any(w.simd is None or not w.raw.flags.c_contiguous for ws in mats for w in ws)):
            return None
        addr = lambda a: a.__array_interface__["data"][0]
        wmat = np.array([(addr(w.raw), w.rows, w.raw.shape[1]) for row in mats for w in row], np.int64)
        stack = lambda name: np.ascontiguousarray(np.stack([getattr(L, name) for L in layers]), np.float32)
        return dict(codes=np.array([[w.simd for w in row] for row in mats], np.int64), wmat=wmat,
                    attn_norm=stack("attn_norm"), ffn_norm=stack("ffn_norm"), q_norm=stack("q_norm"),
                    k_norm=stack("k_norm"))

    def _fused_layers(self, x: np.ndarray, segs) -> bool:
        """All layers of a short step in one parallel region (x in place); segs as in
        `_forward_segments`. False when the barrier timed out (a thread never came: the caller
        redoes the step)."""
        c, f = self.cfg, self.fused
        want = (c.n_layer, None, c.n_head_kv, c.head_dim)
        for _, _, cache in segs:                  # the step reads the caches by address: float32, or
            for a in (cache.k, cache.v):          # float16 (as uint16) on paths that take it
                if not ((a.dtype == np.float32 or (a.dtype in (np.float16, np.uint16) and getattr(simd.kernels, "F16_CACHE", False)))
                        and a.dtype == cache.k.dtype and a.flags.c_contiguous and a.ndim == 4
                        and a.shape[0] == c.n_layer and a.shape[1] == cache.n_ctx and a.shape[2:] == want[2:]):
                    return False
        seg = np.array([(s, e, cache.n) for s, e, cache in segs], np.int64)
        kv = np.array([(cache.k.__array_interface__["data"][0], cache.v.__array_interface__["data"][0], cache.n_ctx,
                        cache.k.itemsize) for _, _, cache in segs], np.int64)
        sync, status = np.array([0, 0, 0, simd.kernels.WAIT_LIMIT], np.int64), np.zeros(2, np.int64)
        simd.kernels.layers(x, f["codes"], f["wmat"], f["attn_norm"], f["ffn_norm"], f["q_norm"], f["k_norm"],
                            np.float32(c.rms_eps), self.cos, self.sin, seg, kv, self.scale,
                            c.n_head, c.n_head_kv, numba.get_num_threads(), sync, status)
        if sync[2]:
            self.fused = None                       # this threading layer does not run the threads together
            return False
        for flag, name in ((status[0], "o"), (status[1], "down")):
            if flag and hasattr(getattr(self.mf.layers[flag - 1], name), "refuse_non_finite"):
                getattr(self.mf.layers[flag - 1], name).refuse_non_finite()
        return True

    def new_cache(self, n_ctx: int | None = None) -> KVCache:
        """A cache of this model's types, for n_ctx positions (default: the model's context)."""
        return KVCache(self.cfg, self.n_ctx if n_ctx is None else n_ctx, self.type_k, self.type_v)

    def _mm(self, w: Weight, x: np.ndarray, act: QuantizedActivation, pre=None) -> np.ndarray:
        out = np.empty((x.shape[0], w.rows), np.float32)
        if w.wants_q8_activation and pre is None:
            pre = act.quantize(x)
        return w.matmul(x, out, pre)

    def embed(self, tokens: np.ndarray) -> np.ndarray:
        x = np.empty((len(tokens), self.cfg.n_embd), np.float32)   # (T, d)
        for i, t in enumerate(tokens):
            self.mf.token_embd.row(int(t), x[i])
        return x

    def forward(self, tokens, cache: KVCache, logits: str = "last") -> np.ndarray | None:
        """Run `tokens` at positions cache.n.. and append them to the cache.
        logits: "last" -> (vocab,) for the last token, "all" -> (T, vocab), "none" -> None."""
        tokens = np.asarray(tokens, dtype=np.int64)
        outs = []
        for s in range(0, len(tokens), self.max_batch):
            chunk = tokens[s:s + self.max_batch]
            last = s + self.max_batch >= len(tokens)
            want = logits if (logits == "all" or last) else "none"
            outs.append(self._forward_batch(chunk, cache, want))
        if logits == "all":
            return np.concatenate(outs, axis=0)
        return outs[-1]

    def _forward_batch(self, tokens: np.ndarray, cache: KVCache, logits: str):
        out = self._forward_segments(tokens, [(0, len(tokens), cache)], logits)
        return out if logits != "last" else out[0]

    def forward_many(self, seqs: list[tuple[list[int], KVCache]]) -> np.ndarray:
        """One step for several sequences at once: seqs[i] = (tokens, cache) runs those tokens
        at positions cache.n.. of its own cache. Each weight is read once for all rows; attention
        runs per sequence. Returns the logits of each sequence's last token, (len(seqs), vocab).
        Rows are computed as in `forward` on one sequence alone (same kernels, same order), as
        long as the total stays under the batched-prefill threshold (`quants.prefill`)."""
        tokens = np.asarray([t for ids, _ in seqs for t in ids], dtype=np.int64)
        if len(tokens) > self.max_batch:
            raise ValueError(f"{len(tokens)} tokens in one step > max batch {self.max_batch}")
        segs, s = [], 0
        for ids, cache in seqs:
            segs.append((s, s + len(ids), cache))
            s += len(ids)
        return self._forward_segments(tokens, segs, "last")

    def _forward_segments(self, tokens: np.ndarray, segs, logits: str):
        """tokens (T,) = the concatenated segments; segs = [(start, end, cache)]. logits: "last"
        -> (n_segs, vocab) at each segment's last token, "all" -> (T, vocab), "none" -> None."""
        c, T = self.cfg, len(tokens)
        for s, e, cache in segs:
            if cache.n + (e - s) > cache.n_ctx:
                raise ValueError(f"KV cache full: {cache.n} + {e - s} tokens > context {cache.n_ctx}")
        H, Hkv, hd = c.n_head, c.n_head_kv, c.head_dim
        x = self.embed(tokens)                                            # (T, d)
        if self.fused is not None and T < PREFILL_MIN_TOKENS:
            if self._fused_layers(x, segs):
                return self._finish(x, segs, logits)
            x = self.embed(tokens)                                        # redo it op by op
        h = np.empty_like(x)
        attn = np.empty((T, H, hd), np.float32)
        q = np.empty((T, H, hd), np.float32)
        k = np.empty((T, Hkv, hd), np.float32)
        v = np.empty((T, Hkv, hd), np.float32)
        g = np.empty((T, c.n_ff), np.float32)
        u = np.empty((T, c.n_ff), np.float32)
        for li, L in enumerate(self.mf.layers):
            rmsnorm(x, L.attn_norm, c.rms_eps, h)
            act = self.act_d.quantize(h)
            matmul3((L.q, L.k, L.v), h, act, (q.reshape(T, -1), k.reshape(T, -1), v.reshape(T, -1)))
            for s, e, cache in segs:                                      # per sequence: own positions
                p0 = cache.n
                qk_norm_rope(q[s:e], L.q_norm, c.rms_eps, self.cos, self.sin, p0)
                qk_norm_rope(k[s:e], L.k_norm, c.rms_eps, self.cos, self.sin, p0)
                cache.store(li, p0, k[s:e], v[s:e])                       # (T, Hkv, hd)
                attend(q[s:e], cache, li, p0, self.scale, attn[s:e])
            x += self._mm(L.o, attn.reshape(T, H * hd), self.act_q)
            rmsnorm(x, L.ffn_norm, c.rms_eps, h)
            if L.moe is not None:
                x += self.moe(L.moe, h)
                continue
            ffn_gate_up(L.gate, L.up, h, self.act_d.quantize(h), g, u)
            x += self._mm(L.down, g, self.act_f)
        return self._finish(x, segs, logits)

    def _finish(self, x, segs, logits: str):
        """Advance the caches past the step's tokens; the logits asked for."""
        c = self.cfg
        for s, e, cache in segs:
            cache.n += e - s
        if logits == "none":
            return None
        rows = x if logits == "all" else x[[e - 1 for _, e, _ in segs]]
        hn = np.empty_like(rows)
        rmsnorm(rows, self.mf.output_norm, c.rms_eps, hn)
        return self._mm(self.mf.output, hn, self.act_d)                  # (rows, vocab)
