"""A fault-injecting HTTP/1.1 reverse proxy for tests: ocifs → proxy → the real registry.

Owns: two loopback listeners run by one asyncio loop in a background thread — the *proxy*
(127.0.0.1, a port the kernel picks) that clients use as if it were the registry, and a
*redirect target* (127.0.0.2, another host as far as any client can tell) that serves the same
content, standing in for the CDN or object store a registry redirects blob GETs to. Both forward
to the upstream registry; nothing is rewritten unless a :class:`Rule` the test added matches.
Every request is recorded (:class:`Record`) so tests can count attempts and check headers.

Must not: listen anywhere but loopback, log above DEBUG (the suite fails tests that log
unexpected warnings), or know anything about ocifs — it speaks HTTP/1.1 only.

HTTP handling: keep-alive on both sides, one upstream connection per client connection (opened
lazily, reopened after the registry closes it), bodies framed by ``Content-Length``,
``Transfer-Encoding: chunked`` (decoded, faults applied to the payload, re-chunked) or, for
responses, connection close. The ``Host`` header is forwarded unchanged, so the registry builds
upload ``Location`` URLs that point back at the proxy.

Faults (each the ``fault`` of a :class:`Rule` that matches method + path regex, with a count,
a number of matches to let through first, and a probability drawn from a seeded RNG):

========================  ====================================================================
:class:`Reset`            TCP RST after N body bytes (response or request side), or at once
:class:`Stall`            stop sending (or reading) after N bytes for T seconds or until the
                          client gives up or the proxy closes, holding the connection open
:class:`Status`           answer a status (500/502/503 bursts, 429 + ``Retry-After`` via
                          :func:`too_many_requests`, any canned body) without forwarding — or
                          after forwarding (the registry acted, its answer is lost)
:class:`Truncate`         full ``Content-Length`` announced, connection closed (FIN) after N
:class:`Flip`             XOR one byte of the response body at offset K
:class:`WrongLength`      announce ``Content-Length`` + delta, send the real body, close
:class:`Slow`             rate-limit the response body, or the reading of the request body
:class:`Redirect`         307 to the same path on the redirect target (a different host)
========================  ====================================================================

Usage::

    with FaultProxy(registry.host) as proxy:
        proxy.add(Status(503), method="GET", path=r"/blobs/", times=2)
        ...  # point the client at proxy.host
        assert proxy.count("GET", r"/blobs/") == 3
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import random
import re
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

log = logging.getLogger(__name__)

Side = Literal["response", "request"]

# asyncio's StreamReader stops reading from the socket once this many bytes are buffered (x2),
# which keeps a Slow(on="request") throttle close to its rate; heads up to this size are read.
_STREAM_LIMIT = 64 * 1024
_PIECE = 64 * 1024
# A throttled body is written in slices this long (in seconds of its rate).
_SLOW_TICK = 0.02


# -- faults ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reset:
    """Reset the client connection (RST) once ``after`` body bytes have been passed on.

    ``on="response"``: after ``after`` bytes of the response body (0: right after the head);
    ``after=None``: at once, before forwarding the request (no response at all).
    ``on="request"``: after ``after`` bytes of the *request* body reached the registry (an
    upload cut mid-body); the upstream connection is dropped too.
    """

    after: int | None = 0
    on: Side = "response"


@dataclass(frozen=True, slots=True)
class Stall:
    """Stop sending after ``after`` response-body bytes (``None``: before the response head,
    before forwarding) for ``seconds`` (``None``: until the client hangs up or the proxy closes).
    After a finite stall the exchange continues normally.

    ``on="request"``: stop *reading* the request body after ``after`` bytes (the client's send
    blocks); only a timeout or the proxy closing ends it.
    """

    after: int | None = 0
    seconds: float | None = None
    on: Side = "response"


@dataclass(frozen=True, slots=True)
class Status:
    """Answer ``code`` with ``headers`` and ``body`` (default: an OCI error JSON naming the fault).

    ``forward=False``: the request is not forwarded (its body is read and dropped), as a
    failing load balancer would. ``forward=True``: the registry handles the request and its
    answer is replaced — the "it worked but the reply was lost" case.
    """

    code: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | None = None
    forward: bool = False


@dataclass(frozen=True, slots=True)
class Truncate:
    """Send the full ``Content-Length`` but close the connection (FIN) after ``after`` body bytes."""

    after: int


@dataclass(frozen=True, slots=True)
class Flip:
    """XOR the response body byte at ``offset`` with ``mask`` (bodies shorter than that pass)."""

    offset: int = 0
    mask: int = 0x01


@dataclass(frozen=True, slots=True)
class WrongLength:
    """Announce ``Content-Length`` = real length + ``delta``, send the real body, then close."""

    delta: int


@dataclass(frozen=True, slots=True)
class Slow:
    """Pass the body at ``rate`` bytes per second: the response body, or (``on="request"``)
    the request body, by reading it no faster (the client's send blocks)."""

    rate: float
    on: Side = "response"


@dataclass(frozen=True, slots=True)
class Redirect:
    """Answer ``status`` with ``Location`` = the same path and query on the redirect target;
    ``signature`` adds ``X-Amz-Signature=<signature>`` to its query, as an object store's
    pre-signed URL carries a credential there."""

    status: int = 307
    signature: str | None = None


Fault: TypeAlias = Reset | Stall | Status | Truncate | Flip | WrongLength | Slow | Redirect


def too_many_requests(retry_after: str | float = 1) -> Status:
    """HTTP 429 with ``Retry-After`` (seconds, or an HTTP-date string) and distribution's error body."""
    value = retry_after if isinstance(retry_after, str) else f"{retry_after:g}"
    body = json.dumps({"errors": [{"code": "TOOMANYREQUESTS", "message": "injected fault: too many requests"}]})
    return Status(429, headers={"Retry-After": value}, body=body.encode())


def describe(fault: Fault) -> str:
    """A short name for records and messages, e.g. ``Status(503)``."""
    if isinstance(fault, Status):
        return f"Status({fault.code}{', forward' if fault.forward else ''})"
    return repr(fault)


# -- rules and records -------------------------------------------------------------------------


@dataclass(slots=True)
class Rule:
    """When to apply ``fault``: requests to ``listener`` whose method equals ``method`` (any if
    None, case-insensitive) and whose target (path and query) ``path`` matches (``re.search``).

    Of the matching requests, the first ``skip`` pass untouched, then each fires with
    ``probability`` until the rule has fired ``times`` times (``None``: no limit).
    ``matched`` and ``fired`` count what happened (read them from the test).
    """

    fault: Fault
    method: str | None = None
    path: str = ""
    times: int | None = 1
    skip: int = 0
    probability: float = 1.0
    listener: str = "proxy"
    matched: int = 0
    fired: int = 0
    _regex: re.Pattern[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._regex = re.compile(self.path)

    def applies(self, listener: str, method: str, target: str) -> bool:
        return (
            listener == self.listener
            and (self.method is None or self.method.upper() == method)
            and self._regex.search(target) is not None
        )

    @property
    def exhausted(self) -> bool:
        return self.times is not None and self.fired >= self.times


@dataclass(slots=True)
class Record:
    """One request as the proxy saw it.

    ``target`` is the request target (path and query); ``headers`` the client's request headers
    (lower-case names; repeated ones joined by ", "); ``fault`` the fault applied, if any;
    ``status`` the status sent back (None when the client got no response head);
    ``request_bytes`` the request-body bytes received from the client; ``response_bytes`` the
    response-body bytes sent to it.
    """

    listener: str
    method: str
    target: str
    headers: dict[str, str]
    time: float
    fault: str | None = None
    status: int | None = None
    request_bytes: int = 0
    response_bytes: int = 0

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]


class _Abort(Exception):
    """End this connection quietly (a fault fired, or a peer went away)."""


# -- the proxy ---------------------------------------------------------------------------------


class FaultProxy:
    """The proxy and its redirect target (see the module docstring). A context manager.

    ``upstream`` is ``host:port`` of the registry. ``redirect_authorization``, if set, is sent
    upstream by the redirect target *instead of* anything the client sent (the target plays a
    pre-signed URL: it needs no credentials from the client). ``on_request`` is called on the
    proxy's thread with each :class:`Record` as soon as its head is parsed (e.g. to kill the
    client at the Nth request). ``seed`` drives :attr:`Rule.probability`.

    Attributes once started: ``host`` ("127.0.0.1:PORT"), ``url``, ``redirect_host``,
    ``errors`` (unexpected internal exceptions; tests assert it stays empty).
    """

    def __init__(
        self,
        upstream: str,
        *,
        seed: int = 0,
        redirect_authorization: str | None = None,
        on_request: Callable[[Record], None] | None = None,
    ) -> None:
        host, _, port = upstream.rpartition(":")
        self.upstream = (host, int(port))
        self.redirect_authorization = redirect_authorization
        self.on_request = on_request
        self.errors: list[str] = []
        self.host = ""
        self.redirect_host = ""
        self._rng = random.Random(seed)
        self._rules: list[Rule] = []
        self._records: list[Record] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- control (test thread) -----------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def start(self) -> FaultProxy:
        """Bind both listeners and serve in a daemon thread; returns once they accept."""
        self._thread = threading.Thread(target=self._run, name="fault-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fault proxy did not start within 10 s")
        if self._start_error is not None:
            raise RuntimeError(f"fault proxy could not listen: {self._start_error}")
        return self

    def close(self) -> None:
        """Stop accepting, end every connection (stalled ones too) and join the thread. Idempotent."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(stopping.set)
        thread.join(10)
        if thread.is_alive():
            raise RuntimeError("fault proxy thread did not stop within 10 s")

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(
        self,
        fault: Fault,
        *,
        method: str | None = None,
        path: str = "",
        times: int | None = 1,
        skip: int = 0,
        probability: float = 1.0,
        listener: str = "proxy",
    ) -> Rule:
        """Add a rule (checked after the ones added before it) and return it."""
        rule = Rule(fault, method, path, times, skip, probability, listener)
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear(self) -> None:
        """Remove every rule (records stay)."""
        with self._lock:
            self._rules.clear()

    def records(self, method: str | None = None, path: str | None = None, listener: str = "proxy") -> list[Record]:
        """The requests seen by ``listener``, oldest first, filtered like a :class:`Rule`."""
        regex = re.compile(path) if path is not None else None
        with self._lock:
            records = list(self._records)
        return [
            r
            for r in records
            if r.listener == listener
            and (method is None or r.method == method.upper())
            and (regex is None or regex.search(r.target) is not None)
        ]

    def count(self, method: str | None = None, path: str | None = None, listener: str = "proxy") -> int:
        return len(self.records(method, path, listener))

    def reset_records(self) -> None:
        with self._lock:
            self._records.clear()

    # -- the loop (proxy thread) ---------------------------------------------------------------

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to the test through errors
            self.errors.append(f"proxy loop died: {exc!r}")
            self._start_error = self._start_error or exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        servers: list[asyncio.Server] = []
        try:
            for listener, address in (("proxy", "127.0.0.1"), ("redirect", "127.0.0.2")):
                server = await asyncio.start_server(
                    functools.partial(self._serve_connection, listener),
                    address,
                    0,  # the kernel picks a free port: no race with other tests
                    limit=_STREAM_LIMIT,
                    backlog=512,
                )
                servers.append(server)
                port = server.sockets[0].getsockname()[1]
                if listener == "proxy":
                    self.host = f"{address}:{port}"
                else:
                    self.redirect_host = f"{address}:{port}"
        except OSError as exc:
            self._start_error = exc
            for server in servers:
                server.close()
            self._ready.set()
            return
        self._ready.set()
        await self._stopping.wait()
        for server in servers:
            server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for server in servers:
            await server.wait_closed()

    async def _serve_connection(
        self, listener: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        # With no buffer above zero, drain() returns only once the kernel has every byte: a
        # Reset then really comes after the bytes it promises.
        writer.transport.set_write_buffer_limits(high=0)
        conn = _Connection(reader, writer, self.upstream)
        try:
            while await self._exchange(listener, conn):
                pass
        except (_Abort, ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        except asyncio.CancelledError:
            pass  # the proxy is closing; the connection goes with it
        except Exception as exc:  # a proxy bug must fail the test, not the thread
            log.debug("fault proxy: unexpected error", exc_info=True)
            self.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            conn.close()
            self._tasks.discard(task)

    def _match(self, record: Record) -> Fault | None:
        with self._lock:
            self._records.append(record)
            chosen: Fault | None = None
            for rule in self._rules:
                if not rule.applies(record.listener, record.method, record.target):
                    continue
                rule.matched += 1
                if rule.exhausted or rule.matched <= rule.skip:
                    continue
                if rule.probability < 1.0 and self._rng.random() >= rule.probability:
                    continue
                rule.fired += 1
                chosen = rule.fault
                break
            record.fault = describe(chosen) if chosen is not None else None
        if self.on_request is not None:
            try:
                self.on_request(record)
            except Exception as exc:  # a broken hook must fail the test, not the proxy
                self.errors.append(f"on_request hook failed: {exc!r}")
        return chosen

    async def _exchange(self, listener: str, conn: _Connection) -> bool:
        """Serve one request on ``conn``; True if the connection stays open for another."""
        try:
            raw_head = await conn.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise
            return False  # the client closed between requests
        method, target, version, headers = _parse_request_head(raw_head)
        record = Record(listener, method, target, _header_dict(headers), time.monotonic())
        fault = self._match(record)
        request_framing = _request_framing(headers)
        keep_alive = version == "HTTP/1.1" and "close" not in _get(headers, "connection").lower()

        if isinstance(fault, Reset) and fault.on == "response" and fault.after is None:
            raise _reset(conn.writer)
        if isinstance(fault, Stall) and fault.on == "response" and fault.after is None:
            # Watching for the client hanging up would eat a byte of a request body.
            await self._hold(conn, fault.seconds, watch_client=request_framing == ("length", 0))
        if isinstance(fault, Redirect):
            await _discard(_iter_body(conn.reader, request_framing), record)
            location = f"http://{self.redirect_host}{target}"
            if fault.signature is not None:
                location += f"{'&' if '?' in target else '?'}X-Amz-Signature={fault.signature}"
            await _send_local(conn.writer, record, fault.status, {"Location": location}, b"", keep_alive)
            return keep_alive
        if isinstance(fault, Status) and not fault.forward:
            await _discard(_iter_body(conn.reader, request_framing), record)
            await _send_local(conn.writer, record, fault.code, fault.headers, _status_body(fault), keep_alive)
            return keep_alive

        # Forward the request.
        if listener == "redirect":
            headers = [(k, v) for k, v in headers if k.lower() != "authorization"]
            if self.redirect_authorization:
                headers.append(("Authorization", self.redirect_authorization))
        for attempt in (1, 2):
            try:
                reused = conn.up_writer is not None
                up_reader, up_writer = await conn.upstream()
            except OSError:
                await _send_local(conn.writer, record, 502, {}, b"upstream unreachable", False)
                return False
            up_writer.write(_head(f"{method} {target} {version}", headers))
            await self._forward_request_body(conn, fault, request_framing, record)
            try:
                await up_writer.drain()
                status, response_head = await _read_response_head(up_reader)
                break
            except (_UpstreamClosed, ConnectionError):
                conn.drop_upstream()
                # A kept-alive registry connection may have been closed while idle: resend a
                # request without a body once on a fresh one (a body cannot be replayed).
                if not (reused and attempt == 1 and request_framing == ("length", 0)):
                    raise _Abort("upstream closed before answering") from None
        response_framing = _response_framing(method, status, response_head)
        upstream_keeps = "close" not in _get(response_head, "connection").lower() and response_framing[0] != "close"

        if isinstance(fault, Status):  # forward=True: the registry acted; its answer is lost
            await _discard(_iter_body(up_reader, response_framing), None)
            if not upstream_keeps:
                conn.drop_upstream()
            await _send_local(conn.writer, record, fault.code, fault.headers, _status_body(fault), keep_alive)
            return keep_alive

        keep = await self._forward_response(conn, fault, status, response_head, response_framing, record)
        if not upstream_keeps:
            conn.drop_upstream()
        return keep and keep_alive and upstream_keeps

    async def _forward_request_body(
        self, conn: _Connection, fault: Fault | None, framing: tuple[str, int], record: Record
    ) -> None:
        assert conn.up_writer is not None
        side_fault = fault if isinstance(fault, Reset | Stall | Slow) and fault.on == "request" else None
        rate = side_fault.rate if isinstance(side_fault, Slow) else None
        stop_at = (side_fault.after or 0) if isinstance(side_fault, Reset | Stall) else None
        chunked = framing[0] == "chunked"
        piece_limit = max(1, int(rate * _SLOW_TICK)) if rate else _PIECE
        async for piece in _iter_body(conn.reader, framing, piece_limit):
            received = len(piece)
            while piece:
                part = piece
                if stop_at is not None and record.request_bytes + len(part) >= stop_at:
                    part = piece[: stop_at - record.request_bytes]
                if part:
                    conn.up_writer.write(_chunk(part) if chunked else part)
                    await conn.up_writer.drain()
                    record.request_bytes += len(part)
                piece = piece[len(part) :]
                if stop_at is not None and record.request_bytes == stop_at:
                    stop_at = None
                    if isinstance(side_fault, Reset):
                        conn.drop_upstream()
                        raise _reset(conn.writer)
                    assert isinstance(side_fault, Stall)
                    await self._hold(conn, side_fault.seconds, watch_client=False)
            if rate:
                await asyncio.sleep(received / rate)
        if chunked:
            conn.up_writer.write(b"0\r\n\r\n")

    async def _forward_response(
        self,
        conn: _Connection,
        fault: Fault | None,
        status: int,
        head: list[tuple[str, str]],
        framing: tuple[str, int],
        record: Record,
    ) -> bool:
        """Pass the registry's response on, applying a response-side fault. True: still usable."""
        assert conn.up_reader is not None
        writer = conn.writer
        kind, length = framing
        body = _iter_body(conn.up_reader, framing)
        out_chunked = kind == "chunked"
        if isinstance(fault, WrongLength):
            if kind == "chunked":  # buffer it to announce a length at all
                data = b"".join([piece async for piece in body])
                length, kind, out_chunked = len(data), "length", False
                body = _once(data)
            head = [(k, v) for k, v in head if k.lower() not in ("content-length", "transfer-encoding")]
            head.append(("Content-Length", str(max(0, length + fault.delta))))
        record.status = status
        reason = _REASONS.get(status, "Status")
        writer.write(_head(f"HTTP/1.1 {status} {reason}", head))
        await writer.drain()

        stop_at = fault.after if isinstance(fault, Reset | Stall | Truncate) and _on_response(fault) else None
        rate = fault.rate if isinstance(fault, Slow) and fault.on == "response" else None
        flip = fault if isinstance(fault, Flip) else None

        async def act() -> None:
            """The stop point is reached: reset, truncate or stall."""
            if isinstance(fault, Reset):
                conn.drop_upstream()
                raise _reset(writer)
            if isinstance(fault, Truncate):
                conn.drop_upstream()
                raise _Abort("truncated")
            assert isinstance(fault, Stall)
            await self._hold(conn, fault.seconds)

        if stop_at == 0:
            stop_at = None
            await act()
        async for received in body:
            piece = received
            if flip is not None and record.response_bytes <= flip.offset < record.response_bytes + len(piece):
                changed = bytearray(piece)
                changed[flip.offset - record.response_bytes] ^= flip.mask
                piece = bytes(changed)
            while piece:
                part = piece
                if stop_at is not None:
                    part = piece[: stop_at - record.response_bytes]
                if rate:
                    part = part[: max(1, int(rate * _SLOW_TICK))]
                if part:
                    writer.write(_chunk(part) if out_chunked else part)
                    await writer.drain()
                    record.response_bytes += len(part)
                piece = piece[len(part) :]
                if rate:
                    await asyncio.sleep(len(part) / rate)
                if stop_at is not None and record.response_bytes == stop_at:
                    stop_at = None
                    await act()
        if out_chunked:
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        if isinstance(fault, WrongLength):
            conn.drop_upstream()
            raise _Abort("wrong length sent")
        return True

    async def _hold(self, conn: _Connection, seconds: float | None, *, watch_client: bool = True) -> None:
        """Stall: wait ``seconds`` (None: forever), ending early when the proxy closes or — if
        ``watch_client`` — when the client hangs up (it abandoned the request: end the
        connection)."""
        assert self._stopping is not None
        waits: dict[asyncio.Future[Any], str] = {asyncio.ensure_future(self._stopping.wait()): "closing"}
        if watch_client:
            waits[asyncio.ensure_future(conn.reader.read(1))] = "client"
        try:
            done, _ = await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for future in waits:
                future.cancel()
        if done:
            conn.drop_upstream()
            raise _Abort(f"stall ended by {waits[next(iter(done))]}")


# -- connections and HTTP framing --------------------------------------------------------------


class _Connection:
    """A client connection and the upstream connection that serves it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: tuple[str, int]) -> None:
        self.reader = reader
        self.writer = writer
        self._upstream_address = upstream
        self.up_reader: asyncio.StreamReader | None = None
        self.up_writer: asyncio.StreamWriter | None = None

    async def upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.up_writer is None or self.up_writer.is_closing():
            host, port = self._upstream_address
            self.up_reader, self.up_writer = await asyncio.open_connection(host, port, limit=_STREAM_LIMIT)
        assert self.up_reader is not None
        return self.up_reader, self.up_writer

    def drop_upstream(self) -> None:
        if self.up_writer is not None:
            self.up_writer.transport.abort()
        self.up_reader = self.up_writer = None

    def close(self) -> None:
        self.drop_upstream()
        if not self.writer.transport.is_closing():
            self.writer.transport.close()


def _reset(writer: asyncio.StreamWriter) -> _Abort:
    """Close ``writer``'s socket with an RST (SO_LINGER 0) and return the exception that ends it."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
    return _Abort("reset")


def _on_response(fault: Reset | Stall | Truncate) -> bool:
    return isinstance(fault, Truncate) or fault.on == "response"


def _parse_request_head(raw: bytes) -> tuple[str, str, str, list[tuple[str, str]]]:
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise _Abort(f"bad request line {lines[0]!r}")
    method, target, version = parts
    return method.upper(), target, version, _parse_headers(lines[1:])


def _parse_headers(lines: list[str]) -> list[tuple[str, str]]:
    headers = []
    for line in lines:
        if line:
            name, _, value = line.partition(":")
            headers.append((name.strip(), value.strip()))
    return headers


class _UpstreamClosed(Exception):
    """The registry closed the connection before a response head."""


async def _read_response_head(reader: asyncio.StreamReader) -> tuple[int, list[tuple[str, str]]]:
    """The status and headers of the upstream response (skipping 1xx interim answers)."""
    while True:
        try:
            raw = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            raise _UpstreamClosed from None
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        if not 100 <= status < 200:
            return status, _parse_headers(lines[1:])


def _get(headers: list[tuple[str, str]], name: str) -> str:
    return ", ".join(v for k, v in headers if k.lower() == name)


def _header_dict(headers: list[tuple[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in headers:
        key = k.lower()
        out[key] = f"{out[key]}, {v}" if key in out else v
    return out


def _request_framing(headers: list[tuple[str, str]]) -> tuple[str, int]:
    if "chunked" in _get(headers, "transfer-encoding").lower():
        return "chunked", 0
    length = _get(headers, "content-length")
    return ("length", int(length)) if length else ("length", 0)


def _response_framing(method: str, status: int, headers: list[tuple[str, str]]) -> tuple[str, int]:
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return "length", 0
    if "chunked" in _get(headers, "transfer-encoding").lower():
        return "chunked", 0
    length = _get(headers, "content-length")
    return ("length", int(length)) if length else ("close", 0)


async def _iter_body(
    reader: asyncio.StreamReader, framing: tuple[str, int], limit: int = _PIECE
) -> AsyncIterator[bytes]:
    """The payload of a body framed as ``framing``, in pieces of at most ``limit`` bytes."""
    kind, length = framing
    if kind == "length":
        remaining = length
        while remaining:
            data = await reader.read(min(remaining, limit))
            if not data:
                raise _Abort("body ended early")
            remaining -= len(data)
            yield data
    elif kind == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass  # trailers
                return
            remaining = size
            while remaining:
                data = await reader.read(min(remaining, limit))
                if not data:
                    raise _Abort("chunked body ended early")
                remaining -= len(data)
                yield data
            await reader.readexactly(2)
    else:
        while data := await reader.read(limit):
            yield data


async def _once(data: bytes) -> AsyncIterator[bytes]:
    if data:
        yield data


async def _discard(body: AsyncIterator[bytes], record: Record | None) -> None:
    async for piece in body:
        if record is not None:
            record.request_bytes += len(piece)


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _head(start_line: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [start_line, *(f"{k}: {v}" for k, v in headers), "", ""]
    return "\r\n".join(lines).encode("latin-1")


_REASONS = {
    200: "OK",
    201: "Created",
    202: "Accepted",
    204: "No Content",
    206: "Partial Content",
    307: "Temporary Redirect",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    416: "Range Not Satisfiable",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def _status_body(fault: Status) -> bytes:
    if fault.body is not None:
        return fault.body
    code = "UNAVAILABLE" if fault.code >= 500 else "UNKNOWN"
    message = f"injected fault: HTTP {fault.code}"
    return json.dumps({"errors": [{"code": code, "message": message}]}).encode()


async def _send_local(
    writer: asyncio.StreamWriter,
    record: Record,
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    keep_alive: bool,
) -> None:
    """Answer from the proxy itself (a fault or a redirect)."""
    lines = [(k, v) for k, v in headers.items() if k.lower() != "content-length"]
    if body and not any(k.lower() == "content-type" for k, _ in lines):
        lines.append(("Content-Type", "application/json" if body[:1] in (b"{", b"[") else "text/plain"))
    lines.append(("Content-Length", str(len(body))))
    if not keep_alive:
        lines.append(("Connection", "close"))
    record.status = status
    writer.write(_head(f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}", lines) + body)
    await writer.drain()
    record.response_bytes += len(body)
