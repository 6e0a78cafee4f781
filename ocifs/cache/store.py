"""The verified, content-addressed chunk cache shared by every pull and mount on a host: a façade
over its parts.

Owns the contract every other layer relies on, and the counters and warnings that describe it;
the work is done by small parts, each in its own module:

- :mod:`~ocifs.cache.claims` — cross-process download claims (``try_claim``/``release_claim``);
- :mod:`~ocifs.cache.memory` — the in-memory LRU tier in front of the disk;
- :mod:`~ocifs.cache.descriptors` — entries kept open for ``preadv(RWF_NOWAIT)`` range reads;
- :mod:`~ocifs.cache.directio` — whole-entry I/O around the page cache (``O_DIRECT``);
- :mod:`~ocifs.cache.disk` — the files: layout, atomic writes, eviction under ``flock``,
  prune, verify, clear.

Entries live under ``ROOT/v1/<algorithm>/<2 hex>/<hex>``, named by their digest, so they never
need revalidation and survive restarts. This module must not know about registries, manifests
or files: callers hand it verified chunks and ask for them back by digest.

Invariants:

- **Only verified bytes enter.** :meth:`ChunkCache.put` hashes the data unless the caller says
  it already did (``verified=True``); a mismatch raises :class:`~ocifs.errors.IntegrityError`
  and nothing is stored.
- **Nothing half-written is ever visible.** A chunk is written to a temporary file
  (``.tmp-<pid>-<random>``, ``O_EXCL``) in its final directory and renamed over the final name
  (atomic on POSIX). A process killed mid-write leaves a temp file, which :meth:`prune`,
  :meth:`verify` and eviction passes remove once it is older than :data:`STALE_TEMP_AGE`.
- **Many processes, one cache.** Every mount and pull may fill and evict the same directory at
  once. Eviction takes an exclusive ``flock`` on ``ROOT/v1/.lock`` and rescans before deleting,
  so concurrent processes never evict more than needed. Recency is the file's mtime, refreshed
  on disk hits, so least-recently-used eviction works across processes.
- **Eviction never breaks a reader.** On POSIX an open descriptor keeps an unlinked file
  readable; a reader that loses the race between lookup and ``open`` (ENOENT) gets ``None`` —
  a miss — and the caller refetches.
- **The cache never fails a read.** A full disk (ENOSPC), a read-only or otherwise unusable
  directory degrades to "uncached": one WARNING per condition, a counter in :meth:`stats`,
  and :meth:`put` returns ``False``. Only the maintenance commands (:meth:`prune`,
  :meth:`verify`, :meth:`clear`) and :meth:`discard` raise :class:`~ocifs.errors.CacheError`.

Thread safety: every method is safe to call from several threads at once (async callers run
the blocking ones in ``trio.to_thread``). Each part guards its own state with a lock held only
for dictionary-sized work, never across I/O; the façade's counters have one more.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from ocifs.cache.claims import STALE_CLAIM_AGE, Claims
from ocifs.cache.descriptors import OPEN_ENTRIES, DescriptorTable
from ocifs.cache.directio import DIRECT_WRITE_MIN, DirectIO, pread_all
from ocifs.cache.disk import (
    LAYOUT_VERSION,
    STALE_TEMP_AGE,
    TEMP_PREFIX,
    DiskStore,
    PruneResult,
    VerifyResult,
)
from ocifs.cache.memory import DEFAULT_MEMORY_BYTES, MemoryTier
from ocifs.digest import Digest
from ocifs.errors import CacheError, IntegrityError

__all__ = [
    "DEFAULT_MEMORY_BYTES",
    "DIRECT_WRITE_MIN",
    "LAYOUT_VERSION",
    "OPEN_ENTRIES",
    "STALE_CLAIM_AGE",
    "STALE_TEMP_AGE",
    "TEMP_PREFIX",
    "CacheCounters",
    "CacheStats",
    "ChunkCache",
    "PruneResult",
    "VerifyResult",
    "default_cache_dir",
]

log = logging.getLogger(__name__)

_RECOVERABLE_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT}  # space may come back by itself


def default_cache_dir() -> Path:
    """The host's default cache root.

    ``/var/cache/ocifs`` for root (effective uid 0), so system mounts share one cache; for
    users ``$XDG_CACHE_HOME/ocifs`` when that variable holds an absolute path (the XDG Base
    Directory spec says relative values are to be ignored), else ``~/.cache/ocifs``.
    """
    if os.geteuid() == 0:
        return Path("/var/cache/ocifs")
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "ocifs"
    return Path.home() / ".cache" / "ocifs"


@dataclass(frozen=True, slots=True)
class CacheCounters:
    """This :class:`ChunkCache` object's operations since it was created (no I/O to read).

    ``misses`` counts whole-chunk lookups (:meth:`ChunkCache.get_disk`) that found nothing
    usable — absent, torn, unreadable — after which the caller downloads the chunk; range
    lookups (:meth:`ChunkCache.read_range`) are probes whose caller goes on to a whole-chunk
    lookup, so their misses are not counted twice. ``degraded`` names the conditions (e.g.
    ``"ENOSPC"``) that currently keep chunks out.
    """

    memory_hits: int
    disk_hits: int
    misses: int
    puts: int
    evictions: int
    rejected: int
    put_failures: int
    read_errors: int
    degraded: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CacheStats(CacheCounters):
    """A snapshot of the cache: what is on disk now, plus this process's counters (those of
    :class:`CacheCounters`). ``entries``/``bytes`` come from a scan of the directory (all
    processes' chunks); the counters count only this :class:`ChunkCache` object's operations."""

    root: Path
    entries: int
    bytes: int
    temp_files: int
    max_size: int | None
    memory_bytes: int
    memory_used: int
    memory_entries: int


class ChunkCache:
    """A bounded, verified, content-addressed chunk store on disk with a memory tier in front.

    ``root`` defaults to :func:`default_cache_dir`. ``max_size`` bounds the bytes on disk
    (``None``: unbounded); the least recently used entries (oldest mtime) are evicted first.
    ``memory_bytes`` bounds the in-memory LRU (0 disables it); chunks larger than it are never
    held in memory.

    The constructor does blocking I/O (creates the directories; a bounded cache scans them to
    learn its size and evicts if it is already over ``max_size``): from async code, construct
    it in a worker thread. See the module docstring for the concurrency invariants.
    """

    def __init__(
        self,
        root: Path | str | None = None,
        *,
        max_size: int | None = None,
        memory_bytes: int = DEFAULT_MEMORY_BYTES,
    ) -> None:
        if max_size is not None and max_size < 0:
            raise ValueError(f"max_size must be >= 0 or None, got {max_size}")
        self.root = Path(root) if root is not None else default_cache_dir()
        self.max_size = max_size
        self.memory = MemoryTier(memory_bytes)
        self.memory_bytes = memory_bytes
        self.descriptors = DescriptorTable()
        self.direct_io = DirectIO(self.root)
        self.disk = DiskStore(
            self.root, max_size, direct=self.direct_io, forget=self.descriptors.forget, warn=self._warn_once
        )
        self.claims = Claims(self.disk.base / "claims")

        self._lock = threading.Lock()  # guards the counters and warnings below; never held across I/O
        self._warned: set[str] = set()  # degraded conditions already logged
        self._disk_hits = 0
        self._misses = 0
        self._puts = 0
        self._rejected = 0
        self._put_failures = 0
        self._failed_put_size = 0  # largest write that failed since writes last worked
        self._read_errors = 0

        try:
            self.disk.create()
        except OSError as exc:
            self._warn_once("create", exc)
            return
        if max_size is not None:
            try:
                self.disk.evict(limit=max_size, target=max_size)
            except OSError as exc:
                self._warn_once("evict", exc)

    # ------------------------------------------------------------ cross-process claims

    def try_claim(self, digest: Digest) -> Path | None:
        """Claim the download of ``digest`` among every process sharing this cache; the claim
        (give it to :meth:`release_claim`), or ``None`` while another live process holds one —
        it will put the chunk here, so the caller polls :meth:`contains`. See
        :meth:`ocifs.cache.claims.Claims.try_claim`."""
        return self.claims.try_claim(digest)

    @staticmethod
    def release_claim(claim: Path) -> None:
        """Release a claim from :meth:`try_claim`."""
        Claims.release(claim)

    # ------------------------------------------------------------------ lookups

    def path_for(self, digest: Digest) -> Path:
        """Where ``digest``'s bytes live when cached. The file may vanish at any time (eviction):
        open it and handle ``FileNotFoundError`` rather than testing for it first."""
        return self.disk.path_for(digest)

    def in_memory(self, digest: Digest) -> bool:
        """Whether the memory tier holds ``digest`` (no I/O, no counters, recency untouched)."""
        return digest in self.memory

    def contains(self, digest: Digest) -> bool:
        """Whether ``digest`` is cached in memory or on disk right now (it may be evicted the
        next moment; use this for decisions such as "skip prefetch", never as a guarantee)."""
        return digest in self.memory or os.path.isfile(self.disk.path_for(digest))

    def get_memory(self, digest: Digest) -> bytes | None:
        """The chunk's bytes if the memory tier holds them (refreshing their recency), else
        ``None``. Non-blocking: safe to call directly from async code. A miss is not counted
        here: callers go on to :meth:`get_disk`, which counts it."""
        return self.memory.get(digest)

    def get_disk(self, digest: Digest, *, size: int | None = None, remember: bool = True) -> bytes | None:
        """The chunk's bytes read from disk, or ``None`` (a miss: absent, evicted, unreadable,
        or not ``size`` bytes — such an entry is overwritten by the next :meth:`put`). Entries
        of :data:`DIRECT_WRITE_MIN` or more are read around the page cache: the caller keeps
        the bytes, a page-cache copy would be a second. Never raises for I/O trouble.

        A hit refreshes the entry's mtime (its LRU recency) and, with ``remember``, puts it in
        the memory tier. Blocking.
        """
        fd = self._open_entry(digest, count_miss=True)
        if fd is None:
            return None
        try:
            st = os.fstat(fd)
            if not self._size_ok(digest, st.st_size, size, count_miss=True):
                return None
            data = self.disk.read_whole(fd, st.st_size)
            self.disk.touch(fd, st)
        except OSError as exc:
            self._read_failed(exc, count_miss=True)
            return None
        finally:
            os.close(fd)
        if len(data) != st.st_size:  # the file changed under us; do not trust it
            self._count_miss()
            return None
        with self._lock:
            self._disk_hits += 1
        if remember:
            self.memory.put(digest, data)
        return data

    def read_range(self, digest: Digest, start: int, end: int, *, size: int | None = None) -> bytes | None:
        """Bytes ``[start, end)`` of a cached chunk, or ``None`` when it is not there.

        Like slicing, a range past the end of the chunk is cut short. A disk hit reads only the
        range (``pread``) and does not fill the memory tier, so serving a 128 KiB FUSE read
        does not copy a whole chunk; the entry stays open for :meth:`read_range_nowait`.
        ``size`` as in :meth:`get_disk`. A miss is not counted (see :class:`CacheCounters`).
        Blocking.
        """
        if not 0 <= start <= end:
            raise ValueError(f"bad range [{start}, {end})")
        data = self.memory.get(digest)
        if data is not None:
            return data[start:end]
        fd = self._open_entry(digest, count_miss=False)
        if fd is None:
            return None
        keep = False
        try:
            st = os.fstat(fd)
            if not self._size_ok(digest, st.st_size, size, count_miss=False):
                return None
            end = min(end, st.st_size)
            piece = pread_all(fd, max(0, end - start), start)
            self.disk.touch(fd, st)
            keep = True
        except OSError as exc:
            self._read_failed(exc, count_miss=False)
            return None
        finally:
            if keep:
                self.descriptors.keep(digest, fd, st.st_size)
            else:
                os.close(fd)
        with self._lock:
            self._disk_hits += 1
        return piece

    def read_range_nowait(self, digest: Digest, start: int, end: int, *, size: int | None = None) -> memoryview | None:
        """Bytes ``[start, end)`` of a disk entry this cache holds open (after a
        :meth:`read_range` of it), only if the kernel has them all in its page cache; else
        ``None`` at once — the caller then goes to :meth:`read_range` in a worker thread,
        which also answers misses and reports errors. Never blocks on the disk
        (``RWF_NOWAIT``), so async code may call it directly. An entry unlinked meanwhile
        (evicted, or removed as corrupt by ``cache verify``) is dropped rather than read.
        Counts a disk hit when it answers.
        """
        if not 0 <= start <= end:
            raise ValueError(f"bad range [{start}, {end})")
        piece = self.descriptors.pread_nowait(digest, start, end, size)
        if piece is None:
            return None
        with self._lock:
            self._disk_hits += 1
        return piece

    def close(self) -> None:
        """Close the descriptors kept open for fast reads (the cache stays usable: entries are
        reopened on demand). Call when done with the cache in a long-lived process."""
        self.descriptors.close()

    def __del__(self) -> None:
        # A cache dropped without close() must not leak its descriptors (tests, library use).
        # No context managers here: at interpreter exit module globals may already be gone.
        try:  # noqa: SIM105
            self.close()
        except Exception:  # a finaliser must never raise
            pass

    # ------------------------------------------------------------------ insertion and removal

    def put(self, digest: Digest, data: bytes, *, verified: bool = False) -> bool:
        """Store ``data`` under ``digest``; return whether it is now on disk.

        Unless ``verified`` (the caller already hashed these exact bytes), the data is hashed
        first and a mismatch raises :class:`IntegrityError` — nothing is stored. I/O failures
        (disk full, read-only directory) never raise: they are logged once per condition and
        the chunk simply stays uncached (``False``). A chunk larger than ``max_size`` is not
        written either. Blocking; hashing releases the GIL.
        """
        if not verified and not digest.matches(data):
            with self._lock:
                self._rejected += 1
            raise IntegrityError(f"refusing to cache {digest}: the bytes do not match the digest")
        self.memory.put(digest, data)
        if self.max_size is not None and len(data) > self.max_size:
            return False
        with self._lock:
            failures_before = self._put_failures
        try:
            written = self.disk.write(digest, data)
        except FileNotFoundError:
            # Our temp file (or its directory) was removed under us by a concurrent clear():
            # the chunk is simply not cached this time. Not a condition worth a warning.
            log.debug("cache entry %s vanished while being written", digest.short)
            return False
        except OSError as exc:
            with self._lock:
                self._put_failures += 1
                self._failed_put_size = max(self._failed_put_size, len(data))
            self._warn_once("write", exc)
            return False
        if not written:
            return True  # already there; says nothing about whether writes work again
        with self._lock:
            self._puts += 1
            write_conditions = {c for c in self._warned if not c.startswith("read ")}
            no_failure_since_start = self._put_failures == failures_before
            if write_conditions and len(data) >= self._failed_put_size and no_failure_since_start:
                # Writes work again (space was freed, the directory remounted read-write):
                # say so, and re-arm the warnings in case the condition comes back. Only a
                # write as large as the largest that failed counts, and only one that began
                # after the last failure: on a nearly full disk a small entry fits while
                # chunks still do not, and a write that had its space before another failed
                # proves nothing; either would flip between "writable again" and a new warning.
                log.info("chunk cache %s is writable again", self.root)
                self._warned -= write_conditions
                self._failed_put_size = 0
        self.disk.maybe_evict()
        return True

    def discard(self, digest: Digest) -> bool:
        """Remove ``digest`` from the cache — the memory tier, any descriptor held for it, the
        disk entry — so the next lookup misses and the chunk is fetched again (a caller found
        its bytes wrong). Whether a disk entry was there. Raises :class:`CacheError` if the entry
        cannot be removed (a read-only cache)."""
        self.memory.discard(digest)
        try:
            return self.disk.discard(digest)
        except OSError as exc:
            raise CacheError(
                f"cannot remove cache entry {digest}: {exc.strerror or exc}",
                hint="run `ocifs cache verify` with write access to the cache",
            ) from exc

    # ------------------------------------------------------------------ maintenance

    def counters(self) -> CacheCounters:
        """This process's counters (no I/O: cheap enough for a status request)."""
        with self._lock:
            disk_hits, misses, puts = self._disk_hits, self._misses, self._puts
            rejected, put_failures, read_errors = self._rejected, self._put_failures, self._read_errors
            degraded = tuple(sorted(self._warned))
        return CacheCounters(
            memory_hits=self.memory.hits,
            disk_hits=disk_hits,
            misses=misses,
            puts=puts,
            evictions=self.disk.evictions,
            rejected=rejected,
            put_failures=put_failures,
            read_errors=read_errors,
            degraded=degraded,
        )

    def stats(self) -> CacheStats:
        """A snapshot of the disk contents (by a scan; blocking) and of this process's counters.
        Raises :class:`CacheError` if the cache directory cannot be read."""
        try:
            listing = self.disk.scan()
        except OSError as exc:
            raise _cache_error("read", self.root, exc) from exc
        memory_used, memory_entries = self.memory.usage()
        return CacheStats(
            **dataclasses.asdict(self.counters()),
            root=self.root,
            entries=len(listing.entries),
            bytes=listing.bytes,
            temp_files=len(listing.temps),
            max_size=self.max_size,
            memory_bytes=self.memory_bytes,
            memory_used=memory_used,
            memory_entries=memory_entries,
        )

    def prune(self, max_size: int | None = None) -> PruneResult:
        """Evict least recently used entries until at most ``max_size`` bytes remain (default:
        this cache's ``max_size``; with neither, nothing is evicted) and remove temp files left
        by dead writers. Safe while other processes use the cache. Raises :class:`CacheError`
        if the cache cannot be modified."""
        limit = self.max_size if max_size is None else max_size
        if limit is not None and limit < 0:
            raise ValueError(f"max_size must be >= 0, got {limit}")
        try:
            return self.disk.evict(limit=limit, target=limit)
        except OSError as exc:
            raise _cache_error("prune", self.root, exc) from exc

    def verify(self, *, remove_bad: bool = True, workers: int | None = None) -> VerifyResult:
        """Re-hash every entry on disk; report (and with ``remove_bad`` delete) the ones whose
        bytes do not match their name; a bad one also leaves the memory tier. Also removes
        stale temp files. Hashing runs in ``workers`` threads (default: up to 4, one per CPU)
        since hashlib releases the GIL. Raises :class:`CacheError` if the cache cannot be read."""
        threads = workers or min(4, os.cpu_count() or 1)
        try:
            return self.disk.verify(remove_bad=remove_bad, workers=threads, on_bad=self.memory.discard)
        except OSError as exc:
            raise _cache_error("verify", self.root, exc) from exc

    def clear(self) -> PruneResult:
        """Remove every entry and every temp file (of any age) and empty the memory tier.
        A concurrent writer whose temp file vanishes just leaves its chunk uncached.
        Raises :class:`CacheError` if the cache cannot be modified."""
        self.memory.clear()
        try:
            result = self.disk.clear()
        except OSError as exc:
            raise _cache_error("clear", self.root, exc) from exc
        log.info(
            "cleared chunk cache %s: %d entries, %d bytes", self.root, result.removed_entries, result.removed_bytes
        )
        return result

    # ------------------------------------------------------------------ helpers

    def _open_entry(self, digest: Digest, *, count_miss: bool) -> int | None:
        try:
            return self.disk.open(digest)
        except FileNotFoundError:
            # Never cached, or evicted by another process between any check and this open.
            if count_miss:
                self._count_miss()
        except OSError as exc:
            self._read_failed(exc, count_miss=count_miss)
        return None

    def _size_ok(self, digest: Digest, actual: int, expected: int | None, *, count_miss: bool) -> bool:
        if expected is None or actual == expected:
            return True
        # A torn file (power loss before the data reached the disk) or a wrong size hint:
        # either way not served; the next put() of the real bytes overwrites a torn entry.
        log.warning("cache entry %s is %d bytes, expected %d; fetching it again", digest.short, actual, expected)
        if count_miss:
            self._count_miss()
        return False

    def _count_miss(self) -> None:
        with self._lock:
            self._misses += 1

    def _read_failed(self, exc: OSError, *, count_miss: bool) -> None:
        with self._lock:
            self._misses += count_miss
            self._read_errors += 1
        self._warn_once("read", exc)

    def _warn_once(self, operation: str, exc: OSError) -> None:
        """Log a WARNING the first time a condition (operation + errno) occurs, DEBUG after:
        a full disk must not produce one line per chunk."""
        condition = errno.errorcode.get(exc.errno or 0, "OSError")
        key = condition if operation != "read" else f"read {condition}"
        with self._lock:
            first = key not in self._warned
            self._warned.add(key)
        if not first:
            log.debug("chunk cache %s: %s failed again: %s", self.root, operation, exc)
            return
        if exc.errno in _RECOVERABLE_WRITE_ERRNOS:
            consequence = "chunks are served without caching until space is freed"
        elif operation == "read":
            consequence = "affected chunks are fetched again"
        else:
            consequence = "chunks are served without caching"
        log.warning("chunk cache %s: cannot %s (%s); %s", self.root, operation, exc.strerror or exc, consequence)


def _cache_error(operation: str, root: Path, exc: OSError) -> CacheError:
    return CacheError(f"cannot {operation} the chunk cache at {root}: {exc.strerror or exc}")
