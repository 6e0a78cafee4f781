"""The general transport: httpx on trio, for every request (auth, manifests, uploads, small
blobs, and whatever the threaded transport does not carry).

Owns: the ``httpx.AsyncClient`` (pool, timeouts, redirects — httpx drops ``Authorization``
when a redirect leaves the registry's origin — ``Accept-Encoding: identity``), the one patch
of httpcore's receive size, and the raw sender the token authority uses. Must not: retry,
authenticate or word errors (the engine and :mod:`ocifs.registry.failures` do).
"""

from __future__ import annotations

import inspect
import ssl
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, TypeVar

import httpcore
import httpx

from ocifs import __version__
from ocifs.registry.bodies import (
    MAX_TOKEN_RESPONSE_BYTES,
    discard,
    read_capped,
    read_error_body,
    skip_redirect_body,
)
from ocifs.registry.failures import refuse_encoded, token_service_error
from ocifs.registry.transport import UPLOAD_SLICE, Answer, Request, host_name

T = TypeVar("T")

# httpcore reads 64 KiB per receive; on trio that costs ~4.4 CPU-s/GiB and caps a blob GET near
# 230 MiB/s on the reference machine, where 1 MiB receives reach 650-760 MiB/s (docs/platform.md,
# "Measured on the reference machine"). httpcore exposes no option for it, so the class default
# is raised: a private attribute, hence the version bound on httpcore in pyproject.toml and
# tests/test_client_http.py::test_httpcore_receive_size_patch_applies, which fails when a new
# httpcore stops reading it.
HTTPCORE_READ_BYTES = 1 << 20
httpcore._async.http11.AsyncHTTP11Connection.READ_NUM_BYTES = HTTPCORE_READ_BYTES


def httpcore_patch_applies() -> bool:
    """Whether httpcore still reads the attribute patched above when it receives."""
    connection = httpcore._async.http11.AsyncHTTP11Connection
    try:
        source = inspect.getsource(connection._receive_event)
    except (AttributeError, OSError, TypeError):
        return False
    return "self.READ_NUM_BYTES" in source and connection.READ_NUM_BYTES == HTTPCORE_READ_BYTES


class GeneralTransport:
    """Requests on one ``httpx.AsyncClient``; :class:`~ocifs.registry.transport.Transport`."""

    def __init__(
        self,
        registry: str,
        base_url: str,
        verify: ssl.SSLContext,
        *,
        connect_timeout: float,
        read_timeout: float,
        max_connections: int,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._registry = registry
        base = httpx.URL(base_url)
        self._origin = (base.scheme, base.host, base.port)
        self._http = httpx.AsyncClient(
            base_url=base_url,
            verify=verify,  # the client's one TLS configuration (ocifs.registry.tls), never certifi
            timeout=httpx.Timeout(read_timeout, connect=connect_timeout, pool=None),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            follow_redirects=True,
            # Bodies are read as sent (never decompressed: a compressed body could expand a
            # thousandfold in one read); the threaded transport asks for identity too.
            headers={"User-Agent": f"ocifs/{__version__}", "Accept-Encoding": "identity"},
            event_hooks={"response": [skip_redirect_body]},
            transport=transport,
        )

    def carries(self, request: Request[Any]) -> bool:
        return True

    async def aclose(self) -> None:
        await self._http.aclose()

    async def send(self, request: Request[T], headers: Mapping[str, str], excerpt: Callable[[int], bool]) -> Answer[T]:
        send_headers = dict(headers)
        content = request.content
        body: bytes | AsyncIterator[bytes] | None = content
        if content is not None and len(content) > UPLOAD_SLICE:
            # httpx times a write as a whole: a 16 MiB body on a slow link would time out
            # however steadily it moves. Slices give each 1 MiB its own write timeout.
            body = _slices(content)
            send_headers["Content-Length"] = str(len(content))
        built = self._http.build_request(
            request.method, request.url, headers=send_headers, params=request.params or None, content=body
        )
        try:
            response = await self._http.send(built, stream=True)
            try:
                status = response.status_code
                if status in request.expected:
                    if not request.as_stored and request.method != "HEAD" and request.read is not discard:
                        where = f"{self._registry}/{request.repository}" if request.repository else self._registry
                        refuse_encoded(status, response.headers, f"{where}: {request.what or request.method}")
                    value = await request.read(response)
                    return Answer(status, response.headers, str(response.url), value=value, accepted=True)
                found = await read_error_body(response) if excerpt(status) else b""
                url = response.url
                elsewhere = bool(response.history) and (url.scheme, url.host, url.port) != self._origin
                storage = host_name(url.scheme, url.host, url.port) if elsewhere else None
                return Answer(status, response.headers, str(url), body=found, storage_host=storage)
            finally:
                await response.aclose()
        except httpx.HTTPError as exc:
            return Answer(0, {}, error=exc)

    async def send_raw(self, request: httpx.Request) -> httpx.Response:
        """One request, no auth and no retries (the token authority's sender). The body is read
        only for a 200, and at most :data:`MAX_TOKEN_RESPONSE_BYTES` of it."""
        host = request.url.host
        for name, value in self._http.headers.items():  # User-Agent, Accept-Encoding: identity
            request.headers.setdefault(name, value)
        try:
            response = await self._http.send(request, stream=True)
            try:
                content = b""
                if response.status_code == 200:
                    refuse_encoded(response.status_code, response.headers, f"{self._registry}: token service {host}")
                    what = f"{self._registry}: the answer of token service {host}"
                    content = await read_capped(response, MAX_TOKEN_RESPONSE_BYTES, what)
            finally:
                await response.aclose()
        except httpx.HTTPError as exc:
            raise token_service_error(host, exc) from exc
        # The body as read (or none): the headers that described the body on the wire go.
        framing = {"content-encoding", "content-length", "transfer-encoding"}
        headers = [(k, v) for k, v in response.headers.multi_items() if k.lower() not in framing]
        return httpx.Response(response.status_code, headers=headers, content=content, request=request)


async def _slices(data: bytes) -> AsyncIterator[bytes]:
    # memoryview slices: no copy (256 KiB copied slices cost ~0.3 CPU-s/GiB, bench/profile_push.py).
    view = memoryview(data)
    for start in range(0, len(data), UPLOAD_SLICE):
        yield view[start : start + UPLOAD_SLICE]  # type: ignore[misc]
