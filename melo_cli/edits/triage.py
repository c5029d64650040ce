"""Sorting a file's edits against each other and against a bundle's live edits, before training:
repeated pairs merge, and of a file's own corrections of one input only the last is kept."""

from __future__ import annotations

from dataclasses import dataclass

from melo_cli.edits.records import Edit, normalise_input


@dataclass
class Triage:
    """A file's edits sorted against each other and against the bundle's live edits."""

    kept: list[Edit]
    """Edits to train, in file order."""
    duplicates: list[Edit]
    """The same (input, target) as a live edit of the bundle or an earlier line: merged into it."""
    overridden: list[tuple[Edit, Edit]]
    """(edit, the later line of the same file that corrects it): only the later one is trained."""


def triage(new: list[Edit], live: list[Edit] = ()) -> Triage:
    """Merge repeated (input, target) pairs and keep only the last of a file's corrections of one input.

    Corrections of a bundle's live edits are not decided here: they are kept, and the editor
    retires the edit they supersede.
    """
    known = {(normalise_input(e.input), e.target) for e in live}
    last_target: dict[str, Edit] = {}
    for edit in new:
        last_target[normalise_input(edit.input)] = edit
    kept, duplicates, overridden = [], [], []
    for edit in new:
        pair = (normalise_input(edit.input), edit.target)
        latest = last_target[pair[0]]
        if latest.target != edit.target:
            overridden.append((edit, latest))
        elif pair in known:
            duplicates.append(edit)
        else:
            known.add(pair)
            kept.append(edit)
    return Triage(kept, duplicates, overridden)
