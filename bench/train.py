"""Benchmark: training throughput of our models against transformers', same config, weights and batch.

    python bench/train.py                           # the three architectures, the README run's size, CPU
    python bench/train.py --arch gpt2 --size 124m --batch-size 4 --block-size 256 --steps 5
    python bench/train.py --device cuda --dtype bf16 --size 124m --batch-size 16 --block-size 1024

One training step is what train.py does: forward with the labels, backward, clip the gradient norm, an
AdamW step (fp32 weights; with --dtype bf16, under bf16 autocast). A transformers model of the size is
built with random weights (GPT2LMHeadModel / GPTNeoForCausalLM / GPTNeoXForCausalLM, SDPA attention where
transformers has it, eager for GPT-Neo), saved with save_pretrained, and loaded by our file: the same
weights on both sides. Steps alternate between the two, after --warmup untimed steps each; the median step
time gives tokens/s = batch * block / time. The ratio is ours / transformers (higher is better).
"""
import argparse
import platform
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch

SIZES = {  # n_layer, n_head, n_embd, vocab_size
    "readme": (4, 4, 128, 2048),  # the README's from-scratch GPT-2 (1.1M parameters)
    "small": (6, 6, 384, 4096),  # nanoGPT's Shakespeare model's shape (12M)
    "124m": (12, 12, 768, 50257),  # GPT-2 small / gpt-neo-125m / pythia-160m's shape
}


def hf_model(arch, size, block_size, dropout):
    import transformers
    n_layer, n_head, n_embd, vocab = SIZES[size]
    common = dict(vocab_size=vocab, hidden_size=n_embd, num_hidden_layers=n_layer, num_attention_heads=n_head,
                  max_position_embeddings=block_size, bos_token_id=0, eos_token_id=0)
    if arch == "gpt2":
        config = transformers.GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd, vocab_size=vocab,
                                         n_positions=block_size, embd_pdrop=dropout, attn_pdrop=dropout,
                                         resid_pdrop=dropout, attn_implementation="sdpa")
    elif arch == "gpt_neo":
        config = transformers.GPTNeoConfig(**common, num_layers=n_layer, num_heads=n_head,
                                           attention_types=[[["global", "local"], n_layer // 2]],
                                           window_size=256, embed_dropout=dropout, attention_dropout=dropout,
                                           resid_dropout=dropout, attn_implementation="eager")
    else:
        config = transformers.GPTNeoXConfig(**common, intermediate_size=4 * n_embd, hidden_dropout=dropout,
                                            attention_dropout=dropout, attn_implementation="sdpa")
    return transformers.AutoModelForCausalLM.from_config(config)


def make_step(model, loss_of, autocast):
    """One train.py step on a fixed batch: forward + backward + clip + AdamW."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)

    def step(x):
        with autocast:
            loss = loss_of(model, x)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if x.is_cuda:
            torch.cuda.synchronize()
        return loss.item()
    return step


def bench(arch, args):
    import gpt2
    import gpt_neo
    import gpt_neox
    module = {"gpt2": gpt2, "gpt_neo": gpt_neo, "gpt_neox": gpt_neox}[arch]
    torch.manual_seed(0)
    ref = hf_model(arch, args.size, args.block_size, args.dropout)
    with tempfile.TemporaryDirectory() as d:
        ref.save_pretrained(d)
        ours = module.from_pretrained(d, device=args.device)
    ref = ref.to(args.device).train()
    ours.train()
    autocast = torch.autocast(torch.device(args.device).type, dtype=torch.bfloat16) if args.dtype == "bf16" \
        else nullcontext()
    steps = {"ours": make_step(ours, lambda m, x: m(x, labels=x)[1], autocast),
             "transformers": make_step(ref, lambda m, x: m(x, labels=x).loss, autocast)}
    x = torch.randint(0, ref.config.vocab_size, (args.batch_size, args.block_size), device=args.device,
                      generator=torch.Generator().manual_seed(0) if args.device == "cpu" else None)
    first = {name: step(x) for name, step in steps.items()}  # the same weights: the same first loss
    for _ in range(args.warmup - 1):
        for step in steps.values():
            step(x)
    times = {name: [] for name in steps}
    for _ in range(args.steps):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step(x)
            times[name].append(time.perf_counter() - t0)
    tokens = args.batch_size * args.block_size
    rate = {name: tokens / statistics.median(t) for name, t in times.items()}
    n_params = sum(p.numel() for p in ours.parameters())
    print(f"| {arch} {args.size} ({n_params / 1e6:.1f}M) | {args.batch_size}x{args.block_size} | "
          f"{rate['ours']:,.0f} | {rate['transformers']:,.0f} | {rate['ours'] / rate['transformers']:.2f}x | "
          f"{abs(first['ours'] - first['transformers']):.1e} |", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", nargs="+", default=["gpt2", "gpt_neo", "gpt_neox"])
    p.add_argument("--size", choices=SIZES, default="readme")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--steps", type=int, default=10, help="timed steps per side")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (CPU)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {platform.processor() or 'cpu'}, "
          f"{torch.get_num_threads()} threads, {args.device} {args.dtype}; median of {args.steps} steps\n")
    print("| model | batch x block | ours tok/s | transformers tok/s | ours / transformers | |Δ first loss| |")
    print("|---|---|---|---|---|---|")
    for arch in args.arch:
        bench(arch, args)


if __name__ == "__main__":
    main()
