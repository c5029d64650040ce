"""Keys of new edits from the pass training needs anyway.

Base-model keys are pooled at the key layer, below the LoRA layers, so the no-grad pass that captures a
batch's frozen prefix (its edits with their targets) also yields its keys: a batch's frozen blocks run
once where they ran twice. That pass's logits are kept as a digest, which the first replayed training
step must reproduce bit for bit (a fresh block adds exact zeros), or training falls back to full passes.
"""

from __future__ import annotations

import numpy as np

from melo_cli.edits import Edit
from melo_cli.model import prefix
from melo_cli.model.edited_model import EditedModel
from melo_cli.training.loop import Prepared, prepare


CAPTURE_BUDGET = 512 * 2**20
"""Bytes of frozen-prefix output kept from the key pass until each batch trains (base-model keys):
past this, the remaining batches' keys come from a pass of their own and training captures again."""


def keys_and_prefixes(edited: EditedModel, new: list[Edit], groups: list[list[int]],
                       split: bool) -> tuple[np.ndarray, dict[int, Prepared]]:
    """Keys of the new edits and, where they can come from the frozen pass training needs anyway, that
    pass's captured prefix per batch (batch number -> its edits' rows, in group order).

    Base-model keys are pooled at the key layer, below the LoRA layers, so the no-grad pass that captures
    a batch's frozen prefix (its edits with their targets) also yields its keys: one pass where there
    were two. Encoder keys, full passes (`split` off), or no replayable prefix: one key pass, as before.
    """
    if not split or edited.encoder is not None or edited.frozen_prefix() is None:
        return edited.keys([e.input for e in new]), {}
    keys: list[np.ndarray | None] = [None] * len(new)
    ready, kept = {}, 0
    for number, group in enumerate(groups):
        inputs, targets = [new[p].input for p in group], [new[p].target for p in group]
        if kept > CAPTURE_BUDGET:
            found = edited.keys(inputs)
        else:
            ready[number] = prepared = prepare(edited, inputs, targets, split)
            found, logits = edited.capture_keys(prepared.model_inputs, prepared.key_mask, prepared.frozen)
            prepared.frozen.reference = prefix.digest(logits)  # what the first replayed step must reproduce
            kept += prepared.frozen.nbytes
        for position, key in zip(group, found):
            keys[position] = key
    return np.stack(keys).astype(np.float32) if keys else np.zeros((0, 0), np.float32), ready
