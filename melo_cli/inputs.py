"""What the Python API takes, checked: settings by name, edits and holdout inputs as Edit objects or dicts
(read like the lines of an edits file), prompts; and the checks an edit call runs before any step, so a
bad input is one line naming it, not an error in the middle of training."""

from __future__ import annotations

from dataclasses import fields
from typing import Iterable

from melo_cli.config import MeloConfig
from melo_cli.edits import Edit, Holdout, parse_edit, parse_holdout
from melo_cli.errors import InputError


def check_edits(backbone, new: list[Edit], holdout: list[Holdout], source, task: str) -> None:
    """Before any step: the task fits and the labels exist (classifiers), given subjects are named by their
    inputs, everything fits the model's positions, and every target token can be produced."""
    from melo_cli.model import lengths, producible
    from melo_cli.training import check_targets

    check_targets(backbone.model.config, new, source, task)
    check_subjects(new, source)
    lengths.check_edits(backbone, new, source)
    producible.check_edits(backbone, new, source)
    lengths.check_holdout(backbone, holdout)


def make_config(**settings) -> MeloConfig:
    """MeloConfig from keyword settings; an unknown name is an InputError naming it (and the known ones)."""
    known = {f.name for f in fields(MeloConfig)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise InputError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return MeloConfig(**settings)


def as_edits(items: Iterable[Edit | dict], argument: str) -> list[Edit]:
    """Edits from Edit objects or dicts (read like the lines of an edits file)."""
    out = []
    for number, item in enumerate(items, 1):
        out.append(item if isinstance(item, Edit) else parse_edit(item, {"file": argument, "record": number}))
    return out


def as_holdout(items: Iterable[Holdout | dict | str]) -> list[Holdout]:
    """Holdout inputs from Holdout objects, strings, or dicts (read like the lines of a holdout file)."""
    return [h if isinstance(h, Holdout) else Holdout(h) if isinstance(h, str) else
            parse_holdout(h, {"file": "holdout", "record": i}) for i, h in enumerate(items, 1)]


def check_subjects(edits: list[Edit], source) -> None:
    """A given subject must be named by its edit's own input (entities.subject_problem): else the edit
    could never apply, and it was accepted with only a warning about routing."""
    from melo_cli.router.entities import subject_problem

    for edit in edits:
        problem = edit.subject and subject_problem(edit.input, edit.subject)
        if problem:
            raise InputError(f"{edit.subject!r} {problem}", field="subject", **edit.where(source))


def check_prompts(prompts) -> None:
    if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
        raise InputError("expected a list of strings", field="prompts")
