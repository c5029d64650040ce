"""Writing a bundle: every file into a fresh directory, each fsync'ed, with a manifest that hashes the
bytes melo meant to write; `write` then reads the directory back as a reader would (read.py) before one
rename swaps it in (publish.py). hnswlib writes an empty index on a full disk without raising: the read
back catches it. A failed or short write stops before the swap (exit 74).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path

import numpy as np
from safetensors.numpy import save as numpy_to_bytes

from melo_cli.bundle import validate
from melo_cli.bundle.layout import CARD, CLUSTERS, EDITS, HISTORY, INDEX, LORA, MANIFEST
from melo_cli.bundle.manifest import Manifest
from melo_cli.bundle.publish import fsync, replacing
from melo_cli.bundle.read import load
from melo_cli.config import MeloConfig
from melo_cli.edits.records import Edit
from melo_cli.errors import BundleError, WriteFailed



def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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


def counts(edits: list[Edit], router, batches: int, blocks: int) -> dict[str, int]:
    """What a manifest counts (and a reader checks against the files): edits, live edits, batches, blocks,
    clusters."""
    return {"edits": len(edits), "live_edits": sum(e.live for e in edits), "batches": batches, "blocks": blocks,
            "clusters": len(router)}


def write_files(directory: Path, *, config: MeloConfig, lora: dict, router, edits: list[Edit], base: dict,
                batches: int, history: list[dict] = (), key_encoder: dict | None = None) -> Manifest:
    """Write every bundle file into `directory` (which must exist and be empty), each fsync'ed; returns
    the manifest. `lora` maps names to float32 arrays (numpy, or torch tensors on the CPU), `history` the
    retention rows and events (history.jsonl, when there are any). The manifest records the sha256 of the
    bytes melo meant to write (the index: as hnswlib wrote it), so reading the directory back (write)
    also catches a file the disk did not keep."""
    digests: dict[str, str] = {}
    records = [e.to_json() for e in edits]
    blocks = {int(t.shape[0]) for t in lora.values()}

    def put(name: str, data: bytes) -> None:
        write_bytes(directory / name, data)
        digests[name] = hashlib.sha256(data).hexdigest()

    manifest = Manifest(base_model=base, config=config, key_dim=int(router.dim), key_encoder=key_encoder,
                        counts=counts(edits, router, batches, blocks.pop() if len(blocks) == 1 else 0))
    stored = np.dtype(config.block_dtype)  # float16 blocks are trained on its grid: the cast is exact
    put(LORA, numpy_to_bytes({name: np.ascontiguousarray(np.asarray(t, np.float32).astype(stored))
                              for name, t in lora.items()}, metadata={"melo": validate.lora_settings(config)}))
    arrays = {**router.arrays(), "member_digest": validate.member_digests(router.member_edit, records)}
    put(CLUSTERS, numpy_to_bytes(arrays, metadata={"labels": json.dumps(router.labels),
                                                   "subjects": json.dumps(router.member_subjects),
                                                   "short_forms": json.dumps([list(s) for s in router.member_short]),
                                                   "manifest": manifest.binding()}))
    router.save_index(directory / INDEX)  # hnswlib: no error on a full disk; write() reads it back, checked
    fsync(directory / INDEX)
    digests[INDEX] = sha256(directory / INDEX)
    put(EDITS, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8"))
    if history:
        put(HISTORY, "".join(json.dumps(row) + "\n" for row in history).encode("utf-8"))
    put(CARD, _card(manifest).encode("utf-8"))
    manifest.files = dict(sorted(digests.items()))
    write_text(directory / MANIFEST, manifest.to_yaml())
    fsync(directory)
    return manifest


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


