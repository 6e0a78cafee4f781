"""The registry client against the real registry through the fault proxy.

Every fault is either retried to success or ends in one clear error; a stalled body is
abandoned and retried instead of hanging; corrupt bytes are returned by the client (it does not
hash blobs) but the fetcher never serves or caches them; ``Retry-After`` is honoured; a
redirect to another host gets no ``Authorization``. Retry delays are shortened so each test
takes about a second at most.
"""

from __future__ import annotations

import base64
import email.utils
import errno
import http.client
import http.server
import json
import os
import random
import re
import resource
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from support.fault_proxy import (
    Fault,
    FaultProxy,
    Flip,
    Redirect,
    Reset,
    Slow,
    Stall,
    Status,
    Truncate,
    WrongLength,
    too_many_requests,
)
from support.registry import RegistryFactory, RegistryServer

from ocifs.cache.fetcher import Fetcher
from ocifs.cache.store import ChunkCache
from ocifs.digest import Digest
from ocifs.errors import BlobSizeMismatch, IntegrityError, RegistryUnavailable
from ocifs.format.media import MEDIA_TYPE_MANIFEST as MEDIA_TYPE_MANIFEST
from ocifs.registry.blobio import FastBlobReader
from ocifs.registry.client import ClientOptions, RegistryClient
from ocifs.registry.credentials import Credentials
from ocifs.retry import RetryPolicy

ExpectLog = Callable[..., AbstractContextManager[Any]]

# The bound for every fault test: none over 60 s.
pytestmark = pytest.mark.timeout(60)

REPO = "faults/client"
BLOB_SIZE = 512 * 1024
ATTEMPTS = 4
FAST = RetryPolicy(attempts=ATTEMPTS, base_delay=0.01, max_delay=0.05)
BLOB_PATH = r"/v2/faults/client/blobs/sha256:"


@pytest.fixture
def proxy(registry: RegistryServer) -> Iterator[FaultProxy]:
    with FaultProxy(registry.host) as p:
        yield p
    assert p.errors == []


def client_via(proxy: FaultProxy, credentials: Credentials | None = None, **options: Any) -> RegistryClient:
    opts = ClientOptions(**{"retry": FAST, "read_timeout": 2.0, **options})
    return RegistryClient(proxy.host, credentials=credentials, options=opts)


async def store_blob(
    server: RegistryServer, size: int = BLOB_SIZE, seed: int = 1, credentials: Credentials | None = None
) -> tuple[Digest, bytes]:
    """Upload a random blob straight to the registry (not through the proxy)."""
    data = random_bytes(size, seed)
    digest = Digest.of_bytes(data)
    async with RegistryClient(server.host, credentials=credentials) as direct:
        await direct.upload_blob(REPO, digest, data)
    return digest, data


def random_bytes(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


# Faults on a blob GET: (fault, what a persistent one leaves in the error message).
RESPONSE_FAULTS: dict[str, tuple[Fault, str]] = {
    "reset-at-once": (Reset(after=None), "connection broken"),
    "reset-after-head": (Reset(after=0), "connection broken"),
    "reset-mid-body": (Reset(after=100_000), "connection broken"),
    "truncated": (Truncate(after=100_000), "connection broken"),
    # Content-Length 1000 over the body, which then ends: cut short, a network fault. (1000
    # under it is a complete body of the wrong size, a broken artifact: see the G2 tests below.)
    "length-too-long": (WrongLength(+1000), "connection broken"),
    "500": (Status(500), "HTTP 500|UNAVAILABLE"),
    "502": (Status(502), "UNAVAILABLE"),
    "503": (Status(503), "UNAVAILABLE"),
    "504": (Status(504), "UNAVAILABLE"),
    "stall-before-head": (Stall(after=None), "timed out"),
    "stall-mid-body": (Stall(after=100_000), "timed out"),
}


def stall_timeout(fault: Fault) -> float:
    """A short read timeout where the fault needs one; elsewhere room for a loaded machine."""
    return 0.3 if isinstance(fault, Stall) else 2.0


@pytest.mark.parametrize("name", list(RESPONSE_FAULTS))
async def test_blob_get_fault_burst_is_retried_to_success(
    registry: RegistryServer, proxy: FaultProxy, name: str
) -> None:
    fault, _ = RESPONSE_FAULTS[name]
    digest, data = await store_blob(registry)
    proxy.add(fault, method="GET", path=BLOB_PATH, times=2)
    started = time.monotonic()
    async with client_via(proxy, read_timeout=stall_timeout(fault)) as client:
        assert await client.get_blob(REPO, digest, len(data)) == data
        assert client.stats.retries == 2
    assert proxy.count("GET", BLOB_PATH) == 3
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("name", list(RESPONSE_FAULTS))
async def test_persistent_blob_get_fault_is_one_clear_error(
    registry: RegistryServer, proxy: FaultProxy, name: str
) -> None:
    fault, message = RESPONSE_FAULTS[name]
    digest, data = await store_blob(registry)
    proxy.add(fault, method="GET", path=BLOB_PATH, times=None)
    started = time.monotonic()
    async with client_via(proxy, read_timeout=stall_timeout(fault)) as client:
        with pytest.raises(RegistryUnavailable) as info:
            await client.get_blob(REPO, digest, len(data))
    text = str(info.value)
    assert "\n" not in text and proxy.host in text and f"blob {digest.short}" in text
    assert re.search(message, text), text
    assert proxy.count("GET", BLOB_PATH) == ATTEMPTS
    # Four attempts, each abandoned after at most read_timeout: bounded, never a hang.
    assert time.monotonic() - started < ATTEMPTS * 0.3 + 3


# Every other kind of request the client makes, hit by a 503 burst and by a reset before the
# response: all are retried (POST and PUT too: a new upload session or a repeated PUT is harmless).
OPERATIONS = {
    "ping": ("GET", r"^/v2/$"),
    "head-blob": ("HEAD", BLOB_PATH),
    "range-get": ("GET", BLOB_PATH),
    "start-upload": ("POST", r"/blobs/uploads/$"),
    "finish-upload": ("PUT", r"/blobs/uploads/.+digest="),
    "put-manifest": ("PUT", r"/manifests/v1$"),
    "get-manifest": ("GET", r"/manifests/v1$"),
    "manifest-by-digest": ("GET", r"/manifests/sha256:"),
}


async def run_operation(client: RegistryClient, name: str, digest: Digest, data: bytes) -> None:
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_MANIFEST,
            "artifactType": "application/vnd.ocifs.test",
            "config": {"mediaType": "application/octet-stream", "digest": str(digest), "size": len(data)},
            "layers": [],
        }
    ).encode()
    if name == "ping":
        await client.ping()
    elif name == "head-blob":
        assert await client.blob_size(REPO, digest) == len(data)
    elif name == "range-get":
        assert await client.get_blob_range(REPO, digest, 10, 5000) == data[10:5000]
    elif name in ("start-upload", "finish-upload"):
        fresh = data[::-1]
        assert await client.upload_blob(REPO, Digest.of_bytes(fresh), fresh) == "uploaded"
        assert await client.get_blob(REPO, Digest.of_bytes(fresh)) == fresh
    elif name == "put-manifest":
        assert await client.put_manifest(REPO, "v1", manifest, MEDIA_TYPE_MANIFEST) == Digest.of_bytes(manifest)
    elif name in ("get-manifest", "manifest-by-digest"):
        await client.put_manifest(REPO, "v1", manifest, MEDIA_TYPE_MANIFEST)
        if name == "get-manifest":
            assert (await client.get_manifest(REPO, "v1")).data == manifest
        else:
            by_digest = await client.get_manifest(REPO, str(Digest.of_bytes(manifest)))
            assert by_digest.data == manifest


@pytest.mark.parametrize("fault", [Status(503), Reset(after=None)], ids=["503", "reset"])
@pytest.mark.parametrize("name", list(OPERATIONS))
async def test_every_request_kind_is_retried(
    registry: RegistryServer, proxy: FaultProxy, name: str, fault: Fault
) -> None:
    digest, data = await store_blob(registry, size=10_000)
    method, path = OPERATIONS[name]
    rule = proxy.add(fault, method=method, path=path, times=2)
    async with client_via(proxy) as client:
        await run_operation(client, name, digest, data)
        assert client.stats.retries == 2
    assert rule.fired == 2


async def test_stalled_body_is_abandoned_after_read_timeout_and_retried(
    registry: RegistryServer, proxy: FaultProxy
) -> None:
    digest, data = await store_blob(registry)
    proxy.add(Stall(after=64 * 1024, seconds=None), method="GET", path=BLOB_PATH)
    started = time.monotonic()
    async with client_via(proxy, read_timeout=0.5) as client:
        assert await client.get_blob(REPO, digest, len(data)) == data
    elapsed = time.monotonic() - started
    assert 0.5 <= elapsed < 3
    stalled, retried = proxy.records("GET", BLOB_PATH)
    assert stalled.fault and stalled.response_bytes == 64 * 1024
    assert retried.fault is None and retried.response_bytes == len(data)


async def test_a_pause_shorter_than_the_read_timeout_is_waited_out(registry: RegistryServer, proxy: FaultProxy) -> None:
    digest, data = await store_blob(registry)
    proxy.add(Stall(after=1000, seconds=0.4), method="GET", path=BLOB_PATH)
    started = time.monotonic()
    async with client_via(proxy, read_timeout=2.0) as client:
        assert await client.get_blob(REPO, digest, len(data)) == data
        assert client.stats.retries == 0
    assert time.monotonic() - started >= 0.4


async def test_slow_body_completes_without_timing_out(registry: RegistryServer, proxy: FaultProxy) -> None:
    digest, data = await store_blob(registry)
    # 512 KiB at 512 KiB/s: a second in all, longer than read_timeout, but bytes keep coming.
    proxy.add(Slow(rate=512 * 1024), method="GET", path=BLOB_PATH)
    started = time.monotonic()
    async with client_via(proxy, read_timeout=0.6) as client:
        assert await client.get_blob(REPO, digest, len(data)) == data
        assert client.stats.retries == 0
    assert 0.9 <= time.monotonic() - started < 4


# -- uploads ------------------------------------------------------------------------------------

UPLOAD_PUT = r"/blobs/uploads/.+digest="

UPLOAD_FAULTS: dict[str, Fault] = {
    # The registry stored the blob but its 201 never arrived: the repeated PUT finds the session
    # gone (BLOB_UPLOAD_UNKNOWN) and the client starts a new one.
    "reply-lost": Status(503, forward=True),
    "reset-mid-upload": Reset(after=100_000, on="request"),
    "reset-before-reply": Reset(after=None),
    "stalled-upload": Stall(after=100_000, on="request"),
    "stalled-reply": Stall(after=None),
}


@pytest.mark.parametrize("name", list(UPLOAD_FAULTS))
async def test_upload_fault_is_retried_to_a_complete_blob(
    registry: RegistryServer, proxy: FaultProxy, name: str
) -> None:
    data = random_bytes(BLOB_SIZE, 5)
    digest = Digest.of_bytes(data)
    rule = proxy.add(UPLOAD_FAULTS[name], method="PUT", path=UPLOAD_PUT, times=1)
    started = time.monotonic()
    async with client_via(proxy, read_timeout=0.5) as client:
        assert await client.upload_blob(REPO, digest, data) == "uploaded"
    assert rule.fired == 1 and time.monotonic() - started < 5
    async with RegistryClient(registry.host) as direct:
        assert await direct.get_blob(REPO, digest, len(data)) == data


async def test_slow_upload_completes_without_timing_out(registry: RegistryServer, proxy: FaultProxy) -> None:
    data = random_bytes(BLOB_SIZE, 6)
    digest = Digest.of_bytes(data)
    # 512 KiB at 1 MiB/s: the proxy reads a slice every 20 ms, so the client's send keeps moving.
    proxy.add(Slow(rate=1024 * 1024, on="request"), method="PUT", path=UPLOAD_PUT)
    async with client_via(proxy, read_timeout=2.0) as client:
        assert await client.upload_blob(REPO, digest, data) == "uploaded"
        assert await client.get_blob(REPO, digest, len(data)) == data
    (put,) = proxy.records("PUT", UPLOAD_PUT)
    assert put.request_bytes == len(data) and put.status == 201


# -- corrupt bytes ------------------------------------------------------------------------------


def cache_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")]


async def test_client_returns_flipped_bytes_but_the_fetcher_never_serves_or_caches_them(
    registry: RegistryServer, proxy: FaultProxy, tmp_path: Path, expect_log: ExpectLog
) -> None:
    digest, data = await store_blob(registry)
    proxy.add(Flip(offset=12345, mask=0x40), method="GET", path=BLOB_PATH, times=None)
    async with client_via(proxy) as client:
        # The client's contract: exact length, digest unchecked (the fetcher hashes in a thread).
        corrupt = await client.get_blob(REPO, digest, len(data))
        assert len(corrupt) == len(data) and corrupt != data
        assert corrupt[12345] == data[12345] ^ 0x40
        cache = ChunkCache(tmp_path / "cache")
        fetcher = Fetcher(client, cache, retries=2, retry_base_delay=0.01)
        with pytest.raises(IntegrityError) as info:  # and no WARNING: the error is the one line
            await fetcher.get(REPO, digest, len(data))
    assert str(digest) in str(info.value) and "\n" not in str(info.value)
    assert fetcher.stats().integrity_failures == 3
    assert not cache.contains(digest)
    assert cache_files(tmp_path / "cache") == []


async def test_a_transient_flip_is_retried_and_only_the_good_bytes_are_cached(
    registry: RegistryServer, proxy: FaultProxy, tmp_path: Path, expect_log: ExpectLog
) -> None:
    digest, data = await store_blob(registry)
    proxy.add(Flip(offset=len(data) - 1), method="GET", path=BLOB_PATH, times=1)
    async with client_via(proxy) as client:
        cache = ChunkCache(tmp_path / "cache", memory_bytes=0)
        fetcher = Fetcher(client, cache, retries=2, retry_base_delay=0.01)
        with expect_log(r"did not match its digest 1 time\(s\) before a good one", count=1):
            assert await fetcher.get(REPO, digest, len(data)) == data
    assert fetcher.stats().integrity_failures == 1 and fetcher.stats().downloads == 2
    assert cache.get_disk(digest) == data
    assert [p.read_bytes() for p in cache_files(tmp_path / "cache")] == [data]


async def test_flipped_manifest_fetched_by_digest_is_refused(registry: RegistryServer, proxy: FaultProxy) -> None:
    digest, data = await store_blob(registry, size=100)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_MANIFEST,
            "config": {"mediaType": "application/octet-stream", "digest": str(digest), "size": len(data)},
            "layers": [],
        }
    ).encode()
    async with RegistryClient(registry.host) as direct:
        manifest_digest = await direct.put_manifest(REPO, "v1", manifest, MEDIA_TYPE_MANIFEST)
    proxy.add(Flip(offset=40), method="GET", path=r"/manifests/sha256:", times=None)
    async with client_via(proxy) as client:
        with pytest.raises(IntegrityError, match="does not match its digest"):
            await client.get_manifest(REPO, str(manifest_digest))


# -- a blob of another size than its descriptor says (G2) -------------------------------------

#: name: (blob size, the size the caller's descriptor gives minus the blob's, proxy fault). 512 KiB
#: bodies go through the threaded fast path (blobio.py), 100 KB ones through httpx.
RESIZED: dict[str, tuple[int, int, Fault | None]] = {
    "descriptor-larger-fast": (BLOB_SIZE, 1000, None),
    "descriptor-smaller-fast": (BLOB_SIZE, -1000, None),
    "descriptor-larger-httpx": (100_000, 1000, None),
    "descriptor-smaller-httpx": (100_000, -1000, None),
    "content-length-short-fast": (BLOB_SIZE, 0, WrongLength(-1000)),
    "content-length-short-httpx": (100_000, 0, WrongLength(-1000)),
}


@pytest.mark.parametrize("name", list(RESIZED))
async def test_a_complete_body_of_another_size_fails_at_once_and_the_fetcher_does_not_retry_it(
    registry: RegistryServer, proxy: FaultProxy, tmp_path: Path, name: str
) -> None:
    """A complete answer whose length is not the descriptor's size is a broken artifact (or a
    registry or proxy that lies about lengths), whichever side is wrong: one request, no retry
    by the client nor by the fetcher, one line with both sizes; nothing cached."""
    size, delta, fault = RESIZED[name]
    digest, _ = await store_blob(registry, size=size)
    expected = size + delta
    served = size - 1000 if fault is not None else size
    if fault is not None:
        proxy.add(fault, method="GET", path=BLOB_PATH, times=None)
    started = time.monotonic()
    async with client_via(proxy) as client:
        with pytest.raises(BlobSizeMismatch) as info:
            await client.get_blob(REPO, digest, expected)
        assert client.stats.retries == 0
        cache = ChunkCache(tmp_path / "cache")
        fetcher = Fetcher(client, cache, retries=3, retry_base_delay=0.01)
        with pytest.raises(BlobSizeMismatch):
            await fetcher.get(REPO, digest, expected)
    assert fetcher.stats().downloads == 1 and fetcher.stats().retries == 0
    assert proxy.count("GET", BLOB_PATH) == 2  # one per call
    assert time.monotonic() - started < 2
    text = str(info.value)
    assert (
        f"{proxy.host}/{REPO}: blob {digest} is {served} bytes in the registry but {expected} in the manifest" in text
    )
    assert "push it again" in text and "network" not in text and "\n" not in text
    assert not cache.contains(digest) and cache_files(tmp_path / "cache") == []


async def test_a_body_cut_short_of_a_wrong_content_length_is_still_a_network_fault(
    registry: RegistryServer, proxy: FaultProxy
) -> None:
    """The other side of the line: Content-Length says more than the body, which then breaks
    off. Retried (here to success), whatever the descriptor says."""
    digest, data = await store_blob(registry)
    proxy.add(WrongLength(+1000), method="GET", path=BLOB_PATH, times=2)
    async with client_via(proxy) as client:
        assert await client.get_blob(REPO, digest, len(data)) == data
        assert client.stats.retries == 2


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [
        (BLOB_SIZE - 100, BLOB_SIZE + 900, rf"is {BLOB_SIZE} bytes in the registry but at least {BLOB_SIZE + 900}"),
        (0, BLOB_SIZE + 1000, rf"is {BLOB_SIZE} bytes in the registry but at least {BLOB_SIZE + 1000}"),
        (BLOB_SIZE + 10, BLOB_SIZE + 20, rf"is at most {BLOB_SIZE + 10} bytes in the registry"),
        (BLOB_SIZE, 2 * BLOB_SIZE, rf"is at most {BLOB_SIZE} bytes in the registry but at least {2 * BLOB_SIZE}"),
    ],
    ids=["206-clipped-httpx", "206-clipped-fast", "416-httpx", "416-fast"],
)
async def test_a_range_past_the_end_of_the_blob_fails_at_once(
    registry: RegistryServer, proxy: FaultProxy, start: int, end: int, message: str
) -> None:
    """Pieces of a large plain layer are fetched by range: a blob shorter than its descriptor
    shows as a range distribution clips (206) or cannot satisfy (416), in one request."""
    digest, _ = await store_blob(registry)
    async with client_via(proxy) as client:
        with pytest.raises(BlobSizeMismatch, match=message):
            await client.get_blob_range(REPO, digest, start, end)
        assert client.stats.retries == 0
    assert proxy.count("GET", BLOB_PATH) == 1


class _BlobServer(http.server.BaseHTTPRequestHandler):
    """Serves BODY for every blob GET: chunked (repository ``r/chunked``; ``r/chunked-short``:
    1000 bytes short), or announcing 1000 bytes more than it sends, then closing (``r/cut``)."""

    protocol_version = "HTTP/1.1"
    BODY = random_bytes(BLOB_SIZE, 9)

    def do_GET(self) -> None:
        self.send_response(200)
        if self.path.startswith("/v2/r/cut/"):
            self.send_header("Content-Length", str(len(self.BODY) + 1000))
            self.end_headers()
            self.wfile.write(self.BODY)
            self.close_connection = True
            return
        body = self.BODY[:-1000] if self.path.startswith("/v2/r/chunked-short/") else self.BODY
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for start in range(0, len(body), 100_000):
            piece = body[start : start + 100_000]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        self.wfile.write(b"0\r\n\r\n")

    def log_message(self, format: str, *args: Any) -> None:
        pass


async def test_fast_path_reads_chunked_bodies_and_tells_a_cut_body_from_a_wrong_size() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _BlobServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    body = _BlobServer.BODY
    digest = Digest.of_bytes(body)
    try:
        async with client_via_host(f"127.0.0.1:{server.server_address[1]}") as client:
            # A chunked body (no Content-Length) of the right length is a body like any other.
            assert await client.get_blob("r/chunked", digest, len(body)) == body
            assert client.stats.fast_gets == 1 and client.stats.retries == 0
            # Complete but 1000 bytes short: the artifact's fault, at once.
            with pytest.raises(BlobSizeMismatch, match=f"is {len(body) - 1000} bytes in the registry"):
                await client.get_blob("r/chunked-short", digest, len(body))
            assert client.stats.retries == 0
            # Cut short of its Content-Length: the network's, retried every attempt.
            with pytest.raises(RegistryUnavailable, match=rf"body ended after {len(body)} of {len(body) + 1000}"):
                await client.get_blob("r/cut", digest, len(body))
            assert client.stats.retries == ATTEMPTS - 1
    finally:
        server.shutdown()
        server.server_close()


class _RangeIgnoringServer(http.server.BaseHTTPRequestHandler):
    """A registry that ignores ``Range`` (it is only a SHOULD): every blob GET is a 200 with
    the whole blob; counts the GETs."""

    protocol_version = "HTTP/1.1"
    BODY = random_bytes(BLOB_SIZE, 11)
    gets = 0

    def do_GET(self) -> None:
        type(self).gets += 1
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.BODY)))
        self.end_headers()
        self.wfile.write(self.BODY)

    def log_message(self, format: str, *args: Any) -> None:
        pass


async def test_a_large_range_from_a_registry_that_ignores_range_is_served_from_the_whole_answer() -> None:
    """A 200 to a Range request (``Range`` is a SHOULD): the threaded transport reads the blob up
    to the range's end and slices it — one GET, not an "HTTP 200" error, not a second request."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RangeIgnoringServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    body = _RangeIgnoringServer.BODY
    digest = Digest.of_bytes(body)
    start, end = 1000, 1000 + 300_000  # over the fast path's 256 KiB threshold
    try:
        async with client_via_host(f"127.0.0.1:{server.server_address[1]}") as client:
            assert await client.get_blob_range(REPO, digest, start, end) == body[start:end]
            assert client.stats.retries == 0
            assert _RangeIgnoringServer.gets == 1 and client.stats.fast_gets == 1
    finally:
        server.shutdown()
        server.server_close()


def client_via_host(host: str) -> RegistryClient:
    return RegistryClient(host, options=ClientOptions(retry=FAST, read_timeout=2.0))


@pytest.mark.parametrize("number", [errno.EMFILE, errno.ENFILE], ids=["EMFILE", "ENFILE"])
async def test_out_of_file_descriptors_on_the_fast_path_is_not_a_network_problem(
    registry: RegistryServer, monkeypatch: pytest.MonkeyPatch, number: int
) -> None:
    """P3: socket() failing with EMFILE is retried (other requests give descriptors back) and
    reported as what it is, with the limit and what to do; idle pooled sockets are let go."""
    digest, data = await store_blob(registry)

    def connect(self: http.client.HTTPConnection) -> None:
        raise OSError(number, os.strerror(number))

    fast = FastBlobReader(f"http://{registry.host}", True, 60.0)
    async with RegistryClient(registry.host, options=ClientOptions(retry=FAST), fast=fast) as client:
        assert await client.get_blob(REPO, digest, len(data)) == data  # one idle pooled connection
        assert fast.idle_connections() == 1
        monkeypatch.setattr(http.client.HTTPConnection, "connect", connect)
        fast.close()  # every attempt needs a new socket
        with pytest.raises(RegistryUnavailable) as info:
            await client.get_blob(REPO, digest, len(data))
        assert client.stats.retries == ATTEMPTS - 1
    text = str(info.value)
    assert f"blob {digest.short} failed: {os.strerror(number)}: " in text, text
    assert "network" not in text and "\n" not in text
    if number == errno.EMFILE:
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        assert (
            f"the limit is {limit} open files; raise it (ulimit -n, LimitNOFILE= in the unit) or lower --jobs" in text
        )
    else:
        assert "fs.file-max" in text


# -- 429 and Retry-After ------------------------------------------------------------------------


async def test_429_retry_after_seconds_is_honoured(registry: RegistryServer, proxy: FaultProxy) -> None:
    digest, data = await store_blob(registry)
    proxy.add(too_many_requests(1), method="GET", path=BLOB_PATH, times=1)
    started = time.monotonic()
    # The backoff alone would wait at most 0.01 s: the second attempt waits for Retry-After.
    async with client_via(proxy, retry=RetryPolicy(attempts=3, base_delay=0.01, max_delay=5)) as client:
        assert await client.get_blob(REPO, digest, len(data)) == data
    first, second = proxy.records("GET", BLOB_PATH)
    assert first.status == 429 and second.status == 200
    assert 1.0 <= second.time - first.time < 2.5
    assert time.monotonic() - started < 3


async def test_429_retry_after_http_date_is_honoured(registry: RegistryServer, proxy: FaultProxy) -> None:
    digest, data = await store_blob(registry)
    proxy.add(too_many_requests(email.utils.formatdate(time.time() + 2, usegmt=True)), method="HEAD", times=1)
    async with client_via(proxy, retry=RetryPolicy(attempts=3, base_delay=0.01, max_delay=5)) as client:
        assert await client.blob_size(REPO, digest) == len(data)
    first, second = proxy.records("HEAD")
    # An HTTP-date has whole seconds: "now + 2 s" means a wait of 1 to 2 s.
    assert 0.9 <= second.time - first.time < 3


async def test_retry_after_is_capped_by_max_delay(registry: RegistryServer, proxy: FaultProxy) -> None:
    digest, data = await store_blob(registry)
    proxy.add(too_many_requests(3600), method="GET", path=BLOB_PATH, times=1)
    started = time.monotonic()
    async with client_via(proxy, retry=RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.2)) as client:
        assert await client.get_blob(REPO, digest, len(data)) == data
    assert time.monotonic() - started < 2


async def test_persistent_429_is_one_clear_error(registry: RegistryServer, proxy: FaultProxy) -> None:
    digest, _ = await store_blob(registry)
    proxy.add(too_many_requests(0), method="GET", path=BLOB_PATH, times=None)
    async with client_via(proxy) as client:
        with pytest.raises(RegistryUnavailable) as info:
            await client.get_blob(REPO, digest)
    text = str(info.value)
    assert "TOOMANYREQUESTS" in text and f"after {ATTEMPTS} attempts" in text and "\n" not in text
    assert proxy.count("GET", BLOB_PATH) == ATTEMPTS


# -- redirects ----------------------------------------------------------------------------------


async def test_redirect_to_another_host_carries_no_authorization(registry_factory: RegistryFactory) -> None:
    server = registry_factory(basic=True)
    user, password = server.credentials()
    credentials = Credentials(user, password)
    digest, data = await store_blob(server, credentials=credentials)
    # The redirect target plays a pre-signed URL: it brings its own credentials upstream.
    presigned = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    with FaultProxy(server.host, redirect_authorization=presigned) as proxy:
        proxy.add(Redirect(), method="GET", path=BLOB_PATH, times=None)
        async with client_via(proxy, credentials) as client:
            await client.ping()  # learn the Basic challenge: every request after carries credentials
            assert await client.get_blob(REPO, digest, len(data)) == data
            assert await client.get_blob_range(REPO, digest, 1000, 2000) == data[1000:2000]
            assert await client.blob_size(REPO, digest) == len(data)  # HEAD: not redirected
        assert proxy.errors == []
    redirected = proxy.records("GET", BLOB_PATH)
    assert [r.status for r in redirected] == [307, 307]
    assert all(r.headers.get("authorization", "").startswith("Basic ") for r in redirected)
    served = proxy.records("GET", BLOB_PATH, listener="redirect")
    assert [r.status for r in served] == [200, 206]
    assert served[1].headers["range"] == "bytes=1000-1999"
    for record in served:
        assert "authorization" not in record.headers, record.headers
        assert password not in json.dumps(record.headers)


# -- the proxy itself ---------------------------------------------------------------------------


async def test_proxy_is_transparent_under_many_concurrent_connections(
    registry: RegistryServer, proxy: FaultProxy
) -> None:
    blobs = [await store_blob(registry, size=100_000 + n, seed=n) for n in range(40)]
    async with client_via(proxy, max_connections=40) as client:

        async def fetch(digest: Digest, data: bytes) -> None:
            assert await client.get_blob(REPO, digest, len(data)) == data

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                for digest, data in blobs:
                    nursery.start_soon(fetch, digest, data)
        assert client.stats.retries == 0
    assert proxy.count("GET", BLOB_PATH) == 120
    assert {r.status for r in proxy.records("GET", BLOB_PATH)} == {200}


class _ChunkedEcho(http.server.BaseHTTPRequestHandler):
    """Answers every POST with its decoded body, as a chunked response in three pieces."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        body = b""
        if "chunked" in self.headers.get("Transfer-Encoding", ""):
            while (size := int(self.rfile.readline().split(b";")[0], 16)) != 0:
                body += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        third = len(body) // 3 + 1
        for start in range(0, len(body), third):
            piece = body[start : start + third]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        self.wfile.write(b"0\r\n\r\n")

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_proxy_handles_chunked_bodies_both_ways_and_applies_faults_to_the_payload() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ChunkedEcho)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with FaultProxy(f"127.0.0.1:{server.server_address[1]}") as proxy, httpx.Client(base_url=proxy.url) as web:
            payload = os.urandom(300_000)
            pieces = (payload[i : i + 7000] for i in range(0, len(payload), 7000))
            assert web.post("/echo", content=pieces).content == payload  # chunked request
            assert web.post("/echo", content=payload).content == payload  # Content-Length request
            proxy.add(Flip(offset=150_000, mask=0xFF), path="/flip")
            flipped = web.post("/flip", content=payload).content
            assert len(flipped) == len(payload) and flipped[150_000] == payload[150_000] ^ 0xFF
            proxy.add(Truncate(after=1000), path="/cut")
            with pytest.raises(httpx.RemoteProtocolError):
                web.post("/cut", content=payload)
            assert web.post("/echo", content=b"after").content == b"after"
            assert proxy.count("POST") == 5 and proxy.errors == []
    finally:
        server.shutdown()
        server.server_close()


def test_proxy_close_ends_connections_stalled_forever() -> None:
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ChunkedEcho)
    thread = threading.Thread(target=upstream.serve_forever, daemon=True)
    thread.start()
    proxy = FaultProxy(f"127.0.0.1:{upstream.server_address[1]}").start()
    proxy.add(Stall(after=None, seconds=None), times=None)
    outcome: list[BaseException] = []

    def stalled_request() -> None:
        try:
            httpx.post(proxy.url + "/x", content=b"", timeout=30)
        except httpx.HTTPError as exc:
            outcome.append(exc)

    client = threading.Thread(target=stalled_request)
    client.start()
    try:
        deadline = time.monotonic() + 5
        while proxy.count() == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        started = time.monotonic()
        proxy.close()
        client.join(5)
        assert not client.is_alive() and time.monotonic() - started < 3
        assert outcome and isinstance(outcome[0], httpx.RemoteProtocolError)
    finally:
        upstream.shutdown()
        upstream.server_close()


# -- regressions found by this suite ----------------------------------------------------------------


async def test_a_steady_upload_slower_than_read_timeout_in_total_completes(
    registry: RegistryServer, proxy: FaultProxy
) -> None:
    """A body that keeps moving is not abandoned: each slice has its own write timeout."""
    data = random_bytes(4 * 1024 * 1024, 7)
    digest = Digest.of_bytes(data)
    proxy.add(Slow(rate=4 * 1024 * 1024, on="request"), method="PUT", path=UPLOAD_PUT, times=None)  # ~1 s
    async with client_via(proxy, read_timeout=0.5) as client:
        assert await client.upload_blob(REPO, digest, data) == "uploaded"
        assert await client.get_blob(REPO, digest, len(data)) == data


async def test_manifest_by_tag_altered_in_transit_is_refused(registry: RegistryServer, proxy: FaultProxy) -> None:
    """Fetched by tag, a manifest is checked against the Docker-Content-Digest the registry sent."""
    config = b"{}"
    async with RegistryClient(registry.host) as direct:
        await direct.upload_blob(REPO, Digest.of_bytes(config), config)
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": MEDIA_TYPE_MANIFEST,
                "config": {
                    "mediaType": "application/vnd.oci.empty.v1+json",
                    "digest": str(Digest.of_bytes(config)),
                    "size": 2,
                },
                "layers": [],
                "annotations": {"size": "1000"},
            }
        ).encode()
        await direct.put_manifest(REPO, "v1", manifest, MEDIA_TYPE_MANIFEST)
    offset = manifest.index(b'"1000"') + 1
    proxy.add(Flip(offset=offset, mask=0x08), method="GET", path="/manifests/v1", times=None)  # '1' -> '9'
    async with client_via(proxy) as client:
        with pytest.raises(IntegrityError, match="does not match the digest the registry announced"):
            await client.get_manifest(REPO, "v1")
