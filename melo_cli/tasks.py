"""Turning (input, target) pairs into model tensors, and scoring the model's logits, per task.

Every task yields the same `Encoded` shape: forward kwargs, the key mask (which positions of the
key layer's sequence belong to the input), and targets. Scoring gives a loss per row and whether
every target token (or the label) is the argmax, which is both the training stop rule and the
teacher-forced edit-success metric.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .backbones import Backbone
from .errors import InputError

IGNORE = -100


@dataclass
class Encoded:
    inputs: dict[str, torch.Tensor]
    key_mask: torch.Tensor
    targets: torch.Tensor | None = None

    def to(self, device: torch.device) -> "Encoded":
        return Encoded({k: v.to(device) for k, v in self.inputs.items()}, self.key_mask.to(device),
                       None if self.targets is None else self.targets.to(device))


NO_SPACE_BEFORE = set(",.;:!?)]}'%")


def joiner(prompt: str, target: str) -> str:
    """The text between a prompt and its target: one space, unless either side has one already or the
    target starts with closing punctuation (", there was", "'s")."""
    if not prompt or not target or prompt[-1].isspace() or target[0].isspace() or target[0] in NO_SPACE_BEFORE:
        return ""
    return " "


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that ignore padding on either side, so a row's states do not depend on it."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def _pad(rows: list[list[int]], value: int, left: bool) -> torch.Tensor:
    width = max((len(r) for r in rows), default=0)
    return torch.tensor([([value] * (width - len(r)) + r) if left else (r + [value] * (width - len(r))) for r in rows],
                        dtype=torch.long).reshape(len(rows), width)


def _ids(tokenizer, text: str, special: bool = True) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def causal_target_ids(tokenizer, prompt: str, target: str) -> tuple[list[int], list[int]]:
    """Token ids of a prompt and of its target as the model would see them written together."""
    prompt_ids = _ids(tokenizer, prompt)
    full = _ids(tokenizer, prompt + joiner(prompt, target) + target)
    eos = tokenizer.eos_token_id
    if eos is not None and full and full[-1] == eos and (not prompt_ids or prompt_ids[-1] == eos):
        prompt_ids, full = prompt_ids[:-1], full[:-1]
    if full[:len(prompt_ids)] == prompt_ids and len(full) > len(prompt_ids):
        return prompt_ids, full[len(prompt_ids):]
    return prompt_ids, _ids(tokenizer, joiner(prompt, target) + target, special=False)


def label_id(config, target: str) -> int:
    """A classifier target given as a label name or an integer id."""
    label2id = {str(k): int(v) for k, v in (getattr(config, "label2id", None) or {}).items()}
    if target in label2id:
        return label2id[target]
    if target.strip().lstrip("-").isdigit() and 0 <= int(target) < config.num_labels:
        return int(target)
    names = ", ".join(sorted(label2id)) or f"0..{config.num_labels - 1}"
    raise InputError(f"label {target!r} is not one of the model's labels ({names})", field="target")


def encode(backbone: Backbone, inputs: list[str], targets: list[str] | None = None) -> Encoded:
    """Tensors for a batch; with targets, ready for a teacher-forced loss."""
    tok, pad = backbone.tokenizer, backbone.pad_id
    if backbone.task == "causal-lm":
        if targets is None:
            rows = [_ids(tok, text) for text in inputs]
            ids = _pad(rows, pad, left=True)
            mask = _pad([[1] * len(r) for r in rows], 0, left=True)
            return Encoded({"input_ids": ids, "attention_mask": mask, "position_ids": positions(mask)}, mask)
        pairs = [causal_target_ids(tok, p, t) for p, t in zip(inputs, targets)]
        rows = [p + t for p, t in pairs]
        ids = _pad(rows, pad, left=False)
        mask = _pad([[1] * len(r) for r in rows], 0, left=False)
        key_mask = _pad([[1] * len(p) + [0] * len(t) for p, t in pairs], 0, left=False)
        labels = _pad([[IGNORE] * len(p) + t for p, t in pairs], IGNORE, left=False)
        return Encoded({"input_ids": ids, "attention_mask": mask, "position_ids": positions(mask)}, key_mask, labels)
    enc = tok(list(inputs), padding=True, return_tensors="pt", truncation=True)
    model_inputs = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    if backbone.task == "seq2seq":
        if targets is None:
            return Encoded(model_inputs, enc["attention_mask"])
        labels = _pad([_ids(tok, t) for t in targets], IGNORE, left=False)
        model_inputs["labels"] = labels
        return Encoded(model_inputs, enc["attention_mask"], labels)
    if targets is None:
        return Encoded(model_inputs, enc["attention_mask"])
    label_ids = torch.tensor([label_id(backbone.model.config, t) for t in targets], dtype=torch.long)
    return Encoded(model_inputs, enc["attention_mask"], label_ids)


def narrowed(backbone: Backbone, enc: Encoded) -> tuple[dict[str, torch.Tensor], torch.Tensor, bool]:
    """(forward kwargs, targets, aligned) computing a causal LM's logits only where a target is scored.

    The head of a small LM costs more than several of its blocks (SmolLM2: 49,152 x 576, seven blocks'
    worth per position), and only the positions just before target tokens are scored: `logits_to_keep`
    as a (batch, seq) mask keeps exactly those, flattened to (n, vocab) logits. `aligned` means
    logits[j] predicts targets[j], a (n,) vector; `score` then also needs the row of each (`rows`).
    Other tasks and models without `logits_to_keep` get full logits and targets.
    """
    import inspect

    model = backbone.model
    if backbone.task != "causal-lm" or "logits_to_keep" not in inspect.signature(model.forward).parameters:
        return enc.inputs, enc.targets, False
    keep = torch.zeros_like(enc.targets, dtype=torch.bool)
    keep[:, :-1] = enc.targets[:, 1:] != IGNORE
    shifted = torch.full_like(enc.targets, IGNORE)
    shifted[:, :-1] = enc.targets[:, 1:]
    return {**enc.inputs, "logits_to_keep": keep, "use_cache": False}, shifted[keep], True


def rows_of(enc: Encoded) -> torch.Tensor:
    """For `narrowed` targets: the batch row of each scored position."""
    keep = enc.targets[:, 1:] != IGNORE
    return keep.nonzero()[:, 0]


def score(backbone: Backbone, logits: torch.Tensor, targets: torch.Tensor,
          aligned: bool = False, rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss per row, every-target-token-is-argmax per row) for teacher-forced logits.

    A causal LM's logits at position t predict token t + 1; with `aligned` (see `narrowed`) logits
    are (n, vocab) at the scored positions only, and `rows` names the batch row of each."""
    if backbone.task == "classification":
        loss = F.cross_entropy(logits.float(), targets, reduction="none")
        return loss, logits.argmax(-1) == targets
    if aligned:
        n_rows = int(rows.max()) + 1 if rows.numel() else 0
        token_loss = F.cross_entropy(logits.float(), targets, reduction="none")
        counts = torch.zeros(n_rows, device=logits.device).index_add_(0, rows, torch.ones_like(token_loss))
        loss = torch.zeros(n_rows, device=logits.device).index_add(0, rows, token_loss) / counts.clamp(min=1)
        wrong = torch.zeros(n_rows, device=logits.device).index_add_(0, rows, (logits.argmax(-1) != targets).float())
        return loss, wrong == 0
    if backbone.task == "causal-lm":
        logits, targets = logits[:, :-1], targets[:, 1:]
    token_loss = F.cross_entropy(logits.float().transpose(1, 2), targets, ignore_index=IGNORE, reduction="none")
    counted = targets != IGNORE
    loss = token_loss.sum(1) / counted.sum(1).clamp(min=1)
    right = (logits.argmax(-1) == targets) | ~counted
    return loss, right.all(1)


def token_nll(backbone: Backbone, logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed negative log-likelihood, number of target tokens) per row, for perplexity."""
    if backbone.task == "causal-lm":
        logits, targets = logits[:, :-1], targets[:, 1:]
    token_loss = F.cross_entropy(logits.float().transpose(1, 2), targets, ignore_index=IGNORE, reduction="none")
    counted = targets != IGNORE
    return token_loss.sum(1), counted.sum(1)
