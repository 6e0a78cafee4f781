"""An ``httpx.MockTransport`` handler served over real sockets, for the threaded transport.

The in-memory tests describe a registry as a handler (``httpx.Request`` → ``httpx.Response``).
httpx calls it in memory; the threaded transport (``http.client`` in worker threads) needs a
socket, so :class:`Loopback` serves the same handler from a thread on 127.0.0.1 and hands the
client a :class:`~ocifs.registry.blobio.FastBlobReader` whose connections to *any* origin
reach it (``Host`` still names the origin, so the handler sees the URL the client meant).
A handler that raises makes the server drop the connection without an answer; if what it
raised was caused by an ``OSError`` (as httpx wraps a failed ``socket()``), the threaded
transport's connection raises that ``OSError``, as the socket would have.
"""

from __future__ import annotations

import http.client
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from ocifs.registry.blobio import FastBlobReader, Origin

Handler = Callable[[httpx.Request], httpx.Response]
#: Socket buffer size asked for on both ends (Linux doubles it).
_BUFFER = 4096


def _sync_pieces(stream: Any) -> Iterator[bytes]:
    """The pieces of an httpx response stream, sync or async (test streams never await I/O,
    so an async generator is driven by hand)."""
    if isinstance(stream, httpx.SyncByteStream):
        yield from stream
        return
    agen: AsyncIterator[bytes] = stream.__aiter__()
    while True:
        step = agen.__anext__()
        try:
            step.send(None)
        except StopIteration as done:
            yield done.value
        except StopAsyncIteration:
            return
        else:  # it awaited something: not a test stream this helper can drive
            step.close()
            raise RuntimeError("the stream awaits; Loopback cannot serve it")


class Loopback:
    """Serves ``handler`` on two loopback ports: one stands for every ``http`` origin, the other
    (plain text too) for every ``https`` one. Use as a context manager."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests = 0
        # The OSError behind a handler's exception, by the client's local port, until that
        # connection notices its answer is missing.
        self._causes: dict[int, OSError] = {}
        self._servers = {scheme: self._server(scheme) for scheme in ("http", "https")}

    def _server(self, scheme: str) -> ThreadingHTTPServer:
        owner = self

        class Serve(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                # Small buffers: what a handler's stream yields is what the client read, give or
                # take a piece, not what the kernel buffered on the loopback (megabytes).
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _BUFFER)

            def handle_one_request(self) -> None:
                self.raw_requestline = self.rfile.readline(65537)
                if not self.raw_requestline or not self.parse_request():
                    self.close_connection = True
                    return
                owner.requests += 1
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                url = f"{scheme}://{self.headers.get('host', 'registry.test')}{self.path}"
                request = httpx.Request(self.command, url, headers=list(self.headers.items()), content=body)
                try:
                    response = owner.handler(request)
                except Exception as exc:  # the handler's way of saying "the connection breaks"
                    if isinstance(exc.__cause__, OSError):
                        owner._causes[self.client_address[1]] = exc.__cause__
                    self.close_connection = True
                    return
                self._answer(response)

            def _answer(self, response: httpx.Response) -> None:
                reason = response.reason_phrase or "-"
                head = [f"HTTP/1.1 {response.status_code} {reason}"]
                head += [f"{name}: {value}" for name, value in response.headers.multi_items()]
                if "content-length" not in response.headers and "transfer-encoding" not in response.headers:
                    self.close_connection = True  # the body ends with the connection
                self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
                if self.command == "HEAD":
                    return
                sent = 0
                try:
                    for piece in _sync_pieces(response.stream):
                        self.wfile.write(piece)
                        sent += len(piece)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True
                    return
                announced = response.headers.get("content-length")
                if announced is not None and announced.isdigit() and int(announced) != sent:
                    self.close_connection = True  # a body cut short (or too long): the connection ends

        server = ThreadingHTTPServer(("127.0.0.1", 0), Serve)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    def connect(self, origin: Origin, timeout: float) -> http.client.HTTPConnection:
        """A connection that speaks to ``origin`` (Host, target) but reaches this server."""
        scheme, host, port = origin
        return _Connection(self, self._servers[scheme].server_address[:2], host, port, timeout=timeout)

    def cause_for(self, local_port: int) -> OSError | None:
        return self._causes.pop(local_port, None)

    def reader(self, base_url: str = "http://registry.test") -> FastBlobReader:
        """A reader that takes every blob body, however small, through this server."""
        return FastBlobReader(base_url, True, 5.0, min_bytes=1, connector=self.connect)

    def close(self) -> None:
        for server in self._servers.values():
            server.shutdown()
            server.server_close()

    def __enter__(self) -> Loopback:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Connection(http.client.HTTPConnection):
    """An ``http.client`` connection to an origin that reaches a :class:`Loopback` instead."""

    def __init__(self, loopback: Loopback, address: tuple[str, int], host: str, port: int, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._loopback = loopback
        self._address = address
        self._local_port = 0

    def connect(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _BUFFER)  # before connect: the window
        sock.settimeout(self.timeout)
        sock.connect(self._address)
        self.sock = sock
        self._local_port = sock.getsockname()[1]

    def getresponse(self) -> http.client.HTTPResponse:
        try:
            return super().getresponse()
        except (http.client.RemoteDisconnected, ConnectionError):
            cause = self._loopback.cause_for(self._local_port)
            if cause is not None:
                raise cause from None
            raise


# -- both transports, every test ------------------------------------------------------------------

#: Which transport carries blob bodies in the current test: ``httpx`` (every byte on the
#: MockTransport) or ``threaded`` (blob GETs and uploads through the threaded transport, served
#: from the same handler over loopback sockets by :class:`Loopback`).
_MODE: dict[str, str] = {}
_OPEN: list[Loopback] = []


@pytest.fixture(autouse=True, params=["httpx", "threaded"])
def blob_transport(request: pytest.FixtureRequest) -> Iterator[str]:
    """Runs every test of a module that imports it twice, once per blob transport."""
    _MODE["mode"] = request.param
    yield request.param
    while _OPEN:
        _OPEN.pop().close()


def fast_reader(handler: Callable[[httpx.Request], httpx.Response]) -> FastBlobReader | None:
    """The threaded transport's reader for ``handler`` in this test's mode (None: httpx only)."""
    if _MODE.get("mode") != "threaded":
        return None
    loopback = Loopback(handler)
    _OPEN.append(loopback)
    return loopback.reader()
