"""gpt2.py against transformers' GPT2LMHeadModel: what only GPT-2 does (its older files without the prefix and
with mask buffers, the config it refuses), and the harness tests/test_shared_behaviour.py runs the shared
tests with: configs(), inputs(), reference(), ours_and_reference() and TINY."""
import os
import tempfile
from pathlib import Path

import pytest
import torch
import transformers
from hypothesis import strategies as st
from reference import assert_close, batches, LAYOUTS, save_checkpoint

import gpt2

transformers.logging.set_verbosity_error()


@st.composite
def configs(draw):
    n_head = draw(st.integers(1, 4))
    return dict(
        vocab_size=draw(st.integers(8, 128)),
        n_positions=draw(st.integers(8, 48)),
        n_embd=n_head * draw(st.sampled_from([2, 4, 8])),
        n_layer=draw(st.integers(1, 3)),
        n_head=n_head,
        n_inner=draw(st.sampled_from([None, 8, 24])),
        activation_function=draw(st.sampled_from(["gelu_new", "gelu", "relu"])),
        layer_norm_epsilon=draw(st.sampled_from([1e-5, 1e-3])),
        scale_attn_weights=draw(st.booleans()),
        scale_attn_by_inverse_layer_idx=draw(st.booleans()),
        reorder_and_upcast_attn=draw(st.booleans()),
        # Large enough that the logits are far from zero, so a wrong computation shows.
        initializer_range=draw(st.sampled_from([0.1, 0.3])),
        bos_token_id=0, eos_token_id=1,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        attn_implementation=draw(st.sampled_from(["eager", "sdpa"])),
    )


def reference(config, seed=0):
    torch.manual_seed(seed)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(**config)).eval()


def ours_and_reference(config, layout="safetensors", transform=None, **kwargs):
    ref = reference(config)
    with tempfile.TemporaryDirectory() as d:
        save_checkpoint(ref, d, layout, transform)
        return gpt2.from_pretrained(d, **kwargs), ref


def inputs(config, max_len=None):
    """Left-padded batches up to the context (or max_len) long."""
    return batches(config["vocab_size"], max_len or config["n_positions"])


TINY = dict(vocab_size=64, n_positions=32, n_embd=16, n_layer=2, n_head=2, initializer_range=0.2)

# ----------------------------------------------------------------------------- older files


def legacy(state_dict):
    """openai-community/gpt2's own model.safetensors: no "transformer." prefix, no lm_head, and the causal
    mask stored as attn.bias / attn.masked_bias buffers."""
    out = {k.removeprefix("transformer."): v for k, v in state_dict.items() if not k.startswith("lm_head.")}
    n_layer = 1 + max(int(k.split(".")[1]) for k in out if k.startswith("h."))
    for i in range(n_layer):
        out[f"h.{i}.attn.bias"] = torch.tril(torch.ones(8, 8, dtype=torch.uint8)).view(1, 1, 8, 8)
        out[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    return out


@pytest.mark.parametrize("layout", LAYOUTS)
def test_legacy_prefixless_files_with_mask_buffers(layout):
    config = dict(vocab_size=50, n_positions=16, n_embd=16, n_layer=2, n_head=2, initializer_range=0.2)
    ours, ref = ours_and_reference(config, layout, transform=legacy)
    ids = torch.randint(0, 50, (2, 16))
    with torch.no_grad():
        assert_close(ours(ids), ref(ids).logits, "gpt2 logits (legacy layouts)")


# ----------------------------------------------------------------------------- backends


def test_naive_attention_returns_probabilities():
    from attention import attention
    q, k, v = torch.randn(3, 2, 2, 5, 4).unbind(0)
    mask = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    out, probs = attention(q, k, v, backend="naive", padding_mask=mask, return_probs=True)
    assert torch.allclose(probs.sum(-1), torch.ones(2, 2, 5))
    assert (probs[0, :, 1:, 0] == 0).all() and (probs[:, :, 1:].triu(2) == 0).all()  # padding, future
    assert torch.allclose(out, probs @ v)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_on_cuda_close_to_fp32(dtype):
    config = dict(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=4, initializer_range=0.1)
    ours, ref = ours_and_reference(config, device="cuda", dtype=dtype)
    ids = torch.randint(0, 64, (2, 32), device="cuda")
    with torch.no_grad():
        logits = ours(ids)
        expected = ref.cuda()(ids).logits
    assert torch.isfinite(logits).all()
    assert (logits.float() - expected).abs().max() < 0.1


def test_flash_without_cuda_or_package_is_a_clear_error():
    from attention import attention
    q = torch.randn(1, 2, 4, 8)
    with pytest.raises(RuntimeError, match="flash"):
        attention(q, q, q, backend="flash")


# ----------------------------------------------------------------------------- config.json


def test_config_options_we_do_not_implement_are_refused():
    with pytest.raises(ValueError, match="add_cross_attention"):
        gpt2.GPT2Config.from_dict({"add_cross_attention": True})
    config = gpt2.GPT2Config.from_dict({"hidden_size": 8, "n_head": 2, "n_ctx": 5, "whatever": 1})
    assert config.n_embd == 8 and config.n_head == 2


# ----------------------------------------------------------------------------- a real checkpoint


def real_gpt2_dir():
    if os.environ.get("GPT2_CHECKPOINT_DIR"):
        return Path(os.environ["GPT2_CHECKPOINT_DIR"])
    try:
        from huggingface_hub import snapshot_download
        return Path(snapshot_download("openai-community/gpt2", local_files_only=True))
    except Exception:
        pytest.skip("openai-community/gpt2 is not in the local Hub cache: run `hf download "
                    "openai-community/gpt2` while online, or set GPT2_CHECKPOINT_DIR to a directory with it")


def test_real_gpt2_checkpoint():
    directory = real_gpt2_dir()
    ours = gpt2.from_pretrained(directory)
    ref = transformers.GPT2LMHeadModel.from_pretrained(directory).eval()
    ids = torch.tensor([[15496, 11, 314, 1101, 257, 3303, 2746, 11]])  # "Hello, I'm a language model,"
    with torch.no_grad():
        assert_close(ours(ids), ref(ids).logits, "gpt2 logits (real openai-community/gpt2)", tol=1e-3)
    expected = ref.generate(ids, max_new_tokens=20, do_sample=False, pad_token_id=50256)
    assert gpt2.generate(ours, ids, 20, temperature=0).tolist() == expected.tolist()
