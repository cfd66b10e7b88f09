"""GPT-2 in one file. The lesson first: the config, the model, its loss and a new model's initialisation;
after the line that says the lesson ends come reading and writing the Hub's files, generation and a CLI.

    python gpt2.py --model models/pydoc-gpt2 --prompt "The meaning of life is"   # works offline

GPT-2 (Radford et al. 2019) is a decoder-only transformer: token + learned position embeddings, n_layer
pre-LayerNorm blocks of causal self-attention and an MLP, a final LayerNorm, and an LM head that shares its
matrix with the token embedding:

    ids ─ wte + wpe ─┬─ [ x + attn(ln_1(x)) ; x + mlp(ln_2(x)) ] × n_layer ─ ln_f ─ lm_head ─ logits
                      positions 0..T-1

Notation: B batch, T tokens, C n_embd, nh n_head, hd head size (C / nh), V vocab_size.
Module names are the Hub's state-dict keys (transformer.h.0.attn.c_attn.weight ...): loading is a
load_state_dict after one visible key transform (`convert_hub_state_dict`).
"""
import argparse
import json
import math
import os
import pickle
import re
import shutil
import sys
import tempfile
import threading
import time
import typing
import zipfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from attention import BACKENDS, attention
from kv_cache import DynamicCache, FullBuffer, StaticCache


# ----------------------------------------------------------------------------- config


@dataclass
class GPT2Config:
    """config.json's fields that the architecture reads (the Hub's names); defaults are GPT-2 small."""
    vocab_size: int = 50257
    n_positions: int = 1024  # the context: how many tokens the model can see
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None  # MLP width; None means 4 * n_embd
    activation_function: str = "gelu_new"
    layer_norm_epsilon: float = 1e-5
    scale_attn_weights: bool = True
    scale_attn_by_inverse_layer_idx: bool = False
    reorder_and_upcast_attn: bool = False
    tie_word_embeddings: bool = True
    bos_token_id: int | None = 50256
    eos_token_id: int | list | None = 50256  # a list: any of them ends a row
    # Training only (no-ops in eval() mode): dropout rates, and the std of a new model's weights.
    embd_pdrop: float = 0.1  # on the embeddings
    attn_pdrop: float = 0.1  # on the attention probabilities
    resid_pdrop: float = 0.1  # on each sublayer's output, before it joins the residual stream
    initializer_range: float = 0.02

    MODEL_TYPE = "gpt2"  # config.json's model_type
    DROPOUT = ("embd_pdrop", "attn_pdrop", "resid_pdrop")  # the dropout rates' fields
    quantization_config = None  # config.json's, in a checkpoint saved quantized (quantize.py)

    @property
    def context_length(self):
        return self.n_positions

    @classmethod
    def from_dict(cls, d):  # config.json's object -> a checked config (read_config, after the lesson)
        return read_config(d)

    @classmethod
    def from_json(cls, path):
        return cls.from_dict(read_json(path))


# ----------------------------------------------------------------------------- model


class CausalSelfAttention(nn.Module):
    def __init__(self, config, layer_idx, backend="sdpa"):
        super().__init__()
        self.head_dim = config.n_embd // config.n_head
        self.layer_idx = layer_idx
        self.backend = backend
        # GPT-2 stores these as Conv1D (weight (in, out)); we use nn.Linear (out, in) and transpose on load.
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)  # q, k, v for all heads at once
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.scale = 1.0 / math.sqrt(self.head_dim) if config.scale_attn_weights else 1.0
        if config.scale_attn_by_inverse_layer_idx:  # an option of the Mistral/Stanford GPT-2 runs
            self.scale /= layer_idx + 1
        self.upcast = config.reorder_and_upcast_attn  # scores in fp32 even when the model runs in fp16
        self.dropout_p = config.attn_pdrop  # on the attention probabilities, in training only
        self.resid_dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x, attention_mask=None, kv_cache=None, attentions=None):
        B, T, C = x.shape
        # nh is read off the tensors (-1): all heads, or this process's share under tensor parallel (tp.py)
        q, k, v = self.c_attn(x).chunk(3, dim=2)  # 3 × (B, T, nh * hd)
        q = q.view(B, T, -1, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        k = k.view(B, T, -1, self.head_dim).transpose(1, 2)
        v = v.view(B, T, -1, self.head_dim).transpose(1, 2)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_idx, k, v)  # (B, nh, T_past + T, hd)
        if self.upcast:
            q, k, v = q.float(), k.float(), v.float()
        # Per head: softmax(q @ k^T * scale, causal mask) @ v. attention.py opens with that specification.
        y = attention(q, k, v, backend=self.backend, causal=True, padding_mask=attention_mask, scale=self.scale,
                      dropout_p=self.dropout_p if self.training else 0.0, return_probs=attentions is not None)
        if attentions is not None:  # output_attentions: keep this layer's probabilities too
            y, probs = y
            attentions.append(probs)
        y = y.to(x.dtype).transpose(1, 2).reshape(B, T, -1)  # (B, T, nh, hd) -> (B, T, nh hd): heads side by side
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        n_inner = config.n_inner or 4 * config.n_embd
        self.c_fc = nn.Linear(config.n_embd, n_inner)
        self.c_proj = nn.Linear(n_inner, config.n_embd)
        self.act = ACTIVATIONS[config.activation_function]  # gelu_new: the tanh approximation of GELU
        self.dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x):
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))  # (B, T, C) -> (B, T, n_inner) -> (B, T, C)


class Block(nn.Module):
    def __init__(self, config, layer_idx, backend="sdpa"):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = CausalSelfAttention(config, layer_idx, backend)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = MLP(config)

    def forward(self, x, attention_mask=None, kv_cache=None, attentions=None):
        # pre-LN: normalise, transform, add
        x = x + self.attn(self.ln_1(x), attention_mask, kv_cache, attentions)
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT2Model(nn.Module):
    """The backbone: ids -> final hidden states (B, T, C). The task heads in heads.py sit on top of it."""

    def __init__(self, config, backend="sdpa"):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)  # learned positions
        self.drop = nn.Dropout(config.embd_pdrop)
        self.h = nn.ModuleList(Block(config, i, backend) for i in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)

    def forward(self, input_ids, attention_mask=None, position_ids=None, kv_cache=None,
                output_attentions=False, output_hidden_states=False):
        """The final hidden states (B, T, C). With output_hidden_states or output_attentions (transformers'
        flags), (those, hidden_states, attentions): n_layer + 1 × (B, T, C), each block's input and then the
        output (after ln_f); n_layer × (B, nh, T, keys), keys = T plus any cached ones, on the attention
        backend "naive" only. What was not asked for is None. visualize.py draws them."""
        B, T = input_ids.shape
        past = kv_cache.seen if kv_cache is not None else 0
        check_shapes(input_ids, attention_mask, past, self.config.n_positions)  # (after the lesson)
        if position_ids is None:
            position_ids = positions_from_mask(attention_mask, past, T, input_ids.device)
        x = self.drop(self.wte(input_ids) + self.wpe(position_ids))  # (B, T, C)
        hidden_states = [] if output_hidden_states else None  # kept only when asked for: they cost memory
        attentions = [] if output_attentions else None  # each layer appends its probabilities
        for block in self.h:
            if output_hidden_states:
                hidden_states.append(x)
            x = block(x, attention_mask, kv_cache, attentions)
        if kv_cache is not None:
            kv_cache.advance(T)
        x = self.ln_f(x)
        if not (output_attentions or output_hidden_states):
            return x
        return x, (hidden_states + [x] if output_hidden_states else None), attentions


# Copied from gpt2.py
def positions_from_mask(attention_mask, past, T, device):
    """Position of each new token: its index among the real (non-padding) tokens of its row, so a
    left-padded prompt starts at position 0 like an unpadded one. (1 or B, T)"""
    if attention_mask is None:
        return torch.arange(past, past + T, device=device)[None]
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -T:]


class GPT2LMHeadModel(nn.Module):
    def __init__(self, config, backend="sdpa"):
        super().__init__()
        self.config = config
        self.transformer = GPT2Model(config, backend)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.tie_weights()

    def tie_weights(self):
        if self.config.tie_word_embeddings:  # the output scores are read off the embedding matrix
            self.lm_head.weight = self.transformer.wte.weight

    # Copied from gpt2.py
    def forward(self, input_ids, attention_mask=None, position_ids=None, kv_cache=None, labels=None):
        """Logits (B, T, V); with `labels`, (logits, loss)."""
        logits = self.lm_head(self.transformer(input_ids, attention_mask, position_ids, kv_cache))
        return logits if labels is None else (logits, lm_loss(logits, labels))

    def set_attention_backend(self, backend):
        if backend not in BACKENDS:
            raise ValueError(f"unknown attention backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        for block in self.transformer.h:
            block.attn.backend = backend

    def make_cache(self, static_len=None):
        """A growing KV cache, or a preallocated one of `static_len` positions."""
        if static_len is None:
            return DynamicCache(self.config.n_layer)
        return StaticCache(self.config.n_layer, static_len)


# Copied from gpt2.py
def lm_loss(logits, labels):
    """Next-token cross-entropy: position t predicts labels[t + 1]; labels of -100 are ignored."""
    targets = F.pad(labels[:, 1:], (0, 1), value=-100)  # (B, T): shift the labels, not the (larger) logits
    logits = logits.float()  # fp32 for a stable log-softmax (a no-op in fp32 training: no copy)
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)


# ----------------------------------------------------------------------------- a new model, for training


def init_weights(model):
    """The reference's initialisation of a model trained from scratch: Linear and Embedding weights
    N(0, initializer_range), biases 0, LayerNorms 1 and 0. Works on heads.py's models too.
    GPT-2 also draws the two projections that write into the residual stream (attn.c_proj, mlp.c_proj) with
    std / sqrt(2 * n_layer): x is the sum of 2 * n_layer such outputs, so its variance stays near 1."""
    std = model.config.initializer_range
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        if name.endswith(".c_proj"):  # GPT-2 (Radford et al. 2019, section 2.3)
            nn.init.normal_(module.weight, mean=0.0, std=std / math.sqrt(2 * model.config.n_layer))
    return model


# Copied from gpt2.py
def from_config(config, *, device="cpu", attn="sdpa"):
    """A new model of this config's shape, initialised as the reference does, in train() mode."""
    with torch.device(device):
        return init_weights(GPT2LMHeadModel(config, attn)).train()


# Tensor parallel (tp.py, under torchrun): how a block's layers split over the N processes. "colwise": the
# layer's outputs (heads, MLP columns) are divided among the processes; "rowwise": its inputs are, and an
# all-reduce sums the partial results. Every other tensor (embeddings, LayerNorms, LM head) is replicated.
TP_PLAN = {
    # c_attn's rows are [all q | all k | all v]: each process takes its heads' rows from each third (a plain
    # cut would hand one process all the q and some of the k: wrong logits, no error).
    "attn.c_attn": "colwise_qkv",
    "attn.c_proj": "rowwise",
    "mlp.c_fc": "colwise",
    "mlp.c_proj": "rowwise",
}


# ============================================================================= the lesson ends here
# What follows is the same in gpt2.py, gpt_neo.py and gpt_neox.py up to the Hub's names for things: reading
# config.json, the Hub's checkpoint files, generation and the command line. Each shared definition is marked
# "Copied from gpt2.py"; tests/test_shared_sections.py checks the copies, and `python
# tests/test_shared_sections.py --fix` rewrites them from gpt2.py with the renames on the next line.
# Renames: none (this is gpt2.py, the original)


# ----------------------------------------------------------------------------- config.json


# Newer config.json files may use the generic names; they mean the same fields.
ALIASES = {"hidden_size": "n_embd", "num_hidden_layers": "n_layer", "num_attention_heads": "n_head",
           "max_position_embeddings": "n_positions"}
# Options the Hub config can switch on that this file does not implement: refuse rather than ignore.
UNSUPPORTED = {"add_cross_attention": False}


def read_config(d):
    """config.json's object -> a GPT2Config: unknown keys ignored, every value checked."""
    check_model_type(d, GPT2Config.MODEL_TYPE)
    for key, default in UNSUPPORTED.items():
        if d.get(key, default) != default:
            raise ValueError(f"config.json sets {key}={d[key]!r}, which gpt2.py does not implement")
    d = {ALIASES.get(k, k): v for k, v in d.items()}
    config = GPT2Config(**{f.name: d[f.name] for f in fields(GPT2Config) if f.name in d})  # unknown: ignored
    config.quantization_config = d.get("quantization_config")  # (not a field: asdict leaves it out)
    check_field_types(config)
    if config.n_embd % config.n_head:
        raise ValueError(f"n_embd={config.n_embd} is not divisible by n_head={config.n_head}")
    if config.activation_function not in ACTIVATIONS:
        raise ValueError(f"activation_function {config.activation_function!r} is not one of "
                         f"{', '.join(ACTIVATIONS)}")
    return config


# Copied from gpt2.py
ACTIVATIONS = {
    # config.json's activation name -> the function, written out: every parameter-free one of transformers'
    # ACT2FN, which these three families accept by name (tests/test_hub_configs.py checks each against it).
    # GELU is x·Φ(x), Φ the standard normal CDF; the first eight names are GELU, exact or approximated.
    # Exact, in fp32 as torch's kernel computes it (in bf16 the rounded erfc argument is ~4% off at x = -3.5):
    "gelu": F.gelu,  # Pythia's and GPT-NeoX's: 0.5·x·erfc(-x / √2), torch's kernel (fp32 inside)
    "gelu_python": lambda x: 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0))),  # exact, in x's own dtype
    # Φ(x) ≈ (1 + tanh(√(2/π)·(x + 0.044715·x³))) / 2, the approximation GPT-2 and GPT-Neo were trained on:
    # (as 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x.pow(3.0)))): torch's one kernel
    # computes the same in one pass over the MLP's activations instead of eight)
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_accurate": lambda x: ACTIVATIONS["gelu_new"](x),  # other names for it
    "gelu_python_tanh": lambda x: ACTIVATIONS["gelu_new"](x),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),  # the same, by torch's name for it
    # The same approximation as Megatron factors it, √(2/π)·x·(1 + 0.044715·x²) with √(2/π) to 10 digits:
    # GPT-NeoX-20B's (it rounds apart from gelu_new by an ulp here and there).
    "gelu_fast": lambda x: 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x))),
    "gelu_10": lambda x: torch.clip(ACTIVATIONS["gelu"](x), -10, 10),  # exact, clipped to [-10, 10]
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),  # Φ(x) ≈ σ(1.702·x): cruder
    "silu": lambda x: x * torch.sigmoid(x),  # x·σ(x): GELU's shape with the logistic σ in place of Φ
    "swish": lambda x: x * torch.sigmoid(x),  # SiLU's other name
    "mish": lambda x: x * torch.tanh(F.softplus(x)),  # x·tanh(ln(1 + eˣ)): close to SiLU
    "relu": lambda x: torch.clamp(x, min=0),  # max(x, 0)
    "relu2": lambda x: torch.square(torch.clamp(x, min=0)),  # max(x, 0)²
    "relu6": lambda x: torch.clamp(x, 0, 6),  # max(x, 0), capped at 6
    "leaky_relu": lambda x: torch.where(x >= 0, x, 0.01 * x),  # x, or x / 100 below 0
    "hardswish": lambda x: x * torch.clamp(x + 3, 0, 6) / 6,  # SiLU's shape from straight pieces
    "sigmoid": lambda x: torch.sigmoid(x),  # σ(x) = 1 / (1 + e⁻ˣ)
    "tanh": lambda x: torch.tanh(x),
    "linear": lambda x: x,  # none
}


# Copied from gpt2.py
MODEL_FILES = {"gpt2": "gpt2.py", "gpt_neo": "gpt_neo.py", "gpt_neox": "gpt_neox.py"}  # model_type -> file


# Copied from gpt2.py
def check_model_type(d, model_type):
    """A config.json of another architecture is named as such, not reported as hundreds of missing keys."""
    if not isinstance(d, dict):
        raise ValueError(f"config.json must hold a JSON object, not a {type(d).__name__}")
    found = d.get("model_type", model_type)
    if found != model_type:
        use = f"use {MODEL_FILES[found]}" if found in MODEL_FILES else "none of this project's files reads it"
        raise ValueError(f"config.json is a {found!r} checkpoint, not {model_type!r}: {use}")


# Copied from gpt2.py
def check_field_types(config):
    """Each field holds its annotated type (a JSON integer may stand for a float); sizes are >= 1 and token
    ids >= 0. A config.json value of the wrong type is named, not met later as a strange error."""
    for f in fields(config):
        value = getattr(config, f.name)
        types = typing.get_args(f.type) or (f.type,)  # `int | None` -> (int, NoneType)
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if not ok and not (float in types and type(value) is int):
            names = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise ValueError(f"config.json: {f.name} must be {names}, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"config.json: {f.name} must be finite, got {value!r}")
        if f.name.endswith("token_id"):
            if value == [] or any(type(i) is not int or i < 0 for i in (value if isinstance(value, list) else
                                                                         [value or 0])):
                raise ValueError(f"config.json: {f.name} must be token ids >= 0 (an id, a non-empty list of "
                                 f"them, or null), got {value!r}")
        elif type(value) is int and int in types and value < 1:  # a size (a float field may be 0)
            raise ValueError(f"config.json: {f.name} must be >= 1, got {value}")


# ----------------------------------------------------------------------------- checking inputs


# Copied from gpt2.py
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


# Copied from gpt2.py
def check_input_values(input_ids, attention_mask, vocab_size):
    """Ids in [0, vocab_size) and a mask of 0s and 1s. Call it on input you did not make yourself: out of
    range, an id would index past the embedding table (an IndexError on the CPU, a device assert on CUDA)."""
    if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= vocab_size):
        raise ValueError(f"input_ids must be in [0, vocab_size={vocab_size}), got ids from "
                         f"{input_ids.min().item()} to {input_ids.max().item()}")
    if attention_mask is not None and ((attention_mask != 0) & (attention_mask != 1)).any():
        raise ValueError("attention_mask must hold only 0 (padding) and 1 (tokens)")


# ----------------------------------------------------------------------------- loading


HUB_MODELS = {
    "gpt2": "openai-community/gpt2",  # 124M
    "gpt2-medium": "openai-community/gpt2-medium",  # 355M
    "gpt2-large": "openai-community/gpt2-large",  # 774M
    "gpt2-xl": "openai-community/gpt2-xl",  # 1558M
    "distilgpt2": "distilbert/distilgpt2",  # 82M
}


# Copied from gpt2.py
WEIGHT_FILES = ["model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json"]


# Copied from gpt2.py
TOKENIZER_FILES = ["tokenizer.json", "vocab.json", "merges.txt"]


# Copied from gpt2.py
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


# Copied from gpt2.py
def checkpoint_dir(name_or_path, revision=None):
    """A local directory as it is, else a Hub repo id (or a short name from HUB_MODELS), downloaded."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if revision is not None:  # a directory is one revision already: refuse rather than ignore
            raise ValueError(f"revision {revision!r} names a Hub revision, but {name_or_path} is a local "
                             "directory; pass a Hub id to download that revision")
        if (path / COMMITTED).is_dir():  # a save was killed while moving its new files into place: they are
            finish_write(path)  # whole (write_files), so complete the move rather than read old and new mixed
        return path
    repo_id = HUB_MODELS.get(name_or_path, name_or_path)
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id) or name_or_path.startswith((".", "/", "~")):
        if "/" in name_or_path or name_or_path.startswith("."):
            raise FileNotFoundError(f"no such directory: {name_or_path}")
        raise ValueError(f"unknown model {name_or_path!r}: use one of {', '.join(HUB_MODELS)}, a Hub id "
                         f"such as {next(iter(HUB_MODELS.values()))}, or a local directory")
    return download(repo_id, revision)


# Copied from gpt2.py
def download(repo_id, revision=None):
    """Fetch only what we need (config, one weights format, tokenizer) with huggingface_hub; offline, use
    its cache. One quick request, no retries: without a network the answer comes at once."""
    from huggingface_hub import model_info, snapshot_download
    try:
        files = {f.rfilename for f in model_info(repo_id, revision=revision).siblings}
    except Exception as online_error:  # no network, unknown repo, ...: the local cache is the last chance
        try:
            return Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
        except Exception:
            reason = (str(online_error).strip().splitlines() or [type(online_error).__name__])[0]
            fetch = f"hf download {repo_id}" + (f" --revision {revision}" if revision else "")
            raise OSError(f"could not get {repo_id} from the Hugging Face Hub ({reason}) and it is not in "
                          f"the local cache; download it while online ({fetch}), or give a local directory "
                          "holding config.json and the weights instead; models/pydoc-gpt2, the GPT-2 shipped "
                          "here, is such a directory and works offline") from None
    weights = [f for f in WEIGHT_FILES if f in files][:1]
    if not weights:
        raise FileNotFoundError(f"{repo_id} has none of {', '.join(WEIGHT_FILES)}")
    shards = {"model.safetensors.index.json": ["model-*.safetensors"],
              "pytorch_model.bin.index.json": ["pytorch_model-*.bin"]}.get(weights[0], [])
    patterns = ["config.json", *weights, *shards, *(f for f in TOKENIZER_FILES if f in files)]
    return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))


# Copied from gpt2.py
def read_json(path):
    """A JSON file's content; a malformed file is named in the error."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:  # json.JSONDecodeError is a ValueError
        raise ValueError(f"{path} is not valid JSON ({e})") from None


# Copied from gpt2.py
def read_state_dict(directory, lazy=False):
    """Every tensor in the checkpoint, whichever of the Hub's layouts the directory holds. lazy: safetensors
    tensors are not read yet (tp.CheckpointTensor: the shape now, slices later)."""
    directory = Path(directory)
    for name in WEIGHT_FILES:
        if (directory / name).exists():
            break
    else:
        raise FileNotFoundError(f"no weights in {directory}: expected one of {', '.join(WEIGHT_FILES)}")
    shards = shard_names(directory / name) if name.endswith(".index.json") else [name]
    state_dict = {}
    for shard in shards:
        state_dict.update(read_weights_file(directory / shard, lazy))
    return state_dict


# Copied from gpt2.py
def shard_names(index_path):
    """The files a sharded checkpoint's index maps its tensors to: plain names of files beside it (a path
    such as ../x or /x would read outside the checkpoint, so it is refused)."""
    index = read_json(index_path)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
        raise ValueError(f"{index_path} has no \"weight_map\" of tensor names to shard files")
    names = sorted(set(weight_map.values()))
    for name in names:
        if Path(name).name != name or name in ("", ".", ".."):
            raise ValueError(f"{index_path} names the shard {name!r}: shards must be files in the "
                             "checkpoint's own directory")
    return names


# Copied from gpt2.py
def read_weights_file(path, lazy=False):
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    if not path.is_file():
        raise FileNotFoundError(f"missing checkpoint file {path}")
    try:
        if path.suffix == ".safetensors":
            state_dict = tensor_parallel().open_safetensors(path) if lazy else load_file(path)
        else:
            # .bin files are pickles: weights_only refuses anything but tensors, so no code runs on load.
            # Zip files (torch >= 1.6) are memory-mapped; the older format, which many old Hub repos
            # hold, cannot be, and is read whole.
            mmap = zipfile.is_zipfile(path)
            state_dict = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except (SafetensorError, pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as e:
        raise ValueError(f"cannot read {path}: corrupted or truncated weights file ({e})") from None
    kinds = (torch.Tensor, tensor_parallel().CheckpointTensor) if lazy else torch.Tensor
    if not isinstance(state_dict, dict) or not all(
            isinstance(k, str) and isinstance(v, kinds) for k, v in state_dict.items()):
        raise ValueError(f"{path} does not hold a dict of tensors")
    return state_dict


# GPT-2 was written in TensorFlow with Conv1D layers whose weight is (in, out): transposed w.r.t. nn.Linear.
TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def convert_hub_state_dict(state_dict, config):
    """Hub keys and layouts -> this file's module names (transformer.h.0.attn.c_attn.weight ...)."""
    out = {}
    for key, tensor in state_dict.items():
        if key.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # the causal mask as a buffer, in older files: we build masks on the fly
        if not key.startswith(("transformer.", "lm_head.")):
            key = "transformer." + key  # openai-community/gpt2 has no "transformer." prefix (and no lm_head)
        out[key] = tensor.t() if key.endswith(TRANSPOSED) else tensor
    if config.tie_word_embeddings:
        out.pop("lm_head.weight", None)  # the same matrix as wte, when a file holds both
    return out


# Copied from gpt2.py
def check_state_dict(model, state_dict):
    """Strict: every parameter present with its shape, nothing left over; name what is wrong."""
    expected = {k: v.shape for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
    missing = sorted(expected.keys() - state_dict.keys())
    unexpected = sorted(state_dict.keys() - expected.keys())
    wrong = [f"{k}: file {tuple(state_dict[k].shape)} vs config {tuple(expected[k])}"
             for k in sorted(expected.keys() & state_dict.keys()) if state_dict[k].shape != expected[k]]
    problems = [f"{what} ({len(keys)}): {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"
                for what, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                   ("wrong shapes", wrong)) if keys]
    if problems:
        raise ValueError("checkpoint does not match config.json: " + "; ".join(problems))


# Copied from gpt2.py
def check_finite(state_dict, dtype):
    """Weights holding NaN or inf would generate garbage without a word: refuse them. In float16 a value
    above 65504 becomes inf, which this catches too. One pass over each tensor and no temporary: the smallest
    and largest values are NaN when any value is, and ±inf when one is (aminmax: 5x faster than a sum in
    bf16)."""
    bad = [k for k, t in state_dict.items()
           if t.is_floating_point() and t.numel() and not torch.isfinite(torch.stack(torch.aminmax(t))).all()]
    if bad:
        more = " ..." if len(bad) > 8 else ""
        raise ValueError(f"weights hold NaN or inf in {dtype}: {', '.join(bad[:8])}{more}")


# Copied from gpt2.py
def torch_dtype(dtype):
    """A torch.dtype from itself or its name ("bfloat16"); None is float32."""
    dtype = DTYPES.get(dtype, dtype) if isinstance(dtype, str) else dtype or torch.float32
    if dtype not in DTYPES.values():
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return dtype


# Copied from gpt2.py
def check_device(device):
    """The device exists here: --device cuda on a machine without CUDA is an error that says so."""
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError, ValueError) as e:  # AssertionError: torch built without CUDA
        raise ValueError(f"device {str(device)!r} is not available here ({str(e).splitlines()[0]})") from None


# Copied from gpt2.py
def load_config(directory):
    """The checkpoint directory's config.json, read and checked."""
    if not (Path(directory) / "config.json").exists():
        raise FileNotFoundError(f"no config.json in {directory}")
    return GPT2Config.from_json(Path(directory) / "config.json")


# Copied from gpt2.py
def tensor_parallel():
    """tp.py under torchrun (WORLD_SIZE > 1, or a process group joined), else None: a model file copied
    without tp.py runs everything but tensor parallel."""
    under_torchrun = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if not (under_torchrun or (torch.distributed.is_available() and torch.distributed.is_initialized())):
        return None
    import tp
    return tp


# Copied from gpt2.py
def build_lm(config, state_dict, attn):
    """This file's language model on the meta device (shapes only: the real tensors come from the file, never
    a second copy), and the checkpoint's tensors under its module names."""
    with torch.device("meta"):
        model = GPT2LMHeadModel(config, attn)
    return model, convert_hub_state_dict(state_dict, config)


# Copied from gpt2.py
def from_pretrained(name_or_path, *, revision=None, device="cpu", dtype=None, attn="sdpa", quantize=None,
                    config=None, build=build_lm, split=True):
    """The model from a Hub name/id or a local directory with config.json and weights; `dtype` is a
    torch.dtype or its name ("bfloat16"), float32 by default. quantize="int8" | "int4" stores the weight
    matrices as integers (quantize.py), and then the default dtype is bfloat16; a checkpoint saved quantized
    (config.json's quantization_config) is read as it is. config: the directory's GPT2Config if the caller
    has read it already (the CLI has). build(config, state_dict, attn) -> (model on the meta device, its state
    dict) puts another model on the checkpoint (heads.py's task heads). Under torchrun each process loads
    its share of a tensor-parallel model (tp.py); split=False loads the whole model in every process (data
    parallel: train.py)."""
    if attn not in BACKENDS:
        raise ValueError(f"unknown attention backend {attn!r}; choose one of {', '.join(BACKENDS)}")
    if quantize is not None:
        from quantize import check_scheme  # weight-only int8/int4, in its own file
        check_scheme(quantize)
    directory = checkpoint_dir(name_or_path, revision)
    config = config or load_config(directory)
    saved = config.quantization_config  # a checkpoint saved quantized: integers and scales (quantize.py)
    dtype = torch_dtype(dtype or (torch.bfloat16 if quantize or saved else None))
    check_device(device)
    tp = tensor_parallel() if split else None
    if tp:
        tp.check_heads(config.n_head)  # N processes must share the heads evenly: known before any reading
    state_dict = read_state_dict(directory, lazy=tp is not None and tp.world_size() > 1)
    if config.n_layer > len(state_dict):  # every layer has tensors: what we build is bounded by the file
        raise ValueError(f"config.json says n_layer={config.n_layer}, but the checkpoint holds "
                         f"only {len(state_dict)} tensors")
    model, state_dict = build(config, state_dict, attn)
    if saved:  # integers and scales as save_pretrained wrote them: read, not quantized again
        from quantize import load_saved
        return load_saved(model, state_dict, saved, dtype, device, quantize).eval()
    check_state_dict(model, state_dict)
    if tp:
        state_dict = tp.shard(model, TP_PLAN, state_dict)  # this process's share, read by slices
    if quantize is not None:  # every weight matrix quantized as it is read: no full-precision copy
        from quantize import load_quantized
        return load_quantized(model, state_dict, quantize, dtype, device).eval()
    state_dict = {k: v.to(dtype) for k, v in state_dict.items()}
    check_finite(state_dict, dtype)
    model.load_state_dict(state_dict, strict=False, assign=True)
    model.tie_weights()  # assign=True replaced wte.weight: point a tied lm_head at the new tensor
    return model.to(device).eval()


# ----------------------------------------------------------------------------- saving


def hub_state_dict(model):
    """This file's names and layouts -> the Hub's, as transformers writes them (convert_hub_state_dict
    undone): Conv1D weights transposed back to (in, out), a tied lm_head left out (it is wte)."""
    state_dict = model.state_dict()
    if model.config.tie_word_embeddings:
        state_dict.pop("lm_head.weight", None)
    return {k: v.t() if k.endswith(TRANSPOSED) else v for k, v in state_dict.items()}


# Copied from gpt2.py
def hub_config(model):
    """config.json as transformers writes it: the config's fields, and what names the class to load."""
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    return {"architectures": [type(model).__name__], "model_type": model.config.MODEL_TYPE, "dtype": dtype,
            **asdict(model.config)}


# Copied from gpt2.py
def save_pretrained(model, directory, *, max_shard_size="5GB", config=None):
    """Write a Hub checkpoint that transformers' from_pretrained and ours both load: config.json (or the
    dict `config`) and model.safetensors, or, above max_shard_size (bytes or "5GB"), the shards
    model-0000k-of-0000n.safetensors and model.safetensors.index.json (huggingface_hub does the split).
    Through write_files: a kill or a full disk leaves the previous checkpoint whole, and a model can be
    saved into the directory it was loaded (or memory-mapped) from."""
    from huggingface_hub import save_torch_state_dict

    config = config or hub_config(model)
    quantized = hasattr(model, "quantization_config")
    if quantized:  # integers and scales in compressed-tensors' layout, made and written a shard at a time
        from quantize import quantized_config, save_quantized  # (quantize.py)
        config = quantized_config(model, config)

    def write(tmp):
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        if quantized:
            save_quantized(model, tmp, max_shard_size)
        else:
            save_torch_state_dict(hub_state_dict(model), tmp, max_shard_size=max_shard_size)
    written = write_files(directory, write)
    weights = re.compile(r"model(-\d{5}-of-\d{5})?\.safetensors(\.index\.json)?")  # (huggingface_hub's)
    for f in Path(directory).iterdir():  # the shards (or index) of an earlier save, not of this one
        if f.name not in written and weights.fullmatch(f.name):
            f.unlink()


# Copied from gpt2.py
COMMITTED = ".tmp-committed"  # write_files: a whole set of new files, not yet all moved into place


# Copied from gpt2.py
def write_files(directory, write):
    """Write a set of files into `directory` so that a kill or a full disk at any moment leaves every file
    whole, old or new: `write(tmp)` writes them into a new temporary directory inside `directory`; once all
    are written (and synced), it is renamed COMMITTED and each file is renamed over its namesake (os.replace
    is atomic, and a memory map of the old file keeps the old contents). A kill before that rename leaves
    the old files as they were (and a .tmp-* to delete); after it, finish_write completes the move. Returns
    the names written."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    finish_write(directory)  # an earlier write killed while moving: complete it first
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=directory))
    try:
        write(tmp)
        for f in tmp.iterdir():
            with open(f, "rb") as opened:
                os.fsync(opened.fileno())  # on the disk before the rename makes it the file
        tmp.rename(directory / COMMITTED)
        return finish_write(directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# Copied from gpt2.py
def finish_write(directory):
    """Move the files of a committed write_files into `directory`; returns their names."""
    committed = Path(directory) / COMMITTED
    names = sorted(f.name for f in committed.iterdir()) if committed.is_dir() else []
    for name in names:
        os.replace(committed / name, Path(directory) / name)
    if names:
        committed.rmdir()
    return names

# ----------------------------------------------------------------------------- generation


# Copied from gpt2.py
def check_sampling(temperature, top_k, top_p):
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a finite number >= 0 (0 is greedy), got {temperature}")
    if top_k is not None and not (isinstance(top_k, int) and top_k >= 1):
        raise ValueError(f"top_k must be an integer >= 1, got {top_k}")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):  # NaN fails too
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


# Copied from gpt2.py
def top_k_filter(logits, k):
    """Keep the k highest logits per row (B, V); ties with the k-th are all kept, none dropped at random."""
    kth = torch.topk(logits, min(k, logits.size(-1)), dim=-1).values[:, -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


# Copied from gpt2.py
def top_p_filter(logits, p):
    """Nucleus: keep the most likely tokens until their probability reaches p (at least one token;
    ties with the last kept logit are all kept)."""
    sorted_logits = torch.sort(logits, dim=-1, descending=True).values  # (B, V)
    probs = F.softmax(sorted_logits.float(), dim=-1)
    n_keep = (probs.cumsum(dim=-1) - probs < p).sum(dim=-1, keepdim=True)  # mass before a token < p: keep
    threshold = sorted_logits.gather(1, n_keep - 1)  # (B, 1) the smallest kept logit
    return logits.masked_fill(logits < threshold, float("-inf"))


# Copied from gpt2.py
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


# Copied from gpt2.py
def last_logits(model, x, attention_mask=None, kv_cache=None):
    """The new tokens x (B, T) through the model -> the logits of their last position (B, V). The LM head,
    the largest matmul, runs on that one position only."""
    h = model.transformer(x, attention_mask, kv_cache=kv_cache)  # (B, T, C)
    return model.lm_head(h[:, -1])  # (B, V)


# Copied from gpt2.py
def check_generation(model, input_ids, max_new_tokens, attention_mask, vocab_size=None, eos_token_id=None):
    """What generate needs beyond what the model checks: a prompt with room in the context, left padding,
    ids and a mask that are valid values (checked once here, not at every step), a vocab_size and end ids
    that are ids of the model."""
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


# Copied from gpt2.py
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
    calls at once is not, nor training the model while another thread samples from it (the step would run
    in eval mode). compile=True from several threads at once is not tested.
    """
    if compile:  # (it checks its arguments as below)
        return generate_compiled(model, input_ids, max_new_tokens, attention_mask=attention_mask,
                                 temperature=temperature, top_k=top_k, top_p=top_p, eos_token_id=eos_token_id,
                                 vocab_size=vocab_size, generator=generator, on_token=on_token,
                                 kv_cache=kv_cache)
    check_sampling(temperature, top_k, top_p)
    check_generation(model, input_ids, max_new_tokens, attention_mask, vocab_size, eos_token_id)
    kv_cache = model.make_cache() if kv_cache is None else kv_cache
    ids, done, eos = input_ids, None, eos_ids(eos_token_id, input_ids.device)
    with eval_mode(model):  # sampling never drops out
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


# Copied from gpt2.py
_MODE_LOCK = threading.Lock()  # (eval_mode's)


# Copied from gpt2.py
_EVAL_USERS = {}  # id(model) -> [the generate calls using it now, the mode to give back]


# Copied from gpt2.py
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


# Copied from gpt2.py
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


# Copied from gpt2.py
def eos_ids(eos_token_id, device):
    """eos_token_id (an id, a list of ids, or None) as a tensor of ids, made once per generate call."""
    return None if eos_token_id is None else torch.tensor(eos_token_id, device=device).view(-1)


# ----------------------------------------------------------------------------- generation, fast path


# Copied from gpt2.py
@torch.no_grad()
def generate_compiled(model, input_ids, max_new_tokens, *, attention_mask=None, temperature=1.0, top_k=None,
                      top_p=None, eos_token_id=None, vocab_size=None, generator=None, on_token=None,
                      kv_cache=None):
    """generate(compile=True), in gpt-fast's way: the prompt runs eagerly into a StaticCache; from then on
    every step has the same shapes (one token against the cache's whole buffer: kv_cache.FullBuffer), so
    one torch.compile'd graph of `last_logits` serves every token. Same arguments and tokens as generate;
    the first call compiles, which takes a while."""
    check_sampling(temperature, top_k, top_p)
    check_generation(model, input_ids, max_new_tokens, attention_mask, vocab_size, eos_token_id)
    B, T = input_ids.shape
    kv_cache = model.make_cache(static_len=T + max_new_tokens) if kv_cache is None else kv_cache
    if not isinstance(kv_cache, StaticCache) or kv_cache.max_len < T + max_new_tokens:
        raise ValueError("compile=True needs a StaticCache of at least prompt + max_new_tokens positions "
                         "(model.make_cache(static_len=...)), or none")
    # The mask spans the whole buffer: 1 on the real tokens so far, 0 on padding and on unwritten slots.
    mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
    mask = F.pad(mask, (0, kv_cache.max_len - T))  # (B, max_len)
    # On CUDA, "reduce-overhead" also records the step's kernels as a CUDA graph: one launch per token.
    step = torch.compile(last_logits, fullgraph=True, mode="reduce-overhead" if input_ids.is_cuda else None)
    ids, done, eos = input_ids, None, eos_ids(eos_token_id, input_ids.device)
    with eval_mode(model):  # sampling never drops out
        logits = last_logits(model, input_ids, attention_mask, kv_cache)  # the prompt, eagerly: (B, V)
        buffer = FullBuffer(kv_cache)
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


# ----------------------------------------------------------------------------- command line


DEFAULT_MODEL = "gpt2"


# Copied from gpt2.py
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.error = lambda message: sys.exit(f"error: {message}")  # one line, as every other bad input
    p.add_argument("--model", default=DEFAULT_MODEL, help="a short name, a Hub id or a local directory")
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
    p.add_argument("--dtype", default=None, choices=DTYPES,
                   help="the weights' and activations' dtype (float32; bfloat16 with --quantize)")
    p.add_argument("--quantize", default=None, help="int8 or int4: weight-only quantization (quantize.py)")
    p.add_argument("--attn", default="sdpa", choices=BACKENDS, help="the attention backend")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the one-token decode step (compiling takes a while, once per run)")
    p.add_argument("--show", metavar="PNG", help="draw the prompt's attention maps (every layer and head) "
                   "into this file instead of sampling (visualize.py; needs matplotlib)")
    p.add_argument("--show-lens", metavar="PNG", help="draw the prompt's logit lens (the top next token "
                   "after each layer) into this file instead of sampling")
    return p.parse_args(argv)


# Copied from gpt2.py
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


# Copied from gpt2.py
def speed_line(times, compiled):
    """The CLI's report from the start time and each token's arrival: "[n tokens in s: r tokens/s]". With
    --compile the first decode step (the second token) compiles, which takes seconds to minutes: it is
    reported apart and the rate counts the compiled steps after it."""
    n, seconds = len(times) - 1, times[-1] - times[0]
    if compiled and n > 2:
        rate = (n - 2) / max(times[-1] - times[2], 1e-9)
        return (f"[{n} tokens in {seconds:.2f}s, of which {times[2] - times[1]:.2f}s the first compiled step "
                f"(compiling): {rate:.1f} tokens/s after it]")
    return f"[{n} tokens in {seconds:.2f}s: {n / max(seconds, 1e-9):.1f} tokens/s]"


# Copied from gpt2.py
def main(argv=None):
    from bpe import StreamDecoder, Tokenizer
    args = parse_args(argv)
    tp = tensor_parallel()  # under torchrun: tp.py, the model split over the processes
    try:
        if tp:
            args.device = tp.init(args.device)  # join the other processes, one device each
            if tp.rank() > 0:
                sys.stdout = open(os.devnull, "w")  # rank 0 prints; every process samples the same tokens
        check_sampling(args.temperature, args.top_k, args.top_p)
        if args.max_new_tokens < 1 or args.num_samples < 1:
            raise ValueError("--max-new-tokens and --num-samples must be >= 1")
        show = args.show is not None or args.show_lens is not None  # pictures of the prompt, no sampling
        if show:
            import visualize
            if tp:
                raise ValueError("--show and --show-lens draw on one process: run them without torchrun")
            visualize.check_outputs(args.show, args.show_lens)  # before any work: file names, matplotlib
        directory = checkpoint_dir(args.model, args.revision)
        config = load_config(directory)  # read once: the prompt is checked against it before loading
        tokenizer = Tokenizer.from_pretrained(directory)
        max_new_tokens = 0 if show else args.max_new_tokens
        prompt = encode_prompt(tokenizer, args.prompt, config.context_length, max_new_tokens)
        attn = "naive" if args.show else args.attn  # --show: the fused kernels never form the probabilities
        model = from_pretrained(directory, device=args.device, dtype=args.dtype, attn=attn,
                                quantize=args.quantize, config=config)
        input_ids = torch.tensor([prompt], device=args.device)
        if show:
            check_input_values(input_ids, None, config.vocab_size)  # the tokenizer may know more ids
            # the backbone, then its final LayerNorm and the LM head for the logit lens
            parts = model.transformer, model.transformer.ln_f, model.lm_head
            title = f"{args.model}: {args.prompt!r}"
            written = visualize.show(*parts, tokenizer, input_ids, args.show, args.show_lens, title)
            print("wrote", *written, file=sys.stderr)
            return
        generator = torch.Generator(args.device).manual_seed(args.seed)
        for i in range(args.num_samples):
            stream, times = StreamDecoder(tokenizer), [time.perf_counter()]  # the start, then each token's

            def on_token(t):
                times.append(time.perf_counter())
                print(stream.push(int(t[0])), end="", flush=True)
            print(("-" * 40 + "\n") * (i > 0) + args.prompt, end="", flush=True)
            generate(model, input_ids, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                     top_p=args.top_p, eos_token_id=model.config.eos_token_id,
                     vocab_size=tokenizer.vocab_size, generator=generator, compile=args.compile,
                     on_token=on_token)
            print(stream.flush(), flush=True)
            if not tp or tp.rank() == 0:
                print(speed_line(times, args.compile), file=sys.stderr)
    except (ValueError, OSError, RuntimeError) as e:
        sys.exit(f"error: {e}" if not tp or tp.rank() == 0 else 1)  # under torchrun: one line, not N
    except KeyboardInterrupt:  # Ctrl-C: stop quietly, with the shell's usual status for it
        print(flush=True)
        sys.exit(130)
    finally:
        if tp:
            tp.finish()


if __name__ == "__main__":
    main()
