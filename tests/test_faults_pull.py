"""``ocifs pull`` (the CLI, in a subprocess) through the fault proxy.

What a user would notice: a burst of network faults on chunk GETs (resets, stalls, 5xx, 429,
truncated or corrupted bodies) costs a retry, not the pull: the files come out byte-identical
and the cache holds only verified chunks; a fault that does not go away ends the pull with one
clear line, exit 1 and no file under its final name; the next run resumes from the cache and
downloads only what is missing; a stalled request is abandoned and retried instead of hanging
the pull at 99 %; and ``kill -9`` at any moment leaves a cache whose every visible entry hashes
to its name, from which a re-run completes.

Stall tests shorten the wait with ``--read-timeout``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
from support.cachefiles import assert_cache_consistent
from support.fault_proxy import (
    Fault,
    FaultProxy,
    Flip,
    Record,
    Reset,
    Slow,
    Stall,
    Status,
    Truncate,
    WrongLength,
    too_many_requests,
)
from support.mounts import mounter
from support.registry import RegistryServer

from ocifs.commands import push
from ocifs.digest import Digest
from ocifs.format.media import MEDIA_TYPE_CHUNK_INDEX
from ocifs.reference import parse_reference
from ocifs.registry.client import RegistryClient

CHUNK = 64 * 1024
COUNT = 12  # chunks of model.bin
REPO = "faults/pull"
TEMP_PREFIX = ".ocifs-pull-"  # pull's temp files in the target directory
CACHE_TEMP_PREFIX = ".tmp-"  # the chunk cache's temp files

pytestmark = pytest.mark.timeout(60)


# -- the artifact ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Artifact:
    ref: str  # on the registry itself; pulls go through a proxy with the same repository
    repo: str
    contents: dict[str, bytes]
    chunks: list[str]  # "sha256:..." of model.bin's chunks, in file order

    def via(self, proxy: FaultProxy) -> str:
        return f"{proxy.host}/{self.repo}:v1"

    def chunk_path(self, *numbers: int) -> str:
        """A path regex matching GETs of the given chunks (all of them when none is given)."""
        chosen = [self.chunks[n] for n in numbers] if numbers else self.chunks
        return r"/blobs/(" + "|".join(re.escape(d) for d in chosen) + r")$"


def make_artifact(registry: RegistryServer, directory: Path, repo: str, count: int = COUNT) -> Artifact:
    rng = random.Random(repo)
    contents = {"model.bin": rng.randbytes(count * CHUNK - 17), "README": rng.randbytes(300)}
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in contents.items():
        (directory / name).write_bytes(data)
    ref = f"{registry.host}/{repo}:v1"

    async def store() -> None:
        parsed = parse_reference(ref)
        async with RegistryClient(parsed.registry) as client:
            await push.push(
                client, parsed, push.collect_sources([str(directory)]), push.PushOptions(chunk_size=CHUNK, jobs=4)
            )

    trio.run(store)
    model = contents["model.bin"]
    chunks = [f"sha256:{hashlib.sha256(model[o : o + CHUNK]).hexdigest()}" for o in range(0, len(model), CHUNK)]
    assert len(chunks) == count
    return Artifact(ref, repo, contents, chunks)


@pytest.fixture(scope="module")
def artifact(shared_registry: RegistryServer, tmp_path_factory: pytest.TempPathFactory) -> Artifact:
    """model.bin (12 chunks of 64 KiB) and README (one plain layer), pushed once per module."""
    return make_artifact(shared_registry, tmp_path_factory.mktemp("pull-src"), REPO)


@pytest.fixture
def proxy(shared_registry: RegistryServer) -> Iterator[FaultProxy]:
    with FaultProxy(shared_registry.host) as p:
        yield p
    assert p.errors == []


# -- helpers -----------------------------------------------------------------------------------


def pull_cmd(ref: str, out: Path, cache: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "ocifs", "pull", ref, "-o", str(out), "--cache-dir", str(cache), "-q",
            "-j", "4", *extra]  # fmt: skip


def run_pull(
    ref: str, out: Path, cache: Path, *extra: str, read_timeout: float | None = None, timeout: float = 50
) -> subprocess.CompletedProcess[str]:
    if read_timeout is not None:
        extra = (*extra, "--read-timeout", str(read_timeout))
    return subprocess.run(
        pull_cmd(ref, out, cache, *extra), capture_output=True, text=True, timeout=timeout, check=False
    )


def tree(directory: Path) -> dict[str, bytes]:
    if not directory.exists():
        return {}
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def final_files(directory: Path) -> dict[str, bytes]:
    """The files under their final names (temp files excluded)."""
    return {k: v for k, v in tree(directory).items() if not k.rsplit("/", 1)[-1].startswith(TEMP_PREFIX)}


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """Exit 1 and one ``ocifs: error:`` line, nothing else, containing every fragment (regexes)."""
    assert result.returncode == 1, (result.returncode, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ocifs: error: "), result.stderr
    for fragment in fragments:
        assert re.search(fragment, lines[-1]), lines[-1]
    return lines[-1]


def blob_gets(proxy: FaultProxy) -> list[str]:
    """The digest of every blob GET the proxy saw, in order."""
    return [r.path.rsplit("/", 1)[-1] for r in proxy.records("GET", r"/blobs/sha256:")]


def stall_timeout(fault: Fault, seconds: float = 0.5) -> float | None:
    """A short read timeout where the fault is a stall; elsewhere the default (60 s), so that a
    registry slowed down by a loaded machine is not mistaken for a stalled one."""
    return seconds if isinstance(fault, Stall) else None


# -- bursts: the pull completes ----------------------------------------------------------------

#: name: (fault, how many chunk GETs it hits). Each hits the first GETs of different chunks
#: (four at a time are in flight), so every chunk needs at most one retry.
BURSTS: dict[str, tuple[Fault, int]] = {
    "reset-at-once": (Reset(after=None), 3),
    "reset-mid-body": (Reset(after=20_000), 3),
    "truncated": (Truncate(after=30_000), 3),
    # Content-Length 1000 over the body, then the connection closes: cut short, so retried. (One
    # 1000 under it is a complete body of the wrong size: a broken artifact, see G2 below.)
    "length-too-long": (WrongLength(+1000), 3),
    "500": (Status(500), 3),
    "503": (Status(503), 3),
    "429": (too_many_requests(0.2), 3),
    "stall-before-head": (Stall(after=None), 3),
    "stall-mid-body": (Stall(after=30_000), 3),
    "flipped-bit": (Flip(offset=4321, mask=0x10), 3),
}


@pytest.mark.parametrize("name", list(BURSTS))
def test_fault_burst_on_chunk_gets_still_pulls_exact_files(
    artifact: Artifact, proxy: FaultProxy, tmp_path: Path, name: str
) -> None:
    fault, times = BURSTS[name]
    rule = proxy.add(fault, method="GET", path=artifact.chunk_path(), times=times)
    started = time.monotonic()
    result = run_pull(artifact.via(proxy), tmp_path / "out", tmp_path / "cache", "--retries", "3",
                      read_timeout=stall_timeout(fault))  # fmt: skip
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert rule.fired == times
    assert tree(tmp_path / "out") == artifact.contents  # byte-identical, no temp file left
    entries = assert_cache_consistent(tmp_path / "cache")
    assert set(artifact.chunks) <= set(entries)
    # Every faulted GET was repeated, nothing more: one GET per blob plus one per fault.
    assert len(blob_gets(proxy)) == COUNT + 2 + times
    if isinstance(fault, Flip):
        # The client passes corrupt bytes on; the fetcher's hash catches them and, the retry
        # having got good bytes, says so once per chunk with how many downloads were corrupt.
        lines = result.stderr.splitlines()
        counts = [re.search(r"did not match its digest (\d+) time\(s\) before a good one", line) for line in lines]
        assert all(counts), result.stderr
        assert sum(int(m.group(1)) for m in counts if m) == times, result.stderr
    else:
        assert result.stderr == ""
    assert elapsed < 20


def test_random_faults_on_every_blob_get_still_pull_exact_files(
    artifact: Artifact, shared_registry: RegistryServer, tmp_path: Path
) -> None:
    with FaultProxy(shared_registry.host, seed=7) as proxy:
        # One blob GET in four fails one way or another; the seed makes it reproducible.
        for fault in (Status(503), Reset(after=None), Reset(after=10_000), Stall(after=5_000), Truncate(after=40_000)):
            proxy.add(fault, method="GET", path=r"/blobs/", times=None, probability=0.05)
        result = run_pull(artifact.via(proxy), tmp_path / "out", tmp_path / "cache", "--retries", "4",
                          read_timeout=0.5)  # fmt: skip
        fired = sum(1 for r in proxy.records() if r.fault)
        assert proxy.errors == []
    assert result.returncode == 0, result.stderr
    assert fired >= 2
    assert tree(tmp_path / "out") == artifact.contents
    assert_cache_consistent(tmp_path / "cache")


# -- persistent faults: one line, exit 1, nothing under a final name ---------------------------

#: name: (fault on every GET of chunk 5, what the error line says). A persistent flip is also
#: preceded by the fetcher's WARNING for each of its 4 corrupt downloads (reported as a gap:
#: the error line says the same once).
PERSISTENT: dict[str, tuple[Fault, str]] = {
    "503": (Status(503), r"UNAVAILABLE.*after 2 attempts"),
    "429": (too_many_requests(0), r"TOOMANYREQUESTS"),
    "reset-mid-body": (Reset(after=20_000), r"connection broken"),
    "stall-mid-body": (Stall(after=20_000), r"timed out"),
    "flipped-bit": (Flip(offset=100), r"corrupt in the registry: 4 downloads did not match its digest"),
}


@pytest.mark.parametrize("name", list(PERSISTENT))
def test_persistent_fault_is_one_clear_line_and_no_final_file(
    artifact: Artifact, proxy: FaultProxy, tmp_path: Path, name: str
) -> None:
    fault, message = PERSISTENT[name]
    bad = artifact.chunks[5]
    proxy.add(fault, method="GET", path=artifact.chunk_path(5), times=None)
    started = time.monotonic()
    result = run_pull(artifact.via(proxy), tmp_path / "out", tmp_path / "cache", "--retries", "2",
                      read_timeout=stall_timeout(fault, 0.3))  # fmt: skip
    elapsed = time.monotonic() - started
    # One line and nothing before it, a persistent corruption included (gap P1).
    line = assert_one_line_error(result, rf"file 'model\.bin': chunk 5 of {COUNT} \(offset {5 * CHUNK}", message)
    assert bad in line
    assert "model.bin" not in final_files(tmp_path / "out")
    assert tree(tmp_path / "out").keys() <= {"README"}  # no temp file left either
    entries = assert_cache_consistent(tmp_path / "cache")
    assert bad not in entries
    # The fetcher's 4 attempts, each of 2 client attempts (a corrupt body is not the client's
    # to retry): the fault was not given up on too early...
    assert proxy.count("GET", artifact.chunk_path(5)) == (4 if isinstance(fault, Flip) else 8)
    assert elapsed < 30  # ...nor retried for minutes


# -- a blob of another size than its descriptor says (gap G2) --------------------------------------


def with_resized_chunk(registry: RegistryServer, art: Artifact, number: int, delta: int, tag: str) -> str:
    """``art`` again under ``tag``, but with chunk ``number`` stored as a blob ``delta`` bytes
    longer (or shorter) than the chunk index and the manifest say: a descriptor that lies about
    its blob, which distribution stores without checking. Returns the new chunk's digest."""

    async def go() -> str:
        async with RegistryClient(parse_reference(art.ref).registry) as client:
            manifest = (await client.get_manifest(art.repo, "v1")).json()
            layer = next(x for x in manifest["layers"] if x["mediaType"] == MEDIA_TYPE_CHUNK_INDEX)
            doc = json.loads(await client.get_blob(art.repo, Digest.parse(layer["digest"]), layer["size"]))
            entry = doc["chunks"][number]
            real = art.contents["model.bin"][entry["offset"] : entry["offset"] + entry["size"]]
            data = real[:delta] if delta < 0 else real + bytes(delta)
            resized = Digest.of_bytes(data)
            await client.upload_blob(art.repo, resized, data)
            for descriptor in manifest["layers"]:
                if descriptor["digest"] == entry["digest"]:
                    descriptor["digest"] = str(resized)  # the size stays what it was
            entry["digest"] = str(resized)
            blob = json.dumps(doc).encode()
            await client.upload_blob(art.repo, Digest.of_bytes(blob), blob)
            layer["digest"], layer["size"] = str(Digest.of_bytes(blob)), len(blob)
            await client.put_manifest(art.repo, tag, json.dumps(manifest).encode(), manifest["mediaType"])
            return str(resized)

    return trio.run(go)


#: name: (bytes the registry's chunk 5 has more than its descriptor says, or None: the blob is
#: right but the proxy announces a Content-Length 1000 bytes short on every GET of it).
RESIZED: dict[str, int | None] = {
    "blob-shorter": -1000,
    "blob-longer": 1000,
    "content-length-short": None,
}


@pytest.mark.parametrize("name", list(RESIZED))
def test_a_blob_of_another_size_than_its_descriptor_fails_at_once_in_one_line(
    artifact: Artifact, shared_registry: RegistryServer, proxy: FaultProxy, tmp_path: Path, name: str
) -> None:
    """A complete answer of another length is a broken artifact (or registry), not the network:
    one request, no retry by the client or the fetcher, one line giving both sizes (G2)."""
    delta = RESIZED[name]
    if delta is None:
        tag, bad, served = "v1", artifact.chunks[5], CHUNK - 1000
        proxy.add(WrongLength(-1000), method="GET", path=artifact.chunk_path(5), times=None)
    else:
        tag = f"resized{delta}"
        bad, served = with_resized_chunk(shared_registry, artifact, 5, delta, tag), CHUNK + delta
    bad_path = rf"/blobs/{re.escape(bad)}$"
    started = time.monotonic()
    result = subprocess.run(pull_cmd(f"{proxy.host}/{artifact.repo}:{tag}", tmp_path / "out", tmp_path / "cache"),
                            capture_output=True, text=True, timeout=50, check=False)  # fmt: skip
    elapsed = time.monotonic() - started
    line = assert_one_line_error(
        result,
        rf"file 'model\.bin': chunk 5 of {COUNT} \(offset {5 * CHUNK}",
        rf"{re.escape(proxy.host)}/{REPO}: blob {bad} is {served} bytes in the registry but {CHUNK} in the manifest",
        r"the artifact is broken",
    )
    assert "network" not in line and "connection broken" not in line
    assert proxy.count("GET", bad_path) == 1  # the default 5 client x 4 fetcher attempts: none repeated
    assert elapsed < 5
    assert "model.bin" not in final_files(tmp_path / "out")
    assert bad not in assert_cache_consistent(tmp_path / "cache")


def test_a_blob_of_another_size_than_its_descriptor_is_eio_on_the_mount_with_the_reason_logged(
    artifact: Artifact, shared_registry: RegistryServer, proxy: FaultProxy, tmp_path: Path
) -> None:
    """The mount's side of G2: each read of the chunk fails with EIO after one request (no
    retries to wait for), the log says why, and the rest of the file reads fine."""
    bad = with_resized_chunk(shared_registry, artifact, 5, -1000, "resized-mount")
    bad_path = rf"/blobs/{re.escape(bad)}$"
    model = artifact.contents["model.bin"]
    with mounter(tmp_path) as mounts:
        mount = mounts(f"{proxy.host}/{artifact.repo}:resized-mount", "--prefetch", "off")
        path = mount.path / "model.bin"
        for _ in range(2):
            started = time.monotonic()
            with pytest.raises(OSError) as info, path.open("rb", buffering=0) as f:
                f.seek(5 * CHUNK + 10)
                f.read(4096)
            assert info.value.errno == errno.EIO
            assert time.monotonic() - started < 2
        with path.open("rb", buffering=0) as f:
            f.seek(4 * CHUNK)
            assert f.read(CHUNK) == model[4 * CHUNK : 5 * CHUNK]
            f.seek(6 * CHUNK)
            assert f.read(CHUNK) == model[6 * CHUNK : 7 * CHUNK]
        assert mount.alive()
        assert bad not in assert_cache_consistent(mount.cache)
    log = mount.log_text()
    eio = [line for line in log.splitlines() if "failed (EIO)" in line]
    # The kernel may repeat a failed read-ahead as a read of the one page asked for: each FUSE
    # read that failed made exactly one request, nothing was retried.
    assert 2 <= len(eio) == proxy.count("GET", bad_path) <= 4, log
    assert all(f"blob {bad} is {CHUNK - 1000} bytes in the registry but {CHUNK} in the manifest" in x for x in eio)
    assert "Traceback" not in log and "network" not in log


# -- resume --------------------------------------------------------------------------------------


def test_rerun_after_a_failed_pull_fetches_only_what_is_not_cached(
    artifact: Artifact, proxy: FaultProxy, tmp_path: Path
) -> None:
    out, cache = tmp_path / "out", tmp_path / "cache"
    # The first six chunk GETs get through; every later one is refused: the pull gives up.
    proxy.add(Status(503), method="GET", path=artifact.chunk_path(), skip=6, times=None)
    first = run_pull(artifact.via(proxy), out, cache, "--retries", "1")
    assert_one_line_error(first, r"file 'model\.bin': chunk \d+ of 12", "UNAVAILABLE")
    assert "model.bin" not in final_files(out)
    cached = assert_cache_consistent(cache)
    assert len(set(cached) & set(artifact.chunks)) == 6

    proxy.clear()
    proxy.reset_records()
    second = run_pull(artifact.via(proxy), out, cache)
    assert second.returncode == 0, second.stderr
    assert tree(out) == artifact.contents
    fetched = blob_gets(proxy)
    # Each blob the cache lacked was fetched once; nothing cached was fetched again.
    assert len(fetched) == len(set(fetched))
    assert set(fetched).isdisjoint(cached)
    assert set(fetched) | set(cached) == set(assert_cache_consistent(cache))
    assert len(set(fetched) & set(artifact.chunks)) == COUNT - 6


# -- stalls ----------------------------------------------------------------------------------------


def test_a_stalled_last_chunk_is_abandoned_and_retried_not_hung_at_99_percent(
    artifact: Artifact, proxy: FaultProxy, tmp_path: Path
) -> None:
    last = COUNT - 1
    # The last chunk's first GET stops after 40 KB of 64 KiB and would hang forever.
    rule = proxy.add(Stall(after=40_000), method="GET", path=artifact.chunk_path(last), times=1)
    started = time.monotonic()
    result = run_pull(artifact.via(proxy), tmp_path / "out", tmp_path / "cache", read_timeout=1.0)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert rule.fired == 1 and proxy.count("GET", artifact.chunk_path(last)) == 2
    assert tree(tmp_path / "out") == artifact.contents
    stalled, retried = proxy.records("GET", artifact.chunk_path(last))
    assert stalled.response_bytes == 40_000
    # Abandoned after one read timeout (plus a backoff of at most 0.5 s), not after minutes.
    assert 0.9 < retried.time - stalled.time < 5, retried.time - stalled.time
    assert elapsed < 15


def test_a_slow_but_steady_pull_is_not_abandoned(artifact: Artifact, proxy: FaultProxy, tmp_path: Path) -> None:
    # Every chunk body at 96 KiB/s (0.67 s per chunk): longer in total than the read timeout,
    # but never silent for that long. The timeout is per read, so nothing is retried.
    proxy.add(Slow(rate=96 * 1024), method="GET", path=artifact.chunk_path(), times=None)
    result = run_pull(artifact.via(proxy), tmp_path / "out", tmp_path / "cache", read_timeout=0.5)
    assert result.returncode == 0, result.stderr
    assert tree(tmp_path / "out") == artifact.contents
    assert len(blob_gets(proxy)) == COUNT + 2


# -- kill -9 -----------------------------------------------------------------------------------------


class KillAt:
    """An ``on_request`` hook that SIGKILLs the pull once the proxy has seen ``n`` blob GETs,
    after a further ``delay`` seconds (so the kill lands between requests as well as on them)."""

    def __init__(self, n: int, delay: float) -> None:
        self.n = n
        self.delay = delay
        self.pid: int | None = None
        self.seen = 0
        self.fired = threading.Event()
        self.lock = threading.Lock()

    def __call__(self, record: Record) -> None:
        with self.lock:
            if "/blobs/" not in record.path:
                return
            self.seen += 1
            if self.seen != self.n or self.pid is None:
                return
            pid = self.pid
        timer = threading.Timer(self.delay, self._kill, args=(pid,))
        timer.daemon = True
        timer.start()

    def _kill(self, pid: int) -> None:
        os.kill(pid, signal.SIGKILL)
        self.fired.set()


# Seeds chosen to spread the kill: after blob GET 4, 9, 21 and 31 of 34.
@pytest.mark.parametrize("seed", [2, 1, 7, 12])
def test_pull_killed_at_a_random_point_leaves_a_consistent_cache_and_resumes(
    shared_registry: RegistryServer, tmp_path: Path, seed: int
) -> None:
    count = 32
    art = make_artifact(shared_registry, tmp_path / "src", f"faults/pull-kill-{seed}", count=count)
    out, cache = tmp_path / "out", tmp_path / "cache"
    rng = random.Random(seed)
    kill = KillAt(rng.randint(1, count), rng.uniform(0, 0.05))
    with FaultProxy(shared_registry.host, on_request=kill) as proxy:
        # 1 MiB/s per connection: ~60 ms per chunk, so the kill finds downloads, hashing and
        # cache writes in flight.
        proxy.add(Slow(rate=1024 * 1024), method="GET", path=r"/blobs/", times=None)
        with kill.lock:
            proc = subprocess.Popen(pull_cmd(art.via(proxy), out, cache), stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE)  # fmt: skip
            kill.pid = proc.pid
        _, err = proc.communicate(timeout=40)
        assert proxy.errors == []
    assert kill.fired.is_set() and proc.returncode == -signal.SIGKILL, (proc.returncode, err)

    # What the kill left: only verified entries are visible; a file is under its final name
    # only if it is complete.
    before = assert_cache_consistent(cache)
    for name, data in final_files(out).items():
        assert data == art.contents[name], f"{name} under its final name but not complete"

    with FaultProxy(shared_registry.host) as proxy:
        again = run_pull(art.via(proxy), out, cache)
        fetched = blob_gets(proxy)
    assert again.returncode == 0, again.stderr
    assert tree(out) == art.contents  # the dead pull's temp file is gone too
    assert set(fetched).isdisjoint(before)  # what the killed pull cached was reused
    assert set(art.chunks) <= set(assert_cache_consistent(cache))
