"""How the files hang together: imports go one way (no circle, lazy imports included), bpe.py never imports
bpe_fast.py, and the causal LM's forward takes transformers' output_attentions / output_hidden_states."""
import ast
import importlib

import pytest
import torch
from conftest import ROOT
from reference import assert_close
from test_hostile_inputs import ARCHS, tiny_checkpoint

OURS = sorted(p.stem for p in ROOT.glob("*.py"))


def imports(name):
    """The project's modules that `name`.py imports with an import statement, anywhere in the file."""
    found = set()
    for node in ast.walk(ast.parse((ROOT / f"{name}.py").read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & set(OURS) - {name}


def test_no_import_circles():
    graph = {name: imports(name) for name in OURS}
    done, path = set(), []

    def visit(name):
        assert name not in path, "import circle: " + " -> ".join(path[path.index(name):] + [name])
        if name in done:
            return
        path.append(name)
        for other in graph[name]:
            visit(other)
        path.pop()
        done.add(name)
    for name in OURS:
        visit(name)
    assert "bpe_fast" not in graph["bpe"] and "bpe" in graph["bpe_fast"]
    for shared in ("checkpoint", "generation", "hub", "tp", "quantize"):  # they import no model file
        assert not graph[shared] & {"gpt2", "gpt_neo", "gpt_neox"}, shared
    assert graph["hub"] == set()  # no torch, nothing of ours: bpe.py runs on it alone


@pytest.mark.parametrize("arch", ARCHS)
def test_the_causal_lm_takes_output_attentions_and_hidden_states(arch, tmp_path):
    """model(ids, output_attentions=True, output_hidden_states=True): transformers' hidden states and
    attentions (and its loss with labels); logits_to_keep=1: the last position's logits."""
    ref = tiny_checkpoint(arch, tmp_path, attn_implementation="eager")  # (transformers' probabilities)
    module = importlib.import_module(arch)
    model = module.from_pretrained(tmp_path, attn="naive")
    ids = torch.tensor([[3, 9, 4, 1, 7, 2]])
    with torch.no_grad():
        expected = ref(ids, labels=ids, output_attentions=True, output_hidden_states=True)
        logits, loss, hidden_states, attentions = model(ids, labels=ids, output_attentions=True,
                                                        output_hidden_states=True)
        assert_close(logits, expected.logits, f"{arch} logits with output flags")
        assert_close(loss, expected.loss, f"{arch} loss with output flags")
        assert len(hidden_states) == len(expected.hidden_states) and len(attentions) == len(expected.attentions)
        for ours, theirs in zip(hidden_states, expected.hidden_states):
            assert_close(ours, theirs, f"{arch} hidden states from the causal LM")
        for ours, theirs in zip(attentions, expected.attentions):
            assert_close(ours, theirs, f"{arch} attentions from the causal LM")
        _, only_hidden, no_attentions = model(ids, output_hidden_states=True)
        assert no_attentions is None and len(only_hidden) == len(hidden_states)
        assert_close(model(ids, logits_to_keep=1), model(ids)[:, -1:], f"{arch} logits_to_keep=1")
        assert torch.equal(model(ids), logits)


@pytest.mark.parametrize("arch, config", [("gpt2", "GPT2Config"), ("gpt_neo", "GPTNeoConfig"),
                                          ("gpt_neox", "GPTNeoXConfig")])
def test_the_config_classes_keep_their_readers(arch, config):
    """The users' API of the config classes: from_dict and from_json, as before the plumbing moved."""
    module = importlib.import_module(arch)
    directory = ROOT / "models" / {"gpt2": "pydoc-gpt2", "gpt_neo": "pydoc-gpt-neo",
                                   "gpt_neox": "pydoc-gpt-neox"}[arch]
    cls = getattr(module, config)
    from_json = cls.from_json(directory / "config.json")
    assert type(from_json) is cls and from_json == module.load_config(directory)
    assert from_json.num_hidden_layers == module.load_config(directory).num_hidden_layers >= 1
