"""Benchmark: how fast this machine can read weights at batch 1, by the best reader PyTorch has.

    python bench/ceiling.py            # GPT-2 small's and GPT-NeoX-20B's layer shapes, 2 threads
    python bench/ceiling.py --quick    # GPT-2 small's shapes only, fewer repeats

Decoding one token reads every weight once, so the rate at which the machine reads weights bounds the
decode rate. A plain sum over the weights understates that rate: some of PyTorch's matmul kernels read
faster. Each reader here reads the same layers (a block's four matrices, copies cycled so that they come
from memory, not from the cache) with one token's activations; the readers take turns, a pass each per
round (median of the rounds), and the table gives GB/s of the bytes each reads (weights and scales); the
fastest is the ceiling to measure a decode against ("fraction of the ceiling" in docs/speed.md).

The fp32 readers read weights memory-mapped from a file, as from_pretrained's fp32 weights are (a safetensors
file written first, then cached afresh so that the kernel keeps it in 2 MB pages where it can: see
cache_in_large_pages); the quantized readers read what quantizing those weights makes, where the quantized
models have it: ours in memory asked in 2 MB pages (cpu_kernels.empty_in_large_pages), PyTorch's in ordinary
memory. On this VM 2 MB pages read 1.07-1.2x faster than 4 KB ones.

  sum             torch.sum over fp32 weights
  fp32 linear     F.linear, fp32 weights and activations (the models' fp32 path: MKL's gemv on this build)
  fp32 oneDNN     oneDNN's linear on a weight prepacked for it (torch.ops.mkldnn._linear_pointwise): the
                  fastest fp32 reader PyTorch ships here, which the models do not use (see docs/speed.md)
  int8 weight-only  _weight_int8pack_mm, bf16 activations (quantize.py with a dtype given, or without
                   cpu_kernels.py; here bf16, its fast case)
  int4 weight-only  _weight_int4pack_mm_for_cpu, group 32, bf16 activations (the same)
  int8 dynamic      fbgemm's dynamic linear: int8 weights, activations quantized to int8 per call (x86 only)
  fp32 (ours)       cpu_kernels.fp32_linear, fp32 (from_pretrained's default here, decoding)
  int8 (ours)       cpu_kernels.int8_linear, int8 activations (quantize.py's default on such a CPU)
  int4 (ours)       cpu_kernels.int4_linear, group 32, int8 activations (the same)
"""
import argparse
import gc
import mmap
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import cpu_kernels  # noqa: E402
import quantize  # noqa: E402

SHAPES = {"GPT-2 small": [(2304, 768), (768, 768), (3072, 768), (768, 3072)],  # (out, in)
          "GPT-NeoX-20B": [(18432, 6144), (6144, 6144), (24576, 6144), (6144, 24576)]}


def cache_in_large_pages(path):
    """Drop `path`'s pages from the page cache and read it back in order, so that the kernel caches it in large
    folios, which a memory map then maps as 2 MB pages (Linux; a file's pages otherwise stay in whatever sizes
    they were first cached in: 4 KB ones after a copy or a page-by-page read). Reads only; clean pages only
    are dropped, so nothing is lost. Used on every file the benchmarks read weights from, ours and llama.cpp's
    alike, so that both read from memory in the same state."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        while os.read(fd, 1 << 24):
            pass
    finally:
        os.close(fd)


def share_in_large_pages(path):
    """The share of `path` that a read-only memory map of it maps as 2 MB pages (FilePmdMapped), 0 to 1."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        before = pmd_mapped()
        for i in range(0, len(m), mmap.PAGESIZE):
            m[i]  # touch every page
        return (pmd_mapped() - before) / len(m)


def pmd_mapped():
    """Bytes of file pages this process maps as 2 MB pages."""
    with open("/proc/self/smaps_rollup") as f:
        return next((int(line.split()[1]) * 1024 for line in f if line.startswith("FilePmdMapped:")), 0)


def nbytes(layer):
    return sum(t.numel() * t.element_size() for t in layer.buffers())


def reader(name, weights):
    """(the bytes one call reads, a function that reads them once) for one copy of the layers."""
    x32 = {w.shape[1]: torch.randn(1, w.shape[1]) for w in weights}
    x16 = {k: v.bfloat16() for k, v in x32.items()}
    fp32_bytes = sum(w.numel() * 4 for w in weights)
    if name == "sum":
        return fp32_bytes, lambda: [w.sum() for w in weights]
    if name == "fp32 linear":
        return fp32_bytes, lambda: [F.linear(x32[w.shape[1]], w) for w in weights]
    if name == "fp32 (ours)":
        return fp32_bytes, lambda: [cpu_kernels.fp32_linear(x32[w.shape[1]], w) for w in weights]
    if name == "fp32 oneDNN":
        packed = [(torch.ops.mkldnn._reorder_linear_weight(w, 1), w.shape[1]) for w in weights]
        return fp32_bytes, lambda: [
            torch.ops.mkldnn._linear_pointwise(x32[k], p, None, "none", [], "") for p, k in packed]
    if name in ("int8 weight-only", "int4 weight-only"):
        layers = [(quantize.quantized_linear(w, None, name[:4], torch.bfloat16), w.shape[1]) for w in weights]
        return sum(nbytes(layer) for layer, _ in layers), lambda: [layer(x16[k]) for layer, k in layers]
    if name in ("int8 (ours)", "int4 (ours)"):
        layers = [(quantize.quantized_linear(w, None, name[:4], torch.float32, int8_activations=True), w.shape[1])
                  for w in weights]  # as from_pretrained(quantize=...) builds them here: fp32 activations
        assert all(layer.kernel == quantize.INT8_ACTIVATIONS for layer, _ in layers)
        kernel = cpu_kernels.int8_linear if name == "int8 (ours)" else cpu_kernels.int4_linear
        # the kernel itself, as the C++ decode step calls it (the layer's forward adds ~10 us of Python a call)
        return sum(nbytes(layer) for layer, _ in layers), lambda: [kernel(x32[k], layer.weight, layer.scales)
                                                                   for layer, k in layers]
    packed = []  # "int8 dynamic": fbgemm's prepacked int8 weights
    for w in weights:
        scales = w.abs().amax(dim=1).clamp(min=1e-8) / 127
        q = torch.quantize_per_channel(w, scales, torch.zeros_like(scales, dtype=torch.long), 0, torch.qint8)
        packed.append((torch.ops.quantized.linear_prepack(q, None), w.shape[1]))
    return sum(w.numel() for w in weights), lambda: [torch.ops.quantized.linear_dynamic(x32[k], p)
                                                     for p, k in packed]


READERS = ["sum", "fp32 linear"] + (["fp32 oneDNN"] if torch.backends.mkldnn.is_available() else []) + [
    "int8 weight-only", "int4 weight-only"] + (
    ["int8 dynamic"] if "fbgemm" in torch.backends.quantized.supported_engines else []) + (
    ["fp32 (ours)", "int8 (ours)", "int4 (ours)"] if cpu_kernels.available() else [])


FROM_FILE = {"sum", "fp32 linear", "fp32 (ours)"}  # the readers of fp32 weights as from_pretrained maps them


def file_weights(shapes, target_bytes, directory):
    """Copies of the layers' fp32 weights adding up to `target_bytes`, memory-mapped from a safetensors file
    cached in large pages: [[weight of each shape] per copy], and the share of the file in 2 MB pages."""
    from safetensors.torch import load_file, save_file
    torch.manual_seed(0)
    per_copy = sum(o * i * 4 for o, i in shapes)
    copies = -(-target_bytes // per_copy)
    path = os.path.join(directory, "weights.safetensors")
    save_file({f"{c}.{j}": torch.randn(o, i) * 0.02 for c in range(copies) for j, (o, i) in enumerate(shapes)}, path)
    cache_in_large_pages(path)
    mapped = load_file(path)  # (a memory map of the file, as checkpoint.load's)
    return [[mapped[f"{c}.{j}"] for j in range(len(shapes))] for c in range(copies)], share_in_large_pages(path)


def copies_of(name, shapes, target_bytes, from_file):
    """One reader's copies of the layers, adding up to `target_bytes` of what it reads (several times this
    machine's last-level cache: every call reads from memory): (bytes, [functions]). from_file: the mapped
    fp32 weights, for the readers in FROM_FILE."""
    torch.manual_seed(0)
    if name in FROM_FILE:
        copies = [reader(name, weights) for weights in from_file]
    else:
        copies = []
        while not copies or sum(c[0] for c in copies) < target_bytes:
            copies.append(reader(name, [torch.randn(o, i) * 0.02 for o, i in shapes]))
    return sum(c[0] for c in copies), [read for _, read in copies]


def measure(shapes, repeats, target_bytes, from_file):
    """GB/s of every reader, median of `repeats` rounds; each round runs every reader's pass in turn, so
    that a change in the machine's speed (a shared VM) falls on all of them alike."""
    readers = {name: copies_of(name, shapes, target_bytes, from_file) for name in READERS}
    times = {name: [] for name in READERS}
    for round in range(repeats + 1):  # round 0: warm-up
        for name, (_, reads) in readers.items():
            start = time.perf_counter()
            for read in reads:
                read()
            if round:
                times[name].append(time.perf_counter() - start)
    return {name: readers[name][0] / statistics.median(times[name]) / 1e9 for name in READERS}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--mib", type=int, default=384, help="MiB each reader reads per pass (all held at once)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{args.threads} threads; GB/s of weight bytes at batch 1, copies cycled through memory")
    for title, shapes in SHAPES.items():
        if args.quick and title != "GPT-2 small":
            continue
        with tempfile.TemporaryDirectory() as tmp, torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # (torch's quantized-tensor API says it is deprecated)
            from_file, share = file_weights(shapes, args.mib * 2**20, tmp)
            rates = measure(shapes, 3 if args.quick else 7, args.mib * 2**20, from_file)
            del from_file
            gc.collect()
        best = max(rates, key=rates.get)
        print(f"\n{title}: a block's matrices, copies cycled ({args.mib} MiB of what each reader reads), "
              f"the readers in turn; fp32 weights mapped from a file, {share:.0%} of it in 2 MB pages")
        for name, rate in rates.items():
            print(f"  {name:14} {rate:6.1f} GB/s  {rate / rates[best]:.2f} of the best")
        print(f"  ceiling: {rates[best]:.1f} GB/s ({best})", flush=True)


if __name__ == "__main__":
    main()
