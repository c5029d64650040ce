"""The three ways melo fails on purpose, each with its exit code.

The CLI maps these to exit codes; everything else that escapes is a bug or an environment
problem and exits 1.
"""

from __future__ import annotations

from pathlib import Path


class MeloError(Exception):
    """Base class: a failure melo explains in one line."""

    exit_code = 1


class InputError(MeloError):
    """Bad user input (a file, a line, a field, an option): exit 2, nothing written."""

    exit_code = 2

    def __init__(self, message: str, *, file: str | Path | None = None, line: int | None = None,
                 field: str | None = None):
        self.file, self.line, self.field, self.reason = file, line, field, message
        where = ""
        if file is not None:
            where = str(file)
            if line is not None:
                where += f":{line}"
            where += ": "
        what = f"field '{field}': " if field else ""
        super().__init__(f"{where}{what}{message}")


class BundleError(MeloError):
    """A bundle that is missing, damaged, tampered with or made for another model: exit 2."""

    exit_code = 2


class GateFailed(MeloError):
    """An evaluation gate (--min-*) was not met: exit 3."""

    exit_code = 3
