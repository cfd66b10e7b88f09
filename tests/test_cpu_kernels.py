"""cpu_kernels.py: the int8-activation kernels compute what their PyTorch reference computes (the same rounding
of the activations, then exact integer dots), are exact where that rounding is, and quantized models run them
by default where the CPU has them: the same logits as the reference in their place, compiled and eager alike,
saved and reloaded bit for bit. The fp32 kernel computes F.linear (to fp32's rounding of the sums), and fp32
models decode with it by default: transformers' logits and tokens. Where they cannot run (no such CPU, the
file not copied, a failed build, a dtype asked for), PyTorch's kernels do, as before.

How much the rounding of activations costs in perplexity is measured in bench/quantize.py, not here."""
import sys
import tempfile
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, example, given
from hypothesis import strategies as st
from reference import recording_compile, save_checkpoint
from safetensors.torch import load_file
from test_fast_paths import configs, reference_and_ours, windows_cover
from test_quantize import tiny
from torch import nn

import checkpoint
import cpu_kernels
import generation
import quantize
from kv_cache import FullBuffer

needs_kernels = pytest.mark.skipif(not quantize.fast_kernels("cpu"), reason="no AVX-512 VNNI here (or no "
                                   "compiler): test_without_* check the path such a machine runs")


@st.composite
def activations(draw, M, K):
    """x (M, K): blocks of very different sizes, an outlier, a block of zeros (its scale is 0)."""
    torch.manual_seed(draw(st.integers(0, 2**16)))
    x = torch.randn(M, K) * draw(st.sampled_from([1e-3, 1.0, 50.0]))
    if draw(st.booleans()):
        x[:, draw(st.integers(0, K - 1))] *= 200
    if draw(st.booleans()):
        x[:, :32] = 0
    return x


def check_against(out, expected, magnitude, dtype):
    """fp32: summation order only (relative to the sum of |terms|); bf16 output: plus its rounding."""
    slack = 1e-5 * magnitude + 1e-30 + (2**-8 * expected.abs() if dtype == torch.bfloat16 else 0)
    assert ((out.double() - expected.double()).abs() <= slack).all()


def check_kernel(kernel, reference, x, w, scales, dequantized):
    """kernel(x, w, scales): (M, N) in x's dtype, equal to reference(x, w, scales) within check_against's
    slack, against the magnitude of x times the dequantized weight."""
    out = kernel(x, w, scales)
    assert out.shape == (x.shape[0], w.shape[0]) and out.dtype == x.dtype
    magnitude = x.double().abs() @ dequantized.double().abs().T
    check_against(out, reference(x, w, scales).double(), magnitude, x.dtype)
    return out


@needs_kernels
@given(M=st.integers(1, 10), N=st.integers(1, 70), blocks=st.integers(1, 26), data=st.data(),
       dtype=st.sampled_from([torch.float32, torch.bfloat16]), scales=st.sampled_from([torch.float32, torch.bfloat16]))
def test_int8_kernel_equals_its_reference(M, N, blocks, data, dtype, scales):
    """Input widths of 64 to 1664: whole super-blocks of 512 and short last ones (768, 1600)."""
    K = 64 * blocks
    w = torch.randn(N, K) * data.draw(st.sampled_from([0.02, 3.0]))
    q, s, _ = quantize.quantize_int8(w)
    s = s.to(scales)
    x = data.draw(activations(M, K)).to(dtype)
    check_kernel(cpu_kernels.int8_linear, cpu_kernels.reference_int8, x, q, s, quantize.dequantize_int8(q, s))


@needs_kernels
@given(M=st.integers(1, 4), N=st.integers(1, 70), loads=st.one_of(st.integers(1, 13), st.just(44)), data=st.data(),
       dtype=st.sampled_from([torch.float32, torch.bfloat16]), scales=st.sampled_from([torch.float32, torch.bfloat16]))
def test_int4_kernel_equals_its_reference(M, N, loads, data, dtype, scales):
    """Input widths of 128 to 1664: every mix of the kernel's groups of 16, 8 and 4 blocks, tiles of 4 rows
    and a last 1-3 rows; 5632 (176 blocks: 11 groups of 16, rows as long as the 20B's); the weights in the
    kernel's layout, the reference reading the saved pairs."""
    K = 128 * loads
    w = torch.randn(N, K) * data.draw(st.sampled_from([0.02, 3.0]))
    q, s, _ = quantize.quantize_int4(w, 32)
    pairs, s = quantize.levels_to_pairs(q).contiguous(), s.to(scales).contiguous()
    x = data.draw(activations(M, K)).to(dtype)
    kernel = lambda x, pairs, s: cpu_kernels.int4_linear(x, cpu_kernels.int4_layout(pairs), s)
    check_kernel(kernel, cpu_kernels.reference_int4, x, pairs, s, quantize.dequantize_int4(q, s, 32))


@needs_kernels
@given(N=st.integers(1, 13), loads=st.one_of(st.integers(1, 13), st.just(44)), seed=st.integers(0, 2**16))
@example(N=7, loads=44, seed=0)  # (rows as long as the 20B's, a tile and 3, every run)
def test_the_int4_kernels_layout_is_its_reference_and_undone_by_int4_pairs(N, loads, seed):
    """The C++ copy is reference_int4_layout (PyTorch ops), each byte of the saved pairs lands once, and
    int4_pairs brings every one back."""
    pairs = torch.randint(0, 256, (N, 64 * loads), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    ours = cpu_kernels.int4_layout(pairs)
    assert torch.equal(ours, cpu_kernels.reference_int4_layout(pairs))
    assert torch.equal(ours.flatten().sort().values, pairs.flatten().sort().values)
    assert torch.equal(cpu_kernels.int4_pairs(ours), pairs)


@needs_kernels
@pytest.mark.parametrize("K", [1664, 5632])
def test_int4_kernel_at_gpt2s_and_the_20bs_widths(K):
    """Every run (beside the drawn shapes above): a width of GPT-2's order and one of the 20B's, 2 tokens, 7 rows
    (a tile of 4 and 3 rows), against the reference."""
    w = torch.randn(7, K, generator=torch.Generator().manual_seed(K)) * 0.02
    q, s, _ = quantize.quantize_int4(w, 32)
    pairs, s = quantize.levels_to_pairs(q).contiguous(), s.contiguous()
    x = torch.randn(2, K, generator=torch.Generator().manual_seed(1))
    kernel = lambda x, pairs, s: cpu_kernels.int4_linear(x, cpu_kernels.int4_layout(pairs), s)
    check_kernel(kernel, cpu_kernels.reference_int4, x, pairs, s, quantize.dequantize_int4(q, s, 32))


def on_the_grid(M, K, blocks, seed):
    """x (M, K) that rounding to int8 leaves exact: each block's values are integer multiples of a power of
    two, its largest exactly 127 of them. Rounded in any other blocks, it would not be exact."""
    g = torch.Generator().manual_seed(seed)
    levels = torch.randint(-126, 127, (M, K), generator=g).float()
    step = 2.0 ** torch.randint(-12, 4, (M, int(blocks.max()) + 1), generator=g).float()
    for b in range(int(blocks.max()) + 1):
        where = (blocks == b).nonzero()[:, 0]
        levels[:, where[torch.randint(len(where), (1,), generator=g)]] = 127
    return levels * step[:, blocks]


@needs_kernels
@pytest.mark.parametrize("scheme,K", [("int8", 768), ("int8", 1600), ("int4", 768), ("int4", 128)])
def test_the_kernels_are_exact_where_the_activations_round_exactly(scheme, K):
    """The same check without the reference: on such inputs the kernel is the plain matmul with the
    dequantized weight, so the blocks it scales by are the ones cpu_kernels.py documents."""
    w = torch.randn(40, K) * 0.02
    if scheme == "int8":
        q, s, _ = quantize.quantize_int8(w)
        x = on_the_grid(3, K, cpu_kernels.blocks_int8(K), seed=K)
        out, expected = cpu_kernels.int8_linear(x, q, s), x.double() @ quantize.dequantize_int8(q, s).double().T
    else:
        q, s, _ = quantize.quantize_int4(w, 32)
        x = on_the_grid(3, K, torch.arange(K) // 32, seed=K)
        out = cpu_kernels.int4_linear(x, cpu_kernels.int4_layout(quantize.levels_to_pairs(q)), s.contiguous())
        expected = x.double() @ quantize.dequantize_int4(q, s, 32).double().T
    check_against(out, expected, x.double().abs() @ w.double().abs().T * 2, torch.float32)


@needs_kernels
@given(M=st.integers(1, 9), N=st.integers(1, 70), K=st.one_of(st.integers(1, 200), st.sampled_from([768, 3077])),
       bias=st.booleans(), seed=st.integers(0, 2**16))
def test_fp32_kernel_equals_f_linear(M, N, K, bias, seed):
    """Any width (a last partial load of 16), any number of rows (a last 1-3), with and without a bias; the
    error bound of any order of summing K + 1 fp32 terms. A weight stored by columns is refused."""
    g = torch.Generator().manual_seed(seed)
    x, w, b = torch.randn(M, K, generator=g), torch.randn(N, K, generator=g), torch.randn(N, generator=g)
    b = b if bias else None
    if N > 1 and K > 1:
        with pytest.raises(RuntimeError, match="stored by rows"):
            cpu_kernels.fp32_linear(x, w.T.contiguous().T, b)
    out = cpu_kernels.fp32_linear(x, w, b)
    expected = F.linear(x.double(), w.double(), None if b is None else b.double())
    magnitude = x.double().abs() @ w.double().abs().T + (0 if b is None else b.double().abs())
    assert out.shape == (M, N) and out.dtype == torch.float32
    assert ((out.double() - expected).abs() <= (K + 1) * 2**-24 * magnitude * 1.01 + 1e-30).all()

# ----------------------------------------------------------------------------- in the models


def load(arch, scheme, n_embd=128, **kwargs):
    module, ref = tiny(arch, 90, n_embd)
    with tempfile.TemporaryDirectory() as d:
        save_checkpoint(ref, d)
        return module, module.from_pretrained(d, quantize=scheme, **kwargs)


def quantized_layers(model):
    return [m for m in model.modules() if isinstance(m, (quantize.Int8Linear, quantize.Int4Linear))]


@needs_kernels
@pytest.mark.parametrize("arch", ["gpt2", "gpt_neo", "gpt_neox"])
@pytest.mark.parametrize("scheme", quantize.SCHEMES)
def test_quantized_models_run_the_kernels_by_default(arch, scheme, monkeypatch):
    """No dtype: fp32 activations, and every layer computes on its real inputs what the kernels' PyTorch
    reference computes. (Whole models are not compared with the reference to 1e-4: rounding to int8 is a
    step function, and a difference in the last bit of a layer's input moves a level now and then; what the
    rounding costs is measured on trained weights, in bench/quantize.py.) A dtype asked for: PyTorch's kernels."""
    module, model = load(arch, scheme)
    assert next(model.parameters()).dtype == torch.float32
    assert all(m.kernel == quantize.INT8_ACTIVATIONS for m in quantized_layers(model))
    calls = []

    def checked(kernel, reference, dequantize):
        def run(x, w, scales):
            out = check_kernel(kernel, reference, x, w, scales, dequantize(w, scales))
            calls.append(x.shape)
            return out
        return run
    monkeypatch.setattr(cpu_kernels, "int8_linear", checked(cpu_kernels.int8_linear, cpu_kernels.reference_int8,
                                                            quantize.dequantize_int8))
    monkeypatch.setattr(cpu_kernels, "int4_linear", checked(
        cpu_kernels.int4_linear, lambda x, w, s: cpu_kernels.reference_int4(x, cpu_kernels.int4_pairs(w), s),
        lambda w, s: quantize.dequantize_int4(quantize.pairs_to_levels(cpu_kernels.int4_pairs(w)), s, 32)))
    ids = torch.randint(0, 90, (2, 11), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # a left-padded row
    _, weight_only = load(arch, scheme, dtype=torch.float32)
    assert not any(m.kernel == quantize.INT8_ACTIVATIONS for m in quantized_layers(weight_only))
    with torch.no_grad():
        fast, reference = model(ids, mask), weight_only(ids, mask)
    assert len(calls) == len(quantized_layers(model)) and fast.shape == reference.shape


@needs_kernels
@pytest.mark.parametrize("scheme", quantize.SCHEMES)
def test_compiled_decoding_runs_the_kernels(scheme):
    """torch.compile traces the kernels as opaque ops (their fake implementations): the eager tokens."""
    module, model = load("gpt2", scheme)
    ids = torch.tensor([[0, 0, 5, 17, 42, 8], [3, 9, 11, 60, 2, 7]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1] * 6])
    eager = module.generate(model, ids, 6, attention_mask=mask, temperature=0)
    compiled = module.generate(model, ids, 6, attention_mask=mask, temperature=0, compile=True)
    assert torch.equal(compiled, eager)


@needs_kernels
@pytest.mark.parametrize("scheme", quantize.SCHEMES)
def test_a_model_saved_from_the_kernels_layout_reloads_in_either(scheme, tmp_path):
    """The int4 kernel reads the saved pairs reordered (cpu_kernels.int4_layout), the int8 kernel the levels
    as they are: a save from the kernels' layers reloads bit for bit, and into PyTorch's layout (dtype given)
    as the same integers."""
    module, model = load("gpt_neox", scheme)
    module.save_pretrained(model, tmp_path / "q")
    again = module.from_pretrained(tmp_path / "q")
    pytorchs = module.from_pretrained(tmp_path / "q", dtype=torch.float32)
    saved = (lambda m: (m.weight, m.scales)) if scheme == "int8" else (lambda m: m.pairs())
    for a, b, c in zip(quantized_layers(model), quantized_layers(again), quantized_layers(pytorchs)):
        assert b.kernel == quantize.INT8_ACTIVATIONS != c.kernel
        assert all(torch.equal(x, y) for x, y in zip(saved(a), saved(b)))
        assert torch.equal(saved(a)[0], saved(c)[0]) and torch.equal(saved(a)[1].float(), saved(c)[1].float())


def linears(model):
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


@needs_kernels
@pytest.mark.parametrize("arch", ["gpt2", "gpt_neo", "gpt_neox"])
def test_fp32_models_decode_with_the_fp32_kernel(arch, monkeypatch, tmp_path):
    """No dtype: every nn.Linear is a Float32Linear, its weight stored by rows (GPT-2's Conv1D weights copied
    from the file's transposed matrices). A few tokens without gradients (decoding) run the fp32 kernel, with
    transformers' logits; more than MAX_TOKENS tokens, or a forward that keeps gradients, run
    nn.Linear's; the tokens are those of the plain model (dtype given); a save is the file it came from."""
    module, ref = tiny(arch, 90, 128)
    save_checkpoint(ref, tmp_path / "ref")
    model = module.from_pretrained(tmp_path / "ref")
    plain = module.from_pretrained(tmp_path / "ref", dtype=torch.float32)
    assert all(type(m) is cpu_kernels.Float32Linear and m.weight.is_contiguous() for m in linears(model))
    assert all(type(m) is nn.Linear for m in linears(plain))
    calls = []

    def counted(x, w, bias=None):
        calls.append(x.shape[0])
        return torch.ops.gpt_kernels.fp32_linear(x, w, bias)
    monkeypatch.setattr(cpu_kernels, "fp32_linear", counted)
    short, long = torch.tensor([[3, 17, 42, 8, 60]]), torch.randint(0, 90, (2, 40), generator=torch.Generator())
    with torch.no_grad():
        for ids, runs in ((short, len(linears(model))), (long, 0)):
            calls.clear()
            ours, expected = model(ids), ref(ids).logits
            assert len(calls) == runs and (ours - expected).abs().max() <= 1e-4
    calls.clear()
    model(short).sum().backward()  # gradients kept: nn.Linear's forward
    assert not calls and linears(model)[-1].weight.grad is not None
    model.zero_grad(set_to_none=True)
    prompt = torch.tensor([[3, 17, 42], [9, 9, 1]])
    assert torch.equal(module.generate(model, prompt, 8, temperature=0),
                       module.generate(plain, prompt, 8, temperature=0))
    module.save_pretrained(model, tmp_path / "again")
    saved, original = load_file(tmp_path / "again" / "model.safetensors"), load_file(tmp_path / "ref" / "model.safetensors")
    assert all(torch.equal(saved[k], original[k]) for k in saved) and set(saved) <= set(original)

def thp_eligible(address):
    """/proc/self/smaps' THPeligible of the mapping that holds `address` (1: Linux may back it with 2 MB pages)."""
    with open("/proc/self/smaps") as f:
        inside = False
        for line in f:
            if "-" in line.split()[0] and ":" not in line.split()[0]:
                start, end = (int(a, 16) for a in line.split()[0].split("-"))
                inside = start <= address < end
            elif inside and line.startswith("THPeligible:"):
                return int(line.split()[1])


@needs_kernels
@pytest.mark.skipif(not sys.platform.startswith("linux") or "[never]" in open(
    "/sys/kernel/mm/transparent_hugepage/enabled").read(), reason="no transparent huge pages here")
@pytest.mark.parametrize("scheme", quantize.SCHEMES)
def test_the_kernels_weights_sit_in_memory_asked_in_2_mb_pages(scheme, tmp_path):
    """Quantized and reloaded alike, every kernel layer's weights are in memory that Linux may back with 2 MB
    pages, and so are GPT-2's fp32 Conv1D weights, copied into rows; tensors carved from one chunk are 64-byte
    aligned and do not overlap."""
    module, model = load("gpt_neox", scheme)
    module.save_pretrained(model, tmp_path / "q")
    for m in (model, module.from_pretrained(tmp_path / "q")):
        assert all(thp_eligible(layer.weight.data_ptr()) == 1 for layer in quantized_layers(m))
    _, fp32 = load("gpt2", None)
    copied = [m for m in fp32.transformer.h.modules() if isinstance(m, nn.Linear)]
    assert len(copied) == 8 and all(m.weight.is_contiguous() and thp_eligible(m.weight.data_ptr()) == 1 for m in copied)
    a, b = cpu_kernels.empty_in_large_pages((3, 5), torch.int8), cpu_kernels.empty_in_large_pages((7,), torch.float32)
    a.fill_(1), b.fill_(2)
    assert a.shape == (3, 5) and b.dtype == torch.float32 and (a == 1).all() and (b == 2).all()
    assert a.data_ptr() % 64 == b.data_ptr() % 64 == 0 and a.data_ptr() + 15 <= b.data_ptr()


# ----------------------------------------------------------------------------- the whole step in C++


def decode_in_cpp(model, ids, T):
    """The prompt ids[:, :T] eagerly into a StaticCache, then ids[T:] one at a time through the C++ step:
    the logits (n, V) of positions T..len - 1."""
    cache = model.make_cache(static_len=ids.size(1))
    with torch.no_grad():
        generation.last_logits(model, ids[:, :T], None, cache)
    step = cpu_kernels.decode_step(model, FullBuffer(cache))
    assert step is not None, "the C++ step refused a model it should run"
    return torch.cat([step(int(ids[0, t]), t) for t in range(T, ids.size(1))])


@needs_kernels
@pytest.mark.parametrize("arch", ["gpt2", "gpt_neo", "gpt_neox"])
@given(data=st.data())
def test_the_step_in_cpp_gives_transformers_logits(arch, data):
    """fp32, configs of every shape test_fast_paths draws (head sizes 4 and 8, rotary on 25-100% of a head,
    parallel and sequential residuals, local and global layers): each decoded token's logits equal
    transformers' logits at its position, run over the whole sequence at once."""
    config, n_positions = data.draw(configs(arch))
    ref, module, ours = reference_and_ours(config)
    length = data.draw(st.integers(2, n_positions))
    T = data.draw(st.integers(1, length - 1))
    ids = torch.tensor([data.draw(st.lists(st.integers(0, config.vocab_size - 1), min_size=length, max_size=length))])
    assume(windows_cover(ours, length))  # (the full buffer refuses shorter windows: test_fast_paths)
    with torch.no_grad():
        expected = ref(ids).logits[0, T:]  # (length - T, V)
    assert (decode_in_cpp(ours, ids, T) - expected).abs().max() <= 1e-4


@needs_kernels
@pytest.mark.parametrize("arch", ["gpt2", "gpt_neo", "gpt_neox"])
@pytest.mark.parametrize("n_embd", [160, 192])
def test_the_step_in_cpp_at_heads_wider_than_64(arch, n_embd, tmp_path):
    """Heads of 80 and 96 dims (Pythia-2.8b's, GPT-NeoX-20B's): attention takes a head 64 dims at a time, and
    the last part masked; transformers' logits at every decoded position."""
    module, ref = tiny(arch, 90, n_embd)
    with torch.no_grad():  # (tiny's weights, this wide, give GPT-Neo's unscaled scores logits of ~12: halved)
        for p in ref.parameters():
            p.mul_(0.5)
    save_checkpoint(ref, tmp_path)
    ids = torch.randint(0, 90, (1, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = ref(ids).logits[0, 5:]
    assert (decode_in_cpp(module.from_pretrained(tmp_path), ids, 5) - expected).abs().max() <= 1e-4


@needs_kernels
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_the_steps_gelu_is_f_gelu(approximate):
    """The step's own GELU (erf by a polynomial, the tanh form by e^x) against F.gelu in float64, from -30 to
    30 and on a length that is not a multiple of 16: within 5e-7 * max(1, |x|) (F.gelu's own fp32 is 3e-7)."""
    x = torch.cat([torch.linspace(-30, 30, 120001), torch.randn(1003, generator=torch.Generator().manual_seed(0))])
    expected = F.gelu(x.double(), approximate=approximate)
    got = cpu_kernels.gelu_(x.clone(), approximate).double()
    assert ((got - expected).abs() / x.abs().clamp(min=1)).max() <= 5e-7


@needs_kernels
@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox"])
def test_the_step_in_cpp_gelu_and_layernorm_far_from_zero(arch, tmp_path):
    """The step's own GELU (GPT-2's tanh form, GPT-NeoX's erf) and LayerNorm, on inputs a random model's small
    weights never give: the MLP's first layer scaled so its outputs span +-12 (GELU's tails), and the
    embeddings offset and scaled (a row's mean far from 0, its spread ~100x): transformers' logits."""
    module, ref = tiny(arch, 90, 160)
    fc = [m for n, m in ref.named_modules() if n.endswith(("mlp.c_fc", "mlp.dense_h_to_4h"))]
    with torch.no_grad():
        for p in ref.parameters():
            p.mul_(0.5)
        for m in fc:
            m.weight.mul_(40)
        embeddings = ref.get_input_embeddings().weight
        embeddings.mul_(100).add_(30)
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append(o.detach())) for m in fc]
    save_checkpoint(ref, tmp_path)
    ids = torch.randint(0, 90, (1, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = ref(ids).logits[0, 5:]
    for h in hooks:
        h.remove()
    inputs = torch.cat([o.flatten() for o in seen])
    assert inputs.min() < -12 and inputs.max() > 12  # the tails are reached
    got = decode_in_cpp(module.from_pretrained(tmp_path), ids, 5)
    assert (got - expected).abs().max() <= 1e-4 * max(1.0, expected.abs().max())


@needs_kernels
@pytest.mark.parametrize("arch", ["gpt2", "gpt_neo", "gpt_neox"])
@pytest.mark.parametrize("scheme", quantize.SCHEMES)
def test_the_step_in_cpp_runs_quantized_models(arch, scheme):
    """int8 and int4 layers on the kernels: the C++ step's logits are the model's own forward's (eager, over
    the same full buffer), up to where rounding activations to int8 lands a value on the next level. (16
    tokens: GPT-Neo's local window here.)"""
    module, model = load(arch, scheme)
    ids = torch.randint(0, 90, (1, 16), generator=torch.Generator().manual_seed(0))
    got = decode_in_cpp(model, ids, 6)
    cache = model.make_cache(static_len=16)
    with torch.no_grad():
        generation.last_logits(model, ids[:, :6], None, cache)
        buffer = FullBuffer(cache)
        written = [(torch.arange(16) <= t).long()[None] for t in range(6, 16)]  # the mask generate passes
        expected = torch.cat([generation.last_logits(model, ids[:, t:t + 1], written[t - 6], buffer)
                              for t in range(6, 16)])
    assert (got - expected).abs().max() <= 0.02 * expected.abs().max()


@needs_kernels
@pytest.mark.parametrize("arch", ["gpt2", "gpt_neo", "gpt_neox"])
@pytest.mark.parametrize("threads", [1, 3])
def test_the_step_in_cpp_on_any_number_of_threads(arch, threads, tmp_path):
    """The step's one parallel region splits every matmul's rows (int4: tiles of 4 rows) and the heads over
    the threads: on 1 thread and on 3 (shares that are not whole tiles or heads), transformers' logits in
    fp32, and the int4 model's own forward."""
    module, ref = tiny(arch, 90, 160)
    with torch.no_grad():  # (as test_the_step_in_cpp_at_heads_wider_than_64)
        for p in ref.parameters():
            p.mul_(0.5)
    save_checkpoint(ref, tmp_path)
    ids = torch.randint(0, 90, (1, 16), generator=torch.Generator().manual_seed(2))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            expected = ref(ids).logits[0, 5:]
        assert (decode_in_cpp(module.from_pretrained(tmp_path), ids, 5) - expected).abs().max() <= 1e-4
        _, model = load(arch, "int4", n_embd=256)  # (int4 on the kernels: widths a multiple of 128)
        got, cache = decode_in_cpp(model, ids, 6), model.make_cache(static_len=16)
        with torch.no_grad():
            generation.last_logits(model, ids[:, :6], None, cache)
            buffer = FullBuffer(cache)
            expected = torch.cat([generation.last_logits(model, ids[:, t:t + 1], (torch.arange(16) <= t).long()[None],
                                                         buffer) for t in range(6, 16)])
        assert (got - expected).abs().max() <= 0.02 * expected.abs().max()
    finally:
        torch.set_num_threads(before)


@needs_kernels
@pytest.mark.parametrize("arch", ["gpt2", "gpt_neo", "gpt_neox"])
@pytest.mark.parametrize("scheme", [None, "int4"])
def test_compiled_generate_runs_the_step_in_cpp_for_one_prompt(arch, scheme, monkeypatch):
    """generate(compile=True) on one unpadded prompt: every decode step in C++ (counted), the plain path's
    tokens; a padded batch: the compiled graph (the stand-in compiler here), never the C++ step."""
    module, model = load(arch, scheme)
    runs, graphs = [], []
    decode_step = cpu_kernels.decode_step

    def counted(model, buffer):
        run = decode_step(model, buffer)
        return lambda token, pos: runs.append(pos) or run(token, pos)
    monkeypatch.setattr(cpu_kernels, "decode_step", counted)
    monkeypatch.setattr(torch, "compile", recording_compile(graphs))
    torch._dynamo.reset()  # a fresh cache: graphs counts this model's only
    prompt = torch.tensor([[3, 17, 42, 8]])
    fast = module.generate(model, prompt, 9, temperature=0, compile=True)
    assert torch.equal(fast, module.generate(model, prompt, 9, temperature=0))
    assert runs == list(range(3, 12)) and not graphs  # the prompt's last token (the check), 8 steps
    batch, mask = torch.tensor([[0, 3, 17, 42], [5, 9, 11, 60]]), torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    runs.clear()
    fast = module.generate(model, batch, 5, attention_mask=mask, temperature=0, compile=True)
    assert torch.equal(fast, module.generate(model, batch, 5, attention_mask=mask, temperature=0))
    assert not runs and len(graphs) == 1


@needs_kernels
def test_a_changed_model_is_caught_on_the_prompts_last_token(monkeypatch):
    """A model whose code no longer matches the C++ step (its activation swapped in place): the check on the
    prompt's last token warns, and the compiled step runs the changed model: its plain tokens."""
    module, model = load("gpt2", None)
    for block in model.transformer.h:
        block.mlp.act = torch.relu
    monkeypatch.setattr(torch, "compile", recording_compile([]))
    torch._dynamo.reset()
    prompt = torch.tensor([[3, 17, 42, 8]])
    cache, plain = model.make_cache(static_len=13), model.make_cache(static_len=13)
    with pytest.warns(UserWarning, match="disagrees with the model's forward"):
        fast = module.generate(model, prompt, 9, temperature=0, compile=True, kv_cache=cache)
    assert torch.equal(fast, module.generate(model, prompt, 9, temperature=0))
    with torch.no_grad():
        generation.last_logits(model, prompt, None, plain)
    assert all(torch.equal(a[:, :, :4], b[:, :, :4]) for a, b in zip(cache.k + cache.v, plain.k + plain.v)), \
        "the check's keys and values of the prompt's last token were left in the cache"


@needs_kernels
def test_the_step_in_cpp_refuses_what_it_does_not_run():
    """None (the compiled step then) for a module with a hook, a LayerNorm without a bias, a layer of another
    type, another dtype, a quantized layer split by tensor parallel, a batch of two, and an activation it
    does not have."""
    module, model = load("gpt_neox", None)

    def refused(model, batch=1):
        cache = model.make_cache(static_len=8)
        with torch.no_grad():
            generation.last_logits(model, torch.zeros(batch, 2, dtype=torch.long), None, cache)
        return cpu_kernels.decode_step(model, FullBuffer(cache)) is None
    assert not refused(model) and refused(model, batch=2)
    handle = model.gpt_neox.layers[0].mlp.register_forward_hook(lambda *args: None)
    assert refused(model)
    handle.remove()
    bias = model.gpt_neox.final_layer_norm.bias
    model.gpt_neox.final_layer_norm.bias = None  # (nn.LayerNorm(bias=False))
    assert refused(model)
    model.gpt_neox.final_layer_norm.bias = bias
    model.config.hidden_act = "relu"
    assert refused(model)
    model.config.hidden_act = "gelu"
    assert refused(load("gpt_neox", None, dtype=torch.bfloat16)[1])
    assert refused(load("gpt_neox", "int8", dtype=torch.float32)[1])  # PyTorch's int8 kernels: not Step's
    quantized = load("gpt_neox", "int8")[1]
    assert not refused(quantized)
    quantized_layers(quantized)[1].reduce = lambda y: None  # a layer split by its inputs (tp.py's all-reduce)
    assert refused(quantized)

# ----------------------------------------------------------------------------- where they cannot run


def test_without_the_file_quantized_models_run_pytorchs_kernels_in_bf16(monkeypatch):
    """quantize.py copied without cpu_kernels.py (or on a machine it does not serve): as before."""
    monkeypatch.setattr(quantize, "cpu_kernels", None)
    assert not quantize.fast_kernels("cpu")
    for scheme in quantize.SCHEMES:
        _, model = load("gpt2", scheme)
        _, asked = load("gpt2", scheme, dtype=torch.bfloat16)
        assert next(model.parameters()).dtype == torch.bfloat16
        assert not any(m.kernel == quantize.INT8_ACTIVATIONS for m in quantized_layers(model))
        ids = torch.tensor([[1, 5, 9, 40]])
        with torch.no_grad():
            assert torch.equal(model(ids), asked(ids))


def test_without_the_file_fp32_models_run_nn_linear(monkeypatch, tmp_path):
    """cpu_kernels.py not copied beside the model file (or not available): plain nn.Linear, as before."""
    module, ref = tiny("gpt2", 90, 64)
    save_checkpoint(ref, tmp_path)
    monkeypatch.setitem(sys.modules, "cpu_kernels", None)  # import cpu_kernels: ModuleNotFoundError
    assert checkpoint.cpu_kernels_on("cpu") is None
    model = module.from_pretrained(tmp_path)
    assert all(type(m) is nn.Linear for m in linears(model))


def test_without_vnni_or_a_compiler_the_kernels_are_not_available(monkeypatch):
    """A CPU without the instructions, GPT_KERNELS=0, or a build that fails (a warning says why): False."""
    monkeypatch.setattr(cpu_kernels, "STATE", {})
    monkeypatch.setattr(cpu_kernels, "cpu_has_vnni", lambda: False)
    assert not cpu_kernels.available()
    monkeypatch.setattr(cpu_kernels, "STATE", {})
    monkeypatch.setattr(cpu_kernels, "cpu_has_vnni", lambda: True)
    monkeypatch.setenv("GPT_KERNELS", "0")
    assert not cpu_kernels.available()
    monkeypatch.delenv("GPT_KERNELS")

    def no_compiler(*args, **kwargs):
        raise RuntimeError("Ninja is required to load C++ extensions\nmore")
    monkeypatch.setattr(cpu_kernels, "STATE", {})
    monkeypatch.setattr(torch.utils.cpp_extension, "load_inline", no_compiler)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tempfile.mkdtemp()))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert not cpu_kernels.available()
    assert any("could not build its kernels (Ninja is required" in str(w.message) for w in caught)
