"""melo eval's shortcuts give the answers of the long way, on a real model (the tiny Llama).

- generate mode decides a hit teacher-forced first and decodes only the rows that miss;
- locality runs only the rows the router sends to a block (the others run the base model anyway);
- the base perplexity replays the frozen prefix of the routed pass instead of a second full pass.
"""

from __future__ import annotations

import pytest

from conftest import load_edits
from helpers import melo, write_jsonl
from melo_cli.eval import metrics as evaluate
from melo_cli import MeloModel
from melo_cli.edits import Edit, Holdout


@pytest.fixture(scope="module")
def opened(llama_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("shortcuts")
    records = load_edits("counterfact-20.jsonl", 12)
    edits = write_jsonl(root / "e.jsonl", records)
    assert melo("edit", llama_path, edits, "-o", root / "b", "--key-source", "base").exit_code == 0
    edited = MeloModel.from_pretrained(bundle=root / "b").edited
    return records, edited


def test_generate_mode_hits_equal_full_decoding(opened):
    records, edited = opened
    inputs = [r["input"] for r in records] + [p for r in records for p in r.get("rephrases", [])]
    targets = [r["target"] for r in records] + [r["target"] for r in records for _ in r.get("rephrases", [])]
    inputs += ["Once upon a time", "The cat sat on the"]
    targets += ["there was", "mat"]  # unrouted rows: the base model, whose hits differ
    quick = evaluate.scored(edited, "generate", inputs, targets, True, 8, lambda n: None)
    full = evaluate.generated(edited, inputs, targets, True, 8)
    assert [o.hit for o in quick] == [o.hit for o in full]
    assert [o.route.block for o in quick] == [o.route.block for o in full]
    assert any(o.hit for o in quick) and not all(o.hit for o in quick)


@pytest.mark.parametrize("mode", ["teacher-forced", "generate"])
def test_locality_from_routed_rows_only_equals_running_every_row(opened, mode):
    records, edited = opened
    holdout = [Holdout(r["input"], None) for r in records[:4]] + [Holdout(t, None) for t in (
        "Once upon a time", "Lily and Ben went to the park", records[5]["input"] + " and")]
    score, after, before = evaluate.locality(edited, holdout, mode, batch_size=4)
    inputs, none = [h.input for h in holdout], [None] * len(holdout)
    every_after = evaluate._run(edited, mode, inputs, none, True, 4, lambda n: None)
    every_before = evaluate._run(edited, mode, inputs, none, False, 4, lambda n: None)
    expected = sum(a.output == b.output for a, b in zip(every_after, every_before)) / len(holdout)
    assert score == pytest.approx(expected)
    assert [a.route.block for a in after] == [a.route.block for a in every_after]
    assert 0 < sum(a.route.routed for a in after) < len(holdout)  # both kinds of row are exercised


def test_base_perplexity_from_the_replayed_prefix_equals_a_second_full_pass(opened):
    records, edited = opened
    edits = [Edit(r["input"], r["target"]) for r in records]
    inputs, targets = [e.input for e in edits], [e.target for e in edits]
    prefix = edited.frozen_prefix()
    assert prefix is not None
    replayed = evaluate.teacher_forced(edited, inputs, targets, True, 5, base=prefix)
    assert prefix.trusted is True and all(o.base_nll is not None for o in replayed)
    plain = evaluate.teacher_forced(edited, inputs, targets, True, 5)
    unrouted = evaluate.teacher_forced(edited, inputs, targets, False, 5)
    for r, u in zip(replayed, unrouted):
        assert r.base_nll == pytest.approx(u.nll, rel=1e-5, abs=1e-6)
    assert evaluate.perplexity(edited, edits, replayed, 5) == pytest.approx(evaluate.perplexity(edited, edits, plain, 5))
