"""GGUF names for the Qwen3 architecture: the one place these strings live.

Key strings come from gguf-py (`gguf.Keys`) formatted for the `qwen3` architecture; tensor names
follow llama.cpp's `qwen3` conventions. A weight of `nn.Linear(in, out)` has GGUF shape [in, out].
"""
from __future__ import annotations

import gguf

ARCH = "qwen3"
K = gguf.Keys


def arch_key(template: str) -> str:
    return template.format(arch=ARCH)


KEY_ARCH = K.General.ARCHITECTURE
KEY_FILE_TYPE = K.General.FILE_TYPE
KEY_NAME = K.General.NAME
KEY_BLOCK_COUNT = arch_key(K.LLM.BLOCK_COUNT)
KEY_CONTEXT_LENGTH = arch_key(K.LLM.CONTEXT_LENGTH)
KEY_EMBEDDING_LENGTH = arch_key(K.LLM.EMBEDDING_LENGTH)
KEY_FEED_FORWARD_LENGTH = arch_key(K.LLM.FEED_FORWARD_LENGTH)
KEY_HEAD_COUNT = arch_key(K.Attention.HEAD_COUNT)
KEY_HEAD_COUNT_KV = arch_key(K.Attention.HEAD_COUNT_KV)
KEY_KEY_LENGTH = arch_key(K.Attention.KEY_LENGTH)
KEY_VALUE_LENGTH = arch_key(K.Attention.VALUE_LENGTH)
KEY_RMS_EPS = arch_key(K.Attention.LAYERNORM_RMS_EPS)
KEY_ROPE_FREQ_BASE = arch_key(K.Rope.FREQ_BASE)
KEY_ROPE_SCALING_TYPE = arch_key(K.Rope.SCALING_TYPE)
KEY_ROPE_SCALING_FACTOR = arch_key(K.Rope.SCALING_FACTOR)
KEY_ROPE_SCALING_ORIG_CTX = arch_key(K.Rope.SCALING_ORIG_CTX_LEN)
KEY_ROPE_YARN_EXT_FACTOR = arch_key(K.Rope.SCALING_YARN_EXT_FACTOR)
KEY_ROPE_YARN_ATTN_FACTOR = arch_key(K.Rope.SCALING_YARN_ATTN_FACTOR)
KEY_ROPE_YARN_BETA_FAST = arch_key(K.Rope.SCALING_YARN_BETA_FAST)
KEY_ROPE_YARN_BETA_SLOW = arch_key(K.Rope.SCALING_YARN_BETA_SLOW)

KEY_TOK_MODEL = K.Tokenizer.MODEL
KEY_TOK_PRE = K.Tokenizer.PRE
KEY_TOK_LIST = K.Tokenizer.LIST
KEY_TOK_TYPE = K.Tokenizer.TOKEN_TYPE
KEY_TOK_MERGES = K.Tokenizer.MERGES
KEY_TOK_BOS = K.Tokenizer.BOS_ID
KEY_TOK_EOS = K.Tokenizer.EOS_ID
KEY_TOK_EOT = K.Tokenizer.EOT_ID
KEY_TOK_EOM = K.Tokenizer.EOM_ID
KEY_TOK_PAD = K.Tokenizer.PAD_ID
KEY_TOK_ADD_BOS = K.Tokenizer.ADD_BOS
KEY_CHAT_TEMPLATE = K.Tokenizer.CHAT_TEMPLATE

# Tensor names.
TOKEN_EMBD = "token_embd.weight"
OUTPUT_NORM = "output_norm.weight"
OUTPUT = "output.weight"
BLOCK_TENSORS = (
    "attn_norm", "attn_q", "attn_k", "attn_v", "attn_q_norm", "attn_k_norm",
    "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down",
)


def block_tensor(layer: int, part: str) -> str:
    return f"blk.{layer}.{part}.weight"


def layer_of(name: str) -> int | None:
    """The layer N of a block tensor name `blk.N.*`, else None."""
    head, _, rest = name.partition(".")
    n = rest.partition(".")[0]
    return int(n) if head == "blk" and n.isdigit() and n.isascii() else None
