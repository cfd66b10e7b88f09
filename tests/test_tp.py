"""Tensor parallel (tp.py) on CPU: each model file split over 2 gloo processes gives what it gives in one.

Small Hub-format checkpoints of the three architectures (written from transformers models by
tests/reference.py, in three of the Hub's layouts). One spawn of 2 processes serves the model tests: each
process loads every checkpoint split in two and runs `checks`; the test process runs the same `checks` on
the unsplit model; the tests then compare. The CLI tests run torchrun itself. Every wait has a timeout and
every process group a short one: a failing process fails the test instead of hanging it.
"""
import importlib
import json
import multiprocessing
import shutil
import subprocess
import sys
import traceback
from datetime import timedelta
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the model files, for the spawned processes too
WORLD = 2
TIMEOUT = 240  # seconds for a spawn or a torchrun to finish; a process group waits 60 s for a peer
TOL = 1e-5  # fp32 logits, split vs unsplit
ARCHS = ("gpt2", "gpt_neo", "gpt_neox")
QUANTIZED = ("gpt2", "gpt_neox")  # GPT-2's Conv1D (transposed) and NeoX's fused qkv under quantize=

# ----------------------------------------------------------------------------- checkpoints


def reference_model(arch, n_head=4):
    """A tiny random transformers model of `arch`, biases and LayerNorms moved off 0 and 1 (a bias added
    once per process instead of once would then show)."""
    import transformers
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    common = dict(vocab_size=96, bos_token_id=0, eos_token_id=1, initializer_range=0.3)
    if arch == "gpt2":
        config = transformers.GPT2Config(n_positions=32, n_embd=4 * n_head, n_layer=2, n_head=n_head, **common)
    elif arch == "gpt_neo":  # a local layer whose window (16) is shorter than the logits test's 24 tokens
        config = transformers.GPTNeoConfig(max_position_embeddings=32, hidden_size=4 * n_head, num_layers=2,
                                           num_heads=n_head, attention_types=[[["global", "local"], 1]],
                                           window_size=16, **common)
    else:
        config = transformers.GPTNeoXConfig(max_position_embeddings=32, hidden_size=8 * n_head,
                                            num_hidden_layers=2, num_attention_heads=n_head,
                                            intermediate_size=16 * n_head, rotary_pct=0.5,
                                            tie_word_embeddings=False, **common)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.2 * torch.randn_like(p))
    return model


# One of the Hub's layouts each: GPT-2 as openai-community/gpt2 holds it (no "transformer." prefix, Conv1D
# weights (in, out)) in safetensors shards, GPT-Neo as a .bin, GPT-NeoX as one safetensors file.
LAYOUTS = {"gpt2": "sharded", "gpt_neo": "bin", "gpt_neox": "safetensors"}


def strip_prefix(state_dict):
    return {k.removeprefix("transformer."): v for k, v in state_dict.items()}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    from reference import save_checkpoint
    root = tmp_path_factory.mktemp("tp")
    for arch in ARCHS:
        save_checkpoint(reference_model(arch), root / arch, LAYOUTS[arch],
                        transform=strip_prefix if arch == "gpt2" else None)
    save_checkpoint(reference_model("gpt_neox", n_head=3), root / "three_heads")
    for arch in QUANTIZED:  # wide enough that each process's share of a rowwise layer is whole int4 groups
        save_checkpoint(reference_model(arch, n_head=16), root / f"{arch}-wide", LAYOUTS[arch],
                        transform=strip_prefix if arch == "gpt2" else None)
    return root

# ----------------------------------------------------------------------------- what both sides run


def checks(module, model):
    """Logits of a left-padded batch, and continuations of another: greedy (DynamicCache, StaticCache, with
    an EOS that one row meets), sampled with top-k and top-p from a seeded generator, and the compile path
    (traced by dynamo with fullgraph=True; its graphs run as captured, inductor is not called)."""
    g = torch.Generator().manual_seed(0)
    V = model.config.vocab_size
    ids = torch.randint(2, V, (3, 24), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :5] = mask[2, :13] = 0
    prompt = torch.randint(2, V, (3, 7), generator=g)
    prompt_mask = torch.ones_like(prompt)
    prompt_mask[1, :2] = prompt_mask[2, :5] = 0

    def run(**kwargs):
        return module.generate(model, prompt, 6, attention_mask=prompt_mask, **kwargs).tolist()

    out = {"logits": model(ids, mask), "greedy": run(temperature=0)}
    new = [row[7:] for row in out["greedy"]]
    eos = next((t for t in new[0][1:] if t not in new[1]), new[0][0])  # row 0 meets it early, row 1 never
    out["greedy_eos"] = run(temperature=0, eos_token_id=eos)
    out["static"] = run(temperature=0, kv_cache=model.make_cache(static_len=13))
    out["sampled"] = run(temperature=0.9, top_k=40, top_p=0.9, generator=torch.Generator().manual_seed(1))
    from reference import recording_compile
    graphs = []
    real_compile = torch.compile
    torch._dynamo.reset()
    torch.compile = recording_compile(graphs)
    try:
        out["compiled"] = run(temperature=0, compile=True)
    finally:
        torch.compile = real_compile
    out["graphs"] = len(graphs)
    out["all_reduces"] = sum("all_reduce" in str(node.target) for gm in graphs for node in gm.graph.nodes)
    out["split_bytes"], out["whole_bytes"] = parameter_bytes(module, model)
    return out


def quantized_checks(module, model):
    """The logits and continuations of `checks` for a quantized model (fp32 activations)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, model.config.vocab_size, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :5] = 0
    out = {"logits": model(ids, mask)}
    out["greedy"] = module.generate(model, ids, 6, attention_mask=mask, temperature=0).tolist()
    out["sampled"] = module.generate(model, ids, 6, attention_mask=mask, temperature=0.9, top_k=40,
                                     generator=torch.Generator().manual_seed(1)).tolist()
    out["kinds"] = sorted({type(m).__name__ for m in model.modules() if "Linear" in type(m).__name__})
    return out


def load_quantized_models(root):
    """{(arch, scheme): quantized_checks} for the wide checkpoints, and the int4 refusal's message."""
    out = {}
    for arch in QUANTIZED:
        module = importlib.import_module(arch)
        for scheme in ("int8", "int4"):
            model = module.from_pretrained(root / f"{arch}-wide", quantize=scheme, dtype=torch.float32)
            out[arch, scheme] = quantized_checks(module, model)
    try:  # NeoX with 4 heads: attention.dense has 32 inputs, 16 per process: half an int4 group
        importlib.import_module("gpt_neox").from_pretrained(root / "gpt_neox", quantize="int4")
    except ValueError as e:
        out["int4_groups"] = str(e)
    return out


def parameter_bytes(module, model):
    """Bytes of the parameters of the layers TP_PLAN splits, and of all the others."""
    split = whole = 0
    for name, p in model.named_parameters():
        layer, kind = name.rsplit(".", 1)
        style = next((s for suffix, s in module.TP_PLAN.items() if layer.endswith("." + suffix)), None)
        if style is None or (style == "rowwise" and kind == "bias"):  # a rowwise bias is added whole, once
            whole += p.numel() * p.element_size()
        else:
            split += p.numel() * p.element_size()
    return split, whole


def worker(rank, store, root, results):
    """One of the 2 processes: every checkpoint split in two, `checks` on each; the results to a file."""
    import torch.distributed as dist
    out = {}
    try:
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD,
                                timeout=timedelta(seconds=60))
        import safetensors.torch

        def whole_file(*args, **kwargs):
            raise AssertionError("a split model read a whole safetensors file (load_file)")
        safetensors.torch.load_file = whole_file  # only slices (safe_open(...).get_slice) may be read
        for arch in ARCHS:
            module = importlib.import_module(arch)
            out[arch] = checks(module, module.from_pretrained(root / arch))
        try:
            importlib.import_module("gpt_neox").from_pretrained(root / "three_heads")
        except ValueError as e:
            out["three_heads"] = str(e)
        with torch.no_grad():
            out["quantized"] = load_quantized_models(root)
    except BaseException:
        out["error"] = traceback.format_exc()
    torch.save(out, Path(results) / f"rank{rank}.pt")
    if dist.is_initialized():
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def split_results(checkpoints, tmp_path_factory):
    """Both processes' results, and the unsplit model's: {arch: checks(...)} each."""
    results = tmp_path_factory.mktemp("tp-results")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=worker, args=(rank, results / "store", checkpoints, results))
             for rank in range(WORLD)]
    for p in procs:
        p.start()
    single = {}  # meanwhile, the unsplit models here
    for arch in ARCHS:
        module = importlib.import_module(arch)
        single[arch] = checks(module, module.from_pretrained(checkpoints / arch))
    with torch.no_grad():
        single["quantized"] = load_quantized_models(checkpoints)
    for p in procs:
        p.join(TIMEOUT)
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    ranks = []
    for rank, p in enumerate(procs):
        path = results / f"rank{rank}.pt"
        assert path.exists(), f"rank {rank} wrote no results (exit code {p.exitcode}; killed after {TIMEOUT} s?)"
        out = torch.load(path, weights_only=False)  # written by the processes above
        assert "error" not in out, f"rank {rank} failed:\n{out['error']}"
        ranks.append(out)
    return single, ranks

# ----------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("arch", ARCHS)
def test_split_logits_equal_the_single_process_logits(split_results, arch):
    from reference import assert_close
    single, ranks = split_results
    for rank, out in enumerate(ranks):
        assert_close(out[arch]["logits"], single[arch]["logits"], f"tp: {arch} logits, rank {rank}", tol=TOL)
    assert torch.equal(ranks[0][arch]["logits"], ranks[1][arch]["logits"]), "the processes' logits differ"


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("what", ["greedy", "greedy_eos", "static", "sampled", "compiled"])
def test_split_generation_gives_the_single_process_tokens(split_results, arch, what):
    single, ranks = split_results
    for rank, out in enumerate(ranks):
        assert out[arch][what] == single[arch][what], f"rank {rank}"


def test_the_eos_case_stops_one_row_early(split_results):
    """(That the EOS case above means something: row 0 is cut short by it, row 1 is not.)"""
    single, _ = split_results
    for arch in ARCHS:
        with_eos, without = single[arch]["greedy_eos"], single[arch]["greedy"]
        assert with_eos[0] != without[0] and with_eos[1] == without[1], arch


@pytest.mark.parametrize("arch", ARCHS)
def test_compiled_step_is_one_graph_with_the_all_reduces_inside(split_results, arch):
    single, ranks = split_results
    n_layer = 2
    for out in ranks:
        assert out[arch]["graphs"] == 1, "a graph break or a recompilation"
        assert out[arch]["all_reduces"] == 2 * n_layer, "an all-reduce after each attention and each MLP"
    assert single[arch]["all_reduces"] == 0


@pytest.mark.parametrize("arch", ARCHS)
def test_each_process_holds_half_of_the_split_weights(split_results, arch):
    single, ranks = split_results
    split, whole = single[arch]["split_bytes"], single[arch]["whole_bytes"]
    for out in ranks:
        assert out[arch]["split_bytes"] * WORLD == split
        assert out[arch]["whole_bytes"] == whole  # embeddings, LayerNorms, LM head: replicated
    assert split > whole / 4  # (the split layers are a good share of these models, so this means something)


def test_a_number_of_processes_that_does_not_divide_the_heads_is_refused(split_results):
    _, ranks = split_results
    for out in ranks:
        assert "the 3 attention heads do not split evenly" in out.get("three_heads", "no error")

@pytest.mark.parametrize("arch", QUANTIZED)
@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_quantized_split_equals_the_single_process_quantized_model(split_results, arch, scheme):
    """quantize= under tensor parallel: each process quantizes its own slices (int4 groups whole within a
    share), and the logits, greedy and seeded sampled tokens are the one-process quantized model's."""
    from reference import assert_close
    single, ranks = split_results
    expected = single["quantized"][arch, scheme]
    assert ("Int4Linear" in expected["kinds"]) == (scheme == "int4")
    for rank, out in enumerate(ranks):
        got = out["quantized"][arch, scheme]
        assert got["kinds"] == expected["kinds"]
        assert_close(got["logits"], expected["logits"], f"tp: {arch} {scheme} logits, rank {rank}", tol=1e-4)
        assert got["greedy"] == expected["greedy"] and got["sampled"] == expected["sampled"], f"rank {rank}"


def test_int4_groups_cut_by_the_split_are_refused(split_results):
    single, ranks = split_results
    assert "int4_groups" not in single["quantized"]  # unsplit, the same model loads
    for out in ranks:
        assert "attention.dense's share of 16 inputs is not a whole number of int4 groups of 32" in \
            out["quantized"].get("int4_groups", "no error")

# ----------------------------------------------------------------------------- the CLI under torchrun


@pytest.fixture(scope="module")
def cli_checkpoint(tmp_path_factory):
    """A tiny GPT-2 with the real tokenizer, as tests/test_gpt2_cli.py runs; 4 heads."""
    from conftest import shared_tokenizer_dir
    from reference import tiny_gpt2_with_tokenizer
    tokenizer = shared_tokenizer_dir("gpt2", "openai-community/gpt2", ["vocab.json", "merges.txt"])
    return tiny_gpt2_with_tokenizer(tmp_path_factory.mktemp("tp-cli"), tokenizer, n_head=4)


def run_cli(*args, nproc=None):
    launcher = [] if nproc is None else ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    return subprocess.run([sys.executable, *launcher, str(ROOT / "gpt2.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=TIMEOUT)


def test_cli_under_torchrun_prints_the_single_process_text(cli_checkpoint):
    args = ["--model", cli_checkpoint, "--prompt", "Hello world", "--max-new-tokens", "10", "--num-samples", "2",
            "--top-p", "0.9", "--seed", "3"]
    single, split = run_cli(*args), run_cli(*args, nproc=WORLD)
    assert single.returncode == 0, single.stderr
    assert split.returncode == 0, split.stderr
    assert split.stdout == single.stdout  # rank 0 alone prints, the same samples
    assert split.stdout.count("Hello world") == 2
    assert split.stderr.count("tokens/s") == 2, split.stderr  # rank 0's report of each sample


def test_cli_bad_number_of_processes_is_one_line_before_any_reading(cli_checkpoint, tmp_path):
    """3 heads over 2 processes: one error line (rank 0's), a non-zero exit, and the weights are not read
    (they are truncated here, and the error is about the heads, not the file)."""
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(cli_checkpoint / name, tmp_path / name)
    config = json.loads((cli_checkpoint / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "n_head": 3, "n_embd": 6}))
    (tmp_path / "model.safetensors").write_bytes((cli_checkpoint / "model.safetensors").read_bytes()[:100])
    result = run_cli("--model", tmp_path, "--max-new-tokens", "4", nproc=WORLD)
    assert result.returncode != 0
    ours = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert ours == ["error: tensor parallel over 2 processes: the 3 attention heads do not split evenly; use a "
                    "number of processes that divides 3"], result.stderr
    assert 'gpt2.py", line' not in result.stderr  # no traceback from our file (torchrun adds its own summary)


def test_more_processes_than_gpus_is_refused_before_joining(monkeypatch):
    import tp
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match="torchrun started 2 processes on a machine with 1 CUDA devices"):
        tp.init("cuda")


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_processes_that_disagree_end_in_one_error_at_once(cli_checkpoint, tmp_path):
    """Two processes of one job started with different prompts: an error after joining, not a wait at the
    first collective until its 10-minute timeout."""
    script = tmp_path / "differ.py"
    script.write_text(f"import os, sys; sys.path.insert(0, {str(ROOT)!r}); import gpt2\n"
                      f"gpt2.main(['--model', {str(cli_checkpoint)!r}, '--max-new-tokens', '4', "
                      "'--prompt', 'Hello' if os.environ['RANK'] == '0' else 'world'])\n")
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             f"--nproc-per-node={WORLD}", str(script)], capture_output=True, text=True, cwd=ROOT,
                            timeout=120)
    assert result.returncode != 0
    ours = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert ours == [f"error: the {WORLD} processes of this torchrun job were started with different flags or "
                    "inputs: every process must get the same command line"], result.stderr


@pytest.mark.parametrize("rank", ["0", "1"])
def test_a_launchers_environment_left_behind_is_an_error_not_a_hang(cli_checkpoint, rank):
    """WORLD_SIZE=2 and the rest of torchrun's variables, but no torchrun and no peer: one error line once
    the rendezvous times out (30 s; 2 s here), for the process that would serve the store and for one that
    would connect to it."""
    env = {"PATH": "/usr/bin:/bin", "WORLD_SIZE": "2", "RANK": rank, "LOCAL_RANK": rank,
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); import datetime, tp, gpt2; "
            "tp.RENDEZVOUS_TIMEOUT = datetime.timedelta(seconds=2); "
            f"gpt2.main(['--model', {str(cli_checkpoint)!r}, '--max-new-tokens', '4'])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: could not join the other 1 process(es) of "
                                                   "WORLD_SIZE=2"), result.stderr
