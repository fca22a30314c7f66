"""The HF -> GGUF converter (converters/) against independent references.

* tensor data: the original safetensors values read with the `safetensors` library (not our
  reader), encoded by numpy (F16), torch (BF16) and gguf-py's `gguf.quants` (Q8_0/Q4_0; checked by
  hand to be byte-identical to libggml's `ggml_quantize_chunk`), plus an own decoder of the block
  layout with per-element error bounds;
* metadata: config.json, tokenizer.json and tokenizer_config.json of the checkpoint;
* whole files: llama.cpp's own `convert_hf_to_gguf.py` (source from conftest.llama_cpp_source);
* bad input and interruption through the `edgeqwen convert` CLI.

GGUF files are parsed by `read_gguf` below, a small independent parser, because `gguf.GGUFReader`
takes 10-20 s per file on these 151,936-token vocabularies; `test_read_gguf_agrees_with_gguf_reader`
checks it against `gguf.GGUFReader` once.
"""
from __future__ import annotations

import filecmp
import functools
import json
import os
import shutil
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import pytest
import safetensors.numpy
import torch
from click.testing import CliRunner
from safetensors import safe_open

import converters.hf_to_gguf as h2g
from conftest import llama_cpp_source, missing_reference
from converters.synthetic import make_checkpoint, save_safetensors
from edgeqwen.cli import main as cli_main
from edgeqwen.errors import EdgeQwenError

T = gguf.GGMLQuantizationType
V = gguf.GGUFValueType
MATRIX_TYPE = {"f32": T.F32, "f16": T.F16, "bf16": T.BF16, "q8_0": T.Q8_0, "q4_0": T.Q4_0}
# llama.h's llama_ftype values, written out rather than taken from gguf-py.
FILE_TYPE = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 7, "bf16": 32}

# Our conversions whose tensors are checked against the checkpoint (each ~4 s, memoized by the
# session fixture `gguf_file` and reused by the metadata and llama.cpp comparisons below).
CONVERSIONS = [
    ("tiny", "f32"), ("tiny", "f16"), ("tiny", "bf16"), ("tiny", "q8_0"), ("tiny", "q4_0"),
    ("untied", "f16"), ("untied", "q8_0"), ("untied", "q4_0"),
    ("bf16", "bf16"),
    ("yarn", "f32"),
]
# Compared with llama.cpp's converter (which has f32/f16/bf16/q8_0 but no q4_0).
# BF16: a bf16 checkpoint copied as is, and a float32 one rounded to bf16 (the README's "tested" BF16 parity)
LLAMA_CPP_CASES = [("tiny", "f16"), ("tiny", "q8_0"), ("untied", "f16"), ("untied", "q8_0"), ("yarn", "f32"),
                   ("bf16", "bf16"), ("tiny", "bf16")]


from gguf_spec_reader import GFile, GTensor, read_gguf  # noqa: E402


@functools.lru_cache(maxsize=4)
def parsed(path: Path) -> GFile:
    return read_gguf(path)


# ------------------------------------------------------------------ the checkpoint's own values

_LAYER_PARTS = {
    "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v", "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
    "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}


def gguf_name_of(hf: str) -> str:
    """llama.cpp's qwen3 tensor names (written out here, independently of converters/tensor_map.py)."""
    fixed = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    if hf in fixed:
        return fixed[hf]
    _, _, layer, rest = hf.split(".", 3)
    return f"blk.{layer}.{_LAYER_PARTS[rest.removesuffix('.weight')]}.weight"


@functools.lru_cache(maxsize=None)
def hf_values(ckpt: Path) -> dict[str, np.ndarray]:
    """GGUF name -> float32 values, read with the safetensors library (BF16: raw uint16 << 16)."""
    out = {}
    for f in sorted(ckpt.glob("*.safetensors")):
        with safe_open(f, framework="pt") as st:
            dtypes = {n: st.get_slice(n).get_dtype() for n in st.keys()}
            if set(dtypes.values()) == {"F32"}:
                arrays = safetensors.numpy.load_file(f)
            else:
                assert set(dtypes.values()) == {"BF16"}, dtypes
                arrays = {n: (st.get_tensor(n).view(torch.int16).numpy().view(np.uint16).astype(np.uint32) << 16)
                          .view(np.float32) for n in st.keys()}
        for n, a in arrays.items():
            assert a.dtype == np.float32
            out[gguf_name_of(n)] = a
    return out


def config(ckpt: Path) -> dict:
    return json.loads((ckpt / "config.json").read_text())


def expected_type(name: str, ndim: int, out_type: str, tied: bool) -> T:
    """The documented policy: norms F32; q4_0 keeps the output projection at Q8_0."""
    if ndim == 1:
        return T.F32
    if out_type == "q4_0" and name == ("token_embd.weight" if tied else "output.weight"):
        return T.Q8_0
    return MATRIX_TYPE[out_type]


def reference_bytes(x: np.ndarray, qtype: T) -> bytes:
    if qtype == T.F32:
        return x.astype("<f4").tobytes()
    if qtype == T.F16:
        return x.astype("<f2").tobytes()
    if qtype == T.BF16:   # torch's float32 -> bfloat16 is round-to-nearest-even
        return torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().astype("<i2").tobytes()
    return gguf.quants.quantize(x, qtype).tobytes()


def decode_blocks(raw: bytes, qtype: T, n: int) -> tuple[np.ndarray, np.ndarray]:
    """ggml's block layout, decoded here: (values, per-element |scale|)."""
    if qtype == T.Q8_0:     # {f16 d; int8 qs[32]}: x = d * q
        b = np.frombuffer(raw, dtype=[("d", "<f2"), ("qs", "i1", 32)])
        q = b["qs"].astype(np.float32)
    else:                   # {f16 d; u8 qs[16]}: low nibbles are x[0..15], high nibbles x[16..31]; x = d * (q - 8)
        b = np.frombuffer(raw, dtype=[("d", "<f2"), ("qs", "u1", 16)])
        q = np.concatenate([b["qs"] & 0xF, b["qs"] >> 4], axis=1).astype(np.float32) - 8
    d = b["d"].astype(np.float32)[:, None]
    assert q.size == n
    return (d * q).reshape(-1), np.broadcast_to(np.abs(d), q.shape).reshape(-1)


def only_files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


# ------------------------------------------------------------------ 1. tensors

@pytest.mark.parametrize("ckpt_name,out_type", CONVERSIONS, ids=[f"{c}-{t}" for c, t in CONVERSIONS])
def test_tensors_equal_checkpoint(checkpoints, gguf_file, ckpt_name, out_type):
    ckpt = checkpoints[ckpt_name]
    cfg = config(ckpt)
    tied = cfg["tie_word_embeddings"]
    g = parsed(gguf_file(ckpt_name, out_type))
    values = hf_values(ckpt)

    assert g.version == 3
    assert g.value("general.file_type") == FILE_TYPE[out_type]
    assert g.value("general.quantization_version") == 2
    assert set(g.tensors) == set(values)
    assert ("output.weight" in g.tensors) == (not tied)
    assert len(g.tensors) == 2 + (not tied) + 11 * cfg["num_hidden_layers"]

    # Linear(in, out) has GGUF shape [in, out] (the reader lists the fastest dimension first).
    d, ff, hd = cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"]
    assert g.tensors["blk.0.attn_q.weight"].shape == [d, cfg["num_attention_heads"] * hd]
    assert g.tensors["blk.0.attn_k.weight"].shape == [d, cfg["num_key_value_heads"] * hd]
    assert g.tensors["blk.0.attn_output.weight"].shape == [cfg["num_attention_heads"] * hd, d]
    assert g.tensors["blk.0.ffn_down.weight"].shape == [ff, d]
    assert g.tensors["token_embd.weight"].shape == [d, cfg["vocab_size"]]
    assert g.tensors["blk.0.attn_k_norm.weight"].shape == [hd]

    for name, x in values.items():
        t = g.tensors[name]
        assert t.shape == list(reversed(x.shape)), name
        assert t.type == expected_type(name, x.ndim, out_type, tied), name
        raw = g.data(name)
        assert raw == reference_bytes(x, t.type), f"{name} ({t.type.name}) differs from the reference encoding"
        if t.type in (T.Q8_0, T.Q4_0):
            deq, scale = decode_blocks(raw, t.type, x.size)
            bound = 0.57 if t.type == T.Q8_0 else 1.01   # rounding (+ fp16 scale rounding; Q4_0 clips +8 to +7)
            assert np.all(np.abs(deq - x.reshape(-1)) <= bound * scale + 1e-7), name


def test_fallback_type_for_rows_not_a_multiple_of_the_block():
    f = h2g.tensor_type
    assert f("blk.0.ffn_down.weight", (64, 100), "q8_0", False) == T.F16
    assert f("blk.0.ffn_down.weight", (64, 100), "q4_0", True) == T.F16
    assert f("blk.0.ffn_down.weight", (64, 128), "q4_0", True) == T.Q4_0
    assert f("token_embd.weight", (1000, 64), "q4_0", True) == T.Q8_0
    assert f("token_embd.weight", (1000, 64), "q4_0", False) == T.Q4_0
    assert f("blk.3.attn_q_norm.weight", (128,), "q4_0", True) == T.F32
    with pytest.raises(EdgeQwenError, match="unknown output type"):
        h2g.convert("unused", "unused.gguf", "q5_k")


def test_read_gguf_agrees_with_gguf_reader(gguf_file):
    """The parser used above against gguf-py's GGUFReader, on a file with F32, Q8_0 and Q4_0 tensors."""
    path = gguf_file("tiny", "q4_0")
    ours = read_gguf(path)
    ref = _FastGGUFReader(path)
    assert [k for k in ref.fields if not k.startswith("GGUF.")] == list(ours.kv)
    for key, (types, value) in ours.kv.items():
        f = ref.fields[key]
        assert tuple(f.types) == types, key
        got = f.contents()
        assert (got == list(value)) if isinstance(value, np.ndarray) else (got == value), key
    assert [t.name for t in ref.tensors] == list(ours.tensors)
    for t in ref.tensors:
        o = ours.tensors[t.name]
        assert (t.tensor_type, [int(s) for s in t.shape], int(t.data_offset), int(t.n_bytes)) == \
               (o.type, o.shape, o.offset, o.nbytes), t.name
        assert np.asarray(t.data).tobytes() == ours.data(t.name), t.name


class _FastGGUFReader(gguf.GGUFReader):
    """gguf.GGUFReader parsing from a plain ndarray view of its memmap: same code, ~3x faster
    (np.memmap's per-slice overhead dominates on 300k vocabulary strings)."""

    def _get(self, offset, dtype, count=1, override_order=None):
        if type(self.data) is not np.ndarray:
            self.data = self.data.view(np.ndarray)
        return super()._get(offset, dtype, count, override_order)


# ------------------------------------------------------------------ 2. metadata

@pytest.mark.parametrize("ckpt_name,out_type", [("tiny", "f16"), ("untied", "q8_0"), ("yarn", "f32")])
def test_hyperparameters_from_config(checkpoints, gguf_file, ckpt_name, out_type):
    cfg = config(checkpoints[ckpt_name])
    g = parsed(gguf_file(ckpt_name, out_type))
    u32, f32 = (V.UINT32,), (V.FLOAT32,)
    assert g.kv["general.architecture"] == ((V.STRING,), "qwen3")
    expect = {
        "qwen3.block_count": (u32, cfg["num_hidden_layers"]),
        "qwen3.context_length": (u32, cfg["max_position_embeddings"]),
        "qwen3.embedding_length": (u32, cfg["hidden_size"]),
        "qwen3.feed_forward_length": (u32, cfg["intermediate_size"]),
        "qwen3.attention.head_count": (u32, cfg["num_attention_heads"]),
        "qwen3.attention.head_count_kv": (u32, cfg["num_key_value_heads"]),
        "qwen3.attention.key_length": (u32, cfg["head_dim"]),
        "qwen3.attention.value_length": (u32, cfg["head_dim"]),
        "qwen3.rope.freq_base": (f32, float(np.float32(cfg["rope_theta"]))),
        "qwen3.attention.layer_norm_rms_epsilon": (f32, float(np.float32(cfg["rms_norm_eps"]))),
    }
    for key, want in expect.items():
        assert g.kv[key] == want, key
    rope_keys = {k for k in g.kv if k.startswith("qwen3.rope.scaling.")}
    if cfg["rope_scaling"] is None:
        assert rope_keys == set()
    else:
        rs = cfg["rope_scaling"]
        assert rs["rope_type"] == "yarn"
        assert g.kv["qwen3.rope.scaling.type"] == ((V.STRING,), "yarn")
        assert g.kv["qwen3.rope.scaling.factor"] == (f32, 4.0) and rs["factor"] == 4.0
        assert g.kv["qwen3.rope.scaling.original_context_length"] == (u32, 32768)
        assert rs["original_max_position_embeddings"] == 32768


def test_tokenizer_metadata(checkpoints, gguf_file):
    ckpt = checkpoints["tiny"]
    tok = json.loads((ckpt / "tokenizer.json").read_text(encoding="utf-8"))
    tok_cfg = json.loads((ckpt / "tokenizer_config.json").read_text(encoding="utf-8"))
    n_vocab = config(ckpt)["vocab_size"]
    g = parsed(gguf_file("tiny", "f16"))

    assert g.kv["tokenizer.ggml.model"] == ((V.STRING,), "gpt2")
    assert g.kv["tokenizer.ggml.pre"] == ((V.STRING,), "qwen2")
    assert g.kv["tokenizer.ggml.eos_token_id"] == ((V.UINT32,), 151645)
    assert g.kv["tokenizer.ggml.padding_token_id"] == ((V.UINT32,), 151643)
    assert g.kv["tokenizer.ggml.bos_token_id"] == ((V.UINT32,), 151643)
    assert g.kv["tokenizer.ggml.add_bos_token"] == ((V.BOOL,), False)
    assert g.kv["tokenizer.chat_template"] == ((V.STRING,), tok_cfg["chat_template"])

    tokens = g.value("tokenizer.ggml.tokens")
    types = g.value("tokenizer.ggml.token_type")
    assert g.kv["tokenizer.ggml.tokens"][0] == (V.ARRAY, V.STRING)
    assert g.kv["tokenizer.ggml.token_type"][0] == (V.ARRAY, V.INT32)
    assert len(tokens) == len(types) == n_vocab == 151936
    known = {i: s for s, i in tok["model"]["vocab"].items()}
    known.update({a["id"]: a["content"] for a in tok["added_tokens"]})
    pads = [i for i in range(n_vocab) if i not in known]
    assert len(pads) == n_vocab - 151669 > 0
    assert all(tokens[i] == s for i, s in known.items())
    assert all(tokens[i] == f"[PAD{i}]" for i in pads)
    assert all(types[i] == 5 for i in pads)                        # UNUSED
    assert all(types[i] == 1 for i in tok["model"]["vocab"].values())  # NORMAL
    by_text = {s: i for i, s in known.items()}
    assert types[by_text["<|im_start|>"]] == 3                     # CONTROL (special)
    assert types[by_text["<|endoftext|>"]] == 3
    assert types[by_text["<|fim_prefix|>"]] == 3                   # not special, but looks like <|...|>
    assert types[by_text["<think>"]] == 4                          # USER_DEFINED
    assert types[by_text["<tool_call>"]] == 4
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    assert g.value("tokenizer.ggml.merges") == merges


# ------------------------------------------------------------------ 3. llama.cpp's converter

_LLAMA_DRIVER = """
import json, runpy, sys
script, jobs = sys.argv[1], json.loads(sys.argv[2])
for model, outtype, outfile in jobs:   # one process: torch/transformers are imported once
    sys.argv = [script, model, "--outtype", outtype, "--outfile", outfile]
    runpy.run_path(script, run_name="__main__")
"""


@pytest.fixture(scope="module")
def _llama_cpp_job(checkpoints, tmp_path_factory):
    """llama.cpp's converter on LLAMA_CPP_CASES, started in a background process (None without its source)."""
    src = llama_cpp_source()
    if src is None:
        yield None
        return
    root = tmp_path_factory.mktemp("llama_cpp_ref")
    outputs = {(c, t): root / f"{c}-{t}.gguf" for c, t in LLAMA_CPP_CASES}
    args = [[str(checkpoints[c]), t, str(p)] for (c, t), p in outputs.items()]
    log = root / "log.txt"
    with open(log, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-c", _LLAMA_DRIVER, str(src / "convert_hf_to_gguf.py"),
                                 json.dumps(args)], cwd=src, stdout=f, stderr=subprocess.STDOUT)
    yield proc, outputs, log
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module", autouse=True)
def _start_llama_cpp_early(request):
    """Start llama.cpp's conversions with the module's first test (they take ~30 s and run alongside
    ours on the second core) when any of the comparison tests is selected."""
    if any(getattr(item, "originalname", None) == "test_identical_to_llama_cpp_converter"
           for item in request.session.items):
        request.getfixturevalue("_llama_cpp_job")


@pytest.fixture(scope="module")
def llama_cpp_reference(_llama_cpp_job):
    if _llama_cpp_job is None:
        missing_reference("llama.cpp source not available (set EDGEQWEN_LLAMA_CPP_SRC to a llama.cpp source tree "
                    "with convert_hf_to_gguf.py; see conftest.llama_cpp_source)")
    proc, outputs, log = _llama_cpp_job
    rc = proc.wait(timeout=900)
    assert rc == 0, f"llama.cpp's converter failed:\n{log.read_text(errors='replace')[-3000:]}"
    return outputs


@pytest.mark.parametrize("ckpt_name,out_type", LLAMA_CPP_CASES, ids=[f"{c}-{t}" for c, t in LLAMA_CPP_CASES])
def test_identical_to_llama_cpp_converter(llama_cpp_reference, gguf_file, ckpt_name, out_type):
    ref = read_gguf(llama_cpp_reference[ckpt_name, out_type])
    ours = parsed(gguf_file(ckpt_name, out_type))
    assert ours.version == ref.version
    assert sorted(ours.kv) == sorted(ref.kv)
    for key, (types, value) in ref.kv.items():
        o_types, o_value = ours.kv[key]
        assert o_types == types, key
        if isinstance(value, np.ndarray):
            assert np.array_equal(o_value, value), key
        else:
            assert o_value == value, f"{key}: {str(o_value)[:200]!r} != {str(value)[:200]!r}"
    # Same tensors; the order differs (llama.cpp's follows the sorted safetensors names, ours
    # embeddings, output norm, then layer by layer) and is irrelevant to readers.
    assert sorted(ours.tensors) == sorted(ref.tensors)
    for name, t in ref.tensors.items():
        o = ours.tensors[name]
        assert (o.type, o.shape, o.nbytes) == (t.type, t.shape, t.nbytes), name
        assert ours.data(name) == ref.data(name), f"{name}: tensor data differs"


# ------------------------------------------------------------------ 4. bad input through the CLI

def _link_copy(src: Path, dst: Path, skip=()) -> Path:
    """dst with symlinks to src's files, except those in `skip`."""
    dst.mkdir()
    for f in src.iterdir():
        if f.name not in skip:
            (dst / f.name).symlink_to(f)
    return dst


def _with_config(ck, tmp, **changes):
    d = _link_copy(ck["tiny"], tmp / "ckpt", skip={"config.json"})
    cfg = {**config(ck["tiny"]), **changes}
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def _with_tensors(ck, tmp, edit):
    d = _link_copy(ck["tiny"], tmp / "ckpt", skip={"model.safetensors"})
    t = safetensors.numpy.load_file(ck["tiny"] / "model.safetensors")
    edit(t)
    save_safetensors(d / "model.safetensors", t, "f32")
    return d


def _truncated(ck, tmp, keep):
    d = _link_copy(ck["tiny"], tmp / "ckpt", skip={"model.safetensors"})
    data = (ck["tiny"] / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[:keep(len(data))])
    return d


def _wrong_shape(t):
    t["model.layers.1.self_attn.k_proj.weight"] = t["model.layers.1.self_attn.k_proj.weight"][:48]


BAD_INPUTS = {
    # id: (make the directory, substrings the error line must contain)
    "missing-dir": (lambda ck, tmp: tmp / "no-such-model", ["no-such-model", "not a directory"]),
    "no-config": (lambda ck, tmp: _link_copy(ck["tiny"], tmp / "ckpt", skip={"config.json"}),
                  ["config.json", "missing"]),
    "bad-json-config": (lambda ck, tmp: _write(_link_copy(ck["tiny"], tmp / "ckpt", skip={"config.json"}),
                                              "config.json", "{not json"),
                        ["config.json", "invalid JSON"]),
    "no-weights": (lambda ck, tmp: _link_copy(ck["tiny"], tmp / "ckpt", skip={"model.safetensors"}),
                   ["no weights", "model.safetensors"]),
    "no-tokenizer": (lambda ck, tmp: _link_copy(ck["tiny"], tmp / "ckpt", skip={"tokenizer.json"}),
                     ["tokenizer.json", "missing"]),
    "qwen2": (lambda ck, tmp: _with_config(ck, tmp, architectures=["Qwen2ForCausalLM"], model_type="qwen2"),
              ["config.json", "Qwen2ForCausalLM", "not supported"]),
    "qwen3_moe": (lambda ck, tmp: _with_config(ck, tmp, architectures=["Qwen3MoeForCausalLM"],
                                               model_type="qwen3_moe"),
                  ["config.json", "num_experts", "missing"]),    # a MoE config without its expert keys
    "llama": (lambda ck, tmp: _with_config(ck, tmp, architectures=["LlamaForCausalLM"], model_type="llama"),
              ["config.json", "LlamaForCausalLM", "not supported"]),
    "wrong-shape": (lambda ck, tmp: _with_tensors(ck, tmp, _wrong_shape),
                    ["model.safetensors", "model.layers.1.self_attn.k_proj.weight", "[48, 64]", "[64, 64]"]),
    "missing-tensor": (lambda ck, tmp: _with_tensors(ck, tmp, lambda t: t.pop("model.layers.1.mlp.up_proj.weight")),
                       ["missing tensor", "blk.1.ffn_up.weight"]),
    # cuts into the last tensor (model.norm.weight, 256 bytes)
    "truncated-data": (lambda ck, tmp: _truncated(ck, tmp, lambda n: n - 100),
                       ["model.safetensors", "truncated", "model.norm.weight"]),
    "truncated-header": (lambda ck, tmp: _truncated(ck, tmp, lambda n: 100),
                         ["model.safetensors", "truncated"]),
    "empty-weights": (lambda ck, tmp: _truncated(ck, tmp, lambda n: 0),
                      ["model.safetensors", "not a safetensors file"]),
    "missing-shard": (lambda ck, tmp: _link_copy(ck["untied"], tmp / "ckpt",
                                                 skip={"model-00002-of-00003.safetensors"}),
                      ["model-00002-of-00003.safetensors", "missing"]),
}


def _write(d: Path, name: str, text: str) -> Path:
    (d / name).write_text(text)
    return d


def _error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_one_error_line_and_no_output(checkpoints, tmp_path, case):
    make, needles = BAD_INPUTS[case]
    model_dir = make(checkpoints, tmp_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    r = CliRunner().invoke(cli_main, ["convert", str(model_dir), "-o", str(out_dir / "m.gguf"), "--type", "q8_0"])
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), (r.exception, r.output)
    assert "Traceback" not in r.output
    line = _error_line(r.stderr)
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    assert r.stdout == ""
    assert only_files(out_dir) == []


def test_bad_input_in_a_real_process(checkpoints, tmp_path):
    """The same through `python -m edgeqwen`: real exit status and stderr."""
    model_dir = _with_tensors(checkpoints, tmp_path, _wrong_shape)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    r = subprocess.run([sys.executable, "-m", "edgeqwen", "convert", str(model_dir), "-o", str(out_dir / "m.gguf"),
                        "--type", "q4_0"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr + r.stdout
    line = _error_line(r.stderr)
    assert "model.layers.1.self_attn.k_proj.weight" in line and "model.safetensors" in line
    assert only_files(out_dir) == []


# ------------------------------------------------------------------ 5. atomicity

def test_existing_output_refused_without_force(checkpoints, tmp_path):
    out = tmp_path / "m.gguf"
    out.write_bytes(b"precious")
    r = CliRunner().invoke(cli_main, ["convert", str(checkpoints["tiny"]), "-o", str(out)])
    assert r.exit_code == 1
    line = _error_line(r.stderr)
    assert str(out) in line and "already exists" in line and "--force" in line
    assert out.read_bytes() == b"precious"
    assert only_files(tmp_path) == ["m.gguf"]


def test_force_overwrites_and_verbose_lists_tensors(checkpoints, gguf_file, tmp_path):
    out = tmp_path / "m.gguf"
    out.write_bytes(b"old contents")
    r = CliRunner().invoke(cli_main, ["convert", str(checkpoints["yarn"]), "-o", str(out), "--type", "f32",
                                      "--force", "-v"])
    assert r.exit_code == 0, r.output
    # Deterministic: the same bytes as the session's conversion of the same checkpoint.
    assert filecmp.cmp(out, gguf_file("yarn", "f32"), shallow=False)
    assert only_files(tmp_path) == ["m.gguf"]
    names = list(parsed(gguf_file("yarn", "f32")).tensors)
    lines = [ln for ln in r.stdout.splitlines() if "rel. RMS error" in ln]
    assert [ln.split()[0] for ln in lines] == names
    assert all(ln.split()[1] == "F32" and ln.endswith("rel. RMS error 0.00e+00") for ln in lines)
    assert "wrote" in r.stderr


@pytest.mark.parametrize("existing", [False, True], ids=["new-output", "existing-output"])
def test_interrupted_conversion_leaves_nothing(checkpoints, tmp_path, monkeypatch, existing):
    calls = []
    real_encode = h2g._encode

    def encode(chunk, qtype):
        calls.append(qtype)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real_encode(chunk, qtype)

    monkeypatch.setattr(h2g, "_encode", encode)
    out = tmp_path / "m.gguf"
    if existing:
        out.write_bytes(b"previous model")
    args = ["convert", str(checkpoints["tiny"]), "-o", str(out), "--type", "q8_0"] + (["--force"] if existing else [])
    r = CliRunner().invoke(cli_main, args)
    assert len(calls) == 5
    assert r.exit_code == 130 and "interrupted" in r.stderr, r.output
    assert "Traceback" not in r.output
    if existing:
        assert out.read_bytes() == b"previous model"
        assert only_files(tmp_path) == ["m.gguf"]
    else:
        assert only_files(tmp_path) == []


def test_sigterm_is_handled_like_ctrl_c(checkpoints, tmp_path, monkeypatch):
    """SIGTERM mid-conversion: exit 130, no partial file left, the previous SIGTERM handler restored."""
    import signal

    calls = []
    real_encode = h2g._encode

    def encode(chunk, qtype):
        calls.append(qtype)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)       # delivered here, in the main thread
        return real_encode(chunk, qtype)

    monkeypatch.setattr(h2g, "_encode", encode)
    before = signal.getsignal(signal.SIGTERM)
    r = CliRunner().invoke(cli_main, ["convert", str(checkpoints["tiny"]), "-o", str(tmp_path / "m.gguf")])
    assert r.exit_code == 130 and "interrupted" in r.stderr and "Traceback" not in r.output, r.output
    assert only_files(tmp_path) == []
    assert signal.getsignal(signal.SIGTERM) == before


def test_stale_partials_of_dead_processes_are_removed(checkpoints, tmp_path):
    """Hidden partial files left by a killed conversion (SIGKILL) go at the next run; those of a live
    process, of another target or not named by a pid stay."""
    dead = 2**31 - 2                                     # no such process (above any pid_max)
    keep = [f".m.gguf.{os.getppid()}.partial", ".m.gguf.abc.partial", f".other.gguf.{dead}.partial"]
    for name in [f".m.gguf.{dead}.partial", *keep]:
        (tmp_path / name).write_bytes(b"junk")
    r = CliRunner().invoke(cli_main, ["convert", str(checkpoints["tiny"]), "-o", str(tmp_path / "m.gguf"),
                                      "--type", "q8_0"])
    assert r.exit_code == 0, r.output
    assert only_files(tmp_path) == sorted(["m.gguf", *keep])


# ------------------------------------------------------------------ 6. --verbose errors

def test_verbose_relative_errors_match_gguf_quants(checkpoints, gguf_file, tmp_path, capsys):
    ckpt = checkpoints["tiny"]
    out = tmp_path / "m.gguf"
    s = h2g.convert(ckpt, out, "q4_0", verbose=True, progress=False)
    assert filecmp.cmp(out, gguf_file("tiny", "q4_0"), shallow=False)   # verbose does not change the output
    printed = capsys.readouterr().out
    values = hf_values(ckpt)
    assert set(s.errors) == set(values)
    assert s.types == {"F32": 2 * 4 + 1, "Q8_0": 1, "Q4_0": 2 * 7}
    for name, x in values.items():
        qtype = expected_type(name, x.ndim, "q4_0", tied=True)
        if qtype == T.F32:
            assert s.errors[name] == 0.0
            continue
        deq = gguf.quants.dequantize(gguf.quants.quantize(x, qtype), qtype).astype(np.float64)
        rel = float(np.sqrt(np.sum((deq - x) ** 2) / np.sum(x.astype(np.float64) ** 2)))
        assert abs(s.errors[name] - rel) <= 1e-6 * rel, (name, s.errors[name], rel)
        assert (0.05 < rel < 0.2) if qtype == T.Q4_0 else (0.001 < rel < 0.01), (name, rel)
        line = next(ln for ln in printed.splitlines() if ln.split()[:2] == [name, qtype.name])
        assert line.endswith(f"rel. RMS error {s.errors[name]:.2e}")


# ------------------------------------------------------------------ the synthetic checkpoints

def test_low_memory_checkpoint_is_byte_identical(tmp_path):
    # vocab * hidden > the 4M-element generation chunk, so the embedding and LM head are chunked
    kw = dict(hidden=64, intermediate=96, layers=1, heads=2, kv_heads=1, head_dim=32, vocab=70000,
              tied=False, shards=2, dtype="bf16", seed=7)
    a = make_checkpoint(tmp_path / "a", **kw)
    b = make_checkpoint(tmp_path / "b", low_memory=True, **kw)
    names = only_files(a)
    assert names == only_files(b) and "model.safetensors.index.json" in names
    for n in names:
        assert filecmp.cmp(a / n, b / n, shallow=False), n
