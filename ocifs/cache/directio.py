"""Whole-entry writes and reads of cache files around the page cache (``O_DIRECT``), through a pool
of page-aligned buffers, with a permanent fallback to ordinary I/O where the filesystem refuses it.

Owns the system calls that move an entry's bytes: :class:`DirectIO` (per cache: whether direct
I/O still works there), the aligned :class:`BufferPool` shared by every thread, and the plain
helpers :func:`write_all` and :func:`pread_all`. Must not know about names, digests or eviction:
it is handed open descriptors. Tests inject failures (ENOSPC, EINVAL) by replacing these module
functions, so every caller looks them up here at call time.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import mmap
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

#: Entries at least this large are written and read whole with O_DIRECT where the filesystem
#: allows it; smaller ones (chunk indexes, small files) through the page cache, where the copy
#: costs little and the alignment padding would cost more.
DIRECT_WRITE_MIN = 1024 * 1024
#: Alignment of O_DIRECT buffers and lengths: the largest logical block size in common use.
DIRECT_ALIGN = 4096


class DirectIO:
    """Direct I/O for one cache directory: tried until the filesystem refuses it once, then never
    again for writes (:attr:`writes`) or reads (:attr:`reads`) — a refusal is a property of the
    filesystem, and trying again would cost a failed system call per chunk. ``where`` names the
    directory in the one debug line that says so."""

    __slots__ = ("reads", "where", "writes")

    def __init__(self, where: object) -> None:
        self.where = where
        self.writes = True
        self.reads = True

    def write_new(self, fd: int, data: bytes) -> None:
        """Write ``data`` to the new, empty file ``fd``: around the page cache if it is at least
        :data:`DIRECT_WRITE_MIN` bytes and direct writes still work here, else normally."""
        if self.writes and len(data) >= DIRECT_WRITE_MIN:
            if not write_direct(fd, data):
                self.writes = False
                log.debug("%s: no O_DIRECT here; cache entries are written through the page cache", self.where)
        else:
            write_all(fd, data)

    def read_whole(self, fd: int, size: int) -> bytes:
        """The ``size`` bytes of the file ``fd`` (short only if the file is): around the page
        cache if it is at least :data:`DIRECT_WRITE_MIN` bytes and direct reads still work."""
        if self.reads and size >= DIRECT_WRITE_MIN:
            data = read_direct(fd, size)
            if data is not None:
                return data
            self.reads = False
        return pread_all(fd, size, 0)


def write_direct(fd: int, data: bytes) -> bool:
    """Write ``data`` to the new, empty file ``fd`` bypassing the page cache (``O_DIRECT``) for
    all but its last partial block; ``False`` if the filesystem refuses direct I/O (the data
    is then written normally, and the caller stops trying).

    Why: a chunk is usually already in memory twice when it is cached — in the fetcher and,
    for the mount, in the FUSE file's page cache. Writing its cache file through the page
    cache adds a third copy that evicts other data, and costs 0.3 CPU-s per GiB at best and
    over 3 s where new pages are expensive (the reference machine: 3.4 s vs 0.2 s with
    O_DIRECT, docs/benchmarks.md). The bytes are copied into an aligned pooled buffer first
    (O_DIRECT wants block-aligned memory, offsets and lengths; ~2 ms per 16 MiB).
    """
    aligned = len(data) - len(data) % DIRECT_ALIGN
    with _direct_io(fd) as direct:
        if direct:
            try:
                with buffers.get(aligned) as buffer, memoryview(buffer) as whole, whole[:aligned] as view:
                    view[:] = memoryview(data)[:aligned]
                    done = 0
                    while done < aligned:
                        done += os.write(fd, view[done:])
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                direct = False  # accepted the flag but refuses the I/O (some network and FUSE filesystems)
    if not direct:  # start over, normally
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        write_all(fd, data)
        return False
    write_all(fd, memoryview(data)[aligned:])
    return True


def read_direct(fd: int, size: int) -> bytes | None:
    """The ``size`` bytes of the file ``fd`` read around the page cache (``O_DIRECT``) into a
    pooled aligned buffer, then copied into one ``bytes``; ``None`` if the filesystem refuses
    direct I/O (the caller reads normally and stops trying). Short only if the file is.

    Why: a whole-entry read is for a caller that keeps the chunk in memory (the memory tier, a
    pull writing it out). Read through the page cache it would also fill 16 MiB of new page
    cache per chunk, evicting other data, and on the reference machine new pages are what made
    warm reads slow and erratic (docs/benchmarks.md: a remount's 4 GiB read ran at 348–769 MB/s
    with up to 3.3 CPU-s per GiB before, 969–1,100 MB/s at 0.8–0.9 after). Not tried first: a
    ``RWF_NOWAIT`` read to take the bytes from the page cache when they happen to be there —
    on a miss it starts readahead into the page cache, which halved that read's speed.
    """
    padded = -(-size // DIRECT_ALIGN) * DIRECT_ALIGN
    with _direct_io(fd) as direct:
        if not direct:
            return None
        try:
            with buffers.get(padded) as buffer, memoryview(buffer) as whole, whole[:padded] as view:
                got = 0
                while got < size:
                    # Reads stay block-aligned: O_DIRECT returns short only at the end of the file.
                    n = os.preadv(fd, [view[got:]], got)
                    if n <= 0:
                        break
                    got += n
                return bytes(view[: min(got, size)])
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            return None  # accepted the flag but refuses the I/O (some network and FUSE filesystems)


@contextmanager
def _direct_io(fd: int) -> Iterator[bool]:
    """``O_DIRECT`` on ``fd`` for the block, its flags restored after; yields ``False`` (and
    changes nothing) if the filesystem refuses the flag."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_DIRECT)
    except OSError:
        yield False
        return
    try:
        yield True
    finally:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags)


class BufferPool:
    """Page-aligned buffers (anonymous ``mmap``) for O_DIRECT writes and reads, shared by all
    threads: as many exist as direct I/Os ever ran at once (two writes with the fetcher's
    write-behind, plus the whole-entry reads in flight), each as large as the largest chunk.
    A buffer too small for a request is replaced by a larger one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._free: list[mmap.mmap] = []

    @contextmanager
    def get(self, size: int) -> Iterator[mmap.mmap]:
        """A buffer of at least ``size`` bytes (at least one block) for the block's duration."""
        with self._lock:
            buffer = self._free.pop() if self._free else None
        if buffer is None or len(buffer) < size:
            if buffer is not None:
                buffer.close()
            buffer = mmap.mmap(-1, max(size, DIRECT_ALIGN))
        try:
            yield buffer
        finally:
            with self._lock:
                self._free.append(buffer)

    def idle(self) -> int:
        """How many buffers wait in the pool (none is lent out)."""
        with self._lock:
            return len(self._free)


#: The process's pool: direct I/O of every cache object shares it.
buffers = BufferPool()


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write all of ``data`` at the file position (``os.write`` may write less than asked)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def pread_all(fd: int, length: int, offset: int) -> bytes:
    """Read up to ``length`` bytes at ``offset`` into one ``bytes``, short only at end of file.
    Linux serves a regular file's read in one call, so normally there is no join and no copy."""
    if length == 0:
        return b""
    first = os.pread(fd, length, offset)
    if len(first) == length or not first:
        return first
    parts = [first]
    got = len(first)
    while got < length:
        part = os.pread(fd, length - got, offset + got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)
