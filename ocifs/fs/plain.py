"""Reads of plain files (one layer each): small ones whole and verified, large ones by Range.

Owns: how a plain layer is read and what is verified before a byte is served:

- **Small plain files** (at most :data:`PLAIN_WHOLE_MAX`): fetched whole and checked against
  the layer digest by the fetcher, like a chunk.
- **Large plain files**: read by HTTP Range in pieces of :data:`PIECE_SIZE`, which have no
  digest of their own. Pieces are only length-checked when served, and kept in a small LRU
  (:class:`PieceCache`, one Range request per piece however many readers want it). While the
  pieces of a blob arrive in order (a sequential read) they are hashed as they come; if the
  whole blob has been hashed and does not match the layer digest, the file is marked bad and
  every later read of it fails (:class:`~ocifs.errors.IntegrityError`), and an error is
  logged. Bytes already served cannot be recalled: prefer chunked files, verified per chunk.

Must not: put unverified pieces in the chunk cache (it holds digest-named, verified bytes
only), or hash on the trio loop (pieces are hashed in a worker thread).
"""

from __future__ import annotations

import collections
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from ocifs.cache.fetcher import Fetcher
from ocifs.cache.prefetch import Prefetcher, Stream, Units
from ocifs.concurrency import SingleFlight, gather
from ocifs.digest import Digest
from ocifs.errors import IntegrityError
from ocifs.format.media import DEFAULT_CHUNK_SIZE
from ocifs.format.model import PlainFile
from ocifs.fs.counters import FsStats

log = logging.getLogger(__name__)

#: Plain layers up to this size are fetched whole and verified like a chunk: 4 default
#: 16 MiB chunks, so the first read of such a file waits for at most ~0.1 s of transfer at
#: the ~700 MiB/s a single GET reaches here (docs/platform.md, "Measured on the reference
#: machine"), and one such flight holds at most 64 MiB of memory.
PLAIN_WHOLE_MAX = 64 * 1024 * 1024

#: Larger plain layers are read by Range requests of this size: the default chunk size, for
#: the same reason chunks have it (per-request costs vanish, a lazy read fetches little).
PIECE_SIZE = DEFAULT_CHUNK_SIZE

#: Unverified pieces of large plain layers kept in memory (bytes). They cannot enter the
#: verified chunk cache, so this small LRU is what turns 128 KiB-1 MiB FUSE reads into one
#: Range request per piece. 8 pieces: a read-ahead window of 4 pieces plus the ones being read.
PIECE_CACHE_BYTES = 8 * PIECE_SIZE

#: Read-ahead window cap for large plain layers: half the piece cache, so pieces fetched
#: ahead are not evicted before the reader gets to them.
PIECE_MAX_WINDOW = PIECE_CACHE_BYTES // 2

PieceKey = tuple[Digest, int]


class _PlainBlob:
    """Range-read state of one large plain layer: its pieces and the in-order hash."""

    __slots__ = ("bad", "digest", "hashed_to", "hasher", "hashing", "size", "units")

    def __init__(self, digest: Digest, size: int) -> None:
        self.digest = digest
        self.size = size
        self.units = Units.fixed(size, PIECE_SIZE)
        self.hasher: Any = digest.hasher()
        self.hashed_to = 0  # pieces [0, hashed_to) went into the hasher
        self.hashing = False  # a task is feeding the hasher right now
        self.bad = False


class PieceCache:
    """A small LRU of unverified Range pieces (bytes-bounded), loaded by one task per piece.

    The newest piece is kept even when it alone exceeds ``max_bytes``: it is the one a reader
    is waiting for.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._data: collections.OrderedDict[PieceKey, bytes] = collections.OrderedDict()
        self._bytes = 0
        # No error is shared: a waiter whose leader failed tries the Range request itself,
        # as before the helper existed (a piece has no digest, so nothing is remembered).
        self._loading: SingleFlight[PieceKey, bytes] = SingleFlight(shared_errors=())

    def peek(self, key: PieceKey) -> bytes | None:
        """The cached piece, without marking it used."""
        return self._data.get(key)

    def get(self, key: PieceKey) -> bytes | None:
        """The cached piece, marked most recently used; ``None`` if it is not cached."""
        data = self._data.get(key)
        if data is not None:
            self._data.move_to_end(key)
        return data

    async def load(self, key: PieceKey, fetch: Callable[[], Awaitable[bytes]]) -> tuple[bytes, bool]:
        """Fetch and cache a piece unless another task is doing it: ``(data, fetched_by_us)``."""

        async def fetch_and_keep() -> bytes:
            data = await fetch()
            self._keep(key, data)
            return data

        return await self._loading.run(key, fetch_and_keep)

    def drop(self, digest: Digest) -> None:
        """Forget every piece of blob ``digest``."""
        for key in [k for k in self._data if k[0] == digest]:
            self._bytes -= len(self._data.pop(key))

    def _keep(self, key: PieceKey, data: bytes) -> None:
        self._data[key] = data
        self._bytes += len(data)
        while self._bytes > self.max_bytes and len(self._data) > 1:
            _, old = self._data.popitem(last=False)
            self._bytes -= len(old)


class PlainReads:
    """The read path of the plain files of one filesystem, keyed by inode."""

    def __init__(self, fetcher: Fetcher, repository: str, stats: FsStats) -> None:
        self.fetcher = fetcher
        self.repository = repository
        self._stats = stats
        self._blobs: dict[int, _PlainBlob] = {}
        self._pieces = PieceCache(PIECE_CACHE_BYTES)

    async def read(self, inode: int, f: PlainFile, offset: int, size: int) -> bytes | memoryview:
        """Bytes ``[offset, offset + size)`` of ``f`` (node ``inode``), ``offset`` inside the
        file; clamped at its end."""
        end = min(offset + size, f.size)
        if f.size <= PLAIN_WHOLE_MAX:
            return await self.fetcher.read(self.repository, f.digest, f.size, offset, end)
        blob = self._blob(inode, f)
        if blob.bad:
            raise IntegrityError(f"{blob.digest}: the blob did not match its digest when read in full")
        first, last = blob.units.unit_at(offset), blob.units.unit_at(end - 1)
        pieces = await gather([functools.partial(self._piece, blob, n) for n in range(first, last + 1)])
        data = b"".join(pieces)
        start = offset - blob.units.start(first)
        return data[start : start + (end - offset)]

    def open_stream(self, prefetcher: Prefetcher, inode: int, f: PlainFile) -> Stream | None:
        """A read-ahead stream over ``f`` (``None`` for an empty file: nothing to read ahead)."""
        if f.size == 0:
            return None
        if f.size <= PLAIN_WHOLE_MAX:
            # One unit: fetched whole by the first read; only whole mode fetches it on open.
            return prefetcher.open_stream(inode, Units(f.size, (0,)), functools.partial(self._prefetch_whole, f))
        blob = self._blob(inode, f)
        return prefetcher.open_stream(inode, blob.units, functools.partial(self._prefetch_piece, blob),
                                      max_window=PIECE_MAX_WINDOW)  # fmt: skip

    def _blob(self, inode: int, f: PlainFile) -> _PlainBlob:
        blob = self._blobs.get(inode)
        if blob is None:
            blob = self._blobs[inode] = _PlainBlob(f.digest, f.size)
        return blob

    async def _prefetch_whole(self, f: PlainFile, n: int) -> None:
        await self.fetcher.prefetch(self.repository, f.digest, f.size)

    async def _prefetch_piece(self, blob: _PlainBlob, n: int) -> None:
        await self._piece(blob, n)

    async def _piece(self, blob: _PlainBlob, n: int) -> bytes:
        """Piece ``n`` of a large plain blob: from the piece cache, else one Range request
        (single flight per piece), then fed to the in-order hash if it is the next one."""
        key = (blob.digest, n)
        data = self._pieces.get(key)
        if data is not None:
            return data
        start = blob.units.start(n)
        fetch = functools.partial(self.fetcher.get_range, self.repository, blob.digest, start,
                                  start + blob.units.length(n))  # fmt: skip
        data, fetched = await self._pieces.load(key, fetch)
        if fetched:
            self._stats.piece_fetches += 1
            await self._advance_hash(blob)
        return data

    async def _advance_hash(self, blob: _PlainBlob) -> None:
        """Feed the hasher every cached piece that continues the in-order prefix; compare the
        digest once the whole blob went in. Cheap: each piece is hashed once, in a thread,
        only while reads come in order (a piece evicted before its turn ends verification)."""
        if blob.hashing or blob.bad:
            return
        blob.hashing = True
        try:
            while blob.hashed_to < len(blob.units):
                piece = self._pieces.peek((blob.digest, blob.hashed_to))
                if piece is None:
                    return
                await trio.to_thread.run_sync(blob.hasher.update, piece)
                blob.hashed_to += 1
            if blob.hasher.hexdigest() == blob.digest.hex:
                self._stats.plain_verified += 1
                log.debug("plain layer %s verified after a complete read", blob.digest.short)
            else:
                blob.bad = True
                self._stats.plain_verify_failures += 1
                self._pieces.drop(blob.digest)
                log.error("plain layer %s does not match its digest: further reads fail", blob.digest)
        finally:
            blob.hashing = False
