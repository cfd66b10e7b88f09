"""Train a GPT-2, GPT-Neo or GPT-NeoX on a text file: from scratch, or fine-tuning a checkpoint.

    python train.py --data input.txt --out out --arch gpt2 --vocab-size 2048   # new model, new tokenizer
    python train.py --data input.txt --out out --init gpt2                     # fine-tune a checkpoint
    python train.py --data input.txt --out out --resume                        # continue a stopped run
    torchrun --nproc-per-node 2 train.py --data input.txt --out out ...        # data parallel (DDP)
    python gpt2.py --model out                                                 # sample from the result

The loop is nanoGPT's. The text becomes one long stream of token ids; a batch is B windows of T tokens
cut at random places, and each window is its own target (position t predicts token t + 1). A step runs
--grad-accum such micro-batches forward and backward (their gradients add up), clips the gradient norm
to --grad-clip, and takes an AdamW step at the learning rate of the schedule (a linear warmup, then a
cosine decay to --min-lr). Every --eval-every steps: the loss on held-out text (the last --val-fraction of
the file, never trained on), a sample, and a checkpoint in --out that gpt2.py / gpt_neo.py / gpt_neox.py,
transformers, and --resume all read:

    out/config.json, model.safetensors     save_pretrained: the Hub's layout
    out/vocab.json, merges.txt             the tokenizer (bpe.py's format)
    out/train_state.pt                     step, optimizer state (for --resume)
    out/loss.csv, loss.png                 the loss curve (the PNG if matplotlib is installed)

Under torchrun each process takes its share of every batch and DistributedDataParallel averages the
gradients, so N processes with --batch-size B take the same steps as one process with N * B.
"""
import argparse
import csv
import math
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import bpe
import gpt2
import gpt_neo
import gpt_neox
import heads
import tp

ARCHS = {"gpt2": gpt2, "gpt_neo": gpt_neo, "gpt_neox": gpt_neox}  # config.json's model_type -> model file
CONFIGS = {"gpt2": gpt2.GPT2Config, "gpt_neo": gpt_neo.GPTNeoConfig, "gpt_neox": gpt_neox.GPTNeoXConfig}
DROPOUT = {"gpt2": ["embd_pdrop", "attn_pdrop", "resid_pdrop"],  # each file's names for its dropout rates
           "gpt_neo": ["embed_dropout", "attention_dropout", "resid_dropout"],
           "gpt_neox": ["attention_dropout", "hidden_dropout"]}
STATE = "train_state.pt"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="a UTF-8 text file")
    p.add_argument("--out", required=True, help="the directory for checkpoints and the loss curve")
    what = p.add_argument_group("the model: --init or --arch; add --resume to continue the run in --out")
    what.add_argument("--init", help="fine-tune this checkpoint: a Hub name/id or a directory")
    what.add_argument("--arch", choices=ARCHS, help="train a new model of this architecture")
    what.add_argument("--resume", action="store_true", help="continue the run saved in --out (the model and tokenizer come from there)")
    new = p.add_argument_group("a new model (--arch)")
    new.add_argument("--n-layer", type=int, default=4)
    new.add_argument("--n-head", type=int, default=4)
    new.add_argument("--n-embd", type=int, default=128)
    new.add_argument("--block-size", type=int, default=128, help="the context length, in tokens")
    new.add_argument("--dropout", type=float, default=0.0, help="every dropout rate of the new model")
    new.add_argument("--vocab-size", type=int, help="train a bpe.py tokenizer of this size on --data")
    new.add_argument("--tokenizer", help="or use this tokenizer (a directory or Hub id)")
    new.add_argument("--window-size", type=int, help="gpt_neo: how far back its local layers look (default 256)")
    loop = p.add_argument_group("training")
    loop.add_argument("--max-steps", type=int, default=1000)
    loop.add_argument("--stop-after", type=int, help="stop (with a checkpoint) after this step; --resume goes on")
    loop.add_argument("--batch-size", type=int, default=16, help="windows per micro-batch, per process")
    loop.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step")
    loop.add_argument("--lr", type=float, default=1e-3)
    loop.add_argument("--min-lr", type=float, default=1e-4)
    loop.add_argument("--warmup", type=int, default=100, help="steps of linear warmup")
    loop.add_argument("--weight-decay", type=float, default=0.1)
    loop.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm; 0: none")
    loop.add_argument("--val-fraction", type=float, default=0.1)
    loop.add_argument("--eval-every", type=int, default=100)
    loop.add_argument("--eval-batches", type=int, default=20)
    loop.add_argument("--log-every", type=int, default=10)
    loop.add_argument("--prompt", default="", help="the start of the sample printed at each eval")
    loop.add_argument("--sample-tokens", type=int, default=64)
    loop.add_argument("--seed", type=int, default=1337)
    loop.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    loop.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                      help="autocast dtype; auto: bfloat16 where the device supports it (CUDA), else float32")
    return p.parse_args(argv)


def check_args(args):
    if not args.resume and (args.init is None) == (args.arch is None):
        raise ValueError("give one of --init (fine-tune a checkpoint) or --arch (a new model), or --resume")
    if args.arch and not args.resume and (args.vocab_size is None) == (args.tokenizer is None):
        raise ValueError("a new model (--arch) needs --vocab-size (train a tokenizer on --data) or --tokenizer")
    for name in ("max_steps", "batch_size", "grad_accum", "eval_every", "eval_batches", "log_every",
                 "n_layer", "n_head", "n_embd", "block_size", "sample_tokens"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
    if args.window_size is not None and (args.arch != "gpt_neo" or args.window_size < 1):
        raise ValueError("--window-size is for a new gpt_neo model (--arch gpt_neo) and must be >= 1")
    if not 0 < args.val_fraction < 1 or not 0 <= args.dropout < 1 or args.warmup < 0 or args.lr <= 0:
        raise ValueError("--val-fraction must be in (0, 1), --dropout in [0, 1), --warmup >= 0, --lr > 0")
    if not Path(args.data).is_file():
        raise FileNotFoundError(f"--data {args.data}: no such file")
    if not args.resume and (Path(args.out) / STATE).exists():
        raise ValueError(f"--out {args.out} holds a run already: pass --resume to continue it, or another --out")
    if args.resume and not (Path(args.out) / STATE).exists():
        raise FileNotFoundError(f"--resume: no {STATE} in {args.out}")

# ----------------------------------------------------------------------------- model and data


def model_type(directory):
    """config.json's model_type -> the model file that reads it."""
    path = Path(directory) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"no config.json in {directory}")
    config = gpt2.read_json(path)  # (the model files' reader: a malformed file is named)
    kind = config.get("model_type") if isinstance(config, dict) else None
    if kind not in ARCHS:
        raise ValueError(f"{path}: model_type {kind!r} is not one of {', '.join(ARCHS)}")
    return kind


def new_config(args, tokenizer):
    """The size flags under the config field names all three files accept (GPT-2 and GPT-Neo read the
    generic names as aliases), plus what each architecture needs besides."""
    d = dict(vocab_size=tokenizer.vocab_size, hidden_size=args.n_embd, num_hidden_layers=args.n_layer,
             num_attention_heads=args.n_head, max_position_embeddings=args.block_size,
             bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    d.update(dict.fromkeys(DROPOUT[args.arch], args.dropout))
    if args.arch == "gpt_neo":  # global and local layers in turn, as in GPT-Neo-125M
        d["attention_types"] = [[["global", "local"], args.n_layer // 2]] + [[["global"], 1]] * (args.n_layer % 2)
        if args.window_size is not None:
            d["window_size"] = args.window_size
    if args.arch == "gpt_neox":
        d["intermediate_size"] = 4 * args.n_embd
    return CONFIGS[args.arch].from_dict(d)


def load(args, text, device):
    """(model file, model in train() mode, tokenizer) for --resume, --init or --arch."""
    if args.resume or args.init:
        directory = Path(args.out) if args.resume else heads.checkpoint_dir(args.init)
        kind = model_type(directory)
        model = ARCHS[kind].from_pretrained(directory, device=device).train()
        return ARCHS[kind], model, bpe.Tokenizer.from_pretrained(directory)
    if args.vocab_size is not None:
        print(f"training a {args.vocab_size}-token BPE tokenizer on {args.data} ...", file=sys.stderr)
        tokenizer = bpe.train(text, args.vocab_size, special_tokens=["<|endoftext|>"])
    else:
        tokenizer = bpe.Tokenizer.from_pretrained(args.tokenizer)
    torch.manual_seed(args.seed)  # the same initial weights in every process
    return ARCHS[args.arch], ARCHS[args.arch].from_config(new_config(args, tokenizer), device=device), tokenizer


def context_length(config):
    return getattr(config, "n_positions", None) or config.max_position_embeddings


def split(ids, val_fraction, block_size):
    """The token stream -> (train, held-out): the held-out part is the end of the file."""
    n_val = int(len(ids) * val_fraction)
    train, val = ids[:len(ids) - n_val], ids[len(ids) - n_val:]
    if min(len(train), len(val)) <= block_size:
        raise ValueError(f"--data has {len(ids)} tokens: too few for a training and a held-out part of more "
                         f"than --block-size {block_size} tokens each")
    return train, val


def get_batch(data, batch_size, block_size, seed, rank=0, world=1):
    """This process's batch_size windows of block_size tokens, (B, T), at random offsets. The offsets are
    drawn for all processes at once from `seed` alone, so N processes together see what one process with
    N * batch_size sees, and a resumed run the batches of an uninterrupted one."""
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(len(data) - block_size + 1, (batch_size * world,), generator=g)
    return torch.stack([data[s:s + block_size] for s in starts[rank * batch_size:(rank + 1) * batch_size]])


def step_seed(args, step, micro):
    """A seed per (step, micro-batch): batches and dropout depend on where the run is, not on its past."""
    return args.seed * 1_000_003 + step * args.grad_accum + micro

# ----------------------------------------------------------------------------- optimisation


def make_optimizer(model, args, device):
    """AdamW, with weight decay on the matrices (Linear weights, embeddings) only: biases and LayerNorm
    gains are few, and pulling them toward 0 only fights the normalisation (nanoGPT's rule: dim >= 2)."""
    params = [p for p in model.parameters() if p.requires_grad]  # a tied matrix is listed once
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": args.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), fused=device.type == "cuda")


def learning_rate(step, args):
    """Linear warmup from 0 to --lr over --warmup steps, then a half cosine down to --min-lr at --max-steps."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = min(1.0, (step - args.warmup) / max(1, args.max_steps - args.warmup))
    return args.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (args.lr - args.min_lr)


@torch.no_grad()
def eval_loss(model, data, args, block_size, autocast, rank, world, device):
    """The mean loss over --eval-batches fixed batches of held-out text (the same ones at every eval)."""
    model.eval()
    losses = []
    for i in range(args.eval_batches):
        x = get_batch(data, args.batch_size, block_size, seed=-1 - i, rank=rank, world=world).to(device)
        with autocast:
            losses.append(model(x, labels=x)[1].float())
    model.train()
    loss = torch.stack(losses).mean()
    if world > 1:
        dist.all_reduce(loss, op=dist.ReduceOp.AVG)
    return loss.item()


def sample(module, model, tokenizer, args, device):
    prompt = tokenizer.encode(args.prompt) or [tokenizer.eos_token_id or 0]
    n = min(args.sample_tokens, context_length(model.config) - len(prompt))
    if n < 1:
        return args.prompt
    generator = torch.Generator(device).manual_seed(args.seed)
    ids = module.generate(model, torch.tensor([prompt], device=device), n, temperature=0.8, top_k=50,
                          generator=generator)
    return args.prompt + tokenizer.decode(ids[0, len(prompt):].tolist())

# ----------------------------------------------------------------------------- checkpoints and the curve

CSV_FIELDS = ["step", "train_loss", "val_loss", "lr", "tokens", "seconds"]


def save(out, module, model, tokenizer, optimizer, step, rows):
    """A checkpoint: the model in the Hub's layout, the tokenizer, the optimizer state, the curve."""
    module.save_pretrained(model, out)
    tokenizer.save(out)
    torch.save({"step": step, "optimizer": optimizer.state_dict()}, out / STATE)
    with open(out / "loss.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, out / "loss.png")


def plot(rows, path):
    """loss.png, when matplotlib is installed (an optional extra: the CSV has the same numbers)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in (("train_loss", "train"), ("val_loss", "held-out")):
        points = [(r["step"], r[key]) for r in rows if r[key] != ""]
        if points:
            ax.plot(*zip(*points), label=label, marker="o" if key == "val_loss" else None)
    ax.set(xlabel="step", ylabel="loss (nats/token)")
    ax.legend()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def read_rows(path, up_to):
    """The curve so far, from loss.csv, up to the checkpoint's step."""
    if not path.exists():
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [{k: (v if v == "" else float(v) if k != "step" else int(v)) for k, v in r.items()}
            for r in rows if int(r["step"]) <= up_to]

# ----------------------------------------------------------------------------- the loop


def train(args):
    # Under torchrun: one process per device, joined through gloo (CPU) or NCCL (GPU) by tp.py's init;
    # without it, rank 0 of 1.
    device = torch.device(tp.init(args.device))
    rank, world = tp.rank(), tp.world_size()
    master = rank == 0
    out = Path(args.out)
    text = Path(args.data).read_text(encoding="utf-8")
    module, model, tokenizer = load(args, text, device)
    block_size = min(args.block_size, context_length(model.config))
    ids = torch.tensor(tokenizer.encode_ordinary(text), dtype=torch.long)
    train_data, val_data = split(ids, args.val_fraction, block_size)

    optimizer = make_optimizer(model, args, device)
    start, rows = 0, []
    if args.resume:
        state = torch.load(out / STATE, map_location=device, weights_only=True)  # tensors and numbers only
        optimizer.load_state_dict(state["optimizer"])
        start, rows = state["step"], read_rows(out / "loss.csv", state["step"])
    bf16 = args.dtype == "bfloat16" or (args.dtype == "auto" and device.type == "cuda"
                                        and torch.cuda.is_bf16_supported())
    # bf16 autocast: matmuls in bfloat16, the weights and the optimizer in fp32 (no loss scaling needed).
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    ddp = DDP(model) if world > 1 else model  # averages the gradients across processes in backward()
    tokens_per_step = args.batch_size * block_size * args.grad_accum * world
    if master:
        n_params = sum(p.numel() for p in model.parameters())
        out.mkdir(parents=True, exist_ok=True)
        print(f"{model.config.MODEL_TYPE}: {n_params / 1e6:.2f}M parameters, {len(train_data):,} training and "
              f"{len(val_data):,} held-out tokens, {tokens_per_step:,} tokens per step, {world} process(es), "
              f"{'bfloat16' if bf16 else 'float32'} on {device}", file=sys.stderr)

    stop = min(args.max_steps, args.stop_after or args.max_steps)
    if start == 0:  # where the curve starts: the untrained (or not yet fine-tuned) model
        rows.append(dict(step=0, train_loss="", val_loss=round(eval_loss(model, val_data, args, block_size,
                         autocast, rank, world, device), 6), lr=0.0, tokens=0, seconds=0.0))
    t0, last_log = time.perf_counter(), start
    for step in range(start, stop):
        lr = learning_rate(step, args)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = torch.zeros((), device=device)
        for micro in range(args.grad_accum):
            torch.manual_seed(step_seed(args, step, micro) * world + rank)  # dropout differs per process
            x = get_batch(train_data, args.batch_size, block_size, step_seed(args, step, micro), rank, world)
            x = x.to(device)
            # DDP averages gradients in backward(): only once per step, in the last micro-batch's.
            sync = ddp.no_sync() if world > 1 and micro < args.grad_accum - 1 else nullcontext()
            with sync:
                with autocast:
                    micro_loss = ddp(x, labels=x)[1] / args.grad_accum  # the step's loss is their mean
                micro_loss.backward()
            loss += micro_loss.detach()
        if args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        done = step + 1

        evaluate = done % args.eval_every == 0 or done == stop
        if done % args.log_every == 0 or evaluate:
            if world > 1:
                dist.all_reduce(loss, op=dist.ReduceOp.AVG)
            seconds = time.perf_counter() - t0
            rate = (done - last_log) * tokens_per_step / seconds
            left = (stop - done) * seconds / (done - last_log)
            if master:
                print(f"step {done}/{args.max_steps} | loss {loss.item():.4f} | lr {lr:.2e} | "
                      f"{rate:,.0f} tok/s | {left // 60:.0f}:{left % 60:02.0f} left", file=sys.stderr)
            rows.append(dict(step=done, train_loss=round(loss.item(), 6), val_loss="", lr=lr,
                             tokens=done * tokens_per_step, seconds=round(seconds, 3)))
            t0, last_log = time.perf_counter(), done
        if evaluate:
            val = eval_loss(model, val_data, args, block_size, autocast, rank, world, device)
            rows[-1]["val_loss"] = round(val, 6)
            if master:
                print(f"step {done}: held-out loss {val:.4f}\n--- sample ---\n"
                      f"{sample(module, model, tokenizer, args, device)}\n---", file=sys.stderr)
                save(out, module, model, tokenizer, optimizer, done, rows)
            t0 = time.perf_counter()  # the eval's time is not training time
    if world > 1:
        dist.barrier()  # every process leaves once rank 0's last checkpoint is written
    return rows


def main(argv=None):
    args = parse_args(argv)
    try:
        check_args(args)
        train(args)
    except (ValueError, OSError, RuntimeError) as e:
        sys.exit(f"error: {e}")
    finally:
        tp.finish()  # once train() has returned: the DDP model and its pending work are gone first


if __name__ == "__main__":
    main()
