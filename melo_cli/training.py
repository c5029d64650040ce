"""The edit loop: each batch of edits gets a new LoRA block, its keys go to the router, and only
that block is trained until every target token is the argmax.

Keys are computed once for all new edits before training (they come from layers below the LoRA
layers, so training cannot change them); base-model keys come from the same no-grad pass that
captures each batch's frozen prefix for training (one pass where there were two). When a key joins a cluster of an earlier block, that
cluster moves to the new block and its earlier members are trained into the new block too, so no
edit is left routed to a block that never learned it; earlier blocks themselves never change.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import casing, entities, length_groups, prefix, tasks
from .config import CONTEXTS
from .edited_model import EditedModel
from .edits import Edit, normalise_input
from .errors import InputError, Unlearned
from .router import POLICIES, Router, auto_radius
from .route_scope import NO_BLOCK
from .triage import triage

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


class StepBudget:
    """When a batch must stop training: a fixed number of steps, or "auto" (see MeloConfig.max_steps)."""

    FIRST, MORE, CAP, FALL = 100, 100, 1000, 0.9

    def __init__(self, max_steps: int | str):
        self.auto = max_steps == "auto"
        self.limit = self.FIRST if self.auto else int(max_steps)
        self.mark = float("inf")  # the loss when the current allowance began

    def spent(self, steps: int, loss: float) -> bool:
        if steps < self.limit:
            if steps == 0:
                self.mark = loss
            return False
        if self.auto and self.limit < self.CAP and loss < self.FALL * self.mark:
            self.limit, self.mark = self.limit + self.MORE, loss
            return False
        return True


ENCODER_MAX_RADIUS = 0.6
"""The largest auto radius for sentence-encoder keys (cosine distance, a fixed scale): a few unrelated
edits have a wide median gap, and a radius that wide would route unrelated inputs. MiniLM on
CounterFact: 95% of paraphrases lie within 0.45 of their edit, 99% within 0.59; the auto radius
itself is 0.60 at 100 edits and 0.51 at 1,000."""



def train_block(edited: EditedModel, block: int, inputs: list[str], targets: list[str],
                generator: torch.Generator, split: bool = True) -> tuple[int, float, list[bool]]:
    """Train a fresh `block` on these pairs (see train_blocks)."""
    return train_blocks(edited, block, 1, inputs, targets, [block] * len(inputs), generator, split)


def train_blocks(edited: EditedModel, first: int, count: int, inputs: list[str], targets: list[str],
                 row_blocks: list[int], generator: torch.Generator, split: bool = True,
                 ready: tuple[list[int], "Prepared"] | None = None) -> tuple[int, float, list[bool]]:
    """Train fresh blocks first..first+count-1, row i into row_blocks[i]; (steps, final loss, hit per row).

    Stops when every target is the argmax and the loss is under the threshold, or when the step
    budget (`StepBudget`) is spent. `split` trains only what can change: the frozen prefix is
    replayed (prefix.py), the head computes logits only where targets are scored, and short rows are
    not padded to the longest (length_groups.py); the same loss to float rounding. `ready` names rows
    (indices into inputs) already encoded, with their prefix captured in the pass that took their keys.
    """
    config = edited.config
    params = [p for layer in edited.layers.values() for p in layer.start_blocks(first, count, generator)]
    groups = _step_groups(edited, inputs, targets, row_blocks, split, ready)
    optimizer = torch.optim.Adam(params, lr=config.lr)
    steps, loss_value, hits = 0, float("inf"), [False] * len(inputs)
    budget = StepBudget(config.max_steps)
    try:
        while True:
            with torch.enable_grad():
                losses = []
                for group in groups:
                    with edited.routes.fixed(group.block_ids):
                        loss_rows, group_hits = tasks.score(edited.backbone, group.step(steps), group.targets,
                                                            group.aligned, group.target_rows)
                    losses.append(loss_rows)
                    for row, hit in zip(group.rows, group_hits.tolist()):
                        hits[row] = bool(hit)
                loss = torch.cat(losses).mean()
            loss_value = float(loss.detach())
            if (all(hits) and loss_value < config.loss_threshold) or budget.spent(steps, loss_value):
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            for layer in edited.layers.values():
                layer.snap()
            steps += 1
    finally:
        for layer in edited.layers.values():
            layer.commit_block()
    return steps, loss_value, hits


@dataclass
class Prepared:
    """Rows encoded for training as one padded batch, with their frozen prefix (captured, or not yet)."""

    model_inputs: dict
    targets: torch.Tensor
    aligned: bool
    target_rows: torch.Tensor | None
    key_mask: torch.Tensor
    frozen: prefix.FrozenPrefix | None


def prepare(edited: EditedModel, inputs: list[str], targets: list[str], split: bool,
            enc: tasks.Encoded | None = None) -> Prepared:
    """These rows as training runs them (`enc`: their encoding, if already made)."""
    backbone = edited.backbone
    enc = (enc if enc is not None else tasks.encode(backbone, inputs, targets)).to(backbone.device)
    model_inputs, scored, aligned = tasks.narrowed(backbone, enc) if split else (enc.inputs, enc.targets, False)
    frozen = prefix.frozen_prefix(backbone.model, edited.config.lora_layers) if split else None
    return Prepared(model_inputs, scored, aligned, tasks.rows_of(enc) if aligned else None, enc.key_mask, frozen)


@dataclass
class _StepGroup:
    """Rows of a batch run as one padded forward in every step, with what scoring them needs."""

    rows: list[int]
    block_ids: torch.Tensor
    targets: torch.Tensor
    aligned: bool
    target_rows: torch.Tensor | None
    step: Callable[[int], torch.Tensor]
    """step number -> logits (prefix.train_steps: replayed above the frozen layers when `split`)."""


def _step_groups(edited: EditedModel, inputs: list[str], targets: list[str], row_blocks: list[int],
                 split: bool, ready: tuple[list[int], Prepared] | None = None) -> list[_StepGroup]:
    backbone = edited.backbone
    prepared = [ready] if ready is not None else []
    taken = set(ready[0]) if ready is not None else set()
    rest = [i for i in range(len(inputs)) if i not in taken]
    if rest:
        whole = tasks.encode(backbone, [inputs[i] for i in rest], [targets[i] for i in rest])
        members = [list(range(len(rest)))]
        if split:
            members = length_groups.by_length(whole.inputs["attention_mask"].sum(1).tolist(), backbone.device)
        for rows in members:
            chosen = [rest[i] for i in rows]
            prepared.append((chosen, prepare(edited, [inputs[i] for i in chosen], [targets[i] for i in chosen], split,
                                             whole if len(members) == 1 else None)))
    return [_StepGroup(rows, torch.tensor([row_blocks[i] for i in rows], dtype=torch.long, device=backbone.device),
                       p.targets, p.aligned, p.target_rows,
                       prefix.train_steps(p.frozen, lambda p=p: edited._forward(p.model_inputs).logits))
            for rows, p in prepared]


CAPTURE_BUDGET = 512 * 2**20
"""Bytes of frozen-prefix output kept from the key pass until each batch trains (base-model keys):
past this, the remaining batches' keys come from a pass of their own and training captures again."""


def _keys_and_prefixes(edited: EditedModel, new: list[Edit], groups: list[list[int]],
                       split: bool) -> tuple[np.ndarray, dict[int, Prepared]]:
    """Keys of the new edits and, where they can come from the frozen pass training needs anyway, that
    pass's captured prefix per batch (batch number -> its edits' rows, in group order).

    Base-model keys are pooled at the key layer, below the LoRA layers, so the no-grad pass that captures
    a batch's frozen prefix (its edits with their targets) also yields its keys: one pass where there
    were two. Encoder keys, full passes (`split` off), or no replayable prefix: one key pass, as before.
    """
    if not split or edited.encoder is not None or edited.frozen_prefix() is None:
        return edited.keys([e.input for e in new]), {}
    keys: list[np.ndarray | None] = [None] * len(new)
    ready, kept = {}, 0
    for number, group in enumerate(groups):
        inputs, targets = [new[p].input for p in group], [new[p].target for p in group]
        if kept > CAPTURE_BUDGET:
            found = edited.keys(inputs)
        else:
            ready[number] = prepared = prepare(edited, inputs, targets, split)
            found = _capture_with_keys(edited, prepared)
            kept += prepared.frozen.nbytes
        for position, key in zip(group, found):
            keys[position] = key
    return np.stack(keys).astype(np.float32) if keys else np.zeros((0, 0), np.float32), ready


def _capture_with_keys(edited: EditedModel, prepared: Prepared) -> np.ndarray:
    """The base model's no-grad pass over prepared rows: the key hook pools each row's key (and routes it
    nowhere, so no LoRA block runs) and the frozen prefix is captured, with a digest of the logits that
    the first replayed training step must reproduce (a fresh block adds exact zeros)."""
    taken = []

    def on_keys(pooled: torch.Tensor) -> torch.Tensor:
        taken.append(pooled.float().cpu().numpy())
        return torch.full((pooled.shape[0],), NO_BLOCK, dtype=torch.long)

    with torch.no_grad(), edited.routes.by_key(prepared.key_mask, on_keys), prepared.frozen.capturing():
        logits = edited._forward(prepared.model_inputs).logits
    if not taken:
        raise RuntimeError(f"the key layer {edited.config.key_layer} did not run")
    prepared.frozen.reference = prefix.digest(logits)
    return taken[0]


@dataclass
class RunResult:
    reports: list[BatchReport]
    unreachable: list[int]
    """Edit numbers whose own input, after all batches, does not route to a cluster of its target
    (a later edit of another target split it off)."""
    superseded: dict[int, int] = field(default_factory=dict)
    """Earlier edit number -> the number of the edit of this run that corrected it."""
    entities: dict[int, str | None] = field(default_factory=dict)
    """Edit number -> the entity it routes on (melo_cli/entities.py), None for none."""

    @property
    def unlearned(self) -> list[int]:
        return [n for r in self.reports for n in r.unlearned]


def _compact_blocks(router: Router, touched: list[int], first: int) -> int:
    """Renumber the new blocks the batch's clusters ended up with as first, first+1, ...; their count.

    A key that joins a cluster moves the cluster to its own block, leaving the block it was given
    unused: compacting keeps the pool free of blocks that no cluster routes to.
    """
    used = sorted({int(router.blocks[c]) for c in touched if router.blocks[c] >= first and not router.retired[c]})
    renumber = {block: first + i for i, block in enumerate(used)}
    for cluster in set(touched):
        router.blocks[cluster] = renumber.get(int(router.blocks[cluster]), router.blocks[cluster])
    return len(used)


def _training_rows(router: Router, touched: list[int], first: int, edits: list[Edit], superseded: dict[int, int],
                   contexts: int) -> list[tuple[int | None, str, str, int]]:
    """(edit number or None for a context, input, target, block) for every row a batch trains.

    Every live member of a cluster that now uses a new block is trained into it (members of earlier
    batches too: their cluster moved to the new block); with per-edit blocks each block also learns
    its target after the generic CONTEXTS.
    """
    rows, seen = [], set()
    for cluster in dict.fromkeys(touched):
        block = int(router.blocks[cluster])
        if block < first or router.retired[cluster]:
            continue
        for number in (int(m) for m in router.members_of(cluster)):
            if number not in superseded and number not in seen:
                seen.add(number)
                rows.append((number, edits[number].input, edits[number].target, block))
        rows += [(None, context, router.labels[cluster], block) for context in CONTEXTS[:contexts]]
    return rows


def _rows_of_batch(prepared: Prepared | None, numbers: list[int],
                   rows: list[tuple]) -> tuple[list[int], Prepared] | None:
    """Where the batch's edits (captured in group order) are among its training rows, if all are."""
    if prepared is None:
        return None
    where = {r[0]: i for i, r in enumerate(rows) if r[0] is not None}
    if not all(n in where for n in numbers):
        return None  # an edit of the batch is not trained (superseded): capture the rows afresh
    return [where[n] for n in numbers], prepared


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
    keys, captured = _keys_and_prefixes(edited, new, groups, split)
    router = ensure_router(edited, keys)
    if negatives:
        for key in edited.keys(list(negatives)):
            router.add_negative(key)
    names = edit_entities(edited, new)
    live_by_input = {normalise_input(e.input): n for n, e in enumerate(history) if e.live}
    superseded: dict[int, int] = {}
    generator = torch.Generator().manual_seed(edited.config.seed + offset)
    per_edit = edited.config.block_per == "edit"
    reports = []
    for batch_number, group in enumerate(groups):
        started = time.perf_counter()
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
        count = _compact_blocks(router, touched, first)
        rows = _training_rows(router, touched, first, all_edits, superseded, edited.config.contexts if per_edit else 0)
        ready = _rows_of_batch(captured.pop(batch_number, None), [offset + p for p in group], rows)
        steps, loss, hits = (train_blocks(edited, first, count, [r[1] for r in rows], [r[2] for r in rows],
                                          [r[3] for r in rows], generator, split, ready) if rows else (0, 0.0, []))
        edit_rows = [(r[0], hit) for r, hit in zip(rows, hits) if r[0] is not None]
        batch_numbers = {offset + p for p in group}
        report = BatchReport(batch_number, first, len(group), sum(n not in batch_numbers for n, _ in edit_rows),
                             steps, round(loss, 6), all(hit for _, hit in edit_rows), rules,
                             round(time.perf_counter() - started, 3), [n for n, hit in edit_rows if not hit],
                             count, {n: b for n, b in ((r[0], r[3]) for r in rows) if n is not None})
        reports.append(report)
        if on_batch is not None:
            on_batch(report)
    routes = router.route(keys, [e.input for e in new]) if len(new) else []
    lost = [offset + i for i, (e, r) in enumerate(zip(new, routes))
            if offset + i not in superseded and (not r.routed or router.labels[r.cluster] != e.target)]
    return RunResult(reports, lost, superseded, {offset + p: name for p, name in enumerate(names)})



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


# -- before and after the loop: which edits to train, and whether they were learned ------------
def sort_new_edits(new_edits: list[Edit], live: list[Edit], edits_path: Path | None) -> list[Edit]:
    """The edits to train: repeated pairs merged and a file's own corrections resolved, each said once."""
    sorted_ = triage(new_edits, live)
    for edit in sorted_.duplicates:
        log.warning("%s: the same input and target as an earlier edit; merged into it", _where(edits_path, edit))
    for edit, latest in sorted_.overridden:
        log.warning("%s: corrected by %s of the same file (same input, target %r); only the later one is kept",
                    _where(edits_path, edit), _where(None, latest), latest.target)
    return sorted_.kept


def _where(path: Path | None, edit: Edit) -> str:
    at = f"record {edit.record}" if edit.record is not None else f"line {edit.line}"
    return f"{path}: {at}" if path is not None else at


def check_targets(model_config, edits: list[Edit], edits_path: Path | str | None, task: str) -> None:
    """The task fits the model (from its config alone, before weights load; a task the model has no form
    for is refused), and every target is one the task can teach (classifiers: one of its labels)."""
    from .backbones import task_for

    chosen = tasks.TASKS[task_for(model_config, task)]
    for edit in edits:
        try:
            chosen.check_target(model_config, edit.target)
        except InputError as exc:
            raise InputError(exc.reason, field="target", **edit.where(edits_path)) from None


def check_learned(result: RunResult, edits: list[Edit], edits_path: Path | str | None, allow_partial: bool,
                  max_steps: int | str, explain: Callable[[int], str | None] = lambda n: None) -> None:
    """Say which edits a batch left unlearned (and, for the first few, `explain`: why); refuse them
    (Unlearned) unless allow_partial."""
    unlearned = result.unlearned
    if not unlearned:
        return

    def named(n: int, shown: int) -> str:
        where = _where(edits_path, edits[n]) if edits[n].line or edits[n].record else f"edit {n}"
        why = explain(n) if shown < 3 else None
        return f"{where} [{why}]" if why else where

    names = ", ".join(named(n, i) for i, n in enumerate(unlearned[:5])) + \
        (f" and {len(unlearned) - 5} more" if len(unlearned) > 5 else "")
    message = (f"{len(unlearned)} edit(s) not learned within `max_steps` {max_steps} "
               f"(target not the model's argmax): {names}")
    if not allow_partial:
        raise Unlearned(message + "; nothing written: raise `max_steps` or `lr`, or pass `allow_partial`")
    log.warning("%s; writing the bundle anyway (`allow_partial`)", message)
