"""Accuracy of quantization (quantize.py) on trained weights: perplexity, top-1 agreement, KL.

    python bench/quantize.py                 # trains the model once (~3 min on 2 idle cores), cached in bench/.cache/
    python bench/quantize.py --retrain
    python bench/quantize.py --shipped       # the three models shipped in models/ instead (no training)
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

The rows: fp32 and bf16 unquantized; int8 weight-only with fp32 and with bf16 activations; int4 weight-only
in bf16 with groups of 32, 64 and 128 (an explicit dtype= keeps PyTorch's weight-only kernels; bf16 was the
default before cpu_kernels.py); and the default, `quantize="int8"` / `"int4"` with no dtype: cpu_kernels.py's
layers, which round their inputs to int8 too (per block of 32), with fp32 activations between the layers.
The default rows run only where quantize.fast_kernels("cpu") holds (x86 with AVX-512 VNNI); elsewhere the
default is PyTorch's bf16 kernels again, already measured, and those rows are skipped with a note.

--shipped: models/pydoc-gpt2, pydoc-gpt-neo and pydoc-gpt-neox (docs/training.md: 700 steps of train.py on
"\n\n".join(pydoc_data.topics.topics.values()), 128-token blocks, the last 10% of the tokens held out by
train.py's split), each read with its own model file and its own tokenizer, evaluated on that held-out
tenth in windows of its 128-token context: fp32; int8 and int4 weight-only in bf16 (the previous default);
int8 and int4 by default (int8 activations). It first recomputes train.py's last held-out eval (its 10 fixed
batches) and compares it with loss.csv, which shows that the text is the one held out in training.

Both commands end with each scheme's "default vs previous default" perplexity change; the int8-activation
default is meant to stay within +0.5% of the bf16 weight-only one.
"""
import argparse
import csv
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch
import torch.nn as nn
import torch.nn.functional as F

import bpe
import generation
import gpt2
import gpt_neo
import gpt_neox
import quantize

CACHE = ROOT / "bench" / ".cache" / "quantize-gpt2-pydoc"
TOKENIZER = ROOT.parent / "shared" / "tokenizers" / "gpt2"
VOCAB, BLOCK = 4096, 256
SHIPPED = [(gpt2, ROOT / "models" / "pydoc-gpt2"), (gpt_neo, ROOT / "models" / "pydoc-gpt-neo"),
           (gpt_neox, ROOT / "models" / "pydoc-gpt-neox")]
# The shipped models' train.py run (docs/training.md): its defaults --val-fraction 0.1, and --batch-size 16,
# --eval-batches 10 as given there
VAL_FRACTION, EVAL_BATCH, EVAL_BATCHES = 0.1, 16, 10
ACCEPT = 0.5  # %: the most the default's perplexity may exceed the previous default's
INT8_ACTS = "int8 in the layers, fp32 between"


class Variant(NamedTuple):
    """One row: how the checkpoint is loaded. dtype None with a scheme: the default (no dtype given)."""
    label: str
    scheme: str | None = None
    dtype: torch.dtype | None = torch.float32
    group_size: int | None = None

    @property
    def default(self):
        return self.scheme is not None and self.dtype is None

    @property
    def previous_default(self):  # PyTorch's weight-only kernels in bf16, the product's group size
        return (self.scheme is not None and self.dtype == torch.bfloat16
                and self.group_size in (None, quantize.GROUP_SIZE))


INT8_DEFAULT = Variant("int8, int8 activations (cpu_kernels.py, the default)", "int8", None)
INT8_BF16 = Variant("int8, weight-only (the previous default)", "int8", torch.bfloat16)
INT4_DEFAULT = Variant("int4, group 32, int8 activations (the default)", "int4", None)
INT4_BF16 = Variant("int4, group 32, weight-only (the previous default)", "int4", torch.bfloat16)
MAIN_VARIANTS = [Variant("fp32"), Variant("bf16 (not quantized)", dtype=torch.bfloat16),
                 Variant("int8, weight-only", "int8"), INT8_BF16, INT8_DEFAULT, INT4_BF16,
                 *[Variant(f"int4, group {g}, weight-only", "int4", torch.bfloat16, g) for g in (64, 128)],
                 INT4_DEFAULT]
SHIPPED_VARIANTS = [Variant("fp32"), INT8_BF16, INT8_DEFAULT, INT4_BF16, INT4_DEFAULT]


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
    fast = quantize.fast_kernels("cpu")  # the layers quantize= builds by default here
    dtype = torch.float32 if fast else torch.bfloat16
    for n in threads:
        if n == "cli":  # what `python gpt_neox.py` chooses for a big model: the cores free now
            n = f"{generation.choose_threads(None, 40e9)} (the CLI's choice)"
        torch.set_num_threads(int(n.split()[0]) if isinstance(n, str) else n)
        rates = {}
        for name, fn in [("convert", lambda: w.float()),
                         ("int8", lambda: quantize.quantized_linear(w, None, "int8", dtype, int8_activations=fast)),
                         ("int4", lambda: quantize.quantized_linear(w, None, "int4", dtype, int8_activations=fast))]:
            rates[name] = w.numel() / best(fn)
        c = rates["convert"]
        print(f"| {n} | {c / 1e6:,.0f} M/s | {rates['int8'] / 1e6:,.0f} M/s | {rates['int8'] / c:.2f} "
              f"| {rates['int4'] / 1e6:,.0f} M/s | {rates['int4'] / c:.2f} |")


@torch.no_grad()
def logprobs(model, windows):
    return torch.cat([F.log_softmax(model(w[None]).float(), dim=-1)[0, :-1] for w in windows])  # (N, V)


def metrics(lp, reference, targets):
    """(perplexity, top-1 agreement with the reference, KL(reference || lp) in nats) of next-token log
    probabilities lp and reference (N, V) against the tokens that came, targets (N,)."""
    ppl = F.nll_loss(lp, targets).exp().item()
    agree = (lp.argmax(-1) == reference.argmax(-1)).float().mean().item()
    kl = (reference.exp() * (reference - lp)).sum(-1).mean().item()
    return ppl, agree, kl


def load(module, directory, v):
    """The checkpoint as row `v` asks: not quantized, quantized while loading (the product's path), or
    quantized afterwards with another int4 group size (with_group_size, weight-only)."""
    if v.scheme is None:
        return module.from_pretrained(directory, dtype=v.dtype)
    if v.group_size in (None, quantize.GROUP_SIZE):
        return module.from_pretrained(directory, quantize=v.scheme, dtype=v.dtype)  # dtype None: the default
    return with_group_size(module.from_pretrained(directory), v.scheme, v.dtype, v.group_size)


def activations(model, v):
    """What the loaded model runs between and in its layers: INT8_ACTS, or its dtype. A default row must
    run cpu_kernels.py in every quantized layer, or it would measure PyTorch's kernels under its name."""
    quantized = (quantize.Int8Linear, quantize.Int4Linear)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, quantized)}
    fast = [n for n, m in layers.items() if m.kernel == quantize.INT8_ACTIVATIONS]
    dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    if v.default and (not layers or len(fast) < len(layers) or dtype != torch.float32):
        slow = sorted(set(layers) - set(fast))
        raise AssertionError(f"{v.label}: loaded with no dtype where quantize.fast_kernels('cpu') holds, yet "
                             f"{len(slow)} of {len(layers)} quantized layers ({', '.join(slow[:4]) or '-'}) do "
                             f"not run quantize.INT8_ACTIVATIONS (cpu_kernels.py), or the activations are "
                             f"{dtype}, not float32: this row would not measure the default")
    if fast:
        return INT8_ACTS
    return {torch.float32: "fp32", torch.bfloat16: "bf16"}.get(dtype, str(dtype))


def runnable(variants):
    """The variants this machine runs: the default rows only where cpu_kernels.py does (else a note)."""
    if quantize.fast_kernels("cpu"):
        return variants
    print("note: quantize.fast_kernels('cpu') is false here (no cpu_kernels.py, or no AVX-512 VNNI): the "
          "default rows (int8 activations) are skipped; the default here is PyTorch's bf16 kernels, the "
          "previous default's rows.\n")
    return [v for v in variants if not v.default]


def evaluate(module, directory, variants, windows):
    """[(variant, activations, perplexity, agreement, KL)] of each variant on windows (n, T); the first
    variant (fp32) is the reference of the agreement and the KL."""
    targets, rows, reference = windows[:, 1:].reshape(-1), [], None
    for v in variants:
        model = load(module, directory, v)
        lp = logprobs(model, windows)
        reference = lp if reference is None else reference
        rows.append((v, activations(model, v), *metrics(lp, reference, targets)))
        print(f"  {directory.name}, {v.label}: perplexity {rows[-1][2]:.3f}", file=sys.stderr, flush=True)
    return rows


def print_table(rows):
    print("| weights | activations | perplexity | vs fp32 | top-1 agree with fp32 | KL(fp32 ‖ this), nats |")
    print("|---|---|---:|---:|---:|---:|")
    base = rows[0][2]
    for v, act, ppl, agree, kl in rows:
        print(f"| {v.label} | {act} | {ppl:.3f} | {100 * (ppl / base - 1):+.2f}% | {100 * agree:.2f}% "
              f"| {kl:.1e} |")


def print_defaults(rows):
    """Per scheme: the default's perplexity against the previous default's (bf16 weight-only)."""
    print()
    for scheme in quantize.SCHEMES:
        new = next((ppl for v, _, ppl, *_ in rows if v.default and v.scheme == scheme), None)
        old = next((ppl for v, _, ppl, *_ in rows if v.previous_default and v.scheme == scheme), None)
        if new is None or old is None:
            continue
        change = 100 * (new / old - 1)
        verdict = f"within +{ACCEPT}%" if change <= ACCEPT else f"MORE than +{ACCEPT}%: fails the criterion"
        print(f"- {scheme}: default vs previous default: perplexity {change:+.2f}% ({new:.3f} against {old:.3f}, "
              f"{verdict})")


def held_out(module, directory):
    """(the held-out tokens of a shipped model's train.py run, read with its own tokenizer, its context):
    the text is docs/training.md's topics.txt, split as train.py splits it."""
    import pydoc_data.topics
    import train as train_py  # (this file's train() trains the other model)
    text = "\n\n".join(pydoc_data.topics.topics.values())  # topics.txt, as docs/training.md writes it
    Tokenizer = generation.fast_tokenizer() or bpe.Tokenizer  # as `gpt2.py --model DIR` reads it
    ids = torch.tensor(generation.load_tokenizer(Tokenizer, directory).encode_ordinary(text))
    context = module.load_config(directory).context_length
    return train_py.split(ids, VAL_FRACTION, context)[1], context


@torch.no_grad()
def check_held_out(module, directory, val, context):
    """A line comparing train.py's last held-out eval (EVAL_BATCHES fixed batches of val), recomputed, with
    loss.csv's: the same, and val is the text held out in training."""
    import train as train_py
    with open(directory / "loss.csv") as f:
        logged = [row for row in csv.DictReader(f) if row["val_loss"]][-1]
    model = module.from_pretrained(directory)
    batches = [train_py.get_batch(val, EVAL_BATCH, context, seed=-1 - i) for i in range(EVAL_BATCHES)]
    loss, want = torch.stack([model(x, labels=x)[1] for x in batches]).mean().item(), float(logged["val_loss"])
    verdict = ("the same: the text held out in training" if abs(loss - want) < 1e-4 else
               "NOT the same: this Python's pydoc_data is not the training text, which may overlap this one")
    return (f"train.py's held-out eval recomputed: {loss:.6f}, loss.csv at step {logged['step']}: {want:.6f} "
            f"({verdict})")


def shipped():
    variants = runnable(SHIPPED_VARIANTS)
    for module, directory in SHIPPED:
        val, context = held_out(module, directory)
        check = check_held_out(module, directory, val, context)
        windows = val[:val.numel() // context * context].view(-1, context)
        rows = evaluate(module, directory, variants, windows)
        print(f"\n`python bench/quantize.py --shipped`: models/{directory.name} ({module.__name__}.py, its own "
              f"tokenizer), on the last {VAL_FRACTION:.0%} of the tokens of pydoc_data.topics (Python "
              f"{sys.version.split()[0]}) that train.py held out: {windows.shape[0]} windows of {context}, "
              f"{windows[:, 1:].numel():,} next-token predictions; {check}; torch {torch.__version__}\n")
        print_table(rows)
        print_defaults(rows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=160)
    p.add_argument("--retrain", action="store_true")
    p.add_argument("--shipped", action="store_true", help="evaluate the models shipped in models/ instead")
    p.add_argument("--speed", action="store_true", help="time the quantizer instead (see speed())")
    p.add_argument("--threads", nargs="+", type=lambda v: v if v == "cli" else int(v), default=[1, 2, "cli"],
                   help="with --speed: torch thread counts ('cli': what the CLIs choose, the cores free now)")
    args = p.parse_args(argv)
    if args.speed:
        return speed(args.threads)
    if args.shipped:
        return shipped()
    ids = corpus_ids()
    split = int(0.9 * ids.numel())
    if args.retrain or not (CACHE / "model.safetensors").exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        print(f"training on {split:,} tokens:", file=sys.stderr)
        train(ids[:split], CACHE, args.steps)
    held = ids[split:]
    windows = held[:held.numel() // BLOCK * BLOCK].view(-1, BLOCK)
    rows = evaluate(gpt2, CACHE, runnable(MAIN_VARIANTS), windows)

    trained = json.loads((CACHE / "trained.json").read_text())
    print(f"\n`python bench/quantize.py`: GPT-2-shaped, n_embd 256, 4 layers, vocab {VOCAB}, trained "
          f"{trained['steps']} steps on {split:,} tokens of pydoc_data.topics; held out: "
          f"{windows[:, 1:].numel():,} next-token predictions; torch {torch.__version__}\n")
    print_table(rows)
    print_defaults(rows)


if __name__ == "__main__":
    main()
