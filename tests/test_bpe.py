"""bpe.py against the reference tokenizers: tiktoken for GPT-2, HF tokenizers for GPT-NeoX, id for id.

The real tokenizer files come from ../shared/tokenizers (else the Hub cache, else the test is skipped).
The references are built offline from the same files. Which of our calls matches which reference call:
  tiktoken   enc.encode_ordinary(s)                    == tok.encode_ordinary(s)
             enc.encode(s, allowed_special="all")      == tok.encode(s, allowed_special="all")
  tokenizers hf.encode(s, add_special_tokens=False)    == tok.encode(s, allowed_special="all")
             (HF always matches added tokens, special ones included; add_special_tokens=False only turns
             off the post-processor's BOS/EOS, which NeoX's ByteLevel post-processor does not add anyway)
             same, with hf.encode_special_tokens = True   == tok.encode_ordinary(s)
             hf.decode(ids, skip_special_tokens=False) == tok.decode(ids)
"""
import json
import random
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bpe
import bpe_fast
from bpe import StreamDecoder
from bpe_fast import Tokenizer, train  # bpe.py's, with bpe_fast.py's speed-ups (fast=False: without)
from conftest import shared_tokenizer_dir

GPT2_REPO, NEOX_REPO = "openai-community/gpt2", "EleutherAI/gpt-neox-20b"

# Text that hits the corners of the split pattern and the added tokens: runs of spaces (NeoX has tokens
# for 2-24 spaces), tabs/newlines, contractions, digits, combining marks (NFC changes them), emoji, CJK,
# control characters, unicode spaces, and the special tokens' strings. Mixed with arbitrary characters.
PIECES = [" ", "  ", "   ", " " * 7, " " * 30, "\t", "\n", "\n\n", "\r\n", " \n ", "'s", "'ll", "'re", "'ve",
          "'d", "'m", "'t", "'", "'S", "Hello", " world", "a", "Z", "e\u0301", "\u0301", "é", "Å", "1",
          "2024", "½", "²", "٣", "_", "__init__", "def", "(", ")", "!?", "...", "🤗", "👍🏽", "中文", "日本語",
          "한국어", "\u00a0", "\u3000", "\u2009", "\x1c", "\x85", "\x00", "\x7f", "\ufeff", "<|endoftext|>",
          "<|padding|>", "<|endoftext", "|>"]
tricky_text = st.lists(st.one_of(st.sampled_from(PIECES), st.characters(exclude_categories=["Cs"])),
                       max_size=40).map("".join)
any_text = st.one_of(st.text(), tricky_text)


# --- fixtures: ours and the references, built once per module ------------------------------------------
@pytest.fixture(scope="module")
def gpt2_dir():
    return shared_tokenizer_dir("gpt2", GPT2_REPO, ["vocab.json", "merges.txt"])


@pytest.fixture(scope="module")
def gpt2(gpt2_dir):
    return Tokenizer.from_pretrained(gpt2_dir)


@pytest.fixture(scope="module")
def tiktoken_gpt2(gpt2_dir):
    """tiktoken's GPT-2 ("r50k") from the local files, as tiktoken_ext.openai_public.gpt2() builds it."""
    pytest.importorskip("tiktoken")
    import tiktoken.load
    from tiktoken_ext.openai_public import r50k_pat_str

    openai = (gpt2_dir / "vocab.bpe").exists()
    names = ("vocab.bpe", "encoder.json") if openai else ("merges.txt", "vocab.json")   # same content
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TIKTOKEN_CACHE_DIR", "")               # read the local files, cache nothing in /tmp
        ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(*(str(gpt2_dir / n) for n in names))
    return tiktoken.Encoding("gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 50256})


@pytest.fixture(scope="module")
def neox_json():
    return shared_tokenizer_dir("gpt-neox-20b", NEOX_REPO, ["tokenizer.json"]) / "tokenizer.json"


@pytest.fixture(scope="module")
def neox(neox_json):
    return Tokenizer.from_pretrained(neox_json.parent)


@pytest.fixture(scope="module")
def hf_neox(neox_json):
    tokenizers = pytest.importorskip("tokenizers")
    return tokenizers.Tokenizer.from_file(str(neox_json))


def hf_ids(hf, text):
    return hf.encode(text, add_special_tokens=False).ids


def hf_from_saved(tok, directory):
    """HF tokenizers' byte-level BPE on the vocab.json + merges.txt that `tok` saves into `directory`."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers
    tok.save(directory)
    hf = HFTokenizer(models.BPE.from_file(str(Path(directory) / "vocab.json"), str(Path(directory) / "merges.txt")))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    return hf


# --- known values ---------------------------------------------------------------------------------------
def test_gpt2_known_ids(gpt2):
    assert gpt2.encode("Hello world") == [15496, 995]
    assert gpt2.encode(" Hello world") == [18435, 995]
    assert gpt2.encode("<|endoftext|>", allowed_special="all") == [50256]
    assert gpt2.special_tokens == {"<|endoftext|>": 50256} and gpt2.eos_token_id == 50256
    assert gpt2.vocab_size == 50257


def test_neox_known_ids(neox):
    assert neox.encode("Hello world") == [12092, 1533]
    assert neox.encode(" Hello") == [24387]
    assert neox.encode("The capital of France is") == [510, 5347, 273, 6181, 310]
    assert neox.encode("<|endoftext|>", allowed_special="all") == [0]
    assert neox.encode("<|padding|>", allowed_special={"<|padding|>"}) == [1]
    assert neox.special_tokens == {"<|endoftext|>": 0, "<|padding|>": 1} and neox.eos_token_id == 0
    assert neox.vocab_size == 50277
    assert neox.encode("a  b") == [66, 50276, 67]           # "  " is an added token in NeoX, not in GPT-2


# --- GPT-2 against tiktoken -----------------------------------------------------------------------------
@settings(max_examples=500)
@given(text=any_text)
def test_gpt2_matches_tiktoken(gpt2, tiktoken_gpt2, text):
    assert gpt2.encode_ordinary(text) == tiktoken_gpt2.encode_ordinary(text)
    assert gpt2.encode(text, allowed_special="all") == tiktoken_gpt2.encode(text, allowed_special="all")


@settings(max_examples=300)
@given(text=any_text)
def test_gpt2_roundtrip(gpt2, text):
    assert gpt2.decode(gpt2.encode_ordinary(text)) == text
    assert gpt2.decode(gpt2.encode(text, allowed_special="all")) == text


def test_gpt2_every_token_as_a_word(gpt2, tiktoken_gpt2):
    """Each vocabulary entry, decoded to text, encoded by both: exercises every merge at least once."""
    words = []
    for token in gpt2.vocab:
        try:
            words.append(bpe.token_bytes(token).decode("utf-8"))
        except UnicodeDecodeError:
            pass
    text = "\n".join(words)
    assert gpt2.encode_ordinary(text) == tiktoken_gpt2.encode_ordinary(text)


@pytest.fixture(scope="module")
def gpt2_formats():
    """GPT-2 loaded from the Hub's files and from OpenAI's, and the ranks of tiktoken's own file."""
    import base64
    files = ["vocab.json", "merges.txt", "encoder.json", "vocab.bpe", "gpt2.tiktoken"]
    directory = shared_tokenizer_dir("gpt2", GPT2_REPO, files)
    lines = (directory / "gpt2.tiktoken").read_text().split()                 # base64 token, rank, ...
    ranks = {base64.b64decode(token): int(rank) for token, rank in zip(lines[::2], lines[1::2])}
    return (Tokenizer.from_vocab_merges(directory / "vocab.json", directory / "merges.txt"),
            Tokenizer.from_encoder_bpe(directory / "encoder.json", directory / "vocab.bpe"), ranks)


@settings(max_examples=200)
@given(text=any_text)
def test_gpt2_three_formats_identical(gpt2_formats, text):
    hub, openai, tiktoken_ranks = gpt2_formats
    ids = hub.encode(text, allowed_special="all")
    assert openai.encode(text, allowed_special="all") == ids
    assert all(tiktoken_ranks[hub.decode_bytes([i])] == i for i in hub.encode_ordinary(text))


@settings(max_examples=300)
@given(ids=st.lists(st.integers(0, 50256), max_size=12))
def test_gpt2_decode_arbitrary_ids_like_tiktoken(gpt2, tiktoken_gpt2, ids):
    """Random ids are mostly invalid UTF-8 (cut characters): both replace the same bytes with U+FFFD."""
    assert gpt2.decode_bytes(ids) == tiktoken_gpt2.decode_bytes(ids)
    assert gpt2.decode(ids) == tiktoken_gpt2.decode(ids)


# --- GPT-NeoX against HF tokenizers ---------------------------------------------------------------------
@settings(max_examples=500)
@given(text=any_text)
def test_neox_matches_hf(neox, hf_neox, text):
    ids = neox.encode(text, allowed_special="all")
    assert ids == hf_ids(hf_neox, text)
    # NFC makes the text differ from the input for some strings, so compare with the reference decode
    assert neox.decode(ids) == hf_neox.decode(ids, skip_special_tokens=False)


@settings(max_examples=200)
@given(text=any_text)
def test_neox_encode_ordinary_is_hf_with_encode_special_tokens(neox, hf_neox_text_specials, text):
    assert neox.encode_ordinary(text) == hf_ids(hf_neox_text_specials, text)


@pytest.fixture(scope="module")
def hf_neox_text_specials(neox_json):
    import tokenizers
    hf = tokenizers.Tokenizer.from_file(str(neox_json))
    hf.encode_special_tokens = True                  # HF's switch for "special token strings are text"
    return hf


@settings(max_examples=300)
@given(ids=st.lists(st.integers(0, 50276), max_size=12))
def test_neox_decode_arbitrary_ids_like_hf(neox, hf_neox, ids):
    assert neox.decode(ids) == hf_neox.decode(ids, skip_special_tokens=False)


@pytest.mark.parametrize("option", [{"add_prefix_space": True}, {"use_regex": False}])
def test_neox_byte_level_options_match_hf(neox_json, tmp_path, option):
    """The ByteLevel options of tokenizer.json: the NeoX file with one option changed, against HF."""
    import tokenizers
    config = json.loads(neox_json.read_text(encoding="utf-8"))
    config["pre_tokenizer"].update(option)
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    ours, hf = Tokenizer.from_tokenizer_json(path), tokenizers.Tokenizer.from_file(str(path))

    @settings(max_examples=150)
    @given(text=any_text)
    def check(text):
        assert ours.encode(text, allowed_special="all") == hf_ids(hf, text)
    check()


# --- special tokens -------------------------------------------------------------------------------------
def test_special_token_text_raises_unless_allowed(gpt2, neox):
    text = "the end<|endoftext|>"
    for tok in (gpt2, neox):
        message = "special token '<\\|endoftext\\|>'.*allowed_special.*encode_ordinary"
        with pytest.raises(ValueError, match=message):
            tok.encode(text)
        assert tok.encode(text, allowed_special="all")[-1] == tok.eos_token_id
        assert tok.encode(text, allowed_special={"<|endoftext|>"})[-1] == tok.eos_token_id
        assert tok.eos_token_id not in tok.encode_ordinary(text)
        assert tok.decode(tok.encode_ordinary(text)) == text
    with pytest.raises(ValueError, match="<\\|padding\\|>"):
        neox.encode("<|padding|>", allowed_special={"<|endoftext|>"})
    assert gpt2.encode_ordinary("<|endoftext|>") == [27, 91, 437, 1659, 5239, 91, 29]   # 7 plain tokens


def test_allowed_special_is_checked(gpt2):
    with pytest.raises(TypeError, match="allowed_special"):
        gpt2.encode("x", allowed_special="<|endoftext|>")       # a str, not a set: a common slip
    with pytest.raises(ValueError, match="not special tokens"):
        gpt2.encode("x", allowed_special={"<|im_start|>"})


# --- decoding, streaming ------------------------------------------------------------------------------
def test_invalid_utf8_decodes_with_replacement(gpt2):
    hug = gpt2.encode("🤗")                                     # 4 bytes F0 9F A4 97, 3 tokens
    assert len(hug) == 3 and gpt2.decode_bytes(hug) == "🤗".encode() and gpt2.decode(hug) == "🤗"
    assert gpt2.decode_bytes(hug[:1]) == b"\xf0\x9f"
    assert gpt2.decode(hug[:1]) == "\ufffd"                     # a cut character
    lone = gpt2.vocab[bpe.BYTE_TO_CHAR[0xFF]]                   # 0xFF never occurs in UTF-8
    assert gpt2.decode([lone, *gpt2.encode("ok")]) == "\ufffdok"


def test_decode_rejects_bad_ids(gpt2):
    with pytest.raises(ValueError, match="unknown token id 50257"):
        gpt2.decode([15496, 50257])
    with pytest.raises(ValueError, match="unknown token id -1"):
        gpt2.decode([-1])
    with pytest.raises(TypeError, match="token ids must be ints"):
        gpt2.decode(["15496"])
    with pytest.raises(TypeError, match="encode takes a str"):
        gpt2.encode(b"bytes")
    assert gpt2.decode(iter([15496, 995])) == "Hello world"     # any iterable of ints


@settings(max_examples=300)
@given(text=any_text)
def test_stream_decoder_yields_only_complete_text(gpt2, text):
    stream, shown = StreamDecoder(gpt2), ""
    for token_id in gpt2.encode_ordinary(text):
        shown += stream.push(token_id)
        assert text.startswith(shown)                             # never a broken character
    assert shown + stream.flush() == text


@settings(max_examples=300)
@given(ids=st.lists(st.integers(0, 50256), max_size=12))
def test_stream_decoder_adds_up_to_decode(gpt2, ids):
    stream = StreamDecoder(gpt2)
    assert "".join(map(stream.push, ids)) + stream.flush() == gpt2.decode(ids)


# --- the merge loop -------------------------------------------------------------------------------------
def tiny_tokenizer(merges, fast=True):
    vocab = {c: i for i, c in enumerate(bpe.BYTE_TO_CHAR.values())}
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    return Tokenizer(vocab, merges, fast=fast)


def test_merges_apply_by_rank_not_by_position():
    # "abc": (b, c) is further right but learned first, so it wins; swap the ranks and (a, b) wins
    assert bpe.bpe("abc", tiny_tokenizer([("b", "c"), ("a", "b")]).merge_ranks) == ["a", "bc"]
    assert bpe.bpe("abc", tiny_tokenizer([("a", "b"), ("b", "c")]).merge_ranks) == ["ab", "c"]
    # equal pairs: leftmost first, and a merged token can merge again
    assert bpe.bpe("aaa", tiny_tokenizer([("a", "a")]).merge_ranks) == ["aa", "a"]
    assert bpe.bpe("aaaa", tiny_tokenizer([("a", "a"), ("aa", "aa")]).merge_ranks) == ["aaaa"]
    for merges, word in ([[("b", "c"), ("a", "b")], "abc"], [[("a", "a")], "aaa"], [[("a", "a"), ("aa", "aa")], "a" * 7]):
        ranks = tiny_tokenizer(merges).merge_ranks
        assert bpe_fast.bpe_heap(word, ranks) == bpe.bpe(word, ranks)     # the same rule, n log n


# --- whole tokens (bpe_fast.py section 4): a word that is a token skips BPE only where BPE gives that token ------------
def test_a_token_that_bpe_does_not_give_whole():
    tok = tiny_tokenizer([("b", "c"), ("a", "b"), ("ab", "c")])   # "abc" is a token, but BPE on it merges
    assert bpe.bpe("abc", tok.merge_ranks) == ["a", "bc"]            # "b c" first and cannot reach it
    assert "abc" not in tok.fast.whole_tokens and {"ab", "bc"} <= tok.fast.whole_tokens.keys()
    assert tok.encode("abc") == [tok.vocab["a"], tok.vocab["bc"]]


@st.composite
def merges_lists(draw, alphabet=("a", "b", "c", "Ġ")):
    """Random merges over a few bytes: each joins two tokens made before (a token may be made twice, a
    pair listed twice), then, half the time, shuffled (a merge may use a token made only later)."""
    tokens, merges = list(alphabet), []
    for _ in range(draw(st.integers(1, 30))):
        merges.append((draw(st.sampled_from(tokens)), draw(st.sampled_from(tokens))))
        tokens.append(merges[-1][0] + merges[-1][1])
    return draw(st.permutations(merges)) if draw(st.booleans()) else merges


@settings(max_examples=500)
@given(merges=merges_lists())
def test_whole_tokens_are_exactly_those_bpe_gives_whole(merges):
    """Every whole token is what BPE gives for its bytes; and where each token is made by one merge, of
    tokens made before it (as training writes them), every token that BPE gives whole is found."""
    ranks = {pair: rank for rank, pair in enumerate(merges)}
    whole = bpe_fast.whole_tokens(merges, ranks)
    made = [left + right for left, right in merges]
    gives_itself = {token for token in made if bpe.bpe(token, ranks) == [token]}
    assert whole.keys() & set(made) <= gives_itself
    in_order = all(len(part) == 1 or part in made[:rank] for rank, pair in enumerate(merges) for part in pair)
    if in_order and len(set(made)) == len(made):
        assert whole.keys() & set(made) == gives_itself


def texts_of_tokens(data, merges):
    """Texts made of the merges' tokens (so that words are tokens, whole or not) and random "abc " text."""
    made = [bpe.token_bytes(left + right).decode() for left, right in merges]      # "Ġab" -> " ab"
    pieces = st.one_of(st.sampled_from(made), st.text(alphabet="abc ", max_size=8))
    return data.draw(st.lists(st.lists(pieces, max_size=6).map("".join), min_size=1, max_size=5))


@settings(max_examples=150, deadline=None)
@given(merges=merges_lists(), data=st.data())
def test_tiny_tokenizers_match_hf(merges, data):
    """The same through the reference: HF tokenizers (which never skips BPE) on the saved files."""
    import tempfile
    texts = texts_of_tokens(data, merges)
    tok = tiny_tokenizer(merges)
    with tempfile.TemporaryDirectory() as directory:
        hf = hf_from_saved(tok, directory)
    for text in texts:
        assert tok.encode_ordinary(text) == hf_ids(hf, text), text


@settings(max_examples=100, deadline=None)
@given(merges=merges_lists(), data=st.data())
def test_ignore_merges_matches_hf(merges, data):
    """tokenizer.json's ignore_merges (Llama 3): any word that is a token is taken whole, whole or not."""
    import tempfile
    texts = texts_of_tokens(data, merges)
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers
    vocab = tiny_tokenizer(merges).vocab
    hf = HFTokenizer(models.BPE(vocab, merges, ignore_merges=True))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    with tempfile.TemporaryDirectory() as directory:
        hf.save(str(Path(directory) / "tokenizer.json"))
        tok = Tokenizer.from_pretrained(Path(directory) / "tokenizer.json")
    assert tok.ignore_merges
    for text in texts:
        assert tok.encode_ordinary(text) == hf_ids(hf, text), text


def test_real_tokenizers_every_token_is_whole(gpt2, neox):
    """GPT-2's and NeoX's files: BPE gives every merged token whole, as tiktoken assumes."""
    for tok in (gpt2, neox):
        made = {left + right for left, right in tok.merges}
        assert made <= tok.fast.whole_tokens.keys()
        assert all(bpe.bpe(token, tok.merge_ranks) == [token] for token in made)


def test_teaching_mode_shows_every_merge(gpt2, tiktoken_gpt2):
    import io
    out = io.StringIO()
    text = "Hello worldz"                        # " worldz" is no token: BPE ends at two
    ids = bpe.explain(gpt2, text, out=out)
    assert ids == tiktoken_gpt2.encode_ordinary(text)
    shown = out.getvalue()
    steps = [line.split() for line in shown.splitlines() if line.strip().startswith("merge rank")]
    assert len(steps) == len(text.encode()) - len(ids)     # each merge makes one piece fewer
    assert all(gpt2.merge_ranks[left, right] == int(rank.rstrip(":"))
               for _, _, rank, left, _, right, *_ in steps)
    assert "whole token" not in shown            # the teaching mode shows BPE, not bpe_fast's shortcuts


def test_gpt2_merge_steps(gpt2):
    steps = []
    assert bpe.bpe("Ġworld", gpt2.merge_ranks, trace=steps) == ["Ġworld"]
    pairs = [(left, right) for left, right, _, _ in steps]
    assert pairs == [("Ġ", "w"), ("o", "r"), ("l", "d"), ("Ġw", "or"), ("Ġwor", "ld")]
    assert [rank for _, _, rank, _ in steps] == sorted(rank for _, _, rank, _ in steps)


def test_bytes_to_unicode():
    table = bpe.bytes_to_unicode()
    assert len(set(table.values())) == 256
    assert all(c.isprintable() and not c.isspace() for c in table.values())
    assert table[ord("a")] == "a" and table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ"
    assert bpe.to_printable(" héllo") == "ĠhÃ©llo" and bpe.token_bytes("ĠhÃ©llo") == " héllo".encode()


# --- the faster split and the word cache ------------------------------------------------------------------
LONG_PIECES = ["x" * 70, " " * 70, "ab " * 30, "a b " * 20 + "c", "é", "\u00a0"]   # long ASCII stretches
ascii_heavy_text = st.lists(st.sampled_from(PIECES + LONG_PIECES), max_size=30).map("".join)


@settings(max_examples=500)
@given(text=st.one_of(any_text, ascii_heavy_text))
def test_split_words_is_the_split_pattern(text):
    """bpe_fast.split_words hands ASCII stretches to `re`, the rest to `regex`: the words of bpe.py's."""
    assert bpe_fast.split_words(text) == bpe.split_words(text)


def test_word_cache_is_bounded(gpt2, monkeypatch):
    monkeypatch.setattr(bpe, "CACHE_MAX_WORDS", 10)
    tok = Tokenizer(gpt2.vocab, gpt2.merges, gpt2.added_tokens)
    for i in range(50):
        assert tok.encode(f" word{i} w{i}x") == gpt2.encode(f" word{i} w{i}x")
        assert len(tok._cache) <= 10 + 4


# --- long words cut where no merge joins two characters (bpe_fast.py section 3) ------------------------------
PHRASES = ["日本語のテキストです。", "これはペンです", "中文文本的例子", "我们的中文", "한국어 텍스트입니다",
           "안녕하세요", "Ελληνικά κείμενα", "русский текст", "café naïve", "🤗👍🏽", "½²٣"]
non_ascii_text = st.lists(st.one_of(st.sampled_from(PHRASES + PIECES),
                                    st.characters(min_codepoint=0x80, exclude_categories=["Cs"])),
                          max_size=30).map("".join)


@pytest.fixture(scope="module")
def trained_cjk():
    """A tokenizer learned from non-ASCII phrases: many of its merges join two characters ("日本")."""
    rng = random.Random(0)
    tok = train(" ".join(rng.choice(PHRASES) for _ in range(2000)), 256 + 400)
    ends, _ = bpe_fast.character_joins(tok.merges)
    assert sum(map(len, ends.values())) > 50          # so the tests below see words that must not be cut
    return tok


@settings(max_examples=300)
@given(text=non_ascii_text)
def test_cut_words_encode_as_whole_words(gpt2, neox, trained_cjk, text):
    """Cutting a word between characters that no merge joins gives the ids of BPE on the whole word."""
    for tok in (gpt2, neox, trained_cjk):
        for word in tok.words(text):
            whole = [tok.vocab[t] for t in bpe.bpe(bpe.to_printable(word), tok.merge_ranks)]
            assert list(tok.fast.word_ids(word)) == whole, word


def test_cut_trained_cjk_matches_hf(trained_cjk, tmp_path):
    """The same through the reference: HF tokenizers on the saved files, on text full of joined characters."""
    hf = hf_from_saved(trained_cjk, tmp_path)

    @settings(max_examples=300)
    @given(text=non_ascii_text)
    def check(text):
        assert trained_cjk.encode_ordinary(text) == hf_ids(hf, text)
    check()


# --- added tokens: HF's lstrip / rstrip / single_word / normalized flags ----------------------------------
@pytest.fixture(scope="module")
def trained():
    """A small tokenizer learned from a standard library file (the first 60 kB of argparse.py)."""
    import argparse
    return train(Path(argparse.__file__).read_text(encoding="utf-8")[:60_000], 256 + 300)


def test_added_token_flags_match_hf(trained, tmp_path):
    import tokenizers
    def added(id, content, special, **flags):
        return {"id": id, "content": content, "special": special, "lstrip": False, "rstrip": False,
                "single_word": False, "normalized": False, **flags}
    added = [added(556, "<mask>", True, lstrip=True), added(557, "[X]", True, rstrip=True),
             added(558, "day", False, single_word=True), added(559, "  ", False, normalized=True),
             added(560, "é", False, normalized=True), added(561, "Ġsep", True)]
    config = {"version": "1.0", "added_tokens": added, "normalizer": {"type": "NFC"},
              "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True},
              "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                          "use_regex": True},
              "model": {"type": "BPE", "vocab": trained.vocab, "merges": [list(m) for m in trained.merges]}}
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    ours, hf = Tokenizer.from_tokenizer_json(path), tokenizers.Tokenizer.from_file(str(path))
    assert ours.special_tokens == {"<mask>": 556, "[X]": 557, "Ġsep": 560}   # ids as HF assigns them
    assert ours.vocab_size == 561 and ours.encode("é") == [233]   # "é" is already a token (byte 0xE9)
    pieces = ["<mask>", "[X]", "day", "days", "Monday", " ", "  ", "\t", "\n", "a", "b1", "_", "é", "e\u0301",
              "!", "Ġsep"]

    @settings(max_examples=300)
    @given(text=st.lists(st.sampled_from(pieces), max_size=12).map("".join))
    def check(text):
        ids = ours.encode(text, allowed_special="all")
        assert ids == hf_ids(hf, text)
        assert ours.decode(ids) == hf.decode(ids, skip_special_tokens=False)   # added tokens: ByteLevel too
    check()


# --- training -------------------------------------------------------------------------------------------
def test_train_round_trips_through_hf_tokenizers(trained, tmp_path):
    assert trained.vocab_size == 256 + 300 and len(trained.merges) == 300
    hf = hf_from_saved(trained, tmp_path)
    reloaded = Tokenizer.from_pretrained(tmp_path)
    import argparse
    sample = Path(argparse.__file__).read_text(encoding="utf-8")[60_000:70_000]   # unseen text
    assert len(trained.encode(sample)) < len(sample.encode()) / 2          # it did learn to compress

    @settings(max_examples=300)
    @given(text=st.one_of(any_text, st.sampled_from(sample.splitlines())))
    def check(text):
        ids = trained.encode_ordinary(text)
        assert ids == hf_ids(hf, text) == reloaded.encode_ordinary(text)
        assert trained.decode(ids) == text == hf.decode(ids)
    check()


def test_train_most_frequent_pair_first_and_special_tokens(tmp_path):
    tok = train("aaab aaab aaab ab", 256 + 3 + 1, special_tokens=["<|endoftext|>"])
    assert tok.merges[0] == ("a", "a")                                    # 6 times, more than any other pair
    assert tok.special_tokens == {"<|endoftext|>": 259} and tok.vocab_size == 260
    tok.save(tmp_path)
    again = Tokenizer.from_vocab_merges(tmp_path / "vocab.json", tmp_path / "merges.txt")
    assert again.special_tokens == {"<|endoftext|>": 259} and again.merges == tok.merges
    assert again.encode("aaab<|endoftext|>", allowed_special="all") == tok.encode("aaab<|endoftext|>",
                                                                                  allowed_special="all")


def test_gpt2_save_round_trip(gpt2, tmp_path):
    gpt2.save(tmp_path)
    again = Tokenizer.from_pretrained(tmp_path)
    assert again.vocab == gpt2.vocab and again.merges == gpt2.merges
    assert again.special_tokens == gpt2.special_tokens


# --- loading --------------------------------------------------------------------------------------------
def test_from_pretrained_picks_the_format(tmp_path, gpt2_dir, neox_json):
    (tmp_path / "vocab.json").symlink_to(gpt2_dir / "vocab.json")
    (tmp_path / "merges.txt").symlink_to(gpt2_dir / "merges.txt")
    assert Tokenizer.from_pretrained(tmp_path).encode("Hello world") == [15496, 995]
    (tmp_path / "tokenizer.json").symlink_to(neox_json)                  # tokenizer.json comes first
    assert Tokenizer.from_pretrained(tmp_path).encode("Hello world") == [12092, 1533]
    assert Tokenizer.from_pretrained(neox_json).encode("Hello world") == [12092, 1533]


def test_from_pretrained_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="tokenizer.json, or vocab.json \\+ merges.txt"):
        Tokenizer.from_pretrained(tmp_path)                               # an empty directory
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Tokenizer.from_pretrained(tmp_path / "missing")
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(*args, **kwargs):
        raise LocalEntryNotFoundError("no network")
    monkeypatch.setattr(huggingface_hub, "model_info", offline)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(OSError, match="local directory"):
        Tokenizer.from_pretrained("someone/some-model")


def test_unsupported_tokenizer_json_is_refused(tmp_path):
    config = {"model": {"type": "WordPiece", "vocab": {}}, "pre_tokenizer": None}
    (tmp_path / "tokenizer.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="WordPiece"):
        Tokenizer.from_pretrained(tmp_path)
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    config = {"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "pre_tokenizer": byte_level}
    (tmp_path / "tokenizer.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="no token for the bytes 0x00"):   # HF would drop most of the text
        Tokenizer.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="not in the vocabulary"):
        Tokenizer({bpe.BYTE_TO_CHAR[b]: b for b in range(256)}, [("a", "b")])


# --- teaching mode --------------------------------------------------------------------------------------
def test_teaching_mode_prints_the_merges(gpt2_dir, capsys):
    bpe.main(["Hello world", "--tokenizer", str(gpt2_dir)])
    out = capsys.readouterr().out
    assert "['Hello', ' world']" in out and "merge rank" in out and "Ġwor + ld" in out
    assert "ids: [15496, 995]" in out


# --- every code point: the classes, the split, the ids and NFC against the references (issue 12) ----------
EVERY = "".join(map(chr, (*range(1, 0xD800), *range(0xE000, 0x110000))))    # no NUL: the separator below


def reference_classes():
    """{name: the string of code points} that \\p{L}, \\p{N}, \\s match in tiktoken's and in HF's regex
    engines. tiktoken encodes only what its pattern matches: with a one-class pattern and single-byte
    ranks, encode + decode gives back exactly the matching characters; HF's Split removes them."""
    import tiktoken
    from tokenizers import Regex, pre_tokenizers
    ranks = {bytes([b]): b for b in range(256)}
    found = {}
    for name, pattern in (("letters", r"\p{L}"), ("numbers", r"\p{N}"), ("spaces", r"\s")):
        enc = tiktoken.Encoding(name, pat_str=pattern, mergeable_ranks=ranks, special_tokens={})
        removed = pre_tokenizers.Split(Regex(pattern), behavior="removed").pre_tokenize_str(EVERY)
        kept = set("".join(piece for piece, _ in removed))
        found[name] = (enc.decode(enc.encode_ordinary(EVERY)), "".join(c for c in EVERY if c not in kept))
    return found


def ranges_text(chars: str) -> str:
    """The appendix's format, to paste into bpe.py if the references ever move to another Unicode."""
    out = []
    for c in map(ord, chars):
        if out and out[-1][1] == c - 1:
            out[-1][1] = c
        else:
            out.append([c, c])
    return " ".join(f"{a:x}" if a == b else f"{a:x}-{b:x}" for a, b in out)


def test_unicode_classes_are_the_references():
    """bpe.py's pinned letters / numbers / spaces are what tiktoken and HF tokenizers use, on all code
    points (the two references agree with each other: both Unicode 16.0)."""
    pytest.importorskip("tiktoken"), pytest.importorskip("tokenizers")
    import re
    ours = {name: "".join(re.findall(f"[{cls}]", EVERY))
            for name, cls in (("letters", bpe.LETTERS), ("numbers", bpe.NUMBERS), ("spaces", bpe.WHITE_SPACE))}
    for name, (tiktoken_chars, hf_chars) in reference_classes().items():
        assert tiktoken_chars == hf_chars, f"the references disagree on {name}"
        assert ours[name] == tiktoken_chars, f"{name} differ; the references' table:\n{ranges_text(hf_chars)}"


@pytest.fixture(scope="module")
def contexts():
    """Every code point c alone and in the contexts that its class decides: after a letter, before a
    contraction, after a space, after a digit, after punctuation; one line each, in chunks."""
    lines = [f"{c}\nx{c}\n{c}'s\n {c}\n1{c}\n!{c}\n" for c in EVERY]
    return ["".join(lines[i:i + 4096]) for i in range(0, len(lines), 4096)]     # 272 chunks


def test_every_code_point_splits_like_hf(contexts):
    """The words of bpe.py (fast and simple) are HF's ByteLevel pre-tokenizer's. The split depends on a
    code point only through its class, which test_unicode_classes_are_the_references checks on every code
    point; here the words themselves, on a fixed sample of the chunks (all 272 take a minute: HF returns
    3 million Python tuples, and `re` checks a character beyond U+FFFF against the 677 letter ranges one
    by one): every 16th, and every chunk holding a character on which `regex` disagrees with the pinned
    tables (there bpe_fast falls back to bpe.SPLIT)."""
    from tokenizers import Regex, pre_tokenizers
    hf_split = pre_tokenizers.Split(Regex(bpe.GPT2_SPLIT_PATTERN), behavior="isolated")   # ByteLevel's regex
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    disputed = bpe_fast.disputed()
    assert disputed                              # with regex's Unicode 17.0: 4,657, the fallback is tested
    chosen = [k for k, chunk in enumerate(contexts) if k % 16 == 0 or not disputed.isdisjoint(chunk)]
    for k in chosen:
        chunk = contexts[k]
        hf = [piece for piece, _ in hf_split.pre_tokenize_str(chunk)]
        assert bpe_fast.split_words(chunk) == hf
        if k % 16 == 0:
            assert bpe.split_words(chunk) == hf
    sample = contexts[0][:5000]                   # the same regex as HF's ByteLevel pre-tokenizer
    assert [piece for piece, _ in byte_level.pre_tokenize_str(sample)] == [
        bpe.to_printable(piece) for piece, _ in hf_split.pre_tokenize_str(sample)]


def test_every_code_point_encodes_like_tiktoken(gpt2, tiktoken_gpt2):
    """All code points in one text (runs of letters make words of thousands of characters), and the
    classes' borders: the ids of tiktoken."""
    text = "\n".join(EVERY[i:i + 300] for i in range(0, len(EVERY), 300 * 7))   # tiktoken: n² on long words
    assert gpt2.encode_ordinary(text) == tiktoken_gpt2.encode_ordinary(text)
    text = "".join(f"x{c}'s {c}" for c in EVERY[::97])           # a sample: BPE is the slow part here
    assert gpt2.encode_ordinary(text) == tiktoken_gpt2.encode_ordinary(text)


def test_nfc_is_hf_normalizers_on_every_code_point():
    """bpe.hf_normalize("NFC") equals HF's NFC normalizer on every code point alone and next to combining
    marks (Python's unicodedata alone differs on the 98 marks of bpe.HF_INERT_MARKS)."""
    from tokenizers import normalizers
    nfc = normalizers.NFC()
    for context in ("{}", "\u0301{}", "{}\u0301", "\u0301\u1abf{}"):
        text = "\x00".join(context.format(c) for c in EVERY)
        assert bpe.hf_normalize("NFC", text) == nfc.normalize_str(text), context
    assert unicodedata_nfc("\u0301\u1abf") != nfc.normalize_str("\u0301\u1abf") == "\u0301\u1abf"


def unicodedata_nfc(text):
    import unicodedata
    return unicodedata.normalize("NFC", text)


# --- fast=True and fast=False: the same ids ------------------------------------------------------------
@pytest.fixture(scope="module")
def simple_tokenizers(gpt2, neox):
    return {tok: Tokenizer(tok.vocab, tok.merges, tok.added_tokens, normalizer=tok.normalizer, fast=False)
            for tok in (gpt2, neox)}


@settings(max_examples=300)
@given(text=st.one_of(any_text, non_ascii_text))
def test_fast_and_simple_give_the_same_ids(gpt2, neox, simple_tokenizers, text):
    for tok in (gpt2, neox):
        assert tok.fast is not None and simple_tokenizers[tok].fast is None
        assert simple_tokenizers[tok].encode(text, allowed_special="all") == tok.encode(text, allowed_special="all")


@settings(max_examples=300)
@given(merges=merges_lists(), data=st.data())
def test_fast_and_simple_on_random_merges(merges, data):
    texts = texts_of_tokens(data, merges)
    fast, simple = tiny_tokenizer(merges), tiny_tokenizer(merges, fast=False)
    for text in texts + ["".join(texts) * 40]:                 # and one long word or two: the heap
        assert fast.encode_ordinary(text) == simple.encode_ordinary(text)


@settings(max_examples=500)
@given(merges=merges_lists(), data=st.data())
def test_bpe_heap_is_bpe(merges, data):
    """bpe_fast.bpe_heap makes bpe.bpe's merges: same parts, including ties (leftmost first)."""
    ranks = {pair: rank for rank, pair in enumerate(merges)}
    word = data.draw(st.lists(st.sampled_from(["a", "b", "c", "Ġ", "ab", "aa"]), max_size=80).map("".join))
    assert bpe_fast.bpe_heap(word, ranks) == bpe.bpe(word, ranks)


def test_long_words_complete(gpt2, tiktoken_gpt2):
    """A word of 200,000 characters: n log n, so it finishes (bpe.bpe alone would take minutes)."""
    rng = random.Random(0)
    for word in ("a" * 200_000, "".join(rng.choice("ACGT") for _ in range(200_000))):
        ids = gpt2.encode_ordinary(word)
        assert gpt2.decode(ids) == word and ids == tiktoken_gpt2.encode_ordinary(word)


# --- malformed files: a ValueError that names the file and the fault (issue 12 §4) ----------------------
def test_malformed_files_are_refused_by_name(tmp_path, gpt2_dir):
    vocab = json.loads((gpt2_dir / "vocab.json").read_text(encoding="utf-8"))
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    good = {"model": {"type": "BPE", "vocab": vocab, "merges": ["Ġ t"]}, "pre_tokenizer": byte_level}
    cases = {
        "truncated": (json.dumps(good)[:1000], "is not valid JSON"),
        "a list": ("[1, 2]", "no \"model\""),
        "no merges": (json.dumps({**good, "model": {"type": "BPE", "vocab": vocab}}), "without vocab and merges"),
        "merges not a list": (json.dumps({**good, "model": {**good["model"], "merges": "Ġ t"}}), "must be a list"),
        "unknown merge": (json.dumps({**good, "model": {**good["model"], "merges": ["Ġ zzzzz"]}}),
                          "'zzzzz' is not in the vocabulary"),
        "three tokens": (json.dumps({**good, "model": {**good["model"], "merges": [["a", "b", "c"]]}}),
                         "a merge must be two tokens"),
        "id not an int": (json.dumps({**good, "model": {**good["model"], "vocab": {**vocab, "a": "1"}}}),
                          "the id of token 'a' must be an int"),
        "vocab a list": (json.dumps({**good, "model": {**good["model"], "vocab": list(vocab)}}),
                         "must be an object"),
        "added_tokens": (json.dumps({**good, "added_tokens": [{"id": 5}]}), "added_tokens must be a list"),
        "not utf-8": (b"\xff\xfe{}", "is not valid JSON"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / "json" / name / "tokenizer.json"
        path.parent.mkdir(parents=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        with pytest.raises(ValueError, match=message) as error:
            Tokenizer.from_pretrained(path.parent)
        assert str(path) in str(error.value), name
    for name, (vocab_text, merges_text, message) in {
            "truncated vocab": ('{"a": 0', "Ġ t\n", "vocab.json is not valid JSON"),
            "vocab a list": ('["a"]', "Ġ t\n", "vocab.json: the vocabulary must be an object"),
            "bad merge line": (json.dumps(vocab), "#version: 0.2\nĠ t x\n", "merges.txt: a merge must be two"),
            "merge not in vocab": (json.dumps(vocab), "Ġ qqqq\n", "merges.txt: .*'qqqq' is not in the vocabulary"),
    }.items():
        directory = tmp_path / name
        directory.mkdir()
        (directory / "vocab.json").write_text(vocab_text, encoding="utf-8")
        (directory / "merges.txt").write_text(merges_text, encoding="utf-8")
        with pytest.raises(ValueError, match=message):
            Tokenizer.from_pretrained(directory)


# --- issue 21: tokenizer files that lie, strings tiktoken takes, training on a long line, offline ------
def write_vocab_merges(directory, vocab, merges):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
                                          encoding="utf-8")


def write_tokenizer_json(path, vocab, merges, added_tokens=()):
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    added = [{"id": vocab[t], "content": t, "special": True, "single_word": False, "lstrip": False,
              "rstrip": False, "normalized": False} for t in added_tokens]
    config = {"version": "1.0", "added_tokens": added, "pre_tokenizer": byte_level, "decoder": byte_level,
              "model": {"type": "BPE", "vocab": vocab, "merges": [list(m) for m in merges]}}
    path.write_text(json.dumps(config), encoding="utf-8")


TINY_MERGES = [("a", "b"), ("ab", "c"), ("Ġ", "ab")]


def tiny_vocab(*extra):
    """The 256 bytes, the tokens of TINY_MERGES, then `extra` entries that no merge makes."""
    vocab = {c: i for i, c in enumerate(bpe.BYTE_TO_CHAR.values())}
    for token in [a + b for a, b in TINY_MERGES] + list(extra):
        vocab[token] = len(vocab)
    return vocab


def test_two_tokens_with_one_id_are_refused(tmp_path):
    """HF tokenizers loads such a file and decodes the id to either token, whichever its hash table
    lists last (a different text from one run to the next): bpe.py refuses it, naming the file."""
    vocab = {**tiny_vocab(), "zzz": 257}                      # 257 is "abc" too
    write_vocab_merges(tmp_path / "pair", vocab, TINY_MERGES)
    write_tokenizer_json(tmp_path / "tokenizer.json", vocab, TINY_MERGES)
    for where in (tmp_path / "pair", tmp_path / "tokenizer.json"):
        with pytest.raises(ValueError, match="the tokens 'abc' and 'zzz' have the same id 257") as error:
            Tokenizer.from_pretrained(where)
        assert str(where) in str(error.value)


@pytest.fixture(scope="module")
def unreachable_files(tmp_path_factory):
    """The same vocabulary with entries that no merge makes ("zzz", "<pad>", and "<|endoftext|>"), as
    vocab.json + merges.txt and as tokenizer.json (where "<|endoftext|>" is an added special token)."""
    directory = tmp_path_factory.mktemp("unreachable")
    vocab = tiny_vocab("zzz", "<pad>", "<|endoftext|>")
    write_vocab_merges(directory / "pair", vocab, TINY_MERGES)
    write_tokenizer_json(directory / "tokenizer.json", vocab, TINY_MERGES, ["<|endoftext|>"])
    return directory, vocab


@settings(max_examples=200)
@given(text=st.lists(st.sampled_from(["zzz", "zz", "<pad>", "<|endoftext|>", "abc", "ab", " ab", " ", "z", "é"]),
                     max_size=10).map("".join))
def test_entries_no_merge_makes_are_plain_vocabulary_like_hf(unreachable_files, text):
    """A vocabulary entry that no merge makes is never encoded (BPE cannot reach it) and decodes to its
    bytes, as in HF tokenizers; only "<|endoftext|>" is special in vocab.json + merges.txt, as
    transformers' GPT2Tokenizer makes it (the raw tokenizers library adds no special tokens itself)."""
    from tokenizers import AddedToken as HFAddedToken
    from tokenizers import Tokenizer as HFTokenizer
    directory, vocab = unreachable_files
    hf_pair = hf_from_vocab_merges(directory / "pair")
    hf_pair_special = hf_from_vocab_merges(directory / "pair")
    hf_pair_special.add_special_tokens([HFAddedToken("<|endoftext|>", special=True)])
    hf_json = HFTokenizer.from_file(str(directory / "tokenizer.json"))
    for ours, hf_plain, hf_special in ((Tokenizer.from_pretrained(directory / "pair"), hf_pair, hf_pair_special),
                                       (Tokenizer.from_pretrained(directory / "tokenizer.json"), None, hf_json)):
        assert ours.special_tokens == {"<|endoftext|>": vocab["<|endoftext|>"]}
        if hf_plain:
            assert ours.encode_ordinary(text) == hf_ids(hf_plain, text)
        ids = ours.encode(text, allowed_special="all")
        assert ids == hf_ids(hf_special, text)
        if "<|endoftext|>" not in text:
            assert ours.encode(text) == ids                   # no special token in it: nothing to refuse
        every = ids + [vocab["zzz"], vocab["<pad>"], vocab["<|endoftext|>"]]
        assert ours.decode(every) == hf_special.decode(every, skip_special_tokens=False)


def hf_from_vocab_merges(directory):
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers
    hf = HFTokenizer(models.BPE.from_file(str(directory / "vocab.json"), str(directory / "merges.txt")))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    return hf


def test_save_refuses_special_tokens_the_files_cannot_mark(tmp_path):
    tok = train("abc abc", 256 + 2, special_tokens=["<|endoftext|>", "<pad>"])
    with pytest.raises(ValueError, match=r"cannot mark \['<pad>'\] as special"):
        tok.save(tmp_path)
    with pytest.raises(ValueError, match="'a' is already a token"):
        train("abc", 256 + 2, special_tokens=["a"])


SURROGATES = ["\ud83e\udd17", "\ud83e", "\udd17", "\udd17\ud83e", "\ud800", "\udfff", "\udcff", "\ud800\ud800"]


@settings(max_examples=300)
@given(text=st.lists(st.one_of(st.sampled_from(PIECES + SURROGATES), st.characters(),
                               st.characters(categories=["Cs"])), max_size=20).map("".join))
def test_surrogates_encode_like_tiktoken(gpt2, tiktoken_gpt2, neox, text):
    """A str may hold surrogates, which UTF-8 cannot encode: a pair left from UTF-16 is joined into its
    character, a lone one becomes U+FFFD, as tiktoken does (for every tokenizer: HF's raises instead)."""
    assert gpt2.encode_ordinary(text) == tiktoken_gpt2.encode_ordinary(text)
    assert gpt2.encode(text, allowed_special="all") == tiktoken_gpt2.encode(text, allowed_special="all")
    fixed = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    assert neox.encode(text, allowed_special="all") == neox.encode(fixed, allowed_special="all")


def test_known_surrogate_cases(gpt2):
    assert gpt2.encode("a\ud83e\udd17") == gpt2.encode("a🤗")
    assert gpt2.encode("\ud800x") == gpt2.encode("\ufffdx")
    assert "\ud800" in "".join(gpt2.words("\ud800"))       # the split itself is not where it is fixed
    assert train("ab\ud800 ab\ud800", 256 + 1).merges == train("ab\ufffd ab\ufffd", 256 + 1).merges   # training too


# Training: bpe_fast.learn_merges must make bpe.learn_merges' merges, with work in proportion to the text.
@settings(max_examples=400)
@given(words=st.dictionaries(st.text(alphabet="abcĠ", min_size=1, max_size=40), st.integers(1, 5),
                             min_size=1, max_size=6),
       n_merges=st.integers(0, 60))
def test_fast_training_learns_the_same_merges(words, n_merges):
    assert bpe_fast.learn_merges(words, n_merges) == bpe.learn_merges(words, n_merges)


def test_training_ties_and_a_known_case():
    # "ab", " ba": the three pairs occur once each; of equal counts the smallest pair goes first
    expected = [("a", "b"), ("b", "a"), ("Ġ", "ba")]
    for fast in (True, False):
        assert train("ab ba", 256 + 3, fast=fast).merges == expected
        # "aaaa" twice: a a a a -> aa aa (left to right), so (aa, aa) occurs twice, more than (Ġ, aa), (aa, a)
        assert train("aaaa aaaa aaa", 256 + 2, fast=fast).merges == [("a", "a"), ("aa", "aa")]


def lines_run(fn, *args, **kwargs) -> int:
    """How many lines of bpe.py and bpe_fast.py fn(*args, **kwargs) runs: its work, counted, not timed.
    (Loops in C count as one line, so this measures the Python loops, which is where rescans would be.)"""
    files = {bpe.__file__, bpe_fast.__file__}
    count = 0

    def local(frame, event, arg):
        nonlocal count
        count += event == "line"
        return local
    before = sys.gettrace()
    sys.settrace(lambda frame, event, arg: local if frame.f_code.co_filename in files else None)
    try:
        fn(*args, **kwargs)
    finally:
        sys.settrace(before)
    return count


def test_training_a_long_line_does_work_in_proportion_to_it():
    """A line without spaces is one word: bpe.learn_merges rescans all of it at every merge (100 kB and
    2,000 merges: minutes). bpe_fast.learn_merges visits only the occurrences of the merged pair: the
    lines it runs stay within a constant per character and per merge, however many merges."""
    rng = random.Random(0)
    line = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(4000))
    per_unit = 60                                       # measured: 6-45 lines per character + merge
    assert lines_run(train, line, 256 + 1000) <= per_unit * (len(line) + 1000)
    assert lines_run(train, line[:400], 256 + 100, fast=False) > per_unit * (400 + 100)   # the counter sees it
    assert train(line[:1500], 256 + 150).merges == train(line[:1500], 256 + 150, fast=False).merges


def test_cli_without_the_hub_fails_at_once(monkeypatch, capsys):
    """Offline and without ../shared, `python bpe.py` asks the Hub once, then only the local cache (it
    took 71 s of retries), and says in one line where a tokenizer that works offline is."""
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError
    calls = []

    def no_network(*args, **kwargs):
        calls.append(kwargs)
        raise (ConnectionError if "local_files_only" not in kwargs else LocalEntryNotFoundError)("no network")
    monkeypatch.setattr(huggingface_hub, "model_info", no_network)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_network)
    monkeypatch.setattr(bpe, "DEFAULT_TOKENIZER", Path("/nonexistent"))
    with pytest.raises(SystemExit) as exit_:
        bpe.main(["Hello"])
    message = str(exit_.value.code)
    assert message.startswith("error: could not get gpt2 from the Hugging Face Hub") and "\n" not in message
    assert "models/pydoc-gpt2" in message
    assert "local_files_only" not in calls[0] and all(c.get("local_files_only") for c in calls[1:])  # 1 request
    bpe.main(["Hello", "--tokenizer", str(bpe.SHIPPED_TOKENIZER)])                 # ... which works offline
    assert "decoded: 'Hello'" in capsys.readouterr().out
