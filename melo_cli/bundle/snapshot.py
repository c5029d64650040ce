"""A bundle directory read as one snapshot, however often a writer replaces it.

The directory is opened once and the files a bundle holds are opened through it at once, so a writer
that swaps the directory out a moment later cannot take them away; each file is then read once,
through its descriptor, for both its hash and its parse. A file that is missing because the directory
was swapped out raises Swapped, and the reader starts over on the new one.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path

from melo_cli.errors import BundleError


class Swapped(Exception):
    """The pinned directory lost a file: a writer swapped the bundle out while it was read."""


class Snapshot:
    """A bundle directory opened once, with the files a bundle holds opened at once beside it (so a
    writer that swaps the directory out a moment later cannot take them away); every file is read
    through its descriptor, exactly once."""


    def __init__(self, path: Path, known: tuple[str, ...], manifest: str):
        self.path = path
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            raise BundleError(f"{path}: no such bundle") from None
        except NotADirectoryError:
            raise BundleError(f"{path}: not a melo bundle (not a directory)") from None
        self.manifest = manifest
        self.opened: dict[str, int | OSError] = {}
        for name in known:
            try:
                self.opened[name] = self._open(name)
            except OSError as exc:
                self.opened[name] = exc

    def _open(self, name: str) -> int:
        # O_NOFOLLOW: a link is refused (ELOOP); O_NONBLOCK: a FIFO planted as a file cannot hang the read
        return os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=self.fd)

    def close(self) -> None:
        for fd in self.opened.values():
            if isinstance(fd, int):
                os.close(fd)
        self.opened.clear()
        os.close(self.fd)

    def _swapped_out(self) -> bool:
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            return True
        pinned = os.fstat(self.fd)
        return (now.st_dev, now.st_ino) != (pinned.st_dev, pinned.st_ino)

    def open(self, name: str) -> int:
        """The descriptor of the plain file `name` in the pinned directory, handed over to the caller."""
        fd = self.opened.pop(name, None)
        try:
            if fd is None:
                fd = self._open(name)
            elif isinstance(fd, OSError):
                raise fd
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise BundleError(f"{self.path / name}: is a symbolic link; a bundle's files are its own") from None
            if exc.errno == errno.ENOENT:
                if self._swapped_out():
                    raise Swapped(name) from None
                if name == self.manifest:
                    raise BundleError(f"{self.path}: not a melo bundle (no {self.manifest})") from None
                raise BundleError(f"{self.path / name}: missing from the bundle") from None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise BundleError(f"{self.path / name}: not a plain file in the bundle")
        return fd

    @staticmethod
    def read_fd(fd: int) -> bytes:
        with os.fdopen(fd, "rb") as f:
            return f.read()

    def read(self, name: str) -> bytes:
        return self.read_fd(self.open(name))



@contextmanager
def private_copy(data: bytes):
    """A path to a private copy of `data`, for a reader that takes only paths (hnswlib): an anonymous
    in-memory file where Linux has them, else a temp file only this user can read."""
    if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
        fd = os.memfd_create("melo-router-index")
        try:
            _write_all(fd, data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
    else:
        with tempfile.NamedTemporaryFile(prefix="melo-index-") as f:
            f.write(data)
            f.flush()
            yield f.name


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
