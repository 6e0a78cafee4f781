"""The chunk cache's files on disk: the layout, atomic writes, and eviction and maintenance under
the cache-wide lock.

Owns ``ROOT/v1/<algorithm>/<2 hex>/<hex>`` (entries), ``.tmp-<pid>-<random>`` (entries being
written), ``ROOT/v1/.lock`` (the ``flock`` eviction takes) and this process's running estimate
of the bytes on disk. Must not hold entries in memory, keep descriptors, count hits or decide
what a failure means to a reader: it raises :class:`OSError` and the cache façade
(:mod:`ocifs.cache.store`) degrades or reports. The one exception is the eviction a write
triggers, which nobody waits for: its failure goes to the ``warn`` callback.

Invariants it keeps: nothing half-written is visible (temp file with ``O_EXCL`` in the final
directory, then ``os.replace``); concurrent processes never evict more than needed (the pass
rescans under the exclusive ``flock``); recency is the file's mtime, so LRU works across
processes; temp files are removed only once older than :data:`STALE_TEMP_AGE`.
"""

from __future__ import annotations

import enum
import fcntl
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ocifs.cache.directio import DirectIO
from ocifs.digest import Digest
from ocifs.errors import InvalidDigest

log = logging.getLogger(__name__)

#: Directory under the root that holds this layout; a future incompatible layout gets "v2".
LAYOUT_VERSION = "v1"

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

#: An eviction pass triggered by a write evicts down to this fraction of ``max_size``. Every
#: pass scans every entry, so leaving 10 % headroom makes passes happen once per 10 % of the
#: budget written instead of once per chunk.
LOW_WATER = 0.9

_READ_BLOCK = 1024 * 1024  # verify() streams files in 1 MiB blocks: bounded memory per thread
_ALGORITHMS = ("sha256", "sha512")  # the algorithms Digest accepts; each gets its own directory


@dataclass(frozen=True, slots=True)
class PruneResult:
    """What a prune, an eviction pass or a clear removed and what is left."""

    removed_entries: int
    removed_bytes: int
    removed_temp_files: int
    remaining_entries: int
    remaining_bytes: int


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """What a verify found: ``bad`` lists every entry whose bytes did not hash to its name (or
    could not be read); ``removed`` how many of those were deleted."""

    checked: int
    bytes_checked: int
    bad: tuple[Digest, ...]
    removed: int
    removed_temp_files: int


@dataclass(frozen=True, slots=True)
class Entry:
    """An entry found on disk by a scan."""

    path: str
    digest: Digest
    size: int
    mtime_ns: int


@dataclass(frozen=True, slots=True)
class Temp:
    """A temp file found on disk by a scan."""

    path: str
    mtime: float


@dataclass(frozen=True, slots=True)
class Listing:
    """What a scan found: every entry and every temp file."""

    entries: list[Entry]
    temps: list[Temp]

    @property
    def bytes(self) -> int:
        return sum(e.size for e in self.entries)


class DiskStore:
    """The entries under ``root``, bounded to ``max_size`` bytes (``None``: unbounded).

    ``direct`` moves the bytes of whole entries. ``forget`` is called with the digest of every
    entry this store removes (eviction, clear, verify), so whoever holds it open lets go.
    ``warn`` receives the failure of an eviction pass a write triggered. Thread safe.
    """

    def __init__(
        self,
        root: Path,
        max_size: int | None,
        *,
        direct: DirectIO,
        forget: Callable[[Digest], None],
        warn: Callable[[str, OSError], None],
    ) -> None:
        self.root = root
        self.max_size = max_size
        self.base = root / LAYOUT_VERSION
        self._lock_path = self.base / ".lock"
        self._direct = direct
        self._forget = forget
        self._warn = warn
        self._lock = threading.Lock()  # guards the accounting below; never held across I/O
        self._total = 0  # bytes on disk as this process believes; exact after each scan
        self._written = 0  # bytes this process ever wrote: what landed during a scan is counted
        self._last_scan = time.monotonic()
        self._evictions = 0
        # One eviction pass per process at a time; other threads skip rather than queue up.
        self._evict_lock = threading.Lock()

    # ------------------------------------------------------------------ layout

    def create(self) -> None:
        """Create the root and the layout directories (mode 0700). Raises :class:`OSError`."""
        for directory in (self.root, self.base, self.base / "sha256"):
            directory.mkdir(mode=0o700, parents=directory == self.root, exist_ok=True)

    def path_for(self, digest: Digest) -> Path:
        """Where ``digest``'s bytes live when stored. The file may vanish at any time (eviction)."""
        return self.base / digest.algorithm / digest.hex[:2] / digest.hex

    def open(self, digest: Digest) -> int:
        """A read-only descriptor of ``digest``'s entry. Raises :class:`FileNotFoundError` on a
        miss (never stored, or evicted a moment ago) and :class:`OSError` on trouble."""
        return os.open(self.path_for(digest), os.O_RDONLY | os.O_CLOEXEC)

    @property
    def evictions(self) -> int:
        """Entries this process's eviction passes removed."""
        with self._lock:
            return self._evictions

    # ------------------------------------------------------------------ reads

    def read_whole(self, fd: int, size: int) -> bytes:
        """All ``size`` bytes of an entry opened by :meth:`open` (short only if it shrank)."""
        return self._direct.read_whole(fd, size)

    @staticmethod
    def touch(fd: int, st: os.stat_result) -> None:
        """Refresh the LRU recency of a hit's entry, at most every :data:`TOUCH_INTERVAL`."""
        if time.time() - st.st_mtime < TOUCH_INTERVAL:
            return
        try:
            os.utime(fd)
        except OSError as exc:
            # Recency is best effort (a read-only cache can still serve hits).
            log.debug("cannot refresh cache entry mtime: %s", exc)

    # ------------------------------------------------------------------ writes

    def write(self, digest: Digest, data: bytes) -> bool:
        """Store one entry atomically; ``False`` if an identical one (same name and length) was
        already there (it is touched: wanting it again makes it recently used). Raises
        :class:`OSError`; :class:`FileNotFoundError` if a concurrent clear removed the temp file
        or its directory. Does not evict: call :meth:`maybe_evict` after."""
        path = self.path_for(digest)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            pass
        else:
            if st.st_size == len(data):
                # Same name and length: the same bytes (content addressed). A wrong length (a
                # torn file) is overwritten below.
                _touch_path(path)
                return False
        directory = path.parent
        try:
            directory.mkdir(mode=0o700, exist_ok=True)
        except FileNotFoundError:
            # The algorithm directory (or the whole tree) is missing: first sha512 chunk, or
            # somebody removed the cache while we run. Recreate the chain with safe modes.
            for part in (self.root, self.base, directory.parent, directory):
                part.mkdir(mode=0o700, parents=part == self.root, exist_ok=True)
        tmp = directory / f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(8)}"
        fd = create_exclusive(tmp)
        try:
            try:
                self._direct.write_new(fd, data)
            finally:
                os.close(fd)
            # No fsync: a process crash cannot tear the file (the page cache holds it), and
            # after a power loss a torn entry is caught by the size check on read and by
            # verify(); an fsync per chunk would cost the throughput this cache exists for.
            os.replace(tmp, path)
        except BaseException:
            unlink_quietly(tmp)
            raise
        with self._lock:
            self._total += len(data)
            self._written += len(data)
        log.debug("cached %s (%d bytes)", digest.short, len(data))
        return True

    def discard(self, digest: Digest) -> bool:
        """Remove ``digest``'s entry (and let go of it, see ``forget``); ``False`` if it was not
        there. Raises :class:`OSError` if it cannot be removed."""
        path = self.path_for(digest)
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            size = 0
        removed = unlink_quietly(path)
        self._forget(digest)
        if removed:
            with self._lock:
                self._total = max(0, self._total - size)
        return removed

    # ------------------------------------------------------------------ eviction

    def maybe_evict(self) -> None:
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
            # Threads whose writes land during a pass skip it (they could not take the lock),
            # so the evicting thread checks again afterwards rather than leave their bytes
            # over the bound until the next write.
            while True:
                with self._lock:
                    written_before = self._written
                try:
                    self.evict(limit=self.max_size, target=int(self.max_size * LOW_WATER))
                except OSError as exc:
                    self._warn("evict", exc)
                with self._lock:
                    if self._total <= self.max_size or self._written == written_before:
                        break  # under the bound, or nothing new to account for (a failed pass)
        finally:
            self._evict_lock.release()

    def evict(self, *, limit: int | None, target: int | None) -> PruneResult:
        """Under the cross-process lock: scan, remove stale temp files, and if the entries
        exceed ``limit`` bytes evict the oldest (by mtime) down to ``target`` bytes. Raises
        :class:`OSError`.

        Rescanning under the lock is what keeps processes from over-evicting: a process that
        waited for the lock sees what the previous holder already removed.
        """
        with self._lock:
            written_before = self._written
        with self._exclusive():
            listing = self.scan()
            removed_temps = remove_stale_temps(listing.temps)
            entries = listing.entries
            total = listing.bytes
            removed = removed_bytes = 0
            if limit is not None and target is not None and total > limit:
                entries.sort(key=lambda e: e.mtime_ns)
                for entry in entries:
                    if total <= target:
                        break
                    # ENOENT: another process evicted it first; it is gone either way.
                    if unlink_quietly(entry.path):
                        removed += 1
                        removed_bytes += entry.size
                    self._forget(entry.digest)
                    total -= entry.size
        with self._lock:
            # Entries this process wrote while the pass ran may be missing from the scan:
            # count them on top (twice at worst, which only brings the next pass forward).
            self._total = total + (self._written - written_before)
            self._last_scan = time.monotonic()
            self._evictions += removed
        if removed:
            log.debug("evicted %d cache entries (%d bytes) from %s", removed, removed_bytes, self.root)
        return PruneResult(removed, removed_bytes, removed_temps, len(entries) - removed, total)

    # ------------------------------------------------------------------ maintenance

    def clear(self) -> PruneResult:
        """Remove every entry and every temp file (of any age), under the lock. Raises
        :class:`OSError`. A concurrent writer whose temp file vanishes just fails its write."""
        with self._exclusive():
            listing = self.scan()
            removed = removed_bytes = 0
            for entry in listing.entries:
                if unlink_quietly(entry.path):
                    removed += 1
                    removed_bytes += entry.size
                self._forget(entry.digest)
            removed_temps = sum(1 for t in listing.temps if unlink_quietly(t.path))
        with self._lock:
            self._total = 0
            self._last_scan = time.monotonic()
        return PruneResult(removed, removed_bytes, removed_temps, 0, 0)

    def verify(self, *, remove_bad: bool, workers: int, on_bad: Callable[[Digest], None] | None = None) -> VerifyResult:
        """Re-hash every entry in ``workers`` threads (hashlib releases the GIL); report, and
        with ``remove_bad`` delete, the ones whose bytes do not match their name; remove stale
        temp files. ``on_bad`` is called for every bad digest. Raises :class:`OSError`."""
        listing = self.scan()
        removed_temps = remove_stale_temps(listing.temps)
        entries = listing.entries
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ocifs-verify") as pool:
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
            if on_bad is not None:
                on_bad(entry.digest)
            self._forget(entry.digest)
            if remove_bad and _unlink_if_same(entry.path, inode):
                removed += 1
                with self._lock:
                    self._total = max(0, self._total - entry.size)
        return VerifyResult(checked, checked_bytes, tuple(bad), removed, removed_temps)

    def scan(self) -> Listing:
        """Every entry and temp file on disk. Tolerates files and directories vanishing during
        the walk (other processes evict concurrently); ignores names it does not own."""
        entries: list[Entry] = []
        temps: list[Temp] = []
        for algorithm in _ALGORITHMS:
            for sub in _scandir(os.path.join(self.base, algorithm)):
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
                        temps.append(Temp(item.path, st.st_mtime))
                        continue
                    if not item.name.startswith(sub.name):
                        continue
                    try:
                        digest = Digest.parse(f"{algorithm}:{item.name}")
                    except InvalidDigest:
                        continue
                    entries.append(Entry(item.path, digest, st.st_size, st.st_mtime_ns))
        return Listing(entries, temps)

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Hold the cache-wide ``flock`` (released by closing the descriptor, also on crash)."""
        try:
            self.base.mkdir(mode=0o700, parents=True, exist_ok=True)
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


# ---------------------------------------------------------------------- system-call helpers
# Module functions, so tests can inject failures (ENOSPC, EROFS) by replacing one of them.


def create_exclusive(path: Path) -> int:
    """Create a new file for writing; fail if the name exists (O_EXCL) or is a symlink."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    return os.open(path, flags, 0o600)


def unlink_quietly(path: str | Path) -> bool:
    """Unlink; ``False`` if it was already gone (another process got there first)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def remove_stale_temps(temps: list[Temp]) -> int:
    """Remove temp files older than :data:`STALE_TEMP_AGE` (their writer is dead); younger
    ones may still be in use by a live writer in another process."""
    now = time.time()
    return sum(1 for t in temps if now - t.mtime > STALE_TEMP_AGE and unlink_quietly(t.path))


def _touch_path(path: Path) -> None:
    try:
        os.utime(path)
    except OSError as exc:
        log.debug("cannot refresh mtime of %s: %s", path, exc)


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


class _Verdict(enum.Enum):
    OK = "ok"
    BAD = "bad"  # wrong bytes, or unreadable
    GONE = "gone"  # vanished before we could open it (evicted concurrently)


def _check_entry(entry: Entry) -> tuple[_Verdict, int | None]:
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
