"""The one place that decides what is a temporary failure, for both transports (how long to
wait and how often is :mod:`ocifs.retry`'s; how the retries compose is in docs/requests.md).

Retried: connection-level failures (refused, reset, timeouts, bodies cut short of their
``Content-Length``), HTTP 408, 429 and 5xx except 501 (not implemented is permanent). Everything
else fails at once — notably a *complete* blob body whose length is not the descriptor's size:
the artifact or the registry is inconsistent, and no retry changes that (the client raises
:class:`~ocifs.errors.BlobSizeMismatch`). A connection that fails because the process is out of
file descriptors (EMFILE/ENFILE) is retried too (other requests end and give theirs back), but
reported as what it is, not as a network problem. A certificate that fails verification is not
retried: the same certificate comes back every time; nor is a handshake the server ended over the
client certificate.

A refusal (400, 401, 403) from a redirect target on another origin than the registry's —
object storage or a CDN serving a signed URL — usually means the signature expired (S3, GCS and
CloudFront answer so): the registry is asked again, which redirects to a freshly signed URL.
"""

from __future__ import annotations

import ssl

import httpx

from ocifs.errors import find_cause
from ocifs.registry.tls import is_client_certificate_refused

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
#: What a storage host answers a signed URL it no longer honours with (expired, clock skew).
STORAGE_REFUSALS = frozenset({400, 401, 403})


def is_retryable_status(status: int) -> bool:
    """Whether an HTTP status means "try again later" rather than "this will never work"."""
    return status in RETRYABLE_STATUS


def is_storage_refusal(status: int, storage_host: str | None) -> bool:
    """Whether an answer is a redirect target's refusal of its signed URL: worth a fresh
    redirect from the registry (``storage_host``: who answered, None for the registry)."""
    return storage_host is not None and status in STORAGE_REFUSALS


def is_retryable_exception(exc: BaseException) -> bool:
    """Whether a transport's failure is transient.

    From httpx: ``httpx.TransportError`` covers connect/read/write errors, timeouts and protocol
    errors (e.g. a body shorter than its Content-Length); unsupported-protocol and proxy
    configuration errors are permanent. From the threaded transport (which reports only socket
    errors, ``http.client`` errors and bodies cut short; wrong sizes and bad redirects are
    decided before this): all transient. A failed certificate verification never is.
    """
    if is_certificate_failure(exc):
        return False
    if isinstance(exc, httpx.HTTPError):
        return isinstance(exc, httpx.TransportError) and not isinstance(
            exc, httpx.UnsupportedProtocol | httpx.ProxyError
        )
    return True


def is_certificate_failure(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it: trio and httpx wrap it) is a failed certificate
    verification — wrong CA, wrong name, expired — or a server refusing the client certificate
    (or its absence), which no retry changes."""
    if find_cause(exc, ssl.SSLCertVerificationError) is not None:
        return True
    tls = find_cause(exc, ssl.SSLError)
    return tls is not None and is_client_certificate_refused(tls)
