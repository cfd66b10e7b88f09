"""GPT-2 in one file. The lesson first: the config, the model, its loss and a new model's initialisation;
after the line that says the lesson ends, the Hub's names for things and thin entry points to the shared
modules (checkpoint.py: loading and saving; generation.py: sampling and the CLI).

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
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from attention import BACKENDS, attention, check_shapes
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
    def from_json(cls, path):  # a config.json file -> a checked config
        return read_config(checkpoint.read_json_object(path))


# ----------------------------------------------------------------------------- model


# GELU's tanh approximation, which GPT-2 was trained with: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), in
# one torch kernel. config.json may name others: checkpoint.ACTIVATIONS has them all, and joins this table.
ACTIVATIONS = {"gelu_new": lambda x: F.gelu(x, approximate="tanh")}


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
        check_shapes(input_ids, attention_mask, past, self.config.n_positions)  # (attention.py)
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
# What follows is GPT-2's side of what the three model files share: config.json's names and checks, the Hub's
# names for the weights (both ways), and thin entry points. The shared work is written once, in
# checkpoint.py (reading and writing the Hub's files) and generation.py (sampling and the command line).
# A definition marked "Copied from gpt2.py" equals gpt2.py's after these renames (tests/test_shared_sections.py):
# Renames: none (this is gpt2.py, the original)

import sys  # noqa: E402  (the lesson above needs only torch, attention.py and kv_cache.py)
from functools import partial  # noqa: E402
from pathlib import Path  # noqa: E402

import checkpoint  # noqa: E402
import generation  # noqa: E402

# ----------------------------------------------------------------------------- config.json


ACTIVATIONS.update(checkpoint.ACTIVATIONS)  # every activation function a config.json may name

# The generic names of newer config.json files, which the shared modules read too: the same fields.
ALIASES = {"hidden_size": "n_embd", "num_hidden_layers": "n_layer", "num_attention_heads": "n_head",
           "max_position_embeddings": "n_positions"}
checkpoint.add_generic_names(GPT2Config, ALIASES)
# Options the Hub config can switch on that this file does not implement: refuse rather than ignore.
UNSUPPORTED = {"add_cross_attention": False}


def read_config(d):
    """config.json's object -> a GPT2Config: unknown keys ignored, every value checked."""
    for key, default in UNSUPPORTED.items():
        if isinstance(d, dict) and d.get(key, default) != default:
            raise ValueError(f"config.json sets {key}={d[key]!r}, which gpt2.py does not implement")
    config = checkpoint.config_from_dict(GPT2Config, d, ALIASES)
    if config.n_embd % config.n_head:
        raise ValueError(f"n_embd={config.n_embd} is not divisible by n_head={config.n_head}")
    checkpoint.check_activation(config.activation_function, "activation_function")
    return config


def load_config(directory):
    """The checkpoint directory's config.json, read and checked."""
    return read_config(checkpoint.read_json_object(Path(directory) / "config.json"))

# ----------------------------------------------------------------------------- the Hub's names


HUB_MODELS = {
    "gpt2": "openai-community/gpt2",  # 124M
    "gpt2-medium": "openai-community/gpt2-medium",  # 355M
    "gpt2-large": "openai-community/gpt2-large",  # 774M
    "gpt2-xl": "openai-community/gpt2-xl",  # 1558M
    "distilgpt2": "distilbert/distilgpt2",  # 82M
}
DEFAULT_MODEL = "gpt2"
OFFLINE_MODEL = "models/pydoc-gpt2"  # a GPT-2 trained here and shipped: it samples without a network

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


def hub_state_dict(model):
    """This file's names and layouts -> the Hub's, as transformers writes them (convert_hub_state_dict
    undone): Conv1D weights transposed back to (in, out), a tied lm_head left out (it is wte)."""
    state_dict = model.state_dict()
    if model.config.tie_word_embeddings:
        state_dict.pop("lm_head.weight", None)
    return {k: v.t() if k.endswith(TRANSPOSED) else v for k, v in state_dict.items()}


def inspected_parts(model):
    """What visualize.py draws from: the backbone, and the final LayerNorm and LM head of its logit lens."""
    return model.transformer, model.transformer.ln_f, model.lm_head

# ----------------------------------------------------------------------------- entry points


# Copied from gpt2.py
def from_pretrained(name_or_path, *, revision=None, device="cpu", dtype=None, attn="sdpa", quantize=None,
                    config=None, split=True):
    """The model from a Hub name/id or a local directory with config.json and weights (checkpoint.load
    says how): dtype a torch.dtype or its name, float32 by default; quantize "int8" | "int4" (quantize.py,
    bfloat16 by default); config: the directory's GPT2Config if the caller has read it already. Under
    torchrun each process loads its share of a tensor-parallel model (tp.py); split=False loads the whole
    model in every process (data parallel: train.py)."""
    checkpoint.check_options(attn, quantize)
    directory = checkpoint.checkpoint_dir(name_or_path, revision, HUB_MODELS, OFFLINE_MODEL)
    config = config or load_config(directory)
    return checkpoint.load(directory, config, partial(GPT2LMHeadModel, config, attn), convert_hub_state_dict,
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
