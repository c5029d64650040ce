"""The bundle on disk: a directory with a YAML manifest, LoRA weights, the router and the edits.

Writing is atomic: the bundle is built in a temporary directory beside the target, every file
fsync'ed and read back as a reader would (hashes, arrays, the index checked against the centres),
and only then swapped into place in one rename (RENAME_EXCHANGE where Linux offers it). A failed or
short write (hnswlib writes an empty index on a full disk without raising) stops before the swap.

Reading pins the bundle: the directory is opened once and each file is read once, through that
descriptor, for both its sha256 and its parse, so a replacement running beside the reader gives it
the old bundle or the new one, never a mix (a file that vanishes mid-read means the directory was
swapped out: the load starts over). Loading runs no code: YAML through `safe_load`, tensors through
safetensors, edits as JSON, and the hnswlib index only after every byte hnswlib follows is checked
(hnsw_file), from a private in-memory copy of the checked bytes.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import logging
import os
import shutil
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from safetensors.numpy import load as numpy_from_bytes, save as numpy_to_bytes

from . import hnsw_file, locks, validate
from .snapshot import Snapshot, Swapped, private_copy
from .config import MeloConfig
from .edits import Edit, auto_id
from .errors import BundleError, InputError, WriteFailed
from .manifest import Manifest
from .router import Router

MANIFEST = "manifest.yaml"
LORA = "lora.safetensors"
INDEX = "router.hnsw"
CLUSTERS = "clusters.safetensors"
EDITS = "edits.jsonl"
CARD = "README.md"
HISTORY = "history.jsonl"
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
def _fsync(path: Path) -> None:
    """fsync a file or a directory (the directory, so that the names in it are on disk too)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes(path: Path, data: bytes) -> None:
    """Write, flush and fsync; a short write raises here (OSError), not at some later read."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
        written = os.fstat(f.fileno()).st_size
    if written != len(data):
        raise OSError(errno.EIO, f"{path.name}: {written} of {len(data)} bytes written")


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


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
    """Write every bundle file into `directory` (which must exist and be empty), each fsync'ed; returns
    the manifest. `lora` maps names to float32 arrays (numpy, or torch tensors on the CPU). The
    manifest records the sha256 of the bytes melo meant to write (the index: as hnswlib wrote it), so
    reading the directory back (write) also catches a file the disk did not keep."""
    digests: dict[str, str] = {}

    def put(name: str, data: bytes) -> None:
        write_bytes(directory / name, data)
        digests[name] = hashlib.sha256(data).hexdigest()

    manifest = Manifest(base_model=base, config=config, key_dim=int(router.dim), counts=counts,
                        key_encoder=key_encoder)
    stored = np.dtype(config.block_dtype)  # float16 blocks are trained on its grid: the cast is exact
    put(LORA, numpy_to_bytes({name: np.ascontiguousarray(np.asarray(t, np.float32).astype(stored))
                              for name, t in lora.items()}, metadata={"melo": validate.lora_settings(config)}))
    arrays = {**router.arrays(), "member_digest": validate.member_digests(router.member_edit, records)}
    put(CLUSTERS, numpy_to_bytes(arrays, metadata={"labels": json.dumps(router.labels),
                                                   "subjects": json.dumps(router.member_subjects),
                                                   "short_forms": json.dumps([list(s) for s in router.member_short]),
                                                   "manifest": manifest.binding()}))
    router.save_index(directory / INDEX)  # hnswlib: no error on a full disk; write() reads it back, checked
    _fsync(directory / INDEX)
    digests[INDEX] = sha256(directory / INDEX)
    put(EDITS, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8"))
    for name, text in (extra_files or {}).items():
        put(name, text.encode("utf-8"))
    put(CARD, _card(manifest).encode("utf-8"))
    manifest.files = dict(sorted(digests.items()))
    write_text(directory / MANIFEST, manifest.to_yaml())
    _fsync(directory)
    return manifest


@contextmanager
def replacing(out: Path) -> Iterator[Path]:
    """A fresh temp dir beside `out` to fill; published over `out` in one swap when the block ends
    without error, removed (and `out` left as it was) when it raises."""
    tmp = temp_dir_for(out)
    try:
        yield tmp
        publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write(out: Path, **contents) -> Manifest:
    """The one way a bundle is written: every file into a fresh temp dir beside `out`, read back as
    a reader would, then swapped into place (`replacing`). On any failure the temp dir goes, `out` is
    as it was, and the error is WriteFailed (exit 74) naming what failed. `contents` are write_files'
    keywords. Returns the manifest."""
    try:
        with replacing(out) as tmp:
            manifest = write_files(tmp, **contents)
            load(tmp)
    except OSError as exc:
        raise WriteFailed(f"{out}: the bundle could not be written ({exc.strerror or exc}); "
                          f"nothing was replaced") from None
    except BundleError as exc:
        raise WriteFailed(f"{out}: the bundle did not read back as written ({exc}); nothing was replaced") \
            from None
    return manifest


def output_for(out: Path, overwrite: bool, source: Path | None = None) -> Path:
    """Where a bundle asked for at `out` is written, after refusing what may not be replaced: an
    existing `out` needs `overwrite` (unless it is the `source` being updated in place) and must be a
    melo bundle; a symbolic link's target is written, so the link keeps naming the new bundle
    (renaming over the link itself turned it into a directory and left the target old)."""
    in_place = source is not None and out.resolve() == Path(source).resolve()
    if out.exists() and not overwrite and not in_place:
        raise InputError(f"{out}: already exists; pass `overwrite` to replace it")
    check_replaceable(out)
    return Path(os.path.realpath(out)) if out.is_symlink() else out


def check_replaceable(out: Path) -> None:
    """Refuse to replace anything but a melo bundle: `--overwrite` once removed a directory of files
    melo never wrote because it held some manifest.yaml. An empty directory may be filled."""
    if not out.exists():
        return
    if not out.is_dir():
        raise InputError(f"{out}: exists and is not a directory; refusing to replace it")
    names = {p.name for p in out.iterdir()}
    if not names:
        return
    if MANIFEST not in names:
        raise InputError(f"{out}: exists and is not a melo bundle; refusing to replace it")
    try:
        manifest = read_manifest(out)
    except BundleError:
        raise InputError(f"{out}: its {MANIFEST} is not a melo bundle's; refusing to replace it") from None
    foreign = sorted(names - set(manifest.files) - {MANIFEST})
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise InputError(f"{out}: holds files its bundle does not list ({shown}); refusing to replace it")


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
    _fsync(out.parent)


# -- reading ------------------------------------------------------------------------------------
def _snapshot(path: Path) -> Snapshot:
    return Snapshot(path, (MANIFEST, LORA, INDEX, CLUSTERS, EDITS, CARD, HISTORY), MANIFEST)


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
    validate.index_labels(router.index, n_clusters, path / INDEX)
    given = {str(r["id"]) for r in records if r.get("id") is not None}
    edits = [Edit(r["input"], r["target"], tuple(r.get("rephrases") or ()),
                  str(r["id"]) if r.get("id") is not None else auto_id(i, given), r.get("batch"), i + 1,
                  superseded=r.get("superseded"), forgotten=r.get("forgotten"), subject=r.get("subject"))
             for i, r in enumerate(records)]
    try:
        history = ([json.loads(line) for line in files[HISTORY].decode("utf-8").splitlines() if line.strip()]
                   if HISTORY in files else [])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BundleError(f"{path / HISTORY}: not JSON lines") from None
    return Bundle(path, manifest, config, lora, router, edits, records, history)
