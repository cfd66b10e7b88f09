"""quantize.py: the schemes keep their error bound, the quantized layers compute exactly what their dequantized
weights would (so PyTorch's kernels and our packing are what is tested), and a quantized model of each
architecture, loaded from a transformers reference saved as a Hub checkpoint, gives the logits and greedy
tokens of the same model holding the dequantized weights in plain nn.Linear layers.

How accurate quantization is (perplexity on trained weights) is measured in bench/quantize.py, not here."""
import json
import subprocess
import sys
import tempfile

import pytest
import torch
import torch.nn as nn
import transformers
from conftest import ROOT
from hypothesis import assume, given
from hypothesis import strategies as st
from reference import assert_close, save_checkpoint

import gpt2
import gpt_neo
import gpt_neox
import quantize

transformers.logging.set_verbosity_error()

GROUP_SIZES = [32, 64, 128]


@st.composite
def weights(draw, multiple_of=1):
    N = draw(st.integers(1, 70))
    K = multiple_of * draw(st.integers(1, 4 if multiple_of > 1 else 80))
    torch.manual_seed(draw(st.integers(0, 2**16)))
    w = torch.randn(N, K) * draw(st.sampled_from([1e-3, 0.02, 1.0, 30.0]))
    if draw(st.booleans()):  # outliers and a shifted group: what group-wise scales are for
        w[0, 0] = 50 * w.abs().max()
        w[-1] += 3 * w.abs().max()
    return w

# ----------------------------------------------------------------------------- the schemes' error bounds


@given(w=weights())
def test_int8_error_is_at_most_half_a_step(w):
    q, scales, _ = quantize.quantize_int8(w)
    assert q.dtype == torch.int8 and q.abs().max() <= 127
    error = (w - quantize.dequantize_int8(q, scales)).abs()
    assert (error <= scales[:, None] / 2 * (1 + 1e-5) + 1e-30).all()


@given(group_size=st.sampled_from(GROUP_SIZES), data=st.data())
def test_int4_error_is_at_most_half_a_step_of_its_group(group_size, data):
    w = data.draw(weights(multiple_of=group_size))
    q, scales, _ = quantize.quantize_int4(w, group_size)
    assert q.dtype == torch.uint8 and q.max() <= 15
    error = (w - quantize.dequantize_int4(q, scales, group_size)).abs()
    bound = scales.repeat_interleave(group_size, dim=1) / 2  # (N, K): the step of each weight's group
    assert (error <= bound * (1 + 1e-5) + 1e-6 * w.abs().max()).all()

# ----------------------------------------------------------------------------- the layers


def dequantized(w, scheme, dtype, group_size=quantize.GROUP_SIZE):
    """The weight a quantized layer stands for, computed from the scheme alone (no kernel, no packing): the
    scales rounded to `dtype` as the layer stores them. int8 where int4 does not apply."""
    if scheme == "int4" and w.shape[1] % group_size == 0:
        q, scales, _ = quantize.quantize_int4(w, group_size)
        return quantize.dequantize_int4(q, scales.to(dtype), group_size)
    q, scales, _ = quantize.quantize_int8(w)
    return quantize.dequantize_int8(q, scales.to(dtype))


@given(scheme=st.sampled_from(quantize.SCHEMES), group_size=st.sampled_from(GROUP_SIZES),
       dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]), bias=st.booleans(),
       lead=st.sampled_from([(1,), (3,), (2, 5)]), whole_groups=st.booleans(), data=st.data())
def test_layer_equals_matmul_with_its_dequantized_weight(scheme, group_size, dtype, bias, lead, whole_groups,
                                                          data):
    """Widths drawn from 1..80 too (not multiples of 16 or 32): PyTorch's int8 kernel is wrong there with bf16
    activations, so the layer must not use it (more than one token crashes it: see the subprocess test)."""
    w = data.draw(weights(multiple_of=group_size if whole_groups else 1))
    b = torch.randn(w.shape[0]) if bias else None
    layer = quantize.quantized_linear(w, b, scheme, dtype, group_size)
    int4 = scheme == "int4" and w.shape[1] % group_size == 0
    assert isinstance(layer, quantize.Int4Linear if int4 else quantize.Int8Linear)
    x = torch.randn(*lead, w.shape[1]).to(dtype)
    with torch.no_grad():
        y = layer(x)
    W = dequantized(w, scheme, dtype, group_size)
    expected = x.float() @ W.T + (0 if b is None else b.to(dtype).float())
    assert y.shape == (*lead, w.shape[0]) and y.dtype == dtype
    # Accumulation order and the output's rounding: relative to the sum of |terms| (bf16: 8 bits of mantissa).
    magnitude = x.float().abs() @ W.abs().T + (0 if b is None else b.abs())
    assume(dtype != torch.float16 or magnitude.max() < 1e4)  # fp16 overflows at 65504
    rel = 1e-5 if dtype == torch.float32 else 2**-7
    assert ((y.float() - expected).abs() <= rel * magnitude + 1e-6).all()


@given(rows=st.integers(1, 12).map(lambda n: 16 * n), cut=st.integers(0, 15), words=st.integers(1, 40),
       seed=st.integers(0, 2**16))
def test_saved_int4_bytes_move_into_pytorchs_cpu_layout_and_back(rows, cut, words, seed):
    """A saved checkpoint's int4 bytes (two inputs of a row to a byte) are rearranged straight into the layout
    PyTorch's own packer makes from the levels (blocks of rows, k-major; padding rows zero), and back."""
    N, K = max(1, rows - cut), 8 * words
    q = torch.randint(0, 16, (N, K), generator=torch.Generator().manual_seed(seed), dtype=torch.int32)
    pairs = q[:, ::2] | q[:, 1::2] << 4
    padded = torch.nn.functional.pad(q, (0, 0, 0, rows - N))
    expected = torch.ops.aten._convert_weight_to_int4pack_for_cpu(padded, 1)  # (rows, K/2) uint8
    out = torch.empty_like(expected)
    quantize.pairs_to_cpu_int4(pairs.to(torch.uint8), out)
    assert torch.equal(out, expected)
    assert torch.equal(quantize.cpu_int4_to_pairs(expected, N), pairs.to(torch.uint8))


@pytest.mark.parametrize("layout", [(64, True), (32, True), (32, False)])
def test_every_cpu_int4_layout_round_trips(layout, monkeypatch):
    """The two layouts other builds use (AVX2: blocks of 32; no AVX: neighbouring rows) can't be packed by this
    machine's PyTorch; they at least go there and back unchanged, with the padding rows zero."""
    monkeypatch.setattr(quantize, "LAYOUT", list(layout))
    pairs = torch.randint(0, 256, (100, 12), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    out = torch.empty(112, 12, dtype=torch.uint8)
    quantize.pairs_to_cpu_int4(pairs, out)
    back = quantize.cpu_int4_to_pairs(out, 112)
    assert torch.equal(back[:100], pairs) and not back[100:].any()


def test_int4_pads_rows_and_falls_back_to_int8_on_odd_widths():
    torch.manual_seed(0)
    w = torch.randn(quantize.BLOCK * 2 + 37, 64)  # more than one block of rows, not divisible by 16: padded
    layer = quantize.quantized_linear(w, None, "int4", torch.float32, 32)
    assert isinstance(layer, quantize.Int4Linear) and layer.weight.shape[0] % 16 == 0
    x = torch.randn(2, 64)
    assert_close(layer(x), x @ dequantized(w, "int4", torch.float32, 32).T, "int4 padded rows", tol=1e-4)
    assert isinstance(quantize.quantized_linear(torch.randn(8, 40), None, "int4", torch.float32, 32),
                      quantize.Int8Linear)  # 40 inputs: not a whole number of groups


ODD_WIDTH_MODEL = """
import sys, torch, quantize
torch.manual_seed(0)
w, x = torch.randn(48, 40), torch.randn(2, 7, 40).bfloat16()  # 40 inputs: not a multiple of 16
layer = quantize.quantized_linear(w, None, sys.argv[1], torch.bfloat16)
q, scales, _ = quantize.quantize_int8(w)
expected = x.float() @ quantize.dequantize_int8(q, scales.bfloat16()).T
error = (layer(x).float() - expected).abs().max().item()
print(error / expected.abs().max().item())
"""


@pytest.mark.parametrize("scheme", quantize.SCHEMES)
def test_odd_width_with_bf16_and_many_tokens_neither_crashes_nor_errs(scheme):
    """PyTorch's CPU int8 kernel (torch 2.13) with bf16 activations segfaults on inputs of several rows when the
    width is not a multiple of 16 (rc -11, no message) and returns wrong values for one row. Run in a process
    of its own, so that a crash fails this test instead of killing pytest. int4 falls back to int8 here."""
    result = subprocess.run([sys.executable, "-c", ODD_WIDTH_MODEL, scheme], capture_output=True, text=True,
                            cwd=ROOT, timeout=120)
    assert result.returncode == 0, f"rc {result.returncode}: {result.stderr[-500:]}"
    assert float(result.stdout.split()[-1]) < 2**-7


def test_unknown_scheme_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown quantization 'int3'; choose one of int8, int4"):
        quantize.quantized_linear(torch.randn(4, 32), None, "int3", torch.float32)
    with pytest.raises(ValueError, match="unknown quantization 'int3'"):
        gpt2.from_pretrained("/no/such/dir", quantize="int3")  # refused before anything is read

# ----------------------------------------------------------------------------- whole models


def tiny(arch, vocab_size, n_embd, seed=0):
    """A transformers reference model of `arch`, small, with weights large enough that logits differ."""
    torch.manual_seed(seed)
    common = dict(vocab_size=vocab_size, initializer_range=0.3, bos_token_id=0, eos_token_id=1)
    if arch == "gpt2":
        config = transformers.GPT2Config(n_positions=64, n_embd=n_embd, n_layer=2, n_head=2, **common,
                                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        return gpt2, transformers.GPT2LMHeadModel(config).eval()
    if arch == "gpt_neo":
        config = transformers.GPTNeoConfig(max_position_embeddings=64, hidden_size=n_embd, num_layers=2,
                                           num_heads=2, attention_types=[[["global", "local"], 1]],
                                           window_size=16, **common, resid_dropout=0.0, embed_dropout=0.0,
                                           attention_dropout=0.0)
        return gpt_neo, transformers.GPTNeoForCausalLM(config).eval()
    config = transformers.GPTNeoXConfig(max_position_embeddings=64, hidden_size=n_embd, num_hidden_layers=2,
                                        num_attention_heads=2, intermediate_size=4 * n_embd, rotary_pct=0.25,
                                        **common, tie_word_embeddings=False)
    return gpt_neox, transformers.GPTNeoXForCausalLM(config).eval()


def quantized_and_dequantized(arch, scheme, vocab_size=83, n_embd=64, dtype=torch.float32, seed=0):
    """Our model loaded with quantize=scheme, and ours loaded in `dtype` with every nn.Linear's weight replaced
    by the scheme's dequantized weight (a tied LM head gets its own plain nn.Linear, as quantizing gives it)."""
    module, ref = tiny(arch, vocab_size, n_embd, seed)
    with tempfile.TemporaryDirectory() as d:
        save_checkpoint(ref, d)
        quantized = module.from_pretrained(d, quantize=scheme, dtype=dtype)
        plain = module.from_pretrained(d, dtype=torch.float32)
    for name, linear in [(n, m) for n, m in plain.named_modules() if isinstance(m, nn.Linear)]:
        copy = nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None)
        with torch.no_grad():
            copy.weight.copy_(dequantized(linear.weight, scheme, dtype))
            if linear.bias is not None:
                copy.bias.copy_(linear.bias.to(dtype))
        parent, _, child = name.rpartition(".")
        setattr(plain.get_submodule(parent), child, copy)
    return module, quantized, plain.to(dtype)


@given(arch=st.sampled_from(["gpt2", "gpt_neo", "gpt_neox"]), scheme=st.sampled_from(quantize.SCHEMES),
       vocab_size=st.integers(40, 130), n_embd=st.sampled_from([32, 64]), seed=st.integers(0, 2**16))
def test_quantized_model_logits_equal_the_dequantized_models(arch, scheme, vocab_size, n_embd, seed):
    module, quantized, plain = quantized_and_dequantized(arch, scheme, vocab_size, n_embd, seed=seed)
    kinds = {type(m) for m in quantized.modules()}
    assert nn.Linear not in kinds and (quantize.Int4Linear in kinds) == (scheme == "int4")
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (2, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # a left-padded row
    with torch.no_grad():
        assert_close(quantized(ids, mask), plain(ids, mask), f"{arch} {scheme} logits vs dequantized",
                     mask=mask.bool(), tol=1e-3)


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neo", "gpt_neox"])
@pytest.mark.parametrize("scheme", quantize.SCHEMES)
def test_greedy_generation_equals_the_dequantized_models(arch, scheme):
    """Left-padded batch, KV cache: the same tokens. Fixed seeds (no hypothesis): the two models' logits
    differ by ~1e-5, and the check below makes sure no step is decided by a near-tie."""
    module, quantized, plain = quantized_and_dequantized(arch, scheme)
    ids = torch.tensor([[0, 0, 0, 5, 17, 42, 8], [3, 9, 11, 60, 2, 7, 30]])
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1], [1] * 7])
    steps = []
    expected = module.generate(plain, ids, 10, attention_mask=mask, temperature=0,
                               on_token=lambda t: steps.append(t))
    out = module.generate(quantized, ids, 10, attention_mask=mask, temperature=0)
    assert torch.equal(out, expected)
    with torch.no_grad():  # margins of the greedy choices: far larger than the logits' difference
        logits = plain(expected[:, :-1], torch.cat([mask, torch.ones_like(expected[:, 7:-1])], dim=1))[:, 6:]
        top2 = logits.topk(2, dim=-1).values
        assert (top2[..., 0] - top2[..., 1]).min() > 1e-3


@pytest.mark.parametrize("scheme", quantize.SCHEMES)
def test_compiled_decoding_and_bf16(scheme):
    """compile=True over a StaticCache gives the eager tokens; in bf16 (the default with quantize) too."""
    module, quantized, _ = quantized_and_dequantized("gpt2", scheme, dtype=torch.bfloat16)
    assert quantized.transformer.wte.weight.dtype == torch.bfloat16
    ids = torch.tensor([[0, 0, 5, 17, 42, 8], [3, 9, 11, 60, 2, 7]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1] * 6])
    eager = module.generate(quantized, ids, 6, attention_mask=mask, temperature=0)
    compiled = module.generate(quantized, ids, 6, attention_mask=mask, temperature=0, compile=True)
    assert torch.equal(compiled, eager)


def test_default_dtype_with_quantize_and_the_lm_head_is_untied():
    """bf16, or fp32 around cpu_kernels.py's layers where they run (tests/test_cpu_kernels.py)."""
    module, ref = tiny("gpt2", 83, 64)
    with tempfile.TemporaryDirectory() as d:
        save_checkpoint(ref, d)
        model = gpt2.from_pretrained(d, quantize="int8")
    expected = torch.float32 if quantize.fast_kernels("cpu") else torch.bfloat16
    assert model.transformer.wte.weight.dtype == expected
    assert isinstance(model.lm_head, quantize.Int8Linear)  # its own int8 copy of wte
    assert not any(p.is_meta for p in model.parameters()) and not any(b.is_meta for b in model.buffers())


def test_cli_flag(tmp_path):
    module, ref = tiny("gpt_neox", 300, 64)  # room for the tokenizer's 276 tokens
    save_checkpoint(ref, tmp_path)
    from bpe import train
    train("hello world, hello quantized world " * 20, vocab_size=256 + 20).save(tmp_path)

    def run(*args):
        return subprocess.run([sys.executable, str(ROOT / "gpt_neox.py"), "--model", str(tmp_path), *args],
                              capture_output=True, text=True, cwd=ROOT, timeout=120)
    for scheme in quantize.SCHEMES:
        result = run("--quantize", scheme, "--prompt", "hello", "--max-new-tokens", "4", "--temperature", "0")
        assert result.returncode == 0 and result.stdout.startswith("hello"), result.stderr
    result = run("--quantize", "int3", "--max-new-tokens", "4")
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1, result.stderr
    assert lines[0] == "error: unknown quantization 'int3'; choose one of int8, int4"


@pytest.mark.parametrize("scheme", quantize.SCHEMES)
def test_heads_loader_quantizes_backbone_and_head(scheme):
    """heads.from_pretrained(quantize=): a GPT-NeoX sequence classifier's logits equal those of the same model
    with dequantized weights (the head's `score` layer included)."""
    import heads
    torch.manual_seed(0)
    config = transformers.GPTNeoXConfig(vocab_size=70, max_position_embeddings=32, hidden_size=64,
                                        num_hidden_layers=2, num_attention_heads=2, intermediate_size=256,
                                        num_labels=3, pad_token_id=0, initializer_range=0.3)
    ref = transformers.GPTNeoXForSequenceClassification(config).eval()
    with tempfile.TemporaryDirectory() as d:
        save_checkpoint(ref, d)
        quantized = heads.from_pretrained(d, quantize=scheme, dtype=torch.float32)
        plain = heads.from_pretrained(d)
    assert not any(isinstance(m, nn.Linear) for m in quantized.modules())
    for name, linear in [(n, m) for n, m in plain.named_modules() if isinstance(m, nn.Linear)]:
        with torch.no_grad():
            linear.weight.copy_(dequantized(linear.weight, scheme, torch.float32))
    ids = torch.randint(1, 70, (2, 9))
    with torch.no_grad():
        assert_close(quantized(ids).logits, plain(ids).logits, f"heads {scheme} logits vs dequantized", tol=1e-3)


def test_nan_weights_are_refused_while_quantizing():
    module, ref = tiny("gpt2", 83, 64)
    with torch.no_grad():
        ref.transformer.h[1].mlp.c_fc.weight[3, 5] = float("nan")
    with tempfile.TemporaryDirectory() as d:
        save_checkpoint(ref, d)
        with pytest.raises(ValueError, match="NaN or inf .*transformer.h.1.mlp.c_fc.weight"):
            gpt2.from_pretrained(d, quantize="int4")


@pytest.mark.parametrize("where", ["transformer.h.1.mlp.c_fc.weight", "transformer.ln_f.weight"])
def test_values_beyond_float16_are_refused_with_quantize_and_float16(where):
    """70000 is finite in fp32 but inf in float16: refused as loading in float16 without quantize refuses it
    (a quantized weight's scale would hold it, but its products would overflow the fp16 activations)."""
    module, ref = tiny("gpt2", 83, 64)
    with torch.no_grad():
        ref.get_parameter(where).view(-1)[3] = 7e4
    with tempfile.TemporaryDirectory() as d:
        save_checkpoint(ref, d)
        with pytest.raises(ValueError, match=f"NaN or inf in torch.float16: .*{where}"):
            gpt2.from_pretrained(d, dtype=torch.float16)
        for scheme in quantize.SCHEMES:
            with pytest.raises(ValueError, match=f"NaN or inf in torch.float16: .*{where}"):
                gpt2.from_pretrained(d, quantize=scheme, dtype=torch.float16)
            gpt2.from_pretrained(d, quantize=scheme, dtype=torch.bfloat16)  # bf16 holds it

# ----------------------------------------------------------------------------- saving and reloading


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neo", "gpt_neox"])
@pytest.mark.parametrize("scheme", quantize.SCHEMES)
def test_saved_model_reloads_bit_for_bit_without_quantizing(arch, scheme, tmp_path, monkeypatch):
    """save_pretrained writes the integers; from_pretrained reads them back (no quantize=, bf16 by default)
    into the same buffers, and quantizes nothing again. GPT-2's vocabulary of 83 rows pads the int4 LM head."""
    module, ref = tiny(arch, 83, 64)
    save_checkpoint(ref, tmp_path / "fp32")
    model = module.from_pretrained(tmp_path / "fp32", quantize=scheme)
    module.save_pretrained(model, tmp_path / "saved")
    config = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert config["quantization_config"]["format"] == "pack-quantized"
    monkeypatch.setattr(quantize, "levels_int8", None)  # reloading must not quantize
    monkeypatch.setattr(quantize, "levels_int4", None)
    reloaded = module.from_pretrained(tmp_path / "saved")
    mine, theirs = dict(model.named_buffers()), dict(reloaded.named_buffers())
    assert mine.keys() == theirs.keys()
    assert dict(model.named_parameters()).keys() == dict(reloaded.named_parameters()).keys()
    for key, tensor in list(mine.items()) + list(model.named_parameters()):
        other = theirs[key] if key in theirs else reloaded.get_parameter(key)
        assert tensor.dtype == other.dtype and torch.equal(tensor, other), key
    ids = torch.randint(0, 83, (2, 9))
    with torch.no_grad():
        assert torch.equal(model(ids), reloaded(ids))


@pytest.mark.parametrize("arch", ["gpt_neo", "gpt_neox"])
@pytest.mark.parametrize("scheme", quantize.SCHEMES)
def test_transformers_with_compressed_tensors_loads_what_we_save(arch, scheme, tmp_path):
    """Our saved checkpoint in compressed-tensors' pack-quantized format, loaded by transformers (which
    decompresses it): its logits are those of our quantized model (fp32 activations, so the kernels' rounding
    stays below the tolerance). GPT-2's Conv1D layers are not what compressed-tensors quantizes: ours only
    (transformers refuses it: tests/test_hostile_inputs_2.py)."""
    pytest.importorskip("compressed_tensors")
    module, ref = tiny(arch, 83, 64)
    save_checkpoint(ref, tmp_path / "fp32")
    model = module.from_pretrained(tmp_path / "fp32", quantize=scheme, dtype=torch.float32)
    module.save_pretrained(model, tmp_path / "saved")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "saved", dtype=torch.float32).eval()
    ids = torch.randint(0, 83, (2, 9))
    with torch.no_grad():
        assert_close(model(ids), theirs(ids).logits, f"{arch} {scheme} saved, transformers + compressed-tensors",
                     tol=1e-4)


@pytest.mark.parametrize("scheme", quantize.SCHEMES)
def test_a_sharded_quantized_save_is_the_hubs_layout(scheme, tmp_path):
    """Above max_shard_size the integers go into shards written one at a time (a 20B's packed copies all at
    once would double its memory), with huggingface_hub's names and index: we reload the same model, and
    transformers + compressed-tensors loads it with our logits."""
    pytest.importorskip("compressed_tensors")
    module, ref = tiny("gpt_neox", 83, 64)
    save_checkpoint(ref, tmp_path / "fp32")
    model = module.from_pretrained(tmp_path / "fp32", quantize=scheme, dtype=torch.float32)
    module.save_pretrained(model, tmp_path / "saved", max_shard_size=20_000)
    index = json.loads((tmp_path / "saved" / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    n = len(files)
    assert n >= 3 and files == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    assert sorted(f.name for f in (tmp_path / "saved").iterdir()) == sorted(
        files + ["config.json", "model.safetensors.index.json"])
    sizes = {f: (tmp_path / "saved" / f).stat().st_size for f in files}
    assert index["metadata"]["total_size"] <= sum(sizes.values())
    reloaded = module.from_pretrained(tmp_path / "saved", dtype=torch.float32)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "saved", dtype=torch.float32).eval()
    ids = torch.randint(0, 83, (2, 9))
    with torch.no_grad():
        assert torch.equal(model(ids), reloaded(ids))
        assert_close(model(ids), theirs(ids).logits, f"gpt_neox {scheme} sharded save, transformers", tol=1e-4)


def test_cli_samples_a_saved_model_without_the_flag(tmp_path):
    module, ref = tiny("gpt_neox", 300, 64)
    save_checkpoint(ref, tmp_path / "fp32")
    gpt_neox.save_pretrained(gpt_neox.from_pretrained(tmp_path / "fp32", quantize="int4"), tmp_path / "int4")
    from bpe import train
    train("hello world, hello quantized world " * 20, vocab_size=256 + 20).save(tmp_path / "int4")

    def run(*args):
        return subprocess.run([sys.executable, str(ROOT / "gpt_neox.py"), "--model", str(tmp_path / "int4"),
                               "--prompt", "hello", "--max-new-tokens", "4", "--temperature", "0", *args],
                              capture_output=True, text=True, cwd=ROOT, timeout=120)
    result = run()
    assert result.returncode == 0 and result.stdout.startswith("hello"), result.stderr
    result = run("--quantize", "int8")
    assert result.returncode != 0 and result.stderr.strip().splitlines() == [
        "error: the checkpoint is saved quantized already (config.json's quantization_config): load it without "
        "quantize='int8'"], result.stderr


@pytest.mark.parametrize("damage", ["shape", "dtype", "missing", "config"])
def test_a_damaged_saved_checkpoint_is_refused_by_name(damage, tmp_path):
    from safetensors.torch import load_file, save_file
    module, ref = tiny("gpt_neox", 83, 64)
    save_checkpoint(ref, tmp_path / "fp32")
    gpt_neox.save_pretrained(gpt_neox.from_pretrained(tmp_path / "fp32", quantize="int4"), tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    key = "gpt_neox.layers.1.mlp.dense_h_to_4h.weight_packed"
    config = json.loads((tmp_path / "config.json").read_text())
    if damage == "shape":
        tensors[key] = tensors[key][:, :3].contiguous()
    elif damage == "dtype":
        tensors[key] = tensors[key].float()
    elif damage == "missing":
        del tensors[key]
    else:
        config["quantization_config"]["config_groups"]["group_0"]["weights"]["num_bits"] = 3
    save_file(tensors, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(config))
    match = "config_groups.group_0" if damage == "config" else key
    with pytest.raises(ValueError, match=match):
        gpt_neox.from_pretrained(tmp_path)


def test_a_quantized_model_is_saved_over_the_checkpoint_it_was_read_from(tmp_path):
    """Issue 21: saving into the source directory once wrote a broken checkpoint over the source. Now the
    integers replace the fp32 files whole (save_pretrained writes beside them, then renames)."""
    module, ref = tiny("gpt_neox", 83, 64)
    save_checkpoint(ref, tmp_path)
    model = gpt_neox.from_pretrained(tmp_path, quantize="int8")
    ids = torch.randint(0, 83, (2, 9))
    with torch.no_grad():
        expected = model(ids)
        gpt_neox.save_pretrained(model, tmp_path)
        assert torch.equal(gpt_neox.from_pretrained(tmp_path)(ids), expected)
