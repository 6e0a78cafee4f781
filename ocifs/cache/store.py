"""The verified, content-addressed chunk cache shared by every pull and mount on a host.

This module owns the bytes on disk under ``ROOT/v1/<algorithm>/<2 hex>/<hex>`` and a small
in-memory LRU in front of them. Entries are named by their digest, so they never need
revalidation and survive restarts. It must not know about registries, manifests or files:
callers hand it verified chunks and ask for them back by digest.

Invariants (the contract every other layer relies on):

- **Only verified bytes enter.** :meth:`ChunkCache.put` hashes the data unless the caller says
  it already did (``verified=True``); a mismatch raises :class:`~ocifs.errors.IntegrityError`
  and nothing is stored.
- **Nothing half-written is ever visible.** A chunk is written to a temporary file
  (``.tmp-<pid>-<random>``, ``O_EXCL``) in its final directory and renamed over the final name
  with ``os.replace`` (atomic on POSIX). Readers only open final names. A process killed
  mid-write leaves a temp file, which :meth:`prune`, :meth:`verify` and eviction passes remove
  once it is older than :data:`STALE_TEMP_AGE`.
- **Many processes, one cache.** Every mount and pull may fill and evict the same directory at
  once. Writes are safe by the rename above (two writers of one digest write identical bytes).
  Eviction takes an exclusive ``flock`` on ``ROOT/v1/.lock`` and rescans before deleting, so
  concurrent processes never evict more than needed. Recency is the file's mtime, refreshed on
  disk hits, so least-recently-used eviction works across processes.
- **Eviction never breaks a reader.** On POSIX an open descriptor keeps an unlinked file
  readable; a reader that loses the race between lookup and ``open`` (ENOENT) gets ``None`` —
  a miss — and the caller refetches.
- **The cache never fails a read.** A full disk (ENOSPC), a read-only or otherwise unusable
  directory degrades to "uncached": one WARNING per condition, a counter in :meth:`stats`,
  and :meth:`put` returns ``False``. Only the maintenance commands (:meth:`prune`,
  :meth:`verify`, :meth:`clear`) raise :class:`~ocifs.errors.CacheError`.

Thread safety: every method is safe to call from several threads at once (async callers run
the blocking ones in ``trio.to_thread``). The memory tier, the counters and the running byte
total are guarded by one lock held only for dictionary-sized work, never across I/O.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import fcntl
import logging
import mmap
import os
import secrets
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cachetools import LRUCache

from ocifs.digest import Digest
from ocifs.errors import CacheError, IntegrityError, InvalidDigest

log = logging.getLogger(__name__)

#: Directory under the root that holds this layout; a future incompatible layout gets "v2".
LAYOUT_VERSION = "v1"
#: A download claim older than this belongs to a process that died: a 16 MiB chunk downloads in
#: well under a second here, and even on a slow link in less than this.
STALE_CLAIM_AGE = 120.0

#: Entries at least this large are written with O_DIRECT where the filesystem allows it
#: (:func:`_write_direct`); smaller ones (chunk indexes, small files) through the page cache.
DIRECT_WRITE_MIN = 1024 * 1024
#: Alignment of O_DIRECT buffers and lengths: the largest logical block size in common use.
DIRECT_ALIGN = 4096

#: Default budget of the in-memory tier: 16 chunks of the default 16 MiB, enough to hold the
#: chunks the default 8 concurrent downloads produce plus the ones being read right now.
DEFAULT_MEMORY_BYTES = 256 * 1024 * 1024

#: Name prefix of files being written. Readers never open them; the dot hides them from ``ls``.
TEMP_PREFIX = ".tmp-"

#: A temp file older than this belongs to a writer that died: writing one 16 MiB chunk takes
#: milliseconds, and even a chunk of several GiB on a slow disk is written well within it.
STALE_TEMP_AGE = 15 * 60.0

#: A disk hit refreshes the entry's mtime only when it is older than this: LRU across processes
#: needs coarse recency, not a metadata write on every 128 KiB FUSE read.
TOUCH_INTERVAL = 60.0

#: A bounded cache rescans at least this often while it is being written, so bytes added by
#: other processes (invisible to this process's running total) are noticed within a minute.
RESCAN_INTERVAL = 60.0

#: An eviction pass triggered by a put evicts down to this fraction of ``max_size``. Every pass
#: scans every entry, so leaving 10 % headroom makes passes happen once per 10 % of the budget
#: written instead of once per chunk.
LOW_WATER = 0.9

#: Descriptors of entries recently read by range kept open per cache: a read whose bytes are in
#: the page cache is then one ``preadv(RWF_NOWAIT)`` on the caller's thread instead of a worker
#: thread hop plus open/fstat/close (on this kind of VM the hop was ~30 % of a warm read's CPU).
#: An entry another process evicts stays allocated on disk while held: at most this many
#: chunks (256 MiB at the default 16 MiB), until the next read of it or it leaves the table.
OPEN_ENTRIES = 16

_READ_BLOCK = 1024 * 1024  # verify() streams files in 1 MiB blocks: bounded memory per thread
_ALGORITHMS = ("sha256", "sha512")  # the algorithms Digest accepts; each gets its own directory
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
class CacheStats:
    """A snapshot of the cache: what is on disk now, plus this process's counters.

    ``entries``/``bytes`` come from a scan of the directory (all processes' chunks);
    the counters count only this :class:`ChunkCache` object's operations since it was created.
    ``degraded`` names the conditions (e.g. ``"ENOSPC"``) that currently keep chunks out.
    """

    root: Path
    entries: int
    bytes: int
    temp_files: int
    max_size: int | None
    memory_bytes: int
    memory_used: int
    memory_entries: int
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
class PruneResult:
    """What :meth:`ChunkCache.prune` or :meth:`ChunkCache.clear` removed and what is left."""

    removed_entries: int
    removed_bytes: int
    removed_temp_files: int
    remaining_entries: int
    remaining_bytes: int


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """What :meth:`ChunkCache.verify` found: ``bad`` lists every entry whose bytes did not hash
    to its name (or could not be read); ``removed`` how many of those were deleted."""

    checked: int
    bytes_checked: int
    bad: tuple[Digest, ...]
    removed: int
    removed_temp_files: int


@dataclass(frozen=True, slots=True)
class _Entry:
    path: str
    digest: Digest
    size: int
    mtime_ns: int


@dataclass(slots=True)
class _OpenEntry:
    """A kept-open entry. ``users`` counts borrowers: a retired descriptor is closed only when
    none is reading it, so a descriptor number is never reused under a reader's feet."""

    fd: int
    size: int
    users: int = 0
    retired: bool = False


@dataclass(frozen=True, slots=True)
class _Temp:
    path: str
    mtime: float


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
        if memory_bytes < 0:
            raise ValueError(f"memory_bytes must be >= 0, got {memory_bytes}")
        self.root = Path(root) if root is not None else default_cache_dir()
        self.max_size = max_size
        self.memory_bytes = memory_bytes
        self._base = self.root / LAYOUT_VERSION
        self._lock_path = self._base / ".lock"

        self._lock = threading.Lock()  # guards everything below; never held across I/O
        self._memory: LRUCache[Digest, bytes] = LRUCache(maxsize=max(memory_bytes, 1), getsizeof=len)
        self._open: dict[Digest, _OpenEntry] = {}  # insertion order = recency (oldest first)
        self._total = 0  # bytes on disk as this process believes; exact after each scan
        self._written = 0  # bytes this process ever wrote: what landed during a scan is counted
        self._last_scan = time.monotonic()
        self._warned: set[str] = set()  # degraded conditions already logged
        self._memory_hits = 0
        self._disk_hits = 0
        self._misses = 0
        self._puts = 0
        self._evictions = 0
        self._rejected = 0
        self._put_failures = 0
        self._failed_put_size = 0  # largest write that failed since writes last worked
        self._read_errors = 0
        # One eviction pass per process at a time; other threads skip rather than queue up.
        self._evict_lock = threading.Lock()
        # Write entries with O_DIRECT until the filesystem refuses it once (see _write_direct),
        # and read whole entries likewise (see _read_direct).
        self._direct = True
        self._direct_reads = True

        try:
            for directory in (self.root, self._base, self._base / "sha256"):
                directory.mkdir(mode=0o700, parents=directory == self.root, exist_ok=True)
        except OSError as exc:
            self._warn_once("create", exc)
            return
        if max_size is not None:
            limit = max_size
            self._evict_pass(limit=limit, target=limit, raise_errors=False)

    # ------------------------------------------------------------ cross-process claims

    def try_claim(self, digest: Digest) -> Path | None:
        """Claim the download of ``digest`` among every process sharing this cache.

        Returns a claim (give it to :meth:`release_claim`) or None if another process holds one:
        that process is downloading the chunk and will put it here, so the caller polls
        :meth:`contains`. A claim is an empty file created with ``O_EXCL``: no descriptor stays
        open (a process near its open-file limit loses nothing). It names its owner (pid, pid
        namespace, boot): a claim whose owner is known dead — a pull or daemon killed with
        ``kill -9`` — is taken over at once, any other once older than
        :data:`STALE_CLAIM_AGE`. If the claim cannot be written (read-only or full cache) it is
        granted: with nowhere to store the chunk there is nothing to share.
        """
        path = self._base / "claims" / digest.hex
        for _ in range(2):
            try:
                path.parent.mkdir(mode=0o700, exist_ok=True)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                try:
                    os.write(fd, _claim_owner())
                finally:
                    os.close(fd)
                return path
            except FileExistsError:
                try:
                    age = time.time() - path.stat().st_mtime
                    owner = path.read_bytes()
                except FileNotFoundError:
                    continue  # released meanwhile: try again
                if age < STALE_CLAIM_AGE and not _owner_is_dead(owner):
                    return None
                path.unlink(missing_ok=True)  # its owner died; take it over
            except OSError:
                return path.with_name(".unwritable")
        return None

    @staticmethod
    def release_claim(claim: Path) -> None:
        """Release a claim from :meth:`try_claim`."""
        if claim.name != ".unwritable":
            with contextlib.suppress(OSError):
                claim.unlink()

    # ------------------------------------------------------------------ lookups

    def path_for(self, digest: Digest) -> Path:
        """Where ``digest``'s bytes live when cached. The file may vanish at any time (eviction):
        open it and handle ``FileNotFoundError`` rather than testing for it first."""
        return self._base / digest.algorithm / digest.hex[:2] / digest.hex

    def in_memory(self, digest: Digest) -> bool:
        """Whether the memory tier holds ``digest`` (no I/O, no counters, recency untouched)."""
        with self._lock:
            return digest in self._memory

    def contains(self, digest: Digest) -> bool:
        """Whether ``digest`` is cached in memory or on disk right now (it may be evicted the
        next moment; use this for decisions such as "skip prefetch", never as a guarantee)."""
        return self.in_memory(digest) or os.path.isfile(self.path_for(digest))

    def get(self, digest: Digest, *, size: int | None = None) -> bytes | None:
        """The chunk's bytes from memory, else from disk, else ``None`` (a miss).

        ``size``, when given, is the expected length: a disk entry of another length is treated
        as a miss (and overwritten by the next :meth:`put`). Never raises for I/O trouble.
        """
        data = self.get_memory(digest)
        if data is not None:
            return data
        return self.get_disk(digest, size=size)

    def get_memory(self, digest: Digest) -> bytes | None:
        """The chunk's bytes if the memory tier holds them (refreshing their recency), else
        ``None``. Non-blocking: safe to call directly from async code. A miss is not counted
        here: callers go on to :meth:`get_disk`, which counts it."""
        with self._lock:
            data = self._memory.get(digest)
            if data is not None:
                self._memory_hits += 1
            return data

    def get_disk(self, digest: Digest, *, size: int | None = None, remember: bool = True) -> bytes | None:
        """The chunk's bytes read from disk, or ``None`` (miss, evicted, unreadable, wrong size).
        Entries of :data:`DIRECT_WRITE_MIN` or more are read around the page cache
        (:func:`_read_direct`): the caller keeps the bytes, a page-cache copy would be a second.

        A hit refreshes the entry's mtime (its LRU recency, at most every
        :data:`TOUCH_INTERVAL`) and, with ``remember``, puts it in the memory tier. Blocking.
        """
        fd = self._open_entry(digest)
        if fd is None:
            return None
        try:
            st = os.fstat(fd)
            if not self._size_ok(digest, st.st_size, size):
                return None
            data = None
            if self._direct_reads and st.st_size >= DIRECT_WRITE_MIN:
                data = _read_direct(fd, st.st_size)
                if data is None:
                    self._direct_reads = False
            if data is None:
                data = _pread_all(fd, st.st_size, 0)
            self._touch(fd, st)
        except OSError as exc:
            self._read_failed(exc)
            return None
        finally:
            os.close(fd)
        if len(data) != st.st_size:  # the file changed under us; do not trust it
            self._count_miss()
            return None
        with self._lock:
            self._disk_hits += 1
        if remember:
            self._remember(digest, data)
        return data

    def read_range(self, digest: Digest, start: int, end: int, *, size: int | None = None) -> bytes | None:
        """Bytes ``[start, end)`` of a cached chunk, or ``None`` on a miss.

        Like slicing, a range past the end of the chunk is cut short. A disk hit reads only the
        range (``pread``) and does not fill the memory tier, so serving a 128 KiB FUSE read
        does not copy a whole chunk; the entry stays open for :meth:`read_range_nowait`.
        ``size`` as in :meth:`get`. Blocking.
        """
        if not 0 <= start <= end:
            raise ValueError(f"bad range [{start}, {end})")
        data = self.get_memory(digest)
        if data is not None:
            return data[start:end]
        fd = self._open_entry(digest)
        if fd is None:
            return None
        keep = False
        try:
            st = os.fstat(fd)
            if not self._size_ok(digest, st.st_size, size):
                return None
            end = min(end, st.st_size)
            piece = _pread_all(fd, max(0, end - start), start)
            self._touch(fd, st)
            keep = True
        except OSError as exc:
            self._read_failed(exc)
            return None
        finally:
            if keep:
                self._keep_open(digest, fd, st.st_size)
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
        entry = self._borrow(digest)
        if entry is None:
            return None
        try:
            if size is not None and entry.size != size:
                return None  # read_range logs it and counts the miss
            if os.fstat(entry.fd).st_nlink == 0:
                self._forget_open(digest)
                return None
            piece = bytearray(max(0, min(end, entry.size) - start))
            if piece and os.preadv(entry.fd, [piece], start, os.RWF_NOWAIT) != len(piece):
                return None  # only part of it is in the page cache: let a thread wait for the rest
        except OSError:
            return None  # EAGAIN (not in the page cache) or trouble read_range will report
        finally:
            self._give_back(entry)
        with self._lock:
            self._disk_hits += 1
        return memoryview(piece)

    def close(self) -> None:
        """Close the descriptors kept open for fast reads (the cache stays usable: entries are
        reopened on demand). Call when done with the cache in a long-lived process."""
        with self._lock:
            digests = list(self._open)
        for digest in digests:
            self._forget_open(digest)

    def __del__(self) -> None:
        # A cache dropped without close() must not leak its descriptors (tests, library use).
        # No context managers here: at interpreter exit module globals may already be gone.
        try:  # noqa: SIM105
            self.close()
        except Exception:  # a finaliser must never raise
            pass

    # ------------------------------------------------------------------ insertion

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
        self._remember(digest, data)
        if self.max_size is not None and len(data) > self.max_size:
            return False
        with self._lock:
            failures_before = self._put_failures
        try:
            written = self._write_entry(digest, data)
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
            self._total += len(data)
            self._written += len(data)
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
        self._maybe_evict()
        return True

    def _write_entry(self, digest: Digest, data: bytes) -> bool:
        """Write one entry atomically; ``False`` if an identical entry was already there."""
        path = self.path_for(digest)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            pass
        else:
            if st.st_size == len(data):
                # Same name and length: the same bytes (content addressed). Wanting it again
                # makes it recently used. A wrong length (a torn file) is overwritten below.
                _touch_path(path)
                return False
        directory = path.parent
        try:
            directory.mkdir(mode=0o700, exist_ok=True)
        except FileNotFoundError:
            # The algorithm directory (or the whole tree) is missing: first sha512 chunk, or
            # somebody removed the cache while we run. Recreate the chain with safe modes.
            for part in (self.root, self._base, directory.parent, directory):
                part.mkdir(mode=0o700, parents=part == self.root, exist_ok=True)
        tmp = directory / f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(8)}"
        fd = _create_exclusive(tmp)
        try:
            try:
                if self._direct and len(data) >= DIRECT_WRITE_MIN:
                    if not _write_direct(fd, data):
                        self._direct = False
                        log.debug("%s: no O_DIRECT here; cache entries are written through the page cache", self.root)
                else:
                    _write_all(fd, data)
            finally:
                os.close(fd)
            # No fsync: a process crash cannot tear the file (the page cache holds it), and
            # after a power loss a torn entry is caught by the size check on read and by
            # verify(); an fsync per chunk would cost the throughput this cache exists for.
            os.replace(tmp, path)
        except BaseException:
            _unlink_quietly(tmp)
            raise
        log.debug("cached %s (%d bytes)", digest.short, len(data))
        return True

    # ------------------------------------------------------------------ maintenance

    def stats(self) -> CacheStats:
        """A snapshot of the disk contents (by a scan; blocking) and of this process's counters.
        Raises :class:`CacheError` if the cache directory cannot be read."""
        try:
            entries, temps = self._scan()
        except OSError as exc:
            raise _cache_error("read", self.root, exc) from exc
        with self._lock:
            return CacheStats(
                root=self.root,
                entries=len(entries),
                bytes=sum(e.size for e in entries),
                temp_files=len(temps),
                max_size=self.max_size,
                memory_bytes=self.memory_bytes,
                memory_used=int(self._memory.currsize) if self.memory_bytes else 0,
                memory_entries=len(self._memory),
                memory_hits=self._memory_hits,
                disk_hits=self._disk_hits,
                misses=self._misses,
                puts=self._puts,
                evictions=self._evictions,
                rejected=self._rejected,
                put_failures=self._put_failures,
                read_errors=self._read_errors,
                degraded=tuple(sorted(self._warned)),
            )

    def prune(self, max_size: int | None = None) -> PruneResult:
        """Evict least recently used entries until at most ``max_size`` bytes remain (default:
        this cache's ``max_size``; with neither, nothing is evicted) and remove temp files left
        by dead writers. Safe while other processes use the cache. Raises :class:`CacheError`
        if the cache cannot be modified."""
        limit = self.max_size if max_size is None else max_size
        if limit is not None and limit < 0:
            raise ValueError(f"max_size must be >= 0, got {limit}")
        return self._evict_pass(limit=limit, target=limit, raise_errors=True)

    def verify(self, *, remove_bad: bool = True, workers: int | None = None) -> VerifyResult:
        """Re-hash every entry on disk; report (and with ``remove_bad`` delete) the ones whose
        bytes do not match their name. Also removes stale temp files. Hashing runs in
        ``workers`` threads (default: up to 4, one per CPU) since hashlib releases the GIL.
        Raises :class:`CacheError` if the cache cannot be read."""
        try:
            entries, temps = self._scan()
            removed_temps = _remove_stale_temps(temps)
        except OSError as exc:
            raise _cache_error("verify", self.root, exc) from exc
        threads = workers or min(4, os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ocifs-verify") as pool:
            outcomes = list(pool.map(_check_entry, entries))
        bad: list[Digest] = []
        checked = checked_bytes = removed = 0
        for entry, (verdict, inode) in zip(entries, outcomes, strict=True):
            if verdict is _Verdict.GONE:
                continue  # evicted by another process while we ran: nothing to judge
            checked += 1
            checked_bytes += entry.size
            if verdict is _Verdict.OK:
                continue
            bad.append(entry.digest)
            log.warning("cache entry %s is corrupt%s", entry.digest, "; removing it" if remove_bad else "")
            with self._lock:
                self._memory.pop(entry.digest, None)
            self._forget_open(entry.digest)
            if remove_bad and _unlink_if_same(entry.path, inode):
                removed += 1
                with self._lock:
                    self._total = max(0, self._total - entry.size)
        return VerifyResult(
            checked=checked,
            bytes_checked=checked_bytes,
            bad=tuple(bad),
            removed=removed,
            removed_temp_files=removed_temps,
        )

    def clear(self) -> PruneResult:
        """Remove every entry and every temp file (of any age) and empty the memory tier.
        A concurrent writer whose temp file vanishes just leaves its chunk uncached.
        Raises :class:`CacheError` if the cache cannot be modified."""
        with self._lock:
            self._memory.clear()
        try:
            with self._exclusive():
                entries, temps = self._scan()
                removed = removed_bytes = 0
                for entry in entries:
                    if _unlink_quietly(entry.path):
                        removed += 1
                        removed_bytes += entry.size
                    self._forget_open(entry.digest)
                removed_temps = sum(1 for t in temps if _unlink_quietly(t.path))
        except OSError as exc:
            raise _cache_error("clear", self.root, exc) from exc
        with self._lock:
            self._total = 0
            self._last_scan = time.monotonic()
        log.info("cleared chunk cache %s: %d entries, %d bytes", self.root, removed, removed_bytes)
        return PruneResult(removed, removed_bytes, removed_temps, 0, 0)

    # ------------------------------------------------------------------ eviction

    def _maybe_evict(self) -> None:
        """After a write: run an eviction pass if this process's running total says the cache
        is over its bound, or if the last scan is old enough that other processes' writes may
        have pushed it over. Only one thread per process evicts; the others carry on."""
        if self.max_size is None:
            return
        with self._lock:
            due = self._total > self.max_size or time.monotonic() - self._last_scan > RESCAN_INTERVAL
        if not due or not self._evict_lock.acquire(blocking=False):
            return
        try:
            # Threads whose puts land during a pass skip it (they could not take the lock),
            # so the evicting thread checks again afterwards rather than leave their bytes
            # over the bound until the next put.
            while True:
                with self._lock:
                    written_before = self._written
                self._evict_pass(limit=self.max_size, target=int(self.max_size * LOW_WATER), raise_errors=False)
                with self._lock:
                    if self._total <= self.max_size or self._written == written_before:
                        break  # under the bound, or nothing new to account for (a failed pass)
        finally:
            self._evict_lock.release()

    def _evict_pass(self, *, limit: int | None, target: int | None, raise_errors: bool) -> PruneResult:
        """Under the cross-process lock: scan, remove stale temp files, and if the entries
        exceed ``limit`` bytes evict the oldest (by mtime) down to ``target`` bytes.

        Rescanning under the lock is what keeps processes from over-evicting: a process that
        waited for the lock sees what the previous holder already removed.
        """
        with self._lock:
            written_before = self._written
        try:
            with self._exclusive():
                entries, temps = self._scan()
                removed_temps = _remove_stale_temps(temps)
                total = sum(e.size for e in entries)
                removed = removed_bytes = 0
                if limit is not None and target is not None and total > limit:
                    entries.sort(key=lambda e: e.mtime_ns)
                    for entry in entries:
                        if total <= target:
                            break
                        # ENOENT: another process evicted it first; it is gone either way.
                        if _unlink_quietly(entry.path):
                            removed += 1
                            removed_bytes += entry.size
                        self._forget_open(entry.digest)
                        total -= entry.size
        except OSError as exc:
            if raise_errors:
                raise _cache_error("prune", self.root, exc) from exc
            self._warn_once("evict", exc)
            return PruneResult(0, 0, 0, 0, 0)
        with self._lock:
            # Entries this process wrote while the pass ran may be missing from the scan:
            # count them on top (twice at worst, which only brings the next pass forward).
            self._total = total + (self._written - written_before)
            self._last_scan = time.monotonic()
            self._evictions += removed
        if removed:
            log.debug("evicted %d cache entries (%d bytes) from %s", removed, removed_bytes, self.root)
        remaining = len(entries) - removed
        return PruneResult(removed, removed_bytes, removed_temps, remaining, total)

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Hold the cache-wide ``flock`` (released by closing the descriptor, also on crash)."""
        try:
            self._base.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            # A read-only cache (a pre-filled directory on a read-only mount) can still be
            # scanned; flock works on a descriptor opened read-only, if the file exists.
            try:
                fd = os.open(self._lock_path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                raise exc from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _scan(self) -> tuple[list[_Entry], list[_Temp]]:
        """Every entry and temp file on disk. Tolerates files and directories vanishing
        during the walk (other processes evict concurrently); ignores names it does not own."""
        entries: list[_Entry] = []
        temps: list[_Temp] = []
        for algorithm in _ALGORITHMS:
            for sub in _scandir(os.path.join(self._base, algorithm)):
                if len(sub.name) != 2 or not sub.is_dir(follow_symlinks=False):
                    continue
                for item in _scandir(sub.path):
                    try:
                        st = item.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    if not item.is_file(follow_symlinks=False):
                        continue
                    if item.name.startswith(TEMP_PREFIX):
                        temps.append(_Temp(item.path, st.st_mtime))
                        continue
                    if not item.name.startswith(sub.name):
                        continue
                    try:
                        digest = Digest.parse(f"{algorithm}:{item.name}")
                    except InvalidDigest:
                        continue
                    entries.append(_Entry(item.path, digest, st.st_size, st.st_mtime_ns))
        return entries, temps

    # ------------------------------------------------------------------ helpers

    def _keep_open(self, digest: Digest, fd: int, size: int) -> None:
        """Hand ``fd`` (of ``digest``'s entry, ``size`` bytes) to the open-entry table, which
        now owns it; the least recently used entries beyond :data:`OPEN_ENTRIES` are retired."""
        retired: list[_OpenEntry] = []
        with self._lock:
            current = self._open.pop(digest, None)
            if current is not None:
                retired.append(current)
            self._open[digest] = _OpenEntry(fd, size)
            while len(self._open) > OPEN_ENTRIES:
                retired.append(self._open.pop(next(iter(self._open))))
            to_close = [e.fd for e in retired if _retire(e)]
        for old in to_close:
            os.close(old)

    def _borrow(self, digest: Digest) -> _OpenEntry | None:
        with self._lock:
            entry = self._open.get(digest)
            if entry is None:
                return None
            self._open[digest] = self._open.pop(digest)  # most recently used
            entry.users += 1
            return entry

    def _give_back(self, entry: _OpenEntry) -> None:
        with self._lock:
            entry.users -= 1
            close = entry.retired and entry.users == 0
        if close:
            os.close(entry.fd)

    def _forget_open(self, digest: Digest) -> None:
        """Stop holding ``digest``'s entry open (it was removed, or the cache is closing):
        an unlinked file's space is freed only when its last descriptor closes."""
        with self._lock:
            entry = self._open.pop(digest, None)
            close = entry is not None and _retire(entry)
        if close and entry is not None:
            os.close(entry.fd)

    def _open_entry(self, digest: Digest) -> int | None:
        try:
            return os.open(self.path_for(digest), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            # Never cached, or evicted by another process between any check and this open.
            self._count_miss()
        except OSError as exc:
            self._read_failed(exc)
        return None

    def _size_ok(self, digest: Digest, actual: int, expected: int | None) -> bool:
        if expected is None or actual == expected:
            return True
        # A torn file (power loss before the data reached the disk) or a wrong size hint:
        # either way not served; the next put() of the real bytes overwrites a torn entry.
        log.warning("cache entry %s is %d bytes, expected %d; fetching it again", digest.short, actual, expected)
        self._count_miss()
        return False

    def _touch(self, fd: int, st: os.stat_result) -> None:
        if time.time() - st.st_mtime < TOUCH_INTERVAL:
            return
        try:
            os.utime(fd)
        except OSError as exc:
            # Recency is best effort (a read-only cache can still serve hits).
            log.debug("cannot refresh cache entry mtime: %s", exc)

    def _remember(self, digest: Digest, data: bytes) -> None:
        if len(data) > self.memory_bytes or not data:
            return  # cachetools raises for items over its budget; empty chunks need no tier
        with self._lock:
            self._memory[digest] = data

    def _count_miss(self) -> None:
        with self._lock:
            self._misses += 1

    def _read_failed(self, exc: OSError) -> None:
        with self._lock:
            self._misses += 1
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


# ---------------------------------------------------------------------- module helpers
# Small functions for the system calls, so tests can inject failures (ENOSPC, EROFS) without
# patching the os module for everything else in the process.


def _host_identity() -> str:
    """``pid-namespace boot-id``: where a pid in a claim means this process table."""
    try:
        namespace = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        namespace = "?"
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip() or "?"
    except OSError:
        boot = "?"
    return f"{namespace} {boot}"


_HOST_IDENTITY = _host_identity()


def _claim_owner() -> bytes:
    """``pid pid-namespace boot-id`` of this process (read at each claim: the daemon forks)."""
    return f"{os.getpid()} {_HOST_IDENTITY}\n".encode()


def _owner_is_dead(owner: bytes) -> bool:
    """Whether the claim's owner is certainly gone: same boot and pid namespace as us (else its
    pid means nothing here), and no such process. Unknown or unreadable owners count as alive
    (the age limit still applies)."""
    fields = owner.split()
    if len(fields) != 3 or b"?" in fields[1:] or fields[1:] != _HOST_IDENTITY.encode().split():
        return False
    try:
        pid = int(fields[0])
    except ValueError:
        return False
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # EPERM: alive, another user's
    try:  # a zombie (killed, not yet reaped) writes nothing any more
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state in ("Z", "X")


def _create_exclusive(path: Path) -> int:
    """Create a new file for writing; fail if the name exists (O_EXCL) or is a symlink."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    return os.open(path, flags, 0o600)


def _write_direct(fd: int, data: bytes) -> bool:
    """Write ``data`` to the new, empty file ``fd`` bypassing the page cache (``O_DIRECT``) for
    all but its last partial block; ``False`` if the filesystem refuses direct I/O (the data
    is then written normally, and the caller stops trying).

    Why: a chunk is usually already in memory twice when it is cached — in the fetcher and,
    for the mount, in the FUSE file's page cache. Writing its cache file through the page
    cache adds a third copy that evicts other data, and costs 0.3 CPU-s per GiB at best and
    over 3 s where new pages are expensive (this VM: measured 3.4 s vs 0.2 s with O_DIRECT,
    ../docs/benchmarks.md). The bytes are copied into an aligned per-thread buffer first
    (O_DIRECT wants block-aligned memory, offsets and lengths; ~2 ms per 16 MiB), taken from a
    pool shared by the writing threads.
    """
    aligned = len(data) - len(data) % DIRECT_ALIGN
    with _direct_io(fd) as direct:
        if direct:
            try:
                with _buffers.get(aligned) as buffer, memoryview(buffer) as whole, whole[:aligned] as view:
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
        _write_all(fd, data)
        return False
    _write_all(fd, memoryview(data)[aligned:])
    return True


def _read_direct(fd: int, size: int) -> bytes | None:
    """The ``size`` bytes of the entry ``fd`` read around the page cache (``O_DIRECT``) into a
    pooled aligned buffer, then copied into one ``bytes``; ``None`` if the filesystem refuses
    direct I/O (the caller reads normally and stops trying). Short only if the file is.

    Why: a whole-entry read is for a caller that keeps the chunk in memory (the memory tier, a
    pull writing it out). Read through the page cache it would also fill 16 MiB of new page
    cache per chunk, evicting other data, and on this VM new pages are what made warm reads
    slow and erratic (../docs/benchmarks.md: a remount's 4 GiB read ran at 348–769 MB/s with up
    to 3.3 CPU-s per GiB before, 969–1,100 MB/s at 0.8–0.9 after). Not tried first: a
    ``RWF_NOWAIT`` read to take the bytes from the page cache when they happen to be there —
    on a miss it starts readahead into the page cache, which halved that read's speed.
    """
    padded = -(-size // DIRECT_ALIGN) * DIRECT_ALIGN
    with _direct_io(fd) as direct:
        if not direct:
            return None
        try:
            with _buffers.get(padded) as buffer, memoryview(buffer) as whole, whole[:padded] as view:
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


class _BufferPool:
    """Page-aligned buffers for O_DIRECT writes and reads, shared by all threads: as many exist
    as direct I/Os ever ran at once (two writes with the fetcher's write-behind, plus the
    whole-entry reads in flight), each as large as the largest chunk."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._free: list[mmap.mmap] = []

    @contextmanager
    def get(self, size: int) -> Iterator[mmap.mmap]:
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


_buffers = _BufferPool()


def _retire(entry: _OpenEntry) -> bool:
    """Mark a kept-open entry retired (caller holds the cache lock); whether to close it now."""
    entry.retired = True
    return entry.users == 0


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _pread_all(fd: int, length: int, offset: int) -> bytes:
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


def _touch_path(path: Path) -> None:
    try:
        os.utime(path)
    except OSError as exc:
        log.debug("cannot refresh mtime of %s: %s", path, exc)


def _unlink_quietly(path: str | Path) -> bool:
    """Unlink; ``False`` if it was already gone (another process got there first)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def _unlink_if_same(path: str, inode: int | None) -> bool:
    """Unlink ``path`` only if it is still the file we judged (inode ``inode``): a concurrent
    writer may have replaced a corrupt entry with good bytes in the meantime."""
    try:
        if inode is not None and os.stat(path).st_ino != inode:
            return False
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def _remove_stale_temps(temps: list[_Temp]) -> int:
    """Remove temp files older than :data:`STALE_TEMP_AGE` (their writer is dead); younger
    ones may still be in use by a live writer in another process."""
    now = time.time()
    return sum(1 for t in temps if now - t.mtime > STALE_TEMP_AGE and _unlink_quietly(t.path))


class _Verdict(enum.Enum):
    OK = "ok"
    BAD = "bad"  # wrong bytes, or unreadable
    GONE = "gone"  # vanished before we could open it (evicted concurrently)


def _check_entry(entry: _Entry) -> tuple[_Verdict, int | None]:
    """Hash one entry, streaming: (verdict, inode of the file judged, when it was opened)."""
    hasher = entry.digest.hasher()
    buf = bytearray(_READ_BLOCK)
    view = memoryview(buf)
    try:
        fd = os.open(entry.path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return _Verdict.GONE, None
    except OSError as exc:
        log.warning("cannot read cache entry %s: %s", entry.path, exc)
        return _Verdict.BAD, None
    inode: int | None = None
    try:
        inode = os.fstat(fd).st_ino
        while n := os.readv(fd, [buf]):
            hasher.update(view[:n])
    except OSError as exc:
        log.warning("cannot read cache entry %s: %s", entry.path, exc)
        return _Verdict.BAD, inode
    finally:
        os.close(fd)
    return (_Verdict.OK if hasher.hexdigest() == entry.digest.hex else _Verdict.BAD), inode


def _scandir(path: str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as it:
            return list(it)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _cache_error(operation: str, root: Path, exc: OSError) -> CacheError:
    return CacheError(f"cannot {operation} the chunk cache at {root}: {exc.strerror or exc}")
