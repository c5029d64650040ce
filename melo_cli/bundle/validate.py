"""A bundle's contents checked like input, on every load.

The sha256 list in the manifest catches accidents, not a forged bundle whose manifest was rewritten to
match: a bundle is shared like a model file. So before anything is built from it, every array must
agree with the others and with the manifest (cluster count, key dimension, member count, LoRA pool
size and rank), every block id must name a block, every number must be finite, and every radius > 0.
A failure is a BundleError naming the file and what is wrong; nothing here needs the model.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from melo_cli.errors import BundleError
from melo_cli.bundle.manifest import Manifest
from melo_cli.router.vocabulary import NEGATIVE, NO_BLOCK, RETIRED


MAX_WEIGHT = 1e4
"""No trained LoRA weight comes near this (they are initialised at about 1/sqrt(in_features) and trained
for tens of steps); a forged one would overflow every routed activation."""

CLUSTER_ARRAYS = {"centres": 2, "radii": 1, "blocks": 1, "member_keys": 2, "member_cluster": 1, "member_edit": 1}


def lora_blocks(lora: dict[str, np.ndarray], manifest: Manifest, where: Path) -> int:
    """The number of blocks in the LoRA pool, after checking every layer's tensors; BundleError if not."""
    config = manifest.config
    sizes = set()
    for name in config.lora_layers:
        a, b = lora.get(f"{name}.lora_A"), lora.get(f"{name}.lora_B")
        if a is None or b is None:
            raise BundleError(f"{where}: no LoRA tensors for layer {name!r}")
        if a.ndim != 3 or b.ndim != 3 or a.shape[0] != b.shape[0] or a.shape[1] != config.rank_per_block \
                or b.shape[2] != config.rank_per_block:
            raise BundleError(f"{where}: LoRA tensors of {name!r} have shapes {a.shape} and {b.shape}; expected "
                              f"(blocks, {config.rank_per_block}, in) and (blocks, out, {config.rank_per_block})")
        if a.dtype != np.dtype(config.block_dtype) or b.dtype != np.dtype(config.block_dtype):
            raise BundleError(f"{where}: LoRA tensors of {name!r} are {a.dtype}; the manifest says {config.block_dtype}")
        if not (np.isfinite(a).all() and np.isfinite(b).all()):
            raise BundleError(f"{where}: LoRA tensors of {name!r} hold NaN or infinite values")
        if max(float(np.abs(a).max(initial=0)), float(np.abs(b).max(initial=0))) > MAX_WEIGHT:
            raise BundleError(f"{where}: LoRA tensors of {name!r} hold values beyond {MAX_WEIGHT:g} (not trained weights)")
        sizes.add(int(a.shape[0]))
    expected = {f"{name}.lora_{part}" for name in config.lora_layers for part in "AB"}
    if set(lora) != expected:
        extra = sorted(set(lora) - expected)[:2]
        raise BundleError(f"{where}: holds tensors the manifest's LoRA layers do not name ({', '.join(extra)})")
    if len(sizes) > 1:
        raise BundleError(f"{where}: LoRA layers hold different numbers of blocks ({sorted(sizes)})")
    blocks = sizes.pop() if sizes else 0
    if blocks != manifest.counts["blocks"]:
        raise BundleError(f"{where}: holds {blocks} LoRA blocks; the manifest says {manifest.counts['blocks']}")
    return blocks


def cluster_arrays(arrays: dict[str, np.ndarray], labels: list, manifest: Manifest, n_blocks: int,
                   n_records: int, where: Path) -> None:
    """The router's arrays agree with each other, the manifest and the LoRA pool; BundleError if not."""
    for name, ndim in CLUSTER_ARRAYS.items():
        if name not in arrays or arrays[name].ndim != ndim:
            raise BundleError(f"{where}: '{name}' is missing or not a {ndim}-d array")
    n, dim = manifest.counts["clusters"], manifest.key_dim
    members = len(arrays["member_edit"])
    shapes = {"centres": (n, dim), "radii": (n,), "blocks": (n,), "member_keys": (members, dim),
              "member_cluster": (members,)}
    if "retired" in arrays:
        shapes["retired"] = (n,)
    for name, shape in shapes.items():
        if arrays[name].shape != shape:
            raise BundleError(f"{where}: '{name}' has shape {arrays[name].shape}; the bundle needs {shape}")
    if len(labels) != n or not all(isinstance(label, str) for label in labels):
        raise BundleError(f"{where}: 'labels' must be {n} strings")
    for name in ("centres", "radii", "member_keys"):
        if not np.isfinite(arrays[name]).all():
            raise BundleError(f"{where}: '{name}' holds NaN or infinite values")
    if n and not (arrays["radii"] > 0).all():
        raise BundleError(f"{where}: every radius must be > 0")
    blocks = arrays["blocks"]
    if not ((blocks == NO_BLOCK) | ((blocks >= 0) & (blocks < n_blocks))).all():
        raise BundleError(f"{where}: a cluster names a LoRA block outside 0..{n_blocks - 1}")
    cluster = arrays["member_cluster"]
    if not ((cluster == RETIRED) | ((cluster >= 0) & (cluster < n))).all():
        raise BundleError(f"{where}: a member names a cluster outside 0..{n - 1}")
    edit = arrays["member_edit"]
    if not ((edit >= -1) & (edit < n_records)).all():
        raise BundleError(f"{where}: a member names an edit outside the bundle's {n_records} edits")
    _radii_cover_only_their_members(arrays, manifest, where)
    negative = np.array([label == NEGATIVE for label in labels], dtype=bool)
    if n and not np.array_equal(negative, blocks == NO_BLOCK):
        raise BundleError(f"{where}: a cluster's block and label disagree (only negatives have no block)")
    retired = arrays["retired"].astype(bool) if "retired" in arrays else np.zeros(n, bool)
    held = np.bincount(cluster[cluster >= 0], minlength=n) if n else np.zeros(0, np.int64)
    if n and not np.array_equal(held > 0, ~retired):
        raise BundleError(f"{where}: a live cluster without members, or a retired one with members")


def _radii_cover_only_their_members(arrays: dict[str, np.ndarray], manifest: Manifest, where: Path) -> None:
    """A radius is never wider than the init radius or its farthest member (the rules only shrink below
    that): a forged huge radius would route every input to one edit. One vectorised pass over the members."""
    config, cluster = manifest.config, arrays["member_cluster"]
    live = cluster >= 0
    keys, centres = arrays["member_keys"][live].astype(np.float64), arrays["centres"][cluster[live]].astype(np.float64)
    if config.metric == "cosine":
        norms = np.linalg.norm(keys, axis=1) * np.linalg.norm(centres, axis=1)
        dists = 1.0 - (keys * centres).sum(1) / np.maximum(norms, 1e-12)
    else:
        dists = np.linalg.norm(keys - centres, axis=1)
    reach = np.zeros(len(arrays["radii"]))
    np.maximum.at(reach, cluster[live], dists)
    allowed = np.maximum(config.init_radius, reach) * (1 + 1e-4) + 1e-6
    wide = np.flatnonzero(arrays["radii"] > allowed)
    if len(wide):
        c = int(wide[0])
        raise BundleError(f"{where}: cluster {c} has radius {float(arrays['radii'][c]):.4g}, wider than the init "
                          f"radius {config.init_radius:.4g} and its farthest member ({reach[c]:.4g})")


def index_labels(ids: np.ndarray, n_clusters: int, where: Path) -> None:
    """Every id in the loaded hnswlib index names a cluster."""
    if len(ids) and (ids.min() < 0 or ids.max() >= n_clusters):
        raise BundleError(f"{where}: the index holds an id outside the {n_clusters} clusters")


# -- format 2: the manifest bound to its files, each edit record to its router member -----------------
def lora_settings(config) -> str:
    """What lora.safetensors records of the settings its tensors need (compared with the manifest's)."""
    return json.dumps({"rank_per_block": config.rank_per_block, "alpha": config.alpha,
                       "lora_layers": list(config.lora_layers), "block_dtype": config.block_dtype}, sort_keys=True)


def record_digest(record: dict) -> bytes:
    """8 bytes of sha256 over an edit record's input and target: what its router member was made from."""
    return hashlib.sha256(f"{record['input']}\0{record['target']}".encode("utf-8", "surrogatepass")).digest()[:8]


def member_digests(member_edit: np.ndarray, records: list[dict]) -> np.ndarray:
    """(members, 8) uint8: each member's edit record digest (zeros for negatives, which have none)."""
    out = np.zeros((len(member_edit), 8), np.uint8)
    for m, edit in enumerate(member_edit):
        if 0 <= edit < len(records):
            out[m] = np.frombuffer(record_digest(records[int(edit)]), np.uint8)
    return out


def binding(manifest: Manifest, clusters_metadata: dict, lora_metadata: dict, where: Path) -> None:
    """A format-2 manifest is the one its files were written with: every value it states (config, counts,
    base, key encoder) hashes to the digest in clusters.safetensors, and its LoRA settings are the ones
    lora.safetensors records. A format-1 manifest over format-2 files (the checks dropped) is refused."""
    bound = clusters_metadata.get("manifest")
    if manifest.format < 2:
        if bound is not None or "melo" in lora_metadata:
            raise BundleError(f"{where}: says format {manifest.format}, but its files are format 2's")
        return
    if bound != manifest.binding():
        raise BundleError(f"{where}: does not match the bundle it lists (a setting, count or base changed since "
                          f"it was written)")
    if lora_metadata.get("melo") != lora_settings(manifest.config):
        raise BundleError(f"{where}: its LoRA settings are not the ones lora.safetensors was written with")


def records(records: list[dict], arrays: dict[str, np.ndarray], labels: list[str], manifest: Manifest,
            where: Path) -> None:
    """edits.jsonl is this router's: the counts match it, every live member's record teaches its cluster's
    label, and (format 2) every member's record is the one its key was made from."""
    counts = manifest.counts
    if counts["edits"] != len(records):
        raise BundleError(f"{where}: holds {len(records)} edits; the manifest says {counts['edits']}")
    live = sum("superseded" not in r and "forgotten" not in r for r in records)
    if "live_edits" in counts and counts["live_edits"] != live:
        raise BundleError(f"{where}: holds {live} live edits; the manifest says {counts['live_edits']}")
    edit, cluster = arrays["member_edit"], arrays["member_cluster"]
    for m in np.flatnonzero((edit >= 0) & (cluster >= 0)):
        record = records[int(edit[m])]
        if record["target"] != labels[int(cluster[m])]:
            raise BundleError(f"{where}:{int(edit[m]) + 1}: target {record['target']!r} is not what its router "
                              f"cluster teaches ({labels[int(cluster[m])]!r})")
    if manifest.format < 2:
        return
    stored = arrays.get("member_digest")
    if stored is None or stored.shape != (len(edit), 8):
        raise BundleError(f"{where}: the router keeps no digest of its edit records")
    wrong = np.flatnonzero((member_digests(edit, records) != stored).any(1))
    if len(wrong):
        number = int(edit[wrong[0]])
        raise BundleError(f"{where}:{number + 1}: is not the edit its router member was made from "
                          f"(another bundle's edits.jsonl, or a changed input or target)")
