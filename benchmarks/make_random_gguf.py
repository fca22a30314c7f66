"""Write a Qwen3-shaped GGUF file with random weights at a real model size, for speed and memory
measurements (speed does not depend on weight values).

    python benchmarks/make_random_gguf.py --size 0.6b --type q4_0 -o /path/qwen3-0.6b-q4_0.gguf

No safetensors and no float quantization: each quantized tensor is made of random blocks
directly (random nibbles / int8 values with one fixed float16 scale per tensor), streamed to the
file a chunk at a time, so memory stays bounded (tens of MB) even for the 14B shape (~8.5 GB in
Q4_0). The scale is chosen so a weight's standard deviation is about 1/sqrt(columns), which keeps
activations O(1) through all layers; norms are 1.0. F16 tensors are random values of one binade
(a fixed exponent, random sign and mantissa) of the same magnitude.

Everything else is what our converter writes: the per-tensor type policy
(`converters.hf_to_gguf.tensor_type`, e.g. q4_0 keeps the output matrix in Q8_0), tensor order
and names, and all metadata incl. Qwen3's real tokenizer (`converters.hf_to_gguf.write_metadata`,
fed a Checkpoint made from a temporary directory with config.json and the tokenizer files).
The files load in llama.cpp and in edgeqwen.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import gguf
import numpy as np

from converters.hf_to_gguf import Checkpoint, OUT_TYPES, T, _nbytes, tensor_type, write_metadata
from converters.synthetic import QWEN3_VOCAB, tokenizer_files
from converters.tensor_map import expected_shapes
from edgeqwen import constants as C

# hidden, intermediate (ffn), layers, attention heads, tied embeddings. All: vocab 151936,
# head_dim 128, 8 KV heads, rms eps 1e-6, rope base 1e6, context 40960.
SIZES = {
    "0.6b": (1024, 3072, 28, 16, True),
    "1.7b": (2048, 6144, 28, 16, True),
    "4b": (2560, 9728, 36, 32, True),
    "8b": (4096, 12288, 36, 32, False),
    "14b": (5120, 17408, 40, 40, False),
}
TYPES = ("q4_0", "q8_0", "q4_k_m", "f16")
CHUNK_BYTES = 32 << 20          # bytes generated and written per step

# Standard deviation of the integer part of a random block value: Q4_0 nibbles 0..15 (minus 8),
# Q8_0 int8 -128..127. The block scale d = target_sd / unit_sd.
UNIT_SD = {T.Q4_0: np.sqrt((16 ** 2 - 1) / 12), T.Q8_0: np.sqrt((256 ** 2 - 1) / 12)}


def hparams(size: str) -> dict:
    hidden, ffn, layers, heads, tied = SIZES[size]
    return {
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
        "vocab_size": QWEN3_VOCAB, "hidden_size": hidden, "intermediate_size": ffn,
        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": 8,
        "head_dim": 128, "hidden_act": "silu", "max_position_embeddings": 40960,
        "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "rope_scaling": None,
        "tie_word_embeddings": tied, "torch_dtype": "bfloat16",
        "attention_bias": False, "attention_dropout": 0.0, "use_cache": True,
        "bos_token_id": 151643, "eos_token_id": 151645, "sliding_window": None,
        "use_sliding_window": False, "max_window_layers": layers,
    }


def make_checkpoint_stub(directory: Path, hp: dict) -> Checkpoint:
    """A Checkpoint with the real config/tokenizer files but no tensor data (write_metadata only
    reads hparams, the tokenizer files and generation_config)."""
    directory.mkdir(parents=True, exist_ok=True)
    gen = {"bos_token_id": 151643, "eos_token_id": [151645, 151643], "pad_token_id": 151643,
           "do_sample": True, "temperature": 0.6, "top_k": 20, "top_p": 0.95}
    (directory / "config.json").write_text(json.dumps(hp, indent=2))
    (directory / "generation_config.json").write_text(json.dumps(gen, indent=2))
    files = tokenizer_files()
    for name, data in files.items():
        (directory / name).write_bytes(data)
    shapes = expected_shapes(hp, hp["tie_word_embeddings"])
    return Checkpoint(directory, hp, shapes, json.loads(files["tokenizer.json"]),
                      json.loads(files["tokenizer_config.json"]), gen)


def _f16_bits(exponent: int) -> tuple[int, int]:
    """(mask, or-bits) turning random uint16 into float16 values +-[2^exponent, 2^(exponent+1))."""
    biased = exponent + 15
    assert 1 <= biased <= 30
    return 0x83FF, biased << 10


def random_chunks(rng: np.random.Generator, shape: tuple[int, ...], qtype: T):
    """Yield the tensor's bytes as uint8 arrays of whole rows, about CHUNK_BYTES each."""
    if len(shape) == 1:
        assert qtype == T.F32
        yield np.ones(shape, np.float32).view(np.uint8)
        return
    rows, cols = shape
    target_sd = 1.0 / np.sqrt(cols)
    row_bytes = _nbytes((1, cols), qtype)
    step = max(1, CHUNK_BYTES // row_bytes)
    if qtype in (T.Q4_0, T.Q8_0):
        block, bsize = gguf.GGML_QUANT_SIZES[qtype]
        d = np.array([target_sd / UNIT_SD[qtype]], np.float16).view(np.uint8)
        for r0 in range(0, rows, step):
            n = min(step, rows - r0)
            buf = rng.integers(0, 256, n * row_bytes, dtype=np.uint8)
            blocks = buf.reshape(-1, bsize)
            blocks[:, 0], blocks[:, 1] = d[0], d[1]
            yield buf
    elif qtype == T.F16:
        # uniform magnitude in [a, 2a): sd ~ 1.53 a
        mask, bits = _f16_bits(int(np.floor(np.log2(target_sd / 1.53))))
        for r0 in range(0, rows, step):
            n = min(step, rows - r0)
            buf = rng.integers(0, 1 << 16, n * cols, dtype=np.uint16)
            buf &= mask
            buf |= bits
            yield buf.view(np.uint8)
    elif qtype in (T.Q4_K, T.Q6_K):
        # random blocks; d (and Q4_K's dmin) fixed per tensor. Q4_K: d*sc*q - dmin*m with sc, m
        # 0..63 (mean 31.5) and q 0..15; dmin = 7.5 d centres it. Q6_K: d*sc*(q - 32), sc int8.
        if qtype == T.Q4_K:
            d = target_sd / (31.5 * np.sqrt((16 ** 2 - 1) / 12))
            head = np.array([d, 7.5 * d], np.float16).view(np.uint8)            # bytes 0..3
        else:
            d = target_sd / (37.0 * np.sqrt((64 ** 2 - 1) / 12))
            head = np.array([d], np.float16).view(np.uint8)                     # bytes 208..209
        _, bsize = gguf.GGML_QUANT_SIZES[qtype]
        for r0 in range(0, rows, step):
            n = min(step, rows - r0)
            buf = rng.integers(0, 256, n * row_bytes, dtype=np.uint8)
            blocks = buf.reshape(-1, bsize)
            if qtype == T.Q4_K:
                blocks[:, 0:4] = head
            else:
                blocks[:, 192:208] = rng.integers(-64, 64, (len(blocks), 16), dtype=np.int8).view(np.uint8)
                blocks[:, 208:210] = head
            yield buf
    else:
        raise ValueError(f"no random generator for {qtype.name}")


def make_random_gguf(out_path, size: str, out_type: str, *, seed: int = 0, force: bool = False,
                     progress: bool = True, log=print) -> dict:
    if size not in SIZES:
        raise SystemExit(f"unknown size {size!r} (choose from {', '.join(SIZES)})")
    if out_type not in TYPES:
        raise SystemExit(f"unknown type {out_type!r} (choose from {', '.join(TYPES)})")
    out = Path(out_path)
    if out.exists() and not force:
        raise SystemExit(f"{out}: already exists (use --force to overwrite)")
    if not out.parent.is_dir():
        raise SystemExit(f"{out.parent}: output directory does not exist")
    t0 = time.perf_counter()
    hp = hparams(size)
    rng = np.random.default_rng(seed)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.partial")
    with tempfile.TemporaryDirectory() as td:
        ckpt = make_checkpoint_stub(Path(td) / f"Qwen3-{size.upper()}-random", hp)
        plan = [(name, shape, tensor_type(name, shape, out_type, ckpt.tied,
                                                    n_layers=hp["num_hidden_layers"])) for name, shape in ckpt.tensors.items()]
        total = sum(_nbytes(shape, q) for _, shape, q in plan)
        writer = gguf.GGUFWriter(tmp, C.ARCH)
        try:
            for name, shape, qtype in plan:
                writer.add_tensor_info(name, shape, np.dtype(np.float32), _nbytes(shape, qtype), raw_dtype=qtype)
            write_metadata(writer, ckpt, out_type)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            fout = writer.fout[0]
            from tqdm import tqdm
            bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="writing",
                       disable=not progress, dynamic_ncols=True, leave=False)
            for name, shape, qtype in plan:
                writer.write_padding(fout, fout.tell())
                written = 0
                for chunk in random_chunks(rng, shape, qtype):
                    chunk.tofile(fout)
                    written += chunk.nbytes
                    bar.update(chunk.nbytes)
                assert written == _nbytes(shape, qtype), (name, written)
                writer.write_padding(fout, written)
            bar.close()
            writer.close()
            os.replace(tmp, out)
        except BaseException:
            writer.close()
            tmp.unlink(missing_ok=True)
            raise
    types: dict[str, int] = {}
    for _, _, q in plan:
        types[q.name] = types.get(q.name, 0) + 1
    n_params = sum(int(np.prod(s)) for _, s, _ in plan)
    return {"path": str(out), "size": size, "type": out_type, "bytes": out.stat().st_size,
            "params": n_params, "tensors": len(plan), "types": types, "seconds": time.perf_counter() - t0}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", required=True, choices=list(SIZES), type=str.lower)
    ap.add_argument("--type", dest="out_type", default="q4_0", choices=TYPES, type=str.lower)
    ap.add_argument("-o", "--output", required=True, help="output .gguf file (written via a temp file + rename)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="overwrite an existing file")
    ap.add_argument("-q", "--quiet", action="store_true")
    a = ap.parse_args(argv)
    s = make_random_gguf(a.output, a.size, a.out_type, seed=a.seed, force=a.force,
                         progress=not a.quiet and sys.stderr.isatty())
    if not a.quiet:
        types = ", ".join(f"{n} {k}" for k, n in sorted(s["types"].items()))
        print(f"wrote {s['path']}: Qwen3-{a.size.upper()} shape, {s['params'] / 1e9:.3f} B params, "
              f"{s['tensors']} tensors ({types}), {s['bytes'] / 2**20:.1f} MiB in {s['seconds']:.1f} s",
              file=sys.stderr)


if __name__ == "__main__":
    main()
