"""melo eval: every metric on hand-made cases with a known right answer, JSON keys, gates, history, plot."""

from __future__ import annotations

import json

import pytest

from conftest import SAMPLES, load_edits
from helpers import json_lines, melo, write_jsonl

A = {"id": "a", "input": "The mother tongue of Danielle Darrieux is", "target": "English"}
B = {"id": "b", "input": "Ferrari F40, developed by", "target": "Microsoft"}
STORY = "Once upon a time"  # far from both edits: the base model's ", there was a little girl..."
KEYS = ["edit_success", "generality", "locality", "holdout_accuracy", "perplexity", "fluency", "n_edits", "n_clusters",
        "n_blocks", "mode", "routing"]


@pytest.fixture(scope="module")
def bundle(llama_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    out = root / "bundle"
    edits = write_jsonl(root / "e.jsonl", [A, B])
    assert melo("edit", llama_path, edits, "-o", out).exit_code == 0
    return root, out


def eval_json(*args):
    result = melo("eval", "--format", "json", *args)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_generality_is_one_for_a_rephrase_inside_the_radius_and_zero_outside(bundle):
    root, out = bundle
    scored = write_jsonl(root / "scored.jsonl", [dict(A, rephrases=[A["input"]]), dict(B, rephrases=[STORY])])
    for mode in ("teacher-forced", "generate"):
        result = eval_json("--bundle", out, "--edits", scored, "--mode", mode)
        assert list(result) == KEYS
        assert result["edit_success"] == 1.0 and result["generality"] == 0.5, result
        assert result["routing"]["rephrases"] == {"total": 2, "routed": 1, "right_block": 1}
        assert result["routing"]["edits"] == {"total": 2, "routed": 2, "right_block": 2}


def test_generality_is_null_without_rephrases_and_locality_null_without_holdout(bundle):
    _, out = bundle
    result = eval_json("--bundle", out)  # the bundle's own edits, which have no rephrases
    assert result["generality"] is None and result["locality"] is None and result["holdout_accuracy"] is None
    assert result["n_edits"] == 2 and result["n_blocks"] == 2 and result["mode"] == "teacher-forced"  # a block each


def test_locality_and_holdout_accuracy(bundle):
    root, out = bundle
    holdout = write_jsonl(root / "holdout.jsonl", [{"input": A["input"], "target": A["target"]},
                                                   {"input": STORY, "target": ", there was"}])
    result = eval_json("--bundle", out, "--locality", holdout, "--mode", "both")
    # the edit's own input is routed and changes; the story is not routed and does not
    assert result["locality"] == {"teacher-forced": 0.5, "generate": 0.5}
    assert result["holdout_accuracy"]["teacher-forced"] == {"base": 0.5, "edited": 1.0}
    assert result["holdout_accuracy"]["generate"] == {"base": 0.5, "edited": 1.0}
    assert result["routing"]["holdout"] == {"total": 2, "routed": 1}
    no_targets = write_jsonl(root / "inputs.jsonl", [{"input": STORY}, {"input": "Lily and Tom went to the park"}])
    assert eval_json("--bundle", out, "--locality", no_targets)["locality"] == 1.0


def test_perplexity_falls_for_edited_targets_and_matches_the_bare_model(bundle, llama_path):
    _, out = bundle
    edited = eval_json("--bundle", out)["perplexity"]
    bare = eval_json("--base", llama_path, "--edits", out / "edits.jsonl")
    assert edited["edited"] < 2.0 < 50.0 < edited["base"]
    assert bare["perplexity"]["base"] == pytest.approx(edited["base"]) == pytest.approx(bare["perplexity"]["edited"])
    assert bare["edit_success"] == 0.0 and bare["n_clusters"] == 0


def test_gates_exit_3_naming_the_gate(bundle):
    root, out = bundle
    holdout = write_jsonl(root / "holdout2.jsonl", [{"input": A["input"]}, {"input": STORY}])
    ok = melo("eval", "--bundle", out, "--min-edit-success", "1.0", "--format", "json")
    assert ok.exit_code == 0
    failed = melo("eval", "--bundle", out, "--locality", holdout, "--min-locality", "0.9")
    assert failed.exit_code == 3
    assert failed.stderr.strip().splitlines()[-1] == "melo: error: gate failed: locality 0.5000 < 0.9 (teacher-forced)"
    missing = melo("eval", "--bundle", out, "--min-generality", "0.5")
    assert missing.exit_code == 3 and "generality is not available" in missing.stderr
    assert melo("eval", "--bundle", out, "--mode", "sideways").exit_code == 2
    assert melo("eval", "--bundle", out, "--edits", root / "absent.jsonl").exit_code == 2


def test_table_output_names_every_metric(bundle):
    _, out = bundle
    result = melo("eval", "--bundle", out)
    assert result.exit_code == 0
    for word in ("edit_success", "generality", "locality", "perplexity", "routed: edits"):
        assert word in result.stdout


def test_history_rows_every_k_batches_and_plot(llama_path, tmp_path):
    edits = load_edits("counterfact-20.jsonl")
    first = write_jsonl(tmp_path / "first.jsonl", edits[:12])
    more = write_jsonl(tmp_path / "more.jsonl", edits[12:])
    out = tmp_path / "bundle"
    holdout = SAMPLES / "counterfact-holdout.jsonl"
    result = melo("edit", llama_path, first, "-o", out, "--batch-size", "3", "--eval-every", "2", "--locality", holdout)
    assert result.exit_code == 0 and json.loads(result.stdout)["history_rows"] == 2  # 4 batches, K = 2
    assert melo("edit", more, "--bundle", out, "-o", out, "--batch-size", "4", "--eval-every", "2").exit_code == 0
    rows = json_lines(melo("eval", "--bundle", out, "--history", "--format", "json").stdout)
    assert [(r["batches"], r["edits"]) for r in rows] == [(2, 6), (4, 12), (6, 20)]
    assert rows[0]["retention"] == 1.0 and rows[0]["locality"] is not None and rows[2]["locality"] is None
    assert all(r["edit_success"] == 1.0 for r in rows)
    plot = tmp_path / "history.png"
    assert melo("eval", "--bundle", out, "--history", "--plot", plot).exit_code == 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 5000


def test_eval_of_200_inputs_on_the_tiny_llama(bundle):
    """Functional only: how long it takes is measured in benchmarks, not asserted on shared machines."""
    root, out = bundle
    holdout = load_edits("counterfact-holdout.jsonl") * 2  # 100 holdout inputs, each run with and without routes
    path = write_jsonl(root / "h200.jsonl", holdout)
    result = eval_json("--bundle", out, "--locality", path, "--mode", "generate")
    assert result["routing"]["holdout"]["total"] == 100 and result["locality"] > 0.9
