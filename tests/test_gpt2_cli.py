"""`python gpt2.py` through a subprocess, on a tiny random checkpoint with the real GPT-2 tokenizer."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import transformers
from conftest import ROOT, shared_tokenizer_dir
from reference import tiny_gpt2_with_tokenizer

transformers.logging.set_verbosity_error()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    tokenizer = shared_tokenizer_dir("gpt2", "openai-community/gpt2", ["vocab.json", "merges.txt"])
    return tiny_gpt2_with_tokenizer(tmp_path_factory.mktemp("tiny-gpt2"), tokenizer)


def run(*args, env=None):
    return subprocess.run([sys.executable, str(ROOT / "gpt2.py"), *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=120)


def test_samples_and_reports_speed(checkpoint):
    result = run("--model", checkpoint, "--prompt", "Hello world", "--max-new-tokens", "8",
                 "--num-samples", "2", "--top-p", "0.9")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("Hello world") == 2
    assert "tokens/s" in result.stderr


def test_greedy_output_is_the_reference_continuation(checkpoint):
    """Temperature 0 prints the prompt followed by transformers' greedy continuation, decoded."""
    from bpe import Tokenizer
    tokenizer = Tokenizer.from_pretrained(checkpoint)
    ids = torch.tensor([tokenizer.encode("Hello world")])
    ref = transformers.GPT2LMHeadModel.from_pretrained(checkpoint).eval()
    expected = ref.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=50256)
    result = run("--model", checkpoint, "--prompt", "Hello world", "--max-new-tokens", "6",
                 "--temperature", "0")
    assert result.returncode == 0, result.stderr
    text = tokenizer.decode(expected[0].tolist())
    if 50256 in expected[0, 2:].tolist():  # we stop at <|endoftext|>; transformers printed it and stopped
        text = tokenizer.decode(expected[0, :expected[0].tolist().index(50256, 2) + 1].tolist())
    assert result.stdout == text + "\n"


@pytest.mark.parametrize("args, message", [
    (["--model", "gpt5"], "unknown model 'gpt5'"),
    (["--model", "/no/such/dir"], "no such directory"),
    (["--temperature", "-1"], "temperature"),
    (["--top-p", "0"], "top_p"),
    (["--top-p", "1.5"], "top_p"),
    (["--top-k", "0"], "top_k"),
    (["--max-new-tokens", "40"], "exceeds the context"),
    (["--prompt", "hello " * 40], "longer than the context"),
])
def test_bad_input_is_one_clear_line(checkpoint, args, message):
    if "--model" not in args:
        args = ["--model", checkpoint, *args]
    result = run(*args)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.stderr


def test_unknown_model_lists_the_known_ones():
    result = run("--model", "gpt5")
    assert "gpt2-medium" in result.stderr and "distilgpt2" in result.stderr


def broken_copy(checkpoint, tmp_path, damage):
    directory = tmp_path / "broken"
    shutil.copytree(checkpoint, directory)
    damage(directory)
    return directory


def test_truncated_weights(checkpoint, tmp_path):
    def truncate(d):
        (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:1000])
    result = run("--model", broken_copy(checkpoint, tmp_path, truncate), "--max-new-tokens", "4")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "corrupted or truncated" in result.stderr


def test_config_weights_mismatch(checkpoint, tmp_path):
    def grow(d):
        config = json.loads((d / "config.json").read_text())
        config["n_layer"] = 3
        (d / "config.json").write_text(json.dumps(config))
    result = run("--model", broken_copy(checkpoint, tmp_path, grow), "--max-new-tokens", "4")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "missing keys" in result.stderr and "transformer.h.2.attn.c_attn.weight" in result.stderr


def test_no_network_and_nothing_cached_says_how_to_pass_a_dir(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE"))}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "empty-hf-home"))
    result = run("--model", "openai-community/gpt2", env=env)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "local directory holding config.json and the weights" in result.stderr
