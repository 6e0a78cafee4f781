"""A fast path for blob bodies: plain ``http.client`` in worker threads.

Why: httpx on trio parses bodies in the event-loop thread through h11 with several copies per
byte; measured here it costs 0.9–3.9 CPU-s per GiB and caps a cold mount near a third of what
curl gets, while ``http.client`` reading a Content-Length body straight into one ``bytes``
object in a worker thread costs ~0.4 CPU-s per GiB and leaves the trio thread free
(docs/platform.md, "Measured on the reference machine"; docs/architecture.md "The data path").

Contract: :class:`ThreadedTransport` is a :class:`~ocifs.registry.transport.Transport` for
blob GETs and monolithic upload PUTs of at least :data:`FAST_PATH_MIN_BYTES`; each attempt is
one :meth:`FastBlobReader.get`/``put`` in a worker thread that reports the outcome without
raising, and the request engine applies the same retry policy, auth and error messages to it as
to the general transport. Redirects are followed here, with ``Authorization`` dropped for any
other origin (the rule httpx applies). With a proxy configured in the environment this
transport carries nothing (everything goes through httpx, which honours the proxy).
"""

from __future__ import annotations

import dataclasses
import functools
import http.client
import logging
import ssl
import threading
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urljoin, urlsplit

import trio

from ocifs.errors import FD_EXHAUSTION
from ocifs.registry.tls import default_context
from ocifs.registry.transport import (
    UPLOAD_SLICE,
    Answer,
    BodyLengthError,
    ClientStats,
    RedirectError,
    Request,
    SizeMismatch,
    content_range_total,
    excess_read_limit,
    host_name,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

# Idle keep-alive connections kept per client; more are opened when more threads read at once.
_MAX_IDLE = 32
# Of an error body, this much is read for the message.
_EXCERPT = 64 * 1024
# Bodies at least this large go through the threaded transport; below it the thread hand-off
# costs more than httpx's parsing.
FAST_PATH_MIN_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class FastResponse:
    """What one fast-path GET produced: ``data`` on success, else status/headers/body or ``error``."""

    status: int
    headers: dict[str, str]
    data: bytes | None = None
    body: bytes = b""
    error: BaseException | None = None
    host: str | None = None  # the redirect target on another origin that answered, if one did


Origin = tuple[str, str, int]  # scheme, host, port
#: Opens a connection to an origin (tests hand in one that reaches an in-memory server).
Connector = Callable[[Origin, float], http.client.HTTPConnection]

# Registries backed by object storage (Docker Hub, ECR, GHCR, S3-backed distribution) answer
# blob GETs with a redirect to a signed URL on another host; follow a few, like httpx does.
_MAX_REDIRECTS = 5


class ThreadedTransport:
    """Large blob bodies on :class:`FastBlobReader` in worker threads (see the module docstring)."""

    def __init__(self, reader: FastBlobReader, stats: ClientStats) -> None:
        self.reader = reader
        self._stats = stats

    def carries(self, request: Request[Any]) -> bool:
        return (
            self.reader.enabled
            and request.size is not None
            and request.size >= self.reader.min_bytes
            and (request.method == "GET" or (request.method == "PUT" and request.content is not None))
        )

    async def aclose(self) -> None:
        self.reader.close()

    async def send(self, request: Request[T], headers: Mapping[str, str], excerpt: Callable[[int], bool]) -> Answer[T]:
        reader, size = self.reader, request.size or 0
        if request.method == "PUT" and request.content is not None:
            attempt = functools.partial(reader.put, request.url, headers, request.content, request.expected)
        else:
            attempt = functools.partial(reader.get, request.url, headers, size, offset=request.offset)
        outcome = await trio.to_thread.run_sync(attempt, abandon_on_cancel=True)
        if outcome.data is not None:
            if request.method == "GET":
                self._stats.fast_gets += 1
            else:
                self._stats.fast_puts += 1
            return Answer(outcome.status, outcome.headers, value=outcome.data, accepted=True)
        if isinstance(outcome.error, http.client.LineTooLong) or _too_many_headers(outcome.error):
            # An answer head http.client will not parse (a header line over 64 KiB, over 100
            # headers) that httpx takes (up to 100 KiB): the general transport reads it.
            return Answer(0, {}, declined=True)
        if outcome.error is not None:
            return Answer(0, {}, error=outcome.error)
        # An answer the request accepts but this transport does not read (a 200 with the whole
        # blob to a Range request, as a registry may send): the general transport reads it.
        declined = outcome.status in request.expected
        return Answer(outcome.status, outcome.headers, body=outcome.body, declined=declined, storage_host=outcome.host)


class FastBlobReader:
    """Blob GETs on pooled ``http.client`` connections; thread-safe, blocking (call in threads)."""

    def __init__(
        self,
        base_url: str,
        verify: ssl.SSLContext | bool,
        timeout: float,
        *,
        min_bytes: int = FAST_PATH_MIN_BYTES,
        connector: Connector | None = None,
    ) -> None:
        """``min_bytes``: smaller bodies stay on httpx. ``connector``: how a connection to an
        origin is opened (default: TCP, TLS for https, with ``verify``)."""
        parts = urlsplit(base_url)
        self.min_bytes = min_bytes
        self._connector = connector
        self._origin = _origin_of(parts.scheme, parts.hostname or "", parts.port)
        self._timeout = timeout
        # The client's one TLS configuration (ocifs.registry.tls); a bool (tests) is the system
        # store, or no verification for False, as tls.py builds them.
        self._context = verify if isinstance(verify, ssl.SSLContext) else default_context(verified=verify)
        self._idle: dict[Origin, list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()
        self.enabled = not _proxied(parts.scheme, self._origin[1])

    def get(self, path: str, headers: Mapping[str, str], expected: int, *, offset: int | None = None) -> FastResponse:
        """GET ``path`` on the registry and report what happened; never raises for network or HTTP trouble.

        Redirects are followed; ``Authorization`` goes only to the registry's own origin.
        ``offset``: the request is for a range (a ``Range`` header) starting there; a registry
        may answer it with the whole blob (200: ``Range`` is a SHOULD), which is then read up to
        the range's end and sliced. ``data`` is set only when the answer has exactly
        ``expected`` bytes (of the range); otherwise ``status`` (0 if no response), ``headers`` and a body
        excerpt, or ``error`` for a transport failure, let the caller decide (retry, redo an
        auth challenge on httpx, or report).
        """
        origin, target = self._origin, path
        send = {**headers, "Accept-Encoding": "identity"}
        for _ in range(_MAX_REDIRECTS + 1):
            outcome, location = self._get_once(origin, target, send, expected, offset)
            if location is None:
                if origin != self._origin:
                    outcome = dataclasses.replace(outcome, host=host_name(*origin))
                return outcome
            try:
                parts = urlsplit(urljoin(_url(origin, target), location))
                next_origin = _origin_of(parts.scheme, parts.hostname or "", parts.port)
            except ValueError:  # a bad port or IPv6 literal
                return FastResponse(0, {}, error=RedirectError("redirected to a malformed URL"))
            if parts.scheme not in ("http", "https") or not parts.hostname:
                return FastResponse(0, {}, error=RedirectError("redirected to a URL that is not http(s)"))
            if next_origin != origin:
                # Never hand the registry's credentials to a redirect target elsewhere.
                send = {k: v for k, v in send.items() if k.lower() != "authorization"}
            origin = next_origin
            target = parts.path + (f"?{parts.query}" if parts.query else "")
        return FastResponse(0, {}, error=RedirectError(f"more than {_MAX_REDIRECTS} redirects (a redirect loop?)"))

    def _get_once(
        self, origin: Origin, target: str, headers: Mapping[str, str], expected: int, offset: int | None
    ) -> tuple[FastResponse, str | None]:
        partial = offset is not None
        conn = self._take(origin)
        try:
            conn.request("GET", target, headers=dict(headers))
            response = conn.getresponse()
            found = {k.lower(): v for k, v in response.getheaders()}
            length = found.get("content-length")
            if response.status in (301, 302, 303, 307, 308) and found.get("location"):
                response.read(_EXCERPT)
                self._release(origin, conn, response)
                return FastResponse(response.status, found), found["location"]
            if response.status == (206 if partial else 200):
                if length is not None and length.isdigit() and int(length) == expected:
                    data = response.read()  # a Content-Length body: one allocation, filled in place
                    self._release(origin, conn, response)
                    return FastResponse(response.status, found, data=data), None
                # Another length, or none (chunked): read it to tell a complete body of another
                # size (permanent) from one cut short (the network; retried).
                total = content_range_total(found.get("content-range")) if partial else None
                try:
                    other, error = _read_other_length(response, expected, length, total)
                finally:
                    conn.close()
                return FastResponse(response.status, found, data=other, error=error), None
            if partial and response.status == 200:
                try:
                    other, error = _read_range_of_whole(response, offset or 0, expected, length)
                finally:
                    conn.close()  # the rest of the blob is not read
                return FastResponse(response.status, found, data=other, error=error), None
            body = response.read(_EXCERPT) if response.status >= 400 else b""
            conn.close()
            return FastResponse(response.status, found, body=body), None
        except http.client.IncompleteRead as exc:
            conn.close()
            error = BodyLengthError(f"body ended after {len(exc.partial)} of {expected} bytes")
            return FastResponse(0, {}, error=error), None
        except (OSError, http.client.HTTPException, ValueError) as exc:
            return self._failed(conn, exc), None

    def put(self, url: str, headers: Mapping[str, str], body: bytes, ok: tuple[int, ...]) -> FastResponse:
        """PUT ``body`` to ``url`` (an upload session's absolute URL); never raises for network or
        HTTP trouble. ``data`` is ``b""`` when the answer's status is in ``ok``; otherwise
        ``status``/``headers``/``body`` or ``error`` describe the failure, as for :meth:`get`.

        The body goes out in :data:`UPLOAD_SLICE` writes straight from ``body`` (no copy, each
        slice under the socket timeout); ``Authorization`` only to the registry's origin;
        redirects are not followed (the caller reports them). Not resent: a failed PUT may have
        reached the registry, and only the caller knows how to check (HEAD the blob).
        """
        parts = urlsplit(url)
        origin = _origin_of(parts.scheme, parts.hostname or "", parts.port)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        send = dict(headers)
        if origin != self._origin:
            send = {k: v for k, v in send.items() if k.lower() != "authorization"}
        conn = self._take(origin)
        try:
            conn.putrequest("PUT", target, skip_accept_encoding=True)
            for name, value in send.items():
                conn.putheader(name, value)
            conn.putheader("Content-Length", str(len(body)))
            conn.endheaders()
            with memoryview(body) as view:
                for start in range(0, len(view), UPLOAD_SLICE):
                    conn.send(view[start : start + UPLOAD_SLICE])
            response = conn.getresponse()
            found = {k.lower(): v for k, v in response.getheaders()}
            if response.status in ok:
                response.read(_EXCERPT)
                self._release(origin, conn, response)
                return FastResponse(response.status, found, data=b"")
            excerpt = response.read(_EXCERPT) if response.status >= 400 else b""
            conn.close()
            return FastResponse(response.status, found, body=excerpt)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            return self._failed(conn, exc)

    def _failed(self, conn: http.client.HTTPConnection, exc: BaseException) -> FastResponse:
        """A transport failure of one request: drop its connection and report ``exc``."""
        conn.close()
        if isinstance(exc, OSError) and exc.errno in FD_EXHAUSTION:
            self.close()  # idle keep-alive sockets hold descriptors the process is short of
        return FastResponse(0, {}, error=exc)

    def idle_connections(self) -> int:
        """How many keep-alive connections wait in the pool (tests check reuse and release)."""
        with self._lock:
            return sum(len(pool) for pool in self._idle.values())

    def close(self) -> None:
        """Close the idle connections (requests in flight keep theirs)."""
        with self._lock:
            pools, self._idle = self._idle, {}
        for pool in pools.values():
            for conn in pool:
                conn.close()

    def _take(self, origin: Origin) -> http.client.HTTPConnection:
        with self._lock:
            pool = self._idle.get(origin)
            if pool:
                return pool.pop()
        if self._connector is not None:
            return self._connector(origin, self._timeout)
        scheme, host, port = origin
        if scheme == "https":
            return http.client.HTTPSConnection(host, port, timeout=self._timeout, context=self._context)
        return http.client.HTTPConnection(host, port, timeout=self._timeout)

    def _release(self, origin: Origin, conn: http.client.HTTPConnection, response: http.client.HTTPResponse) -> None:
        if response.will_close or not response.isclosed():
            conn.close()
            return
        with self._lock:
            pool = self._idle.setdefault(origin, [])
            if len(pool) < _MAX_IDLE:
                pool.append(conn)
                return
        conn.close()


def _read_other_length(
    response: http.client.HTTPResponse, expected: int, length: str | None, total: int | None
) -> tuple[bytes | None, BaseException | None]:
    """Read a body whose ``Content-Length`` is not ``expected`` (or that has none), within
    :func:`excess_read_limit`: the bytes if it turns out to be ``expected`` long after all (a
    chunked body), :class:`SizeMismatch` if it is complete, :class:`BodyLengthError` if it was
    cut short (http.client's reads in pieces return ``b""`` there rather than raise)."""
    announced = int(length) if length is not None and length.isdigit() else None
    limit = expected + excess_read_limit(expected)
    if announced is not None and announced > limit:
        return None, SizeMismatch(announced, expected, total=total)  # not worth reading to its end
    kept = bytearray()
    seen = 0
    while seen <= limit:
        piece = response.read(min(1 << 20, limit + 1 - seen))
        if not piece:
            break
        if seen < expected:
            kept += piece[: expected - seen]
        seen += len(piece)
    if announced is not None and seen < announced:
        return None, BodyLengthError(f"body ended after {seen} of {announced} bytes")
    if seen > limit:
        return None, SizeMismatch(limit, expected, more=True, total=total)
    if seen == expected:
        return bytes(kept), None
    return None, SizeMismatch(seen, expected, total=total)


def _too_many_headers(error: BaseException | None) -> bool:
    return isinstance(error, http.client.HTTPException) and str(error).startswith("got more than")


def _read_range_of_whole(
    response: http.client.HTTPResponse, offset: int, expected: int, length: str | None
) -> tuple[bytes | None, BaseException | None]:
    """Bytes ``[offset, offset + expected)`` of a whole blob sent for a range request, reading
    no further than that; :class:`SizeMismatch` if the complete blob ends before it,
    :class:`BodyLengthError` if the body was cut short of its ``Content-Length``."""
    end = offset + expected
    kept = bytearray()
    seen = 0
    while seen < end:
        piece = response.read(min(1 << 20, end - seen))
        if not piece:
            break
        if seen + len(piece) > offset:
            kept += piece[max(0, offset - seen) :]
        seen += len(piece)
    if seen >= end:
        return bytes(kept), None
    announced = int(length) if length is not None and length.isdigit() else None
    if announced is not None and seen < announced:
        return None, BodyLengthError(f"body ended after {seen} of {announced} bytes")
    return None, SizeMismatch(seen, end, total=seen)


def _origin_of(scheme: str, host: str, port: int | None) -> Origin:
    return scheme, host, port or (443 if scheme == "https" else 80)


def _url(origin: Origin, target: str) -> str:
    scheme, host, port = origin
    return f"{scheme}://{host}:{port}{target}"


def _proxied(scheme: str, host: str) -> bool:
    """Whether the environment routes this host through a proxy (then only httpx is used)."""
    proxies = urllib.request.getproxies()
    if not (proxies.get(scheme) or proxies.get("all")):
        return False
    return not urllib.request.proxy_bypass(host)
