"""gpt_neo.py against transformers' GPTNeoForCausalLM: what only GPT-Neo does (local attention, its cache,
its scores in fp32, its config and older files), and the harness tests/test_shared_behaviour.py runs the
shared tests with: configs(), inputs(), reference(), ours_and_reference() and TINY.

Local attention is where GPT-Neo differs, so the configs use tiny windows (2-16) and inputs() gives
sequences several windows long, with and without the (window-trimmed) KV cache and with left padding.
"""
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
from reference import assert_close, batches, LAYOUTS, reference_positions, save_checkpoint

import gpt_neo

transformers.logging.set_verbosity_error()


@st.composite
def attention_types(draw, num_layers):
    """config.json's attention_types for num_layers layers: mixed, all local or all global, written in one
    of the forms the Hub uses ([[["global", "local"], n]] or one entry per layer)."""
    kind = draw(st.sampled_from(["mixed", "local", "global"]))
    if kind == "mixed":
        layers = draw(st.lists(st.sampled_from(["global", "local"]), min_size=num_layers,
                               max_size=num_layers))
    else:
        layers = [kind] * num_layers
    if draw(st.booleans()):
        return [[layers, 1]]
    return [[[kind_], 1] for kind_ in layers]


@st.composite
def configs(draw):
    num_heads = draw(st.integers(1, 4))
    num_layers = draw(st.integers(1, 3))
    window_size = draw(st.integers(2, 16))
    return dict(
        vocab_size=draw(st.integers(8, 128)),
        # Room for sequences several windows long.
        max_position_embeddings=draw(st.integers(max(8, 3 * window_size), 64)),
        hidden_size=num_heads * draw(st.sampled_from([2, 4, 8])),
        num_layers=num_layers,
        num_heads=num_heads,
        attention_types=draw(attention_types(num_layers)),
        window_size=window_size,
        intermediate_size=draw(st.sampled_from([None, 8, 24])),
        activation_function=draw(st.sampled_from(["gelu_new", "gelu", "relu"])),
        layer_norm_epsilon=draw(st.sampled_from([1e-5, 1e-3])),
        # Large enough that the logits are far from zero, so a wrong computation shows.
        initializer_range=draw(st.sampled_from([0.1, 0.2, 0.3])),
        bos_token_id=0, eos_token_id=1,
        resid_dropout=0.0, embed_dropout=0.0, attention_dropout=0.0,
        # transformers 5.23 has no sdpa path for GPT-Neo (it raises): eager is the reference.
        attn_implementation="eager",
    )


def reference(config, seed=0):
    torch.manual_seed(seed)
    return transformers.GPTNeoForCausalLM(transformers.GPTNeoConfig(**config)).eval()


def inputs(config, max_len=None, max_batch=3):
    """Batches at least two windows + 1 long (when the context allows): local and global layers differ."""
    n = max_len or config["max_position_embeddings"]
    return batches(config["vocab_size"], n, min_len=2 * config["window_size"] + 1, max_batch=max_batch)


def ours_and_reference(config, layout="safetensors", transform=None, **kwargs):
    ref = reference(config)
    with tempfile.TemporaryDirectory() as d:
        save_checkpoint(ref, d, layout, transform)
        return gpt_neo.from_pretrained(d, **kwargs), ref


def small(**overrides):
    config = dict(vocab_size=64, max_position_embeddings=48, hidden_size=16, num_layers=2, num_heads=2,
                  attention_types=[[["global", "local"], 1]], window_size=4, initializer_range=0.2,
                  bos_token_id=0, eos_token_id=1)
    return config | overrides


TINY = small()


def local_layers(model):
    return [i for i, block in enumerate(model.transformer.h) if block.attn.attention.window is not None]

# ----------------------------------------------------------------------------- local and global, older files


@pytest.mark.parametrize("types", [["local"] * 3, ["global"] * 3, ["global", "local", "local"]])
def test_local_and_global_layers_match_reference(types):
    """Each kind of stack on a sequence ten windows long, whatever hypothesis draws."""
    config = small(num_layers=3, attention_types=[[types, 1]], window_size=3, max_position_embeddings=32)
    ours, ref = ours_and_reference(config)
    ids = torch.randint(0, 64, (2, 30), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :5] = 0
    with torch.no_grad():
        expected = ref(ids, attention_mask=mask, position_ids=reference_positions(mask)).logits
        assert_close(ours(ids, mask), expected, "gpt_neo logits (fixed local/global stacks)",
                     mask=mask.bool())
    assert [ours.transformer.h[i].attn.attention.window for i in range(3)] == \
        [3 if t == "local" else None for t in types]


def legacy(config, keep_prefix):
    """Older GPT-Neo files, from transformers versions that saved the masks as persistent buffers:
    h.{i}.attn.attention.bias, the (1, 1, P, P) causal mask (banded to the window in local layers), and
    masked_bias, a scalar -1e9; and either a tied lm_head.weight duplicate or no "transformer." prefix
    (a file saved from the backbone alone)."""
    def transform(state_dict):
        out = {k: v for k, v in state_dict.items() if not k.startswith("lm_head.")}
        P = config["max_position_embeddings"]
        layers = transformers.GPTNeoConfig(**config).attention_layers
        for i, kind in enumerate(layers):
            causal = torch.tril(torch.ones(P, P, dtype=torch.bool))
            if kind == "local":
                causal = causal ^ torch.tril(causal, -config["window_size"])
            out[f"transformer.h.{i}.attn.attention.bias"] = causal.view(1, 1, P, P)
            out[f"transformer.h.{i}.attn.attention.masked_bias"] = torch.tensor(-1e9)
        if keep_prefix:
            out["lm_head.weight"] = out["transformer.wte.weight"].clone()
            return out
        return {k.removeprefix("transformer."): v for k, v in out.items()}
    return transform


@pytest.mark.parametrize("keep_prefix", [True, False])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_legacy_files_with_mask_buffers(layout, keep_prefix):
    config = small(max_position_embeddings=24)
    ours, ref = ours_and_reference(config, layout, transform=legacy(config, keep_prefix))
    ids = torch.randint(0, 64, (2, 24))
    with torch.no_grad():
        assert_close(ours(ids), ref(ids).logits, "gpt_neo logits (legacy layouts)")


# ----------------------------------------------------------------------------- local cache, half precision


@pytest.mark.parametrize("static", [False, True])
def test_local_layer_cache_stays_bounded(static):
    """A long generation: local layers keep window_size keys, global ones all; tokens as the reference's."""
    config = small(num_layers=3, attention_types=[[["local", "global", "local"], 1]], window_size=3,
                   max_position_embeddings=64, initializer_range=0.3)
    ours, ref = ours_and_reference(config)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12], [0, 0, 0, 4, 3, 2, 1, 9]])
    mask = (torch.arange(8) >= torch.tensor([[0], [3]])).long()
    cache = ours.make_cache(static_len=64 if static else None)
    out = gpt_neo.generate(ours, ids, 56, attention_mask=mask, temperature=0, kv_cache=cache)
    assert cache.seen == 63  # the last token is sampled, never fed back
    for i, (k, v) in enumerate(zip(cache.k, cache.v)):
        kept = 3 if i in local_layers(ours) else (64 if static else 63)
        assert k.shape == v.shape == (2, 2, kept, 8), i
    expected = ref.generate(ids, attention_mask=mask, max_new_tokens=56, do_sample=False, pad_token_id=0)
    assert out.tolist() == expected.tolist()


def test_flash_backend_gets_the_window_unscaled_and_in_half(monkeypatch):
    """What the model hands attention() per layer: window w (flash_attn then gets (w-1, 0)), scale 1, and
    for 'flash' the model's own half dtype (flash_attn refuses fp32)."""
    import attention as attention_module
    ours, _ = ours_and_reference(small(num_layers=2), dtype=torch.bfloat16, attn="flash")
    calls = []

    def spy(q, k, v, **kwargs):
        calls.append((q.dtype, k.dtype, kwargs["window"], kwargs["scale"]))
        return attention_module.attention(q, k, v, **kwargs | dict(backend="naive"))

    monkeypatch.setattr(gpt_neo, "attention", spy)
    with torch.no_grad():
        ours(torch.randint(0, 64, (1, 12)))
    assert calls == [(torch.bfloat16, torch.bfloat16, None, 1.0), (torch.bfloat16, torch.bfloat16, 4, 1.0)]
    calls.clear()
    ours.set_attention_backend("sdpa")
    with torch.no_grad():
        ours(torch.randint(0, 64, (1, 12)))
    assert [c[:2] for c in calls] == [(torch.float32, torch.float32)] * 2  # scores in fp32


HALF_SLACK = {torch.float16: 0.02, torch.bfloat16: 0.1}  # of max |logit|: bf16 keeps 8 bits of mantissa


@given(config=configs(), dtype=st.sampled_from([torch.float16, torch.bfloat16]), data=st.data())
def test_half_precision_on_cpu_stays_finite_where_the_reference_does(config, dtype, data):
    ours, ref = ours_and_reference(config, dtype=dtype)
    ids, mask = data.draw(inputs(config))
    positions = reference_positions(mask)
    with torch.no_grad():
        exact = ref(ids, attention_mask=mask, position_ids=positions).logits  # fp32
        expected = ref.to(dtype)(ids, attention_mask=mask, position_ids=positions).logits
        logits = ours(ids, mask)
    assert logits.dtype == dtype
    finite = torch.isfinite(expected).all(-1) & mask.bool()  # (B, T) real positions the reference keeps finite
    assert torch.isfinite(logits[finite]).all()
    # Half precision is not the reference's bits: ask to be as close to the fp32 logits as the reference's
    # own half-precision run is, give or take (tiny random models can be chaotic in fp16/bf16).
    ours_error = (logits.float() - exact)[finite].abs().max().item() if finite.any() else 0.0
    ref_error = (expected.float() - exact)[finite].abs().max().item() if finite.any() else 0.0
    scale = exact[finite].abs().max().item() if finite.any() else 0.0
    assert ours_error <= 2 * ref_error + HALF_SLACK[dtype] * scale, (ours_error, ref_error, scale)


@pytest.mark.parametrize("backend", ["naive", "sdpa"])
def test_fp16_scores_past_its_range_stay_finite(backend):
    """Unscaled q·k of ~1e5, past fp16's 65504: the reference multiplies q and k in fp32 and stays finite;
    so must we (a half-precision q @ k^T gives inf, then NaN)."""
    config = small(num_layers=2, attention_types=[[["local", "global"], 1]], window_size=3,
                   max_position_embeddings=32, hidden_size=16, num_heads=2, initializer_range=0.1)
    ref = reference(config)
    with torch.no_grad():
        for block in ref.transformer.h:
            block.attn.attention.q_proj.weight.mul_(400)
            block.attn.attention.k_proj.weight.mul_(400)
    with tempfile.TemporaryDirectory() as d:
        save_checkpoint(ref, d)
        ours = gpt_neo.from_pretrained(d, dtype=torch.float16, attn=backend)
    ids = torch.randint(0, 64, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x = ref.transformer.h[0].ln_1(ref.transformer.wte(ids) + ref.transformer.wpe.weight[:32])
        attn = ref.transformer.h[0].attn.attention
        q, k = (proj(x).view(2, 32, 2, 8).transpose(1, 2) for proj in (attn.q_proj, attn.k_proj))
        assert (q @ k.transpose(-1, -2)).abs().max() > 1e5  # the first layer's scores overflow fp16
        expected = ref.half()(ids).logits
        logits = ours(ids)
    assert torch.isfinite(expected).all() and torch.isfinite(logits).all()
    assert_close(logits, expected, "gpt_neo logits (float16, scores past 65504)",
                 tol=HALF_SLACK[torch.float16] * expected.float().abs().max().item())


# ----------------------------------------------------------------------------- generation


# ----------------------------------------------------------------------------- config and loading errors


def test_config_reads_hub_names_aliases_and_attention_types():
    config = gpt_neo.GPTNeoConfig.from_dict({
        "hidden_size": 8, "num_hidden_layers": 4, "num_attention_heads": 2, "window_size": 5,
        "attention_types": [[["global", "local"], 2]], "attention_layers": ["ignored"], "whatever": 1})
    assert (config.hidden_size, config.num_layers, config.num_heads) == (8, 4, 2)
    assert config.attention_layers == ["global", "local", "global", "local"]
    default = gpt_neo.GPTNeoConfig()
    assert default.attention_layers == transformers.GPTNeoConfig(num_layers=12, attention_types=[
        [["global", "local"], 6]]).attention_layers  # 125M: 12 layers alternating
    model = gpt_neo.GPTNeoForCausalLM(config)
    assert [b.attn.attention.window for b in model.transformer.h] == [None, 5, None, 5]


@pytest.mark.parametrize("config, message", [
    (dict(num_layers=3, attention_types=[[["global", "local"], 1]]), "attention_types"),
    (dict(num_layers=2, attention_types=[[["global", "sparse"], 1]]), "attention_types"),
    (dict(num_layers=2, attention_types=["global", "local"]), "attention_types"),
    (dict(hidden_size=10, num_heads=4), "divisible"),
    (dict(window_size=0), "window_size"),
])
def test_bad_configs_are_clear_errors(config, message):
    with pytest.raises(ValueError, match=message):
        gpt_neo.GPTNeoConfig.from_dict(config)


# ----------------------------------------------------------------------------- command line


@pytest.fixture(scope="module")
def cli_model(tmp_path_factory):
    """A tiny GPT-Neo with GPT-2's real vocabulary (GPT-Neo uses GPT-2's tokenizer) and its reference."""
    files = ["vocab.json", "merges.txt"]
    tokenizer_dir = shared_tokenizer_dir("gpt2", "openai-community/gpt2", files)
    directory = tmp_path_factory.mktemp("tiny-gpt-neo")
    ref = reference(small(vocab_size=50257, max_position_embeddings=64, hidden_size=8, window_size=4,
                          bos_token_id=50256, eos_token_id=50256, initializer_range=0.3), seed=1)
    save_checkpoint(ref, directory)
    for f in files:
        shutil.copy(tokenizer_dir / f, directory / f)
    return directory, ref


def run_cli(*args):
    return subprocess.run([sys.executable, str(ROOT / "gpt_neo.py"), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120, env=os.environ | {"HF_HUB_OFFLINE": "1"})


def test_cli_greedy_output_is_the_references(cli_model):
    directory, ref = cli_model
    from tokenizers import ByteLevelBPETokenizer
    tokenizer = ByteLevelBPETokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"))
    prompt = "Once upon a time"
    ids = torch.tensor([tokenizer.encode(prompt).ids])
    expected_ids = ref.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=50256)[0, ids.size(1):]
    expected = prompt + tokenizer.decode(expected_ids.tolist())
    result = run_cli("--model", str(directory), "--prompt", prompt, "--max-new-tokens", "12",
                     "--temperature", "0")
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected + "\n"
    assert "12 tokens in" in result.stderr


def test_cli_samples(cli_model):
    directory, _ = cli_model
    result = run_cli("--model", str(directory), "--prompt", "Hello", "--max-new-tokens", "8",
                     "--num-samples", "2", "--top-p", "0.9", "--seed", "3")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("Hello") >= 2 and "-" * 40 in result.stdout


# ----------------------------------------------------------------------------- a real checkpoint


def real_gpt_neo_dir():
    if os.environ.get("GPT_NEO_CHECKPOINT_DIR"):
        return Path(os.environ["GPT_NEO_CHECKPOINT_DIR"])
    from huggingface_hub import snapshot_download
    for repo in ("EleutherAI/gpt-neo-125m", "EleutherAI/gpt-neo-125M"):  # the repo was renamed
        try:
            return Path(snapshot_download(repo, local_files_only=True))
        except Exception:
            pass
    pytest.skip("EleutherAI/gpt-neo-125m is not in the local Hub cache: run `hf download "
                "EleutherAI/gpt-neo-125m` while online, or set GPT_NEO_CHECKPOINT_DIR to a directory with it")


def test_real_gpt_neo_checkpoint():
    directory = real_gpt_neo_dir()
    ours = gpt_neo.from_pretrained(directory)
    ref = transformers.GPTNeoForCausalLM.from_pretrained(directory).eval()
    ids = torch.tensor([[15496, 11, 314, 1101, 257, 3303, 2746, 11]])  # "Hello, I'm a language model,"
    long_ids = torch.randint(0, 50257, (1, 600), generator=torch.Generator().manual_seed(0))  # > 2 windows
    with torch.no_grad():
        assert_close(ours(ids), ref(ids).logits, "gpt_neo logits (real EleutherAI/gpt-neo-125m)", tol=1e-3)
        assert_close(ours(long_ids), ref(long_ids).logits, "gpt_neo logits (real gpt-neo-125m, 600 tokens)",
                     tol=1e-3)
    expected = ref.generate(ids, max_new_tokens=20, do_sample=False, pad_token_id=50256)
    assert gpt_neo.generate(ours, ids, 20, temperature=0).tolist() == expected.tolist()
