"""How the `melo` command looks: help text, flags, progress bars and tables (cli.py has the commands)."""

from __future__ import annotations

import typer
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.table import Table
from typer.core import TyperCommand, TyperGroup

from .console import emit_json, stderr, stdout


def reflow(text: str) -> str:
    """Docstring paragraphs as single lines, so --help wraps them at the terminal's width (indented
    example lines are kept as they are)."""
    import inspect as _inspect

    paragraphs = _inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(p if p.startswith("  ") else " ".join(p.split("\n")) for p in paragraphs)


class _PlainHelpOption:
    """No <bool> after --help (typer shows every option's type)."""

    def get_help_option(self, ctx):
        option = super().get_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option


class MeloCommand(_PlainHelpOption, TyperCommand):
    """Usage lines as people write them (`PROMPTS...`, not typer's `{prompts}...`)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.help:
            self.help = reflow(self.help)

    def collect_usage_pieces(self, ctx) -> list[str]:
        return [piece.replace("{", "").replace("}", "") for piece in super().collect_usage_pieces(ctx)]


class MeloGroup(_PlainHelpOption, TyperGroup):
    pass


def flag(name: str, help: str, *short: str):
    """A boolean option that is only ever switched on: no --no-X twin, no <bool> in --help."""
    return typer.Option(name, *short, help=help, metavar="")


def progress_bar(verb: str, unit: str) -> Progress:
    """A bar with its count and ETA on stderr; silent where stderr is not a terminal (logs say it there)."""
    return Progress(TextColumn(f"[bold]{verb}"), BarColumn(), MofNCompleteColumn(), TextColumn(unit),
                    TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[note]}"),
                    console=stderr, transient=False, disable=not stderr.is_terminal)


def one_line(text: str) -> str:
    """A continuation on one line: newlines and tabs shown as \\n and \\t, so one prompt is one record."""
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")


def format_metric(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return ", ".join(f"{k} {format_metric(v)}" for k, v in value.items())
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def print_history(rows: list[dict], json_format: bool) -> None:
    if json_format:
        for row in rows:
            emit_json(row)
        return
    table = Table(title="retention over time")
    for column in ("batches", "edits", "edit_success", "retention", "locality", "seconds"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(*(format_metric(row.get(c)) for c in ("batches", "edits", "edit_success", "retention",
                                                              "locality", "seconds")))
    stdout.print(table)
