"""GPT-NeoX and Pythia in one file. The lesson first: the config, the model, its loss and a new model's
initialisation; after the line that says the lesson ends, the Hub's names for things and thin entry points
to the shared modules (checkpoint.py: loading and saving; generation.py: sampling and the CLI).

    python gpt_neox.py --prompt "The meaning of life is" --max-new-tokens 40
    python gpt_neox.py --model EleutherAI/pythia-70m --revision step3000   # a checkpoint from mid-training

GPT-NeoX-20B (Black et al. 2022, "GPT-NeoX-20B: An Open-Source Autoregressive Language Model") and the
Pythia suite (Biderman et al. 2023: 14M to 12B, trained on the Pile and on the deduplicated Pile, each
with 154 checkpoints from along training as Hub revisions step0, step1, step2, step4 ... step512, step1000
... step143000) are GPT-2's decoder with three changes: positions enter as rotations of the queries and
keys (rotary embeddings, RoPE, on the first rotary_pct of each head) instead of a learned table; attention
and MLP read the same input and are added together (parallel residual); the output matrix embed_out is
separate from the embedding:

    ids ─ embed_in ─ [ x + attn(ln1(x)) + mlp(ln2(x)) ] × L ─ final_layer_norm ─ embed_out ─ logits
                              └ rotates q and k by the positions 0..T-1

Notation: B batch, T tokens, L num_hidden_layers, C hidden_size, nh num_attention_heads, hd head size
(C / nh), I intermediate_size, r rotary_ndims (the rotated dims of each head), V vocab_size; ln1 and ln2
are input_layernorm and post_attention_layernorm.
Module names are the Hub's state-dict keys (gpt_neox.layers.0.attention.query_key_value.weight ...).
Names that differ from gpt2.py's, all the Hub's: config hidden_size (n_embd), num_hidden_layers (n_layer),
num_attention_heads (n_head), max_position_embeddings (n_positions), intermediate_size (n_inner),
layer_norm_eps (layer_norm_epsilon), hidden_act (activation_function); modules gpt_neox (transformer),
embed_in (wte), layers (h), input_layernorm (ln_1), attention (attn), query_key_value (c_attn),
dense (c_proj), post_attention_layernorm (ln_2), dense_h_to_4h (c_fc), dense_4h_to_h (mlp.c_proj),
final_layer_norm (ln_f), embed_out (lm_head).
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from attention import BACKENDS, attention, check_shapes
from kv_cache import DynamicCache, StaticCache


# ----------------------------------------------------------------------------- config


@dataclass
class GPTNeoXConfig:
    """config.json's fields that the architecture reads (the Hub's names); a field the file leaves out takes
    transformers' default (GPT-NeoX-20B's values)."""
    vocab_size: int = 50432
    max_position_embeddings: int = 2048  # the context: how many tokens the model can see
    hidden_size: int = 6144
    num_hidden_layers: int = 44
    num_attention_heads: int = 64
    intermediate_size: int = 24576  # MLP width
    rotary_pct: float = 0.25  # the fraction of each head's dims that is rotated
    rotary_emb_base: float = 10000.0  # the RoPE base: dim pair i turns by position * base^(-2i / r)
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    use_parallel_residual: bool = True
    attention_bias: bool = True
    tie_word_embeddings: bool = False
    bos_token_id: int | None = 0
    eos_token_id: int | list | None = 0  # transformers' default is 2, but every NeoX/Pythia file sets 0
    # Training only (no-ops in eval() mode): dropout rates, and the std of a new model's weights.
    attention_dropout: float = 0.0  # on the attention probabilities
    hidden_dropout: float = 0.0  # on the embeddings, and on each sublayer's output before it is added
    initializer_range: float = 0.02

    MODEL_TYPE = "gpt_neox"  # config.json's model_type
    DROPOUT = ("attention_dropout", "hidden_dropout")  # the dropout rates' fields
    quantization_config = None  # config.json's, in a checkpoint saved quantized (quantize.py)

    @property
    def rotary_ndims(self):
        # Truncated by int(), as in GPT-NeoX and transformers: a head of 64 at 25% rotates 16 of its dims.
        return int(self.hidden_size // self.num_attention_heads * self.rotary_pct)

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


# The exact GELU, x·Φ(x) with Φ the standard normal CDF, which Pythia was trained with (GPT-NeoX-20B uses
# Megatron's tanh approximation, "gelu_fast"). config.json may name others: checkpoint.ACTIVATIONS has
# them all, and joins this table.
ACTIVATIONS = {"gelu": F.gelu}


def rotary_cos_sin(position_ids, r, base, dtype):
    """cos and sin of every position's rotation angles, each (1 or B, T, r). Dim pair i of a head turns by
    position * base^(-2i / r): fast near the start of the head, slow at the end of the rotated part.
    The angles are computed in fp32 even for an fp16/bf16 model (an angle near 2000 would be rounded to a
    whole radian in fp16, to 16 radians in bf16); only cos and sin are cast, as transformers does."""
    inv_freq = 1.0 / (base ** (torch.arange(0, r, 2, dtype=torch.float, device=position_ids.device) / r))
    angles = position_ids[..., None].float() * inv_freq  # (1 or B, T, r/2)
    angles = torch.cat([angles, angles], dim=-1)  # (1 or B, T, r): dims i and i + r/2 share an angle
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x):
    """(x1, x2) -> (-x2, x1) on the two halves of the last dim. GPT-NeoX pairs dim i with dim i + r/2, not
    with its neighbour i + 1 as the RoPE paper and GPT-J do; both are rotations, but of different pairs."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary(x, cos, sin):
    """Rotate the first r dims of each head of x (B, nh, T, hd) by the angles of its position; the other
    hd - r dims pass unchanged (GPT-NeoX rotates only rotary_pct of a head: 25% in Pythia and 20B)."""
    r = cos.size(-1)
    cos, sin = cos[:, None], sin[:, None]  # (1 or B, 1, T, r): the same angles for every head
    x_rot = x[..., :r] * cos + rotate_half(x[..., :r]) * sin
    return torch.cat([x_rot, x[..., r:]], dim=-1)  # (B, nh, T, hd)


class CausalSelfAttention(nn.Module):
    def __init__(self, config, layer_idx, backend="sdpa"):
        super().__init__()
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.layer_idx = layer_idx
        self.backend = backend
        C = config.hidden_size
        self.query_key_value = nn.Linear(C, 3 * C, bias=config.attention_bias)  # q, k, v for all heads
        self.dense = nn.Linear(C, C, bias=config.attention_bias)
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.dropout_p = config.attention_dropout  # on the attention probabilities, in training only

    def forward(self, x, rotary, attention_mask=None, kv_cache=None, attentions=None):
        B, T, C = x.shape
        hd = self.head_dim
        # The fused projection is laid out per head, [q_0 k_0 v_0 | q_1 k_1 v_1 | ...] (Megatron's layout,
        # kept by GPT-NeoX), not [all q | all k | all v] as GPT-2's c_attn: view by head, then split.
        # nh is read off the tensors (-1): all heads, or this process's share under tensor parallel (tp.py)
        qkv = self.query_key_value(x).view(B, T, -1, 3 * hd).transpose(1, 2)  # (B, nh, T, 3 hd)
        q, k, v = qkv.split(hd, dim=-1)  # 3 × (B, nh, T, hd)
        q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        if kv_cache is not None:
            # Keys are cached after rotation: each keeps the angle of the position it was seen at.
            k, v = kv_cache.update(self.layer_idx, k, v)  # (B, nh, T_past + T, hd)
        # Per head: softmax(q @ k^T * scale, causal mask) @ v. attention.py opens with that specification.
        y = attention(q, k, v, backend=self.backend, causal=True, padding_mask=attention_mask, scale=self.scale,
                      dropout_p=self.dropout_p if self.training else 0.0, return_probs=attentions is not None)
        if attentions is not None:  # output_attentions: keep this layer's probabilities too
            y, probs = y
            attentions.append(probs)
        y = y.to(x.dtype).transpose(1, 2).reshape(B, T, -1)  # (B, T, nh, hd) -> (B, T, nh hd): heads side by side
        return self.dense(y)


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense_h_to_4h = nn.Linear(config.hidden_size, config.intermediate_size)
        self.dense_4h_to_h = nn.Linear(config.intermediate_size, config.hidden_size)
        self.act = ACTIVATIONS[config.hidden_act]  # gelu: the exact GELU, x Φ(x) (GPT-2: tanh approximation)

    def forward(self, x):
        return self.dense_4h_to_h(self.act(self.dense_h_to_4h(x)))  # (B, T, C) -> (B, T, I) -> (B, T, C)


class Block(nn.Module):
    def __init__(self, config, layer_idx, backend="sdpa"):
        super().__init__()
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = CausalSelfAttention(config, layer_idx, backend)
        self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = MLP(config)
        self.use_parallel_residual = config.use_parallel_residual
        # NeoX drops out the sublayers' outputs here, in the block (GPT-2 does it inside attn and mlp).
        self.post_attention_dropout = nn.Dropout(config.hidden_dropout)
        self.post_mlp_dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, x, rotary, attention_mask=None, kv_cache=None, attentions=None):
        a = self.attention(self.input_layernorm(x), rotary, attention_mask, kv_cache, attentions)
        a = self.post_attention_dropout(a)
        if self.use_parallel_residual:
            # Pythia and 20B: attention and MLP both read x, side by side (GPT-J's formulation; the
            # GPT-NeoX-20B paper keeps it because it trains faster at scale).
            return x + a + self.post_mlp_dropout(self.mlp(self.post_attention_layernorm(x)))
        x = x + a  # sequential, as in GPT-2: the MLP reads the attention's output
        return x + self.post_mlp_dropout(self.mlp(self.post_attention_layernorm(x)))


class GPTNeoXModel(nn.Module):
    """The backbone: ids -> final hidden states (B, T, C). The task heads in heads.py sit on top of it."""

    def __init__(self, config, backend="sdpa"):
        super().__init__()
        self.config = config
        self.embed_in = nn.Embedding(config.vocab_size, config.hidden_size)  # no position table: RoPE
        self.emb_dropout = nn.Dropout(config.hidden_dropout)
        self.layers = nn.ModuleList(Block(config, i, backend) for i in range(config.num_hidden_layers))
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids, attention_mask=None, position_ids=None, kv_cache=None,
                output_attentions=False, output_hidden_states=False):
        """The final hidden states (B, T, C). With output_hidden_states or output_attentions (transformers'
        flags), (those, hidden_states, attentions): n_layer + 1 × (B, T, C), each block's input and then the
        output (after final_layer_norm); n_layer × (B, nh, T, keys), keys = T plus any cached ones, on the
        attention backend "naive" only. What was not asked for is None. visualize.py draws them."""
        B, T = input_ids.shape
        past = kv_cache.seen if kv_cache is not None else 0
        check_shapes(input_ids, attention_mask, past, self.config.max_position_embeddings)  # (attention.py)
        if position_ids is None:
            # (Rotated q.k depends only on the distance between query and key, so a row's offset from left
            # padding would change nothing but rounding; we count as transformers does, to match its angles.)
            position_ids = positions_from_mask(attention_mask, past, T, input_ids.device)
        x = self.emb_dropout(self.embed_in(input_ids))  # (B, T, C)
        # Computed once per forward pass, shared by every layer (no buffer: nothing to fix after loading
        # on the meta device, and the angles stay fp32 whatever the model's dtype).
        rotary = rotary_cos_sin(position_ids, self.config.rotary_ndims, self.config.rotary_emb_base, x.dtype)
        hidden_states = [] if output_hidden_states else None  # kept only when asked for: they cost memory
        attentions = [] if output_attentions else None  # each layer appends its probabilities
        for block in self.layers:
            if output_hidden_states:
                hidden_states.append(x)
            x = block(x, rotary, attention_mask, kv_cache, attentions)
        if kv_cache is not None:
            kv_cache.advance(T)
        x = self.final_layer_norm(x)
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


class GPTNeoXForCausalLM(nn.Module):
    def __init__(self, config, backend="sdpa"):
        super().__init__()
        self.config = config
        self.gpt_neox = GPTNeoXModel(config, backend)
        self.embed_out = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.tie_weights()

    def tie_weights(self):
        if self.config.tie_word_embeddings:  # off in every NeoX/Pythia model: embed_out is its own matrix
            self.embed_out.weight = self.gpt_neox.embed_in.weight

    # Copied from gpt2.py
    def forward(self, input_ids, attention_mask=None, position_ids=None, kv_cache=None, labels=None,
                output_attentions=False, output_hidden_states=False, logits_to_keep=0):
        """Logits (B, T, V); with `labels`, (logits, loss). With output_attentions / output_hidden_states,
        the backbone's hidden states and attentions follow (None where not asked for). logits_to_keep=n:
        the logits of the last n positions only (generation needs 1: the LM head is the largest matmul)."""
        out = self.gpt_neox(input_ids, attention_mask, position_ids, kv_cache, output_attentions,
                               output_hidden_states)
        inspect = output_attentions or output_hidden_states  # out is then (h, hidden_states, attentions)
        h = out[0] if inspect else out  # (B, T, C)
        logits = self.embed_out(h[:, -logits_to_keep:])  # (B, T, V), or (B, logits_to_keep, V)
        outputs = (logits,) if labels is None else (logits, lm_loss(logits, labels))
        if inspect:
            return outputs + out[1:]
        return logits if labels is None else outputs

    def set_attention_backend(self, backend):
        if backend not in BACKENDS:
            raise ValueError(f"unknown attention backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        for block in self.gpt_neox.layers:
            block.attention.backend = backend

    def make_cache(self, static_len=None):
        """A growing KV cache, or a preallocated one of `static_len` positions."""
        if static_len is None:
            return DynamicCache(self.config.num_hidden_layers)
        return StaticCache(self.config.num_hidden_layers, static_len)


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
        return init_weights(GPTNeoXForCausalLM(config, attn)).train()


# Tensor parallel (tp.py, under torchrun): how a block's layers split over the N processes. "colwise": the
# layer's outputs (heads, MLP columns) are divided among the processes; "rowwise": its inputs are, and an
# all-reduce sums the partial results. Every other tensor (embeddings, LayerNorms, LM head) is replicated.
TP_PLAN = {
    "attention.query_key_value": "colwise",  # rows by head, [q_0 k_0 v_0 | q_1 ...]: a plain cut keeps them
    "attention.dense": "rowwise",
    "mlp.dense_h_to_4h": "colwise",
    "mlp.dense_4h_to_h": "rowwise",
}


# ============================================================================= the lesson ends here
# What follows is GPT-NeoX's side of what the three model files share: config.json's names and checks, the
# Hub's names for the weights (both ways), and thin entry points. The shared work is written once, in
# checkpoint.py (reading and writing the Hub's files) and generation.py (sampling and the command line).
# A definition marked "Copied from gpt2.py" equals gpt2.py's after these renames (tests/test_shared_sections.py):
# Renames: GPT2Config -> GPTNeoXConfig, GPT2LMHeadModel -> GPTNeoXForCausalLM,
#   n_positions -> max_position_embeddings, n_layer -> num_hidden_layers, n_head -> num_attention_heads,
#   transformer -> gpt_neox, lm_head -> embed_out, wte -> embed_in, ln_f -> final_layer_norm

import sys  # noqa: E402  (the lesson above needs only torch, attention.py and kv_cache.py)
from functools import partial  # noqa: E402
from pathlib import Path  # noqa: E402

import checkpoint  # noqa: E402
import generation  # noqa: E402

# ----------------------------------------------------------------------------- config.json


ACTIVATIONS.update(checkpoint.ACTIVATIONS)  # every activation function a config.json may name

# config.json files written by transformers >= 5 hold the rotary settings as rope_parameters =
# {rope_theta, partial_rotary_factor, rope_type}; the Hub's own files have rotary_emb_base and
# rotary_pct. The dict wins where both are given, as in transformers' convert_rope_params_to_dict.
ROPE_PARAMETERS = {"rope_theta": "rotary_emb_base", "partial_rotary_factor": "rotary_pct"}


def read_config(d):
    """config.json's object -> a GPTNeoXConfig: unknown keys ignored, every value checked."""
    checkpoint.check_model_type(d, GPTNeoXConfig.MODEL_TYPE)
    rope = d.get("rope_scaling") or d.get("rope_parameters") or {}  # older files call it rope_scaling
    if not isinstance(rope, dict):
        raise ValueError(f"config.json: rope_parameters must be an object, got {rope!r}")
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":  # linear / dynamic / yarn ... scaling of long-context fine-tunes
        raise ValueError(f"config.json asks for rope_type={rope_type!r}, which gpt_neox.py does not "
                         "implement (only the default rotary embeddings)")
    d = {**d, **{ours: rope[theirs] for theirs, ours in ROPE_PARAMETERS.items() if theirs in rope}}
    config = checkpoint.config_from_dict(GPTNeoXConfig, d)
    if config.hidden_size % config.num_attention_heads:
        raise ValueError(f"hidden_size={config.hidden_size} is not divisible by "
                         f"num_attention_heads={config.num_attention_heads}")
    checkpoint.check_activation(config.hidden_act, "hidden_act")
    if not 0 <= config.rotary_pct <= 1 or config.rotary_ndims % 2:
        hd = config.hidden_size // config.num_attention_heads
        raise ValueError(f"rotary_pct={config.rotary_pct} of head size {hd} gives {config.rotary_ndims} "
                         "rotary dims: rotary_pct must be in [0, 1] and the rotary dims even (they turn "
                         "in pairs)")
    return config


def load_config(directory):
    """The checkpoint directory's config.json, read and checked."""
    return read_config(checkpoint.read_json_object(Path(directory) / "config.json"))

# ----------------------------------------------------------------------------- the Hub's names


PYTHIA_SIZES = ["70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b"]  # each also "-deduped"
HUB_MODELS = {
    "gpt-neox-20b": "EleutherAI/gpt-neox-20b",  # 20.6B, sharded
    "pythia-14m": "EleutherAI/pythia-14m",  # two small ones added to the suite later
    "pythia-31m": "EleutherAI/pythia-31m",
    **{f"pythia-{size}": f"EleutherAI/pythia-{size}" for size in PYTHIA_SIZES},
    **{f"pythia-{size}-deduped": f"EleutherAI/pythia-{size}-deduped" for size in PYTHIA_SIZES},
}
DEFAULT_MODEL = "EleutherAI/pythia-160m"
OFFLINE_MODEL = "models/pydoc-gpt-neox"  # a GPT-NeoX trained here and shipped: it samples without a network

# Buffers that files written by older transformers hold (Pythia's do): the causal mask, and RoPE's
# inverse frequencies (often in fp16 there). We build masks and rotary angles on the fly.
BUFFERS = (".attention.bias", ".attention.masked_bias", ".rotary_emb.inv_freq")


def convert_hub_state_dict(state_dict, config):
    """Hub keys -> this file's module names. They are the same (gpt_neox.layers.0.attention.dense.weight ...)
    and the tensors are in nn.Linear's layout (GPT-NeoX was written in PyTorch, unlike GPT-2): old buffers
    are dropped, and transformers >= 5's in-memory name lm_head is mapped back to the Hub's embed_out."""
    out = {}
    for key, tensor in state_dict.items():
        if key.endswith(BUFFERS):  # (the projections' biases end in ".dense.bias", ".query_key_value.bias")
            continue
        if key.startswith("lm_head."):
            key = "embed_out." + key.removeprefix("lm_head.")  # transformers >= 5's name for it in memory
        elif not key.startswith(("gpt_neox.", "embed_out.")):
            key = "gpt_neox." + key  # a file saved from the bare GPTNeoXModel has no "gpt_neox." prefix
        out[key] = tensor
    if config.tie_word_embeddings:
        out.pop("embed_out.weight", None)  # the same matrix as embed_in, when a file holds both
    return out


def hub_state_dict(model):
    """This file's names and layouts -> the Hub's, as transformers writes them (convert_hub_state_dict
    undone): the same names and layouts, a tied embed_out left out (it is embed_in)."""
    state_dict = model.state_dict()
    if model.config.tie_word_embeddings:
        state_dict.pop("embed_out.weight", None)
    return state_dict


def inspected_parts(model):
    """What visualize.py draws from: the backbone, and the final LayerNorm and LM head of its logit lens."""
    return model.gpt_neox, model.gpt_neox.final_layer_norm, model.embed_out

# ----------------------------------------------------------------------------- entry points


# Copied from gpt2.py
def from_pretrained(name_or_path, *, revision=None, device="cpu", dtype=None, attn="sdpa", quantize=None,
                    config=None, split=True):
    """The model from a Hub name/id or a local directory with config.json and weights (checkpoint.load
    says how): dtype a torch.dtype or its name, float32 by default; quantize "int8" | "int4" (quantize.py,
    bfloat16 by default); config: the directory's GPTNeoXConfig if the caller has read it already. Under
    torchrun each process loads its share of a tensor-parallel model (tp.py); split=False loads the whole
    model in every process (data parallel: train.py)."""
    checkpoint.check_options(attn, quantize)
    directory = checkpoint.checkpoint_dir(name_or_path, revision, HUB_MODELS, OFFLINE_MODEL)
    config = config or load_config(directory)
    return checkpoint.load(directory, config, partial(GPTNeoXForCausalLM, config, attn), convert_hub_state_dict,
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
