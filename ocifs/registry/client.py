"""An OCI distribution API client on one ``httpx.AsyncClient`` running under trio.

One :class:`RegistryClient` talks to one registry host and may be shared by every task of a
process (it is concurrency-safe: httpx pools connections, the token authority serialises
refreshes). Every request goes through :meth:`RegistryClient._exchange`, which applies auth,
retries transient failures (policy in :mod:`ocifs.registry.retry`) and translates every
failure into an :mod:`ocifs.errors` exception naming registry, repository and what to do.

Contracts:
- Blob bodies returned by :meth:`get_blob` have exactly the expected length; digest checks are
  the caller's job (the fetcher does them in threads) except for manifests fetched by digest,
  which are verified here. A body cut short is a network fault (retried); a *complete* body of
  another length than the descriptor's is a broken artifact: :class:`BlobSizeMismatch` at once.
- ``Authorization`` is never sent to a redirect target on another host (httpx strips it when
  the origin changes; tests hold it to that).
- No secret (password, token, Authorization header) ever appears in a log line or error.
"""

from __future__ import annotations

import functools
import http.client
import json
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpcore
import httpx
import trio

from ocifs import __version__
from ocifs.digest import Digest
from ocifs.errors import (
    AuthenticationError,
    BlobSizeMismatch,
    IntegrityError,
    NotFound,
    OcifsError,
    PermissionDenied,
    RegistryError,
    RegistryUnavailable,
    UsageError,
    fd_exhaustion,
    fd_exhaustion_hint,
    find_cause,
)
from ocifs.reference import is_loopback_host
from ocifs.registry.auth import Challenge, TokenAuthority, basic_header, parse_challenge, repository_scope
from ocifs.registry.blobio import (
    BodyLengthError,
    FastBlobReader,
    FastResponse,
    RedirectError,
    SizeMismatch,
    content_range_total,
    excess_read_limit,
)
from ocifs.registry.credentials import Credentials
from ocifs.registry.retry import RetryPolicy, is_certificate_failure, is_retryable_exception, is_retryable_status

log = logging.getLogger(__name__)

T = TypeVar("T")

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_MEDIA_TYPES = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST)

# distribution, zot, Harbor and oras-go refuse manifests above 4 MiB; so do we when reading.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024

# httpcore reads 64 KiB per receive; on trio that costs ~4.4 CPU-s/GiB and caps a blob GET near
# 230 MiB/s on this 2-core machine, where 1 MiB receives reach 650-760 MiB/s
# (../shared/design.md §7). httpcore exposes no option for it, so the class default is raised.
httpcore._async.http11.AsyncHTTP11Connection.READ_NUM_BYTES = 1 << 20

# Bodies at least this large go through the threaded fast path (blobio.py); below it the thread
# hand-off costs more than httpx's parsing.
FAST_PATH_MIN_BYTES = 256 * 1024

# Request bodies are sent in slices of this size, each with its own write timeout.
UPLOAD_SLICE = 1024 * 1024

# Registries that refuse a monolithic PUT get the upload as PATCH pieces of this size:
# GHCR rejects PATCH bodies over 4 MiB (../shared/registries.md).
PATCH_PIECE = 4 * 1024 * 1024
_FALLBACK_TO_PATCH_STATUS = frozenset({400, 405, 411, 413, 416})
_BODY_EXCERPT = 200
# Of a body nobody reads (a redirect's, an upload reply's), at most this much is read so that
# the connection can be reused; the rest is not read (the connection is closed).
_IGNORED_BODY_LIMIT = 64 * 1024
# A token service's answer: a JSON object with a token of a few KiB (a JWT); a header over
# 1 MiB is refused by most servers anyway.
MAX_TOKEN_RESPONSE_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ClientOptions:
    """How to reach a registry.

    Plain HTTP is used for loopback registries unless a CA file or ``insecure`` asks for TLS,
    and elsewhere only with ``plain_http``. TLS is verified unless ``insecure``.
    """

    plain_http: bool = False
    ca_file: str | None = None
    insecure: bool = False
    connect_timeout: float = 10.0
    # A stalled body is abandoned after this long without a byte, then retried.
    read_timeout: float = 60.0
    max_connections: int = 32
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    def scheme_for(self, registry: str) -> str:
        if self.plain_http:
            return "http"
        if is_loopback_host(registry) and not (self.ca_file or self.insecure):
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


@dataclass(slots=True)
class ClientStats:
    """Request counters of one client (for tests, benchmarks and ``ocifs status``)."""

    requests: int = 0
    retries: int = 0
    blob_gets: int = 0
    blob_bytes: int = 0
    uploads: int = 0
    uploaded_bytes: int = 0
    mounts: int = 0
    fast_gets: int = 0
    fast_puts: int = 0


class RegistryClient:
    """The distribution API of one registry. Use as ``async with RegistryClient(...) as c``."""

    def __init__(
        self,
        registry: str,
        *,
        credentials: Credentials | None = None,
        options: ClientOptions | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.registry = registry
        self.options = options or ClientOptions()
        self.base_url = f"{self.options.scheme_for(registry)}://{registry}"
        self.stats = ClientStats()
        self._credentials = credentials
        self._challenge: Challenge | None = None
        # One TLS context for both data paths (a --ca-file is read once).
        verify = _ssl_context(self.options) if transport is None else True
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            verify=verify,
            timeout=httpx.Timeout(self.options.read_timeout, connect=self.options.connect_timeout, pool=None),
            limits=httpx.Limits(
                max_connections=self.options.max_connections,
                max_keepalive_connections=self.options.max_connections,
            ),
            follow_redirects=True,
            # Bodies are read as sent (never decompressed: a compressed body could expand a
            # thousandfold in one read); the fast path asks for identity too.
            headers={"User-Agent": f"ocifs/{__version__}", "Accept-Encoding": "identity"},
            event_hooks={"response": [_skip_redirect_body]},
            transport=transport,
        )
        self._tokens = TokenAuthority(registry, credentials, self._send_raw)
        # Tests hand in a transport (MockTransport, fault injection): keep every byte on it then.
        self._fast: FastBlobReader | None = None
        if transport is None:
            self._fast = FastBlobReader(self.base_url, verify, self.options.read_timeout)

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()
        if self._fast is not None:
            self._fast.close()

    @property
    def token_requests(self) -> int:
        """How many tokens this client fetched (tests check they are cached)."""
        return self._tokens.token_requests

    # -- API ------------------------------------------------------------------------------

    async def ping(self) -> None:
        """``GET /v2/``: the registry speaks the API and our credentials (if any) are accepted."""
        await self._exchange(
            "GET", "/v2/", repository=None, actions="", expected=(200,), consume=_discard, what="API check (GET /v2/)"
        )

    async def get_manifest(
        self, repository: str, selector: str, accept: Sequence[str] = MANIFEST_MEDIA_TYPES
    ) -> Manifest:
        """Fetch a manifest by tag or digest; a manifest asked for by digest is verified."""

        async def read(response: httpx.Response) -> bytes:
            return await _read_capped(response, MAX_MANIFEST_BYTES, f"manifest {selector} in {repository}")

        data, response = await self._exchange(
            "GET",
            f"/v2/{repository}/manifests/{selector}",
            repository=repository,
            actions="pull",
            headers={"Accept": ", ".join(accept)},
            consume=read,
            with_response=True,
            what=f"manifest {selector}",
        )
        digest = Digest.of_bytes(data)
        announced = response.headers.get("docker-content-digest")
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
        media_type = response.headers.get("content-type", "").split(";")[0].strip()
        if not media_type:
            media_type = _media_type_of(data)
        return Manifest(data, media_type, digest)

    async def head_manifest(self, repository: str, selector: str) -> Digest | None:
        """The digest of a manifest (from ``Docker-Content-Digest``), or None if it does not exist."""
        try:
            response = await self._exchange(
                "HEAD",
                f"/v2/{repository}/manifests/{selector}",
                repository=repository,
                actions="pull",
                headers={"Accept": ", ".join(MANIFEST_MEDIA_TYPES)},
                consume=_keep,
                what=f"manifest {selector}",
            )
        except NotFound:
            return None
        header = response.headers.get("docker-content-digest")
        return Digest.parse(header) if header else None

    async def put_manifest(self, repository: str, reference: str, data: bytes, media_type: str) -> Digest:
        """Store ``data`` under a tag or its digest; returns the digest (sha256 of the bytes)."""
        digest = Digest.of_bytes(data)
        await self._exchange(
            "PUT",
            f"/v2/{repository}/manifests/{reference}",
            repository=repository,
            actions="pull,push",
            headers={"Content-Type": media_type},
            content=data,
            expected=(200, 201, 202),
            consume=_discard,
            what=f"manifest for {reference}",
        )
        return digest

    async def blob_size(self, repository: str, digest: Digest) -> int | None:
        """``HEAD`` a blob: its size if the repository has it, None if not."""
        try:
            response = await self._exchange(
                "HEAD",
                f"/v2/{repository}/blobs/{digest}",
                repository=repository,
                actions="pull",
                consume=_keep,
                what=f"blob {digest.short}",
            )
        except NotFound:
            return None
        length = response.headers.get("content-length")
        return int(length) if length and length.isdigit() else 0

    async def get_blob(self, repository: str, digest: Digest, size: int | None = None) -> bytes:
        """The whole blob. With ``size`` the body must have exactly that length: one cut short is
        retried; a complete one of another length raises :class:`BlobSizeMismatch` at once.

        The digest is not checked here: the caller hashes (in a thread) before trusting bytes.
        """
        self.stats.blob_gets += 1
        path = f"/v2/{repository}/blobs/{digest}"

        async def read(response: httpx.Response) -> bytes:
            return await _read_exact(response, size)

        try:
            data: bytes = await self._exchange(
                "GET",
                path,
                repository=repository,
                actions="pull",
                consume=read,
                what=f"blob {digest.short}",
                fast=self._fast_sender(path, size, {}) if size is not None else None,
                as_stored=True,
            )
        except SizeMismatch as exc:
            served = f"{'more than ' if exc.more else ''}{exc.served}"
            raise self._size_mismatch(
                repository, f"blob {digest} is {served} bytes in the registry but {exc.expected} in the manifest", exc
            ) from None
        self.stats.blob_bytes += len(data)
        return data

    def _size_mismatch(self, repository: str, text: str, exc: SizeMismatch | None) -> BlobSizeMismatch:
        return BlobSizeMismatch(
            f"{self.registry}/{repository}: {text}",
            hint="the artifact is broken (or a proxy in front of the registry alters lengths); push it again",
            expected=exc.expected if exc else 0,
            served=exc.served if exc else 0,
        )

    def _fast_sender(
        self, path: str, size: int, headers: Mapping[str, str]
    ) -> Callable[[dict[str, str]], Awaitable[FastResponse]] | None:
        """A fast-path attempt of a blob GET for :meth:`_exchange`, or None (see :meth:`_fast_attempt`)."""

        def get(fast: FastBlobReader, request_headers: dict[str, str]) -> FastResponse:
            return fast.get(path, {**request_headers, **headers}, size, partial="Range" in headers)

        return self._fast_attempt(size, get, "fast_gets")

    def _fast_putter(
        self, url: str, body: bytes, headers: Mapping[str, str]
    ) -> Callable[[dict[str, str]], Awaitable[FastResponse]] | None:
        """A fast-path attempt of a monolithic PUT for :meth:`_exchange` (httpx on trio spends
        ~0.8 CPU-s/GiB in Python pushing 1 MiB slices through h11), or None."""

        def put(fast: FastBlobReader, request_headers: dict[str, str]) -> FastResponse:
            return fast.put(url, {**request_headers, **headers}, body, (201, 204))

        return self._fast_attempt(len(body), put, "fast_puts")

    def _fast_attempt(
        self, size: int, call: Callable[[FastBlobReader, dict[str, str]], FastResponse], counter: str
    ) -> Callable[[dict[str, str]], Awaitable[FastResponse]] | None:
        """``call`` as one :meth:`_exchange` attempt in a worker thread (``http.client``), counting
        successes in ``self.stats.<counter>``; None when the fast path is off or the body is
        smaller than :data:`FAST_PATH_MIN_BYTES` (a thread hop costs more than it saves)."""
        fast = self._fast
        if fast is None or not fast.enabled or size < FAST_PATH_MIN_BYTES:
            return None

        async def send(request_headers: dict[str, str]) -> FastResponse:
            attempt = functools.partial(call, fast, request_headers)
            outcome = await trio.to_thread.run_sync(attempt, abandon_on_cancel=True)
            if outcome.data is not None:
                setattr(self.stats, counter, getattr(self.stats, counter) + 1)
            return outcome

        return send

    async def get_blob_range(self, repository: str, digest: Digest, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of a blob by a ``Range`` request.

        ``Range`` is only a SHOULD: a registry answering 200 with the whole body is handled by
        reading up to ``end`` and slicing (the rest of the body is not downloaded).
        """
        if not 0 <= start < end:
            raise ValueError(f"bad range [{start}, {end})")
        self.stats.blob_gets += 1

        path = f"/v2/{repository}/blobs/{digest}"
        range_header = {"Range": f"bytes={start}-{end - 1}"}

        async def read(response: httpx.Response) -> bytes:
            if response.status_code == 206:
                return await _read_exact(
                    response, end - start, content_range_total(response.headers.get("content-range"))
                )
            prefix = await _read_prefix(response, end)
            if len(prefix) < end:  # the whole blob, complete (a cut body raised in the read)
                raise SizeMismatch(len(prefix), end, total=len(prefix))
            return prefix[start:end]

        try:
            data: bytes = await self._exchange(
                "GET",
                path,
                repository=repository,
                actions="pull",
                headers=range_header,
                expected=(200, 206),
                consume=read,
                what=f"blob {digest.short}",
                fast=self._fast_sender(path, end - start, range_header),
                as_stored=True,
            )
        except SizeMismatch as exc:
            if exc.total is not None and exc.total < end:
                text = f"blob {digest} is {exc.total} bytes in the registry but at least {end} in the manifest"
            else:
                served = f"{'more than ' if exc.more else ''}{exc.served}"
                text = f"blob {digest}: bytes {start}..{end} asked for, {served} bytes served"
            raise self._size_mismatch(repository, text, exc) from None
        except RegistryError as exc:
            if exc.status != 416:  # Range Not Satisfiable: the blob ends before ``start``
                raise
            raise self._size_mismatch(
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
        new session is started, within the retry policy's attempts.
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

    async def list_tags(self, repository: str) -> list[str]:
        """Every tag of ``repository``, following ``Link`` pagination."""
        tags: list[str] = []
        url: str | None = f"/v2/{repository}/tags/list?n=1000"
        pages = 0
        while url is not None and pages < 10_000:
            pages += 1
            response = await self._exchange(
                "GET",
                url,
                repository=repository,
                actions="pull",
                consume=_read_json_response,
                what="tag list",
                with_response=True,
            )
            body, raw = response
            page = body.get("tags") if isinstance(body, dict) else None
            if page is not None and not (isinstance(page, list) and all(isinstance(t, str) for t in page)):
                raise RegistryError(f"{self.registry}/{repository}: malformed tag list")
            tags.extend(page or [])
            url = _next_link(raw.headers.get("link"))
        return tags

    # -- uploads --------------------------------------------------------------------------

    async def _start_upload(self, repository: str, digest: Digest, mount_from: str | None) -> tuple[str, bool]:
        params: dict[str, str] = {}
        extra_scopes: tuple[str, ...] = ()
        if mount_from and mount_from != repository:
            params = {"mount": str(digest), "from": mount_from}
            extra_scopes = (repository_scope(mount_from, "pull"),)
        response = await self._exchange(
            "POST",
            f"/v2/{repository}/blobs/uploads/",
            repository=repository,
            actions="pull,push",
            params=params,
            extra_scopes=extra_scopes,
            expected=(201, 202),
            consume=_keep,
            what=f"upload of {digest.short}",
            headers={"Content-Length": "0"},
        )
        if response.status_code == 201:
            return "", True
        location = response.headers.get("location")
        if not location:
            raise RegistryError(f"{self.registry}/{repository}: upload started without a Location header")
        return self._upload_url(response, location, repository), False

    async def _finish_upload(self, repository: str, digest: Digest, body: bytes, location: str) -> None:
        url = _with_query(location, {"digest": str(digest)})
        content_type = {"Content-Type": "application/octet-stream"}
        try:
            await self._exchange(
                "PUT",
                url,
                attempts=1,
                repository=repository,
                actions="pull,push",
                content=body,
                expected=(201, 204),
                headers=content_type,
                consume=_discard,
                what=f"upload of {digest.short}",
                fast=self._fast_putter(url, body, content_type),
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
            response = await self._exchange(
                "PATCH",
                location,
                repository=repository,
                actions="pull,push",
                content=piece,
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"{offset}-{offset + len(piece) - 1}",
                },
                expected=(202,),
                consume=_keep,
                what=f"upload of {digest.short}",
            )
            offset += len(piece)
            next_location = response.headers.get("location")
            if next_location:
                location = self._upload_url(response, next_location, repository)
        await self._exchange(
            "PUT",
            _with_query(location, {"digest": str(digest)}),
            repository=repository,
            actions="pull,push",
            expected=(201, 204),
            consume=_discard,
            what=f"upload of {digest.short}",
        )

    # -- the request engine ---------------------------------------------------------------

    async def _send_raw(self, request: httpx.Request) -> httpx.Response:
        """One request, no auth and no retries (used by the token authority). The body is read
        only for a 200, and at most :data:`MAX_TOKEN_RESPONSE_BYTES` of it."""
        host = request.url.host
        for name, value in self._http.headers.items():  # User-Agent, Accept-Encoding: identity
            request.headers.setdefault(name, value)
        try:
            response = await self._http.send(request, stream=True)
            try:
                content = b""
                if response.status_code == 200:
                    _refuse_encoded(response, f"{self.registry}: token service {host}")
                    what = f"{self.registry}: the answer of token service {host}"
                    content = await _read_capped(response, MAX_TOKEN_RESPONSE_BYTES, what)
            finally:
                await response.aclose()
        except httpx.HTTPError as exc:
            fds = fd_exhaustion(exc)
            raise RegistryUnavailable(
                f"cannot reach the token service {host}: {_describe_transport_error(exc)}",
                hint=fd_exhaustion_hint(fds) if fds is not None else None,
            ) from None
        # The body as read (or none): the headers that described the body on the wire go.
        framing = {"content-encoding", "content-length", "transfer-encoding"}
        headers = [(k, v) for k, v in response.headers.multi_items() if k.lower() not in framing]
        return httpx.Response(response.status_code, headers=headers, content=content, request=request)

    async def _authorization(self, scopes: tuple[str, ...]) -> str | None:
        challenge = self._challenge
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            return basic_header(self._credentials) if self._credentials else None
        token = self._tokens.cached(challenge, scopes)
        if token is None:
            token = await self._tokens.token(challenge, scopes)
        return f"Bearer {token}"

    async def _exchange(
        self,
        method: str,
        url: str,
        *,
        repository: str | None,
        actions: str,
        consume: Callable[[httpx.Response], Awaitable[T]],
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        content: bytes | None = None,
        expected: Sequence[int] = (200,),
        extra_scopes: tuple[str, ...] = (),
        what: str = "",
        with_response: bool = False,
        fast: Callable[[dict[str, str]], Awaitable[FastResponse]] | None = None,
        attempts: int | None = None,
        as_stored: bool = False,
    ) -> Any:
        """Send a request with auth and retries, and hand the response to ``consume``.

        ``consume`` reads the body inside the retry loop, so a connection lost mid-body is
        retried like a refused connection; a :class:`SizeMismatch` (a complete body of the wrong
        length) is not retried and reaches the caller, which names the blob. Returns what
        ``consume`` returns (with the response too if ``with_response``). Non-expected statuses
        become :mod:`ocifs.errors` exceptions.

        A success answer with a ``Content-Encoding`` is refused (ocifs asks for identity), unless
        ``as_stored``: blob bodies are taken byte for byte as sent, whatever they are labelled
        (some servers label gzip layers ``x-gzip``), and their digest checks them.

        ``fast`` (blob GETs only) makes each attempt a threaded :class:`FastBlobReader` GET
        under the same retry policy and error messages; an attempt answered by an auth
        challenge is redone on httpx, which owns the auth handshake.
        """
        scopes = ((repository_scope(repository, actions),) if repository and actions else ()) + extra_scopes
        policy = self.options.retry
        if attempts is not None:
            # The caller retries at a higher level (a PUT into an upload session is not resendable).
            policy = replace(policy, attempts=attempts)
        auth_retried = False
        attempt = 0
        while True:
            attempt += 1
            request_headers = dict(headers or {})
            authorization = await self._authorization(scopes)
            if authorization:
                request_headers["Authorization"] = authorization
            if fast is not None and (self._challenge is not None or self._credentials is None):
                self.stats.requests += 1
                outcome = await fast(request_headers)
                if outcome.data is not None:
                    return outcome.data
                failure = outcome.error
                if isinstance(failure, SizeMismatch):
                    raise failure  # a complete answer of another size: no retry changes it
                if isinstance(failure, RedirectError):
                    raise self._redirect_error(what or method, str(failure))
                if failure is not None:
                    if attempt >= policy.attempts or is_certificate_failure(failure):
                        raise self._transport_error(what or method, failure) from None
                    self.stats.retries += 1
                    delay = policy.backoff(attempt)
                    reason = _describe_transport_error(failure)
                    log.debug("%s %s: %s, retry %d in %.1fs", method, _safe_path(url), reason, attempt, delay)
                    await trio.sleep(delay)
                    continue
                fast_headers = httpx.Headers(outcome.headers)
                if is_retryable_status(outcome.status) and attempt < policy.attempts:
                    self.stats.retries += 1
                    delay = policy.delay_for(attempt, httpx.Response(outcome.status, headers=fast_headers))
                    status = outcome.status
                    log.debug("%s %s: HTTP %s, retry %d in %.1fs", method, _safe_path(url), status, attempt, delay)
                    await trio.sleep(delay)
                    continue
                if outcome.status != 401 and outcome.status not in expected:
                    raise self._error_for(outcome.status, outcome.body, fast_headers, repository, what)
                # A 401 (httpx owns the auth handshake), or an answer this request accepts but
                # the fast path does not read (a 200 with the whole blob to a Range request, as
                # a registry may send): this attempt continues on httpx.
            body: bytes | AsyncIterator[bytes] | None = content
            if content is not None and len(content) > UPLOAD_SLICE:
                # httpx times a write as a whole: a 16 MiB body on a slow link would time out
                # however steadily it moves. Slices give each 1 MiB its own write timeout.
                body = _slices(content)
                request_headers["Content-Length"] = str(len(content))
            request = self._http.build_request(method, url, headers=request_headers, params=params, content=body)
            self.stats.requests += 1
            try:
                response = await self._http.send(request, stream=True)
                try:
                    status = response.status_code
                    if status == 401 and not auth_retried:
                        challenge = parse_challenge(response.headers.get("www-authenticate"))
                        if challenge is not None and (challenge.scheme == "bearer" or self._credentials):
                            auth_retried = True
                            # Drop the token only if this request carried it: a request sent before
                            # another task learned the challenge must not discard that task's token.
                            if authorization and authorization.startswith("Bearer ") and self._challenge:
                                self._tokens.invalidate(self._challenge, scopes)
                            self._challenge = challenge
                            attempt -= 1  # an auth round trip is not a failure
                            continue
                    if status in expected:
                        if not as_stored and method != "HEAD" and consume not in (_discard, _keep):
                            where = f"{self.registry}/{repository}" if repository else self.registry
                            _refuse_encoded(response, f"{where}: {what or method}")
                        result = await consume(response)
                        return (result, response) if with_response else result
                    if is_retryable_status(status) and attempt < policy.attempts:
                        delay = policy.delay_for(attempt, response)
                        log.debug(
                            "%s %s: HTTP %s, retry %d in %.1fs", method, _safe_url(request.url), status, attempt, delay
                        )
                        self.stats.retries += 1
                    else:
                        body = await _read_error_body(response)
                        raise self._error_for(status, body, response.headers, repository, what)
                finally:
                    await response.aclose()
            except httpx.HTTPError as exc:
                if isinstance(exc, httpx.TooManyRedirects):
                    raise self._redirect_error(what or method, "too many redirects (a redirect loop?)") from None
                if isinstance(exc, httpx.UnsupportedProtocol):
                    raise self._redirect_error(what or method, "sent to a URL that is not http(s)") from None
                if isinstance(exc, httpx.RemoteProtocolError) and str(exc).startswith("Invalid URL in location"):
                    raise self._redirect_error(what or method, "redirected to a malformed URL") from None
                if not is_retryable_exception(exc) or attempt >= policy.attempts:
                    raise self._transport_error(what or method, exc) from None
                delay = policy.backoff(attempt)
                log.debug(
                    "%s %s: %s, retry %d in %.1fs",
                    method,
                    _safe_url(request.url),
                    _describe_transport_error(exc),
                    attempt,
                    delay,
                )
                self.stats.retries += 1
            await trio.sleep(delay)

    def _transport_error(self, what: str, exc: BaseException) -> RegistryError:
        """The error for a request that failed below HTTP, retries spent or not worth making.
        :class:`RegistryUnavailable` (which callers such as the fetcher retry later) only when a
        later try could work; a certificate that fails verification is the same next time."""
        message = f"{self.registry}: {what} failed: {_describe_transport_error(exc)}"
        if is_certificate_failure(exc):
            return RegistryError(message, hint=self._unreachable_hint(exc))
        return RegistryUnavailable(message, hint=self._unreachable_hint(exc))

    def _upload_url(self, response: httpx.Response, location: str, repository: str) -> str:
        """The upload session's URL from a ``Location`` header (relative ones are common)."""
        try:
            return str(response.url.join(location))
        except httpx.InvalidURL:
            raise RegistryError(
                f"{self.registry}/{repository}: the registry gave the upload a malformed Location "
                f"{_printable(location)!r}",
                hint="the registry (or a proxy in front of it) is misconfigured",
            ) from None

    def _redirect_error(self, what: str, reason: str) -> RegistryError:
        """Redirects that cannot lead anywhere: a loop, or to a URL that is not http(s). Not
        retried (neither here nor by the fetcher): the registry sends the same ones again."""
        return RegistryError(
            f"{self.registry}: {what} failed: {reason}",
            hint="the registry (or a proxy in front of it) is misconfigured",
        )

    def _unreachable_hint(self, exc: BaseException) -> str:
        fds = fd_exhaustion(exc)
        if fds is not None:  # not the network: this process (or the host) is out of descriptors
            return fd_exhaustion_hint(fds)
        if _ssl_cause(exc) is not None:
            return "pass --ca-file with the registry's CA, or --plain-http if it speaks plain HTTP"
        if isinstance(exc, httpx.ConnectError | ConnectionRefusedError):
            return "is the registry running and the address right?"
        return "check the network and try again; the operation resumes where it stopped"

    def _error_for(
        self, status: int, body: bytes, headers: httpx.Headers, repository: str | None, what: str
    ) -> RegistryError:
        where = f"{self.registry}/{repository}" if repository else self.registry
        code, detail = _parse_error_body(body, headers.get("content-type", ""))
        subject = f"{what}: " if what else ""
        text = f"{where}: {subject}{detail}" if detail else f"{where}: {subject}HTTP {status}"
        if status == 401:
            if self._credentials is None:
                return AuthenticationError(
                    f"{where}: authentication required",
                    hint=f"run `ocifs login {self.registry}` or set DOCKER_CONFIG",
                    status=status,
                    code=code,
                )
            return AuthenticationError(
                f"{where}: the registry rejected the credentials for user {self._credentials.username!r}",
                hint=f"check them with `ocifs login {self.registry}`",
                status=status,
                code=code,
            )
        if status == 403 or code == "DENIED":
            return PermissionDenied(
                f"{where}: access denied ({subject.rstrip(': ') or 'request'})",
                hint="the credentials lack permission for this repository",
                status=status,
                code=code,
            )
        if status == 404:
            return NotFound(text if detail else f"{where}: {what or 'resource'} not found", status=status, code=code)
        # Go's TLS server answers plain HTTP with a bare "HTTP/1.0 400" and that text as the body;
        # a HEAD (push starts with one) gets no body, and no registry answers without any header.
        plain_to_tls = b"HTTP request to an HTTPS server" in body or (
            not headers and self.base_url.startswith("http://")
        )
        if status == 400 and plain_to_tls:
            return RegistryError(
                f"{where}: this registry speaks HTTPS, not plain HTTP",
                hint=("drop --plain-http (or plain_http in the config) and " if self.options.plain_http else "")
                + "pass --ca-file with its CA (or --insecure)",
                status=status,
            )
        if status == 413:
            return RegistryError(f"{where}: {subject}too large for this registry (HTTP 413)", status=status, code=code)
        if is_retryable_status(status):
            return RegistryUnavailable(
                f"{text} after {self.options.retry.attempts} attempts",
                hint="the registry is failing; try again later (a re-run resumes)",
                status=status,
                code=code,
            )
        return RegistryError(text, status=status, code=code)


# -- helpers ------------------------------------------------------------------------------


def _ssl_context(options: ClientOptions) -> ssl.SSLContext | bool:
    if options.insecure:
        return False
    if options.ca_file:
        try:
            return ssl.create_default_context(cafile=options.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise UsageError(f"cannot use CA file {options.ca_file}: {exc}") from None
    return True


async def _slices(data: bytes) -> AsyncIterator[bytes]:
    # memoryview slices: no copy (256 KiB copied slices cost ~0.3 CPU-s/GiB, bench/profile_push.py).
    view = memoryview(data)
    for start in range(0, len(data), UPLOAD_SLICE):
        yield view[start : start + UPLOAD_SLICE]  # type: ignore[misc]


async def _skip_redirect_body(response: httpx.Response) -> None:
    """httpx reads a redirect's whole body before it follows the redirect; nobody uses it.
    Read at most :data:`_IGNORED_BODY_LIMIT` of it (an endless one is not read on) and drop it."""
    if response.has_redirect_location and isinstance(response.stream, httpx.AsyncByteStream):
        response.stream = _SkippedBody(response.stream)


class _SkippedBody(httpx.AsyncByteStream):
    """A body read up to :data:`_IGNORED_BODY_LIMIT` (to the end if it is short, so that the
    connection is reused) and handed on as nothing."""

    def __init__(self, stream: httpx.AsyncByteStream) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        seen = 0
        async for piece in self._stream:
            seen += len(piece)
            if seen > _IGNORED_BODY_LIMIT:
                break
        if False:  # an async generator that yields nothing
            yield b""

    async def aclose(self) -> None:
        await self._stream.aclose()


def _refuse_encoded(response: httpx.Response, what: str) -> None:
    """Refuse a body sent with a ``Content-Encoding``: ocifs asks for identity, and digests,
    sizes and limits are of the bytes as stored."""
    encoding = response.headers.get("content-encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        raise RegistryError(
            f"{what}: the answer is {_printable(encoding)}-encoded though ocifs asks for identity",
            hint="a proxy in front of the registry compresses answers; turn that off",
            status=response.status_code,
        )


async def _raw_body(response: httpx.Response) -> AsyncIterator[bytes]:
    """The body as sent (never decoded: see ``Accept-Encoding`` above), piece by piece."""
    try:
        content = response.content  # a response that arrived already read (MockTransport)
    except httpx.ResponseNotRead:
        async for piece in response.aiter_raw():
            yield piece
        return
    if content:
        yield content


async def _discard(response: httpx.Response) -> None:
    await _read_prefix(response, _IGNORED_BODY_LIMIT)


async def _keep(response: httpx.Response) -> httpx.Response:
    await _read_prefix(response, _IGNORED_BODY_LIMIT)
    return response


async def _read_json_response(response: httpx.Response) -> Any:
    data = await _read_capped(response, MAX_MANIFEST_BYTES, "response")
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        raise RegistryError(f"malformed JSON from {response.url.host}") from None


async def _read_capped(response: httpx.Response, limit: int, what: str) -> bytes:
    length = response.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise RegistryError(f"{what} is {int(length)} bytes, over the {limit}-byte limit")
    buf = bytearray()
    async for piece in _raw_body(response):
        buf += piece
        if len(buf) > limit:
            raise RegistryError(f"{what} is over the {limit}-byte limit")
    return bytes(buf)


async def _read_exact(response: httpx.Response, size: int | None, total: int | None = None) -> bytes:
    """Read the whole body into one preallocated buffer.

    A body cut short of its ``Content-Length`` raises httpx's own error (retried). A complete
    body of another length than ``size`` raises :class:`SizeMismatch` (not retried); a longer
    one is read on for at most :func:`excess_read_limit` bytes to see that it is complete, and
    one that announces more than that is not read at all. ``total``: the blob's size from a
    206's ``Content-Range``, for the message.
    """
    if size is None:
        return b"".join([piece async for piece in _raw_body(response)])
    limit = size + excess_read_limit(size)
    length = response.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise SizeMismatch(int(length), size, total=total)
    buf = bytearray(size)
    view = memoryview(buf)
    seen = 0
    async for piece in _raw_body(response):
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


async def _read_error_body(response: httpx.Response) -> bytes:
    """Up to 64 KiB of an error answer's body, for the message. One that breaks off is still
    that error (distribution 2.8 answers a 416 with the blob's Content-Length and 33 bytes):
    what arrived is kept, and the status decides, not the broken body."""
    if response.headers.get("content-encoding", "identity").strip().lower() != "identity":
        return b""  # not asked for; not decoded: the status alone says what failed
    buf = bytearray()
    try:
        async for piece in _raw_body(response):
            buf += piece
            if len(buf) >= 64 * 1024:
                break
    except httpx.HTTPError:
        pass
    return bytes(buf[: 64 * 1024])


async def _read_prefix(response: httpx.Response, limit: int) -> bytes:
    buf = bytearray()
    async for piece in _raw_body(response):
        buf += piece
        if len(buf) >= limit:
            break
    return bytes(buf[:limit])


def _parse_error_body(body: bytes, content_type: str) -> tuple[str | None, str]:
    """The first OCI error ``code`` and a one-line description; an excerpt for non-JSON bodies."""
    if not body:
        return None, ""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nested too deeply
        return None, f"unexpected response: {_printable(body)}"
    errors = data.get("errors") if isinstance(data, dict) else None
    if not isinstance(errors, list) or not errors or not isinstance(errors[0], dict):
        return None, f"unexpected response: {_printable(body)}"
    first = errors[0]
    code = first.get("code") if isinstance(first.get("code"), str) else None
    message = first.get("message")
    detail = first.get("detail")
    # The registry's words, escaped and shortened: they must not forge lines or send escapes.
    text = f"{_printable(code or 'ERROR')}: {_printable(message if isinstance(message, str) else '')}".rstrip(": ")
    if isinstance(detail, str) and detail:
        text += f" ({_printable(detail)})"
    elif isinstance(detail, dict | list) and detail:
        text += f" ({_printable(json.dumps(detail))})"
    if len(errors) > 1:
        text += f" (+{len(errors) - 1} more)"
    return code, text


def _printable(data: bytes | str) -> str:
    """Untrusted text for a message: control characters blanked, at most 200 characters."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    text = "".join(c if c.isprintable() else " " for c in text).strip()
    return text[:_BODY_EXCERPT] + ("…" if len(text) > _BODY_EXCERPT else "")


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


def _next_link(header: str | None) -> str | None:
    if not header:
        return None
    for part in header.split(","):
        if 'rel="next"' in part or "rel=next" in part:
            start, end = part.find("<"), part.find(">")
            if 0 <= start < end:
                return part[start + 1 : end]
    return None


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


def _safe_path(url: str) -> str:
    """:func:`_safe_url` of a URL or path as :meth:`RegistryClient._exchange` gets it."""
    return url.split("?", 1)[0]


def _safe_url(url: httpx.URL) -> str:
    """A URL for logs: no userinfo and no query (upload state and tokens live there)."""
    return str(url.copy_with(query=None, username=None, password=None))


def _describe_transport_error(exc: BaseException) -> str:
    fds = fd_exhaustion(exc)
    if fds is not None:
        return fds.strerror or "Too many open files"
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return "timed out"
    tls = _ssl_cause(exc)
    if tls is not None:
        reason = getattr(tls, "reason", None) or type(tls).__name__
        return f"TLS handshake failed ({reason})"
    if isinstance(exc, httpx.ConnectError | ConnectionRefusedError):
        return "connection refused or host unreachable"
    if isinstance(exc, BodyLengthError):
        return f"connection broken ({exc})"
    if isinstance(exc, ConnectionError | http.client.HTTPException):
        return f"connection broken ({type(exc).__name__})"
    if isinstance(exc, httpx.RemoteProtocolError):
        return f"connection broken ({_printable(str(exc)) or 'protocol error'})"
    return f"{type(exc).__name__}: {_printable(str(exc))}"


def _ssl_cause(exc: BaseException) -> ssl.SSLError | None:
    """The ``ssl.SSLError`` behind a transport error (trio wraps it in BrokenResourceError)."""
    return find_cause(exc, ssl.SSLError)
