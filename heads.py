"""Task heads on the GPT-2, GPT-Neo and GPT-NeoX backbones, loading the Hub's head checkpoints as they are.

    model = heads.from_pretrained("path/to/a/GPT2ForSequenceClassification")       # a head checkpoint
    model = heads.from_pretrained("gpt2", task="sequence-classification", num_labels=3)  # a new head
    out = model(input_ids, attention_mask, labels=labels)                      # out.logits, out.loss

The backbone is the model file's own (gpt2.GPT2Model, gpt_neo.GPTNeoModel, gpt_neox.GPTNeoXModel): ids ->
final hidden states h (B, T, C). A head is one small layer on top of h:

    ids (B, T) ─ backbone ─ h (B, T, C) ─┬─ score (no bias) at each row's last real token  -> (B, labels)
                                         ├─ dropout, classifier at every token             -> (B, T, labels)
                                         ├─ qa_outputs: a start and an end score per token -> 2 × (B, T)
                                         └─ GPT-2's double heads, on nc choices per example (B, nc, T):
                                            lm_head at every token                         -> (B, nc, T, V)
                                            multiple_choice_head at mc_token_ids           -> (B, nc)

Notation: B batch, T tokens, C hidden size, V vocab_size, nc choices per example.
Module names are the Hub's state-dict keys: the backbone is `transformer` (GPT-2, GPT-Neo) or `gpt_neox`,
the heads `score`, `classifier`, `qa_outputs`, `lm_head` and `multiple_choice_head.summary`. Outputs and
losses are transformers' (GPT2ForSequenceClassification ... GPTNeoXForQuestionAnswering).
Dropout: the backbones' and the heads' rates are what config.json sets, active in train() mode only.
Saving: `save_pretrained(model, directory)` writes the Hub's layout, which transformers loads too.
"""
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

import checkpoint
import gpt2
import gpt_neo
import gpt_neox

# ----------------------------------------------------------------------------- the three backbones


class Family(NamedTuple):
    """A model file, and what the Hub's state dicts call the parts of its models."""
    module: object  # gpt2, gpt_neo or gpt_neox: the config, backbone and loading code all come from it
    config: type
    backbone: type  # ids (B, T) -> hidden states (B, T, C)
    prefix: str  # the backbone's name in the Hub's state dicts
    lm_head: str  # the LM head's name there


FAMILIES = {  # config.json's model_type -> its family
    "gpt2": Family(gpt2, gpt2.GPT2Config, gpt2.GPT2Model, "transformer", "lm_head"),
    "gpt_neo": Family(gpt_neo, gpt_neo.GPTNeoConfig, gpt_neo.GPTNeoModel, "transformer", "lm_head"),
    "gpt_neox": Family(gpt_neox, gpt_neox.GPTNeoXConfig, gpt_neox.GPTNeoXModel, "gpt_neox", "embed_out"),
}


def family_of(config):
    for family in FAMILIES.values():
        if isinstance(config, family.config):
            return family
    raise TypeError(f"expected a config of gpt2.py, gpt_neo.py or gpt_neox.py, got {type(config).__name__}")


class Head(nn.Module):
    """What every head model shares: the family's backbone, under the Hub's name for it."""
    HEAD = None  # the head module's name, which is also the first part of its state-dict keys

    def __init__(self, config, backend="sdpa"):
        super().__init__()
        family = family_of(config)
        self.config = config
        self.backbone_name = family.prefix  # "transformer" or "gpt_neox": the Hub's keys load as they are
        self.add_module(family.prefix, family.backbone(config, backend))
        self.hidden_size = config.hidden_size  # C (GPT-2's n_embd, under its generic name)

    @property
    def backbone(self):
        return getattr(self, self.backbone_name)

    def tie_weights(self):  # what the model files' loading calls: only GPT2DoubleHeads ties (lm_head to wte)
        pass

# ----------------------------------------------------------------------------- heads


@dataclass
class ClassifierOutput:
    logits: torch.Tensor  # (B, num_labels) for a sequence, (B, T, num_labels) for tokens
    loss: torch.Tensor | None = None


@dataclass
class QuestionAnsweringOutput:
    start_logits: torch.Tensor  # (B, T)
    end_logits: torch.Tensor  # (B, T)
    loss: torch.Tensor | None = None


@dataclass
class DoubleHeadsOutput:
    logits: torch.Tensor  # (B, nc, T, V) language-model scores
    mc_logits: torch.Tensor  # (B, nc) a score per choice
    loss: torch.Tensor | None = None  # the LM loss (with `labels`)
    mc_loss: torch.Tensor | None = None  # the multiple-choice loss (with `mc_labels`)


PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")


class SequenceClassifier(Head):
    """A score per label for each sequence, read at its last real token (the only one that has seen all the
    others: attention is causal).

    The last real token is the rightmost one that is not `pad_token_id`, so left and right padding both
    work. As in the reference, padding is told by the token id, not by attention_mask: with GPT-2's usual
    pad = eos = 50256, a trailing <|endoftext|> is skipped too. Without pad_token_id it is the last token
    (the reference then refuses batches of more than one row; we take them when no row ends in padding).
    """
    HEAD = "score"

    def __init__(self, config, num_labels, *, pad_token_id=None, problem_type=None, id2label=None,
                 backend="sdpa"):
        super().__init__(config, backend)
        if problem_type not in (None, *PROBLEM_TYPES):
            raise ValueError(f"problem_type {problem_type!r} is not one of {', '.join(PROBLEM_TYPES)}")
        if problem_type == "single_label_classification" and num_labels < 2:  # transformers refuses it too
            raise ValueError("problem_type single_label_classification needs num_labels >= 2 (a softmax over "
                             "one label is always 1): use num_labels=2, or regression for one output")
        self.num_labels = num_labels
        self.pad_token_id = pad_token_id
        self.problem_type = problem_type  # None: inferred from num_labels and the labels' dtype at each call
        self.id2label = id2label or {i: f"LABEL_{i}" for i in range(num_labels)}
        self.score = nn.Linear(self.hidden_size, num_labels, bias=False)

    def forward(self, input_ids, attention_mask=None, position_ids=None, labels=None):
        """labels: (B,) class ids; (B, num_labels) 0/1 floats for multi-label, or floats for regression
        ((B,) with one label)."""
        h = self.backbone(input_ids, attention_mask, position_ids)  # (B, T, C)
        last = last_token_index(input_ids, attention_mask, self.pad_token_id)  # (B,)
        logits = self.score(h[torch.arange(h.size(0), device=h.device), last])  # (B, C) -> (B, num_labels)
        loss = None
        if labels is not None:
            loss = sequence_classification_loss(logits, labels, self.num_labels, self.problem_type)
        return ClassifierOutput(logits, loss)


def last_token_index(input_ids, attention_mask, pad_token_id):
    """(B,) index of each row's rightmost token that is not pad_token_id (0 when there is none); without
    pad_token_id, the last index."""
    B, T = input_ids.shape
    if pad_token_id is None:
        if attention_mask is not None and not attention_mask[:, -1].bool().all():
            raise ValueError("a row ends in padding (attention_mask 0 at its last token) but pad_token_id is "
                             "not set, so its last real token cannot be found: set model.pad_token_id to "
                             "the id the padding uses")
        return torch.full((B,), T - 1, device=input_ids.device)
    real = (input_ids != pad_token_id).int()  # (B, T)
    return (torch.arange(T, device=input_ids.device, dtype=torch.int32) * real).argmax(-1)  # largest index


def sequence_classification_loss(logits, labels, num_labels, problem_type=None):
    """The reference's loss for problem_type. When it is None it is inferred as the reference does (one
    label: regression; integer labels: single-label; else multi-label), but at each call: the reference
    writes the first call's answer into its config for good."""
    if problem_type is None:
        if num_labels == 1:
            problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            problem_type = "single_label_classification"
        else:
            problem_type = "multi_label_classification"
    if problem_type == "regression":  # mean squared error
        if num_labels == 1:
            return F.mse_loss(logits.squeeze(), labels.squeeze().to(logits.dtype))
        return F.mse_loss(logits, labels.to(logits.dtype))
    if problem_type == "single_label_classification":  # one softmax over the labels
        return F.cross_entropy(logits.view(-1, num_labels), labels.view(-1))
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))  # one sigmoid per label


class TokenClassifier(Head):
    """A score per label for every token (named entities, tagging)."""
    HEAD = "classifier"

    def __init__(self, config, num_labels, *, dropout=0.1, id2label=None, backend="sdpa"):
        super().__init__(config, backend)
        self.num_labels = num_labels
        self.id2label = id2label or {i: f"LABEL_{i}" for i in range(num_labels)}
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(self.hidden_size, num_labels)

    def forward(self, input_ids, attention_mask=None, position_ids=None, labels=None):
        """labels: (B, T) class ids, -100 where there is nothing to predict (padding, sub-words): ignored."""
        h = self.backbone(input_ids, attention_mask, position_ids)  # (B, T, C)
        logits = self.classifier(self.dropout(h))  # (B, T, num_labels)
        loss = None
        if labels is not None:
            logits_2d = logits.view(-1, self.num_labels).float()  # (B * T, num_labels)
            loss = F.cross_entropy(logits_2d, labels.view(-1), ignore_index=-100)
        return ClassifierOutput(logits, loss)


class QuestionAnswering(Head):
    """Extractive QA: the answer is the span of the input from its best start to its best end token."""
    HEAD = "qa_outputs"

    def __init__(self, config, *, backend="sdpa"):
        super().__init__(config, backend)
        self.qa_outputs = nn.Linear(self.hidden_size, 2)  # a start and an end score per token

    def forward(self, input_ids, attention_mask=None, position_ids=None, start_positions=None,
                end_positions=None):
        """start_positions, end_positions: (B,) token indices of the answer; the loss needs both."""
        h = self.backbone(input_ids, attention_mask, position_ids)  # (B, T, C)
        start_logits, end_logits = self.qa_outputs(h).unbind(-1)  # (B, T, 2) -> 2 × (B, T)
        loss = None
        if start_positions is not None and end_positions is not None:
            loss = question_answering_loss(start_logits, end_logits, start_positions, end_positions)
        return QuestionAnsweringOutput(start_logits, end_logits, loss)


def question_answering_loss(start_logits, end_logits, start_positions, end_positions):
    """Mean of the start and the end cross-entropy over the T positions (padding included, as in the
    reference). A position outside the input (its answer truncated away) is clamped to T, and T ignored."""
    T = start_logits.size(1)
    start = start_positions.reshape(-1).clamp(0, T)  # (B,)
    end = end_positions.reshape(-1).clamp(0, T)
    return (F.cross_entropy(start_logits, start, ignore_index=T)
            + F.cross_entropy(end_logits, end, ignore_index=T)) / 2


SUMMARY_ACTIVATIONS = {"tanh": torch.tanh, "linear": lambda x: x, **checkpoint.ACTIVATIONS}


class SequenceSummary(nn.Module):
    """GPT-2's multiple-choice head: the hidden state at a chosen token -> dropout, Linear, activation,
    dropout. (transformers' GPT2SequenceSummary with summary_type "cls_index", the type GPT-2 uses.)"""

    def __init__(self, hidden_size, n_out, *, use_proj=True, activation=None, first_dropout=0.1,
                 last_dropout=0.0):
        super().__init__()
        if activation and activation not in SUMMARY_ACTIVATIONS:
            raise ValueError(f"summary_activation {activation!r} is not one of "
                             f"{', '.join(SUMMARY_ACTIVATIONS)}")
        self.summary = nn.Linear(hidden_size, n_out) if use_proj else nn.Identity()
        self.activation = SUMMARY_ACTIVATIONS[activation] if activation else nn.Identity()
        self.first_dropout = nn.Dropout(first_dropout)
        self.last_dropout = nn.Dropout(last_dropout)

    def forward(self, h, token_ids):
        """h (B, nc, T, C), token_ids (B, nc) -> (B, nc, n_out)."""
        index = token_ids[..., None, None].expand(*token_ids.shape, 1, h.size(-1))  # (B, nc, 1, C)
        x = h.gather(-2, index).squeeze(-2)  # (B, nc, C): the hidden state at each choice's token
        return self.last_dropout(self.activation(self.summary(self.first_dropout(x))))


class GPT2DoubleHeads(Head):
    """GPT-2 with two heads, as GPT-1 was fine-tuned on RocStories and SWAG (Radford et al. 2018): the LM
    head on every token, and a score per choice read at its mc_token_ids token (usually a [CLS] token
    appended to each choice). input_ids are (B, nc, T): nc candidate sequences per example."""
    HEAD = "multiple_choice_head"

    def __init__(self, config, *, summary_type="cls_index", summary_use_proj=True,
                 summary_proj_to_labels=True, summary_activation=None, summary_first_dropout=0.1,
                 summary_last_dropout=0.0, backend="sdpa"):
        if not isinstance(config, gpt2.GPT2Config):
            raise ValueError("the double-heads model is GPT-2's only (transformers has none for GPT-Neo or "
                             "GPT-NeoX)")
        if summary_type != "cls_index":  # "last", "first", "mean" are XLNet's/BERT's, unused by GPT-2
            raise ValueError(f"summary_type {summary_type!r} is not implemented (GPT-2 uses 'cls_index')")
        super().__init__(config, backend)
        self.summary_config = dict(summary_type=summary_type, summary_use_proj=summary_use_proj,
                                   summary_proj_to_labels=summary_proj_to_labels,
                                   summary_activation=summary_activation,
                                   summary_first_dropout=summary_first_dropout,
                                   summary_last_dropout=summary_last_dropout)  # for config.json when saved
        self.lm_head = nn.Linear(self.hidden_size, config.vocab_size, bias=False)
        # The reference fixes num_labels = 1: one score per choice (or C numbers, not projected to labels).
        n_out = 1 if summary_proj_to_labels else self.hidden_size
        self.multiple_choice_head = SequenceSummary(
            self.hidden_size, n_out, use_proj=summary_use_proj, activation=summary_activation,
            first_dropout=summary_first_dropout, last_dropout=summary_last_dropout)
        self.tie_weights()

    def tie_weights(self):
        if self.config.tie_word_embeddings:  # the LM head reads its scores off the embedding matrix
            self.lm_head.weight = self.transformer.wte.weight

    def forward(self, input_ids, attention_mask=None, position_ids=None, mc_token_ids=None, labels=None,
                mc_labels=None):
        """input_ids, attention_mask, labels: (B, nc, T); mc_token_ids: (B, nc), the last token when None;
        mc_labels: (B,) the index of the right choice. LM labels of -100 are ignored."""
        *lead, T = input_ids.shape  # lead = (B, nc)
        flat = [x if x is None else x.reshape(-1, x.size(-1))  # (B * nc, T), or (1, T) positions
                for x in (input_ids, attention_mask, position_ids)]
        h = self.transformer(*flat).view(*lead, T, -1)  # (B * nc, T, C) -> (B, nc, T, C)
        logits = self.lm_head(h)  # (B, nc, T, V)
        if mc_token_ids is None:
            mc_token_ids = torch.full(lead, T - 1, device=input_ids.device)
        mc_logits = self.multiple_choice_head(h, mc_token_ids).squeeze(-1)  # (B, nc, 1) -> (B, nc)
        loss = mc_loss = None
        if labels is not None:  # every choice is a text to predict, token by token
            loss = gpt2.lm_loss(logits.view(-1, T, logits.size(-1)), labels.reshape(-1, T))
        if mc_labels is not None:
            mc_loss = F.cross_entropy(mc_logits.view(-1, mc_logits.size(-1)), mc_labels.view(-1))
        return DoubleHeadsOutput(logits, mc_logits, loss, mc_loss)

# ----------------------------------------------------------------------------- loading


TASKS = {
    "sequence-classification": SequenceClassifier,
    "token-classification": TokenClassifier,
    "question-answering": QuestionAnswering,
    "double-heads": GPT2DoubleHeads,
}
# config.json's "architectures" -> (model_type, head); None: a language model or a bare backbone, which takes
# a new head (task=). The heads are all those transformers has for the three families.
ARCHITECTURES = {
    "GPT2LMHeadModel": ("gpt2", None),
    "GPT2Model": ("gpt2", None),
    "GPT2ForSequenceClassification": ("gpt2", SequenceClassifier),
    "GPT2ForTokenClassification": ("gpt2", TokenClassifier),
    "GPT2ForQuestionAnswering": ("gpt2", QuestionAnswering),
    "GPT2DoubleHeadsModel": ("gpt2", GPT2DoubleHeads),
    "GPTNeoForCausalLM": ("gpt_neo", None),
    "GPTNeoModel": ("gpt_neo", None),
    "GPTNeoForSequenceClassification": ("gpt_neo", SequenceClassifier),
    "GPTNeoForTokenClassification": ("gpt_neo", TokenClassifier),
    "GPTNeoForQuestionAnswering": ("gpt_neo", QuestionAnswering),
    "GPTNeoXForCausalLM": ("gpt_neox", None),
    "GPTNeoXModel": ("gpt_neox", None),
    "GPTNeoXForSequenceClassification": ("gpt_neox", SequenceClassifier),
    "GPTNeoXForTokenClassification": ("gpt_neox", TokenClassifier),
    "GPTNeoXForQuestionAnswering": ("gpt_neox", QuestionAnswering),
}
HEAD_MODULES = tuple(head.HEAD for head in TASKS.values())  # score, classifier, qa_outputs, ...


def from_pretrained(name_or_path, *, task=None, num_labels=None, revision=None, device="cpu", dtype=None,
                    attn="sdpa", quantize=None):
    """A head model from a Hub name/id or a local directory (fp32 unless `dtype`), in eval() mode.

    A head checkpoint (config.json's architectures: GPT2ForSequenceClassification, ...) loads strictly: a
    missing, unexpected or wrongly shaped tensor is an error that names it. A language model (GPT2LMHeadModel,
    GPTNeoForCausalLM, ...) needs `task` (one of TASKS, and `num_labels` for the classifiers): its backbone
    is loaded and the head is new, initialised as transformers does (weights N(0, initializer_range),
    biases 0), with a warning that names the new keys. quantize="int8" | "int4" as in the model files.
    """
    if task is not None and task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    checkpoint.check_options(attn, quantize)
    directory = checkpoint_dir(name_or_path, revision)
    raw = checkpoint.read_json_object(directory / "config.json")  # read once: the head's settings, then the config
    architecture, family, head = read_architecture(raw)
    new_head = head is None
    if new_head and task is None:
        raise ValueError(f"{directory} holds a {architecture}, which has no task head: pass task= (one of "
                         f"{', '.join(TASKS)}) to put a new one on its backbone")
    if not new_head and task is not None and TASKS[task] is not head:
        raise ValueError(f"{directory} holds a {architecture}, not a {task} model")
    head = TASKS[task] if new_head else head
    options = head_options(head, raw, num_labels, new_head, architecture, family)

    config = family.config.from_dict(raw)

    def convert(state_dict, config):
        """The checkpoint's tensors under the head model's names: the model file converts the backbone's keys
        (and the LM head's); the heads' keys are the Hub's as they are."""
        head_keys = {k: v for k, v in state_dict.items() if k.split(".")[0] in HEAD_MODULES}
        backbone_keys = {k: v for k, v in state_dict.items() if k not in head_keys}
        state_dict = family.module.convert_hub_state_dict(backbone_keys, config) | head_keys
        if new_head:
            with torch.device("meta"):
                shapes = head(config, **options)
            state_dict = with_new_head(shapes, state_dict, family, directory, architecture, task)
        return state_dict

    return checkpoint.load(directory, config, partial(head, config, **options, backend=attn), convert,
                           device=device, dtype=dtype, quantize=quantize, tp_plan=family.module.TP_PLAN)


def with_new_head(model, state_dict, family, directory, architecture, task):
    """A language model's tensors for a head model: the LM head dropped (only double heads keep it), new
    head weights, and a warning that names them."""
    lm_head = None if type(model) is GPT2DoubleHeads else family.lm_head
    unused = [k for k in state_dict if k.split(".")[0] == lm_head]
    state_dict = {k: v for k, v in state_dict.items() if k not in unused}
    new = new_head_weights(model, model.config.initializer_range)
    message = (f"{directory} holds a {architecture}: its backbone is loaded, the {task} head is new "
               f"({', '.join(new)}: train it before use)")
    warnings.warn(message + (f"; not used: {', '.join(unused)}" if unused else ""), stacklevel=5)
    return state_dict | new


def checkpoint_dir(name_or_path, revision=None):
    """A local directory, a Hub id, or a short name from any model file (gpt2, gpt-neo-125m, pythia-70m)."""
    if not Path(name_or_path).expanduser().is_dir():
        for family in FAMILIES.values():
            if name_or_path in family.module.HUB_MODELS:
                return checkpoint.checkpoint_dir(name_or_path, revision, family.module.HUB_MODELS)
    return checkpoint.checkpoint_dir(name_or_path, revision)  # directories and Hub ids: the same for all


def read_architecture(raw):
    """(architecture, family, head class or None) from config.json's architectures; an old file without
    them is a language model of its model_type."""
    architectures = raw.get("architectures") or []
    if not architectures and raw.get("model_type") in FAMILIES:
        return raw["model_type"], FAMILIES[raw["model_type"]], None
    if len(architectures) != 1 or architectures[0] not in ARCHITECTURES:
        raise ValueError(f"config.json's architectures {architectures} is not one of: "
                         f"{', '.join(ARCHITECTURES)}")
    model_type, head = ARCHITECTURES[architectures[0]]
    return architectures[0], FAMILIES[model_type], head


def head_options(head, raw, num_labels, new_head, architecture, family):
    """The head's settings, read from config.json as the reference reads them (they are not fields of the
    model files' configs)."""
    options = {}
    if head in (SequenceClassifier, TokenClassifier):
        if new_head and num_labels is None:
            raise ValueError(f"pass num_labels= for a new {head.__name__} head")
        id2label = {int(i): label for i, label in (raw.get("id2label") or {}).items()}
        in_file = len(id2label) or raw.get("num_labels", 2)  # transformers writes id2label; 2 by default
        if not new_head and num_labels not in (None, in_file):
            raise ValueError(f"the {architecture} checkpoint has {in_file} labels, not "
                             f"num_labels={num_labels}")
        if new_head:
            options.update(num_labels=num_labels)
        else:
            options.update(num_labels=in_file, id2label=id2label or None)
    elif num_labels is not None:
        raise ValueError(f"num_labels is for the classifiers, not {head.__name__}")
    if head is SequenceClassifier:
        options.update(pad_token_id=raw.get("pad_token_id"), problem_type=raw.get("problem_type"))
    if head is TokenClassifier:
        options.update(dropout=classifier_dropout(raw, family))
    if head is GPT2DoubleHeads:  # GPT2Config's defaults
        options.update(summary_type=raw.get("summary_type", "cls_index"),
                       summary_use_proj=raw.get("summary_use_proj", True),
                       summary_proj_to_labels=raw.get("summary_proj_to_labels", True),
                       summary_activation=raw.get("summary_activation"),
                       summary_first_dropout=raw.get("summary_first_dropout", 0.1),
                       summary_last_dropout=raw.get("summary_last_dropout", 0.0))
    return options


def classifier_dropout(raw, family):
    if family.module is gpt2:
        # GPT2Config has no such field: GPT2ForTokenClassification takes classifier_dropout if config.json
        # has one, else hidden_dropout, else 0.1.
        for key in ("classifier_dropout", "hidden_dropout"):
            if raw.get(key) is not None:
                return raw[key]
        return 0.1
    return raw.get("classifier_dropout", 0.1)  # GPTNeoConfig's and GPTNeoXConfig's field, 0.1 by default


def new_head_weights(model, std):
    """New tensors for the head's parameters, as transformers initialises a Linear: N(0, std), biases 0."""
    return {key: torch.zeros(p.shape) if key.endswith(".bias") else torch.randn(p.shape) * std
            for key, p in model.state_dict().items() if key.split(".")[0] == model.HEAD}


def save_pretrained(model, directory, *, max_shard_size="5GB"):
    """Write a head model as the Hub holds one (config.json with the head's settings, the weights in the
    model file's layout), so that transformers' from_pretrained (GPT2ForSequenceClassification ...) and
    ours both load it."""
    family = family_of(model.config)
    architecture = next(name for name, (model_type, head) in ARCHITECTURES.items()
                        if model_type == model.config.MODEL_TYPE and head is type(model))
    config = checkpoint.hub_config(model) | {"architectures": [architecture]} | head_config(model)
    checkpoint.save_pretrained(model, directory, family.module.hub_state_dict, max_shard_size=max_shard_size,
                               config=config)


def head_config(model):
    """The head's settings under config.json's names: what head_options reads back."""
    config = {}
    if isinstance(model, (SequenceClassifier, TokenClassifier)):
        config["id2label"] = {str(i): label for i, label in model.id2label.items()}
        config["label2id"] = {label: i for i, label in model.id2label.items()}
    if isinstance(model, SequenceClassifier):
        config.update(pad_token_id=model.pad_token_id, problem_type=model.problem_type)
    if isinstance(model, TokenClassifier):
        config["classifier_dropout"] = model.dropout.p
    if isinstance(model, GPT2DoubleHeads):
        config.update(model.summary_config)
    return config
