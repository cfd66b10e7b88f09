"""Weight-only quantization: int8 per output channel and int4 per group, applied while a model loads.

    model = gpt2.from_pretrained("gpt2", quantize="int8")      # or "int4"; bf16 activations by default
    python gpt2.py --quantize int4

Why. Decoding one token at batch 1 reads every weight matrix once and does little arithmetic with it, so
its speed is the memory bandwidth divided by the bytes of the weights. Storing a weight in 8 bits instead of
32 reads 4x fewer bytes; 4 bits, 8x fewer. The model also takes 4x / 8x less memory.

What a scale is. An int8 holds one of the integers -127..127. To store a row of real weights w in it we pick
one real number s, the scale, and store q = round(w / s); reading back gives s * q. With s = max|w| / 127
the largest weight maps to ±127 and every weight is off by at most s / 2 (the rounding):

    w  = [ 0.30, -1.27,  0.02, 0.64]          s = 1.27 / 127 = 0.01
    q  = [   30,  -127,     2,   64]          int8, 1 byte each (+ one scale per row)
    sq = [ 0.30, -1.27,  0.02, 0.64]          here exact; in general |w - s q| <= s / 2

Per output channel (int8). Each row of an nn.Linear weight (out, in) produces one output feature and gets its
own scale, so a row of small weights is not crushed by a large weight elsewhere. Then
y = x @ (s * q).T = (x @ q.T) * s: the scale multiplies the output, once per column, after an integer-valued
matmul. Symmetric (no offset): weights are centred on zero.

Group-wise (int4). Four bits hold only 16 values, too coarse for a whole row of 768 or 3072 weights: one
outlier would set the step for all of them. So each row is cut into groups of `group_size` consecutive input
weights (32, 64 or 128), each with its own scale s: q = round(w / s) in -8..7 with s = max|w| / 7.5 over the
group (stored as q + 8 in 0..15, the layout PyTorch's int4 kernels read; symmetric, as compressed-tensors
saves int4 and vLLM reads it). The error is again at most s / 2, and s is small because a group spans a
narrow range. The group size trades accuracy (smaller groups, smaller steps) against the bytes of the scales
(16 bits per group: 0.5 bit per weight at group 32, 0.125 at 128). GROUP_SIZE below was chosen by measuring
perplexity (bench/quantize.py; docs/quantization.md).

Saving. save_pretrained of a quantized model writes the integers and scales in compressed-tensors'
"pack-quantized" format (below, "saving and reloading"), which transformers and vLLM load; from_pretrained
reads them back without quantizing again.

Why the activations stay in bf16 (or fp32). Only the weights are stored in integers; inputs and outputs of a
layer keep the model's dtype. Activations change with every token and have outliers (a few features far
larger than the rest), so giving them one scale would be much lossier, and they are small at decode time
anyway: the bytes that matter are the weights'. The kernels convert the integers to the activations' dtype
on the fly. On a CPU, PyTorch's int8 and int4 kernels are fast with bf16 activations and slow with fp32
ones, so a quantized model runs in bf16 unless you ask for another dtype. (The exception, cpu_kernels.py,
does round each layer's input to int8, one scale per block of 32 inputs, which keeps an outlier's harm to
its block; it is fast with fp32 activations, and so are PyTorch's attention and argmax, several times
faster than in bf16 on a CPU: where it runs, a quantized model's activations are fp32 by default.)

What is quantized. Every nn.Linear of the model, including the LM head (the largest matrix of a small model).
The token embedding stays in the model's dtype: a lookup reads one row per token, so its bytes are not what
limits speed. GPT-2 and GPT-Neo tie their LM head to the embedding; quantizing gives the LM head its own
quantized copy and leaves the embedding as it is (one extra int8/int4 matrix, against a full-precision one).

Loading. `load_quantized` converts each weight as it is read from the checkpoint, so the full-precision model
never exists in memory; only the quantized model plus one tensor at a time.

Kernels (a plain dequantize-then-matmul where none exists, e.g. int4 with fp16 activations):
    x86 CPU         cpu_kernels.py's, where the CPU has AVX-512 VNNI and from_pretrained is given no dtype:
                    the activations too are rounded to int8 (per block of 32 inputs) and integers multiplied,
                    ~1.5x faster at batch 1, with fp32 activations between the layers (below). Optional:
                    without that file or such a CPU, PyTorch's below, in bf16. An explicit dtype (float32:
                    the reference the exactness tests use) always takes PyTorch's weight-only kernels.
    int8 on CPU     torch.ops.aten._weight_int8pack_mm
    int4 on CPU     torch.ops.aten._convert_weight_to_int4pack_for_cpu + _weight_int4pack_mm_for_cpu
    int4 on CUDA    torch.ops.aten._convert_weight_to_int4pack + _weight_int4pack_mm (bf16 activations)
    int8 on CUDA    F.linear with the int8 weight cast to x's dtype, then * scale (torch.compile fuses it)
"""
import ctypes
import json
import mmap
import re
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import hub  # (its progress bar)

try:
    import cpu_kernels  # optional: int8 activations on x86 (see that file); without it, PyTorch's kernels
except ImportError:
    cpu_kernels = None

SCHEMES = ("int8", "int4")
GROUP_SIZES = (32, 64, 128, 256)
GROUP_SIZE = 32  # int4: input weights per scale, chosen by perplexity (docs/quantization.md)
# Rows quantized at a time: the fp32 copy of a block of a 6144-wide weight (1.5 MB) stays in the CPU's cache
# while the pass works on it, and 64 is a whole number of the CPU int4 packer's blocks of rows (16, 32, 64) and
# of cpu_kernels.py's tiles of 4.
BLOCK = 64


def check_scheme(scheme):
    if scheme not in SCHEMES:
        raise ValueError(f"unknown quantization {scheme!r}; choose one of {', '.join(SCHEMES)}")

# ----------------------------------------------------------------------------- the two schemes


def levels_int8(w, f, absmax=None):
    """w (N, K) -> f (N, K) fp32 buffer given: the levels q in -127..127 (as floats), and scales fp32 (N,),
    absmax fp32 (N,): symmetric, one scale per output row; w ≈ q * scales[:, None]. absmax is NaN or inf
    where a row holds one (the caller checks it); given, it is the max |w| of rows longer than w's."""
    f.copy_(w)
    if absmax is None:
        absmax = row_absmax(f)
    scales = absmax.clamp(min=1e-12) / 127  # a row of zeros still gets a valid scale
    f.div_(scales[:, None]).round_().clamp_(-127, 127)
    return scales, absmax


def row_absmax(w):
    """max |w| along the last dimension of w (a row, or a group of one): two passes, no |w| copy; NaN and
    inf carry through."""
    return torch.maximum(w.amax(dim=-1), -w.amin(dim=-1)).float()


def quantize_int8(w):
    """w (N, K) -> q int8 (N, K), scales fp32 (N,), absmax fp32 (N,) (levels_int8 in a buffer of its own)."""
    f = torch.empty(w.shape)
    scales, absmax = levels_int8(w, f)
    return f.to(torch.int8), scales, absmax


def dequantize_int8(q, scales):
    return q.float() * scales[:, None].float()


def levels_int4(w, group_size, f):
    """w (N, K) -> f (N, K) fp32 buffer given: the levels q in 0..15 (as floats), and scales fp32 and absmax
    fp32 (N, K / group_size): each run of group_size weights of a row has its own scale; w ≈ (q - 8) * scale,
    symmetric (compressed-tensors' int4 and the one vLLM's kernels read): scale = max|w| / 7.5, so that both
    ends of the group round to within half a step (+max|w| -> 7.5 -> 7, -max|w| -> -7.5 -> -8)."""
    N, K = w.shape
    groups = f.copy_(w).view(N, K // group_size, group_size)  # (N, K/G, G)
    absmax = row_absmax(groups)  # (N, K/G)
    scales = absmax.clamp(min=1e-12) / 7.5
    groups.div_(scales[..., None]).round_().clamp_(-8, 7).add_(8)
    return scales, absmax


def quantize_int4(w, group_size):
    """w (N, K) -> q uint8 (N, K) in 0..15, scales, absmax (levels_int4 in a buffer of its own)."""
    f = torch.empty(w.shape)
    scales, absmax = levels_int4(w, group_size, f)
    return f.to(torch.uint8), scales, absmax


def dequantize_int4(q, scales, group_size):
    N, K = q.shape
    groups = q.float().reshape(N, K // group_size, group_size) - 8
    return (groups * scales[..., None].float()).reshape(N, K)


def check_values(absmax, dtype, key):
    """Weights holding NaN or inf would generate garbage without a word: refuse them, and values beyond what
    `dtype` holds (above 65504 in float16), as loading without quantizing does. absmax: the pass's own."""
    peak = absmax.max()  # NaN when any is NaN
    if not peak <= torch.finfo(dtype).max:
        raise ValueError(f"weights hold NaN or inf in {dtype}: {key}")


def to_dtype(tensor, dtype, device, key):
    """A tensor that is not quantized (embedding, LayerNorm, bias) in `dtype`, checked like a weight: one pass
    for the conversion, one for its max |x| (aminmax makes no temporary, and is 4x faster than amax and amin
    in bf16; a sum in fp32 of a bf16 tensor would convert all of it first: 1.2 GB for the 20B's embedding)."""
    converted = tensor.to(device, dtype)
    if converted.is_floating_point() and converted.numel():
        low, high = torch.aminmax(converted)
        check_values(torch.maximum(high, -low).float(), dtype, key)
    return converted

# ----------------------------------------------------------------------------- the quantized layers


class Int8Linear(nn.Module):
    """y = (x @ q.T) * scales + bias, with q int8 (out, in) and one scale per output feature."""

    def __init__(self, q, scales, bias, dtype, int8_activations=False):
        """int8_activations: run cpu_kernels.py where the width allows (the caller checked the CPU)."""
        super().__init__()
        self.out_features, self.in_features = q.shape
        self.register_buffer("weight", q)  # (out, in) int8
        self.register_buffer("scales", scales.to(q.device, dtype))  # (out,)
        self.register_buffer("bias", None if bias is None else bias.to(q.device, dtype))
        self.reduce = None  # tensor parallel's all-reduce for a layer split by its inputs (tp.py)
        self.kernel = int8_kernel(self.in_features, int8_activations)

    @classmethod
    def quantize(cls, weight, bias, dtype, key="weight", row_max=None, int8_activations=False):
        """One pass over weight (N, K), BLOCK rows at a time, into the int8 layer; NaN, inf and values beyond
        `dtype` refused. row_max: tensor parallel's, for a layer split by its inputs: weight holds a slice of
        each row, and row_max(absmax) turns its max |w| into the whole row's (a second pass), so that every
        process scales as the unsplit layer does."""
        N, K = weight.shape
        whole = None
        if row_max is not None:
            whole = torch.cat([row_absmax(rows) for rows in weight.split(BLOCK)])
            row_max(whole)
        fast = int8_kernel(K, int8_activations) and weight.device.type == "cpu"  # cpu_kernels.py's: 2 MB pages
        q = (cpu_kernels.empty_in_large_pages((N, K), torch.int8) if fast
             else torch.empty(N, K, dtype=torch.int8, device=weight.device))
        scales, absmax = torch.empty(N, device=weight.device), torch.empty(N, device=weight.device)
        f = torch.empty(BLOCK, K, device=weight.device)  # one buffer for every block: allocating is slow
        for start in range(0, N, BLOCK):
            rows, n = slice(start, start + BLOCK), min(BLOCK, N - start)
            scales[rows], absmax[rows] = levels_int8(weight[rows], f[:n], None if whole is None else whole[rows])
            q[rows] = f[:n]
        check_values(absmax, dtype, key)
        return cls(q, scales, bias, dtype, int8_activations)

    def forward(self, x):
        x2 = x.reshape(-1, self.in_features).contiguous()  # (B*T, K): the kernels want it contiguous
        if self.kernel == INT8_ACTIVATIONS:
            y = cpu_kernels.int8_linear(x2, self.weight, self.scales)
        elif x.is_cpu and (x.dtype != torch.bfloat16 or self.in_features % 16 == 0):
            y = torch.ops.aten._weight_int8pack_mm(x2, self.weight, self.scales)
        else:  # the plain form: integers converted to x's dtype, matmul, then one scale per output column.
            # PyTorch's CPU kernel with bf16 activations and an input width not a multiple of 16 returns wrong
            # values and, for more than one row, crashes (torch 2.13; tests/test_quantize.py keeps watching).
            y = F.linear(x2, self.weight.to(x.dtype)) * self.scales
        return outputs(self, y, x.shape)


class Int4Linear(nn.Module):
    """y = x @ W.T + bias, W stored as 4-bit integers with a scale per group of inputs.

    Where PyTorch has an int4 kernel for the device and dtype, q is packed into its layout (two weights per
    byte, tiled) and the kernel dequantizes on the fly; otherwise q stays one uint8 per weight and the layer
    dequantizes then multiplies (the plain path). The CPU packer wants out_features divisible by 16: GPT-2's
    50257-row LM head is padded with zero rows, whose outputs are cut off."""

    def __init__(self, q_blocks, N, K, scales, bias, dtype, group_size=GROUP_SIZE, device="cpu", pairs=None,
                 int8_activations=False):
        """q_blocks: (N, K) levels 0..15 in blocks of BLOCK rows (an iterator, consumed once), or pairs: (N, K/2)
        uint8, two levels to a byte, the first low (a saved checkpoint's); scales (N, K/G). int8_activations:
        run cpu_kernels.py where the width and group size allow (the caller checked the CPU)."""
        super().__init__()
        self.in_features, self.out_features, self.group_size = K, N, group_size
        self.kernel = int4_kernel(torch.device(device), dtype, K, group_size, int8_activations)
        self.reduce = None  # as Int8Linear's
        if self.kernel == INT8_ACTIVATIONS:  # cpu_kernels.py's layout of the saved pairs, scales (N, K/G)
            weight = cpu_kernels.empty_in_large_pages((N, K // 2), torch.uint8)  # (a CPU: the caller checked)
            if pairs is not None:
                cpu_kernels.int4_layout(pairs, out=weight)
            start = 0
            for q in q_blocks:  # (n, K) levels 0..15, as floats or uint8; BLOCK rows, a multiple of the tiles of 4
                cpu_kernels.int4_layout(levels_to_pairs(q.to(torch.uint8)), out=weight[start:start + len(q)])
                start += len(q)
            self.register_buffer("weight", weight)
            # bf16 whatever the activations (half the bytes to read; PyTorch's kernels store them so too)
            self.register_buffer("scales", scales.to(device, torch.bfloat16).contiguous())
            self.register_buffer("bias", None if bias is None else bias.to(device, dtype))
            return
        padded = N + -N % 16
        if self.kernel == "cpu":  # the CPU layout packs each block of up to 64 rows on its own: (N, K/2) uint8
            weight = torch.empty(padded, K // 2, dtype=torch.uint8, device=device)
            if pairs is not None:
                pairs_to_cpu_int4(pairs, weight)
                q_blocks = ()
        else:
            weight = torch.zeros(padded, K, dtype=torch.uint8, device=device)
            if pairs is not None:
                q_blocks = (pairs_to_levels(pairs[s:s + BLOCK]) for s in range(0, N, BLOCK))
        start = 0
        for q in q_blocks:  # (n, K) levels 0..15, as floats or uint8
            n = len(q) + -len(q) % 16
            if self.kernel == "cpu":
                pack_cpu_int4(F.pad(q, (0, 0, 0, n - len(q))), weight[start:start + n])
            else:
                weight[start:start + len(q)] = q
            start += n
        if self.kernel == "cuda":  # two weights per byte (high nibble first), then the kernel's tiling
            weight = torch.ops.aten._convert_weight_to_int4pack((weight[:, ::2] << 4 | weight[:, 1::2]), 8)
        self.register_buffer("weight", weight)
        # The kernels' layout for the groups' parameters: (K/G, N, 2), [..., 0] scale, [..., 1] the value of
        # level 8 (the kernels compute (q - 8) * scale + zero): 0, symmetric. Padding rows: 0 (cut off).
        scales = scales.T.to(device, dtype).contiguous()  # (K/G, N): transposed first, then stacked, is faster
        scales_and_zeros = torch.stack([scales, torch.zeros_like(scales)], dim=-1)  # (K/G, N, 2)
        if padded > N:
            scales_and_zeros = F.pad(scales_and_zeros, (0, 0, 0, padded - N))
        self.register_buffer("scales_and_zeros", scales_and_zeros)
        self.register_buffer("bias", None if bias is None else F.pad(bias, (0, padded - N)).to(device, dtype))

    @classmethod
    def quantize(cls, weight, bias, dtype, group_size=GROUP_SIZE, key="weight", int8_activations=False):
        """One pass over weight (N, K), BLOCK rows at a time, into the int4 layer; NaN, inf and values beyond
        `dtype` refused."""
        N, K = weight.shape
        scales = torch.empty(N, K // group_size, device=weight.device)
        absmax = torch.empty(N, K // group_size, device=weight.device)

        f = torch.empty(BLOCK, K, device=weight.device)  # one buffer for every block: allocating is slow

        def blocks():
            for start in range(0, N, BLOCK):
                rows, n = slice(start, start + BLOCK), min(BLOCK, N - start)
                scales[rows], absmax[rows] = levels_int4(weight[rows], group_size, f[:n])
                yield f[:n]
        layer = cls(blocks(), N, K, scales, bias, dtype, group_size, weight.device,
                    int8_activations=int8_activations)
        check_values(absmax, dtype, key)
        return layer

    def forward(self, x):
        x2 = x.reshape(-1, self.in_features).contiguous()  # (B*T, K): the kernels want it contiguous
        if self.kernel == INT8_ACTIVATIONS:
            y = cpu_kernels.int4_linear(x2, self.weight, self.scales)
        elif self.kernel == "cpu":
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, self.weight, self.group_size, self.scales_and_zeros)
        elif self.kernel == "cuda":
            y = torch.ops.aten._weight_int4pack_mm(x2, self.weight, self.group_size, self.scales_and_zeros)
        else:  # the zeros are 0 (symmetric): the scales alone dequantize
            w = dequantize_int4(self.weight, self.scales_and_zeros[..., 0].T, self.group_size)  # (N, K) fp32
            y = x2 @ w.to(x.dtype).T
        return outputs(self, y, x.shape)

    def pairs(self):
        """(pairs (N, K/2) uint8, two levels 0..15 to a byte, the first low; scales (N, K/G)): the layer's
        integers in a saved checkpoint's layout."""
        N = self.out_features
        if self.kernel == INT8_ACTIVATIONS:
            return cpu_kernels.int4_pairs(self.weight)[:N], self.scales[:N]
        if self.kernel == "cpu":
            pairs = cpu_int4_to_pairs(self.weight, N)
        elif self.kernel is None:
            pairs = levels_to_pairs(self.weight[:N])
        else:
            raise ValueError("saving an int4 model quantized on CUDA is not supported: load it with device='cpu'")
        return pairs, self.scales_and_zeros.transpose(0, 1)[:N, :, 0]


def outputs(layer, y, shape):
    """y (B*T, rows) + bias -> (B, T, out_features): rows past out_features (an int4 layer's padding, or rows
    cut off with `layer.out_features = n` after loading) are dropped. A layer of tensor parallel split by its
    inputs sums its partial results over the processes first (layer.reduce, set by tp.py)."""
    if layer.reduce is not None:
        layer.reduce(y)
    y = y if layer.bias is None else y + layer.bias
    return y[:, :layer.out_features].reshape(*shape[:-1], layer.out_features)


INT8_ACTIVATIONS = "int8 activations"  # a layer's `kernel`: cpu_kernels.py's


def fast_kernels(device):
    """Whether cpu_kernels.py runs on `device`: a CPU that has its instructions (the file is optional)."""
    return cpu_kernels is not None and cpu_kernels.runs_on(device)


def int8_kernel(K, int8_activations):
    """cpu_kernels.py's kernel for an int8 layer of K inputs where asked (the caller checked the CPU) and K is
    a multiple of 64; else None: PyTorch's kernels, chosen per call by the activations' dtype."""
    return INT8_ACTIVATIONS if int8_activations and K % 64 == 0 else None


def int4_kernel(device, dtype, K, group_size, int8_activations):
    """Which int4 kernel there is for weights on `device` and activations of `dtype` (None: plain path)."""
    if int8_activations and group_size == 32 and K % 128 == 0:
        return INT8_ACTIVATIONS
    if device.type == "cpu" and dtype in (torch.bfloat16, torch.float32):
        return "cpu"
    if device.type == "cuda" and dtype == torch.bfloat16:
        return "cuda"
    return None


def quantized_linear(weight, bias, scheme, dtype, group_size=GROUP_SIZE, key="weight", row_max=None,
                     int8_activations=False):
    """An Int8Linear or Int4Linear holding weight (out, in). int4 needs in_features divisible by group_size;
    a layer whose inputs are not a whole number of groups stays int8. row_max: Int8Linear.quantize's.
    int8_activations: the layer runs cpu_kernels.py where its width allows (the caller checked the CPU)."""
    check_scheme(scheme)
    if group_size not in GROUP_SIZES:
        raise ValueError(f"group_size must be one of {GROUP_SIZES} (what PyTorch's int4 kernels take), "
                         f"got {group_size}")
    if scheme == "int4" and weight.shape[1] % group_size == 0:
        return Int4Linear.quantize(weight, bias, dtype, group_size, key, int8_activations)
    return Int8Linear.quantize(weight, bias, dtype, key, row_max, int8_activations)

# ----------------------------------------------------------------------------- PyTorch's CPU int4 layout
#
# The packer (aten/src/ATen/native/cpu/int4mm_kernel.cpp) cuts the rows into blocks of BLOCK_N (64 with
# AVX-512, 32 otherwise) and stores each block k-major, BLOCK_N/2 bytes per input k: a byte holds one input
# of two rows. In a full block those are rows i and BLOCK_N/2 + i ("halves", AVX-512 and AVX2); a shorter last
# block, and every block without AVX, holds neighbouring rows 2i and 2i + 1. Which this build uses is found by
# packing a probe (cpu_int4_layout). A saved checkpoint's bytes hold two inputs of one row instead ("pairs":
# inputs 2j and 2j + 1, the first in the low nibble), so loading and saving trade nibbles between the two
# rows that share a byte (nibble_transpose), then transpose each block.


def nibble_transpose(a, b):
    """Bytes a = (a0, a1), b = (b0, b1), low nibble first -> (a0, b0), (a1, b1): two rows' pairs of inputs
    become two inputs' pairs of rows, and back. Eight bytes at a time where the rows allow (int64 lanes: a
    shift moves each byte's nibble into the next byte too, and the mask keeps only its own)."""
    wide = a.shape[-1] % 8 == 0 and a.stride(-1) == 1 and b.stride(-1) == 1
    low, high = (0x0F0F0F0F0F0F0F0F, ~0x0F0F0F0F0F0F0F0F) if wide else (0x0F, 0xF0)
    a, b = (a.view(torch.int64), b.view(torch.int64)) if wide else (a, b)
    first, second = (a & low) | ((b << 4) & high), ((a >> 4) & low) | (b & high)
    return first.view(torch.uint8), second.view(torch.uint8)


def cpu_int4_chunks(N, K):
    """(rows, m, halves) over N rows (a multiple of 16) of PyTorch's CPU int4 layout: runs of whole blocks of
    m rows, about 1 MB at a time so that the work stays in the CPU's cache."""
    block, halves = cpu_int4_layout()
    full = N // block * block
    step = max(1, (1 << 20) // (block * K // 2)) * block
    for start in range(0, full, step):
        yield slice(start, min(start + step, full)), block, halves
    if full < N:
        yield slice(full, N), N - full, False


def partners(rows, m, halves):
    """(c * m, P) -> (c, 2, m/2, P), a view: [:, 0, i] and [:, 1, i] are the rows that share the CPU layout's
    bytes in each block of m rows: i and m/2 + i (halves), or 2i and 2i + 1."""
    c, P = len(rows) // m, rows.shape[1]
    return rows.view(c, 2, m // 2, P) if halves else rows.view(c, m // 2, 2, P).transpose(1, 2)


def pairs_to_cpu_int4(pairs, out):
    """(N, K/2) uint8, two inputs of a row to a byte (a saved checkpoint's) -> out (N rounded up to 16, K/2)
    uint8 in PyTorch's CPU int4 layout; the rows past N are zero."""
    N, P = pairs.shape
    for rows, m, halves in cpu_int4_chunks(len(out), 2 * P):
        x = pairs[rows]
        if len(x) < rows.stop - rows.start:  # the padding rows
            x = F.pad(x, (0, 0, 0, rows.stop - rows.start - len(x)))
        x = partners(x, m, halves)  # (c, 2, m/2, K/2)
        low, high = nibble_transpose(x[:, 0], x[:, 1])  # (c, m/2, K/2): inputs 2j and 2j + 1 of both rows
        o = out[rows].view(-1, P, 2, m // 2)  # (c, K/2, 2, m/2): the block, k-major
        o[:, :, 0], o[:, :, 1] = low.transpose(1, 2), high.transpose(1, 2)


def cpu_int4_to_pairs(weight, N):
    """pairs_to_cpu_int4 undone: weight (rows, K/2) in the CPU layout -> its first N rows as pairs (N, K/2)."""
    P = weight.shape[1]
    pairs = torch.empty_like(weight)
    for rows, m, halves in cpu_int4_chunks(len(weight), 2 * P):
        o = weight[rows].view(-1, P, 2, m // 2)  # (c, K/2, 2, m/2)
        a, b = nibble_transpose(o[:, :, 0], o[:, :, 1])  # (c, K/2, m/2): the pairs of each row's partners
        x = partners(pairs[rows], m, halves)
        x[:, 0], x[:, 1] = a.transpose(1, 2), b.transpose(1, 2)
    return pairs[:N]


def levels_to_pairs(q):
    """(N, K) levels 0..15 -> (N, K/2) uint8, two inputs to a byte, the first low."""
    return q[:, ::2] | (q[:, 1::2] << 4)


def pairs_to_levels(pairs):
    return torch.stack([pairs & 15, pairs >> 4], dim=-1).reshape(len(pairs), -1)


def pack_cpu_int4(levels, out):
    """(n, K) levels 0..15 (floats or uint8, n a multiple of 16) -> out (n, K/2) uint8 in PyTorch's CPU int4
    layout, straight from the quantizer's floats: a full block in the halves layout in one pass (a weighted
    sum of the two rows, transposed into place); the rest through pairs."""
    block, halves = cpu_int4_layout()
    n, K = levels.shape
    for start in range(0, n, block):
        m = min(block, n - start)
        if m == block and halves:
            low, high = levels[start:start + m // 2], levels[start + m // 2:start + m]  # (m/2, K) each
            out[start:start + m].view(K, m // 2).copy_(torch.add(low, high, alpha=16).T)  # (K, m/2) bytes
        else:
            pairs_to_cpu_int4(levels_to_pairs(levels[start:start + m].to(torch.uint8)), out[start:start + m])


LAYOUT = []  # the CPU int4 packer's (BLOCK_N, halves), found once


def cpu_int4_layout():
    if not LAYOUT:
        q = torch.randint(0, 16, (112, 4), generator=torch.Generator().manual_seed(0), dtype=torch.int32)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
        for candidate in [(64, True), (32, True), (32, False)]:
            LAYOUT[:] = candidate
            if torch.equal(cpu_int4_to_pairs(packed, 112), levels_to_pairs(q.to(torch.uint8))):
                return candidate
        LAYOUT.clear()
        raise ValueError("this PyTorch build packs int4 weights in a layout quantize.py cannot read back; "
                         "an int4 model cannot be saved here (int8 can)")
    return tuple(LAYOUT)

# ----------------------------------------------------------------------------- quantizing while loading


def load_quantized(model, state_dict, scheme, dtype, device="cpu", group_size=GROUP_SIZE, splits=None,
                   int8_activations=False):
    """Give `model` (built on the meta device, with `state_dict` already checked against it) the checkpoint's
    tensors, every nn.Linear replaced by its quantized form. The state dict is consumed one tensor at a time:
    a weight is read, quantized and dropped before the next is read, so memory holds the quantized model plus
    one full-precision tensor. A linear layer whose weight is tied to an embedding (GPT-2's lm_head and wte)
    gets its own quantized copy; the embedding stays in `dtype`. NaN, inf, and values beyond `dtype` are
    refused, found by the pass that reads each tensor anyway. splits: {layer name: tp.Split} for the layers
    that tensor parallel split by their inputs (tp.shard's): their partial results are summed before the
    bias, and int8 scales are the whole row's. int8_activations: the layers run cpu_kernels.py where they can
    (the caller checked the CPU: fast_kernels)."""
    check_scheme(scheme)
    device = torch.device(device)
    owner = {}  # parameter -> the first name it has in the state dict (a tied lm_head reads wte's tensor)
    for name, p in model.named_parameters(remove_duplicate=False):
        if name in state_dict:
            owner.setdefault(p, name)
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    bar = hub.progress(sum(m.weight.numel() * state_dict[owner[m.weight]].element_size() for _, m in linears),
                       f"quantizing to {scheme}")
    for name, linear in linears:
        key = owner[linear.weight]
        bar.update(linear.weight.numel() * state_dict[key].element_size())
        tied = key != f"{name}.weight"
        weight = state_dict[key] if tied else state_dict.pop(key)
        bias = state_dict.pop(f"{name}.bias", None)
        split = (splits or {}).get(name)  # tensor parallel, split by inputs
        whole = split.in_features if split else weight.shape[1]
        if scheme == "int4" and whole % group_size == 0 and weight.shape[1] % group_size:
            raise ValueError(f"tensor parallel: {name}'s share of {weight.shape[1]} inputs is not a whole number "
                             f"of int4 groups of {group_size}, so it would not be the unsplit model's int4 "
                             "layer; use fewer processes or int8")
        bias = None if bias is None else to_dtype(bias, dtype, device, f"{name}.bias")
        layer = quantized_linear(weight.to(device), bias, scheme, dtype, group_size, key,
                                 split.row_max if split else None, int8_activations)
        layer.reduce = split.reduce if split else None
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, layer)
        if not tied:
            release(weight)
        del weight
    bar.close()
    load_the_rest(model, state_dict, dtype, device)
    model.quantization_config = quantization_config(model)
    return model


def load_the_rest(model, state_dict, dtype, device):
    """Embeddings, LayerNorms: in dtype, one at a time."""
    for key in list(state_dict):
        tensor = state_dict.pop(key)
        converted = to_dtype(tensor, dtype, device, key)
        model.load_state_dict({key: converted}, strict=False, assign=True)
        if converted.untyped_storage().data_ptr() != tensor.untyped_storage().data_ptr():
            release(tensor)
        del tensor, converted


def release(tensor):
    """Hand a memory-mapped checkpoint tensor's pages back to the kernel once it has been converted.

    safetensors maps the whole file, and every page read stays resident until the last tensor of the file is
    freed: converting tensor after tensor would end with the whole fp32 file in memory. MADV_PAGEOUT (Linux
    5.4+) reclaims the pages: clean file pages are dropped (re-read from the file if touched again), and no
    data is ever lost. Memory PyTorch allocated itself (resizable storages) is left alone."""
    storage = tensor.untyped_storage()
    if sys.platform != "linux" or storage.resizable() or storage.nbytes() < mmap.PAGESIZE:
        return
    start = storage.data_ptr() // mmap.PAGESIZE * mmap.PAGESIZE
    length = storage.data_ptr() + storage.nbytes() - start
    MADV_PAGEOUT = 21
    ctypes.CDLL(None).madvise(ctypes.c_void_p(start), ctypes.c_size_t(length), MADV_PAGEOUT)

# ----------------------------------------------------------------------------- saving and reloading
#
# A quantized model is saved in compressed-tensors' "pack-quantized" format, which transformers (with the
# compressed-tensors package) and vLLM load. For each quantized layer `name`:
#
#   name.weight_packed      int32 (N, ceil(K * bits / 32)): the levels + 2**(bits-1) (unsigned), 32 / bits to
#                           a word, the first in the lowest bits (on a little-endian machine: the bytes, or
#                           nibbles low first, in row order)
#   name.weight_scale       dtype (N, 1) for int8 (per channel), (N, K / G) for int4 (per group)
#   name.weight_shape       int64 (2,): N, K
#
# and w = level * scale, symmetric (no zero point: compressed-tensors' asymmetric int4 does not load in
# transformers 5.24 + compressed-tensors 0.20, whose empty model expects its zero points unpacked).
# config.json's "quantization_config" says which layers hold which.


def quantization_config(model):
    """The "quantization_config" of config.json: which layers are int8 (per channel, symmetric) and which int4
    (per group, symmetric), in compressed-tensors' terms."""
    int8 = [n for n, m in model.named_modules() if isinstance(m, Int8Linear)]
    int4 = [n for n, m in model.named_modules() if isinstance(m, Int4Linear)]
    groups = {}
    if int4:
        group_size = next(m.group_size for m in model.modules() if isinstance(m, Int4Linear))
        groups["group_0"] = scheme_config(int4, 4, "group", group_size, symmetric=True)
    if int8:
        groups[f"group_{len(groups)}"] = scheme_config(int8, 8, "channel", None, symmetric=True)
    return {"quant_method": "compressed-tensors", "format": "pack-quantized", "quantization_status": "compressed",
            "config_groups": groups, "ignore": [], "kv_cache_scheme": None}


# transformers 5 calls GPT-NeoX's LM head lm_head (its checkpoints, and vLLM, keep embed_out): a target that
# compressed-tensors matches under either name.
TARGETS = {"embed_out": "re:^(embed_out|lm_head)$"}


def scheme_config(targets, bits, strategy, group_size, symmetric):
    targets = [TARGETS.get(name, name) for name in targets]
    weights = {"num_bits": bits, "type": "int", "symmetric": symmetric, "strategy": strategy,
               "group_size": group_size, "dynamic": False, "actorder": None, "observer": "minmax"}
    return {"targets": targets, "weights": weights, "input_activations": None, "output_activations": None}


def to_words(b):
    """(R, C) uint8 -> (R, ceil(C / 4)) int32: the bytes in order, four to a word, the first lowest."""
    assert sys.byteorder == "little", "the packed layout is written byte by byte, for little-endian machines"
    if b.shape[1] % 4:  # (F.pad copies even when it adds nothing: a 20B's whole int4 weights, on saving)
        b = F.pad(b, (0, -b.shape[1] % 4))
    return b.contiguous().view(torch.int32)


def from_words(packed, C):
    """to_words undone: (R, words) int32 -> its first C bytes per row (R, C) uint8, a view."""
    assert sys.byteorder == "little", "the packed layout is read byte by byte, for little-endian machines"
    return packed.contiguous().view(torch.uint8)[:, :C]


def quantized_tensors(model):
    """What save_pretrained writes for a quantized model, a layer at a time ({key: tensor} per quantized layer,
    then the other tensors one by one): the integers and scales in compressed-tensors' layout, each made only
    when it is written, so that memory holds the model and one shard's copies (all at once would double a
    20B's 11 GB). The LM head is its own matrix (tied no more)."""
    quantized = {n: m for n, m in model.named_modules() if isinstance(m, (Int8Linear, Int4Linear))}
    for name, layer in quantized.items():
        N, K = layer.out_features, layer.in_features
        if isinstance(layer, Int8Linear):
            levels = (layer.weight.view(torch.uint8) ^ 128)  # q + 128, two's complement
            group = {f"{name}.weight_packed": to_words(levels), f"{name}.weight_scale": layer.scales[:, None].clone()}
        else:
            pairs, scales = layer.pairs()  # levels q + 8, two to a byte
            group = {f"{name}.weight_packed": to_words(pairs), f"{name}.weight_scale": scales.contiguous()}
        group[f"{name}.weight_shape"] = torch.tensor([N, K])
        if layer.bias is not None:
            group[f"{name}.bias"] = layer.bias[:N].clone()  # safetensors saves whole storages only
        yield group
    for key, tensor in model.state_dict().items():
        if key.rpartition(".")[0] not in quantized:
            yield {key: tensor}


def quantized_config(model, config):
    """config.json of a saved quantized model: its quantization_config, and an untied LM head. GPT-2's Hub
    layers are Conv1D (weights transposed), which compressed-tensors does not quantize: transformers would
    load them silently wrong, so each group carries a field that compressed-tensors refuses (transformers then
    refuses the checkpoint, naming it) and that this file's reader ignores."""
    quantization = model.quantization_config
    if config.get("model_type") == "gpt2":
        groups = {name: dict(group, **CONV1D_MARK) for name, group in quantization["config_groups"].items()}
        quantization = dict(quantization, config_groups=groups)
    return dict(config, tie_word_embeddings=False, quantization_config=quantization)


# GPT-2's marker: compressed-tensors' schemes forbid fields they do not know, so transformers stops on it.
CONV1D_MARK = {"conv1d_layers_saved_as_linear_not_loadable_by_compressed_tensors": True}


def save_quantized(model, directory, max_shard_size):
    """Write quantized_tensors into `directory` as the Hub's safetensors: model.safetensors, or shards of at
    most max_shard_size (bytes, or "5GB") named model-0000k-of-0000n.safetensors with an index, as
    huggingface_hub writes them. (Its writer takes every tensor at once: here a shard is written and freed
    before the next is made.)"""
    from safetensors.torch import save_file
    from huggingface_hub.serialization._base import parse_size_to_int  # the plain save's parser ("5TB" too)
    limit = parse_size_to_int(max_shard_size) if isinstance(max_shard_size, str) else max_shard_size
    directory, shards, current, size, total = Path(directory), [], {}, 0, 0

    bar = hub.progress(sum(t.numel() * t.element_size() for t in model.state_dict().values()
                           if isinstance(t, torch.Tensor)), "saving")

    def flush():
        save_file(current, directory / f"part-{len(shards)}", metadata={"format": "pt"})
        shards.append(list(current))
        bar.update(size)
    for group in quantized_tensors(model):
        nbytes = sum(t.numel() * t.element_size() for t in group.values())
        if current and size + nbytes > limit:
            flush()
            current, size = {}, 0
        current.update(group)
        size, total = size + nbytes, total + nbytes
    flush()
    bar.close()
    if len(shards) == 1:
        (directory / "part-0").rename(directory / "model.safetensors")
        return
    weight_map = {}
    for i, keys in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        (directory / f"part-{i}").rename(directory / name)
        weight_map |= dict.fromkeys(keys, name)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def saved_schemes(config):
    """{layer name: (bits, group_size)} from a config.json's "quantization_config"; anything this file does not
    read is refused, naming the field."""
    if not isinstance(config, dict):
        raise ValueError(f"config.json: quantization_config must be an object, not {type(config).__name__}")
    if config.get("quant_method") != "compressed-tensors" or config.get("format") != "pack-quantized":
        raise ValueError('quantization_config: only compressed-tensors\' "pack-quantized" format is read '
                         f'(quant_method {config.get("quant_method")!r}, format {config.get("format")!r})')
    groups = config.get("config_groups")
    if not isinstance(groups, dict) or not groups:
        raise ValueError("quantization_config.config_groups must be a non-empty object")
    schemes = {}
    for group_name, group in groups.items():
        schemes.update(dict.fromkeys(*group_scheme(f"quantization_config.config_groups.{group_name}", group)))
    return schemes


def group_scheme(where, group):
    """(targets, (bits, group_size)) of one config group, every field type-checked (32.0 is not 32)."""
    if not isinstance(group, dict) or not isinstance(group.get("weights"), dict):
        raise ValueError(f"{where}: must be an object with a \"weights\" object")
    weights, targets = group["weights"], group.get("targets")
    bits, group_size = weights.get("num_bits"), weights.get("group_size")
    whole = type(bits) is int and (group_size is None or type(group_size) is int)  # bool and float refused
    int8 = whole and bits == 8 and weights.get("strategy") == "channel" and weights.get("symmetric") is True
    int4 = (whole and bits == 4 and weights.get("strategy") == "group" and weights.get("symmetric") is True
            and group_size in GROUP_SIZES)
    if not (int8 or int4) or weights.get("type") != "int" or group.get("input_activations") or \
            not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        raise ValueError(f"{where}: only int8 per channel (symmetric) and int4 per group of {GROUP_SIZES} "
                         "(symmetric) weights, with layer names as targets, are read")
    return targets, (bits, group_size)


# A "re:" target comes from a file: Python's backtracking matcher takes exponential time on a pattern like
# (.|.)*X, so a pattern is read only if its worst case, bounded from its structure, is small (pattern_cost).
MAX_PATTERN = 500  # characters
MAX_MATCH_STEPS = 10**5  # the worst case of one pattern on one layer name
MAX_TARGETS_STEPS = 10**6  # the worst case of all the patterns on one name


def pattern_cost(items, n):
    """An upper bound on the ways a backtracking matcher can try `items` (re._parser's parse of a pattern)
    on a name of n characters: a sequence multiplies its items', a branch adds its alternatives', a
    repetition of a single-path item takes up to n + 1 lengths. A repeated item with choices of its own
    (nested quantifiers, alternation under a *): the exponential case, refused (None); backreferences and
    conditionals too."""
    from re import _constants as c  # (the parser's names; Python 3.11+)
    total = 1
    for op, av in items:
        if op in (c.LITERAL, c.NOT_LITERAL, c.ANY, c.IN, c.AT, c.CATEGORY):
            cost = 1
        elif op is c.SUBPATTERN:
            cost = pattern_cost(av[-1], n)
        elif op in (c.ASSERT, c.ASSERT_NOT):
            cost = pattern_cost(av[1], n)
        elif op is c.BRANCH:
            costs = [pattern_cost(alt, n) for alt in av[1]]
            cost = None if None in costs else sum(costs)
        elif op in (c.MAX_REPEAT, c.MIN_REPEAT, c.POSSESSIVE_REPEAT):
            body = pattern_cost(av[2], n)
            cost = None if body != 1 else min(av[1], n) + 1
        else:  # backreferences, conditionals, atomic groups: not needed for layer names
            return None
        if cost is None:
            return None
        total *= cost
    return total


def compile_targets(targets, names):
    """{pattern: compiled} for the "re:" targets, each refused by name unless pattern_cost bounds its work on
    the model's layer `names` (one match per name and pattern, in scheme_of)."""
    from re import _parser
    n, compiled, steps = max(map(len, names), default=0), {}, 0
    for target in (t for t in targets if t.startswith("re:")):
        try:
            cost = pattern_cost(_parser.parse(target[3:]), n) if len(target) <= MAX_PATTERN else None
            compiled[target] = re.compile(target[3:])
        except re.error as e:
            raise ValueError(f"quantization_config: target {target[:80]!r} is not a valid pattern ({e})") \
                from None
        if cost is None or cost > MAX_MATCH_STEPS:
            raise ValueError(f"quantization_config: target {target[:80]!r} is too complex a pattern to match "
                             "safely (nested or alternated repetition, or too long); name the layers instead")
        steps += cost
        if steps > MAX_TARGETS_STEPS:
            raise ValueError("quantization_config: too many \"re:\" targets to match safely; name the layers")
    return compiled


def scheme_of(schemes, patterns, name):
    """The (bits, group_size) whose target is `name`, or a "re:" pattern matching it (compressed-tensors'
    re.match; `patterns` from compile_targets); None if none."""
    if name in schemes:
        return schemes[name]
    return next((schemes[t] for t, pattern in patterns.items() if pattern.match(name)), None)


def check_scales(scales, key):
    """A scale is max|w| / 127 (or / 7.5): never negative, and zero only for a row or group of zeros. A
    negative or all-zero scale would sample from a broken model without a word: refused."""
    low, high = torch.aminmax(scales)
    if low < 0 or high == 0:
        raise ValueError(f"{key}: scales must be positive (a zero only where the weights are), the file "
                         f"holds {'negative' if low < 0 else 'only zero'} ones")


def load_saved(model, state_dict, config, dtype, device="cpu", quantize=None, int8_activations=False):
    """Give `model` (built on the meta device) a saved quantized checkpoint's tensors: the integers are read
    from the (memory-mapped) file into the layers' layouts, nothing is quantized again. `config` is
    config.json's "quantization_config". Every key and shape is checked against the model.
    int8_activations: as load_quantized's."""
    if quantize is not None:
        raise ValueError(f"the checkpoint is saved quantized already (config.json's quantization_config): "
                         f"load it without quantize={quantize!r}")
    if not all(isinstance(t, torch.Tensor) for t in state_dict.values()):  # tp.py's lazily read tensors
        raise ValueError("a checkpoint saved quantized does not load under tensor parallel (torchrun) yet: "
                         "load its full-precision checkpoint with quantize=")
    schemes = saved_schemes(config)
    device = torch.device(device)
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    patterns = compile_targets(schemes, linears)
    unknown = sorted(t for t in schemes if not t.startswith("re:") and t not in linears)
    if unknown:
        raise ValueError(f"quantization_config names layers the model does not have: {', '.join(unknown[:8])}")
    for name, linear in linears.items():
        scheme = scheme_of(schemes, patterns, name)
        if scheme is None:
            raise ValueError(f"quantization_config does not say how {name} is quantized")
        bits, group_size = scheme
        N, K = linear.out_features, linear.in_features
        expected = {"weight_packed": ((N, -(-K * bits // 32)), torch.int32),
                    "weight_scale": ((N, 1) if bits == 8 else (N, K // group_size), None),
                    "weight_shape": ((2,), torch.int64)}
        if linear.bias is not None:
            expected["bias"] = ((N,), None)
        t = {}
        for part, (shape, want) in expected.items():
            key = f"{name}.{part}"
            if key not in state_dict:
                raise ValueError(f"the checkpoint has no {key}")
            t[part] = state_dict.pop(key)
            if tuple(t[part].shape) != shape or (want is not None and t[part].dtype != want) or \
                    (want is None and not t[part].is_floating_point()):
                raise ValueError(f"{key}: {t[part].dtype} {tuple(t[part].shape)} in the file, expected "
                                 f"{want or 'floating point'} {shape}")
        if t["weight_shape"].tolist() != [N, K]:
            raise ValueError(f"{name}.weight_shape is {t['weight_shape'].tolist()}, the config says {[N, K]}")
        if bits == 4 and K % group_size:
            raise ValueError(f"{name}: {K} inputs are not a whole number of groups of {group_size}")
        bias = None if linear.bias is None else to_dtype(t["bias"], dtype, device, f"{name}.bias")
        scales = to_dtype(t["weight_scale"], dtype, device, f"{name}.weight_scale")  # NaN and inf refused
        check_scales(scales, f"{name}.weight_scale")
        packed = t["weight_packed"]
        if bits == 8:
            if int8_kernel(K, int8_activations):  # cpu_kernels.py's: into 2 MB pages, in one pass
                q = cpu_kernels.empty_in_large_pages((N, K), torch.int8)
                torch.bitwise_xor(from_words(packed, K), 128, out=q.view(torch.uint8))
            else:
                q = (from_words(packed, K) ^ 128).view(torch.int8).to(device)  # one pass: a new tensor
            layer = Int8Linear(q, scales[:, 0], bias, dtype, int8_activations)
        else:  # the bytes go straight into the kernel's layout, never unpacked
            layer = Int4Linear((), N, K, scales, bias, dtype, group_size, device, pairs=from_words(packed, K // 2),
                               int8_activations=int8_activations)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, layer)
        release(packed)
    expected = {k for k, v in model.state_dict().items() if v.is_meta}
    if missing := sorted(expected - state_dict.keys()):
        raise ValueError(f"the checkpoint has no {', '.join(missing[:8])}")
    if unexpected := sorted(state_dict.keys() - expected):
        raise ValueError(f"the checkpoint holds tensors the model does not: {', '.join(unexpected[:8])}")
    for key, tensor in state_dict.items():
        if tuple(tensor.shape) != tuple(model.state_dict()[key].shape):
            raise ValueError(f"{key}: file {tuple(tensor.shape)} vs config {tuple(model.state_dict()[key].shape)}")
    load_the_rest(model, state_dict, dtype, device)
    model.quantization_config = quantization_config(model)
    return model
