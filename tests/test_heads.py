"""heads.py against transformers' head models (GPT2ForSequenceClassification ... GPTNeoXForQuestionAnswering,
GPT2DoubleHeadsModel), saved in every layout real Hub repos use, on random configs and padded batches.

Our models take positions from the attention mask (cumsum - 1); the reference is fed the same position_ids.
Outputs at padding positions are compared only where they are defined in both: a padding query that sees
no real token (left padding; or GPT-Neo's local windows) attends to nothing, and transformers and we fill
such rows differently.
"""
import json
import tempfile
from pathlib import Path

import pytest
import torch
import transformers
from hypothesis import assume, given
from hypothesis import strategies as st
from reference import LAYOUTS, assert_close, save_checkpoint

import gpt2
import gpt_neo
import heads

transformers.logging.set_verbosity_error()

FAMILIES = ["gpt2", "gpt_neo", "gpt_neox"]
PREFIX = {"gpt2": "GPT2", "gpt_neo": "GPTNeo", "gpt_neox": "GPTNeoX"}  # of transformers' class names
REFERENCE_HEADS = {"sequence-classification": "ForSequenceClassification",
                   "token-classification": "ForTokenClassification",
                   "question-answering": "ForQuestionAnswering", "double-heads": "DoubleHeadsModel"}
LM = {"gpt2": "GPT2LMHeadModel", "gpt_neo": "GPTNeoForCausalLM", "gpt_neox": "GPTNeoXForCausalLM"}
# Every architecture × head that transformers has: three heads for each family, double heads for GPT-2.
COMBINATIONS = [(f, t) for f in FAMILIES for t in heads.TASKS if t != "double-heads" or f == "gpt2"]
families = pytest.mark.parametrize("family", FAMILIES)
combinations = pytest.mark.parametrize("family, task", COMBINATIONS)

# ----------------------------------------------------------------------------- configs and inputs


@st.composite
def gpt2_config(draw):
    n_head = draw(st.integers(1, 4))
    return dict(
        vocab_size=draw(st.integers(8, 64)), n_positions=draw(st.integers(8, 24)),
        n_embd=n_head * draw(st.sampled_from([2, 4, 8])), n_layer=draw(st.integers(1, 2)), n_head=n_head,
        n_inner=draw(st.sampled_from([None, 8, 24])),
        activation_function=draw(st.sampled_from(["gelu_new", "gelu", "relu"])),
        scale_attn_by_inverse_layer_idx=draw(st.booleans()), reorder_and_upcast_attn=draw(st.booleans()),
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        attn_implementation=draw(st.sampled_from(["eager", "sdpa"])))


@st.composite
def gpt_neo_config(draw):
    num_heads, num_layers = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    layers = draw(st.lists(st.sampled_from(["global", "local"]), min_size=num_layers, max_size=num_layers))
    return dict(
        vocab_size=draw(st.integers(8, 64)), max_position_embeddings=draw(st.integers(8, 24)),
        hidden_size=num_heads * draw(st.sampled_from([2, 4, 8])), num_layers=num_layers, num_heads=num_heads,
        attention_types=[[layers, 1]], window_size=draw(st.integers(2, 6)),
        intermediate_size=draw(st.sampled_from([None, 8, 24])),
        activation_function=draw(st.sampled_from(["gelu_new", "gelu", "relu"])),
        resid_dropout=0.0, embed_dropout=0.0, attention_dropout=0.0,
        attn_implementation="eager")  # transformers has no sdpa path for GPT-Neo


@st.composite
def gpt_neox_config(draw):
    num_heads = draw(st.integers(1, 4))
    return dict(
        vocab_size=draw(st.integers(8, 64)), max_position_embeddings=draw(st.integers(8, 24)),
        hidden_size=num_heads * 8, num_hidden_layers=draw(st.integers(1, 2)), num_attention_heads=num_heads,
        intermediate_size=draw(st.sampled_from([8, 24])), rotary_pct=draw(st.sampled_from([0.25, 0.5, 1.0])),
        rotary_emb_base=draw(st.sampled_from([10000.0, 100.0])),
        use_parallel_residual=draw(st.booleans()), hidden_act=draw(st.sampled_from(["gelu", "relu"])),
        hidden_dropout=0.0, attention_dropout=0.0,
        attn_implementation=draw(st.sampled_from(["eager", "sdpa"])))


CONFIGS = {"gpt2": gpt2_config, "gpt_neo": gpt_neo_config, "gpt_neox": gpt_neox_config}


@st.composite
def configs(draw, family):
    # Weights large enough that the outputs are far from zero, so a wrong computation shows.
    return draw(CONFIGS[family]()) | dict(initializer_range=draw(st.sampled_from([0.1, 0.3])),
                                          bos_token_id=0, eos_token_id=1)


def context(config):
    return config.get("n_positions") or config["max_position_embeddings"]


@st.composite
def batches(draw, config, pad_token_id=None, sides=("left", "right"), min_len=1, rows=None):
    """ids (B, T), attention_mask (B, T) and the padding side: every row has >= 1 real token, the padding
    is pad_token_id when that is set (and then a real token of each row differs from it)."""
    V = config["vocab_size"]
    side = draw(st.sampled_from(sides))
    B, T = rows or draw(st.integers(1, 3)), draw(st.integers(min_len, context(config)))
    ids = torch.tensor(draw(st.lists(st.lists(st.integers(0, V - 1), min_size=T, max_size=T),
                                     min_size=B, max_size=B)))
    lengths = draw(st.lists(st.integers(min_len, T), min_size=B, max_size=B))
    mask = torch.tensor([[1] * n + [0] * (T - n) for n in lengths])
    if side == "left":
        mask = mask.flip(-1)
    if pad_token_id is not None:
        ids = ids.masked_fill(mask == 0, pad_token_id)
        for row, n in enumerate(lengths):  # real tokens all equal to the pad id would leave no last real
            if (ids[row][mask[row].bool()] == pad_token_id).all():  # token to pool: make one differ
                ids[row, T - 1 if side == "left" else n - 1] = (pad_token_id + 1) % V
    return ids, mask, side


def positions(mask):
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def reference_model(family, task, config, seed=0):
    """transformers' head model, the head's weights random (its biases start at zero otherwise)."""
    torch.manual_seed(seed)
    cls = getattr(transformers, PREFIX[family] + REFERENCE_HEADS[task])
    ref = cls(getattr(transformers, PREFIX[family] + "Config")(**config)).eval()
    # save_pretrained writes this into config.json; reference.py's .bin layouts save the config alone.
    ref.config.architectures = [cls.__name__]
    with torch.no_grad():
        for key, p in ref.named_parameters():
            if key.split(".")[0] in heads.HEAD_MODULES:
                p.normal_(0, 0.5)
    return ref


def lm_reference(family, config, seed=0):
    torch.manual_seed(seed)
    lm = getattr(transformers, LM[family])(getattr(transformers, PREFIX[family] + "Config")(**config)).eval()
    lm.config.architectures = [LM[family]]
    return lm


def ours_and_reference(family, task, config, layout="safetensors", transform=None, **kwargs):
    ref = reference_model(family, task, config)
    with tempfile.TemporaryDirectory() as d:
        save_checkpoint(ref, d, layout, transform)
        return heads.from_pretrained(d, **kwargs), ref


def small(family):
    return {"gpt2": dict(vocab_size=32, n_positions=16, n_embd=16, n_layer=2, n_head=2),
            "gpt_neo": dict(vocab_size=32, max_position_embeddings=16, hidden_size=16, num_layers=2,
                            num_heads=2, attention_types=[[["global", "local"], 1]], window_size=4),
            "gpt_neox": dict(vocab_size=32, max_position_embeddings=16, hidden_size=16, num_hidden_layers=2,
                             num_attention_heads=2, intermediate_size=32, rotary_pct=0.5),
            }[family] | dict(initializer_range=0.2, bos_token_id=0, eos_token_id=1)

# ----------------------------------------------------------------------------- outputs and losses


@st.composite
def sequence_labels(draw, B, num_labels, problem_type):
    """Labels for problem_type, or, when it is None, for one of the types the reference infers."""
    kind = problem_type or ("regression" if num_labels == 1 else draw(
        st.sampled_from(["single_label_classification", "multi_label_classification"])))
    if kind == "single_label_classification":
        return torch.tensor(draw(st.lists(st.integers(0, num_labels - 1), min_size=B, max_size=B)))
    if kind == "multi_label_classification":
        return torch.randint(0, 2, (B, num_labels)).float()
    return torch.randn(B) if num_labels == 1 else torch.randn(B, num_labels)


@families
@given(data=st.data())
def test_sequence_classification_matches_reference(family, data):
    config = data.draw(configs(family))
    num_labels = data.draw(st.integers(1, 4))
    problem_type = data.draw(st.sampled_from([None, "regression", "multi_label_classification"]
                                             + ["single_label_classification"] * (num_labels > 1)))
    pad_token_id = data.draw(st.sampled_from([None, 0, 5]))
    config |= dict(num_labels=num_labels, problem_type=problem_type, pad_token_id=pad_token_id)
    layout = data.draw(st.sampled_from(LAYOUTS))
    ours, ref = ours_and_reference(family, "sequence-classification", config, layout)
    assert (ours.num_labels, ours.pad_token_id, ours.problem_type) == (num_labels, pad_token_id, problem_type)
    # Without pad_token_id only left padding can be pooled (at the last token), and the reference refuses
    # batches of more than one row: it runs row by row.
    sides = ("left", "right") if pad_token_id is not None else ("left",)
    ids, mask, side = data.draw(batches(config, pad_token_id, sides))
    labels = data.draw(sequence_labels(ids.size(0), num_labels, problem_type))
    rows = [slice(None)] if pad_token_id is not None else [slice(i, i + 1) for i in range(ids.size(0))]
    with torch.no_grad():
        out = ours(ids, mask, labels=labels)
        expected = [ref(ids[r], attention_mask=mask[r], position_ids=positions(mask)[r], labels=labels[r])
                    for r in rows]
    what = f"{family} sequence classification"
    assert_close(out.logits, torch.cat([e.logits for e in expected]), f"{what} logits")
    # Every row weighs the same in each problem type's mean: the batch's loss is the mean of the rows'.
    assert_close(out.loss, torch.stack([e.loss for e in expected]).mean(), f"{what} loss")


@families
@given(data=st.data())
def test_token_classification_matches_reference(family, data):
    config = data.draw(configs(family)) | dict(num_labels=data.draw(st.integers(1, 4)))
    layout = data.draw(st.sampled_from(LAYOUTS))
    ours, ref = ours_and_reference(family, "token-classification", config, layout)
    ids, mask, side = data.draw(batches(config))
    labels = torch.randint(0, config["num_labels"], ids.shape).masked_fill(mask == 0, -100)
    with torch.no_grad():
        out = ours(ids, mask, labels=labels)
        expected = ref(ids, attention_mask=mask, position_ids=positions(mask), labels=labels)
    assert_close(out.logits, expected.logits, f"{family} token classification logits", mask=mask.bool())
    assert_close(out.loss, expected.loss, f"{family} token classification loss")


@families
@given(data=st.data())
def test_question_answering_matches_reference(family, data):
    config = data.draw(configs(family))
    ours, ref = ours_and_reference(family, "question-answering", config, data.draw(st.sampled_from(LAYOUTS)))
    ids, mask, side = data.draw(batches(config))
    B, T = ids.shape
    # Answers anywhere, past the input too (clamped to T, then ignored), given as (B,) or (B, 1).
    start, end = (torch.tensor(data.draw(st.lists(st.integers(0, T + 3), min_size=B, max_size=B)))
                  for _ in range(2))
    assume((start < T).any() and (end < T).any())  # not every answer ignored (the mean would be NaN)
    if data.draw(st.booleans()):
        start, end = start[:, None], end[:, None]
    with torch.no_grad():
        out = ours(ids, mask, start_positions=start, end_positions=end)
        expected = ref(ids, attention_mask=mask, position_ids=positions(mask), start_positions=start,
                       end_positions=end)
    assert_close(out.start_logits, expected.start_logits, f"{family} QA start logits", mask=mask.bool())
    assert_close(out.end_logits, expected.end_logits, f"{family} QA end logits", mask=mask.bool())
    # The loss is a softmax over all T positions, padding included: defined in both when every padding query
    # sees a real token, i.e. with right padding (and in GPT-Neo's local layers no more than window_size - 1
    # padding tokens after the last real one).
    local = family == "gpt_neo" and "local" in config["attention_types"][0][0]
    if side == "right" and (not local or (mask == 0).sum(-1).max() < config["window_size"]):
        assert_close(out.loss, expected.loss, f"{family} QA loss")


@given(data=st.data())
def test_gpt2_double_heads_match_reference(data):
    config = data.draw(configs("gpt2")) | dict(
        summary_activation=data.draw(st.sampled_from([None, "tanh"])),
        summary_proj_to_labels=data.draw(st.booleans()), tie_word_embeddings=data.draw(st.booleans()))
    ours, ref = ours_and_reference("gpt2", "double-heads", config, data.draw(st.sampled_from(LAYOUTS)))
    B, nc = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3))
    ids, mask, side = data.draw(batches(config, min_len=2, rows=B * nc))
    T = ids.size(-1)
    ids, mask = ids.view(B, nc, T), mask.view(B, nc, T)
    # The classification token: any real token of each choice (or, when None, the last token).
    mc_token_ids = torch.tensor([[data.draw(st.sampled_from(torch.nonzero(m).flatten().tolist())) for m in row]
                                 for row in mask])
    if side == "left" and data.draw(st.booleans()):
        mc_token_ids = None
    mc_labels = torch.tensor(data.draw(st.lists(st.integers(0, nc - 1), min_size=B, max_size=B)))
    if not config["summary_proj_to_labels"]:
        mc_labels = None  # mc_logits are then (B, nc, C): no loss to take
    # LM labels: none on padding, nor on a row's first real token (predicted from a padding position).
    labels = ids.masked_fill((mask == 0) | (positions(mask) == 0), -100)
    with torch.no_grad():
        out = ours(ids, mask, mc_token_ids=mc_token_ids, labels=labels, mc_labels=mc_labels)
        expected = ref(ids, attention_mask=mask, position_ids=positions(mask).view(B * nc, T),
                       mc_token_ids=mc_token_ids, labels=labels, mc_labels=mc_labels)
    assert_close(out.logits, expected.logits, "gpt2 double heads LM logits", mask=mask.bool())
    assert_close(out.mc_logits, expected.mc_logits, "gpt2 double heads mc logits")
    if mc_labels is not None:
        assert_close(out.mc_loss, expected.mc_loss, "gpt2 double heads mc loss")
    if labels[..., 1:].ne(-100).any():
        assert_close(out.loss, expected.loss, "gpt2 double heads LM loss")
    assert (ours.lm_head.weight is ours.transformer.wte.weight) == config["tie_word_embeddings"]

# ----------------------------------------------------------------------------- training


def some_loss(model, task, ids, mask):
    B = ids.size(0)
    if task == "sequence-classification":
        return model(ids, mask, labels=torch.arange(B) % 3).loss
    if task == "token-classification":
        return model(ids, mask, labels=torch.randint(0, 3, ids.shape).masked_fill(mask == 0, -100)).loss
    if task == "question-answering":
        return model(ids, mask, start_positions=torch.tensor([3, 5]), end_positions=torch.tensor([6, 9])).loss
    choices = [x[:, None].expand(B, 2, -1) for x in (ids, mask)]  # (B, 2 choices, T)
    out = model(*choices, labels=choices[0], mc_labels=torch.tensor([0, 1]))
    return out.loss + out.mc_loss


@combinations
def test_gradients_reach_backbone_and_head(family, task):
    config = small(family) | dict(pad_token_id=0)
    if "classification" in task:
        config["num_labels"] = 3
    ours, _ = ours_and_reference(family, task, config)
    ours.train()
    ids = torch.randint(1, 32, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    some_loss(ours, task, ids.masked_fill(mask == 0, 0), mask).backward()
    for key, p in ours.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), key
    embedding = next(ours.backbone.parameters())  # wte / embed_in
    assert embedding.grad.abs().sum() > 0
    for key, p in getattr(ours, ours.HEAD).named_parameters():
        assert p.grad.abs().sum() > 0, f"{ours.HEAD}.{key}"


def test_a_few_steps_of_fine_tuning_fit_a_toy_task():
    """A new sequence classifier on a GPT-2 backbone learns "is token 7 in the sequence" on 8 examples."""
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as d:
        save_checkpoint(lm_reference("gpt2", small("gpt2")), d)
        with pytest.warns(UserWarning, match="score.weight"):
            model = heads.from_pretrained(d, task="sequence-classification", num_labels=2)
    ids = torch.randint(8, 32, (8, 10))
    ids[::2, 4] = 7
    labels = (ids == 7).any(-1).long()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    losses = []
    for _ in range(20):
        loss = model(ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]
    model.eval()
    assert model(ids).logits.argmax(-1).tolist() == labels.tolist()

# ----------------------------------------------------------------------------- loading


@combinations
def test_new_head_on_a_language_model_checkpoint(family, task):
    """The backbone is the LM's, the head new: equal to the reference head model given the LM's backbone
    and our new head's weights."""
    config = small(family) | dict(pad_token_id=0)
    lm = lm_reference(family, config)
    num_labels = 3 if "classification" in task else None
    with tempfile.TemporaryDirectory() as d:
        save_checkpoint(lm, d)
        with pytest.warns(UserWarning, match=heads.TASKS[task].HEAD) as warning:
            ours = heads.from_pretrained(d, task=task, num_labels=num_labels)
    if family == "gpt_neox":  # its LM head is untied: in the file, and left out
        assert "not used: embed_out.weight" in str(warning[0].message)
    ref = reference_model(family, task, config | ({"num_labels": num_labels} if num_labels else {}))
    backbone = heads.FAMILIES[family].prefix
    getattr(ref, backbone).load_state_dict(getattr(lm, backbone).state_dict())
    getattr(ref, ours.HEAD).load_state_dict(getattr(ours, ours.HEAD).state_dict())
    ids = torch.randint(1, 32, (2, 12))
    with torch.no_grad():
        if task == "double-heads":
            got, expected = ours(ids[None]).mc_logits, ref(ids[None]).mc_logits
            assert_close(ours(ids[None]).logits, lm(ids).logits[None], "gpt2 new double heads LM logits")
        elif task == "question-answering":
            got, expected = ours(ids).start_logits, ref(ids).start_logits
        else:
            got, expected = ours(ids).logits, ref(ids).logits
    assert_close(got, expected, f"{family} new {task} head")
    weights = [p for key, p in getattr(ours, ours.HEAD).named_parameters() if key.endswith("weight")]
    assert 0.15 < weights[0].std() < 0.25  # N(0, initializer_range = 0.2), as transformers initialises it


@pytest.mark.parametrize("family", FAMILIES)
def test_new_head_on_a_bare_backbone_checkpoint(family):
    """A file saved from the bare backbone (GPT2Model ...): keys without the model prefix, no LM head."""
    torch.manual_seed(0)
    cls = getattr(transformers, PREFIX[family] + "Model")
    bare = cls(getattr(transformers, PREFIX[family] + "Config")(**small(family))).eval()
    with tempfile.TemporaryDirectory() as d:
        bare.save_pretrained(d)
        with pytest.warns(UserWarning, match=f"{cls.__name__}: its backbone is loaded"):
            ours = heads.from_pretrained(d, task="token-classification", num_labels=2)
    ids = torch.randint(0, 32, (2, 12))
    with torch.no_grad():
        assert_close(ours.backbone(ids), bare(ids).last_hidden_state, f"{family} bare backbone hidden states")


def damaged(head_key, backbone_key):
    def transform(state_dict):
        del state_dict[head_key], state_dict[backbone_key]
        state_dict[head_key.split(".")[0] + ".extra"] = torch.zeros(2)
        return state_dict
    return transform


@combinations
def test_head_checkpoint_with_missing_or_extra_keys_names_them(family, task):
    config = small(family)
    keys = list(reference_model(family, task, config).state_dict())
    head_key = next(k for k in keys if k.split(".")[0] in heads.HEAD_MODULES)
    backbone_key = next(k for k in keys if k.endswith(("0.mlp.c_fc.weight", "0.mlp.dense_h_to_4h.weight")))
    with pytest.raises(ValueError) as error:
        ours_and_reference(family, task, config, transform=damaged(head_key, backbone_key))
    message = str(error.value)
    for part in ("missing", head_key, backbone_key, "unexpected", head_key.split(".")[0] + ".extra"):
        assert part in message


@families
def test_wrong_number_of_labels_is_an_error(family):
    config = small(family) | dict(num_labels=3)
    with tempfile.TemporaryDirectory() as d:
        save_checkpoint(reference_model(family, "sequence-classification", config), d)
        with pytest.raises(ValueError, match="not num_labels=5"):
            heads.from_pretrained(d, num_labels=5)
        path = Path(d) / "config.json"  # config.json says 2 labels, the weights have 3
        path.write_text(json.dumps(json.loads(path.read_text()) | {"id2label": {"0": "a", "1": "b"}}))
        with pytest.raises(ValueError, match=r"wrong shapes.*score\.weight"):
            heads.from_pretrained(d)


@families
def test_dropout_rates_are_the_references(family):
    for extra in ({}, {"classifier_dropout": 0.3}, {"hidden_dropout": 0.2}):
        ours, ref = ours_and_reference(family, "token-classification", small(family) | extra)
        assert ours.dropout.p == ref.dropout.p, extra
    if family == "gpt2":
        config = small(family) | dict(summary_first_dropout=0.2, summary_last_dropout=0.3)
        ours, ref = ours_and_reference(family, "double-heads", config)
        assert ours.multiple_choice_head.first_dropout.p == ref.multiple_choice_head.first_dropout.p
        assert ours.multiple_choice_head.last_dropout.p == ref.multiple_choice_head.last_dropout.p


def test_loading_keeps_the_labels_and_the_dtype(tmp_path):
    config = small("gpt2") | dict(id2label={0: "neg", 1: "pos"}, pad_token_id=3)
    save_checkpoint(reference_model("gpt2", "sequence-classification", config), tmp_path)
    ours = heads.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert ours.id2label == {0: "neg", 1: "pos"} and ours.num_labels == 2 and ours.pad_token_id == 3
    assert not ours.training
    assert {p.dtype for p in ours.parameters()} == {torch.bfloat16}
    assert not any(p.is_meta for p in ours.parameters())

# ----------------------------------------------------------------------------- errors


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A GPT-2 LM checkpoint and a GPT-2 sequence-classification one."""
    return {what: save_checkpoint(model, tmp_path_factory.mktemp(what)) for what, model in (
        ("lm", lm_reference("gpt2", small("gpt2"))),
        ("classifier", reference_model("gpt2", "sequence-classification", small("gpt2"))))}


@pytest.mark.parametrize("kwargs, message", [
    (dict(), "pass task="),
    (dict(task="sequence-classification"), "pass num_labels="),
    (dict(task="question-answering", num_labels=2), "num_labels is for the classifiers"),
    (dict(task="summarisation"), "unknown task"),
    (dict(task="token-classification", num_labels=2, attn="fast"), "unknown attention backend"),
])
def test_language_model_checkpoint_errors(checkpoints, kwargs, message):
    with pytest.raises(ValueError, match=message):
        heads.from_pretrained(checkpoints["lm"], **kwargs)


def test_head_checkpoint_for_another_task_is_an_error(checkpoints):
    with pytest.raises(ValueError, match="GPT2ForSequenceClassification, not a token-classification model"):
        heads.from_pretrained(checkpoints["classifier"], task="token-classification")


def test_unknown_architecture_is_an_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(ValueError, match="LlamaForCausalLM.*is not one of"):
        heads.from_pretrained(tmp_path)


def test_right_padding_without_pad_token_id_is_an_error(checkpoints):
    ours = heads.from_pretrained(checkpoints["classifier"])
    assert ours.pad_token_id is None
    ids, mask = torch.tensor([[5, 6, 7], [5, 6, 7]]), torch.tensor([[1, 1, 1], [1, 1, 0]])
    with pytest.raises(ValueError, match="pad_token_id"):
        ours(ids, mask)
    ours.pad_token_id = 7
    assert ours(ids, mask).logits.shape == (2, 2)


def test_invalid_head_options_are_errors():
    config = gpt2.GPT2Config.from_dict(small("gpt2"))
    with pytest.raises(ValueError, match="problem_type"):
        heads.SequenceClassifier(config, 2, problem_type="ranking")
    with pytest.raises(ValueError, match="num_labels >= 2"):
        heads.SequenceClassifier(config, 1, problem_type="single_label_classification")
    with pytest.raises(ValueError, match="summary_type"):
        heads.GPT2DoubleHeads(config, summary_type="mean")
    with pytest.raises(ValueError, match="summary_activation"):
        heads.GPT2DoubleHeads(config, summary_activation="softsign")
    with pytest.raises(ValueError, match="GPT-2's only"):
        heads.GPT2DoubleHeads(gpt_neo.GPTNeoConfig.from_dict(small("gpt_neo")))
