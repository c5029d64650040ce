"""Bases larger than one device (issue 25): `--device-map auto` with a `--max-memory` small enough that
accelerate offloads part of the tiny Llama to disk, compared with the whole model on one device: the same
routes, the same outputs, the same trained blocks."""

from __future__ import annotations

import json

import pytest
from safetensors.numpy import load_file

from conftest import SAMPLES, load_edits
from helpers import json_lines, melo

pytest.importorskip("accelerate", reason="--device-map needs accelerate")

SPLIT = ["--device-map", "auto", "--max-memory", "cpu=400KB"]
"""The tiny Llama is 1.2 MB: most of it waits on disk and runs layer by layer."""


@pytest.fixture(scope="module", params=["auto", "base"])  # auto: the MiniLM encoder keys
def bundles(request, llama_path, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"device-map-{request.param}")
    keys = ["--key-source", request.param]
    for name, placement in (("whole", []), ("split", SPLIT)):
        result = melo("edit", llama_path, SAMPLES / "counterfact-20.jsonl", "-o", root / name, *keys, *placement)
        assert result.exit_code == 0, result.stderr
    return root


def test_the_split_model_is_really_offloaded(llama_path):
    from melo_cli.model import backbones

    backbone = backbones.load(str(llama_path), device_map="auto", max_memory="cpu=400KB")
    assert "disk" in set(backbone.model.hf_device_map.values())
    assert backbones.fingerprint(backbone.model) == backbones.fingerprint(backbones.load(str(llama_path)).model)


def test_a_split_edit_trains_the_same_blocks(bundles):
    whole, split = load_file(bundles / "whole" / "lora.safetensors"), load_file(bundles / "split" / "lora.safetensors")
    assert whole.keys() == split.keys() and all((whole[k] == split[k]).all() for k in whole)


def test_a_split_model_routes_and_generates_the_same(bundles):
    edits = load_edits("counterfact-20.jsonl")
    prompts = [e["input"] for e in edits[:6]] + [e["rephrases"][0] for e in edits[:4]] + ["Once upon a time"]
    for command in (["route"], ["generate", "--json", "--max-new-tokens", "12"]):
        whole = melo(*command, "--bundle", bundles / "whole", *prompts)
        split = melo(*command, "--bundle", bundles / "whole", *SPLIT, *prompts)
        assert whole.exit_code == split.exit_code == 0, split.stderr
        assert json_lines(whole.stdout) == json_lines(split.stdout)


def test_eval_on_a_split_model_gives_the_same_scores(bundles):
    args = ["eval", "--bundle", bundles / "split", "--mode", "generate", "--format", "json", "--fluency-tokens", "8"]
    whole, split = melo(*args), melo(*args, *SPLIT)
    assert whole.exit_code == split.exit_code == 0, split.stderr
    assert json.loads(whole.stdout) == json.loads(split.stdout)


@pytest.mark.parametrize("options, said", [(["--device-map", "everywhere"], "--device-map"),
                                           (["--device-map", "auto", "--device", "cpu"], "not both"),
                                           (["--max-memory", "cpu=1GB"], "goes with --device-map"),
                                           (["--device-map", "auto", "--max-memory", "lots"], "--max-memory")])
def test_bad_placement_options_are_usage_errors(llama_path, options, said):
    result = melo("generate", "--base", llama_path, *options, "Once upon a time")
    assert result.exit_code == 2 and said in result.stderr, result.stderr
