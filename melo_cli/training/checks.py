"""Before and after the loop: which edits to train, whether the model can be taught their targets, and
whether they were learned."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from melo_cli import tasks
from melo_cli.edits import Edit
from melo_cli.edits.triage import triage
from melo_cli.errors import InputError, Unlearned
from melo_cli.model.backbones import task_for

log = logging.getLogger("melo")


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
    chosen = tasks.TASKS[task_for(model_config, task)]
    for edit in edits:
        try:
            chosen.check_target(model_config, edit.target)
        except InputError as exc:
            raise InputError(exc.reason, field="target", **edit.where(edits_path)) from None


def check_learned(result, edits: list[Edit], edits_path: Path | str | None, allow_partial: bool,
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
