"""An exclusive lock per bundle path, so two `melo edit` runs never write the same bundle.

The lock is an flock on a small file beside the bundle (`.NAME.lock`); the kernel releases it when
the process dies, so a killed run never leaves a bundle locked.
"""

from __future__ import annotations

import fcntl
import os
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

from .errors import MeloError


class BundleBusy(MeloError):
    """Another melo process holds the bundle: exit 75 (EX_TEMPFAIL, try again later)."""

    exit_code = 75


def lock_path(bundle: Path) -> Path:
    bundle = Path(os.path.abspath(bundle))
    return bundle.parent / f".{bundle.name}.lock"


@contextmanager
def bundle_lock(bundle: Path, wait: float = 0.0) -> Iterator[None]:
    """Hold the bundle's lock; wait up to `wait` seconds for another holder, then raise BundleBusy."""
    path = lock_path(bundle)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + max(0.0, wait)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise BundleBusy(f"{bundle}: another melo edit is writing this bundle; "
                                     f"try again, or pass --wait SECONDS") from None
                time.sleep(0.1)
        yield
    finally:
        os.close(fd)


@contextmanager
def bundle_locks(paths: list[Path], wait: float = 0.0) -> Iterator[None]:
    """Lock several bundles, in a fixed order so two runs cannot deadlock."""
    unique = sorted({os.path.abspath(p) for p in paths})
    with ExitStack() as stack:
        for path in unique:
            stack.enter_context(bundle_lock(Path(path), wait))
        yield
