"""Perplexity of a model on texts, and with a base model (e.g. the F16 file of the same weights) the
KL divergence of the model's next-token distributions from the base's: llama.cpp's
`llama-perplexity --kl-divergence` idea, for measuring what a quantization type costs.

Input: a text file (one document) or a JSONL file (.jsonl) of {"text": ...} or {"messages": [...],
"tools": [...]} objects (rendered with the model's chat template, no generation prompt). Each document
is tokenized (special tokens parsed), cut into windows of `ctx` tokens, and every token after the
first of a window is scored given the window's earlier tokens.

Per scored token: NLL = -log p(token); with a base, KL(base || model) = sum_v p_base(v) (log p_base(v)
- log p(v)) and whether both put the same token on top. Figures: PPL = exp(mean NLL) (also for the
base), mean / median / 99th percentile / max KLD, top-1 agreement.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import EdgeQwenError
from .inputs import check_messages, check_tools, decode_utf8, parse_json, read_text_file, split_lines

MAX_INPUT_BYTES = 64 * 2**20


def read_documents(path) -> list:
    """The documents of a text file (one) or a .jsonl file (one per non-blank line: a string for
    {"text"}, a dict with "messages" and optional "tools" for a chat)."""
    if not str(path).endswith(".jsonl"):
        text = read_text_file(path, "text", MAX_INPUT_BYTES)
        if not text:
            raise EdgeQwenError(f"{path}: the text is empty")
        return [text]
    raw = read_text_file(path, "JSONL file", MAX_INPUT_BYTES).encode("utf-8")
    docs = []
    for n, line in split_lines(raw):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        obj = parse_json(decode_utf8(line, where, bom=False), where)
        if not isinstance(obj, dict) or ("text" in obj) == ("messages" in obj):
            raise EdgeQwenError(f"{where}: expected an object with either \"text\" or \"messages\"")
        if "text" in obj:
            if not isinstance(obj["text"], str) or not obj["text"]:
                raise EdgeQwenError(f"{where}: \"text\" must be a non-empty string")
            docs.append(obj["text"])
        else:
            docs.append({"messages": check_messages(obj["messages"], f"{where}: messages"),
                         "tools": check_tools(obj.get("tools"), f"{where}: tools")})
    if not docs:
        raise EdgeQwenError(f"{path}: no documents (every line is blank)")
    return docs


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


@dataclass
class Perplexity:
    nll: np.ndarray                                   # per scored token
    base_nll: np.ndarray | None = None
    kld: np.ndarray | None = None
    same_top: np.ndarray | None = None                # bool per scored token
    n_documents: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def ppl(self) -> float:
        return math.exp(float(self.nll.mean()))

    def as_dict(self) -> dict:
        d = {"documents": self.n_documents, "tokens": int(self.nll.size), "ppl": self.ppl}
        if self.kld is not None:
            d.update(base_ppl=math.exp(float(self.base_nll.mean())), kld_mean=float(self.kld.mean()),
                     kld_median=float(np.median(self.kld)), kld_p99=float(np.percentile(self.kld, 99)),
                     kld_max=float(self.kld.max()), same_top=float(self.same_top.mean()))
        return d

    def lines(self) -> list[str]:
        d = self.as_dict()
        out = [f"documents          {d['documents']}", f"tokens scored      {d['tokens']}",
               f"perplexity         {d['ppl']:.4f}"]
        if self.kld is not None:
            out += [f"base perplexity    {d['base_ppl']:.4f}",
                    f"ln(PPL / base PPL) {math.log(d['ppl'] / d['base_ppl']):+.5f}",
                    f"KLD mean           {d['kld_mean']:.6f}", f"KLD median         {d['kld_median']:.6f}",
                    f"KLD 99th pct       {d['kld_p99']:.6f}", f"KLD max            {d['kld_max']:.6f}",
                    f"same top token     {100 * d['same_top']:.2f} %"]
        return out


def _same_vocab(model, base) -> None:
    a, b = model.tokenizer, base.tokenizer
    if a.n_vocab != b.n_vocab or a.all_token_bytes() != b.all_token_bytes():
        raise EdgeQwenError(f"{base.file.path}: the base model's vocabulary differs from {model.file.path}'s "
                            f"({b.n_vocab} vs {a.n_vocab} tokens): KL divergence needs the same tokens")


def token_windows(model, docs, ctx: int) -> list[list[int]]:
    """Each document tokenized and cut into windows of at most `ctx` tokens (windows of 1 are dropped)."""
    from .chat import ChatEngine

    windows = []
    for doc in docs:
        if isinstance(doc, dict):
            doc = ChatEngine(model).render(doc["messages"], tools=doc["tools"], add_generation_prompt=False)
        ids = model.tokenize(doc)
        windows += [ids[i:i + ctx] for i in range(0, len(ids), ctx) if len(ids[i:i + ctx]) > 1]
    return windows


def perplexity(model, docs, ctx: int = 512, base=None) -> Perplexity:
    """Score `docs` (from read_documents, or a list of strings) with `model` (an edgeqwen Model), and
    with `base` (another Model with the same vocabulary) the KL divergence from it."""
    if not isinstance(ctx, int) or not 2 <= ctx <= model.n_ctx:
        raise EdgeQwenError(f"the window must be between 2 and {model.n_ctx} tokens (the context), got {ctx}")
    if base is not None:
        _same_vocab(model, base)
        if ctx > base.n_ctx:
            raise EdgeQwenError(f"the window of {ctx} tokens does not fit the base model's context of {base.n_ctx}")
    windows = token_windows(model, docs, ctx)
    if not windows:
        raise EdgeQwenError("nothing to score: every document is a single token")
    nll, base_nll, kld, same = [], [], [], []
    for ids in windows:
        target = np.asarray(ids[1:])
        logp = _log_softmax(model.logits(ids)[:-1])
        nll.append(-logp[np.arange(len(target)), target])
        if base is not None:
            base_logp = _log_softmax(base.logits(ids)[:-1])
            base_nll.append(-base_logp[np.arange(len(target)), target])
            kld.append((np.exp(base_logp) * (base_logp - logp)).sum(axis=-1))
            same.append(base_logp.argmax(axis=-1) == logp.argmax(axis=-1))
    cat = lambda xs: np.concatenate(xs) if xs else None       # noqa: E731
    result = Perplexity(cat(nll), cat(base_nll), cat(kld), cat(same), n_documents=len(docs))
    if not np.isfinite(result.nll).all():
        raise EdgeQwenError(f"{model.file.path}: non-finite log-probabilities")
    return result


def run(model_path: str | Path, input_path: str | Path, *, base_path=None, ctx: int = 512,
        threads: int | None = None) -> Perplexity:
    """`edgeqwen perplexity`: load the model(s), read the input, score."""
    from .api import load

    docs = read_documents(input_path)
    model = load(model_path, threads=threads)
    base = load(base_path, threads=threads) if base_path is not None else None
    return perplexity(model, docs, min(ctx, model.n_ctx), base)
