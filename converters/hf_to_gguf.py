"""Hugging Face Qwen3 checkpoint (config.json + safetensors + tokenizer) -> GGUF.

Writes llama.cpp's `qwen3` conventions with gguf-py: `GGUFWriter` for the container,
`gguf.quants` for Q8_0/Q4_0 blocks (bit-exact with ggml), `gguf.SpecialVocab` and
`gguf.Metadata` for the tokenizer specials, chat template and general.* keys, exactly as
llama.cpp's own `convert_hf_to_gguf.py` does. Tensors stream row-chunk by row-chunk, so peak
memory is about one chunk, and the output appears only when complete (temp file + rename).

Per-tensor type policy (see README, "Converter"):
  * 1-D tensors (all norms, including the per-head QK norms) stay F32.
  * f32/f16/bf16: every matrix in that type.
  * q8_0: every matrix in Q8_0 (as llama.cpp's converter does for --outtype q8_0).
  * q4_0: every matrix in Q4_0 except the output projection (`output.weight`, or
    `token_embd.weight` when the embeddings are tied, since it then is the output projection),
    which is Q8_0. llama.cpp's quantizer keeps that matrix at higher precision too (Q6_K);
    we use the best type our Q4_0 family has. Measured effect: README.
  * a matrix whose row length is not a multiple of the block size falls back to F16.
  * q4_k_m, q5_k_m, q6_k: llama.cpp's mixes for LLAMA_FTYPE_MOSTLY_Q4_K_M / Q5_K_M / Q6_K, i.e.
    what `llama-quantize` (src/llama-quant.cpp: `llama_tensor_get_type`, `..._impl`,
    `tensor_type_fallback`; no imatrix, no overrides) picks for a Qwen3 model (one attn_v and
    one ffn_down per layer, no experts, not Falcon, not 70B):
      - base type Q4_K / Q5_K / Q6_K for attn_q, attn_k, attn_output, ffn_gate, ffn_up, and for
        token_embd when the embeddings are untied (llama.cpp changes these only for other mixes);
      - the output projection (`output.weight`, or `token_embd.weight` when tied: llama.cpp
        treats the token embeddings as the output when the file has no output.weight) is Q6_K,
        or Q8_0 when its row length is not a multiple of 256;
      - attn_v and ffn_down of layer i: Q6_K in q4_k_m and q5_k_m when use_more_bits(i, n) with
        n the layer count, i.e. i < n/8 or i >= 7n/8 or (i - n/8) % 3 == 2 (C integer division;
        llama.cpp counts these tensors in its layer-sorted order, which is the layer index);
      - fallback when the row length is not a multiple of 256: Q4_K -> Q5_0, Q5_K -> Q5_1,
        Q6_K -> Q8_0, and F16 when it is not a multiple of 32 either (e.g. a hidden size of 64
        gives Q5_0/Q5_1/Q8_0 matrices);
      - norms stay F32 (llama.cpp quantizes only 2-D tensors).
    Q4_K/Q5_K/Q6_K blocks come from `converters/kquants.py`, bit-exact with ggml's reference
    quantizers (which llama.cpp uses when no imatrix is given); Q5_0/Q5_1/Q8_0 from gguf-py.
    With the same float32 input, the tensors are byte-identical to llama.cpp's (tested).

Qwen3MoeForCausalLM (Qwen3-30B-A3B, 235B-A22B) -> llama.cpp's `qwen3moe`: the per-expert
`mlp.experts.E.{gate,up,down}_proj` tensors of a layer are stacked into one 3-D tensor each
(`ffn_{gate,up,down}_exps`, expert E at index E), streamed expert by expert; the router
(`mlp.gate` -> `ffn_gate_inp`) stays F32 in every type (llama.cpp's converter and quantizer never
quantize it). The K mixes treat the expert tensors as llama-quantize does: `ffn_down_exps` as
ffn_down (Q6_K in the more-bits layers), gate/up as ffn_gate/ffn_up; with exactly 8 experts
llama.cpp also raises attn_v and attn_k to Q8_0 and, in Q4_K_M, attn_output to Q5_K.
`norm_topk_prob: false` (which llama.cpp's converter drops) is written as
`qwen3moe.expert_weights_norm = false`.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np

from edgeqwen import constants as C
from edgeqwen.errors import EdgeQwenError

from . import kquants
from .safetensors_reader import TensorRef, open_checkpoint
from .tensor_map import IGNORED, expected_shapes, expert_of, gguf_name

T = gguf.GGMLQuantizationType
OUT_TYPES = {
    "f32": (T.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (T.F16, gguf.LlamaFileType.MOSTLY_F16),
    "bf16": (T.BF16, gguf.LlamaFileType.MOSTLY_BF16),
    "q8_0": (T.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
    "q4_0": (T.Q4_0, gguf.LlamaFileType.MOSTLY_Q4_0),
    "q4_k_m": (T.Q4_K, gguf.LlamaFileType.MOSTLY_Q4_K_M),
    "q5_k_m": (T.Q5_K, gguf.LlamaFileType.MOSTLY_Q5_K_M),
    "q6_k": (T.Q6_K, gguf.LlamaFileType.MOSTLY_Q6_K),
}
K_MIXES = ("q4_k_m", "q5_k_m", "q6_k")     # llama.cpp's per-tensor mixes (module docstring)
# llama.cpp's tensor_type_fallback for rows that are not a multiple of 256
K_FALLBACK = {T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0}
CHUNK_ELEMS = 1 << 22   # elements per streamed chunk (16 MiB of float32)
QWEN2_PRETOKENIZER_MARK = "(?i:'s|'t|'re|'ve|'m|'ll|'d)"


@dataclass(frozen=True)
class StackedRef:
    """The per-expert checkpoint tensors of one layer and kind, read as one (E, rows, cols) tensor."""
    name: str
    parts: tuple[TensorRef, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.parts), *self.parts[0].shape)

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.parts)

    @property
    def file(self) -> Path:
        return self.parts[0].file

    def rows(self, chunk_rows: int):
        """float32 (n, cols) chunks, expert after expert (GGUF's row order of the 3-D tensor)."""
        for p in self.parts:
            yield from p.rows(chunk_rows)


@dataclass
class Checkpoint:
    """A validated Hugging Face Qwen3 checkpoint directory."""
    path: Path
    hparams: dict
    tensors: dict[str, TensorRef]          # GGUF name -> source tensor
    tokenizer: dict
    tokenizer_config: dict
    generation_config: dict = field(default_factory=dict)

    @property
    def tied(self) -> bool:
        return C.OUTPUT not in self.tensors

    @property
    def arch(self) -> str:
        return "qwen3moe" if self.hparams.get("num_experts") else C.ARCH


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise EdgeQwenError(f"{path}: missing {what}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EdgeQwenError(f"{path}: invalid JSON ({e})") from None


def load_checkpoint(model_dir: str | os.PathLike) -> Checkpoint:
    """Read and validate config, tokenizer and tensor headers; no tensor data is read."""
    path = Path(model_dir)
    if not path.is_dir():
        raise EdgeQwenError(f"{path}: not a directory (expected a Hugging Face Qwen3 checkpoint)")
    hp = _read_json(path / "config.json", "config.json")
    archs = hp.get("architectures") or []
    moe = hp.get("model_type") == "qwen3_moe"
    if not ((hp.get("model_type") == "qwen3" and (not archs or "Qwen3ForCausalLM" in archs))
            or (moe and (not archs or "Qwen3MoeForCausalLM" in archs))):
        raise EdgeQwenError(
            f"{path / 'config.json'}: architecture {archs or '?'} / model_type {hp.get('model_type')!r} "
            "is not supported (expected Qwen3ForCausalLM / qwen3 or Qwen3MoeForCausalLM / qwen3_moe)")
    hp = dict(hp)
    if moe:
        _check_moe_config(path / "config.json", hp)
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
        if not isinstance(hp.get(key), int) or hp[key] <= 0:
            raise EdgeQwenError(f"{path / 'config.json'}: key {key} missing or not a positive integer")
    hp.setdefault("num_key_value_heads", hp["num_attention_heads"])
    hp.setdefault("head_dim", hp["hidden_size"] // hp["num_attention_heads"])
    if hp["num_attention_heads"] % hp["num_key_value_heads"]:
        raise EdgeQwenError(f"{path / 'config.json'}: num_attention_heads {hp['num_attention_heads']} "
                            f"is not a multiple of num_key_value_heads {hp['num_key_value_heads']}")

    tok = _read_json(path / "tokenizer.json", "tokenizer.json")
    tok_cfg = _read_json(path / "tokenizer_config.json", "tokenizer_config.json")
    gen_path = path / "generation_config.json"
    gen = _read_json(gen_path, "generation_config.json") if gen_path.is_file() else {}

    tensors: dict[str, TensorRef] = {}
    experts: dict[str, dict[int, TensorRef]] = {}
    for hf_name, ref in open_checkpoint(path).items():
        name = gguf_name(hf_name)
        stacked = expert_of(hf_name) if moe else None
        if stacked is not None and stacked[1] < hp["num_experts"]:
            experts.setdefault(stacked[0], {})[stacked[1]] = ref
            continue
        if name is None or (name.endswith("ffn_gate_inp.weight") and not moe):
            if IGNORED.search(hf_name):
                continue
            what = "Qwen3MoeForCausalLM" if moe else "Qwen3ForCausalLM"
            raise EdgeQwenError(f"{ref.file}: unexpected tensor {hf_name} for a {what} checkpoint")
        tensors[name] = ref
    tied = bool(hp.get("tie_word_embeddings", False))
    if tied:
        tensors.pop(C.OUTPUT, None)   # a tied checkpoint may still carry a copy of lm_head
    want = expected_shapes(hp, tied)
    for name, parts in experts.items():
        if name not in want:          # a layer beyond num_hidden_layers: reported below
            tensors[name] = StackedRef(name, tuple(parts.values()))
            continue
        kind = name.split(".")[2].removeprefix("ffn_").removesuffix("_exps")
        for e in range(hp["num_experts"]):
            hf = f"model.layers.{C.layer_of(name)}.mlp.experts.{e}.{kind}_proj.weight"
            if e not in parts:
                raise EdgeQwenError(f"{path}: missing tensor {hf} (num_experts={hp['num_experts']})")
            if parts[e].shape != want[name][1:]:
                raise EdgeQwenError(f"{parts[e].file}: tensor {hf} has shape {list(parts[e].shape)}, "
                                    f"expected {list(want[name][1:])} from config.json")
        tensors[name] = StackedRef(name, tuple(parts[e] for e in range(hp["num_experts"])))
    for name, shape in want.items():
        if name not in tensors:
            raise EdgeQwenError(f"{path}: missing tensor for {name} (layers={hp['num_hidden_layers']})")
        if tensors[name].shape != shape:
            ref = tensors[name]
            raise EdgeQwenError(f"{ref.file}: tensor {ref.name} has shape {list(ref.shape)}, "
                                f"expected {list(shape)} from config.json")
    extra = sorted(set(tensors) - set(want))
    if extra:
        raise EdgeQwenError(f"{path}: tensors beyond num_hidden_layers={hp['num_hidden_layers']}: "
                            f"{', '.join(tensors[n].name for n in extra[:3])}")
    ordered = {n: tensors[n] for n in want}   # GGUF order: embeddings, norm, output, then layers
    return Checkpoint(path, hp, ordered, tok, tok_cfg, gen)


def _check_moe_config(cfg_path: Path, hp: dict) -> None:
    """Qwen3MoeForCausalLM's keys (in place: num_experts from num_local_experts, the name
    transformers 5 writes). Every layer must be sparse, as in llama.cpp's qwen3moe."""
    if "num_experts" not in hp and "num_local_experts" in hp:
        hp["num_experts"] = hp["num_local_experts"]
    for key in ("num_experts", "num_experts_per_tok", "moe_intermediate_size"):
        if not isinstance(hp.get(key), int) or isinstance(hp.get(key), bool) or hp[key] <= 0:
            raise EdgeQwenError(f"{cfg_path}: key {key} missing or not a positive integer")
    if hp["num_experts_per_tok"] > hp["num_experts"]:
        raise EdgeQwenError(f"{cfg_path}: num_experts_per_tok = {hp['num_experts_per_tok']} is more than "
                            f"num_experts = {hp['num_experts']}")
    if not isinstance(hp.get("norm_topk_prob", False), bool):
        raise EdgeQwenError(f"{cfg_path}: key norm_topk_prob = {hp['norm_topk_prob']!r}, expected true or false")
    if hp.get("decoder_sparse_step", 1) != 1 or hp.get("mlp_only_layers"):
        raise EdgeQwenError(f"{cfg_path}: dense layers in a MoE model (decoder_sparse_step = "
                            f"{hp.get('decoder_sparse_step', 1)!r}, mlp_only_layers = {hp.get('mlp_only_layers')!r}) "
                            "are not supported (qwen3moe: every layer sparse)")


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    """llama.cpp's use_more_bits: the first and last eighth of the layers and every third between."""
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def _k_mix_type(name: str, ncols: int, out_type: str, tied: bool, n_layers: int | None, n_expert: int) -> T:
    """llama.cpp's llama_tensor_get_type for a Qwen3 (MoE) matrix under Q4_K_M / Q5_K_M / Q6_K."""
    qtype = OUT_TYPES[out_type][0]
    part = name.split(".")[2] if name.startswith("blk.") else None
    if name == C.OUTPUT or (tied and name == C.TOKEN_EMBD):
        qtype = T.Q8_0 if ncols % gguf.GGML_QUANT_SIZES[qtype][0] else T.Q6_K
    elif part in ("attn_v", "ffn_down", "ffn_down_exps") and out_type in ("q4_k_m", "q5_k_m"):
        if n_layers is None:
            raise ValueError(f"{out_type} needs the layer count for {name}")
        if use_more_bits(int(name.split(".")[1]), n_layers):
            qtype = T.Q6_K
    if n_expert == 8 and part in ("attn_v", "attn_k"):          # "for the 8-expert model" (Mixtral)
        qtype = T.Q8_0
    elif n_expert == 8 and part == "attn_output" and out_type == "q4_k_m":
        qtype = T.Q5_K
    if ncols % gguf.GGML_QUANT_SIZES[qtype][0]:
        qtype = K_FALLBACK.get(qtype, qtype)
        if ncols % gguf.GGML_QUANT_SIZES[qtype][0]:
            qtype = T.F16
    return qtype


def tensor_type(name: str, shape: tuple[int, ...], out_type: str, tied: bool, n_layers: int | None = None,
                n_expert: int = 0) -> T:
    """The GGML type a tensor gets under `out_type` (policy in the module docstring). The K
    mixes q4_k_m and q5_k_m need `n_layers` (the model's layer count) for attn_v / ffn_down;
    `n_expert` is a MoE model's expert count (0: dense)."""
    if len(shape) == 1 or name.endswith(".ffn_gate_inp.weight"):
        return T.F32
    if out_type in K_MIXES:
        return _k_mix_type(name, shape[-1], out_type, tied, n_layers, n_expert)
    qtype = OUT_TYPES[out_type][0]
    if out_type == "q4_0" and (name == C.OUTPUT or (tied and name == C.TOKEN_EMBD)):
        qtype = T.Q8_0
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    if shape[-1] % block:
        qtype = T.F16
    return qtype


def _nbytes(shape: tuple[int, ...], qtype: T) -> int:
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    return int(np.prod(shape)) // block * size


def _encode(chunk: np.ndarray, qtype: T) -> np.ndarray:
    if qtype == T.F32:
        return np.ascontiguousarray(chunk, dtype=np.float32)
    if qtype == T.F16:
        return chunk.astype(np.float16)
    if qtype in kquants.TYPES:
        return kquants.quantize(chunk, qtype)
    return gguf.quants.quantize(chunk, qtype)


# ---------------------------------------------------------------- vocabulary and metadata

def vocab(ckpt: Checkpoint) -> tuple[list[str], list[int]]:
    """Token strings and types, as llama.cpp's `get_vocab_base` makes them from tokenizer.json."""
    model = ckpt.tokenizer.get("model", {})
    if model.get("type") != "BPE" or "vocab" not in model:
        raise EdgeQwenError(f"{ckpt.path / 'tokenizer.json'}: expected a byte-level BPE tokenizer with a vocab")
    n_vocab = ckpt.hparams["vocab_size"]
    reverse = {i: t for t, i in model["vocab"].items()}
    added = {a["id"]: a for a in ckpt.tokenizer.get("added_tokens", [])}
    for i, a in added.items():
        reverse[i] = a["content"]
    if reverse and max(reverse) >= n_vocab:
        raise EdgeQwenError(f"{ckpt.path / 'tokenizer.json'}: token id {max(reverse)} >= vocab_size {n_vocab}")
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        tok = reverse[i]
        if i in added:
            looks_special = tok.startswith("<|") and tok.endswith("|>")
            types.append(gguf.TokenType.CONTROL if added[i].get("special") or looks_special
                         else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
        tokens.append(tok)
    return tokens, types


def _check_pretokenizer(ckpt: Checkpoint) -> None:
    if QWEN2_PRETOKENIZER_MARK not in json.dumps(ckpt.tokenizer.get("pre_tokenizer"), ensure_ascii=False):
        raise EdgeQwenError(f"{ckpt.path / 'tokenizer.json'}: pre-tokenizer is not Qwen2's byte-level split "
                            "(not a Qwen3 tokenizer)")


def write_metadata(w: gguf.GGUFWriter, ckpt: Checkpoint, out_type: str) -> None:
    hp = ckpt.hparams
    total, shared, expert, n_expert = w.get_total_parameter_count()
    meta = gguf.Metadata.load(None, ckpt.path, None, total)
    if meta.name is None:
        meta.name = ckpt.path.name
    if meta.size_label is None and total > 0:
        meta.size_label = gguf.size_label(total, shared, expert, n_expert)
    w.add_type(gguf.GGUFType.MODEL)
    meta.set_gguf_meta_model(w)

    w.add_block_count(hp["num_hidden_layers"])
    w.add_context_length(hp.get("max_position_embeddings", 40960))
    w.add_embedding_length(hp["hidden_size"])
    w.add_feed_forward_length(hp["intermediate_size"])
    w.add_head_count(hp["num_attention_heads"])
    w.add_head_count_kv(hp["num_key_value_heads"])
    w.add_rope_freq_base(float(hp.get("rope_theta", (hp.get("rope_parameters") or {}).get("rope_theta", 1e6))))
    w.add_layer_norm_rms_eps(float(hp.get("rms_norm_eps", 1e-6)))
    w.add_key_length(hp["head_dim"])
    w.add_value_length(hp["head_dim"])
    rope = hp.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type")) == "yarn":
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(float(rope["factor"]))
        w.add_rope_scaling_orig_ctx_len(int(rope["original_max_position_embeddings"]))
        for key, add in (("extrapolation_factor", w.add_rope_scaling_yarn_ext_factor),
                         ("attention_factor", w.add_rope_scaling_yarn_attn_factor),
                         ("beta_fast", w.add_rope_scaling_yarn_beta_fast),
                         ("beta_slow", w.add_rope_scaling_yarn_beta_slow)):
            if key in rope:
                add(float(rope[key]))
    if ckpt.arch != C.ARCH:
        w.add_expert_count(hp["num_experts"])
        w.add_expert_used_count(hp["num_experts_per_tok"])
        w.add_expert_feed_forward_length(hp["moe_intermediate_size"])
        if not hp.get("norm_topk_prob", False):
            w.add_expert_weights_norm(False)
    w.add_file_type(OUT_TYPES[out_type][1])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)

    _check_pretokenizer(ckpt)
    tokens, types = vocab(ckpt)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    special = gguf.SpecialVocab(ckpt.path, load_merges=True, n_vocab=len(tokens))
    if not special.merges:
        raise EdgeQwenError(f"{ckpt.path / 'tokenizer.json'}: no BPE merges found")
    if "eos" not in special.special_token_ids:
        eos = ckpt.generation_config.get("eos_token_id")
        eos = eos[0] if isinstance(eos, list) and eos else eos
        if isinstance(eos, int):
            special.special_token_ids["eos"] = eos
    special.add_to_gguf(w, quiet=True)


# ---------------------------------------------------------------- the conversion

@dataclass
class Summary:
    out: Path
    n_tensors: int
    types: dict[str, int]
    out_bytes: int
    seconds: float
    errors: dict[str, float]      # tensor -> relative RMS error (only with verbose)


def convert(model_dir, out_path, out_type: str = "f16", *, force: bool = False,
            verbose: bool = False, progress: bool = True, log=print) -> Summary:
    """Convert a Hugging Face Qwen3 checkpoint directory into a GGUF file at `out_path`."""
    if out_type not in OUT_TYPES:
        raise EdgeQwenError(f"unknown output type {out_type!r} (supported: {', '.join(OUT_TYPES)})")
    out = Path(out_path)
    if out.exists() and not force:
        raise EdgeQwenError(f"{out}: already exists (use --force to overwrite)")
    if not out.parent.is_dir():
        raise EdgeQwenError(f"{out.parent}: output directory does not exist")
    t0 = time.perf_counter()
    ckpt = load_checkpoint(model_dir)
    n_layers = ckpt.hparams["num_hidden_layers"]
    n_expert = ckpt.hparams.get("num_experts", 0) if ckpt.arch != C.ARCH else 0
    plan = [(name, ref, tensor_type(name, ref.shape, out_type, ckpt.tied, n_layers=n_layers, n_expert=n_expert))
            for name, ref in ckpt.tensors.items()]

    remove_stale_partials(out)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.partial")
    writer = gguf.GGUFWriter(tmp, ckpt.arch)
    errors: dict[str, float] = {}
    try:
        with _sigterm_as_interrupt():   # SIGTERM cleans up as Ctrl-C does
            for name, ref, qtype in plan:
                writer.add_tensor_info(name, ref.shape, np.dtype(np.float32), _nbytes(ref.shape, qtype),
                                       raw_dtype=qtype)
            write_metadata(writer, ckpt, out_type)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            fout = writer.fout[0]
            total_in = sum(ref.nbytes for _, ref, _ in plan)
            bar = _progress_bar(total_in, progress, out_type)
            for kq in sorted({q for _, _, q in plan if q in kquants.TYPES}):
                # numba compiles the K-quant kernels on first use (then loads them from its cache):
                # do it before the first tensor so that the bar's rate reflects the quantization
                bar.set_postfix_str(f"preparing the {kq.name} quantizer")
                kquants.quantize(np.zeros((1, kquants.QK_K), np.float32), kq)
            for i, (name, ref, qtype) in enumerate(plan):
                bar.set_postfix_str(f"tensor {i + 1}/{len(plan)} {name} {qtype.name}", refresh=False)
                writer.write_padding(fout, fout.tell())
                chunk_rows = max(1, CHUNK_ELEMS // max(ref.shape[-1], 1))
                sq_err = sq_ref = 0.0
                written = 0
                for chunk in ref.rows(chunk_rows):
                    enc = _encode(chunk, qtype)
                    enc.tofile(fout)
                    written += enc.nbytes
                    if verbose:
                        deq = (gguf.quants.dequantize(enc, qtype) if qtype not in (T.F32, T.F16)
                               else enc.astype(np.float32))
                        sq_err += float(np.sum((deq.reshape(chunk.shape) - chunk) ** 2, dtype=np.float64))
                        sq_ref += float(np.sum(chunk.astype(np.float64) ** 2))
                    bar.update(chunk.size * ref.nbytes // max(int(np.prod(ref.shape)), 1))
                assert written == _nbytes(ref.shape, qtype), (name, written)
                writer.write_padding(fout, written)
                if verbose:
                    errors[name] = (sq_err / sq_ref) ** 0.5 if sq_ref > 0 else 0.0
                    bar.write(f"  {name:32s} {qtype.name:5s} {str(list(ref.shape)):>16s}  "
                              f"rel. RMS error {errors[name]:.2e}")
            bar.close()
            writer.close()
            os.replace(tmp, out)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    types: dict[str, int] = {}
    for _, _, qtype in plan:
        types[qtype.name] = types.get(qtype.name, 0) + 1
    return Summary(out, len(plan), types, out.stat().st_size, time.perf_counter() - t0, errors)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:              # another user's process
        return True
    return True


def remove_stale_partials(out: Path) -> list[Path]:
    """Remove the hidden `.NAME.PID.partial` files next to `out` whose process is gone (a conversion
    killed with SIGKILL, or a power loss); those of running conversions stay. Returns what was removed."""
    prefix, removed = f".{out.name}.", []
    try:
        names = os.listdir(out.parent)
    except OSError:
        return removed
    for name in names:
        pid = name[len(prefix):-len(".partial")] if name.startswith(prefix) and name.endswith(".partial") else ""
        if not pid.isdigit() or int(pid) == os.getpid() or _pid_alive(int(pid)):
            continue
        try:
            (out.parent / name).unlink()
            removed.append(out.parent / name)
        except OSError:
            pass
    return removed


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM raises KeyboardInterrupt while the output is written, so the partial file is removed
    exactly as on Ctrl-C (main thread only: signal handlers cannot be set elsewhere)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _progress_bar(total: int, enabled: bool, out_type: str = ""):
    from tqdm import tqdm
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                desc=f"converting to {out_type}" if out_type else "converting",
                disable=not enabled, dynamic_ncols=True, leave=False)
