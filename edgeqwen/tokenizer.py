"""Qwen3's byte-level BPE tokenizer, built from GGUF metadata with HF `tokenizers`, and a streaming
detokenizer.

Encoding reproduces Qwen3's tokenizer.json (NFC normalizer, Qwen2 split regex + ByteLevel, BPE) with
the model rebuilt from the GGUF token list and merges. Decoding is done here at the byte level: every
token id maps to its bytes once (NORMAL tokens through the byte-level alphabet, CONTROL and
USER_DEFINED tokens to their UTF-8 text, UNUSED padding to nothing), which is what HF's ByteLevel
decoder does, and lets `StreamDecoder` be exact and O(1) per token.
"""
from __future__ import annotations

import codecs
import threading
from collections.abc import Iterable
from itertools import accumulate, compress, repeat

import gguf
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers
from tokenizers import Tokenizer as _HFTokenizer

from .constants import (KEY_TOK_ADD_BOS, KEY_TOK_BOS, KEY_TOK_EOM, KEY_TOK_EOS, KEY_TOK_EOT, KEY_TOK_LIST,
                        KEY_TOK_MERGES, KEY_TOK_MODEL, KEY_TOK_PAD, KEY_TOK_PRE, KEY_TOK_TYPE)
from .errors import EdgeQwenError, quote

NORMAL, CONTROL, USER_DEFINED, UNUSED = (int(gguf.TokenType.NORMAL), int(gguf.TokenType.CONTROL),
                                         int(gguf.TokenType.USER_DEFINED), int(gguf.TokenType.UNUSED))

# tokenizer.ggml.pre -> the Split regex of the HF pre-tokenizer (copied from Qwen3's tokenizer.json).
PRE_TOKENIZER_REGEX = {
    "qwen2": (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
              r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
}

# Token texts llama.cpp adds to its end-of-generation set when present.
EOG_TEXTS = ("<|im_end|>", "<|endoftext|>")


def _byte_alphabet() -> dict[str, int]:
    """GPT-2's byte-level alphabet: printable character -> the byte it stands for."""
    bs = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    cs = list(bs)
    extra = 0
    for b in range(256):
        if b not in bs:                  # unprintable bytes -> U+0100, U+0101, ... in byte order
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(bs, cs)}


# str.translate table: alphabet char -> chr(byte); any other char below 256 -> U+FFFF so that the
# latin-1 encode after translating fails for a token that is not pure byte-level text.
_ALPHABET = _byte_alphabet()
_TO_LATIN1 = {cp: "\uffff" for cp in range(256)}
_TO_LATIN1.update({ord(c): chr(b) for c, b in _ALPHABET.items()})


def _token_bytes(text: str) -> bytes:
    """Bytes of a byte-level BPE token, or its UTF-8 if it is not byte-level text (as HF's decoder)."""
    try:
        return text.translate(_TO_LATIN1).encode("latin-1")
    except UnicodeEncodeError:
        return text.encode("utf-8")


def _pieces(tokens: list[str], types: list[int]) -> list[bytes]:
    """Bytes of every token: NORMAL via the byte-level alphabet, added tokens as UTF-8, UNUSED empty."""
    is_normal = list(map(NORMAL.__eq__, types))
    normal = list(compress(range(len(types)), is_normal))
    texts = list(compress(tokens, is_normal))
    try:  # one translate + encode for the whole vocabulary (one char is one byte), then slice
        joined = "".join(texts).translate(_TO_LATIN1).encode("latin-1")
        ends = list(accumulate(map(len, texts)))
        normal_bytes = [joined[a:b] for a, b in zip([0, *ends], ends)]
    except UnicodeEncodeError:
        normal_bytes = [_token_bytes(t) for t in texts]
    pieces = [b""] * len(tokens)
    for i, b in zip(normal, normal_bytes):
        pieces[i] = b
    for i, ty in enumerate(types):
        if ty in (CONTROL, USER_DEFINED):
            pieces[i] = tokens[i].encode("utf-8")
    return pieces


class Tokenizer:
    """Qwen3 tokenizer: `encode` text to ids, `decode` ids to text, `stream()` for incremental output."""

    def __init__(self, hf: _HFTokenizer, tokens: list[str], types: list[int], *, eos_id: int,
                 bos_id: int | None, pad_id: int | None, stop_ids: frozenset[int], add_bos: bool):
        self._hf = hf
        self._tokens, self._types = tokens, types
        self._pieces: dict[int, bytes] = {}    # token id -> bytes, filled as tokens are decoded
        self._control = frozenset(compress(range(len(types)), map(CONTROL.__eq__, types)))
        self._lock = threading.Lock()          # guards hf.encode_special_tokens
        self.n_vocab = len(tokens)
        self.eos_id, self.bos_id, self.pad_id = eos_id, bos_id, pad_id
        self.stop_ids = stop_ids
        self.add_bos = add_bos

    @classmethod
    def from_gguf_metadata(cls, md: dict, source: str = "") -> Tokenizer:
        """Build from GGUF key/value metadata; raises EdgeQwenError naming a missing or invalid key."""
        where = f"{source}: " if source else ""

        def bad(key: str, why: str) -> EdgeQwenError:
            return EdgeQwenError(f"{where}GGUF metadata {key} {why}")

        def get(key: str, kind: type, required: bool = True):
            if key not in md:
                if required:
                    raise bad(key, "is missing")
                return None
            value = md[key]
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise bad(key, f"has type {type(value).__name__}, expected {kind.__name__}")
            return value

        model = get(KEY_TOK_MODEL, str)
        if model != "gpt2":
            raise bad(KEY_TOK_MODEL, f"is {quote(model)}; only 'gpt2' (byte-level BPE, as Qwen3 uses) is supported")
        pre = get(KEY_TOK_PRE, str)
        if pre not in PRE_TOKENIZER_REGEX:
            raise bad(KEY_TOK_PRE, f"is {quote(pre)}; supported pre-tokenizers: {', '.join(PRE_TOKENIZER_REGEX)}")

        tokens = get(KEY_TOK_LIST, list)
        if not tokens or not set(map(type, tokens)) <= {str}:
            raise bad(KEY_TOK_LIST, "must be a non-empty list of strings")
        n = len(tokens)
        types = get(KEY_TOK_TYPE, list)
        if len(types) != n:
            raise bad(KEY_TOK_TYPE, f"has {len(types)} entries for {n} tokens")
        if not set(map(type, types)) <= {int}:
            raise bad(KEY_TOK_TYPE, "must be a list of integers")
        unknown = set(types) - {NORMAL, CONTROL, USER_DEFINED, UNUSED}
        if unknown:
            raise bad(KEY_TOK_TYPE, f"has unsupported token types {sorted(unknown)} "
                                    "(expected 1 normal, 3 control, 4 user-defined, 5 unused)")
        merges = get(KEY_TOK_MERGES, list)
        if not merges:
            raise bad(KEY_TOK_MERGES, "is empty")
        if not set(map(type, merges)) <= {str}:
            raise bad(KEY_TOK_MERGES, "must be a list of strings")
        halves = " ".join(merges).split(" ")      # 'left right' each: one space per merge, no empty side
        if set(map(str.count, merges, repeat(" "))) != {1} or "" in halves:
            wrong = next(m for m in merges if m.count(" ") != 1 or m.startswith(" ") or m.endswith(" "))
            raise bad(KEY_TOK_MERGES, f"has an invalid entry {quote(wrong)} (expected 'left right')")
        pairs = list(zip(halves[::2], halves[1::2]))

        def token_id(key: str, required: bool = False) -> int | None:
            value = get(key, int, required)
            if value is not None and not 0 <= value < n:
                raise bad(key, f"is {value}, outside the vocabulary of {n} tokens")
            return value

        eos = token_id(KEY_TOK_EOS, required=True)
        bos, pad = token_id(KEY_TOK_BOS), token_id(KEY_TOK_PAD)
        eot, eom = token_id(KEY_TOK_EOT), token_id(KEY_TOK_EOM)
        add_bos = bool(get(KEY_TOK_ADD_BOS, bool, required=False))

        used = list(map(UNUSED.__ne__, types))
        vocab = dict(zip(compress(tokens, used), compress(range(n), used)))
        try:
            bpe = models.BPE(vocab, pairs, byte_fallback=False, ignore_merges=False, fuse_unk=False)
        except Exception as e:  # tokenizers raises plain Exception for a merge naming an unknown token
            raise bad(KEY_TOK_MERGES, f"does not fit the token list: {quote(str(e))}") from None
        hf = _HFTokenizer(bpe)
        hf.normalizer = normalizers.NFC()
        hf.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(PRE_TOKENIZER_REGEX[pre]), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False, trim_offsets=False),
        ])
        hf.decoder = decoders.ByteLevel()
        # Added tokens (CONTROL and USER_DEFINED) are matched whole in the raw text. All are marked
        # special here so that `encode_special_tokens` turns every one of them off for special=False;
        # skip_special decoding uses the GGUF CONTROL type instead.
        is_added = map(frozenset((CONTROL, USER_DEFINED)).__contains__, types)
        hf.add_tokens([AddedToken(t, special=True, normalized=False) for t in compress(tokens, is_added)])

        stop = {eos} | {i for i in (eot, eom) if i is not None} | {vocab[t] for t in EOG_TEXTS if t in vocab}
        return cls(hf, tokens, types, eos_id=eos, bos_id=bos, pad_id=pad, stop_ids=frozenset(stop),
                   add_bos=add_bos)

    def encode(self, text: str, special: bool = True) -> list[int]:
        """Token ids of `text` (no BOS added). special=False tokenizes special-token text as plain text."""
        with self._lock:
            self._hf.encode_special_tokens = not special
            ids = self._hf.encode(text, add_special_tokens=False).ids
        if ids and max(ids) >= self.n_vocab:    # the ids index the embedding: never past the token list
            raise EdgeQwenError(f"the tokenizer made token id {max(ids)}, outside its vocabulary of {self.n_vocab}")
        return ids

    def _piece(self, token_id: int) -> bytes:
        piece = self._pieces.get(token_id)
        if piece is None:
            if not 0 <= token_id < self.n_vocab:
                raise EdgeQwenError(f"token id {token_id} is outside the vocabulary of {self.n_vocab} tokens")
            piece = self._pieces[token_id] = _pieces([self._tokens[token_id]], [self._types[token_id]])[0]
        return piece

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        """Text of `ids`; invalid UTF-8 becomes U+FFFD. skip_special drops CONTROL tokens."""
        skip = self._control if skip_special else ()
        return b"".join(self._piece(int(i)) for i in ids if i not in skip).decode("utf-8", "replace")

    def token_id(self, text: str) -> int | None:
        """Id of the token whose text is exactly `text`, else None."""
        return self._hf.token_to_id(text)

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes token `token_id` stands for (b'' for unused padding ids)."""
        return self._piece(token_id)

    def all_token_bytes(self) -> list[bytes]:
        """`token_bytes` of every id, in id order (the whole vocabulary converted at once)."""
        if len(self._pieces) < self.n_vocab:
            self._pieces = dict(enumerate(_pieces(self._tokens, self._types)))
        return [self._pieces[i] for i in range(self.n_vocab)]

    def stream(self, skip_special: bool = False) -> StreamDecoder:
        """A fresh incremental decoder for this tokenizer."""
        return StreamDecoder(self, skip_special)


class StreamDecoder:
    """Incremental detokenizer: the joined outputs of `feed` and `flush` equal `decode(ids)`."""

    def __init__(self, tokenizer: Tokenizer, skip_special: bool = False):
        self._tok = tokenizer
        self._skip = tokenizer._control if skip_special else frozenset()
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")

    def feed(self, token_id: int) -> str:
        """Text completed by this token; bytes of an unfinished character are held back."""
        piece = self._tok._piece(token_id)
        return "" if token_id in self._skip else self._utf8.decode(piece)

    def flush(self) -> str:
        """Whatever is held back (an unfinished character becomes U+FFFD); the decoder is then reset."""
        out = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        return out
