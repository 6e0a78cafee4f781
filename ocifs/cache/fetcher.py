"""The one fetch path that ``ocifs pull`` and the FUSE mount share: memory → disk → network.

This module owns *how* a blob's bytes are obtained: single-flight per digest, bounded download
concurrency, retries of corrupt or failed downloads, verification before anything is served or
cached. It must not know about files, offsets or FUSE (the callers map those to digests), or
import the registry package: the registry client satisfies :class:`BlobSource` structurally,
tests use in-memory fakes, and the backoff is the stack's one (:mod:`ocifs.retry`).

Invariants:

- **Verified before served or cached.** Every downloaded chunk is hashed (in a worker thread;
  hashlib releases the GIL) and only bytes that match their digest are returned or handed to
  the cache. A chunk that stays corrupt after the retries raises
  :class:`~ocifs.errors.IntegrityError` naming the digest; callers add file/chunk context.
- **Single flight.** However many tasks ask for one digest at once, at most one of them (the
  leader) reads the disk or downloads; the others wait for its result. If the leader fails, the
  waiters that asked for the same repository get the same exception; a later call starts
  afresh. If the leader is cancelled, a waiter takes over.
- **Bounded fan-out.** At most ``max_concurrency`` requests to the source are in flight
  (a ``trio.CapacityLimiter``), whatever the number of callers; retries wait outside it.
- **Write-behind, when enabled.** Inside :meth:`Fetcher.writing_behind`, a verified download is
  returned at once and written to the disk cache by a background task (a chunk is served
  about a third sooner: the write costs as much as the download here). Until its write ends
  the chunk is served from memory (``_pending``) and its cross-process claim stays held, so a
  peer process waits for the file rather than downloading it again. Pending bytes are
  bounded; past the bound the leader writes inline (back-pressure). Leaving the context waits
  for every write, shielded from cancellation: an unmount or a failed pull still leaves every
  verified chunk on disk.

All methods must be called from the one trio run that created the :class:`Fetcher`; the
object keeps no locks because trio tasks only switch at awaits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import trio

from ocifs.cache.store import ChunkCache
from ocifs.concurrency import SingleFlight
from ocifs.digest import Digest
from ocifs.errors import FormatError, IntegrityError, OcifsError, RegistryUnavailable
from ocifs.retry import backoff

log = logging.getLogger(__name__)

#: First retry waits up to this many seconds (full jitter, :func:`ocifs.retry.backoff`,
#: the stack's one backoff), doubling per retry up to :data:`MAX_RETRY_DELAY`. The registry
#: client already retries transport errors itself with backoff, so by the time a
#: RegistryUnavailable reaches us the registry has been failing for a while: wait a little longer
#: rather than hammer it (docs/requests.md: how the two levels compose).
RETRY_BASE_DELAY = 1.0
MAX_RETRY_DELAY = 20.0
#: While another process downloads a chunk we need, look for it this often, and give up
#: waiting (download it ourselves) after CLAIM_WAIT: a 16 MiB chunk takes well under a second
#: here, so a claim held longer belongs to a peer that is stalled or retrying.
CLAIM_POLL = 0.02
CLAIM_WAIT = 30.0
#: Default bound on verified chunks waiting for their disk-cache write (write-behind): every
#: download slot's chunk at the default 8 jobs x 16 MiB. Past it the leader writes inline.
WRITE_BEHIND_BYTES = 128 * 1024 * 1024
#: Cache writes running at once: more only adds contention on the filesystem's locks.
WRITE_BEHIND_WORKERS = 2


class BlobSource(Protocol):
    """Where blobs come from: the registry client, or a fake in tests.

    Implementations translate their own failures into :mod:`ocifs.errors` (transient ones as
    :class:`~ocifs.errors.RegistryUnavailable`) and need not verify digests: the fetcher does.
    """

    async def get_blob(self, repository: str, digest: Digest, size: int | None = None) -> bytes:
        """The whole blob. With ``size``, a body of another length may be rejected or retried."""
        ...

    async def get_blob_range(self, repository: str, digest: Digest, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` (end exclusive, ``start < end``). A server that ignores
        ``Range`` and answers 200 with the whole blob is the implementation's problem."""
        ...


@dataclass(slots=True)
class FetchStats:
    """Counters of one :class:`Fetcher`, since it was created.

    ``downloads``: requests made to the source, every attempt included; ``bytes_downloaded``:
    bytes those requests returned (corrupt ones included). ``memory_hits``/``disk_hits``: calls
    answered from the cache tiers; ``coalesced``: calls answered by another task's flight.
    ``in_flight``: source requests running now (``peak_in_flight`` the most at once).
    ``retries``: attempts after a failed one; ``integrity_failures``: downloads whose bytes did
    not match the digest (or were cut short); ``errors``: fetches that finally failed;
    ``claim_waits``: polls while another process sharing the cache downloaded a chunk we need.
    ``written_behind``: chunks written to the disk cache by a background task
    (:meth:`Fetcher.writing_behind`); ``pending_writes`` of them are waiting or being written.
    """

    downloads: int = 0
    bytes_downloaded: int = 0
    memory_hits: int = 0
    disk_hits: int = 0
    coalesced: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0
    retries: int = 0
    errors: int = 0
    integrity_failures: int = 0
    claim_waits: int = 0
    written_behind: int = 0
    pending_writes: int = 0


class Fetcher:
    """Fetches verified blobs through the cache; shared by pull and the mount.

    ``max_concurrency`` bounds concurrent requests to ``source`` (8: parallel GETs beat one
    stream by 3x at 40 ms RTT, and 8 saturates loopback on 2 cores; design §7).
    ``retries`` is the number of further attempts after a download that failed with
    :class:`RegistryUnavailable` or returned corrupt bytes (so ``retries + 1`` attempts).
    """

    def __init__(
        self,
        source: BlobSource,
        cache: ChunkCache,
        *,
        max_concurrency: int = 8,
        retries: int = 3,
        retry_base_delay: float = RETRY_BASE_DELAY,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.source = source
        self.cache = cache
        self.max_concurrency = max_concurrency
        self.retries = retries
        self._retry_base_delay = retry_base_delay
        self._limiter = trio.CapacityLimiter(max_concurrency)
        # One download per digest at a time. Waiters in the same repository share the leader's
        # error; another repository's NotFound or denial says nothing about ours.
        self._flights: SingleFlight[Digest, bytes] = SingleFlight()
        self._stats = FetchStats()
        # Write-behind state (see writing_behind): the nursery writes run in, the chunks
        # verified but not yet on disk, and their total size against the bound.
        self._writer: trio.Nursery | None = None
        self._write_limiter = trio.CapacityLimiter(WRITE_BEHIND_WORKERS)
        self._pending: dict[Digest, bytes] = {}
        self._pending_bytes = 0
        self._max_pending_bytes = 0

    def stats(self) -> FetchStats:
        """A copy of the counters as they are now."""
        return dataclasses.replace(self._stats, pending_writes=len(self._pending))

    @contextlib.asynccontextmanager
    async def writing_behind(self, max_pending_bytes: int = WRITE_BEHIND_BYTES) -> AsyncIterator[None]:
        """Within this context, downloads are returned before their disk-cache write ends.

        The writes run in background tasks (at most :data:`WRITE_BEHIND_WORKERS` at once);
        verified chunks waiting for theirs, at most ``max_pending_bytes`` in all, are served
        from memory meanwhile. On exit — normal, error or cancellation — every write started is
        finished before this returns. Not reentrant.
        """
        if self._writer is not None:
            raise RuntimeError("writing_behind is already active")
        try:
            async with trio.open_nursery() as nursery:
                self._writer, self._max_pending_bytes = nursery, max_pending_bytes
                try:
                    yield
                finally:
                    self._writer = None  # new downloads write inline from here on
        finally:
            self._max_pending_bytes = 0

    async def get(self, repository: str, digest: Digest, size: int | None = None) -> bytes:
        """The verified bytes of blob ``digest`` of ``repository``: from memory, else disk (in a
        thread), else downloaded — by one task per digest at a time — verified and cached.

        ``size`` is the length the caller expects (from the chunk index); bytes that match the
        digest but not ``size`` mean the index is wrong: :class:`FormatError`. Raises
        :class:`IntegrityError` if every download attempt was corrupt, or the source's error
        (e.g. :class:`RegistryUnavailable`, :class:`~ocifs.errors.NotFound`).
        """
        data = self._from_memory(digest)
        if data is not None:
            return _check_size(digest, data, size)
        data, led = await self._flights.run(digest, functools.partial(self._lead, repository, digest, size),
                                            scope=repository)  # fmt: skip
        if not led:
            self._stats.coalesced += 1
        return _check_size(digest, data, size)

    async def read(self, repository: str, digest: Digest, size: int | None, start: int, end: int) -> bytes | memoryview:
        """Bytes ``[start, end)`` of a chunk (cut short at its end, like slicing).

        The read path's variant of :meth:`get`: a cached chunk is served by reading just the
        range (no whole-chunk copy for a 128 KiB FUSE read); a missing one is fetched whole
        through :meth:`get` (verified, single-flight) and sliced. A chunk held in memory is
        returned as a zero-copy ``memoryview`` of it (FUSE replies take any buffer); a range
        the kernel has in its page cache is read without leaving the event loop's thread.
        """
        if not 0 <= start <= end:
            raise ValueError(f"bad range [{start}, {end})")
        data = self._from_memory(digest)
        if data is not None:
            return _view(_check_size(digest, data, size), start, end)
        if digest not in self._flights:
            # Page-cached bytes of an entry held open: answered here, no thread hop.
            piece: bytes | memoryview | None = self.cache.read_range_nowait(digest, start, end, size=size)
            if piece is None:
                read_range = functools.partial(self.cache.read_range, digest, start, end, size=size)
                piece = await trio.to_thread.run_sync(read_range)
            if piece is not None:
                self._stats.disk_hits += 1
                return piece
        return _view(await self.get(repository, digest, size), start, end)

    async def prefetch(self, repository: str, digest: Digest, size: int | None = None) -> None:
        """Make sure ``digest`` is in memory, without returning it: returns at once if it is
        there, else loads it as :meth:`get` would — from the disk cache (read whole, around
        the page cache) or the registry — joining a flight in progress. A chunk the memory
        tier cannot hold is only made sure to be on disk. Errors propagate; the caller (a
        read-ahead task) decides whether they matter."""
        if digest in self._pending or self.cache.in_memory(digest):
            return
        # A chunk the memory tier could not keep is not read from disk now: it would be wasted.
        unkeepable = size is None or size > self.cache.memory_bytes
        if unkeepable and digest not in self._flights and await trio.to_thread.run_sync(self.cache.contains, digest):
            return
        await self.get(repository, digest, size)

    async def get_range(self, repository: str, digest: Digest, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of a large plain blob, by a Range request.

        **Not verified**: a piece of a blob has no digest of its own, so these bytes are only
        checked for length. Callers must verify the whole-blob digest where they can (e.g. pull
        hashes the assembled file) and should prefer chunked files, which are verified per
        chunk. ``end`` must not exceed the blob's size (a short answer counts as corrupt and is
        retried). Pieces are not cached (the cache holds verified, digest-named bytes only),
        but if the whole blob happens to be cached, the range is served from it.
        """
        if not 0 <= start <= end:
            raise ValueError(f"bad range [{start}, {end})")
        if start == end:
            return b""
        whole = self._from_memory(digest)
        if whole is not None:
            return whole[start:end]
        piece = await trio.to_thread.run_sync(self.cache.read_range, digest, start, end)
        if piece is not None and len(piece) == end - start:
            self._stats.disk_hits += 1
            return piece

        try:
            return await self._download_range(repository, digest, start, end)
        except OcifsError:
            self._stats.errors += 1
            raise

    # ------------------------------------------------------------------ internals

    def _from_memory(self, digest: Digest) -> bytes | None:
        """The chunk from the memory tier or the write-behind queue, counted as a memory hit."""
        data = self.cache.get_memory(digest)
        if data is None:
            data = self._pending.get(digest)
        if data is not None:
            self._stats.memory_hits += 1
        return data

    async def _download_range(self, repository: str, digest: Digest, start: int, end: int) -> bytes:
        """Download a range until it has the right length; retries short and unavailable answers."""
        attempts = self.retries + 1
        short = 0
        for attempt in range(1, attempts + 1):
            if attempt > 1:
                await self._wait_before_retry(attempt - 1)
            request = functools.partial(self.source.get_blob_range, repository, digest, start, end)
            try:
                data = await self._request(request)
            except RegistryUnavailable as exc:
                if attempt == attempts:
                    raise
                log.debug("range of %s: %s; retrying (%d/%d)", digest.short, exc, attempt, self.retries)
                continue
            if len(data) == end - start:
                if short:
                    log.warning(
                        "range [%d, %d) of %s from %s came back short %d time(s) before a whole one",
                        start, end, digest, repository, short,
                    )  # fmt: skip
                return data
            short += 1
            self._stats.integrity_failures += 1
            log.debug(
                "range [%d, %d) of %s from %s came back with %d bytes (attempt %d/%d)",
                start, end, digest, repository, len(data), attempt, attempts,
            )  # fmt: skip
        raise IntegrityError(
            f"range [{start}, {end}) of {digest}: wrong length from the registry in {attempts} attempts"
        )

    async def _lead(self, repository: str, digest: Digest, size: int | None) -> bytes:
        """Load ``digest`` as the leader of its flight; a failure counts once, here."""
        try:
            return await self._load(repository, digest, size)
        except OcifsError:
            self._stats.errors += 1
            raise

    async def _load(self, repository: str, digest: Digest, size: int | None) -> bytes:
        get_disk = functools.partial(self.cache.get_disk, digest, size=size)
        data = await trio.to_thread.run_sync(get_disk)
        if data is not None:
            self._stats.disk_hits += 1
            return data
        # Single flight across processes too: two mounts (or a mount and a pull) sharing the
        # cache would otherwise both download a chunk both need at the same moment.
        claim, waited = await self._claim(digest)
        try:
            if waited:  # another process held the claim: it has probably stored the chunk
                data = await trio.to_thread.run_sync(get_disk)
                if data is not None:
                    self._stats.disk_hits += 1
                    return data
            data = await self._download_verified(repository, digest, size)
            if self._write_behind(digest, data, claim):
                claim = None  # the background write releases it once the file is in place
                return data
            # put() never raises for I/O trouble (it degrades to "uncached" with one warning).
            await trio.to_thread.run_sync(functools.partial(self.cache.put, digest, data, verified=True))
            return data
        finally:
            if claim is not None:
                self.cache.release_claim(claim)

    def _write_behind(self, digest: Digest, data: bytes, claim: Path | None) -> bool:
        """Queue the cache write of verified ``data`` if write-behind is on and has room;
        whether it did (then the queued write owns ``claim``)."""
        writer = self._writer
        if writer is None or digest in self._pending or self._pending_bytes + len(data) > self._max_pending_bytes:
            return False
        self._pending[digest] = data
        self._pending_bytes += len(data)
        writer.start_soon(self._write_pending, digest, data, claim)
        return True

    async def _write_pending(self, digest: Digest, data: bytes, claim: Path | None) -> None:
        # Shielded: leaving writing_behind (an unmount, a failed pull) must still store every
        # chunk that was verified, and release its claim.
        with trio.CancelScope(shield=True):
            try:
                async with self._write_limiter:
                    put = functools.partial(self.cache.put, digest, data, verified=True)
                    await trio.to_thread.run_sync(put)
                self._stats.written_behind += 1
            finally:
                del self._pending[digest]
                self._pending_bytes -= len(data)
                if claim is not None:
                    self.cache.release_claim(claim)

    async def _claim(self, digest: Digest) -> tuple[Path | None, bool]:
        """Claim ``digest``'s download in the shared cache, waiting while another process holds
        it. Returns the claim (None if the chunk appeared on disk meanwhile, or after
        :data:`CLAIM_WAIT` seconds, when the caller downloads anyway rather than trust a stuck
        peer) and whether it had to wait (then the caller looks on disk again first)."""
        deadline = trio.current_time() + CLAIM_WAIT
        waited = False
        while True:
            claim = await trio.to_thread.run_sync(self.cache.try_claim, digest)
            if claim is not None:
                return claim, waited
            if await trio.to_thread.run_sync(self.cache.contains, digest) or trio.current_time() > deadline:
                return None, True
            waited = True
            self._stats.claim_waits += 1
            await trio.sleep(CLAIM_POLL)

    async def _download_verified(self, repository: str, digest: Digest, size: int | None) -> bytes:
        """Download until the bytes match the digest; retries corrupt and unavailable answers.

        Logging: each corrupt attempt at DEBUG; one WARNING if a retry then got good bytes (the
        operation succeeded, but something corrupts data); none when every attempt was
        corrupt, since the caller reports the raised error as its one line (gap P1)."""
        attempts = self.retries + 1
        corrupt = 0
        for attempt in range(1, attempts + 1):
            if attempt > 1:
                await self._wait_before_retry(attempt - 1)
            try:
                data = await self._request(functools.partial(self.source.get_blob, repository, digest, size))
            except RegistryUnavailable as exc:
                if attempt == attempts:
                    raise
                log.debug("%s: %s; retrying (%d/%d)", digest.short, exc, attempt, self.retries)
                continue
            # Hash in a worker thread: ~12 ms per 16 MiB chunk that would otherwise stall
            # every other task of the mount (design §7: ~1,300 MiB/s per core).
            if await trio.to_thread.run_sync(digest.matches, data):
                log.debug("fetched %s from %s (%d bytes)", digest.short, repository, len(data))
                if corrupt:
                    log.warning(
                        "download of %s from %s did not match its digest %d time(s) before a good one:"
                        " something between here and the registry's storage corrupts data",
                        digest, repository, corrupt,
                    )  # fmt: skip
                return data
            corrupt += 1
            self._stats.integrity_failures += 1
            log.debug(
                "download of %s from %s does not match its digest (attempt %d/%d)",
                digest, repository, attempt, attempts,
            )  # fmt: skip
        tries = "1 attempt" if attempts == 1 else f"{attempts} attempts"
        raise IntegrityError(f"{digest}: downloaded bytes did not match the digest in {tries}")

    async def _request(self, request: Callable[[], Awaitable[bytes]]) -> bytes:
        """Run one source request inside the concurrency limit, counting it. ``request`` is
        called only once a slot is held (a coroutine made earlier would leak on cancellation)."""
        async with self._limiter:
            stats = self._stats
            stats.downloads += 1
            stats.in_flight += 1
            stats.peak_in_flight = max(stats.peak_in_flight, stats.in_flight)
            try:
                data = await request()
            finally:
                stats.in_flight -= 1
            stats.bytes_downloaded += len(data)
            return data

    async def _wait_before_retry(self, retry_number: int) -> None:
        """Exponential backoff with full jitter, so chunks that failed together (a registry
        restart) do not all come back in the same instant."""
        self._stats.retries += 1
        await trio.sleep(backoff(retry_number, self._retry_base_delay, MAX_RETRY_DELAY))


def _check_size(digest: Digest, data: bytes, size: int | None) -> bytes:
    if size is not None and len(data) != size:
        raise FormatError(f"blob {digest} is {len(data)} bytes, but the index says {size}")
    return data


def _view(data: bytes, start: int, end: int) -> bytes | memoryview:
    """``data[start:end]`` without copying: the whole object, or a memoryview of the range."""
    if start == 0 and end >= len(data):
        return data
    return memoryview(data)[start:end]
