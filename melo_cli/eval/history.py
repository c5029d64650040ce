"""Retention over time: every K batches of an edit run, a row of edit success of the batch just trained,
of every earlier edit, and locality on a holdout (teacher-forced), for the bundle's history.jsonl
(`melo edit --eval-every K`, `melo eval --history`)."""

from __future__ import annotations

import logging
import time
from typing import Callable

from melo_cli.edits import Edit, Holdout
from melo_cli.eval import metrics

log = logging.getLogger("melo")


def recorder(edited, old: list[Edit], new: list[Edit], groups: list[list[int]], holdout: list[Holdout],
             rows: list[dict], every: int, started: float, batches_done: int,
             on_batch: Callable | None) -> Callable:
    """An on_batch callback that passes each report on and appends a retention row every `every` batches."""

    def record(report) -> None:
        if on_batch is not None:
            on_batch(report)
        if not every or (report.batch + 1) % every:
            return
        current = [new[p] for p in groups[report.batch]]
        earlier = old + [new[p] for g in groups[:report.batch] for p in g]
        row = {"batches": batches_done + report.batch + 1, "edits": len(earlier) + len(current),
               "edit_success": metrics.success(edited, current),
               "retention": metrics.success(edited, earlier),
               "locality": metrics.locality(edited, holdout)[0] if holdout else None,
               "seconds": round(time.perf_counter() - started, 3)}
        rows.append(row)
        log.info("history: %s", row)

    return record
