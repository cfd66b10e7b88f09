"""The three model files share their plumbing word for word, apart from the Hub's names for the same things
(GPT2Config / GPTNeoConfig, n_layer / num_layers, lm_head / embed_out, ...). That is by design, so that
`diff gpt2.py gpt_neox.py` shows the architecture and nothing else. Like transformers' "Copied from" check,
the markers keep it so: each definition under a `# Copied from gpt2.py` line (a function, a constant, a class
or a method in a class) must equal gpt2.py's marked definition of the same name after the renames that the
copy's file lists on its `# Renames:` line. The test names the first line that drifted;

    python tests/test_shared_sections.py --fix

rewrites the copies in gpt_neo.py and gpt_neox.py from gpt2.py (edit a shared definition in gpt2.py, then fix).
"""
import ast
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MARKER = "# Copied from gpt2.py"
COPIES = ["gpt_neo.py", "gpt_neox.py"]
# Below the lesson, what is not marked is architecture (the Hub's names and layouts for this model); a new
# definition there must be either marked or named here, so that a lost marker cannot pass unnoticed.
OWN = {"read_config", "load_config", "ALIASES", "UNSUPPORTED", "ROPE_PARAMETERS", "HUB_MODELS", "PYTHIA_SIZES",
       "TRANSPOSED", "BUFFERS", "convert_hub_state_dict", "hub_state_dict", "DEFAULT_MODEL", "OFFLINE_MODEL",
       "inspected_parts", "generate"}
BOUNDARY = "the lesson ends here"


def renames(source):
    """{gpt2.py's name: this file's} from the file's `# Renames: a -> b, c -> d` line (continued on `#   `
    lines)."""
    lines = source.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("# Renames:"))
    text = lines[start]
    for line in lines[start + 1:]:
        if not line.startswith("#   "):
            break
        text += " " + line
    return dict(re.findall(r"(\w+) -> (\w+)", text))


def rename(text, table):
    for ours, theirs in table.items():
        text = re.sub(rf"\b{ours}\b", theirs, text)
    return text


def statements(tree):
    """(qualified name, first line, last line) of every module-level statement and every statement in a
    module-level class, decorators included (1-based lines)."""
    def name(node):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            return node.name
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            return node.targets[0].id
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            return node.target.id
        return None

    def first(node):
        return min([d.lineno for d in getattr(node, "decorator_list", [])], default=node.lineno)

    for node in tree.body:
        yield name(node), first(node), node.end_lineno
        if isinstance(node, ast.ClassDef):
            for inner in node.body:
                yield f"{node.name}.{name(inner)}", first(inner), inner.end_lineno


def marked(source):
    """{qualified name: (first line, last line, text)} of the definitions under a marker; the span starts
    right after the marker (comments between it and the definition are part of the copy)."""
    lines = source.splitlines()
    starts = {start: (name, end) for name, start, end in statements(ast.parse(source))}
    found = {}
    for i, line in enumerate(lines):
        if line.strip() != MARKER:
            continue
        j = i + 1
        while j < len(lines) and lines[j].strip().startswith("#"):
            j += 1
        if j + 1 not in starts:
            raise AssertionError(f"line {i + 1}: {MARKER!r} is not above a definition")
        name, end = starts[j + 1]
        found[name] = (i + 2, end, "\n".join(lines[i + 1:end]))
    return found


def first_drift(expected, actual):
    for i, (a, b) in enumerate(zip(expected.splitlines(), actual.splitlines())):
        if a != b:
            return i, a, b
    n = min(len(expected.splitlines()), len(actual.splitlines()))
    return n, "(end)" if n == len(expected.splitlines()) else expected.splitlines()[n], "(end)"


def drift(original, copy, file):
    """What differs between gpt2.py's marked definitions and the copy file's, one message each."""
    table = renames(copy)
    ours = {rename(name, table): text for name, (_, _, text) in marked(original).items()}
    theirs = {name: text for name, (_, _, text) in marked(copy).items()}
    problems = [f"{file} has no marked {name}" for name in ours if name not in theirs]
    problems += [f"{file} marks {name} as copied, but gpt2.py has no marked {name}" for name in theirs
                 if name not in ours]
    for name in ours.keys() & theirs.keys():
        expected = rename(ours[name], table)
        if expected != theirs[name]:
            i, a, b = first_drift(expected, theirs[name])
            problems.append(f"{file} {name}, line {i + 1} of it:\n  gpt2.py (renamed): {a}\n  {file}: {b}")
    return sorted(problems)


def fix(original, copy):
    """The copy file's text with every marked definition rewritten from gpt2.py's (renamed)."""
    table = renames(copy)
    ours = {rename(name, table): text for name, (_, _, text) in marked(original).items()}
    lines = copy.splitlines()
    for name, (start, end, _) in sorted(marked(copy).items(), key=lambda item: -item[1][0]):
        if name in ours:
            lines[start - 1:end] = rename(ours[name], table).splitlines()
    return "\n".join(lines) + "\n"


def unmarked_below_the_lesson(source):
    """Module-level names after the boundary line that are neither marked nor declared the file's own."""
    boundary = next(i for i, line in enumerate(source.splitlines()) if BOUNDARY in line) + 1
    names = {name for name, start, _ in statements(ast.parse(source)) if start > boundary and name
             and "." not in name}
    return sorted(names - set(marked(source)) - OWN - {None})

# ----------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("file", COPIES)
def test_copies_equal_gpt2(file):
    problems = drift((ROOT / "gpt2.py").read_text(), (ROOT / file).read_text(), file)
    assert not problems, ("shared definitions drifted from gpt2.py (edit gpt2.py, then run `python "
                          "tests/test_shared_sections.py --fix`):\n" + "\n".join(problems))


@pytest.mark.parametrize("file", ["gpt2.py", *COPIES])
def test_everything_after_the_lesson_is_marked_or_declared_own(file):
    source = (ROOT / file).read_text()
    assert 5 <= len(marked(source)) <= 10, f"{file}: {len(marked(source))} marked definitions (copy architecture only)"
    assert unmarked_below_the_lesson(source) == [], f"{file}: neither marked nor in OWN"


def test_a_one_sided_edit_of_a_method_is_caught_and_fix_restores_it():
    original, copy = (ROOT / "gpt2.py").read_text(), (ROOT / "gpt_neo.py").read_text()
    edited = copy.replace("        outputs = (logits,) if labels is None else (logits, lm_loss(logits, labels))\n",
                          "        outputs = (logits,) if labels is None else (logits, lm_loss(logits, labels[:, 1:]))\n", 1)
    assert edited != copy
    problems = drift(original, edited, "gpt_neo.py")
    assert len(problems) == 1 and "GPTNeoForCausalLM.forward, line 11" in problems[0], problems
    assert "labels[:, 1:]" in problems[0]
    assert fix(original, edited) == copy


def test_fix_rewrites_an_edit_of_gpt2_into_the_copies_under_their_names():
    original, copy = (ROOT / "gpt2.py").read_text(), (ROOT / "gpt_neox.py").read_text()
    edited = original.replace("        return init_weights(GPT2LMHeadModel(config, attn)).train()\n",
                              "        return init_weights(GPT2LMHeadModel(config, attn)).train(config.n_layer > 0)\n", 1)
    assert edited != original
    fixed = fix(edited, copy)
    assert "        return init_weights(GPTNeoXForCausalLM(config, attn)).train(config.num_hidden_layers > 0)\n" in fixed
    assert drift(edited, fixed, "gpt_neox.py") == [] and drift(original, fixed, "gpt_neox.py") != []


def test_a_marker_above_no_definition_is_refused():
    with pytest.raises(AssertionError, match="not above a definition"):
        marked(f"x = 1\n{MARKER}\n\n")


if __name__ == "__main__":
    if sys.argv[1:] != ["--fix"]:
        sys.exit("usage: python tests/test_shared_sections.py --fix   (pytest runs the checks)")
    original = (ROOT / "gpt2.py").read_text()
    for file in COPIES:
        copy = (ROOT / file).read_text()
        fixed = fix(original, copy)
        if fixed != copy:
            (ROOT / file).write_text(fixed)
            print(f"rewrote {file}")
        for problem in drift(original, fixed, file):
            print(f"still to do by hand: {problem.splitlines()[0]}")
