"""Copying a model into another project, as the README says:

(a) the model, with loading, saving and generation: the model file, attention.py, kv_cache.py, checkpoint.py,
    hub.py and generation.py;
(b) sampling from the command line: (a) and bpe.py (bpe_fast.py for its speed).

Each set runs from a directory holding only those files. An optional module that is absent (bpe.py,
quantize.py, tp.py) is one `error:` line naming the file to copy, never a traceback. And the lesson (each
model file up to "the lesson ends here") runs alone, with only torch, attention.py and kv_cache.py."""
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import ROOT
from reference import assert_close
from test_hostile_inputs import ARCHS, tiny_checkpoint

MODEL_FILES = ["attention.py", "kv_cache.py", "checkpoint.py", "hub.py", "generation.py"]  # (a), beside the model file
CLI_FILES = MODEL_FILES + ["bpe.py"]  # (b)
LESSON = "the lesson ends here"

# One process for the three (starting Python and torch is most of the cost); each model is imported from
# its own directory with only its files, and what it imported is forgotten before the next.
RUN = """
import importlib, sys, torch
ids = torch.tensor([[3, 9, 4, 1, 7]])
results = {}
for arch, project, checkpoint in zip(sys.argv[1::3], sys.argv[2::3], sys.argv[3::3]):
    sys.path.insert(0, project)
    module = importlib.import_module(arch)
    model = module.from_pretrained(checkpoint)
    module.save_pretrained(model, project + "/saved")
    again = module.from_pretrained(project + "/saved")
    try:
        module.from_pretrained(checkpoint, quantize="int8")
        quantize_error = None
    except ValueError as e:
        quantize_error = str(e)
    results[arch] = {"logits": model(ids), "saved": again(ids),
                     "tokens": module.generate(model, ids, 6, temperature=0),
                     "modules": sorted(sys.modules), "quantize_error": quantize_error}
    sys.path.remove(project)
    for name in (arch, "attention", "kv_cache", "checkpoint", "hub", "generation"):
        del sys.modules[name]
torch.save(results, "out.pt")
"""


def project(directory, arch, files):
    directory.mkdir(parents=True)
    for name in (f"{arch}.py", *files):
        shutil.copy(ROOT / name, directory / name)
    return directory


def test_the_model_files_load_save_and_generate_in_an_empty_directory(tmp_path):
    args, refs = [], {}
    for arch in ARCHS:
        refs[arch] = tiny_checkpoint(arch, tmp_path / arch / "checkpoint")
        args += [arch, str(project(tmp_path / arch / "project", arch, MODEL_FILES)), str(tmp_path / arch / "checkpoint")]
    # -E: no PYTHONPATH, so nothing of this repository is importable but the copies
    result = subprocess.run([sys.executable, "-E", "-c", RUN, *args], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    out = torch.load(tmp_path / "out.pt", weights_only=True)
    ids = torch.tensor([[3, 9, 4, 1, 7]])
    for arch, ref in refs.items():
        assert not {"tp", "quantize", "bpe", "bpe_fast", "heads"} & set(out[arch]["modules"]), arch
        assert out[arch]["quantize_error"] == "this needs quantize.py: copy it from gpt-from-scratch beside the " \
            "model file"
        ref.generation_config.eos_token_id = None  # greedy to the end, as generate without eos_token_id
        with torch.no_grad():
            assert_close(out[arch]["logits"], ref(ids).logits, f"{arch} copied file's logits")
            expected = ref.generate(ids, max_new_tokens=6, do_sample=False, attention_mask=torch.ones_like(ids))
        assert torch.equal(out[arch]["saved"], out[arch]["logits"]), arch
        assert torch.equal(out[arch]["tokens"], expected), arch


def run_cli(directory, arch, *args, env=None):
    return subprocess.run([sys.executable, "-E", f"{arch}.py", *args], cwd=directory, capture_output=True,
                          text=True, timeout=120, env=env)


def test_the_sampling_cli_runs_from_its_files_and_names_what_is_missing(tmp_path):
    """(b) samples; without bpe.py, with --quantize and no quantize.py, and under torchrun's environment
    without tp.py: one error line each, naming the file."""
    model = ROOT / "models" / "pydoc-gpt2"
    cli = project(tmp_path / "cli", "gpt2", CLI_FILES)
    sample = run_cli(cli, "gpt2", "--model", str(model), "--max-new-tokens", "5", "--temperature", "0")
    assert sample.returncode == 0 and sample.stdout.startswith("Hello, I'm a language model,"), sample.stderr
    reference = subprocess.run([sys.executable, "gpt2.py", "--model", str(model), "--max-new-tokens", "5",
                                "--temperature", "0"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert sample.stdout == reference.stdout

    bare = project(tmp_path / "bare", "gpt2", MODEL_FILES)
    cases = [(bare, [], None, "bpe.py"),
             (cli, ["--quantize", "int8"], None, "quantize.py"),
             (cli, [], {"WORLD_SIZE": "2", "RANK": "0"}, "tp.py")]
    for directory, extra, env, missing in cases:
        env = None if env is None else {"PATH": "/usr/bin:/bin", **env}
        result = run_cli(directory, "gpt2", "--model", str(model), "--max-new-tokens", "2", *extra, env=env)
        assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.strip().splitlines() == [f"error: this needs {missing}: copy it from "
                                                       "gpt-from-scratch beside the model file"], result.stderr


SMALL = {"gpt2": "n_layer=2, n_embd=32, n_head=2, vocab_size=100",
         "gpt_neo": "num_layers=2, hidden_size=32, num_heads=2, vocab_size=100, attention_types=[[['global', 'local'], 1]]",
         "gpt_neox": "num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64, vocab_size=100"}

# Run in one process for the three (starting Python and torch is most of the cost): each lesson is imported
# from its own directory, where only it, attention.py and kv_cache.py are.
LESSON_RUN = """
import importlib, sys, torch
sys.modules['checkpoint'] = sys.modules['generation'] = None  # never imported by a lesson
for arch, directory, small in zip(sys.argv[1::3], sys.argv[2::3], sys.argv[3::3]):
    sys.path.insert(0, directory)
    lesson = importlib.import_module('lesson_' + arch)
    configs = [c for c in vars(lesson).values() if isinstance(c, type) and c.__name__.endswith('Config')]
    models = [m for m in vars(lesson).values()
              if isinstance(m, type) and m.__name__.endswith(('LMHeadModel', 'ForCausalLM'))]
    assert len(configs) == len(models) == 1, arch
    Config, Model = configs[0], models[0]
    with torch.device('meta'):
        logits = Model(Config())(torch.zeros(1, 4, dtype=torch.long, device='meta'))
    assert logits.shape == (1, 4, Config().vocab_size), (arch, logits.shape)
    torch.manual_seed(0)
    model = lesson.from_config(eval(f'Config({small})')).eval()
    out = model(torch.tensor([[1, 2, 3]]))
    assert out.shape == (1, 3, 100) and torch.isfinite(out).all(), arch
    sys.path.remove(directory)
    for name in ('attention', 'kv_cache'):
        del sys.modules[name]
    print(arch, 'ok')
"""


def test_the_lessons_run_alone(tmp_path):
    """The lines of each model file before "the lesson ends here", with only torch, attention.py and
    kv_cache.py importable, define a config and a model that computes logits with the architecture's
    default config (built on the meta device: the shapes and the code path, without the memory of a
    full-size model), and a small one that computes real logits."""
    args = []
    for arch in ARCHS:
        directory = tmp_path / arch
        directory.mkdir()
        source = (ROOT / f"{arch}.py").read_text()
        (directory / f"lesson_{arch}.py").write_text(source[:source.index(LESSON)])
        for name in ("attention.py", "kv_cache.py"):
            shutil.copy(ROOT / name, directory / name)
        args += [arch, str(directory), SMALL[arch]]
    result = subprocess.run([sys.executable, "-E", "-c", LESSON_RUN, *args], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.split() == [w for a in ARCHS for w in (a, "ok")], \
        result.stderr


@pytest.mark.parametrize("arch, limit", [("gpt2", 420), ("gpt_neo", 470), ("gpt_neox", 470)])
def test_a_model_file_is_mostly_its_lesson(arch, limit):
    """A model file is its architecture: short, and at least two thirds of it the lesson."""
    lines = (ROOT / f"{arch}.py").read_text().splitlines()
    lesson = next(i for i, line in enumerate(lines) if LESSON in line)
    print(f"{arch}.py: {len(lines)} lines, the lesson {lesson} ({lesson / len(lines):.0%})")
    assert len(lines) <= limit and lesson >= 2 / 3 * len(lines)
