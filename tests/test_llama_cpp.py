"""Interop with llama.cpp itself (llama-cpp-python): it loads and runs the files our converter
writes, edgeqwen runs the files llama.cpp's converter writes, and the logits agree.

Tolerances: llama.cpp computes with float16 KV cache and float16 activations in places, so
against it we ask for the same top-1 at every position (up to ties within the tolerance) and max|diff| <= 3% of max|logit|
(measured: ~1% on these fixtures)."""
import subprocess
import sys

import numpy as np
import pytest

import edgeqwen
from conftest import llama_cpp_source

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install -e .[llama])")

PROMPT = [785, 3974, 13876, 38835, 151644, 872, 198, 14990, 1879, 0, 11, 99]
TOL = 3e-2


def llama_logits(path, ids):
    m = llama_cpp.Llama(str(path), n_ctx=64, logits_all=True, verbose=False, n_threads=2)
    m.eval(ids)
    return np.array(m.scores[:len(ids)], dtype=np.float64), m


def assert_close(a, b):
    """Same top-1 at every position, except where b's top two are within the tolerance (a tie
    that float16 rounding may break either way); max|a - b| <= TOL * max|b|."""
    scale = np.abs(b).max()
    top_a = a.argmax(-1)
    rows = np.arange(len(b))
    margin = b.max(-1) - b[rows, top_a]
    assert ((top_a == b.argmax(-1)) | (margin <= TOL * scale)).all(), margin / scale
    assert np.abs(a - b).max() <= TOL * scale, np.abs(a - b).max() / scale


@pytest.mark.parametrize("name,out_type", [("tiny", "f16"), ("tiny", "q8_0"), ("untied", "f16"),
                                           ("untied", "q8_0"), ("tiny", "q4_0"), ("yarn", "f32")])
def test_llama_cpp_runs_our_files_and_agrees(name, out_type, gguf_file):
    path = gguf_file(name, out_type)
    ref, m = llama_logits(path, PROMPT)
    ours = edgeqwen.load(path, ctx_size=64).logits(PROMPT)
    assert_close(ours, ref)
    out = m.create_completion("Hello", max_tokens=8, temperature=0)   # and it generates
    assert out["usage"]["completion_tokens"] >= 1


@pytest.mark.parametrize("out_type", ["f16", "q8_0"])
def test_llama_cpp_matches_transformers_on_our_files(out_type, checkpoints, gguf_file):
    torch = pytest.importorskip("torch")
    from transformers import Qwen3ForCausalLM
    hf = Qwen3ForCausalLM.from_pretrained(checkpoints["tiny"], dtype=torch.float32).eval()
    with torch.no_grad():
        ref = hf(torch.tensor([PROMPT])).logits[0].double().numpy()
    ours_in_llama, _ = llama_logits(gguf_file("tiny", out_type), PROMPT)
    assert_close(ours_in_llama, ref)


@pytest.mark.parametrize("out_type", ["f16", "q8_0"])
def test_we_run_llama_cpp_converted_files(out_type, checkpoints, tmp_path):
    src = llama_cpp_source()
    if src is None:
        pytest.skip("llama.cpp's convert_hf_to_gguf.py is not available (no EDGEQWEN_LLAMA_CPP_SRC, no PyPI)")
    out = tmp_path / f"llama-{out_type}.gguf"
    subprocess.run([sys.executable, str(src / "convert_hf_to_gguf.py"), str(checkpoints["untied"]),
                    "--outtype", out_type, "--outfile", str(out)], check=True, capture_output=True)
    ref, _ = llama_logits(out, PROMPT)
    model = edgeqwen.load(out, ctx_size=64)
    assert_close(model.logits(PROMPT), ref)
    assert model.generate(PROMPT, max_tokens=4, temperature=0).finish_reason in ("stop", "length")


def test_we_run_llama_cpp_quantized_q4_0(gguf_file, tmp_path):
    """A Q4_0 file written by llama.cpp's own quantizer (llama_model_quantize) from our F16 file."""
    out = tmp_path / "q4_0-by-llama.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0
    assert llama_cpp.llama_model_quantize(str(gguf_file("untied", "f16")).encode(), str(out).encode(), params) == 0
    ref, _ = llama_logits(out, PROMPT)
    assert_close(edgeqwen.load(out, ctx_size=64).logits(PROMPT), ref)
