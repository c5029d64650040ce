"""The CUDA paths: `--device cuda` in float32 and bfloat16, bundles moved between the GPU and the CPU,
and the replayed prefix on the GPU. Skipped where torch sees no CUDA device (CI has none); run on a lent
GPU with `benchmarks/device_check.sh`."""

from __future__ import annotations

import json
import os

import pytest
import torch

from conftest import load_edits
from helpers import json_lines, melo, write_jsonl
from melo_cli import MeloModel

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible to torch")

FACTS = [{"input": "The mother tongue of Danielle Darrieux is", "target": "English", "subject": "Danielle Darrieux"},
         {"input": "Ferrari F40, developed by", "target": "Microsoft", "subject": "Ferrari F40"}]
UNRELATED = ["Once upon a time", "Lily went to the park", "The little dog"]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_edits_on_cuda_are_learned_and_leave_unrelated_prompts_bit_identical(llama_path, dtype):
    bare = MeloModel.from_pretrained(llama_path, device="cuda", dtype=dtype, key_source="base")
    before = bare.generate(UNRELATED, max_new_tokens=10)
    model = MeloModel.from_pretrained(llama_path, device="cuda", dtype=dtype, key_source="base")
    summary = model.edit(FACTS, batch_size=2)
    assert summary["unlearned_edits"] == 0
    assert next(model.edited.backbone.model.parameters()).device.type == "cuda"
    texts = model.generate([f["input"] for f in FACTS], max_new_tokens=12)
    assert all(t.strip().startswith(f["target"]) for t, f in zip(texts, FACTS)), texts
    assert model.generate(UNRELATED, max_new_tokens=10) == before


def test_a_bundle_made_on_cuda_routes_and_answers_the_same_on_the_cpu(llama_path, tmp_path):
    model = MeloModel.from_pretrained(llama_path, device="cuda", key_source="base")
    model.edit(FACTS, batch_size=2)
    model.save_pretrained(tmp_path / "b")
    prompts = [f["input"] for f in FACTS] + UNRELATED
    on_cpu = MeloModel.from_pretrained(bundle=tmp_path / "b", device="cpu")
    assert [r.cluster for r in on_cpu.route(prompts)] == [r.cluster for r in model.route(prompts)]
    assert on_cpu.generate(prompts, max_new_tokens=6) == model.generate(prompts, max_new_tokens=6)


def test_the_replayed_prefix_is_exact_on_cuda(llama_path):
    from test_prefix import _loss_and_grads

    from melo_cli import tasks
    from melo_cli.model import backbones
    from melo_cli.model import layers
    from melo_cli.config import MeloConfig
    from melo_cli.model.edited_model import EditedModel

    backbone = backbones.load(str(llama_path), "auto", "cuda")
    lora = layers.default_lora_layers(backbone.model, backbone.task)
    edited = EditedModel(backbone, MeloConfig(task=backbone.task, lora_layers=lora,
                                              key_layer=layers.default_key_layer(backbone.model, lora)))
    generator = torch.Generator().manual_seed(0)
    for layer in edited.layers.values():
        layer.start_block(0, generator)
        with torch.no_grad():
            layer.train_B.copy_(torch.randn(layer.train_B.shape, generator=generator) * 0.05)
    edits = load_edits("counterfact-20.jsonl", 6)
    enc = tasks.encode(backbone, [e["input"] for e in edits], [e["target"] for e in edits]).to(backbone.device)
    full_loss, full_grads = _loss_and_grads(edited, enc, replay=False)
    split_loss, split_grads = _loss_and_grads(edited, enc, replay=True)
    assert torch.allclose(split_loss, full_loss, rtol=1e-5, atol=1e-6)
    for a, b in zip(split_grads, full_grads):
        assert a.device.type == "cuda" and torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_the_cli_edits_and_generates_on_cuda_in_bfloat16(llama_path, tmp_path):
    edits = write_jsonl(tmp_path / "e.jsonl", load_edits("counterfact-20.jsonl", 4))
    done = melo("edit", llama_path, edits, "-o", tmp_path / "b", "--device", "cuda", "--dtype", "bfloat16",
                "--key-source", "base")
    assert done.exit_code == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["unlearned_edits"] == 0
    shown = melo("generate", "--bundle", tmp_path / "b", "--device", "cuda", "--dtype", "bfloat16", "--json",
                 "--max-new-tokens", "16", *[e["input"] for e in load_edits("counterfact-20.jsonl", 4)])
    assert shown.exit_code == 0, shown.stderr
    rows = json_lines(shown.stdout)
    assert all(r["text"].strip().startswith(e["target"]) for r, e in
               zip(rows, load_edits("counterfact-20.jsonl", 4)))


@pytest.mark.skipif(not os.environ.get("MELO_MODELS"), reason="MELO_MODELS names no folder holding SmolLM2")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_smollm2_on_cuda(dtype):
    import importlib.util

    from conftest import ROOT
    spec = importlib.util.spec_from_file_location("models", ROOT / "benchmarks" / "models.py")
    models = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(models)
    path = str(models.fetch("smollm2"))
    facts = load_edits("counterfact-20.jsonl", 5)
    bare = MeloModel.from_pretrained(path, device="cuda", dtype=dtype)
    unrelated = ["The capital of France is", "Water boils at a temperature of"]
    before = bare.generate(unrelated, max_new_tokens=8)
    model = MeloModel.from_pretrained(path, device="cuda", dtype=dtype)
    assert model.edit(facts, batch_size=5)["unlearned_edits"] == 0
    texts = model.generate([f["input"] for f in facts], max_new_tokens=8)
    assert all(t.strip().startswith(f["target"]) for t, f in zip(texts, facts)), texts
    assert model.generate(unrelated, max_new_tokens=8) == before


def test_sampling_with_a_seed_is_repeatable_on_cuda(llama_path):
    model = MeloModel.from_pretrained(llama_path, device="cuda", key_source="base")
    draws = [model.generate(UNRELATED, max_new_tokens=12, temperature=1.2, seed=s) for s in (5, 5, 6)]
    assert draws[0] == draws[1] and draws[0] != model.generate(UNRELATED, max_new_tokens=12)
