"""KV caches: the keys and values of the tokens seen so far, one entry per layer.

Generating token t+1 needs the attention keys and values of tokens 0..t in every layer. Recomputing them
at every step costs O(T^2); keeping them costs memory. Both caches here have one interface:

    cache = DynamicCache(n_layer)              # grows by concatenation (simple, reallocates each step)
    cache = StaticCache(n_layer, max_len)      # preallocated once, written in place (gpt-fast style)
    k_all, v_all = cache.update(layer_idx, k, v)   # k, v: (B, nh, T_new, hd) -> (B, nh, T_kept, hd)
    cache.seen                                 # tokens seen so far (read by the model for positions)

`window_sizes` (one int or None per layer) bounds a layer's memory: it then keeps only the last `window`
keys and values, which is all a local-attention layer (GPT-Neo) can ever look at again. `update` still
returns every key the *current* queries may need; the trimming happens to what is kept for later.
The model calls `update` for every layer and then `advance(T_new)` once per forward pass.

For torch.compile, a StaticCache can also decode over its whole buffer (`start_full_buffer`, gpt-fast
style): every step then has the same shapes, so one compiled graph serves them all.
"""
import torch


def per_layer_windows(window_sizes, n_layer):
    """One window (an int, or None for unbounded) per layer."""
    windows = list(window_sizes) if window_sizes is not None else [None] * n_layer
    if len(windows) != n_layer:
        raise ValueError(f"window_sizes has {len(windows)} entries for {n_layer} layers")
    return windows


class DynamicCache:
    def __init__(self, n_layer, window_sizes=None):
        self.windows = per_layer_windows(window_sizes, n_layer)
        self.k = [None] * n_layer
        self.v = [None] * n_layer
        self.seen = 0

    def update(self, layer_idx, k, v):
        if self.k[layer_idx] is not None:
            k = torch.cat([self.k[layer_idx], k], dim=2)  # (B, nh, T_past + T_new, hd)
            v = torch.cat([self.v[layer_idx], v], dim=2)
        window = self.windows[layer_idx]
        self.k[layer_idx] = k if window is None else k[:, :, -window:]
        self.v[layer_idx] = v if window is None else v[:, :, -window:]
        return k, v

    def advance(self, n):
        self.seen += n


class StaticCache:
    """Buffers of `max_len` positions (or `window` for a windowed layer) allocated on the first `update`,
    when the batch size, heads, dtype and device are known. No reallocation while generating.

    `update` returns the part written so far, which grows by a token each step. After `start_full_buffer()`
    (once the prompt is in) it takes one token per step, writes it at slot `pos` (a tensor, advanced in
    place) and returns the whole buffers: no shape and no Python number changes from one step to the next,
    so a compiled step is reused as it is. Attention then takes all max_len slots for the past of the new
    token (one query at the last position: causality hides nothing, and the order of the keys does not
    matter to attention), so `seen`, the past length the model checks the mask against, reads max_len - 1;
    the caller's attention mask, max_len wide, hides the slots not written yet (0) as it hides padding.
    """

    def __init__(self, n_layer, max_len, window_sizes=None):
        self.windows = per_layer_windows(window_sizes, n_layer)
        self.max_len = max_len
        self.k = [None] * n_layer
        self.v = [None] * n_layer
        self.length = [0] * n_layer  # valid positions in each layer's buffer
        self.seen = 0
        self.pos = None  # full-buffer mode: (1,) tensor, the slot the next token is written to

    def start_full_buffer(self):
        if self.k[0] is None:
            raise ValueError("start_full_buffer needs the buffers: run the prompt through the model first")
        if any(window is not None and window < self.max_len for window in self.windows):
            # A local layer's window is counted back from the query, which attention places at the last
            # slot in this mode; that is only right when the window covers the whole buffer.
            raise ValueError(f"decoding over the full buffer needs max_len ({self.max_len}) <= every "
                             f"window_size ({min(w for w in self.windows if w is not None)})")
        self.pos = torch.tensor([self.seen], device=self.k[0].device)
        self.seen = self.max_len - 1
        for t in (*self.k, *self.v, self.pos):  # CUDA graphs (torch.compile "reduce-overhead") may then
            torch._dynamo.mark_static_address(t)  # write these in place instead of copying them every step

    def update(self, layer_idx, k, v):
        B, nh, T, hd = k.shape
        if self.pos is not None:  # full-buffer mode: write one token in place, return every slot
            if T != 1:
                raise ValueError(f"a full-buffer StaticCache takes one token per step, got {T}")
            self.k[layer_idx].index_copy_(2, self.pos, k)
            self.v[layer_idx].index_copy_(2, self.pos, v)
            return self.k[layer_idx], self.v[layer_idx]  # (B, nh, max_len, hd)
        if self.seen + T > self.max_len:
            raise ValueError(f"StaticCache is full: {self.seen} + {T} tokens > max_len {self.max_len}")
        window = self.windows[layer_idx]
        capacity = self.max_len if window is None else min(window, self.max_len)
        if self.k[layer_idx] is None:
            self.k[layer_idx] = k.new_zeros(B, nh, capacity, hd)
            self.v[layer_idx] = v.new_zeros(B, nh, capacity, hd)
        K, V, n = self.k[layer_idx], self.v[layer_idx], self.length[layer_idx]
        if n + T <= capacity:  # the common case: write in place, return a view of the valid part
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
        if self.pos is not None:
            self.pos += n  # in place: the compiled step sees the same tensor, never a new number
        else:
            self.seen += n
