"""An exclusive lock per bundle path, so two `melo edit` runs never write the same bundle.

The lock is an flock on a small file beside the bundle (`.NAME.lock`), which exists only while a run
holds it: the holder removes it before releasing. A waiter that wins the lock on a file already
removed (its inode no longer at the path) starts over with a fresh file, so removal never lets two
runs in at once. The kernel releases the flock when a process dies, so a killed run never leaves a
bundle locked (only, at worst, an empty lock file that the next run reuses and removes).
"""

from __future__ import annotations

import fcntl
import os
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

from .errors import BundleBusy


def lock_path(bundle: Path) -> Path:
    bundle = Path(os.path.abspath(bundle))
    return bundle.parent / f".{bundle.name}.lock"


def _acquire(path: Path, deadline: float, bundle: Path) -> int:
    """An fd holding the flock of the file now at `path`."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise BundleBusy(f"{bundle}: another melo edit is writing this bundle; "
                                         f"try again, or pass --wait SECONDS") from None
                    time.sleep(0.1)
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # the previous holder removed this file as we waited: lock the new one


@contextmanager
def bundle_lock(bundle: Path, wait: float = 0.0) -> Iterator[None]:
    """Hold the bundle's lock; wait up to `wait` seconds for another holder, then raise BundleBusy."""
    path = lock_path(bundle)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _acquire(path, time.monotonic() + max(0.0, wait), bundle)
    try:
        yield
    finally:
        try:
            os.unlink(path)  # while still holding it: waiters notice and retry on a fresh file
        except FileNotFoundError:
            pass
        os.close(fd)


@contextmanager
def bundle_locks(paths: list[Path], wait: float = 0.0) -> Iterator[None]:
    """Lock several bundles, in a fixed order so two runs cannot deadlock."""
    unique = sorted({os.path.abspath(p) for p in paths})
    with ExitStack() as stack:
        for path in unique:
            stack.enter_context(bundle_lock(Path(path), wait))
        yield
