"""Helpers for end-to-end tests: run the CLI in-process and read its JSON."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from typer.testing import CliRunner

from melo_cli.cli import app


def melo(*args: str, input: str | None = None, env: dict | None = None):
    """Run `melo ARGS` in-process; returns the click Result (stdout and stderr kept apart)."""
    return CliRunner().invoke(app, [str(a) for a in args], input=input, env=env, catch_exceptions=False)


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def tree_digest(path: Path) -> dict[str, str]:
    """sha256 of every file under a directory, by relative path."""
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path
