"""GPT-Neo in one file. The lesson first: the config, the model, its loss and a new model's initialisation;
after the line that says the lesson ends, the Hub's names for things and thin entry points to the shared
modules (checkpoint.py: loading and saving; generation.py: sampling and the CLI).

    python gpt_neo.py --model models/pydoc-gpt-neo --prompt "The meaning of life is"   # works offline

GPT-Neo (EleutherAI 2021: 125M, 1.3B, 2.7B on the Pile; also the roneneldan/TinyStories-* models) is
GPT-2's architecture as EleutherAI rewrote it in Mesh TensorFlow, with these differences:

- layers alternate between global attention and *local* attention, where a token sees only itself and
  the window_size - 1 tokens before it (config.json's attention_types, e.g. [[["global", "local"], 6]]);
- the attention scores are not scaled by 1/sqrt(hd), and q and k are multiplied in fp32;
- q, k, v are three bias-free nn.Linear (q_proj, k_proj, v_proj), not one Conv1D; out_proj has a bias;
- the config.json names are the generic ones, and the module names are GPT-2's, attention one level deeper.

    ids ─ wte + wpe ─┬─ [ x + attn(ln_1(x)) ; x + mlp(ln_2(x)) ] × num_layers ─ ln_f ─ lm_head ─ logits
                      positions 0..T-1           attn: global or local, per layer

Notation: B batch, T tokens, C hidden_size, nh num_heads, hd head size (C / nh), V vocab_size,
w window_size. Module names are the Hub's state-dict keys (transformer.h.0.attn.attention.q_proj.weight
...). Names that differ from gpt2.py's (the Hub's): hidden_size (n_embd), num_layers (n_layer), num_heads
(n_head), max_position_embeddings (n_positions), intermediate_size (n_inner); modules
attn.attention.{q,k,v,out}_proj (attn.c_attn, attn.c_proj).
"""
import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from attention import BACKENDS, attention, check_shapes
from kv_cache import DynamicCache, StaticCache


# ----------------------------------------------------------------------------- config


@dataclass
class GPTNeoConfig:
    """config.json's fields that the architecture reads (the Hub's names); defaults are GPT-Neo 125M."""
    vocab_size: int = 50257
    max_position_embeddings: int = 2048  # the context: how many tokens the model can see
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int | None = None  # MLP width; None means 4 * hidden_size
    # [[types, n], ...]: the list `types` repeated n times, concatenated: one "global"/"local" per layer.
    attention_types: list = field(default_factory=lambda: [[["global", "local"], 6]])
    window_size: int = 256  # how far back a local layer looks, the token itself included
    activation_function: str = "gelu_new"
    layer_norm_epsilon: float = 1e-5
    tie_word_embeddings: bool = True
    bos_token_id: int | None = 50256
    eos_token_id: int | list | None = 50256  # a list: any of them ends a row
    # Training only (no-ops in eval() mode): dropout rates, and the std of a new model's weights.
    embed_dropout: float = 0.0  # on the embeddings
    attention_dropout: float = 0.0  # on the attention probabilities
    resid_dropout: float = 0.0  # on each sublayer's output, before it joins the residual stream
    initializer_range: float = 0.02

    MODEL_TYPE = "gpt_neo"  # config.json's model_type
    DROPOUT = ("embed_dropout", "attention_dropout", "resid_dropout")  # the dropout rates' fields
    quantization_config = None  # config.json's, in a checkpoint saved quantized (quantize.py)

    @property
    def attention_layers(self):
        """attention_types expanded: [[["global", "local"], 2]] -> ["global", "local", "global", "local"]."""
        return [kind for kinds, n in self.attention_types for _ in range(n) for kind in kinds]

    @property
    def context_length(self):
        return self.max_position_embeddings

    @classmethod
    def from_dict(cls, d):  # config.json's object -> a checked config (read_config, after the lesson)
        return read_config(d)

    @classmethod
    def from_json(cls, path):  # a config.json file -> a checked config
        return read_config(checkpoint.read_json_object(path))



# ----------------------------------------------------------------------------- model


# GELU's tanh approximation, which GPT-Neo was trained with: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), in
# one torch kernel. config.json may name others: checkpoint.ACTIVATIONS has them all, and joins this table.
ACTIVATIONS = {"gelu_new": lambda x: F.gelu(x, approximate="tanh")}


class CausalSelfAttention(nn.Module):
    def __init__(self, config, layer_idx, backend="sdpa"):
        super().__init__()
        self.head_dim = config.hidden_size // config.num_heads
        self.layer_idx = layer_idx
        self.backend = backend
        # Three plain nn.Linear, stored as such (no transpose); q, k, v have no bias, as the checkpoints hold.
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size)
        # A local layer sees itself and the window_size - 1 tokens before it; a global one sees all.
        self.window = config.window_size if config.attention_layers[layer_idx] == "local" else None
        self.dropout_p = config.attention_dropout  # on the attention probabilities, in training only
        self.resid_dropout = nn.Dropout(config.resid_dropout)

    def forward(self, x, attention_mask=None, kv_cache=None, attentions=None):
        B, T, C = x.shape
        # nh is read off the tensors (-1): all heads, or this process's share under tensor parallel (tp.py)
        q = self.q_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        k = self.k_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_idx, k, v)  # (B, nh, T_kept + T, hd), T_kept <= w if local
        # Scores in fp32, as the reference does: unscaled, q·k overflows fp16 (v too: sdpa wants one dtype).
        if self.backend != "flash":  # flash_attn takes fp16/bf16 only, and accumulates q·k in fp32 itself
            q, k, v = q.float(), k.float(), v.float()
        # No 1/sqrt(hd): GPT-Neo was trained without it (EleutherAI's Mesh TF code), so scale=1.
        # Per head: softmax(q @ k^T * scale, causal mask) @ v. attention.py opens with that specification.
        y = attention(q, k, v, backend=self.backend, causal=True, padding_mask=attention_mask, scale=1.0,
                      window=self.window, dropout_p=self.dropout_p if self.training else 0.0,
                      return_probs=attentions is not None)
        if attentions is not None:  # output_attentions: keep this layer's probabilities too
            y, probs = y
            attentions.append(probs)
        y = y.to(x.dtype).transpose(1, 2).reshape(B, T, -1)  # (B, T, nh, hd) -> (B, T, nh hd): heads side by side
        return self.resid_dropout(self.out_proj(y))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        n_inner = config.intermediate_size or 4 * config.hidden_size
        self.c_fc = nn.Linear(config.hidden_size, n_inner)
        self.c_proj = nn.Linear(n_inner, config.hidden_size)
        self.act = ACTIVATIONS[config.activation_function]  # gelu_new: the tanh approximation of GELU
        self.dropout = nn.Dropout(config.resid_dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))  # (B, T, C) -> (B, T, n_inner) -> (B, T, C)


class Block(nn.Module):
    def __init__(self, config, layer_idx, backend="sdpa"):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        # One level deeper than GPT-2, as the Hub's keys are: transformer.h.0.attn.attention.q_proj.weight
        self.attn = nn.ModuleDict({"attention": CausalSelfAttention(config, layer_idx, backend)})
        self.ln_2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.mlp = MLP(config)

    def forward(self, x, attention_mask=None, kv_cache=None, attentions=None):
        # pre-LN, as GPT-2
        x = x + self.attn.attention(self.ln_1(x), attention_mask, kv_cache, attentions)
        x = x + self.mlp(self.ln_2(x))
        return x


class GPTNeoModel(nn.Module):
    """The backbone: ids -> final hidden states (B, T, C). The task heads in heads.py sit on top of it."""

    def __init__(self, config, backend="sdpa"):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.hidden_size)
        self.wpe = nn.Embedding(config.max_position_embeddings, config.hidden_size)  # learned positions
        self.drop = nn.Dropout(config.embed_dropout)
        self.h = nn.ModuleList(Block(config, i, backend) for i in range(config.num_layers))
        self.ln_f = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)

    def forward(self, input_ids, attention_mask=None, position_ids=None, kv_cache=None,
                output_attentions=False, output_hidden_states=False):
        """The final hidden states (B, T, C). With output_hidden_states or output_attentions (transformers'
        flags), (those, hidden_states, attentions): n_layer + 1 × (B, T, C), each block's input and then the
        output (after ln_f); n_layer × (B, nh, T, keys), keys = T plus any cached ones, on the attention
        backend "naive" only. What was not asked for is None. visualize.py draws them."""
        B, T = input_ids.shape
        past = kv_cache.seen if kv_cache is not None else 0
        check_shapes(input_ids, attention_mask, past, self.config.max_position_embeddings)  # (attention.py)
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


class GPTNeoForCausalLM(nn.Module):
    def __init__(self, config, backend="sdpa"):
        super().__init__()
        self.config = config
        self.transformer = GPTNeoModel(config, backend)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.tie_weights()

    def tie_weights(self):
        if self.config.tie_word_embeddings:  # the output scores are read off the embedding matrix
            self.lm_head.weight = self.transformer.wte.weight

    # Copied from gpt2.py
    def forward(self, input_ids, attention_mask=None, position_ids=None, kv_cache=None, labels=None,
                output_attentions=False, output_hidden_states=False, logits_to_keep=0):
        """Logits (B, T, V); with `labels`, (logits, loss). With output_attentions / output_hidden_states,
        the backbone's hidden states and attentions follow (None where not asked for). logits_to_keep=n:
        the logits of the last n positions only (generation needs 1: the LM head is the largest matmul)."""
        out = self.transformer(input_ids, attention_mask, position_ids, kv_cache, output_attentions,
                               output_hidden_states)
        inspect = output_attentions or output_hidden_states  # out is then (h, hidden_states, attentions)
        h = out[0] if inspect else out  # (B, T, C)
        logits = self.lm_head(h[:, -logits_to_keep:])  # (B, T, V), or (B, logits_to_keep, V)
        outputs = (logits,) if labels is None else (logits, lm_loss(logits, labels))
        if inspect:
            return outputs + out[1:]
        return logits if labels is None else outputs

    def set_attention_backend(self, backend):
        if backend not in BACKENDS:
            raise ValueError(f"unknown attention backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        for block in self.transformer.h:
            block.attn.attention.backend = backend

    def make_cache(self, static_len=None):
        """A growing KV cache, or a preallocated one of `static_len` positions. A local layer keeps only its
        last window_size keys and values: it never looks further back, so memory stays bounded."""
        windows = [block.attn.attention.window for block in self.transformer.h]
        if static_len is None:
            return DynamicCache(self.config.num_layers, windows)
        return StaticCache(self.config.num_layers, static_len, windows)


# Copied from gpt2.py
def lm_loss(logits, labels):
    """Next-token cross-entropy: position t predicts labels[t + 1]; labels of -100 are ignored."""
    targets = F.pad(labels[:, 1:], (0, 1), value=-100)  # (B, T): shift the labels, not the (larger) logits
    logits = logits.float()  # fp32 for a stable log-softmax (a no-op in fp32 training: no copy)
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)


# ----------------------------------------------------------------------------- a new model, for training


def init_weights(model):
    """The reference's initialisation of a model trained from scratch: Linear and Embedding weights
    N(0, initializer_range), biases 0, LayerNorms 1 and 0. Works on heads.py's models too."""
    std = model.config.initializer_range
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    return model


# Copied from gpt2.py
def from_config(config, *, device="cpu", attn="sdpa"):
    """A new model of this config's shape, initialised as the reference does, in train() mode."""
    with torch.device(device):
        return init_weights(GPTNeoForCausalLM(config, attn)).train()


# Tensor parallel (tp.py, under torchrun): how a block's layers split over the N processes. "colwise": the
# layer's outputs (heads, MLP columns) are divided among the processes; "rowwise": its inputs are, and an
# all-reduce sums the partial results. Every other tensor (embeddings, LayerNorms, LM head) is replicated.
TP_PLAN = {
    "attn.attention.q_proj": "colwise",  # three separate matrices, each cut by heads
    "attn.attention.k_proj": "colwise",
    "attn.attention.v_proj": "colwise",
    "attn.attention.out_proj": "rowwise",
    "mlp.c_fc": "colwise",
    "mlp.c_proj": "rowwise",
}


# ============================================================================= the lesson ends here
# What follows is GPT-Neo's side of what the three model files share: config.json's names and checks, the
# Hub's names for the weights (both ways), and thin entry points. The shared work is written once, in
# checkpoint.py (reading and writing the Hub's files) and generation.py (sampling and the command line).
# A definition marked "Copied from gpt2.py" equals gpt2.py's after these renames (tests/test_shared_sections.py):
# Renames: GPT2Config -> GPTNeoConfig, GPT2LMHeadModel -> GPTNeoForCausalLM, n_positions -> max_position_embeddings,
#   n_layer -> num_layers, n_head -> num_heads

import sys  # noqa: E402  (the lesson above needs only torch, attention.py and kv_cache.py)
from functools import partial  # noqa: E402
from pathlib import Path  # noqa: E402

import checkpoint  # noqa: E402
import generation  # noqa: E402

# ----------------------------------------------------------------------------- config.json


ACTIVATIONS.update(checkpoint.ACTIVATIONS)  # every activation function a config.json may name

# The generic names of some config.json files, which the shared modules read too: the same fields.
ALIASES = {"num_hidden_layers": "num_layers", "num_attention_heads": "num_heads"}
checkpoint.add_generic_names(GPTNeoConfig, ALIASES)


def read_config(d):
    """config.json's object -> a GPTNeoConfig: unknown keys ignored, every value checked."""
    config = checkpoint.config_from_dict(GPTNeoConfig, d, ALIASES)
    if config.hidden_size % config.num_heads:
        raise ValueError(f"hidden_size={config.hidden_size} is not divisible by "
                         f"num_heads={config.num_heads}")
    try:
        layers = config.attention_layers
    except (TypeError, ValueError):  # not [[list of types, count], ...]
        layers = None
    if layers is None or len(layers) != config.num_layers or not set(layers) <= {"global", "local"}:
        raise ValueError(f"attention_types {config.attention_types!r} must give 'global' or 'local' for "
                         f"each of the num_layers={config.num_layers} layers; it gives {layers}")
    if config.window_size < 1:
        raise ValueError(f"window_size must be >= 1, got {config.window_size}")
    checkpoint.check_activation(config.activation_function, "activation_function")
    return config


def load_config(directory):
    """The checkpoint directory's config.json, read and checked."""
    return read_config(checkpoint.read_json_object(Path(directory) / "config.json"))

# ----------------------------------------------------------------------------- the Hub's names


HUB_MODELS = {
    "gpt-neo-125m": "EleutherAI/gpt-neo-125m",
    "gpt-neo-1.3B": "EleutherAI/gpt-neo-1.3B",
    "gpt-neo-2.7B": "EleutherAI/gpt-neo-2.7B",
    "TinyStories-1M": "roneneldan/TinyStories-1M",  # GPT-Neo trained on simple stories (Eldan & Li 2023)
    "TinyStories-33M": "roneneldan/TinyStories-33M",
}
DEFAULT_MODEL = "gpt-neo-125m"
OFFLINE_MODEL = "models/pydoc-gpt-neo"  # a GPT-Neo trained here and shipped: it samples without a network


def convert_hub_state_dict(state_dict, config):
    """Hub keys -> this file's module names (transformer.h.0.attn.attention.q_proj.weight ...). GPT-Neo's
    layers are plain nn.Linear on the Hub too: no transposes."""
    out = {}
    for key, tensor in state_dict.items():
        if key.endswith((".attn.attention.bias", ".attn.attention.masked_bias")):
            continue  # the causal/local mask as a buffer, in older files: we build masks on the fly
        if not key.startswith(("transformer.", "lm_head.")):
            key = "transformer." + key  # a file saved from the backbone alone has no "transformer." prefix
        out[key] = tensor
    if config.tie_word_embeddings:
        out.pop("lm_head.weight", None)  # the same matrix as wte, when a file holds both
    return out


def hub_state_dict(model):
    """This file's names and layouts -> the Hub's, as transformers writes them (convert_hub_state_dict
    undone): the same names and layouts, a tied lm_head left out (it is wte)."""
    state_dict = model.state_dict()
    if model.config.tie_word_embeddings:
        state_dict.pop("lm_head.weight", None)
    return state_dict


def inspected_parts(model):
    """What visualize.py draws from: the backbone, and the final LayerNorm and LM head of its logit lens."""
    return model.transformer, model.transformer.ln_f, model.lm_head

# ----------------------------------------------------------------------------- entry points


# Copied from gpt2.py
def from_pretrained(name_or_path, *, revision=None, device="cpu", dtype=None, attn="sdpa", quantize=None,
                    config=None, split=True):
    """The model from a Hub name/id or a local directory with config.json and weights (checkpoint.load
    says how): dtype a torch.dtype or its name, float32 by default; quantize "int8" | "int4" (quantize.py,
    bfloat16 by default); config: the directory's GPTNeoConfig if the caller has read it already. Under
    torchrun each process loads its share of a tensor-parallel model (tp.py); split=False loads the whole
    model in every process (data parallel: train.py)."""
    checkpoint.check_options(attn, quantize)
    directory = checkpoint.checkpoint_dir(name_or_path, revision, HUB_MODELS, OFFLINE_MODEL)
    config = config or load_config(directory)
    return checkpoint.load(directory, config, partial(GPTNeoForCausalLM, config, attn), convert_hub_state_dict,
                           device=device, dtype=dtype, quantize=quantize, tp_plan=TP_PLAN if split else None)


# Copied from gpt2.py
def save_pretrained(model, directory, *, max_shard_size="5GB"):
    """Write the model as a Hub checkpoint that transformers and from_pretrained both load (checkpoint.py)."""
    return checkpoint.save_pretrained(model, directory, hub_state_dict, max_shard_size=max_shard_size)


generate = generation.generate  # sampling is the same for the three files: generation.py


# Copied from gpt2.py
def main(argv=None):
    """Sample from a checkpoint: generation.py's command line, with this file's model (--help)."""
    generation.main(sys.modules[__name__], argv)


if __name__ == "__main__":
    main()
