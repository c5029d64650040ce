"""Prompts as the commands read them: arguments, one per line of stdin (`-`), or a JSONL file
(`--input FILE`, `-` for stdin) of objects with `prompt` (or `input`) and an optional `id` kept in
the output. JSONL is how prompts with newlines travel (CounterFact's own paraphrases hold some)."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from melo_cli.edits import check_unicode
from melo_cli.errors import InputError

TEXT_FIELDS = ("prompt", "input", "src", "text")


@dataclass(frozen=True)
class Prompt:
    text: str
    id: str | int | None = None


def from_arguments(arguments: list[str]) -> list[Prompt]:
    """The prompts as given, or with `-` one per non-blank line of stdin (which must be UTF-8)."""
    if arguments == ["-"]:
        lines = []
        for number, raw in enumerate(sys.stdin.buffer.read().split(b"\n"), 1):
            try:
                lines.append(raw.decode("utf-8").rstrip("\r"))
            except UnicodeDecodeError as exc:
                raise InputError(f"stdin line {number}: not valid UTF-8 (byte {exc.start + 1})") from None
        return [Prompt(line) for line in lines if line.strip()]
    for number, prompt in enumerate(arguments, 1):
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError:
            raise InputError(f"prompt {number}: not valid UTF-8") from None
    return [Prompt(p) for p in arguments]


def from_jsonl(path: Path) -> list[Prompt]:
    """One JSON object per non-blank line: a string `prompt` (or input, src, text), an optional
    string or integer `id`. `-` reads stdin."""
    name = "stdin" if str(path) == "-" else str(path)
    try:
        raw = sys.stdin.buffer.read() if str(path) == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"{name}: {exc.strerror or exc}") from None
    prompts = []
    for number, line in enumerate(raw.split(b"\n"), 1):
        if not line.strip():
            continue
        where = {"file": name, "line": number}
        try:
            record = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise InputError(f"not valid UTF-8 (byte {exc.start + 1})", **where) from None
        except json.JSONDecodeError as exc:
            raise InputError(f"malformed JSON: {exc.msg}", **where) from None
        if not isinstance(record, dict):
            raise InputError(f"expected a JSON object with a 'prompt', got {type(record).__name__}", **where)
        check_unicode(record, where)
        found = next((f for f in TEXT_FIELDS if f in record), None)
        if found is None or not isinstance(record[found], str) or not record[found].strip():
            raise InputError("expected a non-empty string", field=found or "prompt", **where)
        ident = record.get("id")
        if ident is not None and (isinstance(ident, bool) or not isinstance(ident, (str, int))):
            raise InputError("expected a string or an integer", field="id", **where)
        prompts.append(Prompt(record[found], ident))
    return prompts


def read(arguments: list[str] | None, input_file: Path | None) -> list[Prompt]:
    """The prompts of a command: `--input FILE` or arguments, not both; never empty."""
    if input_file is not None and arguments:
        raise InputError("give prompts as arguments or with --input FILE, not both")
    if input_file is None and not arguments:
        raise InputError("no prompt given: pass PROMPT..., - for stdin lines, or --input FILE.jsonl")
    prompts = from_jsonl(input_file) if input_file is not None else from_arguments(arguments)
    if not prompts:
        raise InputError(f"no prompt given ({'the file' if input_file is not None else 'stdin'} was empty)")
    return prompts
