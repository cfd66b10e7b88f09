"""save_pretrained writes through write_files (the model files' shared section): a kill at any moment of a
save leaves the previous checkpoint whole; a model saved into the directory it is memory-mapped from does
not change what the map reads; an earlier save's other shards are removed, nothing else."""
import signal

import pytest
import torch

import checkpoint
import generation
from safetensors import safe_open
from safetensors.torch import load_file
from test_train import start_and_stop_at

import gpt2
import gpt_neox

CONFIG = dict(vocab_size=64, n_embd=16, n_layer=1, n_head=2, n_positions=32)


def tiny(seed):
    torch.manual_seed(seed)
    return gpt2.from_config(gpt2.GPT2Config(**CONFIG))


# Saves model 0 into the directory, then model 1 into it, stopping (to be killed) at a moment of the second
# save: during the weights write (half a file written), or after the first file moved into place.
KILLED_SAVE = r"""
import os, sys, time
import safetensors.torch, torch
import gpt2
moment, marker, directory = sys.argv[1:]
config = gpt2.GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2, n_positions=32)
models = []
for seed in (0, 1):
    torch.manual_seed(seed)
    models.append(gpt2.from_config(config))
gpt2.save_pretrained(models[0], directory)

def stop_here():
    open(marker, "w").close()
    time.sleep(300)

real_save_file, real_replace = safetensors.torch.save_file, os.replace
def save_file(tensors, filename, metadata=None):
    with open(filename, "wb") as f:
        f.write(b"\0" * 100)
    stop_here()
def replace(src, dst):
    real_replace(src, dst)
    stop_here()
if moment == "weights":
    safetensors.torch.save_file = save_file
else:
    os.replace = replace
gpt2.save_pretrained(models[1], directory)
"""


@pytest.mark.parametrize("moment", ["weights", "rename"])
def test_a_killed_save_leaves_a_whole_checkpoint(moment, tmp_path):
    """kill -9 during save_pretrained: the previous weights are there as they were (huggingface_hub's writer
    alone removed them first); after the commit every file is whole, old or new, a load refuses the
    directory until `python checkpoint.py --finish` (or the next save) completes the move."""
    directory = tmp_path / "model"
    code, _ = start_and_stop_at(moment, [directory], tmp_path / "marker", script=KILLED_SAVE)
    assert code == -signal.SIGKILL
    first, second = (gpt2.hub_state_dict(tiny(seed)) for seed in (0, 1))
    # the previous weights, whole (in "rename", config.json was moved first: the same file in both saves)
    weights = load_file(directory / "model.safetensors")
    assert all(torch.equal(weights[k], first[k]) for k in first)
    if moment == "rename":  # committed: a load refuses (never a mix), naming the command that completes it
        with pytest.raises(ValueError, match=f"complete it with: python checkpoint.py --finish {directory}"):
            gpt2.from_pretrained(directory)
        assert (directory / checkpoint.COMMITTED).is_dir()  # (the refusal touched nothing)
        checkpoint.main(["--finish", str(directory)])
        assert torch.equal(gpt2.from_pretrained(directory).transformer.wte.weight, second["transformer.wte.weight"])
        assert not (directory / checkpoint.COMMITTED).exists()
        weights = load_file(directory / "model.safetensors")
        assert all(torch.equal(weights[k], second[k]) for k in second)
    else:
        assert torch.equal(gpt2.from_pretrained(directory).transformer.wte.weight, first["transformer.wte.weight"])
    gpt2.save_pretrained(tiny(2), directory)  # a committed leftover is moved in first, then replaced
    names = sorted(f.name for f in directory.iterdir())
    # (an uncommitted .tmp-* stays, for its owner to delete: it may be another process's save in progress)
    assert [n for n in names if not n.startswith(".tmp-")] == ["config.json", "model.safetensors"]
    assert checkpoint.COMMITTED not in names and len(names) == 2 + (moment == "weights")


def test_saving_into_the_memory_mapped_source(tmp_path):
    """A model loaded (lazily, memory-mapped: tensor parallel's way) from a directory and saved back into it:
    the map still reads the old weights whole, the directory holds the new ones."""
    gpt2.save_pretrained(tiny(0), tmp_path)
    old = load_file(tmp_path / "model.safetensors")
    mapped = safe_open(tmp_path / "model.safetensors", framework="pt")  # an mmap of the file
    model = gpt2.from_pretrained(tmp_path)
    with torch.no_grad():
        model.transformer.wte.weight.mul_(2)
    gpt2.save_pretrained(model, tmp_path)
    assert all(torch.equal(mapped.get_tensor(k), old[k]) for k in old)
    new = load_file(tmp_path / "model.safetensors")
    assert torch.equal(new["transformer.wte.weight"], 2 * old["transformer.wte.weight"])


def test_an_earlier_saves_shards_go_and_nothing_else(tmp_path):
    torch.manual_seed(0)
    config = gpt_neox.GPTNeoXConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                    intermediate_size=32, max_position_embeddings=32)
    model = gpt_neox.from_config(config)
    gpt_neox.save_pretrained(model, tmp_path, max_shard_size=10_000)
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "model.safetensors.backup").write_text("mine too")
    assert (tmp_path / "model.safetensors.index.json").exists()
    gpt_neox.save_pretrained(model, tmp_path)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["config.json", "model.safetensors",
                                                            "model.safetensors.backup", "notes.txt"]
    assert torch.equal(gpt_neox.from_pretrained(tmp_path).embed_out.weight, model.embed_out.weight)


class Killed(Exception):
    """Stands for a kill -9 at an injected moment: nothing after it runs."""


@pytest.mark.parametrize("before, after", [("single", "sharded"), ("sharded", "single")])
def test_a_kill_at_every_rename_and_unlink_of_a_save(before, after, tmp_path, monkeypatch):
    """Each os.replace, unlink, rename and rmdir of a save, in turn, is where the save dies (by injection,
    not by timing). Whatever the moment, a load reads the old checkpoint or the new one, or refuses in one
    line; `python checkpoint.py --finish` then gives the new one. Old weight files never mix with new ones
    (a sharded save over a single file, and the reverse)."""
    import os
    from pathlib import Path
    shard = {"single": "5GB", "sharded": 3000}
    old_model, new_model = tiny(0), tiny(1)
    old_ids = torch.tensor([[1, 2, 3]])
    for name, model in (("old", old_model), ("new", new_model)):  # the logits as a load computes them
        gpt2.save_pretrained(model, tmp_path / name)
    old_logits, new_logits = (gpt2.from_pretrained(tmp_path / name)(old_ids) for name in ("old", "new"))
    real = {"replace": os.replace, "unlink": Path.unlink, "rename": Path.rename, "rmdir": Path.rmdir}
    moment = 0
    while True:
        directory = tmp_path / f"kill-{moment}"
        gpt2.save_pretrained(old_model, directory, max_shard_size=shard[before])
        calls = [0]

        def dying(name):
            def call(*args, **kwargs):
                if calls[0] == moment:
                    raise Killed(name)
                calls[0] += 1
                return real[name](*args, **kwargs)
            return call
        with monkeypatch.context() as m:
            m.setattr(os, "replace", dying("replace"))
            for name in ("unlink", "rename", "rmdir"):
                m.setattr(Path, name, dying(name))
            try:
                gpt2.save_pretrained(new_model, directory, max_shard_size=shard[after])
                finished = True
            except Killed:
                finished = False
        committed = (directory / checkpoint.COMMITTED).exists()
        try:
            logits = gpt2.from_pretrained(directory)(old_ids)
            assert torch.equal(logits, old_logits) or torch.equal(logits, new_logits), moment
            assert not committed
        except ValueError as e:
            assert committed and len(str(e).splitlines()) == 1, e
            assert f"complete it with: python checkpoint.py --finish {directory}" in str(e)
        checkpoint.finish_write(directory)
        logits = gpt2.from_pretrained(directory)(old_ids)  # committed: the new one; else the old one, whole
        assert torch.equal(logits, new_logits if committed or finished else old_logits), moment
        weights = {f.name for f in directory.iterdir() if checkpoint.WEIGHTS.fullmatch(f.name)}
        assert weights == ({"model.safetensors"} if (shard[after] if committed or finished else shard[before])
                           == "5GB" else {f for f in weights if "-of-" in f or f.endswith("index.json")}), weights
        if finished:
            break
        moment += 1
    assert moment >= 3  # the commit's rename, a move into place, and an old file's removal at least

