"""Read-ahead policy: which chunks to fetch before anybody asks, and how many at once.

Owns: per-open-file sequential-read detection (:class:`Stream`), the read-ahead window that
doubles while reads stay sequential and resets on a far seek, the whole-file mode for
mmap-based loaders, and the global byte budget that caps prefetch memory across every open
file of a mount. Must not: know digests, registries, FUSE or the cache. A file is a sequence
of *units* (its chunks, or the Range pieces of a large plain layer) described by
:class:`Units`; fetching unit ``n`` is a callback the filesystem supplies.

Invariants:

- **Prefetches never run in a request's task.** They are started in the nursery the daemon
  owns (given to :class:`Prefetcher`), so a FUSE request that ends or is cancelled never
  cancels a download that other readers share; the daemon cancels them all at unmount.
- **Bounded.** At most ``budget_bytes`` of units are being prefetched at any moment, across
  all files (:class:`ByteBudget`, FIFO); a unit larger than the budget waits for the whole
  budget. Tasks waiting for the budget hold no memory. The window of one stream is capped at
  ``max_window`` bytes, so one reader cannot queue the whole file.
- **A failed prefetch is not an error.** It is counted and logged at INFO; the demand read
  that needs the unit fetches it again and reports the failure to its caller.

A stream may be told where the file's records end (:meth:`Stream.set_boundaries`; the
filesystem does so for safetensors files): a run then reads ahead only to the end of the
record it started in until the reader goes on past it.

The sequential detector tolerates what the kernel sends: up to ~99 read requests of one file
are handled concurrently by pyfuse3 and arrive slightly out of order, and the kernel issues a
readahead window's requests at once. A read counts as sequential when it starts within
:data:`SEQUENTIAL_TOLERANCE` of the furthest byte read so far in the current run.

All methods must be called from the trio run that owns the nursery; no locks are needed
because trio tasks switch only at awaits.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import logging
from bisect import bisect_right
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

from ocifs.errors import OcifsError

log = logging.getLogger(__name__)

MiB = 1024 * 1024

#: A read starting within this distance of the furthest byte read so far continues the run.
#: We raise the mount's read_ahead_kb to 4 MiB, and the kernel starts the next asynchronous
#: readahead window while the previous one is still in flight, so requests of one sequential
#: reader span up to two windows (8 MiB) and complete in any order (docs/platform.md "FUSE on
#: Linux").
SEQUENTIAL_TOLERANCE = 8 * MiB

#: The first window of a run: read-ahead starts once a sequential reader is within 8 MiB of
#: the next unit. Small on purpose: a loader that reads a header (safetensors: the first few
#: KiB) must not pull in the next 16 MiB chunk.
INITIAL_WINDOW = 8 * MiB

#: The window never exceeds this: 8 default 16 MiB chunks, enough to keep the default 8
#: parallel downloads busy (8 parallel GETs saturate loopback on 2 cores and beat one stream
#: by 3x at 40 ms RTT: docs/platform.md "Measured on the reference machine"), and half the
#: chunk cache's 256 MiB memory tier, so prefetched chunks are still in memory when the reader
#: gets there.
DEFAULT_MAX_WINDOW = 128 * MiB

#: Default global budget of bytes being prefetched at once, over all open files: the same
#: 8 x 16 MiB. Memory held by prefetch downloads is bounded by it, independent of file size
#: and of the number of open files: a mount's memory is set by its configuration, not by what
#: it serves (docs/operations.md "The cache and memory" has the measured parts).
DEFAULT_BUDGET = 128 * MiB

#: A run is considered sequential (and read-ahead starts) after this many reads in it: one
#: read at an offset says nothing about the next.
MIN_SEQUENTIAL_READS = 2


class PrefetchMode(enum.Enum):
    """``--prefetch``: ``auto`` reads ahead of sequential readers; ``whole`` fetches a file
    entirely when it is opened (for mmap-based loaders such as safetensors, whose page faults
    look random) and also reads ahead of sequential readers, whose chunks may have left memory
    by the time they get there; ``off`` fetches only what is read."""

    AUTO = "auto"
    WHOLE = "whole"
    OFF = "off"


@dataclass(frozen=True, slots=True)
class Units:
    """How a file of ``size`` bytes is cut into units: unit ``n`` is bytes
    ``[offsets[n], offsets[n + 1])`` (the last ends at ``size``). ``offsets`` starts at 0 and
    increases strictly; the constructor trusts its caller (``ChunkIndex`` guarantees it)."""

    size: int
    offsets: tuple[int, ...]

    @classmethod
    def from_sizes(cls, sizes: Sequence[int]) -> Units:
        """Units of the given sizes, in order (offsets are their running sums)."""
        offsets: list[int] = []
        position = 0
        for size in sizes:
            offsets.append(position)
            position += size
        return cls(position, tuple(offsets))

    @classmethod
    def fixed(cls, size: int, unit: int) -> Units:
        """``size`` bytes cut every ``unit`` bytes (the last unit may be shorter)."""
        if unit < 1:
            raise ValueError(f"unit size must be >= 1, got {unit}")
        return cls(size, tuple(range(0, size, unit)))

    def __len__(self) -> int:
        return len(self.offsets)

    def unit_at(self, offset: int) -> int:
        """The unit holding byte ``offset`` (clamped to the first and last unit)."""
        return max(0, min(len(self.offsets) - 1, bisect_right(self.offsets, offset) - 1))

    def start(self, n: int) -> int:
        return self.offsets[n]

    def length(self, n: int) -> int:
        end = self.offsets[n + 1] if n + 1 < len(self.offsets) else self.size
        return end - self.offsets[n]


FetchUnit = Callable[[int], Awaitable[None]]
"""Fetch unit ``n`` into the cache (or wherever the filesystem keeps it); raise on failure."""


@dataclass(slots=True)
class PrefetchStats:
    """Counters of one :class:`Prefetcher` since it was created.

    ``scheduled``: units queued for prefetch; ``completed``/``failed``: how those ended
    (cancelled ones at unmount count as neither); ``runs``: sequential runs detected (read-ahead
    started); ``resets``: far seeks that reset a stream's window; ``whole_files``: whole-file
    prefetches started; ``queued``: units waiting for or holding the budget now;
    ``budget_in_use``/``peak_budget_in_use``: bytes being prefetched now / at most.
    """

    scheduled: int = 0
    completed: int = 0
    failed: int = 0
    runs: int = 0
    resets: int = 0
    whole_files: int = 0
    queued: int = 0
    budget_in_use: int = 0
    peak_budget_in_use: int = 0


class ByteBudget:
    """A FIFO semaphore counted in bytes (trio has none): ``async with budget.reserve(n)``.

    A reservation larger than the whole budget is clamped to it, so it proceeds alone rather
    than waiting forever. Waiters are served in arrival order: a large reservation is not
    starved by a stream of small ones.
    """

    def __init__(self, total: int) -> None:
        if total < 1:
            raise ValueError(f"budget must be >= 1 byte, got {total}")
        self.total = total
        self.available = total
        self._waiters: collections.deque[tuple[int, trio.Event]] = collections.deque()

    @property
    def in_use(self) -> int:
        return self.total - self.available

    @asynccontextmanager
    async def reserve(self, nbytes: int) -> AsyncIterator[None]:
        """Hold ``min(nbytes, total)`` bytes of the budget for the duration of the block."""
        await self.acquire(nbytes)
        try:
            yield
        finally:
            self.release(nbytes)

    async def acquire(self, amount: int) -> None:
        """Take ``amount`` bytes (clamped to ``total``), waiting in FIFO order; pair with
        :meth:`release` of the same ``amount``."""
        amount = self._clamp(amount)
        if not self._waiters and self.available >= amount:
            self.available -= amount
            await trio.lowlevel.checkpoint()
            return
        entry = (amount, trio.Event())
        self._waiters.append(entry)
        try:
            await entry[1].wait()
        except BaseException:
            if entry[1].is_set():  # granted, then cancelled before we could use it
                self.available += amount
                self._wake()
            else:
                self._waiters.remove(entry)
                self._wake()  # we may have been the head blocking smaller waiters
            raise

    def release(self, amount: int) -> None:
        """Give back ``amount`` bytes taken by :meth:`acquire` (clamped the same way)."""
        self.available += self._clamp(amount)
        self._wake()

    def _clamp(self, amount: int) -> int:
        return max(0, min(amount, self.total))

    def _wake(self) -> None:
        while self._waiters and self.available >= self._waiters[0][0]:
            amount, event = self._waiters.popleft()
            self.available -= amount
            event.set()


class Prefetcher:
    """Starts read-ahead for the streams of one mount, within one global byte budget.

    ``nursery`` is owned by the daemon and outlives every request (see the module
    docstring). ``budget_bytes`` caps bytes being prefetched at once across all files;
    ``max_window`` caps one stream's window.
    """

    def __init__(
        self,
        nursery: trio.Nursery,
        *,
        mode: PrefetchMode = PrefetchMode.AUTO,
        budget_bytes: int = DEFAULT_BUDGET,
        max_window: int = DEFAULT_MAX_WINDOW,
        initial_window: int = INITIAL_WINDOW,
        tolerance: int = SEQUENTIAL_TOLERANCE,
    ) -> None:
        if max_window < 1 or initial_window < 1:
            raise ValueError("windows must be >= 1 byte")
        self.mode = mode
        self.max_window = max_window
        self.initial_window = min(initial_window, max_window)
        self.tolerance = tolerance
        self._nursery = nursery
        self._budget = ByteBudget(budget_bytes)
        self._pending: set[tuple[Hashable, int]] = set()
        self._whole: set[Hashable] = set()
        self._stats = PrefetchStats()

    def stats(self) -> PrefetchStats:
        """A copy of the counters as they are now."""
        stats = dataclasses.replace(self._stats)
        stats.budget_in_use = self._budget.in_use
        return stats

    def open_stream(self, key: Hashable, units: Units, fetch: FetchUnit, *, max_window: int | None = None) -> Stream:
        """A read-ahead stream for one open file. ``key`` names the file (the same file opened
        twice shares pending prefetches); ``fetch`` loads one unit. ``max_window`` lowers
        the window cap for this stream (e.g. when units land in a small piece cache).

        In ``whole`` mode the whole file is queued here, once per ``key`` at a time.
        """
        if self.mode is PrefetchMode.WHOLE:
            self.whole(key, units, fetch)
        window = self.max_window if max_window is None else max(1, min(max_window, self.max_window))
        return Stream(self, key, units, fetch, window)

    def background(self, task: Callable[[], Awaitable[None]], what: str) -> None:
        """Run ``task`` (best-effort work that informs read-ahead, e.g. parsing a file's
        header for hints) in the daemon's nursery, so it never delays a reply. A failure is
        logged and contained, like a failed prefetch."""
        self._nursery.start_soon(self._contained, task, what)

    async def _contained(self, task: Callable[[], Awaitable[None]], what: str) -> None:
        try:
            await task()
        except OcifsError as exc:
            log.info("%s failed: %s", what, exc)
        except Exception:
            log.exception("%s failed unexpectedly", what)

    def whole(self, key: Hashable, units: Units, fetch: FetchUnit) -> None:
        """Queue every unit of the file, in order, unless that is already under way for ``key``."""
        if key in self._whole or len(units) == 0:
            return
        self._whole.add(key)
        self._stats.whole_files += 1
        self._nursery.start_soon(self._fetch_whole, key, units, fetch)

    async def _fetch_whole(self, key: Hashable, units: Units, fetch: FetchUnit) -> None:
        # One driver per file, queueing units in order as the budget frees up: a 100 GB file
        # never has thousands of waiting tasks, and the file's start arrives first.
        try:
            for n in range(len(units)):
                if (key, n) in self._pending:
                    continue
                amount = units.length(n)
                await self._budget.acquire(amount)
                self._schedule(key, n, units, fetch, reserved=True)
        finally:
            self._whole.discard(key)

    def _schedule(self, key: Hashable, n: int, units: Units, fetch: FetchUnit, *, reserved: bool = False) -> bool:
        """Start fetching unit ``n`` of ``key`` unless it is already pending. With ``reserved``
        the caller already holds the budget for it (handed over to the task)."""
        if (key, n) in self._pending:
            if reserved:
                self._budget.release(units.length(n))
            return False
        self._pending.add((key, n))
        self._stats.scheduled += 1
        self._stats.queued += 1
        self._nursery.start_soon(self._run, key, n, units.length(n), fetch, reserved)
        return True

    async def _run(self, key: Hashable, n: int, length: int, fetch: FetchUnit, reserved: bool) -> None:
        try:
            if not reserved:
                await self._budget.acquire(length)
            self._stats.peak_budget_in_use = max(self._stats.peak_budget_in_use, self._budget.in_use)
            try:
                await fetch(n)
            finally:
                self._budget.release(length)
            self._stats.completed += 1
        except OcifsError as exc:
            self._stats.failed += 1
            log.info("prefetch of unit %d of %s failed: %s", n, key, exc)
        except Exception:
            # This task runs in the daemon's nursery: an exception escaping it would end the
            # mount. Like the FUSE edge, it is logged with its traceback and contained.
            self._stats.failed += 1
            log.exception("prefetch of unit %d of %s failed unexpectedly", n, key)
        finally:
            self._stats.queued -= 1
            self._pending.discard((key, n))


class Stream:
    """Read-ahead state of one open file: detects sequential runs and queues units ahead.

    Call :meth:`on_read` for every read request (before serving it); it never blocks and
    never raises. The run's *frontier* is the furthest byte read; reads within the tolerance
    of it continue the run, others start a new run with the initial window (a far seek).
    The window doubles each time the reader consumes a window's worth of bytes in the run.
    """

    def __init__(self, owner: Prefetcher, key: Hashable, units: Units, fetch: FetchUnit, max_window: int) -> None:
        self._owner = owner
        self.key = key
        self.units = units
        self._fetch = fetch
        self.max_window = max_window
        self.frontier = -1  # furthest byte (exclusive) read in the current run; -1: no run yet
        self.window = min(owner.initial_window, max_window)
        self._run_reads = 0
        self._grown_at = 0  # frontier when the window last doubled (or the run started)
        self._scheduled_to = 0  # units below this number are queued (or were) in this run
        self._boundaries: tuple[int, ...] = ()  # record ends (e.g. tensors), if the file has them
        self._run_start = 0
        self._cap: int | None = None  # read-ahead stops here while the run stays in one record
        self.closed = False

    def set_boundaries(self, ends: Sequence[int]) -> None:
        """Tell the stream where the file's records end (sorted offsets, e.g. every tensor's
        end in a safetensors file). A run then reads ahead no further than the end of the
        record it started in (see :meth:`_run_cap`), until it goes more than the tolerance past
        that end — a loader reading one tensor fetches no chunk after it, one reading them all
        in order stalls once, at the first boundary."""
        self._boundaries = tuple(ends)
        if self.frontier >= 0:
            self._cap = self._run_cap(self._run_start)

    def on_read(self, offset: int, size: int) -> None:
        """Account for a read of ``[offset, offset + size)`` and queue read-ahead if sequential."""
        owner = self._owner
        if self.closed or owner.mode is PrefetchMode.OFF or size <= 0 or len(self.units) == 0:
            return
        end = min(offset + size, self.units.size)
        if offset >= self.units.size:
            return
        if self.frontier < 0 or not self.frontier - owner.tolerance <= offset <= self.frontier + owner.tolerance:
            if self.frontier >= 0:
                owner._stats.resets += 1
                log.debug("%s: read at %d, %d from the run's frontier %d: new run", self.key, offset,
                          offset - self.frontier, self.frontier)  # fmt: skip
            self._start_run(offset, end)
            return
        self._run_reads += 1
        self.frontier = max(self.frontier, end)
        if self._run_reads == MIN_SEQUENTIAL_READS:
            owner._stats.runs += 1
        if self._run_reads < MIN_SEQUENTIAL_READS:
            return
        if self.frontier - self._grown_at >= self.window and self.window < self.max_window:
            self.window = min(self.window * 2, self.max_window)
            self._grown_at = self.frontier
        self._queue_ahead()

    def close(self) -> None:
        """The file was released: queue nothing more (prefetches under way complete)."""
        self.closed = True

    def _run_cap(self, start: int) -> int | None:
        """Where read-ahead stops for a run starting at ``start``: the first record boundary
        more than the tolerance after it (``None``: no boundaries known). The tolerance skips
        a boundary just after the start: the kernel reads around a page fault, so a loader
        touching a tensor's first page starts the run up to 2 MiB before the tensor."""
        i = bisect_right(self._boundaries, start + self._owner.tolerance)
        return self._boundaries[i] if i < len(self._boundaries) else None

    def _start_run(self, offset: int, end: int) -> None:
        self.frontier = end
        self._run_start = offset
        self._cap = self._run_cap(offset)
        self._run_reads = 1
        self.window = min(self._owner.initial_window, self.max_window)
        self._grown_at = end
        self._scheduled_to = self.units.unit_at(max(offset, end - 1)) + 1

    def _queue_ahead(self) -> None:
        """Queue every unit after the frontier's unit that starts before frontier + window."""
        units = self.units
        current = units.unit_at(self.frontier - 1)
        horizon = self.frontier + self.window
        if self._cap is not None:
            if self.frontier > self._cap + self._owner.tolerance:
                self._cap = None  # the reader went on into the next records: a sequential load
            else:
                horizon = min(horizon, self._cap)
        n = max(self._scheduled_to, current + 1)
        while n < len(units) and units.start(n) < horizon:
            self._owner._schedule(self.key, n, units, self._fetch)
            n += 1
        self._scheduled_to = max(self._scheduled_to, n)
