"""Benchmark: every CPU speed figure of docs/speed.md and docs/quantization.md, in one run.

    python bench/cpu.py --llama-bench PATH/llama-bench --gguf-dir DIR --hf-dir DIR    # 12 min on 2 cores
    python bench/cpu.py --skip 20b llama.cpp                                          # without those two

Runs the benchmarks below one after another, each command printed above its output. Each one alternates
ours with its reference itself (the readers take turns, llama.cpp and ours take turns, every thread setting
in turn, idle then busy), so a change in a shared machine's speed falls on both sides of each ratio:

  ceiling     bench/ceiling.py: GB/s of every weight reader at GPT-2 small's and the 20B's shapes; the
              fastest is the ceiling every decode is a fraction of
  llama.cpp   bench/llama_cpp.py: batch-1 decode of the same GPT-2 124M, fp32 / int8 / int4 against
              llama.cpp's F32 / Q8_0 / Q4_0 (needs llama.cpp built: see that file)
  layers      bench/big.py --layers 2: the 20B's shapes, 2 blocks, fp32, int8 and int4 decode against the
              time to read their weights once
  20b         bench/big.py --schemes int4: the 20B at full size, 44 blocks (~53 GB of disk; its 41 GB
              checkpoint written first, ~3 min)
  threads     bench/threads.py: the CLI's default threads against fixed ones, idle and busy
  quantizer   bench/quantize.py --speed: the quantizer against a plain fp16 -> fp32 pass
  accuracy    bench/quantize.py --shipped: perplexity and top-1 agreement of every scheme
"""
import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


NAMES = ["ceiling", "llama.cpp", "layers", "20b", "threads", "quantizer", "accuracy"]


def commands(args):
    """{name: the command line} in the order they run."""
    py = [sys.executable]
    llama = ["bench/llama_cpp.py", "--llama-bench", str(args.llama_bench), "--gguf-dir", str(args.gguf_dir),
             "--hf-dir", str(args.hf_dir), "--repeats", "5"]
    return {"ceiling": py + ["bench/ceiling.py"],
            "llama.cpp": py + llama,
            "layers": py + ["bench/big.py", "--layers", "2", "--schemes", "fp32", "int8", "int4", "--threads", "2", "1", "--compile"],
            "20b": py + ["bench/big.py", "--schemes", "int4", "--threads", "2", "1", "--compile"],
            "threads": py + ["bench/threads.py", "--repeats", "3"],
            "quantizer": py + ["bench/quantize.py", "--speed"],
            "accuracy": py + ["bench/quantize.py", "--shipped"]}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--llama-bench", type=Path, help="llama.cpp's llama-bench binary (for llama.cpp)")
    p.add_argument("--gguf-dir", type=Path, help="the three gguf files (bench/llama_cpp.py says how)")
    p.add_argument("--hf-dir", type=Path, help="the same GPT-2 124M weights as a Hub checkpoint")
    p.add_argument("--skip", nargs="+", default=[], choices=NAMES)
    args = p.parse_args()
    if "llama.cpp" not in args.skip and not (args.llama_bench and args.gguf_dir and args.hf_dir):
        p.error("llama.cpp needs --llama-bench, --gguf-dir and --hf-dir (or --skip llama.cpp)")
    failed = []
    for name, cmd in commands(args).items():
        if name in args.skip:
            continue
        print(f"\n=== {name}: {shlex.join(['python'] + cmd[1:])}", flush=True)
        start = time.perf_counter()
        if subprocess.run(cmd, cwd=ROOT).returncode:
            failed.append(name)
        print(f"=== {name}: {time.perf_counter() - start:.0f} s", flush=True)
    if failed:
        sys.exit(f"error: these failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
