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

Exactness: the ids equal tiktoken's for GPT-2 and HF tokenizers' for GPT-NeoX on any text (tests/test_bpe.py
checks this on random unicode). Speed: pure Python, so the slow parts are kept off the hot path: a
word cache (section 5) makes BPE run once per distinct word, ASCII text is split with the standard
library's faster `re` (section 2), and long non-ASCII words (a CJK clause) are cut where no merge can join
two characters, so that their pieces are cached too (section 3b), and a new word that is a token BPE
gives whole skips BPE (section 3c). See bench/bpe.py for figures against tiktoken.

Usage:
    tok = Tokenizer.from_pretrained("../shared/tokenizers/gpt2")   # or "gpt2", "EleutherAI/pythia-160m"
    tok.encode("Hello world")                   # [15496, 995]
    tok.decode([15496, 995])                    # 'Hello world'
    python bpe.py "Hello world"                 # teaching mode: shows every merge
"""
import argparse
import codecs
import json
import numbers
import re
import sys
import unicodedata
from collections import Counter
from itertools import chain, pairwise, repeat
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
SPLIT = regex.compile(GPT2_SPLIT_PATTERN)       # SPLIT.findall(text) -> the words

# The same split, twice as fast on ASCII text (the split is most of the encoding time once words are
# cached): the standard library's `re` is faster than `regex` but has no \p{L}. On ASCII text the pattern
# needs none: the letters are [A-Za-z], the numbers [0-9], the spaces [\t\n\v\f\r ] (what \s means with
# re.ASCII, and the ASCII part of Unicode's White_Space). So split_words() gives the ASCII stretches of a
# text to ASCII_SPLIT and the rest to SPLIT. It cuts the text only right after an ASCII non-space that is
# followed by an ASCII space: no word spans such a point (no alternative of the pattern puts a non-space
# before a space in one word), and no word before it looks beyond it (the lookahead (?!\S) only follows
# whitespace), so each part splits into exactly the words it has inside the whole text.
# (Letters come first, the most common start, and the contractions share their "'": alternatives that cannot
# start with the same character may be reordered; the contractions must stay before the punctuation runs.)
ASCII_SPLIT = re.compile(r"""[ ]?[A-Za-z]+|'(?:[st]|re|ve|m|ll|d)|[ ]?[^\sA-Za-z0-9]+|[ ]?[0-9]+|\s+(?!\S)|\s+""",
                         re.ASCII)
ASCII_SPACES = " \t\n\x0b\x0c\r"
ASCII_NON_SPACES = "".join(chr(c) for c in range(128) if chr(c) not in ASCII_SPACES)
ASCII_CUT = re.compile(f"[{re.escape(ASCII_NON_SPACES)}](?=[{ASCII_SPACES}])")   # a cut right after it
ASCII_STRETCH = regex.compile(r"[\x00-\x7f]{64,}")   # shorter ones are not worth the extra calls


def split_words(text: str) -> list[str]:
    """The words of `text` by GPT2_SPLIT_PATTERN: SPLIT.findall(text), only faster (see ASCII_SPLIT)."""
    if text.isascii():
        return ASCII_SPLIT.findall(text)
    words = []
    done = 0                                        # text[:done] is split
    for stretch in ASCII_STRETCH.finditer(text):
        begin, end = stretch.span()
        if begin > 0:                               # from the first cut in the stretch ...
            cut = ASCII_CUT.search(text, begin, end)
            if cut is None:
                continue
            begin = cut.end()
        if end < len(text):                         # ... to the last: drop the word that touches the
            # non-ASCII character after the stretch, and the spaces before that word
            end = begin + len(text[begin:end].rstrip(ASCII_NON_SPACES).rstrip(ASCII_SPACES))
        words += SPLIT.findall(text, done, begin)
        words += ASCII_SPLIT.findall(text, begin, end)
        done = end
    words += SPLIT.findall(text, done)
    return words


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
# 3b. Long words: cut them where no merge can join two characters
# ------------------------------------------------------------------------------------------------------
# A Chinese or Japanese clause has no spaces, so the split pattern leaves it as one long word
# ("これはテストです": 8 characters, 24 bytes) that rarely occurs twice: the word cache does not help, and BPE
# pays for every merge. But most merges join bytes of one character (3 bytes for a CJK character); few
# join two characters (GPT-2: about 200 of its 50,000 that involve a non-ASCII character). Where the
# merges list has no merge that can join the character before a point of the word to the one after it,
# BPE never merges across that point, so the word can be cut there and each piece encoded on its own,
# through the cache: single characters repeat even when the clauses do not.
# Why this is exact: the first token to span the point must come from a merge of a left side that ends
# there and a right side that starts there. With no such merge, each piece evolves as if alone (its pairs
# change only through its own merges, taken in the same rank order), so BPE(word) is the concatenation
# of BPE(piece). The check is per pair of characters: the left side of a merge ends with the character
# before the point, or with its last bytes; the right side starts with the character after, or with its
# first bytes. Between two ASCII characters merges are everywhere, and English words are short and
# cached anyway: those points are never cut.


def utf8_length(first_byte: int) -> int:
    """The length of the UTF-8 character that starts with this byte; 0 for a continuation byte (10xxxxxx)."""
    return 1 if first_byte < 0x80 else 0 if first_byte < 0xC0 else 2 if first_byte < 0xE0 else \
        3 if first_byte < 0xF0 else 4


_ASCII_CHARS = {BYTE_TO_CHAR[b] for b in range(0x80)}                    # tokens as printable characters
_CONTINUATION_CHARS = {BYTE_TO_CHAR[b] for b in range(0x80, 0xC0)}


def character_joins(merges) -> tuple[dict, dict]:
    """The merges that join two characters, not both ASCII: ({end: ranks}, {start: ranks}). An end is
    the last character of the merge's left side, or its last bytes when the left side holds only the
    tail of a character; a start is the first character of the right side, or its first bytes."""
    ends, starts = {}, {}
    for rank, (left, right) in enumerate(merges):
        if right[0] in _CONTINUATION_CHARS or (left[-1] in _ASCII_CHARS and right[0] in _ASCII_CHARS):
            continue                                 # joins inside a character, or two ASCII characters
        a, b = token_bytes(left), token_bytes(right)
        last = max((i for i, byte in enumerate(a) if utf8_length(byte)), default=0)   # its last character
        if utf8_length(a[last]) not in (0, len(a) - last):
            continue                                 # the left side ends inside a character
        ends.setdefault(a[last:], set()).add(rank)
        starts.setdefault(b[:utf8_length(b[0])], set()).add(rank)
    return ends, starts


# character_joins leaves out the merges of two ASCII characters, which are everywhere: an ASCII character
# is taken to join any ASCII character (a pseudo-rank they all share), so those points are never cut.
ASCII_JOINS = frozenset([-1])


def merges_ending_with(char: str, ends: dict) -> frozenset:
    """The ranks of the merges (of character_joins) whose left side ends with `char` or its last bytes."""
    utf8 = char.encode()
    found = frozenset(rank for k in range(len(utf8)) for rank in ends.get(utf8[k:], ()))
    return found | ASCII_JOINS if char < "\x80" else found


def merges_starting_with(char: str, starts: dict) -> frozenset:
    """The ranks of the merges whose right side starts with `char` or its first bytes."""
    utf8 = char.encode()
    found = frozenset(rank for k in range(1, len(utf8) + 1) for rank in starts.get(utf8[:k], ()))
    return found | ASCII_JOINS if char < "\x80" else found


class PerCharacter(dict):
    """{character: fn(character)}, computed on first use."""
    def __init__(self, fn, table):
        super().__init__()
        self.fn, self.table = fn, table

    def __missing__(self, char):
        self[char] = value = self.fn(char, self.table)
        return value


def cut_word(word: str, joins_after: PerCharacter, joins_before: PerCharacter) -> list[str]:
    """Cut `word` between any two characters that no merge joins. joins_after[c]: the merges whose left
    side can end with c (merges_ending_with); joins_before[c]: those whose right side can start with c."""
    pieces, start = [], 0
    for i, joins in enumerate(map(joins_after.__getitem__, word[:-1]), 1):
        if joins and not joins.isdisjoint(joins_before[word[i]]):   # usually empty: most characters
            continue                                                # end no merge of character_joins
        pieces.append(word[start:i])
        start = i
    pieces.append(word[start:])
    return pieces


# ------------------------------------------------------------------------------------------------------
# 3c. Words that are tokens: take them whole, where that is what BPE would give
# ------------------------------------------------------------------------------------------------------
# Most new words are vocabulary entries (" language", " returns"): in English prose about 3 in 5 of the
# distinct words, and the cost of a cold cache is BPE on new words. tiktoken takes such a word as its
# token without running BPE. That is exact only if BPE on the token's own bytes gives the token back,
# which a merges list does not promise: with the merges ("b", "c") then ("a", "b") then ("ab", "c"), the
# token "abc" exists, but BPE on "abc" merges "b c" first and ends at ["a", "bc"]. So bpe.py takes a word
# whole only if it is a "whole token", found once per tokenizer (~0.2 s for 50,000 merges; in GPT-2's and
# NeoX's files every token made by a merge is whole).
# A token made by the merge (left, right) of rank r is whole when left and right are whole (so made by
# lower ranks) and BPE on the bytes of left + right forms both before any merge joins across the point
# between them: then only (left, right) is left, and r joins it. That last check walks BPE's run
# backwards, from [left, right] down to single bytes. Here BPE takes its merges in increasing rank
# (every token is made from parts made by lower ranks), so the last merge to happen is the one that
# formed whichever of left and right has the higher rank (of equal ranks, the right one: ties go to the
# leftmost pair first). Undo it: that side's inner part now stands at the point, and the pair at the
# point must not have been the one to go first, so its rank must be above the rank just undone (or
# equal, when what was undone lies left of the point). Repeat, checking the pair at the point each time.
# (GitHub's `bpe` crate uses a similar walk to check whether two tokens can stand side by side.)


def whole_tokens(merges: list[tuple[str, str]], ranks: dict) -> dict[str, tuple[int, str, str]]:
    """The tokens that BPE gives whole for their own bytes: {token: (rank, left, right) of the merge that
    makes it}, single bytes as (-1, "", ""). Left out as well: a token that two different merges make
    (this check cannot tell which one BPE takes). A merge listed twice counts at its last rank, as in BPE."""
    made = {}
    for pair in merges:
        token = pair[0] + pair[1]
        made[token] = pair if made.get(token, pair) == pair else None
    whole = {char: (-1, "", "") for char in BYTE_TO_CHAR.values()}
    for rank, (left, right) in enumerate(merges):      # lower ranks first, so the parts are decided
        token = left + right
        if (made[token] == (left, right) and ranks[left, right] == rank and left in whole and right in whole
                and not joins_across(left, right, whole, ranks)):
            whole[token] = (rank, left, right)
    return whole


def joins_across(left: str, right: str, whole: dict, ranks: dict) -> bool:
    """Does BPE on the bytes of left + right (both whole tokens) merge across the point between them
    before it has formed left and right? Walks the run backwards (see above)."""
    rank_left, rank_right = whole[left][0], whole[right][0]
    while rank_left >= 0 or rank_right >= 0:
        if rank_left > rank_right:                     # undo the merge that formed `left`: its right part
            undone, left = rank_left, whole[left][2]   # was at the point, and that merge came first
            rank_left = whole[left][0]
            if ranks.get((left, right), NO_MERGE) < undone:
                return True
        else:                                          # undo the merge that formed `right`
            undone, right = rank_right, whole[right][1]
            rank_right = whole[right][0]
            if ranks.get((left, right), NO_MERGE) <= undone:   # a tie: the pair at the point is leftmost
                return True
    return False


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

NEVER_IN_UTF8 = {0xC0, 0xC1, *range(0xF5, 0x100)}   # byte values that no UTF-8 text contains
NORMALIZERS = ("NFC", "NFD", "NFKC", "NFKD")   # the tokenizer.json normalizers this file implements

# The file formats, in the order a directory (or Hub repo) is searched: (file names, constructor).
FORMATS = [
    (("tokenizer.json",), "from_tokenizer_json"),
    (("vocab.json", "merges.txt"), "from_vocab_merges"),
    (("encoder.json", "vocab.bpe"), "from_encoder_bpe"),
]
_FORMAT_NAMES = "tokenizer.json, or vocab.json + merges.txt, or encoder.json + vocab.bpe"


class Tokenizer:
    """A byte-level BPE tokenizer: vocabulary (token -> id), ranked merges, and added tokens.

    Build one with `Tokenizer.from_pretrained(dir_or_hub_name)` or a per-format constructor. Tokens are
    written as printable characters (see bytes_to_unicode), as in the files. The other arguments are the
    tokenizer.json options: `normalizer` ("NFC", ...) applied to the text before BPE; ByteLevel's
    `add_prefix_space` (a space in front of the text, as RoBERTa does) and `use_regex` (False: the whole
    text is one word); BPE's `ignore_merges` (a word that is a token is taken whole, as in Llama 3).

    Attributes: vocab {token: id}, merges [(left, right)] in rank order, merge_ranks {(left, right): rank},
    whole_tokens (the tokens BPE gives whole: section 3c), added_tokens, special_tokens {string: id},
    eos_token_id (of "<|endoftext|>", or None), vocab_size (the highest id + 1: the rows an embedding
    table needs).
    """

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]], added_tokens=(), *,
                 normalizer: str | None = None, add_prefix_space: bool = False, use_regex: bool = True,
                 ignore_merges: bool = False):
        if normalizer is not None and normalizer not in NORMALIZERS:
            raise ValueError(f"unsupported normalizer {normalizer!r}: bpe.py has {NORMALIZERS} or none")
        for left, right in merges:
            for token in (left, right, left + right):
                if token not in vocab:
                    raise ValueError(f"merge {left!r} {right!r}: {token!r} is not in the vocabulary")
        self.vocab = vocab
        self.merges = merges
        # (a pair listed twice: the last rank wins, as in HF and in GPT-2's encoder.py)
        self.merge_ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.added_tokens = list(added_tokens)
        self.special_tokens = {t.content: t.id for t in self.added_tokens if t.special}
        self.eos_token_id = self.special_tokens.get("<|endoftext|>")
        self.normalizer = normalizer
        self.add_prefix_space = add_prefix_space
        self.use_regex = use_regex
        self.ignore_merges = ignore_merges
        # decoding: the bytes of every id (added tokens override vocab entries with the same id)
        self.id_to_bytes = {i: token_bytes(t) for t, i in vocab.items()}
        self.id_to_bytes.update({t.id: token_bytes(t.content) for t in self.added_tokens})
        self.vocab_size = max(self.id_to_bytes) + 1
        # Every byte must have a token, or some text could not be encoded (HF would silently drop the
        # byte). NeoX has none for 0xC0, 0xC1, 0xF5-0xFF: bytes that never occur in UTF-8, which is fine.
        missing = [b for b in range(256) if BYTE_TO_CHAR[b] not in vocab and b not in NEVER_IN_UTF8]
        if missing:
            listed = ", ".join(f"0x{b:02X}" for b in missing[:8]) + (" ..." if len(missing) > 8 else "")
            raise ValueError(f"not a byte-level BPE vocabulary: no token for the bytes {listed}")
        self._cache: dict[str, tuple[int, ...]] = {}   # word -> ids, see CACHE_MAX_WORDS
        # section 3b: which merges can join a character to the next
        ends, starts = character_joins(merges)
        self._joins_after = PerCharacter(merges_ending_with, ends)
        self._joins_before = PerCharacter(merges_starting_with, starts)
        self.whole_tokens = whole_tokens(merges, self.merge_ranks)     # section 3c
        self._added_patterns: dict[frozenset, tuple] = {}
        self._special_patterns: dict[frozenset, re.Pattern] = {}

    # --- loading -------------------------------------------------------------------------------------
    @classmethod
    def from_tokenizer_json(cls, path) -> "Tokenizer":
        """HF tokenizers' single file: a BPE model, added tokens, normalizer and ByteLevel options."""
        config = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(config, dict) or "model" not in config:
            raise ValueError(f"{path} is not a tokenizers' tokenizer.json: it has no \"model\"")
        model = config["model"]
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
        # HF tokenizers does not read the ids written in "added_tokens", it assigns them: a token already in
        # the vocab keeps its vocab id, a new one gets the next id after the vocab and earlier added tokens.
        # (In well-formed files such as GPT-2's and NeoX's the two agree.)
        vocab, added, ids = model["vocab"], [], {}
        for t in config.get("added_tokens") or []:
            content = t["content"]
            if content and content not in ids:
                ids[content] = vocab.get(content, max([len(vocab), *(i + 1 for i in ids.values())]))
                flags = {f: t.get(f, False) for f in AddedToken._fields[2:]}   # special, lstrip, ...
                added.append(AddedToken(content, ids[content], **flags))
        # (ByteLevel's trim_offsets only changes character offsets, which this file does not compute.)
        return cls(vocab, _read_merges(model["merges"]), added, normalizer=normalizer,
                   add_prefix_space=pre.get("add_prefix_space", False), use_regex=pre.get("use_regex", True),
                   ignore_merges=model.get("ignore_merges", False))

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
        for files, constructor in FORMATS:
            if all((directory / f).is_file() for f in files):
                return getattr(cls, constructor)(*(directory / f for f in files))
        raise FileNotFoundError(f"no tokenizer files in {directory}: looked for {_FORMAT_NAMES}")

    @classmethod
    def from_pretrained(cls, name_or_dir, *, revision: str | None = None) -> "Tokenizer":
        """A local directory (or a tokenizer.json file), else a Hub repo id such as "gpt2",
        "openai-community/gpt2" or "EleutherAI/pythia-160m", downloaded with huggingface_hub."""
        path = Path(name_or_dir).expanduser()
        if path.is_dir():
            return cls.from_dir(path)
        if path.is_file():
            return cls.from_tokenizer_json(path)
        name = str(name_or_dir)
        if name.startswith((".", "/", "~")) or name.count("/") > 1:     # a path, not a Hub "org/name"
            raise FileNotFoundError(f"tokenizer directory {name} does not exist (it should hold "
                                    f"{_FORMAT_NAMES})")
        return cls._from_hub(name, revision)

    @classmethod
    def _from_hub(cls, repo_id: str, revision: str | None) -> "Tokenizer":
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

        offline = None
        for files, constructor in FORMATS:
            try:
                paths = [hf_hub_download(repo_id, f, revision=revision) for f in files]
            except LocalEntryNotFoundError as error:   # no network (or offline mode) and not in the cache
                offline = offline or error
                continue
            except EntryNotFoundError:                  # the repo does not have this format: try the next
                continue
            except Exception as error:                  # no such repo or revision, gated repo, HTTP error
                raise OSError(f"could not get the tokenizer of {repo_id!r} from the Hugging Face Hub: "
                              f"{type(error).__name__}: {error}. Pass a local directory holding "
                              f"{_FORMAT_NAMES}") from error
            return getattr(cls, constructor)(*paths)
        if offline:
            raise OSError(f"could not download the tokenizer of {repo_id!r} (no network?) and it is not in "
                          f"the Hugging Face cache. Pass a local directory with {_FORMAT_NAMES}") from offline
        raise FileNotFoundError(f"Hub repo {repo_id!r} has none of {_FORMAT_NAMES}")

    def save(self, directory) -> None:
        """Write vocab.json + merges.txt (HF's format, loadable by `tokenizers.models.BPE.from_file`)."""
        if self.normalizer or self.add_prefix_space or not self.use_regex or self.ignore_merges or any(
                not t.special or t.lstrip or t.rstrip or t.single_word for t in self.added_tokens):
            raise ValueError("vocab.json + merges.txt cannot hold this tokenizer's normalizer, ByteLevel "
                             "options or non-special added tokens (keep its tokenizer.json instead)")
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
        With allowed_special="all" this gives the ids of HF's `encode(text, add_special_tokens=False)` (a
        post-processor that adds BOS/EOS tokens is not applied: GPT-2's and NeoX's add none)."""
        _check_text(text)
        allowed = self._check_allowed(allowed_special)
        disallowed = frozenset(self.special_tokens.keys() - allowed)
        if disallowed and (found := self._special_pattern(disallowed).search(text)):
            raise ValueError(f"the text contains the special token {found.group()!r}. To encode it as the "
                             f"special token, pass allowed_special={{{found.group()!r}}} (or \"all\"); to "
                             "encode it as plain text, use encode_ordinary(text)")
        return self._encode(text, allowed)

    def encode_ordinary(self, text: str) -> list[int]:
        """Text -> ids, special token strings encoded as the plain text they are: "<|endoftext|>" -> 7 ids."""
        _check_text(text)
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

    def _special_pattern(self, specials: frozenset) -> re.Pattern:
        if specials not in self._special_patterns:
            self._special_patterns[specials] = _longest_first_pattern(specials)
        return self._special_patterns[specials]

    def _encode(self, text: str, specials: frozenset) -> list[int]:
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
        spaces) are cut out of it. Returns (text to BPE, None) and (token text, id) pieces, in order.
        `specials`: the special tokens to match (the others are left as plain text)."""
        (raw, raw_tokens), (normalized, normalized_tokens) = self._added_token_patterns(specials)
        if raw is None and normalized is None and self.normalizer is None:
            return [(text, None)] if text else []      # the common case: GPT-2 text without specials
        pieces = []
        for piece, token_id in split_on_added_tokens(text, raw, raw_tokens):
            if token_id is None:
                if self.normalizer:
                    piece = unicodedata.normalize(self.normalizer, piece)
                pieces += split_on_added_tokens(piece, normalized, normalized_tokens)
            else:
                pieces.append((piece, token_id))
        return pieces

    def _added_token_patterns(self, specials: frozenset):
        """For the non-special added tokens plus the `specials`: (pattern, {content: token}) of those
        matched in the raw text, and of those matched in the normalized text. Built once per set."""
        if specials not in self._added_patterns:
            raw, normalized = {}, {}
            for t in self.added_tokens:
                if t.special and t.content not in specials:
                    continue
                if not t.normalized:
                    raw.setdefault(t.content, t)
                elif self.normalizer:      # HF normalizes the token too, to match it in normalized text
                    normalized.setdefault(unicodedata.normalize(self.normalizer, t.content), t)
                else:
                    normalized.setdefault(t.content, t)
            self._added_patterns[specials] = ((_longest_first_pattern(raw), raw),
                                              (_longest_first_pattern(normalized), normalized))
        return self._added_patterns[specials]

    def words(self, text: str) -> list[str]:
        """Split text that holds no added token into words (see GPT2_SPLIT_PATTERN)."""
        if self.add_prefix_space and not text.startswith(" "):
            text = " " + text
        return split_words(text) if self.use_regex else [text]

    def _encode_words(self, text: str) -> list[int]:
        """Ids of text free of added tokens: split into words, each word's ids from the cache or BPE."""
        if len(self._cache) > CACHE_MAX_WORDS:
            self._cache = {}       # a new dict, not clear(): another thread may be reading the old
        return list(self._cached_ids(self.words(text)))

    def _cached_ids(self, words: list[str]):
        """The ids of `words`, one after the other: from the cache, where the words not in it yet go first."""
        cache = self._cache
        for word in set(words).difference(cache):     # the words never seen before
            cache[word] = self._word_ids(word)
        return chain.from_iterable(map(cache.__getitem__, words))   # C loops: no Python per word

    def clear_cache(self) -> None:
        """Forget every cached word and the per-character tables (for benchmarks: a fresh tokenizer)."""
        self._cache = {}
        self._joins_after.clear()
        self._joins_before.clear()

    def _word_ids(self, word: str) -> tuple[int, ...]:
        """A word's ids. A word with non-ASCII characters is first cut where no merge can join two
        characters (section 3b), and its pieces go through the cache (not with ignore_merges, which takes
        a whole word that is a token). A piece cuts no further, so it comes back here as one piece. A word
        that is a whole token (section 3c) is that token; any other word takes BPE."""
        if not (word.isascii() or self.ignore_merges):
            pieces = cut_word(word, self._joins_after, self._joins_before)
            if len(pieces) > 1:
                return tuple(self._cached_ids(pieces))
        return tuple(map(self.vocab.__getitem__, self.word_tokens(word)))

    def word_tokens(self, word: str, trace: list | None = None) -> list[str]:
        """The tokens of one word: a whole token (section 3c) is itself, other words take BPE. With
        `trace` (the teaching mode, see bpe()) every word takes BPE, to show its merges."""
        chars = to_printable(word)
        if (trace is None and chars in self.whole_tokens) or (self.ignore_merges and chars in self.vocab):
            return [chars]
        return bpe(chars, self.merge_ranks, trace)

    # --- decoding ------------------------------------------------------------------------------------
    def decode_bytes(self, ids) -> bytes:
        """Ids -> the bytes they stand for (which may end in the middle of a UTF-8 character)."""
        if not isinstance(ids, (list, tuple)):
            ids = list(ids)
        try:
            return b"".join(map(self.id_to_bytes.__getitem__, ids))
        except (KeyError, TypeError):
            pass
        for i in ids:                                  # find the culprit, for a clear message
            if not isinstance(i, numbers.Integral):
                raise TypeError(f"token ids must be ints, got {type(i).__name__} {i!r}"
                                + (" (pass tensor.tolist())" if hasattr(i, "tolist") else ""))
            if i not in self.id_to_bytes:
                raise ValueError(f"unknown token id {i}: this tokenizer has ids 0..{self.vocab_size - 1}")
        raise AssertionError("unreachable")

    def decode(self, ids) -> str:
        """Ids -> text. Bytes that are not valid UTF-8 (ids cut in the middle of a character, or random
        ids) become U+FFFD '�', as in tiktoken and HF tokenizers."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def token_strings(self, ids) -> list[str]:
        """Ids as their vocabulary entries ("Ġworld"), for display."""
        inverse = {i: t for t, i in self.vocab.items()} | {t.id: t.content for t in self.added_tokens}
        return [inverse[i] for i in ids]


def _check_text(text):
    if not isinstance(text, str):
        raise TypeError(f"encode takes a str, got {type(text).__name__}"
                        + (" (decode bytes first: text.decode('utf-8'))" if isinstance(text, bytes) else ""))


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
# 7. Training: learn merges from a text
# ------------------------------------------------------------------------------------------------------
def train(text: str, vocab_size: int, *, special_tokens=()) -> Tokenizer:
    """Learn a byte-level BPE of `vocab_size` ids from `text`: ids 0-255 are the bytes, then one id per
    merge, then the `special_tokens`. Save it with `.save(dir)` (vocab.json + merges.txt).

    Training is the mirror image of encoding: split the text into words with the same pattern, start
    with every word as single bytes, and repeatedly merge the most frequent adjacent pair (counted over
    all words, weighted by how often each word occurs). The merges, in the order learned, are the ranks.
    Pair counts are updated only for the words that contain the merged pair, not recounted from scratch;
    finding the most frequent pair is still a scan of all pairs per merge: fine for the few thousand
    merges of an experiment, a heap would be the next step for GPT-2's 50,000 on a large corpus.
    """
    n_merges = vocab_size - 256 - len(special_tokens)
    if n_merges < 0:
        raise ValueError(f"vocab_size {vocab_size} < 256 bytes + {len(special_tokens)} special tokens")
    word_counts = Counter(split_words(text))
    words = [list(to_printable(w)) for w in word_counts]      # each distinct word as its list of symbols
    counts = list(word_counts.values())
    pair_counts: Counter = Counter()                          # (left, right) -> occurrences in the text
    where: dict[tuple[str, str], set[int]] = {}               # (left, right) -> the words that contain it
    for w, (symbols, n) in enumerate(zip(words, counts)):
        for pair in pairwise(symbols):
            pair_counts[pair] += n
            where.setdefault(pair, set()).add(w)

    vocab = {BYTE_TO_CHAR[b]: b for b in range(256)}
    merges = []
    while len(merges) < n_merges and pair_counts:
        best = max(pair_counts, key=pair_counts.__getitem__)    # ties: the pair seen first in the text
        merges.append(best)
        vocab.setdefault(best[0] + best[1], len(vocab))
        for w in where.pop(best):
            symbols, n = words[w], counts[w]
            for pair in pairwise(symbols):               # forget the word's old pairs ...
                pair_counts[pair] -= n
            symbols[:] = _merge_pair(symbols, best)
            for pair in pairwise(symbols):               # ... and count its new ones
                pair_counts[pair] += n
                where.setdefault(pair, set()).add(w)
        pair_counts = +pair_counts                                # drop pairs whose count fell to zero
    for special in special_tokens:
        vocab[special] = len(vocab)
    return Tokenizer(vocab, merges, [AddedToken(s, vocab[s]) for s in special_tokens])


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
# 8. Teaching mode: python bpe.py "some text"
# ------------------------------------------------------------------------------------------------------
DEFAULT_TOKENIZER = Path(__file__).resolve().parent.parent / "shared" / "tokenizers" / "gpt2"


def explain(tokenizer: Tokenizer, text: str, out=None) -> list[int]:
    """Print how `text` is encoded (to `out`, default stdout): added tokens, words, every merge, the ids."""
    def show(*parts):
        print(*parts, file=out or sys.stdout)

    show(f"text: {text!r}")
    ids = []
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
            chars = to_printable(word)
            show(f"\n  {word!r} as bytes: {' '.join(chars)}")
            for left, right, rank, parts in steps:
                show(f"    merge rank {rank:>5}: {left} + {right} -> {' '.join(parts)}")
            if chars in tokenizer.whole_tokens:
                show("    (a whole token: encode() takes it without the merges, see section 3c)")
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
    tokenizer = Tokenizer.from_pretrained(args.tokenizer)
    print(f"tokenizer: {args.tokenizer}: {tokenizer}")
    print("(bytes are shown as GPT-2's printable characters: Ġ is a space, Ċ a newline)")
    explain(tokenizer, text=args.text)


if __name__ == "__main__":
    main()
