"""Seeing inside: the attention probabilities and hidden states the three model files return equal
transformers' output_attentions / output_hidden_states, the logit lens equals transformers' ln_f + LM head
applied to them, and visualize.py draws them (where matplotlib is installed) or says what is missing."""
import shutil
import subprocess
import sys

import pytest
import torch
import transformers
from conftest import ROOT
from hypothesis import given
from hypothesis import strategies as st
from reference import assert_close, batches, reference_positions, save_checkpoint

import gpt2
import gpt_neo
import gpt_neox
import test_gpt2
import test_gpt_neo
import test_gpt_neox
import visualize

transformers.logging.set_verbosity_error()

PYDOC = ROOT / "models" / "pydoc-gpt2"
# architecture -> (model file, its test module (configs, ours_and_reference), the context's config key)
ARCHS = {"gpt2": (gpt2, test_gpt2, "n_positions"),
         "gpt_neo": (gpt_neo, test_gpt_neo, "max_position_embeddings"),
         "gpt_neox": (gpt_neox, test_gpt_neox, "max_position_embeddings")}


def parts(model):
    """(backbone, final LayerNorm, LM head) of one of our models or of a transformers one."""
    backbone = model.gpt_neox if hasattr(model, "gpt_neox") else model.transformer
    ln_f = backbone.final_layer_norm if hasattr(backbone, "final_layer_norm") else backbone.ln_f
    head = model.embed_out if hasattr(model, "embed_out") else model.lm_head
    return backbone, ln_f, head


def has_matplotlib():
    try:
        import matplotlib  # noqa: F401
        return True
    except ImportError:
        return False


needs_matplotlib = pytest.mark.skipif(not has_matplotlib(), reason="matplotlib is not installed (optional)")

# ----------------------------------------------------------------------------- the tensors


@pytest.mark.parametrize("arch", ARCHS)
@given(data=st.data())
def test_attentions_hidden_states_and_lens_equal_transformers(arch, data):
    _, tests, context = ARCHS[arch]
    config = data.draw(tests.configs()) | {"attn_implementation": "eager"}  # transformers' probabilities
    ours, ref = tests.ours_and_reference(config, attn="naive")
    ids, mask = data.draw(batches(config["vocab_size"], config[context]))
    with torch.no_grad():
        expected = ref(ids, attention_mask=mask, position_ids=reference_positions(mask),
                       output_attentions=True, output_hidden_states=True)
        backbone, ln_f, head = parts(ours)
        last, hidden_states, attentions = backbone(ids, mask, output_attentions=True,
                                                   output_hidden_states=True)
        _, ref_ln_f, ref_head = parts(ref)
        *inner, ref_last = expected.hidden_states  # transformers' last one has been through ln_f already
        ref_lens = torch.stack([ref_head(ref_ln_f(h)) for h in inner] + [ref_head(ref_last)])
        lens = visualize.logit_lens(hidden_states, ln_f, head)
    real = mask.bool()  # padding positions hold nothing anyone reads
    assert len(hidden_states) == len(expected.hidden_states) == len(attentions) + 1
    assert len(attentions) == len(expected.attentions)
    for ours_h, ref_h in zip(hidden_states, expected.hidden_states):
        assert_close(ours_h, ref_h, f"{arch} hidden states (padded batches)", mask=real)
    assert torch.equal(last, hidden_states[-1])
    for ours_p, ref_p in zip(attentions, expected.attentions):
        rows = real[:, None, :, None].expand_as(ref_p)  # the real queries' rows, every key
        assert_close(ours_p, ref_p, f"{arch} attention probabilities (padded batches)", mask=rows)
    real_lens = real[None].expand(lens.shape[:3])
    assert_close(lens, ref_lens, f"{arch} logit lens (padded batches)", mask=real_lens)
    assert_close(lens[-1], expected.logits, f"{arch} logit lens, last layer = logits", mask=real)
    ours.set_attention_backend("sdpa")  # the fused kernel never forms the probabilities: a clear error
    with pytest.raises(ValueError, match="naive"):
        backbone(ids, mask, output_attentions=True)
    _, sdpa_hidden_states, none = backbone(ids, mask, output_hidden_states=True)  # these, on any backend
    assert none is None
    assert_close(sdpa_hidden_states[-1], hidden_states[-1], f"{arch} hidden states, sdpa = naive", mask=real)


# ----------------------------------------------------------------------------- the pictures


def pixels(width, height):
    return round(width * visualize.DPI), round(height * visualize.DPI)


def attention_size(n_layer, n_head, T):
    """The attention picture's pixels: a square panel per (layer, head), margins for the labels."""
    side = max(visualize.MIN_PANEL, visualize.PANEL * T)  # inches per panel
    return pixels(visualize.MARGIN[0] + n_head * side, visualize.MARGIN[1] + n_layer * side + visualize.TOP)


def lens_size(n_rows, T):
    """The logit lens picture's pixels: a cell per (row, position), margins for the labels."""
    return pixels(visualize.MARGIN[0] + T * visualize.CELL[0],
                  visualize.MARGIN[1] + n_rows * visualize.CELL[1] + visualize.TOP)


def png_size(path):
    """(width, height) in pixels, read from the PNG header (the IHDR chunk)."""
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")


@needs_matplotlib
@pytest.mark.parametrize("n_layer, n_head, T", [(2, 3, 5), (3, 2, 5), (1, 1, 1), (2, 2, 30)])
def test_attention_picture_is_a_grid_of_layers_by_heads(tmp_path, n_layer, n_head, T):
    attentions = [torch.rand(n_head, T, T).softmax(-1) for _ in range(n_layer)]
    path = visualize.draw_attention(attentions, [f"t{i}" for i in range(T)], tmp_path / "a.png")
    assert png_size(path) == attention_size(n_layer, n_head, T)


@needs_matplotlib
def test_lens_picture_is_a_table_of_layers_by_positions(tmp_path):
    from bpe import Tokenizer
    tokenizer = Tokenizer.from_pretrained(PYDOC)
    ids = tokenizer.encode("The with statement")
    lens = torch.randn(5, len(ids), tokenizer.vocab_size)  # 4 layers + the embeddings
    path = visualize.draw_lens(lens, ids, tokenizer, tmp_path / "lens.png")
    assert png_size(path) == lens_size(5, len(ids))


def test_token_labels_show_spaces_newlines_and_split_characters():
    from bpe import Tokenizer
    tokenizer = Tokenizer.from_pretrained(PYDOC)
    assert visualize.token_labels(tokenizer, tokenizer.encode(" with\n")) == ["␣with", "\\n"]
    byte = tokenizer.encode("é")  # a character this small vocabulary keeps as two byte tokens
    assert len(byte) == 2 and visualize.token_labels(tokenizer, byte) == ["\\xc3", "\\xa9"]


def test_too_many_tokens_or_maps_are_refused_with_the_limit():
    too_long = visualize.MAX_TOKENS + 1
    with pytest.raises(ValueError, match=f"{too_long} tokens.*up to {visualize.MAX_TOKENS}"):
        visualize.draw_attention([torch.zeros(1, too_long, too_long)], ["x"] * too_long, "a.png")
    with pytest.raises(ValueError, match=f"up to {visualize.MAX_PANELS}"):
        visualize.draw_attention([torch.zeros(21, 2, 2)] * 20, ["x"] * 2, "a.png")
    with pytest.raises(ValueError, match=r"\(nh, T, T\)"):
        visualize.draw_attention([torch.zeros(2, 3, 3)], ["x"] * 2, "a.png")

# ----------------------------------------------------------------------------- the command line


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """arch -> a checkpoint with the pydoc tokenizer (vocab 2048): pydoc-gpt2 as shipped, tiny random
    GPT-Neo (local layers) and GPT-NeoX models beside a copy of its tokenizer files."""
    found = {"gpt2": PYDOC}
    tiny = {"gpt_neo": transformers.GPTNeoForCausalLM(transformers.GPTNeoConfig(
                vocab_size=2048, max_position_embeddings=64, hidden_size=16, num_layers=2, num_heads=2,
                attention_types=[[["global", "local"], 1]], window_size=4)),
            "gpt_neox": transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(
                vocab_size=2048, max_position_embeddings=64, hidden_size=16, num_hidden_layers=2,
                num_attention_heads=2, intermediate_size=32))}
    for arch, model in tiny.items():
        directory = tmp_path_factory.mktemp(arch)
        save_checkpoint(model.eval(), directory)
        for name in ("vocab.json", "merges.txt"):
            shutil.copy(PYDOC / name, directory / name)
        found[arch] = directory
    return found


@needs_matplotlib
@pytest.mark.parametrize("arch", ARCHS)
def test_cli_draws_both_pictures_instead_of_sampling(arch, checkpoints, tmp_path, capsys):
    file = ARCHS[arch][0]
    prompt = "The with statement"
    file.main(["--model", str(checkpoints[arch]), "--prompt", prompt, "--show", str(tmp_path / "a.png"),
               "--show-lens", str(tmp_path / "lens.png")])
    config = transformers.AutoConfig.from_pretrained(checkpoints[arch])
    from bpe import Tokenizer
    T = len(Tokenizer.from_pretrained(checkpoints[arch]).encode(prompt))
    n_layer, n_head = config.num_hidden_layers, config.num_attention_heads
    assert png_size(tmp_path / "a.png") == attention_size(n_layer, n_head, T)
    assert png_size(tmp_path / "lens.png") == lens_size(n_layer + 1, T)
    out = capsys.readouterr()
    assert prompt not in out.out and "tokens/s" not in out.err  # pictures, no sample
    assert "a.png" in out.err and "lens.png" in out.err  # it says what it wrote


@pytest.mark.parametrize("args, message", [
    (["--prompt", "word " * (visualize.MAX_TOKENS + 1), "--show", "a.png"], f"up to {visualize.MAX_TOKENS}"),
    (["--show", "a.jpg"], "--show a.jpg: the picture is a PNG"),
    (["--show-lens", "no/such/dir/lens.png"], "no such directory"),
    (["--show", "a.png", "--show-lens", "./a.png"], "--show a.png and --show-lens ./a.png are the same file"),
])
def test_cli_bad_input_is_one_error_line(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit:
        gpt2.main(["--model", str(PYDOC), *args])
    assert str(exit.value.code).startswith("error: ") and message in str(exit.value.code)
    assert "\n" not in str(exit.value.code) and not list(tmp_path.iterdir())


def test_without_matplotlib_one_line_says_what_to_install(tmp_path):
    """A subprocess in which `import matplotlib` fails, as where it is not installed."""
    code = ("import sys; sys.modules['matplotlib'] = None; sys.argv[0] = 'gpt2.py'; import gpt2; "
            f"gpt2.main(['--model', {str(PYDOC)!r}, '--show', 'a.png'])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                            env={"PYTHONPATH": str(ROOT), "PATH": ""}, timeout=120)
    assert result.returncode != 0
    assert result.stderr == ("error: drawing needs matplotlib, which is not installed: "
                             "pip install matplotlib\n")
    assert not (tmp_path / "a.png").exists()


@pytest.mark.parametrize("arch", ARCHS)
def test_a_cached_step_sees_the_last_row_of_the_full_picture(arch):
    """Decoding one token with a KV cache: its attention row is the full forward's last row, over the keys
    the cache kept (a GPT-Neo local layer keeps only its window of past keys)."""
    file, tests, _ = ARCHS[arch]
    config = {"gpt2": dict(n_positions=32, n_embd=16, n_layer=2, n_head=2),
              "gpt_neo": test_gpt_neo.small(window_size=4),
              "gpt_neox": test_gpt_neox.TINY}[arch] | {"vocab_size": 64, "attn_implementation": "eager"}
    ours, _ = tests.ours_and_reference(config, attn="naive")
    backbone, _, _ = parts(ours)
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, _, full = backbone(ids, output_attentions=True)
        cache = ours.make_cache()
        backbone(ids[:, :-1], kv_cache=cache)
        _, hidden_states, step = backbone(ids[:, -1:], kv_cache=cache, output_attentions=True)
    assert hidden_states is None
    for layer, (row, probs) in enumerate(zip(step, full)):
        kept = row.size(-1)  # 12, or a local layer's window of past keys and the new one
        assert kept == (4 + 1 if arch == "gpt_neo" and layer % 2 else 12)
        assert_close(row, probs[:, :, -1:, -kept:], f"{arch} attention of a cached step")
