"""The Hugging Face Hub's files, for checkpoint.py (a model's) and bpe.py (a tokenizer's): JSON read with an
error that names the file, and a download that asks the Hub once and falls back on the local cache. No
torch here, so that bpe.py runs without it.

    directory = download("openai-community/gpt2", None, lambda files: ["config.json", ...], "the weights")
"""
import json
import sys
from pathlib import Path


def read_json(path):
    """A JSON file's content; a file that is not UTF-8 JSON is a ValueError naming the file."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:  # json.JSONDecodeError is a ValueError
        raise ValueError(f"{path} is not valid JSON ({e})") from None


def download(repo_id, revision, choose, what, hint=""):
    """The local directory of `repo_id` at `revision` holding the files that choose(the repo's file names)
    picks (glob patterns), downloaded with huggingface_hub. One quick request lists the repo's files, no
    retries: without a network the answer comes at once, and the local cache is the last chance. The
    error names the command that fetches it and what a local directory must hold (`what`)."""
    from huggingface_hub import model_info, snapshot_download
    try:
        files = {f.rfilename for f in model_info(repo_id, revision=revision).siblings}
    except Exception as online_error:  # no network, no such repo or revision, a gated repo ...
        try:
            return Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
        except Exception:
            reason = (str(online_error).strip().splitlines() or [type(online_error).__name__])[0]
            fetch = f"hf download {repo_id}" + (f" --revision {revision}" if revision else "")
            raise OSError(f"could not get {repo_id} from the Hugging Face Hub ({reason}) and it is not in the "
                          f"local cache; download it while online ({fetch}), or give a local directory "
                          f"holding {what} instead{hint}") from None
    return Path(snapshot_download(repo_id, revision=revision, allow_patterns=choose(files)))


def progress(total_bytes, what):
    """A progress bar for long work (loading, quantizing, saving a checkpoint) on stderr when it is a
    terminal: bytes done and left, and the rate; quiet otherwise (a log, a pipe, the tests). tqdm comes with
    huggingface_hub. Use as `with progress(n, "loading") as bar: ... bar.update(bytes)`."""
    from huggingface_hub.utils import tqdm  # (tqdm, as huggingface_hub ships it)
    return tqdm(total=total_bytes, desc=what, unit="B", unit_scale=True, leave=False, file=sys.stderr,
                disable=not sys.stderr.isatty() or total_bytes < PROGRESS_MIN_BYTES)


PROGRESS_MIN_BYTES = 2**26  # less work than 64 MB is done before a bar would show
