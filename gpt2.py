"""GPT-2 in one file: config, model, loading the Hub's checkpoints, generation and a sampling CLI.

    python gpt2.py --prompt "The meaning of life is" --max-new-tokens 40

GPT-2 (Radford et al. 2019, "Language Models are Unsupervised Multitask Learners") is a decoder-only
transformer: token + learned position embeddings, n_layer pre-LayerNorm blocks of causal self-attention
and an MLP, a final LayerNorm, and an LM head that shares its matrix with the token embedding:

    ids ─ wte + wpe ─┬─ [ x + attn(ln_1(x)) ; x + mlp(ln_2(x)) ] × n_layer ─ ln_f ─ lm_head ─ logits
                      positions 0..T-1

Notation: B batch, T tokens, C n_embd, nh n_head, hd head size (C / nh), V vocab_size.
The module names are the Hub's state-dict keys (transformer.h.0.attn.c_attn.weight ...), so loading is a
load_state_dict after one visible key transform (`convert_hub_state_dict`).
"""
import argparse
import json
import math
import pickle
import re
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from attention import BACKENDS, attention
from kv_cache import DynamicCache, StaticCache

# ----------------------------------------------------------------------------- config


@dataclass
class GPT2Config:
    """The fields of the Hub's config.json that the architecture reads; defaults are GPT-2 small (124M)."""
    vocab_size: int = 50257
    n_positions: int = 1024
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
    eos_token_id: int | None = 50256
    # Training only (no-ops in eval() mode): dropout rates, and the std of a new model's weights.
    embd_pdrop: float = 0.1  # on the embeddings
    attn_pdrop: float = 0.1  # on the attention probabilities
    resid_pdrop: float = 0.1  # on each sublayer's output, before it joins the residual stream
    initializer_range: float = 0.02
    model_type = "gpt2"  # (not a field) config.json's name for this architecture

    # Newer config.json files may use the generic names; they mean the same fields.
    ALIASES = {"hidden_size": "n_embd", "num_hidden_layers": "n_layer", "num_attention_heads": "n_head",
               "max_position_embeddings": "n_positions"}
    # Options the Hub config can switch on that this file does not implement: refuse rather than ignore.
    UNSUPPORTED = {"add_cross_attention": False}

    @classmethod
    def from_dict(cls, d):
        for key, default in cls.UNSUPPORTED.items():
            if d.get(key, default) != default:
                raise ValueError(f"config.json sets {key}={d[key]!r}, which gpt2.py does not implement")
        d = {cls.ALIASES.get(k, k): v for k, v in d.items()}
        config = cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})  # unknown keys ignored
        if config.n_embd % config.n_head:
            raise ValueError(f"n_embd={config.n_embd} is not divisible by n_head={config.n_head}")
        if config.activation_function not in ACTIVATIONS:
            raise ValueError(f"activation_function {config.activation_function!r} is not one of "
                             f"{', '.join(ACTIVATIONS)}")
        return config

    @classmethod
    def from_json(cls, path):
        return cls.from_dict(json.loads(Path(path).read_text()))


ACTIVATIONS = {
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),  # GPT-2's: the tanh approximation of GELU
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
}

# ----------------------------------------------------------------------------- model


class CausalSelfAttention(nn.Module):
    def __init__(self, config, layer_idx, backend="sdpa"):
        super().__init__()
        self.n_head = config.n_head
        self.layer_idx = layer_idx
        self.backend = backend
        # GPT-2 stores these as Conv1D (weight (in, out)); we use nn.Linear (out, in) and transpose on load.
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)  # q, k, v for all heads at once
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        hd = config.n_embd // config.n_head
        self.scale = 1.0 / math.sqrt(hd) if config.scale_attn_weights else 1.0
        if config.scale_attn_by_inverse_layer_idx:  # an option of the Mistral/Stanford GPT-2 runs
            self.scale /= layer_idx + 1
        self.upcast = config.reorder_and_upcast_attn  # scores in fp32 even when the model runs in fp16
        self.dropout_p = config.attn_pdrop  # on the attention probabilities, in training only
        self.resid_dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x, attention_mask=None, kv_cache=None):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)  # 3 × (B, T, C)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hd)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_idx, k, v)  # (B, nh, T_past + T, hd)
        if self.upcast:
            q, k, v = q.float(), k.float(), v.float()
        y = attention(q, k, v, backend=self.backend, causal=True, padding_mask=attention_mask, scale=self.scale,
                      dropout_p=self.dropout_p if self.training else 0.0)
        y = y.to(x.dtype).transpose(1, 2).reshape(B, T, C)  # (B, T, nh, hd) -> (B, T, C): heads side by side
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        n_inner = config.n_inner or 4 * config.n_embd
        self.c_fc = nn.Linear(config.n_embd, n_inner)
        self.c_proj = nn.Linear(n_inner, config.n_embd)
        self.act = ACTIVATIONS[config.activation_function]
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

    def forward(self, x, attention_mask=None, kv_cache=None):
        x = x + self.attn(self.ln_1(x), attention_mask, kv_cache)  # pre-LN: normalise, transform, add
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT2Model(nn.Module):
    """The backbone: ids -> final hidden states (B, T, C). The task heads in heads.py sit on top of it."""

    def __init__(self, config, backend="sdpa"):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)  # learned absolute positions
        self.drop = nn.Dropout(config.embd_pdrop)
        self.h = nn.ModuleList(Block(config, i, backend) for i in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)

    def forward(self, input_ids, attention_mask=None, position_ids=None, kv_cache=None):
        B, T = input_ids.shape
        past = kv_cache.seen if kv_cache is not None else 0
        check_inputs(input_ids, attention_mask, past, self.config.n_positions)
        if position_ids is None:
            position_ids = positions_from_mask(attention_mask, past, T, input_ids.device)
        x = self.drop(self.wte(input_ids) + self.wpe(position_ids))  # (B, T, C)
        for block in self.h:
            x = block(x, attention_mask, kv_cache)
        if kv_cache is not None:
            kv_cache.advance(T)
        return self.ln_f(x)


def check_inputs(input_ids, attention_mask, past, n_positions):
    B, T = input_ids.shape
    if past + T > n_positions:
        raise ValueError(f"sequence of {past + T} tokens is longer than the context n_positions={n_positions}")
    if attention_mask is not None and attention_mask.shape != (B, past + T):
        raise ValueError(f"attention_mask must be (B, past + T) = ({B}, {past + T}), got "
                         f"{tuple(attention_mask.shape)}")


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
        if self.config.tie_word_embeddings:  # GPT-2 reads its output scores off the embedding matrix
            self.lm_head.weight = self.transformer.wte.weight

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


def lm_loss(logits, labels):
    """Next-token cross-entropy: position t predicts labels[t + 1]; labels of -100 are ignored."""
    logits = logits[:, :-1].float()  # (B, T-1, V), fp32 for a stable log-softmax
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1), ignore_index=-100)

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


def from_config(config, *, device="cpu", attn="sdpa"):
    """A new model of this config's shape, initialised as the reference does, in train() mode."""
    with torch.device(device):
        return init_weights(GPT2LMHeadModel(config, attn)).train()

# ----------------------------------------------------------------------------- loading and saving

HUB_MODELS = {
    "gpt2": "openai-community/gpt2",  # 124M
    "gpt2-medium": "openai-community/gpt2-medium",  # 355M
    "gpt2-large": "openai-community/gpt2-large",  # 774M
    "gpt2-xl": "openai-community/gpt2-xl",  # 1558M
    "distilgpt2": "distilbert/distilgpt2",  # 82M
}
WEIGHT_FILES = ["model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json"]
TOKENIZER_FILES = ["tokenizer.json", "vocab.json", "merges.txt"]


def checkpoint_dir(name_or_path, revision=None):
    """A local directory as it is, else a Hub repo id (or a short name from HUB_MODELS), downloaded."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if revision is not None:  # a directory is one revision already: refuse rather than ignore
            raise ValueError(f"revision {revision!r} names a Hub revision, but {name_or_path} is a local "
                             "directory; pass the Hub id (openai-community/gpt2) to download that revision")
        return path
    repo_id = HUB_MODELS.get(name_or_path, name_or_path)
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id) or name_or_path.startswith((".", "/", "~")):
        if "/" in name_or_path or name_or_path.startswith("."):
            raise FileNotFoundError(f"no such directory: {name_or_path}")
        raise ValueError(f"unknown model {name_or_path!r}: use one of {', '.join(HUB_MODELS)}, a Hub id "
                         "such as openai-community/gpt2, or a local directory")
    return download(repo_id, revision)


def download(repo_id, revision=None):
    """Fetch only what we need (config, one weights format, tokenizer) with huggingface_hub; offline, use
    its cache."""
    from huggingface_hub import list_repo_files, snapshot_download
    try:
        files = set(list_repo_files(repo_id, revision=revision))
    except Exception as online_error:  # no network, unknown repo, ...: the local cache is the last chance
        try:
            return Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
        except Exception:
            reason = (str(online_error).strip().splitlines() or [type(online_error).__name__])[0]
            raise OSError(f"could not get {repo_id} from the Hugging Face Hub ({reason}) and it is not in the "
                          "local cache; download it while online, or pass a local directory holding "
                          "config.json and the weights (--model /path/to/dir)") from None
    weights = [f for f in WEIGHT_FILES if f in files][:1]
    if not weights:
        raise FileNotFoundError(f"{repo_id} has none of {', '.join(WEIGHT_FILES)}")
    shards = {"model.safetensors.index.json": ["model-*.safetensors"],
              "pytorch_model.bin.index.json": ["pytorch_model-*.bin"]}.get(weights[0], [])
    patterns = ["config.json", *weights, *shards, *(f for f in TOKENIZER_FILES if f in files)]
    return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))


def read_state_dict(directory):
    """Every tensor in the checkpoint, whichever of the Hub's layouts the directory holds."""
    directory = Path(directory)
    for name in WEIGHT_FILES:
        if (directory / name).exists():
            break
    else:
        raise FileNotFoundError(f"no weights in {directory}: expected one of {', '.join(WEIGHT_FILES)}")
    if name.endswith(".index.json"):  # sharded: the index maps each tensor to its shard file
        shards = sorted(set(json.loads((directory / name).read_text())["weight_map"].values()))
    else:
        shards = [name]
    state_dict = {}
    for shard in shards:
        state_dict.update(read_weights_file(directory / shard))
    return state_dict


def read_weights_file(path):
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    if not path.exists():
        raise FileNotFoundError(f"missing checkpoint file {path}")
    try:
        if path.suffix == ".safetensors":
            return load_file(path)
        # .bin files are pickles: weights_only refuses anything but tensors, so no code runs on load.
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (SafetensorError, pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as e:
        raise ValueError(f"cannot read {path}: corrupted or truncated weights file ({e})") from None


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


def from_pretrained(name_or_path, *, revision=None, device="cpu", dtype=None, attn="sdpa"):
    """GPT-2 from a Hub name/id or a local directory with config.json and weights (fp32 unless `dtype`)."""
    if attn not in BACKENDS:
        raise ValueError(f"unknown attention backend {attn!r}; choose one of {', '.join(BACKENDS)}")
    directory = checkpoint_dir(name_or_path, revision)
    if not (directory / "config.json").exists():
        raise FileNotFoundError(f"no config.json in {directory}")
    config = GPT2Config.from_json(directory / "config.json")
    with torch.device("meta"):  # shapes only: the real tensors come from the file, never a second copy
        model = GPT2LMHeadModel(config, attn)
    state_dict = convert_hub_state_dict(read_state_dict(directory), config)
    check_state_dict(model, state_dict)
    dtype = dtype or torch.float32
    model.load_state_dict({k: v.to(dtype) for k, v in state_dict.items()}, strict=False, assign=True)
    model.tie_weights()  # assign=True replaced wte.weight: point lm_head at the new tensor
    return model.to(device).eval()


def hub_state_dict(model):
    """This file's names and layouts -> the Hub's, as transformers writes them (convert_hub_state_dict
    undone): Conv1D weights transposed back to (in, out), a tied lm_head left out (it is wte)."""
    state_dict = model.state_dict()
    if model.config.tie_word_embeddings:
        state_dict.pop("lm_head.weight", None)
    return {k: v.t() if k.endswith(TRANSPOSED) else v for k, v in state_dict.items()}


def hub_config(model):
    """config.json as transformers writes it: the config's fields, and what names the class to load."""
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    return {"architectures": [type(model).__name__], "model_type": model.config.model_type, "dtype": dtype,
            **asdict(model.config)}


def save_pretrained(model, directory, *, max_shard_size="5GB", config=None):
    """Write a Hub checkpoint that transformers' from_pretrained and ours both load: config.json (or the
    dict `config`) and model.safetensors, or, above max_shard_size (bytes or "5GB"), the shards
    model-0000k-of-0000n.safetensors and model.safetensors.index.json (huggingface_hub does the split)."""
    from huggingface_hub import save_torch_state_dict
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config or hub_config(model), indent=2) + "\n")
    save_torch_state_dict(hub_state_dict(model), directory, max_shard_size=max_shard_size)

# ----------------------------------------------------------------------------- generation


def check_sampling(temperature, top_k, top_p):
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 is greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
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
    h = model.transformer(x, attention_mask, kv_cache=kv_cache)  # (B, T, C)
    return model.lm_head(h[:, -1])  # (B, V)


@torch.no_grad()
def generate(model, input_ids, max_new_tokens, *, attention_mask=None, temperature=1.0, top_k=None,
             top_p=None, eos_token_id=None, generator=None, on_token=None, kv_cache=None, compile=False):
    """Extend input_ids (B, T) by up to max_new_tokens; returns (B, T + new). Prompts in a batch are
    left-padded, with attention_mask 0 on the padding. A row that emitted eos_token_id continues with
    eos_token_id; generation stops when every row has. on_token(ids (B,)) is called after each step.
    compile=True decodes over a StaticCache's full buffer with a torch.compile'd step (gpt-fast): the same
    tokens, faster once compiled; the first call compiles, which takes a while."""
    check_sampling(temperature, top_k, top_p)
    B, T = input_ids.shape
    n_positions = model.config.n_positions
    if T >= n_positions:
        raise ValueError(f"prompt is {T} tokens, longer than the context of {n_positions} tokens "
                         "(it needs room for at least one new token)")
    if T + max_new_tokens > n_positions:
        raise ValueError(f"prompt ({T} tokens) + max_new_tokens ({max_new_tokens}) exceeds the context of "
                         f"{n_positions} tokens")
    training = model.training
    model.eval()  # no dropout while sampling; the mode is given back at the end
    if kv_cache is None:
        kv_cache = model.make_cache(static_len=T + max_new_tokens if compile else None)
    step = last_logits
    logits = last_logits(model, input_ids, attention_mask, kv_cache)  # the whole prompt at once: (B, V)
    if compile:  # from here on, every step has the same shapes: compiled once, replayed each token
        if not isinstance(kv_cache, StaticCache) or kv_cache.max_len < T + max_new_tokens:
            raise ValueError("compile=True needs a StaticCache of at least prompt + max_new_tokens positions "
                             "(model.make_cache(static_len=...)), or none")
        kv_cache.start_full_buffer()
        # The mask spans the whole buffer: 1 on the real tokens so far, 0 on padding and on unwritten slots.
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        attention_mask = F.pad(mask, (0, kv_cache.max_len - T))  # (B, max_len)
        # On CUDA, "reduce-overhead" also records the step's kernels as a CUDA graph: one launch per token.
        mode = "reduce-overhead" if input_ids.is_cuda else None
        step = torch.compile(last_logits, fullgraph=True, mode=mode)
    ids = input_ids
    done = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
    for i in range(max_new_tokens):
        next_id = sample_next(logits, temperature, top_k, top_p, generator)  # (B,)
        if eos_token_id is not None:
            next_id = next_id.masked_fill(done, eos_token_id)
            done = done | (next_id == eos_token_id)
        ids = torch.cat([ids, next_id[:, None]], dim=1)
        if on_token is not None:
            on_token(next_id)
        if done.all() or i == max_new_tokens - 1:
            break
        if compile:
            attention_mask[:, T + i] = 1  # the slot next_id is written to
        elif attention_mask is not None:
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(B, 1)], dim=1)
        logits = step(model, next_id[:, None], attention_mask, kv_cache)  # (B, V)
    model.train(training)
    return ids

# ----------------------------------------------------------------------------- command line

DEFAULT_MODEL = "gpt2"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=DEFAULT_MODEL, help="a Hub name/id or a local checkpoint directory")
    p.add_argument("--revision", default=None, help="a Hub branch, tag or commit")
    p.add_argument("--prompt", default="Hello, I'm a language model,")
    p.add_argument("--max-new-tokens", type=int, default=50)
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--temperature", type=float, default=1.0, help="0 is greedy")
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=DTYPES)
    p.add_argument("--attn", default="sdpa", choices=BACKENDS)
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the one-token decode step (compiling takes a while, once per run)")
    return p.parse_args(argv)


def main(argv=None):
    from bpe import StreamDecoder, Tokenizer
    args = parse_args(argv)
    try:
        check_sampling(args.temperature, args.top_k, args.top_p)
        if args.max_new_tokens < 1 or args.num_samples < 1:
            raise ValueError("--max-new-tokens and --num-samples must be >= 1")
        directory = checkpoint_dir(args.model, args.revision)
        tokenizer = Tokenizer.from_pretrained(directory)
        model = from_pretrained(directory, device=args.device, dtype=DTYPES[args.dtype], attn=args.attn)
        prompt = tokenizer.encode(args.prompt, allowed_special="all") or [tokenizer.eos_token_id]
        input_ids = torch.tensor([prompt], device=args.device)
        generator = torch.Generator(args.device).manual_seed(args.seed)
        for i in range(args.num_samples):
            stream = StreamDecoder(tokenizer)
            print(("-" * 40 + "\n") * (i > 0) + args.prompt, end="", flush=True)
            t0 = time.perf_counter()
            out = generate(model, input_ids, args.max_new_tokens, temperature=args.temperature,
                           top_k=args.top_k, top_p=args.top_p, eos_token_id=model.config.eos_token_id,
                           generator=generator, compile=args.compile,
                           on_token=lambda t: print(stream.push(int(t[0])), end="", flush=True))
            print(stream.flush(), flush=True)
            n, seconds = out.size(1) - input_ids.size(1), time.perf_counter() - t0
            print(f"[{n} tokens in {seconds:.2f}s: {n / seconds:.1f} tokens/s]", file=sys.stderr)
    except (ValueError, OSError, RuntimeError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
