"""`edgeqwen perplexity`: perplexity against transformers' (the F32 file of a random checkpoint), KL
divergence and top-1 agreement of quantized files against the same figures computed from llama.cpp's
logits of the same files, chat JSONL rendered with the template, and one-line errors."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import LLAMA_CPP_MISSING, import_reference
from edgeqwen import load
from edgeqwen.cli import main
from edgeqwen.perplexity import perplexity, read_documents

TEXT = ("The quick brown fox jumps over the lazy dog. 12 + 34 = 46. Perplexity measures how surprised a "
        "language model is by a text: the exponential of the mean negative log-likelihood per token.")


def _log_softmax(x):
    x = np.asarray(x, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("ppl") / "text.txt"
    p.write_text(TEXT, encoding="utf-8")
    return p


def test_perplexity_matches_transformers(checkpoints, gguf_file, text_file):
    torch = import_reference("torch", "torch is not installed (pip install -e .[test])")
    transformers = import_reference("transformers", "transformers is not installed (pip install -e .[test])")
    tok = transformers.AutoTokenizer.from_pretrained(checkpoints["tiny"])
    ref = transformers.Qwen3ForCausalLM.from_pretrained(checkpoints["tiny"], torch_dtype=torch.float32)
    ids = tok(TEXT)["input_ids"]
    window = 16                                   # several windows, the last one shorter
    nll = []
    for i in range(0, len(ids), window):
        w = ids[i:i + window]
        if len(w) < 2:
            continue
        with torch.no_grad():
            logp = _log_softmax(ref(torch.tensor([w])).logits[0].numpy())[:-1]
        nll += list(-logp[np.arange(len(w) - 1), w[1:]])
    r = CliRunner().invoke(main, ["perplexity", "-m", str(gguf_file("tiny", "f32")), str(text_file),
                                  "-c", str(window), "-t", "1", "--json"])
    assert r.exit_code == 0, r.output
    got = json.loads(r.output.strip().splitlines()[-1])
    assert got["tokens"] == len(nll) and got["documents"] == 1
    assert got["ppl"] == pytest.approx(math.exp(np.mean(nll)), rel=1e-4)


def test_kl_divergence_matches_llama_cpp_logits(gguf_file, text_file, qtype="q4_0"):
    llama_cpp = import_reference("llama_cpp", LLAMA_CPP_MISSING)
    base_path, q_path = gguf_file("tiny", "f32"), gguf_file("tiny", qtype)

    def llama_logits(path):
        ll = llama_cpp.Llama(str(path), n_ctx=256, logits_all=True, verbose=False, n_threads=1)
        ids = ll.tokenize(TEXT.encode(), add_bos=False, special=True)
        ll.eval(ids)
        return ids, _log_softmax(np.array(ll.scores[:len(ids)]))[:-1]

    ids, base = llama_logits(base_path)
    _, quant = llama_logits(q_path)
    target = np.array(ids[1:])
    kld = (np.exp(base) * (base - quant)).sum(-1)
    same = (base.argmax(-1) == quant.argmax(-1)).mean()
    mean_nll = -quant[np.arange(len(target)), target].mean()
    assert kld.mean() > 1e-5                       # the quantization does change the distributions

    got = perplexity(load(q_path, threads=1), [TEXT], ctx=256, base=load(base_path, threads=1)).as_dict()
    assert got["tokens"] == len(target)
    # the two engines' logits differ slightly (activation rounding): log-perplexity within 0.2 %,
    # mean KLD within 5 % (measured: 0.06 % and 1.2-1.3 %)
    assert math.log(got["ppl"]) == pytest.approx(mean_nll, rel=2e-3)
    assert got["kld_mean"] == pytest.approx(kld.mean(), rel=0.05)
    assert abs(got["same_top"] - same) <= 2 / len(target)


def test_jsonl_documents_and_chat_rendering(checkpoints, gguf_file, tmp_path):
    transformers = import_reference("transformers", "transformers is not installed (pip install -e .[test])")
    tok = transformers.AutoTokenizer.from_pretrained(checkpoints["tiny"])
    messages = [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4"}]
    src = tmp_path / "docs.jsonl"
    src.write_text(json.dumps({"text": TEXT}) + "\n\n" + json.dumps({"messages": messages}) + "\n", encoding="utf-8")
    docs = read_documents(src)
    assert len(docs) == 2
    n_chat = len(tok(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=False))["input_ids"])
    n_text = len(tok(TEXT)["input_ids"])
    got = perplexity(load(gguf_file("tiny", "q8_0"), threads=1), docs, ctx=512).as_dict()
    assert got["tokens"] == (n_text - 1) + (n_chat - 1) and got["documents"] == 2


@pytest.mark.parametrize("content, message", [
    ("", "the text is empty"),
    ('{"text": 1}\n', '"text" must be a non-empty string'),
    ('{"prompt": "x"}\n', 'expected an object with either "text" or "messages"'),
    ('{"text": "a"\n', "invalid JSON"),
    ('\n\n', "no documents"),
])
def test_bad_input_is_one_error_line(gguf_file, tmp_path, content, message):
    name = "in.txt" if message == "the text is empty" else "in.jsonl"
    (tmp_path / name).write_text(content, encoding="utf-8")
    r = CliRunner().invoke(main, ["perplexity", "-m", str(gguf_file("tiny", "q8_0")), str(tmp_path / name)])
    assert r.exit_code == 1
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], r.output


def test_base_with_another_vocabulary_is_refused(gguf_file, text_file):
    from edgeqwen.demo import demo_model_path

    r = CliRunner().invoke(main, ["perplexity", "-m", str(gguf_file("tiny", "q8_0")), str(text_file),
                                  "--kl-base", str(demo_model_path())])
    assert r.exit_code == 1
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "vocabulary differs" in lines[0], r.output
