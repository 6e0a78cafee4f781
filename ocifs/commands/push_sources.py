"""What ``ocifs push`` was asked to push: the files and directories named on the command line,
walked into :class:`SourceFile` values with their artifact paths, checked readable before a
byte is sent. Must not: read file contents or talk to a registry.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from ocifs.errors import OcifsError, UsageError
from ocifs.format.paths import check_paths, validate_path

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SourceFile:
    """A local file to push, named by its path inside the artifact."""

    path: str
    local: Path
    size: int
    mtime_ns: int


def collect_sources(paths: list[str]) -> list[SourceFile]:
    """The files named by ``paths``: a file by its base name, a directory's files relative to it.

    Symlinks, devices, sockets and FIFOs are refused (an artifact holds regular files only);
    two inputs mapping to one artifact path are refused.
    """
    found: dict[str, SourceFile] = {}

    def add(artifact_path: str, local: Path, st: os.stat_result) -> None:
        try:
            artifact_path = validate_path(artifact_path)
        except OcifsError as exc:
            raise UsageError(f"cannot push {local}: {exc}") from None
        if artifact_path in found:
            raise UsageError(
                f"two inputs would both be {artifact_path!r} in the artifact ({found[artifact_path].local}, {local})"
            )
        found[artifact_path] = SourceFile(artifact_path, local, st.st_size, st.st_mtime_ns)

    for raw in paths:
        top = Path(raw)
        st = _lstat(top)
        if stat.S_ISLNK(st.st_mode):
            raise UsageError(f"{top} is a symbolic link: push the file it points to instead")
        if stat.S_ISREG(st.st_mode):
            _check_readable(top)
            add(top.name, top, st)
        elif stat.S_ISDIR(st.st_mode):
            for dirpath, dirnames, filenames in os.walk(top, onerror=_walk_error):
                dirnames.sort()
                for name in sorted(filenames) + [d for d in dirnames if Path(dirpath, d).is_symlink()]:
                    local = Path(dirpath, name)
                    lst = _lstat(local)
                    if stat.S_ISLNK(lst.st_mode):
                        raise UsageError(f"{local} is a symbolic link: artifacts hold regular files only")
                    if not stat.S_ISREG(lst.st_mode):
                        raise UsageError(f"{local} is not a regular file (device, socket or FIFO)")
                    _check_readable(local)
                    add(local.relative_to(top).as_posix(), local, lst)
        else:
            raise UsageError(f"{top} is not a regular file or directory")
    if not found:
        raise UsageError("nothing to push: the directories given contain no files")
    check_paths(list(found))
    return list(found.values())


def _lstat(path: Path) -> os.stat_result:
    try:
        return path.lstat()
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file or directory") from None
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror}") from exc


def _check_readable(path: Path) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from exc


def _walk_error(exc: OSError) -> None:
    raise UsageError(f"cannot read directory {exc.filename}: {exc.strerror}")
