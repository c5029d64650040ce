"""Edit and holdout records: what an edit is, how a bundle writes it down, and when two are the same.

An Edit is both what an edits file asks for and, once trained, what a bundle's edits.jsonl keeps about it
(its block, the entity it routes on, whether a later edit superseded it or `melo forget` took it back):
one record per edit, written by `to_json` and read back by `from_record`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from melo_cli.errors import InputError


@dataclass(frozen=True)
class Edit:
    input: str
    target: str
    rephrases: tuple[str, ...] = ()
    id: str | None = None
    batch: str | None = None
    line: int = 0
    """Where it was read: a line of a JSONL file, or (with `record`) nothing."""
    record: int | None = None
    """Its position (from 1) in a file that is one JSON array, EasyEdit's format."""
    superseded: dict | None = None
    """For a bundle's edits: {"by": edit number, "at": time} once a later edit corrected it."""
    forgotten: dict | None = None
    """For a bundle's edits: {"at": time} once `melo forget` took it back."""
    subject: str | None = None
    """The entity the edit is about ("Danielle Darrieux"), if given: it routes on that entity (else on the
    name found in its input, melo_cli/router/entities.py). CounterFact, zsRE and EasyEdit data carry it."""
    block: int | None = None
    """For a bundle's edits: the LoRA block it was trained into."""
    entity: str | None = None
    """For a bundle's edits: the entity it routes on (None: none), with its short forms."""
    entity_short: tuple[str, ...] = ()

    @property
    def live(self) -> bool:
        return self.superseded is None and self.forgotten is None

    def where(self, file: str | Path | None = None) -> dict:
        """The location keywords of an InputError about this edit."""
        return {"file": file, "line": None if self.record is not None else self.line, "record": self.record}

    def to_json(self) -> dict:
        """The edit as a bundle's edits.jsonl records it (the inverse of `from_record`)."""
        record = {"id": self.id, "input": self.input, "target": self.target, "rephrases": list(self.rephrases)}
        for name in ("subject", "batch", "block", "entity"):
            if getattr(self, name) is not None:
                record[name] = getattr(self, name)
        if self.entity is not None:
            record["entity_short"] = list(self.entity_short)
        for name in ("superseded", "forgotten"):
            if getattr(self, name) is not None:
                record[name] = getattr(self, name)
        return record

    @classmethod
    def from_record(cls, record: dict, number: int, given_ids: set[str] = frozenset()) -> "Edit":
        """Edit `number` (0-based) of a bundle from its edits.jsonl record (the inverse of `to_json`); a
        bundle written before ids were stored gets the ids it prints (`auto_id`)."""
        ident = str(record["id"]) if record.get("id") is not None else auto_id(number, given_ids)
        block = record.get("block")
        return cls(record["input"], record["target"], tuple(record.get("rephrases") or ()), ident,
                   None if record.get("batch") is None else str(record["batch"]), number + 1,
                   superseded=record.get("superseded"), forgotten=record.get("forgotten"), subject=record.get("subject"),
                   block=block if isinstance(block, int) and not isinstance(block, bool) else None,
                   entity=record.get("entity"), entity_short=tuple(record.get("entity_short") or ()))


def auto_id(number: int, taken: set[str] = frozenset()) -> str:
    """The id of edit `number` (0-based) that came without one: "edit-N" with N from 1, as `melo inspect
    --edits` numbers edits (a suffix where a given id already took that name). Bundles store it, and a
    bundle written before ids were stored gets the same name on load."""
    name = f"edit-{number + 1}"
    suffix = 2
    while name in taken:
        name, suffix = f"edit-{number + 1}-{suffix}", suffix + 1
    return name


@dataclass(frozen=True)
class Holdout:
    input: str
    target: str | None = None
    where: dict = field(default_factory=dict, compare=False, repr=False)
    """Where it was read ({"file", "line"} or {"file", "record"}), for messages; empty when built in code."""


def normalise_input(text: str) -> str:
    """The form in which two inputs count as the same: whitespace runs folded, ends stripped."""
    return " ".join(text.split())


def same_edit(a: Edit, b: Edit) -> bool:
    """Two records that make the same edit: input (whitespace aside), target, rephrases, subject, batch."""
    return (normalise_input(a.input), a.target, a.rephrases, a.subject, a.batch) == \
        (normalise_input(b.input), b.target, b.rephrases, b.subject, b.batch)


def batches(edits: list[Edit], batch_size: int) -> list[list[int]]:
    """Group edit positions into batches, in order of first appearance.

    Edits with a `batch` field go to that batch; the others are cut into consecutive groups of
    `batch_size`.
    """
    if batch_size < 1:
        raise InputError(f"`batch_size` {batch_size}: expected a whole number >= 1")
    groups: dict[str, list[int]] = {}
    auto = 0
    for i, edit in enumerate(edits):
        if edit.batch is not None:
            groups.setdefault(f"b:{edit.batch}", []).append(i)
            continue
        key = f"auto:{auto}"
        groups.setdefault(key, []).append(i)
        if len(groups[key]) == batch_size:
            auto += 1
    return list(groups.values())
