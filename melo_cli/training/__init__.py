"""One run of edits: the loop that trains a batch's blocks until learned (loop), the rows it trains
(rows), the pass that takes keys and captures the frozen prefix (capture), rows grouped by length
(length_groups), the run over batches (run) and the checks before and after (checks)."""

from melo_cli.training.checks import check_learned, check_targets, sort_new_edits
from melo_cli.training.loop import StepBudget, train_block, train_blocks
from melo_cli.training.run import (ENCODER_MAX_RADIUS, BatchReport, RunResult, edit_entities, ensure_router,
                                   run)

__all__ = ["ENCODER_MAX_RADIUS", "BatchReport", "RunResult", "StepBudget", "check_learned", "check_targets",
           "edit_entities", "ensure_router", "run", "sort_new_edits", "train_block", "train_blocks"]
