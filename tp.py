"""Tensor parallel: one model split over N processes, each holding 1/N of every block's weights.

    torchrun --nproc-per-node 2 gpt_neox.py --model EleutherAI/pythia-1b      # the usual flags
    torchrun --nproc-per-node 4 gpt_neox.py --model EleutherAI/gpt-neox-20b --device cuda --dtype bfloat16

Megatron-LM's split (Shoeybi et al. 2019), as gpt-fast's tp.py applies it: an unchanged model, whose
nn.Linear layers are cut to this process's share at load time. The math, for y = x W^T + b with W (out, in):

    colwise   W split by its rows (output features): process r computes y_r = x W_r^T + b_r, a slice of y.
    rowwise   W split by its columns (input features): process r holds the slice x_r of the input and
              computes x_r W_r^T; summed over r that is x W^T (a matmul is a sum over the inputs), so an
              all-reduce adds the N partial results and the bias is added once, after it.

A block uses each twice. Attention: the heads are independent of each other, so q, k, v are colwise by
heads, every process attends with its own heads, and the output projection is rowwise (its input is the
heads side by side: exactly the slice this process computed). MLP: the first layer colwise (the activation
is elementwise, so it applies to a slice as well), the second rowwise. Two all-reduces per block, nothing
else travels; embeddings, LayerNorms and the LM head are replicated (every process holds them whole).

Which layer splits how is architecture, so each model file has its TP_PLAN table; this file is the
machinery, the same for all three. The model code takes its head count from the tensors
(`view(B, T, -1, hd)`), so it runs unchanged on a share of the heads.

Every process computes the same logits (an all-reduce gives every process the same sum), so with the same
seed every process samples the same tokens and they stay in step; rank 0 prints.
"""
import gc
import hashlib
import json
import os
import socket
import time
from datetime import timedelta
from typing import Callable, NamedTuple

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

# ----------------------------------------------------------------------------- the process group


RENDEZVOUS_TIMEOUT = timedelta(seconds=30)  # joining: a peer that is not there (a launcher's environment
# left behind, a process that died at start) is an error after this, not a hang


def init(device="cpu", timeout=timedelta(minutes=10)):
    """Under torchrun (WORLD_SIZE > 1 in the environment): join the other processes and return this one's
    device (cuda:LOCAL_RANK for "cuda", one GPU per process). Otherwise nothing happens: `device` back.
    gloo on CPU, nccl on CUDA. Joining waits RENDEZVOUS_TIMEOUT for the others; a collective that waits
    longer than `timeout` for a peer fails instead of hanging (loading a large checkpoint comes before the
    first one: keep it generous)."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1 or joined():
        return device
    if device.startswith("cuda"):
        n_procs, n_gpus = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"])), torch.cuda.device_count()
        if n_procs > n_gpus:  # every process sees this, so rank 0 reports it
            raise ValueError(f"torchrun started {n_procs} processes on a machine with {n_gpus} CUDA devices: "
                             "tensor parallel needs one device per process")
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    except (KeyError, ValueError) as e:
        raise ValueError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} asks for tensor parallel, but the launcher's "
                         f"environment is incomplete ({e}): start with torchrun, or unset WORLD_SIZE") from None
    if device.startswith("cuda"):
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}"
        torch.cuda.set_device(device)
    # torchrun's agent holds the store (every process is its client); without the agent, rank 0 serves it
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    try:
        if agent or rank > 0:
            wait_for_store(host, port)  # (in Python: torch's client logs every failed try in C++ on stderr)
        store = dist.TCPStore(host, port, world, is_master=rank == 0 and not agent, timeout=RENDEZVOUS_TIMEOUT)
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo", store=store, rank=rank,
                                world_size=world, timeout=timeout)
    except (RuntimeError, OSError) as e:  # DistStoreError, a port in use, a peer that never came
        raise RuntimeError(f"could not join the other {world - 1} process(es) of WORLD_SIZE={world} at "
                           f"{host}:{port} within {RENDEZVOUS_TIMEOUT.seconds} s ({str(e).splitlines()[0]}): "
                           "start with torchrun, or unset WORLD_SIZE") from None
    return device


def wait_for_store(host, port):
    """Return once something listens at host:port; OSError after RENDEZVOUS_TIMEOUT."""
    deadline = time.monotonic() + RENDEZVOUS_TIMEOUT.total_seconds()
    while True:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise OSError("nobody is listening") from None
            time.sleep(0.1)


def agree(settings):
    """Every process of the job was started with the same settings (the same prompt, seed, model ...), or
    a ValueError now on every process: processes that disagree would wait for each other at a collective
    until its timeout."""
    mine = json.dumps(settings, sort_keys=True, default=str)
    everyone = [None] * world_size()
    dist.all_gather_object(everyone, hashlib.sha256(mine.encode()).hexdigest())
    if len(set(everyone)) > 1:
        raise ValueError(f"the {world_size()} processes of this torchrun job were started with different "
                         "flags or inputs: every process must get the same command line")


def joined():
    return dist.is_available() and dist.is_initialized()  # (some torch builds have no torch.distributed)


def world_size():
    return dist.get_world_size() if joined() else 1


def rank():
    return dist.get_rank() if joined() else 0


def finish():
    """Leave the process group while Python is fully alive. Whatever still holds the group's work (a DDP
    model, a compiled step) is collected first: freed only at interpreter exit, gloo's threads abort."""
    if joined():
        gc.collect()
        dist.destroy_process_group()

# ----------------------------------------------------------------------------- the layers


def reduce(y):
    """The all-reduce of a layer split by its inputs: y becomes the sum over all processes, the same on each."""
    dist.all_reduce(y)  # in place


def row_max(absmax):
    """The max |w| of whole rows from each process's slices (quantize.py's int8 scales are per whole row)."""
    dist.all_reduce(absmax, op=dist.ReduceOp.MAX)


class RowwiseLinear(nn.Linear):
    """An nn.Linear holding a slice of the input features: partial results summed over the processes."""

    def forward(self, x):
        y = F.linear(x, self.weight)  # (..., out): this process's share of the sum over the inputs
        reduce(y)
        return y if self.bias is None else y + self.bias  # the bias once, not once per process


class Split(NamedTuple):
    """Where tensor parallel meets quantize.py: what a layer split by its inputs (rowwise) needs when it is
    quantized instead of kept as a RowwiseLinear. shard() returns one per such layer, and the loader hands
    them to quantize.load_quantized."""
    in_features: int  # the whole layer's inputs (int4 groups must not straddle the cut)
    reduce: Callable  # sums the partial results over the processes, before the bias
    row_max: Callable  # turns this slice's max |w| per row into the whole row's


def check_heads(n_head):
    """The N processes must share the attention heads evenly. Called before anything is read: a bad N fails
    at once."""
    if n_head % world_size():
        raise ValueError(f"tensor parallel over {world_size()} processes: the {n_head} attention heads do not "
                         f"split evenly; use a number of processes that divides {n_head}")


def shard(model, plan, state_dict):
    """Without torchrun, (`state_dict` as it is, {}). Under it: cut the layers that `plan` names in `model`
    (built on the meta device) to this process's share, and return the checkpoint's tensors for it (the
    slices of the split layers, the rest whole) and a Split for each layer split by its inputs. From
    safetensors only those slices are read (CheckpointTensor)."""
    if world_size() == 1:
        return state_dict, {}
    out, splits = {}, {}
    for name, style in layers_to_split(model, plan).items():
        old = model.get_submodule(name)
        has_bias = old.bias is not None
        if style == "rowwise":  # the input features are split; the bias stays whole
            start, n = share(old.in_features)
            new = RowwiseLinear(n, old.out_features, bias=has_bias, device="meta")
            splits[name] = Split(old.in_features, reduce, row_max)
            out[name + ".weight"] = take(state_dict.pop(name + ".weight"), 1, [(start, n)])
        else:  # the output features are split, and the bias with them
            blocks = 3 if style == "colwise_qkv" else 1  # [all q | all k | all v]: a share of each third
            size = old.out_features // blocks
            start, n = share(size)
            pieces = [(b * size + start, n) for b in range(blocks)]
            new = nn.Linear(old.in_features, n * blocks, bias=has_bias, device="meta")
            out[name + ".weight"] = take(state_dict.pop(name + ".weight"), 0, pieces)
            if has_bias:
                out[name + ".bias"] = take(state_dict.pop(name + ".bias"), 0, pieces)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, new)
    for key, tensor in state_dict.items():  # replicated
        out[key] = tensor.read() if isinstance(tensor, CheckpointTensor) else tensor
    return out, splits


def layers_to_split(model, plan):
    """{module name: style} for the layers of `model` that `plan` names, each checked to split evenly."""
    N = world_size()
    layers = {}
    for name, module in model.named_modules():
        style = next((s for suffix, s in plan.items() if name.endswith("." + suffix)), None)
        if style is None:
            continue
        n = module.in_features if style == "rowwise" else module.out_features
        pieces = 3 * N if style == "colwise_qkv" else N
        if n % pieces:
            raise ValueError(f"tensor parallel over {N} processes: {name} has {n} "
                             f"{'input' if style == 'rowwise' else 'output'} features, which do not split "
                             f"into {pieces} equal parts")
        layers[name] = style
    return layers


def share(n):
    """(start, length) of this process's share of n things."""
    return rank() * (n // world_size()), n // world_size()


def take(tensor, dim, pieces):
    """The pieces [(start, length), ...] of `tensor` along `dim`, concatenated: a new tensor."""
    return torch.cat([tensor.narrow(dim, start, n) for start, n in pieces], dim)

# ----------------------------------------------------------------------------- reading only what is needed


class CheckpointTensor:
    """A tensor of a safetensors file, not read yet: its shape, and slices read from the file on demand
    (safetensors' get_slice reads only the bytes of the slice). `.t()` transposes it, as GPT-2's loading
    does to its Conv1D weights, so the model files' key transforms run on it unchanged."""

    def __init__(self, path, file, name, transposed=False):
        self.path, self.file, self.name, self.transposed = path, file, name, transposed

    @property
    def shape(self):
        shape = torch.Size(self.file.get_slice(self.name).get_shape())
        return shape[::-1] if self.transposed else shape

    def t(self):
        return CheckpointTensor(self.path, self.file, self.name, not self.transposed)

    def narrow(self, dim, start, length):
        index = [slice(None)] * len(self.shape)
        index[len(index) - 1 - dim if self.transposed else dim] = slice(start, start + length)
        return self._read(lambda: self.file.get_slice(self.name)[tuple(index)])

    def read(self):
        return self._read(lambda: self.file.get_tensor(self.name))

    def _read(self, read):
        try:
            tensor = read()
        except Exception as e:  # SafetensorError: the header promised more bytes than the file holds
            raise ValueError(f"cannot read {self.path}: corrupted or truncated weights file ({e})") from None
        return tensor.t() if self.transposed else tensor


def open_safetensors(path):
    """{name: CheckpointTensor} for every tensor of a safetensors file; only its header is read."""
    from safetensors import safe_open
    f = safe_open(path, framework="pt")
    return {name: CheckpointTensor(path, f, name) for name in f.keys()}
