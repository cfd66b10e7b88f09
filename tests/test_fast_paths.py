"""Every fast path produces the same greedy fp32 tokens as the plain one, for every model file there is.

The plain path: generate() with the growing DynamicCache and an explicit attention mask. The fast ones:
no mask at all (SDPA's is_causal, no mask tensor), a StaticCache, decoding over the StaticCache's full
buffer (kv_cache.FullBuffer: what generate(compile=True) runs, here without compiling), and generate(compile=True) itself:
traced by dynamo into one graph for every decode step (cheap, any config), and once through inductor, the
real compiler (slow on a small CPU: one tiny config, few tokens).
"""
import importlib
import inspect
import tempfile
from pathlib import Path

import pytest
import torch
import transformers
from hypothesis import event, given
from hypothesis import strategies as st
from reference import recording_compile, save_checkpoint

import generation

transformers.logging.set_verbosity_error()
ROOT = Path(__file__).resolve().parent.parent
ARCHS = [arch for arch in ("gpt2", "gpt_neo", "gpt_neox") if (ROOT / f"{arch}.py").exists()]


@st.composite
def configs(draw, arch):
    """A tiny transformers config of `arch` and its context length."""
    n_head = draw(st.integers(1, 3))
    n_embd = n_head * draw(st.sampled_from([4, 8]))
    n_layer = draw(st.integers(1, 2))
    n_positions = draw(st.integers(12, 32))
    common = dict(vocab_size=draw(st.integers(16, 96)), initializer_range=draw(st.sampled_from([0.2, 0.4])),
                  bos_token_id=0, eos_token_id=1)
    if arch == "gpt2":
        return transformers.GPT2Config(n_positions=n_positions, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                                       **common), n_positions
    if arch == "gpt_neo":
        # Windows shorter and longer than the sequences: the full buffer refuses the first kind.
        layers = draw(st.lists(st.sampled_from(["global", "local"]), min_size=n_layer, max_size=n_layer))
        return transformers.GPTNeoConfig(max_position_embeddings=n_positions, hidden_size=n_embd,
                                         num_layers=n_layer, num_heads=n_head, attention_types=[[layers, 1]],
                                         window_size=draw(st.integers(2, 40)), **common), n_positions
    rotary_pct = draw(st.sampled_from([0.25, 0.5, 1.0]))  # of a head size 8: 2, 4 or 8 rotary dims
    return transformers.GPTNeoXConfig(max_position_embeddings=n_positions, hidden_size=n_head * 8,
                                      num_hidden_layers=n_layer, num_attention_heads=n_head,
                                      intermediate_size=16 * n_head, rotary_pct=rotary_pct,
                                      use_parallel_residual=draw(st.booleans()), tie_word_embeddings=False,
                                      **common), n_positions


def ours_from(config):
    """Our model, loaded from a checkpoint of a random transformers model with `config`."""
    _, module, ours = reference_and_ours(config)
    return module, ours


def reference_and_ours(config):
    """A random transformers model with `config`, our file's module, and ours loaded from its checkpoint."""
    torch.manual_seed(0)
    ref = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # biases and LayerNorms start at 0 and 1: make them count
        for p in ref.parameters():
            if p.dim() == 1:
                p.add_(0.2 * torch.randn_like(p))
    module = importlib.import_module(config.model_type)  # "gpt2", "gpt_neo", "gpt_neox": our file names
    with tempfile.TemporaryDirectory() as d:
        save_checkpoint(ref, d)
        return ref, module, module.from_pretrained(d)


@st.composite
def prompts(draw, vocab_size, max_len):
    """A left-padded batch: ids (B, T), attention_mask (B, T), each row with >= 1 real token."""
    B, T = draw(st.integers(1, 3)), draw(st.integers(1, max_len))
    ids = torch.tensor(draw(st.lists(st.lists(st.integers(0, vocab_size - 1), min_size=T, max_size=T),
                                     min_size=B, max_size=B)))
    pads = draw(st.lists(st.integers(0, T - 1), min_size=B, max_size=B))
    return ids, torch.tensor([[0] * p + [1] * (T - p) for p in pads])


def needs_compile_option(module):
    if "compile" not in inspect.signature(module.generate).parameters:
        pytest.skip(f"{module.__name__}.generate has no compile option yet")


def windows_cover(model, length):
    """Whether every local window (GPT-Neo) is at least `length` long: what the full buffer needs."""
    windows = [w for w in model.make_cache().windows if w is not None]
    return all(w >= length for w in windows)


def no_compiling(fn, **kwargs):
    return fn


# ----------------------------------------------------------------------------- eager fast paths


@pytest.mark.parametrize("arch", ARCHS)
@given(data=st.data())
def test_fast_eager_paths_give_the_plain_tokens(arch, data):
    config, n_positions = data.draw(configs(arch))
    module, ours = ours_from(config)
    ids, mask = data.draw(prompts(config.vocab_size, n_positions // 2))
    n = data.draw(st.integers(1, n_positions - ids.size(1)))
    eos = data.draw(st.sampled_from([None, 1]))

    def run(**kwargs):
        return module.generate(ours, ids, n, attention_mask=mask, temperature=0, eos_token_id=eos, **kwargs)

    plain = run()
    static = run(kv_cache=ours.make_cache(static_len=n_positions))
    assert static.tolist() == plain.tolist(), "StaticCache"
    ones = torch.ones_like(mask)
    assert (module.generate(ours, ids, n, temperature=0, eos_token_id=eos).tolist() ==
            module.generate(ours, ids, n, attention_mask=ones, temperature=0, eos_token_id=eos).tolist()), \
        "no mask (SDPA is_causal, no mask tensor) vs an all-ones mask"
    if "compile" in inspect.signature(module.generate).parameters:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(torch, "compile", no_compiling)  # the full-buffer decode, run eagerly
            if windows_cover(ours, ids.size(1) + n):
                event("full buffer")
                assert run(compile=True).tolist() == plain.tolist(), "full buffer"
            else:
                event("full buffer refused: a window shorter than the sequence")
                with pytest.raises(ValueError, match="window_size"):
                    run(compile=True)


def test_full_buffer_cache_errors():
    from kv_cache import DynamicCache, FullBuffer, StaticCache
    cache = StaticCache(2, 8, window_sizes=[None, 4])
    with pytest.raises(ValueError, match="prompt"):
        FullBuffer(cache)
    with pytest.raises(ValueError, match="StaticCache"):
        FullBuffer(DynamicCache(2))
    k = torch.zeros(1, 2, 3, 4)
    for layer in range(2):
        cache.update(layer, k, k)
    cache.advance(3)
    with pytest.raises(ValueError, match=r"max_len \(8\) <= every window_size \(4\)"):
        FullBuffer(cache)
    cache = StaticCache(1, 8)
    cache.update(0, k, k)
    cache.advance(3)
    buffer = FullBuffer(cache)
    assert cache.seen == 3, "the StaticCache keeps its meaning"
    assert buffer.seen == 7 and buffer.pos.tolist() == [3]
    K, V = buffer.update(0, k[:, :, :1] + 1, k[:, :, :1] + 1)
    assert K.shape == (1, 2, 8, 4) and K[:, :, 3].eq(1).all() and K[:, :, 4:].eq(0).all()
    assert K is cache.k[0], "the same buffers, written in place"
    buffer.advance(1)
    assert buffer.pos.tolist() == [4] and buffer.seen == 7
    with pytest.raises(ValueError, match="one token"):
        buffer.update(0, k, k)


def test_compile_needs_a_static_cache():
    _, ours = ours_from(transformers.GPT2Config(n_positions=16, n_embd=8, n_layer=1, n_head=2, vocab_size=16))
    import gpt2
    with pytest.raises(ValueError, match="StaticCache"):
        gpt2.generate(ours, torch.tensor([[1, 2]]), 3, compile=True, kv_cache=ours.make_cache())


# ----------------------------------------------------------------------------- compiled


@pytest.mark.parametrize("arch", ARCHS)
@given(data=st.data())
def test_compiled_decode_is_one_graph_with_the_plain_tokens(arch, data):
    """torch.compile with a backend that records the graphs dynamo captures and runs them as they are:
    fullgraph=True (no graph break), and one graph serves every decode step (static shapes)."""
    config, n_positions = data.draw(configs(arch))
    module, ours = ours_from(config)
    needs_compile_option(module)
    ids, mask = data.draw(prompts(config.vocab_size, n_positions // 2))
    n = data.draw(st.integers(3, n_positions - ids.size(1)))
    if not windows_cover(ours, ids.size(1) + n):
        return  # refused with a clear error: test_fast_eager_paths_give_the_plain_tokens
    graphs = []
    torch._dynamo.reset()  # a fresh cache, so that graphs counts this model's only
    plain = module.generate(ours, ids, n, attention_mask=mask, temperature=0)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch, "compile", recording_compile(graphs))
        # (a batch of one runs the step in C++ where cpu_kernels.py can: test_cpu_kernels.py tests that)
        patch.setattr(generation, "step_in_cpp", lambda *args: args[-1])  # (its last: the compiled step)
        compiled = module.generate(ours, ids, n, attention_mask=mask, temperature=0, compile=True)
    assert compiled.tolist() == plain.tolist()
    assert len(graphs) == 1, f"{len(graphs)} graphs for {n - 1} decode steps: the shapes are not static"


def test_inductor_compiled_gpt2_gives_the_plain_tokens():
    """The real compiler (inductor, C++ on CPU): one tiny model, a padded batch, a few tokens."""
    import gpt2
    _, ours = ours_from(transformers.GPT2Config(n_positions=32, n_embd=16, n_layer=1, n_head=2,
                                                vocab_size=64, initializer_range=0.4))
    ids = torch.tensor([[5, 9, 13, 2, 7, 30], [0, 0, 11, 4, 60, 8]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]])
    plain = gpt2.generate(ours, ids, 8, attention_mask=mask, temperature=0)
    torch._dynamo.reset()
    compiled = gpt2.generate(ours, ids, 8, attention_mask=mask, temperature=0, compile=True)
    assert compiled.tolist() == plain.tolist()


def test_cli_compile_prints_the_eager_text(tmp_path):
    """`python gpt2.py --compile` (a fresh process: inductor compiles again) prints what eager prints."""
    import shutil
    import subprocess
    import sys

    from conftest import shared_tokenizer_dir
    tokenizer = shared_tokenizer_dir("gpt2", "openai-community/gpt2", ["vocab.json", "merges.txt"])
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_positions=32, n_embd=16, n_layer=1, n_head=2, initializer_range=0.5)
    save_checkpoint(transformers.GPT2LMHeadModel(config).eval(), tmp_path)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(tokenizer / name, tmp_path / name)
    args = [sys.executable, str(ROOT / "gpt2.py"), "--model", str(tmp_path), "--prompt", "Hello world",
            "--max-new-tokens", "6", "--temperature", "0"]
    eager = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=120)
    compiled = subprocess.run([*args, "--compile"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert eager.returncode == 0 and compiled.returncode == 0, compiled.stderr[-2000:]
    assert compiled.stdout == eager.stdout and eager.stdout.startswith("Hello world")
