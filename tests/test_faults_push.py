"""``ocifs push`` through the fault proxy: transient faults are retried to a complete artifact,
persistent ones end in one clear line and a non-zero exit with no manifest written, a re-run
uploads only what is missing, and a push killed at any request never leaves a manifest that
points at a missing blob.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from support.fault_proxy import (
    Fault,
    FaultProxy,
    Record,
    Reset,
    Slow,
    Stall,
    Status,
    too_many_requests,
)
from support.registry import RegistryServer

from ocifs.commands import push
from ocifs.digest import Digest
from ocifs.errors import NotFound, RegistryUnavailable
from ocifs.format.model import ChunkedFile
from ocifs.format.parse import parse_chunk_index
from ocifs.reference import parse_reference
from ocifs.registry.client import ClientOptions, RegistryClient
from ocifs.registry.resolve import resolve
from ocifs.retry import RetryPolicy

# The bound for every fault test: none over 60 s.
pytestmark = pytest.mark.timeout(60)

CHUNK = 64 * 1024
UPLOAD_PUT = r"/blobs/uploads/.+digest="
FAST = RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05)


@pytest.fixture
def proxy(registry: RegistryServer) -> Iterator[FaultProxy]:
    with FaultProxy(registry.host) as p:
        yield p
    assert p.errors == []


def make_inputs(directory: Path, seed: int = 1) -> dict[str, bytes]:
    """A chunked file of 6 chunks and a plain one: 6 chunks + index + plain + config = 9 blobs."""
    rng = random.Random(seed)
    contents = {"model.bin": rng.randbytes(6 * CHUNK - 17), "README": rng.randbytes(300)}
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in contents.items():
        (directory / name).write_bytes(data)
    return contents


BLOBS = 9


async def push_via(
    proxy: FaultProxy, repo: str, source: Path, *, read_timeout: float = 1.0, jobs: int = 4
) -> push.PushResult:
    ref = parse_reference(f"{proxy.host}/{repo}:v1")
    options = ClientOptions(retry=FAST, read_timeout=read_timeout)
    async with RegistryClient(ref.registry, options=options) as client:
        return await push.push(
            client, ref, push.collect_sources([str(source)]), push.PushOptions(chunk_size=CHUNK, jobs=jobs)
        )


async def read_back(registry: RegistryServer, repo: str, tag: str = "v1") -> dict[str, bytes]:
    """Every file of the artifact, straight from the registry, each chunk and file verified."""
    ref = parse_reference(f"{registry.host}/{repo}:{tag}")
    out: dict[str, bytes] = {}
    async with RegistryClient(registry.host) as client:
        resolved = await resolve(client, ref)
        for f in resolved.artifact.files:
            if isinstance(f, ChunkedFile):
                layout = parse_chunk_index(await client.get_blob(repo, f.index.digest, f.index.size), f)
                parts = [await client.get_blob(repo, c.digest, c.size) for c in layout.chunks]
                assert all(c.digest.matches(p) for c, p in zip(layout.chunks, parts, strict=True))
                out[f.path] = b"".join(parts)
                assert layout.file_digest is not None and layout.file_digest.matches(out[f.path])
            else:
                out[f.path] = await client.get_blob(repo, f.digest, f.size)
                assert f.digest.matches(out[f.path])
    return out


async def manifest_blobs(registry: RegistryServer, repo: str, tag: str = "v1") -> list[Digest] | None:
    """The config and layer digests of the tagged manifest, or None if the tag does not exist."""
    async with RegistryClient(registry.host) as client:
        try:
            doc = (await client.get_manifest(repo, tag)).json()
        except NotFound:
            return None
    return [Digest.parse(d["digest"]) for d in [doc["config"], *doc["layers"]]]


async def missing_blobs(registry: RegistryServer, repo: str, digests: list[Digest]) -> list[Digest]:
    async with RegistryClient(registry.host) as client:
        return [d for d in digests if await client.blob_size(repo, d) is None]


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ocifs", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 1, result
    assert result.stderr.startswith("ocifs: error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


# -- transient faults: the push completes ----------------------------------------------------------

TRANSIENT: dict[str, tuple[Fault, str | None, str, int]] = {
    # name: (fault, method, path, times)
    "reset-mid-upload": (Reset(after=30_000, on="request"), "PUT", UPLOAD_PUT, 3),
    "reset-before-reply": (Reset(after=None), "PUT", UPLOAD_PUT, 3),
    "503-on-upload": (Status(503), "PUT", UPLOAD_PUT, 3),
    "502-on-upload-start": (Status(502), "POST", r"/blobs/uploads/$", 3),
    "500-on-head": (Status(500), "HEAD", r"/blobs/", 3),
    "500-after-storing": (Status(500, forward=True), "PUT", UPLOAD_PUT, 3),
    "429-on-upload-start": (too_many_requests(0.3), "POST", r"/blobs/uploads/$", 2),
    "stalled-upload": (Stall(after=20_000, on="request"), "PUT", UPLOAD_PUT, 2),
    "stalled-head": (Stall(after=None), "HEAD", r"/blobs/", 2),
    "reset-on-manifest": (Reset(after=None), "PUT", r"/manifests/v1$", 2),
    "manifest-reply-lost": (Status(503, forward=True), "PUT", r"/manifests/v1$", 1),
}


@pytest.mark.parametrize("name", list(TRANSIENT))
async def test_transient_fault_is_retried_to_a_complete_artifact(
    registry: RegistryServer, proxy: FaultProxy, tmp_path: Path, name: str
) -> None:
    fault, method, path, times = TRANSIENT[name]
    contents = make_inputs(tmp_path / "in")
    rule = proxy.add(fault, method=method, path=path, times=times)
    started = time.monotonic()
    result = await push_via(proxy, "faults/transient", tmp_path / "in", read_timeout=0.5)
    assert time.monotonic() - started < 10
    assert rule.fired == times
    assert result.blobs_uploaded == BLOBS and result.blobs_skipped == 0
    assert await read_back(registry, "faults/transient") == contents


async def test_slow_uploads_complete(registry: RegistryServer, proxy: FaultProxy, tmp_path: Path) -> None:
    contents = make_inputs(tmp_path / "in")
    # Every blob body read at 2 MiB/s: ~0.2 s for the whole artifact over 4 connections.
    proxy.add(Slow(rate=2 * 1024 * 1024, on="request"), method="PUT", path=UPLOAD_PUT, times=None)
    result = await push_via(proxy, "faults/slow", tmp_path / "in", read_timeout=5.0)
    assert result.blobs_uploaded == BLOBS
    assert all(r.fault for r in proxy.records("PUT", UPLOAD_PUT))
    assert await read_back(registry, "faults/slow") == contents


async def test_random_faults_everywhere_still_give_a_complete_artifact(
    registry: RegistryServer, tmp_path: Path
) -> None:
    contents = make_inputs(tmp_path / "in", seed=3)
    with FaultProxy(registry.host, seed=42) as proxy:
        # One request in five fails, whatever it is; four attempts make a lost push unlikely
        # (0.2**4 per request) and the seed makes the run reproducible.
        for fault in (Status(503), Reset(after=None), Reset(after=10_000, on="request")):
            proxy.add(fault, times=None, probability=0.07)
        result = await push_via(proxy, "faults/random", tmp_path / "in", read_timeout=0.5)
        fired = sum(1 for r in proxy.records() if r.fault)
        assert proxy.errors == []
    assert fired >= 1
    assert result.blobs_uploaded == BLOBS
    assert await read_back(registry, "faults/random") == contents


# -- persistent faults: one clear line, non-zero exit, no manifest ---------------------------------

PERSISTENT: dict[str, tuple[Fault, str, str, tuple[str, ...]]] = {
    "503-on-every-upload": (Status(503), "PUT", UPLOAD_PUT, ("UNAVAILABLE", "after 2 attempts")),
    "reset-on-every-upload": (Reset(after=20_000, on="request"), "PUT", UPLOAD_PUT, ("connection broken",)),
    "429-on-every-upload-start": (too_many_requests(0), "POST", r"/blobs/uploads/$", ("TOOMANYREQUESTS",)),
    "manifest-refused": (Status(500), "PUT", r"/manifests/", ("manifest", "after 2 attempts")),
}


@pytest.mark.parametrize("name", list(PERSISTENT))
def test_persistent_fault_is_one_clear_line_and_no_manifest(
    registry: RegistryServer, proxy: FaultProxy, tmp_path: Path, name: str
) -> None:
    fault, method, path, fragments = PERSISTENT[name]
    make_inputs(tmp_path / "in")
    proxy.add(fault, method=method, path=path, times=None)
    started = time.monotonic()
    result = run_cli("push", f"{proxy.host}/faults/persistent:v1", str(tmp_path / "in"), "--chunk-size", "64K",
                     "--retries", "2")  # fmt: skip
    assert time.monotonic() - started < 20
    assert_one_line_error(result, proxy.host, *fragments)
    assert (run_cli("inspect", f"{registry.host}/faults/persistent:v1")).returncode != 0
    assert registry_has_no_tag(registry, "faults/persistent")


def registry_has_no_tag(registry: RegistryServer, repo: str) -> bool:
    return not (registry.storage_dir / f"docker/registry/v2/repositories/{repo}/_manifests/tags/v1").exists()


async def test_persistent_fault_in_process_raises_one_error_not_a_group(
    registry: RegistryServer, proxy: FaultProxy, tmp_path: Path
) -> None:
    make_inputs(tmp_path / "in")
    proxy.add(Reset(after=None), method="PUT", path=UPLOAD_PUT, times=None)
    with pytest.raises(RegistryUnavailable) as info:
        await push_via(proxy, "faults/group", tmp_path / "in")
    assert "connection broken" in str(info.value) and "\n" not in str(info.value)


# -- resume --------------------------------------------------------------------------------------


def test_rerun_after_a_failed_push_uploads_only_the_missing_blobs(
    registry: RegistryServer, proxy: FaultProxy, tmp_path: Path
) -> None:
    contents = make_inputs(tmp_path / "in")
    ref = f"{proxy.host}/faults/resume:v1"
    # The first five blob uploads get through, every one after fails: the push gives up.
    proxy.add(Status(503), method="PUT", path=UPLOAD_PUT, skip=5, times=None)
    first = run_cli("push", ref, str(tmp_path / "in"), "--chunk-size", "64K", "--jobs", "2", "--retries", "2")
    assert_one_line_error(first, "UNAVAILABLE")
    assert registry_has_no_tag(registry, "faults/resume")
    assert len([r for r in proxy.records("PUT", UPLOAD_PUT) if r.status == 201]) == 5

    proxy.clear()
    proxy.reset_records()
    second = run_cli("push", ref, str(tmp_path / "in"), "--chunk-size", "64K", "--json")
    assert second.returncode == 0, second.stderr
    summary = json.loads(second.stdout)
    assert summary["blobs_skipped"] == 5 and summary["blobs_uploaded"] == BLOBS - 5
    # Nothing finished before was sent again: one upload per missing blob, not one per blob.
    assert proxy.count("PUT", UPLOAD_PUT) == BLOBS - 5
    assert trio.run(read_back, registry, "faults/resume") == contents


# -- kill -9 at any request ----------------------------------------------------------------------


class KillAt:
    """An ``on_request`` hook that SIGKILLs the push when the proxy sees its ``n``-th request
    (or, with ``manifest=True``, its manifest PUT)."""

    def __init__(self, n: int | None = None, *, manifest: bool = False) -> None:
        self.n = n
        self.manifest = manifest
        self.pid: int | None = None
        self.seen = 0
        self.killed_at: Record | None = None
        self.lock = threading.Lock()

    def __call__(self, record: Record) -> None:
        with self.lock:
            self.seen += 1
            hit = (self.manifest and record.method == "PUT" and "/manifests/" in record.path) or self.seen == self.n
            if hit and self.pid is not None and self.killed_at is None:
                self.killed_at = record
                os.kill(self.pid, signal.SIGKILL)


def push_cmd(host: str, repo: str, source: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "ocifs", "push", f"{host}/{repo}:v1", str(source), "--chunk-size", "64K",
            "--jobs", "4", "-q", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def clean_push(shared_registry: RegistryServer, tmp_path_factory: pytest.TempPathFactory) -> tuple[int, list[Digest]]:
    """One clean push of :func:`make_inputs` through the proxy: how many requests it makes (ping,
    HEADs, uploads, manifest) and the blobs its manifest names (the same for every push of it)."""
    source = tmp_path_factory.mktemp("clean-input")
    make_inputs(source)
    with FaultProxy(shared_registry.host) as proxy:
        subprocess.run(push_cmd(proxy.host, "faults/clean", source), check=True, timeout=60)
        requests = proxy.count()
    blobs = trio.run(manifest_blobs, shared_registry, "faults/clean")
    assert blobs is not None and len(set(blobs)) == BLOBS
    return requests, blobs


@pytest.mark.parametrize("point", [*(f"fifth-{n}" for n in range(1, 6)), "manifest-put"])
async def test_push_killed_at_any_request_never_leaves_a_manifest_with_missing_blobs(
    registry: RegistryServer, tmp_path: Path, clean_push: tuple[int, list[Digest]], point: str
) -> None:
    requests, blobs = clean_push
    contents = make_inputs(tmp_path / "in")
    if point == "manifest-put":
        kill = KillAt(manifest=True)
    else:  # a random request (seeded by the point's name) within the n-th fifth of the push
        n = int(point.removeprefix("fifth-"))
        kill = KillAt(random.Random(point).randint(1 + (n - 1) * requests // 5, n * requests // 5))
    repo = f"faults/kill-{point}"
    with FaultProxy(registry.host, on_request=kill) as proxy:
        # Slow bodies stretch the push so that the kill lands while uploads are in flight.
        proxy.add(Slow(rate=4 * 1024 * 1024, on="request"), method="PUT", times=None)
        with kill.lock:
            proc = subprocess.Popen(push_cmd(proxy.host, repo, tmp_path / "in"), stderr=subprocess.DEVNULL)
            kill.pid = proc.pid
        await trio.to_thread.run_sync(proc.wait, 60)
        assert proxy.errors == []
    assert kill.killed_at is not None and proc.returncode == -signal.SIGKILL

    # What the kill left: either no tag, or a tag whose every blob is there.
    stored = await manifest_blobs(registry, repo)
    if stored is not None:
        assert await missing_blobs(registry, repo, stored) == []
        assert await read_back(registry, repo) == contents
    present = BLOBS - len(await missing_blobs(registry, repo, blobs))

    # A re-run completes and sends exactly what is missing.
    final = await trio.to_thread.run_sync(
        lambda: run_cli("push", f"{registry.host}/{repo}:v1", str(tmp_path / "in"), "--chunk-size", "64K", "--json")
    )
    assert final.returncode == 0, final.stderr
    summary = json.loads(final.stdout)
    assert summary["blobs_skipped"] == present and summary["blobs_uploaded"] == BLOBS - present
    assert await manifest_blobs(registry, repo) == blobs
    assert await read_back(registry, repo) == contents
