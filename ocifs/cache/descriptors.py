"""The table of cache entries kept open for fast range reads, and the non-blocking read from them.

Owns those descriptors: who holds one, when it is closed (never under a reader's feet), and the
``preadv(RWF_NOWAIT)`` read that answers a range from the page cache on the caller's thread.
Must not open entries by name, count hits or judge sizes for the cache: the cache hands it
descriptors it opened and asks for bytes back.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

from ocifs.digest import Digest

#: Descriptors of entries recently read by range kept open per cache: a read whose bytes are in
#: the page cache is then one ``preadv(RWF_NOWAIT)`` on the caller's thread instead of a worker
#: thread hop plus open/fstat/close (on the reference machine the hop was ~30 % of a warm read's
#: CPU; docs/architecture.md, "Warm reads"). An entry another process evicts stays allocated on
#: disk while held: at most this many chunks (256 MiB at the default 16 MiB), until the next
#: read of it or it leaves the table.
OPEN_ENTRIES = 16


@dataclass(slots=True)
class Held:
    """A kept-open entry: descriptor and size. ``users`` counts borrowers: a retired descriptor
    is closed only when none is reading it, so a descriptor number is never reused under a
    reader's feet."""

    fd: int
    size: int
    users: int = 0
    retired: bool = False


class DescriptorTable:
    """At most ``capacity`` open entries, least recently used retired first. Thread safe; its
    lock is held only for dictionary work, never across a system call."""

    def __init__(self, capacity: int = OPEN_ENTRIES) -> None:
        self.capacity = capacity
        self._lock = threading.Lock()
        self._open: dict[Digest, Held] = {}  # insertion order = recency (oldest first)

    def __len__(self) -> int:
        with self._lock:
            return len(self._open)

    def keep(self, digest: Digest, fd: int, size: int) -> None:
        """Take ownership of ``fd``, ``digest``'s entry of ``size`` bytes; a descriptor held for
        it before and the least recently used beyond :attr:`capacity` are retired."""
        retired: list[Held] = []
        with self._lock:
            current = self._open.pop(digest, None)
            if current is not None:
                retired.append(current)
            self._open[digest] = Held(fd, size)
            while len(self._open) > self.capacity:
                retired.append(self._open.pop(next(iter(self._open))))
            to_close = [e.fd for e in retired if _retire(e)]
        for old in to_close:
            os.close(old)

    def borrow(self, digest: Digest) -> Held | None:
        """``digest``'s held entry, now the most recently used, lent until :meth:`give_back`;
        ``None`` if none is held."""
        with self._lock:
            entry = self._open.get(digest)
            if entry is None:
                return None
            self._open[digest] = self._open.pop(digest)  # most recently used
            entry.users += 1
            return entry

    def give_back(self, entry: Held) -> None:
        """End a :meth:`borrow`; closes the descriptor if it was retired meanwhile."""
        with self._lock:
            entry.users -= 1
            close = entry.retired and entry.users == 0
        if close:
            os.close(entry.fd)

    def forget(self, digest: Digest) -> None:
        """Stop holding ``digest``'s entry (it was removed, or the cache is closing): an unlinked
        file's space is freed only when its last descriptor closes."""
        with self._lock:
            entry = self._open.pop(digest, None)
            close = entry is not None and _retire(entry)
        if close and entry is not None:
            os.close(entry.fd)

    def close(self) -> None:
        """Forget every entry (borrowed ones close when given back). The table stays usable."""
        with self._lock:
            digests = list(self._open)
        for digest in digests:
            self.forget(digest)

    def pread_nowait(self, digest: Digest, start: int, end: int, size: int | None = None) -> memoryview | None:
        """Bytes ``[start, end)`` (cut short at the end, like slicing) of ``digest``'s held entry,
        only if the kernel has them all in its page cache; else ``None`` at once. ``None`` too if
        no entry is held, if it is not ``size`` bytes (the caller's slow path judges it), or if
        it was unlinked meanwhile (evicted, or removed as corrupt) — then it is also forgotten.
        Never blocks on the disk (``RWF_NOWAIT``)."""
        entry = self.borrow(digest)
        if entry is None:
            return None
        try:
            if size is not None and entry.size != size:
                return None
            if os.fstat(entry.fd).st_nlink == 0:
                self.forget(digest)
                return None
            piece = bytearray(max(0, min(end, entry.size) - start))
            if piece and os.preadv(entry.fd, [piece], start, os.RWF_NOWAIT) != len(piece):
                return None  # only part of it is in the page cache: let a thread wait for the rest
        except OSError:
            return None  # EAGAIN (not in the page cache) or trouble the slow path will report
        finally:
            self.give_back(entry)
        return memoryview(piece)


def _retire(entry: Held) -> bool:
    """Mark a held entry retired (caller holds the table's lock); whether to close it now."""
    entry.retired = True
    return entry.users == 0
