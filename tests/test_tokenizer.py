"""The GGUF-built tokenizer against the independent reference: Qwen3's tokenizer.json loaded by HF
`tokenizers`. Metadata comes from a real GGUF written by our converter."""
from __future__ import annotations

import gzip
import json
import unicodedata
from importlib import resources

import gguf
import numpy as np
import pytest

from gguf_spec_reader import read_gguf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer as HFTokenizer

from edgeqwen.constants import (KEY_TOK_EOM, KEY_TOK_EOS, KEY_TOK_EOT, KEY_TOK_LIST, KEY_TOK_MERGES,
                                KEY_TOK_MODEL, KEY_TOK_PRE, KEY_TOK_TYPE)
from edgeqwen.errors import EdgeQwenError
from edgeqwen.tokenizer import PRE_TOKENIZER_REGEX, StreamDecoder, Tokenizer

FIRST_ADDED = 151643          # ids 151643..151668 are the 26 added tokens
N_REAL = 151669               # ids >= this are [PADn] (UNUSED)
# Added tokens HF marks special=False but the converter (like llama.cpp's) types CONTROL because they
# look like "<|...|>": skip_special drops them here, not in HF.
CONTROL_NOT_HF_SPECIAL = {151659, 151660, 151661, 151662, 151663, 151664}

CHAT = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nHello!<|im_end|>\n"

CORPUS = {
    "english": "The quick brown fox jumps over the lazy dog. It's 9:30 a.m. and they're late -- again!",
    "chinese": "我们今天去公园散步，天气非常好。人工智能正在改变世界，大语言模型在手机上运行。",
    "japanese": "東京は日本の首都です。ひらがなとカタカナ、そして漢字を混ぜて書きます。ｶﾀｶﾅ",
    "korean": "안녕하세요, 만나서 반갑습니다. 오늘 날씨가 정말 좋네요!",
    "arabic": "مرحبا بالعالم! كيف حالك اليوم؟ الذكاء الاصطناعي",
    "hindi": "नमस्ते दुनिया, आप कैसे हैं? कृत्रिम बुद्धिमत्ता",
    "russian": "Съешь же ещё этих мягких французских булок, да выпей чаю. ЁЛКИ-ПАЛКИ",
    "python": "def fib(n: int) -> int:\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n\n\n"
              "class A:\n\tdef f(self):\n\t\treturn {'a': [1, 2, 3]}  # comment\n",
    "javascript": "const add = (a, b) => {\n  return a + b;\n};\nconsole.log(`sum: ${add(1, 2)}`);\n"
                  "if (x !== null && y >= 0) { arr.map(v => v ** 2); }\n",
    "emoji": "I ❤️ 🍕! Family 👨‍👩‍👧‍👦, pride 🏳️‍🌈, flags 🇯🇵🇺🇸🇩🇪, thumbs 👍🏽👍🏿, 🙂🙃😀😂🤖🦜",
    "digits": "3.14159265358979 1234567890123456789012345678901234567890 1,000,000 0x1F600 2024-06-01",
    "whitespace": "a  b   c\t\td\n\n\n   \n\t e      \n \t \n    x",
    "crlf": "line one\r\nline two\r\n\r\nline three\rfour\n\r\n  indented\r\n",
    "contractions": "I'LL go, don't you? She'S here; we'VE been, they'D say, I'M sure, YOU'RE right, can't",
    "nfd": "Cafe\u0301 re\u0301sume\u0301 man\u0303ana A\u030angstro\u0308m e\u0301",
    "nfc": "Café résumé mañana Ångström é",
    "edges": "   leading and trailing spaces   ",
    "newline_edges": "\n\nstarts and ends with newlines\n\n",
    "empty": "",
    "single_space": " ",
    "mixed": "Hello世界123 🙂\tmixed ASCII/日本語/русский, x=42;",
    "symbols": "Ω≈ç√∫˜µ≤≥÷ ∑∏ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 zero\u200bwidth \ufeffbom ﬁ ligature ½ ² ™",
    "chat": CHAT,
    "tool_tokens": "<tool_call>\n{\"name\": \"f\"}\n</tool_call><tool_response>ok</tool_response><|fim_prefix|>x",
}


def _reference_json() -> dict:
    raw = resources.files("edgeqwen").joinpath("data/tokenizer.json.gz").read_bytes()
    return json.loads(gzip.decompress(raw))


@pytest.fixture(scope="module")
def ref() -> HFTokenizer:
    return HFTokenizer.from_str(json.dumps(_reference_json()))


@pytest.fixture(scope="module")
def ref_plain() -> HFTokenizer:
    """The reference with its added tokens removed: every text is plain text."""
    data = _reference_json()
    data["added_tokens"] = []
    return HFTokenizer.from_str(json.dumps(data))


@pytest.fixture(scope="module")
def md(gguf_file) -> dict:
    f = read_gguf(gguf_file("tiny", "q8_0"))
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, (_, v) in f.kv.items()}


@pytest.fixture(scope="module")
def tok(md) -> Tokenizer:
    return Tokenizer.from_gguf_metadata(md, "tiny-q8_0.gguf")


def ref_ids(ref: HFTokenizer, text: str) -> list[int]:
    return ref.encode(text, add_special_tokens=False).ids


def stream_chunks(tok: Tokenizer, ids: list[int], skip_special: bool = False) -> list[str]:
    s = tok.stream(skip_special) if skip_special else tok.stream()
    return [s.feed(i) for i in ids] + [s.flush()]


def complete_prefix(data: bytes) -> str:
    """The text of the longest prefix of `data` that ends on a character boundary."""
    for cut in range(4):
        try:
            return data[:len(data) - cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
    raise AssertionError("not a prefix of valid UTF-8")


# ---------------------------------------------------------------- metadata and build

def test_metadata_attributes(tok, md, ref):
    assert tok.n_vocab == len(md[KEY_TOK_LIST]) == 151936
    assert tok.eos_id == 151645 and tok.token_id("<|im_end|>") == 151645
    assert tok.pad_id == 151643
    assert {151645, 151643} <= tok.stop_ids
    assert tok.stop_ids == {151643, 151645}          # no eot/eom keys in this file
    assert tok.add_bos is False
    assert isinstance(tok.stream(), StreamDecoder)


def test_token_id_and_bytes(tok, ref):
    for text in ("<think>", "</think>", "<|im_start|>", "<|endoftext|>", "hello", "Ġhello", "ĊĊ"):
        assert tok.token_id(text) == ref.token_to_id(text), text
    assert tok.token_id("[PAD151700]") is None       # unused padding is not a token text
    assert tok.token_id("no such token text") is None
    assert tok.token_bytes(tok.token_id("Ġhello")) == b" hello"
    assert tok.token_bytes(tok.token_id("ĊĊ")) == b"\n\n"
    assert tok.token_bytes(151667) == b"<think>"
    assert tok.token_bytes(151700) == b""


def test_gguf_types_of_added_tokens(md, ref):
    """What the difference in skip_special rests on: GGUF CONTROL vs HF special for added tokens."""
    types = md[KEY_TOK_TYPE]
    added = _reference_json()["added_tokens"]
    assert len(added) == 26
    for a in added:
        expected = 3 if a["special"] or a["id"] in CONTROL_NOT_HF_SPECIAL else 4
        assert types[a["id"]] == expected, a
    assert all(t == 5 for t in types[N_REAL:])


def test_pre_tokenizer_regex_is_the_reference_one():
    split = _reference_json()["pre_tokenizer"]["pretokenizers"][0]
    assert PRE_TOKENIZER_REGEX["qwen2"] == split["pattern"]["Regex"]


def test_eot_and_eom_join_stop_ids(md):
    tok = Tokenizer.from_gguf_metadata({**md, KEY_TOK_EOT: 151644, KEY_TOK_EOM: 151646})
    assert tok.stop_ids == {151643, 151644, 151645, 151646}


@pytest.mark.parametrize("change, key", [
    ({KEY_TOK_MODEL: "llama"}, KEY_TOK_MODEL),
    ({KEY_TOK_PRE: "llama-bpe"}, KEY_TOK_PRE),
    ({KEY_TOK_LIST: None}, KEY_TOK_LIST),
    ({KEY_TOK_TYPE: None}, KEY_TOK_TYPE),
    ({KEY_TOK_MERGES: None}, KEY_TOK_MERGES),
    ({KEY_TOK_MERGES: ["a b", "abc"]}, KEY_TOK_MERGES),
    ({KEY_TOK_MERGES: ["Ġ t", "ab", "c d e"]}, KEY_TOK_MERGES),      # spaces add up, entries do not
    ({KEY_TOK_MERGES: ["Ġ t", " ab"]}, KEY_TOK_MERGES),
    ({KEY_TOK_MERGES: ["Ġ t", "a  b"]}, KEY_TOK_MERGES),
    ({KEY_TOK_EOS: None}, KEY_TOK_EOS),
    ({KEY_TOK_EOS: 10**6}, KEY_TOK_EOS),
    ({KEY_TOK_EOS: "151645"}, KEY_TOK_EOS),
    ({KEY_TOK_EOS: -1}, KEY_TOK_EOS),
    ({KEY_TOK_EOS: True}, KEY_TOK_EOS),
    ({KEY_TOK_TYPE: ["1"] * 151936}, KEY_TOK_TYPE),
    ({KEY_TOK_TYPE: [1.0] * 151936}, KEY_TOK_TYPE),
    ({KEY_TOK_TYPE: [[1]] * 151936}, KEY_TOK_TYPE),
    ({KEY_TOK_MERGES: [1, 2]}, KEY_TOK_MERGES),
    ({KEY_TOK_MODEL: "\x1b[2J" * 1000}, KEY_TOK_MODEL),
])
def test_bad_metadata(md, change, key):
    bad = {**md, **change}
    for k, v in change.items():
        if v is None:
            del bad[k]
    with pytest.raises(EdgeQwenError, match=key.replace(".", r"\.")) as e:
        Tokenizer.from_gguf_metadata(bad, "model.gguf")
    assert str(e.value).startswith("model.gguf: ")
    assert str(e.value).isprintable() and len(str(e.value)) < 500      # file strings quoted and cut


def test_bad_metadata_types_length(md):
    with pytest.raises(EdgeQwenError, match=KEY_TOK_TYPE):
        Tokenizer.from_gguf_metadata({**md, KEY_TOK_TYPE: md[KEY_TOK_TYPE][:-1]})


# ---------------------------------------------------------------- encode

@pytest.mark.parametrize("name", CORPUS)
def test_encode_matches_reference(tok, ref, name):
    text = CORPUS[name]
    assert tok.encode(text) == ref_ids(ref, text)


def test_encode_whole_corpus(tok, ref):
    text = "\n".join(CORPUS.values())
    assert tok.encode(text) == ref_ids(ref, text)


def test_encode_special_tokens_in_text(tok):
    ids = tok.encode("<|im_start|>user\nhi<|im_end|>\n<think>\n\n</think>\n\n")
    assert ids == [151644, 872, 198, 6023, 151645, 198, 151667, 271, 151668, 271]


@pytest.mark.parametrize("name", ["chat", "tool_tokens", "english"])
def test_encode_special_false_is_plain_text(tok, ref, ref_plain, name):
    text = CORPUS[name]
    plain = tok.encode(text, special=False)
    assert plain == ref_ids(ref_plain, text)
    assert max(plain) < FIRST_ADDED
    assert tok.decode(plain) == text
    assert tok.encode(text) == ref_ids(ref, text)          # special=False does not stick


def test_encode_special_false_differs_from_default(tok):
    assert max(tok.encode(CHAT)) >= FIRST_ADDED > max(tok.encode(CHAT, special=False))


def test_encode_special_false_every_added_token(tok, ref, ref_plain):
    for i in range(FIRST_ADDED, N_REAL):
        text = f"a{ref.id_to_token(i)}b"
        assert i in tok.encode(text), text
        ids = tok.encode(text, special=False)
        assert ids == ref_ids(ref_plain, text) and max(ids) < FIRST_ADDED, text


def test_nfc_normalization(tok):
    assert tok.encode("e\u0301") == tok.encode("\u00e9")
    assert tok.decode(tok.encode(CORPUS["nfd"])) == unicodedata.normalize("NFC", CORPUS["nfd"])


ADDED_TEXTS = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>", "</think>", "<tool_call>",
               "<|fim_prefix|>", "<|im_", "</think", "\n", "\r\n", " ", "'S", "'ll"]
texts = st.one_of(
    st.text(max_size=80),
    st.lists(st.one_of(st.text(max_size=12), st.sampled_from(ADDED_TEXTS)), max_size=10).map("".join),
    st.text(alphabet=st.sampled_from(list(" \t\n\r\u3000\u00a0aZ9'é😀👍🏽\u200d\u0301中ـ")), max_size=40),
)
HYP = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@HYP
@given(text=texts)
def test_encode_decode_random_text(tok, ref, ref_plain, text):
    ids = tok.encode(text)
    assert ids == ref_ids(ref, text)
    assert tok.decode(ids) == ref.decode(ids, skip_special_tokens=False) == unicodedata.normalize("NFC", text)
    plain = tok.encode(text, special=False)
    assert plain == ref_ids(ref_plain, text)
    assert all(i < FIRST_ADDED for i in plain)


# ---------------------------------------------------------------- decode

@pytest.mark.parametrize("name", CORPUS)
def test_decode_matches_reference(tok, ref, name):
    ids = ref_ids(ref, CORPUS[name])
    assert tok.decode(ids) == ref.decode(ids, skip_special_tokens=False)
    assert tok.decode(ids) == unicodedata.normalize("NFC", CORPUS[name])
    if not set(ids) & CONTROL_NOT_HF_SPECIAL:
        assert tok.decode(ids, skip_special=True) == ref.decode(ids, skip_special_tokens=True)


def test_decode_skip_special(tok):
    ids = tok.encode(CHAT)
    assert tok.decode(ids) == CHAT
    # CONTROL tokens go, USER_DEFINED ones (<think>) stay, as in the reference
    assert tok.decode(ids, skip_special=True) == "user\nhi\nassistant\n<think>\n\n</think>\n\nHello!\n"


def test_decode_skip_special_fim_tokens_are_control(tok, ref):
    """The one known difference from HF: tokens typed CONTROL in the GGUF that HF does not mark special."""
    for i in sorted(CONTROL_NOT_HF_SPECIAL):
        assert tok.decode([i], skip_special=True) == ""
        assert ref.decode([i], skip_special_tokens=True) == ref.id_to_token(i)
        assert tok.decode([i]) == ref.decode([i], skip_special_tokens=False)


def test_decode_out_of_range(tok):
    assert tok.decode([]) == ""
    assert tok.decode([151700, 151935]) == ""            # unused padding ids decode to nothing
    for bad in (-1, 151936):
        with pytest.raises(EdgeQwenError, match="outside the vocabulary"):
            tok.decode([bad])
        with pytest.raises(EdgeQwenError, match="outside the vocabulary"):
            tok.stream().feed(bad)


@HYP
@given(ids=st.lists(st.one_of(st.integers(0, 151935), st.integers(148_000, N_REAL - 1)),
                    max_size=24),
       skip=st.booleans())
def test_decode_random_ids(tok, ref, ids, skip):
    """Arbitrary id sequences, mostly not valid UTF-8: same U+FFFD replacement as the reference."""
    if skip:
        ids = [i for i in ids if i not in CONTROL_NOT_HF_SPECIAL]
    text = tok.decode(ids, skip_special=skip)
    assert text == ref.decode(ids, skip_special_tokens=skip)
    assert "".join(stream_chunks(tok, ids, skip)) == text


# ---------------------------------------------------------------- streaming

@pytest.mark.parametrize("name", CORPUS)
def test_stream_matches_decode(tok, ref, name):
    ids = ref_ids(ref, CORPUS[name])
    full = tok.decode(ids)
    chunks = stream_chunks(tok, ids)
    assert "".join(chunks) == full
    assert chunks[-1] == ""                               # valid UTF-8: nothing left for flush
    emitted, seen = "", b""
    for i, chunk in zip(ids, chunks):
        chunk.encode("utf-8")                             # whole code points only
        if "\ufffd" not in full:
            assert "\ufffd" not in chunk
        emitted += chunk
        seen += tok.token_bytes(i)
        assert emitted == complete_prefix(seen)           # held back exactly the unfinished character


def test_stream_holds_split_characters(tok):
    """The corpus really has characters split over several tokens, and they are emitted whole."""
    split = {}
    for name, text in CORPUS.items():
        ids = tok.encode(text)
        partial = [i for i in ids if _is_partial(tok.token_bytes(i))]
        if partial:
            split[name] = partial
    assert {"emoji", "hindi", "korean", "symbols"} <= set(split), split
    ids = tok.encode("🦜")                               # two tokens: b"\xf0\x9f\xa6", b"\x9c"
    assert len(ids) > 1 and all(_is_partial(tok.token_bytes(i)) for i in ids)
    s = tok.stream()
    assert [s.feed(i) for i in ids] == [""] * (len(ids) - 1) + ["🦜"]
    assert s.flush() == ""


def _is_partial(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return False
    except UnicodeDecodeError:
        return True


def test_stream_flush_incomplete_and_reuse(tok):
    ids = tok.encode("🦜")
    s = tok.stream()
    assert s.feed(tok.encode("ok")[0]) == "ok"
    assert s.feed(ids[0]) == ""
    assert s.flush() == "\ufffd"                         # as decode() of the same ids
    assert tok.decode([tok.encode("ok")[0], ids[0]]) == "ok\ufffd"
    assert "".join(s.feed(i) for i in ids) == "🦜"       # usable again after flush


def test_stream_skip_special(tok):
    ids = tok.encode(CHAT)
    assert "".join(stream_chunks(tok, ids, skip_special=True)) == tok.decode(ids, skip_special=True)
