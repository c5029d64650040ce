"""The edit loop: each batch of edits gets a new LoRA block, its keys go to the router, and only
that block is trained until every target token is the argmax.

Keys are computed once for all new edits before training (they come from layers below the LoRA
layers, so training cannot change them). When a key joins a cluster of an earlier block, that
cluster moves to the new block and its earlier members are trained into the new block too, so no
edit is left routed to a block that never learned it; earlier blocks themselves never change.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from . import prefix, tasks
from .edited import EditedModel
from .edits import Edit, normalise_input
from .router import Router, auto_radius


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


def ensure_router(edited: EditedModel, keys: np.ndarray) -> Router:
    """The model's router, created on the first edit with a radius resolved from these keys if asked."""
    if edited.router is None:
        config = edited.config
        if config.init_radius <= 0:  # auto: half the gap for split (radii halve anyway), the gap for voronoi
            config.init_radius = auto_radius(keys, config.metric, 1.0 if config.radius_policy == "voronoi" else 0.5)
        edited.router = Router(keys.shape[1], config.metric, config.init_radius, margin=config.margin,
                               policy=config.radius_policy)
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


def train_block(edited: EditedModel, block: int, inputs: list[str], targets: list[str],
                generator: torch.Generator, split: bool = True) -> tuple[int, float, list[bool]]:
    """Train a fresh `block` on these pairs; (optimizer steps, final loss, target is argmax per pair).

    Stops when every target is the argmax and the loss is under the threshold, or when the step
    budget (`StepBudget`) is spent. `split` trains only what can change: the frozen prefix is
    replayed (prefix.py) and the head computes logits only where targets are scored; both exact.
    """
    config, backbone = edited.config, edited.backbone
    params = [p for layer in edited.layers.values() for p in layer.start_block(block, generator)]
    enc = tasks.encode(backbone, inputs, targets).to(backbone.device)
    model_inputs, scored_targets, aligned = tasks.narrowed(backbone, enc) if split else (enc.inputs, enc.targets, False)
    rows = tasks.rows_of(enc) if aligned else None
    ids = torch.full((len(inputs),), block, dtype=torch.long, device=backbone.device)
    optimizer = torch.optim.Adam(params, lr=config.lr)
    steps, loss_value, hits = 0, float("inf"), None
    budget = StepBudget(config.max_steps)
    step = prefix.train_steps(prefix.frozen_prefix(backbone.model, config.lora_layers) if split else None,
                              lambda: edited._forward(model_inputs).logits)
    try:
        while True:
            with torch.enable_grad(), edited.routes.fixed(ids):
                logits = step(steps)
                loss_rows, hits = tasks.score(backbone, logits, scored_targets, aligned, rows)
                loss = loss_rows.mean()
            loss_value = float(loss.detach())
            if (bool(hits.all()) and loss_value < config.loss_threshold) or budget.spent(steps, loss_value):
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
    finally:
        for layer in edited.layers.values():
            layer.commit_block()
    return steps, loss_value, [bool(h) for h in hits.tolist()]


@dataclass
class RunResult:
    reports: list[BatchReport]
    unreachable: list[int]
    """Edit numbers whose own input, after all batches, does not route to a cluster of its target
    (a later edit of another target split it off)."""
    superseded: dict[int, int] = field(default_factory=dict)
    """Earlier edit number -> the number of the edit of this run that corrected it."""

    @property
    def unlearned(self) -> list[int]:
        return [n for r in self.reports for n in r.unlearned]


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
    keys = edited.keys([e.input for e in new])
    router = ensure_router(edited, keys)
    if negatives:
        for key in edited.keys(list(negatives)):
            router.add_negative(key)
    live_by_input = {normalise_input(e.input): n for n, e in enumerate(history) if e.live}
    superseded: dict[int, int] = {}
    generator = torch.Generator().manual_seed(edited.config.seed + offset)
    reports = []
    for batch_number, group in enumerate(groups):
        started = time.perf_counter()
        block = edited.n_blocks
        rules = {"new": 0, "join": 0, "split": 0}
        replay: list[int] = []
        for position in group:
            number = offset + position
            old = live_by_input.get(normalise_input(new[position].input))
            if old is not None and all_edits[old].target != new[position].target and router.retire_edit(old):
                superseded[old] = number
            result = router.add(keys[position], new[position].target, block, number, new[position].subject)
            superseded.update({gone: number for gone in result.superseded})
            rules[result.rule] += 1
            if result.reassigned:
                replay += [int(m) for m in router.members_of(result.cluster) if m < offset + group[0]]
        replayed = sorted(set(replay) - set(superseded))
        trained = [offset + p for p in group if offset + p not in superseded] + replayed
        chosen = [all_edits[n] for n in trained]
        steps, loss, hits = train_block(edited, block, [e.input for e in chosen], [e.target for e in chosen], generator,
                                        split)
        report = BatchReport(batch_number, block, len(group), len(replayed), steps, round(loss, 6),
                             all(hits), rules, round(time.perf_counter() - started, 3),
                             [n for n, hit in zip(trained, hits) if not hit])
        reports.append(report)
        if on_batch is not None:
            on_batch(report)
    routes = router.route(keys, [e.input for e in new]) if len(new) else []
    lost = [offset + i for i, (e, r) in enumerate(zip(new, routes))
            if offset + i not in superseded and (not r.routed or router.labels[r.cluster] != e.target)]
    return RunResult(reports, lost, superseded)
