"""The `edgeqwen` command line: `run` output against the Python API, timings on stderr, prompt
options, errors as one line with exit status 1, `info` against what gguf-py reads or writes, and
the built-in demo model."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter

import gguf
import numba
import numpy as np
import pytest
from click.testing import CliRunner

import edgeqwen
from edgeqwen.api import set_threads
from edgeqwen.cli import main

PROMPT = "The capital of France is"
TIMINGS = re.compile(r"^load \d+\.\d\d s \| prompt (\d+) tok, \d+\.\d tok/s \| generated (\d+) tok, \d+\.\d tok/s"
                     r" \| finish: (\w+) \| threads \d+$", re.M)


def cli(*args, input=None):
    return CliRunner().invoke(main, [str(a) for a in args], input=input, catch_exceptions=False)


# Runs use one thread (-t 1): on a loaded 2-core machine two numba threads can be 10x slower, and
# each load sets the process-wide count, so the API model's computations also run with one.
T1 = ("-t", 1)


@pytest.fixture(autouse=True)
def one_thread():
    before = numba.get_num_threads()
    set_threads(1)
    yield
    numba.set_num_threads(before)


def subprocess_cli(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "edgeqwen", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout, stdin=subprocess.DEVNULL)


def assert_one_error_line(stderr: str, *needles: str):
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


@pytest.fixture(scope="module")
def model_path(gguf_file):
    return gguf_file("tiny", "q8_0")


@pytest.fixture(scope="module")
def model(model_path):
    return edgeqwen.load(model_path, threads=1)


# ---------------------------------------------------------------- run

def test_run_prints_the_api_greedy_text_and_timings(model_path, model):
    r = cli("run", "-m", model_path, "-p", PROMPT, "-n", 5, "--temperature", 0, *T1)
    assert r.exit_code == 0, r.stderr
    expected = model.generate(PROMPT, max_tokens=5, temperature=0)
    assert len(expected.token_ids) == 5 and expected.text
    assert r.stdout == expected.text + "\n"
    m = TIMINGS.search(r.stderr)
    assert m, r.stderr
    assert (int(m[1]), int(m[2]), m[3]) == (len(model.tokenize(PROMPT)), 5, "length")
    assert "tok/s" not in r.stdout and "note:" not in r.stderr


def test_run_prompt_file(model_path, model, tmp_path):
    prompt = "Schöne Grüße,\nnaïve café 🙂\n"
    f = tmp_path / "prompt.txt"
    f.write_text(prompt, encoding="utf-8")
    r = cli("run", "-m", model_path, "--prompt-file", f, "-n", 4, "--temperature", 0, *T1)
    assert r.exit_code == 0, r.stderr
    assert r.stdout == model.generate(prompt, max_tokens=4, temperature=0).text + "\n"
    assert int(TIMINGS.search(r.stderr)[1]) == len(model.tokenize(prompt))


def test_run_stop_and_context_note(model_path, model):
    words = "one two three four five six seven eight nine ten"
    assert len(model.tokenize(words)) == 10
    r = cli("run", "-m", model_path, "-p", words, "-n", 100, "-c", 16, "--temperature", 0, *T1)
    assert r.exit_code == 0, r.stderr
    assert "note: context full (16 tokens)" in r.stderr
    m = TIMINGS.search(r.stderr)
    assert (int(m[1]), int(m[2]), m[3]) == (10, 16 - 10 + 1, "length")


def test_run_errors_are_one_line(model_path, tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("hi")
    cases = [
        (["-m", model_path, "-p", "x", "--prompt-file", f], "not both"),
        (["-m", model_path, "-p", "x", "--stop", ""], "stop"),
        (["-m", model_path, "-p", "x " * 40, "-c", 16], "does not fit the context of 16 tokens"),
        (["-m", tmp_path / "missing.gguf", "-p", "x"], "no such file"),
        (["-m", model_path, "-p", "x\udcff"], "the prompt (-p) is not valid text: a lone surrogate '\\udcff'"),
        (["-m", model_path, "--prompt-file", "/dev/zero"], "/dev/zero: the prompt file is larger than 16 MiB"),
        (["-m", model_path, "--prompt-file", tmp_path / "bad.txt"], "not UTF-8 text (invalid byte 0xff at offset 2)"),
    ]
    (tmp_path / "bad.txt").write_bytes(b"hi\xff")
    for args, needle in cases:
        r = cli("run", *args, *(T1 if "-t" not in args else ()))
        assert r.exit_code == 1, (args, r.stderr)
        assert_one_error_line(r.stderr, needle)
        assert r.stdout == "", args


@pytest.mark.parametrize("args, needle", [
    (["run", "-c", 10**9], "'-c' / '--ctx-size': 1000000000 is not in the range 1<=x<=1048576"),
    (["run", "-c", 2**62], "--ctx-size"), (["run", "-c", 0], "--ctx-size"),
    (["run", "-t", 10**20], "'-t' / '--threads'"), (["run", "-t", 0], "--threads"),
    (["run", "--top-k", 10**20], "--top-k"), (["run", "--seed", 2**70], "--seed"), (["run", "--seed", -1], "--seed"),
    (["run", "-n", -2], "--max-tokens"),
    (["run", "--temperature", "nan"], "'nan' is not a finite number >= 0"),
    (["run", "--temperature", -1], "--temperature"), (["run", "--top-p", 2], "'2' is not a finite number > 0 and <= 1"),
    (["run", "--top-p", 0], "--top-p"), (["run", "--min-p", "inf"], "--min-p"),
    (["run", "--repeat-penalty", 0], "--repeat-penalty"), (["run", "--presence-penalty", 3], "--presence-penalty"),
    (["info", "x.gguf", "-c", 0], "--ctx-size"),
    (["bench", "-m", "x.gguf", "-b", 0], "'-b' / '--batch-size': 0 is not in the range 1<=x<=65536"),
    (["bench", "-m", "x.gguf", "-b", 10**20], "--batch-size"),
    (["chat", "--top-p", "inf"], "--top-p"), (["chat", "--thinking-budget", -1], "--thinking-budget"),
    (["chat", "-t", 10**20], "--threads"), (["chat", "-c", 2**62], "--ctx-size"),
    (["batch", "{input}", "-o", "o.jsonl", "--temperature", "nan"], "--temperature"),
    (["batch", "{input}", "-o", "o.jsonl", "--top-p", 2], "--top-p"),
    (["batch", "{input}", "-o", "o.jsonl", "-P", 0], "--parallel"),
    (["batch", "{input}", "-o", "o.jsonl", "--seed", 2**70], "--seed"),
])
def test_bad_option_values_are_refused_by_click_at_start(tmp_path, args, needle):
    """Checked while parsing, before any model is loaded or item is run: click's usage error."""
    (tmp_path / "in.txt").write_text("hello\n")
    args = [str(a).replace("{input}", str(tmp_path / "in.txt")) for a in args]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2, (args, r.output)
    assert "Invalid value for" in r.stderr and needle in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "o.jsonl").exists()


def test_missing_model_file_in_a_real_process(tmp_path):
    missing = tmp_path / "nope.gguf"
    r = subprocess_cli("run", "-m", missing, "-p", "hi", "-n", 2)
    assert r.returncode == 1
    assert_one_error_line(r.stderr, str(missing), "no such file")
    assert r.stdout == ""


def test_help_and_version():
    r = subprocess_cli("--help")
    assert r.returncode == 0 and r.stderr == ""
    assert "Usage: edgeqwen" in r.stdout
    for command in ("convert", "run", "info"):
        assert re.search(rf"^\s+{command}\s", r.stdout, re.M), command
    r = cli("run", "--help")
    assert r.exit_code == 0 and "--prompt-file" in r.stdout and "--ctx-size" in r.stdout
    r = cli("--version")
    assert r.exit_code == 0 and edgeqwen.__version__ in r.stdout


# ---------------------------------------------------------------- info

def info_rows(stdout: str) -> dict[str, str]:
    return {m[1]: m[2] for m in re.finditer(r"^(\S.*?)\s{2,}(.*)$", stdout, re.M)}


def test_info_on_a_converted_file(model_path):
    r = cli("info", model_path)
    assert r.exit_code == 0, r.stderr
    rows = info_rows(r.stdout)
    # tiny: hidden 64, 2 layers, 4 heads / 2 KV heads of 32, tied embeddings, q8_0 policy (README):
    # 9 F32 norms (1 + 4 per layer), 14 Q8_0 matrices + the Q8_0 embedding.
    assert rows["architecture"] == "qwen3"
    assert rows["layers"] == "2" and rows["hidden"] == "64" and rows["ffn"] == "128"
    assert rows["heads (q / kv)"] == "4 / 2, head_dim 32"
    assert rows["vocab"] == "151936" and rows["embeddings"] == "tied"
    assert rows["tensor types"] == "F32 9, Q8_0 15"
    assert rows["chat template"] == "yes"


def write_small_qwen3(path, types, *, chat_template=None):
    """A valid (random) qwen3 file with a 300-token embedding, 3 layers and untied output; matrix
    types by tensor-name suffix from `types` (default F32). Written with gguf-py; returns the path."""
    hidden, ff, heads, kv, hd, layers, vocab = 64, 96, 4, 2, 32, 3, 300
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(path, "qwen3")
    w.add_name("Small")
    w.add_block_count(layers)
    w.add_context_length(2048)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ff)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_rope_freq_base(1e6)
    w.add_layer_norm_rms_eps(1e-6)
    if chat_template:
        w.add_chat_template(chat_template)

    def add(name, shape):
        qtype = next((t for suffix, t in types.items() if name.endswith(suffix)), gguf.GGMLQuantizationType.F32)
        if len(shape) == 1 or qtype == gguf.GGMLQuantizationType.F32:
            w.add_tensor(name, rng.standard_normal(shape).astype(np.float32))
        elif qtype == gguf.GGMLQuantizationType.F16:
            w.add_tensor(name, rng.standard_normal(shape).astype(np.float16))
        else:
            block, size = gguf.GGML_QUANT_SIZES[qtype]
            raw = rng.integers(0, 256, (shape[0], shape[1] // block * size), dtype=np.uint8)
            w.add_tensor(name, raw, raw_dtype=qtype)

    add("token_embd.weight", (vocab, hidden))
    add("output_norm.weight", (hidden,))
    add("output.weight", (vocab, hidden))
    for i in range(layers):
        for part, shape in [("attn_norm", (hidden,)), ("attn_q", (heads * hd, hidden)), ("attn_k", (kv * hd, hidden)),
                            ("attn_v", (kv * hd, hidden)), ("attn_q_norm", (hd,)), ("attn_k_norm", (hd,)),
                            ("attn_output", (hidden, heads * hd)), ("ffn_norm", (hidden,)),
                            ("ffn_gate", (ff, hidden)), ("ffn_up", (ff, hidden)), ("ffn_down", (hidden, ff))]:
            add(f"blk.{i}.{part}.weight", shape)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("template", [None, "{{ messages }}"])
def test_info_type_counts_match_gguf_py(tmp_path, template):
    T = gguf.GGMLQuantizationType
    path = write_small_qwen3(tmp_path / "small.gguf", {
        "attn_q.weight": T.F16, "attn_k.weight": T.Q8_0, "attn_v.weight": T.Q4_0, "ffn_down.weight": T.Q4_0,
        "ffn_up.weight": T.Q8_0, "token_embd.weight": T.Q8_0, "output.weight": T.F16}, chat_template=template)
    reader = gguf.GGUFReader(path)
    expected = Counter(T(t.tensor_type).name for t in reader.tensors)
    assert len(expected) == 4                     # F32, F16, Q8_0, Q4_0
    r = cli("info", path)
    assert r.exit_code == 0, r.stderr
    rows = info_rows(r.stdout)
    assert rows["tensor types"] == ", ".join(f"{k} {v}" for k, v in sorted(expected.items()))
    assert rows["architecture"] == "qwen3" and rows["name"] == "Small"
    assert rows["layers"] == "3" and rows["heads (q / kv)"] == "4 / 2, head_dim 32" and rows["ffn"] == "96"
    assert rows["vocab"] == "300" and rows["context (trained)"] == "2048"
    assert rows["embeddings"] == "untied (output.weight)"
    assert rows["chat template"] == ("yes" if template else "no")
    n_params = sum(int(np.prod(t.shape)) for t in reader.tensors)
    assert rows["parameters"] == f"{n_params / 1e9:.3f} B"


def test_info_errors(tmp_path, model_path):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(model_path.read_bytes()[:5000])
    r = cli("info", cut)
    assert r.exit_code == 1
    assert_one_error_line(r.stderr, str(cut), "truncated")
    llama = tmp_path / "llama.gguf"
    w = gguf.GGUFWriter(llama, "llama")
    w.add_tensor("token_embd.weight", np.zeros((4, 32), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    r = cli("info", llama)
    assert r.exit_code == 1
    assert_one_error_line(r.stderr, "architecture 'llama' is not supported")
    r = cli("info", tmp_path / "missing.gguf")
    assert r.exit_code == 1
    assert_one_error_line(r.stderr, "no such file")


# ---------------------------------------------------------------- the demo model

def test_run_without_model_uses_the_shipped_demo(tmp_path):
    """Without -m: the demo model shipped in the package (nothing built or written to the cache),
    the same text twice, and `info` names it as the project's demo model, not Qwen3 weights."""
    from edgeqwen.demo import demo_model_path

    cache = tmp_path / "cache"
    env = {"EDGEQWEN_CACHE": str(cache)}
    first = subprocess_cli("run", "-p", "Hello", "-n", 3, "--temperature", 0, *T1, env=env)
    assert first.returncode == 0, first.stderr
    assert "using the built-in demo model" in first.stderr and "building" not in first.stderr
    assert TIMINGS.search(first.stderr)[2] == "3"
    assert not cache.exists() or not any(cache.rglob("*.gguf"))          # nothing built
    second = subprocess_cli("run", "-p", "Hello", "-n", 3, "--temperature", 0, *T1, env=env)
    assert second.returncode == 0, second.stderr
    assert second.stdout == first.stdout and first.stdout.strip()
    info = info_rows(cli("info", demo_model_path()).stdout)
    assert info["architecture"] == "qwen3" and info["layers"] == "4" and info["hidden"] == "192"
    assert "edgeqwen-demo" in cli("info").stdout


# ---------------------------------------------------------------- run: sampling options

SAMPLING_OPTIONS = [  # (CLI option, value, API keyword)
    ("--top-k", 3, "top_k"), ("--top-p", 0.5, "top_p"), ("--min-p", 0.2, "min_p"),
    ("--repeat-penalty", 1.5, "repetition_penalty"), ("--presence-penalty", 2, "presence_penalty"),
]


def test_run_sampling_options_reach_the_sampler(model_path, model):
    """Each `run` sampling option gives the API's text with the same setting (seeded; T=10 because the
    random tiny model's distributions are peaked: at lower temperatures some options change nothing),
    and that text differs from the one without the option: the option is neither dropped nor renamed."""
    base = dict(max_tokens=12, temperature=10.0, seed=11)
    without = model.generate(PROMPT, **base).text
    r = cli("run", "-m", model_path, "-p", PROMPT, "-n", 12, "--temperature", 10, "--seed", 11, *T1)
    assert r.exit_code == 0 and r.stdout == without + "\n", r.stderr
    for opt, value, kw in SAMPLING_OPTIONS:
        expected = model.generate(PROMPT, **base, **{kw: value}).text
        assert expected != without, opt                   # the setting matters for this prompt and seed
        r = cli("run", "-m", model_path, "-p", PROMPT, "-n", 12, "--temperature", 10, "--seed", 11,
                opt, value, *T1)
        assert r.exit_code == 0, r.stderr
        assert r.stdout == expected + "\n", opt
    r = cli("run", "-m", model_path, "-p", PROMPT, "-n", 12, "--temperature", 10, "--seed", 12, *T1)
    assert r.stdout == model.generate(PROMPT, **{**base, "seed": 12}).text + "\n" != without + "\n"


# ---------------------------------------------------------------- bench

def test_bench_command_json(model_path):
    """`edgeqwen bench --json`: the sizes asked for, positive speeds, and the bytes a decoded token
    reads equal to the sum of the file's weight tensors that gguf-py lists (the embedding table
    is read one row per token; tied: it is also the LM head, read in full)."""
    import json

    from test_bench import gguf_py_decode_bytes
    r = cli("bench", "-m", model_path, "-p", 4, "-n", 2, "-r", 1, "--no-bandwidth", "--json", *T1)
    assert r.exit_code == 0, r.stderr
    res = json.loads(r.stdout)
    assert (res["pp"]["test"], res["tg"]["test"]) == ("pp4", "tg2"), res
    assert res["pp"]["tok_s_mean"] > 0 and res["tg"]["tok_s_mean"] > 0
    assert res["roofline"]["weight_bytes_per_token"] == gguf_py_decode_bytes(model_path)


# ---------------------------------------------------------------- batch options

def batch_cli(*args):
    r = cli("batch", *args, "-q", *T1)
    assert r.exit_code == 0, r.stderr
    return r


def records(path) -> dict:
    import json
    return {json.dumps(rec["id"]): rec for rec in map(json.loads, path.read_text().splitlines())}


def test_batch_text_options(model_path, model, tmp_path):
    """--format text (on a .jsonl name), --template with --raw, --system, --think/--no-think,
    --thinking-budget: each record equals the API's single result for the prompt the option builds."""
    src = tmp_path / "lines.jsonl"                  # a text file despite its name
    src.write_text("Paris\n\nRome\n")
    out = tmp_path / "raw.jsonl"
    batch_cli(src, "-m", model_path, "-o", out, "--format", "text", "--raw", "--template", "Capital: {text}!",
              "-n", 5, "--temperature", 0)
    got = records(out)
    assert set(got) == {"1", "3"}                   # ids are line numbers; the empty line is skipped
    for key, word in (("1", "Paris"), ("3", "Rome")):
        assert got[key]["content"] == model.generate(f"Capital: {word}!", max_tokens=5, temperature=0).text

    out = tmp_path / "chat.jsonl"
    batch_cli(src, "-m", model_path, "-o", out, "--format", "text", "--system", "Be brief.", "--no-think",
              "-n", 6, "--temperature", 0)
    ref = model.chat([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Rome"}],
                     enable_thinking=False, max_tokens=6, temperature=0)
    assert (records(out)["3"]["content"], records(out)["3"]["completion_tokens"]) == (ref.content, ref.completion_tokens)

    out = tmp_path / "budget.jsonl"
    batch_cli(src, "-m", model_path, "-o", out, "--format", "text", "--thinking-budget", 2, "-n", 30,
              "--temperature", 0)
    ref = model.chat([{"role": "user", "content": "Paris"}], thinking_budget=2, max_tokens=30, temperature=0)
    rec = records(out)["1"]
    assert (rec["reasoning_content"], rec["content"], rec["completion_tokens"]) == (ref.reasoning, ref.content,
                                                                            ref.completion_tokens)


def test_batch_glob_overwrite_retry_errors(model_path, tmp_path):
    d = tmp_path / "docs"
    (d / "sub").mkdir(parents=True)
    (d / "a.txt").write_text(" ".join(["word"] * 30))
    (d / "sub" / "b.txt").write_text("beta")
    (d / "c.md").write_text("gamma")
    out = tmp_path / "out.jsonl"
    # -c 12: a.txt's 30-token prompt does not fit: an error record; c.md is not taken
    batch_cli(d, "-m", model_path, "-o", out, "--glob", "**/*.txt", "--raw", "-n", 2, "-c", 12, "--temperature", 0)
    got = records(out)
    assert set(got) == {'"a.txt"', '"sub/b.txt"'}
    assert "error" in got['"a.txt"'] and "error" not in got['"sub/b.txt"']
    # a resume skips both (the error stays) ...
    batch_cli(d, "-m", model_path, "-o", out, "--glob", "**/*.txt", "--raw", "-n", 2, "-c", 64, "--temperature", 0)
    assert records(out) == got and len(out.read_text().splitlines()) == 2
    # ... --retry-errors runs a.txt again, keeps b.txt's record
    batch_cli(d, "-m", model_path, "-o", out, "--glob", "**/*.txt", "--raw", "-n", 2, "-c", 64, "--temperature", 0,
              "--retry-errors")
    again = records(out)
    assert "error" not in again['"a.txt"'] and again['"sub/b.txt"'] == got['"sub/b.txt"']
    # --overwrite starts over: every record is new (3 tokens now)
    batch_cli(d, "-m", model_path, "-o", out, "--glob", "**/*.txt", "--raw", "-n", 3, "-c", 64, "--temperature", 0,
              "--overwrite")
    lines = out.read_text().splitlines()
    assert len(lines) == 2 and all(r["completion_tokens"] == 3 for r in records(out).values())


def test_batch_prefix_cache_option_and_parallel_16(model_path, model, tmp_path):
    """20 chat items sharing the template's prefix at --parallel 16: greedy records equal single
    chats; with the prefix cache later items reuse cached tokens, with --no-prefix-cache none."""
    src = tmp_path / "q.txt"
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa",
             "lambda", "mu", "nu", "xi", "omicron", "pi", "rho", "sigma", "tau", "upsilon"]
    src.write_text("\n".join(words) + "\n")
    runs = {}
    for name, extra in (("cached", ()), ("full", ("--no-prefix-cache",))):
        out = tmp_path / f"{name}.jsonl"
        batch_cli(src, "-m", model_path, "-o", out, "-P", 16, "--system", "You answer in one word.", "--no-think",
                  "-n", 3, "--temperature", 0, *extra)
        runs[name] = records(out)
    assert set(runs["cached"]) == {str(i) for i in range(1, 21)}
    assert sum(r["cached_tokens"] for r in runs["cached"].values()) > 0
    assert all(r["cached_tokens"] == 0 for r in runs["full"].values())
    for key in ("1", "17", "20"):
        ref = model.chat([{"role": "system", "content": "You answer in one word."},
                          {"role": "user", "content": words[int(key) - 1]}], enable_thinking=False, max_tokens=3,
                         temperature=0)
        assert runs["cached"][key]["content"] == runs["full"][key]["content"] == ref.content, key


# ---------------------------------------------------------------- issue 18: one behaviour everywhere

def test_run_reads_a_piped_prompt(model_path, model):
    """No -p: the prompt is what is piped on stdin (a real pipe, in a real process); nothing piped
    (empty stdin): the default prompt, said on stderr."""
    p = subprocess.run([sys.executable, "-m", "edgeqwen", *map(str, ("run", "-m", model_path, "-n", 5, "--temperature",
                        0, *T1))], input=PROMPT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout == model.generate(PROMPT, max_tokens=5, temperature=0).text + "\n"
    assert int(TIMINGS.search(p.stderr)[1]) == len(model.tokenize(PROMPT))
    r = cli("run", "-m", model_path, "-n", 3, "--temperature", 0, *T1, input="")
    assert r.exit_code == 0, r.stderr
    assert r.stdout == model.generate("Once upon a time", max_tokens=3, temperature=0).text + "\n"
    assert "nothing piped on stdin" in r.stderr


def test_info_bench_warmup_take_the_default_model(model_path, monkeypatch):
    import json

    import edgeqwen.demo

    monkeypatch.setattr(edgeqwen.demo, "demo_model_path", lambda log=None: model_path)
    r = cli("info")
    assert r.exit_code == 0, r.stderr
    assert info_rows(r.stdout)["file"].startswith(f"{model_path} (")
    assert cli("info", "-m", model_path).stdout == cli("info", model_path).stdout == r.stdout
    r = cli("bench", "-p", 4, "-n", 2, "-r", 1, "--no-bandwidth", "--json", *T1)
    assert r.exit_code == 0, r.stderr
    res = json.loads(r.stdout)
    assert str(model_path) in json.dumps(res) and res["warmup_s"] > 0       # compile time is reported
    r = cli("warmup", *T1)
    assert r.exit_code == 0 and "ready" in r.stderr, r.stderr


def _tool_call_conversation(tmp_path):
    """A conversation whose last assistant message is continued: its <tool_call> block is parsed."""
    import json

    conv = tmp_path / "conv.json"
    conv.write_text(json.dumps([
        {"role": "user", "content": "add 1 and 2"},
        {"role": "assistant", "content": '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>'}]))
    return conv


def test_chat_messages_prints_an_openai_message(model_path, tmp_path):
    """`chat --messages` prints OpenAI's assistant message (validated by the openai package's own type):
    tool_calls with id, type "function" and arguments as a JSON string; no null fields."""
    import json

    from openai.types.chat import ChatCompletionMessage

    r = cli("chat", "-m", model_path, "--messages", _tool_call_conversation(tmp_path), "-n", 2, "--temperature", 0.7,
            "--seed", 1, *T1)
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    msg = ChatCompletionMessage.model_validate(out)
    assert msg.role == "assistant" and len(msg.tool_calls) == 1
    call = msg.tool_calls[0]
    assert call.type == "function" and call.id.startswith("call_") and call.function.name == "add"
    assert json.loads(call.function.arguments) == {"a": 1, "b": 2}
    assert out["reasoning_content"] == "" and out["usage"]["completion_tokens"] == 2
    assert None not in [v for k, v in out.items() if k != "content"]


def test_chat_warnings_are_one_line(model_path, tmp_path):
    """Greedy decoding in thinking mode warns: one `warning:` line, no Python category or source line."""
    import json

    conv = tmp_path / "c.json"
    conv.write_text(json.dumps([{"role": "user", "content": "Hi"}]))
    p = subprocess_cli("chat", "-m", model_path, "--messages", conv, "-n", 1, "--temperature", 0, *T1)
    assert p.returncode == 0, p.stderr
    warn = [ln for ln in p.stderr.splitlines() if "greedy" in ln]
    assert len(warn) == 1 and warn[0].startswith("warning: "), p.stderr
    assert "Warning:" not in p.stderr and ".py:" not in p.stderr and "warnings.warn" not in p.stderr


def test_batch_stdin_to_stdout_openai_records_same_ids_as_api(model_path, model):
    """`batch - -o -`: text lines from stdin, records on stdout; chat records carry OpenAI's message
    fields (validated by the openai package); a text file's ids (line numbers from 1) are the API's."""
    import json

    from openai.types.chat import ChatCompletionMessage

    r = cli("batch", "-", "-m", model_path, "-o", "-", "--no-think", "-n", 3, "--temperature", 0, "-q", *T1,
            input="Paris\nRome\n")
    assert r.exit_code == 0, r.stderr
    recs = [json.loads(line) for line in r.stdout.splitlines()]
    assert sorted(rec["id"] for rec in recs) == [1, 2]
    for rec in recs:
        msg = ChatCompletionMessage.model_validate(rec)
        assert msg.role == "assistant" and msg.tool_calls is None and rec["reasoning_content"] == ""
    api = list(model.batch(["Paris", "Rome"], max_tokens=2, temperature=0))
    assert sorted(rec["id"] for rec in api) == [1, 2]
    # JSONL from stdin is recognised as such
    r = cli("batch", "-", "-m", model_path, "-o", "-", "-n", 2, "--temperature", 0, "-q", *T1,
            input='{"id": "x", "prompt": "Hello"}\n')
    assert r.exit_code == 0 and json.loads(r.stdout)["id"] == "x", r.stderr


def test_batch_progress_lines_without_a_tty_and_sigterm(model_path, tmp_path):
    """Without a terminal, progress lines come at the --progress-every interval even while no item
    finishes; SIGTERM ends the run as Ctrl-C does: whole records, a resume hint, status 130."""
    import json
    import signal
    import time

    src, out = tmp_path / "many.txt", tmp_path / "out.jsonl"
    src.write_text("".join(f"item {i}\n" for i in range(200)))
    args = ("batch", src, "-m", model_path, "-o", out, "-P", 1, "--raw", "-n", 100000, "-c", 64, "--temperature", 1,
            "--progress-every", 0.5, *T1)
    p = subprocess.Popen([sys.executable, "-m", "edgeqwen", *map(str, args)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    lines = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and len([ln for ln in lines if " items, " in ln]) < 3:
        lines.append(p.stderr.readline())
    p.send_signal(signal.SIGTERM)
    rest = p.communicate(timeout=240)[1]
    progress = [ln for ln in lines if re.match(r"^\d+/200 items, \d+ errors, \d+ s, ", ln)]
    assert len(progress) >= 3, lines
    assert p.returncode == 130, rest
    assert "interrupted:" in rest and "run the same command again to resume" in rest and "Traceback" not in rest
    for line in out.read_text().splitlines():                   # whole records only
        assert json.loads(line)["finish_reason"] in ("length", "stop")
