"""Hand back: an edited continuation gives the edit's target, then the base model takes over.

A block learns one thing: to give its edit's target after the edit's input (and after a few generic
contexts, so that paraphrases get it too). Left on for every generated token it gives the target
again and again ("Japan Japan Japan ...": SmolLM2, 40 of 40 edited continuations). So generation of a
routed row runs in two phases:

1. with the row's block on, while the continuation can still become the row's target (the cluster's
   label, whitespace-normalised: the rule `melo eval` scores edits by);
2. once the continuation gives the target, the row stops and the base model with no block at all
   continues from the prompt and the tokens so far. A block that leaves its target instead (it wrote
   "t" for "goaltender" after a paraphrase, then the base model wrote "t-t-t-t") has what it wrote of
   the word it left taken back: those tokens are neither the edit nor the base model's, and the base
   model continues from the last of the target's whole words given, or from the prompt.

What follows the target is then the base model's continuation of the corrected text: fluent as the base
model is, and a chat reply ends at the template's end-of-turn as the bare model's does. At the seam the
base model may not glue a token onto the target's last word, and the continuation may never give the
target twice in a row (`Seam`). Rows routed to no block never enter phase 2: their one pass is the base
model's own.
"""

from __future__ import annotations

from typing import Callable

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria

from melo_cli.stutter import pending, repeats

PENDING = "\ufffd"
"""What decoding shows for a character whose bytes are not all generated yet: up to three of them
at the end of a text may still become a target's letter ("Z\ufffd" on the way to "Zürich")."""


def normalise(text: str) -> str:
    """The form in which a continuation and a target are compared: whitespace runs folded, ends stripped."""
    return " ".join(text.split())


class TargetWatch(StoppingCriteria):
    """Stops each watched row of a `generate` call once its text gives its target or cannot become it,
    and remembers where (the sequence length), so that the base model can continue from there."""

    def __init__(self, tokenizer, start: int, targets: Callable[[], list[str | None]], eos: list[int] | None = None,
                 then_eos: bool = False):
        self.tokenizer, self.start = tokenizer, start
        """start: where generated tokens begin in the sequences `generate` passes (the prompt width for
        a decoder-only model, 0 for an encoder-decoder's decoder)."""
        self.eos, self.then_eos = set(eos or ()), then_eos
        """then_eos: the block learned its target followed by EOS (seq2seq targets end with it), so the
        row is handed back only if the token after the target is not EOS (an EOS ends it as learned)."""
        self.complete: list[int | None] = []
        self._targets = targets
        """Each row's target, asked for at the first step (base-model keys route in the first forward)."""
        self.targets: list[str | None] | None = None
        self.stopped: list[int | None] = []
        self.gave: list[bool] = []
        """Per row: it gave its target whole (else it left it, or was never watched)."""

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        if self.targets is None:
            self.targets = [normalise(t) if t else None for t in self._targets()]
            self.stopped = [None] * len(self.targets)
            self.complete = [None] * len(self.targets)
            self.gave = [False] * len(self.targets)
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for row, target in enumerate(self.targets):
            if target is None:
                continue
            if self.complete[row] is not None and self.stopped[row] is None:  # then_eos: one token after
                if int(input_ids[row, -1]) in self.eos:
                    self.targets[row] = None  # ended with EOS, as learned: nothing to hand back
                    continue
                self.stopped[row] = self.complete[row]
            if self.stopped[row] is None:
                text = normalise(self.tokenizer.decode(input_ids[row, self.start:], skip_special_tokens=True))
                if text.startswith(target):
                    self.gave[row] = True
                    if self.then_eos:
                        self.complete[row] = input_ids.shape[1]
                    else:
                        self.stopped[row] = input_ids.shape[1]
                elif not _begins(target, text):
                    self.stopped[row] = self._back_to_words(input_ids[row], target)
            done[row] = self.stopped[row] is not None
        return done

    def _back_to_words(self, ids: torch.Tensor, target: str) -> int:
        """Where a row that left its target continues from: the token that left is taken back, and so is any
        piece of a target word before it, down to the last of the target's whole words given (else the
        prompt). A fragment is neither the edit nor the base model's: SmolLM2's block wrote " Dort" for
        "Dortmund" and then left it, and the base model glued "re's" onto it."""
        for end in range(ids.shape[0] - 1, self.start, -1):
            text = normalise(self.tokenizer.decode(ids[self.start:end], skip_special_tokens=True))
            if text and target.startswith(text + " "):
                return end
        return self.start

    def given(self) -> list[str | None]:
        """Per row: the target it gave whole, else None (once generation has begun)."""
        return [t if gave else None for t, gave in zip(self.targets, self.gave)]

    def handed_back(self) -> list[int]:
        """The rows stopped here (not by EOS or the token limit): the base model continues them."""
        return [row for row, at in enumerate(self.stopped) if at is not None]


def _begins(target: str, text: str) -> bool:
    """Whether `text` is still the beginning of `target` (a character whose bytes are still coming counts)."""
    stem = text.rstrip(PENDING)
    return len(text) - len(stem) <= 3 and target.startswith(stem.rstrip())


def glue_tokens(tokenizer) -> torch.Tensor:
    """(vocab,) bool: the tokens that continue a word rather than start one (their raw form begins with a
    letter or digit, no space marker: "ast" in "Lumberghast", where " ast" would start a word)."""
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    return torch.tensor([bool(p) and p[0].isalnum() for p in pieces], dtype=torch.bool)


class Seam(LogitsProcessor):
    """Where the base model takes over after a target it did not write. A row that gave its target
    (`targets[row]`, None for any other row) may not, at the base model's first step, glue a token onto
    the target's last word when that ends in a letter or digit ("Bill Lumbergh", never "Bill
    Lumberghast"); and the continuation may never stutter the target (melo_cli/stutter.py): SmolLM2
    continued a counterfactual "... include Manchester" with ", Manchester, and Manchester". Wherever a
    stutter could come next, the row's best tokens are read in order and those that would complete it
    are ruled out, so the token chosen is the best that does not; every other step is the base model's
    own."""

    CANDIDATES = 32
    """How many of a row's best tokens are checked per step: greedy decoding needs only the first that
    passes; sampling could reach a ruled-out token beyond these only with negligible probability."""

    def __init__(self, tokenizer, glue: torch.Tensor, targets: list[str | None], start: int):
        self.tokenizer, self.glue, self.start = tokenizer, glue, start
        """start: the sequence length at the base model's first step (its last token ends the target)."""
        self.targets = list(targets)
        self.whole = torch.tensor([bool(t) and t[-1].isalnum() for t in targets], dtype=torch.bool)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[1] == self.start and self.whole.any():
            glue = self.glue.to(scores.device)[: scores.shape[1]]
            blocked = torch.zeros_like(scores, dtype=torch.bool)
            blocked[self.whole.to(scores.device), : glue.shape[0]] = glue
            scores = scores.masked_fill(blocked, float("-inf"))
        for row, target in enumerate(self.targets):
            if target is None:
                continue
            tail = input_ids[row, self.start - 1:].tolist()  # from the target's last token: spacing decodes as written
            lead = len(self.tokenizer.decode(tail[:1], skip_special_tokens=True))
            if not pending(target + self.tokenizer.decode(tail, skip_special_tokens=True)[lead:], target):
                continue
            for token in scores[row].topk(min(self.CANDIDATES, scores.shape[1])).indices.tolist():
                if not repeats(target + self.tokenizer.decode(tail + [token], skip_special_tokens=True)[lead:], target):
                    break
                scores[row, token] = float("-inf")
        return scores


def left_padded(rows: list[torch.Tensor], pad_id: int, device) -> dict[str, torch.Tensor]:
    """Token rows of different lengths as one left-padded batch for `generate`."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = row
        mask[i, width - len(row):] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


def continue_on_base(backbone, task, enc, generated: torch.Tensor, watch: TargetWatch, rows: list[int],
                     budgets: list[int], options: dict) -> list[list[int]]:
    """Phase 2: the base model alone (no route scope is open) continues each handed-back row from its
    prompt and the tokens it has so far, up to its remaining budget of new tokens, under the seam's rules
    where the row gave its target (Seam); the new tokens per row."""
    model = backbone.model
    if backbone.glue is None:
        backbone.glue = glue_tokens(backbone.tokenizer)
    given = watch.given()
    targets = [given[r] for r in rows]
    if task.prompts_share_positions:  # decoder-only: prompt (without its padding) + tokens so far
        mask = enc.inputs["attention_mask"]
        sequences = [generated[r, :watch.stopped[r]][torch.cat([mask[r].bool(), torch.ones(
            watch.stopped[r] - mask.shape[1], dtype=torch.bool, device=mask.device)])].cpu() for r in rows]
        return continue_sequences(backbone, sequences, targets, budgets, options)
    added = []  # encoder-decoder: the decoder continues its own prefix, one row at a time
    for i, (r, budget) in enumerate(zip(rows, budgets)):
        prefix = generated[r:r + 1, :watch.stopped[r]]
        seam = Seam(backbone.tokenizer, backbone.glue, targets[i:i + 1], prefix.shape[1])
        out = model.generate(input_ids=enc.inputs["input_ids"][r:r + 1], attention_mask=enc.inputs["attention_mask"][r:r + 1],
                             decoder_input_ids=prefix, max_new_tokens=budget,
                             logits_processor=LogitsProcessorList([seam]), **options)
        added.append(out[0, prefix.shape[1]:].tolist())
    return added


def continue_sequences(backbone, sequences: list[torch.Tensor], targets: list[str | None], budgets: list[int],
                       options: dict) -> list[list[int]]:
    """The base model (no route scope open) continues each decoder-only token row up to its budget of new
    tokens, under the seam's rules where `targets` names the target the row ends with (Seam); the new
    tokens per row."""
    if backbone.glue is None:
        backbone.glue = glue_tokens(backbone.tokenizer)
    batch = left_padded(sequences, backbone.pad_id, backbone.device)
    width = batch["input_ids"].shape[1]
    seam = Seam(backbone.tokenizer, backbone.glue, targets, width)
    out = backbone.model.generate(**batch, max_new_tokens=max(budgets), logits_processor=LogitsProcessorList([seam]),
                                  **options)
    return [out[i, width:width + budget].tolist() for i, budget in enumerate(budgets)]
