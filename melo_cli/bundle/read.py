"""Reading a bundle: pinned (the directory and its files opened once, each file read once for both its
hash and its parse, snapshot.py), so that a writer swapping the bundle gives the reader the old bundle or
the new one, never a mix (a file that vanished means the bundle was swapped: read again). Nothing read
runs code: YAML through safe_load, tensors through safetensors, edits as JSON, the hnswlib index only
after every byte it follows is checked (hnsw_file.py), from a private copy; and every array is
validated against the others and the manifest (validate.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load as numpy_from_bytes

from melo_cli.bundle import hnsw_file, locks, validate
from melo_cli.bundle.manifest import Manifest
from melo_cli.bundle.publish import clean_stale
from melo_cli.bundle.snapshot import Snapshot, Swapped, private_copy
from melo_cli.bundle.layout import CLUSTERS, EDITS, FILES, HISTORY, INDEX, LORA, MANIFEST
from melo_cli.config import MeloConfig
from melo_cli.edits.records import Edit
from melo_cli.errors import BundleError
from melo_cli.router.router import Router

log = logging.getLogger("melo")
ATTEMPTS = 20
"""Loads of a bundle that writers keep swapping out before one is read whole."""


@dataclass
class Bundle:
    path: Path
    manifest: Manifest
    config: MeloConfig
    lora: dict
    router: Router
    edits: list[Edit]
    """Every edit of the bundle, one per edits.jsonl record, in order."""
    history: list[dict]

    @property
    def base(self) -> dict:
        return self.manifest.base_model

    @property
    def live_edits(self) -> list[Edit]:
        """The edits that still apply (a later correction supersedes an edit)."""
        return [e for e in self.edits if e.live]


# -- reading ------------------------------------------------------------------------------------
def _snapshot(path: Path) -> Snapshot:
    return Snapshot(path, FILES, MANIFEST)


def _manifest_from(pinned: Snapshot) -> Manifest:
    try:
        text = pinned.read(MANIFEST).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BundleError(f"{pinned.path / MANIFEST}: unreadable manifest: {exc}") from None
    return Manifest.from_yaml(text, pinned.path / MANIFEST)


def _read_whole(path: Path, read):
    """read(snapshot) on a snapshot of the bundle at `path`, again on a fresh one each time a writer
    swapped the bundle out mid-read."""
    for _ in range(ATTEMPTS):
        pinned = _snapshot(path)
        try:
            return read(pinned)
        except Swapped:
            continue
        finally:
            pinned.close()
    raise BundleError(f"{path}: replaced {ATTEMPTS} times while it was being read; try again")


def read_manifest(path: Path) -> Manifest:
    """The manifest alone, checked (for `inspect` and for deciding what may be replaced)."""
    return _read_whole(Path(path), _manifest_from)


def _verified_files(pinned: Snapshot, manifest: Manifest) -> dict[str, bytes]:
    """Every file the manifest names, read once, with the recorded sha256; by name."""
    files = manifest.files
    for required in (LORA, INDEX, CLUSTERS, EDITS):
        if required not in files:
            raise BundleError(f"{pinned.path / MANIFEST}: does not list {required}")
    for name in files:
        if not isinstance(name, str) or "/" in name or "\\" in name or name in ("", ".", "..") or name == MANIFEST:
            raise BundleError(f"{pinned.path / MANIFEST}: file name {name!r} points outside the bundle")
    descriptors = {}
    try:
        for name in files:  # all opened first: a writer removing the directory later cannot take them away
            descriptors[name] = pinned.open(name)
    except BaseException:
        for fd in descriptors.values():
            os.close(fd)
        raise
    contents = {name: pinned.read_fd(fd) for name, fd in descriptors.items()}
    for name, digest in files.items():
        if hashlib.sha256(contents[name]).hexdigest() != digest:
            raise BundleError(f"{pinned.path / name}: changed since the bundle was written (sha256 mismatch)")
    return contents


def _records(data: bytes, where: Path) -> list[dict]:
    """The bundle's edits.jsonl: one JSON object with a string input and target per line."""
    records = []
    for number, line in enumerate(data.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BundleError(f"{where}:{number}: malformed JSON: {exc.msg}") from None
        if not isinstance(record, dict) or not isinstance(record.get("input"), str) \
                or not isinstance(record.get("target"), str):
            raise BundleError(f"{where}:{number}: expected an object with string 'input' and 'target'")
        records.append(record)
    return records


def _safetensors_metadata(data: bytes) -> dict:
    """The `__metadata__` of a safetensors file's JSON header (an 8-byte length, then the JSON)."""
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + length])
    return header.get("__metadata__") or {} if isinstance(header, dict) else {}


def load(path: str | Path) -> Bundle:
    """Read and check a bundle; raises BundleError naming the file at fault. A bundle swapped out by
    a writer while it was read is read again (the new one, whole)."""
    path = Path(path)
    if not path.exists():
        clean_stale(path)
    if locks.remove_stale(path):
        log.info("removed the lock file a killed run left beside %s", path)
    return _read_whole(path, _load_pinned)


def _load_pinned(pinned: Snapshot) -> Bundle:
    path = pinned.path
    manifest = _manifest_from(pinned)
    files = _verified_files(pinned, manifest)
    config = manifest.config
    try:
        arrays = numpy_from_bytes(files[CLUSTERS])
        metadata = _safetensors_metadata(files[CLUSTERS])
        labels = json.loads(metadata.get("labels", "[]"))
        subjects = json.loads(metadata["subjects"]) if "subjects" in metadata else None
        short = json.loads(metadata["short_forms"]) if "short_forms" in metadata else None
        lora = numpy_from_bytes(files[LORA])
        lora_metadata = _safetensors_metadata(files[LORA])
    except Exception as exc:  # safetensors raises several types for damaged files
        raise BundleError(f"{path}: unreadable tensors: {str(exc).splitlines()[0]}") from None
    validate.binding(manifest, metadata, lora_metadata, path / MANIFEST)
    n_clusters, key_dim = manifest.counts["clusters"], manifest.key_dim
    if not isinstance(labels, list) or len(labels) != n_clusters or "centres" not in arrays \
            or arrays["centres"].shape != (n_clusters, key_dim):
        raise BundleError(f"{path / CLUSTERS}: does not hold the {n_clusters} clusters the manifest says")
    try:
        records = _records(files[EDITS], path / EDITS)
    except UnicodeDecodeError:
        raise BundleError(f"{path / EDITS}: not UTF-8") from None
    validate.cluster_arrays(arrays, labels, manifest, validate.lora_blocks(lora, manifest, path / LORA),
                            len(records), path / CLUSTERS)
    validate.records(records, arrays, labels, manifest, path / EDITS)
    index_bytes = files[INDEX]
    dim, count = hnsw_file.dimensions(index_bytes, path / INDEX)
    if dim != key_dim or count != n_clusters:
        raise BundleError(f"{path / INDEX}: index of {count} keys of dimension {dim}; the manifest says "
                          f"{n_clusters} of dimension {key_dim}")
    retired = arrays["retired"].astype(bool) if "retired" in arrays else np.zeros(n_clusters, bool)
    hnsw_file.check(index_bytes, dim=key_dim, centres=arrays["centres"], retired=retired, metric=config.metric,
                    m=Router.M, where=path / INDEX)
    if subjects is not None and (not isinstance(subjects, list) or len(subjects) != len(arrays["member_edit"])
                                 or not all(s is None or isinstance(s, str) for s in subjects)):
        raise BundleError(f"{path / CLUSTERS}: 'subjects' does not match the members")
    if short is not None and (not isinstance(short, list) or len(short) != len(arrays["member_edit"])
                              or not all(isinstance(s, list) and all(isinstance(w, str) for w in s) for s in short)):
        raise BundleError(f"{path / CLUSTERS}: 'short_forms' does not match the members")
    try:
        with private_copy(index_bytes) as index_path:
            router = Router.restore(arrays, labels, index_path, config.metric, config.init_radius, config.margin,
                                    config.radius_policy, subjects, config.entity_match, short)
    except RuntimeError as exc:  # hnswlib's own complaint about a damaged index file
        raise BundleError(f"{path / INDEX}: unreadable index: {str(exc).splitlines()[0]}") from None
    validate.index_labels(router.index.ids(), n_clusters, path / INDEX)
    given = {str(r["id"]) for r in records if r.get("id") is not None}
    edits = [Edit.from_record(r, i, given) for i, r in enumerate(records)]
    try:
        history = ([json.loads(line) for line in files[HISTORY].decode("utf-8").splitlines() if line.strip()]
                   if HISTORY in files else [])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BundleError(f"{path / HISTORY}: not JSON lines") from None
    return Bundle(path, manifest, config, lora, router, edits, history)
