"""Hugging Face Qwen3 (and Qwen3 MoE) tensor names -> GGUF names, and the shape each must have."""
from __future__ import annotations

import re

from edgeqwen import constants as C

_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")

# HF suffix inside a decoder layer -> GGUF part name
_LAYER_PARTS = {
    "input_layernorm.weight": "attn_norm",
    "self_attn.q_proj.weight": "attn_q",
    "self_attn.k_proj.weight": "attn_k",
    "self_attn.v_proj.weight": "attn_v",
    "self_attn.q_norm.weight": "attn_q_norm",
    "self_attn.k_norm.weight": "attn_k_norm",
    "self_attn.o_proj.weight": "attn_output",
    "post_attention_layernorm.weight": "ffn_norm",
    "mlp.gate_proj.weight": "ffn_gate",
    "mlp.up_proj.weight": "ffn_up",
    "mlp.down_proj.weight": "ffn_down",
    "mlp.gate.weight": "ffn_gate_inp",              # Qwen3MoeForCausalLM: the router
}
# Qwen3MoeForCausalLM's experts, one tensor per expert in the checkpoint: stacked into one 3-D
# GGUF tensor per layer and kind, expert e at index e (as llama.cpp's converter does).
_EXPERT = re.compile(r"^model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate|up|down)_proj\.weight$")
_GLOBAL = {
    "model.embed_tokens.weight": C.TOKEN_EMBD,
    "model.norm.weight": C.OUTPUT_NORM,
    "lm_head.weight": C.OUTPUT,
}
# Tensors some checkpoints carry that the model does not use.
IGNORED = re.compile(r"(rotary_emb\.inv_freq|\.bias$)")


def gguf_name(hf_name: str) -> str | None:
    """The GGUF name of a HF tensor, or None when it is not a Qwen3 weight."""
    if hf_name in _GLOBAL:
        return _GLOBAL[hf_name]
    m = _LAYER.match(hf_name)
    if m and m.group(2) in _LAYER_PARTS:
        return C.block_tensor(int(m.group(1)), _LAYER_PARTS[m.group(2)])
    return None


def expert_of(hf_name: str) -> tuple[str, int] | None:
    """(GGUF name of the stacked tensor, expert index) of a per-expert HF tensor, else None."""
    m = _EXPERT.match(hf_name)
    if m is None:
        return None
    return C.block_tensor(int(m.group(1)), f"ffn_{m.group(3)}_exps"), int(m.group(2))


def expected_shapes(hp: dict, tied: bool) -> dict[str, tuple[int, ...]]:
    """GGUF tensor name -> shape in numpy (HF) order, e.g. q_proj is (n_head*head_dim, hidden)."""
    d, ff, v = hp["hidden_size"], hp["intermediate_size"], hp["vocab_size"]
    hd = hp["head_dim"]
    q, kv = hp["num_attention_heads"] * hd, hp["num_key_value_heads"] * hd
    shapes = {C.TOKEN_EMBD: (v, d), C.OUTPUT_NORM: (d,)}
    if not tied:
        shapes[C.OUTPUT] = (v, d)
    per_layer = {
        "attn_norm": (d,), "attn_q": (q, d), "attn_k": (kv, d), "attn_v": (kv, d),
        "attn_q_norm": (hd,), "attn_k_norm": (hd,), "attn_output": (d, q),
        "ffn_norm": (d,), "ffn_gate": (ff, d), "ffn_up": (ff, d), "ffn_down": (d, ff),
    }
    if hp.get("num_experts"):        # Qwen3 MoE: router + stacked experts instead of the dense FFN
        E, f = hp["num_experts"], hp["moe_intermediate_size"]
        for part in ("ffn_gate", "ffn_up", "ffn_down"):
            del per_layer[part]
        per_layer.update({"ffn_gate_inp": (E, d), "ffn_gate_exps": (E, f, d), "ffn_up_exps": (E, f, d),
                          "ffn_down_exps": (E, d, f)})
    for i in range(hp["num_hidden_layers"]):
        for part, shape in per_layer.items():
            shapes[C.block_tensor(i, part)] = shape
    return shapes
