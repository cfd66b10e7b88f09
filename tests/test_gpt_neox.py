"""gpt_neox.py against transformers' GPTNeoXForCausalLM: what only GPT-NeoX does (per-head qkv, rotary angles,
parallel residual in half precision, its config keys, older files and padded vocabulary), and the harness
tests/test_shared_behaviour.py runs the shared tests with: configs(), inputs(), reference(),
ours_and_reference() and TINY."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import transformers
from conftest import ROOT, shared_tokenizer_dir
from hypothesis import given
from hypothesis import strategies as st
from reference import (
    assert_close, batches, hub_state_dict, LAYOUTS, reference_positions, save_checkpoint, TOL,
)

import gpt_neox

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

HEAD_SIZES = [4, 6, 8, 10, 12, 16]
# 0.25, 0.5 and 1.0 are the values real models use; the others rotate an unusual even number of dims (0.1
# of a small head rotates none at all).
ROTARY_PCTS = [0.25, 0.5, 1.0, 0.75, 0.4, 0.3, 0.1]


def even_rotary_pcts(hd):
    return [p for p in ROTARY_PCTS if int(hd * p) % 2 == 0]


@st.composite
def configs(draw):
    n_head = draw(st.integers(1, 4))
    hd = draw(st.sampled_from(HEAD_SIZES))
    return dict(
        vocab_size=draw(st.integers(8, 128)),
        max_position_embeddings=draw(st.integers(8, 48)),
        hidden_size=n_head * hd,
        num_hidden_layers=draw(st.integers(1, 3)),
        num_attention_heads=n_head,
        intermediate_size=draw(st.sampled_from([8, 24, 4 * n_head * hd])),
        rotary_pct=draw(st.sampled_from(even_rotary_pcts(hd))),
        # Small bases turn the dims fast, so a wrong position shows within a few tokens.
        rotary_emb_base=draw(st.sampled_from([10000, 100, 10])),
        hidden_act=draw(st.sampled_from(["gelu", "gelu_new", "relu"])),
        layer_norm_eps=draw(st.sampled_from([1e-5, 1e-3])),
        use_parallel_residual=draw(st.booleans()),
        attention_bias=draw(st.booleans()),
        tie_word_embeddings=False,
        # Large enough that the logits are far from zero, so a wrong computation shows.
        initializer_range=draw(st.sampled_from([0.1, 0.3])),
        bos_token_id=0, eos_token_id=1,
        hidden_dropout=0.0, attention_dropout=0.0,
        attn_implementation=draw(st.sampled_from(["eager", "sdpa"])),
    )


def reference(config, seed=0):
    torch.manual_seed(seed)
    ref = transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(**config)).eval()
    with torch.no_grad():  # transformers starts LayerNorms at (1, 0) and biases at 0: make them count
        for name, p in ref.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.normal_(1.0, 0.3)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.3)
    return ref


def ours_and_reference(config, layout="safetensors", transform=None, **kwargs):
    ref = reference(config)
    with tempfile.TemporaryDirectory() as d:
        save_checkpoint(ref, d, layout, transform)
        return gpt_neox.from_pretrained(d, **kwargs), ref


def inputs(config, max_len=None):
    """Left-padded batches up to the context (or max_len) long."""
    return batches(config["vocab_size"], max_len or config["max_position_embeddings"])


TINY = dict(vocab_size=64, max_position_embeddings=32, hidden_size=32, num_hidden_layers=2,
            num_attention_heads=2, intermediate_size=48, initializer_range=0.2)

# ----------------------------------------------------------------------------- older files


def pythia_buffers(state_dict):
    """Pythia's own files (written by transformers 4.2x): a causal-mask buffer attention.bias, a
    masked_bias, and RoPE's inverse frequencies in fp16, in every layer."""
    out = dict(state_dict)
    n_layer = 1 + max(int(k.split(".")[2]) for k in out if k.startswith("gpt_neox.layers."))
    for i in range(n_layer):
        causal = torch.tril(torch.ones(32, 32, dtype=torch.bool))[None, None]  # (1, 1, T_max, T_max)
        out[f"gpt_neox.layers.{i}.attention.bias"] = causal
        out[f"gpt_neox.layers.{i}.attention.masked_bias"] = torch.tensor(-1e9)
        out[f"gpt_neox.layers.{i}.attention.rotary_emb.inv_freq"] = torch.rand(4).half()  # values unused
    return out


def lm_head_name(state_dict):
    """A state dict as transformers >= 5 holds it in memory (torch.save(model.state_dict())): lm_head."""
    out = dict(state_dict)
    out["lm_head.weight"] = out.pop("embed_out.weight")
    return out


@pytest.mark.parametrize("transform", [pythia_buffers, lm_head_name])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_older_files_with_buffers_and_other_names(layout, transform):
    config = dict(TINY, rotary_pct=0.5)
    ours, ref = ours_and_reference(config, layout, transform=transform)
    ids = torch.randint(0, 64, (2, 32))
    with torch.no_grad():
        assert_close(ours(ids), ref(ids).logits, "gpt_neox logits (older files, other names)")


# ----------------------------------------------------------------------------- the NeoX quirks


def flat_qkv(state_dict):
    """Rewrite every query_key_value so that reading it per head, [q_h k_h v_h] for each head h, gives what
    a flat split [all q | all k | all v] of the original would."""
    out = dict(state_dict)
    for key, t in state_dict.items():
        if ".query_key_value." in key:
            nh, C = TINY["num_attention_heads"], TINY["hidden_size"]
            per_head = t.view(3, nh, C // nh, *t.shape[1:]).transpose(0, 1)  # (nh, 3, hd, ...)
            out[key] = per_head.reshape(t.shape)
    return out


@pytest.mark.parametrize("rotary_pct", [0.25, 1.0])
def test_a_flat_qkv_split_gives_different_logits(rotary_pct):
    """Our forward on flat_qkv(W) is a flat-splitting forward on W. It must be far from the reference,
    so the parity tests above would catch a flat split (which still produces fluent-looking text)."""
    config = dict(TINY, rotary_pct=rotary_pct)
    ours, ref = ours_and_reference(config)
    flat, _ = ours_and_reference(config, transform=flat_qkv)
    ids = torch.randint(0, 64, (2, 32))
    with torch.no_grad():
        expected = ref(ids).logits
        assert_close(ours(ids), expected, "gpt_neox logits (per-head qkv)")
        assert (flat(ids) - expected).abs().max() > 1000 * TOL


@given(hd=st.sampled_from(HEAD_SIZES + [32, 64, 128]), data=st.data(),
       base=st.sampled_from([10000, 10000.0, 500, 10]),
       dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
def test_rotary_angles_equal_the_reference_in_every_dtype(hd, data, base, dtype):
    """cos and sin bit for bit, up to position 2047: the angles are fp32 whatever the model's dtype."""
    pct = data.draw(st.sampled_from(even_rotary_pcts(hd)))
    config = transformers.GPTNeoXConfig(hidden_size=hd, num_attention_heads=1, rotary_pct=pct,
                                        rotary_emb_base=base)
    rotary = transformers.models.gpt_neox.modeling_gpt_neox.GPTNeoXRotaryEmbedding(config)
    positions = torch.tensor([data.draw(st.lists(st.integers(0, 2047), min_size=1, max_size=16))])
    expected = rotary(torch.zeros(1, dtype=dtype), positions)
    ours = gpt_neox.rotary_cos_sin(positions, gpt_neox.GPTNeoXConfig.from_dict(config.to_dict()).rotary_ndims,
                                   base, dtype)
    assert ours[0].dtype == dtype
    assert torch.equal(ours[0], expected[0]) and torch.equal(ours[1], expected[1])


def old_style(config_json):
    """config.json as the Hub's NeoX and Pythia repos have it: rotary_pct and rotary_emb_base."""
    rope = config_json.pop("rope_parameters")
    assert rope["rope_type"] == "default"
    return dict(config_json, rotary_pct=rope["partial_rotary_factor"], rotary_emb_base=rope["rope_theta"])


@given(config=configs(), data=st.data())
def test_old_and_new_config_keys_give_identical_logits(config, data):
    ref = reference(config)
    ids, mask = data.draw(batches(config["vocab_size"], config["max_position_embeddings"]))
    with tempfile.TemporaryDirectory() as new, tempfile.TemporaryDirectory() as old:
        save_checkpoint(ref, new)
        written = json.loads((Path(new) / "config.json").read_text())
        assert "rope_parameters" in written and "rotary_pct" not in written  # transformers 5's new keys
        (Path(old) / "config.json").write_text(json.dumps(old_style(written)))
        shutil.copy(Path(new) / "model.safetensors", old)
        ref_old = transformers.GPTNeoXForCausalLM.from_pretrained(old).eval()
        assert ref_old.config.rope_parameters == ref.config.rope_parameters  # the same model to the oracle
        from_new, from_old = gpt_neox.from_pretrained(new), gpt_neox.from_pretrained(old)
    with torch.no_grad():
        assert torch.equal(from_new(ids, mask), from_old(ids, mask))
        expected = ref_old(ids, attention_mask=mask, position_ids=reference_positions(mask)).logits
        assert_close(from_old(ids, mask), expected, "gpt_neox logits (old config keys)", mask=mask.bool())


OPTIONAL_KEYS = dict(
    vocab_size=st.integers(1, 60000), max_position_embeddings=st.integers(1, 4096),
    num_hidden_layers=st.integers(1, 48), intermediate_size=st.integers(1, 5000),
    rotary_pct=st.sampled_from([0.25, 0.5, 1.0]), rotary_emb_base=st.sampled_from([10000, 500.0]),
    rope_parameters=st.fixed_dictionaries({}, optional=dict(
        rope_theta=st.sampled_from([10000.0, 1000]), partial_rotary_factor=st.sampled_from([0.25, 1.0]),
        rope_type=st.just("default"))),
    hidden_act=st.sampled_from(["gelu", "gelu_new", "relu"]), layer_norm_eps=st.sampled_from([1e-5, 1e-6]),
    use_parallel_residual=st.booleans(), attention_bias=st.booleans(), tie_word_embeddings=st.booleans(),
    bos_token_id=st.integers(0, 5), eos_token_id=st.integers(0, 5),
)


@given(st.fixed_dictionaries(dict(hidden_size=st.just(64), num_attention_heads=st.just(4)),
                             optional=OPTIONAL_KEYS))
def test_config_json_reads_as_transformers_reads_it(d):
    """Any mix of old keys, new keys and missing keys: the same values as transformers' GPTNeoXConfig."""
    ours = gpt_neox.GPTNeoXConfig.from_dict(json.loads(json.dumps(d)))
    theirs = transformers.GPTNeoXConfig.from_dict(json.loads(json.dumps(d)))
    assert ours.rotary_pct == theirs.rope_parameters["partial_rotary_factor"]
    assert ours.rotary_emb_base == theirs.rope_parameters["rope_theta"]
    for field in ("vocab_size", "max_position_embeddings", "hidden_size", "num_hidden_layers",
                  "num_attention_heads", "intermediate_size", "hidden_act", "layer_norm_eps",
                  "use_parallel_residual", "attention_bias", "tie_word_embeddings", "bos_token_id"):
        assert getattr(ours, field) == getattr(theirs, field), field
    if "eos_token_id" in d:  # (the class defaults differ: 2 there, 0 here as in every real config.json)
        assert ours.eos_token_id == theirs.eos_token_id


def test_config_options_we_do_not_implement_are_refused():
    with pytest.raises(ValueError, match="rope_type='linear'"):
        gpt_neox.GPTNeoXConfig.from_dict({"rope_scaling": {"type": "linear", "factor": 2.0}})
    with pytest.raises(ValueError, match="rope_type='dynamic'"):
        gpt_neox.GPTNeoXConfig.from_dict({"rope_parameters": {"rope_type": "dynamic", "factor": 2.0}})
    with pytest.raises(ValueError, match="odd|even"):  # a head of 4 at 25% would rotate 1 dim
        gpt_neox.GPTNeoXConfig.from_dict({"hidden_size": 8, "num_attention_heads": 2})
    with pytest.raises(ValueError, match="rotary_pct"):
        gpt_neox.GPTNeoXConfig.from_dict({"hidden_size": 64, "num_attention_heads": 4, "rotary_pct": 2.0})
    with pytest.raises(ValueError, match="hidden_act"):
        gpt_neox.GPTNeoXConfig.from_dict({"hidden_size": 64, "num_attention_heads": 4, "hidden_act": "glu"})
    with pytest.raises(ValueError, match="divisible"):
        gpt_neox.GPTNeoXConfig.from_dict({"hidden_size": 60, "num_attention_heads": 8})
    config = gpt_neox.GPTNeoXConfig.from_dict({"hidden_size": 64, "num_attention_heads": 4,
                                               "rope_scaling": None, "whatever": 1})
    assert config.rotary_ndims == 4 and config.rotary_emb_base == 10000


# ----------------------------------------------------------------------------- half precision


@pytest.mark.parametrize("parallel", [True, False])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_on_cpu_stays_finite_where_the_reference_does(dtype, parallel):
    config = dict(TINY, max_position_embeddings=256, hidden_size=64, num_attention_heads=4,
                  use_parallel_residual=parallel, initializer_range=0.3)
    ref = reference(config)
    ids = torch.randint(0, 64, (2, 256))
    with tempfile.TemporaryDirectory() as d:
        save_checkpoint(ref, d)
        ours = gpt_neox.from_pretrained(d, dtype=dtype)
        ref_half = transformers.GPTNeoXForCausalLM.from_pretrained(d, dtype=dtype).eval()
    assert all(p.dtype == dtype for p in ours.parameters())
    with torch.no_grad():
        exact, expected, logits = ref(ids).logits, ref_half(ids).logits, ours(ids)
    assert logits.dtype == dtype
    assert torch.isfinite(expected).all() and torch.isfinite(logits).all()
    # As close to the fp32 logits as the reference's own half-precision run, give or take.
    ours_error, ref_error = (logits.float() - exact).abs().max(), (expected.float() - exact).abs().max()
    assert ours_error <= 2 * ref_error + 1e-2, (ours_error, ref_error)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_on_cuda_close_to_fp32(dtype):
    config = dict(TINY, hidden_size=64, num_attention_heads=4, initializer_range=0.1)
    ours, ref = ours_and_reference(config, device="cuda", dtype=dtype)
    ids = torch.randint(0, 64, (2, 32), device="cuda")
    with torch.no_grad():
        logits = ours(ids)
        expected = ref.cuda()(ids).logits
    assert torch.isfinite(logits).all()
    assert (logits.float() - expected).abs().max() < 0.1


# ----------------------------------------------------------------------------- loading


def test_attention_bias_false_files_have_no_projection_biases():
    """attention_bias decides the keys: a file without the biases loads, and a config that disagrees
    with the file is named, not silently half-loaded."""
    ref = reference(dict(TINY, attention_bias=False))
    assert not any(k.endswith(("query_key_value.bias", "attention.dense.bias")) for k in hub_state_dict(ref))
    with tempfile.TemporaryDirectory() as d:
        save_checkpoint(ref, d)
        gpt_neox.from_pretrained(d)
        config = json.loads((Path(d) / "config.json").read_text())
        (Path(d) / "config.json").write_text(json.dumps(dict(config, attention_bias=True)))
        with pytest.raises(ValueError, match="missing keys.*query_key_value.bias"):
            gpt_neox.from_pretrained(d)


# ----------------------------------------------------------------------------- a real checkpoint


def real_pythia_dir(revision=None):
    if os.environ.get("PYTHIA_CHECKPOINT_DIR") and revision is None:
        return Path(os.environ["PYTHIA_CHECKPOINT_DIR"])
    try:
        from huggingface_hub import snapshot_download
        return Path(snapshot_download("EleutherAI/pythia-70m", revision=revision, local_files_only=True))
    except Exception:
        pytest.skip(f"EleutherAI/pythia-70m{f' at {revision}' if revision else ''} is not in the local Hub "
                    "cache: run `hf download EleutherAI/pythia-70m"
                    f"{f' --revision {revision}' if revision else ''}` while online"
                    + ("" if revision else ", or set PYTHIA_CHECKPOINT_DIR to a directory with it"))


@pytest.mark.parametrize("revision", [None, "step3000"])
def test_real_pythia_checkpoint(revision):
    directory = real_pythia_dir(revision)
    ours = gpt_neox.from_pretrained(directory)
    if revision is not None:  # by Hub id and revision, as a user would (from the cache when offline)
        ours = gpt_neox.from_pretrained("EleutherAI/pythia-70m", revision=revision)
    ref = transformers.GPTNeoXForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    assert ours.config.vocab_size == 50304 and ours.config.rotary_ndims == 16
    ids = torch.tensor([[12092, 13, 309, 717, 247, 3448, 1566, 13]])  # "Hello, I am a language model,"
    with torch.no_grad():
        assert_close(ours(ids), ref(ids).logits, "gpt_neox logits (real EleutherAI/pythia-70m)", tol=1e-3)
    expected = ref.generate(ids, max_new_tokens=20, do_sample=False, pad_token_id=0)
    assert gpt_neox.generate(ours, ids, 20, temperature=0).tolist() == expected.tolist()


# ----------------------------------------------------------------------------- command line

N_TOKENIZER = 50277  # GPT-NeoX's tokenizer: ids 0 .. 50276


@pytest.fixture(scope="module")
def cli_model(tmp_path_factory):
    """A tiny NeoX with Pythia's 50304 embedding rows and the real tokenizer.json, made so that the 27 rows
    no token maps to would win every argmax: every position's final hidden state is the same vector b."""
    tokenizer_dir = shared_tokenizer_dir("gpt-neox-20b", "EleutherAI/gpt-neox-20b", ["tokenizer.json"])
    config = dict(vocab_size=50304, max_position_embeddings=24, hidden_size=16, num_hidden_layers=1,
                  num_attention_heads=2, intermediate_size=16, eos_token_id=0, bos_token_id=0)
    ref = reference(config)
    with torch.no_grad():
        b = ref.gpt_neox.final_layer_norm.bias
        ref.gpt_neox.final_layer_norm.weight.zero_()
        ref.lm_head.weight[N_TOKENIZER:] = 5 * b
    directory = tmp_path_factory.mktemp("pythia-tiny")
    save_checkpoint(ref, directory)
    shutil.copy(tokenizer_dir / "tokenizer.json", directory)
    expected_id = int((ref.lm_head.weight[:N_TOKENIZER] @ b).argmax())
    assert int((ref.lm_head.weight @ b).argmax()) >= N_TOKENIZER  # without the CLI's cut, a padding row wins
    return directory, expected_id


def run_cli(*args):
    return subprocess.run([sys.executable, "gpt_neox.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_cli_samples_only_tokens_the_tokenizer_has(cli_model):
    tokenizers = pytest.importorskip("tokenizers")
    directory, expected_id = cli_model
    result = run_cli("--model", str(directory), "--prompt", "Hello world", "--max-new-tokens", "5",
                     "--temperature", "0")
    assert result.returncode == 0, result.stderr
    reference_tokenizer = tokenizers.Tokenizer.from_file(str(directory / "tokenizer.json"))
    assert result.stdout == "Hello world" + reference_tokenizer.decode([expected_id] * 5) + "\n"
    assert "5 tokens in" in result.stderr


