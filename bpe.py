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

Reading order: parts 1-7 are the whole tokenizer, simple and exact (the lesson: bytes, words, merges,
training, the Tokenizer, streaming, the teaching mode). Part 8 reads and writes the tokenizer files; the
appendix lists Unicode's letters and numbers. Speed lives apart, in bpe_fast.py, which builds on this
file and is never imported by it: `bpe_fast.Tokenizer` and `bpe_fast.train` are this file's with its
speed-ups (`fast=False` turns them off); both give the same ids, equal to tiktoken's for GPT-2 and HF
tokenizers' for GPT-NeoX (tests/test_bpe.py). Figures: bench/bpe.py.

Usage:
    tok = Tokenizer.from_pretrained("models/gpt2-tokenizer")       # or "gpt2", "EleutherAI/pythia-160m"
    tok.encode("Hello world")                   # [15496, 995]
    tok.decode([15496, 995])                    # 'Hello world'
    python bpe.py "Hello world"                 # teaching mode: shows every merge
"""
import argparse
import codecs
import json
import numbers
import os
import re
import sys
import unicodedata
from collections import Counter
from itertools import chain, pairwise, repeat
from pathlib import Path
from typing import NamedTuple

import regex  # like `re`, plus \w as Unicode defines it (single_word added tokens)

import hub  # the Hub's files and JSON (no torch)


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
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shifted)
            shifted += 1
    return table


BYTE_TO_CHAR = bytes_to_unicode()                             # 0x20 -> 'Ġ'
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}        # 'Ġ' -> 0x20
_LATIN1_TO_PRINTABLE = str.maketrans({chr(b): c for b, c in BYTE_TO_CHAR.items()})
_PRINTABLE_TO_LATIN1 = str.maketrans({c: chr(b) for b, c in BYTE_TO_CHAR.items()})
_PRINTABLE = frozenset(CHAR_TO_BYTE)


def to_printable(text: str) -> str:
    """ "Hi there" -> "HiĠthere": the UTF-8 bytes of `text`, one printable character per byte.
    (Decoding bytes as latin-1 gives the character with the same number, chr(byte), for each byte; a
    translate table then swaps in the printable stand-ins. Same as "".join(BYTE_TO_CHAR[b] for b in
    text.encode()), only faster.)"""
    return text.encode("utf-8").decode("latin-1").translate(_LATIN1_TO_PRINTABLE)


def token_bytes(token: str) -> bytes:
    """The bytes a vocabulary entry stands for: "Ġworld" -> b" world". An entry with a character outside
    the table (an added token such as a run of real spaces) stands for its own UTF-8, as in HF tokenizers."""
    if _PRINTABLE.issuperset(token):
        return token.translate(_PRINTABLE_TO_LATIN1).encode("latin-1")    # to_printable, backwards
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

# Which characters are letters (\p{L}) and numbers (\p{N}) is Unicode's data, and every Unicode version
# adds some. The reference tokenizers (the Rust regex engines of tiktoken and HF tokenizers) use Unicode
# 16.0's tables, the `regex` module the newest (17.0 calls U+18CD6 a letter, 16.0 does not, so "\U00018cd6's"
# would split differently). So this file spells the classes out from a pinned table (the appendix, checked
# against both references on all 0x110000 code points by the tests) and runs the pattern with the standard
# library's `re`: the same words on every machine, whatever Unicode the installed libraries know.
# \s is Unicode's White_Space property (25 characters, unchanged since Unicode 6; str.isspace() would add
# the separators \x1c-\x1f).
WHITE_SPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"   # a [] class


def split_pattern(letters: str, numbers: str) -> str:
    """GPT2_SPLIT_PATTERN with the classes written out: `letters`, `numbers` go inside [...]."""
    s, L, N = WHITE_SPACE, letters, numbers
    return rf"""'s|'t|'re|'ve|'m|'ll|'d| ?[{L}]+| ?[{N}]+| ?[^{s}{L}{N}]+|[{s}]+(?![^{s}])|[{s}]+"""


def split_words(text: str) -> list[str]:
    """ "Hello world! It's" -> ["Hello", " world", "!", " It", "'s"]. (SPLIT is compiled at the end of
    this file, after the tables of the appendix.)"""
    return SPLIT.findall(text)


# ------------------------------------------------------------------------------------------------------
# 3. Merges: BPE on one word
# ------------------------------------------------------------------------------------------------------
NO_MERGE = 1 << 62   # the "rank" of a pair that is not in the merges list: larger than any real rank


def bpe(word: str, ranks: dict[tuple[str, str], int], trace: list | None = None) -> list[str]:
    """Split `word` (printable bytes, see to_printable) into tokens: start from single bytes, merge the
    adjacent pair of lowest rank, again and again, until no adjacent pair is a merge.

        "Ġlower": Ġ l o w e r -> Ġ l ow e r -> Ġ low e r -> Ġlow e r -> Ġlow er -> Ġlower

    Of equal pairs the leftmost merges first, as in GPT-2's encoder.py and HF tokenizers.
    With `trace` (a list), every step is appended as (left, right, rank, parts after the merge).
    Each merge scans all pairs for the lowest rank, so a word of n bytes costs up to n² steps: nothing for
    a word, too much for a megabyte without spaces (bpe_fast.bpe_heap does the same in n log n).
    """
    get = ranks.get                                    # a local name: the loop below is the hot path
    parts = list(word)
    # pair_ranks[i] is the rank of the pair (parts[i], parts[i + 1]); NO_MERGE if it is not a merge
    pair_ranks = list(map(get, pairwise(parts), repeat(NO_MERGE)))
    n_pairs = len(pair_ranks)
    while n_pairs:
        rank = min(pair_ranks)
        if rank == NO_MERGE:
            break
        i = pair_ranks.index(rank)                     # the leftmost pair with the lowest rank
        left, right = parts[i], parts.pop(i + 1)
        parts[i] = merged = left + right
        # Only the two pairs around the new token changed: update them instead of recomputing all
        # ranks (2x faster on a typical word, more on long words).
        del pair_ranks[i]
        n_pairs -= 1
        if i > 0:
            pair_ranks[i - 1] = get((parts[i - 1], merged), NO_MERGE)
        if i < n_pairs:
            pair_ranks[i] = get((merged, parts[i + 1]), NO_MERGE)
        if trace is not None:
            trace.append((left, right, rank, list(parts)))
    return parts


# ------------------------------------------------------------------------------------------------------
# 4. Training: learn merges from a text
# ------------------------------------------------------------------------------------------------------
def train(text: str, vocab_size: int, *, special_tokens=(), fast: bool = True, cls=None) -> "Tokenizer":
    """Learn a byte-level BPE of `vocab_size` ids from `text`: ids 0-255 are the bytes, then one id per
    merge, then the `special_tokens`. Save it with `.save(dir)` (vocab.json + merges.txt).

    Training is the mirror image of encoding: split the text into words with the same pattern, start
    with every word as single bytes, and repeatedly merge the most frequent adjacent pair (counted over
    all words, weighted by how often each word occurs). The merges, in the order learned, are the ranks.
    cls: the Tokenizer class to return (bpe_fast.train passes its own, whose speed-ups learn the same
    merges in n log n; fast=False runs this file's learn_merges).
    """
    cls = cls or Tokenizer
    n_merges = vocab_size - 256 - len(special_tokens)
    if n_merges < 0:
        raise ValueError(f"vocab_size {vocab_size} < 256 bytes + {len(special_tokens)} special tokens")
    text = check_text(text)                                        # (part 8: surrogates as encode has them)
    fast_train = cls.SPEED_UPS if fast else None                   # bpe_fast.py's, or None (this file's)
    words = fast_train.split_words(text) if fast_train else split_words(text)
    word_counts = {to_printable(w): n for w, n in Counter(words).items()}      # "Ġworld": 12, ...
    merges = (fast_train.learn_merges if fast_train else learn_merges)(word_counts, n_merges)
    vocab = {BYTE_TO_CHAR[b]: b for b in range(256)}
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))      # (two merges may make one token: (a, bc), (ab, c))
    for special in special_tokens:
        if special in vocab:
            raise ValueError(f"special token {special!r} is already a token of the vocabulary")
        vocab[special] = len(vocab)
    return cls(vocab, merges, [AddedToken(s, vocab[s]) for s in special_tokens], fast=fast)


def learn_merges(word_counts: dict[str, int], n_merges: int) -> list[tuple[str, str]]:
    """Up to `n_merges` merges learned from {word (printable bytes): how often it occurs}.

    Pair counts are updated only for the words that contain the merged pair, not recounted from scratch.
    Still, each merge rescans every word that holds the pair and every pair for the most frequent one:
    fine for the words of prose (short, repeating), quadratic for a long line without spaces (a word of
    100 kB is rescanned at every merge). bpe_fast.learn_merges makes the same merges in n log n.
    """
    words = [list(w) for w in word_counts]                    # each distinct word as its list of symbols
    counts = list(word_counts.values())
    pair_counts: Counter = Counter()                          # (left, right) -> occurrences in the text
    where: dict[tuple[str, str], set[int]] = {}               # (left, right) -> the words that contain it
    for w, (symbols, n) in enumerate(zip(words, counts)):
        for pair in pairwise(symbols):
            pair_counts[pair] += n
            where.setdefault(pair, set()).add(w)

    merges = []
    while len(merges) < n_merges and pair_counts:
        # the most frequent pair; of equal counts the smallest (a rule that does not depend on the order
        # in which words or pairs were seen, so that bpe_fast's heap can follow it exactly)
        best = min(pair_counts, key=lambda pair: (-pair_counts[pair], pair))
        merges.append(best)
        for w in where.pop(best):
            symbols, n = words[w], counts[w]
            for pair in pairwise(symbols):               # forget the word's old pairs ...
                pair_counts[pair] -= n
            symbols[:] = _merge_pair(symbols, best)
            for pair in pairwise(symbols):               # ... and count its new ones
                pair_counts[pair] += n
                where.setdefault(pair, set()).add(w)
        pair_counts = +pair_counts                                # drop pairs whose count fell to zero
    return merges


def _merge_pair(symbols: list[str], pair: tuple[str, str]) -> list[str]:
    """Every occurrence of `pair` in `symbols` merged, left to right: (a a a) with (a, a) -> (aa a)."""
    merged, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            merged.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            merged.append(symbols[i])
            i += 1
    return merged


# ------------------------------------------------------------------------------------------------------
# 5. The tokenizer: added and special tokens, the word cache, encode and decode
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


def _longest_first_pattern(contents) -> re.Pattern | None:
    """One regex matching any of `contents`, the longest at each position: a trie, so that matching at a
    position walks one path of it ("<a>", "<ab>" -> "<a(?:b)?>": greedy, the longer first). The plain
    alternation, longest first, tries every token at every position: 100,000 added tokens made it slow."""
    contents = set(contents)
    if not contents:
        return None
    trie = {}
    for content in contents:
        node = trie
        for char in content:
            node = node.setdefault(char, {})
        node[""] = {}  # a token ends here
    try:
        return re.compile(_trie_regex(trie))
    except RecursionError:  # tokens prefixes of each other hundreds deep: the plain alternation, slower
        return re.compile("|".join(map(re.escape, sorted(contents, key=len, reverse=True))))


def _trie_regex(node) -> str:
    """The regex of a trie node {char: child} ("" marks a token's end): one alternative per next character,
    a run with no branch written as one string, the whole optional where a token ends here."""
    alternatives = []
    for char, child in sorted(node.items()):
        if not char:
            continue
        run = re.escape(char)
        while len(child) == 1 and "" not in child:  # one way on: a literal run
            (char, child), = child.items()
            run += re.escape(char)
        alternatives.append(run if list(child) == [""] else run + _trie_regex(child))
    if not alternatives:
        return ""
    group = "(?:" + "|".join(alternatives) + ")"
    return group + "?" if "" in node else group


# The word cache maps a word (" world") to its ids. Text follows Zipf's law: a few thousand words make up
# most of any text, so after a warm-up almost every word is a dict lookup and BPE runs only on new words.
# It is bounded so that encoding a huge corpus cannot eat the memory: at ~200 bytes a word, 100k words
# are ~20 MB; when full it is simply emptied (simpler than LRU, and it refills with the frequent words
# within a few pages of text).
CACHE_MAX_WORDS = 100_000

NORMALIZERS = ("NFC", "NFD", "NFKC", "NFKD")   # the tokenizer.json normalizers this file implements
ENDOFTEXT = "<|endoftext|>"                    # GPT-2's and NeoX's end of a document


class Tokenizer:
    """A byte-level BPE tokenizer: vocabulary (token -> id), ranked merges, and added tokens.

    Build one with `Tokenizer.from_pretrained(dir_or_hub_name)` or a per-format constructor (part 8).
    Tokens are written as printable characters (see bytes_to_unicode), as in the files. The other
    arguments are the tokenizer.json options: `normalizer` ("NFC", ...) applied to the text before BPE;
    ByteLevel's `add_prefix_space` (a space in front of the text, as RoBERTa does) and `use_regex` (False:
    the whole text is one word); BPE's `ignore_merges` (a word that is a token is taken whole, as in
    Llama 3). `fast`: use the class's SPEED_UPS, bpe_fast.py's in bpe_fast.Tokenizer (same ids; this
    class has none: it runs only the code of this file).

    Attributes: vocab {token: id}, merges [(left, right)] in rank order, merge_ranks {(left, right): rank},
    added_tokens, special_tokens {string: id}, eos_token_id (of "<|endoftext|>", or None), vocab_size
    (the highest id + 1: the rows an embedding table needs).
    """

    SPEED_UPS = None  # a module with FastPath, split_words and learn_merges: bpe_fast.Tokenizer sets its own

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]], added_tokens=(), *,
                 normalizer: str | None = None, add_prefix_space: bool = False, use_regex: bool = True,
                 ignore_merges: bool = False, fast: bool = True):
        check_tokenizer(vocab, merges, normalizer)         # part 8: a clear error for a broken file
        self.vocab = vocab
        self.merges = merges
        # (a pair listed twice: the last rank wins, as in HF and in GPT-2's encoder.py)
        self.merge_ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.added_tokens = list(added_tokens)
        self.special_tokens = {t.content: t.id for t in self.added_tokens if t.special}
        self.eos_token_id = self.special_tokens.get(ENDOFTEXT)
        self.normalizer = normalizer
        self.add_prefix_space = add_prefix_space
        self.use_regex = use_regex
        self.ignore_merges = ignore_merges
        # decoding: the bytes of every id (added tokens override vocab entries with the same id)
        self.id_to_bytes = {i: token_bytes(t) for t, i in vocab.items()}
        self.id_to_bytes.update({t.id: token_bytes(t.content) for t in self.added_tokens})
        self.vocab_size = max(self.id_to_bytes) + 1
        self._cache: dict[str, tuple[int, ...]] = {}   # word -> ids, see CACHE_MAX_WORDS
        self._special_patterns: dict[frozenset, re.Pattern] = {}
        # tokenizer.json's extras (part 8): tokens cut out of the text that are not special, HF's flags
        self._hf_added_tokens = normalizer is not None or any(
            not t.special or t.lstrip or t.rstrip or t.single_word or t.normalized for t in self.added_tokens)
        self._added_patterns: dict[frozenset, tuple] = {}
        # bpe_fast.py's speed-ups (same ids) in its subclass; None here, or with fast=False
        self.fast = self.SPEED_UPS.FastPath(self) if fast and self.SPEED_UPS else None

    # Reading the files is part 8; these are the entry points.
    @classmethod
    def from_pretrained(cls, name_or_dir, *, revision: str | None = None) -> "Tokenizer":
        """A local directory (or a tokenizer.json file), else a Hub repo id such as "gpt2",
        "openai-community/gpt2" or "EleutherAI/pythia-160m", downloaded with huggingface_hub."""
        return load(cls, name_or_dir, revision)[0]

    @classmethod
    def from_tokenizer_json(cls, path) -> "Tokenizer":
        return read_tokenizer_json(cls, path)

    @classmethod
    def from_vocab_merges(cls, vocab_json, merges_txt) -> "Tokenizer":
        return read_vocab_merges(cls, vocab_json, merges_txt)

    from_encoder_bpe = from_vocab_merges   # OpenAI's encoder.json + vocab.bpe: the same, by other names

    def save(self, directory) -> None:
        """Write vocab.json + merges.txt (HF's format, loadable by `tokenizers.models.BPE.from_file`)."""
        save_vocab_merges(self, directory)

    def __repr__(self):
        return (f"Tokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, "
                f"special_tokens={self.special_tokens})")

    # --- encoding ------------------------------------------------------------------------------------
    def encode(self, text: str, *, allowed_special=frozenset()) -> list[int]:
        """Text -> ids. A special token's string in `text` (say "<|endoftext|>" in a scraped web page)
        raises, unless `allowed_special` (a set of them, or "all") lets it become its special id. This is
        tiktoken's rule: a user's text must not be able to inject control tokens by accident.
        Non-special added tokens (NeoX's runs of spaces) are always matched: they are ordinary vocabulary.
        With allowed_special="all" this gives the ids of HF's `encode(text, add_special_tokens=False)` (a
        post-processor that adds BOS/EOS tokens is not applied: GPT-2's and NeoX's add none)."""
        text = check_text(text)
        allowed = check_allowed(self, allowed_special)
        disallowed = frozenset(self.special_tokens.keys() - allowed)
        if disallowed and (found := self._special_pattern(disallowed).search(text)):
            raise ValueError(f"the text contains the special token {found.group()!r}. To encode it as the "
                             f"special token, pass allowed_special={{{found.group()!r}}} (or \"all\"); to "
                             "encode it as plain text, use encode_ordinary(text)")
        return self._encode(text, allowed)

    def encode_ordinary(self, text: str) -> list[int]:
        """Text -> ids, special token strings encoded as the plain text they are: "<|endoftext|>" -> 7 ids."""
        return self._encode(check_text(text), frozenset())

    def _encode(self, text: str, specials: frozenset) -> list[int]:
        ids = []
        for piece, token_id in self.pieces(text, specials):
            if token_id is None:
                ids += self._encode_words(self.words(piece))
            else:
                ids.append(token_id)
        return ids

    def pieces(self, text: str, specials=frozenset()) -> list[tuple[str, int | None]]:
        """Cut the special tokens allowed in this call (`specials`) out of the text, as (text, None) and
        (token, id) pieces: "a<|endoftext|>b" -> [("a", None), ("<|endoftext|>", 50256), ("b", None)].
        At each position the longest special token wins. (A tokenizer.json may add tokens with HF's flags,
        such as NeoX's runs of spaces, and a normalizer: part 8 cuts those, the way HF does.)"""
        if self._hf_added_tokens:
            return hf_pieces(self, text, specials)
        pieces, start = [], 0
        for match in (self._special_pattern(specials).finditer(text) if specials else ()):
            if match.start() > start:
                pieces.append((text[start:match.start()], None))
            pieces.append((match.group(), self.special_tokens[match.group()]))
            start = match.end()
        if start < len(text):
            pieces.append((text[start:], None))
        return pieces

    def words(self, text: str) -> list[str]:
        """Split text that holds no added token into words (part 2)."""
        if self.add_prefix_space and not text.startswith(" "):
            text = " " + text
        if not self.use_regex:
            return [text]
        return self.fast.split_words(text) if self.fast else split_words(text)

    def _encode_words(self, words: list[str]) -> list[int]:
        """The ids of `words`: from the word cache, where the words not in it yet go first."""
        if len(self._cache) > CACHE_MAX_WORDS:
            self._cache = {}       # a new dict, not clear(): another thread may be reading the old
        cache = self._cache
        word_ids = self.fast.word_ids if self.fast else self.word_ids
        for word in set(words).difference(cache):     # the words never seen before
            cache[word] = word_ids(word)
        return list(chain.from_iterable(map(cache.__getitem__, words)))   # C loops: no Python per word

    def word_ids(self, word: str) -> tuple[int, ...]:
        return tuple(map(self.vocab.__getitem__, self.word_tokens(word)))

    def word_tokens(self, word: str, trace: list | None = None) -> list[str]:
        """The tokens of one word: BPE on its bytes (with `trace`, its steps; see bpe()). With ignore_merges
        (Llama 3's option) a word that is a token is that token, without BPE."""
        chars = to_printable(word)
        if self.ignore_merges and chars in self.vocab:
            return [chars]
        return bpe(chars, self.merge_ranks, trace)

    def clear_cache(self) -> None:
        """Forget every cached word (for benchmarks: a fresh tokenizer)."""
        self._cache = {}
        if self.fast:
            self.fast.clear_cache()

    def _special_pattern(self, specials: frozenset) -> re.Pattern:
        if specials not in self._special_patterns:
            self._special_patterns[specials] = _longest_first_pattern(specials)
        return self._special_patterns[specials]

    # --- decoding ------------------------------------------------------------------------------------
    def decode_bytes(self, ids) -> bytes:
        """Ids -> the bytes they stand for (which may end in the middle of a UTF-8 character)."""
        if not isinstance(ids, (list, tuple)):
            ids = list(ids)
        try:
            return b"".join(map(self.id_to_bytes.__getitem__, ids))
        except (KeyError, TypeError):
            raise bad_ids_error(self, ids) from None     # part 8: which id, and why

    def decode(self, ids) -> str:
        """Ids -> text. Bytes that are not valid UTF-8 (ids cut in the middle of a character, or random
        ids) become U+FFFD '�', as in tiktoken and HF tokenizers."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")


# ------------------------------------------------------------------------------------------------------
# 6. Streaming: print text as tokens arrive, one complete character at a time
# ------------------------------------------------------------------------------------------------------
class StreamDecoder:
    """Decodes ids one at a time for a CLI that prints while the model generates.

    A token may hold part of a character ("🤗" is 4 bytes, often 2-3 tokens), and decoding each token on
    its own would print "�" for each part. So push() returns only the text whose bytes are complete and
    holds back the bytes of an unfinished character until the tokens that finish it arrive. The standard
    library's incremental UTF-8 decoder does exactly that holding back; invalid bytes become "�".
    The pieces push() and flush() return add up to tokenizer.decode(all ids).
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        """The text completed by this token ("" while a character is unfinished)."""
        return self._utf8.decode(self.tokenizer.decode_bytes([token_id]))

    def flush(self) -> str:
        """The rest at the end of the stream: held-back bytes of an unfinished character become "�"."""
        return self._utf8.decode(b"", final=True)


# ------------------------------------------------------------------------------------------------------
# 7. Teaching mode: python bpe.py "some text"
# ------------------------------------------------------------------------------------------------------
DEFAULT_TOKENIZER = Path(__file__).resolve().parent / "models" / "gpt2-tokenizer"   # GPT-2's own files, shipped
SHIPPED_TOKENIZER = Path(__file__).resolve().parent / "models" / "pydoc-gpt2"   # works offline


def explain(tokenizer: Tokenizer, text: str, out=None) -> list[int]:
    """Print how `text` is encoded (to `out`, default stdout): added tokens, words, every merge, the ids."""
    def show(*parts):
        print(*parts, file=out or sys.stdout)

    show(f"text: {text!r}")
    text, ids = check_text(text), []
    for piece, token_id in tokenizer.pieces(text, frozenset(tokenizer.special_tokens)):
        if token_id is not None:
            show(f"\nadded token {piece!r} -> id {token_id}")
            ids.append(token_id)
            continue
        words = tokenizer.words(piece)
        show(f"\nsplit into words by the pattern: {words}")
        for word in words:
            steps = []
            tokens = tokenizer.word_tokens(word, trace=steps)
            word_ids = [tokenizer.vocab[t] for t in tokens]
            show(f"\n  {word!r} as bytes: {' '.join(to_printable(word))}")
            for left, right, rank, parts in steps:
                show(f"    merge rank {rank:>5}: {left} + {right} -> {' '.join(parts)}")
            show(f"    tokens {tokens} -> ids {word_ids}")
            ids += word_ids
    show(f"\nids: {ids}")
    show(f"decoded: {tokenizer.decode(ids)!r}")
    return ids


def main(argv=None):
    parser = argparse.ArgumentParser(description="Show byte-level BPE encoding a text, merge by merge.")
    parser.add_argument("text", nargs="?", default="Hello world! It's 2024 🤗")
    default = str(DEFAULT_TOKENIZER) if DEFAULT_TOKENIZER.is_dir() else "gpt2"
    parser.add_argument("--tokenizer", default=default,
                        help="a directory with tokenizer files, or a Hub repo id (default: GPT-2's)")
    args = parser.parse_args(argv)
    try:
        tokenizer = Tokenizer.from_pretrained(args.tokenizer)
    except (OSError, ValueError) as error:
        hint = f" (offline: --tokenizer {os.path.relpath(SHIPPED_TOKENIZER)} is the shipped model's)" if (
            args.tokenizer == "gpt2" and SHIPPED_TOKENIZER.is_dir()) else ""
        sys.exit(f"error: {error}{hint}")
    print(f"tokenizer: {args.tokenizer}: {tokenizer}")
    print("(bytes are shown as GPT-2's printable characters: Ġ is a space, Ċ a newline)")
    explain(tokenizer, text=args.text)


# The lesson ends here. Part 8 checks the input and reads the files; the appendix lists Unicode's classes.


# ------------------------------------------------------------------------------------------------------
# 8. Checks and files
# ------------------------------------------------------------------------------------------------------
NEVER_IN_UTF8 = {0xC0, 0xC1, *range(0xF5, 0x100)}   # byte values that no UTF-8 text contains


def check_tokenizer(vocab: dict, merges: list, normalizer: str | None) -> None:
    """Refuse what Tokenizer cannot encode with: a merge of tokens not in the vocabulary, a byte without
    a token (HF would silently drop that byte; NeoX has none for 0xC0, 0xC1, 0xF5-0xFF, bytes that never
    occur in UTF-8, which is fine), an unknown normalizer, two tokens with one id (HF tokenizers decodes
    that id to either token, whichever its hash table lists last: a different text from run to run)."""
    if normalizer is not None and normalizer not in NORMALIZERS:
        raise ValueError(f"unsupported normalizer {normalizer!r}: bpe.py has {NORMALIZERS} or none")
    if len(set(vocab.values())) < len(vocab):
        first = {}
        for token, i in vocab.items():
            if i in first:
                raise ValueError(f"the tokens {first[i]!r} and {token!r} have the same id {i}")
            first[i] = token
    for left, right in merges:
        for token in (left, right, left + right):
            if token not in vocab:
                raise ValueError(f"merge {left!r} {right!r}: {token!r} is not in the vocabulary")
    missing = [b for b in range(256) if BYTE_TO_CHAR[b] not in vocab and b not in NEVER_IN_UTF8]
    if missing:
        listed = ", ".join(f"0x{b:02X}" for b in missing[:8]) + (" ..." if len(missing) > 8 else "")
        raise ValueError(f"not a byte-level BPE vocabulary: no token for the bytes {listed}")


def check_allowed(tok: Tokenizer, allowed_special) -> frozenset:
    """encode's allowed_special as a frozenset of special tokens; refuses a str or unknown tokens."""
    if allowed_special == "all":
        return frozenset(tok.special_tokens)
    if isinstance(allowed_special, str) or not all(isinstance(s, str) for s in allowed_special):
        raise TypeError(f"allowed_special must be \"all\" or a set of special token strings, "
                        f"got {allowed_special!r}")
    if unknown := set(allowed_special) - tok.special_tokens.keys():
        raise ValueError(f"not special tokens of this tokenizer: {sorted(unknown)}; "
                         f"its special tokens are {sorted(tok.special_tokens)}")
    return frozenset(allowed_special)


def check_text(text) -> str:
    """The text encode works on: a str that UTF-8 can encode. A Python str may hold surrogates, which
    UTF-8 cannot (a pair left from UTF-16, "\\ud83e\\udd17", or a lone one from a file read with
    errors="surrogateescape"); they are fixed as tiktoken does: pairs joined ("🤗"), lone ones "�"."""
    if not isinstance(text, str):
        raise TypeError(f"encode takes a str, got {type(text).__name__}"
                        + (" (decode bytes first: text.decode('utf-8'))" if isinstance(text, bytes) else ""))
    if text.isascii():                              # (O(1): the common case pays nothing)
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def bad_ids_error(tok: Tokenizer, ids) -> Exception:
    """The error for ids that decode_bytes cannot look up, naming the first culprit."""
    for i in ids:
        if not isinstance(i, numbers.Integral):
            return TypeError(f"token ids must be ints, got {type(i).__name__} {i!r}"
                             + (" (pass tensor.tolist())" if hasattr(i, "tolist") else ""))
        if i not in tok.id_to_bytes:
            return ValueError(f"unknown token id {i}: this tokenizer has ids 0..{tok.vocab_size - 1}")
    return AssertionError("unreachable")


# The formats, in the order a directory (or Hub repo) is searched: (file names, reader).
FORMATS = [
    (("tokenizer.json",), "from_tokenizer_json"),
    (("vocab.json", "merges.txt"), "from_vocab_merges"),
    (("encoder.json", "vocab.bpe"), "from_encoder_bpe"),
]
_FORMAT_NAMES = "tokenizer.json, or vocab.json + merges.txt, or encoder.json + vocab.bpe"


def check_vocab(vocab, where: str) -> dict[str, int]:
    if not isinstance(vocab, dict):
        raise ValueError(f"{where}: the vocabulary must be an object {{token: id}}, got {type(vocab).__name__}")
    for token, i in vocab.items():
        if type(i) is not int or i < 0:
            raise ValueError(f"{where}: the id of token {token!r} must be an int >= 0, got {i!r}")
    return vocab


def read_merges(lines, where: str) -> list[tuple[str, str]]:
    """merges.txt / vocab.bpe lines ("Ġ t"), or tokenizer.json's list of "Ġ t" or ["Ġ", "t"]."""
    if not isinstance(lines, list):
        raise ValueError(f"{where}: the merges must be a list, got {type(lines).__name__}")
    merges = []
    for line in lines:
        if isinstance(line, str):
            if line.startswith("#version") or not line.strip():
                continue
            line = line.rstrip("\r\n").split(" ")
        if not isinstance(line, list) or len(line) != 2 or not all(isinstance(t, str) for t in line):
            raise ValueError(f"{where}: a merge must be two tokens separated by one space, got {line!r}")
        merges.append(tuple(line))
    return merges


def _build(cls, where, *args, **kwargs) -> Tokenizer:
    try:
        return cls(*args, **kwargs)
    except ValueError as error:                  # say which file holds the inconsistency
        raise ValueError(f"{where}: {error}") from None


def read_tokenizer_json(cls, path) -> Tokenizer:
    """HF tokenizers' single file: a BPE model, added tokens, normalizer and ByteLevel options."""
    config = hub.read_json(path)
    model = config.get("model") if isinstance(config, dict) else None
    if not isinstance(model, dict):
        raise ValueError(f"{path} is not a tokenizers' tokenizer.json: it has no \"model\" object")
    if model.get("type", "BPE") != "BPE" or "merges" not in model or "vocab" not in model:
        raise ValueError(f"{path}: model type {model.get('type')!r} without vocab and merges is not BPE; "
                         "bpe.py reads BPE only")
    for option in ("dropout", "unk_token", "continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(option):
            raise ValueError(f"{path}: BPE option {option}={model[option]!r} is not supported by bpe.py")
    if model.get("byte_fallback"):
        raise ValueError(f"{path}: byte_fallback BPE (sentencepiece style) is not byte-level BPE")
    pre = config.get("pre_tokenizer") or {}
    if not isinstance(pre, dict) or pre.get("type") != "ByteLevel":
        raise ValueError(f"{path}: pre_tokenizer {pre.get('type') if isinstance(pre, dict) else pre!r} is "
                         "not ByteLevel; bpe.py reads byte-level BPE (GPT-2, GPT-NeoX) only")
    normalizer = config.get("normalizer")
    if normalizer is not None:
        normalizer = normalizer.get("type") if isinstance(normalizer, dict) else normalizer
        if normalizer not in NORMALIZERS:
            raise ValueError(f"{path}: normalizer {normalizer!r} is not supported (only {NORMALIZERS})")
    # HF tokenizers does not read the ids written in "added_tokens", it assigns them: a token already in
    # the vocab keeps its vocab id, a new one gets the next id after the vocab and earlier added tokens.
    # (In well-formed files such as GPT-2's and NeoX's the two agree.)
    vocab, added, ids = check_vocab(model["vocab"], f"{path}: model.vocab"), [], {}
    entries = config.get("added_tokens") or []
    if not isinstance(entries, list) or not all(isinstance(t, dict) and isinstance(t.get("content"), str)
                                                for t in entries):
        raise ValueError(f"{path}: added_tokens must be a list of objects with a \"content\" string")
    next_id = len(vocab)  # the next new id, kept as we go: a max over all ids per token was quadratic
    for t in entries:
        content = t["content"]
        if content and content not in ids:
            ids[content] = vocab.get(content, next_id)
            next_id = max(next_id, ids[content] + 1)
            added.append(AddedToken(content, ids[content], **added_token_flags(t, path)))
    # (ByteLevel's trim_offsets only changes character offsets, which this file does not compute.)
    return _build(cls, path, vocab, read_merges(model["merges"], f"{path}: model.merges"), added,
                  normalizer=normalizer, add_prefix_space=bool(pre.get("add_prefix_space", False)),
                  use_regex=bool(pre.get("use_regex", True)), ignore_merges=bool(model.get("ignore_merges")))


def added_token_flags(entry: dict, path) -> dict[str, bool]:
    """An added token's flags (special, lstrip, ...): JSON booleans, or absent (False); "no" is not False."""
    flags = {f: entry.get(f, False) for f in AddedToken._fields[2:]}
    for flag, value in flags.items():
        if type(value) is not bool:
            raise ValueError(f"{path}: added token {entry['content'][:40]!r}: {flag} must be true or false, "
                             f"got {value!r}"[:300])
    return flags


def read_vocab_merges(cls, vocab_json, merges_txt) -> Tokenizer:
    """The Hub's GPT-2 format: vocab.json ({token: id}) + merges.txt (a header, then "left right" lines);
    OpenAI's encoder.json + vocab.bpe are the same files by other names.

    These files have no list of special tokens. "<|endoftext|>" (GPT-2's only one, id 50256) is special,
    as transformers' GPT2Tokenizer makes it; any other entry is plain vocabulary, even one that no merge
    makes: BPE never gives it, as in HF tokenizers (it decodes, it is never encoded).
    """
    vocab = check_vocab(hub.read_json(vocab_json), str(vocab_json))
    try:
        lines = Path(merges_txt).read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise ValueError(f"{merges_txt}: not a UTF-8 text file ({error})") from None
    merges = read_merges(lines, str(merges_txt))
    specials = [AddedToken(t, vocab[t]) for t in [ENDOFTEXT] if t in vocab]
    return _build(cls, f"{vocab_json} + {merges_txt}", vocab, merges, specials)


def load(cls, name_or_dir, revision: str | None = None) -> tuple[Tokenizer, dict]:
    """Tokenizer.from_pretrained: a directory, a tokenizer.json file, else a Hub repo id. Returns the
    tokenizer and the files it was read from, {name as FORMATS has it: path} (train.py copies them)."""
    path = Path(name_or_dir).expanduser()
    if path.is_file():
        names, paths = ("tokenizer.json",), [path]
    elif path.is_dir():
        names = next((files for files, _ in FORMATS if all((path / f).is_file() for f in files)), None)
        if names is None:
            raise FileNotFoundError(f"no tokenizer files in {path}: looked for {_FORMAT_NAMES}")
        paths = [path / f for f in names]
    else:
        name = str(name_or_dir)
        if name.startswith((".", "/", "~")) or name.count("/") > 1:     # a path, not a Hub "org/name"
            raise FileNotFoundError(f"tokenizer directory {name} does not exist (it should hold "
                                    f"{_FORMAT_NAMES})")
        names, paths = _from_hub(name, revision)
    return getattr(cls, dict(FORMATS)[names])(*paths), dict(zip(names, paths))


def _from_hub(repo_id: str, revision: str | None) -> tuple[tuple, list]:
    """(names, paths) of the first format the Hub repo has, downloaded (hub.py: one quick request, then the
    local cache)."""
    def choose(files):
        names = next((names for names, _ in FORMATS if all(f in files for f in names)), None)
        if names is None:
            raise FileNotFoundError(f"Hub repo {repo_id!r} has none of {_FORMAT_NAMES}")
        return list(names)
    directory = hub.download(repo_id, revision, choose, _FORMAT_NAMES)
    names = next((names for names, _ in FORMATS if all((directory / f).is_file() for f in names)), None)
    if names is None:
        raise FileNotFoundError(f"the local copy of {repo_id} has none of {_FORMAT_NAMES}")
    return names, [directory / f for f in names]


# tokenizer.json's added tokens: HF matches them in a fixed order, with flags. NeoX's runs of spaces
# ("  " ... 24 spaces) are added tokens that are not special: ordinary vocabulary, cut out before the split.
def hf_pieces(tok: Tokenizer, text: str, specials: frozenset) -> list[tuple[str, int | None]]:
    """Tokenizer.pieces as HF tokenizers does it: first the added tokens matched in the raw text (special
    tokens), then the text between them is normalized (NFC) and the normalized ones (NeoX's runs of
    spaces) are cut out of it. `specials`: the special tokens to match (the others stay plain text)."""
    (raw, raw_tokens), (normalized, normalized_tokens) = added_token_patterns(tok, specials)
    pieces = []
    for piece, token_id in split_on_added_tokens(text, raw, raw_tokens):
        if token_id is None:
            if tok.normalizer:
                piece = hf_normalize(tok.normalizer, piece)
            pieces += split_on_added_tokens(piece, normalized, normalized_tokens)
        else:
            pieces.append((piece, token_id))
    return pieces


def added_token_patterns(tok: Tokenizer, specials: frozenset):
    """For the non-special added tokens plus the `specials`: (pattern, {content: token}) of those
    matched in the raw text, and of those matched in the normalized text. Built once per set."""
    if specials not in tok._added_patterns:
        raw, normalized = {}, {}
        for t in tok.added_tokens:
            if t.special and t.content not in specials:
                continue
            if not t.normalized:
                raw.setdefault(t.content, t)
            elif tok.normalizer:      # HF normalizes the token too, to match it in normalized text
                normalized.setdefault(hf_normalize(tok.normalizer, t.content), t)
            else:
                normalized.setdefault(t.content, t)
        tok._added_patterns[specials] = ((_longest_first_pattern(raw), raw),
                                         (_longest_first_pattern(normalized), normalized))
    return tok._added_patterns[specials]


_WHITE_SPACE_RE = re.compile(f"[{WHITE_SPACE}]")


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
        if token.single_word and ((begin > 0 and _is_word_char(text[begin - 1]))
                                  or (end < len(text) and _is_word_char(text[end]))):
            continue
        if token.lstrip:
            while begin > 0 and _WHITE_SPACE_RE.match(text[begin - 1]):
                begin -= 1
            begin = max(begin, start)      # spaces an earlier match already took stay with it
        if token.rstrip:
            while end < len(text) and _WHITE_SPACE_RE.match(text[end]):
                end += 1
        if begin > start:
            pieces.append((text[start:begin], None))
        pieces.append((text[begin:end], token.id))
        start = end
    if start < len(text):
        pieces.append((text[start:], None))
    return pieces


_WORD_CHAR = regex.compile(r"\w")     # single_word's test (HF: Rust regex's \w)


def _is_word_char(char: str) -> bool:
    return _WORD_CHAR.match(char) is not None



def save_vocab_merges(tok: Tokenizer, directory) -> None:
    """Tokenizer.save: vocab.json + merges.txt (HF's format, loadable by `tokenizers.models.BPE.from_file`)."""
    if tok.normalizer or tok.add_prefix_space or not tok.use_regex or tok.ignore_merges or any(
            not t.special or t.lstrip or t.rstrip or t.single_word for t in tok.added_tokens):
        raise ValueError("vocab.json + merges.txt cannot hold this tokenizer's normalizer, ByteLevel "
                         "options or non-special added tokens (keep its tokenizer.json instead)")
    if others := sorted(tok.special_tokens.keys() - {ENDOFTEXT}):
        raise ValueError(f"vocab.json + merges.txt cannot mark {others} as special tokens (only "
                         f"{ENDOFTEXT!r} is special when read back): keep a tokenizer.json instead")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = dict(sorted({**tok.vocab, **tok.special_tokens}.items(), key=lambda item: item[1]))
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{left} {right}" for left, right in tok.merges]
    (directory / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def save_tokenizer_json(tokenizer: Tokenizer, directory) -> None:
    """A trained tokenizer as HF tokenizers' single file, tokenizer.json, laid out as Pythia's
    (EleutherAI/pythia-*): byte-level BPE, its added tokens special, NFC normalization of the text before BPE
    (train.py --tokenizer-json reads it back, so a run encodes with what it saves)."""
    byte_level = {"add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    specials = {t.content: t.id for t in tokenizer.added_tokens}
    text = json.dumps({
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": t.id, "content": t.content, "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": True} for t in tokenizer.added_tokens],
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "ByteLevel", **byte_level},
        "post_processor": {"type": "ByteLevel", **byte_level},
        "decoder": {"type": "ByteLevel", **byte_level},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "vocab": dict(sorted({**tokenizer.vocab, **specials}.items(), key=lambda item: item[1])),
                  "merges": [f"{left} {right}" for left, right in tokenizer.merges]},
    }, ensure_ascii=False, indent=1) + "\n"
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tokenizer.json").write_text(text, encoding="utf-8")


# ------------------------------------------------------------------------------------------------------
# Appendix: Unicode 16.0's letters (\p{L}) and numbers (\p{N}), as hex code point ranges
# ------------------------------------------------------------------------------------------------------
# What the references' regex engines call letters and numbers (tests/test_bpe.py asks tiktoken and HF
# tokenizers about every code point, and prints a new table if they ever change). General categories
# Lu Ll Lt Lm Lo, and Nd Nl No, of Unicode 16.0.
LETTER_RANGES = """
41-5a 61-7a aa b5 ba c0-d6 d8-f6 f8-2c1 2c6-2d1 2e0-2e4 2ec 2ee 370-374 376-377 37a-37d 37f 386 388-38a 38c
38e-3a1 3a3-3f5 3f7-481 48a-52f 531-556 559 560-588 5d0-5ea 5ef-5f2 620-64a 66e-66f 671-6d3 6d5 6e5-6e6
6ee-6ef 6fa-6fc 6ff 710 712-72f 74d-7a5 7b1 7ca-7ea 7f4-7f5 7fa 800-815 81a 824 828 840-858 860-86a 870-887
889-88e 8a0-8c9 904-939 93d 950 958-961 971-980 985-98c 98f-990 993-9a8 9aa-9b0 9b2 9b6-9b9 9bd 9ce 9dc-9dd
9df-9e1 9f0-9f1 9fc a05-a0a a0f-a10 a13-a28 a2a-a30 a32-a33 a35-a36 a38-a39 a59-a5c a5e a72-a74 a85-a8d
a8f-a91 a93-aa8 aaa-ab0 ab2-ab3 ab5-ab9 abd ad0 ae0-ae1 af9 b05-b0c b0f-b10 b13-b28 b2a-b30 b32-b33 b35-b39
b3d b5c-b5d b5f-b61 b71 b83 b85-b8a b8e-b90 b92-b95 b99-b9a b9c b9e-b9f ba3-ba4 ba8-baa bae-bb9 bd0 c05-c0c
c0e-c10 c12-c28 c2a-c39 c3d c58-c5a c5d c60-c61 c80 c85-c8c c8e-c90 c92-ca8 caa-cb3 cb5-cb9 cbd cdd-cde
ce0-ce1 cf1-cf2 d04-d0c d0e-d10 d12-d3a d3d d4e d54-d56 d5f-d61 d7a-d7f d85-d96 d9a-db1 db3-dbb dbd dc0-dc6
e01-e30 e32-e33 e40-e46 e81-e82 e84 e86-e8a e8c-ea3 ea5 ea7-eb0 eb2-eb3 ebd ec0-ec4 ec6 edc-edf f00 f40-f47
f49-f6c f88-f8c 1000-102a 103f 1050-1055 105a-105d 1061 1065-1066 106e-1070 1075-1081 108e 10a0-10c5 10c7 10cd
10d0-10fa 10fc-1248 124a-124d 1250-1256 1258 125a-125d 1260-1288 128a-128d 1290-12b0 12b2-12b5 12b8-12be 12c0
12c2-12c5 12c8-12d6 12d8-1310 1312-1315 1318-135a 1380-138f 13a0-13f5 13f8-13fd 1401-166c 166f-167f 1681-169a
16a0-16ea 16f1-16f8 1700-1711 171f-1731 1740-1751 1760-176c 176e-1770 1780-17b3 17d7 17dc 1820-1878 1880-1884
1887-18a8 18aa 18b0-18f5 1900-191e 1950-196d 1970-1974 1980-19ab 19b0-19c9 1a00-1a16 1a20-1a54 1aa7 1b05-1b33
1b45-1b4c 1b83-1ba0 1bae-1baf 1bba-1be5 1c00-1c23 1c4d-1c4f 1c5a-1c7d 1c80-1c8a 1c90-1cba 1cbd-1cbf 1ce9-1cec
1cee-1cf3 1cf5-1cf6 1cfa 1d00-1dbf 1e00-1f15 1f18-1f1d 1f20-1f45 1f48-1f4d 1f50-1f57 1f59 1f5b 1f5d 1f5f-1f7d
1f80-1fb4 1fb6-1fbc 1fbe 1fc2-1fc4 1fc6-1fcc 1fd0-1fd3 1fd6-1fdb 1fe0-1fec 1ff2-1ff4 1ff6-1ffc 2071 207f
2090-209c 2102 2107 210a-2113 2115 2119-211d 2124 2126 2128 212a-212d 212f-2139 213c-213f 2145-2149 214e
2183-2184 2c00-2ce4 2ceb-2cee 2cf2-2cf3 2d00-2d25 2d27 2d2d 2d30-2d67 2d6f 2d80-2d96 2da0-2da6 2da8-2dae
2db0-2db6 2db8-2dbe 2dc0-2dc6 2dc8-2dce 2dd0-2dd6 2dd8-2dde 2e2f 3005-3006 3031-3035 303b-303c 3041-3096
309d-309f 30a1-30fa 30fc-30ff 3105-312f 3131-318e 31a0-31bf 31f0-31ff 3400-4dbf 4e00-a48c a4d0-a4fd a500-a60c
a610-a61f a62a-a62b a640-a66e a67f-a69d a6a0-a6e5 a717-a71f a722-a788 a78b-a7cd a7d0-a7d1 a7d3 a7d5-a7dc
a7f2-a801 a803-a805 a807-a80a a80c-a822 a840-a873 a882-a8b3 a8f2-a8f7 a8fb a8fd-a8fe a90a-a925 a930-a946
a960-a97c a984-a9b2 a9cf a9e0-a9e4 a9e6-a9ef a9fa-a9fe aa00-aa28 aa40-aa42 aa44-aa4b aa60-aa76 aa7a aa7e-aaaf
aab1 aab5-aab6 aab9-aabd aac0 aac2 aadb-aadd aae0-aaea aaf2-aaf4 ab01-ab06 ab09-ab0e ab11-ab16 ab20-ab26
ab28-ab2e ab30-ab5a ab5c-ab69 ab70-abe2 ac00-d7a3 d7b0-d7c6 d7cb-d7fb f900-fa6d fa70-fad9 fb00-fb06 fb13-fb17
fb1d fb1f-fb28 fb2a-fb36 fb38-fb3c fb3e fb40-fb41 fb43-fb44 fb46-fbb1 fbd3-fd3d fd50-fd8f fd92-fdc7 fdf0-fdfb
fe70-fe74 fe76-fefc ff21-ff3a ff41-ff5a ff66-ffbe ffc2-ffc7 ffca-ffcf ffd2-ffd7 ffda-ffdc 10000-1000b
1000d-10026 10028-1003a 1003c-1003d 1003f-1004d 10050-1005d 10080-100fa 10280-1029c 102a0-102d0 10300-1031f
1032d-10340 10342-10349 10350-10375 10380-1039d 103a0-103c3 103c8-103cf 10400-1049d 104b0-104d3 104d8-104fb
10500-10527 10530-10563 10570-1057a 1057c-1058a 1058c-10592 10594-10595 10597-105a1 105a3-105b1 105b3-105b9
105bb-105bc 105c0-105f3 10600-10736 10740-10755 10760-10767 10780-10785 10787-107b0 107b2-107ba 10800-10805
10808 1080a-10835 10837-10838 1083c 1083f-10855 10860-10876 10880-1089e 108e0-108f2 108f4-108f5 10900-10915
10920-10939 10980-109b7 109be-109bf 10a00 10a10-10a13 10a15-10a17 10a19-10a35 10a60-10a7c 10a80-10a9c
10ac0-10ac7 10ac9-10ae4 10b00-10b35 10b40-10b55 10b60-10b72 10b80-10b91 10c00-10c48 10c80-10cb2 10cc0-10cf2
10d00-10d23 10d4a-10d65 10d6f-10d85 10e80-10ea9 10eb0-10eb1 10ec2-10ec4 10f00-10f1c 10f27 10f30-10f45
10f70-10f81 10fb0-10fc4 10fe0-10ff6 11003-11037 11071-11072 11075 11083-110af 110d0-110e8 11103-11126 11144
11147 11150-11172 11176 11183-111b2 111c1-111c4 111da 111dc 11200-11211 11213-1122b 1123f-11240 11280-11286
11288 1128a-1128d 1128f-1129d 1129f-112a8 112b0-112de 11305-1130c 1130f-11310 11313-11328 1132a-11330
11332-11333 11335-11339 1133d 11350 1135d-11361 11380-11389 1138b 1138e 11390-113b5 113b7 113d1 113d3
11400-11434 11447-1144a 1145f-11461 11480-114af 114c4-114c5 114c7 11580-115ae 115d8-115db 11600-1162f 11644
11680-116aa 116b8 11700-1171a 11740-11746 11800-1182b 118a0-118df 118ff-11906 11909 1190c-11913 11915-11916
11918-1192f 1193f 11941 119a0-119a7 119aa-119d0 119e1 119e3 11a00 11a0b-11a32 11a3a 11a50 11a5c-11a89 11a9d
11ab0-11af8 11bc0-11be0 11c00-11c08 11c0a-11c2e 11c40 11c72-11c8f 11d00-11d06 11d08-11d09 11d0b-11d30 11d46
11d60-11d65 11d67-11d68 11d6a-11d89 11d98 11ee0-11ef2 11f02 11f04-11f10 11f12-11f33 11fb0 12000-12399
12480-12543 12f90-12ff0 13000-1342f 13441-13446 13460-143fa 14400-14646 16100-1611d 16800-16a38 16a40-16a5e
16a70-16abe 16ad0-16aed 16b00-16b2f 16b40-16b43 16b63-16b77 16b7d-16b8f 16d40-16d6c 16e40-16e7f 16f00-16f4a
16f50 16f93-16f9f 16fe0-16fe1 16fe3 17000-187f7 18800-18cd5 18cff-18d08 1aff0-1aff3 1aff5-1affb 1affd-1affe
1b000-1b122 1b132 1b150-1b152 1b155 1b164-1b167 1b170-1b2fb 1bc00-1bc6a 1bc70-1bc7c 1bc80-1bc88 1bc90-1bc99
1d400-1d454 1d456-1d49c 1d49e-1d49f 1d4a2 1d4a5-1d4a6 1d4a9-1d4ac 1d4ae-1d4b9 1d4bb 1d4bd-1d4c3 1d4c5-1d505
1d507-1d50a 1d50d-1d514 1d516-1d51c 1d51e-1d539 1d53b-1d53e 1d540-1d544 1d546 1d54a-1d550 1d552-1d6a5
1d6a8-1d6c0 1d6c2-1d6da 1d6dc-1d6fa 1d6fc-1d714 1d716-1d734 1d736-1d74e 1d750-1d76e 1d770-1d788 1d78a-1d7a8
1d7aa-1d7c2 1d7c4-1d7cb 1df00-1df1e 1df25-1df2a 1e030-1e06d 1e100-1e12c 1e137-1e13d 1e14e 1e290-1e2ad
1e2c0-1e2eb 1e4d0-1e4eb 1e5d0-1e5ed 1e5f0 1e7e0-1e7e6 1e7e8-1e7eb 1e7ed-1e7ee 1e7f0-1e7fe 1e800-1e8c4
1e900-1e943 1e94b 1ee00-1ee03 1ee05-1ee1f 1ee21-1ee22 1ee24 1ee27 1ee29-1ee32 1ee34-1ee37 1ee39 1ee3b 1ee42
1ee47 1ee49 1ee4b 1ee4d-1ee4f 1ee51-1ee52 1ee54 1ee57 1ee59 1ee5b 1ee5d 1ee5f 1ee61-1ee62 1ee64 1ee67-1ee6a
1ee6c-1ee72 1ee74-1ee77 1ee79-1ee7c 1ee7e 1ee80-1ee89 1ee8b-1ee9b 1eea1-1eea3 1eea5-1eea9 1eeab-1eebb
20000-2a6df 2a700-2b739 2b740-2b81d 2b820-2cea1 2ceb0-2ebe0 2ebf0-2ee5d 2f800-2fa1d 30000-3134a 31350-323af
"""
NUMBER_RANGES = """
30-39 b2-b3 b9 bc-be 660-669 6f0-6f9 7c0-7c9 966-96f 9e6-9ef 9f4-9f9 a66-a6f ae6-aef b66-b6f b72-b77 be6-bf2
c66-c6f c78-c7e ce6-cef d58-d5e d66-d78 de6-def e50-e59 ed0-ed9 f20-f33 1040-1049 1090-1099 1369-137c
16ee-16f0 17e0-17e9 17f0-17f9 1810-1819 1946-194f 19d0-19da 1a80-1a89 1a90-1a99 1b50-1b59 1bb0-1bb9 1c40-1c49
1c50-1c59 2070 2074-2079 2080-2089 2150-2182 2185-2189 2460-249b 24ea-24ff 2776-2793 2cfd 3007 3021-3029
3038-303a 3192-3195 3220-3229 3248-324f 3251-325f 3280-3289 32b1-32bf a620-a629 a6e6-a6ef a830-a835 a8d0-a8d9
a900-a909 a9d0-a9d9 a9f0-a9f9 aa50-aa59 abf0-abf9 ff10-ff19 10107-10133 10140-10178 1018a-1018b 102e1-102fb
10320-10323 10341 1034a 103d1-103d5 104a0-104a9 10858-1085f 10879-1087f 108a7-108af 108fb-108ff 10916-1091b
109bc-109bd 109c0-109cf 109d2-109ff 10a40-10a48 10a7d-10a7e 10a9d-10a9f 10aeb-10aef 10b58-10b5f 10b78-10b7f
10ba9-10baf 10cfa-10cff 10d30-10d39 10d40-10d49 10e60-10e7e 10f1d-10f26 10f51-10f54 10fc5-10fcb 11052-1106f
110f0-110f9 11136-1113f 111d0-111d9 111e1-111f4 112f0-112f9 11450-11459 114d0-114d9 11650-11659 116c0-116c9
116d0-116e3 11730-1173b 118e0-118f2 11950-11959 11bf0-11bf9 11c50-11c6c 11d50-11d59 11da0-11da9 11f50-11f59
11fc0-11fd4 12400-1246e 16130-16139 16a60-16a69 16ac0-16ac9 16b50-16b59 16b5b-16b61 16d70-16d79 16e80-16e96
1ccf0-1ccf9 1d2c0-1d2d3 1d2e0-1d2f3 1d360-1d378 1d7ce-1d7ff 1e140-1e149 1e2f0-1e2f9 1e4f0-1e4f9 1e5f1-1e5fa
1e8c7-1e8cf 1e950-1e959 1ec71-1ecab 1ecad-1ecaf 1ecb1-1ecb4 1ed01-1ed2d 1ed2f-1ed3d 1f100-1f10c 1fbf0-1fbf9
"""


def char_class(ranges: str) -> str:
    """ "41-5a b5" -> "A-Zµ": hex ranges as the inside of a regex [...] class."""
    def char(hex_code):
        return re.escape(chr(int(hex_code, 16)))
    return "".join("-".join(map(char, r.split("-"))) for r in ranges.split())


LETTERS, NUMBERS = char_class(LETTER_RANGES), char_class(NUMBER_RANGES)
SPLIT = re.compile(split_pattern(LETTERS, NUMBERS))      # SPLIT.findall(text) -> the words (part 2)

# HF's normalizers use older Unicode tables than Python's unicodedata (14.0 in Python 3.11): to HF these
# combining marks, added in Unicode 10.0-14.0, are plain characters, never reordered, composed or decomposed
# ("\u0301\u1abf" stays as it is in HF, unicodedata puts U+1ABF first). So the text is normalized in the
# stretches between them. (tests/test_bpe.py compares with HF on every code point in several contexts; with
# a Python whose unicodedata knows Unicode 15.0 or later, it would name the newer marks that belong here.)
HF_INERT_MARKS = char_class("""
7fd 898-89f 8ca-8d3 9fe c3c d3b-d3c eba 1715 1abf-1ace 1df6-1dfa a82c 10d24-10d27 10eab-10eac
10f46-10f50 10f82-10f85 11070 1133b 1145e 11839-1183a 1193d-1193e 11943 119e0 11a34 11a47 11a99
11d42 11d44-11d45 11d97 16ff0-16ff1 1e130-1e136 1e2ae 1e2ec-1e2ef
""")
HF_INERT = re.compile(f"([{HF_INERT_MARKS}])")
_HF_INERT_SET = frozenset(HF_INERT.findall("".join(map(chr, range(0x20000)))))   # (a set: a faster test)


def hf_normalize(form: str, text: str) -> str:
    """unicodedata.normalize(form, text) as HF tokenizers' normalizer does it (see HF_INERT_MARKS)."""
    if _HF_INERT_SET.isdisjoint(text):
        return unicodedata.normalize(form, text)
    return "".join(part if i % 2 else unicodedata.normalize(form, part)
                   for i, part in enumerate(HF_INERT.split(text)))      # odd parts: the marks


if __name__ == "__main__":
    main()
