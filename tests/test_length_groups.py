"""Rows grouped by length: the grouping rule, and that a grouped batch trains what one padded batch trains."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from conftest import load_edits
from melo_cli import training
from melo_cli.model import backbones
from melo_cli.model import layers
from melo_cli.training import length_groups
from melo_cli.config import CONTEXTS, MeloConfig
from melo_cli.model.edited_model import EditedModel

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def _positions(lengths, groups):
    return sum(len(g) * max(lengths[i] for i in g) for g in groups)


def test_edit_prompts_and_short_contexts_are_padded_apart():
    lengths = [15, 13, 14] + [5, 6, 5, 4, 6, 5] * 5
    groups = length_groups.by_length(lengths, CPU)
    assert len(groups) == 2 and groups[1] == [0, 1, 2]  # shorter rows first, each group in row order
    assert _positions(lengths, groups) == 30 * 6 + 3 * 15


def test_one_group_when_the_saving_is_small_or_on_cuda():
    assert length_groups.by_length([10, 11, 12, 12], CPU) == [[0, 1, 2, 3]]
    assert length_groups.by_length([15, 15, 15] + [5] * 30, CUDA) == [list(range(33))]
    assert length_groups.by_length([7], CPU) == [[0]]
    assert length_groups.by_length([], CPU) == [[]]


@given(st.lists(st.integers(1, 40), min_size=1, max_size=60))
def test_every_row_once_and_the_cheapest_cut(lengths):
    groups = length_groups.by_length(lengths, CPU)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    whole = len(lengths) * max(lengths)
    ranked = sorted(lengths)
    best = min([whole] + [k * ranked[k - 1] + (len(ranked) - k) * ranked[-1] for k in range(1, len(ranked))])
    if len(groups) == 2:
        assert max(lengths[i] for i in groups[0]) <= min(lengths[i] for i in groups[1])
        assert _positions(lengths, groups) == best <= (1 - length_groups.SAVING) * whole
    else:
        assert best > (1 - length_groups.SAVING) * whole


def test_a_grouped_batch_trains_what_one_padded_batch_trains(llama_path, monkeypatch):
    """Per-edit blocks with their generic contexts, trained from the same start: grouped by length (and
    replayed above the frozen layers) vs one padded batch of full passes. Same steps, same hits, the
    same weights to float rounding."""
    edits = load_edits("counterfact-20.jsonl", 4)
    inputs, targets, blocks = [], [], []
    for block, e in enumerate(edits):
        inputs += [e["input"], *CONTEXTS[:5]]
        targets += [e["target"]] * 6
        blocks += [block] * 6
    grouped = []
    real = length_groups.by_length
    monkeypatch.setattr(length_groups, "by_length", lambda *a: grouped.append(real(*a)) or grouped[-1])
    results = []
    for split in (True, False):
        backbone = backbones.load(str(llama_path), "auto", "cpu")
        lora = layers.default_lora_layers(backbone.model, backbone.task)
        edited = EditedModel(backbone, MeloConfig(task=backbone.task, lora_layers=lora, block_dtype="float32",
                                                  key_layer=layers.default_key_layer(backbone.model, lora)))
        # float32 blocks: on the float16 grid, float rounding can land on a neighbouring grid point
        steps, loss, hits = training.train_blocks(edited, 0, len(edits), inputs, targets, blocks,
                                                  torch.Generator().manual_seed(0), split)
        weights = [t.detach().clone() for layer in edited.layers.values() for t in (layer.lora_A, layer.lora_B)]
        results.append((steps, loss, hits, weights))
    assert len(grouped) == 1 and len(grouped[0]) == 2  # the split run did group the rows
    (steps_a, loss_a, hits_a, w_a), (steps_b, loss_b, hits_b, w_b) = results
    assert steps_a == steps_b >= 2 and hits_a == hits_b and all(hits_a)
    assert abs(loss_a - loss_b) <= 1e-4 * max(1.0, abs(loss_b))
    for a, b in zip(w_a, w_b):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-5)
