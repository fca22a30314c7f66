"""The sparse FFN of a qwen3moe layer (Qwen3-30B-A3B, 235B-A22B), as transformers'
`Qwen3MoeSparseMoeBlock` and llama.cpp's `build_moe_ffn` compute it:

    p       = softmax(router(x))                      router: ffn_gate_inp, (n_expert, d)
    top     = the expert_used_count largest p         (ties: the lower expert id)
    w       = p[top] / sum(p[top])                    (only when expert_weights_norm / norm_topk_prob)
    out     = sum over e in top of w_e * down_e( silu(gate_e(x)) * up_e(x) )

Only the selected experts are read: each expert is a zero-copy view of its slice of the mapped
3-D tensors (gguf_model.ExpertWeights), multiplied with the same kernels as a dense layer's
matrices. The tokens of a step (prompt, batch of sequences) are grouped by expert, so each
selected expert's weights are read once per step for all the tokens routed to it.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from .quants import QuantizedActivation, ffn_gate_up


@njit(cache=True)
def route(logits, k, norm, idx, wts):
    """logits (T, E) f32 -> idx (T, k) int64: the k most probable experts of each token, most
    probable first; wts (T, k) f32: their softmax probabilities, divided by their sum when norm."""
    T, E = logits.shape
    p = np.empty(E, np.float32)
    taken = np.zeros(E, np.bool_)
    for t in range(T):
        m = logits[t, 0]
        for e in range(1, E):
            if logits[t, e] > m:
                m = logits[t, e]
        s = np.float32(0.0)
        for e in range(E):
            p[e] = np.exp(logits[t, e] - m)
            s += p[e]
        for e in range(E):
            p[e] = p[e] / s
            taken[e] = False
        tot = np.float32(0.0)
        for j in range(k):
            best = -1
            for e in range(E):
                if not taken[e] and (best < 0 or p[e] > p[best]):
                    best = e
            taken[best] = True
            idx[t, j] = best
            wts[t, j] = p[best]
            tot += p[best]
        if norm:
            for j in range(k):
                wts[t, j] = wts[t, j] / tot


class SparseFFN:
    """The scratch of one model's sparse FFN (activations of up to max_batch tokens)."""

    def __init__(self, cfg, max_batch: int):
        self.cfg = cfg
        self.k, self.norm = cfg.n_expert_used, cfg.expert_weights_norm
        self.act_d = QuantizedActivation(max_batch, cfg.n_embd)       # the layer input, all tokens
        self.act_g = QuantizedActivation(max_batch, cfg.n_embd)       # the rows routed to one expert
        self.act_f = QuantizedActivation(max_batch, cfg.n_ff_exp)     # input of an expert's down
        self.g = np.empty((max_batch, cfg.n_ff_exp), np.float32)
        self.u = np.empty((max_batch, cfg.n_ff_exp), np.float32)
        self.y = np.empty((max_batch, cfg.n_embd), np.float32)

    def routing(self, moe, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(idx, wts), each (T, k): the experts each token of h (T, d) goes to, and their weights."""
        T = h.shape[0]
        logits = np.empty((T, moe.router.rows), np.float32)
        moe.router.matmul(h, logits, self.act_d.quantize(h) if moe.router.wants_q8_activation else None)
        if not np.isfinite(logits).all():
            moe.router.refuse_non_finite()
        idx, wts = np.empty((T, self.k), np.int64), np.empty((T, self.k), np.float32)
        route(logits, self.k, self.norm, idx, wts)
        return idx, wts

    def __call__(self, moe, h: np.ndarray) -> np.ndarray:
        """out (T, d) = the sparse FFN of h (T, d) (the normed hidden states), for layer `moe`
        (gguf_model.ExpertWeights)."""
        T = h.shape[0]
        idx, wts = self.routing(moe, h)
        out = np.zeros_like(h)
        act = self.act_d.quantize(h) if moe.gate[0].wants_q8_activation or moe.up[0].wants_q8_activation else None
        flat = idx.ravel()
        order = np.argsort(flat, kind="stable")                 # (token, slot) pairs grouped by expert
        experts, starts = np.unique(flat[order], return_index=True)
        ends = np.append(starts[1:], len(order))
        for e, s, t in zip(experts.tolist(), starts.tolist(), ends.tolist()):
            pairs = order[s:t]
            rows = pairs // self.k                              # the tokens routed to expert e
            n = len(rows)
            if T == 1:
                hx, ax = h, act
            else:
                hx = h[rows]
                ax = None if act is None else self.act_g.quantize(hx)
            g, u, y = self.g[:n], self.u[:n], self.y[:n]
            ffn_gate_up(moe.gate[e], moe.up[e], hx, ax, g, u)
            down = moe.down[e]
            down.matmul(g, y, self.act_f.quantize(g) if down.wants_q8_activation else None)
            w = wts.ravel()[pairs]
            if T == 1:
                out[0] += w[0] * y[0]
            else:
                out[rows] += w[:, None] * y
        return out


def active_share(mf) -> dict:
    """What a token of a qwen3moe file (gguf_model.ModelFile) uses: parameters and weight bytes of
    the whole file and of the active set (every tensor but the experts, plus expert_used_count of
    expert_count experts; the token embedding counts as one row when the LM head is separate)."""
    cfg, share = mf.config, mf.config.n_expert_used / mf.config.n_expert
    out = {"params": 0, "active_params": 0, "bytes": 0, "active_bytes": 0}
    for name, t in mf.gguf.tensors.items():
        n = math.prod(t.shape)
        part = share if "_exps." in name else (1 / t.shape[0] if name == "token_embd.weight" and not mf.tied else 1)
        out["params"] += n
        out["bytes"] += t.nbytes
        out["active_params"] += int(n * (share if "_exps." in name else 1))
        out["active_bytes"] += int(t.nbytes * part)
    return out


def describe(mf) -> list[tuple[str, str]]:
    """`edgeqwen info` rows of a qwen3moe file."""
    c, a = mf.config, active_share(mf)
    return [("experts", f"{c.n_expert} ({c.n_expert_used} per token{', weights renormalised' if c.expert_weights_norm else ''}), "
                        f"expert ffn {c.n_ff_exp}"),
            ("active parameters", f"{a['active_params'] / 1e9:.3f} B of {a['params'] / 1e9:.3f} B per token"),
            ("weights read", f"{a['active_bytes'] / 2**20:.1f} MiB per token (active set) of "
                             f"{a['bytes'] / 2**20:.1f} MiB mapped (whole file)")]


__all__ = ["SparseFFN", "route", "active_share", "describe"]
