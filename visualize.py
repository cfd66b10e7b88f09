"""Seeing inside a model: its attention maps and the logit lens, drawn as pictures.

    python gpt2.py --model models/pydoc-gpt2 --prompt "The with statement" --show att.png --show-lens lens.png

The model files return the tensors (their backbone's forward with output_attentions / output_hidden_states,
as transformers' do); this file turns them into pictures, the same for all three architectures.

- Attention maps: for every layer and head, the (T, T) probabilities softmax(q @ k^T * scale) of
  attention.py: row i is how query i spreads its attention over the keys 0..i. One PNG, a grid of
  layers (rows) x heads (columns).
- The logit lens (nostalgebraist, 2020): the residual stream after each layer, put through the model's
  final LayerNorm and LM head as if it were the last layer, says which token the model would predict at
  that depth. One PNG: a table of layers (rows, the output at the top) x positions (columns) holding the
  top token, coloured by its probability.

matplotlib is needed for the pictures only (pip install matplotlib); it is imported when one is drawn.
docs/seeing-inside.md shows the pictures of models/pydoc-gpt2 and models/pydoc-gpt-neo, and what is in them.
"""
import os
import tempfile
from pathlib import Path

import torch

MAX_TOKENS = 40  # beyond this the token labels and cells become too small to read
MAX_PANELS = 400  # layers x heads in one attention picture (gpt2-medium's 24 x 16 = 384 fit)
DPI = 100
PANEL = 0.11  # inches per token in an attention panel (at least MIN_PANEL inches a side)
MIN_PANEL = 1.6
CELL = (0.8, 0.3)  # inches per (position, layer) cell of the logit lens
MARGIN = (1.2, 1.0)  # inches left of and below the grid, for the token labels
TOP = 0.6  # inches above it, for the title


def logit_lens(hidden_states, ln_f, lm_head):
    """Each layer's residual stream read out as the next-token logits: (n_layer + 1, B, T, V).

    hidden_states: n_layer + 1 tensors (B, T, C), as the backbone returns them with output_hidden_states:
    the embeddings, the output of each block, the last one already through ln_f (transformers' convention,
    kept so the tensors compare one to one): so ln_f is applied to all but the last, whose row is then
    exactly the model's logits."""
    *inner, last = hidden_states
    return torch.stack([lm_head(ln_f(h)) for h in inner] + [lm_head(last)])


def token_labels(tokenizer, ids):
    """The decoded piece of each id, made visible: a space as '␣', a newline as '\\n', and the bytes of a
    piece that is not whole UTF-8 (a character split over tokens) as \\x.. escapes."""
    pieces = [tokenizer.decode_bytes([i]).decode("utf-8", errors="backslashreplace") for i in ids]
    return [p.replace(" ", "␣").replace("\n", "\\n").replace("\t", "\\t") for p in pieces]


def check_tokens(T):
    if T > MAX_TOKENS:
        raise ValueError(f"the prompt is {T} tokens; a picture is legible up to {MAX_TOKENS}: shorten it")
    if T < 1:
        raise ValueError("nothing to draw: the prompt has no tokens")


def matplotlib():
    """The matplotlib module, or a clear error when it is not installed. The pictures are drawn on
    matplotlib.figure.Figure objects, not through pyplot: no window, no backend switched under the user."""
    try:
        import matplotlib
        import matplotlib.figure
    except ImportError:
        raise RuntimeError("drawing needs matplotlib, which is not installed: pip install matplotlib") \
            from None
    return matplotlib


def attention_figsize(n_layer, n_head, T):
    """(width, height) in inches of the attention picture."""
    side = max(MIN_PANEL, PANEL * T)
    return MARGIN[0] + n_head * side, MARGIN[1] + n_layer * side + TOP


def lens_figsize(n_rows, T):
    return MARGIN[0] + T * CELL[0], MARGIN[1] + n_rows * CELL[1] + TOP


def draw_attention(attentions, labels, path, title=""):
    """attentions: n_layer tensors (nh, T, T) of one prompt; labels: its T token pieces. Writes a PNG of
    n_layer x nh heat maps (query down, key across; darker = less attention) and returns its path."""
    T = len(labels)
    check_tokens(T)
    n_layer, n_head = len(attentions), attentions[0].size(0)
    if any(a.shape != (n_head, T, T) for a in attentions):
        raise ValueError(f"expected n_layer tensors (nh, T, T) with T = {T} labels; got "
                         f"{[tuple(a.shape) for a in attentions]}")
    if n_layer * n_head > MAX_PANELS:
        raise ValueError(f"{n_layer} layers x {n_head} heads = {n_layer * n_head} maps; a picture is legible "
                         f"up to {MAX_PANELS}")
    mpl = matplotlib()
    width, height = attention_figsize(n_layer, n_head, T)
    fontsize = 7 if T <= 20 else 5
    with mpl.rc_context({"text.parse_math": False}):  # a '$' in a token is text, not the start of math
        fig = mpl.figure.Figure(figsize=(width, height))
        axes = fig.subplots(n_layer, n_head, squeeze=False)
        fig.subplots_adjust(left=MARGIN[0] / width, right=1 - 0.05 / width, bottom=MARGIN[1] / height,
                            top=1 - TOP / height, wspace=0.08, hspace=0.25)
        for layer, heads in enumerate(attentions):
            for head, probs in enumerate(heads.float().cpu()):
                ax = axes[layer][head]
                ax.imshow(probs.numpy(), cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
                ax.set_title(f"layer {layer} head {head}", fontsize=fontsize + 1, pad=2)
                # token labels along the grid's left and bottom edges only
                bottom, left = layer == n_layer - 1, head == 0
                ax.set_xticks(range(T), labels if bottom else [], rotation=90, fontsize=fontsize)
                ax.set_yticks(range(T), labels if left else [], fontsize=fontsize)
                ax.tick_params(length=0, pad=1)
        fig.suptitle(title or "attention: each row is a query, each column a key it may look at", fontsize=9)
        save_atomically(fig, path)
    return path


def draw_lens(lens_logits, ids, tokenizer, path, title=""):
    """lens_logits: (n_layer + 1, T, V) of one prompt (logit_lens(...)[:, b]); ids: its T token ids.
    Writes a PNG table: a row per layer (the embeddings at the bottom, the model's output at the top), a
    column per position, each cell the token that layer would predict next there, coloured by its
    probability, in bold where it is the prompt's actual next token. Returns the path."""
    T = len(ids)
    check_tokens(T)
    labels = token_labels(tokenizer, ids)
    if lens_logits.dim() != 3 or lens_logits.size(1) != T:
        raise ValueError(f"expected logits (n_layer + 1, T, V) with T = {T} ids; got "
                         f"{tuple(lens_logits.shape)}")
    probs, top = lens_logits.float().softmax(-1).max(-1)  # (L + 1, T) each
    mpl = matplotlib()
    n_rows = probs.size(0)
    width, height = lens_figsize(n_rows, T)
    with mpl.rc_context({"text.parse_math": False}):
        fig = mpl.figure.Figure(figsize=(width, height))
        ax = fig.subplots()
        fig.subplots_adjust(left=MARGIN[0] / width, right=1 - 0.05 / width, bottom=MARGIN[1] / height,
                            top=1 - TOP / height)
        ax.imshow(probs.cpu().numpy(), cmap="Blues", vmin=0, vmax=1, origin="lower", aspect="auto")
        for layer in range(n_rows):
            for t in range(T):
                piece = token_labels(tokenizer, [int(top[layer, t])])[0]
                right = t + 1 < T and int(top[layer, t]) == ids[t + 1]  # the prompt's own next token
                ax.text(t, layer, piece, ha="center", va="center", fontsize=7,
                        weight="bold" if right else None, color="white" if probs[layer, t] > 0.5 else "black")
        ax.set_xticks(range(T), labels, rotation=90, fontsize=7)
        rows = ["embeddings"] + [f"after layer {i}" for i in range(n_rows - 1)]
        ax.set_yticks(range(n_rows), rows[:-1] + [rows[-1] + " = output"], fontsize=7)
        ax.set_xlabel("input token (each cell: the token predicted to come next, shade = its probability, "
                      "bold = the prompt's next token)", fontsize=7)
        fig.suptitle(title or "logit lens: the top next token, read out after each layer", fontsize=9)
        save_atomically(fig, path)
    return path


def save_atomically(fig, path):
    """fig as a PNG at `path`, all or nothing: written to a temporary file beside it, flushed to the disk,
    then renamed over it, so that a full disk or an error midway leaves the old picture whole (and no
    temporary)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.resolve().parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png", dpi=DPI)
            f.flush()
            os.fsync(f.fileno())
            os.chmod(f.fileno(), 0o666 & ~umask())  # mkstemp's file is private (0600); a picture is not
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def umask():
    """The process's umask (read by setting it, then setting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_outputs(attention_png, lens_png):
    """Before any work: the pictures' names end in .png, their folders exist, they are two files (the second
    picture would replace the first), and matplotlib is here."""
    if attention_png is not None and lens_png is not None and \
            Path(attention_png).resolve() == Path(lens_png).resolve():
        raise ValueError(f"--show {attention_png} and --show-lens {lens_png} are the same file: name two")
    for flag, path in (("--show", attention_png), ("--show-lens", lens_png)):
        if path is None:
            continue
        if Path(path).suffix.lower() != ".png":
            raise ValueError(f"{flag} {path}: the picture is a PNG; name it *.png")
        if not Path(path).resolve().parent.is_dir():
            raise FileNotFoundError(f"{flag} {path}: no such directory {Path(path).parent}")
    matplotlib()


def show(backbone, ln_f, lm_head, tokenizer, input_ids, attention_png=None, lens_png=None, title=""):
    """The CLI's --show / --show-lens: the pictures of one prompt, input_ids (1, T); returns the paths
    written. --show needs the backbone on the naive attention backend (the only one that forms the
    probabilities)."""
    labels = token_labels(tokenizer, input_ids[0].tolist())
    check_tokens(len(labels))
    with torch.no_grad():
        _, hidden_states, attentions = backbone(input_ids, output_attentions=attention_png is not None,
                                                output_hidden_states=True)
        written = []
        if attention_png is not None:
            written.append(draw_attention([a[0] for a in attentions], labels, attention_png, title))
        if lens_png is not None:
            lens = logit_lens(hidden_states, ln_f, lm_head)[:, 0]  # (n_layer + 1, T, V)
            written.append(draw_lens(lens, input_ids[0].tolist(), tokenizer, lens_png, title))
    return written
