"""The parity harness every model test shares: write a `transformers` reference model to disk exactly as
Hub repos hold it (in each layout real repos use), and compare our outputs with the reference's.

Layouts:
    safetensors   save_pretrained: config.json + model.safetensors
    sharded       save_pretrained with a small max_shard_size: model-0000k-of-0000n.safetensors + index json
    bin           config.json + pytorch_model.bin (torch.save of the state dict, as older repos hold it)
    bin_sharded   pytorch_model-0000k-of-0000n.bin + pytorch_model.bin.index.json
    bin_legacy    pytorch_model.bin in torch's pre-1.6 format (not a zip file), as many old repos hold it
`transform(state_dict) -> state_dict` rewrites the tensors before they are written, for the quirks of
older files (keys without the "transformer." prefix, causal-mask buffers, ...).
"""
import json
import tempfile
from pathlib import Path

import torch
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

LAYOUTS = ("safetensors", "sharded", "bin", "bin_sharded", "bin_legacy")
TOL = 1e-4  # fp32: max |Δ| allowed between our outputs and the reference's
LARGEST = {}  # test name -> largest |Δ| seen, printed at the end of the run (see conftest.py)


def hub_state_dict(model):
    """The tensors save_pretrained writes (tied duplicates dropped, names as on the Hub)."""
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        return {k: v.clone() for k, v in load_file(Path(d) / "model.safetensors").items()}


def save_checkpoint(model, directory, layout="safetensors", transform=None):
    directory = Path(directory)
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout}")
    if transform is None and layout == "safetensors":
        model.save_pretrained(directory)
        return directory
    if transform is None and layout == "sharded":
        total = sum(t.numel() * t.element_size() for t in hub_state_dict(model).values())
        model.save_pretrained(directory, max_shard_size=total // 3 + 1)
        assert (directory / "model.safetensors.index.json").exists(), "expected a sharded checkpoint"
        return directory
    model.config.architectures = [type(model).__name__]  # as save_pretrained writes it; heads.py reads it
    model.config.save_pretrained(directory)
    state_dict = hub_state_dict(model)
    if transform is not None:
        state_dict = transform(state_dict)
    state_dict = {k: v.contiguous() for k, v in state_dict.items()}
    suffix = ".safetensors" if layout in ("safetensors", "sharded") else ".bin"  # (bin_legacy: below)
    stem = "model" if suffix == ".safetensors" else "pytorch_model"
    if layout in ("safetensors", "bin"):
        _write(state_dict, directory / f"{stem}{suffix}")
        return directory
    if layout == "bin_legacy":
        torch.save(state_dict, directory / "pytorch_model.bin", _use_new_zipfile_serialization=False)
        return directory
    keys = list(state_dict)
    groups = [keys[i::3] for i in range(3)]  # three shards
    weight_map = {}
    for i, group in enumerate(groups, start=1):
        name = f"{stem}-{i:05d}-of-{len(groups):05d}{suffix}"
        _write({k: state_dict[k] for k in group}, directory / name)
        weight_map.update(dict.fromkeys(group, name))
    total = sum(t.numel() * t.element_size() for t in state_dict.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / f"{stem}{suffix}.index.json").write_text(json.dumps(index, indent=2))
    return directory


def _write(state_dict, path):
    if path.suffix == ".safetensors":
        save_file(state_dict, path, metadata={"format": "pt"})
    else:
        torch.save(state_dict, path)


def assert_close(ours, ref, name, mask=None, tol=TOL):
    """max |ours - ref| <= tol (over the positions where mask is True); records the largest seen."""
    assert ours.shape == ref.shape, f"{name}: shape {tuple(ours.shape)} vs reference {tuple(ref.shape)}"
    diff = (ours.float() - ref.float()).abs()
    if mask is not None:
        diff = diff[mask]
    worst = diff.max().item() if diff.numel() else 0.0
    LARGEST[name] = max(LARGEST.get(name, 0.0), worst)
    assert worst <= tol, f"{name}: max |Δ| = {worst:.3g} > {tol}"
    return worst


@st.composite
def batches(draw, vocab_size, n_positions, min_len=1, max_batch=3):
    """Left-padded token batches: ids (B, T) and attention_mask (B, T), each row with >= 1 real token."""
    B = draw(st.integers(1, max_batch))
    T = draw(st.integers(min(min_len, n_positions), n_positions))
    ids = torch.tensor(draw(st.lists(st.lists(st.integers(0, vocab_size - 1), min_size=T, max_size=T),
                                     min_size=B, max_size=B)))
    pads = draw(st.lists(st.integers(0, T - 1), min_size=B, max_size=B))
    mask = torch.tensor([[0] * p + [1] * (T - p) for p in pads])
    return ids, mask


def reference_positions(mask):
    """The positions transformers' generate() derives from a mask; we pass them to its forward, which
    would otherwise count the padding."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


class Evil:
    """A pickle that runs code when loaded: a .bin holding it must be refused (weights_only=True)."""
    def __reduce__(self):
        return (exec, ("import os; os.environ['EVIL_RAN'] = '1'",))


def recording_compile(graphs):
    """A stand-in for torch.compile: dynamo captures the graphs as usual (fullgraph=True still refuses a
    graph break), they are appended to `graphs` and run as captured, without inductor (cheap, any config;
    so inductor's `options` are dropped)."""
    real_compile = torch.compile

    def compile(fn, options=None, **kwargs):
        def backend(graph_module, example_inputs):
            graphs.append(graph_module)
            return graph_module.forward
        return real_compile(fn, backend=backend, **kwargs)
    return compile


def tiny_gpt2_with_tokenizer(directory, tokenizer_dir, n_head=2):
    """A tiny random GPT-2 checkpoint (the real vocabulary's 50257 rows) with the real GPT-2 tokenizer
    files beside it: what the command-line tests run."""
    import shutil

    import transformers
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_positions=32, n_embd=16, n_layer=2, n_head=n_head, initializer_range=0.5)
    save_checkpoint(transformers.GPT2LMHeadModel(config).eval(), directory)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(Path(tokenizer_dir) / name, Path(directory) / name)
    return directory
