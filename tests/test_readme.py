"""What a new user meets first: the README's set-up line, GPT-2's shipped tokenizer files, the words of the
docs, and every exercise of the README's course, run as written with the output it states."""
import hashlib
import os
import re
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT, SHARED

import bpe

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
    """`python bpe.py "Hello world"` in a directory holding only bpe.py, bpe_fast.py and models/ (no ../shared
    beside it, no Hub cache, no network): tiktoken's ids."""
    assert bpe.DEFAULT_TOKENIZER == GPT2_TOKENIZER
    clone = tmp_path / "clone" / "gpt-from-scratch"
    (clone / "models").mkdir(parents=True)
    for name in ("bpe.py", "bpe_fast.py"):
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
    return re.sub(r"`[^`\n]*`", "", text)


@pytest.mark.parametrize("path", [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))],
                         ids=lambda p: p.relative_to(ROOT).as_posix())
def test_docs_say_what_was_measured_not_issue_numbers_or_targets(path):
    """The docs are for users: no "issue 7", no "target 30 s missed"; a figure says what it means."""
    text = prose(path)
    found = [m.group(0) for m in re.finditer(r"(?i)\bissues?\s*#?\d+|#\d+\b|\btargets?\b", text)]
    assert not found, f"{path.name}: {found}"
