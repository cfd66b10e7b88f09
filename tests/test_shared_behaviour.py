"""What the three model files do alike, tested once for each of them: parity with the reference in every
Hub layout, caches and backends, generation (greedy, EOS, sampling and its checks), loading and its errors,
the CLI's error lines.

Each architecture brings its own harness, its test file (tests/test_<arch>.py): `configs()` (a hypothesis
strategy of transformers config dicts), `inputs(config, max_len)` (token batches for it: GPT-Neo's are
several windows long), `reference(config)`, `ours_and_reference(config, layout, transform, **kwargs)` and
`TINY` (a small fixed config). What only one architecture does (local attention, rotary angles, Conv1D
weights, per-head qkv, its config.json keys and older files) is tested in that file alone.
"""
import importlib
import os
import shutil
import subprocess
import sys
import tempfile
from operator import attrgetter

import pytest
import torch

import checkpoint
import generation
import transformers
from conftest import ROOT, shared_tokenizer_dir
from hypothesis import assume, given
from hypothesis import strategies as st
from reference import (
    assert_close, batches, Evil, hub_state_dict, LAYOUTS, reference_positions, save_checkpoint,
)

transformers.logging.set_verbosity_error()

ARCHS = ["gpt2", "gpt_neo", "gpt_neox"]
CONTEXT = {"gpt2": "n_positions", "gpt_neo": "max_position_embeddings", "gpt_neox": "max_position_embeddings"}
HEAD = {"gpt2": "lm_head", "gpt_neo": "lm_head", "gpt_neox": "embed_out"}  # the output matrix
EMBEDDING = {"gpt2": "transformer.wte", "gpt_neo": "transformer.wte", "gpt_neox": "gpt_neox.embed_in"}
UNKNOWN = {"gpt2": "gpt5", "gpt_neo": "gpt-neo-7", "gpt_neox": "pythia-5t"}  # not a short name, not a dir
each_arch = pytest.mark.parametrize("arch", ARCHS)


# tests/test_<arch>.py: configs(), inputs(), reference(), ours_and_reference(), TINY. (Imported here, not
# inside a test: hypothesis refuses a module's @given decorators applied while a property runs.)
HARNESS = {arch: importlib.import_module(f"test_{arch}") for arch in ARCHS}


def harness(arch):
    return HARNESS[arch]


def tiny(arch, **overrides):
    """The harness's TINY config with overrides (context= stands for the arch's own name for it)."""
    config = dict(harness(arch).TINY, **overrides)
    if "context" in config:
        config[CONTEXT[arch]] = config.pop("context")
    return config


def head(model, arch):
    return attrgetter(HEAD[arch])(model)


def embedding(model, arch):
    return attrgetter(EMBEDDING[arch])(model)

# ----------------------------------------------------------------------------- logits and loss, all layouts


@each_arch
@given(data=st.data())
def test_logits_match_reference(arch, data):
    config = data.draw(harness(arch).configs(), "config")
    layout = data.draw(st.sampled_from(LAYOUTS), "layout")
    ours, ref = harness(arch).ours_and_reference(config, layout)
    ids, mask = data.draw(harness(arch).inputs(config), "ids, mask")
    with torch.no_grad():
        expected = ref(ids, attention_mask=mask, position_ids=reference_positions(mask)).logits
        assert_close(ours(ids, mask), expected, f"{arch} logits (padded batches)", mask=mask.bool())
        expected = ref(ids[:1]).logits  # unpadded, no mask at all
        assert_close(ours(ids[:1]), expected, f"{arch} logits (no mask)")


@each_arch
@given(data=st.data())
def test_loss_matches_reference(arch, data):
    config = data.draw(harness(arch).configs(), "config")
    ours, ref = harness(arch).ours_and_reference(config)
    ids, mask = data.draw(harness(arch).inputs(config), "ids, mask")
    # Padding is ignored, and so is each row's first real token: it would be predicted from a padding
    # position, whose output is arbitrary (transformers and we fill fully-masked rows differently).
    labels = ids.masked_fill(reference_positions(mask) == 0, -100)
    assume(labels[:, 1:].ne(-100).any())  # at least one token to predict
    positions = reference_positions(mask)
    with torch.no_grad():
        expected = ref(ids, attention_mask=mask, position_ids=positions, labels=labels).loss
        logits, loss = ours(ids, mask, labels=labels)
    assert_close(loss, expected, f"{arch} loss")


@each_arch
@pytest.mark.parametrize("tied", [True, False])
def test_tied_and_untied_output_matrix(arch, tied):
    """tie_word_embeddings decides: one matrix shared with the embedding, or its own (read from the file)."""
    ref = harness(arch).reference(tiny(arch, tie_word_embeddings=tied))
    assert (ref.get_output_embeddings().weight is ref.get_input_embeddings().weight) == tied
    if not tied:
        with torch.no_grad():
            ref.get_output_embeddings().weight.normal_()  # make sure it differs from the embedding
    with tempfile.TemporaryDirectory() as d:
        save_checkpoint(ref, d)
        ours = importlib.import_module(arch).from_pretrained(d)
    assert (head(ours, arch).weight is embedding(ours, arch).weight) == tied
    if not tied:
        assert not torch.equal(head(ours, arch).weight, embedding(ours, arch).weight)
    ids = torch.randint(0, ref.config.vocab_size, (1, 10))
    with torch.no_grad():
        assert_close(ours(ids), ref(ids).logits, f"{arch} logits ({'tied' if tied else 'untied'} output)")

# ----------------------------------------------------------------------------- caches and backends


@each_arch
@given(data=st.data(), static=st.booleans())
def test_incremental_decode_equals_full_forward(arch, data, static):
    """Prefill, then chunks and single tokens (GPT-Neo: through the local layers' trimmed cache)."""
    config = data.draw(harness(arch).configs(), "config")
    ours, _ = harness(arch).ours_and_reference(config)
    ids, mask = data.draw(harness(arch).inputs(config), "ids, mask")
    T = ids.size(1)
    cuts = sorted(set(data.draw(st.lists(st.integers(1, max(1, T - 1)), max_size=8), "cuts")) | {0, T})
    cache = ours.make_cache(static_len=T if static else None)
    with torch.no_grad():
        full = ours(ids, mask)
        steps = [ours(ids[:, a:b], mask[:, :b], kv_cache=cache) for a, b in zip(cuts, cuts[1:])]
    assert_close(torch.cat(steps, dim=1), full, f"{arch} cached vs full", mask=mask.bool())


@each_arch
@given(data=st.data())
def test_static_cache_equals_growing_cache(arch, data):
    config = data.draw(harness(arch).configs(), "config")
    module, context = importlib.import_module(arch), config[CONTEXT[arch]]
    ours, _ = harness(arch).ours_and_reference(config)
    ids, mask = data.draw(harness(arch).inputs(config, context // 2), "ids, mask")
    n = context - ids.size(1)
    dynamic = module.generate(ours, ids, n, attention_mask=mask, temperature=0)
    static = module.generate(ours, ids, n, attention_mask=mask, temperature=0,
                             kv_cache=ours.make_cache(static_len=context))
    assert torch.equal(dynamic, static)


@each_arch
@given(data=st.data())
def test_naive_equals_sdpa(arch, data):
    config = data.draw(harness(arch).configs(), "config")
    ours, _ = harness(arch).ours_and_reference(config, attn="naive")
    ids, mask = data.draw(harness(arch).inputs(config), "ids, mask")
    with torch.no_grad():
        naive = ours(ids, mask)
        ours.set_attention_backend("sdpa")
        sdpa = ours(ids, mask)
    assert_close(naive, sdpa, f"{arch} naive vs sdpa", mask=mask.bool())


FLASH_CONFIGS = {  # what each file's flash test used before they were merged here
    "gpt2": dict(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=4, initializer_range=0.1),
    "gpt_neo": dict(vocab_size=64, max_position_embeddings=64, hidden_size=32, num_layers=2, num_heads=4,
                    attention_types=[[["global", "local"], 1]], window_size=5, initializer_range=0.2,
                    bos_token_id=0, eos_token_id=1),
    "gpt_neox": dict(vocab_size=64, max_position_embeddings=32, hidden_size=64, num_hidden_layers=2,
                     num_attention_heads=4, intermediate_size=48, initializer_range=0.1),
}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@each_arch
def test_flash_equals_sdpa_on_cuda(arch):
    pytest.importorskip("flash_attn", reason="flash_attn is not installed")
    config = FLASH_CONFIGS[arch]
    ours, _ = harness(arch).ours_and_reference(config, device="cuda", dtype=torch.bfloat16, attn="flash")
    ids = torch.randint(0, 64, (2, config[CONTEXT[arch]]), device="cuda")
    with torch.no_grad():
        flash = ours(ids)
        ours.set_attention_backend("sdpa")
        sdpa = ours(ids)
    assert (flash.float() - sdpa.float()).abs().max() < 0.05

# ----------------------------------------------------------------------------- generation


@each_arch
@given(data=st.data())
def test_greedy_generate_equals_reference(arch, data):
    config = data.draw(harness(arch).configs(), "config")
    context = config[CONTEXT[arch]]
    ours, ref = harness(arch).ours_and_reference(config)
    ids, mask = data.draw(batches(config["vocab_size"], context // 2), "ids, mask")
    n = data.draw(st.integers(1, context - ids.size(1)), "max_new_tokens")
    eos = data.draw(st.sampled_from([None, 1]), "eos")
    got = importlib.import_module(arch).generate(ours, ids, n, attention_mask=mask, temperature=0,
                                                 eos_token_id=eos)
    expected = ref.generate(ids, attention_mask=mask, max_new_tokens=n, do_sample=False, eos_token_id=eos,
                            pad_token_id=eos if eos is not None else 0)
    # With an eos, both stop once every row has emitted it, and a finished row continues with eos.
    assert got.tolist() == expected.tolist()


@each_arch
def test_each_row_stops_at_eos(arch):
    ours, _ = harness(arch).ours_and_reference(tiny(arch))
    with torch.no_grad():
        head(ours, arch).weight.zero_()  # all logits 0: greedy picks id 0, which we make the eos
    out = importlib.import_module(arch).generate(ours, torch.tensor([[3, 5], [5, 6]]), 5, temperature=0,
                                                 eos_token_id=0)
    assert out.tolist() == [[3, 5, 0], [5, 6, 0]]


@each_arch
def test_top_k_and_top_p_match_reference_warpers(arch):
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper
    module = importlib.import_module(arch)
    torch.manual_seed(0)
    logits = torch.randn(4, 50)
    logits[0, :10] = 3.0  # ties at the top
    for k in (1, 3, 10, 50, 80):
        expected = TopKLogitsWarper(top_k=k)(None, logits.clone())
        assert torch.equal(generation.top_k_filter(logits, k), expected)
    for p in (0.01, 0.3, 0.9, 1.0):  # on rows without ties (with ties, which one transformers keeps is
        ours = generation.top_p_filter(logits[1:], p)  # up to its sort; we keep all of them)
        expected = TopPLogitsWarper(top_p=p)(None, logits[1:].clone())
        assert torch.equal(ours.isinf(), expected.isinf()), p
    assert torch.equal(generation.top_p_filter(logits[:1], 0.01).isfinite(), logits[:1] == 3.0)


@each_arch
@given(st.lists(st.floats(-5, 5), min_size=2, max_size=20), st.floats(1e-6, 1.0))
def test_top_p_keeps_at_least_one_and_the_best(arch, values, p):
    logits = torch.tensor([values])
    kept = ~generation.top_p_filter(logits, p).isinf()
    assert kept.any() and kept[0, logits.argmax()]


@pytest.fixture(scope="module")
def tiny_models():
    """arch -> a TINY model with an 8-token context, built once, for the tests that do not change it."""
    built = {}

    def get(arch):
        if arch not in built:
            built[arch], _ = harness(arch).ours_and_reference(tiny(arch, context=8, initializer_range=0.5))
        return built[arch]
    return get


@each_arch
def test_sampling_is_reproducible_with_a_generator(arch, tiny_models):
    module, ours = importlib.import_module(arch), tiny_models(arch)
    ids = torch.tensor([[1, 2, 3]])
    runs = [module.generate(ours, ids, 5, top_k=5, top_p=0.9, generator=torch.Generator().manual_seed(7))
            for _ in range(2)]
    assert torch.equal(*runs)


@each_arch
@pytest.mark.parametrize("kwargs, message", [
    (dict(temperature=-1.0), "temperature"), (dict(top_k=0), "top_k"), (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
])
def test_invalid_sampling_parameters(arch, kwargs, message, tiny_models):
    with pytest.raises(ValueError, match=message):
        importlib.import_module(arch).generate(tiny_models(arch), torch.tensor([[1]]), 2, **kwargs)


@each_arch
def test_prompt_or_generation_longer_than_context(arch, tiny_models):
    module, ours = importlib.import_module(arch), tiny_models(arch)
    with pytest.raises(ValueError, match="longer than the context"):
        module.generate(ours, torch.ones(1, 8, dtype=torch.long), 1)
    with pytest.raises(ValueError, match="exceeds the context"):
        module.generate(ours, torch.ones(1, 4, dtype=torch.long), 5)
    with pytest.raises(ValueError, match="longer than the context of 8 tokens"):
        ours(torch.ones(1, 9, dtype=torch.long))

# ----------------------------------------------------------------------------- loading and its errors


DAMAGE = {  # arch -> (a key to drop, unexpected keys to add, a key to give the wrong shape)
    "gpt2": ("transformer.h.1.mlp.c_fc.bias", ["transformer.h.0.attn.extra"], "transformer.wpe.weight"),
    "gpt_neo": ("transformer.h.1.mlp.c_fc.bias",
                ["transformer.h.0.attn.attention.extra",
                 "transformer.h.0.attn.attention.q_proj.bias"],  # GPT-Neo's q, k, v have no bias
                "transformer.wpe.weight"),
    "gpt_neox": ("gpt_neox.layers.1.mlp.dense_h_to_4h.bias", ["gpt_neox.layers.0.attention.extra"],
                 "embed_out.weight"),
}


@each_arch
def test_mismatched_weights_name_missing_unexpected_and_wrong_shapes(arch):
    missing, unexpected, misshapen = DAMAGE[arch]

    def damage(sd):
        sd.pop(missing)
        sd.update({key: torch.zeros(16) for key in unexpected})
        sd[misshapen] = torch.zeros(3, sd[misshapen].size(1))
        return sd

    with tempfile.TemporaryDirectory() as d, pytest.raises(ValueError) as err:
        save_checkpoint(harness(arch).reference(tiny(arch)), d, transform=damage)
        importlib.import_module(arch).from_pretrained(d)
    message = str(err.value)
    for key in (missing, *unexpected, misshapen):
        assert key.removeprefix("transformer.").removeprefix("gpt_neox.") in message, key
    for part in ("missing", "unexpected", "shape"):
        assert part in message


@each_arch
def test_missing_and_corrupt_files_are_clear_errors(arch, tmp_path):
    module = importlib.import_module(arch)
    with pytest.raises(FileNotFoundError, match="no such directory"):
        module.from_pretrained(str(tmp_path / "nope" / "dir"))
    with pytest.raises(FileNotFoundError, match="no such directory"):  # a Path, not a str: not a Hub id either
        module.from_pretrained(tmp_path / "nope")
    with pytest.raises(ValueError, match=f"unknown model '{UNKNOWN[arch]}'"):
        module.from_pretrained(UNKNOWN[arch])
    save_checkpoint(harness(arch).reference(tiny(arch)), tmp_path)
    with pytest.raises(ValueError, match="revision 'step3000'.*local directory"):
        module.from_pretrained(tmp_path, revision="step3000")
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ValueError, match="corrupted or truncated"):
        module.from_pretrained(tmp_path)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="no weights"):
        module.from_pretrained(tmp_path)


@each_arch
def test_bin_files_are_loaded_without_unpickling_code(arch, tmp_path):
    """A .bin that smuggles a Python object is refused by weights_only=True loading."""
    save_checkpoint(harness(arch).reference(tiny(arch)), tmp_path, "bin")
    sd = torch.load(tmp_path / "pytorch_model.bin", weights_only=True)
    sd["evil"] = Evil()
    torch.save(sd, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="cannot read"):
        importlib.import_module(arch).from_pretrained(tmp_path)
    assert not os.environ.get("EVIL_RAN")


@each_arch
def test_loading_builds_on_meta_and_keeps_no_second_copy(arch, tmp_path):
    """Every parameter and buffer comes from the file (none is left on the meta device), in the dtype asked
    for; the module names are the Hub's keys, and a tied output matrix is the embedding, not a copy."""
    ref = harness(arch).reference(tiny(arch))
    save_checkpoint(ref, tmp_path)
    tied = ref.config.tie_word_embeddings
    for dtype in (torch.float32, torch.bfloat16):
        ours = importlib.import_module(arch).from_pretrained(tmp_path, dtype=dtype)
        assert not any(p.is_meta for p in ours.parameters()) and not any(b.is_meta for b in ours.buffers())
        assert all(p.dtype == dtype for p in ours.parameters())
        assert (head(ours, arch).weight is embedding(ours, arch).weight) == tied
        tied_copy = {f"{HEAD[arch]}.weight"} if tied else set()  # save_pretrained drops it
        assert hub_state_dict(ref).keys() == ours.state_dict().keys() - tied_copy

# ----------------------------------------------------------------------------- command line


@pytest.fixture(scope="module")
def cli_models(tmp_path_factory):
    """arch -> a tiny checkpoint (64 positions) with GPT-2's real tokenizer files beside it, built once."""
    files = ["vocab.json", "merges.txt"]
    tokenizer_dir = shared_tokenizer_dir("gpt2", "openai-community/gpt2", files)
    built = {}

    def get(arch):
        if arch not in built:
            built[arch] = tmp_path_factory.mktemp(f"cli-{arch}")
            save_checkpoint(harness(arch).reference(tiny(arch, vocab_size=50257, context=64)), built[arch])
            for f in files:
                shutil.copy(tokenizer_dir / f, built[arch] / f)
        return built[arch]
    return get


@each_arch
@pytest.mark.parametrize("args, message", [
    (["--model", "{unknown}"], "unknown model '{unknown}'"),
    (["--model", "./no/such/dir"], "no such directory"),
    (["--model", "{tiny}", "--revision", "step3000"], "revision 'step3000'"),
    (["--model", "{tiny}", "--prompt", "hello " * 80], "longer than the context of 64 tokens"),
    # Sampling flags are checked before anything is loaded: --model ./not/read is never read.
    (["--temperature", "-1"], "temperature"), (["--top-p", "1.5"], "top_p"), (["--top-p", "0"], "top_p"),
    (["--top-k", "0"], "top_k"), (["--max-new-tokens", "0"], "max-new-tokens"),
])
def test_cli_bad_input_is_one_error_line(arch, args, message, cli_models):
    """main() exits with one "error: ..." line (sys.exit prints it to stderr, no traceback: see below)."""
    fill = dict(unknown=UNKNOWN[arch], tiny=str(cli_models(arch)) if "{tiny}" in args else "")
    args = [a.format(**fill) for a in args]
    with pytest.raises(SystemExit) as exit_:
        importlib.import_module(arch).main(["--model", "./not/read", "--max-new-tokens", "4", *args])
    code = exit_.value.code
    assert isinstance(code, str) and code.startswith("error: ") and "\n" not in code, code
    assert message.format(**fill) in code, code


@each_arch
def test_cli_error_reaches_stderr_as_one_line_without_traceback(arch, cli_models):
    result = subprocess.run([sys.executable, str(ROOT / f"{arch}.py"), "--model", str(cli_models(arch)),
                             "--max-new-tokens", "4", "--prompt", "hello " * 80], capture_output=True,
                            text=True, cwd=ROOT, timeout=120, env=os.environ | {"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 1 and result.stdout == "", result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "longer than the context of 64 tokens" in result.stderr and "Traceback" not in result.stderr
