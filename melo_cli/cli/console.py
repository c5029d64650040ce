"""Output discipline: results on stdout, logs and progress on stderr, errors as one line.

Errors are written with plain `print` (not rich) so that a long message is never wrapped into
two lines: pipelines and tests read the first line of stderr.
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import math
import os
import sys
from typing import Callable

import typer
from rich.console import Console
from rich.logging import RichHandler

from melo_cli.errors import MeloError, WriteFailed, cli_text

stderr = Console(stderr=True)
stdout = Console()


def setup_logging(verbose: bool = False, quiet: bool = False) -> None:
    """melo's log on stderr; transformers' own chatter silenced unless --verbose."""
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logger = logging.getLogger("melo")
    if stderr.is_terminal:
        handler: logging.Handler = RichHandler(console=stderr, show_time=False, show_path=False)
    else:  # a pipe or a file: one plain line per record, never wrapped or padded to a width
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("melo: %(levelname)s %(message)s"))
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # transformers' own chatter is set where a model loads (backbones), so that commands which load
    # no model never import it


def fail(message: str, code: int) -> typer.Exit:
    print(f"melo: error: {message}", file=sys.stderr, flush=True)
    return typer.Exit(code)


def exits_cleanly(command: Callable) -> Callable:
    """Turn melo's own errors into one stderr line and their exit code; anything else exits 1."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except MeloError as exc:
            raise fail(cli_text(str(exc), _option_names()), exc.exit_code) from None
        except BrokenPipeError:
            # the reader went away (`melo generate ... | head -1`): stop quietly, as `cat` does
            _silence_stdout()
            raise typer.Exit(0) from None
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except OSError as exc:
            if exc.errno not in WRITE_ERRORS or os.environ.get("MELO_DEBUG"):
                raise _unexpected(exc) from None
            where = f"{exc.filename}: " if exc.filename else "the output: "
            raise fail(f"cannot write {where}{exc.strerror or exc}", WriteFailed.exit_code) from None
        except Exception as exc:  # a bug or an environment failure: say what, exit 1
            if os.environ.get("MELO_DEBUG"):
                raise
            raise _unexpected(exc) from None

    return wrapper


WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG, errno.EROFS}
"""Errors of a write the disk refused (stdout on a full disk, an export): exit 74 like a bundle write."""


def _unexpected(exc: BaseException) -> typer.Exit:
    if os.environ.get("MELO_DEBUG"):
        raise exc
    first = str(exc).splitlines()[0] if str(exc) else ""
    return fail(f"{type(exc).__name__}: {first} (set MELO_DEBUG=1 for the traceback)", 1)


def _option_names() -> set[str] | None:
    """The parameter names of the running command's options (what `--flag` a setting name means)."""
    import click

    context = click.get_current_context(silent=True)
    if context is None:
        return None
    return {p.name for p in context.command.params if isinstance(p, click.Option) and p.name}


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's last flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def strict(value: object) -> object:
    """The value with every NaN or infinity replaced by null: JSON has no such numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    return value


def emit_json(data: object) -> None:
    sys.stdout.write(json.dumps(strict(data), ensure_ascii=False, allow_nan=False) + "\n")
    sys.stdout.flush()
