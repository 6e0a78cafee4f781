"""The one place that decides what is a temporary failure and how long to wait before retrying,
and the one backoff function of the whole stack (the request engine and the fetcher use it; how
their retries compose is written down in docs/requests.md).

Retried: connection-level failures (refused, reset, timeouts, bodies cut short of their
``Content-Length``), HTTP 408, 429 and 5xx except 501 (not implemented is permanent). Everything
else fails at once — notably a *complete* blob body whose length is not the descriptor's size:
the artifact or the registry is inconsistent, and no retry changes that (the client raises
:class:`~ocifs.errors.BlobSizeMismatch`). A connection that fails because the process is out of
file descriptors (EMFILE/ENFILE) is retried too (other requests end and give theirs back), but
reported as what it is, not as a network problem. A certificate that fails verification is not
retried: the same certificate comes back every time. The wait is exponential backoff with full
jitter (AWS architecture blog, "Exponential Backoff and Jitter"), unless the server sent
``Retry-After``, which is honoured up to ``max_delay``.
"""

from __future__ import annotations

import email.utils
import random
import ssl
import time
from dataclasses import dataclass

import httpx

from ocifs.errors import find_cause

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How many times and how patiently to retry a request.

    ``attempts`` counts every try, the first included. ``base_delay`` doubles per retry up to
    ``max_delay``; the actual wait is uniform in [0, that] (full jitter) so that many parallel
    chunk requests failing together do not retry in lockstep.

    ``chunk_retries`` is the fetcher's share (a mount's reads): how many more whole downloads of
    a chunk it makes after one failed with its ``attempts`` spent or came back corrupt. Two: a
    cold read then reports within seconds of the registry going away, not minutes, and a chunk
    corrupted once in transit still arrives (docs/requests.md has the arithmetic).
    """

    attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 20.0
    chunk_retries: int = 2

    @property
    def fetch_retries(self) -> int:
        """The fetcher's retries under this policy: ``chunk_retries``, none when the user asked for
        a single attempt per request (``--retries 1`` means "do not retry")."""
        return min(self.chunk_retries, self.attempts - 1)

    def backoff(self, retry_number: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry ``retry_number`` (1 for the first retry)."""
        return backoff(retry_number, self.base_delay, self.max_delay, rng)

    def delay_for(self, retry_number: int, retry_after: str | None) -> float:
        """Seconds to wait: the answer's ``Retry-After`` when it has one, else backoff."""
        after = parse_retry_after(retry_after)
        if after is not None:
            return min(after, self.max_delay)
        return self.backoff(retry_number)


def backoff(retry_number: int, base_delay: float, max_delay: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter: uniform in [0, ``base_delay`` doubled per retry,
    at most ``max_delay``], so that requests failing together (a registry restart) do not all
    come back in the same instant. ``retry_number`` is 1 for the first retry."""
    ceiling = min(max_delay, base_delay * (2 ** (retry_number - 1)))
    return (rng or random).uniform(0, ceiling)


def is_retryable_status(status: int) -> bool:
    """Whether an HTTP status means "try again later" rather than "this will never work"."""
    return status in RETRYABLE_STATUS


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
    verification — wrong CA, wrong name, expired — which no retry changes."""
    return find_cause(exc, ssl.SSLCertVerificationError) is not None


def parse_retry_after(value: str | None) -> float | None:
    """Parse a ``Retry-After`` header (delta-seconds or HTTP-date) into seconds, or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - time.time())
