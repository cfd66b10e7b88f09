r"""Speed for bpe.py: the same ids, sooner. Read bpe.py first; this file only makes it fast.

    tok = bpe_fast.Tokenizer.from_pretrained("models/gpt2-tokenizer")   # bpe.Tokenizer, with the speed-ups
    tok = bpe_fast.train(text, vocab_size=2048)                          # bpe.train, learning in n log n

This file imports bpe.py, never the other way round: its Tokenizer is bpe.Tokenizer with SPEED_UPS set
to this module, and `fast=False` turns them off again.

bpe.py is the tokenizer, simple and exact. `Tokenizer(..., fast=True)` (the default) hands two of its
steps to a FastPath from here: splitting the text into words, and turning a new word into ids. Each
shortcut below is exact, gives the ids bpe.py's plain code gives, and says why; tests/test_bpe.py checks
the ids with fast=True and fast=False against each other, tiktoken and HF tokenizers.

1. The split: the standard library's `re` on ASCII stretches, `regex`'s built-in \p{L} tables elsewhere
   (bpe.py spells the classes out, which is exact but 3-5x slower to match).
2. Long words: BPE in n log n (a heap over a linked list) instead of bpe.bpe's n² loop.
3. Long non-ASCII words are cut where no merge can join two characters, and the pieces cached.
4. A new word that is a token BPE gives whole skips BPE.
And for bpe.train: 6. the same merges learned in n log n (bpe.learn_merges is quadratic on long words).
What is left is the word cache (bpe.py) plus these: see bench/bpe.py and the README for figures.
"""
import heapq
import re
import sys
from array import array
from functools import cache
from itertools import chain, repeat

import regex

import bpe
from bpe import BYTE_TO_CHAR, NO_MERGE, bpe as simple_bpe, to_printable, token_bytes


# ------------------------------------------------------------------------------------------------------
# 1. The split, faster
# ------------------------------------------------------------------------------------------------------
# `regex` knows \p{L} and \p{N} natively (fast), but from its own Unicode version, which may be newer than
# the references' 16.0 (bpe.py part 2). disputed() finds, once, the code points on which the installed
# `regex` and bpe.py's pinned tables disagree (4,657 with regex's Unicode 17.0, none with 16.0); a stretch of
# non-ASCII text that holds one of them is split by bpe.SPLIT, the exact pinned pattern (slower, same words).
UNICODE_SPLIT = regex.compile(bpe.GPT2_SPLIT_PATTERN)


@cache
def disputed() -> frozenset[str]:
    r"""The characters that `regex`'s \p{L} / \p{N} / \s classify unlike bpe.py's tables (0.5 s, once)."""
    every = "".join(map(chr, (*range(0xD800), *range(0xE000, 0x110000))))
    differ = set()
    for ours, theirs in ((bpe.LETTER_RANGES, r"\p{L}"), (bpe.NUMBER_RANGES, r"\p{N}")):
        differ |= code_points(ours) ^ set(map(ord, "".join(regex.findall(theirs + "+", every))))
    differ |= set(map(ord, re.findall(f"[{bpe.WHITE_SPACE}]", every))) ^ set(map(ord, regex.findall(r"\s", every)))
    return frozenset(map(chr, differ))


def split_unicode(text: str, begin: int = 0, end: int | None = None) -> list[str]:
    """The words of text[begin:end]: by UNICODE_SPLIT, unless it holds a disputed character."""
    part = text[begin:end]
    return (UNICODE_SPLIT if disputed().isdisjoint(part) else bpe.SPLIT).findall(part)


def code_points(ranges: str) -> set[int]:
    """bpe.py's "41-5a b5" as {0x41, ..., 0x5a, 0xb5}."""
    found = set()
    for r in ranges.split():
        first, _, last = r.partition("-")
        found.update(range(int(first, 16), int(last or first, 16) + 1))
    return found


# The same split, twice as fast on ASCII text (the split is most of the encoding time once words are
# cached): the standard library's `re` is faster than `regex` but has no \p{L}. On ASCII text the pattern
# needs none: the letters are [A-Za-z], the numbers [0-9], the spaces [\t\n\v\f\r ] (what \s means with
# re.ASCII, and the ASCII part of Unicode's White_Space). So split_words() gives the ASCII stretches of a
# text to ASCII_SPLIT and the rest to UNICODE_SPLIT. It cuts the text only right after an ASCII non-space that is
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
    """bpe.split_words(text), only faster (see ASCII_SPLIT and UNICODE_SPLIT)."""
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
        words += split_unicode(text, done, begin)
        words += ASCII_SPLIT.findall(text, begin, end)
        done = end
    words += split_unicode(text, done)
    return words


# ------------------------------------------------------------------------------------------------------
# 2. BPE in n log n: a heap of candidate merges over a linked list of parts
# ------------------------------------------------------------------------------------------------------
# bpe.bpe finds the lowest-ranked pair by scanning all pairs, once per merge: n² for a word of n bytes
# (a megabyte of base64 or DNA is one word). bpe_heap makes the same merges in the same order: it keeps
# every adjacent pair in a heap keyed (rank, position), so the heap's top is the lowest rank and, among
# equal ranks, the leftmost pair: bpe.bpe's choice. A merge changes only the pairs around the new part;
# those are pushed, and the entries they replace are left in the heap and skipped when they surface
# (stale: the part at their position has since merged with something else). Parts are a linked list over
# the starting positions, next_start[i] = where the part starting at i ends, so a merge is O(1), and
# each of the n - 1 merges at most pushes two entries: O(n log n) in all.
# For short words the plain loop is faster (less bookkeeping): HEAP_MIN_LENGTH is measured on GPT-2.
HEAP_MIN_LENGTH = 56


def bpe_heap(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """bpe.bpe(word, ranks), in O(n log n)."""
    n = len(word)
    next_start = list(range(1, n + 1))                 # the part starting at i ends at next_start[i]
    prev_start = list(range(-1, n - 1))                # the part before the part starting at i starts there
    heap = [(rank, i, i + 1, i + 2) for i in range(n - 1)
            if (rank := ranks.get((word[i], word[i + 1]), NO_MERGE)) != NO_MERGE]
    heapq.heapify(heap)
    while heap:
        rank, i, j, end = heapq.heappop(heap)           # the pair of parts word[i:j], word[j:end]
        if next_start[i] != j or next_start[j] != end:
            continue                                   # stale: one of the two parts has changed
        next_start[i] = end                            # merge: the part at i now ends at `end`
        next_start[j] = -1                             # (the part at j is gone)
        if end < n:
            prev_start[end] = i
            pair = (word[i:end], word[end:next_start[end]])
            if (r := ranks.get(pair, NO_MERGE)) != NO_MERGE:
                heapq.heappush(heap, (r, i, end, next_start[end]))
        if i > 0:
            p = prev_start[i]
            if (r := ranks.get((word[p:i], word[i:end]), NO_MERGE)) != NO_MERGE:
                heapq.heappush(heap, (r, p, i, end))
    parts, i = [], 0
    while i < n:
        parts.append(word[i:next_start[i]])
        i = next_start[i]
    return parts


# ------------------------------------------------------------------------------------------------------
# 3. Long non-ASCII words: cut them where no merge can join two characters
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
# 4. Words that are tokens: take them whole, where that is what BPE would give
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
# 5. The FastPath: what Tokenizer(fast=True) calls
# ------------------------------------------------------------------------------------------------------
class FastPath:
    """A tokenizer's speed-ups: split_words(text) and word_ids(word), the same results as
    bpe.split_words and Tokenizer.word_ids."""

    def __init__(self, tok):
        self.tok = tok
        ends, starts = character_joins(tok.merges)
        self._joins_after = PerCharacter(merges_ending_with, ends)
        self._joins_before = PerCharacter(merges_starting_with, starts)
        self.whole_tokens = whole_tokens(tok.merges, tok.merge_ranks)
        self.split_words = split_words

    def clear_cache(self) -> None:
        self._joins_after.clear()
        self._joins_before.clear()

    def word_ids(self, word: str) -> tuple[int, ...]:
        """A word's ids. A word with non-ASCII characters is first cut where no merge can join two
        characters (section 3), and its pieces go through the tokenizer's word cache (not with
        ignore_merges, which takes a whole word that is a token). A piece cuts no further, so it comes
        back here as one piece. A word that is a whole token (section 4) is that token; any other word
        takes BPE (section 2's for long words)."""
        tok = self.tok
        if not (word.isascii() or tok.ignore_merges):
            pieces = cut_word(word, self._joins_after, self._joins_before)
            if len(pieces) > 1:
                cache = tok._cache
                for piece in set(pieces).difference(cache):
                    cache[piece] = self.word_ids(piece)
                return tuple(chain.from_iterable(map(cache.__getitem__, pieces)))
        chars = to_printable(word)
        if chars in self.whole_tokens or (tok.ignore_merges and chars in tok.vocab):
            return (tok.vocab[chars],)
        if len(chars) >= HEAP_MIN_LENGTH:
            return tuple(map(tok.vocab.__getitem__, bpe_heap(chars, tok.merge_ranks)))
        return tuple(map(tok.vocab.__getitem__, simple_bpe(chars, tok.merge_ranks)))


# ------------------------------------------------------------------------------------------------------
# 6. Training in n log n: bpe.learn_merges with the occurrences of every pair indexed
# ------------------------------------------------------------------------------------------------------
# bpe.learn_merges rescans every word that holds the merged pair, and every pair for the most frequent:
# a line of 100 kB without spaces is one word, rescanned at every merge (minutes for 2,000 merges).
# This is the same training with bpe_heap's two ideas. The distinct words lie end to end in one linked
# list of symbols (positions, next_start / prev_start as in bpe_heap, -1 at a word's ends), and `where`
# lists, for every pair, the positions where it has started: a merge visits only those (the ones where
# the pair no longer starts are skipped) and updates the two pairs beside each. The most frequent pair
# comes from a heap keyed (-count, pair), bpe.learn_merges' rule (of equal counts the smallest pair); an
# entry whose count has changed since it was pushed is stale and skipped, and each pair whose count a
# merge changed is pushed once more. Each occurrence merged removes a symbol, so all the merges together
# visit O(n) positions (n: the characters of the distinct words) and push O(n) entries: O(n log n) in
# all. (Capping the length of a word, as some trainers do, would bound the work too, but learn other
# merges from a long line.) Memory: O(n), at most ~130 bytes per character (a 1 MB line of random
# letters; 470 kB of prose takes 13 MB, less than bpe.learn_merges: tracemalloc's peak).
def learn_merges(word_counts: dict[str, int], n_merges: int) -> list[tuple[str, str]]:
    """bpe.learn_merges(word_counts, n_merges): the same merges, in O(n log n)."""
    symbols, weight = [], array("q")                          # per position: its symbol, its word's count
    next_start, prev_start = array("q"), array("q")           # the linked list; -1: the word ends there
    for word, n in word_counts.items():
        start = len(symbols)
        symbols += word
        weight.extend(repeat(n, len(word)))
        next_start.extend(range(start + 1, start + len(word)))
        next_start.append(-1)
        prev_start.append(-1)
        prev_start.extend(range(start, start + len(word) - 1))
    counts, where = {}, {}           # pair -> weighted count, pair -> array of the positions where it started
    for i, j in enumerate(next_start):
        if j >= 0:
            pair = (symbols[i], symbols[j])
            counts[pair] = counts.get(pair, 0) + weight[i]
            where.setdefault(pair, array("q")).append(i)
    heap = [(-count, pair) for pair, count in counts.items()]
    heapq.heapify(heap)
    changed = set()                                           # the pairs whose count this merge changed

    def count(pair, i, n):                                    # n more (or fewer) of `pair`, at position i
        counts[pair] = counts.get(pair, 0) + n
        if n > 0:
            where.setdefault(pair, array("q")).append(i)
        changed.add(pair)

    merges = []
    while len(merges) < n_merges and heap:
        minus_count, best = heapq.heappop(heap)
        if counts.get(best) != -minus_count:
            continue                          # stale: the count has changed since this entry was pushed
        merges.append(best)
        left, right = best
        merged = left + right
        changed.clear()
        for i in sorted(where.pop(best)):     # left to right, as bpe._merge_pair: (a a a) -> (aa a)
            j = next_start[i]
            if symbols[i] != left or j < 0 or symbols[j] != right:
                continue                      # no longer here, or (a a a): the second (a, a) went first
            n, h, k = weight[i], prev_start[i], next_start[j]     # h i j k: the parts around the pair
            count(best, i, -n)
            if h >= 0:
                count((symbols[h], left), h, -n)
                count((symbols[h], merged), h, n)
            if k >= 0:
                count((right, symbols[k]), j, -n)
                count((merged, symbols[k]), i, n)
                prev_start[k] = i
            symbols[i], symbols[j], next_start[i] = merged, None, k      # the part at j is gone
        for pair in changed:
            if counts[pair]:
                heapq.heappush(heap, (-counts[pair], pair))
            else:
                del counts[pair]
                where.pop(pair, None)              # (positions where it no longer starts)
        if len(heap) > 2 * len(counts) + 1000:     # mostly stale entries: build it afresh (amortized O(1))
            heap = [(-count, pair) for pair, count in counts.items()]
            heapq.heapify(heap)
    return merges


# ----------------------------------------------------------------------------- the entry points


class Tokenizer(bpe.Tokenizer):
    """bpe.Tokenizer with this file's speed-ups (FastPath, split_words, learn_merges): the same ids."""
    SPEED_UPS = sys.modules[__name__]


def train(text, vocab_size, *, special_tokens=(), fast=True):
    """bpe.train, learning the same merges in n log n; returns this file's Tokenizer."""
    return bpe.train(text, vocab_size, special_tokens=special_tokens, fast=fast, cls=Tokenizer)
