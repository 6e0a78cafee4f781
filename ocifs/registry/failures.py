"""What went wrong, in the user's words: every failure of a registry request becomes an
:mod:`ocifs.errors` exception here, and nowhere else.

Owns: the messages and hints (the hostile-server and fault suites hold them word for word), the
rendering of a registry's error body, of a transport failure and of untrusted text. Must not:
send requests or decide whether to retry (:mod:`ocifs.retry` decides, the request
engine retries). Third-party exceptions stay attached as the cause (``raise … from exc``), so a
caller inspects the cause chain (:func:`ocifs.errors.find_cause`), never message text.
"""

from __future__ import annotations

import http.client
import json
import ssl
from collections.abc import Mapping
from dataclasses import dataclass

import httpx

from ocifs.errors import (
    AuthenticationError,
    BlobSizeMismatch,
    NotFound,
    PermissionDenied,
    RegistryError,
    RegistryUnavailable,
    fd_exhaustion,
    fd_exhaustion_hint,
    find_cause,
)
from ocifs.registry.tls import Trust
from ocifs.registry.transient import is_certificate_failure, is_retryable_status
from ocifs.registry.transport import BodyLengthError, SizeMismatch

# Of a registry's words, at most this many characters reach a message (one readable line).
_BODY_EXCERPT = 200


@dataclass(frozen=True, slots=True)
class Failures:
    """The error factory of one client: what it needs to know to name registry and remedy."""

    registry: str
    username: str | None  # None: no credentials were given
    plain_http: bool  # the client speaks plain HTTP to the registry
    plain_http_asked: bool  # … because the user asked for it (--plain-http)
    attempts: int  # of the retry policy, for "after N attempts"
    trust: Trust | None = None  # the TLS configuration, for what to check when a handshake fails

    def for_status(
        self, status: int, body: bytes, headers: Mapping[str, str], repository: str | None, what: str
    ) -> RegistryError:
        """The error for an answer with a status the request does not accept (retries spent)."""
        where = f"{self.registry}/{repository}" if repository else self.registry
        code, detail = parse_error_body(body)
        subject = f"{what}: " if what else ""
        text = f"{where}: {subject}{detail}" if detail else f"{where}: {subject}HTTP {status}"
        if status == 401:
            if self.username is None:
                return AuthenticationError(
                    f"{where}: authentication required",
                    hint=f"run `ocifs login {self.registry}` or set DOCKER_CONFIG",
                    status=status,
                    code=code,
                )
            return AuthenticationError(
                f"{where}: the registry rejected the credentials for user {self.username!r}",
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
        plain_to_tls = b"HTTP request to an HTTPS server" in body or (not headers and self.plain_http)
        if status == 400 and plain_to_tls:
            return RegistryError(
                f"{where}: this registry speaks HTTPS, not plain HTTP",
                hint=("drop --plain-http (or plain_http in the config) and " if self.plain_http_asked else "")
                + "pass --ca-file with its CA (or --insecure)",
                status=status,
            )
        if status == 413:
            return RegistryError(f"{where}: {subject}too large for this registry (HTTP 413)", status=status, code=code)
        if is_retryable_status(status):
            return RegistryUnavailable(
                f"{text} after {self.attempts} attempts",
                hint="the registry is failing; try again later (a re-run resumes)",
                status=status,
                code=code,
            )
        return RegistryError(text, status=status, code=code)

    def transport(self, what: str, exc: BaseException) -> RegistryError:
        """The error for a request that failed below HTTP, retries spent or not worth making.
        :class:`RegistryUnavailable` (which callers such as the fetcher retry later) only when a
        later try could work; a certificate that fails verification is the same next time."""
        message = f"{self.registry}: {what} failed: {describe_transport_error(exc)}"
        tls = ssl_cause(exc)
        hint = self.trust.hint(tls) if tls is not None and self.trust is not None else unreachable_hint(exc)
        if is_certificate_failure(exc):
            return RegistryError(message, hint=hint)
        return RegistryUnavailable(message, hint=hint)

    def redirect(self, what: str, reason: str) -> RegistryError:
        """Redirects that cannot lead anywhere: a loop, or to a URL that is not http(s). Not
        retried (neither here nor by the fetcher): the registry sends the same ones again."""
        return RegistryError(
            f"{self.registry}: {what} failed: {reason}",
            hint="the registry (or a proxy in front of it) is misconfigured",
        )

    def storage_refused(self, what: str, host: str, status: int, repository: str | None) -> RegistryError:
        """A redirect target on another origin (object storage, a CDN) kept refusing the signed
        URLs the registry redirected to, fresh ones included. Not the registry's credentials:
        they never reach that host."""
        where = f"{self.registry}/{repository}" if repository else self.registry
        return RegistryError(
            f"{where}: {what or 'request'}: the storage host {printable(host)} refused the redirected download "
            f"({status}): a signed URL may have expired or the host's clock is off",
            hint=f"each of {self.attempts} redirects from the registry was refused; check this machine's clock, "
            "or try again later",
            status=status,
        )

    def size_mismatch(self, repository: str, text: str, exc: SizeMismatch | None) -> BlobSizeMismatch:
        return BlobSizeMismatch(
            f"{self.registry}/{repository}: {text}",
            hint="the artifact is broken (or a proxy in front of the registry alters lengths); push it again",
            expected=exc.expected if exc else 0,
            served=exc.served if exc else 0,
        )

    def malformed_location(self, repository: str, location: str) -> RegistryError:
        return RegistryError(
            f"{self.registry}/{repository}: the registry gave the upload a malformed Location {printable(location)!r}",
            hint="the registry (or a proxy in front of it) is misconfigured",
        )


def redirect_reason(exc: BaseException) -> str | None:
    """Why ``exc`` (from httpx) is a redirect that leads nowhere, or None if it is not one."""
    if isinstance(exc, httpx.TooManyRedirects):
        return "too many redirects (a redirect loop?)"
    if isinstance(exc, httpx.UnsupportedProtocol):
        return "sent to a URL that is not http(s)"
    if isinstance(exc, httpx.RemoteProtocolError) and str(exc).startswith("Invalid URL in location"):
        return "redirected to a malformed URL"
    return None


def token_service_error(host: str, exc: BaseException) -> RegistryUnavailable:
    """The error for a token service that could not be reached."""
    fds = fd_exhaustion(exc)
    return RegistryUnavailable(
        f"cannot reach the token service {host}: {describe_transport_error(exc)}",
        hint=fd_exhaustion_hint(fds) if fds is not None else None,
    )


def refuse_encoded(status: int, headers: Mapping[str, str], what: str) -> None:
    """Refuse a body sent with a ``Content-Encoding``: ocifs asks for identity, and digests,
    sizes and limits are of the bytes as stored."""
    encoding = headers.get("content-encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        raise RegistryError(
            f"{what}: the answer is {printable(encoding)}-encoded though ocifs asks for identity",
            hint="a proxy in front of the registry compresses answers; turn that off",
            status=status,
        )


def unreachable_hint(exc: BaseException) -> str:
    fds = fd_exhaustion(exc)
    if fds is not None:  # not the network: this process (or the host) is out of descriptors
        return fd_exhaustion_hint(fds)
    if ssl_cause(exc) is not None:
        return "pass --ca-file with the registry's CA, or --plain-http if it speaks plain HTTP"
    if isinstance(exc, httpx.ConnectError | ConnectionRefusedError):
        return "is the registry running and the address right?"
    return "check the network and try again; the operation resumes where it stopped"


def describe_transport_error(exc: BaseException) -> str:
    fds = fd_exhaustion(exc)
    if fds is not None:
        return fds.strerror or "Too many open files"
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return "timed out"
    tls = ssl_cause(exc)
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
        return f"connection broken ({printable(str(exc)) or 'protocol error'})"
    return f"{type(exc).__name__}: {printable(str(exc))}"


def ssl_cause(exc: BaseException) -> ssl.SSLError | None:
    """The ``ssl.SSLError`` behind a transport error (trio wraps it in BrokenResourceError)."""
    return find_cause(exc, ssl.SSLError)


def parse_error_body(body: bytes) -> tuple[str | None, str]:
    """The first OCI error ``code`` and a one-line description; an excerpt for non-JSON bodies."""
    if not body:
        return None, ""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nested too deeply
        return None, f"unexpected response: {printable(body)}"
    errors = data.get("errors") if isinstance(data, dict) else None
    if not isinstance(errors, list) or not errors or not isinstance(errors[0], dict):
        return None, f"unexpected response: {printable(body)}"
    first = errors[0]
    code = first.get("code") if isinstance(first.get("code"), str) else None
    message = first.get("message")
    detail = first.get("detail")
    # The registry's words, escaped and shortened: they must not forge lines or send escapes.
    text = f"{printable(code or 'ERROR')}: {printable(message if isinstance(message, str) else '')}".rstrip(": ")
    if isinstance(detail, str) and detail:
        text += f" ({printable(detail)})"
    elif isinstance(detail, dict | list) and detail:
        text += f" ({printable(json.dumps(detail))})"
    if len(errors) > 1:
        text += f" (+{len(errors) - 1} more)"
    return code, text


def printable(data: bytes | str) -> str:
    """Untrusted text for a message: control characters blanked, at most 200 characters."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    text = "".join(c if c.isprintable() else " " for c in text).strip()
    return text[:_BODY_EXCERPT] + ("…" if len(text) > _BODY_EXCERPT else "")
