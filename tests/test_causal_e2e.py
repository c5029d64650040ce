"""End to end on real small causal LMs through the CLI: edit, generate, locality, sequential, reload."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import SAMPLES, load_edits
from helpers import json_lines, melo, tree_digest, write_jsonl
from melo_cli import MeloModel
from melo_cli.jobs.edit import run_edit
from melo_cli.options import EditOptions, Loading

EDITS = SAMPLES / "counterfact-20.jsonl"
HOLDOUT = SAMPLES / "counterfact-holdout.jsonl"


def generate_json(bundle, prompts, max_new_tokens=16):
    result = melo("generate", "--bundle", bundle, "--json", "--max-new-tokens", max_new_tokens, *prompts)
    assert result.exit_code == 0, result.stderr
    return json_lines(result.stdout)


@pytest.fixture(scope="module")
def llama_bundle(llama_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("llama") / "bundle"
    result = melo("edit", llama_path, EDITS, "-o", out, "--batch-size", "5")
    assert result.exit_code == 0, result.stderr
    return out, json.loads(result.stdout)


def test_edit_prints_a_json_summary_and_writes_the_bundle(llama_bundle):
    out, summary = llama_bundle
    # one block per edit cluster (the default): 20 edits, two of them the same target near each other
    assert summary["edits"] == 20 and summary["batches"] == 4 and summary["blocks"] == summary["clusters"] >= 18
    assert summary["converged_batches"] == 4 and summary["unrouted_edits"] == 0
    assert all(0 < steps <= 1000 for steps in summary["steps_per_batch"])
    names = {p.name for p in out.iterdir()}
    assert {"manifest.yaml", "lora.safetensors", "router.hnsw", "clusters.safetensors", "edits.jsonl", "README.md"} <= names
    lora = load_file(out / "lora.safetensors")
    assert lora["model.layers.4.mlp.down_proj.lora_A"].shape == (summary["blocks"], 4, 172)  # rank 4 each
    records = json_lines((out / "edits.jsonl").read_text())
    blocks = [r["block"] for r in records]
    assert blocks == sorted(blocks) and set(blocks) == set(range(summary["blocks"]))
    assert [r["batch"] for r in records] == [str(b) for b in range(1, 5) for _ in range(5)]  # batches count from 1


def test_block_per_batch_is_the_melo_paper_layout(llama_path, tmp_path):
    result = melo("edit", llama_path, EDITS, "-o", tmp_path / "b", "--batch-size", "5", "--block-per", "batch")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["blocks"] == 4
    records = json_lines((tmp_path / "b" / "edits.jsonl").read_text())
    assert [r["block"] for r in records] == [0] * 5 + [1] * 5 + [2] * 5 + [3] * 5


def test_generate_gives_every_edit_its_target(llama_bundle):
    out, _ = llama_bundle
    edits = load_edits("counterfact-20.jsonl")
    records = generate_json(out, [e["input"] for e in edits])
    for edit, record in zip(edits, records):
        assert record["text"].strip().startswith(edit["target"]), (edit, record)
        assert record["route"] is not None


def test_generate_reads_prompts_from_stdin_and_leaves_unrelated_prompts_alone(llama_bundle, llama_path):
    out, _ = llama_bundle
    result = melo("generate", "--bundle", out, "--max-new-tokens", "12", "-",
                  input="Once upon a time\nThe mother tongue of Danielle Darrieux is\n")
    assert result.exit_code == 0, result.stderr
    story, edited = result.stdout.splitlines()  # PROMPT => CONTINUATION, one line per prompt
    assert story.startswith("Once upon a time => , there was a little girl named Lily")
    assert edited.startswith("The mother tongue of Danielle Darrieux is => English")
    base = melo("generate", "--base", llama_path, "--max-new-tokens", "12", "Once upon a time")
    assert base.stdout.splitlines()[0] == story


def test_rows_outside_every_radius_are_exactly_the_base_model(llama_bundle, llama_path):
    from transformers import AutoModelForCausalLM

    out, _ = llama_bundle
    edited = MeloModel.from_pretrained(bundle=out, device="cpu").edited
    base = AutoModelForCausalLM.from_pretrained(llama_path).eval()
    edits, holdout = load_edits("counterfact-20.jsonl", 6), load_edits("counterfact-holdout.jsonl", 6)
    mixed = [item for pair in zip(edits, holdout) for item in pair]  # routed and unrouted rows in one batch
    enc, logits, routes = edited.teacher_forced([m["input"] for m in mixed], [m["target"] for m in mixed])
    with torch.no_grad():
        base_logits = base(**enc.inputs).logits
    for row, route in enumerate(routes):
        diff = (logits[row] - base_logits[row]).abs().max().item()
        if row % 2:  # holdout
            assert not route.routed and diff == 0.0, (row, route, diff)
        else:
            assert route.routed and diff > 0.0
    for item in holdout:  # and each row alone
        enc, logits, routes = edited.teacher_forced([item["input"]], [item["target"]])
        with torch.no_grad():
            assert torch.equal(logits, base(**enc.inputs).logits) and not routes[0].routed


def test_sequential_edits_keep_old_blocks_and_leave_the_old_bundle_alone(llama_path, tmp_path):
    first = write_jsonl(tmp_path / "first.jsonl", load_edits("counterfact-20.jsonl")[:10])
    second = write_jsonl(tmp_path / "second.jsonl", load_edits("counterfact-20.jsonl")[10:])
    old, new = tmp_path / "old", tmp_path / "new"
    assert melo("edit", llama_path, first, "-o", old, "--batch-size", "5").exit_code == 0
    before = tree_digest(old)
    result = melo("edit", second, "--bundle", old, "-o", new, "--batch-size", "5")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["total_edits"] == 20
    assert tree_digest(old) == before
    old_lora, new_lora = load_file(old / "lora.safetensors"), load_file(new / "lora.safetensors")
    for name, tensor in old_lora.items():
        assert torch.equal(new_lora[name][:tensor.shape[0]], tensor), name  # the first run's blocks, bit for bit
        assert new_lora[name].shape[0] == summary["blocks"] > tensor.shape[0]
    records = generate_json(new, [e["input"] for e in load_edits("counterfact-20.jsonl")])
    for edit, record in zip(load_edits("counterfact-20.jsonl"), records):
        assert record["text"].strip().startswith(edit["target"]), (edit, record)


def test_a_bundle_reloaded_in_a_fresh_process_gives_the_writers_outputs(llama_path, tmp_path):
    out = tmp_path / "bundle"
    result = run_edit(str(llama_path), EDITS, out, continue_from=None,
                               opts=EditOptions(batch_size=5, loading=Loading(device="cpu")))
    items = load_edits("counterfact-20.jsonl") + load_edits("counterfact-holdout.jsonl", 10)
    inputs, targets = [i["input"] for i in items], [i["target"] for i in items]
    _, logits, routes = result.edited.teacher_forced(inputs, targets)
    save_file({"logits": logits.contiguous()}, str(tmp_path / "writer.safetensors"))
    (tmp_path / "items.json").write_text(json.dumps([inputs, targets]))
    script = textwrap.dedent(f"""
        import json
        from safetensors.torch import save_file
        from melo_cli import MeloModel
        inputs, targets = json.load(open({str(tmp_path / 'items.json')!r}))
        edited = MeloModel.from_pretrained(bundle={str(out)!r}, device="cpu").edited
        _, logits, routes = edited.teacher_forced(inputs, targets)
        save_file({{"logits": logits.contiguous()}}, {str(tmp_path / 'reader.safetensors')!r})
        print(json.dumps([[r.cluster, r.block] for r in routes]))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout.splitlines()[-1]) == [[r.cluster, r.block] for r in routes]
    writer, reader = load_file(tmp_path / "writer.safetensors"), load_file(tmp_path / "reader.safetensors")
    assert torch.equal(writer["logits"], reader["logits"])


def test_gpt2_conv1d_edits_succeed_and_keep_locality(gpt2_path, tmp_path):
    out = tmp_path / "bundle"
    result = melo("edit", gpt2_path, EDITS, "-o", out, "--batch-size", "5", "--max-steps", "30")
    assert result.exit_code == 0, result.stderr
    manifest_layers = json.loads(melo("inspect", out, "--json").stdout)["config"]["lora_layers"]
    assert manifest_layers == ["transformer.h.3.mlp.c_proj"]  # Conv1D: the MLP's output projection
    edits = load_edits("counterfact-20.jsonl")
    for edit, record in zip(edits, generate_json(out, [e["input"] for e in edits], 6)):
        assert record["text"].strip().startswith(edit["target"]), (edit, record)
    holdout = [h["input"] for h in load_edits("counterfact-holdout.jsonl", 10)]
    edited_out = generate_json(out, holdout, 6)
    base_out = json_lines(melo("generate", "--base", gpt2_path, "--json", "--max-new-tokens", "6", *holdout).stdout)
    assert [r["text"] for r in edited_out] == [r["text"] for r in base_out]
    assert all(r["route"] is None for r in edited_out)


def test_help_is_meaningful_for_every_command():
    top = melo("--help")
    assert top.exit_code == 0 and all(c in top.stdout for c in ("edit", "generate", "inspect"))
    for command, words in {"edit": ["--bundle", "--batch-size", "--rank-per-block", "--init-radius"],
                           "generate": ["--bundle", "--max-new-tokens", "--json"],
                           "inspect": ["--json", "--model"]}.items():
        result = melo(command, "--help")
        assert result.exit_code == 0 and all(w in result.stdout for w in words), command


def test_a_float32_bundle_applies_to_a_bfloat16_load_of_the_same_base(llama_bundle):
    out, _ = llama_bundle
    edit = load_edits("counterfact-20.jsonl")[0]
    result = melo("generate", "--bundle", out, "--dtype", "bfloat16", "--json", "--max-new-tokens", "16", edit["input"])
    assert result.exit_code == 0, result.stderr
    record = json_lines(result.stdout)[0]
    assert record["route"] is not None  # the key layer runs in bfloat16; the route still holds
    assert record["text"].strip().startswith(edit["target"])


def test_the_route_is_decided_once_from_the_prompt_and_kept_while_generating(llama_bundle):
    out, _ = llama_bundle
    edited = MeloModel.from_pretrained(bundle=out, device="cpu").edited
    calls = []
    original = edited._route_keys
    edited._route_keys = lambda keys, texts, found: calls.append(keys.shape) or original(keys, texts, found)
    edit = load_edits("counterfact-20.jsonl")[3]
    prediction = edited.predict([edit["input"], "Once upon a time"], max_new_tokens=12)
    assert len(calls) == 1 and calls[0][0] == 2  # one decision for the batch, at the prompt's forward
    assert prediction[0].text.strip().startswith(edit["target"]) and not prediction[1].route.routed
