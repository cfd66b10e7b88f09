"""Training against the reference: loss and gradients in train() mode, dropout, and the initialisation of
a new model, for GPT-2, GPT-Neo and GPT-NeoX (transformers' GPT2LMHeadModel, GPTNeoForCausalLM,
GPTNeoXForCausalLM)."""
import math
import tempfile

import pytest
import test_gpt2
import test_gpt_neo
import test_gpt_neox
import torch
import transformers
from hypothesis import assume, given
from hypothesis import strategies as st
from reference import assert_close, batches, save_checkpoint

import gpt2
import gpt_neo
import gpt_neox
from attention import attention

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

# Each file with its test module's config strategy and reference class, and its dropout fields.
ARCHS = {
    "gpt2": (gpt2, test_gpt2.configs, transformers.GPT2LMHeadModel, transformers.GPT2Config,
             ["embd_pdrop", "attn_pdrop", "resid_pdrop"]),
    "gpt_neo": (gpt_neo, test_gpt_neo.configs, transformers.GPTNeoForCausalLM, transformers.GPTNeoConfig,
                ["embed_dropout", "attention_dropout", "resid_dropout"]),
    "gpt_neox": (gpt_neox, test_gpt_neox.configs, transformers.GPTNeoXForCausalLM, transformers.GPTNeoXConfig,
                 ["attention_dropout", "hidden_dropout"]),
}
OUR_CONFIGS = {"gpt2": gpt2.GPT2Config, "gpt_neo": gpt_neo.GPTNeoConfig, "gpt_neox": gpt_neox.GPTNeoXConfig}
BACKEND = {"eager": "naive", "sdpa": "sdpa"}  # the reference's attention implementation -> ours


def ours_and_reference(arch, config):
    module, _, cls, config_cls, _ = ARCHS[arch]
    torch.manual_seed(0)
    ref = cls(config_cls(**config))
    with tempfile.TemporaryDirectory() as d:
        save_checkpoint(ref, d)
        ours = module.from_pretrained(d, attn=BACKEND[config["attn_implementation"]])
    return ours.train(), ref.train()


def hub_grads(module, model):
    """Our gradients under the Hub's names and layouts (GPT-2's Conv1D weights transposed back)."""
    grads = {name: p.grad for name, p in model.named_parameters()}  # a tied matrix once, as wte
    transposed = getattr(module, "TRANSPOSED", ())
    return {k: g.t() if transposed and k.endswith(transposed) else g for k, g in grads.items()}


def ref_grads(ref):
    neox = isinstance(ref, transformers.GPTNeoXForCausalLM)  # transformers >= 5 calls embed_out lm_head
    return {name.replace("lm_head.", "embed_out.") if neox else name: p.grad for name, p in ref.named_parameters()}


def loss_and_grads(arch, ours, ref, ids, mask, seed=0):
    """Both models' LM loss on the batch and their gradients, from the same RNG state. Nothing is predicted
    from a padding position: its label and the first real token's are -100 (a padding query sees no key,
    and what it attends to then is each implementation's own choice)."""
    first_real = mask.cumsum(-1) == 1
    labels = ids.masked_fill((mask == 0) | first_real, -100)
    assume((labels[:, 1:] != -100).any())  # something to predict
    torch.manual_seed(seed)
    ref_loss = ref(ids, attention_mask=mask, labels=labels, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).loss
    ref_loss.backward()
    torch.manual_seed(seed)
    our_loss = ours(ids, mask, labels=labels)[1]
    our_loss.backward()
    return our_loss, ref_loss, hub_grads(ARCHS[arch][0], ours), ref_grads(ref)


def check_same(arch, our_loss, ref_loss, ours, refs, tol=1e-5):
    assert_close(our_loss, ref_loss, f"{arch} train-mode loss", tol=tol)
    assert ours.keys() == refs.keys()
    for name in refs:
        assert_close(ours[name], refs[name], f"{arch} gradient", tol=tol)

# ----------------------------------------------------------------------------- loss and gradients


@pytest.mark.parametrize("arch", ARCHS)
@given(data=st.data())
def test_train_mode_loss_and_gradients_match_reference(arch, data):
    """Dropout 0 (the strategies' setting): train() mode is the same function as eval(); every parameter's
    gradient equals the reference's."""
    config = data.draw(ARCHS[arch][1]())
    ours, ref = ours_and_reference(arch, config)
    n_positions = config.get("n_positions") or config["max_position_embeddings"]
    ids, mask = data.draw(batches(config["vocab_size"], n_positions, min_len=2))
    check_same(arch, *loss_and_grads(arch, ours, ref, ids, mask))


@pytest.mark.parametrize("arch", ARCHS)
@given(data=st.data())
def test_dropout_sites_match_reference(arch, data):
    """Dropout on: from the same RNG state, the reference and we drop the same units (the same tensors at
    the same sites, in the same order), so the losses and gradients are still equal."""
    module, configs, _, _, fields = ARCHS[arch]
    config = data.draw(configs())
    config |= {field: data.draw(st.sampled_from([0.1, 0.5])) for field in fields}
    ours, ref = ours_and_reference(arch, config)
    n_positions = config.get("n_positions") or config["max_position_embeddings"]
    ids, mask = data.draw(batches(config["vocab_size"], n_positions, min_len=2))
    mask = torch.ones_like(mask)  # (padding rows are dropped the same way too, but keep the test plain)
    our_loss, ref_loss, our_g, ref_g = loss_and_grads(arch, ours, ref, ids, mask, seed=data.draw(st.integers(0, 99)))
    check_same(arch, our_loss, ref_loss, our_g, ref_g)


@pytest.mark.parametrize("arch", ARCHS)
def test_config_names_its_dropout_rates_and_context(arch):
    """What train.py reads from any config: DROPOUT, the reference's dropout-rate fields (--dropout sets
    them), and context_length, the reference's max_position_embeddings."""
    _, _, _, config_cls, fields = ARCHS[arch]
    assert OUR_CONFIGS[arch].DROPOUT == tuple(fields)
    reference = config_cls(max_position_embeddings=77, **dict.fromkeys(fields, 0.25))
    ours = OUR_CONFIGS[arch].from_dict(reference.to_dict())
    assert ours.context_length == reference.max_position_embeddings == 77
    rates = [getattr(ours, f) for f in ours.DROPOUT]
    assert rates == [getattr(reference, f) for f in fields] == [0.25] * len(fields)

# ----------------------------------------------------------------------------- dropout


@pytest.mark.parametrize("arch", ARCHS)
@given(data=st.data())
def test_dropout_off_in_eval_and_generation(arch, data):
    module, configs, _, _, fields = ARCHS[arch]
    config = data.draw(configs())
    ours, _ = ours_and_reference(arch, config)
    with_dropout, _ = ours_and_reference(arch, config | dict.fromkeys(fields, 0.5))
    n_positions = config.get("n_positions") or config["max_position_embeddings"]
    ids, _ = data.draw(batches(config["vocab_size"], n_positions - 4))
    # eval(): the logits do not depend on the dropout rates
    assert torch.equal(ours.eval()(ids), with_dropout.eval()(ids))
    # generate() in train() mode samples as in eval() mode, and gives the mode back
    with_dropout.train()
    out = module.generate(with_dropout, ids, 4, temperature=0)
    assert with_dropout.training
    assert torch.equal(out, module.generate(ours.eval(), ids, 4, temperature=0))
    # train(): dropout is on. Two draws over a full context (> 2 * n_positions * C units at rate 0.5) are
    # the same with probability < 2^-32, so this holds for every example, not by chance.
    full = torch.arange(2 * n_positions).view(2, n_positions) % config["vocab_size"]
    torch.manual_seed(0)
    assert not torch.equal(with_dropout(full), with_dropout(full))


@pytest.mark.parametrize("backend", ["naive", "sdpa"])
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_attention_dropout_rate(backend, p):
    """The fraction of attention probabilities dropped is p (within 4 standard deviations), and the rest are
    scaled by 1/(1 - p). With v the identity, attention's output is the dropped probabilities themselves."""
    torch.manual_seed(0)
    B, nh, T = 4, 4, 64
    q, k = torch.randn(B, nh, T, T), torch.randn(B, nh, T, T)
    v = torch.eye(T).expand(B, nh, T, T)
    probs = attention(q, k, v, backend="naive")  # (B, nh, T, T): no dropout
    dropped = attention(q, k, v, backend=backend, dropout_p=p)
    visible = probs > 0  # the causal triangle
    n = visible.sum().item()
    zeros = (dropped[visible] == 0).float().mean().item()
    assert abs(zeros - p) < 4 * math.sqrt(p * (1 - p) / n), f"dropped {zeros:.4f}, expected {p}"
    kept = visible & (dropped != 0)
    torch.testing.assert_close(dropped[kept], probs[kept] / (1 - p))
    assert (dropped[~visible] == 0).all()

# ----------------------------------------------------------------------------- initialisation


INIT_SIZES = {  # large enough for a per-parameter std to be measured within a few percent
    "gpt2": dict(n_embd=64, n_head=4, n_layer=3, vocab_size=256, n_positions=64),
    "gpt_neo": dict(hidden_size=64, num_heads=4, num_layers=2, vocab_size=256, max_position_embeddings=64,
                    attention_types=[[["global", "local"], 1]]),
    "gpt_neox": dict(hidden_size=64, num_attention_heads=4, num_hidden_layers=3, vocab_size=256,
                     intermediate_size=256, max_position_embeddings=64),
}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("initializer_range", [0.02, 0.1])
def test_init_matches_reference_statistics(arch, initializer_range):
    """from_config's weights against a reference model built from the same config: constants (LayerNorm
    1/0, biases 0) exactly, random matrices with the same mean and std per parameter (seeded)."""
    module, _, cls, config_cls, _ = ARCHS[arch]
    config = INIT_SIZES[arch] | dict(initializer_range=initializer_range, bos_token_id=0, eos_token_id=1)
    torch.manual_seed(0)
    ref = {k.replace("lm_head.", "embed_out."): v for k, v in cls(config_cls(**config)).state_dict().items()}
    torch.manual_seed(1)
    ours = module.hub_state_dict(module.from_config(OUR_CONFIGS[arch].from_dict(config)))
    ref = {k: v for k, v in ref.items() if k in ours}  # the reference's mask buffers aside
    assert ours.keys() == ref.keys()
    for name, r in ref.items():
        o = ours[name].float()
        if r.std() == 0:
            assert torch.equal(o, r), f"{name}: expected the constant {r.flatten()[0].item()}"
            continue
        n = r.numel()
        assert abs(o.std() / r.std() - 1) < 4 / math.sqrt(2 * n) + 0.02, f"{name}: std {o.std():.4g} vs {r.std():.4g}"
        assert abs(o.mean() - r.mean()) < 6 * r.std() / math.sqrt(n), f"{name}: mean {o.mean():.3g} vs {r.mean():.3g}"
