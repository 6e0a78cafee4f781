"""Where ``ocifs pull`` writes: the output directory, safely, and the file I/O of its pieces.

Owns: opening every directory inside the target relative to its parent with ``O_NOFOLLOW`` (a
symlink planted in the target is refused, not followed) and checking the resolved path stays
inside; temp files named :data:`TEMP_PREFIX` in a file's final directory, and removing those a
dead pull left behind; one clear error for a directory that cannot be written; writing a piece
at its offset and hashing ranges of a temp file through ``mmap`` (why ``mmap``: see
:mod:`ocifs.commands.pull`). Must not: fetch, verify chunks or touch the cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import mmap
import os
import stat
from pathlib import Path
from typing import Any

from ocifs import procfs
from ocifs.digest import Digest
from ocifs.errors import FormatError, OcifsError, UsageError
from ocifs.format.paths import validate_path

log = logging.getLogger(__name__)

#: Temp files are ``.ocifs-pull-<pid>-<random>`` in the file's final directory (the rename must
#: not cross filesystems). The pid lets a later pull remove those of a pull that was killed.
TEMP_PREFIX = ".ocifs-pull-"


#: What to do when the output's disk is full (pull reserves each file's blocks before fetching it).
NO_SPACE_HINT = "free some space there or pull to another directory (-o); a re-run reuses what is cached"


_HASH_BLOCK = 64 << 20  # a re-hash maps this much of the file at a time


class TargetDir:
    """The output directory, written only through descriptors opened without following symlinks.

    The directory itself may be a symlink (the user chose it); anything inside it that is a
    symlink, where the artifact needs a directory or a file, is refused.
    """

    def __init__(self, root: Path) -> None:
        try:
            root.mkdir(parents=True, exist_ok=True)
            self.root = root.resolve(strict=True)
            self._fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise UsageError(f"cannot use output directory {root}: {exc.strerror or exc}") from exc
        self._cleaned: set[tuple[int, int]] = set()

    def close(self) -> None:
        os.close(self._fd)

    def show(self, path: str) -> str:
        return str(self.root / path)

    def open_parent(self, path: str) -> tuple[int, str]:
        """A descriptor of the directory that will hold ``path`` (created as needed) and the
        file's name in it. Refuses paths that would leave the target or cross a symlink."""
        validate_path(path, "file")  # again: this is the last line of defence
        lexical = os.path.normpath(os.path.join(self.root, path))
        if os.path.commonpath([self.root, lexical]) != str(self.root):
            raise FormatError(f"refusing to write {path!r}: it is outside {self.root}")
        *parents, name = path.split("/")
        fd = os.dup(self._fd)
        try:
            walked = self.root
            for component in parents:
                walked = walked / component
                with contextlib.suppress(FileExistsError):
                    os.mkdir(component, 0o777, dir_fd=fd)
                try:
                    child = os.open(component, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                except OSError as exc:
                    raise refusal(walked, "a directory", exc, fd, component) from None
                os.close(fd)
                fd = child
            # Belt and braces: where the directory we hold really is, whatever happened meanwhile.
            real = real_path(fd)
            if real is not None and os.path.commonpath([self.root, real]) != str(self.root):
                raise FormatError(f"refusing to write {path!r}: its directory {real} is outside {self.root}")
            self._remove_stale_temps(fd)
        except BaseException:
            os.close(fd)
            raise
        return fd, name

    def _remove_stale_temps(self, dir_fd: int) -> None:
        """Remove temp files of pulls that were killed (their pid is gone), once per directory."""
        st = os.fstat(dir_fd)
        if (st.st_dev, st.st_ino) in self._cleaned:
            return
        self._cleaned.add((st.st_dev, st.st_ino))
        for name in os.listdir(dir_fd):
            if not name.startswith(TEMP_PREFIX):
                continue
            pid_text = name[len(TEMP_PREFIX) :].split("-", 1)[0]
            if pid_text.isdigit() and int(pid_text) != os.getpid() and not alive(int(pid_text)):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=dir_fd)
                    log.debug("removed %s left by an interrupted pull", name)


def real_path(fd: int) -> str | None:
    """The path the kernel has for an open directory (Linux /proc), or None if unavailable."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


def alive(pid: int) -> bool:
    """Whether the pull that named a temp file after ``pid`` may still be writing it."""
    return procfs.is_running(pid)


def refusal(where: Path, wanted: str, exc: OSError, dir_fd: int, name: str) -> OcifsError:
    """The error for a path component that is not what the artifact needs there."""
    try:
        st = os.lstat(name, dir_fd=dir_fd)
    except OSError:
        return OcifsError(f"cannot create {where}: {exc.strerror or exc}")
    if stat.S_ISLNK(st.st_mode):
        return OcifsError(
            f"refusing to follow the symbolic link {where}: the artifact needs {wanted} there",
            hint="remove the link or pull into another directory",
        )
    return OcifsError(f"cannot use {where}: it exists and is not {wanted}")


def pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def hash_range(hasher: Any, fd: int, offset: int, size: int) -> None:
    """Feed bytes ``[offset, offset + size)`` of the file to ``hasher`` from an mmap of the
    page cache (no copy; hashlib releases the GIL)."""
    if size == 0:
        return
    start = offset - offset % mmap.ALLOCATIONGRANULARITY  # mmap offsets must be aligned
    with (
        mmap.mmap(fd, offset + size - start, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ, offset=start) as mapped,
        memoryview(mapped) as whole,
        whole[offset - start :] as view,
    ):
        hasher.update(view)


def range_matches(fd: int, offset: int, size: int, digest: Digest) -> bool:
    hasher = digest.hasher()
    hash_range(hasher, fd, offset, size)
    return bool(hasher.hexdigest() == digest.hex)


def hash_file(fd: int, size: int) -> str:
    hasher = hashlib.sha256()
    for offset in range(0, size, _HASH_BLOCK):
        hash_range(hasher, fd, offset, min(_HASH_BLOCK, size - offset))
    return hasher.hexdigest()
