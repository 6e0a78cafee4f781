"""What one registry request is, what one attempt of it produced, and what a transport must do.

A :class:`Request` is a small value: method, URL, what it is for (for messages), the token
scope, the statuses it accepts and how to read an accepted body. A :class:`Transport` sends one
attempt and reports it as an :class:`Answer` — status, headers, the body read within the
request's limits, or the transport failure — without raising for network or HTTP trouble.
The request engine (:mod:`ocifs.registry.engine`) owns auth and the one retry loop over them.

Two transports implement it: httpx on trio (:mod:`ocifs.registry.general`, every request) and
``http.client`` in worker threads (:mod:`ocifs.registry.blobio`, large blob bodies only).
Must not: retry, authenticate or word errors for users (:mod:`ocifs.registry.failures`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import httpx

T = TypeVar("T")

#: Reads the body of an accepted answer (httpx transport): the bytes, a capped read, nothing.
BodyReader = Callable[[httpx.Response], Awaitable[T]]

#: Request bodies are written this much at a time, each write under its own timeout (one 16 MiB
#: write would have to finish within it on a slow link).
UPLOAD_SLICE = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Request(Generic[T]):
    """One registry request, as every attempt of it is sent.

    ``what`` names it in messages ("blob sha256:ab12…"). ``repository``/``actions`` give the
    token scope (``extra_scopes`` more, e.g. the source of a cross-repository mount).
    ``size``: the body's expected length (blob GETs) or the upload's (PUTs): requests with one
    may take the threaded transport; ``offset``: where the ``Range`` of a range GET starts.
    ``resend=False``: one attempt only — a PUT into an upload session may have reached the
    registry, only the caller knows how to check. ``as_stored``: take the body byte for byte
    whatever ``Content-Encoding`` it is labelled with (blobs; their digest checks them); other
    bodies with an encoding are refused.
    """

    method: str
    url: str
    what: str
    read: BodyReader[T]
    repository: str | None = None
    actions: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, str] = field(default_factory=dict)
    content: bytes | None = None
    expected: tuple[int, ...] = (200,)
    extra_scopes: tuple[str, ...] = ()
    size: int | None = None
    offset: int | None = None
    resend: bool = True
    as_stored: bool = False


@dataclass(slots=True)
class Answer(Generic[T]):
    """What one attempt produced. ``accepted``: the status is one the request accepts and
    ``value`` is what its reader made of the body. Otherwise ``status`` (0: no answer),
    ``headers`` (names lower case or case-insensitive), ``body`` (an excerpt of an error
    answer) or ``error`` (the transport failure, kept as raised) describe it. ``declined``: an
    answer this transport does not read (the threaded one, given a whole blob for a range):
    the engine sends the attempt again on the general transport. ``storage_host``: the answer
    came from a redirect target on another origin than the registry's (object storage, a CDN),
    named ``host[:port]``; None when the registry itself answered."""

    status: int
    headers: Mapping[str, str]
    url: str = ""
    value: Any = None
    accepted: bool = False
    body: bytes = b""
    error: BaseException | None = None
    declined: bool = False
    storage_host: str | None = None


class Transport(Protocol):
    """Sends one attempt of a request; never raises for network or HTTP trouble."""

    def carries(self, request: Request[Any]) -> bool:
        """Whether this transport can send ``request``."""
        ...

    async def send(self, request: Request[T], headers: Mapping[str, str], excerpt: Callable[[int], bool]) -> Answer[T]:
        """One attempt with ``headers`` (auth included). ``excerpt(status)``: whether the body of
        an answer with that status is read for the message (not when it will be retried)."""
        ...

    async def aclose(self) -> None: ...


@dataclass(slots=True)
class ClientStats:
    """Request counters of one client, for tests and benchmarks: how many requests and retries
    a scenario cost and which transport carried the blobs."""

    requests: int = 0
    retries: int = 0
    blob_gets: int = 0
    blob_bytes: int = 0
    uploads: int = 0
    uploaded_bytes: int = 0
    mounts: int = 0
    fast_gets: int = 0
    fast_puts: int = 0


class BodyLengthError(Exception):
    """A success answer whose body was cut short of its announced length (retried like a broken
    connection)."""


class RedirectError(Exception):
    """Redirects that cannot lead to the blob: a loop or a target that is not http(s). Not
    retried: the registry would send the same redirects again."""


class SizeMismatch(Exception):
    """A *complete* success answer whose body is not the length asked for: the registry serves
    another size than the descriptor gives, which no retry changes.

    ``served`` is the body's length (a lower bound when ``more``: the body was not read to its
    end); ``total`` the blob's size from a 206's ``Content-Range``, when it says.
    """

    def __init__(self, served: int, expected: int, *, more: bool = False, total: int | None = None) -> None:
        super().__init__(f"body of {'more than ' if more else ''}{served} bytes where {expected} were expected")
        self.served = served
        self.expected = expected
        self.more = more
        self.total = total


def excess_read_limit(expected: int) -> int:
    """How much more than ``expected`` bytes a body of the wrong length is read to see whether it
    is complete (a wrong size) or cut (a broken connection): as much again, at least 1 MiB.
    Beyond that, an announced length is taken at its word and the body is not read."""
    return max(expected, 1 << 20)


def content_range_total(value: str | None) -> int | None:
    """The complete length in ``Content-Range: bytes A-B/TOTAL`` (or ``*/TOTAL``), if given."""
    total = (value or "").rpartition("/")[2].strip()
    return int(total) if total.isdigit() else None


def host_name(scheme: str, host: str, port: int | None) -> str:
    """``host[:port]`` of an origin for messages; the port only when it is not the scheme's own."""
    shown = f"[{host}]" if ":" in host else host
    return shown if port is None or port == (443 if scheme == "https" else 80) else f"{shown}:{port}"
