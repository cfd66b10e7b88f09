"""Benchmark: bpe.py (pure Python) against tiktoken (Rust) encoding the same text with GPT-2's tokenizer.

    python bench/bpe.py                     # English prose, source code, CJK; GPT-2 files from ../shared
    python bench/bpe.py --file some.txt     # any UTF-8 file as an extra corpus
    python bench/bpe.py --neox              # also bpe.py (NeoX) against HF tokenizers on the same texts
    python bench/bpe.py --long              # only the long words: 1 MB single words and 1 MB of base64
    python bench/bpe.py --train             # only training: bpe.train fast and plain, prose and a long line

The texts come from this machine, no download: real text matters because the word cache's hit rate
depends on how often words repeat (Zipf's law), which generated text gets wrong.
  english  Python's reference manual: the pydoc_data.topics module of the standard library (0.47 MB)
  code     the standard library's own *.py files, the first ~1 MB in name order
  cjk      Chinese, Japanese and Korean prose: the Vim tutorials (/usr/share/vim/vim*/tutor/tutor.{zh_cn,
           zh_tw,ja,ko}.utf-8) and CPython's test/cjkencodings/*-utf8.txt samples, whichever exist

Three figures per corpus, because the word cache makes the speed depend on what was encoded before:
  cold    the whole text with empty caches (a fresh tokenizer: every distinct word that is not a whole
          token, bpe_fast.py section 4, pays its BPE);
  steady  the second half of the text after the first half filled the cache (a tokenizer that has been
          encoding text of the same kind: most words are cached, new ones keep coming);
  warm    the whole text again, every word cached (the upper bound: the split and the lookups).
Both sides call encode_ordinary on one string: one thread, no batching (tiktoken's batch API would use
threads). Times are CPU time (time.process_time), best of --repeat, ours and tiktoken alternating, so
that other programs on a shared machine disturb the ratio less than they would with wall-clock time.
"""
import argparse
import glob
import os
import sys
import sysconfig
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))        # the project's bpe.py, not this file (also named bpe.py)
import bpe
import bpe_fast

GPT2_DIR = ROOT.parent / "shared" / "tokenizers" / "gpt2"
NEOX_DIR = ROOT.parent / "shared" / "tokenizers" / "gpt-neox-20b"


def english() -> str:
    import pydoc_data.topics
    return "\n\n".join(pydoc_data.topics.topics.values())


def code(limit: int = 1_000_000) -> str:
    texts, size = [], 0
    for path in sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py"))):
        texts.append(Path(path).read_text(encoding="utf-8", errors="replace"))
        size += len(texts[-1])
        if size > limit:
            break
    return "".join(texts)


def cjk() -> str:
    paths = sorted(glob.glob("/usr/share/vim/vim*/tutor/tutor.*.utf-8"))
    paths = [p for p in paths if p.rsplit("/", 1)[1].split(".")[1] in ("zh_cn", "zh_tw", "ja", "ko")]
    samples = os.path.join(sysconfig.get_paths()["stdlib"], "test", "cjkencodings", "*-utf8.txt")
    paths += sorted(glob.glob(samples))
    return "".join(Path(p).read_text(encoding="utf-8") for p in paths)


def timings(ours, reference, text: str, repeat: int) -> dict[str, tuple[float, float]]:
    """Best-of-`repeat` seconds, (bpe.py, reference), of three ways to meet the text:
    cold    the whole text with empty caches (a fresh tokenizer);
    steady  the second half of the text, the cache filled by the first half (a tokenizer that has been
            encoding text of the same kind: most words are cached, new ones still appear);
    warm    the whole text again, every word cached (an upper bound).
    Ours and the reference alternate within each round so that they see the same machine load."""
    half = len(text) // 2
    best = {"cold": [float("inf")] * 2, "steady": [float("inf")] * 2, "warm": [float("inf")] * 2}

    def clock(kind, fn, arg, which):
        start = time.process_time()          # CPU time: robust to other processes sharing the machine
        fn(arg)
        best[kind][which] = min(best[kind][which], time.process_time() - start)

    for _ in range(repeat):
        ours.clear_cache()
        clock("cold", ours.encode_ordinary, text, 0)
        clock("cold", reference, text, 1)
        clock("warm", ours.encode_ordinary, text, 0)
        clock("warm", reference, text, 1)
        ours.clear_cache()
        ours.encode_ordinary(text[:half])
        clock("steady", ours.encode_ordinary, text[half:], 0)
        clock("steady", reference, text[half:], 1)
    return best


def tiktoken_gpt2():
    """tiktoken's GPT-2 built offline from OpenAI's files, as tiktoken_ext.openai_public.gpt2() does."""
    import tiktoken
    import tiktoken.load
    from tiktoken_ext.openai_public import r50k_pat_str
    files = [str(GPT2_DIR / name) for name in ("vocab.bpe", "encoder.json")]
    ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(*files)
    return tiktoken.Encoding("gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 50256})


def load_seconds(load, repeat: int = 3) -> float:
    """CPU seconds to build a tokenizer from its files, best of `repeat` (bpe_fast.py finds its whole tokens
    here, section 4; tiktoken builds its ranks from vocab.bpe + encoder.json)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        load()
        best = min(best, time.process_time() - start)
    return best


def long_words(size: int = 1_000_000) -> dict[str, str]:
    """Texts that are one word, or few long ones (BPE cost grows with the word: bpe_fast.bpe_heap)."""
    import base64
    import random
    rng = random.Random(0)
    return {"1 MB of 'a'": "a" * size,
            "1 MB random letters": "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=size)),
            "1 MB base64": base64.b64encode(rng.randbytes(size * 3 // 4)).decode()}


def bench_long_words(ours, reference) -> None:
    """One fresh encode each (no cache can help), CPU seconds, and the ids checked equal."""
    print("| long word text | bpe.py s | tiktoken s |")
    print("|---|---|---|")
    for name, text in long_words().items():
        ours.clear_cache()
        start = time.process_time()
        ids = ours.encode_ordinary(text)
        mine = time.process_time() - start
        start = time.process_time()
        assert ids == reference.encode_ordinary(text), name
        print(f"| {name} | {mine:.2f} | {time.process_time() - start:.2f} |")


def bench_train(vocab_size: int = 2048) -> None:
    """train() with bpe_fast.learn_merges and with bpe.learn_merges (fast=False) on prose and on one long
    line without spaces (one word: the plain trainer rescans it at every merge). CPU seconds, one run
    each; the merges are checked equal. The plain trainer is skipped where it would take minutes."""
    import random
    rng = random.Random(0)
    texts = {"english 100 kB": english()[:100_000], "english 470 kB": english(),
             "a line of 10 kB letters": "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=10_000)),
             "a line of 100 kB letters": "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=100_000))}
    bpe_fast.train("é", 256)                                # warm-up: bpe_fast's one-off tables (0.5 s)
    print(f"| text | train(..., {vocab_size}) fast s | fast=False s |")
    print("|---|---|---|")
    for name, text in texts.items():
        start = time.process_time()
        fast = bpe_fast.train(text, vocab_size)
        seconds = time.process_time() - start
        plain = "(minutes: skipped)"
        if not name.startswith("a line of 100"):
            start = time.process_time()
            assert bpe.train(text, vocab_size, fast=False).merges == fast.merges, name
            plain = f"{time.process_time() - start:.2f}"
        print(f"| {name} | {seconds:.2f} | {plain} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--file", action="append", default=[], help="an extra UTF-8 text file to encode")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--neox", action="store_true", help="also NeoX: bpe.py against HF tokenizers")
    parser.add_argument("--long", action="store_true", help="only the long words (1 MB single words, base64)")
    parser.add_argument("--train", action="store_true", help="only training: bpe.train, fast and plain")
    args = parser.parse_args()
    if args.train:
        return bench_train()

    if not (GPT2_DIR / "vocab.bpe").exists():
        sys.exit(f"the benchmark needs GPT-2's files in {GPT2_DIR} (see ../shared/README.md)")
    if args.long:
        return bench_long_words(bpe_fast.Tokenizer.from_pretrained(GPT2_DIR), tiktoken_gpt2())
    corpora = {"english": english(), "code": code(), "cjk": cjk()}
    corpora.update({Path(f).name: Path(f).read_text(encoding="utf-8") for f in args.file})
    ours = bpe_fast.Tokenizer.from_pretrained(GPT2_DIR)
    reference = tiktoken_gpt2()
    rows = [("gpt2", ours, "tiktoken", reference.encode_ordinary)]
    if args.neox:
        from tokenizers import Tokenizer as HFTokenizer
        hf = HFTokenizer.from_file(str(NEOX_DIR / "tokenizer.json"))
        rows.append(("neox", bpe_fast.Tokenizer.from_pretrained(NEOX_DIR), "HF tokenizers",
                     lambda text: hf.encode(text, add_special_tokens=False).ids))

    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, load average {os.getloadavg()[0]:.1f}; "
          f"MB/s = 1e6 UTF-8 bytes per second, best of {args.repeat}; ratio = bpe.py speed / reference speed")
    print(f"load from the files: bpe.py {load_seconds(lambda: bpe_fast.Tokenizer.from_pretrained(GPT2_DIR)):.2f} s, "
          f"tiktoken {load_seconds(tiktoken_gpt2):.2f} s (GPT-2, CPU time, best of 3)")
    print("| tokenizer | corpus | size | reference | ref MB/s | bpe.py cold | steady | warm |")
    print("|---|---|---|---|---|---|---|---|")
    for name, tokenizer, ref_name, ref_encode in rows:
        for corpus, text in corpora.items():
            if not text:
                print(f"| {name} | {corpus} | (no text found on this machine) |")
                continue
            assert tokenizer.encode_ordinary(text) == ref_encode(text), f"{name} ids differ on {corpus}"
            size = len(text.encode("utf-8"))
            sizes = {"cold": size, "warm": size, "steady": len(text[len(text) // 2:].encode("utf-8"))}
            best = timings(tokenizer, ref_encode, text, args.repeat)
            cells = [f"{sizes[kind] / mine / 1e6:.2f} MB/s ({ref / mine:.2f}x)"
                     for kind, (mine, ref) in best.items()]
            ref_speed = size / best["cold"][1] / 1e6
            print(f"| {name} | {corpus} | {size / 1e6:.2f} MB | {ref_name} | {ref_speed:.2f} | "
                  + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
