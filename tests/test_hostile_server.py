"""A hostile or broken registry or token service: bounded memory and time, one clear line.

The registry client against answers no honest server sends: endless or huge bodies where a
body is read whole (token answers, redirects, ``/v2/``, tag lists, error answers), compressed
bombs, malformed token answers and Bearer challenges, redirect loops, escapes in error
messages, a server that never answers. Edge cases of the HTTP exchange run on
``httpx.MockTransport``; what needs real sockets (the threaded fast path for blobs of
``FAST_PATH_MIN_BYTES`` or more, h11's buffering, the CLI end to end) runs against a small
scripted server on 127.0.0.1 started by the test.
"""

from __future__ import annotations

import gzip
import json
import re
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest
from support.loopback import Loopback, blob_transport, fast_reader  # noqa: F401 (autouse fixture)
from support.measured_cli import Run, run_measured

from ocifs.digest import Digest
from ocifs.errors import OcifsError, RegistryError, RegistryUnavailable
from ocifs.format.media import MEDIA_TYPE_MANIFEST as MEDIA_TYPE_MANIFEST
from ocifs.registry.blobio import FAST_PATH_MIN_BYTES
from ocifs.registry.bodies import MAX_TOKEN_RESPONSE_BYTES
from ocifs.registry.client import ClientOptions, RegistryClient
from ocifs.registry.credentials import Credentials
from ocifs.retry import RetryPolicy

pytestmark = pytest.mark.timeout(60)

BLOB = b"0123456789" * 100
DIGEST = Digest.of_bytes(BLOB)
FAST = RetryPolicy(attempts=3, base_delay=0.001, max_delay=0.01)
MIB = 1024 * 1024
# How much of an endless body a test offers before it gives up (so that a client that reads
# on does not hang the test): far more than any limit, far less than the test machine has.
OFFERED = 48 * MIB
CHALLENGE = 'Bearer realm="https://auth.test/token",service="registry.test",scope="repository:r:pull"'


class Endless(httpx.AsyncByteStream):
    """A body that goes on for :data:`OFFERED` bytes and counts what the client pulled."""

    def __init__(self, piece: bytes = b"A" * 65536) -> None:
        self.piece = piece
        self.pulled = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while self.pulled < OFFERED:
            self.pulled += len(self.piece)
            yield self.piece


def client_for(handler: Callable[[httpx.Request], httpx.Response], **kwargs: object) -> RegistryClient:
    options = ClientOptions(retry=FAST)
    return RegistryClient(
        "registry.test", options=options, transport=httpx.MockTransport(handler), fast=fast_reader(handler), **kwargs
    )  # type: ignore[arg-type]


def one_printable_line(exc: BaseException) -> str:
    text = str(exc)
    assert isinstance(exc, OcifsError), repr(exc)
    assert all(c.isprintable() for c in text), repr(text)
    assert len(text) < 600, text
    return text


def bearer(token_answer: Callable[[httpx.Request], httpx.Response]) -> Callable[[httpx.Request], httpx.Response]:
    """A registry that wants a token from auth.test (answered by ``token_answer``) and serves
    BLOB to requests that carry ``Bearer good``."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.test":
            return token_answer(request)
        if request.headers.get("authorization") != "Bearer good":
            return httpx.Response(401, headers={"WWW-Authenticate": CHALLENGE})
        return httpx.Response(200, content=BLOB)

    return handler


# -- endless and huge bodies ---------------------------------------------------------------


@pytest.mark.parametrize("length", [None, str(10 * 1024**3)], ids=["chunked", "content-length-10GiB"])
async def test_an_endless_token_answer_is_not_read_into_memory(length: str | None) -> None:
    body = Endless(b'{"token":"' + b"a" * 65526)
    headers = {"Content-Length": length} if length else {}

    async with client_for(bearer(lambda request: httpx.Response(200, headers=headers, stream=body))) as client:
        with pytest.raises(RegistryError) as info:
            await client.get_blob("r", DIGEST, len(BLOB))
    text = one_printable_line(info.value)
    assert f"the answer of token service auth.test is {length + ' bytes, ' if length else ''}over the" in text
    if length is None:
        assert body.pulled <= MAX_TOKEN_RESPONSE_BYTES + 65536
    else:
        assert body.pulled == 0  # the announced length alone is refused


@pytest.mark.parametrize(
    ("status", "message"),
    [(500, "token service auth.test answered HTTP 500"), (401, "authentication required")],
)
async def test_the_body_of_a_failed_token_answer_is_not_read(status: int, message: str) -> None:
    body = Endless()
    async with client_for(bearer(lambda request: httpx.Response(status, stream=body))) as client:
        with pytest.raises(RegistryError, match=message) as info:
            await client.get_blob("r", DIGEST, len(BLOB))
    one_printable_line(info.value)
    assert body.pulled == 0


async def test_an_endless_redirect_body_is_not_read_and_the_redirect_is_followed() -> None:
    bodies: list[Endless] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "cdn.test":
            return httpx.Response(200, content=BLOB)
        bodies.append(Endless())
        return httpx.Response(307, headers={"Location": "https://cdn.test/blob"}, stream=bodies[-1])

    async with client_for(handler) as client:
        assert await client.get_blob("r", DIGEST, len(BLOB)) == BLOB
    assert len(bodies) == 1 and bodies[0].pulled <= 64 * 1024 + 65536


async def test_an_endless_body_of_an_answer_nobody_reads_is_not_read() -> None:
    """``/v2/`` (ping, e.g. by ``ocifs login``) and an upload's replies: their bodies are
    ignored, and so not read to an end that never comes."""
    bodies: list[Endless] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(Endless())
        if request.method == "POST":
            return httpx.Response(202, headers={"Location": "/v2/r/blobs/uploads/u"}, stream=bodies[-1])
        return httpx.Response(201 if request.method == "PUT" else 200, stream=bodies[-1])

    async with client_for(handler) as client:
        await client.ping()
        assert await client.upload_blob("r", DIGEST, BLOB) == "uploaded"
    assert len(bodies) == 3
    assert all(body.pulled <= 64 * 1024 + 65536 for body in bodies), [body.pulled for body in bodies]


async def test_a_malformed_upload_location_is_one_line() -> None:
    """An upload session's ``Location`` that is not a URL (a broken IPv6 literal, a DEL)."""
    for location in ("http://[::1/x", "/v2/r/blobs/uploads/u\x7f"):

        def handler(request: httpx.Request, location: str = location) -> httpx.Response:
            return httpx.Response(202, headers={"Location": location})

        async with client_for(handler) as client:
            with pytest.raises(RegistryError, match="the registry gave the upload a malformed Location") as info:
                await client.upload_blob("r", DIGEST, BLOB)
        one_printable_line(info.value)


async def test_token_requests_carry_the_clients_headers_and_keep_the_answers_headers() -> None:
    """A token request is built by hand: it still says who asks and that it wants identity."""
    asked: list[httpx.Headers] = []

    def token(request: httpx.Request) -> httpx.Response:
        asked.append(request.headers)
        return httpx.Response(200, json={"token": "good"}, headers={"X-Trace": "t1"})

    async with client_for(bearer(token)) as client:
        assert await client.get_blob("r", DIGEST, len(BLOB)) == BLOB
    [headers] = asked
    assert headers["accept-encoding"] == "identity" and headers["user-agent"].startswith("ocifs/")


async def test_a_blob_labelled_x_gzip_is_taken_as_stored() -> None:
    """Some servers label gzip layers ``Content-Encoding: x-gzip``: a blob is taken byte for
    byte (its digest checks it), never inflated nor refused — on httpx as on the fast path."""
    layer = gzip.compress(BLOB)

    def handler(request: httpx.Request) -> httpx.Response:
        headers = {"Content-Encoding": "x-gzip", "Content-Length": str(len(layer))}
        return httpx.Response(200, headers=headers, stream=httpx.ByteStream(layer))

    async with client_for(handler) as client:
        assert await client.get_blob("r", Digest.of_bytes(layer), len(layer)) == layer
        assert await client.get_blob_range("r", Digest.of_bytes(layer), 0, 10) == layer[:10]


async def test_plain_http_to_a_tls_registry_names_the_flag_that_forced_it() -> None:
    """Go's TLS server answers plain HTTP with a bare 400 (no headers; a HEAD gets no body)."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400)

    transport = httpx.MockTransport(handler)
    options = ClientOptions(retry=FAST, plain_http=True)
    async with RegistryClient("registry.test", options=options, transport=transport) as client:
        with pytest.raises(RegistryError, match="speaks HTTPS, not plain HTTP: drop --plain-http") as info:
            await client.blob_size("r", DIGEST)
    one_printable_line(info.value)


async def test_an_endless_manifest_and_an_endless_error_answer_are_cut_off() -> None:
    bodies: list[Endless] = []

    def handler(request: httpx.Request) -> httpx.Response:
        ok = request.url.path.endswith("/v1")
        bodies.append(Endless(b'{"layers":["' + b"v" * 65524 if ok else b"A" * 65536))
        return httpx.Response(200 if ok else 400, stream=bodies[-1])

    async with client_for(handler) as client:
        with pytest.raises(RegistryError, match="over the 4194304-byte limit") as info:
            await client.get_manifest("r", "v1")
        one_printable_line(info.value)
        with pytest.raises(RegistryError, match="unexpected response: AAAA") as info:
            await client.get_manifest("r", "v2")
        one_printable_line(info.value)
    assert len(bodies) == 2
    assert bodies[0].pulled <= 4 * MIB + 65536 and bodies[1].pulled <= 64 * 1024 + 65536


def gzip_bomb(size: int) -> bytes:
    return gzip.compress(b"\0" * size, compresslevel=9)


async def test_a_compressed_answer_is_refused_not_inflated() -> None:
    """A body that inflates a thousandfold (64 MiB from 64 KiB here) is never decompressed:
    ocifs asks for identity, refuses an encoded success answer and ignores an encoded error
    body. httpx, left to itself, would inflate each received piece whole."""
    bomb = gzip_bomb(64 * MIB)
    assert len(bomb) < 128 * 1024
    asked: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request.headers.get("accept-encoding"))
        status = 200 if request.url.path.endswith("/v1") else 400
        return httpx.Response(
            status,
            headers={"Content-Encoding": "gzip", "Content-Type": MEDIA_TYPE_MANIFEST},
            stream=httpx.ByteStream(bomb),
        )

    async with client_for(handler) as client:
        with pytest.raises(RegistryError, match="manifest v1: the answer is gzip-encoded") as info:
            await client.get_manifest("r", "v1")
        one_printable_line(info.value)
        with pytest.raises(RegistryError) as info:
            await client.get_manifest("r", "v2")
        assert one_printable_line(info.value) == "registry.test/r: manifest v2: HTTP 400"
    assert asked == ["identity", "identity"]


# -- token answers and Bearer challenges ---------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (b"<html>sign in</html>", "token service returned a malformed response"),
        (b"[1, 2]", "token service returned a malformed response"),
        (b'{"tok": "x"}', "token service returned no token"),
        (b'{"token": 5}', "token service returned no token"),
        (b'{"token": "good", "expires_in": "soon"}', "token service returned a malformed response"),
        (b"[" * 100_000, "token service returned a malformed response"),  # nested too deeply
        (b'{"token": "' + b"t" * (2 * MIB) + b'"}', "is 2097165 bytes, over the 1048576-byte limit"),
    ],
    ids=["html", "array", "no-token", "token-number", "expires-in-text", "deep-nesting", "2-MiB-token"],
)
async def test_a_malformed_token_answer_is_one_line(answer: bytes, message: str) -> None:
    async with client_for(bearer(lambda request: httpx.Response(200, content=answer))) as client:
        with pytest.raises(RegistryError, match=re.escape(message)) as info:
            await client.get_blob("r", DIGEST, len(BLOB))
    one_printable_line(info.value)


@pytest.mark.parametrize("token", ["good\r\nX-Injected: 1", "good\x1b[31m", "go od", "gööd"])
async def test_a_token_that_cannot_be_a_header_is_refused_never_sent_nor_shown(token: str) -> None:
    sent: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.test":
            return httpx.Response(200, json={"token": token})
        sent.append(request.headers.get("authorization", ""))
        return httpx.Response(401, headers={"WWW-Authenticate": CHALLENGE})

    async with client_for(handler) as client:
        with pytest.raises(RegistryError, match="token service returned a malformed token") as info:
            await client.get_blob("r", DIGEST, len(BLOB))
    assert token not in str(info.value) and "good" not in str(info.value)
    one_printable_line(info.value)
    assert sent == [""]  # only the first, anonymous request: the token never left


@pytest.mark.parametrize(
    ("expires_in", "token_requests"),
    [(-100, 1), (10**300, 1), (10**400, 1), (float("nan"), 1), ("300", 1), (0, 1)],
    ids=["negative", "huge", "beyond-a-float", "nan", "numeric-string", "zero"],
)
async def test_odd_token_lifetimes_still_cache_the_token(expires_in: object, token_requests: int) -> None:
    """A negative, zero, huge or NaN ``expires_in`` neither crashes nor makes every request
    fetch a new token (NaN compared false with every deadline: a token per request)."""
    answer = json.dumps({"token": "good", "expires_in": expires_in}).encode()
    async with client_for(bearer(lambda request: httpx.Response(200, content=answer))) as client:
        for _ in range(3):
            assert await client.get_blob("r", DIGEST, len(BLOB)) == BLOB
    assert client.token_requests == token_requests


@pytest.mark.parametrize(
    "realm",
    ["ftp://auth.test/token", "/token", "token", "http://[::1/tok en", "ht tp://x y\x01\x1b[2J", "https://"],
    ids=["ftp", "relative", "bare-word", "bad-ipv6", "garbage-with-escapes", "no-host"],
)
async def test_a_realm_that_is_not_an_http_url_is_one_line(realm: str) -> None:
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(401, headers={"WWW-Authenticate": f'Bearer realm="{realm}",service="s"'})

    async with client_for(handler, credentials=Credentials("alice", "s3cret")) as client:
        with pytest.raises(RegistryError, match=r"realm .* is not an http\(s\) URL; cannot authenticate") as info:
            await client.get_blob("r", DIGEST, len(BLOB))
    one_printable_line(info.value)
    assert len(requests) == 1  # nothing sent anywhere else, the credentials included


async def test_a_realm_on_another_host_gets_the_credentials_like_docker() -> None:
    seen: dict[str, str | None] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "elsewhere.test":
            seen["realm"] = request.headers.get("authorization")
            return httpx.Response(200, json={"token": "good"})
        if request.headers.get("authorization") != "Bearer good":
            return httpx.Response(401, headers={"WWW-Authenticate": 'Bearer realm="http://elsewhere.test/t"'})
        return httpx.Response(200, content=BLOB)

    async with client_for(handler, credentials=Credentials("alice", "s3cret")) as client:
        assert await client.get_blob("r", DIGEST, len(BLOB)) == BLOB
    assert seen["realm"] is not None and seen["realm"].startswith("Basic ")


async def test_a_challenge_too_long_for_a_token_url_is_one_line() -> None:
    service = "s" * 90_000  # h11 takes headers up to 100 KiB; httpx refuses such a URL query

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            401, headers={"WWW-Authenticate": f'Bearer realm="https://auth.test/t",service="{service}"'}
        )

    async with client_for(handler) as client:
        with pytest.raises(RegistryError, match="cannot build a token request from the Bearer challenge") as info:
            await client.get_blob("r", DIGEST, len(BLOB))
    assert service not in one_printable_line(info.value)


# -- redirects -----------------------------------------------------------------------------


# -- what the registry says in error answers and headers -----------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"errors": [{"code": "DENIED\x1b[31m", "message": "no\x1b]0;pwned\x07\nocifs: error: forged\r\x1b[2J"}]},
        {"errors": [{"code": "UNKNOWN", "message": "m" * 30_000 + "\n"}]},
        {"errors": [{"code": "UNKNOWN", "message": "lone \ud800 surrogate", "detail": "\ud800\x00"}]},
    ],
    ids=["escapes-and-newline", "30k-message", "lone-surrogates"],
)
async def test_an_error_message_with_escapes_stays_one_short_printable_line(body: object) -> None:
    payload = json.dumps(body).encode()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, content=payload, headers={"Content-Type": "application/json"})

    async with client_for(handler) as client:
        with pytest.raises(RegistryError) as info:
            await client.get_manifest("r", "v1")
    text = one_printable_line(info.value)
    assert "\x1b" not in text and "\n" not in text and len(text) < 500


async def test_an_error_body_nested_too_deeply_is_one_line() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, content=b'{"errors":' + b"[" * 60_000)

    async with client_for(handler) as client:
        with pytest.raises(RegistryError, match="unexpected response") as info:
            await client.get_manifest("r", "v1")
    one_printable_line(info.value)


async def test_a_docker_content_digest_with_escapes_is_shown_escaped_or_ignored() -> None:
    manifest = json.dumps({"schemaVersion": 2, "mediaType": MEDIA_TYPE_MANIFEST}).encode()
    announced = "sha256:\x1b[31mevil\x07\nocifs: error: forged"

    def handler(request: httpx.Request) -> httpx.Response:
        headers = {"Docker-Content-Digest": announced, "Content-Type": MEDIA_TYPE_MANIFEST}
        return httpx.Response(200, content=manifest, headers=headers)

    async with client_for(handler) as client:
        # By tag a malformed announcement is no digest at all: the bytes' own digest is used.
        assert (await client.get_manifest("r", "v1")).digest == Digest.of_bytes(manifest)


# -- a scripted server on 127.0.0.1 (the fast path, h11, the CLI) -------------------------


Action = Callable[[socket.socket, str, str, dict[str, str]], None]


class ScriptedServer:
    """HTTP/1.1 on 127.0.0.1; ``action(sock, method, target, headers)`` answers each request
    (raw bytes, so it can send anything). Threads end when the client hangs up or at close."""

    def __init__(self, action: Action) -> None:
        self.action = action
        self.stop = threading.Event()
        self.requests: list[tuple[str, str]] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        with sock, sock.makefile("rb") as reader:
            try:
                while not self.stop.is_set():
                    line = reader.readline()
                    if not line:
                        return
                    method, target, _ = line.decode("latin-1").split(" ", 2)
                    headers: dict[str, str] = {}
                    while (header := reader.readline()) not in (b"\r\n", b"\n", b""):
                        name, _, value = header.decode("latin-1").partition(":")
                        headers[name.strip().lower()] = value.strip()
                    reader.read(int(headers.get("content-length", "0") or 0))
                    self.requests.append((method, target))
                    self.action(sock, method, target, headers)
            except (OSError, ValueError):
                return

    def close(self) -> None:
        self.stop.set()
        self._listener.close()

    # answers

    @staticmethod
    def send(sock: socket.socket, status: int, headers: dict[str, str] | None = None, body: bytes = b"") -> None:
        head = f"HTTP/1.1 {status} X\r\n" + "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        sock.sendall(head.encode("latin-1") + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)

    def endless(self, sock: socket.socket, status: int, headers: dict[str, str] | None = None) -> None:
        head = f"HTTP/1.1 {status} X\r\n" + "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        sock.sendall(head.encode("latin-1") + b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"10000\r\n" + b"A" * 65536 + b"\r\n"
        while not self.stop.is_set():
            sock.sendall(chunk)

    def silent(self, sock: socket.socket) -> None:
        self.stop.wait(60)


@pytest.fixture
def scripted() -> Iterator[Callable[[Action], ScriptedServer]]:
    servers: list[ScriptedServer] = []

    def start(action: Action) -> ScriptedServer:
        servers.append(ScriptedServer(action))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


BIG = bytes(range(256)) * (FAST_PATH_MIN_BYTES // 256 + 16)  # goes through the fast path


SMALL = BLOB  # goes through httpx


@pytest.mark.parametrize(
    ("blob", "location", "message", "requests"),
    [
        (SMALL, None, "too many redirects (a redirect loop?)", 21),
        (SMALL, "ftp://127.0.0.1/x", "sent to a URL that is not http(s)", 1),
        (SMALL, "http://[::1/x", "redirected to a malformed URL", 1),
        (BIG, None, "more than 5 redirects (a redirect loop?)", 6),
        (BIG, "ftp://127.0.0.1/x", "redirected to a URL that is not http(s)", 1),
        (BIG, "http://[::1/x", "redirected to a malformed URL", 1),
        (BIG, "http://127.0.0.1:99999999/x", "redirected to a malformed URL", 1),
    ],
    ids=["httpx-loop", "httpx-ftp", "httpx-bad-ipv6", "fast-loop", "fast-ftp", "fast-bad-ipv6", "fast-bad-port"],
)
async def test_redirects_that_lead_nowhere_are_one_error_not_retried(
    scripted: Callable[[Action], ScriptedServer], blob: bytes, location: str | None, message: str, requests: int
) -> None:
    """On httpx a loop was a RegistryUnavailable (which the fetcher retries) saying "check the
    network", a malformed Location a retried "connection broken". Blobs of 256 KiB or more go
    through ``http.client`` in threads, which follows redirects itself: a loop was retried as
    "connection broken (HTTPException)", a malformed Location escaped as a ValueError
    traceback, and ftp:// was fetched as http on port 80."""

    def action(sock: socket.socket, method: str, target: str, headers: dict[str, str]) -> None:
        ScriptedServer.send(sock, 307, {"Location": location or target})

    server = scripted(action)
    digest = Digest.of_bytes(blob)
    options = ClientOptions(retry=FAST, read_timeout=5)
    async with RegistryClient(server.address, options=options) as client:
        with pytest.raises(RegistryError) as info:
            await client.get_blob("r", digest, len(blob))
    text = one_printable_line(info.value)
    # Not RegistryUnavailable: the fetcher would retry it, and nothing about it is the network.
    assert not isinstance(info.value, RegistryUnavailable)
    assert f"{server.address}: blob {digest.short} failed: {message}" in text, text
    assert "misconfigured" in text and "network" not in text
    assert len(server.requests) == requests


def run_cli(tmp_path: Path, *args: str, stdin: str = "") -> Run:
    """``ocifs ARGS`` with a docker config of its own, its peak RSS measured and its address
    space capped so that a runaway read fails here instead of taking the machine down."""
    return run_measured(*args, stdin=stdin, env={"DOCKER_CONFIG": str(tmp_path / "docker")}, timeout=40)


def assert_one_line(run: Run, pattern: str) -> str:
    assert run.returncode == 1, run
    assert run.stderr.startswith("ocifs: error: ") and run.stderr.count("\n") == 1, run.stderr
    line = run.stderr.rstrip("\n")
    assert all(c.isprintable() for c in line), repr(line)
    assert re.search(pattern, line), line
    assert 0 < run.max_rss_mib < 100, f"peak RSS {run.max_rss_mib:.0f} MiB"
    return line


def test_cli_with_an_endless_token_service_is_one_line_in_bounded_memory(
    scripted: Callable[[Action], ScriptedServer], tmp_path: Path
) -> None:
    """Before: httpx read the token answer whole; h11 buffered it until MemoryError (2 GiB
    cap) and a traceback, or without a cap until the machine ran out."""

    def action(sock: socket.socket, method: str, target: str, headers: dict[str, str]) -> None:
        if target.startswith("/token"):
            server.endless(sock, 200, {"Content-Type": "application/json"})
        else:
            challenge = f'Bearer realm="http://{server.address}/token",service="s"'
            ScriptedServer.send(sock, 401, {"WWW-Authenticate": challenge})

    server = scripted(action)
    run = run_cli(tmp_path, "inspect", f"{server.address}/repo:v1", "--retries", "2", "--read-timeout", "5")
    assert_one_line(run, rf"{server.address}: the answer of token service 127\.0\.0\.1 is over the 1048576-byte limit$")
    assert run.seconds < 10


def test_cli_with_an_endless_redirect_body_is_one_line_in_bounded_memory(
    scripted: Callable[[Action], ScriptedServer], tmp_path: Path
) -> None:
    def action(sock: socket.socket, method: str, target: str, headers: dict[str, str]) -> None:
        server.endless(sock, 307, {"Location": target + "x"})

    server = scripted(action)
    run = run_cli(tmp_path, "inspect", f"{server.address}/repo:v1", "--retries", "2", "--read-timeout", "5")
    assert_one_line(run, r"manifest v1 failed: too many redirects \(a redirect loop\?\)")
    assert run.seconds < 10


@pytest.mark.parametrize("command", ["inspect", "login"])
def test_cli_against_a_server_that_never_answers_ends_within_the_read_timeouts(
    scripted: Callable[[Action], ScriptedServer], tmp_path: Path, command: str
) -> None:
    """The connection is accepted and nothing ever comes (manifest GET; ``/v2/`` for login):
    each attempt is abandoned after ``--read-timeout``; the command ends after ``--retries``."""
    server = scripted(lambda sock, method, target, headers: server.silent(sock))
    target = f"{server.address}/repo:v1" if command == "inspect" else server.address
    extra = ["-u", "alice", "--password-stdin"] if command == "login" else []
    run = run_cli(tmp_path, command, target, *extra, "--retries", "2", "--read-timeout", "1", stdin="pw\n")
    what = "manifest v1" if command == "inspect" else r"API check \(GET /v2/\)"
    assert_one_line(run, rf"{server.address}: {what} failed: timed out")
    assert 2 <= run.seconds < 8
    assert len(server.requests) == 2
    assert not (tmp_path / "docker" / "config.json").exists()


def test_cli_prints_a_hostile_error_message_as_one_printable_line(
    scripted: Callable[[Action], ScriptedServer], tmp_path: Path
) -> None:
    """Before: the ``message`` of an OCI error went out raw: a forged second line, a window
    title and a cleared screen."""
    message = "denied\x1b]0;pwned\x07\x1b[2J\nocifs: error: forged line\r\x1b[31m"
    body = json.dumps({"errors": [{"code": "DENIED\x1b[5m", "message": message}]}).encode()

    def action(sock: socket.socket, method: str, target: str, headers: dict[str, str]) -> None:
        ScriptedServer.send(sock, 400, {"Content-Type": "application/json"}, body)

    server = scripted(action)
    run = run_cli(tmp_path, "inspect", f"{server.address}/repo:v1", "--retries", "2", "--read-timeout", "5")
    assert_one_line(run, r"repo: manifest v1: DENIED .*denied .*ocifs: error: forged line")
    assert "\x1b" not in run.stderr and "\r" not in run.stderr
