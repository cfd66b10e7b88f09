"""Accuracy of weight-only quantization (quantize.py) on trained weights: perplexity, top-1 agreement, KL.

    python bench/quantize.py                 # trains the model once (~3 min on 2 idle cores), cached in bench/.cache/
    python bench/quantize.py --retrain
    python bench/quantize.py --speed         # the quantizer's speed against an fp16 -> fp32 conversion

Random weights hide quantization error (their rows have no outliers, their logits are near-flat), so this
trains a small GPT-2-shaped model on real text first: the Python reference manual that ships with Python
(`pydoc_data.topics`, ~0.47 MB), tokenized with the GPT-2 tokenizer (bpe.py, ../shared/tokenizers/gpt2) and
mapped onto its 4,095 most frequent tokens (+ one "other" token) so that the embedding does not dominate.
The model (n_embd 256, 4 layers, 4 heads: int4 groups of 32-128 along rows of 256 and 1024) is trained with
transformers (AdamW, a few hundred steps) on the first 90% of the text and saved as a Hub checkpoint; every
row below loads that checkpoint with gpt2.py and is evaluated on the last 10%, in windows of 256 tokens:

  perplexity    exp(mean next-token cross-entropy) on the held-out text, and its change against fp32
  top-1 agree   how often the most likely next token is the fp32 model's
  KL            mean over positions of KL(p_fp32 || p_quantized) of the next-token distributions, in nats
"""
import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch
import torch.nn as nn
import torch.nn.functional as F

import gpt2
import quantize

CACHE = ROOT / "bench" / ".cache" / "quantize-gpt2-pydoc"
TOKENIZER = ROOT.parent / "shared" / "tokenizers" / "gpt2"
VOCAB, BLOCK = 4096, 256


def corpus_ids():
    """The reference manual as ids in 0..VOCAB-1: GPT-2's tokens, the VOCAB - 1 most frequent kept."""
    import pydoc_data.topics
    from bpe import Tokenizer
    text = "\n\n".join(pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics))
    ids = torch.tensor(Tokenizer.from_pretrained(TOKENIZER).encode_ordinary(text))
    counts = torch.bincount(ids)
    kept = counts.argsort(descending=True)[:VOCAB - 1]
    remap = torch.full((counts.numel(),), VOCAB - 1)  # every other token -> the last id
    remap[kept] = torch.arange(VOCAB - 1)
    return remap[ids]


def train(ids, directory, steps, seed=0):
    import transformers
    torch.manual_seed(seed)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=BLOCK, n_embd=256, n_layer=4, n_head=4)
    model = transformers.GPT2LMHeadModel(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.1, betas=(0.9, 0.95))
    batch, T = 8, 128
    t0 = time.time()
    for step in range(steps):
        lr = 2e-3 * min(1, (step + 1) / 20) * 0.5 * (1 + math.cos(math.pi * step / steps))  # warmup, cosine
        for group in optimizer.param_groups:
            group["lr"] = lr
        starts = torch.randint(0, ids.numel() - T - 1, (batch,))
        x = torch.stack([ids[s:s + T] for s in starts])
        loss = model(x, labels=x).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 50 == 0 or step == steps - 1:
            print(f"  step {step}: loss {loss.item():.3f} ({time.time() - t0:.0f}s)", file=sys.stderr, flush=True)
    model.eval().save_pretrained(directory)
    (directory / "trained.json").write_text(json.dumps({"steps": steps, "seconds": round(time.time() - t0)}))


def with_group_size(model, scheme, dtype, group_size):
    """An fp32 model -> quantized as from_pretrained(quantize=scheme) does, with another int4 group size."""
    for name, linear in [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]:
        layer = quantize.quantized_linear(linear.weight.detach(), linear.bias, scheme, dtype, group_size)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, layer)
    return model.to(dtype)


def speed(threads, repeats=5):
    """Building each quantized layer from a 6144 x 6144 fp16 weight (the 20B's attention.dense) against a plain
    fp16 -> fp32 conversion of the same weight, best of `repeats`, per torch thread count: a ratio, because
    this machine's speed drifts with its load."""
    torch.manual_seed(0)
    w = (torch.randn(6144, 6144) * 0.02).half()

    def best(fn):
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    print(f"`python bench/quantize.py --speed`: a 6144 x 6144 fp16 weight, best of {repeats}; load average {load} "
          f"on {os.cpu_count()} cores; torch {torch.__version__}\n")
    print("| torch threads | fp16 -> fp32 | int8 layer | ratio | int4 layer | ratio |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n in threads:
        torch.set_num_threads(n)
        rates = {}
        for name, fn in [("convert", lambda: w.float()),
                         ("int8", lambda: quantize.quantized_linear(w, None, "int8", torch.bfloat16)),
                         ("int4", lambda: quantize.quantized_linear(w, None, "int4", torch.bfloat16))]:
            rates[name] = w.numel() / best(fn)
        c = rates["convert"]
        print(f"| {n} | {c / 1e6:,.0f} M/s | {rates['int8'] / 1e6:,.0f} M/s | {rates['int8'] / c:.2f} "
              f"| {rates['int4'] / 1e6:,.0f} M/s | {rates['int4'] / c:.2f} |")


@torch.no_grad()
def logprobs(model, windows):
    return torch.cat([F.log_softmax(model(w[None]).float(), dim=-1)[0, :-1] for w in windows])  # (N, V)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=160)
    p.add_argument("--retrain", action="store_true")
    p.add_argument("--speed", action="store_true", help="time the quantizer instead (see speed())")
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2], help="with --speed: torch thread counts")
    args = p.parse_args(argv)
    if args.speed:
        return speed(args.threads)
    ids = corpus_ids()
    split = int(0.9 * ids.numel())
    if args.retrain or not (CACHE / "model.safetensors").exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        print(f"training on {split:,} tokens:", file=sys.stderr)
        train(ids[:split], CACHE, args.steps)
    held_out = ids[split:]
    windows = held_out[:held_out.numel() // BLOCK * BLOCK].view(-1, BLOCK)
    targets = windows[:, 1:].reshape(-1)

    reference = logprobs(gpt2.from_pretrained(CACHE), windows)
    rows = []
    variants = [("fp32", None, torch.float32, None), ("bf16 (not quantized)", None, torch.bfloat16, None),
                ("int8, fp32 activations", "int8", torch.float32, None), ("int8", "int8", torch.bfloat16, None)]
    variants += [(f"int4, group {g}", "int4", torch.bfloat16, g) for g in (32, 64, 128)]
    for label, scheme, dtype, group_size in variants:
        if scheme is None:
            model = gpt2.from_pretrained(CACHE, dtype=dtype)
        elif group_size in (None, quantize.GROUP_SIZE):  # the product's path: quantized while loading
            model = gpt2.from_pretrained(CACHE, quantize=scheme, dtype=dtype)
        else:
            model = with_group_size(gpt2.from_pretrained(CACHE), scheme, dtype, group_size)
        lp = logprobs(model, windows)
        ppl = F.nll_loss(lp, targets).exp().item()
        agree = (lp.argmax(-1) == reference.argmax(-1)).float().mean().item()
        kl = (reference.exp() * (reference - lp)).sum(-1).mean().item()
        rows.append((label, ppl, agree, kl))
        print(f"  {label}: perplexity {ppl:.3f}", file=sys.stderr, flush=True)

    trained = json.loads((CACHE / "trained.json").read_text())
    print(f"\n`python bench/quantize.py`: GPT-2-shaped, n_embd 256, 4 layers, vocab {VOCAB}, trained "
          f"{trained['steps']} steps on {split:,} tokens of pydoc_data.topics; held out: {targets.numel():,} "
          f"next-token predictions; torch {torch.__version__}\n")
    print("| weights | activations | perplexity | vs fp32 | top-1 agree with fp32 | KL(fp32 ‖ this), nats |")
    print("|---|---|---:|---:|---:|---:|")
    base = rows[0][1]
    for label, ppl, agree, kl in rows:
        weights, _, act = label.partition(", ")
        act = "fp32" if label == "fp32" or "fp32" in act else "bf16"
        print(f"| {label.replace(', fp32 activations', '')} | {act} | {ppl:.3f} | {100 * (ppl / base - 1):+.2f}% "
              f"| {100 * agree:.2f}% | {kl:.1e} |")


if __name__ == "__main__":
    main()
