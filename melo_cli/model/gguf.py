"""GGUF files as bases: `melo edit model.gguf ...`, the way many users hold their models.

transformers reads a GGUF (the `gguf` package) and dequantises it; that takes ~20 s for a 135M
model (metadata, tokenizer and every tensor), so melo does it once per file content and keeps the
result as an ordinary Hugging Face folder (float32 safetensors, tokenizer, config) in its cache,
keyed by the file's sha256: later loads of the same file take a fraction of a second and give
bit-identical weights. The cache holds only safetensors and JSON; nothing in it runs code.

Two traps handled here: a model loaded from GGUF carries a `quantization_config` that makes
`save_pretrained` refuse, so the folder is written from a model rebuilt from the config without
it; and transformers 5 writes `rope_parameters` only, which is what melo (transformers 5) reads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path

from melo_cli.errors import InputError

log = logging.getLogger("melo")
EXTRA = "pip install 'melo-cli[gguf]'"


@dataclass(frozen=True)
class GgufFile:
    path: Path
    sha256: str

    def record(self) -> dict:
        """What the manifest keeps about the file."""
        return {"file": self.path.name, "sha256": self.sha256, "bytes": self.path.stat().st_size}


def find(source: str) -> Path | None:
    """The GGUF file a base name means: a `.gguf` file, or a folder holding exactly one (and no config)."""
    path = Path(source).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        return path
    if path.is_dir() and not (path / "config.json").exists():
        found = sorted(path.glob("*.gguf"))
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise InputError(f"{source}: holds {len(found)} .gguf files; name the one to use")
    return None


def cache_root() -> Path:
    return Path(os.environ.get("MELO_CACHE") or Path.home() / ".cache" / "melo")


def _sha256(path: Path) -> str:
    """The file's sha256, remembered by (path, size, mtime) so a large file is hashed once."""
    stat = path.stat()
    index_path = cache_root() / "gguf" / "hashes.json"
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    try:
        index = json.loads(index_path.read_text())
        if isinstance(index, dict) and isinstance(index.get(key), str):
            return index[key]
    except (OSError, ValueError):
        index = {}
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    value = digest.hexdigest()
    try:
        index_path.parent.mkdir(parents=True, exist_ok=True)
        index = index if isinstance(index, dict) else {}
        index[key] = value
        tmp = index_path.with_suffix(f".{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_text(json.dumps(index))
        os.replace(tmp, index_path)
    except OSError:
        pass  # a read-only cache only costs a re-hash next time
    return value


def inspect_file(path: Path) -> GgufFile:
    return GgufFile(path, _sha256(path))


def converted_folder(sha256: str) -> Path:
    """Where the Hugging Face folder of the GGUF file with this sha256 is kept."""
    return cache_root() / "gguf" / sha256[:32]


def converted(gguf: GgufFile, trust_remote_code: bool = False) -> Path:
    """The Hugging Face folder made from this GGUF file (made now if the cache lacks it)."""
    folder = converted_folder(gguf.sha256)
    if (folder / "config.json").exists():
        return folder
    try:
        import gguf as _gguf  # noqa: F401  (transformers needs it to read the file)
        import accelerate  # noqa: F401
    except ImportError:
        raise InputError(f"{gguf.path}: reading GGUF needs the gguf and accelerate packages: {EXTRA}") from None
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to a Hugging Face folder in %s (once per file)", gguf.path, folder)
    source, name = str(gguf.path.parent), gguf.path.name
    quiet = not log.isEnabledFor(logging.DEBUG) and "TQDM_DISABLE" not in os.environ
    if quiet:
        os.environ["TQDM_DISABLE"] = "1"  # the GGUF reader's own progress bar
    try:
        config = AutoConfig.from_pretrained(source, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(source, gguf_file=name, dtype="float32")
        tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=name)
    except (OSError, ValueError, KeyError, RuntimeError, IndexError, EOFError, struct.error) as exc:  # a damaged file
        raise InputError(f"{gguf.path}: cannot read this GGUF file (truncated or damaged?): "
                         f"{str(exc).splitlines()[0]}") from None
    finally:
        if quiet:
            del os.environ["TQDM_DISABLE"]
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    clean = type(model)(config)  # without quantization_config, which save_pretrained refuses
    clean.load_state_dict(model.state_dict())
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        clean.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "melo-gguf.json").write_text(json.dumps(gguf.record() | {"source": str(gguf.path)}) + "\n")
        try:
            os.rename(tmp, folder)
        except OSError:  # another process made it first
            if not (folder / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
