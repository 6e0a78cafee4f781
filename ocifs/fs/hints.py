"""Read-ahead hints: where a file's records end (safetensors: the header and each tensor).

Owns: learning a file's record boundaries once, from the first read of its start, and giving
them to the file's read-ahead streams (open now and opened later), so loading one tensor
fetches nothing after it (docs/benchmarks.md: 112 MiB instead of 176 for a 64 MiB tensor).
Must not: delay a reply (learning runs in the prefetcher's background nursery), or fail a
read: anything unreadable or malformed means no hints, silently (the reader's own reads
report real failures).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Iterable

import trio

from ocifs.cache.prefetch import Prefetcher, PrefetchMode, Stream
from ocifs.errors import OcifsError
from ocifs.format import safetensors as safetensors_layout
from ocifs.format.model import File

log = logging.getLogger(__name__)

#: Headers above this size are parsed in a worker thread: JSON of 256 KiB takes milliseconds
#: to parse, which would stall every other request of the mount (same bound as chunk indexes,
#: :data:`ocifs.cache.chunk_index.PARSE_IN_THREAD_ABOVE`).
PARSE_IN_THREAD_ABOVE = 256 * 1024

#: Reads bytes ``[offset, offset + size)`` of a file: ``(inode, file, offset, size)``.
ReadRange = Callable[[int, File, int, int], Awaitable[bytes | memoryview]]


class ReadAheadHints:
    """The record boundaries of the files of one filesystem, keyed by inode.

    ``read_range`` reads the rest of a header longer than the first read; ``streams_of``
    gives the streams open on a file now; ``path_of`` names an inode (safetensors is told by
    the name's extension, and log lines name the file).
    """

    def __init__(
        self,
        prefetcher: Prefetcher,
        read_range: ReadRange,
        streams_of: Callable[[int], Iterable[Stream]],
        path_of: Callable[[int], str],
    ) -> None:
        self.prefetcher = prefetcher
        self._read_range = read_range
        self._streams_of = streams_of
        self._path_of = path_of
        # Hints per file; None: tried (or trying), none found.
        self._boundaries: dict[int, tuple[int, ...] | None] = {}

    def apply(self, inode: int, stream: Stream) -> None:
        """Give a newly opened stream of ``inode`` the boundaries already learnt."""
        if hints := self._boundaries.get(inode):
            stream.set_boundaries(hints)

    def after_read(self, inode: int, f: File, offset: int, data: bytes | memoryview) -> None:
        """Called with every read through a handle that reads ahead: the first read of the
        file's start starts learning its boundaries, in the background."""
        if offset != 0 or inode in self._boundaries:
            return
        self._boundaries[inode] = None  # one attempt per file, also with concurrent readers
        learn = functools.partial(self._learn, inode, f, data)
        self.prefetcher.background(learn, f"reading the read-ahead hints of {self._path_of(inode)}")

    async def _learn(self, inode: int, f: File, first: bytes | memoryview) -> None:
        """Find where ``f``'s records end and give its streams those boundaries. ``first`` is
        the first read's data; the rest of a longer header is read here."""
        path = self._path_of(inode)
        if self.prefetcher.mode is not PrefetchMode.AUTO or not safetensors_layout.applies_to(path):
            return
        end = safetensors_layout.header_end(first)
        if end is None or end > f.size:
            return
        head = first
        if len(head) < end:
            try:
                head = await self._read_range(inode, f, 0, end)
            except OcifsError:
                return
        if end <= PARSE_IN_THREAD_ABOVE:
            hints = safetensors_layout.boundaries(head, f.size)
        else:
            hints = await trio.to_thread.run_sync(safetensors_layout.boundaries, bytes(head), f.size)
        if not hints:
            log.debug("%s: no read-ahead hints from its safetensors header", path)
            return
        self._boundaries[inode] = hints
        for stream in self._streams_of(inode):
            stream.set_boundaries(hints)
        log.debug("%s: read-ahead stops at the end of each of its %d records", path, len(hints))
