"""The bundle manifest as one typed object, read and written as versioned YAML.

A bundle is shared like a model file, so its manifest is read like input: every field is checked for
its type here, once, and the rest of melo reads attributes instead of digging through a dict.
`format` is the version: a manifest of another format is refused with a message that says so.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from melo_cli import __version__, clock
from melo_cli.config import MeloConfig
from melo_cli.errors import BundleError, InputError

FORMAT = 2
"""Format 2 binds the manifest to the files (`binding`, lora.safetensors' settings, one digest per
edit record); format 1 (bundles made before) still loads, without those checks."""
FORMATS = (1, 2)
COUNTS = ("edits", "batches", "blocks", "clusters")
"""Counts every manifest has (live_edits came later and is optional)."""


@dataclass
class Manifest:
    base_model: dict
    """name (as given), path (local bases), fingerprint, task, model_type, architecture, dtype, gguf."""
    config: MeloConfig
    key_dim: int
    counts: dict[str, int]
    key_encoder: dict | None = None
    """The sentence encoder the router keys come from: name and fingerprint (None: base-model keys)."""
    files: dict[str, str] = field(default_factory=dict)
    """sha256 of every other file of the bundle, by name."""
    format: int = FORMAT
    melo_version: str = __version__
    created: str = field(default_factory=clock.now)
    raw: dict | None = field(default=None, repr=False, compare=False)
    """The mapping as read from YAML (None for a manifest being written)."""

    def binding(self) -> str:
        """sha256 of everything the manifest says but its file list, in canonical JSON: written into
        clusters.safetensors, so that a changed value (alpha, a LoRA layer, a count) no longer matches,
        and no edit of the manifest alone drops the check (the file's own sha256 is listed)."""
        data = dict(self.raw if self.raw is not None else self.to_dict())
        data.pop("files", None)
        text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
        return hashlib.sha256(text.encode("ascii")).hexdigest()

    def to_dict(self) -> dict:
        out = {"format": self.format, "melo_version": self.melo_version, "created": self.created,
               "base_model": self.base_model, "config": self.config.to_dict(), "key_dim": self.key_dim,
               "counts": self.counts}
        if self.key_encoder is not None:
            out["key_encoder"] = self.key_encoder
        out["files"] = self.files
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True, default_flow_style=None,
                              width=100)

    @classmethod
    def from_yaml(cls, text: str, where: Path) -> "Manifest":
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise BundleError(f"{where}: unreadable manifest: {str(exc).splitlines()[0]}") from None
        return cls.from_dict(data, where)

    @classmethod
    def from_dict(cls, data: object, where: Path) -> "Manifest":
        """A manifest from parsed YAML, every field checked; BundleError names the field at fault."""
        if not isinstance(data, dict) or data.get("format") not in FORMATS or isinstance(data.get("format"), bool):
            found = data.get("format") if isinstance(data, dict) else None
            raise BundleError(f"{where}: not a melo bundle manifest of format {' or '.join(map(str, FORMATS))}"
                              + (f" (format {found!r}: made by another melo version)" if found is not None else ""))

        def need(key: str, kind: type | tuple, what: str):
            if key not in data:
                raise BundleError(f"{where}: missing '{key}'")
            value = data[key]
            if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
                raise BundleError(f"{where}: '{key}' must be {what}")
            return value

        base = need("base_model", dict, "a mapping")
        if not isinstance(base.get("name"), str) or not base["name"]:
            raise BundleError(f"{where}: 'base_model.name' must be a non-empty string")
        counts = need("counts", dict, "a mapping")
        for key in COUNTS:
            if not isinstance(counts.get(key), int) or isinstance(counts.get(key), bool) or counts[key] < 0:
                raise BundleError(f"{where}: 'counts.{key}' must be a whole number >= 0")
        key_dim = need("key_dim", int, "a whole number")
        if key_dim < 1:
            raise BundleError(f"{where}: 'key_dim' must be at least 1")
        files = need("files", dict, "a mapping of file names to sha256")
        key_encoder = data.get("key_encoder")
        if key_encoder is not None and not isinstance(key_encoder, dict):
            raise BundleError(f"{where}: 'key_encoder' must be a mapping")
        config = need("config", dict, "a mapping")
        if "entities" not in config:  # made before entities: its given subjects gate as whole names
            config = {**config, "entities": "subject-whole"}
        if "block_dtype" not in config:  # made before blocks were stored in float16
            config = {**config, "block_dtype": "float32"}
        try:
            parsed = MeloConfig.from_dict(config)
        except InputError as exc:  # the config checks itself
            raise BundleError(f"{where}: 'config' has invalid settings: {exc}") from None
        if parsed.unresolved or parsed.init_radius <= 0:
            raise BundleError(f"{where}: 'config' leaves {', '.join(parsed.unresolved) or 'init_radius'} unset")
        return cls(base_model=base, config=parsed, key_dim=key_dim, counts=counts, key_encoder=key_encoder,
                   files=files, format=data["format"], melo_version=str(data.get("melo_version", "?")),
                   created=str(data.get("created", "?")), raw=data)
