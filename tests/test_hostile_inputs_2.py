"""Bad and unlucky input, continued (issue 28): quantization_config and quantized tensors from a file, huge or
mistyped tokenizer.json files, and pictures written over each other or over a full disk. Each is refused with
a specific exception naming the file or key, or handled; never a traceback from inside, a hang or a silent
wrong answer."""
import json
import re
import tempfile

import pytest
import torch
import torch.nn as nn
import transformers
from hypothesis import given
from hypothesis import strategies as st
from reference import assert_close, save_checkpoint
from safetensors.torch import load_file, save_file

import gpt2
import gpt_neox
import quantize

transformers.logging.set_verbosity_error()

# ----------------------------------------------------------------------------- quantized checkpoints


def tiny_neox(vocab_size=83):
    torch.manual_seed(0)
    config = transformers.GPTNeoXConfig(vocab_size=vocab_size, max_position_embeddings=32, hidden_size=64,
                                        num_hidden_layers=2, num_attention_heads=2, intermediate_size=256,
                                        initializer_range=0.3, bos_token_id=0, eos_token_id=1,
                                        tie_word_embeddings=False)
    return transformers.GPTNeoXForCausalLM(config).eval()


@pytest.fixture(scope="module")
def saved_int4(tmp_path_factory):
    """A GPT-NeoX saved quantized (int4) by save_pretrained: (directory, config.json, tensors)."""
    d = tmp_path_factory.mktemp("int4")
    save_checkpoint(tiny_neox(), d / "fp32")
    gpt_neox.save_pretrained(gpt_neox.from_pretrained(d / "fp32", quantize="int4"), d / "saved")
    config = json.loads((d / "saved" / "config.json").read_text())
    return d / "saved", config, load_file(d / "saved" / "model.safetensors")


def write_damaged(saved, directory, quantization=None, tensors=None):
    """saved_int4 rewritten into `directory`, its quantization_config and tensors replaced where given."""
    source, config, original = saved
    directory.mkdir(exist_ok=True)
    if quantization is not None:
        config = dict(config, quantization_config=quantization)
    (directory / "config.json").write_text(json.dumps(config))
    save_file(original if tensors is None else tensors, directory / "model.safetensors")
    return directory


def group_0(saved, **changes):
    """saved_int4's quantization_config with group_0's fields (weights' under "weights.") changed."""
    quantization = json.loads(json.dumps(saved[1]["quantization_config"]))
    group = quantization["config_groups"]["group_0"]
    for key, value in changes.items():
        if key.startswith("weights."):
            group["weights"][key[len("weights."):]] = value
        else:
            group[key] = value
    return quantization


@pytest.mark.parametrize("change, message", [
    ("string", "quantization_config must be an object, not str"),
    ("groups_list", "config_groups must be a non-empty object"),
    ("group_list", "config_groups.group_0: must be an object"),
    ("weights_list", "config_groups.group_0: must be an object with a \"weights\" object"),
    ("group_size_float", "config_groups.group_0: only int8"),
    ("num_bits_float", "config_groups.group_0: only int8"),
    ("num_bits_bool", "config_groups.group_0: only int8"),
    ("bad_regex", "target 're:(unclosed' is not a valid pattern"),
])
def test_a_mistyped_quantization_config_is_named(change, message, saved_int4, tmp_path):
    """Each gave an AttributeError or re.error from inside, or (group_size 32.0) loaded and failed at the
    first forward."""
    quantization = {
        "string": "compressed-tensors",
        "groups_list": dict(saved_int4[1]["quantization_config"], config_groups=[{"targets": []}]),
        "group_list": group_0(saved_int4) | {"config_groups": {"group_0": ["targets"]}},
        "weights_list": group_0(saved_int4, weights=[4, "group"]),
        "group_size_float": group_0(saved_int4, **{"weights.group_size": 32.0}),
        "num_bits_float": group_0(saved_int4, **{"weights.num_bits": 4.0}),
        "num_bits_bool": group_0(saved_int4, **{"weights.num_bits": True}),
        "bad_regex": group_0(saved_int4, targets=["re:(unclosed"]),
    }[change]
    directory = write_damaged(saved_int4, tmp_path / "damaged", quantization)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        gpt_neox.from_pretrained(directory)


@pytest.mark.parametrize("pattern", ["re:(.|.|.)*X", "re:(.|.)*X", "re:(a*)*X", "re:" + "(.|.)" * 30 + "X",
                                     "re:.*.*.*.*.*.*.*X", "re:" + "a" * 1000])
def test_a_catastrophic_pattern_is_refused_not_run(pattern, saved_int4, tmp_path):
    """Python's backtracking matcher hangs on these (exponential, or a high power of the name's length): each
    is refused by its structure, before any name is matched (this test would not finish otherwise)."""
    quantization = group_0(saved_int4)
    quantization["config_groups"]["group_0"]["targets"].append(pattern)
    directory = write_damaged(saved_int4, tmp_path / "hostile", quantization)
    with pytest.raises(ValueError, match="too complex a pattern to match safely"):
        gpt_neox.from_pretrained(directory)


def test_a_bounded_pattern_still_matches(saved_int4, tmp_path):
    """compressed-tensors' ordinary target forms keep working: a pattern for every int4 layer, instead of
    their names, loads the same model."""
    quantization = group_0(saved_int4, targets=[r"re:.*(attention|mlp)\.\w+$", "re:^(embed_out|lm_head)$"])
    directory = write_damaged(saved_int4, tmp_path / "patterns", quantization)
    ids = torch.randint(0, 83, (2, 7))
    with torch.no_grad():
        expected = gpt_neox.from_pretrained(saved_int4[0])(ids)
        assert torch.equal(gpt_neox.from_pretrained(directory)(ids), expected)


@pytest.mark.parametrize("damage", ["negative", "zero", "nan", "inf"])
def test_broken_scales_are_refused_by_name(damage, saved_int4, tmp_path):
    """Negative or all-zero scales loaded and sampled without a word; NaN and inf are refused as weights
    are."""
    tensors = dict(saved_int4[2])
    key = "gpt_neox.layers.1.mlp.dense_h_to_4h.weight_scale"
    scale = tensors[key].clone()
    if damage == "negative":
        scale[3, 1] = -scale[3, 1]
    elif damage == "zero":
        scale.zero_()
    else:
        scale[0, 0] = float(damage)
    tensors[key] = scale
    directory = write_damaged(saved_int4, tmp_path / "scales", tensors=tensors)
    with pytest.raises(ValueError, match=key):
        gpt_neox.from_pretrained(directory)


@pytest.mark.parametrize("size", ["5TB", "5GB", "500kb", 10**13])
def test_max_shard_size_is_read_as_huggingface_hub_reads_it(size, tmp_path):
    """"5TB" raised KeyError 'TB' for a quantized model, though the plain save takes it."""
    save_checkpoint(tiny_neox(), tmp_path / "fp32")
    model = gpt_neox.from_pretrained(tmp_path / "fp32", quantize="int8")
    gpt_neox.save_pretrained(model, tmp_path / "saved", max_shard_size=size)
    assert (tmp_path / "saved" / "model.safetensors").exists()  # all of it fits in one file
    with pytest.raises(ValueError, match="Unit 'XB' not supported"):
        gpt_neox.save_pretrained(model, tmp_path / "other", max_shard_size="5XB")


@pytest.mark.parametrize("scheme", quantize.SCHEMES)
def test_transformers_refuses_a_quantized_gpt2_it_would_load_wrong(scheme, tmp_path):
    """GPT-2's layers are Conv1D in transformers, which compressed-tensors does not quantize: it loaded our
    saved GPT-2 with those layers left as initialised, without a word. Its quantization_config now holds a
    field compressed-tensors refuses, so transformers stops; we still read it back bit for bit. (GPT-Neo and
    GPT-NeoX load in transformers to our logits: tests/test_quantize.py.)"""
    pytest.importorskip("compressed_tensors")
    torch.manual_seed(0)
    ref = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=83, n_positions=32, n_embd=64, n_layer=2, n_head=2, initializer_range=0.3)).eval()
    save_checkpoint(ref, tmp_path / "fp32")
    model = gpt2.from_pretrained(tmp_path / "fp32", quantize=scheme, dtype=torch.float32)
    gpt2.save_pretrained(model, tmp_path / "saved")
    with pytest.raises(Exception, match="conv1d_layers_saved_as_linear"):
        transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "saved", dtype=torch.float32)
    ids = torch.randint(0, 83, (2, 7))
    with torch.no_grad():
        assert torch.equal(gpt2.from_pretrained(tmp_path / "saved", dtype=torch.float32)(ids), model(ids))


@pytest.mark.parametrize("scheme", quantize.SCHEMES)
def test_a_quantized_gpt2_sequence_classifier_loads(scheme):
    """heads.from_pretrained(task=..., quantize=) on GPT-2 (issue 28 saw a TypeError from dequantize_int8):
    its logits equal those of the same model with dequantized weights, and int8's are near the fp32 ones."""
    import heads
    from test_quantize import dequantized
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=70, n_positions=32, n_embd=64, n_layer=2, n_head=2,
                                     num_labels=2, pad_token_id=0)
    ref = transformers.GPT2ForSequenceClassification(config).eval()
    with tempfile.TemporaryDirectory() as d:
        save_checkpoint(ref, d)
        quantized = heads.from_pretrained(d, task="sequence-classification", num_labels=2, quantize=scheme,
                                          dtype=torch.float32)
        fp32 = heads.from_pretrained(d, task="sequence-classification", num_labels=2)
        plain = heads.from_pretrained(d, task="sequence-classification", num_labels=2)
    assert not any(isinstance(m, nn.Linear) for m in quantized.modules())
    for linear in [m for m in plain.modules() if isinstance(m, nn.Linear)]:
        with torch.no_grad():
            linear.weight.copy_(dequantized(linear.weight, scheme, torch.float32))
    ids = torch.randint(1, 70, (2, 9))
    with torch.no_grad():
        ours = quantized(ids).logits
        assert_close(ours, plain(ids).logits, f"gpt2 heads {scheme} vs dequantized", tol=1e-3)
        if scheme == "int8":  # int4's error at this initializer_range is larger than a fixed bound says
            assert (ours - fp32(ids).logits).abs().max() < 0.05 * fp32(ids).logits.abs().max()

# ----------------------------------------------------------------------------- tokenizer.json


def bytes_tokenizer_json(path, added_tokens):
    """A tokenizer.json of the 256 byte tokens, no merges, and `added_tokens`."""
    import bpe
    vocab = {bpe.BYTE_TO_CHAR[b]: b for b in range(256)}
    path.write_text(json.dumps({"model": {"type": "BPE", "vocab": vocab, "merges": []},
                                "pre_tokenizer": {"type": "ByteLevel"}, "added_tokens": added_tokens}))
    return path


@pytest.mark.parametrize("flag", ["lstrip", "rstrip", "normalized", "single_word", "special"])
@pytest.mark.parametrize("value", ["no", 0, 1, None])
def test_added_token_flags_that_are_not_booleans_are_named(flag, value, tmp_path):
    """"lstrip": "no" was read as True."""
    import bpe
    entry = {"id": 256, "content": "<x>", "special": True, flag: value}
    path = bytes_tokenizer_json(tmp_path / "tokenizer.json", [entry])
    with pytest.raises(ValueError, match=f"{path}: added token '<x>': {flag} must be true or false, got"):
        bpe.Tokenizer.from_tokenizer_json(path)


def test_a_hundred_thousand_added_tokens_load_in_linear_work(tmp_path):
    """A max over every id for each added token made loading quadratic: 100,000 took more than 300 s (5e9
    steps; this test would not finish). Now one pass; the ids are HF's (after the vocab, in order, a token
    already in the vocab keeps its id) and encoding finds them. bench/added_tokens.py times it."""
    import bpe
    n = 100_000
    entries = [{"id": 0, "content": f"<extra_{i}>", "special": False, "normalized": False} for i in range(n)]
    entries.insert(5, {"id": 0, "content": "a", "special": False, "normalized": False})  # the vocab's own id
    path = bytes_tokenizer_json(tmp_path / "tokenizer.json", entries)
    tok = bpe.Tokenizer.from_tokenizer_json(path)
    assert tok.vocab_size == 256 + n
    assert [(t.content, t.id) for t in tok.added_tokens[4:7]] == [
        ("<extra_4>", 260), ("a", 97), ("<extra_5>", 261)]
    assert tok.encode("x<extra_99999>y<extra_7>") == [ord("x"), 256 + 99_999, ord("y"), 256 + 7]

@given(contents=st.lists(st.text("ab< >", min_size=1, max_size=6), min_size=1, max_size=12),
       text=st.text("ab< >x", max_size=40))
def test_the_added_tokens_trie_matches_as_the_longest_first_alternation(contents, text):
    """The trie that makes matching 100,000 added tokens fast finds what the plain alternation, longest first,
    finds (leftmost, then longest); tokens prefixes of each other too deep for a trie fall back to it."""
    import bpe
    plain = re.compile("|".join(map(re.escape, sorted(set(contents), key=len, reverse=True))))
    trie = bpe._longest_first_pattern(contents)
    assert [m.span() for m in trie.finditer(text)] == [m.span() for m in plain.finditer(text)]


def test_added_tokens_nested_too_deep_for_a_trie_still_match():
    import bpe
    pattern = bpe._longest_first_pattern(["a" * i for i in range(1, 2000)])
    assert [m.group() for m in pattern.finditer("b" + "a" * 2500)] == ["a" * 1999, "a" * 501]


# ----------------------------------------------------------------------------- pictures


@pytest.mark.parametrize("lens", ["a.png", "./a.png", "sub/../a.png"])
def test_two_pictures_on_one_path_are_refused(lens, tmp_path, monkeypatch):
    """--show a.png --show-lens a.png printed "wrote a.png a.png" and the file held only the lens."""
    pytest.importorskip("matplotlib")
    import visualize
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    with pytest.raises(ValueError, match="are the same file"):
        visualize.check_outputs("a.png", lens)
    visualize.check_outputs("a.png", "b.png")  # two files: fine


@pytest.mark.parametrize("draw", ["attention", "lens"])
def test_a_picture_failing_midway_leaves_the_old_one_whole(draw, tmp_path, monkeypatch):
    """--show existing.png on a full disk truncated the existing picture: now it is written beside and renamed
    over it, and a failure midway (here savefig raising after writing some bytes) leaves the old file and no
    temporary one."""
    pytest.importorskip("matplotlib")
    import matplotlib.figure

    import visualize
    path = tmp_path / "existing.png"
    path.write_bytes(b"the old picture")

    def full_disk(self, f, **kwargs):
        f.write(b"\x89PNG half a picture")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", full_disk)

    class Bytes:
        def decode_bytes(self, ids):
            return bytes(ids)
    with pytest.raises(OSError, match="No space left"):
        if draw == "attention":
            visualize.draw_attention([torch.rand(2, 3, 3).softmax(-1)], ["a", "b", "c"], path)
        else:
            visualize.draw_lens(torch.randn(2, 3, 100), [97, 98, 99], Bytes(), path)
    assert path.read_bytes() == b"the old picture"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing.png"]
    monkeypatch.undo()  # and without the failure the picture replaces it whole
    visualize.draw_attention([torch.rand(2, 3, 3).softmax(-1)], ["a", "b", "c"], path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_mode & 0o044  # others may read it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing.png"]
