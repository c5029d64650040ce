"""Inputs longer than the model takes, refused before any work starts.

A model with 64 positions raised IndexError in the middle of training on an over-long edit, and a
1 MB edit line trained for minutes with no word; both are now one line naming the record, before
the first step. Generation is different: prompts are cut from the left to fit (edited_model).
"""

from __future__ import annotations

from pathlib import Path

from melo_cli import tasks
from melo_cli.errors import InputError

CONFIG_LIMITS = ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length")


def max_positions(backbone) -> int | None:
    """The most tokens one sequence may hold: the config's position table, else the tokenizer's own
    limit where it states a real one (T5's relative positions have no table); None where neither does."""
    config = backbone.model.config
    for name in CONFIG_LIMITS:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    stated = getattr(backbone.tokenizer, "model_max_length", None)
    return int(stated) if isinstance(stated, int) and 0 < stated < 1_000_000 else None


def _counts(backbone, texts: list[str]) -> list[int]:
    if not texts:
        return []
    return [len(ids) for ids in backbone.tokenizer(texts, add_special_tokens=True)["input_ids"]]


def check_edits(backbone, edits, source: str | Path | None) -> None:
    """Every edit's input (and each rephrase) with its target fits the model's positions."""
    limit = max_positions(backbone)
    if limit is None or not edits:
        return
    together = tasks.task_of(backbone).prompts_share_positions  # causal LMs: prompt and target in one sequence
    targets = _counts(backbone, [e.target for e in edits])
    texts = [(n, "input", e.input) for n, e in enumerate(edits)] + \
            [(n, "rephrases", r) for n, e in enumerate(edits) for r in e.rephrases]
    for (owner, field, _), count in zip(texts, _counts(backbone, [text for _, _, text in texts])):
        total = count + targets[owner] if together else max(count, targets[owner])
        if total > limit:
            what = "with its target " if together else ""
            raise InputError(f"{total:,} tokens {what}exceed the model's {limit:,} positions; shorten it",
                             field=field, **edits[owner].where(source))


def check_holdout(backbone, holdout) -> None:
    """Every holdout input (with its target, if any) fits the model's positions."""
    limit = max_positions(backbone)
    if limit is None or not holdout:
        return
    together = tasks.task_of(backbone).prompts_share_positions
    inputs = _counts(backbone, [h.input for h in holdout])
    targets = _counts(backbone, [h.target or "" for h in holdout])
    for number, (h, count, target) in enumerate(zip(holdout, inputs, targets), 1):
        total = count + (target if together and h.target else 0)
        if total > limit:
            where = h.where or {"file": "holdout", "record": number}
            raise InputError(f"{total:,} tokens exceed the model's {limit:,} positions; shorten it", field="input",
                             **where)
