"""The ways melo fails on purpose, each with its exit code.

The CLI maps these to exit codes; everything else that escapes is a bug or an environment
problem and exits 1.
"""

from __future__ import annotations

import re
from pathlib import Path


def cli_text(message: str, options: set[str] | None = None) -> str:
    """A message as the CLI shows it: settings named in backticks (`max_steps`) become flags (--max-steps),
    but only the command's own `options` (a message quoting a model's config, "`model_type`", is left as
    written); None: every backticked setting."""
    def flag(match: re.Match) -> str:
        name = match.group(1)
        return "--" + name.replace("_", "-") if options is None or name in options else match.group(0)

    return re.sub(r"`([a-z][a-z0-9_]*)`", flag, message)


class MeloError(Exception):
    """Base class: a failure melo explains in one line."""

    exit_code = 1


class InputError(MeloError):
    """Bad user input (a file, a line, a field, an option): exit 2, nothing written."""

    exit_code = 2

    def __init__(self, message: str, *, file: str | Path | None = None, line: int | None = None,
                 field: str | None = None, record: int | None = None):
        self.file, self.line, self.field, self.record, self.reason = file, line, field, record, message
        where = ""
        if file is not None:
            where = str(file)
            if line is not None:
                where += f":{line}"
            elif record is not None:  # a JSON array: records are numbered from 1, like lines
                where += f": record {record}"
            where += ": "
        what = f"field '{field}': " if field else ""
        super().__init__(f"{where}{what}{message}")


class BundleError(MeloError):
    """A bundle that is missing, damaged, tampered with or made for another model: exit 2."""

    exit_code = 2


class GateFailed(MeloError):
    """An evaluation gate (--min-*) was not met: exit 3."""

    exit_code = 3


class Unlearned(MeloError):
    """Some edits were not learned within the step budget (and --allow-partial was not given): exit 4."""

    exit_code = 4


class WriteFailed(MeloError):
    """A bundle could not be written or did not read back as written (disk full, I/O error): exit 74
    (EX_IOERR). Nothing was replaced: the old bundle, if any, is untouched."""

    exit_code = 74


class BundleBusy(MeloError):
    """Another melo process holds the bundle: exit 75 (EX_TEMPFAIL, try again later)."""

    exit_code = 75
