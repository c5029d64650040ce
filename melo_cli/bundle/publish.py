"""Publishing a bundle or an export atomically: a temporary directory beside the target, filled and then
swapped in with one rename (RENAME_EXCHANGE where Linux offers it); stale temporary directories of killed
runs are cleaned up, and only a melo bundle (or an empty directory) is ever replaced.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator



def fsync(path: Path) -> None:
    """fsync a file or a directory (the directory, so that the names in it are on disk too)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
    fsync(out.parent)


