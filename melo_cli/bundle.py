"""The bundle on disk: a directory with a YAML manifest, LoRA weights, the router and the edits.

Writing is atomic: the bundle is built in a temporary directory beside the target and swapped into
place in one rename (RENAME_EXCHANGE where Linux offers it), so a reader, or a job killed at any
moment, sees the old bundle or the new one, never a mix. Loading runs no code: YAML through
`safe_load`, tensors through safetensors, edits as JSON, the hnswlib index only after its header
matches the manifest; every file's sha256 is checked against the manifest.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file as load_numpy, save_file as save_numpy

from . import validate
from .config import MeloConfig
from .edits import Edit
from .errors import BundleError
from .manifest import Manifest
from .router import Router

MANIFEST = "manifest.yaml"
LORA = "lora.safetensors"
INDEX = "router.hnsw"
CLUSTERS = "clusters.safetensors"
EDITS = "edits.jsonl"
CARD = "README.md"
HISTORY = "history.jsonl"


@dataclass
class Bundle:
    path: Path
    manifest: Manifest
    config: MeloConfig
    lora: dict
    router: Router
    edits: list[Edit]
    records: list[dict]
    history: list[dict]

    @property
    def base(self) -> dict:
        return self.manifest.base_model

    @property
    def live_edits(self) -> list[Edit]:
        """The edits that still apply (a later correction supersedes an edit)."""
        return [e for e in self.edits if e.live]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# -- writing ------------------------------------------------------------------------------------
def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _card(manifest: Manifest) -> str:
    base, counts, config = manifest.base_model, manifest.counts, manifest.config.to_dict()
    return (f"# melo edit bundle\n\nMELO edits (neuron-indexed dynamic LoRA) for `{base['name']}` ({config['task']}).\n\n"
            f"- edits: {counts['edits']} in {counts['batches']} batches; LoRA blocks: {counts['blocks']} of "
            f"rank {config['rank_per_block']} on {len(config['lora_layers'])} layers\n"
            f"- router: {counts['clusters']} clusters, key at `{config['key_layer']}` ({config['key_pooling']} pooling, "
            f"{config['metric']}), init radius {config['init_radius']:.4g}\n"
            f"- made by melo {manifest.melo_version} on {manifest.created}\n\n"
            f"Apply with `melo generate --bundle DIR \"prompt\"`; inspect with `melo inspect DIR`.\n"
            f"The base model is not included: it is loaded from `{base['name']}` and checked against its fingerprint.\n")


def write_files(directory: Path, *, config: MeloConfig, lora: dict, router: Router, records: list[dict],
                base: dict, counts: dict, extra_files: dict[str, str] | None = None,
                key_encoder: dict | None = None) -> Manifest:
    """Write every bundle file into `directory` (which must exist and be empty); returns the manifest.

    `lora` maps names to float32 arrays (numpy, or torch tensors on the CPU)."""
    save_numpy({name: np.ascontiguousarray(np.asarray(t, np.float32)) for name, t in lora.items()},
               str(directory / LORA))
    save_numpy(router.arrays(), str(directory / CLUSTERS), metadata={"labels": json.dumps(router.labels),
                                                                      "subjects": json.dumps(router.member_subjects)})
    router.save_index(directory / INDEX)
    _write_text(directory / EDITS, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    for name, text in (extra_files or {}).items():
        _write_text(directory / name, text)
    manifest = Manifest(base_model=base, config=config, key_dim=int(router.dim), counts=counts,
                        key_encoder=key_encoder)
    _write_text(directory / CARD, _card(manifest))
    manifest.files = {p.name: sha256(p) for p in sorted(directory.iterdir()) if p.name != MANIFEST}
    _write_text(directory / MANIFEST, manifest.to_yaml())
    _fsync_dir(directory)
    return manifest


def write(out: Path, **contents) -> Manifest:
    """The one way a bundle is written: every file into a fresh temp dir beside `out`, then swapped
    into place (publish); on any failure the temp dir goes and `out` is as it was. `contents` are
    write_files' keywords. Returns the manifest."""
    tmp = temp_dir_for(out)
    try:
        manifest = write_files(tmp, **contents)
        publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def temp_dir_for(out: Path) -> Path:
    """A fresh temporary directory beside `out`, named so that a later run can tell it is stale."""
    out.parent.mkdir(parents=True, exist_ok=True)
    path = out.parent / f".{out.name}.melo-tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(out: Path, holding_lock: bool = False) -> list[Path]:
    """Remove temporary directories that killed runs left beside `out`; restore a bundle left half-swapped.

    Only the holder of the bundle's lock writes beside it, so under the lock every such directory
    is stale; without the lock, those of live processes are left alone.
    """
    removed = []
    if not out.parent.exists():
        return removed
    for path in sorted(out.parent.glob(f".{out.name}.melo-*")):
        try:
            pid = int(path.name.rsplit("-", 2)[-2])
        except (ValueError, IndexError):
            continue
        if not holding_lock and pid != os.getpid() and _pid_alive(pid):
            continue
        if ".melo-old-" in path.name and not out.exists():
            os.rename(path, out)  # killed between the two renames of the fallback swap
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with renameat2(RENAME_EXCHANGE); False where the OS cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    result = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return result == 0


def publish(tmp: Path, out: Path) -> None:
    """Move the finished bundle in `tmp` to `out`, replacing any bundle there in one step."""
    if not out.exists():
        os.rename(tmp, out)
    elif _exchange(tmp, out):
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old bundle
    else:
        old = out.parent / f".{out.name}.melo-old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.rename(out, old)
        os.rename(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(out.parent)


# -- reading ------------------------------------------------------------------------------------
def _index_header(path: Path) -> tuple[int, int]:
    """(dimension, element count) from an hnswlib index file's header, before hnswlib reads it."""
    with open(path, "rb") as f:
        head = f.read(48)
    if len(head) < 48:
        raise BundleError(f"{path}: the router index is truncated")
    _offset_level0, max_elements, count, size_per_element, label_offset, offset_data = struct.unpack("<6Q", head)
    if count > max_elements or not offset_data < label_offset <= size_per_element < 1 << 24 \
            or path.stat().st_size < 48 + count * size_per_element:
        raise BundleError(f"{path}: the router index header does not describe this file")
    return (label_offset - offset_data) // 4, count


def read_manifest(path: Path) -> Manifest:
    path = Path(path)
    if not path.exists():
        raise BundleError(f"{path}: no such bundle")
    if not (path / MANIFEST).is_file():
        raise BundleError(f"{path}: not a melo bundle (no {MANIFEST})")
    if (path / MANIFEST).is_symlink():
        raise BundleError(f"{path / MANIFEST}: is a symbolic link; a bundle's files are its own")
    try:
        text = (path / MANIFEST).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise BundleError(f"{path / MANIFEST}: unreadable manifest: {exc}") from None
    return Manifest.from_yaml(text, path / MANIFEST)


def verify_files(path: Path, manifest: Manifest) -> None:
    """Every file the manifest names is a plain file inside the bundle with the recorded sha256."""
    files = manifest.files
    for required in (LORA, INDEX, CLUSTERS, EDITS):
        if required not in files:
            raise BundleError(f"{path / MANIFEST}: does not list {required}")
    root = path.resolve()
    for name, digest in files.items():
        if not isinstance(name, str) or "/" in name or "\\" in name or name in ("", ".", ".."):
            raise BundleError(f"{path / MANIFEST}: file name {name!r} points outside the bundle")
        file = path / name
        if file.is_symlink() or not file.is_file() or file.resolve().parent != root:
            raise BundleError(f"{file}: missing or not a plain file in the bundle")
        if sha256(file) != digest:
            raise BundleError(f"{file}: changed since the bundle was written (sha256 mismatch)")


def _records(path: Path) -> list[dict]:
    """The bundle's edits.jsonl: one JSON object with a string input and target per line."""
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BundleError(f"{path}:{number}: malformed JSON: {exc.msg}") from None
        if not isinstance(record, dict) or not isinstance(record.get("input"), str) \
                or not isinstance(record.get("target"), str):
            raise BundleError(f"{path}:{number}: expected an object with string 'input' and 'target'")
        records.append(record)
    return records


def load(path: str | Path) -> Bundle:
    """Read and check a bundle; raises BundleError naming the file at fault."""
    path = Path(path)
    if not path.exists():
        clean_stale(path)
    manifest = read_manifest(path)
    verify_files(path, manifest)
    config = manifest.config
    try:
        arrays = load_numpy(str(path / CLUSTERS))
        from safetensors import safe_open
        with safe_open(str(path / CLUSTERS), "np") as f:
            metadata = f.metadata() or {}
        labels = json.loads(metadata.get("labels", "[]"))
        subjects = json.loads(metadata["subjects"]) if "subjects" in metadata else None
        lora = load_numpy(str(path / LORA))
    except Exception as exc:  # safetensors raises several types for damaged files
        raise BundleError(f"{path}: unreadable tensors: {str(exc).splitlines()[0]}") from None
    n_clusters, key_dim = manifest.counts["clusters"], manifest.key_dim
    if not isinstance(labels, list) or len(labels) != n_clusters or "centres" not in arrays \
            or arrays["centres"].shape != (n_clusters, key_dim):
        raise BundleError(f"{path / CLUSTERS}: does not hold the {n_clusters} clusters the manifest says")
    records = _records(path / EDITS)
    validate.cluster_arrays(arrays, labels, manifest, validate.lora_blocks(lora, manifest, path / LORA),
                            len(records), path / CLUSTERS)
    dim, count = _index_header(path / INDEX)
    if dim != key_dim or count != n_clusters:
        raise BundleError(f"{path / INDEX}: index of {count} keys of dimension {dim}; the manifest says "
                          f"{n_clusters} of dimension {key_dim}")
    if subjects is not None and (not isinstance(subjects, list) or len(subjects) != len(arrays["member_edit"])
                                 or not all(s is None or isinstance(s, str) for s in subjects)):
        raise BundleError(f"{path / CLUSTERS}: 'subjects' does not match the members")
    try:
        router = Router.restore(arrays, labels, path / INDEX, config.metric, config.init_radius, config.margin,
                                config.radius_policy, subjects)
    except RuntimeError as exc:  # hnswlib's own complaint about a damaged index file
        raise BundleError(f"{path / INDEX}: unreadable index: {str(exc).splitlines()[0]}") from None
    validate.index_labels(router.index, n_clusters, path / INDEX)
    edits = [Edit(r["input"], r["target"], tuple(r.get("rephrases") or ()), r.get("id"), r.get("batch"), i + 1,
                  superseded=r.get("superseded"), subject=r.get("subject")) for i, r in enumerate(records)]
    history = ([json.loads(line) for line in (path / HISTORY).read_text(encoding="utf-8").splitlines() if line.strip()]
               if HISTORY in manifest.files else [])
    return Bundle(path, manifest, config, lora, router, edits, records, history)
