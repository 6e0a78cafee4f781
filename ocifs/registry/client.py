"""The OCI distribution API of one registry, on the one request engine.

One :class:`RegistryClient` talks to one registry host and may be shared by every task of a
process (it is concurrency-safe: the transports pool connections, the token authority
serialises refreshes). It knows the API's paths and what each answer means; every request is a
:class:`~ocifs.registry.transport.Request` sent by :class:`~ocifs.registry.engine.RequestEngine`
(auth, the one retry loop, errors worded by :mod:`ocifs.registry.failures`) on the general
transport (httpx) or, for large blob bodies, the threaded one (:mod:`ocifs.registry.blobio`).

Contracts:
- Blob bodies returned by :meth:`get_blob` have exactly the expected length; digest checks are
  the caller's job (the fetcher does them in threads) except for manifests fetched by digest,
  which are verified here. A body cut short is a network fault (retried); a *complete* body of
  another length than the descriptor's is a broken artifact: :class:`BlobSizeMismatch` at once.
- ``Authorization`` is never sent to a redirect target on another host (httpx strips it when
  the origin changes, the threaded transport does the same; tests hold both to it).
- No secret (password, token, Authorization header) ever appears in a log line or error.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
import trio

from ocifs.digest import Digest
from ocifs.errors import (
    IntegrityError,
    NotFound,
    OcifsError,
    RegistryError,
    RegistryUnavailable,
)
from ocifs.format.media import (
    MANIFEST_MEDIA_TYPES,
    MAX_MANIFEST_BYTES,
)
from ocifs.reference import is_loopback_host
from ocifs.registry.auth import repository_scope
from ocifs.registry.blobio import FastBlobReader, ThreadedTransport
from ocifs.registry.bodies import discard, read_capped, read_exact, read_prefix
from ocifs.registry.credentials import Credentials, CredentialSource
from ocifs.registry.engine import RequestEngine
from ocifs.registry.failures import Failures
from ocifs.registry.general import GeneralTransport
from ocifs.registry.tls import build_trust
from ocifs.registry.transport import Answer, ClientStats, Request, SizeMismatch, content_range_total
from ocifs.retry import RetryPolicy

log = logging.getLogger(__name__)


# Registries that refuse a monolithic PUT get the upload as PATCH pieces of this size:
# GHCR rejects PATCH bodies over 4 MiB (docs/platform.md, "Registries in the field").
PATCH_PIECE = 4 * 1024 * 1024
_FALLBACK_TO_PATCH_STATUS = frozenset({400, 405, 411, 413, 416})


@dataclass(frozen=True, slots=True)
class ClientOptions:
    """How to reach a registry.

    Plain HTTP is used for loopback registries unless a CA file, a client certificate or
    ``insecure`` asks for TLS,
    and elsewhere only with ``plain_http``. TLS is verified unless ``insecure``.
    """

    plain_http: bool = False
    # TLS (ocifs.registry.tls): CAs added to the system store, the client certificate, more
    # certs.d directories; insecure: no verification.
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    certs_d: tuple[str, ...] = ()
    insecure: bool = False
    connect_timeout: float = 10.0
    # A stalled body is abandoned after this long without a byte, then retried.
    read_timeout: float = 60.0
    max_connections: int = 32
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    # The first credentials file searched (--authfile), before podman's and docker's defaults.
    auth_file: str | None = None

    def scheme_for(self, registry: str) -> str:
        if self.plain_http:
            return "http"
        if is_loopback_host(registry) and not (self.ca_file or self.cert_file or self.insecure):
            return "http"
        return "https"


@dataclass(frozen=True, slots=True)
class Manifest:
    """A manifest's exact bytes as stored, its media type and its digest (sha256 of the bytes)."""

    data: bytes
    media_type: str
    digest: Digest

    def json(self) -> Any:
        return json.loads(self.data)


def _username(credentials: Credentials | CredentialSource | None) -> str | None:
    """The user named in error messages (None: anonymous)."""
    if isinstance(credentials, CredentialSource):
        credentials = credentials.current
    return credentials.username if credentials else None


class RegistryClient:
    """The distribution API of one registry. Use as ``async with RegistryClient(...) as c``.

    ``transport`` (tests): an httpx transport for the general path (``httpx.MockTransport``,
    fault injection); ``fast`` (tests): the :class:`FastBlobReader` for the threaded one —
    by default one on real sockets unless ``transport`` is given, when every byte stays on it.
    """

    def __init__(
        self,
        registry: str,
        *,
        credentials: Credentials | CredentialSource | None = None,
        options: ClientOptions | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        fast: FastBlobReader | None = None,
    ) -> None:
        self.registry = registry
        self.options = options or ClientOptions()
        self.base_url = f"{self.options.scheme_for(registry)}://{registry}"
        self.stats = ClientStats()
        # One TLS configuration for both transports, redirect targets included (files read once).
        o = self.options
        trust = build_trust(
            registry,
            ca_file=o.ca_file,
            cert_file=o.cert_file,
            key_file=o.key_file,
            insecure=o.insecure,
            certs_d=o.certs_d,
        )
        verify = trust.context
        general = GeneralTransport(
            registry,
            self.base_url,
            verify,
            connect_timeout=self.options.connect_timeout,
            read_timeout=self.options.read_timeout,
            max_connections=self.options.max_connections,
            transport=transport,
        )
        if fast is None and transport is None:
            fast = FastBlobReader(self.base_url, verify, self.options.read_timeout)
        self.failures = Failures(
            registry,
            _username(credentials),
            plain_http=self.base_url.startswith("http://"),
            plain_http_asked=self.options.plain_http,
            attempts=self.options.retry.attempts,
            trust=trust,
        )
        threaded = ThreadedTransport(fast, self.stats) if fast is not None else None
        self._engine = RequestEngine(
            registry, credentials, self.options.retry, self.failures, general, general.send_raw, threaded, self.stats
        )

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._engine.aclose()

    @property
    def token_requests(self) -> int:
        """How many tokens this client fetched (tests check they are cached)."""
        return self._engine.tokens.token_requests

    @property
    def fast_path_enabled(self) -> bool:
        """Whether large blob bodies may take the threaded transport (not behind a proxy)."""
        threaded = self._engine.threaded
        return threaded is not None and threaded.reader.enabled

    # -- API ------------------------------------------------------------------------------

    async def ping(self) -> None:
        """``GET /v2/``: the registry speaks the API and our credentials (if any) are accepted."""
        await self._engine.send(Request("GET", "/v2/", "API check (GET /v2/)", discard))

    async def get_manifest(
        self, repository: str, selector: str, accept: Sequence[str] = MANIFEST_MEDIA_TYPES
    ) -> Manifest:
        """Fetch a manifest by tag or digest; a manifest asked for by digest is verified."""

        async def read(response: httpx.Response) -> bytes:
            return await read_capped(response, MAX_MANIFEST_BYTES, f"manifest {selector} in {repository}")

        answer = await self._engine.send(
            Request(
                "GET",
                f"/v2/{repository}/manifests/{selector}",
                f"manifest {selector}",
                read,
                repository=repository,
                actions="pull",
                headers={"Accept": ", ".join(accept)},
            )
        )
        data: bytes = answer.value
        digest = Digest.of_bytes(data)
        announced = answer.headers.get("docker-content-digest")
        if announced and not selector.startswith("sha"):
            # By tag there is nothing else to check against: what the registry says it stored.
            try:
                expected = Digest.parse(announced)
            except OcifsError:
                expected = None
            if expected is not None and not expected.matches(data):
                raise IntegrityError(
                    f"{self.registry}/{repository}: manifest {selector} does not match the digest the registry"
                    f" announced ({expected.short})",
                    hint="a proxy or the network altered it; try again, or name the artifact by digest",
                )
            if expected is not None:
                digest = expected
        if selector.startswith("sha") and ":" in selector:
            wanted = Digest.parse(selector)
            if not wanted.matches(data):
                raise IntegrityError(
                    f"{self.registry}/{repository}: manifest {selector} does not match its digest",
                    hint="the registry or a proxy altered it; do not trust this registry",
                )
            digest = wanted
        media_type = answer.headers.get("content-type", "").split(";")[0].strip()
        if not media_type:
            media_type = _media_type_of(data)
        return Manifest(data, media_type, digest)

    async def put_manifest(self, repository: str, reference: str, data: bytes, media_type: str) -> Digest:
        """Store ``data`` under a tag or its digest; returns the digest (sha256 of the bytes)."""
        digest = Digest.of_bytes(data)
        await self._engine.send(
            Request(
                "PUT",
                f"/v2/{repository}/manifests/{reference}",
                f"manifest for {reference}",
                discard,
                repository=repository,
                actions="pull,push",
                headers={"Content-Type": media_type},
                content=data,
                expected=(200, 201, 202),
            )
        )
        return digest

    async def blob_size(self, repository: str, digest: Digest) -> int | None:
        """``HEAD`` a blob: its size if the repository has it, None if not."""
        try:
            answer = await self._engine.send(
                Request(
                    "HEAD",
                    f"/v2/{repository}/blobs/{digest}",
                    f"blob {digest.short}",
                    discard,
                    repository=repository,
                    actions="pull",
                )
            )
        except NotFound:
            return None
        length = answer.headers.get("content-length")
        return int(length) if length and length.isdigit() else 0

    async def get_blob(self, repository: str, digest: Digest, size: int | None = None) -> bytes:
        """The whole blob. With ``size`` the body must have exactly that length: one cut short is
        retried; a complete one of another length raises :class:`BlobSizeMismatch` at once.

        The digest is not checked here: the caller hashes (in a thread) before trusting bytes.
        """
        self.stats.blob_gets += 1

        async def read(response: httpx.Response) -> bytes:
            return await read_exact(response, size)

        request = Request(
            "GET",
            f"/v2/{repository}/blobs/{digest}",
            f"blob {digest.short}",
            read,
            repository=repository,
            actions="pull",
            size=size,
            as_stored=True,
        )
        try:
            data: bytes = (await self._engine.send(request)).value
        except SizeMismatch as exc:
            served = f"{'more than ' if exc.more else ''}{exc.served}"
            raise self.failures.size_mismatch(
                repository, f"blob {digest} is {served} bytes in the registry but {exc.expected} in the manifest", exc
            ) from None
        self.stats.blob_bytes += len(data)
        return data

    async def get_blob_range(self, repository: str, digest: Digest, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of a blob by a ``Range`` request.

        ``Range`` is only a SHOULD: a registry answering 200 with the whole body is handled by
        reading up to ``end`` and slicing (the rest of the body is not downloaded).
        """
        if not 0 <= start < end:
            raise ValueError(f"bad range [{start}, {end})")
        self.stats.blob_gets += 1

        async def read(response: httpx.Response) -> bytes:
            if response.status_code == 206:
                return await read_exact(
                    response, end - start, content_range_total(response.headers.get("content-range"))
                )
            prefix = await read_prefix(response, end)
            if len(prefix) < end:  # the whole blob, complete (a cut body raised in the read)
                raise SizeMismatch(len(prefix), end, total=len(prefix))
            return prefix[start:end]

        request = Request(
            "GET",
            f"/v2/{repository}/blobs/{digest}",
            f"blob {digest.short}",
            read,
            repository=repository,
            actions="pull",
            headers={"Range": f"bytes={start}-{end - 1}"},
            expected=(200, 206),
            size=end - start,
            offset=start,
            as_stored=True,
        )
        try:
            data: bytes = (await self._engine.send(request)).value
        except SizeMismatch as exc:
            if exc.total is not None and exc.total < end:
                text = f"blob {digest} is {exc.total} bytes in the registry but at least {end} in the manifest"
            else:
                served = f"{'more than ' if exc.more else ''}{exc.served}"
                text = f"blob {digest}: bytes {start}..{end} asked for, {served} bytes served"
            raise self.failures.size_mismatch(repository, text, exc) from None
        except RegistryError as exc:
            if exc.status != 416:  # Range Not Satisfiable: the blob ends before ``start``
                raise
            raise self.failures.size_mismatch(
                repository,
                f"blob {digest} is at most {start} bytes in the registry but at least {end} in the manifest",
                None,
            ) from None
        self.stats.blob_bytes += len(data)
        return data

    async def upload_blob(
        self, repository: str, digest: Digest, data: bytes | memoryview, *, mount_from: str | None = None
    ) -> str:
        """Store ``data`` as blob ``digest``. Returns ``"mounted"`` or ``"uploaded"``.

        With ``mount_from`` the registry is first asked to mount the blob from that repository
        (201 = done without sending a byte; 202 = it started an ordinary upload instead, which
        is then used). The upload is POST + one monolithic PUT ``?digest=``; a registry that
        refuses a monolithic PUT gets ordered PATCH pieces instead.

        A failed PUT is not resent into the same session (the registry may have completed or
        dropped it while the reply was lost): the blob is HEAD-checked, and if it is not there a
        new session is started. This is the engine's retry one level up, under the same policy:
        sessions and attempts share ``attempts`` and the backoff (docs/requests.md).
        """
        body = bytes(data) if isinstance(data, memoryview) else data
        policy = self.options.retry
        for attempt in range(1, policy.attempts + 1):
            location, mounted = await self._start_upload(repository, digest, mount_from)
            if mounted:
                self.stats.mounts += 1
                return "mounted"
            try:
                await self._finish_upload(repository, digest, body, location)
            except RegistryError as exc:
                lost = exc.code in ("BLOB_UPLOAD_UNKNOWN", "BLOB_UPLOAD_INVALID") or isinstance(
                    exc, RegistryUnavailable
                )
                if not lost or attempt == policy.attempts:
                    raise
                if await self.blob_size(repository, digest) is not None:
                    log.debug("upload of %s failed (%s) but the blob arrived", digest.short, exc)
                    break
                log.debug("upload of %s failed (%s); new session, attempt %d", digest.short, exc, attempt + 1)
                self.stats.retries += 1
                await trio.sleep(policy.backoff(attempt))
                continue
            break
        self.stats.uploads += 1
        self.stats.uploaded_bytes += len(body)
        return "uploaded"

    # -- uploads --------------------------------------------------------------------------

    async def _start_upload(self, repository: str, digest: Digest, mount_from: str | None) -> tuple[str, bool]:
        params: dict[str, str] = {}
        extra_scopes: tuple[str, ...] = ()
        if mount_from and mount_from != repository:
            params = {"mount": str(digest), "from": mount_from}
            extra_scopes = (repository_scope(mount_from, "pull"),)
        answer = await self._engine.send(
            Request(
                "POST",
                f"/v2/{repository}/blobs/uploads/",
                f"upload of {digest.short}",
                discard,
                repository=repository,
                actions="pull,push",
                params=params,
                extra_scopes=extra_scopes,
                expected=(201, 202),
                headers={"Content-Length": "0"},
            )
        )
        if answer.status == 201:
            return "", True
        location = answer.headers.get("location")
        if not location:
            raise RegistryError(f"{self.registry}/{repository}: upload started without a Location header")
        return self._upload_url(answer, location, repository), False

    async def _finish_upload(self, repository: str, digest: Digest, body: bytes, location: str) -> None:
        url = _with_query(location, {"digest": str(digest)})
        what = f"upload of {digest.short}"
        try:
            await self._engine.send(
                Request(
                    "PUT",
                    url,
                    what,
                    discard,
                    repository=repository,
                    actions="pull,push",
                    content=body,
                    expected=(201, 204),
                    headers={"Content-Type": "application/octet-stream"},
                    size=len(body),
                    resend=False,  # upload_blob checks and starts a new session instead
                )
            )
            return
        except RegistryError as exc:
            if exc.status not in _FALLBACK_TO_PATCH_STATUS or exc.code == "DIGEST_INVALID":
                raise
            log.info("%s refused a monolithic upload (HTTP %s); using PATCH pieces", self.registry, exc.status)
        location, _ = await self._start_upload(repository, digest, None)
        offset = 0
        while offset < len(body):
            piece = body[offset : offset + PATCH_PIECE]
            answer = await self._engine.send(
                Request(
                    "PATCH",
                    location,
                    what,
                    discard,
                    repository=repository,
                    actions="pull,push",
                    content=piece,
                    headers={
                        "Content-Type": "application/octet-stream",
                        "Content-Range": f"{offset}-{offset + len(piece) - 1}",
                    },
                    expected=(202,),
                )
            )
            offset += len(piece)
            next_location = answer.headers.get("location")
            if next_location:
                location = self._upload_url(answer, next_location, repository)
        await self._engine.send(
            Request(
                "PUT",
                _with_query(location, {"digest": str(digest)}),
                what,
                discard,
                repository=repository,
                actions="pull,push",
                expected=(201, 204),
            )
        )

    def _upload_url(self, answer: Answer[Any], location: str, repository: str) -> str:
        """The upload session's URL from a ``Location`` header (relative ones are common)."""
        try:
            return str(httpx.URL(answer.url or self.base_url).join(location))
        except httpx.InvalidURL:
            raise self.failures.malformed_location(repository, location) from None


# -- helpers ------------------------------------------------------------------------------


def _media_type_of(data: bytes) -> str:
    try:
        value = json.loads(data).get("mediaType")
    except (ValueError, AttributeError, RecursionError):
        return ""
    return value if isinstance(value, str) else ""


def _with_query(url: str, extra: Mapping[str, str]) -> str:
    """``url`` with ``extra`` merged into its query (upload Locations carry state such as _state=)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in extra]
    query.extend(extra.items())
    return urlunsplit(parts._replace(query=urlencode(query)))


class RedactUrls(logging.Filter):
    """A log filter for the HTTP libraries' own lines, which ``--debug`` shows. httpx logs each
    request's whole URL: an upload URL's query holds the registry's upload state, a redirect's a
    pre-signed signature; it is logged as :func:`_safe_url` gives it. httpcore's traces list
    response headers (``Location`` with that signature, ``Set-Cookie``): they are cut off."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("httpx") and isinstance(record.args, tuple):
            record.args = tuple(_safe_url(arg) if isinstance(arg, httpx.URL) else arg for arg in record.args)
        elif record.name.startswith("httpcore") and isinstance(record.msg, str):
            headers = record.msg.find(", [(b'")  # (b'HTTP/1.1', 307, b'Temporary Redirect', [(b'Location', ...
            if headers >= 0:
                record.msg = record.msg[:headers] + ", [headers not logged])"
        return True


def _safe_url(url: httpx.URL) -> str:
    """A URL for logs: no userinfo and no query (upload state and tokens live there)."""
    return str(url.copy_with(query=None, username=None, password=None))
