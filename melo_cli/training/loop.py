"""Training a batch's blocks until every target is learned: the step budget, the rows as training runs
them (encoded, grouped by length, their frozen prefix replayed above the frozen layers), and the loop.

Only the blocks being trained are in the optimizer; earlier blocks stay bit-identical. The loop stops
when every target token is the argmax and the loss is under the threshold, or when the budget is spent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from melo_cli import tasks
from melo_cli.model import prefix
from melo_cli.model.edited_model import EditedModel
from melo_cli.training import length_groups


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
    params = edited.start_blocks(first, count, generator)
    groups = step_groups(edited, inputs, targets, row_blocks, split, ready)
    optimizer = torch.optim.Adam(params, lr=config.lr)
    steps, loss_value, hits = 0, float("inf"), [False] * len(inputs)
    budget = StepBudget(config.max_steps)
    try:
        while True:
            with torch.enable_grad():
                losses = []
                for group in groups:
                    with edited.with_blocks(group.block_ids):
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
            edited.snap_blocks()
            steps += 1
    finally:
        edited.commit_blocks()
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
class StepGroup:
    """Rows of a batch run as one padded forward in every step, with what scoring them needs."""

    rows: list[int]
    block_ids: torch.Tensor
    targets: torch.Tensor
    aligned: bool
    target_rows: torch.Tensor | None
    step: Callable[[int], torch.Tensor]
    """step number -> logits (prefix.train_steps: replayed above the frozen layers when `split`)."""


def step_groups(edited: EditedModel, inputs: list[str], targets: list[str], row_blocks: list[int],
                 split: bool, ready: tuple[list[int], Prepared] | None = None) -> list[StepGroup]:
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
    return [StepGroup(rows, torch.tensor([row_blocks[i] for i in rows], dtype=torch.long, device=backbone.device),
                       p.targets, p.aligned, p.target_rows,
                       prefix.train_steps(p.frozen, lambda p=p: edited.forward(p.model_inputs).logits))
            for rows, p in prepared]
