"""Shared test settings: hypothesis profiles and where the real tokenizer files are."""
import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# Building a reference model per example is slow-ish, so examples are capped. The default profile is
# derandomized and keeps no database: every run draws the same examples, so the suite passes or fails the
# same way every time, whatever .hypothesis/ holds. HYPOTHESIS_PROFILE=thorough draws 200 new examples per
# property (minutes per test) when you change the code: that is where new counterexamples are found.
_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("ci", max_examples=8, derandomize=True, database=None, **_common)
settings.register_profile("thorough", max_examples=200, **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # save_pretrained's bars, once per example

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/reference.py
SHARED = ROOT.parent / "shared"
HOW_TO_GET = ("put the files in ../shared/tokenizers/ beside the project (see ../shared/README.md) or in the "
              "Hub cache: `hf download {repo} {files}` while online")


def shared_tokenizer_dir(name: str, repo: str, files: list[str]) -> Path:
    """The directory holding a real tokenizer's `files`: ../shared/tokenizers/<name>, else the Hub cache
    of `repo`, else the test is skipped with a reason that says how to get them."""
    local = SHARED / "tokenizers" / name
    if all((local / f).exists() for f in files):
        return local
    try:
        from huggingface_hub import snapshot_download
        cached = Path(snapshot_download(repo, allow_patterns=files, local_files_only=True))
        if all((cached / f).exists() for f in files):
            return cached
    except Exception:
        pass
    pytest.skip(f"{name} tokenizer files {files} not found: " + HOW_TO_GET.format(repo=repo, files=" ".join(files)))


def pytest_terminal_summary(terminalreporter):
    """Print the largest |Δ| against the reference that each comparison saw (for the issue notes)."""
    from reference import LARGEST
    if LARGEST:
        terminalreporter.section("largest |Δ| against the reference")
        for name, worst in sorted(LARGEST.items()):
            terminalreporter.write_line(f"{name:60s} {worst:.3e}")
