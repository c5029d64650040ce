"""Bundles from elsewhere: tampered, truncated, path-escaping, code-carrying or wrong-base ones are refused."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import yaml

from helpers import melo, write_jsonl, json_lines
from melo_cli import bundle as bundle_io
from melo_cli.errors import BundleError
from melo_cli.router import Router

PROMPT = "The mother tongue of Danielle Darrieux is"


@pytest.fixture(scope="module")
def good_bundle(llama_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("trust")
    edits = write_jsonl(root / "e.jsonl", [{"input": PROMPT, "target": "English"},
                                           {"input": "Ferrari F40, developed by", "target": "Microsoft"}])
    out = root / "bundle"
    result = melo("edit", llama_path, edits, "-o", out)
    assert result.exit_code == 0, result.stderr
    return out


@pytest.fixture
def copy(good_bundle, tmp_path):
    target = tmp_path / "bundle"
    shutil.copytree(good_bundle, target)
    return target


def refused(bundle, *words, extra=()):
    result = melo("generate", "--bundle", bundle, *extra, PROMPT)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("melo: error: ") and all(w in line for w in words), line
    return line


def test_the_untouched_bundle_applies(good_bundle):
    result = melo("generate", "--bundle", good_bundle, "--json", PROMPT)
    assert result.exit_code == 0 and json_lines(result.stdout)[0]["text"].strip().startswith("English")


def test_a_changed_byte_in_the_weights_is_refused(copy):
    data = bytearray((copy / "lora.safetensors").read_bytes())
    data[-3] ^= 0x01
    (copy / "lora.safetensors").write_bytes(bytes(data))
    refused(copy, "lora.safetensors", "sha256")


def test_a_truncated_index_is_refused(copy):
    path = copy / "router.hnsw"
    path.write_bytes(path.read_bytes()[:100])
    refused(copy, "router.hnsw")


def test_a_missing_file_is_refused(copy):
    (copy / "clusters.safetensors").unlink()
    refused(copy, "clusters.safetensors")


def test_manifest_paths_cannot_leave_the_bundle(copy):
    manifest = yaml.safe_load((copy / "manifest.yaml").read_text())
    manifest["files"]["../outside.txt"] = "0" * 64
    (copy / "manifest.yaml").write_text(yaml.safe_dump(manifest))
    refused(copy, "outside the bundle")


def test_a_manifest_carrying_python_objects_is_not_executed(copy, tmp_path):
    canary = tmp_path / "pwned"
    text = (copy / "manifest.yaml").read_text()
    (copy / "manifest.yaml").write_text(f"!!python/object/apply:os.system ['touch {canary}']\n" + text)
    refused(copy, "manifest")
    assert not canary.exists()


def test_an_index_that_does_not_match_the_manifest_is_refused_before_hnswlib_reads_it(copy):
    other = Router(8, init_radius=1.0)
    for i in range(3):
        other.add(np.full(8, float(i * 10), np.float32), str(i), 0, i)
    other.save_index(copy / "router.hnsw")
    manifest = yaml.safe_load((copy / "manifest.yaml").read_text())
    manifest["files"]["router.hnsw"] = bundle_io.sha256(copy / "router.hnsw")  # a consistent forgery
    (copy / "manifest.yaml").write_text(yaml.safe_dump(manifest))
    with pytest.raises(BundleError, match="dimension 8"):
        bundle_io.load(copy)
    refused(copy, "router.hnsw", "dimension")


def test_a_bundle_is_refused_on_another_base_model_unless_forced(copy, llama_path, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    other = tmp_path / "other-llama"
    model = AutoModelForCausalLM.from_pretrained(llama_path)
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[0, 0] += 0.5  # one weight differs
    model.save_pretrained(other)
    AutoTokenizer.from_pretrained(llama_path).save_pretrained(other)
    refused(copy, "not the model this bundle was made for", "--force-base", extra=("--base", str(other)))
    forced = melo("generate", "--bundle", copy, "--base", other, "--force-base", PROMPT)
    assert forced.exit_code == 0 and "applying anyway" in forced.stderr


def test_not_a_bundle(tmp_path):
    refused(tmp_path / "nowhere", "no such bundle")
    (tmp_path / "empty").mkdir()
    refused(tmp_path / "empty", "not a melo bundle")


def test_a_manifest_with_invalid_settings_is_refused_in_one_line(good_bundle, tmp_path):
    """The manifest is typed (melo_cli/bundle/manifest.py): wrong types or values are a BundleError naming the
    field, never a traceback or a model run with garbage settings."""
    from melo_cli.config import MeloConfig
    from melo_cli.config import POOLINGS
    from melo_cli.bundle.manifest import Manifest

    assert tuple(POOLINGS) == ("mean", "last")  # config.problems spells them out (keys.py imports torch)
    cases = {"metric": ("config", "metric", "manhattan"), "rank": ("config", "rank_per_block", -4),
             "radius": ("config", "init_radius", float("nan")), "counts": ("counts", "clusters", "many"),
             "key_dim": (None, "key_dim", 0), "format": (None, "format", 3),
             "format-downgrade": (None, "format", 1)}
    for name, (section, key, value) in cases.items():
        copy = tmp_path / name
        shutil.copytree(good_bundle, copy)
        manifest = yaml.safe_load((copy / "manifest.yaml").read_text())
        (manifest[section] if section else manifest)[key] = value
        (copy / "manifest.yaml").write_text(yaml.safe_dump(manifest))
        result = melo("inspect", copy)
        assert result.exit_code == 2, (name, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr and key.split("_")[0] in result.stderr, (name, result.stderr)
    loaded = Manifest.from_yaml((good_bundle / "manifest.yaml").read_text(), good_bundle / "manifest.yaml")
    assert isinstance(loaded.config, MeloConfig) and loaded.config.problems() == []
    assert Manifest.from_yaml(loaded.to_yaml(), good_bundle).to_dict() == loaded.to_dict()  # round trip


# -- forged bundles (hashes recomputed): every array is validated on load (melo_cli/bundle/validate.py) --------
def _reseal(bundle) -> None:
    """Recompute the manifest's sha256 list, as a forger would."""
    manifest = yaml.safe_load((bundle / "manifest.yaml").read_text())
    manifest["files"] = {name: bundle_io.sha256(bundle / name) for name in manifest["files"]}
    (bundle / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))


def _forge_clusters(bundle, change) -> None:
    from safetensors import safe_open
    from safetensors.numpy import save_file

    path = bundle / "clusters.safetensors"
    with safe_open(str(path), "np") as f:
        metadata = f.metadata()
        arrays = {k: f.get_tensor(k) for k in f.keys()}
    change(arrays)
    save_file(arrays, str(path), metadata=metadata)


def _forge_lora(bundle, change) -> None:
    from safetensors.numpy import load_file, save_file

    arrays = load_file(str(bundle / "lora.safetensors"))
    change(arrays)
    save_file(arrays, str(bundle / "lora.safetensors"))


def _forge_config(bundle, key, value) -> None:
    manifest = yaml.safe_load((bundle / "manifest.yaml").read_text())
    manifest["config"][key] = value
    (bundle / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))


def _set(name, index, value):
    def change(arrays):
        arrays[name] = arrays[name].copy()
        arrays[name][index] = value
    return change


def _index_with_id_past_the_clusters(bundle) -> None:
    import hnswlib

    arrays = bundle_io.load(bundle).router.arrays()
    centres = arrays["centres"]
    index = hnswlib.Index(space="cosine" if "cosine" in (bundle / "manifest.yaml").read_text() else "l2",
                          dim=centres.shape[1])
    index.init_index(max_elements=len(centres) + 4)
    index.add_items(centres, np.arange(len(centres)) + 97)
    index.save_index(str(bundle / "router.hnsw"))


FORGERIES = {
    "block id out of range": lambda b: _forge_clusters(b, _set("blocks", 0, 99)),
    "radii shorter than centres": lambda b: _forge_clusters(b, lambda a: a.update(radii=a["radii"][:-1].copy())),
    "NaN radius": lambda b: _forge_clusters(b, _set("radii", 0, np.nan)),
    "infinite radii": lambda b: _forge_clusters(b, lambda a: a.update(radii=np.full_like(a["radii"], np.inf))),
    "NaN in a centre": lambda b: _forge_clusters(b, _set("centres", (0, 0), np.nan)),
    "member of no cluster": lambda b: _forge_clusters(b, _set("member_cluster", 0, 57)),
    "member of no edit": lambda b: _forge_clusters(b, _set("member_edit", 0, 1000)),
    "index id past the clusters": _index_with_id_past_the_clusters,
    "LoRA pool with zero blocks": lambda b: _forge_lora(b, lambda a: a.update(
        {k: v[:0].copy() for k, v in a.items()})),
    "NaN in the LoRA weights": lambda b: _forge_lora(b, lambda a: a.update(
        {k: np.full_like(v, np.nan) for k, v in a.items()})),
    "rank_per_block 0": lambda b: _forge_config(b, "rank_per_block", 0),
    "metric unknown": lambda b: _forge_config(b, "metric", "manhattan"),
    "key layer above the LoRA layers": lambda b: _forge_config(b, "key_layer", "model.layers.4"),
    "LoRA on a layer that is not there": lambda b: _forge_config(b, "lora_layers", ["model.nope"]),
    # issue 27: consistent forgeries that each gave exit 0 (the manifest's values and edits.jsonl are now
    # bound to the arrays: validate.binding, validate.records)
    "alpha 800": lambda b: _forge_config(b, "alpha", 800.0),
    "a LoRA layer dropped from the config": lambda b: _forge_config(
        b, "lora_layers", yaml.safe_load((b / "manifest.yaml").read_text())["config"]["lora_layers"][:-1]),
    "counts.edits 21": lambda b: _forge_manifest(b, "counts", "edits", 21),
    "another bundle's edits.jsonl": lambda b: _rewrite_records(b, lambda r: {**r, "input": "Toko Yasuda, the",
                                                                             "target": "piano"}),
    "a target changed in edits.jsonl": lambda b: _rewrite_records(b, lambda r: {**r, "target": "French"}
                                                                  if r["target"] == "English" else r),
}


def _forge_manifest(bundle, section, key, value) -> None:
    manifest = yaml.safe_load((bundle / "manifest.yaml").read_text())
    manifest[section][key] = value
    (bundle / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))


def _rewrite_records(bundle, change) -> None:
    import json

    lines = (bundle / "edits.jsonl").read_text().splitlines()
    (bundle / "edits.jsonl").write_text("".join(json.dumps(change(json.loads(line))) + "\n" for line in lines))


@pytest.mark.parametrize("forgery", sorted(FORGERIES))
def test_a_forged_bundle_is_refused_in_one_line(good_bundle, tmp_path, forgery):
    """Issue 16's reproduced cases: each was an IndexError, ZeroDivisionError or silently wrong output."""
    bundle = tmp_path / "forged"
    shutil.copytree(good_bundle, bundle)
    FORGERIES[forgery](bundle)
    _reseal(bundle)
    result = melo("generate", "--bundle", bundle, PROMPT)
    assert result.exit_code == 2, (forgery, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and result.stderr.strip().splitlines()[-1].startswith("melo: error: ")


def test_a_manifest_that_is_a_symlink_is_refused(good_bundle, tmp_path):
    bundle = tmp_path / "linked"
    shutil.copytree(good_bundle, bundle)
    outside = tmp_path / "elsewhere.yaml"
    (bundle / "manifest.yaml").rename(outside)
    (bundle / "manifest.yaml").symlink_to(outside)
    refused(bundle, "symbolic link")


def test_an_index_header_that_does_not_describe_its_file_is_refused(good_bundle, tmp_path):
    import struct

    bundle = tmp_path / "header"
    shutil.copytree(good_bundle, bundle)
    path = bundle / "router.hnsw"
    data = bytearray(path.read_bytes())
    fields = list(struct.unpack("<6Q", bytes(data[:48])))
    fields[3] = 1 << 40  # size per element: far past the file
    data[:48] = struct.pack("<6Q", *fields)
    path.write_bytes(bytes(data))
    _reseal(bundle)
    refused(bundle, "router.hnsw")
