"""Benchmark: the CLI's default threads against every fixed OMP_NUM_THREADS, on an idle and a busy machine.

    python bench/threads.py             # the shipped model, GPT-2 small's shapes, one layer of the 20B's (int4)
    python bench/threads.py --quick     # the shipped model and GPT-2 small's shapes, fewer tokens

Each run is the sampling CLI as a user runs it (`python gpt2.py --model ... --temperature 0`), its speed
line read back: decode tokens/s at batch 1. "busy": another process spins on one core meanwhile, as a
second job on a shared machine does. PyTorch starts one OpenMP worker per core, and a worker whose core
is taken makes every parallel region wait for it; generation.choose_threads picks 1 thread for a small
model and the free cores otherwise. The table gives each setting's tokens/s and, last, the default's
fraction of the best fixed setting (the target: >= 0.9, idle and busy).
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "bench" / ".cache"
sys.path.insert(0, str(ROOT))


def make_checkpoint(name, **sizes):
    """A random GPT-2 (or GPT-NeoX) of the given sizes, saved once under bench/.cache with the shipped
    tokenizer beside it."""
    import shutil

    import torch
    directory = CACHE / name
    if (directory / "config.json").exists():
        return directory
    torch.manual_seed(0)
    arch = sizes.pop("arch")
    module = __import__(arch)
    config = getattr(module, {"gpt2": "GPT2Config", "gpt_neox": "GPTNeoXConfig"}[arch])(**sizes)
    model = module.from_config(config)
    if arch == "gpt_neox":  # the 20B's shapes: saved in bf16, as the Hub holds it
        model = model.to(torch.bfloat16)
    module.save_pretrained(model, directory)
    source = ROOT / "models" / "pydoc-gpt2"
    for f in ("vocab.json", "merges.txt"):
        shutil.copy(source / f, directory / f)
    return directory


def tokens_per_second(arch, model, tokens, env, extra=()):
    out = subprocess.run([sys.executable, f"{arch}.py", "--model", str(model), "--max-new-tokens", str(tokens),
                          "--temperature", "0", "--prompt", "The with statement", *extra], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=1800)
    match = re.search(r"([\d.]+) tokens/s", out.stderr)
    if out.returncode or not match:
        raise RuntimeError(out.stderr)
    return float(match.group(1))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    cases = [("shipped (1M, fp32)", "gpt2", ROOT / "models" / "pydoc-gpt2", 120, ()),
             ("GPT-2 small shapes (124M, fp32)", "gpt2", make_checkpoint("threads-gpt2-124m", arch="gpt2"), 48, ())]
    if not args.quick:
        cases.append(("20B shapes, 1 layer (int4)", "gpt_neox",
                      make_checkpoint("threads-neox-20b-1layer", arch="gpt_neox", vocab_size=50432,
                                      hidden_size=6144, num_hidden_layers=1, num_attention_heads=64,
                                      intermediate_size=24576), 24, ("--quantize", "int4")))
    repeats = 1 if args.quick else args.repeats
    cores = len(os.sched_getaffinity(0))
    settings = {"default": {}, **{f"OMP_NUM_THREADS={n}": {"OMP_NUM_THREADS": str(n)} for n in range(1, cores + 1)}}
    print(f"{cores} cores; decode tokens/s at batch 1, median of {repeats}, through the CLI")
    print(f"{'model':34} {'machine':7} " + " ".join(f"{s:>18}" for s in settings) + "  default/best")
    for title, arch, model, tokens, extra in cases:
        for machine in ("idle", "busy"):
            spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if machine == "busy" else None
            try:
                rates = {s: [] for s in settings}
                for _ in range(repeats):  # settings alternate, so a change in the machine hits each alike
                    for name, env in settings.items():
                        base = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
                        rates[name].append(tokens_per_second(arch, model, tokens, base | env, extra))
            finally:
                if spinner:
                    spinner.kill()
            medians = {s: statistics.median(r) for s, r in rates.items()}
            best = max(v for s, v in medians.items() if s != "default")
            print(f"{title:34} {machine:7} " + " ".join(f"{v:18.1f}" for v in medians.values())
                  + f"  {medians['default'] / best:.2f}", flush=True)


if __name__ == "__main__":
    main()
