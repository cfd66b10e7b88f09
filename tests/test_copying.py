"""Copying a model into another project takes three files: the model file, attention.py and kv_cache.py.
Loading, the forward pass and generation run from a directory holding only those (tp.py is imported only
under torchrun, quantize.py only with quantize=, bpe.py only by the sampling CLI)."""
import shutil
import subprocess
import sys

import torch
from conftest import ROOT
from reference import assert_close
from test_hostile_inputs import ARCHS, tiny_checkpoint

# One process for the three (starting Python and torch is most of the cost); each model is imported from
# its own directory with only its three files, and what it imported is forgotten before the next.
RUN = """
import importlib, sys, torch
ids = torch.tensor([[3, 9, 4, 1, 7]])
results = {}
for arch, project, checkpoint in zip(sys.argv[1::3], sys.argv[2::3], sys.argv[3::3]):
    sys.path.insert(0, project)
    module = importlib.import_module(arch)
    model = module.from_pretrained(checkpoint)
    results[arch] = {"logits": model(ids), "tokens": module.generate(model, ids, 6, temperature=0),
                     "modules": sorted(sys.modules)}
    sys.path.remove(project)
    for name in (arch, "attention", "kv_cache"):
        del sys.modules[name]
torch.save(results, "out.pt")
"""


def test_three_files_load_and_generate_in_an_empty_directory(tmp_path):
    args, refs = [], {}
    for arch in ARCHS:
        refs[arch] = tiny_checkpoint(arch, tmp_path / arch / "checkpoint")
        project = tmp_path / arch / "project"
        project.mkdir()
        for name in (f"{arch}.py", "attention.py", "kv_cache.py"):
            shutil.copy(ROOT / name, project / name)
        args += [arch, str(project), str(tmp_path / arch / "checkpoint")]
    # -E: no PYTHONPATH, so nothing of this repository is importable but the copies
    result = subprocess.run([sys.executable, "-E", "-c", RUN, *args], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    out = torch.load(tmp_path / "out.pt", weights_only=True)
    ids = torch.tensor([[3, 9, 4, 1, 7]])
    for arch, ref in refs.items():
        assert not {"tp", "quantize", "bpe", "heads"} & set(out[arch]["modules"]), arch
        ref.generation_config.eos_token_id = None  # greedy to the end, as generate without eos_token_id
        with torch.no_grad():
            assert_close(out[arch]["logits"], ref(ids).logits, f"{arch} copied file's logits")
            expected = ref.generate(ids, max_new_tokens=6, do_sample=False, attention_mask=torch.ones_like(ids))
        assert torch.equal(out[arch]["tokens"], expected), arch
