"""The chunk cache: only verified bytes enter, nothing torn is ever visible, size stays bounded in
LRU order across processes, and a broken disk degrades to "uncached" with one warning."""

from __future__ import annotations

import contextlib
import errno
import os
import random
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest

from ocifs.cache import directio
from ocifs.cache import disk as disk_store
from ocifs.cache.descriptors import OPEN_ENTRIES
from ocifs.cache.store import STALE_TEMP_AGE, ChunkCache, default_cache_dir
from ocifs.digest import Digest
from ocifs.errors import CacheError, IntegrityError

REPO = Path(__file__).resolve().parent.parent
ExpectLog = Callable[..., AbstractContextManager[Any]]


def chunk(seed: int, size: int = 1000) -> tuple[Digest, bytes]:
    data = random.Random(seed).randbytes(size)
    return Digest.of_bytes(data), data


def set_age(path: Path, seconds_ago: float) -> None:
    when = time.time() - seconds_ago
    os.utime(path, (when, when))


def test_put_then_get_round_trips_through_memory_and_disk(tmp_path: Path) -> None:
    cache = ChunkCache(tmp_path)
    digest, data = chunk(1)
    assert cache.put(digest, data)
    assert cache.get_memory(digest) == data  # memory tier

    path = tmp_path / "v1" / "sha256" / digest.hex[:2] / digest.hex
    assert cache.path_for(digest) == path
    assert path.read_bytes() == data

    fresh = ChunkCache(tmp_path, memory_bytes=0)  # a restart: memory empty, disk kept
    assert fresh.contains(digest)
    assert fresh.read_range(digest, 10, 20) == data[10:20]
    assert fresh.read_range(digest, 990, 5000) == data[990:]  # cut short at the end, like slicing
    assert fresh.get_disk(digest, size=len(data)) == data
    assert fresh.get_disk(chunk(2)[0]) is None
    stats = fresh.stats()
    assert (stats.entries, stats.bytes, stats.disk_hits, stats.misses, stats.memory_hits) == (1, 1000, 3, 1, 0)

    warm = ChunkCache(tmp_path)
    assert warm.get_memory(digest) is None  # memory starts empty; a miss there is not counted
    assert warm.get_disk(digest) == data and warm.get_memory(digest) == data
    assert (warm.stats().disk_hits, warm.stats().memory_hits) == (1, 1)  # the disk hit filled memory


def test_files_and_directories_are_private(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    cache = ChunkCache(root)
    digest, data = chunk(1)
    cache.put(digest, data)
    path = cache.path_for(digest)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for directory in (root, root / "v1", root / "v1" / "sha256", path.parent):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory


def test_wrong_digest_is_refused_and_nothing_is_stored(tmp_path: Path) -> None:
    cache = ChunkCache(tmp_path)
    digest, _ = chunk(1)
    with pytest.raises(IntegrityError, match=str(digest)):
        cache.put(digest, b"not the bytes that digest names")
    assert not cache.contains(digest)
    assert cache.get_memory(digest) is None and cache.get_disk(digest) is None
    assert not cache.path_for(digest).exists()
    assert cache.stats().rejected == 1


def test_leftover_temp_file_is_invisible_and_pruned_once_stale(tmp_path: Path) -> None:
    cache = ChunkCache(tmp_path)
    digest, data = chunk(1)
    directory = cache.path_for(digest).parent
    directory.mkdir(parents=True)
    # What a writer killed mid-write leaves behind: half a chunk under a temp name.
    dead = directory / ".tmp-4242-deadbeefdeadbeef"
    dead.write_bytes(data[:500])
    live = directory / ".tmp-4243-0123456789abcdef"  # a live writer in another process
    live.write_bytes(data[:100])

    assert cache.get_disk(digest) is None
    assert not cache.contains(digest)
    assert cache.stats().entries == 0 and cache.stats().temp_files == 2

    assert cache.prune().removed_temp_files == 0  # too young: may still be being written
    set_age(dead, STALE_TEMP_AGE + 60)
    result = cache.prune()
    assert result.removed_temp_files == 1
    assert not dead.exists() and live.exists()


def test_eviction_keeps_size_under_bound_in_lru_order(tmp_path: Path) -> None:
    cache = ChunkCache(tmp_path, max_size=10_000, memory_bytes=0)
    chunks = [chunk(i) for i in range(10)]
    for i, (digest, data) in enumerate(chunks):
        cache.put(digest, data)
        set_age(cache.path_for(digest), 3600 - i * 10)  # chunk 0 oldest ... chunk 9 newest
    assert cache.stats().bytes == 10_000 and cache.stats().evictions == 0

    # Reading chunk 0 from disk makes it the most recently used.
    assert cache.get_disk(chunks[0][0]) == chunks[0][1]

    extra = chunk(100)
    cache.put(*extra)
    present = {d for d, _ in [*chunks, extra] if cache.path_for(d).exists()}
    assert cache.stats().bytes <= 10_000
    # The least recently used went first: chunks 1 and 2, not the re-read chunk 0.
    assert chunks[1][0] not in present and chunks[2][0] not in present
    assert {chunks[0][0], extra[0]} <= present
    assert {d for d, _ in chunks[3:]} <= present
    assert cache.stats().evictions == 2


def test_puts_landing_during_an_eviction_pass_are_still_evicted(tmp_path: Path) -> None:
    """Puts that finish while another thread's pass is scanning cannot take the eviction
    lock; their bytes must neither vanish from the running total nor stay over the bound."""
    cache = ChunkCache(tmp_path, max_size=5000, memory_bytes=0)
    chunks = [chunk(i) for i in range(7)]
    for digest, data in chunks[:5]:
        cache.put(digest, data)
    scanning = threading.Event()
    late_put_done = threading.Event()
    real_scan = cache.disk.scan
    calls = 0

    def scan_then_wait() -> Any:
        nonlocal calls
        calls += 1
        result = real_scan()
        if calls == 1:  # the first pass has scanned: let the late put land before it evicts
            scanning.set()
            assert late_put_done.wait(10)
        return result

    cache.disk.scan = scan_then_wait  # type: ignore[method-assign]
    first = chunk(100)
    evictor = threading.Thread(target=cache.put, args=first)
    evictor.start()
    assert scanning.wait(10)
    for late in chunks[5:]:  # over the bound, but the pass in progress holds the lock
        cache.put(*late)
    late_put_done.set()
    evictor.join(10)
    assert not evictor.is_alive()
    assert calls >= 2, "the evicting thread must look again after the late put"
    assert cache.stats().bytes <= 5000


def test_bounded_cache_opened_over_its_limit_evicts_at_open(tmp_path: Path) -> None:
    unbounded = ChunkCache(tmp_path)
    chunks = [chunk(i) for i in range(8)]
    for i, (digest, data) in enumerate(chunks):
        unbounded.put(digest, data)
        set_age(unbounded.path_for(digest), 1000 - i)

    bounded = ChunkCache(tmp_path, max_size=3000)
    assert bounded.stats().bytes == 3000
    assert [d for d, _ in chunks if bounded.path_for(d).exists()] == [d for d, _ in chunks[5:]]


def test_prune_to_an_explicit_size_and_clear(tmp_path: Path) -> None:
    cache = ChunkCache(tmp_path)
    for i in range(5):
        cache.put(*chunk(i))
    result = cache.prune(2500)
    assert (result.removed_entries, result.remaining_entries, result.remaining_bytes) == (3, 2, 2000)
    cleared = cache.clear()
    assert (cleared.removed_entries, cleared.removed_bytes) == (2, 2000)
    assert cache.stats().entries == 0 and cache.stats().memory_entries == 0


def test_memory_tier_respects_its_byte_budget(tmp_path: Path) -> None:
    cache = ChunkCache(tmp_path, memory_bytes=2500)
    chunks = [chunk(i) for i in range(3)]
    for digest, data in chunks:
        cache.put(digest, data)
    stats = cache.stats()
    assert stats.memory_entries == 2 and stats.memory_used == 2000
    assert not cache.in_memory(chunks[0][0])  # least recently used left memory; still on disk
    assert cache.get_disk(chunks[0][0]) == chunks[0][1]

    big_digest, big = chunk(9, size=4000)  # larger than the whole budget: disk only
    cache.put(big_digest, big)
    assert not cache.in_memory(big_digest) and cache.get_disk(big_digest) == big


def test_entry_evicted_between_lookup_and_open_is_a_plain_miss(tmp_path: Path) -> None:
    cache = ChunkCache(tmp_path, memory_bytes=0)
    digest, data = chunk(1)
    cache.put(digest, data)
    os.unlink(cache.path_for(digest))  # another process evicted it
    assert cache.get_disk(digest) is None
    assert cache.read_range(digest, 0, 10) is None
    assert cache.stats().read_errors == 0


def open_fds() -> set[str]:
    """What this process's descriptors point at (the directory listing's own fd is gone by then)."""
    found = set()
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):
            found.add(os.readlink(f"/proc/self/fd/{name}"))
    return found


def test_a_page_cached_range_of_an_entry_held_open_is_read_without_blocking(tmp_path: Path) -> None:
    cache = ChunkCache(tmp_path, memory_bytes=0)
    digest, data = chunk(1, size=64 * 1024)
    cache.put(digest, data)
    assert cache.read_range_nowait(digest, 0, 10) is None  # not open yet: the caller takes a thread
    assert cache.read_range(digest, 0, 10) == data[:10]  # a worker thread's read keeps it open
    path = cache.path_for(digest)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.read(fd, len(data))  # now surely in the page cache
    finally:
        os.close(fd)
    assert cache.read_range_nowait(digest, 100, 200) == data[100:200]
    assert cache.read_range_nowait(digest, len(data) - 5, len(data) + 50) == data[-5:]  # cut short
    assert cache.read_range_nowait(digest, 0, 10, size=len(data) + 1) is None  # wrong size: read_range judges
    assert cache.stats().disk_hits == 3

    fd = os.open(path, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
    nowait = cache.read_range_nowait(digest, 0, len(data))
    assert nowait is None or nowait == data  # evicted pages: None (EAGAIN), never wrong bytes

    os.unlink(path)  # removed by another process (evicted, or found corrupt by `cache verify`)
    assert cache.read_range_nowait(digest, 0, 10) is None
    assert str(path) + " (deleted)" not in open_fds()  # its space is freed, not held by us
    assert cache.read_range(digest, 0, 10) is None  # and the slow path sees the miss


def test_descriptors_held_open_are_bounded_and_released(tmp_path: Path) -> None:
    cache = ChunkCache(tmp_path, max_size=10 * OPEN_ENTRIES * 1000, memory_bytes=0)
    chunks = [chunk(i) for i in range(OPEN_ENTRIES + 8)]
    before = open_fds()
    for digest, data in chunks:
        cache.put(digest, data)
        assert cache.read_range(digest, 0, 10) == data[:10]  # a disk hit keeps the entry open
    held = open_fds() - before
    assert len(held) == OPEN_ENTRIES
    assert held == {str(cache.path_for(d)) for d, _ in chunks[-OPEN_ENTRIES:]}

    # An entry being read when it is retired is closed only after that read.
    oldest_open = chunks[-OPEN_ENTRIES][0]
    borrowed = cache.descriptors.borrow(oldest_open)
    assert borrowed is not None
    cache.close()
    assert open_fds() - before == {str(cache.path_for(oldest_open))}
    cache.descriptors.give_back(borrowed)
    assert open_fds() - before == set()
    for digest, data in chunks[:3]:
        assert cache.read_range(digest, 0, 10) == data[:10]

    cache.prune(0)  # this process's eviction closes what it removes
    assert open_fds() - before == set()
    cache.put(*chunks[1])
    cache.read_range(chunks[1][0], 0, 10)
    cache.close()
    assert open_fds() - before == set()
    assert cache.read_range(chunks[1][0], 0, 10) == chunks[1][1][:10]  # still usable after close
    cache.close()


def test_torn_entry_is_not_served_and_is_rewritten_by_the_next_put(tmp_path: Path, expect_log: ExpectLog) -> None:
    cache = ChunkCache(tmp_path, memory_bytes=0)
    digest, data = chunk(1)
    path = cache.path_for(digest)
    path.parent.mkdir(parents=True)
    path.write_bytes(data[:300])  # what a power loss can leave after the rename
    with expect_log(r"is 300 bytes, expected 1000", count=2):
        assert cache.get_disk(digest, size=len(data)) is None
        assert cache.read_range(digest, 0, 10, size=len(data)) is None
    assert cache.put(digest, data)
    assert cache.get_disk(digest, size=len(data)) == data


def test_verify_detects_and_removes_a_corrupted_entry(tmp_path: Path, expect_log: ExpectLog) -> None:
    cache = ChunkCache(tmp_path)
    chunks = [chunk(i) for i in range(3)]
    for digest, data in chunks:
        cache.put(digest, data)
    bad_digest, bad_data = chunks[1]
    path = cache.path_for(bad_digest)
    path.write_bytes(bytes([bad_data[0] ^ 1]) + bad_data[1:])  # one flipped bit, same length

    with expect_log(r"is corrupt", count=1):
        report = cache.verify(remove_bad=False)
    assert report.bad == (bad_digest,) and report.removed == 0 and path.exists()

    with expect_log(r"is corrupt; removing it", count=1):
        report = cache.verify()
    assert (report.checked, report.bytes_checked, report.bad, report.removed) == (3, 3000, (bad_digest,), 1)
    assert not path.exists()
    assert cache.get_memory(bad_digest) is None  # dropped from memory too
    assert cache.get_disk(bad_digest) is None
    assert cache.get_memory(chunks[0][0]) == chunks[0][1]
    assert cache.verify().bad == ()


def test_disk_full_degrades_to_uncached_with_one_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, expect_log: ExpectLog
) -> None:
    cache = ChunkCache(tmp_path)
    real_write_all = directio.write_all

    def disk_full(fd: int, data: bytes) -> None:
        os.write(fd, data[:10])  # a partial write, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(directio, "write_all", disk_full)
    chunks = [chunk(i) for i in range(5)]
    with expect_log(r"No space left on device.*until space is freed", count=1):
        for digest, data in chunks:
            assert cache.put(digest, data) is False
            assert cache.get_memory(digest) == data  # the reader is still served (from memory)
    stats = cache.stats()
    assert (stats.entries, stats.temp_files, stats.put_failures, stats.degraded) == (0, 0, 5, ("ENOSPC",))

    monkeypatch.setattr(directio, "write_all", real_write_all)  # space was freed
    assert cache.put(*chunks[0]) is True
    assert cache.stats().degraded == ()
    monkeypatch.setattr(directio, "write_all", disk_full)
    with expect_log(r"No space left on device", count=1):  # a new episode warns again
        assert cache.put(*chunks[1]) is False


def test_read_only_cache_directory_degrades_with_one_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, expect_log: ExpectLog
) -> None:
    def read_only(path: Path) -> int:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr(disk_store, "create_exclusive", read_only)
    cache = ChunkCache(tmp_path)
    with expect_log(r"Read-only file system", count=1):
        for i in range(3):
            assert cache.put(*chunk(i)) is False
    assert cache.stats().put_failures == 3


def test_unusable_cache_root_degrades_with_one_warning(tmp_path: Path, expect_log: ExpectLog) -> None:
    # A real failure rather than a mock (permission bits do not stop root): the root's parent
    # is a regular file, so neither creating the directory nor writing into it can work.
    (tmp_path / "file").write_text("")
    with expect_log(r"cannot create .*Not a directory", count=1):
        cache = ChunkCache(tmp_path / "file" / "cache", max_size=10_000)
        digest, data = chunk(1)
        assert cache.put(digest, data) is False
        assert cache.get_memory(digest) == data
        assert cache.stats().entries == 0
    with pytest.raises(CacheError, match="cannot prune"):
        cache.prune()


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert default_cache_dir() == Path("/var/cache/ocifs")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "ocifs"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")  # the XDG spec says to ignore it
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "ocifs"


# A worker process: waits for the go signal so that all workers really overlap, then puts
# (and reads back) shared and private chunks in its own order, several rounds.
_WORKER = r"""
import random, sys, time
from pathlib import Path
from ocifs.cache.store import ChunkCache
from ocifs.digest import Digest

root, worker, max_size, shared, private, rounds = sys.argv[1:7]
worker, shared, private, rounds = int(worker), int(shared), int(private), int(rounds)
cache = ChunkCache(root, max_size=None if max_size == "none" else int(max_size), memory_bytes=0)
seeds = list(range(shared)) + [1000 * (worker + 1) + i for i in range(private)]
random.Random(worker).shuffle(seeds)
Path(root, f"ready-{worker}").touch()
while not Path(root, "go").exists():
    time.sleep(0.005)
for _ in range(rounds):
    for seed in seeds:
        data = random.Random(seed).randbytes(1024 * (1 + seed % 48))
        digest = Digest.of_bytes(data)
        assert cache.put(digest, data), seed
        got = cache.get_disk(digest)
        assert got is None or got == data, seed  # None: evicted by another process meanwhile
"""

SHARED, PRIVATE, WORKERS = 12, 12, 4


def run_workers(root: Path, max_size: int | None, rounds: int) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [str(max_size or "none"), str(SHARED), str(PRIVATE), str(rounds)]
    procs = [
        subprocess.Popen([sys.executable, "-c", _WORKER, str(root), str(w), *args], env=env) for w in range(WORKERS)
    ]
    try:
        deadline = time.monotonic() + 60
        while not all((root / f"ready-{w}").exists() for w in range(WORKERS)):
            assert time.monotonic() < deadline, "workers did not start"
            assert all(p.poll() is None for p in procs), "a worker died before starting"
            time.sleep(0.01)
        (root / "go").touch()
        codes = [p.wait(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert codes == [0] * WORKERS


def test_concurrent_processes_fill_one_cache_consistently(tmp_path: Path) -> None:
    run_workers(tmp_path, None, rounds=3)
    cache = ChunkCache(tmp_path)
    stats = cache.stats()
    assert stats.entries == SHARED + WORKERS * PRIVATE
    assert stats.temp_files == 0
    report = cache.verify()
    assert report.checked == stats.entries and report.bad == ()


def test_concurrent_processes_evicting_leave_a_consistent_bounded_cache(tmp_path: Path) -> None:
    max_size = 400 * 1024  # well under the ~1.5 MiB the workers write together
    run_workers(tmp_path, max_size, rounds=4)
    cache = ChunkCache(tmp_path, max_size=max_size)  # opening rescans and enforces the bound
    stats = cache.stats()
    assert 0 < stats.bytes <= max_size
    assert stats.temp_files == 0
    assert cache.verify().bad == ()


#: A child process that claims ``b"claimed"`` in the cache at argv[1], prints the claim, then
#: holds it for argv[2] seconds (never releasing it, as after kill -9).
CLAIM_AND_HOLD = (
    "import sys, time; from pathlib import Path; from ocifs.cache.store import ChunkCache; "
    "from ocifs.digest import Digest; "
    "print(ChunkCache(Path(sys.argv[1])).try_claim(Digest.of_bytes(b'claimed')), flush=True); "
    "time.sleep(float(sys.argv[2]))"
)


def test_a_claim_of_a_dead_process_is_taken_over_at_once_a_live_ones_is_respected(tmp_path: Path) -> None:
    digest = Digest.of_bytes(b"claimed")
    cache = ChunkCache(tmp_path / "cache")
    # Another process claims the chunk and exits without releasing it.
    holder = subprocess.run([sys.executable, "-c", CLAIM_AND_HOLD, str(tmp_path / "cache"), "0"],
                            capture_output=True, text=True, check=True, timeout=30)  # fmt: skip
    claim = Path(holder.stdout.strip())
    assert claim.is_file()  # left behind, fresh (far younger than the stale age)
    taken = cache.try_claim(digest)
    assert taken == claim  # its owner is gone: taken over without waiting
    # A claim held by a live process (here: a sleeping child that wrote its own) is respected.
    cache.release_claim(taken)
    sleeper = subprocess.Popen([sys.executable, "-c", CLAIM_AND_HOLD, str(tmp_path / "cache"), "60"],
                               stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert sleeper.stdout is not None and Path(sleeper.stdout.readline().strip()) == claim
        assert cache.try_claim(digest) is None
    finally:
        sleeper.kill()
        sleeper.wait()
    assert cache.try_claim(digest) == claim  # killed and reaped: free again
    # A claim from another pid namespace or boot says nothing about our processes: age decides.
    cache.release_claim(claim)
    claim.write_bytes(b"1 4026531836 00000000-0000-0000-0000-000000000000\n")
    assert cache.try_claim(digest) is None


def test_a_small_entry_fitting_on_a_full_disk_does_not_count_as_recovery(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, expect_log: ExpectLog
) -> None:
    """Nearly full: small entries fit, chunks do not. That is one episode, one warning (not a
    "writable again" and a new warning each time a small write slips in)."""
    cache = ChunkCache(tmp_path)
    real_write_all = directio.write_all

    def full_for_large(fd: int, data: bytes) -> None:
        if len(data) > 1000:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_write_all(fd, data)

    monkeypatch.setattr(directio, "write_all", full_for_large)
    large = [(Digest.of_bytes(d), d) for d in (random.Random(i).randbytes(5000) for i in range(3))]
    small = [(Digest.of_bytes(d), d) for d in (random.Random(10 + i).randbytes(100) for i in range(3))]
    with expect_log(r"No space left on device", count=1):
        for (big_digest, big), (little_digest, little) in zip(large, small, strict=True):
            assert cache.put(big_digest, big) is False
            assert cache.put(little_digest, little) is True
    assert cache.stats().degraded == ("ENOSPC",)
    monkeypatch.setattr(directio, "write_all", real_write_all)  # space freed: a chunk fits
    assert cache.put(*large[0]) is True
    assert cache.stats().degraded == ()


def test_a_write_that_began_before_a_failure_does_not_end_the_episode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, expect_log: ExpectLog
) -> None:
    """Two writers on a nearly full disk: A has claimed its space when B fails for want of it;
    A then completes. That proves nothing about free space: no "writable again", and the next
    failure is the same episode (one warning), as seen with write-behind on a 2 MiB tmpfs."""
    cache = ChunkCache(tmp_path)
    real_write_all = directio.write_all
    a, b, c = (chunk(i) for i in range(3))

    def b_fails_while_a_writes(fd: int, data: bytes) -> None:
        if data == a[1]:
            monkeypatch.setattr(directio, "write_all", disk_full)
            assert cache.put(*b) is False  # B, meanwhile, finds the disk full
        real_write_all(fd, data)

    def disk_full(fd: int, data: bytes) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(directio, "write_all", b_fails_while_a_writes)
    with expect_log(r"No space left on device", count=1):
        assert cache.put(*a) is True  # A completes after B's failure
        assert cache.put(*c) is False  # still full: the same episode, no second warning
    assert cache.stats().degraded == ("ENOSPC",)


@pytest.mark.parametrize("size", [1024 * 1024, 3 * 1024 * 1024 + 4095, 5 * 1024 * 1024 + 1])
def test_large_entries_are_written_exactly_with_or_without_direct_io(tmp_path: Path, size: int) -> None:
    """Entries of 1 MiB and more bypass the page cache (O_DIRECT, aligned part, then the tail
    written normally); where a filesystem refuses it the cache falls back for good."""
    data = random.Random(size).randbytes(size)
    digest = Digest.of_bytes(data)
    for root in (tmp_path / "disk", Path(tempfile.mkdtemp(prefix="ocifs-test-", dir="/dev/shm"))):
        try:
            cache = ChunkCache(root / "cache", memory_bytes=0)
            assert cache.put(digest, data)
            assert cache.path_for(digest).read_bytes() == data
            assert cache.get_disk(digest, size=size) == data  # read back whole, also with O_DIRECT
            assert stat.S_IMODE(cache.path_for(digest).stat().st_mode) == 0o600
        finally:
            if str(root).startswith("/dev/shm/"):
                shutil.rmtree(root)


def test_a_filesystem_refusing_direct_io_falls_back_to_normal_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = ChunkCache(tmp_path / "cache", memory_bytes=0)
    real_fcntl = directio.fcntl.fcntl

    def refuse_direct(fd: int, cmd: int, arg: int = 0) -> int:
        if cmd == directio.fcntl.F_SETFL and arg & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_fcntl(fd, cmd, arg)

    monkeypatch.setattr(directio.fcntl, "fcntl", refuse_direct)
    blobs = [random.Random(i).randbytes(2 * 1024 * 1024 + i) for i in range(2)]
    for data in blobs:
        assert cache.put(Digest.of_bytes(data), data)
        assert cache.path_for(Digest.of_bytes(data)).read_bytes() == data
        assert cache.get_disk(Digest.of_bytes(data), size=len(data)) == data
    assert cache.direct_io.writes is False  # tried once, then not again
    assert cache.direct_io.reads is False


def test_a_filesystem_accepting_the_flag_but_refusing_direct_io_falls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Some network and FUSE filesystems take O_DIRECT and then fail the I/O with EINVAL:
    the entry is rewritten (or read) normally and direct I/O is not tried again."""
    cache = ChunkCache(tmp_path / "cache", memory_bytes=0)
    real_write, real_preadv = os.write, os.preadv

    def direct(fd: int) -> bool:
        return bool(directio.fcntl.fcntl(fd, directio.fcntl.F_GETFL) & os.O_DIRECT)

    def refusing_write(fd: int, data: Any) -> int:
        if direct(fd):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)

    def refusing_preadv(fd: int, buffers: Any, offset: int, *flags: int) -> int:
        if direct(fd):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_preadv(fd, buffers, offset, *flags)

    data = random.Random(5).randbytes(3 * 1024 * 1024 + 7)
    digest = Digest.of_bytes(data)
    monkeypatch.setattr(directio.os, "write", refusing_write)
    assert cache.put(digest, data)
    assert cache.path_for(digest).read_bytes() == data and cache.direct_io.writes is False
    monkeypatch.setattr(directio.os, "preadv", refusing_preadv)
    assert cache.get_disk(digest, size=len(data)) == data and cache.direct_io.reads is False


def test_discard_removes_an_entry_from_disk_memory_and_the_descriptor_table(tmp_path: Path) -> None:
    cache = ChunkCache(tmp_path)
    digest, data = chunk(1)
    cache.put(digest, data)
    assert cache.read_range(digest, 0, 10) == data[:10]  # from memory: nothing held open yet
    cache.memory.discard(digest)
    assert cache.read_range(digest, 0, 10) == data[:10]  # from disk: now held open
    cache.put(digest, data)  # and in memory again
    before = open_fds()
    assert str(cache.path_for(digest)) in before
    assert cache.discard(digest) is True
    assert not cache.contains(digest) and cache.get_disk(digest) is None
    assert (
        str(cache.path_for(digest)) not in open_fds() and str(cache.path_for(digest)) + " (deleted)" not in open_fds()
    )
    assert cache.discard(digest) is False


def test_discard_in_a_cache_that_cannot_be_modified_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = ChunkCache(tmp_path)
    digest, data = chunk(1)
    cache.put(digest, data)

    def read_only(path: str | Path) -> bool:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr(disk_store, "unlink_quietly", read_only)
    with pytest.raises(CacheError, match=r"cannot remove cache entry .*Read-only"):
        cache.discard(digest)


def test_counters_count_one_miss_per_chunk_lookup_and_need_no_scan(tmp_path: Path) -> None:
    """A range probe that misses is followed by a whole-chunk lookup: one miss, not two."""
    cache = ChunkCache(tmp_path, memory_bytes=0)
    digest, data = chunk(1)
    assert cache.read_range(digest, 0, 10) is None
    assert cache.get_disk(digest) is None
    cache.put(digest, data)
    assert cache.read_range(digest, 0, 10) == data[:10]
    counters = cache.counters()
    assert (counters.misses, counters.disk_hits, counters.puts, counters.memory_hits) == (1, 1, 1, 0)
    stats = cache.stats()
    assert (stats.misses, stats.disk_hits, stats.puts) == (1, 1, 1)
    shutil.rmtree(tmp_path / "v1")  # counters do not read the disk
    assert cache.counters() == counters
