"""Tasks: one object per kind of model (melo_cli/tasks/<name>.py), chosen from TASKS by name.

Adding a task is one new file with a Task subclass and one line in TASKS. The functions below are
what the rest of melo calls; each asks the backbone's task.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import IGNORE, Encoded, Task, positions
from .causal_lm import CausalLM, causal_target_ids, joiner
from .classification import Classification, label_id
from .seq2seq import Seq2Seq

if TYPE_CHECKING:
    import torch

TASKS: dict[str, Task] = {task.name: task for task in (CausalLM(), Seq2Seq(), Classification())}

__all__ = ["IGNORE", "TASKS", "Encoded", "Task", "causal_target_ids", "encode", "joiner", "label_id", "narrowed",
           "positions", "rows_of", "score", "task_of", "token_nll"]


def task_of(backbone) -> Task:
    """The backbone's resolved Task (it holds the object: tasks never import the backbone)."""
    return backbone.kind


def encode(backbone, inputs: list[str], targets: list[str] | None = None) -> Encoded:
    """Tensors for a batch; with targets, ready for a teacher-forced loss."""
    return task_of(backbone).encode(backbone, inputs, targets)


def narrowed(backbone, enc: Encoded):
    """(forward kwargs, targets, aligned): logits only where targets are scored, where the task allows."""
    return task_of(backbone).narrowed(backbone, enc)


def rows_of(enc: Encoded) -> "torch.Tensor":
    """For `narrowed` targets: the batch row of each scored position."""
    keep = enc.targets[:, 1:] != IGNORE
    return keep.nonzero()[:, 0]


def score(backbone, logits, targets, aligned: bool = False, rows=None):
    """(loss per row, every-target-token-is-argmax per row) for teacher-forced logits."""
    return task_of(backbone).score(logits, targets, aligned, rows)


def token_nll(backbone, logits, targets):
    """(summed negative log-likelihood, number of target tokens) per row, for perplexity."""
    return task_of(backbone).token_nll(logits, targets)
