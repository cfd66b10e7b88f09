"""Long work shows a progress bar on stderr when it is a terminal (loading, quantizing, saving a sharded
checkpoint: bytes done and left, and the rate), and stays quiet otherwise."""
import io
import sys

import pytest
import torch
from huggingface_hub.utils import tqdm as hf_tqdm

import gpt2
import hub


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("terminal", [True, False])
def test_a_sharded_quantized_load_and_save_show_progress_on_a_terminal_only(terminal, tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = gpt2.from_config(gpt2.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=2, n_positions=16))
    gpt2.save_pretrained(model, tmp_path / "fp32", max_shard_size=20_000)
    stderr = Terminal() if terminal else io.StringIO()
    monkeypatch.setattr(hub.sys, "stderr", stderr)
    monkeypatch.setattr(hub, "PROGRESS_MIN_BYTES", 0)  # (a real checkpoint is larger than 64 MB)
    # conftest turns huggingface_hub's bars off for the suite (HF_HUB_DISABLE_PROGRESS_BARS), and some tests
    # (and transformers' tests switch them off globally): on for this test
    monkeypatch.setattr(sys.modules[hf_tqdm.__module__], "are_progress_bars_disabled", lambda name=None: False)
    quantized = gpt2.from_pretrained(tmp_path / "fp32", quantize="int8")
    gpt2.save_pretrained(quantized, tmp_path / "int8", max_shard_size=5_000)
    assert (tmp_path / "int8" / "model.safetensors.index.json").exists()
    shown = stderr.getvalue()
    if terminal:
        for what in ("reading fp32", "quantizing to int8", "saving"):
            assert what in shown, shown
        assert "B/s" in shown  # (bytes and the rate; a run this short clears its bar before 100% shows)
    else:
        assert shown == ""
