"""Open-file handles: which inode each handle reads, and its read-ahead stream.

Owns: handle numbers (never reused for the life of the mount, so a stale handle is an error,
not another file) and the table of open files. Must not: read, fetch or decide read-ahead
(the prefetcher's streams do; this only keeps them with their handle).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from ocifs.cache.prefetch import Stream


@dataclass(slots=True)
class OpenFile:
    """One open handle: the file's inode and its read-ahead stream (``None``: no read-ahead)."""

    inode: int
    stream: Stream | None


class Handles:
    """The open handles of one filesystem."""

    def __init__(self) -> None:
        self._open: dict[int, OpenFile] = {}
        self._next = 1

    def __len__(self) -> int:
        """How many handles are open now."""
        return len(self._open)

    def add(self, inode: int, stream: Stream | None) -> int:
        """A new handle on ``inode`` reading ahead with ``stream``."""
        handle = self._next
        self._next += 1
        self._open[handle] = OpenFile(inode, stream)
        return handle

    def get(self, handle: int) -> OpenFile | None:
        return self._open.get(handle)

    def close(self, handle: int) -> None:
        """Forget ``handle`` and close its stream. Prefetches already started complete (they
        may serve others). An unknown handle is ignored (release is not answered with errors)."""
        open_file = self._open.pop(handle, None)
        if open_file is not None and open_file.stream is not None:
            open_file.stream.close()

    def streams_of(self, inode: int) -> Iterator[Stream]:
        """The read-ahead streams of every handle open on ``inode``."""
        for open_file in self._open.values():
            if open_file.inode == inode and open_file.stream is not None:
                yield open_file.stream
