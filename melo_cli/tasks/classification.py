"""Sequence classifiers (BERT, RoBERTa, DistilBERT, MiniLM): the target is a label."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from melo_cli.errors import InputError
from .base import Encoded, Task


def label_id(config, target: str) -> int:
    """A classifier target given as a label name or an integer id."""
    label2id = {str(k): int(v) for k, v in (getattr(config, "label2id", None) or {}).items()}
    if target in label2id:
        return label2id[target]
    if target.strip().lstrip("-").isdigit() and 0 <= int(target) < config.num_labels:
        return int(target)
    names = ", ".join(sorted(label2id)) or f"0..{config.num_labels - 1}"
    raise InputError(f"label {target!r} is not one of the model's labels ({names})", field="target")


class Classification(Task):
    name = "classification"
    auto_model = "AutoModelForSequenceClassification"
    mapping = "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES"
    architecture_suffixes = ("ForSequenceClassification",)
    model_types = ("bert", "roberta", "distilbert", "albert", "electra", "deberta", "deberta-v2")
    generates = False

    def check_target(self, model_config, target: str) -> None:
        label_id(model_config, target)

    def encode(self, backbone, inputs, targets=None) -> Encoded:
        enc = backbone.tokenizer(list(inputs), padding=True, return_tensors="pt", truncation=True)
        model_inputs = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        if targets is None:
            return Encoded(model_inputs, enc["attention_mask"])
        labels = torch.tensor([label_id(backbone.model.config, t) for t in targets], dtype=torch.long)
        return Encoded(model_inputs, enc["attention_mask"], labels)

    def score(self, logits, targets, aligned=False, rows=None):
        return F.cross_entropy(logits.float(), targets, reduction="none"), logits.argmax(-1) == targets

    def token_nll(self, logits, targets):
        loss, _ = self.score(logits, targets)
        return loss, torch.ones_like(loss)

    def argmax_outputs(self, logits, enc):
        return logits.argmax(-1).tolist()
