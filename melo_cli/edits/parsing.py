"""An edit or holdout record from parsed JSON: the field names public data uses, every field checked.

The EasyEdit/CounterFact names (`prompt`, `target_new`, `rephrase_prompt`) and MEND's zsRE names (`src`,
`alt`, `rephrase`) are aliases; fields that public data carries and an edit does not use are known, so
that only a field nobody knows (a typo: "tagret") is warned about (reading.py).
"""

from __future__ import annotations

from melo_cli.edits.records import Edit, Holdout
from melo_cli.errors import InputError

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


