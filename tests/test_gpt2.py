"""gpt2.py against transformers' GPT2LMHeadModel, saved in every layout real Hub repos use."""
import os
import tempfile
from pathlib import Path

import pytest
import torch
import transformers
from hypothesis import assume, given
from hypothesis import strategies as st
from reference import (
    assert_close, batches, Evil, hub_state_dict, LAYOUTS, reference_positions, save_checkpoint,
)

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


# ----------------------------------------------------------------------------- logits and loss


@given(config=configs(), layout=st.sampled_from(LAYOUTS), data=st.data())
def test_logits_match_reference(config, layout, data):
    ours, ref = ours_and_reference(config, layout)
    ids, mask = data.draw(batches(config["vocab_size"], config["n_positions"]))
    with torch.no_grad():
        expected = ref(ids, attention_mask=mask, position_ids=reference_positions(mask)).logits
        assert_close(ours(ids, mask), expected, "gpt2 logits (padded batches)", mask=mask.bool())
        expected = ref(ids[:1]).logits  # unpadded, no mask at all
        assert_close(ours(ids[:1]), expected, "gpt2 logits (no mask)")


@given(config=configs(), data=st.data())
def test_loss_matches_reference(config, data):
    ours, ref = ours_and_reference(config)
    ids, mask = data.draw(batches(config["vocab_size"], config["n_positions"]))
    # Padding is ignored, and so is each row's first real token: it would be predicted from a padding
    # position, whose output is arbitrary (transformers and we fill fully-masked rows differently).
    labels = ids.masked_fill(reference_positions(mask) == 0, -100)
    assume(labels[:, 1:].ne(-100).any())  # at least one token to predict
    positions = reference_positions(mask)
    with torch.no_grad():
        expected = ref(ids, attention_mask=mask, position_ids=positions, labels=labels).loss
        logits, loss = ours(ids, mask, labels=labels)
    assert_close(loss, expected, "gpt2 loss")


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


def test_untied_lm_head():
    config = dict(vocab_size=40, n_positions=16, n_embd=8, n_layer=1, n_head=2, tie_word_embeddings=False)
    ref = reference(config)
    with torch.no_grad():
        ref.lm_head.weight.normal_()  # make sure it differs from wte
    with tempfile.TemporaryDirectory() as d:
        save_checkpoint(ref, d)
        ours = gpt2.from_pretrained(d)
    ids = torch.randint(0, 40, (1, 10))
    assert ours.lm_head.weight is not ours.transformer.wte.weight
    with torch.no_grad():
        assert_close(ours(ids), ref(ids).logits, "gpt2 logits (untied lm_head)")


# ----------------------------------------------------------------------------- caches and backends


@given(config=configs(), data=st.data(), static=st.booleans())
def test_incremental_decode_equals_full_forward(config, data, static):
    ours, _ = ours_and_reference(config)
    ids, mask = data.draw(batches(config["vocab_size"], config["n_positions"]))
    T = ids.size(1)
    cuts = sorted(set(data.draw(st.lists(st.integers(1, max(1, T - 1)), max_size=3))) | {0, T})
    cache = ours.make_cache(static_len=T if static else None)
    with torch.no_grad():
        full = ours(ids, mask)
        steps = [ours(ids[:, a:b], mask[:, :b], kv_cache=cache) for a, b in zip(cuts, cuts[1:])]
    assert_close(torch.cat(steps, dim=1), full, "gpt2 cached vs full", mask=mask.bool())


@given(config=configs(), data=st.data())
def test_static_cache_equals_growing_cache(config, data):
    ours, _ = ours_and_reference(config)
    ids, mask = data.draw(batches(config["vocab_size"], config["n_positions"] // 2))
    n = config["n_positions"] - ids.size(1)
    dynamic = gpt2.generate(ours, ids, n, attention_mask=mask, temperature=0)
    static = gpt2.generate(ours, ids, n, attention_mask=mask, temperature=0,
                           kv_cache=ours.make_cache(static_len=config["n_positions"]))
    assert torch.equal(dynamic, static)


@given(config=configs(), data=st.data())
def test_naive_equals_sdpa(config, data):
    ours, _ = ours_and_reference(config, attn="naive")
    ids, mask = data.draw(batches(config["vocab_size"], config["n_positions"]))
    with torch.no_grad():
        naive = ours(ids, mask)
        ours.set_attention_backend("sdpa")
        sdpa = ours(ids, mask)
    assert_close(naive, sdpa, "gpt2 naive vs sdpa", mask=mask.bool())


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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_flash_equals_sdpa_on_cuda():
    pytest.importorskip("flash_attn", reason="flash_attn is not installed")
    config = dict(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=4, initializer_range=0.1)
    ours, _ = ours_and_reference(config, device="cuda", dtype=torch.bfloat16, attn="flash")
    ids = torch.randint(0, 64, (2, 32), device="cuda")
    with torch.no_grad():
        flash = ours(ids)
        ours.set_attention_backend("sdpa")
        sdpa = ours(ids)
    assert (flash.float() - sdpa.float()).abs().max() < 0.05


def test_flash_without_cuda_or_package_is_a_clear_error():
    from attention import attention
    q = torch.randn(1, 2, 4, 8)
    with pytest.raises(RuntimeError, match="flash"):
        attention(q, q, q, backend="flash")


# ----------------------------------------------------------------------------- generation


@given(config=configs(), data=st.data())
def test_greedy_generate_equals_reference(config, data):
    ours, ref = ours_and_reference(config)
    ids, mask = data.draw(batches(config["vocab_size"], config["n_positions"] // 2))
    n = data.draw(st.integers(1, config["n_positions"] - ids.size(1)))
    eos = data.draw(st.sampled_from([None, 1]))
    got = gpt2.generate(ours, ids, n, attention_mask=mask, temperature=0, eos_token_id=eos)
    expected = ref.generate(ids, attention_mask=mask, max_new_tokens=n, do_sample=False, eos_token_id=eos,
                            pad_token_id=eos if eos is not None else 0)
    # With an eos, both stop once every row has emitted it, and a finished row continues with eos.
    assert got.tolist() == expected.tolist()


def test_each_row_stops_at_eos():
    config = dict(vocab_size=16, n_positions=32, n_embd=8, n_layer=1, n_head=2)
    ours, _ = ours_and_reference(config)
    with torch.no_grad():
        ours.lm_head.weight.zero_()  # all logits 0: greedy picks id 0, which we make the eos
    out = gpt2.generate(ours, torch.tensor([[3, 5], [5, 6]]), 5, temperature=0, eos_token_id=0)
    assert out.tolist() == [[3, 5, 0], [5, 6, 0]]


def test_top_k_and_top_p_match_reference_warpers():
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper
    torch.manual_seed(0)
    logits = torch.randn(4, 50)
    logits[0, :10] = 3.0  # ties at the top
    for k in (1, 3, 10, 50, 80):
        expected = TopKLogitsWarper(top_k=k)(None, logits.clone())
        assert torch.equal(gpt2.top_k_filter(logits, k), expected)
    for p in (0.01, 0.3, 0.9, 1.0):  # on rows without ties (with ties, which one transformers keeps is
        ours = gpt2.top_p_filter(logits[1:], p)  # up to its sort; we keep all of them)
        expected = TopPLogitsWarper(top_p=p)(None, logits[1:].clone())
        assert torch.equal(ours.isinf(), expected.isinf()), p
    assert torch.equal(gpt2.top_p_filter(logits[:1], 0.01).isfinite(), logits[:1] == 3.0)


@given(st.lists(st.floats(-5, 5), min_size=2, max_size=20), st.floats(1e-6, 1.0))
def test_top_p_keeps_at_least_one_and_the_best(values, p):
    logits = torch.tensor([values])
    kept = ~gpt2.top_p_filter(logits, p).isinf()
    assert kept.any() and kept[0, logits.argmax()]


def test_sampling_is_reproducible_with_a_generator():
    config = dict(vocab_size=32, n_positions=32, n_embd=8, n_layer=1, n_head=2, initializer_range=0.5)
    ours, _ = ours_and_reference(config)
    ids = torch.tensor([[1, 2, 3]])
    runs = [gpt2.generate(ours, ids, 10, top_k=5, top_p=0.9, generator=torch.Generator().manual_seed(7))
            for _ in range(2)]
    assert torch.equal(*runs)


@pytest.mark.parametrize("kwargs, message", [
    (dict(temperature=-1.0), "temperature"), (dict(top_k=0), "top_k"), (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
])
def test_invalid_sampling_parameters(kwargs, message):
    ours, _ = ours_and_reference(dict(vocab_size=16, n_positions=16, n_embd=8, n_layer=1, n_head=2))
    with pytest.raises(ValueError, match=message):
        gpt2.generate(ours, torch.tensor([[1]]), 2, **kwargs)


def test_prompt_or_generation_longer_than_context():
    ours, _ = ours_and_reference(dict(vocab_size=16, n_positions=8, n_embd=8, n_layer=1, n_head=2))
    with pytest.raises(ValueError, match="longer than the context"):
        gpt2.generate(ours, torch.ones(1, 8, dtype=torch.long), 1)
    with pytest.raises(ValueError, match="exceeds the context"):
        gpt2.generate(ours, torch.ones(1, 4, dtype=torch.long), 5)
    with pytest.raises(ValueError, match="longer than the context"):
        ours(torch.ones(1, 9, dtype=torch.long))


# ----------------------------------------------------------------------------- loading errors


def test_mismatched_weights_name_missing_unexpected_and_wrong_shapes():
    config = dict(vocab_size=16, n_positions=16, n_embd=8, n_layer=2, n_head=2)

    def damage(sd):
        sd.pop("transformer.h.1.mlp.c_fc.bias")
        sd["transformer.h.0.attn.extra"] = torch.zeros(1)
        sd["transformer.wpe.weight"] = torch.zeros(3, 8)
        return sd

    with tempfile.TemporaryDirectory() as d, pytest.raises(ValueError) as err:
        save_checkpoint(reference(config), d, transform=damage)
        gpt2.from_pretrained(d)
    message = str(err.value)
    for part in ("h.1.mlp.c_fc.bias", "h.0.attn.extra", "wpe.weight", "missing", "unexpected", "shape"):
        assert part in message


def test_missing_and_corrupt_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such directory"):
        gpt2.from_pretrained(str(tmp_path / "nope" / "dir"))
    with pytest.raises(ValueError, match="unknown model"):
        gpt2.from_pretrained("gpt5")
    save_checkpoint(reference(dict(vocab_size=16, n_positions=16, n_embd=8, n_layer=1, n_head=2)), tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ValueError, match="corrupted or truncated"):
        gpt2.from_pretrained(tmp_path)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="no weights"):
        gpt2.from_pretrained(tmp_path)


def test_config_options_we_do_not_implement_are_refused():
    with pytest.raises(ValueError, match="add_cross_attention"):
        gpt2.GPT2Config.from_dict({"add_cross_attention": True})
    config = gpt2.GPT2Config.from_dict({"hidden_size": 8, "n_head": 2, "n_ctx": 5, "whatever": 1})
    assert config.n_embd == 8 and config.n_head == 2


def test_bin_files_are_loaded_without_unpickling_code(tmp_path):
    """A .bin that smuggles a Python object is refused by weights_only=True loading."""
    save_checkpoint(reference(dict(vocab_size=16, n_positions=16, n_embd=8, n_layer=1, n_head=2)), tmp_path,
                    "bin")
    sd = torch.load(tmp_path / "pytorch_model.bin", weights_only=True)
    sd["evil"] = Evil()
    torch.save(sd, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="cannot read"):
        gpt2.from_pretrained(tmp_path)
    assert not os.environ.get("EVIL_RAN")


def test_loading_builds_on_meta_and_keeps_no_second_copy(tmp_path):
    """fp32 weights are used where they were read: no parameter is a copy of another one."""
    ref = reference(dict(vocab_size=64, n_positions=16, n_embd=16, n_layer=2, n_head=2))
    save_checkpoint(ref, tmp_path)
    ours = gpt2.from_pretrained(tmp_path)
    assert not any(p.is_meta for p in ours.parameters())
    assert ours.lm_head.weight is ours.transformer.wte.weight
    assert hub_state_dict(ref).keys() == {k for k in ours.state_dict() if k != "lm_head.weight"}


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
