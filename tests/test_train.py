"""train.py on real text (the Python reference manual in the standard library), tiny models: the loss goes
down for each architecture, from scratch and fine-tuning; --resume continues exactly; two DDP processes
take the step one process takes on the combined batch; bad input is one error line."""
import csv
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydoc_data.topics
import pytest
import torch

import checkpoint
import generation
import transformers
from conftest import ROOT, SHARED
from safetensors.torch import load_file

import bpe
import gpt2
import gpt_neo
import train

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

TEXT = "\n\n".join(pydoc_data.topics.topics.values())[:30_000]
LOOP = ["--block-size", "32", "--batch-size", "4", "--eval-batches", "2", "--sample-tokens", "8", "--log-every", "5"]
TINY = ["--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--vocab-size", "300", *LOOP]  # a new model


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on a shared CPU: one thread is faster than two that wait for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "topics.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def run(*argv):
    train.main([str(a) for a in argv])


def curve(out):
    with open(Path(out) / "loss.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neo", "gpt_neox"])
def test_from_scratch_loss_goes_down(arch, data, tmp_path):
    run("--data", data, "--out", tmp_path, "--arch", arch, *TINY, "--max-steps", 20, "--eval-every", 10,
        "--warmup", 5, "--lr", 1e-2)
    rows = curve(tmp_path)
    assert [int(r["step"]) for r in rows] == [0, 5, 10, 15, 20]
    val = [float(r["val_loss"]) for r in rows if r["val_loss"]]
    assert len(val) == 3 and val[-1] < val[0] - 1.0  # from ln(300) = 5.7 at step 0
    assert float(rows[-1]["train_loss"]) < float(rows[1]["train_loss"]) - 0.3
    # the checkpoint is a Hub checkpoint of that architecture, with its tokenizer beside it
    assert train.model_type(tmp_path) == arch
    model = checkpoint.model_file(arch).from_pretrained(tmp_path)
    tokenizer = bpe.Tokenizer.from_pretrained(tmp_path)
    assert model.config.vocab_size == tokenizer.vocab_size == 300
    assert (tmp_path / "train_state.pt").exists()


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neo", "gpt_neox"])
def test_fine_tune_a_checkpoint(arch, data, tmp_path):
    """--init a directory that transformers wrote (its model_type picks the model file) with a tokenizer."""
    tokenizer = bpe.train(TEXT, 300, special_tokens=["<|endoftext|>"])
    sizes = dict(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                 max_position_embeddings=64, intermediate_size=64, bos_token_id=299, eos_token_id=299)
    if arch == "gpt_neo":
        sizes |= dict(num_layers=2, num_heads=2, attention_types=[[["global", "local"], 1]], window_size=8)
    torch.manual_seed(0)
    ref = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(arch, **sizes))
    ref.save_pretrained(tmp_path / "init")
    tokenizer.save(tmp_path / "init")
    run("--data", data, "--out", tmp_path / "out", "--init", tmp_path / "init", *LOOP, "--max-steps", 20,
        "--eval-every", 10, "--warmup", 2, "--lr", 1e-2)
    val = [float(r["val_loss"]) for r in curve(tmp_path / "out") if r["val_loss"]]
    assert val[-1] < val[0]
    assert train.model_type(tmp_path / "out") == arch


RUN = ["--arch", "gpt2", *TINY, "--max-steps", 30, "--eval-every", 10, "--warmup", 5, "--dropout", 0.1]


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory):
    """An uninterrupted run of 30 steps (checkpoints at 10, 20, 30): what every interrupted run must equal."""
    out, threads = tmp_path_factory.mktemp("straight"), torch.get_num_threads()
    torch.set_num_threads(1)  # (as one_thread does for each test: the same float summation order)
    run("--data", data, *RUN, "--out", out)
    torch.set_num_threads(threads)
    return out


def assert_same_run(a, b):
    """Two runs logged the same losses and learning rates and ended with the same weights."""
    for x, y in zip(curve(a), curve(b), strict=True):
        assert [x[k] for k in ("step", "train_loss", "val_loss", "lr")] == [y[k] for k in ("step", "train_loss",
                                                                                    "val_loss", "lr")]
    wa, wb = load_file(Path(a) / "model.safetensors"), load_file(Path(b) / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_continues_where_it_stopped(data, straight, tmp_path):
    """A run stopped after step 10 and resumed with --out and --resume alone (its settings, optimizer state,
    schedule, batches and dropout from the checkpoint) logs the losses of the uninterrupted run."""
    run("--data", data, *RUN, "--out", tmp_path, "--stop-after", 10)
    assert [r["step"] for r in curve(tmp_path)] == ["0", "5", "10"]
    run("--out", tmp_path, "--resume")
    assert [r["step"] for r in curve(tmp_path)] == ["0", "5", "10", "15", "20", "25", "30"]
    assert_same_run(straight, tmp_path)


def test_resume_refuses_a_changed_setting(data, tmp_path, capsys):
    """A flag given again with another value is refused by name (or, for --max-steps and the few that may
    change, taken and printed); the same value is accepted."""
    run("--data", data, *RUN, "--out", tmp_path, "--stop-after", 5, "--lr", 3e-3)
    for argv, message in ((["--lr", "1e-3"], "--lr 0.001 differs from the run's 0.003"),
                          (["--n-embd", "64"], "--n-embd 64 differs from the run's 32"),
                          (["--arch", "gpt_neox"], "--arch gpt_neox differs"),
                          (["--max-steps", "5"], "at step 5 of --max-steps 5: nothing to do"),
                          (["--max-steps", "4"], "at step 5 of --max-steps 4"),
                          (["--stop-after", "5"], "--stop-after 5: the run in")):
        with pytest.raises(SystemExit) as e:
            run("--out", tmp_path, "--resume", *argv)
        assert message in str(e.value.code)
    capsys.readouterr()
    run("--out", tmp_path, "--resume", "--lr", 3e-3, "--data", data, "--max-steps", 8)
    assert "--max-steps 8 (the run had 30)" in capsys.readouterr().err
    assert curve(tmp_path)[-1]["step"] == "8"
    other = tmp_path.parent / "other.txt"
    other.write_text(TEXT[::-1], encoding="utf-8")
    with pytest.raises(SystemExit) as e:
        run("--out", tmp_path, "--resume", "--max-steps", 10, "--data", other)
    assert "is not the text this run trained on" in str(e.value.code)


@pytest.fixture(scope="module")
def stopped(data, tmp_path_factory):
    """The run stopped after step 10 (one checkpoint); each test damages a copy of it."""
    out, threads = tmp_path_factory.mktemp("stopped"), torch.get_num_threads()
    torch.set_num_threads(1)
    run("--data", data, *RUN, "--out", out, "--stop-after", 10)
    torch.set_num_threads(threads)
    return out


def saved_run(stopped, out):
    shutil.copytree(stopped, out)
    return out


def refusal(out, *argv):
    with pytest.raises(SystemExit) as e:
        run("--out", out, "--resume", *argv)
    message = str(e.value.code)
    assert message.startswith("error: ") and "\n" not in message
    return message


@pytest.mark.parametrize("damage, file", [
    ("mixed", "model.safetensors"),    # the weights of another step
    ("truncated", "model.safetensors"),
    ("truncated", "train_state.pt"),
    ("foreign", "train_state.pt"),      # a torch file of something else
    ("old", "train_state.pt"),          # train.py's earlier format: step and optimizer only
    ("changed", "loss.csv"),
    ("changed", "config.json"),
    ("missing", "vocab.json"),
    ("stale", "tokenizer.json"),        # a tokenizer file that is not the run's: a reader would take it
    ("negative", "train_state.pt"),
])
def test_resume_refuses_anything_but_one_whole_checkpoint(damage, file, stopped, straight, tmp_path):
    out = saved_run(stopped, tmp_path / "out")
    path = out / file
    if damage == "mixed":
        shutil.copy(straight / file, path)
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    elif damage == "foreign":
        torch.save({"weights": torch.zeros(3)}, path)
    elif damage in ("old", "negative"):
        state = torch.load(path, weights_only=True)
        if damage == "old":
            state = {"step": state["step"], "optimizer": state["optimizer"]}
        else:
            state["step"] = -1
        torch.save(state, path)
    elif damage == "changed":
        path.write_text(path.read_text().replace("1", "2"))
    elif damage == "missing":
        path.unlink()
    elif damage == "stale":
        shutil.copy(SHARED / "tokenizers/gpt-neox-20b/tokenizer.json", path)
    message = refusal(out)
    assert str(path) in message, message
    if damage == "negative":
        assert "step -1 is negative" in message


def test_a_saved_setting_of_the_wrong_type_is_refused(stopped, tmp_path):
    out = saved_run(stopped, tmp_path / "out")
    state = torch.load(out / "train_state.pt", weights_only=True)
    state["args"]["lr"] = "fast"
    torch.save(state, out / "train_state.pt")
    assert "lr='fast' is not one of train.py's" in refusal(out)


# A training process that stops at a named moment of its second checkpoint (step 20), says so with a file,
# and waits there to be killed: during the weights write (half of model.safetensors written), between the
# weights and train_state.pt, or during the renames into --out (after the first file); or pauses 2 s
# before the first checkpoint's train_state.pt and goes on.
KILL_DRIVER = r"""
import os, sys, time
import safetensors.torch, torch
import train
moment, marker, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
torch.set_num_threads(1)  # (as the tests' runs: the same float summation order)
out = os.path.realpath(argv[argv.index("--out") + 1])
saves, moved = [0], [0]

def stop_here():
    open(marker, "w").close()
    time.sleep(2 if moment == "pause" else 300)  # ("pause": a moment in which to press Ctrl-C)

def counting(save):
    def wrapper(*args, **kwargs):
        saves[0] += 1
        return save(*args, **kwargs)
    return wrapper

def during_weights(save_file):
    def wrapper(tensors, filename, metadata=None):
        if saves[0] == 2:
            with open(filename, "wb") as f:
                f.write(b"\0" * 1000)
            stop_here()
        return save_file(tensors, filename, metadata=metadata)
    return wrapper

def before_state(save):
    def wrapper(obj, f, *args, **kwargs):
        if saves[0] == (1 if moment == "pause" else 2):
            stop_here()
        return save(obj, f, *args, **kwargs)
    return wrapper

def during_rename(replace):
    def wrapper(src, dst):
        if saves[0] == 2 and os.path.dirname(os.path.realpath(dst)) == out:
            moved[0] += 1
            if moved[0] == 2:
                stop_here()
        return replace(src, dst)
    return wrapper

train.save = counting(train.save)
if moment == "weights":
    safetensors.torch.save_file = during_weights(safetensors.torch.save_file)
elif moment in ("state", "pause"):
    torch.save = before_state(torch.save)
elif moment == "rename":
    os.replace = during_rename(os.replace)
train.main(argv)
"""


def start_and_stop_at(moment, argv, marker, sig=signal.SIGKILL, script=KILL_DRIVER):
    """Start `script` (KILL_DRIVER), wait for it to reach `moment` (it creates `marker` there), send it
    `sig`; returns (returncode, stderr)."""
    proc = subprocess.Popen([sys.executable, "-c", script, moment, str(marker), *map(str, argv)],
                            cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(1200):
            if marker.exists() or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert marker.exists(), proc.communicate(timeout=60)[1][-2000:]
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    return proc.returncode, err


@pytest.mark.parametrize("moment, whole_step", [("weights", 10), ("state", 10), ("rename", 20)])
def test_a_kill_leaves_a_whole_checkpoint(moment, whole_step, data, straight, tmp_path):
    """kill -9 at each moment of a save: what is on disk is the previous checkpoint (before the commit)
    or the new one (after it: the rename is finished by --resume), never a mix; --resume from there ends
    with the uninterrupted run's losses and weights."""
    out = tmp_path / "out"
    code, _ = start_and_stop_at(moment, ["--data", data, *RUN, "--out", out], tmp_path / "marker")
    assert code == -signal.SIGKILL
    leftovers = {f.name for f in out.iterdir() if f.name.startswith(".tmp-")}
    assert leftovers == ({checkpoint.COMMITTED} if moment == "rename" else {next(iter(leftovers))})
    if moment != "rename":  # the previous checkpoint as it was
        state = torch.load(out / "train_state.pt", weights_only=True)
        assert state["step"] == 10
        assert all(train.sha256(out / name) == digest for name, digest in state["files"].items())
    train.recover(out)  # (what --resume does first: finish the rename, or remove the uncommitted files)
    assert train.read_state(out)["step"] == whole_step and not any(out.glob(".tmp-*"))
    run("--out", out, "--resume")
    assert_same_run(straight, out)


def test_ctrl_c_saves_nothing_half_written(data, tmp_path):
    """Ctrl-C during a save: the save finishes, then the run exits quietly with 130; --resume goes on."""
    out = tmp_path / "out"
    code, err = start_and_stop_at("pause", ["--data", data, *RUN, "--out", out], tmp_path / "marker",
                                  signal.SIGINT)
    assert code == 130 and "Traceback" not in err and "interrupted" in err.splitlines()[-1]
    # (a Ctrl-C that was not deferred would have ended the save before its train_state.pt: no checkpoint)
    assert train.read_state(out)["step"] == 10 and not any(out.glob(".tmp-*"))


def test_ctrl_c_during_training(data, tmp_path, monkeypatch):
    """Ctrl-C in the middle of a step (here: KeyboardInterrupt at step 15): exit 130, checkpoint 10 whole."""
    real = train.learning_rate

    def learning_rate(step, args):
        if step == 15:
            raise KeyboardInterrupt
        return real(step, args)
    monkeypatch.setattr(train, "learning_rate", learning_rate)
    with pytest.raises(SystemExit) as e:
        run("--data", data, *RUN, "--out", tmp_path)
    assert e.value.code == 130
    assert train.read_state(tmp_path)["step"] == 10


def test_a_full_disk_leaves_the_previous_checkpoint(data, tmp_path):
    """A real full disk: --out on a tmpfs with room for one checkpoint, not two (the second is written
    beside the first). Needs root's mount; otherwise skipped (the next test simulates it)."""
    probe = tmp_path / "probe"
    run("--data", data, *RUN, "--out", probe, "--stop-after", 10)
    size = sum(-(-f.stat().st_size // 4096) * 4096 for f in probe.iterdir())
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size * 3 // 2}", "tmpfs", str(disk)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root?)")
    try:
        with pytest.raises(SystemExit) as e:
            run("--data", data, *RUN, "--out", disk)
        message = str(e.value.code)
        assert message == (f"error: could not write the checkpoint of step 20 into {disk} (No space left on "
                           "device); the checkpoint of step 10 there is as it was")
        assert train.read_state(disk)["step"] == 10 and not any(disk.glob(".tmp-*"))
    finally:
        subprocess.run(["umount", "--lazy", str(disk)], check=True)


def test_a_full_disk_simulated(data, tmp_path, monkeypatch):
    """The same, with the weights writer raising ENOSPC at the second checkpoint (no mount needed)."""
    import safetensors.torch
    real, calls = safetensors.torch.save_file, []

    def save_file(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(tensors, filename, metadata=metadata)
    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    with pytest.raises(SystemExit) as e:
        run("--data", data, *RUN, "--out", tmp_path)
    assert "step 20" in str(e.value.code) and "the checkpoint of step 10 there is as it was" in str(e.value.code)
    assert train.read_state(tmp_path)["step"] == 10 and not any(tmp_path.glob(".tmp-*"))


def test_out_is_never_overwritten(data, tmp_path):
    """A non-empty --out that is not this run's is refused (an existing model, a stale tokenizer.json, any
    file of the user's), and nothing in it is touched."""
    for name in ("config.json", "tokenizer.json", "notes.txt"):
        out = tmp_path / name.replace(".", "_")
        out.mkdir()
        (out / name).write_text("mine")
        with pytest.raises(SystemExit) as e:
            run("--data", data, *RUN, "--out", out)
        assert f"--out {out} is not empty (it holds {name}" in str(e.value.code)
        assert [f.name for f in out.iterdir()] == [name] and (out / name).read_text() == "mine"


def test_out_with_a_killed_first_save(data, tmp_path):
    """A first save killed before its commit left only a .tmp-* directory: a new run may start there. One
    killed after its commit left a whole checkpoint: that is a run (--resume finishes it)."""
    (tmp_path / ".tmp-x1y2").mkdir()
    (tmp_path / ".tmp-x1y2/model.safetensors").write_bytes(b"half")
    run("--data", data, *RUN, "--out", tmp_path, "--max-steps", 1)
    out = tmp_path / "committed"
    (out / checkpoint.COMMITTED).mkdir(parents=True)
    with pytest.raises(SystemExit) as e:
        run("--data", data, *RUN, "--out", out)
    assert "holds a run already: pass --resume" in str(e.value.code)


def test_fine_tuning_pythia_keeps_its_tokenizer_json(data, tmp_path):
    """--init a GPT-NeoX checkpoint with NeoX's tokenizer.json (which vocab.json + merges.txt cannot hold):
    the checkpoints carry that tokenizer.json byte for byte, and --resume reads it."""
    source = SHARED / "tokenizers/gpt-neox-20b/tokenizer.json"
    if not source.exists():
        pytest.skip("../shared/tokenizers/gpt-neox-20b/tokenizer.json not found")
    sizes = dict(vocab_size=50304, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                 max_position_embeddings=64, intermediate_size=32, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    ref = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model("gpt_neox", **sizes))
    ref.save_pretrained(tmp_path / "init")
    shutil.copy(source, tmp_path / "init")
    run("--data", data, "--out", tmp_path / "out", "--init", tmp_path / "init", "--block-size", 32,
        "--batch-size", 4, "--eval-batches", 2, "--sample-tokens", 8, "--max-steps", 2, "--eval-every", 1,
        "--warmup", 1, "--stop-after", 1)
    out = tmp_path / "out"
    assert (out / "tokenizer.json").read_bytes() == source.read_bytes()
    assert not (out / "vocab.json").exists() and not (out / "merges.txt").exists()
    run("--out", out, "--resume")
    assert train.read_state(out)["step"] == 2
    text = "  two spaces"  # (NeoX's runs of spaces: added tokens that vocab.json + merges.txt cannot hold)
    assert bpe.Tokenizer.from_pretrained(out).encode(text) == bpe.Tokenizer.from_pretrained(source).encode(text)

def test_tokenizer_json_is_pythias_format(data, tmp_path):
    """--tokenizer-json saves the trained tokenizer as one tokenizer.json that HF tokenizers reads to the same
    ids as bpe.py, the run encodes with what it saved, and --resume reads it back."""
    import tokenizers
    out = tmp_path / "out"
    run("--data", data, "--out", out, "--arch", "gpt_neox", *TINY, "--tokenizer-json", "--max-steps", 2,
        "--eval-every", 1, "--warmup", 1, "--stop-after", 1)
    assert (out / "tokenizer.json").is_file() and not (out / "vocab.json").exists()
    ours = bpe.Tokenizer.from_pretrained(out)
    text = TEXT[-2000:] + "<|endoftext|> Ünïcödé"
    assert ours.encode(text, allowed_special="all") == tokenizers.Tokenizer.from_file(
        str(out / "tokenizer.json")).encode(text).ids
    assert ours.eos_token_id is not None and ours.normalizer == "NFC"
    run("--out", out, "--resume")
    assert train.read_state(out)["step"] == 2


def test_tokenizer_json_needs_a_trained_tokenizer(data, tmp_path):
    with pytest.raises(SystemExit) as e:
        run("--data", data, "--out", tmp_path / "out", "--arch", "gpt2", "--tokenizer", ROOT / "models/pydoc-gpt2",
            "--tokenizer-json")
    assert "--tokenizer-json is for a tokenizer trained here" in str(e.value.code)


def test_init_with_a_shipped_models_name_points_at_it(data, tmp_path, monkeypatch):
    """`--init pydoc-gpt2` outside models/ (no such directory, no such Hub name): the error names
    models/pydoc-gpt2, the shipped model; an unknown name gets no such hint."""
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as e:
        run("--data", data, "--out", tmp_path / "out", "--init", "pydoc-gpt2")
    assert str(e.value.code).startswith("error: ") and str(e.value.code).endswith("--init models/pydoc-gpt2")
    with pytest.raises(SystemExit) as e:
        run("--data", data, "--out", tmp_path / "out", "--init", "pydoc-gpt3")
    assert "shipped" not in str(e.value.code)


def test_ddp_two_processes_equal_one_on_the_combined_batch(data, tmp_path):
    """torchrun with 2 gloo processes of batch 2 -> the parameters after a step equal one process's with
    batch 4 (up to float summation order), and differ from one process's with batch 2."""
    args = ["--data", data, "--arch", "gpt2", *TINY, "--max-steps", 1, "--eval-every", 1, "--warmup", 1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(ROOT / "train.py"), *map(str, args), "--batch-size", "2", "--out", str(tmp_path / "ddp")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "2 process(es)" in result.stderr
    run(*args, "--batch-size", 4, "--out", tmp_path / "one")
    run(*args, "--batch-size", 2, "--out", tmp_path / "half")
    ddp, one, half = (load_file(tmp_path / d / "model.safetensors") for d in ("ddp", "one", "half"))
    # (Adam divides by the gradient's running rms: an entry whose gradient is near 0 in both moves by an
    # amount that the last bits of the all-reduce can change by ~1e-5.)
    assert max((ddp[k] - one[k]).abs().max().item() for k in one) < 2e-4
    assert max((half[k] - one[k]).abs().max().item() for k in one) > 1e-3
    # --resume under torchrun: rank 0 checks (and would finish) the checkpoint, the others wait for it
    cmd = [*cmd[:cmd.index("--data")], "--out", str(tmp_path / "ddp"), "--resume", "--max-steps", "2"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert [r["step"] for r in curve(tmp_path / "ddp")] == ["0", "1", "2"]
    run("--out", tmp_path / "one", "--resume", "--max-steps", 2)  # (every process holds the whole model)
    ddp, one = (load_file(tmp_path / d / "model.safetensors") for d in ("ddp", "one"))
    assert max((ddp[k] - one[k]).abs().max().item() for k in one) < 2e-4


@pytest.mark.parametrize("argv, message", [
    (["--arch", "gpt2", "--vocab-size", "300"], "no such file"),
    (["--arch", "gpt2"], "--vocab-size"),
    (["--arch", "gpt2", "--init", "x", "--vocab-size", "300"], "one of --init"),
    ([], "one of --init"),
    (["--resume"], "no train_state.pt"),
    (["--arch", "gpt2", "--vocab-size", "300", "--max-steps", "0"], "--max-steps"),
    (["--arch", "gpt2", "--vocab-size", "300", "--n-embd", "30", "--n-head", "4"], "divisible"),
    (["--arch", "gpt2", "--vocab-size", "100"], "vocab_size 100"),
    (["--init", "/no/such/dir"], "no such directory"),
    (["--init", "gpt2", "--n-layer", "2"], "--n-layer is for a new model (--arch)"),
    (["--init", "gpt2", "--vocab-size", "300"], "--vocab-size is for a new model (--arch)"),
    (["--arch", "gpt2", "--vocab-size", "300", "--block-size", "100000000"], "too few"),  # before allocating
    (["--arch", "gpt2", "--vocab-size", "300", "--n-layer", "100000", "--n-embd", "4096"], "GiB"),
    (["--arch", "gpt2", "--vocab-size", "300", "--lr", "-1"], "--lr must be a finite number > 0, got -1.0"),
    (["--arch", "gpt2", "--vocab-size", "300", "--lr", "nan"], "--lr must be a finite number > 0, got nan"),
    (["--arch", "gpt2", "--vocab-size", "300", "--lr", "inf"], "--lr must be"),
    (["--arch", "gpt2", "--vocab-size", "300", "--min-lr", "-0.0001"], "--min-lr must be"),
    (["--arch", "gpt2", "--vocab-size", "300", "--min-lr", "1"], "--min-lr must be a finite number in [0, --lr]"),
    (["--arch", "gpt2", "--vocab-size", "300", "--weight-decay", "-0.1"], "--weight-decay must be"),
    (["--arch", "gpt2", "--vocab-size", "300", "--weight-decay", "nan"], "--weight-decay must be"),
    (["--arch", "gpt2", "--vocab-size", "300", "--grad-clip", "-1"], "--grad-clip must be"),
    (["--arch", "gpt2", "--vocab-size", "300", "--dropout", "nan"], "--dropout must be"),
    (["--arch", "gpt2", "--vocab-size", "300", "--val-fraction", "1"], "--val-fraction must be"),
    (["--arch", "gpt2", "--vocab-size", "300", "--stop-after", "0"], "--stop-after must be >= 1, got 0"),
    (["--arch", "gpt2", "--vocab-size", "300", "--stop-after", "-3"], "--stop-after must be >= 1, got -3"),
    (["--arch", "gpt2", "--vocab-size", "300", "--warmup", "-1"], "--warmup must be >= 0"),
    (["--arch", "gpt2", "--vocab-size", "300", "--seed", "-1"], "--seed must be in"),
    (["--arch", "gpt2", "--vocab-size", "300", "--seed", str(10**30)], "--seed must be in"),
    (["--arch", "gpt2", "--vocab-size", "0"], "--vocab-size must be >= 1"),
    (["--arch", "gpt2", "--tokenizer", "SPARSE"], "its highest id is 100000000 for"),
    (["--arch", "gpt2", "--vocab-size", "300", "--window-size", "4"], "--window-size is for a new gpt_neo"),
    (["--arch", "gpt_neo", "--vocab-size", "300", "--window-size", "0"], "--window-size"),
])
def test_bad_input_is_one_error_line(argv, message, data, tmp_path, capsys):
    if "SPARSE" in argv:  # a tokenizer file with the id 1e8: a new model would need 1e8 embedding rows
        tokenizer = tmp_path / "sparse"
        bpe.train(TEXT[:2000], 260, special_tokens=["<|endoftext|>"]).save(tokenizer)
        vocab = json.loads((tokenizer / "vocab.json").read_text())
        vocab["<|endoftext|>"] = 10**8
        (tokenizer / "vocab.json").write_text(json.dumps(vocab))
        argv = [str(tokenizer) if a == "SPARSE" else a for a in argv]
    argv = ["--data", str(tmp_path / "none.txt" if message == "no such file" else data), *argv]
    steps = [] if "--max-steps" in argv else ["--max-steps", "3"]
    with pytest.raises(SystemExit) as e:
        train.main([*argv, *steps, "--out", str(tmp_path / "out")])
    assert str(e.value.code).startswith("error: ") and "\n" not in str(e.value.code)
    assert message in str(e.value.code)


def test_loss_png_only_with_matplotlib(data, tmp_path, monkeypatch):
    """matplotlib is optional: without it the curve is the CSV alone (with it, a PNG beside it)."""
    pytest.importorskip("matplotlib")
    args = ["--data", data, "--arch", "gpt2", *TINY, "--max-steps", 1]
    run(*args, "--out", tmp_path / "with")
    assert (tmp_path / "with/loss.png").read_bytes().startswith(b"\x89PNG")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    run(*args, "--out", tmp_path / "without")
    assert (tmp_path / "without/loss.csv").exists() and not (tmp_path / "without/loss.png").exists()


def test_window_size_sets_gpt_neos_local_window(data, tmp_path):
    run("--data", data, "--out", tmp_path, "--arch", "gpt_neo", *TINY, "--window-size", 4, "--max-steps", 1)
    model = gpt_neo.from_pretrained(tmp_path)
    assert model.config.window_size == 4
    assert [block.attn.attention.window for block in model.transformer.h] == [None, 4]  # global, local


def test_out_with_a_run_needs_resume(data, tmp_path):
    args = ["--data", data, "--out", tmp_path, "--arch", "gpt2", *TINY, "--max-steps", 1]
    run(*args)
    with pytest.raises(SystemExit) as e:
        run(*args)
    assert "holds a run already" in str(e.value.code)


def test_cli_exit_code(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), "--data", str(tmp_path / "none.txt"),
                             "--out", str(tmp_path), "--arch", "gpt2", "--vocab-size", "300"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and result.stderr.strip().count("\n") == 0
    assert result.stderr.startswith("error: ")


def test_generate_samples_from_a_trained_checkpoint(data, tmp_path):
    """What train.py writes is what gpt2.py's CLI reads."""
    run("--data", data, "--out", tmp_path, "--arch", "gpt2", *TINY, "--max-steps", 2)
    result = subprocess.run([sys.executable, str(ROOT / "gpt2.py"), "--model", str(tmp_path), "--prompt", "The",
                             "--max-new-tokens", "5"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("The")
    assert gpt2.from_pretrained(tmp_path).config.n_positions == 32


@pytest.mark.parametrize("name, arch, reference_class", [
    ("pydoc-gpt2", "gpt2", transformers.GPT2LMHeadModel),
    ("pydoc-gpt-neo", "gpt_neo", transformers.GPTNeoForCausalLM),  # docs/seeing-inside.md's local window
    ("pydoc-gpt-neox", "gpt_neox", transformers.GPTNeoXForCausalLM),  # Pythia's layout, tokenizer.json
])
def test_shipped_model_learned(name, arch, reference_class):
    """models/pydoc-gpt2, pydoc-gpt-neo and pydoc-gpt-neox (the docs' runs): on the held-out tenth of the reference manual
    their loss is far below the untrained ln(2048) = 7.6 (about 4.5 on Python 3.11's text), and
    transformers computes the same."""
    directory = ROOT / "models" / name
    tokenizer = bpe.Tokenizer.from_pretrained(directory)
    text = "\n\n".join(pydoc_data.topics.topics.values())
    ids = torch.tensor(tokenizer.encode_ordinary(text))
    held_out = ids[len(ids) - len(ids) // 10:]
    x = held_out[:len(held_out) // 128 * 128].view(-1, 128)
    with torch.no_grad():
        loss = checkpoint.model_file(arch).from_pretrained(directory)(x, labels=x)[1].item()
        reference = reference_class.from_pretrained(directory).eval()(x, labels=x).loss.item()
    assert loss < 5.0
    assert abs(loss - reference) < 1e-4


def test_init_block_size_beyond_the_context(data, tmp_path):
    """--block-size beyond an --init model's context is refused (left out: the model's context is used)."""
    run("--data", data, "--out", tmp_path / "a", *RUN, "--block-size", 16, "--max-steps", 1)
    with pytest.raises(SystemExit) as e:
        run("--data", data, "--out", tmp_path / "b", "--init", tmp_path / "a", "--block-size", 17)
    assert "--block-size 17 is beyond the model's context of 16 tokens" in str(e.value.code)


def test_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit) as e:
        train.parse_args(["--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for default in ("--max-steps MAX_STEPS the run's length: the schedule ends there (default: 1000)",
                    "--lr LR the peak learning rate (default: 0.001)", "(default: 128)", "(default: 1337)"):
        assert default in text


@pytest.mark.parametrize("seconds, shown", [(119.7, "2:00"), (59.4, "0:59"), (0, "0:00"), (3600, "60:00")])
def test_time_left_is_minutes_and_seconds(seconds, shown):
    assert train.clock(seconds) == shown


def test_an_error_under_torchrun_is_printed_once(data, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(ROOT / "train.py"), "--data", str(data), "--out", str(tmp_path), "--arch", "gpt2",
           "--vocab-size", "300", "--lr", "-1"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode != 0
    assert (result.stdout + result.stderr).count("error: --lr must be") == 1, result.stderr


def test_offline_hint_names_no_other_commands_flag(data, tmp_path, monkeypatch):
    """Without the Hub, --init's error says how to fetch that revision and names no flag of another CLI."""
    import huggingface_hub

    def offline(*args, **kwargs):
        raise OSError("no network")
    monkeypatch.setattr(huggingface_hub, "model_info", offline)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(SystemExit) as e:
        run("--data", data, "--out", tmp_path, "--init", "someone/some-model")
    assert "hf download someone/some-model)" in str(e.value.code) and "--model" not in str(e.value.code)
    with pytest.raises(OSError) as e:
        checkpoint.download("someone/some-model", revision="v1.0")
    assert "hf download someone/some-model --revision v1.0" in str(e.value)


def test_data_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\u00e9 ".encode("latin-1") * 100)
    with pytest.raises(SystemExit) as e:
        run("--data", path, "--out", tmp_path / "out", *RUN)
    assert str(e.value.code).startswith(f"error: --data {path} is not UTF-8 text")
