"""An exclusive lock per bundle path, so two `melo edit` runs never write the same bundle.

The lock is an flock on a small file beside the bundle (`.NAME.lock`), which exists only while a run
holds it: the holder removes it before releasing. A waiter that wins the lock on a file already
removed (its inode no longer at the path) starts over with a fresh file, so removal never lets two
runs in at once. The kernel releases the flock when a process dies, so a killed run never leaves a
bundle locked; the empty lock file it leaves is removed by the next command that reads or writes the
bundle (`remove_stale`).
"""

from __future__ import annotations

import fcntl
import math
import os
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

from melo_cli.errors import BundleBusy, InputError


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


def remove_stale(bundle: Path) -> bool:
    """Remove the bundle's lock file if no process holds it (a writer killed with SIGKILL cannot remove
    its own); True if one was removed. Taking the flock first makes this what a releasing holder does,
    so a writer waiting on that file moves to a fresh one; a file held now, or one this process may not
    remove (a read-only directory), is left alone."""
    path = lock_path(bundle)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.fstat(fd).st_ino != os.stat(path).st_ino:
            return False
        os.unlink(path)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def check_wait(wait: float) -> None:
    """`wait` is a number of seconds: finite and >= 0 (nan and -1 were taken as 0)."""
    if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not math.isfinite(wait) or wait < 0:
        raise InputError(f"`wait` {wait!r}: expected a number of seconds >= 0")


@contextmanager
def bundle_locks(paths: list[Path], wait: float = 0.0) -> Iterator[None]:
    """Lock several bundles, in a fixed order so two runs cannot deadlock."""
    check_wait(wait)
    unique = sorted({os.path.abspath(p) for p in paths})
    with ExitStack() as stack:
        for path in unique:
            stack.enter_context(bundle_lock(Path(path), wait))
        yield
