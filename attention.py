"""Scaled dot-product attention: the specification first, then one entry point with three backends.

    attention(q, k, v, backend="naive" | "sdpa" | "flash", ...)

Notation: B batch, nh heads, Tq queries, Tk keys, hd head size.

Every query position gets a weighted average of the value vectors; the weights say how well its query
matches each key:

    scores = q @ k^T * scale                 (B, nh, Tq, Tk)   scale = 1/sqrt(hd) by default
    scores[i, j] = -large  where query i may not see key j      (the future, padding, outside a window)
    probs  = softmax(scores, over the keys)
    out    = probs @ v                       (B, nh, Tq, hd)

`naive_attention` and `build_mask` below are exactly that, and are what to read. The backends:
- `naive` runs them. It can return the probabilities (for inspection and teaching).
- `sdpa` hands the same computation to `torch.nn.functional.scaled_dot_product_attention`, which picks a
  fused kernel (flash / memory-efficient / math) for the device and dtype.
- `flash` calls the `flash_attn` package (CUDA, fp16/bf16 only). When it is missing or the inputs are not
  supported it raises; it never falls back silently to another backend.

Queries are the *last* Tq positions of the Tk keys ("bottom-right" alignment): query i sits at key
position Tk - Tq + i. That is how a KV cache works (the keys are the past plus the new tokens) and it is
the convention of flash_attn >= 2.1.
"""
import math

import torch
import torch.nn.functional as F

BACKENDS = ("naive", "sdpa", "flash")

# ----------------------------------------------------------------------------- the specification


def build_mask(Tq, Tk, causal=True, padding_mask=None, window=None, device=None):
    """Who may attend to whom: (B or 1, 1, Tq, Tk) booleans, True = allowed; None = all allowed.

    causal:       a query sees keys at its own position and before.
    padding_mask: (B, Tk), True for real tokens: nobody attends to padding.
    window:       a query sees only the last `window` positions, itself included (GPT-Neo local layers).
    """
    causal = causal and Tq > 1  # one query is the last position (bottom-right): it sees every key anyway
    if not causal and padding_mask is None and window is None:
        return None
    q_pos = torch.arange(Tk - Tq, Tk, device=device)[:, None]  # (Tq, 1) query positions, bottom-right
    k_pos = torch.arange(Tk, device=device)[None, :]  # (1, Tk)
    mask = torch.ones(Tq, Tk, dtype=torch.bool, device=device)
    if causal:
        mask = mask & (k_pos <= q_pos)
    if window is not None:
        mask = mask & (k_pos > q_pos - window)  # itself and the window - 1 before it
    mask = mask[None, None]  # (1, 1, Tq, Tk)
    if padding_mask is not None:
        mask = mask & padding_mask[:, None, None, :]  # (B, 1, Tq, Tk)
    return mask


def naive_attention(q, k, v, mask=None, scale=None, dropout_p=0.0):
    """softmax(q @ k^T * scale, masked) @ v: q (B, nh, Tq, hd), k and v (B, nh, Tk, hd), mask from
    `build_mask`. Returns the output (B, nh, Tq, hd) and the probabilities (B, nh, Tq, Tk). In training,
    dropout_p zeroes that fraction of the probabilities (the rest scaled by 1 / (1 - p)), as the reference does."""
    scale = 1.0 / math.sqrt(q.size(-1)) if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale  # (B, nh, Tq, Tk)
    if mask is not None:
        # The most negative finite number, not -inf: a row with no visible key (a padding query) then
        # gets a uniform softmax instead of NaN, and NaN would leak into real rows through `probs @ v`.
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    probs = F.softmax(scores, dim=-1).to(v.dtype)
    if dropout_p > 0:  # attention dropout: a query forgets some of the keys it chose, for this step only
        probs = F.dropout(probs, p=dropout_p)
    return probs @ v, probs  # (B, nh, Tq, hd)

# ----------------------------------------------------------------------------- the entry point


def attention(q, k, v, *, backend="sdpa", causal=True, padding_mask=None, scale=None, window=None,
              dropout_p=0.0, return_probs=False):
    """q: (B, nh, Tq, hd); k, v: (B, nh, Tk, hd). Returns (B, nh, Tq, hd), and the probabilities
    (B, nh, Tq, Tk) too when `return_probs` (naive only).

    causal, window: as in `build_mask`.
    padding_mask: (B, Tk) or wider, 1/True for real tokens, 0/False for padding; only its last Tk columns
                  are read (a windowed cache may keep fewer keys than the mask has columns).
    scale:        multiplies the scores; default 1/sqrt(hd). GPT-Neo passes 1.0 (it never scales).
    dropout_p:    in training, the fraction of the probabilities dropped; the models pass 0 in eval() mode.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if q.dim() != 4 or k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"expected q (B, nh, Tq, hd) and k, v (B, nh, Tk, hd); got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    if return_probs and backend != "naive":
        raise ValueError("return_probs needs backend='naive' (the fused kernels never form the probabilities)")
    scale = 1.0 / math.sqrt(q.size(-1)) if scale is None else scale
    if padding_mask is not None:
        padding_mask = padding_mask[:, -k.size(2):].bool()  # (B, Tk)
    if backend == "flash":
        return _flash(q, k, v, causal, padding_mask, scale, window, dropout_p)
    if backend == "sdpa" and causal and padding_mask is None and window is None and q.size(2) == k.size(2):
        # The plain causal triangle (a prompt without padding): SDPA's own is_causal skips the masked half
        # of the work and needs no mask tensor. Same result as the general path below.
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, dropout_p=dropout_p)
    mask = build_mask(q.size(2), k.size(2), causal, padding_mask, window, q.device)
    if backend == "naive":
        out, probs = naive_attention(q, k, v, mask, scale, dropout_p)
        return (out, probs) if return_probs else out
    return _sdpa(q, k, v, mask, scale, dropout_p)

# ----------------------------------------------------------------------------- checking a model's inputs


def check_shapes(input_ids, attention_mask, past, context):
    """What forward checks on every call: dtypes and shapes only. Reading a tensor's values here would cost
    a device-to-host sync per forward (per training micro-step on a GPU): check_input_values does that, once,
    where user input enters (generate, the CLI)."""
    B, T = input_ids.shape
    if input_ids.is_floating_point() or input_ids.dtype == torch.bool:
        raise ValueError(f"input_ids must be integer token ids, got {input_ids.dtype}")
    if past + T > context:
        raise ValueError(f"sequence of {past + T} tokens is longer than the context of {context} tokens")
    if attention_mask is not None and attention_mask.shape != (B, past + T):
        raise ValueError(f"attention_mask must be (B, past + T) = ({B}, {past + T}), got "
                         f"{tuple(attention_mask.shape)}")

# ----------------------------------------------------------------------------- the fused backends


def _sdpa(q, k, v, mask, scale, dropout_p=0.0):
    if mask is not None:
        # SDPA gives NaN for a query that sees no key at all; let such (padding) rows see every key, as
        # the finfo.min fill does in `naive_attention`. Their outputs are never read.
        mask = mask | ~mask.any(dim=-1, keepdim=True)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, dropout_p=dropout_p)


def _flash(q, k, v, causal, padding_mask, scale, window, dropout_p=0.0):
    try:
        from flash_attn import flash_attn_func
    except ImportError as e:
        raise RuntimeError("attention backend 'flash' needs the flash_attn package (pip install flash-attn, "
                           "CUDA only); use backend 'sdpa' otherwise") from e
    if not q.is_cuda or q.dtype not in (torch.float16, torch.bfloat16):
        raise RuntimeError(f"attention backend 'flash' needs CUDA tensors in float16 or bfloat16; got "
                           f"{q.device.type} {q.dtype}. Use --dtype bfloat16 --device cuda, or backend 'sdpa'")
    if padding_mask is not None and not bool(padding_mask.all()):
        raise RuntimeError("attention backend 'flash' does not take a padding mask here; use 'sdpa' for "
                           "padded batches")
    # flash_attn wants (B, T, nh, hd); its window is (left, right) and excludes the query itself.
    window_size = (window - 1, 0) if window is not None else (-1, -1)
    out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), softmax_scale=scale,
                          causal=causal, window_size=window_size, dropout_p=dropout_p)
    return out.transpose(1, 2)  # (B, nh, Tq, hd)
