"""What a bundle may be written over: `--overwrite` once removed a directory of files melo never wrote
because it held some manifest.yaml, so only an empty directory or a melo bundle holding only the files its
manifest lists is ever replaced, and a symbolic link is written through (it keeps naming the bundle).
"""

from __future__ import annotations

import os
from pathlib import Path

from melo_cli.bundle.layout import MANIFEST
from melo_cli.bundle.read import read_manifest
from melo_cli.errors import BundleError, InputError


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
