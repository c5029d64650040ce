"""The `melo` typer app and how it looks: help text, the options every command shares, progress bars and
tables. The commands live in cli.py and cli_eval.py, which both import from here (no import circle)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.table import Table
from typer.core import TyperCommand, TyperGroup

from melo_cli.cli.console import emit_json, setup_logging, stderr, stdout
from melo_cli.config import help_of
from melo_cli.options import Loading


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


app = typer.Typer(
    name="melo",
    cls=MeloGroup,
    help="Lifelong model editing with MELO: neuron-indexed dynamic LoRA and an hnswlib router.\n\n"
         "Edit a Hugging Face model with a JSONL file of corrections, get a bundle, apply it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

def option(cls, name: str, *declarations: str, **extra):
    """A typer option whose help is the setting's own (config.setting: one source for defaults and help)."""
    return typer.Option(*declarations, help=help_of(cls, name), **extra)


def switch(cls, name: str, flag_name: str, *short: str):
    """A flag (never a --no-X twin) whose help is the setting's own."""
    return typer.Option(flag_name, *short, help=help_of(cls, name), metavar="")


Device = Annotated[str, option(Loading, "device")]
Dtype = Annotated[str, option(Loading, "dtype")]
DeviceMap = Annotated[Optional[str], option(Loading, "device_map")]
MaxMemory = Annotated[Optional[str], option(Loading, "max_memory")]
TrustRemoteCode = Annotated[bool, switch(Loading, "trust_remote_code", "--trust-remote-code")]
ForceBase = Annotated[bool, switch(Loading, "force_base", "--force-base")]


def loading(device: str, dtype: str, device_map: str | None, max_memory: str | None, force_base: bool,
            trust_remote_code: bool) -> Loading:
    """The shared loading options of a command as one Loading."""
    return Loading(device, dtype, device_map, max_memory, force_base, trust_remote_code)


Verbose = Annotated[bool, flag("--verbose", "More log lines on stderr (also before the command).", "-v")]
Quiet = Annotated[bool, flag("--quiet", "Only warnings and errors on stderr (also before the command).", "-q")]


def log_options(verbose: bool, quiet: bool) -> None:
    """-v / -q given after the command name: the same as before it."""
    if verbose or quiet:
        setup_logging(verbose, quiet)
