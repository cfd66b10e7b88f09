"""Train a GPT-2, GPT-Neo or GPT-NeoX on a text file: from scratch, or fine-tuning a checkpoint.

    python train.py --data input.txt --out out --arch gpt2 --vocab-size 2048   # new model, new tokenizer
    python train.py --data input.txt --out out --init gpt2                     # fine-tune a checkpoint
    python train.py --out out --resume                                         # continue a stopped run
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
    out/vocab.json, merges.txt             the tokenizer, in the form it came in (or tokenizer.json)
    out/train_state.pt                     step, optimizer state, the run's settings, the files' digests
    out/loss.csv, loss.png                 the loss curve (the PNG if matplotlib is installed)

A checkpoint is one unit: its files are written into a temporary directory inside --out and moved into
place only once all are written, so a kill or a full disk leaves the previous checkpoint whole, and
--resume checks every file against the digests in train_state.pt. --resume takes the run's settings from
there; a flag given again must agree (the few that may change, such as --max-steps, are printed).

Under torchrun each process takes its share of every batch and DistributedDataParallel averages the
gradients, so N processes with --batch-size B take the same steps as one process with N * B.
"""
import argparse
import csv
import errno
import hashlib
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import SafetensorError
from torch.nn.parallel import DistributedDataParallel as DDP

import bpe
import bpe_fast
import checkpoint
import generation
import heads
import tp

ARCHS = list(checkpoint.MODEL_FILES)  # config.json's model_type: gpt2, gpt_neo, gpt_neox
STATE = "train_state.pt"
TOKENIZER_FILES = [name for names, _ in bpe.FORMATS for name in names]  # tokenizer.json, vocab.json, ...
# The flags that belong to this invocation, not to the run (never saved), and those a resumed run may
# change (printed when they do); every other flag is the run's, fixed at its start.
NOT_SAVED = {"out", "resume", "stop_after", "device", "threads"}
MAY_CHANGE = {"max_steps", "eval_every", "eval_batches", "log_every", "prompt", "sample_tokens", "dtype"}


def parse_args(argv=None):
    """(the arguments, {flag: value} of those given on the command line: --resume compares them with the
    run's)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", help="a UTF-8 text file (--resume: the run's)")
    p.add_argument("--out", required=True, help="the directory for checkpoints and the loss curve")
    what = p.add_argument_group("the model: --init or --arch; add --resume to continue the run in --out")
    what.add_argument("--init", help="fine-tune this checkpoint: a Hub name/id or a directory")
    what.add_argument("--arch", choices=ARCHS, help="train a new model of this architecture")
    what.add_argument("--resume", action="store_true",
                      help="continue the run saved in --out, with its settings (model, tokenizer, flags)")
    new = p.add_argument_group("a new model (--arch)")
    new.add_argument("--n-layer", type=int, default=4, help="transformer blocks")
    new.add_argument("--n-head", type=int, default=4, help="attention heads")
    new.add_argument("--n-embd", type=int, default=128, help="the width of the residual stream")
    new.add_argument("--block-size", type=int, default=128,
                     help="the context length, in tokens (--init: at most the model's)")
    new.add_argument("--dropout", type=float, default=0.0, help="every dropout rate of the new model")
    new.add_argument("--vocab-size", type=int, help="train a bpe.py tokenizer of this size on --data")
    new.add_argument("--tokenizer", help="or use this tokenizer (a directory or Hub id)")
    new.add_argument("--tokenizer-json", action="store_true",
                     help="save the --vocab-size tokenizer as one tokenizer.json (Pythia's format), "
                          "not vocab.json + merges.txt")
    new.add_argument("--window-size", type=int, help="gpt_neo: how far back its local layers look (default 256)")
    loop = p.add_argument_group("training")
    loop.add_argument("--max-steps", type=int, default=1000, help="the run's length: the schedule ends there")
    loop.add_argument("--stop-after", type=int, help="stop (with a checkpoint) after this step; --resume goes on")
    loop.add_argument("--batch-size", type=int, default=16, help="windows per micro-batch, per process")
    loop.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step")
    loop.add_argument("--lr", type=float, default=1e-3, help="the peak learning rate")
    loop.add_argument("--min-lr", type=float, default=1e-4, help="the learning rate at --max-steps")
    loop.add_argument("--warmup", type=int, default=100, help="steps of linear warmup")
    loop.add_argument("--weight-decay", type=float, default=0.1, help="AdamW's, on the matrices only")
    loop.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm; 0: none")
    loop.add_argument("--val-fraction", type=float, default=0.1, help="the end of --data, held out")
    loop.add_argument("--eval-every", type=int, default=100, help="steps between evals and checkpoints")
    loop.add_argument("--eval-batches", type=int, default=20, help="batches per held-out loss")
    loop.add_argument("--log-every", type=int, default=10, help="steps between log lines")
    loop.add_argument("--prompt", default="", help="the start of the sample printed at each eval")
    loop.add_argument("--sample-tokens", type=int, default=64, help="the length of the sample at each eval")
    loop.add_argument("--seed", type=int, default=1337, help="the weights, batches and dropout follow from it")
    loop.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu, cuda, ...")
    loop.add_argument("--threads", type=int, default=None,
                      help="CPU threads per process (default: one per core; on a machine that another job shares, "
                      "fewer: see docs/speed.md)")
    loop.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                      help="autocast dtype; auto: bfloat16 where the device supports it (CUDA), else float32")
    args = p.parse_args(argv)  # --help (with the defaults) and argparse's own errors happen here
    p.set_defaults(**dict.fromkeys(vars(args), None))  # parsed again without defaults: what was given
    given = {k: v for k, v in vars(p.parse_args(argv)).items() if v is not None}
    return args, given


def flag(name):
    return "--" + name.replace("_", "-")


def check_args(args, given):
    """Every number and choice, before any work."""
    if not args.resume and (args.init is None) == (args.arch is None):
        raise ValueError("give one of --init (fine-tune a checkpoint) or --arch (a new model), or --resume")
    if args.arch and (args.vocab_size is None) == (args.tokenizer is None):
        raise ValueError("a new model (--arch) needs --vocab-size (train a tokenizer on --data) or --tokenizer")
    new_model = [flag(k) for k in ("n_layer", "n_head", "n_embd", "dropout", "vocab_size", "tokenizer") if k in given]
    if args.init and new_model:  # (they would be ignored: the checkpoint has its sizes and tokenizer)
        raise ValueError(f"{new_model[0]} is for a new model (--arch); --init takes the checkpoint's")
    if args.data is None:
        raise ValueError("--data is required (a UTF-8 text file)")
    for name in ("max_steps", "batch_size", "grad_accum", "eval_every", "eval_batches", "log_every",
                 "n_layer", "n_head", "n_embd", "block_size", "sample_tokens", "stop_after", "vocab_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"{flag(name)} must be >= 1, got {getattr(args, name)}")
    if args.tokenizer_json and args.vocab_size is None:
        raise ValueError("--tokenizer-json is for a tokenizer trained here (--arch with --vocab-size); "
                         "a --tokenizer or --init checkpoint keeps the files it came in")
    if args.window_size is not None and (args.arch != "gpt_neo" or args.window_size < 1):
        raise ValueError("--window-size is for a new gpt_neo model (--arch gpt_neo) and must be >= 1")
    if args.warmup < 0:
        raise ValueError(f"--warmup must be >= 0, got {args.warmup}")
    if not 0 <= args.seed < 2**32:  # (a seed per step is derived from it: keep it far from int64's end)
        raise ValueError(f"--seed must be in [0, 2**32), got {args.seed}")
    ranges = {"lr": (lambda v: v > 0, "> 0"), "min_lr": (lambda v: 0 <= v <= args.lr, "in [0, --lr]"),
              "weight_decay": (lambda v: v >= 0, ">= 0"), "grad_clip": (lambda v: v >= 0, ">= 0 (0: none)"),
              "dropout": (lambda v: 0 <= v < 1, "in [0, 1)"), "val_fraction": (lambda v: 0 < v < 1, "in (0, 1)")}
    for name, (ok, bounds) in ranges.items():
        if not (math.isfinite(getattr(args, name)) and ok(getattr(args, name))):
            raise ValueError(f"{flag(name)} must be a finite number {bounds}, got {getattr(args, name)}")
    if not Path(args.data).is_file():
        hint = "" if "data" in given else " (the run's --data: pass --data, the same text, where it is now)"
        raise FileNotFoundError(f"--data {args.data}: no such file{hint}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a directory")
    if not args.resume and ((out / STATE).exists() or (out / checkpoint.COMMITTED).exists()):
        raise ValueError(f"--out {out} holds a run already: pass --resume to continue it, or another --out")
    entries = sorted(f.name for f in out.iterdir() if not f.name.startswith(".tmp-")) if out.is_dir() else []
    if not args.resume and entries:  # (.tmp-*: a first save that was killed, never whole)
        example = entries[0]
        raise ValueError(f"--out {out} is not empty (it holds {example}, ...): a new run writes into an empty "
                         "or new directory only, so that nothing of yours is overwritten or mixed with it")


def resumed_args(args, given, state):
    """--resume: the run's saved settings, with the flags given now. A flag that would change the run is
    refused; the few that may change (MAY_CHANGE) are printed."""
    saved, path = state["args"], Path(args.out) / STATE
    merged = vars(args) | {k: v for k, v in saved.items() if k in vars(args) and k not in NOT_SAVED}
    for name, value in given.items():
        if name in NOT_SAVED or name not in saved or value == saved[name]:
            continue
        if name in MAY_CHANGE:
            print(f"{flag(name)} {value} (the run had {saved[name]})", file=sys.stderr)
        elif name != "data":  # (--data is compared by its content, once it is read)
            raise ValueError(f"{flag(name)} {value} differs from the run's {saved[name]} ({path}): a resumed "
                             f"run keeps its settings; leave {flag(name)} out, or start a new run")
        merged[name] = value
    return argparse.Namespace(**merged)

# ----------------------------------------------------------------------------- model and data


def read_data(path):
    """(the text, the sha256 of the file: --resume goes on only with the text the run trained on)."""
    raw = Path(path).read_bytes()
    try:
        return raw.decode("utf-8"), hashlib.sha256(raw).hexdigest()
    except UnicodeDecodeError as e:
        raise ValueError(f"--data {path} is not UTF-8 text ({e})") from None


def model_type(directory):
    """config.json's model_type -> the model file that reads it."""
    path = Path(directory) / "config.json"
    kind = checkpoint.read_json_object(path).get("model_type")
    if kind not in ARCHS:
        raise ValueError(f"{path}: model_type {kind!r} is not one of {', '.join(ARCHS)}")
    return kind


def new_config(args, tokenizer):
    """The size flags under the config field names all three files accept (GPT-2 and GPT-Neo read the
    generic names as aliases), plus what each architecture needs besides."""
    d = dict(vocab_size=tokenizer.vocab_size, hidden_size=args.n_embd, num_hidden_layers=args.n_layer,
             num_attention_heads=args.n_head, max_position_embeddings=args.block_size,
             bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    if args.arch == "gpt_neo":  # global and local layers in turn, as in GPT-Neo-125M
        d["attention_types"] = [[["global", "local"], args.n_layer // 2]] + [[["global"], 1]] * (args.n_layer % 2)
        if args.window_size is not None:
            d["window_size"] = args.window_size
    if args.arch == "gpt_neox":
        d["intermediate_size"] = 4 * args.n_embd
    config = checkpoint.model_file(args.arch).read_config(d)
    return replace(config, **dict.fromkeys(config.DROPOUT, args.dropout))  # each file's names for its rates


def init_dir(name):
    """--init's directory (heads.checkpoint_dir: a directory, a Hub id or a short name). A name that is
    not found but is a model shipped in models/ is answered with that model's path."""
    try:
        return heads.checkpoint_dir(name)
    except (OSError, ValueError) as error:
        shipped = Path(__file__).resolve().parent / "models" / name
        if not shipped.is_dir() or Path(name).expanduser().exists():
            raise
        raise ValueError(f"{error}; the model shipped here is --init {os.path.relpath(shipped)}") from None


def load_tokenizer(args, text, directory):
    """(tokenizer, its files {name: bytes}) from the checkpoint (--resume, --init), --tokenizer, or trained
    on the text (--vocab-size). Each checkpoint carries these bytes: the tokenizer in the form it came in
    (a tokenizer.json copied as it is: vocab.json + merges.txt cannot hold NeoX's), and a file left in
    --out is never taken for it."""
    source = directory or args.tokenizer
    if source is None:
        print(f"training a {args.vocab_size}-token BPE tokenizer on {args.data} ...", file=sys.stderr)
        tokenizer = bpe_fast.train(text, args.vocab_size, special_tokens=["<|endoftext|>"])
        with tempfile.TemporaryDirectory() as tmp:
            if args.tokenizer_json:  # read back, so the run encodes with exactly what it saves
                bpe.save_tokenizer_json(tokenizer, tmp)
                tokenizer = bpe_fast.Tokenizer.from_pretrained(tmp)
            else:
                tokenizer.save(tmp)  # bpe.py's writer: vocab.json + merges.txt
            return tokenizer, {f.name: f.read_bytes() for f in sorted(Path(tmp).iterdir())}
    tokenizer, files = bpe.load(bpe_fast.Tokenizer, source)  # and the files it was read from
    return tokenizer, {name: Path(path).read_bytes() for name, path in files.items()}


def check_sizes(args, given, config, tokenizer):
    """The context and the vocabulary against the model, before any weight exists. Returns the block size:
    --block-size, or the model's context if that is shorter."""
    context = config.context_length
    if "block_size" in given and args.block_size > context:
        raise ValueError(f"--block-size {args.block_size} is beyond the model's context of {context} tokens")
    if tokenizer.vocab_size > config.vocab_size:
        raise ValueError(f"the tokenizer has ids up to {tokenizer.vocab_size - 1}, beyond the model's "
                         f"vocab_size {config.vocab_size}")
    if args.arch and not args.init:  # a new model: an embedding row for every id of the tokenizer
        n_ids = len(set(tokenizer.vocab.values()) | {t.id for t in tokenizer.added_tokens})
        if tokenizer.vocab_size > 2 * n_ids:
            raise ValueError(f"--tokenizer {args.tokenizer}: its highest id is {tokenizer.vocab_size - 1} for "
                             f"{n_ids} tokens; a new model would need an embedding row for every id up to it")
    return min(args.block_size, context)


def check_memory(args, config, device):
    """A new model's training state must fit in the device's memory: refuse a size that cannot, before
    allocating. AdamW keeps 4 fp32 numbers a parameter (weight, gradient, two moments); ~12 n_embd^2 a
    layer, and the embeddings (twice: NeoX's head is untied)."""
    params = (2 * config.vocab_size + args.block_size) * args.n_embd + 12 * args.n_layer * args.n_embd**2
    memory = (torch.cuda.get_device_properties(device).total_memory if device.type == "cuda"
              else os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    if 16 * params > memory:
        raise ValueError(f"a model of --n-layer {args.n_layer} --n-embd {args.n_embd} --block-size "
                         f"{args.block_size} and {config.vocab_size} tokens has ~{params / 1e9:.1f}B parameters: "
                         f"training it needs ~{16 * params / 2**30:.0f} GiB, more than {device}'s "
                         f"{memory / 2**30:.0f} GiB")


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
    n = min(args.sample_tokens, model.config.context_length - len(prompt))
    if n < 1:
        return args.prompt
    generator = torch.Generator(device).manual_seed(args.seed)
    ids = module.generate(model, torch.tensor([prompt], device=device), n, temperature=0.8, top_k=50,
                          generator=generator)
    return args.prompt + tokenizer.decode(ids[0, len(prompt):].tolist())

# ----------------------------------------------------------------------------- checkpoints and the curve

CSV_FIELDS = ["step", "train_loss", "val_loss", "lr", "tokens", "seconds"]
STATE_KEYS = {"step", "optimizer", "args", "data_sha256", "files"}


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def save(out, module, model, tokenizer_files, optimizer, step, rows, settings, previous):
    """A checkpoint, as one unit: the model in the Hub's layout, the tokenizer's files, the loss curve, and
    train_state.pt (the step, the optimizer state, the run's settings and the sha256 of every other file,
    which --resume checks). checkpoint.write_files writes them into a temporary directory inside --out and moves
    them into place only once all are written: a kill or a full disk leaves the previous checkpoint whole."""
    def write(directory):
        checkpoint.save_pretrained(model, directory, module.hub_state_dict, tokenizer=False)
        for name, data in tokenizer_files.items():
            (directory / name).write_bytes(data)
        write_rows(rows, directory / "loss.csv")
        plot(rows, directory / "loss.png")
        files = {f.name: sha256(f) for f in sorted(directory.iterdir()) if f.is_file()}
        torch.save({"step": step, "optimizer": optimizer.state_dict(), **settings, "files": files},
                   directory / STATE)

    out.mkdir(parents=True, exist_ok=True)
    try:
        # (torch.save and safetensors meet a full disk with "unexpected pos ..." or worse: check first)
        if checkpoint_bytes(model, optimizer, tokenizer_files) > shutil.disk_usage(out).free:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        with interrupt_after():  # Ctrl-C during a save: the save finishes first
            checkpoint.write_files(out, write)  # (save_pretrained's atomic writer)
    except (OSError, RuntimeError, SafetensorError) as e:  # a disk error, and what torch makes of one
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).strip().split("\n")[0]
        before = f"the checkpoint of step {previous} there is as it was" if previous else "no checkpoint is there"
        raise OSError(f"could not write the checkpoint of step {step} into {out} ({reason}); {before}") from None


def checkpoint_bytes(model, optimizer, tokenizer_files):
    """At least what a checkpoint takes on disk: the weights, the optimizer's tensors, the tokenizer."""
    tensors = [*model.state_dict().values(), *(t for s in optimizer.state.values() for t in s.values()
                                               if isinstance(t, torch.Tensor))]
    unique = {t.data_ptr(): t.numel() * t.element_size() for t in tensors}  # a tied matrix once
    return sum(unique.values()) + sum(map(len, tokenizer_files.values()))


@contextmanager
def interrupt_after():
    """Ctrl-C inside the block is raised when the block is done."""
    caught = []
    previous = signal.signal(signal.SIGINT, lambda *_: caught.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def read_state(out):
    """--resume: train_state.pt, checked, with every file it lists present and unchanged (its sha256). A
    checkpoint is one unit: a file from another step, a truncated or foreign one is refused by name."""
    path = out / STATE
    if not path.is_file():
        raise FileNotFoundError(f"--resume: no {STATE} in {out}")
    try:
        state = checkpoint.torch_load(path)  # tensors and numbers only: no code in the file runs
    except ValueError:
        raise
    except Exception as e:  # truncated or foreign: zipfile and torch errors alike
        raise ValueError(f"{path} is not a train.py state file ({type(e).__name__}: "
                         f"{checkpoint.first_line(e)})") from None
    if not (isinstance(state, dict) and STATE_KEYS <= state.keys() and type(state["step"]) is int
            and isinstance(state["args"], dict) and isinstance(state["files"], dict)):
        raise ValueError(f"{path} is not a train.py state file of this version: it lacks the step, the run's "
                         "settings or the files' digests")
    step = state["step"]
    if step < 0:
        raise ValueError(f"{path}: step {step} is negative")
    for name, digest in state["files"].items():
        file = out / str(name)
        if Path(str(name)).name != name:  # never read outside the checkpoint
            raise ValueError(f"{path} lists {name!r}, which is not a file name")
        if not file.is_file():
            raise FileNotFoundError(f"{file} is missing: the checkpoint of step {step} is incomplete")
        if sha256(file) != digest:
            raise ValueError(f"{file} is not the file of the step-{step} checkpoint that {STATE} describes "
                             "(changed, truncated, or from another step)")
    for name in TOKENIZER_FILES:
        if (out / name).exists() and name not in state["files"]:
            raise ValueError(f"{out / name} is not part of the run's checkpoint, but a reader could take it for "
                             "its tokenizer: move it away")
    return state


def load_optimizer_state(optimizer, saved, path):
    """train_state.pt's AdamW state into `optimizer`, checked: a state of another model, or a tampered one,
    is refused by name here, not met as a strange error at the first step."""
    try:
        optimizer.load_state_dict(saved)
    except (ValueError, KeyError, TypeError, AttributeError, IndexError, RuntimeError) as e:
        raise ValueError(f"{path}: its optimizer state does not fit the model ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})") from None
    for group in optimizer.param_groups:
        for p in group["params"]:
            for name, value in optimizer.state.get(p, {}).items():
                ok = isinstance(value, torch.Tensor) and value.is_floating_point() and (
                    value.shape == p.shape if name in ("exp_avg", "exp_avg_sq") else value.numel() == 1)
                if not ok or not torch.isfinite(value).all():
                    raise ValueError(f"{path}: its optimizer state's {name} does not fit the model's "
                                     f"parameter of shape {tuple(p.shape)}")


def recover(out):
    """--resume, in a directory that is a run of ours only (its train_state.pt, or a committed save with our
    manifest): a save that was killed is finished if it had committed (its files are whole), and the
    temporary directories of our saves are removed (the previous checkpoint stands). Nothing else in --out
    is touched."""
    if not ((out / STATE).is_file() or (out / checkpoint.COMMITTED).is_dir()):
        raise FileNotFoundError(f"--resume: no {STATE} in {out}: it is not a train.py run")
    checkpoint.finish_write(out)  # (refuses, touching nothing, a directory of that name that is not ours)
    for leftover in out.glob(checkpoint.TEMPORARY + "*"):
        shutil.rmtree(leftover, ignore_errors=True)


def check_saved_args(saved, defaults, path):
    """The settings in train_state.pt: known flags with values of their types (a foreign file is named)."""
    types = {"data": str, "init": str, "arch": str, "tokenizer": str, "vocab_size": int}
    for name, value in saved.items():
        expected = types.get(name) or type(defaults.get(name))
        if name not in defaults or name in NOT_SAVED or not (
                value is None and name in types or isinstance(value, expected)
                or expected is float and type(value) is int):
            raise ValueError(f"{path}: setting {name}={value!r} is not one of train.py's")


def write_rows(rows, path):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def read_rows(path, up_to):
    """The curve so far, from loss.csv, up to the checkpoint's step."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        rows = [{k: (v if v == "" else int(v) if k == "step" else float(v)) for k, v in r.items()} for r in rows]
    except (ValueError, TypeError, UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"{path} is not train.py's loss curve ({e})") from None
    if any(r.keys() != set(CSV_FIELDS) for r in rows):
        raise ValueError(f"{path} is not train.py's loss curve: its columns are not {', '.join(CSV_FIELDS)}")
    return [r for r in rows if r["step"] <= up_to]


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


# ----------------------------------------------------------------------------- the loop


def train(args, given, device, state=None):
    rank, world = tp.rank(), tp.world_size()
    master = rank == 0
    out = Path(args.out)
    text, data_sha256 = read_data(args.data)
    if state and state["data_sha256"] != data_sha256:
        raise ValueError(f"--data {args.data} is not the text this run trained on (its sha256 differs from "
                         f"the one in {out / STATE})")
    source = out if args.resume else init_dir(args.init) if args.init else None
    tokenizer, tokenizer_bytes = load_tokenizer(args, text, source)
    if source is None:
        module, config = checkpoint.model_file(args.arch), new_config(args, tokenizer)
    else:
        module = checkpoint.model_file(model_type(source))
        config = module.load_config(source)
    block_size = check_sizes(args, given, config, tokenizer)
    ids = torch.tensor(tokenizer.encode_ordinary(text), dtype=torch.long)
    train_data, val_data = split(ids, args.val_fraction, block_size)
    if source is None:
        check_memory(args, config, device)

    start, rows = (state["step"], read_rows(out / "loss.csv", state["step"])) if state else (0, [])
    stop = min(args.max_steps, args.stop_after or args.max_steps)
    if start >= args.max_steps:
        raise ValueError(f"the run in {out} is at step {start} of --max-steps {args.max_steps}: nothing to do "
                         "(pass a larger --max-steps to train on)")
    if start >= stop:
        raise ValueError(f"--stop-after {args.stop_after}: the run in {out} is at step {start} already")

    if source is None:
        torch.manual_seed(args.seed)  # the same initial weights in every process
        model = module.from_config(config, device=device)
    else:
        # the whole model in every process (DDP), not a tensor-parallel share (tp.py)
        model = module.from_pretrained(source, device=device, config=config, split=False)
    model.train()
    optimizer = make_optimizer(model, args, device)
    if state:
        load_optimizer_state(optimizer, state["optimizer"], out / STATE)
    settings = {"args": {k: v for k, v in vars(args).items() if k not in NOT_SAVED}, "data_sha256": data_sha256}
    settings["args"]["data"] = str(Path(args.data).resolve())  # (--resume from another directory finds it)
    bf16 = args.dtype == "bfloat16" or (args.dtype == "auto" and device.type == "cuda"
                                        and torch.cuda.is_bf16_supported())
    # bf16 autocast: matmuls in bfloat16, the weights and the optimizer in fp32 (no loss scaling needed).
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    ddp = DDP(model) if world > 1 else model  # averages the gradients across processes in backward()
    tokens_per_step = args.batch_size * block_size * args.grad_accum * world
    if master:
        n_params = sum(p.numel() for p in model.parameters())
        print(f"{model.config.MODEL_TYPE}: {n_params / 1e6:.2f}M parameters, {len(train_data):,} training and "
              f"{len(val_data):,} held-out tokens, {tokens_per_step:,} tokens per step, {world} process(es), "
              f"{'bfloat16' if bf16 else 'float32'} on {device}", file=sys.stderr)

    if start == 0:  # where the curve starts: the untrained (or not yet fine-tuned) model
        rows.append(dict(step=0, train_loss="", val_loss=round(eval_loss(model, val_data, args, block_size,
                         autocast, rank, world, device), 6), lr=0.0, tokens=0, seconds=0.0))
    t0, last_log, saved = time.perf_counter(), start, start
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
                      f"{rate:,.0f} tok/s | {clock(left)} left", file=sys.stderr)
            rows.append(dict(step=done, train_loss=round(loss.item(), 6), val_loss="", lr=lr,
                             tokens=done * tokens_per_step, seconds=round(seconds, 3)))
            t0, last_log = time.perf_counter(), done
        if evaluate:
            val = eval_loss(model, val_data, args, block_size, autocast, rank, world, device)
            rows[-1]["val_loss"] = round(val, 6)
            if master:
                print(f"step {done}: held-out loss {val:.4f}\n--- sample ---\n"
                      f"{sample(module, model, tokenizer, args, device)}\n---", file=sys.stderr)
                save(out, module, model, tokenizer_bytes, optimizer, done, rows, settings, saved)
                saved = done
            t0 = time.perf_counter()  # the eval's time is not training time
    if world > 1:
        dist.barrier()  # every process leaves once rank 0's last checkpoint is written
    return rows


def clock(seconds):
    """119.7 -> "2:00" (rounded first: never "1:60")."""
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes}:{seconds:02d}"


def main(argv=None):
    args, given = parse_args(argv)
    try:
        # Under torchrun: one process per device, joined through gloo (CPU) or NCCL (GPU) by tp.py's init;
        # without it, rank 0 of 1.
        if args.threads is not None:  # (by default torch's own: one per core, the same in every run, so that
            torch.set_num_threads(generation.choose_threads(args.threads, 0))  # a resumed run's sums match)
        device, state = torch.device(tp.init(args.device)), None
        if tp.world_size() > 1:
            tp.agree(vars(args))  # the same flags everywhere, or they would wait on each other
        if args.resume:
            if tp.rank() == 0:  # (the process that saves)
                recover(Path(args.out))
            if tp.world_size() > 1:
                dist.barrier()
            state = read_state(Path(args.out))
            defaults = vars(parse_args(["--out", args.out])[0])
            check_saved_args(state["args"], defaults, Path(args.out) / STATE)
            args = resumed_args(args, given, state)
        check_args(args, given)
        train(args, given, device, state)
    except KeyboardInterrupt:  # Ctrl-C: the last checkpoint is whole (a save in progress finished first)
        print(f"interrupted; --resume continues from the last checkpoint in {args.out}", file=sys.stderr)
        sys.exit(130)
    except (ValueError, OSError, RuntimeError) as e:
        # Under torchrun every process meets the same error: rank 0 reports it.
        sys.exit(f"error: {e}" if os.environ.get("RANK", "0") == "0" else 1)
    finally:
        tp.finish()  # once train() has returned: the DDP model and its pending work are gone first


if __name__ == "__main__":
    main()
