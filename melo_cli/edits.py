"""Edit and holdout records: reading JSONL, validating every line, field aliases, batching.

Everything is checked before any model is loaded, so a bad line costs a second, not a training
run. Public data works as it is: the EasyEdit/CounterFact names (`prompt`, `target_new`,
`rephrase_prompt`) and MEND's zsRE names (`src`, `alt`, `rephrase`) are accepted as aliases.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .errors import InputError

log = logging.getLogger("melo")

MAX_LINE_BYTES = 1 << 20

EDIT_ALIASES = {
    "input": ("input", "prompt", "src"),
    "target": ("target", "target_new", "alt"),
    "rephrases": ("rephrases", "rephrase_prompt", "rephrase"),
}
HOLDOUT_ALIASES = {
    # an EasyEdit/CounterFact record holds the edit's `prompt` too: its locality prompt is the holdout input
    "input": ("input", "locality_prompt", "loc", "prompt"),
    "target": ("target", "locality_ground_truth", "loc_ans"),
}


DATASET_FIELDS = frozenset({"ground_truth", "locality_prompt", "locality_ground_truth",  # CounterFact (EasyEdit)
                            "pred", "answers", "loc", "loc_ans", "cond"})  # zsRE (MEND)
"""Fields public editing data carries that an edit does not use: read without a warning."""
BUNDLE_FIELDS = frozenset({"block", "entity", "entity_short", "superseded", "forgotten"})
"""Fields of a bundle's own edits.jsonl (melo's record of each edit), read back as an edits file."""
EDIT_FIELDS = frozenset({name for names in EDIT_ALIASES.values() for name in names} | {"id", "case_id", "batch",
                                                                                        "subject"} | DATASET_FIELDS | BUNDLE_FIELDS)
HOLDOUT_FIELDS = frozenset({name for names in HOLDOUT_ALIASES.values() for name in names} | {"id"})


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
    """The entity the edit is about ("Danielle Darrieux"): inputs that do not mention it are not
    routed to this edit (the router's subject gate). CounterFact, zsRE and EasyEdit data carry it."""

    @property
    def live(self) -> bool:
        return self.superseded is None and self.forgotten is None

    def where(self, file: str | Path | None = None) -> dict:
        """The location keywords of an InputError about this edit."""
        return {"file": file, "line": None if self.record is not None else self.line, "record": self.record}

    def to_json(self, **extra) -> dict:
        record = {"id": self.id, "input": self.input, "target": self.target, "rephrases": list(self.rephrases)}
        if self.subject is not None:
            record["subject"] = self.subject
        if self.batch is not None:
            record["batch"] = self.batch
        record.update(extra)
        return record


def auto_id(number: int, taken: set[str] = frozenset()) -> str:
    """The id of edit `number` (0-based) that came without one: "edit-N" with N from 1, as `melo inspect
    --edits` numbers edits (a suffix where a given id already took that name). Bundles store it, and a
    bundle written before ids were stored gets the same name on load."""
    name = f"edit-{number + 1}"
    suffix = 2
    while name in taken:
        name, suffix = f"edit-{number + 1}-{suffix}", suffix + 1
    return name


def record_is_live(record: dict) -> bool:
    """A bundle's edits.jsonl record that still applies: neither superseded nor forgotten (Edit.live)."""
    return "superseded" not in record and "forgotten" not in record


@dataclass(frozen=True)
class Holdout:
    input: str
    target: str | None = None
    where: dict = field(default_factory=dict, compare=False, repr=False)
    """Where it was read ({"file", "line"} or {"file", "record"}), for messages; empty when built in code."""


@dataclass
class ReadReport:
    """Lines skipped with --skip-invalid, each as the one-line error it would have raised."""

    skipped: list[InputError] = field(default_factory=list)


def _pick(record: dict, names: tuple[str, ...]) -> tuple[str, object] | None:
    for name in names:
        if name in record:
            return name, record[name]
    return None


def _text(record: dict, canonical: str, aliases: dict, where: dict, required: bool) -> str | None:
    found = _pick(record, aliases[canonical])
    if found is None:
        if required:
            raise InputError(f"missing (expected a non-empty string; also read as {', '.join(aliases[canonical][1:])})",
                             field=canonical, **where)
        return None
    name, value = found
    if isinstance(value, list) and canonical == "target" and len(value) == 1:
        value = value[0]
    if isinstance(value, (int,)) and not isinstance(value, bool) and canonical == "target":
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise InputError("expected a non-empty string", field=name, **where)
    return value


def _rephrases(record: dict, where: dict) -> tuple[str, ...]:
    found = _pick(record, EDIT_ALIASES["rephrases"])
    if found is None:
        return ()
    name, value = found
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise InputError("expected a list of non-empty strings", field=name, **where)
    return tuple(value)


def _optional_scalar(record: dict, name: str, where: dict) -> str | None:
    if name not in record or record[name] is None:
        return None
    value = record[name]
    if isinstance(value, bool) or not isinstance(value, (str, int)) or (isinstance(value, str) and not value.strip()):
        raise InputError("expected a non-empty string or an integer", field=name, **where)
    return str(value)


def _subject(record: dict, where: dict) -> str | None:
    """The optional subject: a non-empty string."""
    if record.get("subject") is None:
        return None
    value = record["subject"]
    if not isinstance(value, str) or not value.strip():
        raise InputError("expected a non-empty string", field="subject", **where)
    return value


def check_unicode(record: dict, where: dict) -> None:
    """Every string of a record is text: JSON's "\\ud800" escape makes a lone surrogate, which no tokenizer
    (nor UTF-8) takes; named here rather than failing as a TypeError inside the tokenizer."""
    for name, value in record.items():
        for text in value if isinstance(value, list) else [value]:
            if isinstance(text, str):
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError as exc:
                    raise InputError(f"holds a lone surrogate ({text[exc.start]!a} at character {exc.start + 1}), "
                                     f"which is not text", field=name, **where) from None


def parse_edit(record: object, where: dict) -> Edit:
    if not isinstance(record, dict):
        raise InputError(f"expected a JSON object, got {type(record).__name__}", **where)
    check_unicode(record, where)
    return Edit(
        input=_text(record, "input", EDIT_ALIASES, where, required=True),
        target=_text(record, "target", EDIT_ALIASES, where, required=True),
        rephrases=_rephrases(record, where),
        id=_optional_scalar(record, "id", where) if "id" in record else _optional_scalar(record, "case_id", where),
        batch=_optional_scalar(record, "batch", where),
        subject=_subject(record, where),
        line=where.get("line") or 0,
        record=where.get("record"),
    )


def parse_holdout(record: object, where: dict) -> Holdout:
    if not isinstance(record, dict):
        raise InputError(f"expected a JSON object, got {type(record).__name__}", **where)
    check_unicode(record, where)
    return Holdout(_text(record, "input", HOLDOUT_ALIASES, where, required=True),
                   _text(record, "target", HOLDOUT_ALIASES, where, required=False), dict(where))


def _records(path: Path) -> list[tuple[dict, object | InputError]]:
    """(location, parsed JSON value or the error of that location) for each record of the file.

    A file is JSONL (one value per non-blank line), or, when its first non-blank character is `[`,
    one JSON array of records as EasyEdit ships its data; records are then located by position.
    `-` reads stdin (named "stdin" in messages).
    """
    try:
        if str(path) == "-":
            raw, path = sys.stdin.buffer.read(), Path("stdin")
        else:
            raw = path.read_bytes()
    except FileNotFoundError:
        raise InputError("no such file", file=path) from None
    except IsADirectoryError:
        raise InputError("is a directory, expected a JSONL file", file=path) from None
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror}", file=path) from None
    if raw.startswith(b"\xef\xbb\xbf"):
        raise InputError("starts with a UTF-8 byte-order mark; save it as plain UTF-8", file=path, line=1)
    if raw.lstrip()[:1] == b"[":
        return _array_records(path, raw)
    out = []
    for number, line in enumerate(raw.split(b"\n"), start=1):
        where = {"file": path, "line": number}
        if len(line) > MAX_LINE_BYTES:
            out.append((where, InputError(f"line is {len(line)} bytes, over the {MAX_LINE_BYTES}-byte limit", **where)))
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            out.append((where, InputError(f"not valid UTF-8 (byte {exc.start + 1})", **where)))
            continue
        if not text.strip():
            continue
        try:
            out.append((where, json.loads(text, object_pairs_hook=_noting_repeats(where))))
        except json.JSONDecodeError as exc:
            out.append((where, InputError(f"malformed JSON: {exc.msg} at column {exc.colno}", **where)))
        except RecursionError:
            out.append((where, InputError("malformed JSON: nested too deeply", **where)))
        except ValueError as exc:  # e.g. an integer of more digits than Python converts (4,300)
            out.append((where, InputError(f"unreadable JSON value: {str(exc).splitlines()[0]}", **where)))
    if not out:
        raise InputError("is empty: expected one JSON object per line", file=path)
    return out


REPEATED = "\u0000repeated"
"""Where a parsed record keeps the names its JSON object gave twice (JSON keeps the last value silently)."""


def _noting_repeats(where: dict):
    """A json object_pairs_hook that builds the dict and notes, under REPEATED, each key given twice."""
    def hook(pairs: list[tuple[str, object]]) -> dict:
        record, repeated = {}, []
        for key, value in pairs:
            if key in record and key not in repeated:
                repeated.append(key)
            record[key] = value
        if repeated:
            record[REPEATED] = repeated
        return record

    return hook


def _array_records(path: Path, raw: bytes) -> list[tuple[dict, object]]:
    """The records of a file that is one JSON array; a syntax error names its line, as JSONL's do."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise InputError(f"not valid UTF-8 (byte {exc.start + 1})", file=path, line=line) from None
    try:
        values = json.loads(text, object_pairs_hook=_noting_repeats({"file": path}))
    except json.JSONDecodeError as exc:
        raise InputError(f"malformed JSON: {exc.msg} at column {exc.colno}", file=path, line=exc.lineno) from None
    except RecursionError:
        raise InputError("malformed JSON: nested too deeply", file=path) from None
    except ValueError as exc:
        raise InputError(f"unreadable JSON value: {str(exc).splitlines()[0]}", file=path) from None
    if not isinstance(values, list) or not values:
        raise InputError("is an empty JSON array: expected records", file=path)
    return [({"file": path, "record": i}, value) for i, value in enumerate(values, start=1)]


def _read(path: str | Path, parse: Callable, skip_invalid: bool, report: ReadReport | None,
          known: frozenset[str] = frozenset()) -> list:
    path = Path(path)
    items = []
    unknown: dict[str, list[dict]] = {}
    for where, value in _records(path):
        try:
            if isinstance(value, InputError):
                raise value
            if isinstance(value, dict):
                for key in value.pop(REPEATED, []):
                    log.warning("%s: field %r is given twice; the last value is used", _at(where), key)
                for key in value:
                    if key not in known:
                        unknown.setdefault(key, []).append(where)
            items.append(parse(value, where))
        except InputError as exc:
            if not skip_invalid:
                raise
            if report is not None:
                report.skipped.append(exc)
    for key, places in unknown.items():
        more = f" (and {len(places) - 1} more)" if len(places) > 1 else ""
        log.warning("%s: unknown field %r ignored%s; known: %s", _at(places[0]), key, more, ", ".join(sorted(
            k for k in known if k not in DATASET_FIELDS)))
    if not items:
        raise InputError("has no valid line", file=path)
    return items


def _at(where: dict) -> str:
    """file:line (or file: record N) for a warning."""
    if where.get("line") is not None:
        return f"{where['file']}:{where['line']}"
    return f"{where['file']}: record {where['record']}" if where.get("record") is not None else str(where["file"])


def read_edits(path: str | Path, skip_invalid: bool = False, report: ReadReport | None = None,
               label_check: Callable[[str], object] | None = None) -> list[Edit]:
    """Valid edits of a JSONL file; the first bad line raises InputError (or is skipped and reported).

    `label_check` (for classifiers) raises InputError for a target the model cannot produce.
    """
    def parse(value, where):
        edit = parse_edit(value, where)
        if label_check is not None:
            try:
                label_check(edit.target)
            except InputError as exc:
                raise InputError(exc.reason, field="target", **where) from None
        return edit

    edits = _read(path, parse, skip_invalid, report, EDIT_FIELDS)
    label = Path("stdin") if str(path) == "-" else Path(path)
    seen: dict[str, Edit] = {}
    kept = []
    for edit in edits:
        if edit.id is not None and edit.id in seen:
            first = seen[edit.id]
            at = f"record {first.record}" if first.record is not None else f"line {first.line}"
            if same_edit(first, edit):  # the same record twice: one edit, as repeated (input, target) pairs are
                log.warning("%s: the same edit as %s (id %r); merged into it", _at(edit.where(label)), at, edit.id)
                continue
            error = InputError(f"duplicate id {edit.id!r} for another edit (first at {at})", field="id",
                               **edit.where(label))
            if not skip_invalid:
                raise error
            if report is not None:
                report.skipped.append(error)
            continue
        if edit.id is not None:
            seen[edit.id] = edit
        kept.append(edit)
    return kept


def same_edit(a: Edit, b: Edit) -> bool:
    """Two records that make the same edit: input (whitespace aside), target, rephrases, subject, batch."""
    return (normalise_input(a.input), a.target, a.rephrases, a.subject, a.batch) == \
        (normalise_input(b.input), b.target, b.rephrases, b.subject, b.batch)


def read_holdout(path: str | Path, skip_invalid: bool = False, report: ReadReport | None = None) -> list[Holdout]:
    return _read(path, parse_holdout, skip_invalid, report, EDIT_FIELDS | HOLDOUT_FIELDS)


def batches(edits: list[Edit], batch_size: int) -> list[list[int]]:
    """Group edit positions into batches, in order of first appearance.

    Edits with a `batch` field go to that batch; the others are cut into consecutive groups of
    `batch_size`.
    """
    if batch_size < 1:
        raise InputError("--batch-size must be at least 1")
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


def normalise_input(text: str) -> str:
    """The form in which two inputs count as the same: whitespace runs folded, ends stripped."""
    return " ".join(text.split())
