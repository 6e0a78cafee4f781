"""Reads of chunked files: byte range → chunk spans → verified chunks from the fetcher.

Owns: the validated chunk index of each chunked file (loaded on its first read, once however
many readers come at once; an invalid index is remembered, so no read fetches and parses it
again), the read path of chunked files, and their read-ahead unit (one chunk). Must not:
verify chunk bytes (the fetcher does, before anything is served), or copy a chunk held in
memory for a read inside it (the fast path returns the fetcher's ``memoryview``).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

from ocifs.cache.chunk_index import load_chunk_index
from ocifs.cache.fetcher import Fetcher
from ocifs.cache.prefetch import Prefetcher, Stream, Units
from ocifs.concurrency import SingleFlight, gather
from ocifs.errors import FormatError
from ocifs.format.model import ChunkedFile, ChunkIndex
from ocifs.fs.counters import FsStats

log = logging.getLogger(__name__)


class ChunkedReads:
    """The read path of the chunked files of one filesystem, keyed by inode.

    ``path_of`` names an inode in log lines; ``stats`` is the filesystem's counters.
    """

    def __init__(self, fetcher: Fetcher, repository: str, stats: FsStats, path_of: Callable[[int], str]) -> None:
        self.fetcher = fetcher
        self.repository = repository
        self._stats = stats
        self._path_of = path_of
        self._indexes: dict[int, ChunkIndex] = {}
        # A FormatError is permanent (the artifact is broken or hostile): remembered, so every
        # read does not fetch and parse the same bad index again. Transient errors are not.
        self._invalid: dict[int, FormatError] = {}
        # One load (fetch and parse) per file, whatever the number of first readers; they all
        # get its error too (the fetcher already retried what can be retried).
        self._loading: SingleFlight[int, ChunkIndex] = SingleFlight()

    async def index(self, inode: int, f: ChunkedFile) -> ChunkIndex:
        """The validated chunk index of ``f`` (node ``inode``), fetched on first use.

        The blob is checked against its digest and against the manifest (R14–R17) before it
        is used."""
        index = self._indexes.get(inode)
        if index is not None:
            return index
        invalid = self._invalid.get(inode)
        if invalid is not None:
            raise invalid
        index, _ = await self._loading.run(inode, functools.partial(self._load, inode, f))
        return index

    async def _load(self, inode: int, f: ChunkedFile) -> ChunkIndex:
        try:
            index = await load_chunk_index(self.fetcher, self.repository, f)
        except FormatError as exc:
            self._invalid[inode] = exc
            log.error("%s: invalid chunk index: %s", self._path_of(inode), exc)
            raise
        self._indexes[inode] = index
        self._stats.index_loads += 1
        log.debug("%s: chunk index %s loaded (%d chunks)", self._path_of(inode), f.index.digest.short,
                  len(index.chunks))  # fmt: skip
        return index

    async def read(self, inode: int, f: ChunkedFile, offset: int, size: int) -> bytes | memoryview:
        """Bytes ``[offset, offset + size)`` of ``f``, within the file (the caller clamps)."""
        index = await self.index(inode, f)
        spans = index.spans(offset, size)
        if len(spans) == 1:
            # The fast path: a chunk held in memory comes back as a memoryview of it, no copy.
            s = spans[0]
            return await self.fetcher.read(self.repository, s.chunk.digest, s.chunk.size, s.start, s.end)
        # A request straddling chunks (mmap faults read windows centred on the faulting page,
        # so offsets are not aligned: docs/platform.md, "FUSE on Linux") fetches its chunks
        # concurrently.
        calls = [
            functools.partial(self.fetcher.read, self.repository, s.chunk.digest, s.chunk.size, s.start, s.end)
            for s in spans
        ]
        return b"".join(await gather(calls))

    def open_stream(self, prefetcher: Prefetcher, inode: int, f: ChunkedFile) -> Stream:
        """A read-ahead stream over ``f`` whose unit is one chunk."""
        units = Units.from_sizes([c.size for c in f.chunks])
        return prefetcher.open_stream(inode, units, functools.partial(self._prefetch, inode, f))

    async def _prefetch(self, inode: int, f: ChunkedFile, n: int) -> None:
        """Read-ahead of chunk ``n``: after the index is validated, into the chunk cache."""
        chunk = (await self.index(inode, f)).chunks[n]
        await self.fetcher.prefetch(self.repository, chunk.digest, chunk.size)
