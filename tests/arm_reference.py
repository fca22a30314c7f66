"""Reference values for the aarch64 test subset (tests/test_arm_subset.py), made on x86-64 where
torch and transformers run; the emulated aarch64 Python has neither.

    python tests/arm_reference.py OUT_DIR          (called by .ci/arm/run.sh)

writes into OUT_DIR the tiny fixture model ("tiny" of conftest.py: real Qwen3 vocabulary, GQA,
n_heads*head_dim != hidden) as F32 and Q4_0 GGUF files made by our converter, and
`reference.npz` with the values the x86 tests compare against (tests/test_model.py):
  prompt            the token ids of test_model.PROMPT
  hf_logits         Hugging Face transformers' Qwen3ForCausalLM logits of the F32 checkpoint
  hf_greedy         its 16 greedy tokens after the first 5 prompt tokens
  numpy_q4_0        the plain-numpy forward (tests/reference_forward.py) over gguf-py-dequantized
                    weights with Q8_0-round-tripped activations, for the Q4_0 file
  cli_prompt        the prompt of the CLI check (`edgeqwen run` on the F32 file)
  cli_ids           transformers' greedy continuation of it: the prompt tokenized by Hugging Face
                    `tokenizers` (Qwen3's tokenizer.json), CLI_TOKENS argmaxes of Qwen3ForCausalLM
  cli_text          those ids decoded by `tokenizers`: what the CLI must print
Nothing here comes from edgeqwen's own forward. The subset reads OUT_DIR from
$EDGEQWEN_ARM_REFERENCE; without it (x86 runs of the suite) it builds the directory itself with
`build`. Regenerated on every run of .ci/arm/run.sh (on x86, before the emulated tests), so it
cannot go stale; by hand: `python tests/arm_reference.py OUT_DIR`.
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

QUANT_TYPES = ("q4_0",)
CLI_PROMPT = "The capital of France is"
CLI_TOKENS = 8
HF_GREEDY_TOKENS = 16


def build(out_dir: str | Path) -> Path:
    """Write the fixture files and reference.npz into out_dir; returns out_dir."""
    import gzip
    from importlib import resources

    from tokenizers import Tokenizer as HFTokenizer

    from conftest import CHECKPOINTS
    from converters.hf_to_gguf import convert
    from converters.synthetic import make_checkpoint
    from reference_forward import NumpyQwen3
    from test_model import PROMPT, hf_greedy, hf_logits

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ref: dict[str, np.ndarray] = {"prompt": np.array(PROMPT, np.int64)}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = make_checkpoint(Path(tmp) / "tiny", **CHECKPOINTS["tiny"])
        for t in ("f32", *QUANT_TYPES):
            convert(ckpt, out / f"tiny-{t}.gguf", t, progress=False, force=True)
        hf, logits = hf_logits(ckpt, PROMPT)
        ref["hf_logits"] = logits
        ref["hf_greedy"] = np.array(hf_greedy(hf, PROMPT[:5], HF_GREEDY_TOKENS), np.int64)
        tok = HFTokenizer.from_str(gzip.decompress(
            resources.files("edgeqwen").joinpath("data/tokenizer.json.gz").read_bytes()).decode())
        cli_ids = hf_greedy(hf, tok.encode(CLI_PROMPT, add_special_tokens=False).ids, CLI_TOKENS)
    for t in QUANT_TYPES:
        ref[f"numpy_{t}"] = NumpyQwen3(out / f"tiny-{t}.gguf").logits(PROMPT, q8_activations=True)
    ref["cli_prompt"] = np.array(CLI_PROMPT)
    ref["cli_ids"] = np.array(cli_ids, np.int64)
    ref["cli_text"] = np.array(tok.decode(cli_ids, skip_special_tokens=False))
    np.savez(out / "reference.npz", **ref)
    (out / "manifest.json").write_text(json.dumps(
        {"files": sorted(p.name for p in out.glob("*.gguf")), "made_on": __import__("platform").machine()}))
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/arm_reference.py OUT_DIR")
    print(build(sys.argv[1]))
