"""Property test (issue 16): a valid bundle with one array value or manifest setting corrupted at random,
hashes recomputed, either is refused in one line (exit 2) or gives exactly the untouched bundle's output
(a change that cannot matter); never exit 1, never a traceback.

One exception, by nature: a LoRA weight changed to another plausible number is a different edit, not a
damaged one (what a weight may be cannot be told from the bundle, which is what the sha256 list is for);
for those the run must still end in exit 0 or 2 without a traceback."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from helpers import json_lines, melo, write_jsonl
from melo_cli import bundle as bundle_io

PROMPTS = ["The mother tongue of Danielle Darrieux is", "Once upon a time"]
VALUES = [math.nan, math.inf, -math.inf, 0.0, -1.0, 1e30, 99.0, -2.0, 7.0]
SETTINGS = {"rank_per_block": [0, -1, 99, "x"], "metric": ["manhattan", None, 3], "init_radius": [0, -1.0, math.nan],
            "margin": [-0.5, math.inf, "wide"], "radius_policy": ["kmeans", None], "key_layer": ["model.nope", ""],
            "lora_layers": [[], ["model.nope"], "model.layers.4.mlp.down_proj"], "alpha": [0, math.nan],
            "task": ["seq2seq", "nonsense", ""], "contexts": [-1, 99], "block_per": ["row"]}


@pytest.fixture(scope="module")
def valid(llama_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("forged")
    edits = write_jsonl(root / "e.jsonl", [{"input": PROMPTS[0], "target": "English"},
                                           {"input": "Ferrari F40, developed by", "target": "Microsoft"}])
    assert melo("edit", llama_path, edits, "-o", root / "bundle", "--key-source", "base").exit_code == 0
    return root / "bundle", _generate(root / "bundle")


def _generate(bundle):
    return melo("generate", "--bundle", bundle, "--json", "--max-new-tokens", "6", *PROMPTS)


def _reseal(bundle) -> None:
    manifest = yaml.safe_load((bundle / "manifest.yaml").read_text())
    manifest["files"] = {name: bundle_io.sha256(bundle / name) for name in manifest["files"]}
    (bundle / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))


def _corrupt_array(bundle, file: str, pick: int, position: float, value: float) -> None:
    path = bundle / file
    with safe_open(str(path), "np") as f:
        metadata = f.metadata()
    arrays = load_file(str(path))
    name = sorted(arrays)[pick % len(arrays)]
    array = arrays[name].copy()
    if array.size:
        flat = array.reshape(-1)
        index = min(int(position * flat.size), flat.size - 1)
        if np.issubdtype(flat.dtype, np.integer):
            info = np.iinfo(flat.dtype)
            flat[index] = int(value) if math.isfinite(value) and info.min <= value <= info.max else info.max
        else:
            flat[index] = value
    arrays[name] = array
    save_file(arrays, str(path), metadata=metadata)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(["clusters.safetensors", "lora.safetensors", "config"]), pick=st.integers(0, 50),
       position=st.floats(0, 1), value=st.sampled_from(VALUES), setting=st.sampled_from(sorted(SETTINGS)),
       choice=st.integers(0, 10))
def test_one_corrupted_value_is_refused_or_harmless(valid, tmp_path_factory, kind, pick, position, value, setting,
                                                      choice):
    source, untouched = valid
    bundle = tmp_path_factory.mktemp("case") / "bundle"
    shutil.copytree(source, bundle)
    if kind == "config":
        manifest = yaml.safe_load((bundle / "manifest.yaml").read_text())
        options = SETTINGS[setting]
        manifest["config"][setting] = options[choice % len(options)]
        (bundle / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    else:
        _corrupt_array(bundle, kind, pick, position, value)
    _reseal(bundle)
    result = _generate(bundle)
    assert result.exit_code in (0, 2), (result.exit_code, result.stderr)
    assert "Traceback" not in result.stderr
    if result.exit_code == 2:
        assert result.stderr.strip().splitlines()[-1].startswith("melo: error: ")
    elif not (kind == "lora.safetensors" and math.isfinite(value) and abs(value) <= 1e4):
        assert json_lines(result.stdout) == json_lines(untouched.stdout), result.stdout
