"""Rows of a training batch grouped by length, so short rows are not padded to the longest one.

A batch of per-edit blocks mixes edit prompts (CounterFact on SmolLM2: 11-17 tokens with the target)
with the generic contexts each block also learns ("The answer is" + target: about 5 tokens). Padded
together, most of the context rows' positions are padding, and every frozen-prefix capture and every
training step pays for them. Two groups, each padded to its own longest row, cut the positions a
step computes by about 40% there. Every row's loss is the same function of the same tokens either
way; only the float rounding of a differently shaped batch differs.
"""

from __future__ import annotations

import torch

SAVING = 0.25
"""Split only when the two groups compute at least this share fewer positions than one padded batch:
each group is one more forward call per step, which a small saving does not pay for."""


def by_length(lengths: list[int], device: torch.device) -> list[list[int]]:
    """Row indices in one group, or two (shorter rows first) when that saves SAVING of the positions.

    On CUDA the rows stay in one batch: there a small model's step is bound by kernel launches, not
    by positions (SmolLM2 on an H200 in bfloat16), and a second call per step would double them.
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    whole = len(lengths) * max(lengths, default=0)
    if device.type == "cuda" or len(lengths) < 2:
        return [list(range(len(lengths)))]
    best, cut = whole, 0
    for split in range(1, len(order)):
        cost = split * lengths[order[split - 1]] + (len(order) - split) * lengths[order[-1]]
        if cost < best:
            best, cut = cost, split
    if cut == 0 or best > (1 - SAVING) * whole:
        return [list(range(len(lengths)))]
    return [sorted(order[:cut]), sorted(order[cut:])]
