"""The aarch64 subset: what .ci/arm/run.sh runs under qemu-user (with tests/test_cpu.py).

  * every supported weight type's matmul kernel against gguf-py's numpy dequantization (the
    references of test_quants.py / test_kquants.py), on read-only blocks as the file's mmap gives
    them (so the forward below reuses the compiled kernels), decode and a prefill-sized batch;
  * the tiny fixture's forward against the same reference values as the x86 tests
    (test_model.py): Hugging Face transformers' logits and greedy tokens for the F32 file, the
    plain-numpy forward for the Q4_0 file (Q4_0 matrices, Q8_0 embedding/LM head), as one
    prefill batch and token by token over the KV cache;
  * tokenizer round trips against Hugging Face `tokenizers` on Qwen3's tokenizer.json;
  * one `edgeqwen run` in a subprocess on the F32 file, whose text must be transformers' greedy
    continuation (ids made on x86, decoded by Hugging Face `tokenizers`).

The reference values are made on x86 (torch does not run in the emulated Python) by
tests/arm_reference.py into the directory $EDGEQWEN_ARM_REFERENCE. Without that variable (x86
runs of the suite) the directory is built here. $EDGEQWEN_ARM_EXEC is the command that runs an
aarch64 program (`qemu-aarch64-static -L ROOT`), for the subprocess. Under emulation numba's
compilation dominates (~20 s per kernel): the tests share compiled kernels where they can.
"""
from __future__ import annotations

import gzip
import json
import os
import shlex
import subprocess
import sys
import unicodedata
from importlib import resources
from pathlib import Path

import gguf
import numpy as np
import pytest
from tokenizers import Tokenizer as HFTokenizer

import edgeqwen
from conftest import import_reference
from edgeqwen.generate import Timings, generate_step
from edgeqwen.kv_cache import KVCache
from edgeqwen.quants import SUPPORTED_TYPES, UNPACKED, QuantizedActivation, Weight
from edgeqwen.sampling import Sampler, SamplingParams

from test_kquants import activation, assert_near, blocks, dequant, q8_roundtrip
from test_quants import encode
from test_tokenizer import CORPUS

T = gguf.GGMLQuantizationType


@pytest.mark.parametrize("qtype", SUPPORTED_TYPES, ids=lambda q: q.name)
def test_kernel_matches_gguf_py(qtype):
    n, k = 40, 768
    if qtype in UNPACKED:
        raw = blocks(qtype, n, k, "random")
    else:
        w = np.random.default_rng(int(qtype)).standard_normal((n, k)).astype(np.float32)
        raw = encode(w, qtype).reshape(n, -1)
    raw.flags.writeable = False                   # as Weight gets it from the mmap
    weight = Weight("w", qtype, (n, k), raw)
    wd = dequant(raw, qtype, n, k)
    for t in (1, 17):                             # decode; a prefill batch (BLAS path where there is one)
        x = activation(t, k)
        act = QuantizedActivation(t, k).quantize(x) if weight.wants_q8_activation else None
        out = weight.matmul(x, np.empty((t, n), np.float32), act)
        assert_near(out, (q8_roundtrip(x) if weight.wants_q8_activation else x.astype(np.float64)) @ wd.T)


@pytest.fixture(scope="module")
def refdir(tmp_path_factory) -> Path:
    given = os.environ.get("EDGEQWEN_ARM_REFERENCE")
    if given:
        return Path(given)
    import_reference("torch", "the reference values need torch (or $EDGEQWEN_ARM_REFERENCE)")
    from arm_reference import build
    return build(tmp_path_factory.mktemp("arm-reference"))


@pytest.fixture(scope="module")
def ref(refdir) -> dict:
    with np.load(refdir / "reference.npz") as z:
        return {k: z[k] for k in z.files}


def greedy(model, ids, n):
    cache = KVCache(model.config, 64)
    steps = generate_step(model.model, cache, list(ids), Sampler(SamplingParams(temperature=0)), Timings())
    return [next(steps) for _ in range(n)]


def rel_err(ours, ref):
    return np.abs(ours - ref).max() / np.abs(ref).max()


def test_f32_forward_matches_transformers(refdir, ref):
    model = edgeqwen.load(refdir / "tiny-f32.gguf", ctx_size=64, cache_type="f32")
    prompt = ref["prompt"].tolist()
    ours = model.logits(prompt)
    assert ours.dtype == np.float32 and ours.shape == ref["hf_logits"].shape
    # x86 measured 3.5e-7 (test_model: 2e-6); NEON's summation order is unmeasured here: 5e-6
    assert rel_err(ours, ref["hf_logits"]) <= 5e-6
    hf = ref["hf_greedy"].tolist()
    assert greedy(model, prompt[:5], len(hf)) == hf


@pytest.fixture(scope="module")
def q4_model(refdir):
    return edgeqwen.load(refdir / "tiny-q4_0.gguf", ctx_size=64, cache_type="f32")


def test_q4_0_forward_matches_numpy_reference(q4_model, ref):
    """The whole prompt as one batch (the BLAS prefill path), then token by token over the KV
    cache (the int8 kernels: fused Q/K/V, fused gate/up, attention)."""
    prompt, expect = ref["prompt"].tolist(), ref["numpy_q4_0"]
    # x86 measured 2.6e-7 (batch) and 7.0e-8 (steps) (test_model: 2e-6); not measured under qemu: 5e-6
    assert rel_err(q4_model.logits(prompt), expect) <= 5e-6
    cache = KVCache(q4_model.config, 64)
    steps = np.stack([q4_model.model.forward([t], cache, "last") for t in prompt])
    assert rel_err(steps, expect) <= 5e-6


@pytest.fixture(scope="module")
def tokenizers_pair(q4_model):
    data = json.loads(gzip.decompress(resources.files("edgeqwen").joinpath("data/tokenizer.json.gz").read_bytes()))
    return q4_model.tokenizer, HFTokenizer.from_str(json.dumps(data))


@pytest.mark.parametrize("name", CORPUS)
def test_tokenizer_round_trip(name, tokenizers_pair):
    tok, hf = tokenizers_pair
    text = CORPUS[name]
    ids = tok.encode(text)
    assert ids == hf.encode(text, add_special_tokens=False).ids
    back = tok.decode(ids)
    assert back == hf.decode(ids, skip_special_tokens=False) == unicodedata.normalize("NFC", text)
    s = tok.stream()
    assert "".join(s.feed(i) for i in ids) + s.flush() == back


def test_cli_run_in_a_subprocess(refdir, ref):
    """`edgeqwen run` as a user runs it: transformers' greedy continuation of the prompt (its ids
    decoded by `tokenizers`), and the KV cache size on stderr before generation."""
    cmd = [*shlex.split(os.environ.get("EDGEQWEN_ARM_EXEC", "")), sys.executable, "-m", "edgeqwen", "run",
           "-m", str(refdir / "tiny-f32.gguf"), "-p", str(ref["cli_prompt"]), "-n", str(len(ref["cli_ids"])),
           "--temperature", "0", "-t", "1", "-c", "64"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    assert r.stdout == str(ref["cli_text"]) + "\n"
    assert "KV cache" in r.stderr.splitlines()[0], r.stderr
