"""GPT-NeoX-20B on a machine without a GPU: load fp16 -> int8/int4, save, reload, decode (and GPT-2 small's shapes).

    python bench/big.py --layers 2                        # the 20B's shapes cut to 2 layers (~3 GB of fp16)
    python bench/big.py --layers 2 --schemes fp32 int8     # the same in fp32 (no save) and int8
    nice -n 10 python bench/big.py                        # all 44 layers: ~41 GB on disk, checked first
    python bench/big.py --shape gpt2                      # GPT-2 small's shapes (124M)
    python bench/big.py --dir /big/disk/neox --keep       # where the checkpoint goes; keep it afterwards

Writes a checkpoint with the published config.json of EleutherAI/gpt-neox-20b (random fp16 weights, in the
Hub's 46-shard layout with an index, and the real NeoX tokenizer from ../shared/tokenizers, copied into the
benchmark's own directory), then measures, each in a fresh process:

  load      from_pretrained(fp16 dir, quantize=scheme): seconds, the checkpoint's GB/s, weights/s quantized,
            the process's peak resident memory (VmHWM) against the quantized model's bytes, and what of it
            is file pages (the memory map of the checkpoint) at the end
  save      save_pretrained of that model (compressed-tensors' pack-quantized safetensors): seconds
  reload    from_pretrained(saved dir), no quantize=, its files' pages dropped from the page cache first (so it
            reads the disk): seconds, peak resident memory
  ceiling   the time to read every quantized weight once (a sum over each tensor but the input embedding,
            its bytes viewed as float32): 1 / that bounds batch-1 decoding on this machine, now (timed in
            turn with the decode runs, medians of 3, so that both see the same load)
  decode    greedy batch-1 tokens/s after an 8-token prompt (the prompt step excluded; the median step, so a
            compiled run's first steps do not count), per torch thread
            count, and its ratio to the ceiling; and where a decode step's time goes (torch.profiler)
  kernels   every quantized (fp32: nn.Linear) layer run once on one token's input, nothing else: what the
            kernels allow on this machine; the decode step against it is what the rest of the model costs

The 20B's config says hidden_act "gelu_fast"; until the model files take that name the generated config.json
says "gelu" (printed when it happens). Figures depend on the machine's load: the header prints it.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch

# EleutherAI/gpt-neox-20b's config.json as published on the Hub.
NEOX_20B = {
    "architectures": ["GPTNeoXForCausalLM"], "bos_token_id": 0, "eos_token_id": 0, "hidden_act": "gelu_fast",
    "hidden_size": 6144, "initializer_range": 0.02, "intermediate_size": 24576, "layer_norm_eps": 1e-05,
    "max_position_embeddings": 2048, "model_type": "gpt_neox", "num_attention_heads": 64,
    "num_hidden_layers": 44, "rotary_emb_base": 10000, "rotary_pct": 0.25, "tie_word_embeddings": False,
    "torch_dtype": "float16", "transformers_version": "4.23.0.dev0", "use_cache": True,
    "use_parallel_residual": True, "vocab_size": 50432,
}
GPT2_SMALL = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": 50257, "n_positions": 1024,
              "n_embd": 768, "n_layer": 12, "n_head": 12, "activation_function": "gelu_new",
              "bos_token_id": 50256, "eos_token_id": 50256, "torch_dtype": "float16"}
TOKENIZERS = ROOT.parent / "shared" / "tokenizers"


def layer_tensors(shape, i):
    """{name: shape} of one block, in the Hub's names."""
    if shape == "gpt2":
        C, p = GPT2_SMALL["n_embd"], f"h.{i}."
        return {p + "ln_1.weight": (C,), p + "ln_1.bias": (C,), p + "attn.c_attn.weight": (C, 3 * C),
                p + "attn.c_attn.bias": (3 * C,), p + "attn.c_proj.weight": (C, C), p + "attn.c_proj.bias": (C,),
                p + "ln_2.weight": (C,), p + "ln_2.bias": (C,), p + "mlp.c_fc.weight": (C, 4 * C),
                p + "mlp.c_fc.bias": (4 * C,), p + "mlp.c_proj.weight": (4 * C, C), p + "mlp.c_proj.bias": (C,)}
    C, F, p = NEOX_20B["hidden_size"], NEOX_20B["intermediate_size"], f"gpt_neox.layers.{i}."
    return {p + "input_layernorm.weight": (C,), p + "input_layernorm.bias": (C,),
            p + "post_attention_layernorm.weight": (C,), p + "post_attention_layernorm.bias": (C,),
            p + "attention.query_key_value.weight": (3 * C, C), p + "attention.query_key_value.bias": (3 * C,),
            p + "attention.dense.weight": (C, C), p + "attention.dense.bias": (C,),
            p + "mlp.dense_h_to_4h.weight": (F, C), p + "mlp.dense_h_to_4h.bias": (F,),
            p + "mlp.dense_4h_to_h.weight": (C, F), p + "mlp.dense_4h_to_h.bias": (C,)}


def shards(shape, layers):
    """The checkpoint's shards, each {name: shape}: the embedding, one block per shard, the head (the 20B's
    46 files for 44 layers)."""
    if shape == "gpt2":
        C, V = GPT2_SMALL["n_embd"], GPT2_SMALL["vocab_size"]
        first = {"wte.weight": (V, C), "wpe.weight": (GPT2_SMALL["n_positions"], C)}
        last = {"ln_f.weight": (C,), "ln_f.bias": (C,)}  # tied LM head: wte
    else:
        C, V = NEOX_20B["hidden_size"], NEOX_20B["vocab_size"]
        first = {"gpt_neox.embed_in.weight": (V, C)}
        last = {"gpt_neox.final_layer_norm.weight": (C,), "gpt_neox.final_layer_norm.bias": (C,),
                "embed_out.weight": (V, C)}
    return [first, *(layer_tensors(shape, i) for i in range(layers)), last]


def nbytes(shard):
    return sum(2 * torch.Size(s).numel() for s in shard.values())


def write_checkpoint(directory, shape, layers):
    """Random fp16 weights (std 0.02; LayerNorms 1 and 0) in the Hub's sharded layout, config.json and the
    tokenizer. Kept between runs when its config matches."""
    from safetensors.torch import save_file
    config = dict(NEOX_20B if shape == "neox-20b" else GPT2_SMALL)
    config["num_hidden_layers" if shape == "neox-20b" else "n_layer"] = layers
    if config.get("hidden_act") == "gelu_fast":
        import gpt_neox
        if "gelu_fast" not in gpt_neox.ACTIVATIONS:
            print("note: this checkout's gpt_neox.py does not take hidden_act 'gelu_fast' yet: the generated "
                  "config.json says 'gelu' (same shapes, same bytes)")
            config["hidden_act"] = "gelu"
    done = directory / "config.json"
    if done.exists() and json.loads(done.read_text()) == config:
        return
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    parts = shards(shape, layers)
    weight_map = {}
    g = torch.Generator().manual_seed(0)
    for k, shard in enumerate(parts, 1):
        name = f"model-{k:05d}-of-{len(parts):05d}.safetensors"
        tensors = {}
        for key, size in shard.items():
            if key.endswith(("layernorm.weight", "ln_1.weight", "ln_2.weight", "ln_f.weight", "norm.weight")):
                tensors[key] = torch.ones(size, dtype=torch.float16)
            else:
                tensors[key] = (torch.randn(size, generator=g) * 0.02).half()
            weight_map[key] = name
        save_file(tensors, directory / name, metadata={"format": "pt"})
        del tensors
    index = {"metadata": {"total_size": sum(nbytes(s) for s in parts)}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    tokenizer = TOKENIZERS / ("gpt-neox-20b" if shape == "neox-20b" else "gpt2")
    for f in tokenizer.iterdir():
        if f.suffix in (".json", ".txt") and f.name != "SOURCE.txt":
            shutil.copy(f, directory / f.name)
    done.write_text(json.dumps(config, indent=2))  # last: a half-written checkpoint is rewritten next time

# ----------------------------------------------------------------------------- the measurements (fresh processes)


STAGE = r"""
import json, sys, time
sys.path.insert(0, {root!r})
import torch
torch.set_num_threads({threads})
import {module} as module

def status(key):  # bytes; VmHWM: this process's peak resident memory
    return next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith(key + ':'))

def tensor_bytes(model):
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])

out = {{"base": status("VmRSS")}}
t0 = time.perf_counter()
model = module.from_pretrained({source!r}, quantize={scheme!r})
out.update(load_s=time.perf_counter() - t0, peak=status("VmHWM"), file_pages=status("RssFile"),
           anon=status("RssAnon"), model_bytes=tensor_bytes(model))
if {save!r}:
    t0 = time.perf_counter()
    module.save_pretrained(model, {save!r})
    out["save_s"] = time.perf_counter() - t0
if {decode}:
    import statistics
    # The ceiling: every tensor but the input embedding (read one row per token) read once, its bytes as
    # float32 (a plain vectorised sum, whatever the integers are).
    skip = {{id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}}
    tensors = [t for t in [*model.parameters(), *model.buffers()] if id(t) not in skip]
    views = [t.reshape(-1).view(torch.uint8)[:t.numel() * t.element_size() // 4 * 4].view(torch.float32)
             for t in tensors]
    out["read_bytes"] = sum(4 * v.numel() for v in views)
    prompt = torch.arange(100, 108)[None]
    # The kernels alone: every quantized layer once on one token's input, nothing else of the model.
    import quantize
    layers = [m for m in model.modules() if isinstance(m, (quantize.Int8Linear, quantize.Int4Linear, torch.nn.Linear))]
    dtype = next(model.parameters()).dtype  # the embedding's, LayerNorms': the activations'
    inputs = [torch.randn(1, 1, m.in_features, dtype=dtype) for m in layers]
    for threads in {thread_counts}:
        torch.set_num_threads(threads)
        module.generate(model, prompt, 2, temperature=0, compile={compile})  # warm-up (and compile)
        ceilings, steps, kernels = [], [], []
        with torch.no_grad():
            for _ in range(3):  # in turn, so that all see the machine's load alike
                t0 = time.perf_counter()
                [v.sum() for v in views]
                ceilings.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                [m(x) for m, x in zip(layers, inputs)]
                kernels.append(time.perf_counter() - t0)
                stamps = []
                module.generate(model, prompt, {tokens}, temperature=0, compile={compile},
                                on_token=lambda t: stamps.append(time.perf_counter()))
                steps.append(statistics.median(b - a for a, b in zip(stamps, stamps[1:])))  # decode steps only
        out[f"threads{{threads}}"] = dict(ceiling_s=statistics.median(ceilings), step_s=statistics.median(steps),
                                         kernels_s=statistics.median(kernels))
    from torch.profiler import profile
    torch.set_num_threads({thread_counts}[0])
    with profile() as prof:
        module.generate(model, prompt, 3, temperature=0)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)
    out["profile"] = table
print("RESULT " + json.dumps(out))
"""


def stage(module, source, scheme=None, save=None, decode=False, threads=(1,), tokens=8, compile=False):
    code = STAGE.format(root=str(ROOT), module=module, source=str(source), scheme=scheme,
                        save=str(save) if save else None, decode=decode, thread_counts=list(threads),
                        threads=threads[0], tokens=tokens, compile=compile)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    line = next((l for l in result.stdout.splitlines() if l.startswith("RESULT ")), None)
    if result.returncode or line is None:
        raise RuntimeError(f"stage failed (rc {result.returncode}):\n{result.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def drop_page_cache(directory):
    """Evict the files' pages from the kernel's page cache (POSIX_FADV_DONTNEED; written back first)."""
    for f in directory.iterdir():
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def gb(x):
    return f"{x / 1e9:.2f} GB"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", choices=["neox-20b", "gpt2"], default="neox-20b")
    p.add_argument("--layers", type=int, default=None, help="blocks (default: all: 44, or 12 for gpt2)")
    p.add_argument("--dir", type=Path, default=None, help="where the fp16 checkpoint goes "
                   "(default bench/.cache/<shape>-<layers>; the quantized ones beside it)")
    p.add_argument("--schemes", nargs="+", default=["int8", "int4"], choices=["fp32", "int8", "int4"],
                   help="fp32: loaded as float32 (no save; it would be twice the fp16 files), decoded")
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2], help="torch thread counts to decode with")
    p.add_argument("--tokens", type=int, default=8, help="new tokens per decode run")
    p.add_argument("--keep", action="store_true", help="keep the checkpoints afterwards")
    p.add_argument("--compile", action="store_true", help="decode with generate(compile=True) (the first "
                   "steps compile: use --tokens 24 or more)")
    args = p.parse_args(argv)
    layers = args.layers or (44 if args.shape == "neox-20b" else 12)
    directory = args.dir or ROOT / "bench" / ".cache" / f"{args.shape}-{layers}"
    module = "gpt_neox" if args.shape == "neox-20b" else "gpt2"
    fp16 = sum(nbytes(s) for s in shards(args.shape, layers))
    copies = sum({"fp32": 0, "int8": 0.55, "int4": 0.30}[s] for s in args.schemes)  # a saved copy's size against fp16's
    need = fp16 * (copies + (not (directory / "config.json").exists()))
    directory.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(directory.parent).free
    print(f"{args.shape}, {layers} layers: {gb(fp16)} of fp16 + the {' and '.join(args.schemes)} copies: needs ~{gb(need)} "
          f"free on {directory.parent}, has {gb(free)}")
    if free < need:
        sys.exit(f"error: not enough free disk: {gb(need)} needed, {gb(free)} free (--dir elsewhere, or "
                 "--layers fewer)")
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    print(f"machine: {os.cpu_count()} cores, load average {' '.join(load)} (shared with other jobs: figures "
          f"drift with it); torch {torch.__version__}")
    t0 = time.perf_counter()
    write_checkpoint(directory, args.shape, layers)
    print(f"checkpoint {directory}: ready in {time.perf_counter() - t0:.0f} s")
    weights = sum(torch.Size(s).numel() for shard in shards(args.shape, layers) for k, s in shard.items()
                  if k.endswith("weight") and len(s) == 2 and "embed_in" not in k and "wte" not in k
                  and "wpe" not in k)
    try:
        for scheme in args.schemes:
            if scheme == "fp32":  # loaded and decoded in one process: fp16 -> float32, cpu_kernels.py's kernel
                r = stage(module, directory, decode=True, threads=args.threads, tokens=args.tokens,
                          compile=args.compile)
                print(f"\nfp32: load {r['load_s']:.1f} s, peak resident {gb(r['peak'] - r['base'])} over the "
                      f"start; {gb(r['read_bytes'])} read per token")
            else:
                saved = directory.parent / f"{directory.name}-{scheme}"
                shutil.rmtree(saved, ignore_errors=True)
                r = stage(module, directory, scheme, save=saved, threads=args.threads[:1])
                print(f"\n{scheme}: load {r['load_s']:.1f} s ({fp16 / r['load_s'] / 1e9:.2f} GB/s of checkpoint, "
                      f"{weights / r['load_s'] / 1e6:.0f} M weights/s quantized); peak resident "
                      f"{gb(r['peak'] - r['base'])} over the start, for a {gb(r['model_bytes'])} model (target "
                      f"<= {gb(r['model_bytes'] * 1.1 + 1e9)}); at the end file pages {gb(r['file_pages'])}, "
                      f"anonymous {gb(r['anon'])}; save {r['save_s']:.1f} s")
                drop_page_cache(saved)  # the reload reads the disk, not what the save left in memory
                r = stage(module, saved, decode=True, threads=args.threads, tokens=args.tokens,
                          compile=args.compile)
                print(f"{scheme}: reload from disk {r['load_s']:.1f} s, peak resident {gb(r['peak'] - r['base'])} "
                      f"over the start; {gb(r['read_bytes'])} read per token")
            for threads in args.threads:
                t = r[f"threads{threads}"]
                print(f"  {threads} thread(s): decode {1 / t['step_s']:.2f} tok/s, ceiling (every weight read "
                      f"once) {1 / t['ceiling_s']:.2f} tok/s = {r['read_bytes'] / t['ceiling_s'] / 1e9:.1f} GB/s:"
                      f" {t['ceiling_s'] / t['step_s']:.2f} of it; the quantized layers alone {1 / t['kernels_s']:.2f}"
                      f" tok/s ({t['ceiling_s'] / t['kernels_s']:.2f} of the ceiling): the step is "
                      f"{t['kernels_s'] / t['step_s']:.2f} of that")
            print(r["profile"])
    finally:
        if not args.keep:
            for scheme in args.schemes:
                shutil.rmtree(directory.parent / f"{directory.name}-{scheme}", ignore_errors=True)
            if layers >= 8:  # the big one goes; a few layers' stay cached for the next run
                shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
