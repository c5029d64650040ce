"""The one clock melo stamps records with: UTC, to the second, ISO 8601 (edits.jsonl, history, manifests)."""

from __future__ import annotations

import datetime as dt


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()
