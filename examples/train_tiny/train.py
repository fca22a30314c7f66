"""Train edgeqwen's built-in demo model: a tiny Qwen3ForCausalLM on generated chat data (tasks.py).

    python examples/train_tiny/train.py                 # writes out/hf and edgeqwen/data/edgeqwen-demo-f16.gguf
    python examples/train_tiny/train.py --steps 20 --out /tmp/t --gguf /tmp/t/demo.gguf   # a quick smoke run

Time: 1800 steps of 8 x 384 tokens (5.5 M tokens), about 42 min at 2,200 tok/s plus ~3 min of data and
tokenizer. One torch thread by default: on the project's 2-core VM shared with other jobs (load 4),
two threads gave 460-620 tok/s against 1,500-2,800 for one (oversubscription); `--threads 2` on an idle
machine. `--save-every N` also writes a converted snapshot every N steps (out/stepN/demo.gguf).

The data is spent on the behaviours the demo is judged by (tasks.py): half the plain prompts are 2-3
digit additions/subtractions and 30% JSON answers, a third of the conversations are tool calls (mostly
the calculator); the reasoning for arithmetic is laid out so that every digit the model has to copy sits
at a fixed distance (tasks.column_steps). The model is narrow (hidden 192, 6 heads of 32) to get more
steps into the budget: one thread trained it at ~2,900 tok/s against ~1,500 for hidden 256 (same load).

Steps (all seeded: the same command on the same torch gives the same weights):
1. generate the conversations (tasks.py) and train a 2048-token byte-level BPE on them with HF
   `tokenizers`, keeping Qwen3's pre-tokenizer (so digits are single tokens), normalizer, decoder,
   its 26 added tokens (<|im_start|>, <think>, <tool_call>, ...) with their flags, and its chat template;
2. train the model (real Qwen3 architecture from transformers: GQA, QK-norm, RoPE, tied embeddings)
   with the loss on the assistant's part of each conversation only (and on whole plain-text stories);
3. save an HF checkpoint (out/hf: config, safetensors, tokenizer files, a model card naming it) and
   convert it with edgeqwen's converter to F16 -> edgeqwen/data/edgeqwen-demo-f16.gguf (F16, not Q8_0:
   the quick start compiles the F16 kernels in seconds, the SIMD quant kernels take minutes).
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(HERE), str(ROOT)]

import numpy as np  # noqa: E402
import tasks  # noqa: E402

QWEN_TOKENIZER = ROOT / "edgeqwen" / "data"
NAME = "edgeqwen-demo (trained by examples/train_tiny, not Qwen3 weights)"


def qwen_tokenizer_files() -> tuple[dict, dict]:
    from converters.synthetic import tokenizer_files
    files = tokenizer_files()
    return json.loads(files["tokenizer.json"]), json.loads(files["tokenizer_config.json"])


def build_tokenizer(texts: list[str], vocab_size: int) -> tuple[dict, dict]:
    """A byte-level BPE trained on `texts` in Qwen3's tokenizer.json / tokenizer_config.json layout."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    qwen, qwen_cfg = qwen_tokenizer_files()
    added = qwen["added_tokens"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = Tokenizer.from_str(json.dumps({**qwen, "model": {"type": "BPE", "vocab": {}, "merges": []},
                                                       "added_tokens": []})).pre_tokenizer
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(added), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    specials = [a["content"] for a in added]

    def plain(t):
        for s in specials:
            t = t.replace(s, "\n")
        return t
    tok.train_from_iterator((plain(t) for t in texts), trainer)
    model = json.loads(tok.to_str())["model"]
    base = len(model["vocab"])          # vocab_size - 26, or fewer when the corpus has no more merges
    new_added = [{**a, "id": base + i} for i, a in enumerate(added)]
    tok_json = {**qwen, "added_tokens": new_added, "model": {**qwen["model"], "vocab": model["vocab"],
                                                             "merges": model["merges"]}}
    cfg = {**qwen_cfg, "added_tokens_decoder": {str(a["id"]): {k: v for k, v in qwen_cfg["added_tokens_decoder"][
        str(old["id"])].items()} for a, old in zip(new_added, added)}}
    return tok_json, cfg


def encode_examples(tok, sequences):
    """[(ids, loss mask)]: each text piece encoded on its own (they meet at special tokens or after a
    newline, where Qwen's pre-tokenizer splits anyway), the loss on the completions only."""
    out = []
    for seq in sequences:
        ids, mask = [], []
        for text, learn in seq:
            piece = tok.encode(text).ids if text else []
            ids += piece
            mask += [int(learn)] * len(piece)
        out.append((ids, mask))
    return out


def pack(encoded, seq_len: int, pad_id: int, rng: random.Random):
    """Whole examples packed greedily into rows of seq_len + 1 tokens (inputs and shifted targets)."""
    import torch

    rng.shuffle(encoded)
    rows, masks, ids, mask = [], [], [], []
    for e, m in encoded:
        if len(e) > seq_len + 1:
            continue
        if len(ids) + len(e) > seq_len + 1:
            rows.append(ids + [pad_id] * (seq_len + 1 - len(ids)))
            masks.append(mask + [0] * (seq_len + 1 - len(mask)))
            ids, mask = [], []
        ids, mask = ids + e, mask + m
    x = torch.tensor(rows, dtype=torch.long)
    y = x[:, 1:].clone()
    y[torch.tensor(masks)[:, 1:] == 0] = -100
    return x[:, :-1].contiguous(), y


def save(model, config, tok_json, tok_cfg, hf: Path, gguf: Path, qtype: str, n_params: int, train_s: float):
    """The HF checkpoint (config, safetensors, tokenizer files, a model card naming it) in `hf`, converted by
    edgeqwen's converter to `gguf`."""
    pad_id = config.pad_token_id
    hf.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(hf, safe_serialization=True)
    (hf / "tokenizer.json").write_text(json.dumps(tok_json, ensure_ascii=False), encoding="utf-8")
    (hf / "tokenizer_config.json").write_text(json.dumps(tok_cfg, ensure_ascii=False, indent=2), encoding="utf-8")
    (hf / "generation_config.json").write_text(json.dumps({
        "bos_token_id": pad_id, "eos_token_id": [config.eos_token_id, pad_id], "pad_token_id": pad_id,
        "do_sample": False}, indent=2))
    (hf / "README.md").write_text(
        f"---\nname: {json.dumps(NAME)}\nauthor: edgeqwen\nlicense: apache-2.0\n---\n\nedgeqwen's demo model: "
        f"{n_params / 1e6:.1f} M parameters, trained in {train_s / 60:.0f} min on generated tasks by "
        "examples/train_tiny/train.py. Not Qwen3's weights.\n")

    from converters.hf_to_gguf import convert
    convert(hf, gguf, qtype, force=True, progress=False)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--conversations", type=int, default=40000)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--hidden", type=int, default=192)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--steps", type=int, default=1800)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=384)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--head-dim", type=int, default=32)
    ap.add_argument("--save-every", type=int, default=0, help="also save and convert a snapshot every N steps")
    ap.add_argument("--out", type=Path, default=HERE / "out")
    ap.add_argument("--gguf", type=Path, default=ROOT / "edgeqwen" / "data" / "edgeqwen-demo-f16.gguf")
    ap.add_argument("--type", default="f16")
    args = ap.parse_args(argv)

    import torch
    from tokenizers import Tokenizer
    from transformers import Qwen3Config, Qwen3ForCausalLM

    t0 = time.time()
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)

    pairs = list(tasks.examples(args.seed, args.conversations))
    tok_json, tok_cfg = build_tokenizer(["".join(t for t, _ in seq) for seq in pairs[:20000]], args.vocab)
    tok = Tokenizer.from_str(json.dumps(tok_json))
    encoded = encode_examples(tok, pairs)
    pad_id = tok.token_to_id("<|endoftext|>")
    n_vocab = tok.get_vocab_size(with_added_tokens=True)
    x, y = pack(encoded, args.seq_len, pad_id, random.Random(args.seed))
    n_tok = sum(len(e) for e, _ in encoded)
    print(f"{len(pairs)} examples, {n_tok} tokens ({n_tok / len(pairs):.0f}/example), {len(x)} rows of "
          f"{args.seq_len}, {(y != -100).float().mean():.2f} with loss; data {time.time() - t0:.0f} s", flush=True)

    heads = args.hidden // args.head_dim
    config = Qwen3Config(vocab_size=n_vocab, hidden_size=args.hidden, intermediate_size=3 * args.hidden,
                         num_hidden_layers=args.layers, num_attention_heads=heads, num_key_value_heads=heads // 2,
                         head_dim=args.head_dim, tie_word_embeddings=True, max_position_embeddings=2048, rope_theta=1e6,
                         rms_norm_eps=1e-6, bos_token_id=pad_id, eos_token_id=tok.token_to_id("<|im_end|>"),
                         pad_token_id=pad_id, torch_dtype="float32")
    model = Qwen3ForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f} M parameters ({args.layers} layers, hidden {args.hidden}, "
          f"{heads} heads / {heads // 2} KV heads, vocab {n_vocab})", flush=True)

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    other = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95))
    warmup = max(1, args.steps // 20)

    def lr_at(step):
        if step < warmup:
            return args.lr * (step + 1) / warmup
        frac = (step - warmup) / max(1, args.steps - warmup)
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    gen = torch.Generator().manual_seed(args.seed)
    order = torch.randperm(len(x), generator=gen)
    t_train, pos, avg = time.time(), 0, None
    model.train()
    for step in range(args.steps):
        if pos + args.batch > len(order):
            order, pos = torch.randperm(len(x), generator=gen), 0
        idx = order[pos:pos + args.batch]
        pos += args.batch
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        logits = model(input_ids=x[idx]).logits
        loss = torch.nn.functional.cross_entropy(logits.view(-1, n_vocab), y[idx].view(-1), ignore_index=-100)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        avg = loss.item() if avg is None else 0.95 * avg + 0.05 * loss.item()
        if args.save_every and step and step % args.save_every == 0:
            snap = args.out / f"step{step}"
            save(model, config, tok_json, tok_cfg, snap / "hf", snap / "demo.gguf", args.type, n_params,
                 time.time() - t_train)
        if step % 25 == 0 or step == args.steps - 1:
            el = time.time() - t_train
            print(f"step {step:5d}  loss {loss.item():.4f}  avg {avg:.4f}  lr {lr_at(step):.2e}  "
                  f"{el / 60:.1f} min  {(step + 1) * args.batch * args.seq_len / el:.0f} tok/s", flush=True)
    train_s = time.time() - t_train
    print(f"trained {args.steps} steps ({args.steps * args.batch * args.seq_len} tokens, "
          f"{min(1.0, args.steps * args.batch / len(x)):.2f} of the data) in {train_s / 60:.1f} min", flush=True)

    save(model, config, tok_json, tok_cfg, args.out / "hf", args.gguf, args.type, n_params, train_s)
    print(f"wrote {args.gguf} ({args.gguf.stat().st_size / 2**20:.2f} MiB); total {(time.time() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main()
