"""The three model files share their loading, generation and command line word for word, apart from the
Hub's names for the same things (GPT2Config / GPTNeoConfig, n_layer / num_layers, lm_head / embed_out, ...).
That is by design, so that `diff gpt2.py gpt_neox.py` shows the architecture and nothing else. Like
transformers' "Copied from" check, this test keeps it so: every shared function and constant of gpt2.py,
with the renames below, must be in the other files as it is, and the test names the first line that drifted.
"""
import ast
import re

import pytest
from conftest import ROOT

SHARED = [
    # config
    "MODEL_FILES", "check_model_type", "check_field_types",
    # model
    "check_inputs", "positions_from_mask", "lm_loss",
    # a new model, for training (init_weights is architecture: GPT-2 scales its residual projections)
    "from_config",
    # loading
    "WEIGHT_FILES", "TOKENIZER_FILES", "DTYPES", "checkpoint_dir", "download", "read_json", "read_state_dict",
    "shard_names", "read_weights_file", "check_state_dict", "check_finite", "torch_dtype", "check_device",
    "from_pretrained", "hub_config", "save_pretrained",
    # generation
    "check_sampling", "top_k_filter", "top_p_filter", "sample_next", "last_logits", "check_generation",
    "generate", "choose_next", "eos_ids", "generate_compiled",
    # command line
    "parse_args", "encode_prompt", "main",
]
# gpt2.py's name -> the other file's name for the same thing (the Hub's names: config.json keys, module keys).
RENAMES = {
    "gpt_neo": {"GPT2Config": "GPTNeoConfig", "GPT2LMHeadModel": "GPTNeoForCausalLM",
                "n_positions": "max_position_embeddings", "n_layer": "num_layers", "n_head": "num_heads"},
    "gpt_neox": {"GPT2Config": "GPTNeoXConfig", "GPT2LMHeadModel": "GPTNeoXForCausalLM",
                 "n_positions": "max_position_embeddings", "n_layer": "num_hidden_layers",
                 "n_head": "num_attention_heads",
                 "transformer": "gpt_neox", "lm_head": "embed_out", "wte": "embed_in"},
}


def rename(source, file):
    for ours, theirs in RENAMES[file].items():
        source = re.sub(rf"\b{ours}\b", theirs, source)
    return source


def definitions(path):
    """{name: source} of the module-level functions and assignments of a file."""
    source = path.read_text()
    found = {}
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            found[node.name] = ast.get_source_segment(source, node, padded=True)
            start = min([d.lineno for d in node.decorator_list], default=node.lineno)
            found[node.name] = "\n".join(source.splitlines()[start - 1:node.end_lineno])
        elif isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            found[node.targets[0].id] = ast.get_source_segment(source, node)
    return found


def first_drift(expected, actual):
    for i, (a, b) in enumerate(zip(expected.splitlines(), actual.splitlines())):
        if a != b:
            return i, a, b
    n = min(len(expected.splitlines()), len(actual.splitlines()))
    return n, "(end)" if n == len(expected.splitlines()) else expected.splitlines()[n], "(end)"


@pytest.mark.parametrize("file", list(RENAMES))
def test_shared_sections_are_identical(file):
    ours, theirs = definitions(ROOT / "gpt2.py"), definitions(ROOT / f"{file}.py")
    drifted = []
    for name in SHARED:
        assert name in ours, f"gpt2.py has no {name}: update SHARED"
        if name not in theirs:
            drifted.append(f"{file}.py has no {name}")
        elif rename(ours[name], file) != theirs[name]:
            i, a, b = first_drift(rename(ours[name], file), theirs[name])
            drifted.append(f"{file}.py {name}, line {i + 1} of it:\n  gpt2.py (renamed): {a}\n  {file}.py:         {b}")
    assert not drifted, "shared sections drifted from gpt2.py:\n" + "\n".join(drifted)


def test_the_check_sees_a_one_line_edit(tmp_path):
    """Editing one copy alone is caught, and the message names the line."""
    source = (ROOT / "gpt_neo.py").read_text()
    edited = source.replace("    probs = F.softmax(logits, dim=-1)\n", "    probs = F.softmax(logits, dim=1)\n", 1)
    assert edited != source
    (tmp_path / "gpt_neo.py").write_text(edited)
    ours, theirs = definitions(ROOT / "gpt2.py"), definitions(tmp_path / "gpt_neo.py")
    assert rename(ours["sample_next"], "gpt_neo") != theirs["sample_next"]
    i, a, b = first_drift(rename(ours["sample_next"], "gpt_neo"), theirs["sample_next"])
    assert "dim=-1" in a and "dim=1" in b
