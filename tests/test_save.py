"""save_pretrained against the reference: what we write is what transformers writes (keys, layouts, tied
weights), transformers' from_pretrained and ours load it back with identical logits, and sharding is the
Hub's, for the three language models and every head."""
import json
import tempfile
import warnings
from pathlib import Path

import pytest
import test_gpt2
import test_gpt_neo
import test_gpt_neox
import torch
import transformers
from hypothesis import given
from hypothesis import strategies as st
from reference import assert_close, batches, hub_state_dict, save_checkpoint
from safetensors.torch import load_file

import gpt2
import gpt_neo
import gpt_neox
import heads

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

ARCHS = {
    "gpt2": (gpt2, test_gpt2.configs, transformers.GPT2LMHeadModel, transformers.GPT2Config),
    "gpt_neo": (gpt_neo, test_gpt_neo.configs, transformers.GPTNeoForCausalLM, transformers.GPTNeoConfig),
    "gpt_neox": (gpt_neox, test_gpt_neox.configs, transformers.GPTNeoXForCausalLM, transformers.GPTNeoXConfig),
}


def read_weights(directory):
    """Every tensor a checkpoint directory holds, whether in one file or sharded."""
    directory = Path(directory)
    index = directory / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else [
        "model.safetensors"]
    return {k: v for f in files for k, v in load_file(directory / f).items()}


@pytest.mark.parametrize("arch", ARCHS)
@given(data=st.data())
def test_save_writes_what_transformers_writes(arch, data):
    """reference -> its save_pretrained -> ours -> our save_pretrained: the same keys and exactly the same
    tensors as the reference's file (GPT-2: the transformer. prefix, Conv1D weights transposed back, the
    tied lm_head left out), and config.json gives the reference's config back."""
    module, configs, cls, config_cls = ARCHS[arch]
    config = data.draw(configs()) | dict(tie_word_embeddings=data.draw(st.booleans()))
    torch.manual_seed(0)
    ref = cls(config_cls(**config)).eval()
    with tempfile.TemporaryDirectory() as theirs, tempfile.TemporaryDirectory() as ours:
        ref.save_pretrained(theirs)
        module.save_pretrained(module.from_pretrained(theirs), ours)
        expected, written = read_weights(theirs), read_weights(ours)
        assert written.keys() == expected.keys()
        for key in expected:
            assert torch.equal(written[key], expected[key]), key
        ours_config = json.loads((Path(ours) / "config.json").read_text())
        theirs_config = json.loads((Path(theirs) / "config.json").read_text())
        for key in ("model_type", "architectures", "tie_word_embeddings", "dtype"):
            assert ours_config[key] == theirs_config[key], key
        assert config_cls.from_pretrained(ours).to_dict() | {"transformers_version": None} == \
            config_cls.from_pretrained(theirs).to_dict() | {"transformers_version": None}


@pytest.mark.parametrize("arch", ARCHS)
@given(data=st.data(), sharded=st.booleans())
def test_saved_model_loads_in_transformers_and_ours(arch, data, sharded):
    """ours -> save_pretrained (one file, or shards when over max_shard_size) -> transformers' from_pretrained
    and ours: the logits of the model we saved."""
    module, configs, cls, _ = ARCHS[arch]
    config = data.draw(configs())
    torch.manual_seed(0)
    ref = cls(ARCHS[arch][3](**config))
    with tempfile.TemporaryDirectory() as d, tempfile.TemporaryDirectory() as out:
        save_checkpoint(ref, d)
        model = module.from_pretrained(d)
        total = sum(t.numel() * 4 for t in module.hub_state_dict(model).values())
        module.save_pretrained(model, out, max_shard_size=total // 3 + 1 if sharded else "5GB")
        files = sorted(p.name for p in Path(out).iterdir())
        if sharded:
            assert "model.safetensors.index.json" in files and "model.safetensors" not in files
            shards = [f for f in files if f.startswith("model-")]
            assert len(shards) >= 3 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
        else:
            assert files == ["config.json", "model.safetensors"]
        n_positions = config.get("n_positions") or config["max_position_embeddings"]
        ids, mask = data.draw(batches(config["vocab_size"], n_positions))
        expected = model(ids)
        assert_close(cls.from_pretrained(out).eval()(ids).logits, expected, f"{arch} saved -> transformers")
        assert torch.equal(module.from_pretrained(out)(ids), expected)


def test_gpt2_original_layout_round_trips():
    """openai-community/gpt2's own file (no transformer. prefix, the mask buffers) -> ours -> saved: the
    tensors of transformers' layout, transposes and tying included, bit for bit."""
    config = dict(vocab_size=50, n_positions=16, n_embd=16, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=1)
    torch.manual_seed(0)
    ref = transformers.GPT2LMHeadModel(transformers.GPT2Config(**config)).eval()

    def original(state_dict):  # the Hub's gpt2 file: bare backbone keys and the old causal-mask buffers
        out = {k.removeprefix("transformer."): v for k, v in state_dict.items()}
        out |= {f"h.{i}.attn.bias": torch.ones(1, 1, 16, 16).tril() for i in range(2)}
        return out

    with tempfile.TemporaryDirectory() as d, tempfile.TemporaryDirectory() as out:
        save_checkpoint(ref, d, "safetensors", original)
        model = gpt2.from_pretrained(d)
        gpt2.save_pretrained(model, out)
        written, expected = read_weights(out), hub_state_dict(ref)
        assert written.keys() == expected.keys() and "lm_head.weight" not in written
        assert all(torch.equal(written[k], expected[k]) for k in expected)
        reloaded = gpt2.from_pretrained(out)
        assert reloaded.lm_head.weight is reloaded.transformer.wte.weight  # tied again after loading


HEAD_CONFIGS = {
    "gpt2": dict(vocab_size=50, n_positions=16, n_embd=16, n_layer=2, n_head=2),
    "gpt_neo": dict(vocab_size=50, max_position_embeddings=16, hidden_size=16, num_layers=2, num_heads=2,
                    attention_types=[[["global", "local"], 1]], window_size=4),
    "gpt_neox": dict(vocab_size=50, max_position_embeddings=16, hidden_size=16, num_hidden_layers=2,
                     num_attention_heads=2, intermediate_size=32),
}


def head_outputs(out):
    return [x for x in (getattr(out, "logits", None), getattr(out, "mc_logits", None),
                        getattr(out, "start_logits", None), getattr(out, "end_logits", None)) if x is not None]


@pytest.mark.parametrize("architecture", [a for a, (_, head) in heads.ARCHITECTURES.items() if head])
def test_head_models_round_trip(architecture):
    """A transformers head model -> heads.from_pretrained -> heads.save_pretrained -> transformers and ours:
    the reference's outputs, and the head's settings (labels, padding id, dropout, summary) kept."""
    model_type, head = heads.ARCHITECTURES[architecture]
    config = HEAD_CONFIGS[model_type] | dict(bos_token_id=0, eos_token_id=1, pad_token_id=1, num_labels=3,
                                              initializer_range=0.2, classifier_dropout=0.3,
                                              summary_first_dropout=0.2)
    cls = getattr(transformers, architecture)
    torch.manual_seed(0)
    ref = cls(transformers.AutoConfig.for_model(model_type, **config)).eval()
    shape = (2, 3, 8) if head is heads.GPT2DoubleHeads else (2, 8)
    ids = torch.randint(2, 50, shape, generator=torch.Generator().manual_seed(0))
    expected = head_outputs(ref(ids))
    with tempfile.TemporaryDirectory() as d, tempfile.TemporaryDirectory() as out:
        ref.save_pretrained(d)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a head checkpoint: nothing new, no warning
            ours = heads.from_pretrained(d)
        heads.save_pretrained(ours, out)
        for reloaded in (cls.from_pretrained(out).eval(), heads.from_pretrained(out)):
            for got, want in zip(head_outputs(reloaded(ids)), expected, strict=True):
                assert_close(got, want, f"{architecture} saved -> reloaded")
        again = heads.from_pretrained(out)
        for attribute in ("num_labels", "pad_token_id", "id2label", "summary_config"):
            assert getattr(again, attribute, None) == getattr(ours, attribute, None), attribute
        if head is heads.TokenClassifier:
            assert again.dropout.p == ours.dropout.p == 0.3
        assert read_weights(out).keys() == read_weights(d).keys()
