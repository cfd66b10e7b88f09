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
weights (32, 64 or 128), each with its own scale s and offset (zero point) z: q = round((w - min) / s) in
0..15, with s = (max - min) / 15 and w ≈ (q - 8) * s + z where z = min + 8 s (the layout PyTorch's int4
kernels read). The error is again at most s / 2, and s is small because a group spans a narrow range. The
group size trades accuracy (smaller groups, smaller steps) against the bytes of the scales (2 x 16 bits per
group: 1 bit per weight at group 32, 0.25 at 128). GROUP_SIZE below was chosen by measuring perplexity
(bench/quantize.py; README, "Quantization").

Why the activations stay in bf16 (or fp32). Only the weights are stored in integers; inputs and outputs of a
layer keep the model's dtype. Activations change with every token and have outliers (a few features far
larger than the rest), so giving them one scale would be much lossier, and they are small at decode time
anyway: the bytes that matter are the weights'. The kernels convert the integers to the activations' dtype
on the fly. On a CPU, PyTorch's int8 and int4 kernels are fast with bf16 activations and slow with fp32
ones, so a quantized model runs in bf16 unless you ask for another dtype.

What is quantized. Every nn.Linear of the model, including the LM head (the largest matrix of a small model).
The token embedding stays in the model's dtype: a lookup reads one row per token, so its bytes are not what
limits speed. GPT-2 and GPT-Neo tie their LM head to the embedding; quantizing gives the LM head its own
quantized copy and leaves the embedding as it is (one extra int8/int4 matrix, against a full-precision one).

Loading. `load_quantized` converts each weight as it is read from the checkpoint, so the full-precision model
never exists in memory; only the quantized model plus one tensor at a time.

Kernels (a plain dequantize-then-matmul where none exists, e.g. int4 with fp16 activations):
    int8 on CPU     torch.ops.aten._weight_int8pack_mm
    int4 on CPU     torch.ops.aten._convert_weight_to_int4pack_for_cpu + _weight_int4pack_mm_for_cpu
    int4 on CUDA    torch.ops.aten._convert_weight_to_int4pack + _weight_int4pack_mm (bf16 activations)
    int8 on CUDA    F.linear with the int8 weight cast to x's dtype, then * scale (torch.compile fuses it)
"""
import ctypes
import mmap
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

SCHEMES = ("int8", "int4")
GROUP_SIZES = (32, 64, 128, 256)
GROUP_SIZE = 32  # int4: input weights per scale, chosen by perplexity (README, "Quantization")
ROWS = 1024  # rows quantized at a time, so the temporaries stay small even for a 50257-row LM head


def check_scheme(scheme):
    if scheme not in SCHEMES:
        raise ValueError(f"unknown quantization {scheme!r}; choose one of {', '.join(SCHEMES)}")

# ----------------------------------------------------------------------------- the two schemes


def quantize_int8(w):
    """w (N, K) -> q int8 (N, K), scales fp32 (N,): symmetric, one scale per output row; w ≈ q * scales[:, None]."""
    scales = w.float().abs().amax(dim=1).clamp(min=1e-12) / 127  # a row of zeros still gets a valid scale
    q = (w.float() / scales[:, None]).round_().clamp_(-127, 127).to(torch.int8)  # in place: one temporary
    return q, scales


def dequantize_int8(q, scales):
    return q.float() * scales[:, None].float()


def quantize_int4(w, group_size):
    """w (N, K) -> q uint8 (N, K) in 0..15, scales and zeros fp32 (N, K / group_size): each run of group_size
    weights of a row has its own scale and zero point; w ≈ (q - 8) * scale + zero."""
    N, K = w.shape
    groups = w.float().reshape(N, K // group_size, group_size)  # (N, K/G, G)
    lo, hi = groups.amin(dim=-1), groups.amax(dim=-1)  # (N, K/G)
    scales = (hi - lo).clamp(min=1e-12) / 15  # 16 levels span [lo, hi]
    zeros = lo + 8 * scales  # the value of q = 8, the middle level
    q = (groups - lo[..., None]).div_(scales[..., None]).round_().clamp_(0, 15).to(torch.uint8)
    return q.reshape(N, K), scales, zeros


def dequantize_int4(q, scales, zeros, group_size):
    N, K = q.shape
    groups = q.float().reshape(N, K // group_size, group_size) - 8
    return (groups * scales[..., None].float() + zeros[..., None].float()).reshape(N, K)


def by_rows(quantize_fn, w, *args):
    """quantize_fn on ROWS rows of w at a time (each row is quantized on its own): temporaries stay small."""
    parts = [quantize_fn(rows, *args) for rows in w.split(ROWS)]
    return [torch.cat(outputs) for outputs in zip(*parts)]

# ----------------------------------------------------------------------------- the quantized layers


class Int8Linear(nn.Module):
    """y = (x @ q.T) * scales + bias, with q int8 (out, in) and one scale per output feature."""

    def __init__(self, weight, bias, dtype):
        super().__init__()
        q, scales = by_rows(quantize_int8, weight)
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.register_buffer("weight", q.to(weight.device))  # (out, in) int8
        self.register_buffer("scales", scales.to(weight.device, dtype))  # (out,)
        self.register_buffer("bias", None if bias is None else bias.to(weight.device, dtype))

    def forward(self, x):
        x2 = x.reshape(-1, self.in_features).contiguous()  # (B*T, K): the kernels want it contiguous
        if x.is_cpu:  # PyTorch's int8 kernel (fast with bf16 activations)
            y = torch.ops.aten._weight_int8pack_mm(x2, self.weight, self.scales)
        else:  # the plain form: integers converted to x's dtype, matmul, then one scale per output column
            y = F.linear(x2, self.weight.to(x.dtype)) * self.scales
        return outputs(self, y, x.shape)


class Int4Linear(nn.Module):
    """y = x @ W.T + bias, W stored as 4-bit integers with a scale and a zero point per group of inputs.

    Where PyTorch has an int4 kernel for the device and dtype, q is packed into its layout (two weights per
    byte, tiled) and the kernel dequantizes on the fly; otherwise q stays one uint8 per weight and the layer
    dequantizes then multiplies (the plain path). The CPU packer wants out_features divisible by 16: GPT-2's
    50257-row LM head is padded with zero rows, whose outputs are cut off."""

    def __init__(self, weight, bias, dtype, group_size=GROUP_SIZE):
        super().__init__()
        device = weight.device
        self.in_features, self.out_features, self.group_size = weight.shape[1], weight.shape[0], group_size
        self.kernel = int4_kernel(device, dtype)
        padded = -self.out_features % 16

        def quantize_block(rows):  # ROWS rows at a time, so no temporary is as large as the weight
            q, scales, zeros = quantize_int4(F.pad(rows, (0, 0, 0, -len(rows) % 16)), group_size)
            if self.kernel == "cpu":  # the CPU layout packs each block of 16 rows on its own: (n, K/2) uint8
                q = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.int(), 1)
            return q, scales, zeros
        packed, scales, zeros = by_rows(quantize_block, weight)
        if self.kernel == "cuda":  # two weights per byte (high nibble first), then the kernel's tiling
            packed = torch.ops.aten._convert_weight_to_int4pack((packed[:, ::2] << 4 | packed[:, 1::2]), 8)
        self.register_buffer("weight", packed.to(device))
        # The kernels' layout for the groups' parameters: (K/G, N, 2), [..., 0] scale, [..., 1] zero point.
        self.register_buffer("scales_and_zeros", torch.stack([scales, zeros], dim=-1).transpose(0, 1)
                             .contiguous().to(device, dtype))
        self.register_buffer("bias", None if bias is None else F.pad(bias, (0, padded)).to(device, dtype))

    def forward(self, x):
        x2 = x.reshape(-1, self.in_features).contiguous()  # (B*T, K): the kernels want it contiguous
        if self.kernel == "cpu":
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, self.weight, self.group_size, self.scales_and_zeros)
        elif self.kernel == "cuda":
            y = torch.ops.aten._weight_int4pack_mm(x2, self.weight, self.group_size, self.scales_and_zeros)
        else:
            sz = self.scales_and_zeros.transpose(0, 1)  # (N, K/G, 2)
            w = dequantize_int4(self.weight, sz[..., 0], sz[..., 1], self.group_size)  # (N, K) fp32
            y = x2 @ w.to(x.dtype).T
        return outputs(self, y, x.shape)


def outputs(layer, y, shape):
    """y (B*T, rows) + bias -> (B, T, out_features): rows past out_features (an int4 layer's padding, or rows
    cut off with `layer.out_features = n` after loading) are dropped."""
    y = y if layer.bias is None else y + layer.bias
    return y[:, :layer.out_features].reshape(*shape[:-1], layer.out_features)


def int4_kernel(device, dtype):
    """Which int4 kernel PyTorch has for weights on `device` and activations of `dtype` (None: plain path)."""
    if device.type == "cpu" and dtype in (torch.bfloat16, torch.float32):
        return "cpu"
    if device.type == "cuda" and dtype == torch.bfloat16:
        return "cuda"
    return None


def quantized_linear(weight, bias, scheme, dtype, group_size=GROUP_SIZE):
    """An Int8Linear or Int4Linear holding weight (out, in). int4 needs in_features divisible by group_size;
    a layer whose inputs are not a whole number of groups stays int8."""
    check_scheme(scheme)
    if group_size not in GROUP_SIZES:
        raise ValueError(f"group_size must be one of {GROUP_SIZES} (what PyTorch's int4 kernels take), "
                         f"got {group_size}")
    if scheme == "int4" and weight.shape[1] % group_size == 0:
        return Int4Linear(weight, bias, dtype, group_size)
    return Int8Linear(weight, bias, dtype)

# ----------------------------------------------------------------------------- quantizing while loading


def load_quantized(model, state_dict, scheme, dtype, device="cpu", group_size=GROUP_SIZE, check=None):
    """Give `model` (built on the meta device, with `state_dict` already checked against it) the checkpoint's
    tensors, every nn.Linear replaced by its quantized form. The state dict is consumed one tensor at a time:
    a weight is read, quantized and dropped before the next is read, so memory holds the quantized model plus
    one full-precision tensor. A linear layer whose weight is tied to an embedding (GPT-2's lm_head and wte)
    gets its own quantized copy; the embedding stays in `dtype`. check({key: tensor}, dtype), if given, sees
    each tensor before it is converted (the model files pass check_finite: NaN or inf is refused)."""
    check_scheme(scheme)
    if not all(isinstance(t, torch.Tensor) for t in state_dict.values()):  # tp.py's lazily read tensors
        raise ValueError("quantize= and tensor parallel (torchrun, tp.py) do not combine yet")
    device = torch.device(device)
    owner = {}  # parameter -> the first name it has in the state dict (a tied lm_head reads wte's tensor)
    for name, p in model.named_parameters(remove_duplicate=False):
        if name in state_dict:
            owner.setdefault(p, name)
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    for name, linear in linears:
        key = owner[linear.weight]
        tied = key != f"{name}.weight"
        weight = state_dict[key] if tied else state_dict.pop(key)
        bias = state_dict.pop(f"{name}.bias", None)
        if check is not None:
            check({key: weight} | ({} if bias is None else {f"{name}.bias": bias}), dtype)
        layer = quantized_linear(weight.to(device), bias, scheme, dtype, group_size)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, layer)
        if not tied:
            release(weight)
        del weight
    for key in list(state_dict):  # embeddings, layer norms: in dtype, one at a time
        tensor = state_dict.pop(key)
        converted = tensor.to(device, dtype)
        if check is not None:
            check({key: converted}, dtype)
        model.load_state_dict({key: converted}, strict=False, assign=True)
        if converted.untyped_storage().data_ptr() != tensor.untyped_storage().data_ptr():
            release(tensor)
        del tensor, converted
    return model


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
