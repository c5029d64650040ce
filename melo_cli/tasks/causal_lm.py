"""Causal language models (GPT-2, Llama, Qwen, SmolLM2, Gemma): the target continues the prompt."""

from __future__ import annotations

import inspect
import sys

import torch
import torch.nn.functional as F

from .base import IGNORE, Encoded, Task, ids, pad, positions, sequence_nll

NO_SPACE_BEFORE = set(",.;:!?)]}'%")


def joiner(prompt: str, target: str) -> str:
    """The text between a prompt and its target: one space, unless either side has one already or the
    target starts with closing punctuation (", there was", "'s")."""
    if not prompt or not target or prompt[-1].isspace() or target[0].isspace() or target[0] in NO_SPACE_BEFORE:
        return ""
    return " "


def causal_target_ids(tokenizer, prompt: str, target: str) -> tuple[list[int], list[int]]:
    """Token ids of a prompt and of its target as the model would see them written together."""
    prompt_ids = ids(tokenizer, prompt)
    full = ids(tokenizer, prompt + joiner(prompt, target) + target)
    eos = tokenizer.eos_token_id
    if eos is not None and full and full[-1] == eos and (not prompt_ids or prompt_ids[-1] == eos):
        prompt_ids, full = prompt_ids[:-1], full[:-1]
    if full[:len(prompt_ids)] == prompt_ids and len(full) > len(prompt_ids):
        return prompt_ids, full[len(prompt_ids):]
    return prompt_ids, ids(tokenizer, joiner(prompt, target) + target, special=False)



def keeps_logits_by_mask(model) -> bool:
    """Whether `model.forward` takes `logits_to_keep` as a (batch, seq) boolean mask. Recent
    transformers releases slice through their `slice_logits_to_keep` helper, which does (5.24 does);
    older ones (5.17, seen on a GPU machine's image) index hidden states with the tensor and fail, so
    the mask goes only to a model whose own module has that helper. Otherwise melo computes all
    logits: the same scores, more work."""
    if "logits_to_keep" not in inspect.signature(model.forward).parameters:
        return False
    module = sys.modules.get(type(model).__module__)
    return module is not None and hasattr(module, "slice_logits_to_keep")

class CausalLM(Task):
    name = "causal-lm"
    auto_model = "AutoModelForCausalLM"
    mapping = "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES"
    architecture_suffixes = ("ForCausalLM", "LMHeadModel")
    model_types = ("gpt2", "llama", "qwen2", "mistral", "gpt_neox", "opt")
    perplexity = True
    greedy_is_teacher_forced = True
    prompts_share_positions = True

    def encode(self, backbone, inputs, targets=None) -> Encoded:
        """Prompts alone are left-padded (for generation); prompt + target rows are right-padded, with
        labels only on the target tokens."""
        tok, pad_id = backbone.tokenizer, backbone.pad_id
        if targets is None:
            rows = [ids(tok, text) for text in inputs]
            mask = pad([[1] * len(r) for r in rows], 0, left=True)
            return Encoded({"input_ids": pad(rows, pad_id, left=True), "attention_mask": mask,
                            "position_ids": positions(mask)}, mask)
        pairs = [causal_target_ids(tok, p, t) for p, t in zip(inputs, targets)]
        rows = [p + t for p, t in pairs]
        mask = pad([[1] * len(r) for r in rows], 0, left=False)
        key_mask = pad([[1] * len(p) + [0] * len(t) for p, t in pairs], 0, left=False)
        labels = pad([[IGNORE] * len(p) + t for p, t in pairs], IGNORE, left=False)
        return Encoded({"input_ids": pad(rows, pad_id, left=False), "attention_mask": mask,
                        "position_ids": positions(mask)}, key_mask, labels)

    def narrowed(self, backbone, enc):
        """Logits only where a target is scored: the head of a small LM costs more than several of its
        blocks (SmolLM2: 49,152 x 576, seven blocks' worth per position). `logits_to_keep` as a (batch,
        seq) mask keeps exactly the positions before target tokens, flattened to (n, vocab) logits;
        `aligned` means logits[j] predicts targets[j] and `score` then needs the row of each."""
        if not keeps_logits_by_mask(backbone.model):
            return enc.inputs, enc.targets, False
        keep = torch.zeros_like(enc.targets, dtype=torch.bool)
        keep[:, :-1] = enc.targets[:, 1:] != IGNORE
        shifted = torch.full_like(enc.targets, IGNORE)
        shifted[:, :-1] = enc.targets[:, 1:]
        return {**enc.inputs, "logits_to_keep": keep, "use_cache": False}, shifted[keep], True

    def score(self, logits, targets, aligned=False, rows=None):
        if not aligned:
            return super().score(logits[:, :-1], targets[:, 1:])  # logits at t predict token t + 1
        n_rows = int(rows.max()) + 1 if rows.numel() else 0
        token_loss = F.cross_entropy(logits.float(), targets, reduction="none")
        counts = torch.zeros(n_rows, device=logits.device).index_add_(0, rows, torch.ones_like(token_loss))
        loss = torch.zeros(n_rows, device=logits.device).index_add(0, rows, token_loss) / counts.clamp(min=1)
        wrong = torch.zeros(n_rows, device=logits.device).index_add_(0, rows, (logits.argmax(-1) != targets).float())
        return loss, wrong == 0

    def token_nll(self, logits, targets):
        total, counted, _ = sequence_nll(logits[:, :-1], targets[:, 1:])
        return total, counted

    def argmax_outputs(self, logits, enc):
        """Every real position's argmax (padding left out, so the padding of a batch does not matter)."""
        predictions = torch.where(enc.inputs["attention_mask"].bool(), logits.argmax(-1), -1)
        return [[t for t in row if t != -1] for row in predictions.tolist()]

    def new_tokens(self, generated, enc):
        return generated[:, enc.inputs["input_ids"].shape[1]:]
