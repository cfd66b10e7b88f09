"""The Hub's checkpoint files, read and written once for gpt2.py, gpt_neo.py and gpt_neox.py.

    directory = checkpoint_dir("openai-community/gpt2")   # a local directory as it is, or a Hub id downloaded
    model = load(directory, make_model, convert)          # what each model file's from_pretrained calls
    save_pretrained(model, directory, hub_state_dict)     # what each model file's save_pretrained calls

A checkpoint in the Hub's layout is a directory:

    config.json                      the architecture's fields (model_type names the model file)
    model.safetensors                the weights; or shards model-0000k-of-0000n.safetensors and their
                                     model.safetensors.index.json; or the older pytorch_model.bin (+ index)
    vocab.json + merges.txt,         the tokenizer (bpe.py reads it)
    or tokenizer.json

Each model file keeps what is its architecture's: config.json's fields and checks (`read_config`), the
Hub's names for its weights both ways (`convert_hub_state_dict`, `hub_state_dict`) and its tensor-parallel
plan. This file does the rest, the same for all three, in the order a load runs: find the directory (or
download it), read config.json, read the weights in whichever layout, check them against the model, put
them in place (split under tensor parallel, quantized if asked: tp.py and quantize.py); and, for a save,
write the Hub's layout atomically. transformers keeps the same split: its loading lives once, in
`PreTrainedModel`, and its modeling files hold the architecture.

Reads never write: loading creates, moves or deletes nothing in the checkpoint's directory. A save that
was killed after its commit is refused by a load, with the command that completes it
(`python checkpoint.py --finish DIR`); only a save, a training run or that command completes it, and only
in a directory that a save of ours marked as its own.
"""
import argparse
import errno
import importlib
import json
import math
import os
import pickle
import re
import shutil
import sys
import tempfile
import typing
import zipfile
from dataclasses import asdict, fields
from pathlib import Path

import torch
import torch.nn.functional as F

import hub
from attention import BACKENDS

# ----------------------------------------------------------------------------- the model files


# config.json's model_type -> the model file that reads it, by module name: imported only when asked for,
# so this file imports no model file (they import it).
MODEL_FILES = {"gpt2": "gpt2", "gpt_neo": "gpt_neo", "gpt_neox": "gpt_neox"}


def model_file(model_type):
    """The model file (a module) for config.json's model_type."""
    if model_type not in MODEL_FILES:
        raise ValueError(f"model_type {model_type!r} is not one of {', '.join(MODEL_FILES)}")
    return importlib.import_module(MODEL_FILES[model_type])

# ----------------------------------------------------------------------------- config.json


def read_json_object(path):
    """config.json (or another file that must hold an object), named when it is missing or is not one."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"no {Path(path).name} in {Path(path).parent}")
    d = hub.read_json(path)
    if not isinstance(d, dict):
        raise ValueError(f"{path} must hold a JSON object, not a {type(d).__name__}")
    return d


ACTIVATIONS = {
    # config.json's activation name -> the function, written out: every parameter-free one of transformers'
    # ACT2FN, which these three families accept by name (tests/test_hub_configs.py checks each against it).
    # Each model file's lesson defines the one its architecture uses; this is the full table.
    # GELU is x·Φ(x), Φ the standard normal CDF; the first eight names are GELU, exact or approximated.
    # Exact, in fp32 as torch's kernel computes it (in bf16 the rounded erfc argument is ~4% off at x = -3.5):
    "gelu": F.gelu,  # Pythia's and GPT-NeoX's: 0.5·x·erfc(-x / √2), torch's kernel (fp32 inside)
    "gelu_python": lambda x: 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0))),  # exact, in x's own dtype
    # Φ(x) ≈ (1 + tanh(√(2/π)·(x + 0.044715·x³))) / 2, the approximation GPT-2 and GPT-Neo were trained on:
    # (as 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x.pow(3.0)))): torch's one kernel
    # computes the same in one pass over the MLP's activations instead of eight)
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_accurate": lambda x: F.gelu(x, approximate="tanh"),  # other names for it
    "gelu_python_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),  # the same, by torch's name for it
    # The same approximation as Megatron factors it, √(2/π)·x·(1 + 0.044715·x²) with √(2/π) to 10 digits:
    # GPT-NeoX-20B's (it rounds apart from gelu_new by an ulp here and there).
    "gelu_fast": lambda x: 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x))),
    "gelu_10": lambda x: torch.clip(F.gelu(x), -10, 10),  # exact, clipped to [-10, 10]
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


def config_from_dict(cls, d, aliases=None):
    """config.json's object -> a `cls` config (a model file's dataclass): generic names mapped to the file's
    by `aliases`, unknown keys ignored, every value checked against its annotation. The model file checks
    what is its architecture's (read_config)."""
    check_model_type(d, cls.MODEL_TYPE)
    d = {(aliases or {}).get(k, k): v for k, v in d.items()}
    config = cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})  # unknown: ignored
    config.quantization_config = d.get("quantization_config")  # (not a field: asdict leaves it out)
    check_field_types(config)
    return config


def add_generic_names(cls, aliases):
    """Give a model file's config class the generic names of its fields (transformers' attribute_map): the
    shared modules read config.num_hidden_layers whatever the file calls it (GPT-2's n_layer)."""
    cls.GENERIC_NAMES = dict(aliases)
    for generic, ours in aliases.items():
        setattr(cls, generic, property(lambda config, ours=ours: getattr(config, ours)))


def own_name(config, generic):
    """The model file's name for a generic field, as its config.json spells it (n_layer for GPT-2's)."""
    return getattr(type(config), "GENERIC_NAMES", {}).get(generic, generic)


def check_model_type(d, model_type):
    """A config.json of another architecture is named as such, not reported as hundreds of missing keys."""
    if not isinstance(d, dict):
        raise ValueError(f"config.json must hold a JSON object, not a {type(d).__name__}")
    found = d.get("model_type", model_type)
    if found != model_type:
        use = f"use {MODEL_FILES[found]}.py" if found in MODEL_FILES else "none of this project's files reads it"
        raise ValueError(f"config.json is a {found!r} checkpoint, not {model_type!r}: {use}")


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


def check_activation(name, field):
    if name not in ACTIVATIONS:
        raise ValueError(f"{field} {name!r} is not one of {', '.join(ACTIVATIONS)}")

# ----------------------------------------------------------------------------- finding a checkpoint


WEIGHT_FILES = ["model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json"]
TOKENIZER_FILES = ["tokenizer.json", "vocab.json", "merges.txt"]


def checkpoint_dir(name_or_path, revision=None, hub_models=None, offline=None):
    """A local directory as it is, else a Hub repo id (or a short name from the model file's `hub_models`),
    downloaded. `offline`: the model file's shipped directory, named when the Hub cannot be reached."""
    hub_models = hub_models or {}
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if revision is not None:  # a directory is one revision already: refuse rather than ignore
            raise ValueError(f"revision {revision!r} names a Hub revision, but {name_or_path} is a local "
                             "directory; pass a Hub id to download that revision")
        check_no_unfinished_save(path)
        return path
    if isinstance(name_or_path, os.PathLike):  # a Path names a directory, never a Hub id
        raise FileNotFoundError(f"no such directory: {name_or_path}")
    repo_id = hub_models.get(name_or_path, name_or_path)
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id) or name_or_path.startswith((".", "/", "~")):
        if "/" in name_or_path or name_or_path.startswith("."):
            raise FileNotFoundError(f"no such directory: {name_or_path}")
        short = f"use one of {', '.join(hub_models)}, " if hub_models else "use "
        raise ValueError(f"unknown model {name_or_path!r}: {short}a Hub id such as openai-community/gpt2, or "
                         "a local directory")
    return download(repo_id, revision, offline)


def download(repo_id, revision=None, offline=None):
    """Fetch only what we need (config, one weights format, tokenizer) with huggingface_hub (hub.py); offline,
    its cache."""
    def choose(files):
        weights = [f for f in WEIGHT_FILES if f in files][:1]
        if not weights:
            raise FileNotFoundError(f"{repo_id} has none of {', '.join(WEIGHT_FILES)}")
        shards = {"model.safetensors.index.json": ["model-*.safetensors"],
                  "pytorch_model.bin.index.json": ["pytorch_model-*.bin"]}.get(weights[0], [])
        return ["config.json", *weights, *shards, *(f for f in TOKENIZER_FILES if f in files)]
    hint = (f"; {offline}, the model of this architecture shipped here, is such a directory and works "
            "offline") if offline else ""
    return hub.download(repo_id, revision, choose, "config.json and the weights", hint)

# ----------------------------------------------------------------------------- reading the weights


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
    sizes = [(directory / s).stat().st_size if (directory / s).is_file() else 0 for s in shards]
    with hub.progress(0 if lazy else sum(sizes), f"reading {directory.name}") as bar:
        for shard, size in zip(shards, sizes):
            state_dict.update(read_weights_file(directory / shard, lazy))
            bar.update(size)
    return state_dict


def weights_bytes(directory):
    """The size of the checkpoint's weight files on disk (what the CLI sizes its threads by)."""
    return sum(f.stat().st_size for f in Path(directory).iterdir()
               if f.is_file() and (f.suffix in (".safetensors", ".bin")))


def shard_names(index_path):
    """The files a sharded checkpoint's index maps its tensors to: plain names of files beside it (a path
    such as ../x or /x would read outside the checkpoint, so it is refused)."""
    index = hub.read_json(index_path)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
        raise ValueError(f"{index_path} has no \"weight_map\" of tensor names to shard files")
    names = sorted(set(weight_map.values()))
    for name in names:
        if Path(name).name != name or name in ("", ".", ".."):
            raise ValueError(f"{index_path} names the shard {name!r}: shards must be files in the "
                             "checkpoint's own directory")
    return names


def read_weights_file(path, lazy=False):
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    if not path.is_file():
        raise FileNotFoundError(f"missing checkpoint file {path}")
    try:
        if path.suffix == ".safetensors":
            state_dict = tensor_parallel().open_safetensors(path) if lazy else load_file(path)
        else:
            state_dict = torch_load(path, mmap=zipfile.is_zipfile(path))
    except (SafetensorError, RuntimeError, EOFError, ValueError, OSError) as e:
        raise ValueError(f"cannot read {path}: corrupted or truncated weights file ({first_line(e)})") from None
    kinds = (torch.Tensor, tensor_parallel().CheckpointTensor) if lazy else torch.Tensor
    if not isinstance(state_dict, dict) or not all(
            isinstance(k, str) and isinstance(v, kinds) for k, v in state_dict.items()):
        raise ValueError(f"{path} does not hold a dict of tensors")
    return state_dict


def torch_load(path, mmap=False):
    """A .bin / .pt file: a pickle, read with weights_only, which refuses anything but tensors and plain
    containers, so no code in the file runs. Zip files (torch >= 1.6) can be memory-mapped; the older format,
    which many old Hub repos hold, is read whole. A file that pickles anything else is refused in one line
    (torch's own message goes on to suggest weights_only=False: exactly the unsafe thing)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError:
        raise ValueError(f"{path} holds pickled objects other than tensors, which are never unpickled here "
                         "(they could run code)") from None


def first_line(e):
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def check_state_dict(model, state_dict):
    """Strict: every parameter present with its shape, nothing left over; name what is wrong."""
    tied = dict(model.named_parameters(remove_duplicate=False)).keys() - dict(model.named_parameters()).keys()
    expected = {k: v.shape for k, v in model.state_dict().items() if k not in tied}  # a tied LM head: its embedding
    missing = sorted(expected.keys() - state_dict.keys())
    unexpected = sorted(state_dict.keys() - expected.keys())
    wrong = [f"{k}: file {tuple(state_dict[k].shape)} vs config {tuple(expected[k])}"
             for k in sorted(expected.keys() & state_dict.keys()) if state_dict[k].shape != expected[k]]
    problems = [f"{what} ({len(keys)}): {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"
                for what, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                   ("wrong shapes", wrong)) if keys]
    if problems:
        raise ValueError("checkpoint does not match config.json: " + "; ".join(problems))


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

# ----------------------------------------------------------------------------- loading


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def torch_dtype(dtype):
    """A torch.dtype from itself or its name ("bfloat16"); None is float32."""
    dtype = DTYPES.get(dtype, dtype) if isinstance(dtype, str) else dtype or torch.float32
    if dtype not in DTYPES.values():
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return dtype


def check_device(device):
    """The device exists here: --device cuda on a machine without CUDA is an error that says so."""
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError, ValueError) as e:  # AssertionError: torch built without CUDA
        raise ValueError(f"device {str(device)!r} is not available here ({first_line(e)})") from None


def tensor_parallel():
    """tp.py under torchrun (WORLD_SIZE > 1, or a process group joined), else None: a model file copied
    without tp.py runs everything but tensor parallel."""
    under_torchrun = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if not (under_torchrun or (torch.distributed.is_available() and torch.distributed.is_initialized())):
        return None
    return optional("tp")


def optional(name):
    """An optional module of this project (bpe, quantize, tp, visualize), or an error that names the file to
    copy beside the model file."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name != name:
            raise
        raise ValueError(f"this needs {name}.py: copy it from gpt-from-scratch beside the model file") from None


def check_options(attn="sdpa", quantize=None):
    """from_pretrained's choices, checked before anything is read."""
    if attn not in BACKENDS:
        raise ValueError(f"unknown attention backend {attn!r}; choose one of {', '.join(BACKENDS)}")
    if quantize is not None:
        optional("quantize").check_scheme(quantize)


def load(directory, config, make_model, convert, *, device="cpu", dtype=None, quantize=None, tp_plan=None):
    """The checkpoint in `directory` as a model: make_model() builds it on the meta device (shapes, no
    memory), convert(state_dict, config) maps the Hub's names to its module names, and the file's tensors
    are assigned in place, so the weights exist once in memory. dtype: a torch.dtype or its name; none given:
    float32, decoding with cpu_kernels.py's fp32 kernel where the CPU has it. With `quantize` ("int8" |
    "int4": quantize.py quantizes every weight matrix as it is read), or for a checkpoint saved quantized
    (read as it is), and no dtype: float32 around cpu_kernels.py's int8-activation kernels where the CPU has
    them, else bfloat16. A dtype given keeps PyTorch's kernels (the reference). tp_plan: under torchrun, each
    process takes its share of the layers the plan names (tp.py). Returns the model in eval() mode. (The
    callers check attn and quantize first.)"""
    saved = config.quantization_config  # a checkpoint saved quantized: integers and scales (quantize.py)
    check_device(device)
    given = dtype
    tp = tensor_parallel() if tp_plan is not None else None
    # cpu_kernels.py: not under tensor parallel, where each share of a layer would round its inputs in other blocks
    fast = bool(quantize or saved) and dtype is None and tp is None and optional("quantize").fast_kernels(device)
    if (quantize or saved) and dtype is None:  # fp32 around cpu_kernels.py's layers; PyTorch's want bf16
        dtype = torch.float32 if fast else torch.bfloat16
    dtype = torch_dtype(dtype)
    if tp:
        tp.check_heads(config.num_attention_heads)  # known before any reading: a bad N fails at once
    state_dict = read_state_dict(directory, lazy=tp is not None and tp.world_size() > 1)
    if config.num_hidden_layers > len(state_dict):  # every layer has tensors: what we build is bounded by the file
        raise ValueError(f"config.json says {own_name(config, 'num_hidden_layers')}={config.num_hidden_layers}, "
                         f"but the checkpoint holds only {len(state_dict)} tensors")
    with torch.device("meta"):
        model = make_model()
    state_dict = convert(state_dict, config)
    if saved:  # integers and scales as save_pretrained wrote them: read, not quantized again
        model = optional("quantize").load_saved(model, state_dict, saved, dtype, device, quantize, fast)
        return remember_source(model, directory).eval()
    check_state_dict(model, state_dict)
    splits = {}
    if tp:
        state_dict, splits = tp.shard(model, tp_plan, state_dict)  # this process's share, read by slices
    if quantize is not None:  # every weight matrix quantized as it is read: no full-precision copy
        model = optional("quantize").load_quantized(model, state_dict, quantize, dtype, device, splits=splits,
                                                    int8_activations=fast)
        return remember_source(model, directory).eval()
    state_dict = {k: v.to(dtype) for k, v in state_dict.items()}
    check_finite(state_dict, dtype)
    model.load_state_dict(state_dict, strict=False, assign=True)
    model.tie_weights()  # assign=True replaced the embedding: point a tied LM head at the new tensor
    model = remember_source(model, directory).to(device).eval()
    kernels = cpu_kernels_on(device) if given is None and tp is None else None
    return kernels.use_fp32_kernel(model) if kernels else model  # decoding reads fp32 weights 1.6-3.6x faster


def cpu_kernels_on(device):
    """cpu_kernels.py, where it runs on `device`: the file is beside this one (it is optional) and the CPU has
    its instructions; else None."""
    try:
        kernels = importlib.import_module("cpu_kernels")
    except ModuleNotFoundError:
        return None
    return kernels if kernels.runs_on(device) else None


def remember_source(model, directory):
    """save_pretrained carries the tokenizer of the directory a model came from (transformers keeps
    config._name_or_path for the same reason)."""
    model.source_directory = Path(directory)
    return model

# ----------------------------------------------------------------------------- saving


def hub_config(model):
    """config.json as transformers writes it: the config's fields, and what names the class to load."""
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    return {"architectures": [type(model).__name__], "model_type": model.config.MODEL_TYPE, "dtype": dtype,
            **asdict(model.config)}


# The Hub's weight files as huggingface_hub names them: an earlier save's are replaced by this one's.
WEIGHTS = re.compile(r"model(-\d{5}-of-\d{5})?\.safetensors(\.index\.json)?")


def save_pretrained(model, directory, hub_state_dict, *, max_shard_size="5GB", config=None, tokenizer=True):
    """Write a Hub checkpoint that transformers' from_pretrained and ours both load: config.json (or the
    dict `config`) and model.safetensors, or, above max_shard_size (bytes or "5GB"), the shards
    model-0000k-of-0000n.safetensors and model.safetensors.index.json (huggingface_hub does the split).
    hub_state_dict(model): the model file's names -> the Hub's. A model loaded from a directory with a
    tokenizer gets that tokenizer's files beside it (tokenizer=False: not), so the saved directory samples.
    Through write_files: a kill or a full disk leaves the previous checkpoint whole, and a model can be
    saved into the directory it was loaded (or memory-mapped) from."""
    from huggingface_hub import save_torch_state_dict

    config = config or hub_config(model)
    quantized = hasattr(model, "quantization_config")
    if quantized:  # integers and scales in compressed-tensors' layout, made and written a shard at a time
        config = optional("quantize").quantized_config(model, config)
    tokenizer_files = source_tokenizer(model, directory) if tokenizer else {}

    def write(tmp):
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        if quantized:
            optional("quantize").save_quantized(model, tmp, max_shard_size)
        else:
            # contiguous copies of views (GPT-2's Conv1D weights transposed back): huggingface_hub takes views
            # into one block of memory (cpu_kernels.py's 2 MB pages) for tied tensors, and refuses them
            tensors = {k: v.contiguous() for k, v in hub_state_dict(model).items()}
            save_torch_state_dict(tensors, tmp, max_shard_size=max_shard_size)
        for name, data in tokenizer_files.items():
            (tmp / name).write_bytes(data)
    stale = [f.name for f in Path(directory).iterdir() if WEIGHTS.fullmatch(f.name)] \
        if Path(directory).is_dir() else []
    if tokenizer_files:  # one set: a tokenizer.json would outrank a new vocab.json + merges.txt, and so on
        stale += [f for f in TOKENIZER_FILES if (Path(directory) / f).exists()]
    return write_files(directory, write, remove=stale)


def source_tokenizer(model, directory):
    """{name: bytes} of the tokenizer files in the directory `model` was loaded from, as one set; none if it
    was not loaded (or is saved into that same directory)."""
    source = getattr(model, "source_directory", None)
    if source is None or not source.is_dir() or source.resolve() == Path(directory).resolve():
        return {}
    for names in (["tokenizer.json"], ["vocab.json", "merges.txt"]):  # bpe.py's order
        if all((source / n).is_file() for n in names):
            return {n: (source / n).read_bytes() for n in names}
    return {}

# ----------------------------------------------------------------------------- atomic writes


TEMPORARY = ".tmp-save-"  # write_files: a set of new files being written (not yet whole)
COMMITTED = ".tmp-committed"  # write_files: a whole set of new files, not yet all moved into place
MANIFEST = ".manifest.json"  # inside it: the files of the set, and the old files it replaces


def write_files(directory, write, remove=()):
    """Write a set of files into `directory` so that a kill or a full disk at any moment leaves one whole
    checkpoint, old or new: `write(tmp)` writes them into a new temporary directory inside `directory`;
    once all are written (and synced), a manifest names them and the old files they replace (`remove`),
    the directory is renamed COMMITTED (the commit: one atomic rename), each file is renamed over its
    namesake (os.replace is atomic, and a memory map of the old file keeps the old contents), the old
    files are deleted, and COMMITTED goes last. Until then a load refuses the directory; finish_write
    completes the move. A kill before the commit leaves the old files as they were (and a TEMPORARY
    directory, which train.py --resume removes). A full disk is "no space left on <directory>". Returns the names
    written."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    finish_write(directory)  # an earlier write of ours killed while moving: complete it first
    tmp = Path(tempfile.mkdtemp(prefix=TEMPORARY, dir=directory))
    try:
        try:
            write(tmp)
            names = sorted(f.name for f in tmp.iterdir())
            (tmp / MANIFEST).write_text(json.dumps({"files": names, "remove": sorted(set(remove) - set(names))}))
            for f in tmp.iterdir():
                with open(f, "rb") as opened:
                    os.fsync(opened.fileno())  # on the disk before the rename makes it the file
        except Exception as e:
            if disk_full(e, directory):
                full = OSError(f"no space left on {directory}")
                full.errno = errno.ENOSPC
                raise full from None
            raise
        tmp.rename(directory / COMMITTED)
        return finish_write(directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def disk_full(e, directory):
    """Whether a write failed for want of space: ENOSPC, or what torch and safetensors make of it
    ("unexpected pos ...") on a disk that has (nearly) nothing left."""
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return True
    return isinstance(e, (OSError, RuntimeError)) and shutil.disk_usage(directory).free < 2**20


def committed_manifest(directory):
    """The manifest of a committed write_files in `directory`, checked: the set is ours, and every name in it
    is a plain file name. None when there is none; ValueError when COMMITTED is not one of our sets."""
    committed = Path(directory) / COMMITTED
    if not committed.is_dir():
        return None
    if not any(committed.iterdir()):  # a finish killed after its last step but one: nothing left to move
        return {"files": [], "remove": []}
    try:
        manifest = json.loads((committed / MANIFEST).read_text())
        names, remove = manifest["files"], manifest["remove"]
        ok = all(isinstance(n, str) and Path(n).name == n and n not in ("", ".", "..", MANIFEST)
                 for n in [*names, *remove])
    except (OSError, ValueError, KeyError, TypeError):
        ok = False
    left = {f.name for f in committed.iterdir()} - {MANIFEST}
    if not ok or not left <= set(names):
        raise ValueError(f"{committed} was not written by this project's save (no manifest naming its files): "
                         "nothing was touched; look at it and remove it yourself")
    return manifest


def finish_write(directory):
    """Complete a committed write_files in `directory` (one that our save marked as its own with a
    manifest): move its files into place, delete the old files it replaces, then COMMITTED. Returns the
    names written (none if nothing was committed)."""
    manifest = committed_manifest(directory)
    if manifest is None:
        return []
    directory, committed = Path(directory), Path(directory) / COMMITTED
    for name in manifest["files"]:
        if (committed / name).exists():  # (a name moved by an earlier, killed finish is in place already)
            os.replace(committed / name, directory / name)
    for name in manifest["remove"]:
        (directory / name).unlink(missing_ok=True)
    (committed / MANIFEST).unlink(missing_ok=True)
    committed.rmdir()  # the last step: until here, a load refuses the directory
    return manifest["files"]


def check_no_unfinished_save(directory):
    """A load refuses a directory that holds a committed but unfinished save: reading it would mix old and
    new files, and completing it would write where we only read."""
    if (Path(directory) / COMMITTED).exists():
        raise ValueError(f"{directory} holds a save that was interrupted after its commit ({COMMITTED}); "
                         f"complete it with: python checkpoint.py --finish {directory}")


def main(argv=None):
    p = argparse.ArgumentParser(description="Complete a save that was interrupted after its commit.")
    p.error = lambda message: sys.exit(f"error: {message}")
    p.add_argument("--finish", metavar="DIR", required=True, help="the checkpoint directory")
    args = p.parse_args(argv)
    try:
        names = finish_write(args.finish)
    except (ValueError, OSError) as e:
        sys.exit(f"error: {e}")
    print(f"{args.finish}: " + (f"completed the save of {', '.join(names)}" if names else "no unfinished save"))


if __name__ == "__main__":
    main()
