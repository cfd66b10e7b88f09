"""PyTorch's CPU int4 kernel on one of the 20B's layers, against a plain read of the same bytes.

    python bench/int4_kernel.py                 # 24576 x 6144 (dense_h_to_4h), 1 and 2 threads
    python bench/int4_kernel.py --copies 1      # one copy only: the weights then sit in the CPU's cache

What docs/quantization.md's "Decode" paragraph cites: for groups of 32, 64 and 128 weights, and bf16 and fp32
activations, the GB/s at which `_weight_int4pack_mm_for_cpu` reads the packed weights and scales of one token's
matmul, beside a plain sum over the same bytes viewed as float32 (the decode ceiling's measure, as in
bench/big.py), and a torch.compile'd dequantize-and-dot from the saved layout (two levels to a byte). Several
copies of the layer are cycled (default 16, ~1.5 GB) so that they come from memory, not from the cache.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

import quantize


def median_time(f, repeats=5):
    f()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def dequantize_dot(x, pairs, scales, G):
    """y = x @ W.T from the saved bytes: (1, K) x (N, K/2) two levels to a byte, scales (N, K/G)."""
    N, K = len(pairs), 2 * pairs.shape[1]
    p = pairs.view(N, K // G, G // 2)
    low, high = (p & 15).float() - 8, (p >> 4).float() - 8  # inputs 2j and 2j + 1
    xg = x.float().view(1, K // G, G // 2, 2)
    return ((low * xg[..., 0] + high * xg[..., 1]).sum(-1) * scales.float()).sum(-1)[None].to(x.dtype)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", type=int, nargs=2, default=[24576, 6144], metavar=("N", "K"))
    p.add_argument("--copies", type=int, default=16)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = p.parse_args()
    N, K = args.shape
    w = torch.randn(N, K, generator=torch.Generator().manual_seed(0)) * 0.02
    for threads in args.threads:
        torch.set_num_threads(threads)
        for G in (32, 64, 128):
            layer = quantize.Int4Linear.quantize(w, None, torch.bfloat16, G)
            copies = [(layer.weight.clone(), layer.scales_and_zeros.clone()) for _ in range(args.copies)]
            views = [t.reshape(-1).view(torch.uint8)[:t.nbytes // 4 * 4].view(torch.float32)
                     for pair in copies for t in pair]
            nbytes = sum(v.nbytes for v in views)
            plain = median_time(lambda: [v.sum() for v in views])
            line = f"{threads} thread(s), {N} x {K}, group {G}: plain sum {nbytes / plain / 1e9:.1f} GB/s"
            for dtype in (torch.bfloat16, torch.float32):
                x = torch.randn(1, K, dtype=dtype)
                sz = [s.to(dtype) for _, s in copies]
                t = median_time(lambda: [torch.ops.aten._weight_int4pack_mm_for_cpu(x, q, G, s)
                                         for (q, _), s in zip(copies, sz)], repeats=3 if dtype == torch.float32 else 5)
                line += f"; kernel, {str(dtype)[6:]} activations {nbytes / t / 1e9:.1f} GB/s ({plain / t:.2f})"
            print(line)
        pairs, scales = layer.pairs()
        compiled = torch.compile(dequantize_dot, dynamic=False)
        x = torch.randn(1, K, dtype=torch.bfloat16)
        t = median_time(lambda: compiled(x, pairs, scales.contiguous(), 128), repeats=3)
        print(f"{threads} thread(s): torch.compile'd dequantize-and-dot (group 128, one copy) "
              f"{(pairs.nbytes + scales.nbytes) / t / 1e9:.1f} GB/s")


if __name__ == "__main__":
    main()
