"""The one request engine: auth and the one retry loop of every registry request.

:meth:`RequestEngine.send` takes a :class:`~ocifs.registry.transport.Request`, sends each
attempt on the threaded transport when it carries the request (large blob bodies) and on the
general one (httpx) otherwise, answers a 401 challenge once (and once more if the refused
credentials were replaced by asking their :class:`CredentialSource` again), retries what
:mod:`ocifs.registry.transient` calls temporary under the client's one
:class:`~ocifs.retry.RetryPolicy`, and
turns what is left into an :mod:`ocifs.errors` exception (:mod:`ocifs.registry.failures`),
with the transport's exception as its cause. Higher layers retry only what this loop cannot:
a new upload session (``upload_blob``), and a chunk that stays unavailable or arrives corrupt
(the fetcher) — docs/requests.md says how they compose. Must not: know the distribution API's
paths (the client does) or read bodies itself (the request's reader does).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import httpx
import trio

from ocifs.errors import RegistryError
from ocifs.registry.auth import Challenge, TokenAuthority, basic_header, parse_challenge, repository_scope
from ocifs.registry.blobio import ThreadedTransport
from ocifs.registry.credentials import Credentials, CredentialSource
from ocifs.registry.failures import Failures, describe_transport_error, redirect_reason
from ocifs.registry.transient import is_retryable_exception, is_retryable_status, is_storage_refusal
from ocifs.registry.transport import Answer, ClientStats, RedirectError, Request, SizeMismatch, Transport
from ocifs.retry import RetryPolicy

log = logging.getLogger(__name__)

T = TypeVar("T")


class RequestEngine:
    """Sends requests to one registry with auth and retries; concurrency-safe under trio."""

    def __init__(
        self,
        registry: str,
        credentials: Credentials | CredentialSource | None,
        policy: RetryPolicy,
        failures: Failures,
        general: Transport,
        raw_sender: Callable[[httpx.Request], Awaitable[httpx.Response]],
        threaded: ThreadedTransport | None,
        stats: ClientStats,
    ) -> None:
        self.policy = policy
        self.failures = failures
        self.stats = stats
        self.credentials = (
            credentials if isinstance(credentials, CredentialSource) else CredentialSource.fixed(credentials)
        )
        self._general = general
        self.threaded = threaded
        self._challenge: Challenge | None = None
        self.tokens = TokenAuthority(registry, self.credentials, raw_sender)

    async def aclose(self) -> None:
        await self._general.aclose()
        if self.threaded is not None:
            await self.threaded.aclose()

    async def send(self, request: Request[T]) -> Answer[T]:
        """Send ``request`` until it is accepted, and return that answer (``value`` is what the
        request's reader made of the body). A :class:`SizeMismatch` (a complete body of the
        wrong length) is not retried and reaches the caller, which names the blob; every other
        failure becomes an :mod:`ocifs.errors` exception."""
        scopes = (
            (repository_scope(request.repository, request.actions),) if request.repository and request.actions else ()
        ) + request.extra_scopes
        attempts = self.policy.attempts if request.resend else 1
        what = request.what or request.method
        auth_retried = refreshed = False
        attempt = refusals = 0
        while True:
            attempt += 1
            headers = dict(request.headers)
            used = self.credentials.current
            authorization = await self._authorization(scopes)
            if authorization:
                headers["Authorization"] = authorization

            # Whether an unaccepted answer's body is read for the message: not when another
            # attempt follows (a retry, or the first 401 answered with credentials).
            final, auth_final = attempt >= attempts, auth_retried

            def excerpt(status: int, final: bool = final, auth_final: bool = auth_final) -> bool:
                if status == 401:
                    return auth_final
                return final or not is_retryable_status(status)

            # The threaded transport does not learn a challenge: it goes first only once the
            # challenge is known (or there are no credentials to answer one with).
            transport: Transport = self._general
            threaded = self.threaded
            known = self._challenge is not None or used is None
            if threaded is not None and known and threaded.carries(request):
                transport = threaded
            self.stats.requests += 1
            answer = await transport.send(request, headers, excerpt)
            if answer.declined:
                self.stats.requests += 1
                answer = await self._general.send(request, headers, excerpt)
            if answer.accepted:
                return answer
            failure = answer.error
            if failure is not None:
                if isinstance(failure, SizeMismatch):
                    raise failure  # a complete answer of another size: no retry changes it
                reason = str(failure) if isinstance(failure, RedirectError) else redirect_reason(failure)
                if reason is not None:
                    raise self.failures.redirect(what, reason) from failure
                if not is_retryable_exception(failure) or attempt >= attempts:
                    raise self.failures.transport(what, failure) from failure
                delay = self.policy.backoff(attempt)
                log.debug(
                    "%s %s: %s, retry %d in %.1fs",
                    request.method,
                    _safe_path(request.url),
                    describe_transport_error(failure),
                    attempt,
                    delay,
                )
                self.stats.retries += 1
                await trio.sleep(delay)
                continue
            status = answer.status
            storage = answer.storage_host
            if storage is not None and is_storage_refusal(status, storage):
                # A redirect target elsewhere (object storage, a CDN) refused its signed URL,
                # most likely expired during a long mount: the registry, asked again, redirects
                # to a fresh one. Not an auth round trip: the credentials never went there.
                if attempt >= attempts:
                    raise self.failures.storage_refused(what, storage, status, request.repository)
                # The first fresh redirect at once (an expired URL is fixed by it); then back off.
                delay = self.policy.backoff(attempt - 1) if refusals else 0.0
                refusals += 1
                log.debug(
                    "%s %s: the storage host %s answered HTTP %s, asking the registry again in %.1fs",
                    request.method,
                    _safe_path(request.url),
                    storage,
                    status,
                    delay,
                )
                self.stats.retries += 1
                await trio.sleep(delay)
                continue
            if status == 401 and not auth_retried:
                challenge = parse_challenge(answer.headers.get("www-authenticate"))
                if challenge is not None and (challenge.scheme == "bearer" or used):
                    auth_retried = True
                    # Drop the token only if this request carried it: a request sent before
                    # another task learned the challenge must not discard that task's token.
                    if authorization and authorization.startswith("Bearer ") and self._challenge:
                        self.tokens.invalidate(self._challenge, scopes)
                    self._challenge = challenge
                    attempt -= 1  # an auth round trip is not a failure
                    continue
            if status == 401 and auth_retried and not refreshed:
                # Refused after a fresh challenge: the credentials may have been rotated. Ask
                # their source again, once; retry only if that gave something new.
                refreshed = True
                if await self.credentials.refresh(used):
                    if authorization and authorization.startswith("Bearer ") and self._challenge:
                        self.tokens.invalidate(self._challenge, scopes)
                    attempt -= 1
                    continue
            if is_retryable_status(status) and attempt < attempts:
                delay = self.policy.delay_for(attempt, answer.headers.get("retry-after"))
                log.debug(
                    "%s %s: HTTP %s, retry %d in %.1fs", request.method, _safe_path(request.url), status, attempt, delay
                )
                self.stats.retries += 1
                await trio.sleep(delay)
                continue
            raise self._status_error(answer, request)

    def _status_error(self, answer: Answer[T], request: Request[T]) -> RegistryError:
        return self.failures.for_status(answer.status, answer.body, answer.headers, request.repository, request.what)

    async def _authorization(self, scopes: tuple[str, ...]) -> str | None:
        challenge = self._challenge
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            credentials = self.credentials.current
            return basic_header(credentials) if credentials else None
        token = self.tokens.cached(challenge, scopes)
        if token is None:
            token = await self.tokens.token(challenge, scopes)
        return f"Bearer {token}"


def _safe_path(url: str) -> str:
    """A URL or path for logs: no query (upload state and pre-signed signatures live there)."""
    return url.split("?", 1)[0]
