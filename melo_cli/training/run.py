"""A run of edits over batches: each batch's keys go to the router, each edit cluster gets a new block,
and only those blocks train until every target is learned (loop.py).

Keys are computed once for all new edits before training (they come from layers below the LoRA layers,
so training cannot change them). A new edit whose input is a live edit's input, or whose key is that
edit's key, with another target, supersedes it: the old edit leaves the router, its block is untouched.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import torch

from melo_cli.edits import Edit, normalise_input
from melo_cli.model import casing
from melo_cli.model.edited_model import EditedModel
from melo_cli.model.generation import apply_chat
from melo_cli.router import entities
from melo_cli.router.policies import POLICIES
from melo_cli.router.router import Router
from melo_cli.router.vocabulary import auto_radius
from melo_cli.training.capture import keys_and_prefixes
from melo_cli.training.loop import train_blocks
from melo_cli.training.rows import compact_blocks, rows_of_batch, training_rows

log = logging.getLogger("melo")


@dataclass
class BatchReport:
    batch: int
    block: int
    edits: int
    replayed: int
    steps: int
    loss: float
    converged: bool
    """Every target of the batch is the model's argmax (the edits are learned)."""
    rules: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    unlearned: list[int] = field(default_factory=list)
    """Edit numbers of the batch whose target is not the argmax after the last step."""
    blocks: int = 1
    """How many new blocks the batch trained (one per edit cluster, or one)."""
    edit_blocks: dict[int, int] = field(default_factory=dict)
    """Edit number -> the block it was trained into."""
    cpu_seconds: float = 0.0
    """This process's CPU time for the batch (all its threads): what the batch cost, little moved by other
    load on the machine, unlike `seconds`."""


@dataclass
class RunResult:
    reports: list[BatchReport]
    unreachable: list[int]
    """Edit numbers whose own input, after all batches, does not route to a cluster of its target
    (a later edit of another target split it off)."""
    superseded: dict[int, int] = field(default_factory=dict)
    """Earlier edit number -> the number of the edit of this run that corrected it."""
    entities: dict[int, str | None] = field(default_factory=dict)
    """Edit number -> the entity it routes on (melo_cli/router/entities.py), None for none."""

    @property
    def unlearned(self) -> list[int]:
        return [n for r in self.reports for n in r.unlearned]


def ensure_router(edited: EditedModel, keys: np.ndarray) -> Router:
    """The model's router, created on the first edit with a radius resolved from these keys if asked."""
    if edited.router is None:
        config = edited.config
        if config.init_radius <= 0:  # auto: a fraction of the median gap between edits, per policy
            radius = auto_radius(keys, config.metric, POLICIES[config.radius_policy].auto_fraction)
            if config.key_source == "encoder" and config.metric == "cosine":  # one edit has no gap: the cap
                radius = min(radius, ENCODER_MAX_RADIUS) if len(np.unique(keys, axis=0)) > 1 else ENCODER_MAX_RADIUS
            config = edited.config = replace(config, init_radius=radius)  # a new config, never a mutated one
        edited.router = Router(keys.shape[1], config.metric, config.init_radius, margin=config.margin,
                               policy=config.radius_policy,
                               entity_match=config.entity_match)
    return edited.router


ENCODER_MAX_RADIUS = 0.6
"""The largest auto radius for sentence-encoder keys (cosine distance, a fixed scale): a few unrelated
edits have a wide median gap, and a radius that wide would route unrelated inputs. MiniLM on
CounterFact: 95% of paraphrases lie within 0.45 of their edit, 99% within 0.59; the auto radius
itself is 0.60 at 100 edits and 0.51 at 1,000."""



def run(edited: EditedModel, history: list[Edit], new: list[Edit], groups: list[list[int]],
        on_batch: Callable[[BatchReport], None] | None = None, negatives: list[str] = (),
        split: bool = True) -> RunResult:
    """Apply `new` edits (positions grouped into `groups`) after the `history` the bundle already holds.

    Edit number n refers to (history + new)[n], as stored in the bundle's edits.jsonl. Negatives
    (inputs that must keep their output) enter the router first, so this run's clusters respect them.
    A new edit whose input is a live edit's input (whitespace aside), or whose key is that edit's
    key, with another target, supersedes it: the old edit leaves the router, its block is untouched.
    """
    all_edits = history + new
    offset = len(history)
    keys, captured = keys_and_prefixes(edited, new, groups, split)
    router = ensure_router(edited, keys)
    if negatives:
        for key in edited.keys(list(negatives)):
            router.add_negative(key)
    names = edit_entities(edited, new)
    live_by_input = {normalise_input(e.input): n for n, e in enumerate(history) if e.live}
    superseded: dict[int, int] = {}
    generator = torch.Generator().manual_seed(edited.config.seed + offset)
    per_edit = edited.config.block_per == "edit"
    chat = chat_turn(edited) if per_edit else None
    reports = []
    for batch_number, group in enumerate(groups):
        started, cpu_started = time.perf_counter(), time.process_time()
        first = edited.n_blocks
        rules = {"new": 0, "join": 0, "split": 0}
        touched: list[int] = []
        for j, position in enumerate(group):
            number = offset + position
            old = live_by_input.get(normalise_input(new[position].input))
            if old is not None and all_edits[old].target != new[position].target and router.retire_edit(old):
                superseded[old] = number
            result = router.add(keys[position], new[position].target, first + j if per_edit else first, number,
                                names[position])
            superseded.update({gone: number for gone in result.superseded})
            rules[result.rule] += 1
            touched.append(result.cluster)
        count = compact_blocks(router, touched, first)
        rows = training_rows(router, touched, first, all_edits, superseded, edited.config.contexts if per_edit else 0,
                             chat)
        ready = rows_of_batch(captured.pop(batch_number, None), [offset + p for p in group], rows)
        steps, loss, hits = (train_blocks(edited, first, count, [r.input for r in rows], [r.target for r in rows],
                                          [r.block for r in rows], generator, split, ready) if rows else (0, 0.0, []))
        edit_rows = [(r.edit, hit) for r, hit in zip(rows, hits) if r.edit is not None]
        batch_numbers = {offset + p for p in group}
        report = BatchReport(batch_number, first, len(group), sum(n not in batch_numbers for n, _ in edit_rows),
                             steps, round(loss, 6), all(hit for _, hit in edit_rows), rules,
                             round(time.perf_counter() - started, 3), [n for n, hit in edit_rows if not hit],
                             count, {r.edit: r.block for r in rows if r.edit is not None},
                             round(time.process_time() - cpu_started, 3))
        reports.append(report)
        if on_batch is not None:
            on_batch(report)
    routes = router.route(keys, [e.input for e in new]) if len(new) else []
    lost = [offset + i for i, (e, r) in enumerate(zip(new, routes))
            if offset + i not in superseded and (not r.routed or router.labels[r.cluster] != e.target)]
    return RunResult(reports, lost, superseded, {offset + p: name for p, name in enumerate(names)})



def chat_turn(edited: EditedModel) -> Callable[[str], str] | None:
    """An input -> the user turn of it in the base's chat template, where the reply starts (`chat_rows`,
    causal LMs with a template; None otherwise)."""
    tokenizer = edited.backbone.tokenizer
    if not edited.config.chat_rows or edited.config.task != "causal-lm" or not getattr(tokenizer, "chat_template", None):
        return None
    return lambda text: apply_chat(tokenizer, [text], None)[0]


def edit_entities(edited: EditedModel, new: list[Edit]) -> list[tuple[str, tuple[str, ...]] | None]:
    """The entity each new edit routes on with its short forms (entities.chosen), the base model telling
    names from common words (casing.py); a subject its input continues is said once."""
    mode = edited.config.entities
    searched = [e.input for e in new if mode == "auto" or e.subject]
    words = casing.proper_test(edited, searched) if searched and mode != "subject-whole" else None
    if words is not None:  # the last words a short form would stand on, in one batch
        found = [e.subject or entities.find(e.input, words.common) for e in new]
        words.prime(w for name in found if name for w in entities.WORD.findall(name)[-1:])
    names = []
    for edit in new:
        name, short, note = entities.chosen(edit.input, edit.subject, mode, words)
        if note:
            log.warning("%s: %s", edit.id, note)
        names.append(None if name is None else (name, short))
    nameless = [e.id for e, name in zip(new, names) if name is None]
    if nameless and mode in ("auto", "subject"):
        log.warning("%d edit(s) name no entity (%s%s): they route on their sentence key alone, so the same "
                    "question about something else may get them; give a `subject`", len(nameless),
                    ", ".join(map(str, nameless[:3])), " ..." if len(nameless) > 3 else "")
    return names
