"""Qwen3 MoE (`qwen3moe`, Qwen3MoeForCausalLM): tiny random checkpoints with 8 experts against
independent references.

* transformers' Qwen3MoeForCausalLM in float32: logits and greedy tokens (top-2 with
  norm_topk_prob, top-8 without);
* llama.cpp's own convert_hf_to_gguf.py: our F32/F16/Q8_0 files key by key and byte by byte;
* llama.cpp's quantizer (llama_model_quantize, Q4_K_M) on our F32 file: every tensor's type and
  bytes equal our q4_k_m conversion (the 8-expert rules for attn_k/attn_v/attn_output included);
* llama.cpp (llama_cpp) running our MoE files (F32, Q4_K_M): logits;
* `edgeqwen batch --parallel 2` and chat on an MoE file: transformers' greedy continuations;
* bad MoE files: one clear line.
"""
from __future__ import annotations

import json
import subprocess
import sys

import gguf
import numpy as np
import pytest
from click.testing import CliRunner

import edgeqwen
from conftest import LLAMA_CPP_MISSING, import_reference, llama_cpp_source, missing_reference
from converters.hf_to_gguf import convert
from converters.synthetic import make_checkpoint
from edgeqwen.cli import main as cli_main
from gguf_spec_reader import read_gguf
from test_gguf_model import _PlainGGUFReader, load_error, write_gguf

T = gguf.GGMLQuantizationType
VT = gguf.GGUFValueType
torch = import_reference("torch", "torch is not installed (pip install -e .[test])", module_level=True)
from transformers import AutoTokenizer, Qwen3MoeForCausalLM  # noqa: E402

BASE = dict(hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2, head_dim=32, experts=8, expert_ff=32)
CHECKPOINTS = {
    "top2": dict(BASE, experts_used=2, norm_topk_prob=True, tied=False, seed=11),    # as Qwen3-30B-A3B: untied
    "top8": dict(BASE, experts_used=8, norm_topk_prob=False, tied=False, seed=12),
    # K-quant widths (multiples of 256) for llama-quantize's Q4_K_M
    "k256": dict(hidden=256, intermediate=512, layers=2, heads=4, kv_heads=2, head_dim=64, experts=8,
                 expert_ff=256, experts_used=2, norm_topk_prob=True, tied=True, seed=13),
}
PROMPT = [785, 3974, 13876, 38835, 151644, 872, 198, 14990, 1879, 0, 11, 99]
LLAMA_CPP_TYPES = ("f32", "f16", "q8_0")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("moe")
    made = {}

    def get(name):
        if name not in made:
            made[name] = make_checkpoint(root / name, **CHECKPOINTS[name])
        return made[name]
    return get


@pytest.fixture(scope="module")
def moe_gguf(ckpt, tmp_path_factory):
    root = tmp_path_factory.mktemp("moe_gguf")
    made = {}

    def get(name, out_type):
        if (name, out_type) not in made:
            made[name, out_type] = convert(ckpt(name), root / f"{name}-{out_type}.gguf", out_type, progress=False).out
        return made[name, out_type]
    return get


@pytest.fixture(scope="module")
def hf_model(ckpt):
    made = {}

    def get(name):
        if name not in made:
            made[name] = Qwen3MoeForCausalLM.from_pretrained(ckpt(name), dtype=torch.float32).eval()
        return made[name]
    return get


def hf_greedy(model, ids, n):
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, min_new_tokens=n,
                             pad_token_id=151643)
    return out[0, len(ids):].tolist()


# ---------------------------------------------------------------- fidelity: transformers

@pytest.mark.parametrize("name", ["top2", "top8"])
def test_logits_and_greedy_tokens_equal_transformers(name, ckpt, moe_gguf, hf_model):
    hf = hf_model(name)
    with torch.no_grad():
        ref = hf(torch.tensor([PROMPT])).logits[0].numpy()
    m = edgeqwen.load(moe_gguf(name, "f32"), ctx_size=64)
    ours = m.logits(PROMPT)
    assert np.abs(ours - ref).max() <= 1e-3 * np.abs(ref).max(), np.abs(ours - ref).max() / np.abs(ref).max()
    # the routing really is sparse and data-dependent: different tokens pick different experts
    h = np.random.default_rng(0).standard_normal((16, 64)).astype(np.float32)
    idx, wts = m.model.moe.routing(m.file.layers[0].moe, h)
    k = CHECKPOINTS[name]["experts_used"]
    assert idx.shape == (16, k) and len({tuple(sorted(r)) for r in idx.tolist()}) > (1 if k < 8 else 0)
    if CHECKPOINTS[name]["norm_topk_prob"]:
        assert np.allclose(wts.sum(1), 1, atol=1e-6)
    else:
        assert (wts.sum(1) < 1 - 1e-4).any() or k == 8
    r = m.generate(PROMPT, max_tokens=32, temperature=0)
    assert r.token_ids == hf_greedy(hf, PROMPT, 32)


# ---------------------------------------------------------------- converter: llama.cpp's

_DRIVER = """
import json, runpy, sys
script, jobs = sys.argv[1], json.loads(sys.argv[2])
for model, outtype, outfile in jobs:
    sys.argv = [script, model, "--outtype", outtype, "--outfile", outfile]
    runpy.run_path(script, run_name="__main__")
"""


@pytest.fixture(scope="module")
def _llama_cpp_job(ckpt, tmp_path_factory):
    """llama.cpp's converter on the top2 checkpoint, in a background process (None without its source)."""
    src = llama_cpp_source()
    if src is None:
        yield None
        return
    root = tmp_path_factory.mktemp("moe_llama_cpp")
    outs = {t: root / f"top2-{t}.gguf" for t in LLAMA_CPP_TYPES}
    log = open(root / "log.txt", "w+")
    proc = subprocess.Popen([sys.executable, "-c", _DRIVER, str(src / "convert_hf_to_gguf.py"),
                             json.dumps([[str(ckpt("top2")), t, str(p)] for t, p in outs.items()])],
                            cwd=src, stdout=log, stderr=subprocess.STDOUT)
    yield proc, outs, log
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    log.close()


@pytest.fixture(scope="module", autouse=True)
def _start_llama_cpp_early(request):
    """Start llama.cpp's conversions with the module's first test (they run beside ours on the other core)."""
    if any(getattr(item, "originalname", None) == "test_converter_identical_to_llama_cpp"
           for item in request.session.items):
        request.getfixturevalue("_llama_cpp_job")


@pytest.fixture(scope="module")
def llama_cpp_converted(_llama_cpp_job):
    if _llama_cpp_job is None:
        missing_reference("llama.cpp source not available (see conftest.llama_cpp_source)")
    proc, outs, log = _llama_cpp_job
    rc = proc.wait(timeout=900)
    log.seek(0)
    assert rc == 0, f"llama.cpp's converter failed:\n{log.read()[-3000:]}"
    return outs


@pytest.mark.parametrize("out_type", LLAMA_CPP_TYPES)
def test_converter_identical_to_llama_cpp(out_type, llama_cpp_converted, moe_gguf):
    ref = read_gguf(llama_cpp_converted[out_type])
    ours = read_gguf(moe_gguf("top2", out_type))
    assert ref.value("general.architecture") == ours.value("general.architecture") == "qwen3moe"
    assert sorted(ours.kv) == sorted(ref.kv)
    for key, (types, value) in ref.kv.items():
        o_types, o_value = ours.kv[key]
        assert o_types == types, key
        if isinstance(value, np.ndarray):
            assert np.array_equal(o_value, value), key
        else:
            assert o_value == value, key
    assert ref.value("qwen3moe.expert_count") == 8 and ref.value("qwen3moe.expert_used_count") == 2
    assert sorted(ours.tensors) == sorted(ref.tensors)
    assert ref.tensors["blk.0.ffn_gate_exps.weight"].shape == [64, 32, 8]
    for name, t in ref.tensors.items():
        o = ours.tensors[name]
        assert (o.type, o.shape, o.nbytes) == (t.type, t.shape, t.nbytes), name
        assert ours.data(name) == ref.data(name), f"{name}: tensor data differs"


def test_q4_k_m_types_and_bytes_equal_llama_quantize(moe_gguf, tmp_path):
    llama_cpp = import_reference("llama_cpp", LLAMA_CPP_MISSING)
    out = tmp_path / "llama-q4_k_m.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = gguf.LlamaFileType.MOSTLY_Q4_K_M
    params.nthread = 2
    assert llama_cpp.llama_model_quantize(str(moe_gguf("k256", "f32")).encode(), str(out).encode(), params) == 0
    ref, ours = read_gguf(out), read_gguf(moe_gguf("k256", "q4_k_m"))
    assert sorted(ours.tensors) == sorted(ref.tensors)
    types = {n: t.type for n, t in ref.tensors.items()}
    # llama.cpp's MoE rules as written in llama-quant.cpp (independently of converters/):
    assert types["blk.0.ffn_gate_inp.weight"] == T.F32                       # router never quantized
    assert types["blk.1.ffn_down_exps.weight"] == T.Q6_K                      # use_more_bits(1, 2)
    assert types["blk.0.ffn_down_exps.weight"] == T.Q4_K                      # not use_more_bits(0, 2)
    assert types["blk.0.ffn_gate_exps.weight"] == types["blk.0.ffn_up_exps.weight"] == T.Q4_K
    assert types["blk.0.attn_v.weight"] == types["blk.0.attn_k.weight"] == T.Q8_0   # n_expert == 8
    assert types["blk.0.attn_output.weight"] == T.Q5_K
    for name, t in ref.tensors.items():
        assert (ours.tensors[name].type, ours.tensors[name].shape) == (t.type, t.shape), name
        assert ours.data(name) == ref.data(name), f"{name} ({t.type.name}): bytes differ from llama-quantize"


# ---------------------------------------------------------------- llama.cpp runs our MoE files

@pytest.mark.parametrize("name,out_type,tol", [("top2", "f32", 1e-3), ("k256", "q4_k_m", 5e-2)])
def test_llama_cpp_logits_on_our_moe_files(name, out_type, tol, moe_gguf):
    llama_cpp = import_reference("llama_cpp", LLAMA_CPP_MISSING)
    path = moe_gguf(name, out_type)
    lm = llama_cpp.Llama(str(path), n_ctx=64, logits_all=True, verbose=False, n_threads=2)
    lm.eval(PROMPT)
    ref = np.array(lm.scores[:len(PROMPT)], dtype=np.float64)
    ours = edgeqwen.load(path, ctx_size=64).logits(PROMPT)
    scale = np.abs(ref).max()
    assert np.abs(ours - ref).max() <= tol * scale, np.abs(ours - ref).max() / scale


# ---------------------------------------------------------------- above the model: batch, chat, info

def test_batch_parallel_2_and_chat_equal_transformers(ckpt, moe_gguf, hf_model, tmp_path):
    path, hf = moe_gguf("top2", "f32"), hf_model("top2")
    tok = AutoTokenizer.from_pretrained(ckpt("top2"))
    prompts = ["The capital of France is", "Once upon a time"]
    (tmp_path / "in.txt").write_text("\n".join(prompts) + "\n")
    res = CliRunner().invoke(cli_main, ["batch", str(tmp_path / "in.txt"), "-m", str(path), "-o",
                                        str(tmp_path / "out.jsonl"), "--parallel", "2", "--raw", "-n", "12",
                                        "--temperature", "0", "-c", "64"])
    assert res.exit_code == 0, res.output
    recs = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(recs) == 2
    for r in recs:
        p = prompts[int(r["id"]) - 1] if isinstance(r["id"], int) or str(r["id"]).isdigit() else None
        ids = tok(p)["input_ids"]
        assert r["content"] == tok.decode(hf_greedy(hf, ids, 12)), r

    msgs = [{"role": "user", "content": "Hello, who are you?"}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, enable_thinking=False, tokenize=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    m = edgeqwen.load(path, ctx_size=96)
    c = m.chat(msgs, enable_thinking=False, max_tokens=10, temperature=0)
    want = hf_greedy(hf, list(ids), 10)
    assert c.completion_tokens == 10
    assert c.content == tok.decode(want).strip()


def test_info_shows_experts_and_active_memory(moe_gguf):
    res = CliRunner().invoke(cli_main, ["info", str(moe_gguf("top2", "f32"))])
    assert res.exit_code == 0, res.output
    assert "qwen3moe" in res.output
    assert "8 (2 per token, weights renormalised), expert ffn 32" in res.output
    assert "active parameters" in res.output and "MiB per token (active set) of" in res.output


# ---------------------------------------------------------------- bad MoE files: one clear line

@pytest.fixture(scope="module")
def moe_reference(moe_gguf):
    r = _PlainGGUFReader(moe_gguf("top2", "q8_0"))
    meta = {}
    for key, f in r.fields.items():
        if not key.startswith("GGUF."):
            meta[key] = (f.contents(), f.types[0], f.types[-1] if f.types[0] == VT.ARRAY else None)
    tensors = []
    for t in r.tensors:
        raw = np.array(t.data).view(np.uint8)
        outer = tuple(int(d) for d in reversed(t.shape[1:])) if len(t.shape) > 1 else (1,)
        tensors.append((t.name, T(t.tensor_type), tuple(int(d) for d in reversed(t.shape)),
                        raw.reshape(*outer, -1), 0))     # 3-D stays 3-D for the writer
    return meta, tensors


def _write(tmp_path, ref, **kw):
    meta, tensors = ref
    return write_gguf(tmp_path / "bad.gguf", meta, tensors, arch="qwen3moe", **kw)


def test_bad_moe_files_are_refused_with_one_line(moe_reference, tmp_path):
    ok = _write(tmp_path, moe_reference)
    assert edgeqwen.load(ok, ctx_size=32).logits(PROMPT[:3]).shape == (3, 151936)   # the unmodified copy runs

    p = _write(tmp_path, moe_reference, set_keys={"qwen3moe.expert_used_count": (9, VT.UINT32)})
    assert load_error(p, api=True) == f"{p}: qwen3moe.expert_used_count = 9 is more than qwen3moe.expert_count = 8"

    p = _write(tmp_path, moe_reference, drop_tensors=("blk.1.ffn_gate_inp.weight",))
    assert load_error(p) == f"{p}: missing tensor blk.1.ffn_gate_inp.weight (block_count=2)"

    meta, tensors = moe_reference
    name = "blk.0.ffn_up_exps.weight"
    raw = next(t[3] for t in tensors if t[0] == name)        # (8 experts, 32 rows, bytes per row of 64) Q8_0
    p = _write(tmp_path, moe_reference, replace={name: (np.ascontiguousarray(raw[:7]), T.Q8_0)})
    msg = load_error(p)
    assert msg == f"{p}: tensor {name} has shape [64, 32, 7], expected [64, 32, 8] from the metadata", msg

    p = _write(tmp_path, moe_reference, drop_keys=("qwen3moe.expert_count",))
    assert load_error(p) == f"{p}: missing metadata key qwen3moe.expert_count"
    res = CliRunner().invoke(cli_main, ["info", str(p)])
    assert res.exit_code != 0 and "qwen3moe.expert_count" in res.output and "Traceback" not in res.output
