"""Benchmark: loading a tokenizer.json with many added tokens (issue 28: 20,000 took 17.7 s and 100,000 did
not load in 300 s, a max over every id for each added token), then encoding a short text with them.

    python bench/added_tokens.py             # 1,000 / 10,000 / 100,000 added tokens on GPT-NeoX-20B's file
    python bench/added_tokens.py --counts 200000

Both should grow linearly with the count (each row ~10x the one before at most); the first encode builds the
pattern that finds the added tokens in text (bpe._longest_first_pattern, a trie). On this project's 2-core
test machine, 100,000: load 0.5 s, first encode 1.3 s (before issue 28: not loaded in 300 s).
"""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))        # the project's bpe.py
import bpe

NEOX_DIR = ROOT.parent / "shared" / "tokenizers" / "gpt-neox-20b"


def with_added_tokens(source: Path, n: int, directory: Path) -> Path:
    """GPT-NeoX-20B's tokenizer.json with n more added tokens ("<extra_0>", ..., not special, as a user adds
    them)."""
    config = json.loads((source / "tokenizer.json").read_text(encoding="utf-8"))
    start = max(len(config["model"]["vocab"]), *(t["id"] + 1 for t in config["added_tokens"]))
    config["added_tokens"] += [{"id": start + i, "content": f"<extra_{i}>", "special": False,
                                "lstrip": False, "rstrip": False, "single_word": False, "normalized": False}
                               for i in range(n)]
    path = directory / "tokenizer.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    args = parser.parse_args()
    text = "Hello <extra_7> world, hello <extra_99> again. " * 20
    print(f"{'added tokens':>12} {'load s':>8} {'encode s':>9}")
    for n in args.counts:
        with tempfile.TemporaryDirectory() as d:
            path = with_added_tokens(NEOX_DIR, n, Path(d))
            start = time.perf_counter()
            tok = bpe.Tokenizer.from_tokenizer_json(path)
            loaded = time.perf_counter()
            tok.encode(text)
            print(f"{n:>12,} {loaded - start:>8.2f} {time.perf_counter() - loaded:>9.2f}")


if __name__ == "__main__":
    main()
