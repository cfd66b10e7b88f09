"""Bad and unlucky input, for the three model files alike: a specific exception from the Python API, one
`error: ...` line and a non-zero exit from the CLI; never a traceback, a hang, a silent wrong answer or a
file read from outside the checkpoint."""
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch

import checkpoint
import generation
import transformers
from conftest import ROOT, shared_tokenizer_dir
from reference import assert_close, save_checkpoint

transformers.logging.set_verbosity_error()
ARCHS = ["gpt2", "gpt_neo", "gpt_neox"]
LAYERS = {"gpt2": "n_layer", "gpt_neo": "num_layers", "gpt_neox": "num_hidden_layers"}
HEADS = {"gpt2": "n_head", "gpt_neo": "num_heads", "gpt_neox": "num_attention_heads"}


def tiny_config(arch, vocab_size=64, n_positions=32, **extra):
    common = dict(vocab_size=vocab_size, initializer_range=0.3, bos_token_id=0, eos_token_id=1, **extra)
    if arch == "gpt2":
        return transformers.GPT2Config(n_positions=n_positions, n_embd=16, n_layer=2, n_head=2, **common)
    if arch == "gpt_neo":
        return transformers.GPTNeoConfig(max_position_embeddings=n_positions, hidden_size=16, num_layers=2,
                                         num_heads=2, attention_types=[[["global", "local"], 1]],
                                         window_size=8, **common)
    return transformers.GPTNeoXConfig(max_position_embeddings=n_positions, hidden_size=16, num_hidden_layers=2,
                                      num_attention_heads=2, intermediate_size=32, **common)


def tiny_checkpoint(arch, directory, layout="safetensors", **config):
    torch.manual_seed(0)
    ref = transformers.AutoModelForCausalLM.from_config(tiny_config(arch, **config)).eval()
    save_checkpoint(ref, directory, layout)
    return ref


def edit_config(directory, **changes):
    config = json.loads((directory / "config.json").read_text())
    config.update(changes)
    (directory / "config.json").write_text(json.dumps(config))


# ----------------------------------------------------------------------------- real checkpoints that were refused


@pytest.mark.parametrize("arch", ARCHS)
def test_pre_zip_bin_files_load_without_running_a_pickle(arch, tmp_path):
    """torch < 1.6 wrote .bin files that are not zip archives (many old Hub repos hold them): they cannot be
    memory-mapped, so they are read whole, still with weights_only=True."""
    ref = tiny_checkpoint(arch, tmp_path, "bin_legacy")
    import zipfile
    assert not zipfile.is_zipfile(tmp_path / "pytorch_model.bin")
    ours = importlib.import_module(arch).from_pretrained(tmp_path)
    ids = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    with torch.no_grad():
        assert_close(ours(ids), ref(ids).logits, f"{arch} logits (pre-zip .bin)")


@pytest.mark.parametrize("arch", ARCHS)
def test_more_embedding_rows_than_tokens_are_never_generated(arch, tmp_path):
    """A checkpoint padded to more rows than its tokenizer has tokens (Pythia: 50304 for 50277; GPT-2-shaped
    models exist too): generate(vocab_size=) never picks a row without a token, even when those rows would
    win."""
    tiny_checkpoint(arch, tmp_path, vocab_size=80)
    module = importlib.import_module(arch)
    model = module.from_pretrained(tmp_path)
    with torch.no_grad():  # make the padding rows the most likely tokens, always
        for p in model.parameters():
            p.zero_()
        norm = list(model.modules())[-2] if arch != "gpt_neox" else model.gpt_neox.final_layer_norm
        head = model.lm_head if arch != "gpt_neox" else model.embed_out
        norm = model.transformer.ln_f if arch != "gpt_neox" else norm
        norm.bias.fill_(1.0)
        head.weight[64:] = 1.0
    ids = torch.tensor([[3, 4, 5]])
    assert module.generate(model, ids, 5, temperature=0)[0, 3:].min() >= 64, "the padding rows do win"
    out = module.generate(model, ids, 5, temperature=0, vocab_size=64)
    assert out[0, 3:].max() < 64
    out = module.generate(model, ids, 5, temperature=1.0, vocab_size=64, generator=torch.Generator().manual_seed(0))
    assert out[0, 3:].max() < 64


# ----------------------------------------------------------------------------- config.json


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("change, message", [
    ("list", "must hold a JSON object"),
    ({"heads": "four"}, "must be int"),
    ({"heads": 0}, "must be >= 1"),
    ({"heads": True}, "must be int"),
    ({"layer_norm": "big"}, "must be float"),
    ({"eos_token_id": -3}, "token ids >= 0"),
    ({"eos_token_id": [1, "x"]}, "token ids >= 0"),
    ({"model_type": "llama"}, "'llama' checkpoint"),
])
def test_config_values_of_the_wrong_type_are_named(arch, change, message, tmp_path):
    tiny_checkpoint(arch, tmp_path)
    if change == "list":
        (tmp_path / "config.json").write_text("[1, 2]")
    else:
        names = {"heads": HEADS[arch], "layer_norm": "layer_norm_eps" if arch == "gpt_neox" else
                 "layer_norm_epsilon"}
        edit_config(tmp_path, **{names.get(k, k): v for k, v in change.items()})
    with pytest.raises(ValueError, match=message):
        importlib.import_module(arch).from_pretrained(tmp_path)


@pytest.mark.parametrize("arch", ARCHS)
def test_another_architecture_is_named(arch, tmp_path):
    other = {"gpt2": "gpt_neox", "gpt_neo": "gpt2", "gpt_neox": "gpt_neo"}[arch]
    tiny_checkpoint(other, tmp_path)
    with pytest.raises(ValueError, match=rf"'{other}' checkpoint, not '{arch}': use {other}.py"):
        importlib.import_module(arch).from_pretrained(tmp_path)


@pytest.mark.parametrize("arch", ARCHS)
def test_absurd_sizes_are_refused_at_once(arch, tmp_path):
    """Tens of millions of layers in config.json: refused before a single module is built (the model we
    build is bounded by the tensors in the file), not a hang."""
    tiny_checkpoint(arch, tmp_path)
    edit_config(tmp_path, **{LAYERS[arch]: 50_000_000})
    code = f"import {arch}; {arch}.from_pretrained({str(tmp_path)!r})"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode != 0 and f"{LAYERS[arch]}=50000000" in result.stderr


@pytest.mark.parametrize("arch", ARCHS)
def test_eos_token_id_as_a_list_ends_a_row_on_any_of_them(arch, tmp_path):
    tiny_checkpoint(arch, tmp_path)
    edit_config(tmp_path, eos_token_id=[5, 7])
    module = importlib.import_module(arch)
    model = module.from_pretrained(tmp_path)
    assert model.config.eos_token_id == [5, 7]
    ids = torch.tensor([[3, 4], [8, 9]])
    free = module.generate(model, ids, 12, temperature=0)
    out = module.generate(model, ids, 12, temperature=0, eos_token_id=[5, 7])
    for row_free, row in zip(free[:, 2:].tolist(), out[:, 2:].tolist()):
        ends = [i for i, t in enumerate(row_free) if t in (5, 7)]
        if ends:  # the same tokens up to the first end id, then that id's row repeats the first listed id
            assert row[:ends[0] + 1] == row_free[:ends[0] + 1] and set(row[ends[0] + 1:]) <= {5}
        else:
            assert row == row_free


def test_malformed_json_files_are_named(tmp_path):
    import gpt2
    tiny_checkpoint("gpt2", tmp_path, "sharded")
    (tmp_path / "config.json").write_text('{"n_layer": 2,')
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        gpt2.from_pretrained(tmp_path)
    tiny_checkpoint("gpt2", tmp_path, "sharded")
    index = tmp_path / "model.safetensors.index.json"
    index.write_text("{oops")
    with pytest.raises(ValueError, match="model.safetensors.index.json is not valid JSON"):
        gpt2.from_pretrained(tmp_path)
    index.write_text(json.dumps({"metadata": {}}))
    with pytest.raises(ValueError, match="no \"weight_map\""):
        gpt2.from_pretrained(tmp_path)


# ----------------------------------------------------------------------------- weights files


@pytest.mark.parametrize("shard", ["../elsewhere.safetensors", "/tmp/elsewhere.safetensors", "sub/x.safetensors"])
def test_an_index_cannot_point_outside_the_checkpoint(shard, tmp_path):
    import gpt2
    directory = tmp_path / "ckpt"
    tiny_checkpoint("gpt2", directory, "sharded")
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    key, first = next(iter(index["weight_map"].items()))
    shutil.copy(directory / first, tmp_path / "elsewhere.safetensors")  # a real file there, readable
    index["weight_map"][key] = shard
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="shards must be files in the checkpoint's own directory"):
        gpt2.from_pretrained(directory)


@pytest.mark.parametrize("content", [[1, 2, 3], {"a": 1}, {1: torch.zeros(2)}, torch.zeros(3)])
def test_a_bin_that_is_not_a_dict_of_tensors(content, tmp_path):
    import gpt2
    tiny_checkpoint("gpt2", tmp_path, "bin")
    torch.save(content, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="does not hold a dict of tensors"):
        gpt2.from_pretrained(tmp_path)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_weights_with_nan_or_inf_are_refused(arch, value, tmp_path):
    from safetensors.torch import load_file, save_file
    tiny_checkpoint(arch, tmp_path)
    sd = load_file(tmp_path / "model.safetensors")
    key = sorted(k for k, t in sd.items() if t.dim() == 2)[-1]
    sd[key][0, 0] = value
    save_file(sd, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="NaN or inf"):
        importlib.import_module(arch).from_pretrained(tmp_path)


def test_too_large_for_float16_is_refused(tmp_path):
    import gpt2
    from safetensors.torch import load_file, save_file
    tiny_checkpoint("gpt2", tmp_path)
    sd = load_file(tmp_path / "model.safetensors")
    sd["transformer.h.0.mlp.c_fc.weight"][0, 0] = 1e6  # fine in fp32, inf in fp16
    save_file(sd, tmp_path / "model.safetensors", metadata={"format": "pt"})
    gpt2.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="NaN or inf in torch.float16: transformer.h.0.mlp.c_fc.weight"):
        gpt2.from_pretrained(tmp_path, dtype="float16")


# ----------------------------------------------------------------------------- the Python API


@pytest.fixture(scope="module", params=ARCHS)
def loaded(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(request.param)
    tiny_checkpoint(request.param, directory)
    module = importlib.import_module(request.param)
    return module, module.from_pretrained(directory), directory


@pytest.mark.parametrize("kwargs, message", [
    (dict(temperature=float("inf")), "temperature must be a finite number"),
    (dict(temperature=float("nan")), "temperature must be a finite number"),
    (dict(top_p=float("nan")), "top_p"),
    (dict(top_k=2.5), "top_k must be an integer"),
    (dict(max_new_tokens=-1), "max_new_tokens must be an integer >= 1"),
    (dict(max_new_tokens=0), "max_new_tokens must be an integer >= 1"),
    (dict(max_new_tokens=2.0), "max_new_tokens must be an integer >= 1"),
    (dict(input_ids=torch.tensor([[1.0, 2.0]])), "integer token ids"),
    (dict(input_ids=torch.tensor([[1, 64]])), r"input_ids must be in \[0, vocab_size=64\)"),
    (dict(input_ids=torch.tensor([[-1, 2]])), r"input_ids must be in \[0, vocab_size=64\)"),
    (dict(attention_mask=torch.tensor([[1, 2]])), "only 0"),
    (dict(attention_mask=torch.tensor([[1, 0]])), "left-padded"),
    (dict(attention_mask=torch.tensor([[0, 0]])), "left-padded"),
    (dict(input_ids=torch.tensor([[1, 2], [3, 4]]), attention_mask=torch.tensor([[1, 1], [1, 0]])), "left-padded"),
])
@pytest.mark.parametrize("compile", [False, True])
def test_bad_generate_arguments(loaded, kwargs, message, compile):
    module, model, _ = loaded
    args = dict(input_ids=torch.tensor([[1, 2]]), max_new_tokens=3) | kwargs
    with pytest.raises(ValueError, match=message):
        module.generate(model, args.pop("input_ids"), args.pop("max_new_tokens"), compile=compile, **args)


def test_bad_forward_inputs(loaded):
    """forward checks dtypes and shapes only (reading values would sync a GPU at every step);
    check_input_values, which generate and the CLI call once, checks the values."""
    module, model, _ = loaded
    with pytest.raises(ValueError, match="integer token ids"):
        model(torch.tensor([[0.5, 1.0]]))
    with pytest.raises(ValueError, match=r"attention_mask must be \(B, past \+ T\)"):
        model(torch.tensor([[0, 1]]), torch.tensor([[1, 1, 1]]))
    with pytest.raises(ValueError, match="vocab_size=64"):
        generation.check_input_values(torch.tensor([[0, 64]]), None, model.config.vocab_size)
    with pytest.raises(ValueError, match="vocab_size=64"):
        generation.check_input_values(torch.tensor([[-1, 3]]), None, model.config.vocab_size)
    with pytest.raises(ValueError, match="only 0"):
        generation.check_input_values(torch.tensor([[0, 1]]), torch.tensor([[1, 3]]), model.config.vocab_size)
    generation.check_input_values(torch.tensor([[0, 63]]), torch.tensor([[0, 1]]), model.config.vocab_size)
    with pytest.raises(IndexError):  # unchecked in forward: the embedding table itself refuses it
        model(torch.tensor([[0, 64]]))
    logits = model(torch.tensor([[5, 6, 0]]), torch.tensor([[1, 1, 0]]))  # right padding is fine in forward
    assert logits.shape == (1, 3, 64)


def test_dtype_and_device_by_name(loaded):
    module, model, directory = loaded
    assert next(module.from_pretrained(directory, dtype="bfloat16").parameters()).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="dtype must be one of float32, float16, bfloat16"):
        module.from_pretrained(directory, dtype="float8")
    with pytest.raises(ValueError, match="dtype must be one of"):
        module.from_pretrained(directory, dtype=torch.int8)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device 'cuda' is not available here"):
            module.from_pretrained(directory, device="cuda")
    with pytest.raises(ValueError, match="device 'tpu9' is not available here"):
        module.from_pretrained(directory, device="tpu9")


# ----------------------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def cli_checkpoint(tmp_path_factory):
    """A tiny GPT-2 with the real tokenizer, a long context and no end-of-text id (it never stops early)."""
    tokenizer = shared_tokenizer_dir("gpt2", "openai-community/gpt2", ["vocab.json", "merges.txt"])
    directory = tmp_path_factory.mktemp("cli")
    tiny_checkpoint("gpt2", directory, vocab_size=50257, n_positions=1024)
    edit_config(directory, eos_token_id=None, bos_token_id=None)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(tokenizer / name, directory / name)
    return directory


def run(*args, env=None, **kwargs):
    return subprocess.run([sys.executable, str(ROOT / "gpt2.py"), *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=120, **kwargs)


def one_error_line(result, message):
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.stderr


@pytest.mark.parametrize("args, message", [
    (["--device", "cuda" if not torch.cuda.is_available() else "tpu9"], "is not available here"),
    (["--temperature", "inf"], "temperature must be a finite number"),
    (["--temperature", "nan"], "temperature must be a finite number"),
    (["--top-p", "nan"], "top_p"),
    (["--max-new-tokens", "abc"], "argument --max-new-tokens: invalid int value: 'abc'"),
    (["--dtype", "float8"], "argument --dtype: invalid choice"),
    (["--prompt", "hello " * 1100], "longer than the context of 1024 tokens"),
])
def test_cli_bad_input_is_one_line(cli_checkpoint, args, message):
    one_error_line(run("--model", cli_checkpoint, "--max-new-tokens", "2", *args), message)


def test_cli_a_prompt_that_cannot_fit_is_refused_before_tokenizing(cli_checkpoint, tmp_path):
    """No GPT-2 token is longer than 128 bytes: 64 positions hold at most 8192 bytes of text. A longer
    prompt is refused by its length (here one 9,000-letter word, which BPE would otherwise have to
    work through)."""
    directory = tmp_path / "short"
    tiny_checkpoint("gpt2", directory, vocab_size=50257, n_positions=64)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(cli_checkpoint / name, directory / name)
    one_error_line(run("--model", directory, "--max-new-tokens", "2", "--prompt", "x" * 9000),
                   "--prompt (9000 bytes) is longer than the context of 64 tokens")


def test_cli_config_errors_are_one_line(cli_checkpoint, tmp_path):
    directory = tmp_path / "ckpt"
    shutil.copytree(cli_checkpoint, directory)
    edit_config(directory, model_type="gpt_neox")
    one_error_line(run("--model", directory), "'gpt_neox' checkpoint, not 'gpt2': use gpt_neox.py")
    edit_config(directory, model_type="gpt2", n_head="four")
    one_error_line(run("--model", directory), "n_head must be int, got 'four'")
    (directory / "config.json").write_text("{")
    one_error_line(run("--model", directory), "config.json is not valid JSON")


def test_cli_padded_vocabulary_generates(cli_checkpoint, tmp_path):
    """More embedding rows than the tokenizer has tokens (GPT-2-shaped): the CLI samples only real tokens."""
    directory = tmp_path / "padded"
    tiny_checkpoint("gpt2", directory, vocab_size=50304, n_positions=64)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(cli_checkpoint / name, directory / name)
    result = run("--model", directory, "--max-new-tokens", "40", "--top-k", "50000", "--temperature", "3")
    assert result.returncode == 0, result.stderr


def test_cli_ctrl_c_exits_quietly_with_130(cli_checkpoint):
    """Ctrl-C while sampling. Each step is slowed to 10 ms, so that the 1000 tokens cannot all be out before
    the signal arrives (a tiny model makes them in about a second: the test raced)."""
    slow = ("import sys, time, generation, gpt2; choose = generation.choose_next; "
            "generation.choose_next = lambda *a: (time.sleep(0.01), choose(*a))[1]; gpt2.main(sys.argv[1:])")
    process = subprocess.Popen([sys.executable, "-c", slow, "--model", str(cli_checkpoint),
                                "--prompt", "Hi", "--max-new-tokens", "1000"], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout.read(2) == "Hi"  # the prompt is printed once generation starts
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130 and err == "", err


def test_cli_without_network_fails_fast_and_quietly(tmp_path):
    """Nothing cached and the Hub unreachable (here: a closed local port): one line, no retry noise."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE"))}
    env.update(HF_HOME=str(tmp_path / "empty-hf-home"), HF_ENDPOINT="http://127.0.0.1:9")
    result = run(env=env)
    one_error_line(result, "could not get openai-community/gpt2 from the Hugging Face Hub")
    assert "hf download openai-community/gpt2" in result.stderr and "local directory holding config.json" in result.stderr


def test_cli_help_shows_the_defaults():
    result = run("--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "(default: 50)" in text and "(default: gpt2)" in text and "(default: 1.0)" in text


# ----------------------------------------------------------------------------- issue 21: the first run, generation edges
# (the `input` helper's section: the requirements, bpe.py offline, generate's edges)


def requirement_names(path):
    """The distribution names a requirements file lists (not following -r)."""
    import re
    names = set()
    for line in (ROOT / path).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            names.add(re.split(r"[<>=!~\[; ]", line)[0].lower().replace("-", "_"))
    return names


def product_imports():
    """The top-level modules that the project's own files (not tests/, bench/) import, outside the
    standard library and the project, and not optional (an import in a `try` that catches ImportError:
    flash_attn, matplotlib)."""
    import ast
    ours = {path.stem for path in ROOT.glob("*.py")}
    found = set()
    for path in ROOT.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        optional = {id(node) for t in ast.walk(tree) if isinstance(t, ast.Try)
                    and any(ast.unparse(h.type or ast.Name("")) in ("ImportError", "ModuleNotFoundError")
                            for h in t.handlers) for stmt in t.body for node in ast.walk(stmt)}
        for node in ast.walk(tree):
            if id(node) in optional:
                continue
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                found.add(node.module.split(".")[0])
    return found - ours - set(sys.stdlib_module_names)


def test_requirements_hold_what_the_files_import_and_no_test_package():
    """requirements.txt: what the project imports, plus numpy (torch warns on every command without it);
    the test runner and the references only in requirements-dev.txt (which .ci/run installs as well)."""
    product, dev = requirement_names("requirements.txt"), requirement_names("requirements-dev.txt")
    assert product_imports() | {"numpy"} == product
    assert {"pytest", "hypothesis", "transformers", "tokenizers", "tiktoken"} <= dev and not dev & product
    assert "-r requirements.txt" in (ROOT / "requirements-dev.txt").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip install -r requirements.txt" in ci and "pip install -r requirements-dev.txt" in ci


def test_bpe_cli_without_the_hub_is_one_line_at_once(tmp_path):
    """Without ../shared and without a network, `python bpe.py` said so after 71 s of retries: now one
    request, the local cache, and one line that names the tokenizer that works offline."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE"))}
    env.update(HF_HOME=str(tmp_path / "empty-hf-home"), HF_ENDPOINT="http://127.0.0.1:9")
    result = subprocess.run([sys.executable, str(ROOT / "bpe.py"), "Hello", "--tokenizer", "gpt2"],
                            capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)
    one_error_line(result, "could not get gpt2 from the Hugging Face Hub")
    assert "--tokenizer models/pydoc-gpt2" in result.stderr


@pytest.mark.parametrize("arch", ARCHS)
def test_generate_arguments_that_name_no_token(arch, tmp_path):
    """An empty prompt, a vocab_size of no ids and end ids that are none of the model's: a ValueError,
    on both paths (they met an IndexError or sampled from nothing)."""
    tiny_checkpoint(arch, tmp_path)
    module = importlib.import_module(arch)
    model = module.from_pretrained(tmp_path)
    ids = torch.tensor([[1, 2]])
    cases = [(dict(input_ids=torch.zeros(1, 0, dtype=torch.long)), "input_ids is empty"),
             (dict(input_ids=torch.zeros(0, 3, dtype=torch.long)), "input_ids is empty"),
             (dict(vocab_size=0), "vocab_size must be an integer >= 1"),
             (dict(vocab_size=-5), "vocab_size must be an integer >= 1"),
             (dict(vocab_size=2.5), "vocab_size must be an integer >= 1"),
             (dict(eos_token_id=[]), r"eos_token_id must be an id in \[0, 64\), a non-empty list"),
             (dict(eos_token_id=64), r"eos_token_id must be an id in \[0, 64\)"),
             (dict(eos_token_id=[1, -1]), r"eos_token_id must be an id in \[0, 64\)"),
             (dict(eos_token_id="1"), r"eos_token_id must be an id")]
    for compile in (False, True):
        for kwargs, message in cases:
            args = dict(input_ids=ids) | kwargs
            with pytest.raises(ValueError, match=message):
                module.generate(model, args.pop("input_ids"), 2, compile=compile, **args)
    out = module.generate(model, ids, 2, eos_token_id=(1, 2), vocab_size=10)                    # still fine
    assert out.shape[1] in (3, 4) and out[0, 2:].max() < 10


@pytest.mark.parametrize("arch", ARCHS)
def test_an_empty_eos_list_in_config_json_is_one_line(arch, tmp_path):
    tiny_checkpoint(arch, tmp_path)
    edit_config(tmp_path, eos_token_id=[])
    with pytest.raises(ValueError, match=r"eos_token_id must be token ids >= 0 \(an id, a non-empty list"):
        importlib.import_module(arch).from_pretrained(tmp_path)
    result = subprocess.run([sys.executable, str(ROOT / f"{arch}.py"), "--model", str(tmp_path)],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    one_error_line(result, "eos_token_id must be token ids >= 0 (an id, a non-empty list of them, or null), got []")


@pytest.mark.parametrize("arch", ARCHS)
def test_an_empty_prompt_needs_an_end_of_text_token(arch):
    from bpe import train
    module = importlib.import_module(arch)
    with_eos = train("abc abc", 256 + 2, special_tokens=["<|endoftext|>"])
    assert generation.encode_prompt(with_eos, "", 32, 4) == [with_eos.eos_token_id]
    with pytest.raises(ValueError, match="--prompt is empty and the tokenizer has no <|endoftext|>"):
        generation.encode_prompt(train("abc abc", 256 + 2), "", 32, 4)


@pytest.fixture(scope="module", params=ARCHS)
def with_dropout(request, tmp_path_factory):
    """A tiny model with dropout 0.5 everywhere, loaded: train mode would change every logit."""
    arch = request.param
    directory = tmp_path_factory.mktemp(f"dropout-{arch}")
    rates = {"gpt2": ["resid_pdrop", "embd_pdrop", "attn_pdrop"],
             "gpt_neo": ["resid_dropout", "embed_dropout", "attention_dropout"],
             "gpt_neox": ["attention_dropout", "hidden_dropout"]}[arch]
    tiny_checkpoint(arch, directory, **dict.fromkeys(rates, 0.5))
    module = importlib.import_module(arch)
    return module, module.from_pretrained(directory)


@pytest.mark.parametrize("compile", [False, True])
@pytest.mark.parametrize("training", [True, False])
def test_generate_gives_the_mode_back_when_on_token_raises(with_dropout, compile, training):
    module, model = with_dropout
    model.train(training)

    def stop(ids):
        raise KeyError("the caller's own error")
    with pytest.raises(KeyError, match="the caller's own error"):
        module.generate(model, torch.tensor([[1, 2]]), 3, on_token=stop, compile=compile)
    assert model.training == training and all(m.training == training for m in model.modules())
    model.eval()


def test_generate_from_two_threads_on_a_model_in_train_mode(with_dropout):
    """Thread A samples from a model in train mode; thread B starts while A is sampling, and A ends first.
    Before, A gave the model back its train mode while B was still sampling (B's next tokens with
    dropout), and B, which had found the model in eval mode, left it in eval mode at its end."""
    import threading
    module, model = with_dropout
    model.train()
    ids = torch.tensor([[1, 2, 3]])
    expected = module.generate(model, ids, 6, temperature=0)     # greedy in eval mode: what B must give
    a_in, b_in, a_done = threading.Event(), threading.Event(), threading.Event()
    seen, out = [], {}

    def a_step(token):                        # A is inside generate: B may start; A ends once B is inside
        a_in.set()
        assert b_in.wait(timeout=60)

    def b_step(token):
        if not seen:
            b_in.set()
            assert a_done.wait(timeout=60)
        seen.append(model.training)

    def run(name, n, on_token, done=None):
        out[name] = module.generate(model, ids, n, temperature=0, on_token=on_token)
        if done:
            done.set()
    a = threading.Thread(target=run, args=("a", 1, a_step, a_done))
    b = threading.Thread(target=run, args=("b", 6, b_step))
    a.start()
    assert a_in.wait(timeout=60)
    b.start()
    a.join(timeout=120)
    b.join(timeout=120)
    assert a_done.is_set() and seen == [False] * 6       # B sampled in eval mode after A had finished
    assert torch.equal(out["b"], expected) and model.training and all(m.training for m in model.modules())
    model.eval()


@pytest.mark.parametrize("arch", ARCHS)
def test_the_speed_line_leaves_compiling_out(arch):
    """--compile: the first decode step compiles (here 20 s), so it is named and the rate counts the steps
    after it; without --compile every token counts."""
    module = importlib.import_module(arch)
    times = [0.0, 0.5, 20.5, 20.6, 20.7, 20.8]                   # start, then 5 tokens
    assert generation.speed_line(times, compiled=False) == "[5 tokens in 20.80s: 0.2 tokens/s]"
    line = generation.speed_line(times, compiled=True)
    assert line == ("[5 tokens in 20.80s, of which 20.00s the first decode step (where torch.compile compiles): "
                    "10.0 tokens/s after it]")
    assert generation.speed_line(times[:3], compiled=True) == "[2 tokens in 20.50s: 0.1 tokens/s]"


@pytest.mark.parametrize("arch", ARCHS)
def test_the_offline_error_keeps_the_revision_and_names_the_shipped_model(arch, monkeypatch):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise ConnectionError("no network")
    monkeypatch.setattr(huggingface_hub, "model_info", offline)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    module = importlib.import_module(arch)
    with pytest.raises(OSError) as error:  # through the model file: its own shipped model is named
        module.from_pretrained("EleutherAI/pythia-70m", revision="step3000")
    message = str(error.value)
    assert "(hf download EleutherAI/pythia-70m --revision step3000)" in message
    shipped = {"gpt2": "models/pydoc-gpt2", "gpt_neo": "models/pydoc-gpt-neo", "gpt_neox": "models/pydoc-gpt-neox"}
    assert module.OFFLINE_MODEL == shipped[arch]
    assert f"{shipped[arch]}, the model of this architecture shipped here, is such a directory and works " \
        "offline" in message
    with pytest.raises(OSError, match=r"\(hf download EleutherAI/pythia-70m\)"):
        checkpoint.download("EleutherAI/pythia-70m")


def test_the_readmes_first_command_samples_offline(tmp_path):
    """The README's first command works on any machine: the shipped model, no network, no Hub cache."""
    import shlex
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    first = next(line for line in readme.splitlines() if line.startswith("pip install -r requirements.txt"))
    command = shlex.split(first.split("&&", 1)[1])
    assert command[:2] == ["python", "gpt2.py"] and "models/pydoc-gpt2" in command
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE"))}
    env.update(HF_HOME=str(tmp_path / "empty-hf-home"), HF_ENDPOINT="http://127.0.0.1:9")
    result = subprocess.run([sys.executable, *command[1:], "--max-new-tokens", "8"], capture_output=True,
                            text=True, cwd=ROOT, env=env, timeout=120)
    prompt = command[command.index("--prompt") + 1]
    assert result.returncode == 0 and result.stdout.startswith(prompt), result.stderr
    assert len(result.stdout) > len(prompt) + 1 and "tokens/s" in result.stderr


def test_the_readme_lists_every_file_and_the_docs_name_the_current_hub_cli():
    """The README's file list names every file a user meets (bpe_fast.py and models/ were missing), and
    no page says `huggingface-cli`, which huggingface_hub has replaced with `hf`."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    listed = readme.split("## The files", 1)[1].split("```")[1]
    names = {line.split()[0] for line in listed.strip().splitlines()}
    expected = {p.name for p in ROOT.glob("*.py")} | {f"{d}/" for d in ("models", "tests", "bench", "docs")}
    assert expected <= names, expected - names
    for page in [ROOT / "README.md", *ROOT.glob("docs/*.md")]:
        assert "huggingface-cli" not in page.read_text(encoding="utf-8"), page
