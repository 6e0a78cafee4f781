"""Real mounts (``ocifs mount`` in a subprocess, read through the kernel) through the fault proxy.

What a user would notice: a chunk whose bytes arrive corrupted is never served — the read gets
EIO, the cache keeps no bad chunk, and the read works once good bytes come; resets and 5xx
bursts only cost a retry; a stalled chunk request is abandoned and the read completes; while
one file's chunk hangs, reads of other files go on; and after ``kill -9`` of the daemon the
mount goes away by itself (``auto_unmount``), the cache is intact and a new mount works.

Each mount gets its own ``$NOTIFY_SOCKET`` and the test waits for ``READY=1``; every mount is
detached and its daemon stopped by the ``mounts`` fixture, even when a test fails. Stall tests
shorten the wait with ``--read-timeout``.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import re
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
from support.cachefiles import assert_cache_consistent, cache_entries
from support.fault_proxy import Fault, FaultProxy, Flip, Reset, Slow, Stall, Status, Truncate, too_many_requests
from support.mounts import Mounter, mounted, mounter
from support.registry import RegistryServer

from ocifs.commands import push
from ocifs.reference import parse_reference
from ocifs.registry.client import RegistryClient

CHUNK = 256 * 1024
REPO = "faults/mount"

pytestmark = pytest.mark.timeout(60)


# -- the artifact ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Artifact:
    repo: str
    contents: dict[str, bytes]
    chunks: dict[str, list[str]]  # per chunked file, "sha256:..." of its chunks in order

    def via(self, proxy: FaultProxy) -> str:
        return f"{proxy.host}/{self.repo}:v1"

    def chunk_path(self, name: str, *numbers: int) -> str:
        """A path regex for GETs of the given chunks of ``name`` (all of them if none given)."""
        chosen = [self.chunks[name][n] for n in numbers] if numbers else self.chunks[name]
        return r"/blobs/(" + "|".join(re.escape(d) for d in chosen) + r")$"

    def piece(self, name: str, n: int) -> bytes:
        return self.contents[name][n * CHUNK : (n + 1) * CHUNK]


@pytest.fixture(scope="module")
def artifact(shared_registry: RegistryServer, tmp_path_factory: pytest.TempPathFactory) -> Artifact:
    """a.bin (8 chunks of 256 KiB) and b.bin (4 chunks), pushed once for the module."""
    rng = random.Random(REPO)
    contents = {"a.bin": rng.randbytes(8 * CHUNK - 100), "b.bin": rng.randbytes(4 * CHUNK)}
    source = tmp_path_factory.mktemp("mount-src")
    for name, data in contents.items():
        (source / name).write_bytes(data)

    async def store() -> None:
        ref = parse_reference(f"{shared_registry.host}/{REPO}:v1")
        async with RegistryClient(ref.registry) as client:
            options = push.PushOptions(chunk_size=CHUNK, jobs=4)
            await push.push(client, ref, push.collect_sources([str(source)]), options)

    trio.run(store)
    chunks = {
        name: [f"sha256:{hashlib.sha256(data[o : o + CHUNK]).hexdigest()}" for o in range(0, len(data), CHUNK)]
        for name, data in contents.items()
    }
    return Artifact(REPO, contents, chunks)


@pytest.fixture
def proxy(shared_registry: RegistryServer) -> Iterator[FaultProxy]:
    with FaultProxy(shared_registry.host) as p:
        yield p
    assert p.errors == []


# -- mounts ------------------------------------------------------------------------------------


@pytest.fixture
def mounts(tmp_path: Path, proxy: FaultProxy) -> Iterator[Mounter]:
    """Mounts, all unmounted before the proxy closes (a read-ahead still in flight would
    otherwise retry against a closed port and delay the daemon's exit)."""
    with mounter(tmp_path) as started:
        yield started


# -- checks ------------------------------------------------------------------------------------


def read_range(path: Path, offset: int, size: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, size, offset)
    finally:
        os.close(fd)


def read_error(path: Path, offset: int, size: int) -> int | None:
    """The errno a read fails with, or None if it succeeds (its bytes are then discarded)."""
    try:
        read_range(path, offset, size)
    except OSError as exc:
        return exc.errno
    return None


# -- corrupt bytes -----------------------------------------------------------------------------


def test_flipped_bits_are_never_served_eio_instead_and_nothing_bad_cached(
    mounts: Mounter, artifact: Artifact, proxy: FaultProxy
) -> None:
    # --retries 3: the fetcher downloads a chunk up to 3 times when its bytes do not match.
    mount = mounts(artifact.via(proxy), "--retries", "3", "--prefetch", "off")
    a = mount.path / "a.bin"

    # A flip on one download of chunk 2: retried, the reader gets the right bytes.
    once = proxy.add(Flip(offset=1000), method="GET", path=artifact.chunk_path("a.bin", 2), times=1)
    assert read_range(a, 2 * CHUNK, CHUNK) == artifact.piece("a.bin", 2)
    assert once.fired == 1 and proxy.count("GET", artifact.chunk_path("a.bin", 2)) == 2

    # A flip on every download of chunk 5: EIO, as often as it is asked for; never bytes.
    bad = artifact.chunks["a.bin"][5]
    always = proxy.add(Flip(offset=CHUNK - 1, mask=0x80), method="GET", path=artifact.chunk_path("a.bin", 5),
                       times=None)  # fmt: skip
    for _ in range(2):
        assert read_error(a, 5 * CHUNK + 10, 4096) == errno.EIO
    assert always.fired == proxy.count("GET", artifact.chunk_path("a.bin", 5)) >= 6  # 3 per read
    # The rest of the file, before and after the bad chunk, reads fine meanwhile.
    assert read_range(a, 4 * CHUNK, CHUNK) == artifact.piece("a.bin", 4)
    assert read_range(a, 6 * CHUNK, CHUNK) == artifact.piece("a.bin", 6)
    mount.wait_for_cache_writes()
    entries = assert_cache_consistent(mount.cache)
    assert bad not in entries and artifact.chunks["a.bin"][2] in entries
    assert mount.stats()["fetch"]["integrity_failures"] >= 7

    # The registry serves good bytes again: the same read now succeeds.
    proxy.clear()
    assert read_range(a, 5 * CHUNK, CHUNK) == artifact.piece("a.bin", 5)
    mount.wait_for_cache_writes()
    assert bad in assert_cache_consistent(mount.cache)
    assert mount.alive()
    log = mount.log_text()
    # Chunk 2's recovered flip is one WARNING; chunk 5's reads are EIO lines naming the cause.
    assert "did not match its digest 1 time(s) before a good one" in log
    assert "did not match the digest in 3 attempts" in log and "failed (EIO)" in log and "Traceback" not in log


# -- transient faults: reads succeed -----------------------------------------------------------

TRANSIENT: dict[str, Fault] = {
    "reset-at-once": Reset(after=None),
    "reset-mid-body": Reset(after=100_000),
    "truncated": Truncate(after=50_000),
    "503": Status(503),
    "502": Status(502),
    "429": too_many_requests(0.2),
}


@pytest.mark.parametrize("name", list(TRANSIENT))
def test_transient_faults_on_chunk_gets_are_retried_and_reads_succeed(
    mounts: Mounter, artifact: Artifact, proxy: FaultProxy, name: str
) -> None:
    mount = mounts(artifact.via(proxy), "--retries", "3")
    # Two faults on each of the first GETs of a.bin's chunks (read-ahead fetches several at once).
    rule = proxy.add(TRANSIENT[name], method="GET", path=artifact.chunk_path("a.bin"), times=4)
    started = time.monotonic()
    assert (mount.path / "a.bin").read_bytes() == artifact.contents["a.bin"]
    assert time.monotonic() - started < 15
    assert rule.fired == 4
    stats = mount.stats()["fetch"]
    assert stats["errors"] == 0 and stats["integrity_failures"] == 0
    assert "failed (EIO)" not in mount.log_text()
    assert_cache_consistent(mount.cache)


# -- stalls ------------------------------------------------------------------------------------


def test_a_stalled_chunk_request_is_abandoned_and_the_read_completes(
    mounts: Mounter, artifact: Artifact, proxy: FaultProxy
) -> None:
    mount = mounts(artifact.via(proxy), "--prefetch", "off", read_timeout=1.0)
    # Chunk 3's first GET stops after 50 KB and would hang forever.
    proxy.add(Stall(after=50_000), method="GET", path=artifact.chunk_path("a.bin", 3), times=1)
    started = time.monotonic()
    assert read_range(mount.path / "a.bin", 3 * CHUNK, CHUNK) == artifact.piece("a.bin", 3)
    elapsed = time.monotonic() - started
    assert 0.9 < elapsed < 10, elapsed  # one read timeout, then a retry
    stalled, retried = proxy.records("GET", artifact.chunk_path("a.bin", 3))
    assert stalled.response_bytes == 50_000 and retried.status == 200


def test_other_files_are_served_while_one_chunk_request_hangs(
    mounts: Mounter, artifact: Artifact, proxy: FaultProxy
) -> None:
    mount = mounts(artifact.via(proxy), "--prefetch", "off", read_timeout=5.0)
    proxy.add(Stall(after=None), method="GET", path=artifact.chunk_path("a.bin", 1), times=1)
    outcome: dict[str, Any] = {}

    def hung_reader() -> None:
        try:
            outcome["data"] = read_range(mount.path / "a.bin", CHUNK, CHUNK)
        except OSError as exc:
            outcome["error"] = exc
        outcome["at"] = time.monotonic()

    thread = threading.Thread(target=hung_reader)
    started = time.monotonic()
    thread.start()
    deadline = time.monotonic() + 5
    while proxy.count("GET", artifact.chunk_path("a.bin", 1)) == 0:
        assert time.monotonic() < deadline, "the read never reached the registry"
        time.sleep(0.01)

    # While that request hangs: another file, and other chunks of the same file, read at once.
    assert (mount.path / "b.bin").read_bytes() == artifact.contents["b.bin"]
    assert read_range(mount.path / "a.bin", 6 * CHUNK, CHUNK) == artifact.piece("a.bin", 6)
    assert mount.stats()["fetch"]["in_flight"] >= 1  # the hung request is still there
    served_by = time.monotonic()
    assert thread.is_alive(), "the stalled read finished before the others were tried"

    thread.join(timeout=20)
    assert not thread.is_alive()
    assert outcome.get("data") == artifact.piece("a.bin", 1), outcome.get("error")
    assert served_by < outcome["at"] and outcome["at"] - started > 4.5  # abandoned after 5 s


# -- kill -9 -----------------------------------------------------------------------------------


def test_a_daemon_killed_mid_read_is_unmounted_leaves_a_good_cache_and_a_new_mount_works(
    mounts: Mounter, artifact: Artifact, proxy: FaultProxy, tmp_path: Path
) -> None:
    cache = tmp_path / "kill-cache"
    first = mounts(artifact.via(proxy), cache=cache)
    # The last chunk never arrives, so the read is still waiting when the kill lands; slow
    # bodies keep other downloads, hashing and cache writes in flight too.
    proxy.add(Stall(after=None), method="GET", path=artifact.chunk_path("a.bin", 7), times=None)
    proxy.add(Slow(rate=1024 * 1024), method="GET", path=r"/blobs/", times=None)
    errors: list[int | None] = []

    def reader() -> None:
        try:
            (first.path / "a.bin").read_bytes()
        except OSError as exc:
            errors.append(exc.errno)
        else:
            errors.append(None)

    thread = threading.Thread(target=reader)
    thread.start()
    deadline = time.monotonic() + 10
    while len(cache_entries(cache)) < 3:  # the index and a chunk or two
        assert time.monotonic() < deadline and thread.is_alive(), "the read made no progress"
        time.sleep(0.01)
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(timeout=10)
    thread.join(timeout=10)
    # The reader is not left hanging: its read fails (the kernel aborts the connection).
    assert not thread.is_alive()
    assert errors in ([errno.ECONNABORTED], [errno.ENOTCONN]), errors

    deadline = time.monotonic() + 5  # auto_unmount: libfuse's watcher removes the mount
    while mounted(first.path) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not mounted(first.path)
    assert os.listdir(first.path) == []  # the plain directory underneath again

    cached = assert_cache_consistent(cache)
    proxy.clear()
    second = mounts(artifact.via(proxy), cache=cache)
    assert (second.path / "a.bin").read_bytes() == artifact.contents["a.bin"]
    second.wait_for_cache_writes()
    wanted = set(artifact.chunks["a.bin"])
    assert wanted <= set(assert_cache_consistent(cache))
    # The new mount downloaded only the chunks the killed one had not cached (the chunk index,
    # fetched before any chunk, was cached).
    assert second.stats()["fetch"]["downloads"] == len(wanted - set(cached))


@pytest.mark.parametrize("fifth", range(5))
def test_a_daemon_killed_at_a_random_point_of_a_busy_cold_read_leaves_a_good_cache(
    mounts: Mounter, artifact: Artifact, proxy: FaultProxy, tmp_path: Path, fifth: int
) -> None:
    """``kill -9`` while two readers, read-ahead, downloads, hashing and write-behind cache
    writes are all in flight (or already done): whatever the moment, every cache entry still
    hashes to its name, and a new mount on the same cache reads everything exact, downloading
    exactly the blobs the dead daemon had not cached."""
    cache = tmp_path / "kill-cache"
    first = mounts(artifact.via(proxy), cache=cache)
    # The whole artifact takes ~0.7 s at this rate: one kill at a random moment of each fifth
    # of 0-0.9 s lands in every phase, from the chunk-index downloads to after the last write.
    proxy.add(Slow(rate=1024 * 1024), method="GET", path=r"/blobs/", times=None)
    delay = (fifth + random.Random(fifth).random()) * 0.9 / 5
    outcomes: dict[str, int | None] = {}

    def reader(name: str) -> None:
        try:
            ok = (first.path / name).read_bytes() == artifact.contents[name]
            outcomes[name] = None if ok else -1
        except OSError as exc:
            outcomes[name] = exc.errno

    threads = [threading.Thread(target=reader, args=(name,)) for name in artifact.contents]
    for thread in threads:
        thread.start()
    time.sleep(delay)
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(timeout=10)
    for thread in threads:
        thread.join(timeout=10)
        assert not thread.is_alive(), "a reader was left hanging on the dead mount"
    # Each reader got the exact file (it finished first) or a connection error, never bad bytes.
    assert set(outcomes.values()) <= {None, errno.ECONNABORTED, errno.ENOTCONN}, outcomes

    # auto_unmount: libfuse's watcher removes the mount within ~0.5 s on an idle host; on a loaded
    # 2-core host (a clean-clone CI run beside other work) it once took over 5 s.
    deadline = time.monotonic() + 20
    while mounted(first.path) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not mounted(first.path)

    before = set(assert_cache_consistent(cache))
    proxy.clear()
    second = mounts(artifact.via(proxy), cache=cache)
    for name, data in artifact.contents.items():
        assert (second.path / name).read_bytes() == data
    second.wait_for_cache_writes()
    after = set(assert_cache_consistent(cache))
    assert {d for chunks in artifact.chunks.values() for d in chunks} <= after
    # Nothing the dead daemon had cached was downloaded again, and nothing else twice.
    assert before <= after
    assert second.stats()["fetch"]["downloads"] == len(after - before)
