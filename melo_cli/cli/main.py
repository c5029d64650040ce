"""The `melo` command: the app with every command registered, and the options that apply to all of them.

Results go to stdout (JSON where asked, or a rich table), progress and logs to stderr. Exit codes: 0 ok,
1 failure, 2 bad input, usage or bundle, 3 an eval gate failed, 4 edits left unlearned (melo edit without
--allow-partial), 74 the bundle could not be written (nothing replaced), 75 the bundle is locked by another
melo edit (try again later). Only what a command needs is imported, and inside it: `melo --help` and
`melo inspect BUNDLE` never import torch or transformers.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from melo_cli import __version__
from melo_cli.cli import edit, evaluate, generate, inspect, serve  # noqa: F401  (each registers its commands)
from melo_cli.cli.app import Quiet, Verbose, app
from melo_cli.cli.console import setup_logging


def _version(value: bool) -> None:
    if value:
        print(f"melo {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    verbose: Verbose = False,
    quiet: Quiet = False,
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True, metavar="",
                                                    help="Print the version and exit.")] = None,
) -> None:
    """Options that apply to every command."""
    setup_logging(verbose, quiet)


def main() -> None:
    app()
