"""Training above the frozen layers is exact: the replayed prefix gives the full pass's loss and gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import load_edits
from melo_cli import tasks
from melo_cli.model import backbones
from melo_cli.model import layers
from melo_cli.model import prefix
from melo_cli.config import MeloConfig
from melo_cli.model.edited_model import EditedModel


def _edited(path, task="auto"):
    backbone = backbones.load(str(path), task, "cpu")
    lora = layers.default_lora_layers(backbone.model, backbone.task)
    config = MeloConfig(task=backbone.task, lora_layers=lora, key_layer=layers.default_key_layer(backbone.model, lora))
    return EditedModel(backbone, config)


def _loss_and_grads(edited, enc, replay: bool):
    backbone = edited.backbone
    inputs, targets, aligned = tasks.narrowed(backbone, enc)
    params = [p for layer in edited.layers.values() for p in (layer.train_A, layer.train_B)]
    ids = torch.zeros(enc.inputs["input_ids"].shape[0], dtype=torch.long, device=backbone.device)
    frozen = prefix.frozen_prefix(backbone.model, edited.config.lora_layers)
    assert frozen is not None and frozen.k >= 1
    with edited.with_blocks(ids), torch.enable_grad():
        if replay:
            with torch.no_grad(), frozen.capturing():
                edited.forward(inputs)
            with frozen.replaying():
                logits = edited.forward(inputs).logits
        else:
            logits = edited.forward(inputs).logits
        loss = tasks.score(backbone, logits, targets, aligned, tasks.rows_of(enc) if aligned else None)[0].mean()
        grads = torch.autograd.grad(loss, params)
    return loss.detach(), grads


@pytest.mark.parametrize("model", ["llama", "gpt2", "t5-relu", "t5-gated-gelu", "bert"])
def test_replayed_prefix_gives_the_same_loss_and_gradients(model, llama_path, gpt2_path, t5_paths, bert_path):
    path = {"llama": llama_path, "gpt2": gpt2_path, "t5-relu": t5_paths["relu"],
            "t5-gated-gelu": t5_paths["gated-gelu"], "bert": bert_path}[model]
    edited = _edited(path)
    generator = torch.Generator().manual_seed(0)
    for layer in edited.layers.values():
        layer.start_block(0, generator)
        with torch.no_grad():
            layer.train_B.normal_(0, 0.05, generator=generator)  # a block that already does something
    sample = "classification-20.jsonl" if model == "bert" else "counterfact-20.jsonl"
    edits = load_edits(sample, 6)
    enc = tasks.encode(edited.backbone, [e["input"] for e in edits], [e["target"] for e in edits])
    full_loss, full_grads = _loss_and_grads(edited, enc, replay=False)
    split_loss, split_grads = _loss_and_grads(edited, enc, replay=True)
    assert torch.allclose(split_loss, full_loss, rtol=1e-6, atol=1e-7), (split_loss, full_loss)
    for a, b in zip(split_grads, full_grads):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
    assert any(g.abs().sum() > 0 for g in full_grads)


def test_the_replay_is_checked_after_the_capture_and_a_mismatch_falls_back(llama_path):
    edited = _edited(llama_path)
    frozen = prefix.frozen_prefix(edited.backbone.model, edited.config.lora_layers)
    outputs = iter([torch.ones(2, 3), torch.zeros(2, 3), torch.ones(2, 3), torch.ones(2, 3)])

    def forward():  # no block runs here, so give the replay something to hold
        frozen.captured = torch.zeros(1)
        return next(outputs)

    step = prefix.train_steps(frozen, forward)
    assert torch.equal(step(0), torch.ones(2, 3))  # capture gave ones, the replay zeros: redone in full
    assert frozen.trusted is False and "differ" in frozen.reason
    assert torch.equal(step(1), torch.ones(2, 3))  # so step 1 is a full pass too


def test_a_real_batch_is_trained_above_the_frozen_layers(llama_path):
    from melo_cli import training

    edited = _edited(llama_path)
    seen = []
    original = prefix.FrozenPrefix.replaying

    def spy(self):
        seen.append(self.trusted)
        return original(self)

    prefix.FrozenPrefix.replaying = spy
    try:
        edits = load_edits("counterfact-20.jsonl", 5)
        steps, _, hits = training.train_block(edited, 0, [e["input"] for e in edits], [e["target"] for e in edits],
                                            torch.Generator().manual_seed(0))
    finally:
        prefix.FrozenPrefix.replaying = original
    assert all(hits) and steps >= 2
    assert len(seen) == steps + 1 and all(t is not False for t in seen)  # every forward, steps 0..n


def test_no_prefix_when_lora_starts_in_the_first_block(llama_path):
    edited = _edited(llama_path)
    assert prefix.frozen_prefix(edited.backbone.model, ["model.layers.0.mlp.down_proj"]) is None
    assert prefix.frozen_prefix(edited.backbone.model, ["model.layers.3.mlp.down_proj"]).k == 3


def test_narrowed_logits_score_what_all_logits_score_and_older_transformers_get_all_logits(llama_path, monkeypatch):
    """The (batch, seq) boolean `logits_to_keep` goes only to models whose module slices with
    transformers' `slice_logits_to_keep` (transformers 5.17 indexed with it and crashed, seen on a GPU
    image); without it the full logits are scored, to the same loss."""
    import sys

    from melo_cli.tasks.causal_lm import keeps_logits_by_mask

    edited = _edited(llama_path)
    backbone = edited.backbone
    generator = torch.Generator().manual_seed(0)
    for layer in edited.layers.values():
        layer.start_block(0, generator)
        with torch.no_grad():
            layer.train_B.normal_(0, 0.05, generator=generator)
    edits = load_edits("counterfact-20.jsonl", 4)
    enc = tasks.encode(backbone, [e["input"] for e in edits], [e["target"] for e in edits])
    losses = []
    has_helper = hasattr(sys.modules[type(backbone.model).__module__], "slice_logits_to_keep")  # 5.17 has not
    assert keeps_logits_by_mask(backbone.model) is has_helper
    older = type("OldLlama", (type(backbone.model),), {"__module__": "an_old_transformers_model"})
    sys.modules["an_old_transformers_model"] = type(sys)("an_old_transformers_model")  # no helper in it
    try:
        assert not keeps_logits_by_mask(older.__new__(older))
    finally:
        del sys.modules["an_old_transformers_model"]
    for narrowing in (has_helper, False):
        if not narrowing:
            monkeypatch.setattr("melo_cli.tasks.causal_lm.keeps_logits_by_mask", lambda model: False)
        inputs, targets, aligned = tasks.narrowed(backbone, enc)
        assert aligned is narrowing and ("logits_to_keep" in inputs) is narrowing
        with edited.with_blocks(torch.zeros(len(edits), dtype=torch.long)), torch.no_grad():
            logits = edited.forward(inputs).logits
        losses.append(tasks.score(backbone, logits, targets, aligned, tasks.rows_of(enc) if aligned else None)[0])
    assert torch.allclose(losses[0], losses[1], rtol=1e-5, atol=1e-6)


def _paper_layout(path):
    backbone = backbones.load(str(path), "auto", "cpu")
    lora = layers.default_lora_layers(backbone.model, backbone.task)
    config = MeloConfig(task=backbone.task, lora_layers=lora, key_layer=layers.default_key_layer(backbone.model, lora),
                        key_source="base", metric="euclidean", radius_policy="split", margin=0.0, block_per="batch", entities="off")  # the paper has no entity check
    return EditedModel(backbone, config)


@pytest.mark.parametrize("model,one_pass", [("llama", True), ("llama", False), ("gpt2", True), ("bert", True)])
def test_base_model_keys_come_from_the_frozen_pass_training_replays(model, one_pass, llama_path, gpt2_path, bert_path,
                                                                    monkeypatch):
    """With base-model keys, one no-grad pass per batch both takes the keys and captures the prefix that
    training replays (before: a key pass and a capture pass). The keys are the key pass's keys to float
    rounding, and the first replayed step matched the pass's logits digest (a mismatch would fall back to
    full passes, and the frozen blocks would run at every step)."""
    from melo_cli import training
    from melo_cli.edits import Edit

    if not one_pass:
        monkeypatch.setattr("melo_cli.training.capture.CAPTURE_BUDGET", -1)  # keys from a pass of their own, as before
    edited = _paper_layout({"llama": llama_path, "gpt2": gpt2_path, "bert": bert_path}[model])
    stack = layers.block_stacks(edited.backbone.model)[0][1]
    frozen_passes = []
    next(stack[0].children()).register_forward_hook(lambda *a: frozen_passes.append(1))  # idle while replayed
    sample = "classification-20.jsonl" if model == "bert" else "counterfact-20.jsonl"
    edits = [Edit(e["input"], e["target"]) for e in load_edits(sample, 12)]
    groups = [list(range(0, 6)), list(range(6, 12))]
    result = training.run(edited, [], edits, groups)
    assert not result.unlearned or model != "llama"  # the random tiny GPT-2 and BERT need not learn
    moved = sum(1 for r in result.reports if r.replayed)  # a batch that also retrains an earlier edit captures it
    assert len(frozen_passes) == 2 + moved if one_pass else len(frozen_passes) >= 4  # one per batch; else 2+ per batch
    members = edited.router.member_keys[:len(edits)]
    assert np.allclose(members, edited.keys([e.input for e in edits]), rtol=1e-4, atol=1e-5)


def test_a_prefix_captured_ahead_that_does_not_replay_its_digest_falls_back(llama_path):
    edited = _edited(llama_path)
    frozen = prefix.frozen_prefix(edited.backbone.model, edited.config.lora_layers)
    frozen.captured, frozen.reference = torch.zeros(1), prefix.digest(torch.ones(2, 3))
    full = iter([torch.zeros(2, 3), torch.full((2, 3), 7.0)])  # the replay gives zeros, the redo a full pass
    step = prefix.train_steps(frozen, lambda: next(full))
    assert torch.equal(step(0), torch.full((2, 3), 7.0)) and frozen.trusted is False
    assert prefix.digest(torch.tensor([-0.0, 1.0])) == prefix.digest(torch.tensor([0.0, 1.0]))
