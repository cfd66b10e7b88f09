"""Benchmark: our generate() against transformers' generate() (SDPA) on the same random weights.

    python bench/generate.py                         # every architecture whose file exists, fp32, CPU
    python bench/generate.py --quick                 # a smoke run (~30 s): tiny models, fewer tokens
    python bench/generate.py --arch gpt2 --dtype bf16 --device cuda --repeats 5

For each architecture a `transformers` model the size of the real one (gpt2 124M, gpt-neo-125m,
pythia-160m) is built with random weights (the Hub is not needed), saved with save_pretrained, and loaded
by both sides from that directory. Then, ours and the reference interleaved, --repeats times each:

  decode   generate() from a 32-token prompt, 128 new tokens, greedy, batch 1 and batch 8:
           new tokens / wall time (the prompt's prefill included, the same for both)
  compile  the same through generate(compile=True): torch.compile'd one-token step over a static cache;
           compiled in an untimed warm-up run (every measure gets one)
  prefill  one forward pass over a 512- and a 1024-token prompt that returns the next-token logits
           (ours: last_logits; transformers: logits_to_keep=1), into an empty KV cache
  bound    the time to read every weight once (a sum over each parameter but the embedding tables, read
           a row at a time): decoding a token at batch 1 reads them all, so no implementation on this
           machine decodes faster than 1 / that time
  memory   peak resident memory of from_pretrained in a fresh process, / the bytes of the weights file;
           "+ forward" adds one forward pass, which touches every weight (safetensors are memory-mapped,
           so loading alone may read little of the file)

With --quantize int8 int4, the same decode and prefill runs also time our model loaded with
from_pretrained(quantize=...) (bf16 activations, quantize.py), and, where they install, transformers with
torchao's int8 weight-only (--compare torchao) and with bitsandbytes 8-bit / 4-bit (--compare bnb); the
ratio is against transformers in --dtype (fp32 by default). The memory rows add the peak of loading
quantized, against the quantized model's bytes plus its checkpoint's largest tensor.

Medians are printed, with the ratio ours / transformers (higher is better for tokens/s). "same tokens"
checks our greedy tokens against transformers' (and the compiled path against our eager one).
"""
import argparse
import inspect
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch

import generation  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def hf_config(arch):
    """A transformers config the size of the real checkpoint (the defaults of the Hub's config.json)."""
    import transformers
    if arch == "gpt2":  # openai-community/gpt2, 124M: the class defaults
        return transformers.GPT2Config()
    if arch == "gpt_neo":  # EleutherAI/gpt-neo-125m
        return transformers.GPTNeoConfig(hidden_size=768, num_layers=12, num_heads=12, window_size=256,
                                         attention_types=[[["global", "local"], 6]],
                                         max_position_embeddings=2048)
    if arch == "gpt_neox":  # EleutherAI/pythia-160m
        return transformers.GPTNeoXConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                          intermediate_size=3072, rotary_pct=0.25, vocab_size=50304,
                                          max_position_embeddings=2048, use_parallel_residual=True)
    raise ValueError(arch)


LABELS = {"gpt2": "gpt2-124m", "gpt_neo": "gpt-neo-125m", "gpt_neox": "pythia-160m"}
# --quick: a smoke run of the benchmark's code, not a measurement. The same architectures cut to 2 layers
# of width 128 and a 2048-token vocabulary, so that every arch runs in seconds on a small CPU.
TINY = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=2048, max_position_embeddings=256)


def tiny_config(arch):
    import transformers
    if arch == "gpt2":
        return transformers.GPT2Config(n_embd=128, n_layer=2, n_head=4, vocab_size=2048, n_positions=256)
    if arch == "gpt_neo":
        return transformers.GPTNeoConfig(hidden_size=128, num_layers=2, num_heads=4, vocab_size=2048,
                                         attention_types=[[["global", "local"], 1]], window_size=256,
                                         max_position_embeddings=256)
    return transformers.GPTNeoXConfig(**TINY, intermediate_size=512, rotary_pct=0.25, use_parallel_residual=True)


def available_archs(wanted):
    archs = []
    for arch in wanted:
        if (ROOT / f"{arch}.py").exists():
            archs.append(arch)
        else:
            print(f"skipping {arch}: {arch}.py does not exist (yet)", file=sys.stderr)
    return archs


def write_checkpoint(arch, directory, seed=0, tiny=False):
    import transformers
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(tiny_config(arch) if tiny else hf_config(arch))
    model.save_pretrained(directory)
    return Path(directory) / "model.safetensors"


def load_both(arch, directory, dtype, device):
    import importlib

    import transformers
    module = importlib.import_module(arch)
    # fp32: no dtype given, as a user loads it (cpu_kernels.py's fp32 kernel decodes, where the CPU has it)
    ours = module.from_pretrained(directory, dtype=None if dtype == torch.float32 else dtype, device=device)
    try:
        ref = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=dtype,
                                                                attn_implementation="sdpa")
    except ValueError:  # transformers has no SDPA path for GPT-Neo: its default (eager) attention then
        ref = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=dtype)
    ref = ref.to(device).eval()
    ref.generation_config.eos_token_id = None  # random weights: always generate all the tokens asked for
    ref.generation_config.pad_token_id = 0
    return module, ours, ref


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device):
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


# ----------------------------------------------------------------------------- the measurements


def read_every_weight(model, device, repeats):
    """Median seconds to read each weight of `model` once (a sum over every parameter but the embedding
    tables), and the bytes read. Decoding one token at batch 1 must read all of them at least once, so
    1 / seconds bounds the tokens/s of any implementation on this machine: memory bandwidth sets it."""
    # An embedding table is read one row per token, not whole (unless it is also the LM head: GPT-2's wte).
    params = {id(p): p for m in model.modules() if not isinstance(m, torch.nn.Embedding)
              for p in m.parameters(recurse=False)}.values()
    total = sum(p.numel() * p.element_size() for p in params)
    times = []
    with torch.no_grad():
        for _ in range(repeats + 1):  # the first pass pages the weights in
            seconds, _ = timed(lambda: [p.sum() for p in params], device)
            times.append(seconds)
    return statistics.median(times[1:]), total


def decode_runs(module, ours, ref, batch, prompt_len, new_tokens, device, use_compile, extra=None):
    """name -> a function that generates and returns the ids (B, prompt + new). `extra`: more models, name ->
    (ours: bool, model), timed beside the two (quantized ones)."""
    g = torch.Generator().manual_seed(batch)
    ids = torch.randint(0, ref.config.vocab_size, (batch, prompt_len), generator=g).to(device)
    ones = torch.ones_like(ids)
    runs = {
        "ours": lambda: module.generate(ours, ids, new_tokens, temperature=0),
        "transformers": lambda: ref.generate(ids, attention_mask=ones, max_new_tokens=new_tokens,
                                             do_sample=False),
    }
    if use_compile:
        runs["ours compile"] = lambda: module.generate(ours, ids, new_tokens, temperature=0, compile=True)
    for name, (is_ours, model) in (extra or {}).items():
        if is_ours:
            runs[name] = lambda m=model: module.generate(m, ids, new_tokens, temperature=0)
            if use_compile:
                runs[name + " compile"] = lambda m=model: module.generate(m, ids, new_tokens, temperature=0,
                                                                          compile=True)
        else:
            runs[name] = lambda m=model: m.generate(ids, attention_mask=ones, max_new_tokens=new_tokens,
                                                    do_sample=False)
    return runs


def prefill_runs(module, ours, ref, length, device, extra=None):
    g = torch.Generator().manual_seed(length)
    ids = torch.randint(0, ref.config.vocab_size, (1, length), generator=g).to(device)
    runs = {"ours": lambda: generation.last_logits(ours, ids, None, ours.make_cache()),
            "transformers": lambda: ref(ids, use_cache=True, logits_to_keep=1).logits[:, -1]}
    for name, (is_ours, model) in (extra or {}).items():
        runs[name] = ((lambda m=model: generation.last_logits(m, ids, None, m.make_cache())) if is_ours else
                      (lambda m=model: m(ids, use_cache=True, logits_to_keep=1).logits[:, -1]))
    return runs


def quantized_models(arch, directory, module, schemes, compare, device):
    """name -> (ours?, model): ours loaded with quantize=scheme (bf16 activations), and what a user would
    pick instead where it installs (transformers + torchao int8 weight-only, + bitsandbytes 8 / 4 bit)."""
    import transformers
    models = {f"ours {s}": (True, module.from_pretrained(directory, quantize=s, device=device)) for s in schemes}

    def hf(**kwargs):
        model = transformers.AutoModelForCausalLM.from_pretrained(directory, **kwargs).to(device).eval()
        model.generation_config.eos_token_id, model.generation_config.pad_token_id = None, 0
        return model
    if "torchao" in compare:
        try:
            from torchao.quantization import Int8WeightOnlyConfig, quantize_
            model = hf(dtype=torch.bfloat16)
            quantize_(model, Int8WeightOnlyConfig())
            models["transformers bf16 + torchao int8"] = (False, model)
        except Exception as e:  # not installed, or no CPU path: say so, time the rest
            print(f"  torchao int8 weight-only: not measured ({type(e).__name__}: {e})", file=sys.stderr)
    if "bnb" in compare:
        for bits in (8, 4):
            try:
                config = transformers.BitsAndBytesConfig(**{f"load_in_{bits}bit": True})
                model = hf(dtype=torch.bfloat16, quantization_config=config)
                models[f"transformers bf16 + bitsandbytes {bits}-bit"] = (False, model)
            except Exception as e:
                print(f"  bitsandbytes {bits}-bit: not measured ({type(e).__name__}: {str(e)[:200]})",
                      file=sys.stderr)
    return models


def interleaved(runs, repeats, device, label):
    """Run each function `repeats` times, alternating between them; name -> (median seconds, last output)."""
    times = {name: [] for name in runs}
    outputs = {}
    for r in range(repeats):
        for name, fn in runs.items():
            with torch.no_grad():
                seconds, outputs[name] = timed(fn, device)
            times[name].append(seconds)
        print(f"  {label} repeat {r + 1}/{repeats}: " +
              ", ".join(f"{n} {t[-1]:.2f}s" for n, t in times.items()), file=sys.stderr, flush=True)
    return {name: (statistics.median(t), outputs[name]) for name, t in times.items()}


MEMORY_SCRIPT = """
import sys, torch
sys.path.insert(0, {root!r})
torch.set_num_threads({threads})
def status(key):  # kB -> bytes; VmHWM (the peak) starts afresh with each new process
    return next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith(key + ':'))
import torch._dynamo  # code, not weights (building modules imports it): in the baseline for both sides
if {side!r}.startswith('ours'):
    import {arch} as module
    scheme = {side!r}.split()[1] if ' ' in {side!r} else None
    load = lambda: module.from_pretrained({directory!r}, dtype=None if scheme or "{dtype}" == "float32" else torch.{dtype},
                                          quantize=scheme)
else:
    import transformers
    transformers.logging.set_verbosity_error()
    load = lambda: transformers.AutoModelForCausalLM.from_pretrained({directory!r}, dtype=torch.{dtype})
before = status('VmRSS')
model = load()
loaded = status('VmHWM')
size = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
with torch.no_grad():
    model(torch.zeros(1, 8, dtype=torch.long))
print(size, loaded - before, status('VmHWM') - before)
"""


def peak_memory(arch, side, directory, dtype, threads):
    """(peak of loading, peak of loading + one forward) in bytes, over the process's memory before it, and
    the bytes of the loaded model's tensors."""
    code = MEMORY_SCRIPT.format(root=str(ROOT), arch=arch, side=side, directory=str(directory),
                                dtype=str(dtype).removeprefix("torch."), threads=threads)
    env = {**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    if side.startswith("ours ") and os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:
        # glibc's threshold for serving a request with its own mmap grows with the largest block freed, so
        # the quantizer's freed temporaries stay in the heap a varying amount (peaks vary by ~150 MiB run to
        # run); a fixed threshold returns them at once. README, "Quantization", gives both.
        env["MALLOC_MMAP_THRESHOLD_"] = str(1 << 16)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if out.returncode:
        raise RuntimeError(f"memory measurement failed:\n{out.stderr[-3000:]}")
    size, loaded, forward = map(int, out.stdout.split()[-3:])
    return loaded, forward, size


# ----------------------------------------------------------------------------- report


def machine(args):
    cpu = platform.processor() or "?"
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import transformers
    where = f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    if args.device.startswith("cuda"):
        where = f"{torch.cuda.get_device_name()}; host {where}"
    return f"{where}; torch {torch.__version__}, transformers {transformers.__version__}, python " \
           f"{platform.python_version()}"


def fmt_rate(x):
    return f"{x:,.1f}" if x < 100 else f"{x:,.0f}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", nargs="+", default=["gpt2", "gpt_neo", "gpt_neox"],
                   choices=["gpt2", "gpt_neo", "gpt_neox"])
    p.add_argument("--dtype", default="fp32", choices=DTYPES)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true",
                   help="smoke run (~30 s on 2 cores), not a measurement: tiny models (2 layers, width 128), 8 new "
                        "tokens, batch 1, prefill 64, 1 repeat, no compile and no memory measure")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile path")
    p.add_argument("--skip", nargs="*", default=[], choices=["decode", "prefill", "memory"])
    p.add_argument("--quantize", nargs="*", default=[], choices=["int8", "int4"],
                   help="also time our model quantized (bf16 activations)")
    p.add_argument("--compare", nargs="*", default=[], choices=["torchao", "bnb"],
                   help="with --quantize: also time transformers + torchao / bitsandbytes, if installed")
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    p.add_argument("--prefill", nargs="+", type=int, default=[512, 1024])
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    import transformers
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    dtype = DTYPES[args.dtype]
    new_tokens, prefill_lengths, repeats = (8, (64,), 1) if args.quick else (128, args.prefill, args.repeats)
    prompt_len, batches = 32, [1] if args.quick else args.batches
    if args.quick:  # compiling takes ~a minute per model on a small CPU; memory, fresh processes
        args.no_compile, args.skip = True, sorted({*args.skip, "memory"})

    rows = []  # (model, measure, ours, transformers, ratio, note)
    for arch in available_archs(args.arch):
        name = f"{arch} (tiny, --quick)" if args.quick else LABELS[arch]
        print(f"{name}:", file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory() as directory:
            weights = write_checkpoint(arch, directory, tiny=args.quick)
            file_bytes = weights.stat().st_size
            module, ours, ref = load_both(arch, directory, dtype, args.device)
            label = f"{name} ({ref.config._attn_implementation})"  # the reference's attention
            can_compile = not args.no_compile and "compile" in inspect.signature(module.generate).parameters
            if not args.no_compile and not can_compile:
                print(f"  {arch}.generate has no compile option yet: no compile row", file=sys.stderr)
            extra = quantized_models(arch, directory, module, args.quantize, args.compare, args.device)

            if "decode" not in args.skip:
                ref_rate = {}  # batch -> transformers' tokens/s
                for batch in batches:
                    runs = decode_runs(module, ours, ref, batch, prompt_len, new_tokens, args.device,
                                       can_compile, extra)
                    # One untimed run of each first: compiling (a minute on a small CPU), the first touch of
                    # the memory-mapped weights, the allocators' first requests.
                    for name, fn in runs.items():
                        seconds, _ = timed(fn, args.device)
                        print(f"  warm-up {name} batch {batch}: {seconds:.1f}s", file=sys.stderr)
                    result = interleaved(runs, repeats, args.device, f"decode batch {batch}")
                    ref_s, ref_ids = result["transformers"]
                    ours_s, ours_ids = result["ours"]
                    n = batch * new_tokens
                    # In fp32 they must agree; in bf16/fp16, rounding differs between kernels and greedy on
                    # random weights (near-flat logits) flips on it, so there a difference is expected.
                    differ = "TOKENS DIFFER" if dtype == torch.float32 else "tokens differ (rounding)"
                    same = "same tokens" if torch.equal(ours_ids, ref_ids) else differ
                    ref_rate[batch] = n / ref_s
                    rows.append((label, f"decode tok/s, batch {batch}", fmt_rate(n / ours_s),
                                 fmt_rate(n / ref_s), f"{ref_s / ours_s:.2f}x", same))
                    if can_compile:
                        comp_s, comp_ids = result["ours compile"]
                        same = "same tokens as eager" if torch.equal(comp_ids, ours_ids) else differ
                        rows.append((label, f"decode tok/s, batch {batch}, compile", fmt_rate(n / comp_s),
                                     fmt_rate(n / ref_s), f"{ref_s / comp_s:.2f}x", same))
                    for name in runs:  # the quantized rows: against transformers in --dtype
                        if name.startswith(tuple(extra)):
                            q_s, q_ids = result[name]
                            agree = (q_ids[:, prompt_len:] == ref_ids[:, prompt_len:]).float().mean().item()
                            rows.append((label, f"decode tok/s, batch {batch}, {name}", fmt_rate(n / q_s),
                                         fmt_rate(n / ref_s), f"{ref_s / q_s:.2f}x",
                                         f"{100 * agree:.0f}% of tokens as transformers {args.dtype}"))

                seconds, total = read_every_weight(ours, args.device, max(repeats, 5))
                ratio = f"{1 / seconds / ref_rate[1]:.2f}x" if 1 in ref_rate else ""  # --batches without 1
                rows.append((label, "decode tok/s, batch 1, bound: every weight read once per token",
                             fmt_rate(1 / seconds), "", ratio,
                             f"{total / 2**20:,.0f} MiB in {seconds * 1e3:.1f} ms: "
                             f"{total / seconds / 1e9:.0f} GB/s"))

            if "prefill" not in args.skip:
                for length in prefill_lengths:
                    runs = prefill_runs(module, ours, ref, length, args.device, extra)
                    with torch.no_grad():  # one untimed pass each: first-call allocations, page faults
                        for fn in runs.values():
                            fn()
                    result = interleaved(runs, repeats, args.device, f"prefill {length}")
                    (ours_s, a), (ref_s, b) = result["ours"], result["transformers"]
                    delta = (a.float() - b.float()).abs().max().item()
                    rows.append((label, f"prefill tok/s, {length} tokens", fmt_rate(length / ours_s),
                                 fmt_rate(length / ref_s), f"{ref_s / ours_s:.2f}x",
                                 f"max abs logit diff {delta:.1e}"))
                    for name in extra:
                        q_s, q = result[name]
                        delta = (q.float() - b.float()).abs().max().item()
                        rows.append((label, f"prefill tok/s, {length} tokens, {name}", fmt_rate(length / q_s),
                                     fmt_rate(length / ref_s), f"{ref_s / q_s:.2f}x",
                                     f"max abs logit diff {delta:.1e}"))
            del ours, ref, extra

            if "memory" not in args.skip:
                peaks = {side: peak_memory(arch, side, directory, dtype, args.threads)
                         for side in ("ours", "transformers")}
                measures = ("memory peak of loading / weights file", "... + the first forward / weights file")
                for i, what in enumerate(measures):
                    o, r = peaks["ours"][i], peaks["transformers"][i]
                    rows.append((label, what, f"{o / file_bytes:.2f}", f"{r / file_bytes:.2f}", "",
                                 f"file {file_bytes / 2**20:,.0f} MiB; ours {o / 2**20:,.0f} MiB, "
                                 f"transformers {r / 2**20:,.0f} MiB"))
                from safetensors import safe_open
                with safe_open(weights, "pt") as f:  # the largest tensor, in the file's fp32
                    largest = max(math.prod(f.get_slice(k).get_shape()) for k in f.keys()) * 4
                for scheme in args.quantize:
                    loaded, forward, size = peak_memory(arch, f"ours {scheme}", directory, dtype, args.threads)
                    rows.append((label, f"memory peak of loading {scheme} / (quantized model + largest tensor)",
                                 f"{loaded / (size + largest):.2f}", "", "",
                                 f"peak {loaded / 2**20:,.0f} MiB (+ forward {forward / 2**20:,.0f}); model "
                                 f"{size / 2**20:,.0f} MiB, largest tensor {largest / 2**20:,.0f} MiB; "
                                 f"1.2x model + largest = {(1.2 * size + largest) / 2**20:,.0f} MiB"))

    command = "python bench/generate.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"\n`{command.strip()}`\n")
    print(f"{machine(args)}; {args.dtype} on {args.device}; prompt {prompt_len}, {new_tokens} new tokens, "
          f"greedy; median of {repeats}\n")
    print("| model | measure | ours | transformers | ours / transformers | note |")
    print("|---|---|---:|---:|---:|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
