"""Reading edits and holdout inputs from files: JSONL (one record per line) or one JSON array (EasyEdit's
format), `-` for stdin; every line checked before any model loads, so a bad line costs a second, not a
training run. Unknown fields and fields given twice are warned about, naming the file and line.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from melo_cli.edits.parsing import DATASET_FIELDS, EDIT_FIELDS, HOLDOUT_FIELDS, parse_edit, parse_holdout
from melo_cli.edits.records import Edit, Holdout, same_edit
from melo_cli.errors import InputError

log = logging.getLogger("melo")

MAX_LINE_BYTES = 1 << 20


@dataclass
class ReadReport:
    """Lines skipped with --skip-invalid, each as the one-line error it would have raised."""

    skipped: list[InputError] = field(default_factory=list)


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


def read_holdout(path: str | Path, skip_invalid: bool = False, report: ReadReport | None = None) -> list[Holdout]:
    return _read(path, parse_holdout, skip_invalid, report, EDIT_FIELDS | HOLDOUT_FIELDS)
