"""What the hostile trial found, and its kin: reads never write, recovery only in our own directories, one
error line (or a specific exception) for every bad input, and state a user can pass twice."""
import errno
import os
import pickle
import subprocess
import sys
import threading

import pytest
import torch

import checkpoint
import generation
import gpt2
import quantize
import train
from conftest import ROOT

PYDOC = ROOT / "models" / "pydoc-gpt2"


def tiny(seed=0):
    torch.manual_seed(seed)
    return gpt2.from_config(gpt2.GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2, n_positions=32))


def snapshot(directory):
    """Every file under `directory`, with its bytes: what a read must leave as it was."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}

# ----------------------------------------------------------------------------- reads never write


def test_a_load_of_an_unfinished_save_refuses_and_touches_nothing(tmp_path):
    gpt2.save_pretrained(tiny(0), tmp_path)
    committed = tmp_path / checkpoint.COMMITTED
    committed.mkdir()
    (committed / "model.safetensors").write_bytes(b"new")
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match=r"complete it with: python checkpoint.py --finish"):
        gpt2.from_pretrained(tmp_path)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("case", ["notes", "save-named", "paper"])
def test_resume_in_a_directory_that_is_not_a_run_touches_nothing(case, tmp_path):
    """--resume on a directory of the user's: .tmp-notes/ is not deleted, nor a directory named as our
    saves' temporary ones are (the directory is not a run: nothing there is ours), and a .tmp-committed/
    that our save did not write is not moved over paper.txt."""
    out = tmp_path / "out"
    if case != "paper":
        name = ".tmp-notes" if case == "notes" else checkpoint.TEMPORARY + "mine"
        (out / name).mkdir(parents=True)
        (out / name / "important.txt").write_text("keep me")
    else:
        (out / checkpoint.COMMITTED).mkdir(parents=True)
        (out / checkpoint.COMMITTED / "paper.txt").write_text("draft 2")
        (out / "paper.txt").write_text("draft 1")
    before = snapshot(out)
    with pytest.raises(SystemExit) as e:
        train.main(["--out", str(out), "--resume"])
    assert str(e.value.code).startswith("error: ") and "\n" not in str(e.value.code)
    assert snapshot(out) == before


def test_finish_refuses_a_committed_directory_that_is_not_ours(tmp_path, capsys):
    (tmp_path / checkpoint.COMMITTED).mkdir()
    (tmp_path / checkpoint.COMMITTED / "x.txt").write_text("mine")
    with pytest.raises(SystemExit) as e:
        checkpoint.main(["--finish", str(tmp_path)])
    assert "was not written by this project's save" in str(e.value.code)
    assert (tmp_path / checkpoint.COMMITTED / "x.txt").read_text() == "mine"

# ----------------------------------------------------------------------------- one line for bad input


def test_a_full_disk_is_named_as_such(tmp_path, monkeypatch):
    import huggingface_hub

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    gpt2.save_pretrained(tiny(0), tmp_path)
    before = snapshot(tmp_path)
    monkeypatch.setattr(huggingface_hub, "save_torch_state_dict", full)
    with pytest.raises(OSError, match=f"no space left on {tmp_path}"):
        gpt2.save_pretrained(tiny(1), tmp_path)
    assert snapshot(tmp_path) == before  # the old checkpoint, and nothing left of the new one


class Payload:
    def __reduce__(self):
        return (print, ("this ran",))


@pytest.mark.parametrize("name", ["pytorch_model.bin", "train_state.pt"])
def test_an_unsafe_pickle_is_one_line_without_unsafe_advice(name, tmp_path):
    with open(tmp_path / name, "wb") as f:
        pickle.dump({"x": Payload()}, f)
    with pytest.raises(ValueError) as e:
        if name == "train_state.pt":
            train.read_state(tmp_path)
        else:
            checkpoint.read_weights_file(tmp_path / name)
    message = str(e.value)
    assert "\n" not in message and "weights_only" not in message and "never unpickled" in message


def test_a_tampered_optimizer_state_is_one_line(tmp_path):
    model = tiny(0)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.tensor([[1, 2]]), labels=torch.tensor([[1, 2]]))[1].backward()
    optimizer.step()
    good = optimizer.state_dict()
    bad_shape = {**good, "state": {**good["state"], 0: {**good["state"][0],
                                                         "exp_avg": torch.zeros(3)}}}
    for state in ([1, 2], {"state": 5, "param_groups": []}, bad_shape):
        fresh = torch.optim.AdamW(tiny(0).parameters())
        with pytest.raises(ValueError, match="optimizer state"):
            train.load_optimizer_state(fresh, state, tmp_path / "train_state.pt")


def test_an_error_mid_sample_starts_on_its_own_line(monkeypatch, capsys):
    def failing(*args, on_token=None, **kwargs):
        on_token(torch.tensor([42]))
        raise RuntimeError("the device went away")
    monkeypatch.setattr(generation, "generate", failing)
    with pytest.raises(SystemExit) as e:
        gpt2.main(["--model", str(PYDOC), "--prompt", "The with", "--max-new-tokens", "3"])
    assert str(e.value.code) == "error: the device went away"
    assert capsys.readouterr().out.endswith("\n")  # the echoed prompt's line is ended first


def test_save_refuses_a_directory_that_holds_anything(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    result = subprocess.run([sys.executable, "gpt2.py", "--model", str(PYDOC), "--save", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and result.stderr.strip().splitlines() == [
        f"error: --save {tmp_path}: it exists and is not an empty directory (nothing there is overwritten); "
        "choose a new directory"]
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]

# ----------------------------------------------------------------------------- state passed twice


def test_a_kv_cache_passed_to_a_second_call_is_refused():
    model = gpt2.from_pretrained(PYDOC)
    ids = torch.tensor([[5, 6, 7]])
    cache = model.make_cache()
    first = gpt2.generate(model, ids, 4, temperature=0, kv_cache=cache)
    with pytest.raises(ValueError, match="kv_cache holds 6 tokens of an earlier call"):
        gpt2.generate(model, ids, 4, temperature=0, kv_cache=cache)
    assert torch.equal(first, gpt2.generate(model, ids, 4, temperature=0))  # a new cache: the same tokens
    static = model.make_cache(static_len=7)
    assert torch.equal(first, gpt2.generate(model, ids, 4, temperature=0, kv_cache=static))
    with pytest.raises(ValueError, match="earlier call"):
        gpt2.generate(model, ids, 4, temperature=0, kv_cache=static)


def test_a_generator_in_use_by_another_call_is_refused():
    """Two calls at once on one generator: the second is refused while the first samples (its draws would
    interleave with the other's); one after the other, the generator simply goes on."""
    model = gpt2.from_pretrained(PYDOC)
    generator = torch.Generator().manual_seed(0)
    inside, release, errors = threading.Event(), threading.Event(), []

    def on_token(_):
        inside.set()
        release.wait(30)
    first = threading.Thread(target=gpt2.generate, args=(model, torch.tensor([[5, 6]]), 2),
                             kwargs=dict(generator=generator, on_token=on_token))
    first.start()
    assert inside.wait(30)
    try:
        gpt2.generate(model, torch.tensor([[5, 6]]), 2, generator=generator)
    except ValueError as e:
        errors.append(str(e))
    release.set()
    first.join(30)
    assert errors == ["this Generator is in use by another generate call: give each call its own"]
    gpt2.generate(model, torch.tensor([[5, 6]]), 2, generator=generator)  # free again

# ----------------------------------------------------------------------------- saved models sample


def test_a_saved_quantized_model_samples_with_its_tokenizer(tmp_path):
    """--quantize int8 --save DIR carries the tokenizer along, and DIR samples as it is; the speed line
    says which dtype --quantize chose."""
    saved = tmp_path / "int8"
    run = [sys.executable, "gpt2.py", "--max-new-tokens", "5", "--temperature", "0", "--prompt", "The with"]
    result = subprocess.run([*run, "--model", str(PYDOC), "--quantize", "int8", "--save", str(saved)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stderr.strip() == f"saved {saved} (int8)", result.stderr
    assert {"vocab.json", "merges.txt", "config.json", "model.safetensors"} <= {p.name for p in saved.iterdir()}
    direct = subprocess.run([*run, "--model", str(PYDOC), "--quantize", "int8"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    reloaded = subprocess.run([*run, "--model", str(saved)], cwd=ROOT, capture_output=True, text=True,
                              timeout=120)
    assert reloaded.returncode == 0 and reloaded.stdout == direct.stdout, reloaded.stderr
    activations = ("int8 activations in the layers (cpu_kernels.py), float32 between" if quantize.fast_kernels("cpu")
                   else "bfloat16 activations")
    assert f"(int8 weights, {activations}: --quantize's default; --dtype float32: weight-only)" in direct.stderr


def test_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert generation.choose_threads(3, 0) == 3
    assert generation.choose_threads(None, 1000) == 1  # a small model: one thread
    monkeypatch.setattr(generation, "busy_cores", lambda seconds=0.1: 1.0)
    monkeypatch.setattr(generation.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert generation.choose_threads(None, 2**30) == 1  # two cores, one of them busy
    monkeypatch.setattr(generation, "busy_cores", lambda seconds=0.1: 0.1)
    assert generation.choose_threads(None, 2**30) == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert generation.choose_threads(None, 2**30) == torch.get_num_threads()  # the user's setting stands
    with pytest.raises(ValueError, match="--threads must be >= 1"):
        generation.choose_threads(0, 0)
    assert 0 <= generation.busy_cores(0.05) <= (os.cpu_count() or 1)



def test_a_checkpoint_without_a_tokenizer_names_the_files_to_copy(tmp_path):
    gpt2.save_pretrained(tiny(0), tmp_path)  # made here, not loaded: no tokenizer goes along
    result = subprocess.run([sys.executable, "gpt2.py", "--model", str(tmp_path)], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: no tokenizer files in")
    assert f"copy the tokenizer files of the checkpoint this model came from (vocab.json and merges.txt, or " \
           f"tokenizer.json) into {tmp_path}; {ROOT / 'models' / 'gpt2-tokenizer'} holds GPT-2's" in lines[0]
