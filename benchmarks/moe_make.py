"""Write a Qwen3-30B-A3B-shaped `qwen3moe` GGUF with random weights (Q4_0, ~16 GiB), for the MoE
speed and memory benchmark (speed does not depend on weight values).

    python benchmarks/moe_make.py -o /work/models/qwen3-30b-a3b-q4_0.gguf [--layers 48]

The same method as make_random_gguf.py (random blocks with one float16 scale per tensor, streamed,
our converter's metadata, type policy and tensor names); the router (`ffn_gate_inp`, F32 as
llama.cpp keeps it) is Gaussian with standard deviation 1/sqrt(hidden) so that tokens spread
over the experts. Qwen3-30B-A3B: hidden 2048, 48 layers, 32 query / 4 KV heads of 128, 128
experts of FFN size 768, 8 per token, untied embeddings.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import gguf
import numpy as np

from make_random_gguf import make_checkpoint_stub, random_chunks
from converters.hf_to_gguf import _nbytes, tensor_type, write_metadata
from converters.synthetic import QWEN3_VOCAB


def hparams(layers: int) -> dict:
    return {
        "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe",
        "vocab_size": QWEN3_VOCAB, "hidden_size": 2048, "intermediate_size": 6144,
        "num_hidden_layers": layers, "num_attention_heads": 32, "num_key_value_heads": 4,
        "head_dim": 128, "hidden_act": "silu", "max_position_embeddings": 40960,
        "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "rope_scaling": None, "tie_word_embeddings": False,
        "torch_dtype": "bfloat16", "num_experts": 128, "num_experts_per_tok": 8, "moe_intermediate_size": 768,
        "norm_topk_prob": True, "decoder_sparse_step": 1, "mlp_only_layers": [],
        "bos_token_id": 151643, "eos_token_id": 151645,
    }


def make(out: Path, layers: int, seed: int = 0) -> None:
    hp = hparams(layers)
    rng = np.random.default_rng(seed)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.partial")
    with tempfile.TemporaryDirectory() as td:
        ckpt = make_checkpoint_stub(Path(td) / "Qwen3-30B-A3B-random", hp)
        plan = [(n, s, tensor_type(n, s, "q4_0", False, n_layers=layers, n_expert=128))
                for n, s in ckpt.tensors.items()]
        writer = gguf.GGUFWriter(tmp, "qwen3moe")
        try:
            for name, shape, qtype in plan:
                writer.add_tensor_info(name, shape, np.dtype(np.float32), _nbytes(shape, qtype), raw_dtype=qtype)
            write_metadata(writer, ckpt, "q4_0")
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            fout = writer.fout[0]
            for name, shape, qtype in plan:
                writer.write_padding(fout, fout.tell())
                if qtype == gguf.GGMLQuantizationType.F32 and len(shape) == 2:     # the router
                    chunks = [(rng.standard_normal(shape) / np.sqrt(shape[1])).astype(np.float32)]
                else:
                    flat = shape if len(shape) < 3 else (shape[0] * shape[1], shape[2])
                    chunks = random_chunks(rng, flat, qtype)
                written = 0
                for c in chunks:
                    c.tofile(fout)
                    written += c.nbytes
                assert written == _nbytes(shape, qtype), name
                writer.write_padding(fout, written)
            writer.close()
            os.replace(tmp, out)
        except BaseException:
            writer.close()
            tmp.unlink(missing_ok=True)
            raise


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--layers", type=int, default=48)
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args(argv)
    out = Path(a.output)
    if out.exists() and not a.force:
        raise SystemExit(f"{out}: already exists (use --force to overwrite)")
    t0 = time.perf_counter()
    make(out, a.layers)
    print(f"wrote {out}: {out.stat().st_size / 2**30:.2f} GiB in {time.perf_counter() - t0:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
