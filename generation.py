"""Generation, the same for gpt2.py, gpt_neo.py and gpt_neox.py: sampling, the decode loop, its compiled
fast path, and the sampling command line (`python gpt2.py ...` runs `main` here).

    ids = generate(model, input_ids, max_new_tokens=50, temperature=0.8, top_k=50)   # (B, T + new)

A causal language model predicts a distribution over the next token. Generation feeds the prompt through
the model once (filling the KV cache: kv_cache.py), draws a token from the last position's distribution
(`sample_next`: temperature, then top-k, then top-p, then a draw; greedy at temperature 0), feeds that
one token, and so on. The model files' models all take the same call,
`model(ids, attention_mask, kv_cache=..., logits_to_keep=1)`, so this file imports none of them (nanoGPT
keeps sample.py apart from model.py, gpt-fast generate.py, transformers GenerationMixin).
"""
import argparse
import importlib
import math
import os
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F

import checkpoint
from attention import BACKENDS
from kv_cache import FullBuffer, StaticCache

# ----------------------------------------------------------------------------- generation


def check_sampling(temperature, top_k, top_p):
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a finite number >= 0 (0 is greedy), got {temperature}")
    if top_k is not None and not (isinstance(top_k, int) and top_k >= 1):
        raise ValueError(f"top_k must be an integer >= 1, got {top_k}")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):  # NaN fails too
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


def top_k_filter(logits, k):
    """Keep the k highest logits per row (B, V); ties with the k-th are all kept, none dropped at random."""
    kth = torch.topk(logits, min(k, logits.size(-1)), dim=-1).values[:, -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits, p):
    """Nucleus: keep the most likely tokens until their probability reaches p (at least one token;
    ties with the last kept logit are all kept)."""
    sorted_logits = torch.sort(logits, dim=-1, descending=True).values  # (B, V)
    probs = F.softmax(sorted_logits.float(), dim=-1)
    n_keep = (probs.cumsum(dim=-1) - probs < p).sum(dim=-1, keepdim=True)  # mass before a token < p: keep
    threshold = sorted_logits.gather(1, n_keep - 1)  # (B, 1) the smallest kept logit
    return logits.masked_fill(logits < threshold, float("-inf"))


def sample_next(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    """(B, V) logits of the last position -> (B,) next token ids. Temperature 0 is greedy."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None and top_p < 1:
        logits = top_p_filter(logits, top_p)
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def last_logits(model, x, attention_mask=None, kv_cache=None):
    """The new tokens x (B, T) through the model -> the logits of their last position (B, V). The LM head,
    the largest matmul, runs on that one position only."""
    return model(x, attention_mask, kv_cache=kv_cache, logits_to_keep=1)[:, -1]  # (B, V)


def check_input_values(input_ids, attention_mask, vocab_size):
    """Ids in [0, vocab_size) and a mask of 0s and 1s. Call it on input you did not make yourself: out of
    range, an id would index past the embedding table (an IndexError on the CPU, a device assert on CUDA)."""
    if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= vocab_size):
        raise ValueError(f"input_ids must be in [0, vocab_size={vocab_size}), got ids from "
                         f"{input_ids.min().item()} to {input_ids.max().item()}")
    if attention_mask is not None and ((attention_mask != 0) & (attention_mask != 1)).any():
        raise ValueError("attention_mask must hold only 0 (padding) and 1 (tokens)")


def check_generation(model, input_ids, max_new_tokens, attention_mask, vocab_size=None, eos_token_id=None,
                     kv_cache=None):
    """What generate needs beyond what the model checks: a prompt with room in the context, left padding,
    ids and a mask that are valid values (checked once here, not at every step), a vocab_size and end ids
    that are ids of the model, and a KV cache that is empty (one that holds an earlier call's keys would
    shift every position and attend to another text: a wrong answer without a word)."""
    if kv_cache is not None and kv_cache.seen:
        raise ValueError(f"kv_cache holds {kv_cache.seen} tokens of an earlier call: give each generate call "
                         "a new cache (model.make_cache()), or none")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (B, T), got shape {tuple(input_ids.shape)}")
    if input_ids.numel() == 0:
        raise ValueError(f"input_ids is empty, shape {tuple(input_ids.shape)}: every row needs at least one "
                         "token (for a sample from nothing, start from the end-of-text id)")
    V = model.config.vocab_size
    if vocab_size is not None and not (type(vocab_size) is int and 1 <= vocab_size):
        raise ValueError(f"vocab_size must be an integer >= 1 (the tokenizer's number of ids), got "
                         f"{vocab_size!r}")
    eos = eos_token_id if isinstance(eos_token_id, (list, tuple)) else [eos_token_id]
    if eos_token_id is not None and not (eos and all(type(i) is int and 0 <= i < V for i in eos)):
        raise ValueError(f"eos_token_id must be an id in [0, {V}), a non-empty list of them, or None; got "
                         f"{eos_token_id!r}")
    T, context = input_ids.size(1), model.config.context_length
    if T >= context:
        raise ValueError(f"prompt is {T} tokens, longer than the context of {context} tokens "
                         "(it needs room for at least one new token)")
    if T + max_new_tokens > context:
        raise ValueError(f"prompt ({T} tokens) + max_new_tokens ({max_new_tokens}) exceeds the context of "
                         f"{context} tokens")
    if attention_mask is not None and attention_mask.shape == input_ids.shape and (
            attention_mask.diff(dim=1) < 0).any() | (attention_mask[:, -1] == 0).any():
        raise ValueError("attention_mask must be left-padded for generate: each row's padding (0) before "
                         "its tokens (1), and at least one token")
    check_input_values(input_ids, attention_mask, V)


@torch.no_grad()
def generate(model, input_ids, max_new_tokens, *, attention_mask=None, temperature=1.0, top_k=None,
             top_p=None, eos_token_id=None, vocab_size=None, generator=None, on_token=None, kv_cache=None,
             compile=False):
    """Extend input_ids (B, T) by up to max_new_tokens; returns (B, T + new).

    The prompt goes through the model once, filling the KV cache; then each step feeds only the token
    just chosen. Prompts in a batch are left-padded, with attention_mask 0 on the padding. A row that
    emitted eos_token_id (an id, or a list of ids) continues with it; generation stops when every row
    has. vocab_size < the model's: only ids below it are chosen (a checkpoint with more embedding rows
    than its tokenizer has tokens, like Pythia's 50304 for 50277). on_token(ids (B,)) is called after
    each step. compile=True runs the fast path below, `generate_compiled`: the same tokens, faster once
    compiled.

    The model samples in eval mode and is given its own mode back, also when on_token raises (eval_mode).
    Threads: generate calls on one model from several threads are safe, in train mode as in eval mode
    (each has its own KV cache, and they share the mode switch); a kv_cache or generator passed to two
    calls at once is refused (its state would interleave), and training the model while another thread
    samples from it is not safe (the step would run in eval mode). compile=True from several threads at
    once is not tested.
    """
    if compile:  # (it checks its arguments as below)
        return generate_compiled(model, input_ids, max_new_tokens, attention_mask=attention_mask,
                                 temperature=temperature, top_k=top_k, top_p=top_p, eos_token_id=eos_token_id,
                                 vocab_size=vocab_size, generator=generator, on_token=on_token,
                                 kv_cache=kv_cache)
    check_sampling(temperature, top_k, top_p)
    check_generation(model, input_ids, max_new_tokens, attention_mask, vocab_size, eos_token_id, kv_cache)
    kv_cache = model.make_cache() if kv_cache is None else kv_cache
    ids, done, eos = input_ids, None, eos_ids(eos_token_id, input_ids.device)
    with eval_mode(model), claimed(kv_cache, generator):  # sampling never drops out
        logits = last_logits(model, input_ids, attention_mask, kv_cache)  # the whole prompt at once: (B, V)
        for _ in range(max_new_tokens):
            next_id, done = choose_next(logits, done, temperature, top_k, top_p, eos, vocab_size, generator)
            ids = torch.cat([ids, next_id[:, None]], dim=1)
            if on_token is not None:
                on_token(next_id)
            if done.all() or ids.size(1) == input_ids.size(1) + max_new_tokens:
                break
            if attention_mask is not None:
                attention_mask = F.pad(attention_mask, (0, 1), value=1)  # the new token is a real one
            logits = last_logits(model, next_id[:, None], attention_mask, kv_cache)  # one token: (B, V)
    return ids


_MODE_LOCK = threading.Lock()  # (eval_mode's and claimed's)


_EVAL_USERS = {}  # id(model) -> [the generate calls using it now, the mode to give back]


@contextmanager
def eval_mode(model):
    """The model in eval mode for the block, then in its own mode again, even when the block raises.
    Calls on one model from several threads share the switch: the first sets eval mode, the last gives
    the mode back (each saving and restoring it alone would race: one thread would put the model back in
    train mode while another still samples, and the last would leave it in eval mode)."""
    with _MODE_LOCK:
        users = _EVAL_USERS.setdefault(id(model), [0, model.training])
        users[0] += 1
        model.eval()
    try:
        yield
    finally:
        with _MODE_LOCK:
            users[0] -= 1
            if users[0] == 0:
                del _EVAL_USERS[id(model)]
                model.train(users[1])


_IN_USE = set()  # id() of the kv_caches and generators that a generate call is using now (claimed's)


@contextmanager
def claimed(*objects):
    """Each of `objects` (None skipped) used by this call alone: one that another call is using now is a
    ValueError (two calls on one cache would write each other's keys; on one generator, draw in turn)."""
    mine = {id(o): type(o).__name__ for o in objects if o is not None}
    with _MODE_LOCK:
        taken = [name for i, name in mine.items() if i in _IN_USE]
        if taken:
            raise ValueError(f"this {taken[0]} is in use by another generate call: give each call its own")
        _IN_USE.update(mine)
    try:
        yield
    finally:
        with _MODE_LOCK:
            _IN_USE.difference_update(mine)


def choose_next(logits, done, temperature, top_k, top_p, eos, vocab_size, generator):
    """Sample each row's next token (B,) from its logits (B, V); `done` (B,) marks the rows that have
    emitted an end-of-sequence id (one of `eos`, a tensor of ids, or None): they keep emitting it."""
    next_id = sample_next(logits[:, :vocab_size], temperature, top_k, top_p, generator)
    if done is None:
        done = torch.zeros_like(next_id, dtype=torch.bool)
    if eos is not None:
        next_id = next_id.masked_fill(done, eos[0])
        done = done | torch.isin(next_id, eos)
    return next_id, done


def eos_ids(eos_token_id, device):
    """eos_token_id (an id, a list of ids, or None) as a tensor of ids, made once per generate call."""
    return None if eos_token_id is None else torch.tensor(eos_token_id, device=device).view(-1)


# ----------------------------------------------------------------------------- generation, fast path


@torch.no_grad()
def generate_compiled(model, input_ids, max_new_tokens, *, attention_mask=None, temperature=1.0, top_k=None,
                      top_p=None, eos_token_id=None, vocab_size=None, generator=None, on_token=None,
                      kv_cache=None):
    """generate(compile=True), in gpt-fast's way: the prompt runs eagerly into a StaticCache; from then on
    every step has the same shapes (one token against the cache's whole buffer: kv_cache.FullBuffer), so
    one torch.compile'd graph of `last_logits` serves every token. Same arguments and tokens as generate;
    the first call compiles, which takes a while. On an x86 CPU with cpu_kernels.py, one unpadded prompt
    decodes through the same buffer with the step run whole in C++ instead (step_in_cpp: nothing to compile)."""
    check_sampling(temperature, top_k, top_p)
    check_generation(model, input_ids, max_new_tokens, attention_mask, vocab_size, eos_token_id, kv_cache)
    B, T = input_ids.shape
    kv_cache = model.make_cache(static_len=T + max_new_tokens) if kv_cache is None else kv_cache
    if not isinstance(kv_cache, StaticCache) or kv_cache.max_len < T + max_new_tokens:
        raise ValueError("compile=True needs a StaticCache of at least prompt + max_new_tokens positions "
                         "(model.make_cache(static_len=...)), or none")
    # The mask spans the whole buffer: 1 on the real tokens so far, 0 on padding and on unwritten slots.
    mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
    mask = F.pad(mask, (0, kv_cache.max_len - T))  # (B, max_len)
    # On CUDA, "reduce-overhead" also records the step's kernels as a CUDA graph: one launch per token. On a
    # CPU, the step leaves out inductor's checks of every kernel's output shape (~2% of a small model's step).
    step = (torch.compile(last_logits, fullgraph=True, mode="reduce-overhead") if input_ids.is_cuda else
            torch.compile(last_logits, fullgraph=True, options={"size_asserts": False, "alignment_asserts": False}))
    ids, done, eos = input_ids, None, eos_ids(eos_token_id, input_ids.device)
    with eval_mode(model), claimed(kv_cache, generator):  # sampling never drops out
        logits = last_logits(model, input_ids, attention_mask, kv_cache)  # the prompt, eagerly: (B, V)
        buffer = FullBuffer(kv_cache)
        step = step_in_cpp(model, buffer, input_ids, mask[:, :T], logits, step)
        with written_out_attention(model, input_ids.device):
            for i in range(max_new_tokens):
                next_id, done = choose_next(logits, done, temperature, top_k, top_p, eos, vocab_size, generator)
                ids = torch.cat([ids, next_id[:, None]], dim=1)
                if on_token is not None:
                    on_token(next_id)
                if done.all() or i == max_new_tokens - 1:
                    break
                mask[:, T + i] = 1  # the slot next_id is written to
                logits = step(model, next_id[:, None], mask, buffer)  # (B, V)
    return ids


def step_in_cpp(model, buffer, prompt, prompt_mask, prompt_logits, compiled):
    """On a CPU with cpu_kernels.py, for one unpadded prompt: the one-token step run whole in C++
    (cpu_kernels.decode_step: the same arithmetic as the model's forward, ~1 ms a token less than the
    compiled graph's ~100 PyTorch calls), called as the compiled step is. Elsewhere, `compiled`.

    It is checked once, on the prompt's last token, against the logits the model's own forward gave there:
    a model whose code was changed since gives others, and the compiled step (which traces the code as it
    is) runs instead, with a warning."""
    kernels = checkpoint.cpu_kernels_on(prompt.device)
    run = kernels.decode_step(model, buffer) if kernels and len(prompt) == 1 and prompt_mask.all() else None
    if run is None:
        return compiled
    T = prompt.size(1)
    last = [(k[:, :, T - 1].clone(), v[:, :, T - 1].clone()) for k, v in zip(buffer.k, buffer.v)]
    logits = run(int(prompt[0, -1]), T - 1)  # (it writes that token's keys and values again)
    # int8 activations: a value one rounding apart may land on the next level, ~1% of the logits' range
    quantized = any(hasattr(m, "kernel") for m in model.modules())
    tolerance = (0.05 if quantized else 1e-4) * float(prompt_logits.abs().max())
    if not torch.allclose(logits, prompt_logits, rtol=0, atol=tolerance):
        warnings.warn("the C++ decode step (cpu_kernels.py) disagrees with the model's forward, whose code "
                      "may have changed: the compiled step runs instead")
        for (k, v), (k_last, v_last) in zip(zip(buffer.k, buffer.v), last):
            k[:, :, T - 1], v[:, :, T - 1] = k_last, v_last  # the model's own keys and values back
        return compiled

    slot = [T]  # the next token's (as buffer.pos, which this step leaves alone: reading and adding to a
    # tensor cost ~17 us a token here, 1% of an int4 GPT-2's step)

    def step(model, ids, mask, buffer):
        slot[0] += 1
        return run(int(ids), slot[0] - 1)
    return step


@contextmanager
def written_out_attention(model, device):
    """On a CPU the compiled one-token step is ~10% faster (a quantized GPT-2's) with attention written out
    (the "naive" backend, which inductor fuses into a few loops) than with PyTorch's fused kernel, which
    costs ~30 us a call at one query. Same math; the model's backend is restored after."""
    layers = [m for m in model.modules() if getattr(m, "backend", None) == "sdpa"] if device.type == "cpu" else []
    for m in layers:
        m.backend = "naive"
    try:
        yield
    finally:
        for m in layers:
            m.backend = "sdpa"


# ----------------------------------------------------------------------------- command line


def parse_args(arch, argv=None):
    """The flags of `python gpt2.py` (gpt_neo.py, gpt_neox.py): `arch` is the model file."""
    p = argparse.ArgumentParser(prog=f"{arch.__name__}.py" if arch.__name__ != "__main__" else None,
                                description=arch.__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.error = lambda message: sys.exit(f"error: {message}")  # one line, as every other bad input
    p.add_argument("--model", default=arch.DEFAULT_MODEL, help="a short name, a Hub id or a local directory")
    p.add_argument("--revision", default=None, help="a Hub branch, tag or commit")
    p.add_argument("--prompt", default="Hello, I'm a language model,", help="the text to continue")
    p.add_argument("--max-new-tokens", type=int, default=50, help="tokens to generate per sample")
    p.add_argument("--num-samples", type=int, default=1, help="how many continuations to print")
    p.add_argument("--temperature", type=float, default=1.0, help="0 is greedy")
    p.add_argument("--top-k", type=int, default=50, help="sample among the k most likely tokens")
    p.add_argument("--top-p", type=float, default=None, help="sample among the most likely tokens up to "
                   "this probability mass (nucleus)")
    p.add_argument("--seed", type=int, default=1337, help="the sampling generator's seed")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps, ...")
    p.add_argument("--dtype", default=None, choices=checkpoint.DTYPES,
                   help="the weights' and activations' dtype (float32; with --quantize: float32 around "
                   "int8-activation kernels where the CPU has them, else bfloat16)")
    p.add_argument("--quantize", default=None, help="int8 or int4: weight-only quantization (quantize.py)")
    p.add_argument("--attn", default="sdpa", choices=BACKENDS, help="the attention backend")
    p.add_argument("--compile", action="store_true",
                   help="the fast decode path: a static cache and the one-token step torch.compile'd (compiling "
                   "takes a while, once per run), or on an x86 CPU with cpu_kernels.py run whole in C++")
    p.add_argument("--threads", type=int, default=None, help="CPU threads; unset: 1 for a small model, else "
                   "the cores that are free when it starts")
    p.add_argument("--save", metavar="DIR", help="load (and --quantize) the model, save it into this new "
                   "directory with its tokenizer, and stop: `--model DIR` then loads it as it is")
    p.add_argument("--show", metavar="PNG", help="draw the prompt's attention maps (every layer and head) "
                   "into this file instead of sampling (visualize.py; needs matplotlib)")
    p.add_argument("--show-lens", metavar="PNG", help="draw the prompt's logit lens (the top next token "
                   "after each layer) into this file instead of sampling")
    return p.parse_args(argv)


def encode_prompt(tokenizer, text, context, max_new_tokens):
    """The prompt's ids, with room for max_new_tokens in the context. A text that cannot fit is refused
    before it is tokenized, so a huge one costs nothing: no token is longer than the vocabulary's longest,
    in bytes, so a text of more than `context` times that many bytes has more than `context` tokens."""
    longest = max(map(len, tokenizer.id_to_bytes.values()))
    if len(text.encode()) > context * longest:
        raise ValueError(f"--prompt ({len(text.encode())} bytes) is longer than the context of {context} "
                         "tokens")
    ids = tokenizer.encode(text, allowed_special="all")
    if not ids:  # an empty prompt: a sample from nothing starts where a document does
        if tokenizer.eos_token_id is None:
            raise ValueError("--prompt is empty and the tokenizer has no <|endoftext|> token to start from")
        ids = [tokenizer.eos_token_id]
    if len(ids) >= context:
        raise ValueError(f"--prompt is {len(ids)} tokens, longer than the context of {context} tokens "
                         "(it needs room for at least one new token)")
    if len(ids) + max_new_tokens > context:
        raise ValueError(f"--prompt ({len(ids)} tokens) + --max-new-tokens ({max_new_tokens}) exceeds the "
                         f"context of {context} tokens")
    return ids


def speed_line(times, compiled):
    """The CLI's report from the start time and each token's arrival: "[n tokens in s: r tokens/s]". With
    --compile the first decode step (the second token) compiles where torch.compile runs, which takes seconds
    to minutes: it is reported apart and the rate counts the steps after it. (The step in C++ compiles
    nothing: that first step is then as fast as the others.)"""
    n, seconds = len(times) - 1, times[-1] - times[0]
    if compiled and n > 2:
        rate = (n - 2) / max(times[-1] - times[2], 1e-9)
        return (f"[{n} tokens in {seconds:.2f}s, of which {times[2] - times[1]:.2f}s the first decode step "
                f"(where torch.compile compiles): {rate:.1f} tokens/s after it]")
    return f"[{n} tokens in {seconds:.2f}s: {n / max(seconds, 1e-9):.1f} tokens/s]"


def dtype_note(args, model):
    """What the CLI chose that the user did not say: --quantize rounds the activations to int8 inside the
    layers (cpu_kernels.py, where the CPU has it) or runs in bfloat16, unless --dtype says otherwise; that
    changes the numbers as much as the integers do."""
    if args.quantize is None or args.dtype is not None:
        return ""
    kernels = {getattr(m, "kernel", None) for m in model.modules()}
    if checkpoint.optional("quantize").INT8_ACTIVATIONS in kernels:
        activations = "int8 activations in the layers (cpu_kernels.py), float32 between"
    else:
        activations = str(next(model.parameters()).dtype).removeprefix("torch.") + " activations"
    return f" ({args.quantize} weights, {activations}: --quantize's default; --dtype float32: weight-only)"


def choose_threads(requested, weight_bytes):
    """How many CPU threads to run on. A small model's matmuls are too small to split: one thread (two
    would only wait on each other). A larger one: the cores this process may use that are free now. Each of
    PyTorch's OpenMP threads spins at every barrier until the others arrive, so a thread on a core that
    another job holds makes the whole step wait for it (2-3x slower than one thread here, bench/threads.py;
    50x was seen on a busier machine)."""
    if requested is not None:
        if requested < 1:
            raise ValueError(f"--threads must be >= 1, got {requested}")
        return requested
    if os.environ.get("OMP_NUM_THREADS"):  # the user's own setting stands
        return torch.get_num_threads()
    if weight_bytes < SMALL_MODEL_BYTES:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores, cores - round(busy_cores())))


SMALL_MODEL_BYTES = 64 * 2**20  # below this, one thread (bench/threads.py)


def busy_cores(seconds=0.1):
    """How many cores other processes keep busy now: /proc/stat's busy time over `seconds`, while this
    process sleeps. 0 where /proc/stat is not to be had (not Linux)."""
    def ticks():
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        return sum(values), values[3] + values[4]  # all, and idle + iowait
    try:
        total, idle = ticks()
        time.sleep(seconds)
        total2, idle2 = ticks()
    except (OSError, ValueError, IndexError):
        return 0
    cores = os.cpu_count() or 1
    return cores * (1 - (idle2 - idle) / max(total2 - total, 1))


def load_tokenizer(Tokenizer, directory):
    """The checkpoint's tokenizer; a directory without one is named with the files to copy into it."""
    try:
        return Tokenizer.from_pretrained(directory)
    except FileNotFoundError as e:
        shipped = Path(__file__).resolve().parent / "models" / "gpt2-tokenizer"
        gpt2 = f"; {shipped} holds GPT-2's" if shipped.is_dir() else ""
        raise FileNotFoundError(f"{e}; copy the tokenizer files of the checkpoint this model came from "
                                f"(vocab.json and merges.txt, or tokenizer.json) into {directory}{gpt2}") from None


def fast_tokenizer():
    """bpe_fast.Tokenizer (bpe.py's, with its speed-ups: the same ids), or None where bpe_fast.py was not
    copied."""
    try:
        return importlib.import_module("bpe_fast").Tokenizer
    except ModuleNotFoundError as e:
        if e.name != "bpe_fast":
            raise
        return None


def main(arch, argv=None):
    """Sample from a checkpoint of the model file `arch` (gpt2, gpt_neo or gpt_neox), as its --help says."""
    args = parse_args(arch, argv)
    tp, midline = None, False
    try:
        tp = checkpoint.tensor_parallel()  # under torchrun: tp.py, the model split over the processes
        bpe = checkpoint.optional("bpe")  # the tokenizer, and bpe_fast.py's speed-ups where it is there too
        Tokenizer = fast_tokenizer() or bpe.Tokenizer
        if tp:
            flags = dict(vars(args))  # (before the device becomes this process's own)
            args.device = tp.init(args.device)  # join the other processes, one device each
            tp.agree(flags)  # the same flags everywhere, or they would wait on each other
            if args.save is not None:
                raise ValueError("--save writes from one process: run it without torchrun")
            if tp.rank() > 0:
                sys.stdout = open(os.devnull, "w")  # rank 0 prints; every process samples the same tokens
        check_sampling(args.temperature, args.top_k, args.top_p)
        if args.max_new_tokens < 1 or args.num_samples < 1:
            raise ValueError("--max-new-tokens and --num-samples must be >= 1")
        show = args.show is not None or args.show_lens is not None  # pictures of the prompt, no sampling
        if show:
            visualize = checkpoint.optional("visualize")
            if tp:
                raise ValueError("--show and --show-lens draw on one process: run them without torchrun")
            visualize.check_outputs(args.show, args.show_lens)  # before any work: file names, matplotlib
        if args.save is not None and Path(args.save).exists() and (not Path(args.save).is_dir() or
                                                                   any(Path(args.save).iterdir())):
            raise ValueError(f"--save {args.save}: it exists and is not an empty directory (nothing there is "
                             "overwritten); choose a new directory")
        directory = checkpoint.checkpoint_dir(args.model, args.revision, arch.HUB_MODELS, arch.OFFLINE_MODEL)
        config = arch.load_config(directory)  # read once: the prompt is checked against it before loading
        torch.set_num_threads(choose_threads(args.threads, checkpoint.weights_bytes(directory)))
        tokenizer = load_tokenizer(Tokenizer, directory)
        max_new_tokens = 0 if show else args.max_new_tokens
        prompt = encode_prompt(tokenizer, args.prompt, config.context_length, max_new_tokens)
        attn = "naive" if args.show else args.attn  # --show: the fused kernels never form the probabilities
        model = arch.from_pretrained(directory, device=args.device, dtype=args.dtype, attn=attn,
                                     quantize=args.quantize, config=config)
        if args.save is not None:
            arch.save_pretrained(model, args.save)
            print(f"saved {args.save}" + (f" ({args.quantize})" if args.quantize else ""), file=sys.stderr)
            return
        input_ids = torch.tensor([prompt], device=args.device)
        if show:
            check_input_values(input_ids, None, config.vocab_size)  # the tokenizer may know more ids
            # the backbone (its hidden states and attentions), then its final LayerNorm and LM head for the lens
            parts = arch.inspected_parts(model)
            title = f"{args.model}: {args.prompt!r}"
            written = visualize.show(*parts, tokenizer, input_ids, args.show, args.show_lens, title)
            print("wrote", *written, file=sys.stderr)
            return
        generator = torch.Generator(args.device).manual_seed(args.seed)
        for i in range(args.num_samples):
            stream, times = bpe.StreamDecoder(tokenizer), [time.perf_counter()]  # the start, then each token's

            def on_token(t):
                times.append(time.perf_counter())
                print(stream.push(int(t[0])), end="", flush=True)
            print(("-" * 40 + "\n") * (i > 0) + args.prompt, end="", flush=True)
            midline = True  # an error from here on starts on its own line
            generate(model, input_ids, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                     top_p=args.top_p, eos_token_id=model.config.eos_token_id,
                     vocab_size=tokenizer.vocab_size, generator=generator, compile=args.compile,
                     on_token=on_token)
            print(stream.flush(), flush=True)
            midline = False
            if not tp or tp.rank() == 0:
                print(speed_line(times, args.compile) + dtype_note(args, model), file=sys.stderr)
    except (ValueError, OSError, RuntimeError) as e:
        if midline:
            print(flush=True)
        sys.exit(f"error: {e}" if not tp or tp.rank() == 0 else 1)  # under torchrun: one line, not N
    except KeyboardInterrupt:  # Ctrl-C: stop quietly, with the shell's usual status for it
        print(flush=True)
        sys.exit(130)
    finally:
        if tp:
            tp.finish()


