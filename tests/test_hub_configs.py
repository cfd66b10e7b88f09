"""The config.json of every model the README names, as published (tests/data/hub_configs; its README says
where each copy came from and how sure we are of it), goes through our config reader and our model files:

- on the meta device (shapes, no memory), at its full size: the model has the parameter count transformers'
  model of the same JSON has, and the count the model cards publish where we have it;
- with the layer count cut to 2, a random checkpoint of that config (written by transformers, with the
  published JSON, cut, as its config.json) gives transformers' logits.

What the 2-layer check cuts, so that the ~20 distinct configs run in seconds on 2 cores (GPT-NeoX-20B at 2
layers and full width is 6 GB of fp32 per copy): the layers to 2 (GPT-Neo's global/local pattern keeps its
first two entries), the vocabulary to 512 rows, and the heads to at most 2, each of the published head size
(hidden_size and the MLP width shrink by the same factor). What every head computes stays as published: head
size, rotary dims (rotary_pct of the head: 16 of Pythia-70m's 64, 20 of Pythia-2.8b's 80, 24 of the 20B's
96), activation, attention scaling, local window (the sequence is longer than the 256-token window),
layer-norm eps, parallel residual, biases, tied or untied output matrix. The cut dimensions are repeats of
the same computation; their published sizes are checked by the parameter counts above. initializer_range is
raised to 0.1 (a training-only field) so that the activations leave GELU's near-linear middle: reading
"gelu" where the 20B's file says "gelu_fast" moves its logits by 1.4e-3, 14x the tolerance.

    python -m pytest -q tests/test_hub_configs.py
"""
import json
import tempfile
from pathlib import Path

import pytest
import torch
import transformers
from transformers.activations import ACT2FN

import gpt2
import gpt_neo
import gpt_neox
from reference import assert_close, save_checkpoint

DATA = Path(__file__).parent / "data" / "hub_configs"
FILES = {"gpt2": gpt2, "gpt_neo": gpt_neo, "gpt_neox": gpt_neox}  # model_type -> our file
CONFIG_CLASSES = {"gpt2": gpt2.GPT2Config, "gpt_neo": gpt_neo.GPTNeoConfig,
                  "gpt_neox": gpt_neox.GPTNeoXConfig}


def published_configs():
    """Hub id -> config.json as a dict: the copies found (<org>--<name>.json), then the reconstructed ones."""
    configs = {path.stem.replace("--", "/"): json.loads(path.read_text())
               for path in sorted(DATA.glob("*--*.json"))}
    configs.update(json.loads((DATA / "reconstructed.json").read_text()))
    return configs


CONFIGS = published_configs()


def distinct(configs):
    """Hub ids whose configs differ (a -deduped Pythia's is its twin's)."""
    seen = {}
    for name, d in configs.items():
        seen.setdefault(json.dumps(d, sort_keys=True), name)
    return list(seen.values())


# Total parameters as the model cards publish them (Pythia's as "non-embedding params", to which embed_in and
# embed_out add 2 * vocab_size * hidden_size); GPT-2 XL's and TinyStories-33M's as printouts of the loaded
# models give them (tests/data/hub_configs/README.md).
MODEL_CARD_NON_EMBEDDING = {"70m": 18_915_328, "160m": 85_056_000, "410m": 302_311_424, "1b": 805_736_448,
                            "1.4b": 1_208_602_624, "2.8b": 2_517_652_480}
MODEL_CARD_TOTAL = {"openai-community/gpt2-xl": 1_557_611_200, "roneneldan/TinyStories-33M": 68_514_048}


def transformers_model(d, device="meta"):
    """transformers' causal LM built from config.json's dict, as from_pretrained would build it, in fp32 (the
    20B's file says float16, which from_config would follow)."""
    config = transformers.AutoConfig.for_model(**d)
    with torch.device(device):
        return transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def count(model):
    return sum(p.numel() for p in model.parameters())  # a tied matrix is one Parameter, counted once


@pytest.mark.parametrize("name", distinct(CONFIGS))
def test_published_config_builds_the_reference_model(name):
    d = CONFIGS[name]
    file = FILES[d["model_type"]]
    ours = file.from_config(CONFIG_CLASSES[d["model_type"]].from_dict(d), device="meta")
    assert count(ours) == count(transformers_model(d)), name
    size = name.removeprefix("EleutherAI/pythia-").removesuffix("-deduped")
    if size in MODEL_CARD_NON_EMBEDDING:
        assert count(ours) - 2 * d["vocab_size"] * d["hidden_size"] == MODEL_CARD_NON_EMBEDDING[size]
    if name in MODEL_CARD_TOTAL:
        assert count(ours) == MODEL_CARD_TOTAL[name]


# The names of the sizes the cut changes, per family: layers, heads, width, MLP width.
SIZE_FIELDS = {"gpt2": ("n_layer", "n_head", "n_embd", "n_inner"),
               "gpt_neo": ("num_layers", "num_heads", "hidden_size", "intermediate_size"),
               "gpt_neox": ("num_hidden_layers", "num_attention_heads", "hidden_size", "intermediate_size")}


def cut(d, layers=2, vocab=512, max_heads=2):
    """The published config with fewer layers, vocabulary rows and heads; every head as published."""
    layer_key, head_key, width_key, mlp_key = SIZE_FIELDS[d["model_type"]]
    heads = min(d[head_key], max_heads)
    head_size = d[width_key] // d[head_key]
    small = dict(d, **{layer_key: layers, head_key: heads, width_key: heads * head_size},
                 vocab_size=vocab, initializer_range=0.1)
    if d.get(mlp_key) is not None:  # null: 4 * width, which follows the new width by itself
        small[mlp_key] = d[mlp_key] * heads // d[head_key]
    if d["model_type"] == "gpt_neo":  # the published layer pattern's first `layers` entries
        kinds = gpt_neo.GPTNeoConfig.from_dict(d).attention_layers[:layers]
        small["attention_types"] = [[kinds, 1]]
        small.pop("attention_layers", None)  # transformers recomputes it; a stale copy would disagree
    return small


@pytest.mark.parametrize("name", distinct({name: cut(d) for name, d in CONFIGS.items()}))
def test_published_config_cut_to_two_layers_gives_the_reference_logits(name):
    d = cut(CONFIGS[name])
    torch.manual_seed(0)
    ref = transformers_model(d, device="cpu").eval()
    T = d.get("window_size", 48) + 16  # longer than GPT-Neo's window: its local layers drop the oldest keys
    ids = torch.randint(0, d["vocab_size"], (2, T))
    with tempfile.TemporaryDirectory() as directory:
        save_checkpoint(ref, directory)
        (Path(directory) / "config.json").write_text(json.dumps(d))  # the published JSON, cut: what we read
        ours = FILES[d["model_type"]].from_pretrained(directory)
    with torch.no_grad():
        expected = ref(ids).logits
        assert expected.std() > 0.25, "weights too small to take GELU out of its near-linear middle"
        assert_close(ours(ids), expected, f"hub config {name}")


def test_gpt_neox_20b_published_config_loads():
    """The 20B's config.json says hidden_act "gelu_fast" (Pythia's say "gelu"): it must load, untied, with
    24 of each head's 96 dims rotated."""
    config = gpt_neox.GPTNeoXConfig.from_dict(CONFIGS["EleutherAI/gpt-neox-20b"])
    assert config.hidden_act == "gelu_fast" and config.rotary_ndims == 24 and not config.tie_word_embeddings


@pytest.mark.parametrize("name", distinct(CONFIGS))
def test_unknown_fields_are_ignored_and_unimplemented_ones_refused_by_name(name):
    d = CONFIGS[name]
    config_class = CONFIG_CLASSES[d["model_type"]]
    assert config_class.from_dict(dict(d, some_future_field={"x": 1})) == config_class.from_dict(d)
    # Fields that change the computation and that our files do not implement: refused, the field named.
    refused = {"gpt2": ({"add_cross_attention": True}, "add_cross_attention"),
               "gpt_neox": ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope_type='linear'")}
    if d["model_type"] in refused:
        change, message = refused[d["model_type"]]
        with pytest.raises(ValueError, match=message):
            config_class.from_dict(dict(d, **change))


# ----------------------------------------------------------------------------- activations

ACTIVATION_INPUTS = torch.cat([
    torch.linspace(-12, 12, 4001),  # the curved middle, finely
    torch.randn(4000, generator=torch.Generator().manual_seed(0)) * 3,
    torch.tensor([-1e4, -3e3, -100.0, -30.0, -8.0, -5.5, -1e-3, -1e-30, 0.0, 1e-30, 1e-3, 5.5, 8.0, 30.0,
                  100.0, 3e3, 1e4]),  # large |x|: x³ is 1e12, tanh and erf saturate
])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", list(gpt2.ACTIVATIONS))
def test_activation_is_transformers(name, dtype):
    """Each of our formulas against transformers' own function of that name (ACT2FN), within the dtype's
    rounding (torch.testing's default tolerances: 1.3e-6 relative in fp32, 1.6e-2 ≈ 2 ulps in bf16)."""
    x = ACTIVATION_INPUTS.to(dtype)
    ours = gpt2.ACTIVATIONS[name](x)
    assert ours.dtype == dtype
    if name in ("gelu_new", "gelu_accurate", "gelu_python_tanh") and dtype == torch.bfloat16:
        # ours is torch's fused kernel, which computes in fp32 and rounds once; transformers' written-out
        # formula rounds at every step in bf16 (1 ulp off here and there): compare with the exact value
        torch.testing.assert_close(ours, ACT2FN[name](x.float()).to(dtype))
    else:
        torch.testing.assert_close(ours, ACT2FN[name](x))


def test_activation_table_covers_what_transformers_accepts():
    """Every name transformers' GPT-2 / GPT-Neo / GPT-NeoX accept (any ACT2FN key) is ours, except the ones
    with learned weights (no checkpoint of these families holds them) and two that are not MLP activations."""
    left_out = {"prelu", "xielu",  # learned parameters
                "laplace",  # MEGA's attention-score function
                "sqrtsoftplus"}  # DeepSeek's router score
    new = set(ACT2FN) - set(gpt2.ACTIVATIONS) - left_out
    assert not new, f"transformers accepts {sorted(new)} now: add each to ACTIVATIONS (or say here why not)"
    assert set(gpt2.ACTIVATIONS) <= set(ACT2FN)
    assert gpt2.ACTIVATIONS.keys() == gpt_neo.ACTIVATIONS.keys() == gpt_neox.ACTIVATIONS.keys()
