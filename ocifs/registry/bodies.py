"""Reading answer bodies on the httpx transport, each read capped.

Bodies are taken as sent (``Accept-Encoding: identity`` is asked for and nothing is decoded: a
compressed body could expand a thousandfold in one read). Every read here has a bound:
manifests and JSON 4 MiB (:data:`ocifs.format.media.MAX_MANIFEST_BYTES`), token answers 1 MiB,
bodies nobody uses 64 KiB, a blob its expected size (plus :func:`excess_read_limit` to tell a
wrong size from a cut body). Must not: retry or word errors beyond the limits' own messages.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from ocifs.errors import RegistryError
from ocifs.format.media import MAX_MANIFEST_BYTES
from ocifs.registry.transport import SizeMismatch, excess_read_limit

# Of a body nobody reads (a redirect's, an upload reply's), at most this much is read so that
# the connection can be reused; the rest is not read (the connection is closed).
IGNORED_BODY_LIMIT = 64 * 1024
# Of an error answer, this much is read for the message.
ERROR_BODY_LIMIT = 64 * 1024
# A token service's answer: a JSON object with a token of a few KiB (a JWT); a header over
# 1 MiB is refused by most servers anyway.
MAX_TOKEN_RESPONSE_BYTES = 1024 * 1024


async def raw_body(response: httpx.Response) -> AsyncIterator[bytes]:
    """The body as sent (never decoded), piece by piece."""
    try:
        content = response.content  # a response that arrived already read (MockTransport)
    except httpx.ResponseNotRead:
        async for piece in response.aiter_raw():
            yield piece
        return
    if content:
        yield content


async def discard(response: httpx.Response) -> None:
    """Read a body nobody needs (up to :data:`IGNORED_BODY_LIMIT`, so the connection is reused)."""
    await read_prefix(response, IGNORED_BODY_LIMIT)


async def read_json(response: httpx.Response) -> Any:
    data = await read_capped(response, MAX_MANIFEST_BYTES, "response")
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        raise RegistryError(f"malformed JSON from {response.url.host}") from None


async def read_capped(response: httpx.Response, limit: int, what: str) -> bytes:
    length = response.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise RegistryError(f"{what} is {int(length)} bytes, over the {limit}-byte limit")
    buf = bytearray()
    async for piece in raw_body(response):
        buf += piece
        if len(buf) > limit:
            raise RegistryError(f"{what} is over the {limit}-byte limit")
    return bytes(buf)


async def read_exact(response: httpx.Response, size: int | None, total: int | None = None) -> bytes:
    """Read the whole body into one preallocated buffer.

    A body cut short of its ``Content-Length`` raises httpx's own error (retried). A complete
    body of another length than ``size`` raises :class:`SizeMismatch` (not retried); a longer
    one is read on for at most :func:`excess_read_limit` bytes to see that it is complete, and
    one that announces more than that is not read at all. ``total``: the blob's size from a
    206's ``Content-Range``, for the message.
    """
    if size is None:
        return b"".join([piece async for piece in raw_body(response)])
    limit = size + excess_read_limit(size)
    length = response.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise SizeMismatch(int(length), size, total=total)
    buf = bytearray(size)
    view = memoryview(buf)
    seen = 0
    async for piece in raw_body(response):
        end = seen + len(piece)
        if end <= size:
            view[seen:end] = piece
        elif seen < size:
            view[seen:size] = piece[: size - seen]
        seen = end
        if seen > limit:
            raise SizeMismatch(limit, size, more=True, total=total)
    if seen != size:
        raise SizeMismatch(seen, size, total=total)
    return bytes(buf)


async def read_error_body(response: httpx.Response) -> bytes:
    """Up to :data:`ERROR_BODY_LIMIT` of an error answer's body, for the message. One that breaks
    off is still that error (distribution 2.8 answers a 416 with the blob's Content-Length and
    33 bytes): what arrived is kept, and the status decides, not the broken body."""
    if response.headers.get("content-encoding", "identity").strip().lower() != "identity":
        return b""  # not asked for; not decoded: the status alone says what failed
    buf = bytearray()
    try:
        async for piece in raw_body(response):
            buf += piece
            if len(buf) >= ERROR_BODY_LIMIT:
                break
    except httpx.HTTPError:
        pass
    return bytes(buf[:ERROR_BODY_LIMIT])


async def read_prefix(response: httpx.Response, limit: int) -> bytes:
    buf = bytearray()
    async for piece in raw_body(response):
        buf += piece
        if len(buf) >= limit:
            break
    return bytes(buf[:limit])


async def skip_redirect_body(response: httpx.Response) -> None:
    """httpx reads a redirect's whole body before it follows the redirect; nobody uses it.
    Read at most :data:`IGNORED_BODY_LIMIT` of it (an endless one is not read on) and drop it."""
    if response.has_redirect_location and isinstance(response.stream, httpx.AsyncByteStream):
        response.stream = _SkippedBody(response.stream)


class _SkippedBody(httpx.AsyncByteStream):
    """A body read up to :data:`IGNORED_BODY_LIMIT` (to the end if it is short, so that the
    connection is reused) and handed on as nothing."""

    def __init__(self, stream: httpx.AsyncByteStream) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        seen = 0
        async for piece in self._stream:
            seen += len(piece)
            if seen > IGNORED_BODY_LIMIT:
                break
        if False:  # an async generator that yields nothing
            yield b""

    async def aclose(self) -> None:
        await self._stream.aclose()
