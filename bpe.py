"""Byte-level BPE, from scratch: the tokenizer of GPT-2 and GPT-NeoX (Pythia), id for id.

A language model reads integers, not text. A tokenizer turns text into a list of token ids and back.
Byte-level BPE (Byte Pair Encoding), the scheme GPT-2 introduced and GPT-NeoX kept, works in four steps:

1. Bytes. The text is encoded as UTF-8, so any string whatsoever is a sequence of the 256 possible
   byte values. Nothing is ever "unknown": an emoji or a rare CJK character is just several bytes.
2. Words. A regex cuts the text into words first (" world", "'s", "123", "!!", "\n\n"), and merges
   never cross a word boundary. This keeps tokens meaningful (no "dog." vs "dog!" vs "dog?" tokens)
   and lets us cache the result of each word.
3. Merges. Training learned an ordered list of merges, e.g. rank 0: ("Ġ", "t"), rank 1: ("Ġ", "a"),
   rank 2: ("h", "e") ... Encoding a word starts from its single bytes and repeatedly merges the
   adjacent pair with the lowest rank (the one learned first) until no adjacent pair is in the list.
   Each final piece is a token of the vocabulary: its id is the output.
4. Decoding is the easy direction: look up the bytes of every id, concatenate, decode UTF-8. A slice
   of ids may end in the middle of a character, hence `errors="replace"` and the StreamDecoder.

Real tokenizer files add two things: special tokens such as "<|endoftext|>" (one id for a string that
the text itself must not be able to produce by accident, see `Tokenizer.encode`) and, in GPT-NeoX,
"added tokens" for runs of spaces that are cut out of the text before the regex runs.

Usage:
    tok = Tokenizer.from_pretrained("../shared/tokenizers/gpt2")   # or "gpt2", "EleutherAI/pythia-160m"
    tok.encode("Hello world")                   # [15496, 995]
    tok.decode([15496, 995])                    # 'Hello world'
    python bpe.py "Hello world"                 # teaching mode: shows every merge
"""
import argparse
import codecs
import json
import re
import sys
import unicodedata
from collections import Counter
from itertools import chain, repeat
from pathlib import Path
from typing import NamedTuple

import regex  # like `re`, plus the \p{L} (any letter) and \p{N} (any number) classes the split pattern uses


# ------------------------------------------------------------------------------------------------------
# 1. Bytes as printable characters
# ------------------------------------------------------------------------------------------------------
def bytes_to_unicode() -> dict[int, str]:
    """The table that gives each of the 256 byte values a printable unicode character.

    Why: the vocabulary and merges files store tokens as text, one merge per line as "left right". A raw
    byte such as 0x20 (space) or 0x0A (newline) would break that format and be invisible when printed.
    So every byte is written as a visible character: bytes that are already printable and not a space
    keep their own character ('a' is 'a'), the other 68 (control bytes, space, 0x7F-0xA0, 0xAD) are
    moved to the characters 256, 257, ... in order. That is why GPT-2 tokens look like "Ġworld": 'Ġ'
    is chr(256 + 32), the stand-in for the space byte 0x20; 'Ċ' is the newline.
    This table is GPT-2's, byte for byte; every byte-level BPE file on the Hub uses it.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shifted)
            shifted += 1
    return table


BYTE_TO_CHAR = bytes_to_unicode()                             # 0x20 -> 'Ġ'
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}        # 'Ġ' -> 0x20
_BYTES_AS_CHARS = [BYTE_TO_CHAR[b] for b in range(256)]       # a list is the fastest lookup by byte value


def to_printable(text: str) -> str:
    """ "Hi there" -> "HiĠthere": the UTF-8 bytes of `text`, one printable character per byte."""
    return "".join([_BYTES_AS_CHARS[b] for b in text.encode("utf-8")])


def token_bytes(token: str) -> bytes:
    """The bytes a vocabulary entry stands for: "Ġworld" -> b" world". An entry with a character outside
    the table (an added token such as a run of real spaces) stands for its own UTF-8, as in HF tokenizers."""
    if all(c in CHAR_TO_BYTE for c in token):
        return bytes(CHAR_TO_BYTE[c] for c in token)
    return token.encode("utf-8")


# ------------------------------------------------------------------------------------------------------
# 2. Words: the split pattern
# ------------------------------------------------------------------------------------------------------
# GPT-2's pre-tokenization regex, also used by GPT-NeoX (HF's ByteLevel pre-tokenizer). Tried left to right
# at each position, the first alternative that matches wins:
#   's|'t|'re|'ve|'m|'ll|'d    English contractions become their own words: "it's" -> "it", "'s"
#    ?\p{L}+                   letters, with at most one leading space: " world" (so the space is part of
#                              the next word and "world" and " world" are different tokens)
#    ?\p{N}+                   digits (any script), same rule
#    ?[^\s\p{L}\p{N}]+         punctuation and symbols runs: " (!", "...", "🤗"
#   \s+(?!\S)                  whitespace, but leave the last space for the following word: "a   b" ->
#                              "a", "  ", " b" (the lookahead refuses to end right before a non-space)
#   \s+                        whitespace at the end of the text
GPT2_SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


# ------------------------------------------------------------------------------------------------------
# 3. Merges: BPE on one word
# ------------------------------------------------------------------------------------------------------
NO_MERGE = 1 << 62   # the "rank" of a pair that is not in the merges list: larger than any real rank


def bpe(word: str, ranks: dict[tuple[str, str], int], trace: list | None = None) -> list[str]:
    """Split `word` (printable bytes, see to_printable) into tokens: start from single bytes, merge the
    adjacent pair of lowest rank, again and again, until no adjacent pair is a merge.

        "Ġlower": Ġ l o w e r -> Ġ l ow e r -> Ġ low e r -> Ġlow e r -> Ġlow er -> Ġlower

    Ties (the same pair twice) merge the leftmost first, as in GPT-2's encoder.py and HF tokenizers.
    With `trace` (a list), every step is appended as (left, right, rank, parts after the merge).
    """
    parts = list(word)
    while len(parts) > 1:
        # The rank of every adjacent pair. map/zip/min/index run in C: a few µs per merge even for the
        # long words of CJK text (a whole clause is one \p{L}+ word), where a Python loop was 5x slower.
        pair_ranks = list(map(ranks.get, zip(parts, parts[1:]), repeat(NO_MERGE)))
        rank = min(pair_ranks)
        if rank == NO_MERGE:
            break
        i = pair_ranks.index(rank)                     # the leftmost pair with that rank
        left, right = parts[i], parts[i + 1]
        parts[i:i + 2] = [left + right]
        if trace is not None:
            trace.append((left, right, rank, list(parts)))
    return parts


# ------------------------------------------------------------------------------------------------------
# 4. Added and special tokens: cut out of the text before the split pattern runs
# ------------------------------------------------------------------------------------------------------
class AddedToken(NamedTuple):
    """An entry of tokenizer.json's "added_tokens". `special` ones ("<|endoftext|>") are control tokens
    that `encode` refuses to produce from plain text unless allowed; the others (NeoX's runs of spaces)
    are ordinary vocabulary that is matched in the text before BPE. The flags are HF's:
    lstrip/rstrip also swallow the whitespace left/right of the match, single_word matches only when
    no word character touches it, normalized matches in the normalized (e.g. NFC) text."""
    content: str
    id: int
    special: bool = True
    lstrip: bool = False
    rstrip: bool = False
    single_word: bool = False
    normalized: bool = False


# Unicode's White_Space property (what \s means in the Rust regex of HF tokenizers; str.isspace()
# would add the separators \x1c-\x1f).
_WHITE_SPACE = frozenset("\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007"
                         "\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")
_WORD_CHAR = regex.compile(r"\w")


def split_on_added_tokens(text: str, pattern: re.Pattern | None,
                          tokens: dict[str, AddedToken]) -> list[tuple[str, int | None]]:
    """Cut `text` into pieces: (piece, None) for plain text, (matched text, id) for an added token.

    `pattern` matches any of the `tokens` (keyed by content), longest first, so at each position the
    longest token wins and the leftmost match wins overall: HF tokenizers' leftmost-longest matching.
    This is a line-by-line port of `AddedVocabulary::find_matches` in HF tokenizers.
        "a<|endoftext|>b" -> [("a", None), ("<|endoftext|>", 0), ("b", None)]
    """
    if pattern is None:
        return [(text, None)] if text else []
    pieces, start = [], 0
    for match in pattern.finditer(text):
        token = tokens[match.group()]
        begin, end = match.span()
        if token.single_word and ((begin > 0 and _WORD_CHAR.match(text[begin - 1]))
                                  or (end < len(text) and _WORD_CHAR.match(text[end]))):
            continue
        if token.lstrip:
            while begin > 0 and text[begin - 1] in _WHITE_SPACE:
                begin -= 1
            begin = max(begin, start)      # spaces an earlier match already took stay with it
        if token.rstrip:
            while end < len(text) and text[end] in _WHITE_SPACE:
                end += 1
        if begin > start:
            pieces.append((text[start:begin], None))
        pieces.append((text[begin:end], token.id))
        start = end
    if start < len(text):
        pieces.append((text[start:], None))
    return pieces


def _longest_first_pattern(contents) -> re.Pattern | None:
    """One regex matching any of `contents`; alternatives longest first give leftmost-longest matches."""
    contents = sorted(set(contents), key=len, reverse=True)
    return re.compile("|".join(map(re.escape, contents))) if contents else None


def _read_merges(lines) -> list[tuple[str, str]]:
    """merges.txt / vocab.bpe lines ("Ġ t"), or tokenizer.json's list of "Ġ t" or ["Ġ", "t"]."""
    merges = []
    for line in lines:
        if isinstance(line, str):
            if line.startswith("#version") or not line.strip():
                continue
            line = line.rstrip("\r\n").split(" ")
        if len(line) != 2:
            raise ValueError(f"a merge must be two tokens separated by one space, got {line!r}")
        merges.append(tuple(line))
    return merges


# ------------------------------------------------------------------------------------------------------
# 5. The tokenizer
# ------------------------------------------------------------------------------------------------------
# The word cache maps a word (" world") to its ids. Text follows Zipf's law: a few thousand words make up
# most of any text, so after a warm-up almost every word is a dict lookup and BPE runs only on new words.
# It is bounded so that encoding a huge corpus cannot eat the memory: at ~200 bytes a word, 100k words
# are ~20 MB; when full it is simply emptied (simpler than LRU, and it refills with the frequent words
# within a few pages of text).
CACHE_MAX_WORDS = 100_000

NORMALIZERS = ("NFC", "NFD", "NFKC", "NFKD")   # the tokenizer.json normalizers this file implements


class Tokenizer:
    """A byte-level BPE tokenizer: vocabulary (token -> id), ranked merges, and added tokens.

    Build one with `Tokenizer.from_pretrained(dir_or_hub_name)` or a per-format constructor. Tokens are
    written as printable characters (see bytes_to_unicode), as in the files.
    """

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]], added_tokens=(), *,
                 normalizer: str | None = None, add_prefix_space: bool = False, use_regex: bool = True,
                 ignore_merges: bool = False):
        if normalizer is not None and normalizer not in NORMALIZERS:
            raise ValueError(f"unsupported normalizer {normalizer!r}: bpe.py implements {NORMALIZERS} or none")
        for left, right in merges:
            for token in (left, right, left + right):
                if token not in vocab:
                    raise ValueError(f"merge {left!r} {right!r}: {token!r} is not in the vocabulary")
        self.vocab = vocab
        self.merges = merges
        self.merge_ranks = {pair: rank for rank, pair in reversed(list(enumerate(merges)))}  # first wins
        self.added_tokens = list(added_tokens)
        self.special_tokens = {t.content: t.id for t in self.added_tokens if t.special}
        self.eos_token_id = self.special_tokens.get("<|endoftext|>")
        self.normalizer = normalizer
        self.add_prefix_space = add_prefix_space      # " " in front of each piece of text, as RoBERTa does
        self.use_regex = use_regex                    # False: the whole piece is one word
        self.ignore_merges = ignore_merges            # True: a word that is a token is taken whole (Llama 3)
        self.split_pattern = regex.compile(GPT2_SPLIT_PATTERN)
        # decoding: the bytes of every id (added tokens override vocab entries with the same id)
        self.id_to_bytes = {i: token_bytes(t) for t, i in vocab.items()}
        self.id_to_bytes.update({t.id: t.content.encode("utf-8") for t in self.added_tokens})
        self.vocab_size = max(self.id_to_bytes) + 1   # the number of ids, i.e. the embedding rows needed
        # A byte with no vocab entry is dropped from words, as HF does without an unk token. (NeoX has no
        # entry for 0xC0, 0xC1, 0xF5-0xFF: bytes that never occur in UTF-8, so nothing is lost.)
        self._drop_bytes = str.maketrans({c: None for c in BYTE_TO_CHAR.values() if c not in vocab})
        self._cache: dict[str, tuple[int, ...]] = {}
        self._added_patterns: dict[frozenset, tuple] = {}

    # --- loading -------------------------------------------------------------------------------------
    @classmethod
    def from_tokenizer_json(cls, path) -> "Tokenizer":
        """HF tokenizers' single file: a BPE model, added tokens, normalizer and ByteLevel options."""
        config = json.loads(Path(path).read_text(encoding="utf-8"))
        model = config.get("model") or {}
        if model.get("type", "BPE") != "BPE" or "merges" not in model:
            raise ValueError(f"{path}: model type {model.get('type')!r} is not BPE; bpe.py reads BPE only")
        for option in ("dropout", "unk_token", "continuing_subword_prefix", "end_of_word_suffix"):
            if model.get(option):
                raise ValueError(f"{path}: BPE option {option}={model[option]!r} is not supported by bpe.py")
        if model.get("byte_fallback"):
            raise ValueError(f"{path}: byte_fallback BPE (sentencepiece style) is not byte-level BPE")
        pre = config.get("pre_tokenizer") or {}
        if pre.get("type") != "ByteLevel":
            raise ValueError(f"{path}: pre_tokenizer {pre.get('type')!r} is not ByteLevel; bpe.py reads "
                             "byte-level BPE (GPT-2, GPT-NeoX) only")
        normalizer = config.get("normalizer")
        if normalizer is not None:
            normalizer = normalizer.get("type")
            if normalizer not in NORMALIZERS:
                raise ValueError(f"{path}: normalizer {normalizer!r} is not supported (only {NORMALIZERS})")
        added = [AddedToken(t["content"], t["id"], t.get("special", False), t.get("lstrip", False),
                            t.get("rstrip", False), t.get("single_word", False), t.get("normalized", False))
                 for t in config.get("added_tokens") or []]
        return cls(model["vocab"], _read_merges(model["merges"]), added, normalizer=normalizer,
                   add_prefix_space=pre.get("add_prefix_space", False), use_regex=pre.get("use_regex", True),
                   ignore_merges=model.get("ignore_merges", False))
        # (trim_offsets only changes character offsets, which this file does not compute.)

    @classmethod
    def from_vocab_merges(cls, vocab_json, merges_txt) -> "Tokenizer":
        """The Hub's GPT-2 format: vocab.json ({token: id}) + merges.txt (a header, then "left right" lines).

        These files have no list of special tokens: a vocabulary entry that is neither a single byte nor
        the result of a merge can only be a special token (GPT-2's only one is "<|endoftext|>", id 50256).
        """
        vocab = json.loads(Path(vocab_json).read_text(encoding="utf-8"))
        merges = _read_merges(Path(merges_txt).read_text(encoding="utf-8").splitlines())
        reachable = set(BYTE_TO_CHAR.values()) | {left + right for left, right in merges}
        specials = [AddedToken(t, i) for t, i in vocab.items() if t not in reachable]
        return cls(vocab, merges, specials)

    @classmethod
    def from_encoder_bpe(cls, encoder_json, vocab_bpe) -> "Tokenizer":
        """OpenAI's original GPT-2 files: encoder.json is vocab.json and vocab.bpe is merges.txt, by
        other names (same content, only the header line of vocab.bpe differs)."""
        return cls.from_vocab_merges(encoder_json, vocab_bpe)

    @classmethod
    def from_dir(cls, directory) -> "Tokenizer":
        """A directory holding tokenizer.json, else vocab.json + merges.txt, else encoder.json + vocab.bpe."""
        directory = Path(directory)
        for files, load in FORMATS:
            if all((directory / f).is_file() for f in files):
                return load(cls, *(directory / f for f in files))
        raise FileNotFoundError(f"no tokenizer files in {directory}: looked for "
                                + ", or ".join(" + ".join(files) for files, _ in FORMATS))

    @classmethod
    def from_pretrained(cls, name_or_dir, *, revision: str | None = None) -> "Tokenizer":
        """A local directory (or tokenizer.json file), else a Hub repo id such as "gpt2",
        "openai-community/gpt2" or "EleutherAI/pythia-160m", downloaded with huggingface_hub."""
        path = Path(name_or_dir).expanduser()
        if path.is_dir():
            return cls.from_dir(path)
        if path.is_file() and path.suffix == ".json":
            return cls.from_tokenizer_json(path)
        name = str(name_or_dir)
        if name.startswith((".", "/", "~")) or name.count("/") > 1 or path.exists():
            raise FileNotFoundError(f"tokenizer directory {name} does not exist")
        return cls._from_hub(name, revision)

    @classmethod
    def _from_hub(cls, repo_id: str, revision: str | None) -> "Tokenizer":
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

        def fetch(filename):
            return hf_hub_download(repo_id, filename, revision=revision)

        try:
            for files, load in FORMATS:
                try:
                    return load(cls, *map(fetch, files))
                except LocalEntryNotFoundError:
                    raise                            # offline and not cached: give up below
                except EntryNotFoundError:
                    continue                         # the repo has not this format: try the next one
        except Exception as error:               # no network, no such repo, gated repo, ...
            raise OSError(f"could not get a tokenizer for {repo_id!r} from the Hugging Face Hub "
                          f"({type(error).__name__}: {error}). Pass a local directory holding tokenizer.json, "
                          "or vocab.json + merges.txt, or encoder.json + vocab.bpe") from error
        raise FileNotFoundError(f"Hub repo {repo_id!r} has none of: "
                                + ", or ".join(" + ".join(files) for files, _ in FORMATS))

    def save(self, directory) -> None:
        """Write vocab.json + merges.txt (HF's format, loadable by `tokenizers.models.BPE.from_file`)."""
        if self.normalizer or self.add_prefix_space or not self.use_regex or self.ignore_merges or any(
                not t.special or t.lstrip or t.rstrip or t.single_word for t in self.added_tokens):
            raise ValueError("vocab.json + merges.txt cannot hold this tokenizer's normalizer, ByteLevel "
                             "options or non-special added tokens: save its tokenizer.json instead")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        vocab = dict(sorted({**self.vocab, **self.special_tokens}.items(), key=lambda item: item[1]))
        (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        lines = ["#version: 0.2"] + [f"{left} {right}" for left, right in self.merges]
        (directory / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")

    def __repr__(self):
        return (f"Tokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, "
                f"special_tokens={self.special_tokens})")

    # --- encoding ------------------------------------------------------------------------------------
    def encode(self, text: str, *, allowed_special=frozenset()) -> list[int]:
        """Text -> ids. A special token's string in `text` (say "<|endoftext|>" in a scraped web page)
        raises, unless `allowed_special` (a set of them, or "all") lets it become its special id. This is
        tiktoken's rule: a user's text must not be able to inject control tokens by accident.
        Non-special added tokens (NeoX's runs of spaces) are always matched: they are ordinary vocabulary.
        With allowed_special="all" this gives the ids of HF's `encode(text, add_special_tokens=False)`."""
        allowed = self._check_allowed(allowed_special)
        disallowed = self.special_tokens.keys() - allowed
        if disallowed and (found := self._special_pattern(disallowed).search(text)):
            raise ValueError(f"the text contains the special token {found.group()!r}. To encode it as the "
                             f"special token, pass allowed_special={{{found.group()!r}}} (or \"all\"); to "
                             "encode it as plain text, use encode_ordinary(text)")
        return self._encode(text, allowed)

    def encode_ordinary(self, text: str) -> list[int]:
        """Text -> ids, special token strings encoded as the plain text they are: "<|endoftext|>" -> 6 ids."""
        return self._encode(text, frozenset())

    def _check_allowed(self, allowed_special) -> frozenset:
        if allowed_special == "all":
            return frozenset(self.special_tokens)
        if isinstance(allowed_special, str) or not all(isinstance(s, str) for s in allowed_special):
            raise TypeError(f"allowed_special must be \"all\" or a set of special token strings, "
                            f"got {allowed_special!r}")
        if unknown := set(allowed_special) - self.special_tokens.keys():
            raise ValueError(f"not special tokens of this tokenizer: {sorted(unknown)}; "
                             f"its special tokens are {sorted(self.special_tokens)}")
        return frozenset(allowed_special)

    def _special_pattern(self, specials) -> re.Pattern:
        return _longest_first_pattern(specials)

    def _encode(self, text: str, specials: frozenset) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, got {type(text).__name__}")
        ids = []
        for piece, token_id in self.pieces(text, specials):
            if token_id is None:
                ids += self._encode_words(piece)
            else:
                ids.append(token_id)
        return ids

    def pieces(self, text: str, specials=frozenset()) -> list[tuple[str, int | None]]:
        """Cut out the added tokens as HF tokenizers does: first those matched in the raw text (special
        tokens), then the text between them is normalized (NFC) and the normalized ones (NeoX's runs of
        spaces) are cut out of it. Returns (text to BPE, None) and (token text, id) pieces, in order."""
        raw, normalized, tokens = self._added_token_patterns(specials)
        if raw is None and normalized is None and self.normalizer is None:
            return [(text, None)] if text else []      # the common case: GPT-2 text without specials
        pieces = []
        for piece, token_id in split_on_added_tokens(text, raw, tokens):
            if token_id is not None:
                pieces.append((piece, token_id))
                continue
            if self.normalizer:
                piece = unicodedata.normalize(self.normalizer, piece)
            pieces += split_on_added_tokens(piece, normalized, tokens)
        return pieces

    def _added_token_patterns(self, specials: frozenset):
        """(pattern for the raw text, pattern for the normalized text, {content: token}) of the
        non-special added tokens plus the allowed `specials`; built once per set of specials."""
        if specials not in self._added_patterns:
            active = [t for t in self.added_tokens if not t.special or t.content in specials]
            by_content = {}
            for t in active:
                key = unicodedata.normalize(self.normalizer, t.content) if t.normalized and self.normalizer \
                    else t.content
                by_content.setdefault(key, t)
            raw = _longest_first_pattern(t.content for t in active if not t.normalized)
            normalized = _longest_first_pattern(k for k, t in by_content.items() if t.normalized)
            self._added_patterns[specials] = (raw, normalized, by_content)
        return self._added_patterns[specials]

    def _encode_words(self, text: str) -> list[int]:
        """Ids of text free of added tokens: split into words, each word's ids from the cache or BPE."""
        if self.add_prefix_space and not text.startswith(" "):
            text = " " + text
        words = self.split_pattern.findall(text) if self.use_regex else [text]
        cache = self._cache
        if len(cache) > CACHE_MAX_WORDS:
            cache.clear()
        for word in set(words).difference(cache):     # the words never seen before
            cache[word] = self._word_ids(word)
        return list(chain.from_iterable(map(cache.__getitem__, words)))

    def _word_ids(self, word: str) -> tuple[int, ...]:
        """The ids of one word, by BPE."""
        chars = to_printable(word).translate(self._drop_bytes)
        if self.ignore_merges and chars in self.vocab:
            return (self.vocab[chars],)
        return tuple(self.vocab[token] for token in bpe(chars, self.merge_ranks))

    # --- decoding ------------------------------------------------------------------------------------
    def decode_bytes(self, ids) -> bytes:
        """Ids -> the bytes they stand for (which may end in the middle of a UTF-8 character)."""
        try:
            return b"".join(map(self.id_to_bytes.__getitem__, ids))
        except (KeyError, TypeError):
            pass
        for i in ids:                                  # find the culprit for a clear message
            if not isinstance(i, int) and not hasattr(i, "__index__"):
                raise TypeError(f"token ids must be ints, got {type(i).__name__} {i!r} "
                                "(a tensor? pass ids.tolist())")
            if int(i) not in self.id_to_bytes:
                raise ValueError(f"unknown token id {i}: this tokenizer has ids 0..{self.vocab_size - 1}")
        raise TypeError(f"ids must be an iterable of ints, got {type(ids).__name__}")

    def decode(self, ids) -> str:
        """Ids -> text. Bytes that are not valid UTF-8 (ids cut in the middle of a character, or random
        ids) become U+FFFD '�', as in tiktoken and HF tokenizers."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def token_strings(self, ids) -> list[str]:
        """Ids as their vocabulary entries ("Ġworld"), for display."""
        inverse = {i: t for t, i in self.vocab.items()} | {t.id: t.content for t in self.added_tokens}
        return [inverse[i] for i in ids]


# The file formats, in the order a directory is searched: (file names, constructor).
FORMATS = [
    (("tokenizer.json",), Tokenizer.from_tokenizer_json.__func__),
    (("vocab.json", "merges.txt"), Tokenizer.from_vocab_merges.__func__),
    (("encoder.json", "vocab.bpe"), Tokenizer.from_encoder_bpe.__func__),
]
