"""What a new user meets first: the README's set-up line, GPT-2's shipped tokenizer files, the words of the
docs, and every exercise of the README's course, run as written with the output it states."""
import contextlib
import hashlib
import io
import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, SHARED

import bpe
import quantize

README = (ROOT / "README.md").read_text(encoding="utf-8")
GPT2_TOKENIZER = ROOT / "models" / "gpt2-tokenizer"


def offline_env(tmp_path):
    """No Hub cache and no network: what a plain clone on a machine without either has."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE"))}
    env.update(HF_HOME=str(tmp_path / "empty-hf-home"), HF_ENDPOINT="http://127.0.0.1:9", HF_HUB_OFFLINE="1")
    return env


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------- GPT-2's tokenizer, shipped

@pytest.mark.parametrize("name", ["vocab.json", "merges.txt"])
def test_shipped_gpt2_tokenizer_is_the_shared_one(name):
    """models/gpt2-tokenizer holds ../shared's GPT-2 files byte for byte (and the digests SOURCE.md states)."""
    shipped = GPT2_TOKENIZER / name
    assert sha256(shipped) in (GPT2_TOKENIZER / "SOURCE.md").read_text(encoding="utf-8")
    shared = SHARED / "tokenizers" / "gpt2" / name
    if not shared.is_file():
        pytest.skip(f"{shared} not found: nothing to compare the shipped file with")
    assert sha256(shipped) == sha256(shared)


def test_bpe_cli_default_is_the_shipped_tokenizer_on_a_plain_clone(tmp_path):
    """`python bpe.py "Hello world"` in a directory holding only bpe.py, bpe_fast.py, hub.py and models/ (no ../shared
    beside it, no Hub cache, no network): tiktoken's ids."""
    assert bpe.DEFAULT_TOKENIZER == GPT2_TOKENIZER
    clone = tmp_path / "clone" / "gpt-from-scratch"
    (clone / "models").mkdir(parents=True)
    for name in ("bpe.py", "bpe_fast.py", "hub.py"):
        shutil.copy(ROOT / name, clone)
    shutil.copytree(GPT2_TOKENIZER, clone / "models" / "gpt2-tokenizer")
    result = subprocess.run([sys.executable, "bpe.py", "Hello world"], capture_output=True, text=True,
                            cwd=clone, env=offline_env(tmp_path), timeout=120)
    assert result.returncode == 0, result.stderr
    assert "ids: [15496, 995]" in result.stdout.splitlines()
    assert f"tokenizer: {clone / 'models' / 'gpt2-tokenizer'}:" in result.stdout


# ---------------------------------------------------------------------------- the docs speak to users

def prose(path):
    """A page without its code blocks and `code spans` (sample text and names may say "target")."""
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    return re.sub(r"`[^`]*`", "", text)


@pytest.mark.parametrize("path", [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))],
                         ids=lambda p: p.relative_to(ROOT).as_posix())
def test_docs_say_what_was_measured_not_issue_numbers_or_targets(path):
    """The docs are for users: no "issue 7", no "target 30 s missed"; a figure says what it means."""
    text = prose(path)
    found = [m.group(0) for m in re.finditer(r"(?i)\bissues?\s*#?\d+|#\d+\b|\btargets?\b", text)]
    assert not found, f"{path.name}: {found}"


# ---------------------------------------------------------------------------- set-up

def test_readme_installs_a_cpu_only_torch_on_a_machine_without_a_gpu():
    """The set-up block has a line for a machine without a GPU (PyTorch's CPU-only wheels, not GBs of CUDA
    libraries) and one for the default build, before the requirements; .ci/run keeps its pin."""
    setup = README.split("## Set up", 1)[1].split("```")[1]
    lines = [line.split("#")[0].strip() for line in setup.strip().splitlines()]
    cpu = "pip install torch --index-url https://download.pytorch.org/whl/cpu"
    assert cpu in lines and "pip install torch" in lines
    assert lines.index(cpu) < lines.index("pip install torch") < next(
        i for i, line in enumerate(lines) if line.startswith("pip install -r requirements.txt"))
    assert "pip install torch==2.13.0" in (ROOT / ".ci" / "run").read_text()


# ---------------------------------------------------------------------------- the course's exercises
COURSE = README.split("## Reading it as a course", 1)[1].split("\n## ", 1)[0]


def course_commands():
    """Every command of the course, as written: `inline` ones and the lines of ``` blocks."""
    blocks = re.findall(r"```\n(.*?)```", COURSE, flags=re.S)
    spans = re.findall(r"`([^`]+)`", re.sub(r"```.*?```", "", COURSE, flags=re.S))
    commands = [" ".join(span.split()) for span in spans] + [
        line.strip() for block in blocks for line in block.splitlines()]
    return [c for c in commands if c.startswith(("python ", "torchrun "))]


def run(command, tmp_path):
    """A README command run in this process (torch is imported once, not per command): `python -c` code
    and `python script.py args` as `python` would run them, with the global RNG left as it was. stdout."""
    argv = shlex.split(command)
    out = io.StringIO()
    with torch.random.fork_rng(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        if argv[1] == "-c":
            cwd = os.getcwd()
            # (the topics.txt line writes into the current directory; the others read models/ from the clone)
            os.chdir(tmp_path if "open(" in argv[2] else ROOT)
            try:
                exec(compile(argv[2], "<README>", "exec"), {"__name__": "__main__"})
            finally:
                os.chdir(cwd)
        else:
            old_argv, sys.argv = sys.argv, argv[1:]
            try:
                runpy.run_path(str(ROOT / argv[1]), run_name="__main__")
            except SystemExit as exit_:
                assert exit_.code in (None, 0), exit_.code
            finally:
                sys.argv = old_argv
    return out.getvalue()


def number(text):
    return float(re.search(r"tensor\(([-0-9.e+]+)", text).group(1))


def texts(tmp_path, cache={}):
    """The outputs of the course's gpt2.py commands that others are compared with, each run once."""
    for command in course_commands():
        if command.startswith("python gpt2.py") and "--compile" not in command and command not in cache:
            cache[command] = run(command, tmp_path)
    return cache


def the(*flags, prompt="The for statement"):
    """The course's gpt2.py command on --prompt with exactly these extra flags."""
    for command in course_commands():
        argv = shlex.split(command)
        if argv[1] == "gpt2.py" and f"--prompt {prompt}" in " ".join(argv) and \
                argv[argv.index("--temperature") + 2:] == list(flags):
            return command
    raise AssertionError(f"no gpt2.py command with --prompt {prompt!r} and {flags} in the course")


def check_attention(out, tmp_path):
    assert number(out) < 1e-6


def check_untrained_loss(out, tmp_path):
    loss, log_v = map(float, out.split())
    assert abs(loss - log_v) < 0.1 and abs(log_v - 7.6246) < 1e-3


def check_local_window(out, tmp_path):
    values = [float(v) for v in re.findall(r"\d+\.\d+", out)]
    assert len(values) == 12 and all(v > 0 for v in values[:7]) and all(v == 0 for v in values[7:])


def check_rotary_shift(out, tmp_path):
    assert number(out) < 1e-6


def check_topics(out, tmp_path):
    assert (tmp_path / "topics.txt").stat().st_size > 400_000


def check_sample(out, tmp_path, prompt="The with statement"):
    assert out.startswith(prompt) and len(out) > len(prompt) + 20


def check_bpe(out, tmp_path):
    assert "ids: [15496, 995]" in out.splitlines()


def check_fp32(out, tmp_path):
    check_sample(out, tmp_path, "The for statement")


def check_int8_alone(out, tmp_path):
    assert out == texts(tmp_path)[the()]


def check_bf16_alone(out, tmp_path):
    fp32 = texts(tmp_path)[the()]
    assert out != fp32 and out.count("\n") > fp32.count("\n")
    assert '"try"' in out and '"except"' in out and '"try"' not in fp32 and '"except"' not in fp32


def check_int8_default(out, tmp_path):
    fp32, bf16 = texts(tmp_path)[the()], texts(tmp_path)[the("--dtype", "bfloat16")]
    if quantize.fast_kernels("cpu"):  # int8 inputs too: the 20th word parts
        assert out.split()[:19] == fp32.split()[:19] and out.split()[19:21] == ["executed", "in"] != fp32.split()[19:21]
    else:  # bfloat16 activations
        assert out != fp32 and out.split()[:-1] == fp32.split()[:-1]
        assert out.split("else")[1] == bf16.split("else")[1]  # the blank lines of bfloat16 alone


def check_default_prompt(out, tmp_path):
    check_sample(out, tmp_path, "Hello, I'm a language model,")


def check_save_and_reload(out, tmp_path):
    assert out.strip() == "True ['config.json', 'merges.txt', 'model.safetensors', 'vocab.json']"


def check_neox(out, tmp_path):
    check_sample(out, tmp_path)


# A course command -> (what the README states about its output, the check of that output). A command is
# found by a piece of it; a check with "skip" names what tests it instead.
CHECKS = [
    ("attention as a", "prints a number below 1e-6", check_attention),
    ("import torch, gpt2;", "prints two numbers within 0.1 of each other", check_untrained_loss),
    ("gpt2.save_pretrained(m, d)", "prints `True ['config.json', 'merges.txt', 'model.safetensors', 'vocab.json']`",
     check_save_and_reload),
    ("gpt_neo as n", "positions 0 to 6 above 0, positions 7 to 11 exactly `0.0000`", check_local_window),
    ("gpt_neox as n", "prints a number below 1e-6", check_rotary_shift),
    ("pydoc_data.topics", "", check_topics),
    ("gpt_neox.py --model models/pydoc-gpt-neox", "", check_neox),
    ('bpe.py "Hello world"', "ends with `ids: [15496, 995]`", check_bpe),
    ('--prompt "The with statement" --temperature 0 --compile', "skip: compiling takes ~15 s on 2 cores; "
     "tests/test_fast_paths.py::test_cli_compile_prints_the_eager_text runs the CLI with and without it", None),
    ('--prompt "The with statement" --temperature 0', "prints exactly what", check_sample),
    ("train.py --data topics.txt", "skip: ~1 minute on 2 cores; tests/test_train.py checks that the loss "
     "falls, on tiny models", None),
    ("--temperature 0 --quantize int8 --dtype float32", "the weight-only reference) print exactly the fp32 text",
     check_int8_alone),
    ("--temperature 0 --dtype bfloat16", 'then "try" and "except" where fp32 says "else"', check_bf16_alone),
    ('"The for statement" --temperature 0 --quantize int8', "keep fp32's first 19 words, then part at a",
     check_int8_default),
    ('"The for statement" --temperature 0', "The first is fp32", check_fp32),
    ("bench/quantize.py", "skip: a benchmark of minutes (docs/quantization.md has its figures)", None),
    ("torchrun --nproc-per-node 2", "skip: tests/test_tp.py runs gpt2.py under torchrun against one process",
     None),
    ("gpt2.py --model models/pydoc-gpt2 --temperature 0", "prints exactly the text", check_default_prompt),
]


def check_for(command):
    """The first entry of CHECKS whose piece is in the command."""
    return next(((piece, stated, check) for piece, stated, check in CHECKS if piece in command), None)


def test_every_course_command_has_a_check():
    commands = course_commands()
    assert len(commands) >= 15
    missing = [c for c in commands if check_for(c) is None]
    assert not missing, f"README course commands without a check in CHECKS: {missing}"
    used = {check_for(c)[0] for c in commands}
    assert not [piece for piece, _, _ in CHECKS if piece not in used], "a check whose command left the README"


@pytest.mark.parametrize("command", course_commands(), ids=lambda c: c[:70])
def test_course_command_prints_what_the_readme_says(command, tmp_path):
    piece, stated, check = check_for(command)
    if stated.startswith("skip: "):
        pytest.skip(stated.removeprefix("skip: "))
    assert stated in " ".join(COURSE.split()), f"the README no longer states {stated!r} for {piece!r}"
    check(texts(tmp_path).get(command) or run(command, tmp_path), tmp_path)


def test_int8_alone_can_flip_a_near_tie_on_another_prompt(tmp_path):
    """The README's caveat to exercise 8: on --prompt The, int8 weights with fp32 activations part from fp32."""
    assert "with `--prompt The --max-new-tokens 40` its 10th new token is not fp32's" in " ".join(COURSE.split())
    command = "python gpt2.py --model models/pydoc-gpt2 --prompt The --temperature 0 --max-new-tokens 40"
    fp32, int8 = run(command, tmp_path), run(command + " --quantize int8 --dtype float32", tmp_path)
    tokenizer = bpe.Tokenizer.from_pretrained(ROOT / "models" / "pydoc-gpt2")
    a, b = tokenizer.encode(fp32), tokenizer.encode(int8)
    assert a[:10] == b[:10] and a[10] != b[10]  # the prompt's 1 token, 9 the same, then the 10th


@pytest.mark.parametrize("path", ["topics.txt", "argparse.py", "out/model.safetensors", "pydoc-gpt2/config.json",
                                  "pydoc-gpt-neo/config.json", "pydoc-gpt-neox/config.json", "argparse-gpt2/loss.csv"])
def test_what_the_docs_commands_write_is_ignored_by_git(path):
    """The files docs/training.md's and the README's commands write into the project are not offered to git."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    result = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT, capture_output=True)
    assert result.returncode == 0, f"{path} is not in .gitignore"
    assert subprocess.run(["git", "check-ignore", "-q", "models/pydoc-gpt2/config.json"], cwd=ROOT).returncode == 1
