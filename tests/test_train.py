"""train.py on real text (the Python reference manual in the standard library), tiny models: the loss goes
down for each architecture, from scratch and fine-tuning; --resume continues exactly; two DDP processes
take the step one process takes on the combined batch; bad input is one error line."""
import csv
import subprocess
import sys
from pathlib import Path

import pydoc_data.topics
import pytest
import torch
import transformers
from conftest import ROOT
from safetensors.torch import load_file

import bpe
import gpt2
import gpt_neo
import train

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

TEXT = "\n\n".join(pydoc_data.topics.topics.values())[:30_000]
TINY = ["--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--vocab-size", "300",
        "--batch-size", "4", "--eval-batches", "2", "--sample-tokens", "8", "--log-every", "5"]


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
    model = train.ARCHS[arch].from_pretrained(tmp_path)
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
    run("--data", data, "--out", tmp_path / "out", "--init", tmp_path / "init", *TINY, "--max-steps", 20,
        "--eval-every", 10, "--warmup", 2, "--lr", 1e-2)
    val = [float(r["val_loss"]) for r in curve(tmp_path / "out") if r["val_loss"]]
    assert val[-1] < val[0]
    assert train.model_type(tmp_path / "out") == arch


def test_resume_continues_where_it_stopped(data, tmp_path):
    """A run stopped after step 10 and resumed (optimizer state, schedule, batches and dropout included)
    logs the losses of the uninterrupted run."""
    args = ["--data", data, "--arch", "gpt2", *TINY, "--max-steps", 20, "--eval-every", 10, "--warmup", 5,
            "--dropout", 0.1]
    run(*args, "--out", tmp_path / "straight")
    run(*args, "--out", tmp_path / "split", "--stop-after", 10)
    assert [r["step"] for r in curve(tmp_path / "split")] == ["0", "5", "10"]
    run(*args, "--out", tmp_path / "split", "--resume")
    straight, split = curve(tmp_path / "straight"), curve(tmp_path / "split")
    assert [r["step"] for r in split] == ["0", "5", "10", "15", "20"]
    for a, b in zip(straight, split, strict=True):
        assert (a["train_loss"], a["val_loss"], a["lr"]) == (b["train_loss"], b["val_loss"], b["lr"])
    a, b = load_file(tmp_path / "straight/model.safetensors"), load_file(tmp_path / "split/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


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
    (["--arch", "gpt2", "--vocab-size", "300", "--block-size", "100000"], "too few"),
    (["--arch", "gpt2", "--vocab-size", "300", "--window-size", "4"], "--window-size is for a new gpt_neo"),
    (["--arch", "gpt_neo", "--vocab-size", "300", "--window-size", "0"], "--window-size"),
])
def test_bad_input_is_one_error_line(argv, message, data, tmp_path, capsys):
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
])
def test_shipped_model_learned(name, arch, reference_class):
    """models/pydoc-gpt2 and pydoc-gpt-neo (the docs' runs): on the held-out tenth of the reference manual
    their loss is far below the untrained ln(2048) = 7.6 (about 4.5 on Python 3.11's text), and
    transformers computes the same."""
    directory = ROOT / "models" / name
    tokenizer = bpe.Tokenizer.from_pretrained(directory)
    text = "\n\n".join(pydoc_data.topics.topics.values())
    ids = torch.tensor(tokenizer.encode_ordinary(text))
    held_out = ids[len(ids) - len(ids) // 10:]
    x = held_out[:len(held_out) // 128 * 128].view(-1, 128)
    with torch.no_grad():
        loss = train.ARCHS[arch].from_pretrained(directory)(x, labels=x)[1].item()
        reference = reference_class.from_pretrained(directory).eval()(x, labels=x).loss.item()
    assert loss < 5.0
    assert abs(loss - reference) < 1e-4
