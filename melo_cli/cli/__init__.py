"""The `melo` command: the typer app and its look (app, console), prompts from arguments, stdin or JSONL
(prompts), and one module per command group (edit, generate, evaluate, inspect, serve). Every command is
a shell over the Python API (melo_cli.api) or a job (melo_cli.jobs). Nothing outside cli/ imports it."""

from melo_cli.cli.main import app, main

__all__ = ["app", "main"]
