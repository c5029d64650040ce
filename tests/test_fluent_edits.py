"""Edits that answer and then hand back (issue 23): an edited continuation gives its target once, then the
base model continues; `melo eval` measures it. On main every routed continuation repeated its target
("Japan Japan Japan ...") and eval had no number that could see it."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import SAMPLES, load_edits
from helpers import json_lines, melo
from melo_cli import tasks
from melo_cli import MeloModel
from melo_cli.eval.metrics import produces
from melo_cli.eval.fluency import mean_entropy, ngram_entropy, repeats
from melo_cli.model.generation import Decoding


@pytest.fixture(scope="module")
def bundle(llama_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("fluent") / "bundle"
    result = melo("edit", llama_path, SAMPLES / "counterfact-20.jsonl", "-o", out)
    assert result.exit_code == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def edited(bundle):
    return MeloModel.from_pretrained(bundle=bundle, device="cpu").edited


def _degenerate(text: str, target: str) -> bool:
    """The target given twice in a row, or text of almost no distinct n-grams (a stutter)."""
    return repeats(text, target) or ngram_entropy(text) < 1.0


def test_the_measures():
    assert ngram_entropy("English English English English English") == 0.0
    assert ngram_entropy("the cat sat on the mat and then it ran away") > 3
    assert mean_entropy([]) is None
    for text, target in [("English English", "English"), ("Jane Doe Jane Doe", "Jane Doe"),
                         ("Frank Herbert Herbert Herbert", "Frank Herbert"), ("Prague, Prague", "Prague")]:
        assert repeats(text, target), text
    for text, target in [("English. She is English", "English"), ("Toyota, a 2018 Toyota Corolla", "Toyota"),
                         ("Englishman", "English"), ("1989 1999 1999", "1989")]:
        assert not repeats(text, target), text


def test_an_edited_continuation_gives_its_target_once_then_the_base_model_continues(edited):
    edits = load_edits("counterfact-20.jsonl")
    prompts = [e["input"] for e in edits] + [e["rephrases"][0] for e in edits]
    targets = [e["target"] for e in edits] * 2
    on = edited.predict(prompts, max_new_tokens=30)
    off = edited.predict(prompts, max_new_tokens=30, decoding=Decoding(handoff=False))
    routed = [i for i, p in enumerate(on) if p.route.routed and produces(on[i].text, targets[i])]
    assert len(routed) >= 30
    assert not [on[i].text for i in routed if repeats(on[i].text, targets[i])]
    # the block left on, what main did: the target repeated, or stuttered into one token ("Englishhhh")
    assert sum(_degenerate(off[i].text, targets[i]) for i in routed) >= len(routed) // 2
    assert not [on[i].text for i in routed if _degenerate(on[i].text, targets[i])]
    assert mean_entropy([on[i].text for i in routed]) > 2 * mean_entropy([off[i].text for i in routed])


def test_what_follows_the_target_is_exactly_the_base_models_continuation(edited):
    """The handed-back row continues on the base model alone from the prompt and the tokens so far."""
    prompt = "The mother tongue of Danielle Darrieux is"
    (pred,) = edited.predict([prompt], max_new_tokens=24)
    assert pred.route.routed and pred.text.strip().startswith("English")
    backbone = edited.backbone
    tok = backbone.tokenizer
    target_ids = tasks.encode(backbone, [prompt], ["English"]).targets[0]
    head = tok(prompt)["input_ids"] + [t for t in target_ids.tolist() if t >= 0]
    with torch.no_grad():
        out = backbone.model.generate(torch.tensor([head]), attention_mask=torch.ones(1, len(head), dtype=torch.long),
                                      max_new_tokens=24 - (len(head) - len(tok(prompt)["input_ids"])),
                                      do_sample=False, pad_token_id=backbone.pad_id)
    assert pred.text == tok.decode(out[0, len(tok(prompt)["input_ids"]):], skip_special_tokens=True)


def test_eval_reports_fluency_and_gates_it(bundle):
    result = melo("eval", "--bundle", bundle, "--mode", "generate", "--format", "json")
    assert result.exit_code == 0, result.stderr
    fluency = json.loads(result.stdout)["fluency"]
    assert fluency["tokens"] == 40 and fluency["continuations"] >= 30
    assert fluency["repeats"] == 0.0 and fluency["ratio"] >= 0.9
    assert fluency["edited_entropy"] > 2 and fluency["base_entropy"] > 2
    # the ceiling: the bare model after the same targets; the edited text is the base model's from the target on
    assert fluency["oracle_entropy"] > 2 and fluency["oracle_ratio"] == pytest.approx(
        fluency["oracle_entropy"] / fluency["base_entropy"], abs=1e-3)
    assert abs(fluency["ratio"] - fluency["oracle_ratio"]) < 0.1
    gated = melo("eval", "--bundle", bundle, "--mode", "generate", "--min-fluency", "1.5", "--fluency-tokens", "20")
    assert gated.exit_code == 3 and "fluency" in gated.stderr
    assert melo("eval", "--bundle", bundle, "--mode", "teacher-forced", "--min-fluency", "0.9").exit_code == 2
    table = melo("eval", "--bundle", bundle, "--mode", "generate", "--fluency-tokens", "10").stdout
    assert "fluency" in table and "targets repeated" in table and "ceiling" in table


def test_no_handoff_keeps_the_block_on(bundle):
    edits = load_edits("counterfact-20.jsonl")
    off, on = (json_lines(melo("generate", "--bundle", bundle, "--json", *flag, "--max-new-tokens", "20",
                               *[e["input"] for e in edits]).stdout) for flag in (["--no-handoff"], []))
    assert sum(_degenerate(r["text"], e["target"]) for r, e in zip(off, edits)) >= len(edits) // 2
    assert not any(_degenerate(r["text"], e["target"]) for r, e in zip(on, edits))
