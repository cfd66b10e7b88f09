"""KV caches: the keys and values of the tokens seen so far, one entry per layer.

Generating token t+1 needs the attention keys and values of tokens 0..t in every layer. Recomputing them
at every step costs O(T^2); keeping them costs memory. Both caches here have one interface:

    cache = DynamicCache(n_layer)              # grows by concatenation (simple, reallocates each step)
    cache = StaticCache(n_layer, max_len)      # preallocated once, written in place
    k_all, v_all = cache.update(layer_idx, k, v)   # k, v: (B, nh, T_new, hd) -> (B, nh, T_kept + T_new, hd)
    cache.advance(T_new)                       # once per forward pass, after every layer's update
    cache.seen                                 # tokens seen so far: the new ones get positions seen, ...

`window_sizes` (one int or None per layer) bounds a layer's memory: it then keeps only the last `window`
keys and values, which is all a local-attention layer (GPT-Neo) can ever look at again. `update` still
returns every key the *current* queries may need; the trimming happens to what is kept for later.

The last part of the file, `FullBuffer`, is speed machinery for generate(compile=True) and is not needed
to understand the caches.
"""
import torch


def per_layer_windows(window_sizes, n_layer):
    """One window (an int, or None for unbounded) per layer."""
    windows = list(window_sizes) if window_sizes is not None else [None] * n_layer
    if len(windows) != n_layer:
        raise ValueError(f"window_sizes has {len(windows)} entries for {n_layer} layers")
    return windows


class DynamicCache:
    """k[layer], v[layer]: the kept keys and values (B, nh, T_kept, hd); seen: tokens seen so far."""

    def __init__(self, n_layer, window_sizes=None):
        self.windows = per_layer_windows(window_sizes, n_layer)
        self.k = [None] * n_layer
        self.v = [None] * n_layer
        self.seen = 0

    def update(self, layer_idx, k, v):
        if self.k[layer_idx] is not None:
            k = torch.cat([self.k[layer_idx], k], dim=2)  # (B, nh, T_kept + T_new, hd)
            v = torch.cat([self.v[layer_idx], v], dim=2)
        window = self.windows[layer_idx]
        self.k[layer_idx] = k if window is None else k[:, :, -window:]
        self.v[layer_idx] = v if window is None else v[:, :, -window:]
        return k, v

    def advance(self, n):
        self.seen += n


class StaticCache:
    """Buffers of `max_len` positions (or `window` for a windowed layer), allocated on the first `update`,
    when the batch size, heads, dtype and device are known; written in place, never reallocated.

    k[layer], v[layer]: the buffers (B, nh, capacity, hd); length[layer]: how many of their slots hold keys;
    seen: tokens seen so far. `update` writes the new keys after the kept ones and returns the filled part.
    """

    def __init__(self, n_layer, max_len, window_sizes=None):
        self.windows = per_layer_windows(window_sizes, n_layer)
        self.max_len = max_len
        self.k = [None] * n_layer
        self.v = [None] * n_layer
        self.length = [0] * n_layer
        self.seen = 0

    def update(self, layer_idx, k, v):
        B, nh, T, hd = k.shape
        if self.seen + T > self.max_len:
            raise ValueError(f"StaticCache is full: {self.seen} + {T} tokens > max_len {self.max_len}")
        window = self.windows[layer_idx]
        capacity = self.max_len if window is None else min(window, self.max_len)
        if self.k[layer_idx] is None:
            self.k[layer_idx] = k.new_zeros(B, nh, capacity, hd)
            self.v[layer_idx] = v.new_zeros(B, nh, capacity, hd)
        K, V, n = self.k[layer_idx], self.v[layer_idx], self.length[layer_idx]
        if n + T <= capacity:  # the common case: write in place, return a view of the filled part
            K[:, :, n:n + T] = k
            V[:, :, n:n + T] = v
            self.length[layer_idx] = n + T
            return K[:, :, :n + T], V[:, :, :n + T]
        # A full windowed layer: the queries need all of past + new, then keep only the last `capacity`.
        k_all, v_all = torch.cat([K[:, :, :n], k], dim=2), torch.cat([V[:, :, :n], v], dim=2)
        K.copy_(k_all[:, :, -capacity:])
        V.copy_(v_all[:, :, -capacity:])
        self.length[layer_idx] = capacity
        return k_all, v_all

    def advance(self, n):
        self.seen += n

# ----------------------------------------------------------------------------- speed: the compiled step


class FullBuffer:
    """A StaticCache's buffers seen whole, for a torch.compile'd one-token decode step (gpt-fast's KVCache).

    A compiled step is reused only while nothing it depends on changes shape or Python value. So each
    step writes the new token's keys and values at slot `pos`, a (1,) tensor advanced in place, and
    attention reads all max_len slots: one query at the last position, so causality hides nothing, and
    the order of the keys does not matter to attention. The caller's attention mask, max_len wide, hides
    the slots not written yet (0) exactly as it hides padding.

    k[layer], v[layer]: the StaticCache's buffers (B, nh, max_len, hd); pos: the slot of the next token;
    seen: the positions before the new token that the model checks the mask's width against, max_len - 1
    (every slot but the token's own), the same at every step.
    """

    def __init__(self, cache):
        if not isinstance(cache, StaticCache) or cache.k[0] is None:
            raise ValueError("FullBuffer needs a StaticCache that already holds the prompt")
        if any(window is not None and window < cache.max_len for window in cache.windows):
            # A local layer's window is counted back from the query, which attention places at the last
            # slot here; that is only right when the window covers the whole buffer.
            raise ValueError(f"decoding over the full buffer needs max_len ({cache.max_len}) <= every "
                             f"window_size ({min(w for w in cache.windows if w is not None)})")
        self.k, self.v, self.windows = cache.k, cache.v, cache.windows
        self.pos = torch.tensor([cache.seen], device=cache.k[0].device)
        self.seen = cache.max_len - 1
        for t in (*self.k, *self.v, self.pos):  # CUDA graphs (torch.compile "reduce-overhead") may then
            torch._dynamo.mark_static_address(t)  # write these in place instead of copying them every step

    def update(self, layer_idx, k, v):
        if k.size(2) != 1:
            raise ValueError(f"FullBuffer takes one token per step, got {k.size(2)}")
        self.k[layer_idx].index_copy_(2, self.pos, k)
        self.v[layer_idx].index_copy_(2, self.pos, v)
        return self.k[layer_idx], self.v[layer_idx]  # (B, nh, max_len, hd)

    def advance(self, n):
        self.pos += n  # in place: the compiled step sees the same tensor, never a new number
