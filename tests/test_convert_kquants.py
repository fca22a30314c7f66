"""`edgeqwen convert --type q4_k_m | q5_k_m | q6_k`: K-quant blocks and llama.cpp's per-tensor mixes.

Without llama.cpp:
  * block layout (sizes from gguf.GGML_QUANT_SIZES) and round trips through gguf-py's
    `dequantize` on random and adversarial rows (all-zero, constant, huge / tiny magnitudes,
    negative-only, outliers, per-row scales), with relative RMS bounds per type;
  * the helpers the bit-exactness rests on: ggml's nearest_int (ties to even) and fp32->fp16
    (numpy's round-to-nearest-even cast on normals, subnormals, halfway cases, overflow);
  * the type policy on Qwen3-0.6B's shapes (which layers get Q6_K) and the fallbacks.
With llama_cpp:
  * the quantizers against ggml's own `quantize_row_q{4,5,6}_K_ref` from the libggml-base that
    llama-cpp-python ships (called with ctypes), byte for byte, including NaN/inf/overflow rows;
  * whole files: our F32 conversion quantized by `llama_model_quantize` (Q4_K_M, Q5_K_M, Q6_K)
    against our direct conversion of the same checkpoint: same tensors, types and bytes, on
    the 256-wide fixture (K blocks), a 28-layer 64-wide one (the use_more_bits layer pattern of
    Qwen3-0.6B; Q5_0 / Q5_1 / Q8_0 / F16 fallbacks) and the untied one (output vs token_embd);
  * our q4_k_m file runs in llama.cpp and in edgeqwen, with close logits (as in test_kquants.py:
    same top-1 up to near-ties, max|diff| <= 3% of max|logit|).
"""
import ctypes
from pathlib import Path

import gguf
import numpy as np
import pytest
from click.testing import CliRunner

import edgeqwen
from converters import hf_to_gguf as h2g
from converters import kquants
from converters.synthetic import make_checkpoint
from edgeqwen.cli import main as cli_main

from conftest import LLAMA_CPP_MISSING, assert_greedy_generation, import_reference, missing_reference
from gguf_spec_reader import read_gguf

T = gguf.GGMLQuantizationType
KTYPES = [T.Q4_K, T.Q5_K, T.Q6_K]
MIXES = {"q4_k_m": "Q4_K_M", "q5_k_m": "Q5_K_M", "q6_k": "Q6_K"}
# relative RMS error of a N(0, 1) row (measured: 0.071, 0.036, 0.018)
RMS_BOUND = {T.Q4_K: 0.08, T.Q5_K: 0.042, T.Q6_K: 0.021}
# 28 layers like Qwen3-0.6B, 64 wide (K types fall back to Q5_0 / Q5_1 / Q8_0, so the attn_v and
# ffn_down layer pattern shows in the types), 80-wide attention output rows (F16 fallback)
DEEP = dict(hidden=64, intermediate=96, layers=28, heads=2, kv_heads=1, head_dim=40, tied=True, seed=7)
PROMPT = [785, 3974, 13876, 38835, 151644, 872, 198, 14990, 1879, 0, 11, 99]
TOL = 2.5e-2   # ours vs llama.cpp on the Q4_K_M file: measured 8.6e-3 (test_kquants.LLAMA_TOL)
TIE = 3e-3     # a top-1 mismatch only where llama.cpp's top two are this close


def rows(variant, n=48, k=512, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, k)).astype(np.float32)
    if variant == "random":
        return x
    if variant == "zero":
        return np.zeros_like(x)
    if variant == "constant":
        return np.full_like(x, 0.75)
    if variant == "huge":
        return x * np.float32(3e4)
    if variant == "tiny":
        return x * np.float32(1e-3)
    if variant == "negative":
        return -np.abs(x) - np.float32(0.5)
    if variant == "outliers":
        return np.where(rng.random(x.shape) < 0.01, x * 100, x).astype(np.float32)
    if variant == "row_scales":   # rows 1e-2 .. 1e4 (far smaller rows give float16-subnormal scales d)
        return x * (np.float32(10) ** rng.integers(-2, 5, (n, 1))).astype(np.float32)
    raise ValueError(variant)


# ------------------------------------------------------------------ quantizers, without llama.cpp

@pytest.mark.parametrize("qtype", KTYPES, ids=lambda q: q.name)
def test_block_layout(qtype):
    assert kquants.BLOCK_BYTES[qtype] == gguf.GGML_QUANT_SIZES[qtype][1] and gguf.GGML_QUANT_SIZES[qtype][0] == 256
    x = rows("random", n=3, k=768)
    raw = kquants.quantize(x, qtype)
    assert raw.dtype == np.uint8 and raw.shape == (3, 3 * kquants.BLOCK_BYTES[qtype])
    assert kquants.quantize(x.reshape(3, 3, 256), qtype).tobytes() == raw.tobytes()   # blocks are independent
    assert kquants.quantize(x[1], qtype).tobytes() == raw[1].tobytes()
    with pytest.raises(ValueError, match="multiple of 256"):
        kquants.quantize(np.zeros((2, 100), np.float32), qtype)


@pytest.mark.parametrize("variant", ["random", "zero", "constant", "huge", "tiny", "negative", "outliers", "row_scales"])
@pytest.mark.parametrize("qtype", KTYPES, ids=lambda q: q.name)
def test_round_trip_through_gguf_dequantize(qtype, variant):
    x = rows(variant)
    raw = kquants.quantize(x, qtype)
    deq = gguf.quants.dequantize(raw, qtype).reshape(x.shape).astype(np.float64)
    assert np.all(np.isfinite(deq))
    if variant == "zero":
        assert not deq.any() and not raw.any()
        return
    err = np.sqrt(((deq - x) ** 2).mean(1)) / np.sqrt((x.astype(np.float64) ** 2).mean(1))   # per row
    bound = {"constant": 1e-3, "outliers": 2 * RMS_BOUND[qtype], "tiny": 1.25 * RMS_BOUND[qtype]}
    assert err.max() <= bound.get(variant, RMS_BOUND[qtype]), err.max()
    if variant == "negative":            # no value may come back positive (the mins carry the offset)
        assert deq.max() <= 0.0


def test_nearest_int_and_fp16_rounding_helpers():
    rng = np.random.default_rng(3)
    ints = rng.integers(-2**21, 2**21, 500)
    vals = np.concatenate([ints + 0.5, ints - 0.5, ints + rng.uniform(-0.49, 0.49, 500),
                           [0.0, -0.0, 0.5, 1.5, 2.5, -2.5, 4194303.0]]).astype(np.float32)
    assert [kquants.nearest_int(v) for v in vals] == np.rint(vals).astype(np.int64).tolist()   # ties to even

    # float16: normals, subnormals, exact halfway cases between two float16s, overflow to inf
    h = rng.integers(0, 0x7C00, 400).astype(np.uint16)
    f = h.view(np.float16).astype(np.float32)
    nxt = (h + 1).view(np.float16).astype(np.float32)
    vals = np.concatenate([f, (f + nxt) / 2, f * np.float32(1.0001), rng.standard_normal(200).astype(np.float32) * 1e-6,
                           [65504.0, 65519.0, 65520.0, 1e6, np.inf, 0.0, -0.0, 5.9604645e-08, 2.9802322e-08]]
                          ).astype(np.float32)
    vals = np.concatenate([vals, -vals])
    with np.errstate(over="ignore"):
        want = vals.astype(np.float16).view(np.uint16).tolist()
    assert [kquants.fp32_to_fp16(v) for v in vals] == want
    assert kquants.fp32_to_fp16(np.float32(np.nan)) == 0x7E00          # ggml's NaN


# ------------------------------------------------------------------ type policy

def test_policy_on_qwen3_0_6b_shapes():
    """Qwen3-0.6B (28 layers, tied): llama.cpp's Q4_K_M gives attn_v and ffn_down Q6_K in layers
    0-2, 24-27 and every third from 5, token_embd (the output) Q6_K, everything else Q4_K."""
    f = h2g.tensor_type
    more = {0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 24, 25, 26, 27}
    assert {i for i in range(28) if h2g.use_more_bits(i, 28)} == more
    for mix, base in (("q4_k_m", T.Q4_K), ("q5_k_m", T.Q5_K), ("q6_k", T.Q6_K)):
        assert f("token_embd.weight", (151936, 1024), mix, True, n_layers=28) == T.Q6_K
        assert f("token_embd.weight", (151936, 1024), mix, False, n_layers=28) == base
        assert f("output.weight", (151936, 1024), mix, False, n_layers=28) == T.Q6_K
        assert f("output_norm.weight", (1024,), mix, True, n_layers=28) == T.F32
        for i in range(28):
            for part, shape in (("attn_q", (2048, 1024)), ("attn_k", (1024, 1024)), ("attn_output", (1024, 2048)),
                                ("ffn_gate", (3072, 1024)), ("ffn_up", (3072, 1024))):
                assert f(f"blk.{i}.{part}.weight", shape, mix, True, n_layers=28) == base
            for part, shape in (("attn_v", (1024, 1024)), ("ffn_down", (1024, 3072))):
                want = T.Q6_K if i in more else base
                assert f(f"blk.{i}.{part}.weight", shape, mix, True, n_layers=28) == want, (mix, i, part)
            assert f(f"blk.{i}.attn_k_norm.weight", (128,), mix, True, n_layers=28) == T.F32
    # rows not a multiple of 256: Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K and the output -> Q8_0, else F16
    assert f("blk.0.attn_q.weight", (64, 96), "q4_k_m", True, n_layers=28) == T.Q5_0
    assert f("blk.3.attn_q.weight", (64, 96), "q5_k_m", True, n_layers=28) == T.Q5_1
    assert f("blk.0.attn_v.weight", (64, 96), "q4_k_m", True, n_layers=28) == T.Q8_0
    assert f("blk.3.attn_q.weight", (64, 96), "q6_k", True, n_layers=28) == T.Q8_0
    assert f("token_embd.weight", (1000, 96), "q4_k_m", True, n_layers=28) == T.Q8_0
    assert f("token_embd.weight", (1000, 96), "q4_k_m", False, n_layers=28) == T.Q5_0
    for mix in MIXES:
        assert f("blk.3.ffn_down.weight", (64, 80), mix, True, n_layers=28) == T.F16
        assert f("token_embd.weight", (1000, 80), mix, True, n_layers=28) == T.F16
    with pytest.raises(ValueError, match="layer count"):
        f("blk.0.attn_v.weight", (1024, 1024), "q4_k_m", True)


def test_cli_writes_a_k_mix(checkpoints, tmp_path):
    out = tmp_path / "m.gguf"
    r = CliRunner().invoke(cli_main, ["convert", str(checkpoints["tiny"]), "-o", str(out), "--type", "Q6_K", "-v"])
    assert r.exit_code == 0, r.output
    g = read_gguf(out)
    assert g.value("general.file_type") == gguf.LlamaFileType.MOSTLY_Q6_K
    lines = [ln.split() for ln in r.stdout.splitlines() if "rel. RMS error" in ln]
    assert [ln[0] for ln in lines] == list(g.tensors)
    assert {ln[1] for ln in lines} == {"Q8_0", "F32"}          # 64-wide rows: Q6_K falls back to Q8_0
    assert "Q8_0" in r.stderr and "wrote" in r.stderr


# ------------------------------------------------------------------ against llama.cpp

def _ggml_base():
    llama_cpp = import_reference("llama_cpp", LLAMA_CPP_MISSING)
    libs = sorted((Path(llama_cpp.__file__).parent / "lib").glob("*ggml-base.*"))
    if not libs:
        missing_reference("llama-cpp-python without a separate libggml-base library")
    return ctypes.CDLL(str(libs[0]))


def ggml_quantize(lib, x, qtype):
    fn = getattr(lib, f"quantize_row_{qtype.name[:2].lower()}_K_ref")
    x = np.ascontiguousarray(x, np.float32)
    out = np.zeros(x.size // 256 * kquants.BLOCK_BYTES[qtype], np.uint8)
    fn(ctypes.c_void_p(x.ctypes.data), ctypes.c_void_p(out.ctypes.data), ctypes.c_int64(x.size))
    return out


def adversarial_rows():
    rng = np.random.default_rng(11)
    x = (rng.standard_t(3, (96, 256)) * 10.0 ** rng.uniform(-6, 5, (96, 1))).astype(np.float32)
    x[::5, :64] = 0.0                                     # zero sub-blocks next to non-zero ones
    x[1::5] = -np.abs(x[1::5])
    x[2::5, 100] *= 1e4                                   # a single outlier
    x[3] = 1e30                                           # scales overflow float16 -> inf
    x[4] = 1e-30                                          # scales underflow float16 -> 0
    x[6, 7], x[7, 44], x[8, 0] = np.nan, np.inf, -np.inf
    x[9] = 0.3                                            # constant
    x[11] = np.where(np.arange(256) % 2, 1.0, 0.0)        # two levels
    # and volume: a wrong step count in the scale search changes only ~0.5% of Gaussian blocks
    many = [rows("random", 1024, 256), rng.uniform(-1, 1, (512, 256)), rng.standard_t(2, (512, 256)) * 0.02]
    return np.concatenate([x, rows("tiny", 8, 256), rows("constant", 2, 256), *many]).astype(np.float32)


@pytest.mark.parametrize("qtype", KTYPES, ids=lambda q: q.name)
def test_quantizers_are_bit_exact_with_ggml(qtype):
    lib = _ggml_base()
    x = adversarial_rows()
    ours = kquants.quantize(x, qtype).reshape(-1, kquants.BLOCK_BYTES[qtype])
    ref = ggml_quantize(lib, x, qtype).reshape(ours.shape)
    bad = np.flatnonzero((ours != ref).any(1))
    assert bad.size == 0, f"{bad.size} of {len(ours)} blocks differ from ggml, first rows {bad[:10].tolist()}"


@pytest.fixture(scope="module")
def deep_checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("deep") / "deep", **DEEP)


@pytest.fixture(scope="module")
def files(checkpoints, deep_checkpoint, gguf_file, tmp_path_factory):
    """files(checkpoint, mix, who) -> our direct conversion (who="ours") or llama.cpp's
    quantization of our F32 conversion (who="llama"), memoized."""
    root = tmp_path_factory.mktemp("kmix")
    made = {}

    def ckpt(name):
        return deep_checkpoint if name == "deep" else checkpoints[name]

    def get(name, mix, who):
        key = (name, mix, who)
        if key in made:
            return made[key]
        out = root / f"{name}-{mix}-{who}.gguf"
        if who == "ours":
            h2g.convert(ckpt(name), out, mix, progress=False)
        else:
            llama_cpp = import_reference("llama_cpp", LLAMA_CPP_MISSING)
            if name == "deep":
                src = root / "deep-f32.gguf"
                if not src.exists():
                    h2g.convert(ckpt(name), src, "f32", progress=False)
            else:
                src = gguf_file(name, "f32")
            params = llama_cpp.llama_model_quantize_default_params()
            params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{MIXES[mix]}")
            assert llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), params) == 0
        made[key] = out
        return out

    return get


# (checkpoint, mix) -> the tensor types llama.cpp picks
CASES = {
    ("k256", "q4_k_m"): {"F32", "Q4_K", "Q6_K"},
    ("k256", "q5_k_m"): {"F32", "Q5_K", "Q6_K"},
    ("k256", "q6_k"): {"F32", "Q6_K"},
    ("deep", "q4_k_m"): {"F32", "Q5_0", "Q8_0", "F16"},
    ("deep", "q5_k_m"): {"F32", "Q5_1", "Q8_0", "F16"},
    ("untied", "q4_k_m"): {"F32", "Q5_0", "Q8_0"},
}


@pytest.mark.parametrize("case", list(CASES), ids=lambda c: "-".join(c))
def test_conversion_is_identical_to_llama_cpp_quantize(files, case):
    import_reference("llama_cpp", LLAMA_CPP_MISSING)
    ours, ref = read_gguf(files(*case, "ours")), read_gguf(files(*case, "llama"))
    assert ours.value("general.file_type") == ref.value("general.file_type") == getattr(
        gguf.LlamaFileType, f"MOSTLY_{MIXES[case[1]]}")
    assert sorted(ours.tensors) == sorted(ref.tensors)
    assert {t.type.name for t in ref.tensors.values()} == CASES[case]
    wrong_type = {n: (t.type.name, ref.tensors[n].type.name) for n, t in ours.tensors.items() if t.type != ref.tensors[n].type}
    assert not wrong_type, f"(ours, llama.cpp): {wrong_type}"
    differ = {}
    for name, t in ours.tensors.items():
        a, b = ours.data(name), ref.data(name)
        if a != b:
            bs = gguf.GGML_QUANT_SIZES[t.type][1]
            blocks = (np.frombuffer(a, np.uint8).reshape(-1, bs) != np.frombuffer(b, np.uint8).reshape(-1, bs)).any(1)
            differ[name] = f"{t.type.name}: {int(blocks.sum())} of {blocks.size} blocks"
    assert not differ, differ
    if case[0] == "deep":      # the use_more_bits layers of a 28-layer model (Q6_K -> Q8_0 at 64 wide)
        for part in ("attn_v", "ffn_down"):
            hi = {i for i in range(28) if ours.tensors[f"blk.{i}.{part}.weight"].type == T.Q8_0}
            assert hi == {0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 24, 25, 26, 27}, part


def test_q4_k_m_file_runs_in_llama_cpp_and_edgeqwen(files):
    llama_cpp = import_reference("llama_cpp", LLAMA_CPP_MISSING)
    path = files("k256", "q4_k_m", "ours")
    model = edgeqwen.load(path, ctx_size=64)
    ours = model.logits(PROMPT).astype(np.float64)
    r = assert_greedy_generation(model, PROMPT, 4)
    assert r.token_ids[0] == int(ours[-1].argmax())

    m = llama_cpp.Llama(str(path), n_ctx=64, logits_all=True, verbose=False, n_threads=2)
    m.eval(PROMPT)
    lref = np.array(m.scores[:len(PROMPT)], dtype=np.float64)
    scale = np.abs(lref).max()
    assert np.all(np.isfinite(lref)) and scale > 0
    top = ours.argmax(-1)
    margin = lref.max(-1) - lref[np.arange(len(PROMPT)), top]
    assert ((top == lref.argmax(-1)) | (margin <= TIE * scale)).all(), margin / scale
    assert np.abs(ours - lref).max() <= TOL * scale, np.abs(ours - lref).max() / scale    # measured 8.6e-3
    m.reset()
    out = m.create_completion(PROMPT, max_tokens=4, temperature=0.0)
    assert out["usage"]["completion_tokens"] >= 1 or out["choices"][0]["finish_reason"] == "stop"
