"""Registry authentication: the ``WWW-Authenticate`` challenge and the token flow.

A registry answers 401 with either ``Basic realm=...`` (send Basic on every request) or
``Bearer realm=...,service=...,scope=...`` (fetch a token from the realm for the scope and
retry). Tokens are cached per scope until shortly before they expire; one refresh per scope
runs at a time however many requests need it (a ``trio.Lock`` per scope).

Only :class:`TokenAuthority` talks to the realm; it never logs a secret or a token. When the
realm refuses the credentials (401/403), their :class:`CredentialSource` is asked again once
and the token requested again if that gave new ones (rotated passwords, expiring helper
tokens).
"""

from __future__ import annotations

import base64
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import trio

from ocifs.errors import AuthenticationError, RegistryError
from ocifs.registry.credentials import Credentials, CredentialSource

log = logging.getLogger(__name__)

# distribution's default token lifetime when the realm omits expires_in (token spec: 60 s).
DEFAULT_TOKEN_LIFETIME = 60.0
# Refresh this long before expiry so a token does not expire in flight.
EXPIRY_MARGIN = 10.0

# What a token may hold to be sent in a header: printable ASCII, no space (RFC 6750's b64token
# and every JWT fit). Anything else could split the header or reach an error message.
_TOKEN_RE = re.compile(r"[\x21-\x7e]+")

_PARAM_RE = re.compile(r'([A-Za-z_][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


@dataclass(frozen=True, slots=True)
class Challenge:
    """A parsed ``WWW-Authenticate`` challenge."""

    scheme: str  # "bearer" or "basic", lower case
    params: dict[str, str] = field(default_factory=dict)

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")


def parse_challenge(header: str | None) -> Challenge | None:
    """Parse the first challenge of a ``WWW-Authenticate`` header; None if absent or unknown."""
    if not header:
        return None
    scheme, _, rest = header.strip().partition(" ")
    scheme = scheme.lower()
    if scheme not in ("bearer", "basic"):
        return None
    params = {
        m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3)) for m in _PARAM_RE.finditer(rest)
    }
    params = {k: v.replace('\\"', '"') for k, v in params.items()}
    return Challenge(scheme, params)


def basic_header(credentials: Credentials) -> str:
    """The ``Authorization`` value for Basic auth."""
    raw = f"{credentials.username}:{credentials.password}".encode()
    return "Basic " + base64.b64encode(raw).decode()


def repository_scope(repository: str, actions: str) -> str:
    """``repository:<name>:<actions>`` as the token spec writes it (actions e.g. ``pull,push``)."""
    return f"repository:{repository}:{actions}"


@dataclass(slots=True)
class _Token:
    value: str
    expires_at: float


class TokenAuthority:
    """Fetches and caches Bearer tokens for one registry.

    ``send`` performs one HTTP request without retries or auth (the client's raw sender).
    ``registry`` is used only in error messages.
    """

    def __init__(
        self,
        registry: str,
        credentials: Credentials | CredentialSource | None,
        send: Callable[[httpx.Request], Awaitable[httpx.Response]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._registry = registry
        self._source = credentials if isinstance(credentials, CredentialSource) else CredentialSource.fixed(credentials)
        self._send = send
        self._clock = clock
        self._tokens: dict[tuple[str, str], _Token] = {}
        self._locks: dict[tuple[str, str], trio.Lock] = {}
        self.token_requests = 0

    def cached(self, challenge: Challenge, scopes: tuple[str, ...]) -> str | None:
        """A still-valid token for ``scopes`` under ``challenge``'s realm, or None."""
        token = self._tokens.get(self._key(challenge, scopes))
        if token is not None and token.expires_at - EXPIRY_MARGIN > self._clock():
            return token.value
        return None

    def invalidate(self, challenge: Challenge, scopes: tuple[str, ...]) -> None:
        """Forget the token for ``scopes`` (the registry rejected it)."""
        self._tokens.pop(self._key(challenge, scopes), None)

    async def token(self, challenge: Challenge, scopes: tuple[str, ...]) -> str:
        """A token for ``scopes``: cached, or fetched once while concurrent callers wait."""
        key = self._key(challenge, scopes)
        lock = self._locks.setdefault(key, trio.Lock())
        async with lock:
            cached = self.cached(challenge, scopes)
            if cached is not None:
                return cached
            value, lifetime = await self._fetch(challenge, scopes)
            self._tokens[key] = _Token(value, self._clock() + lifetime)
            return value

    @staticmethod
    def _key(challenge: Challenge, scopes: tuple[str, ...]) -> tuple[str, str]:
        return (challenge.realm or "", " ".join(sorted(scopes)))

    async def _fetch(self, challenge: Challenge, scopes: tuple[str, ...]) -> tuple[str, float]:
        realm = challenge.realm
        if not realm:
            raise RegistryError(f"{self._registry}: Bearer challenge without a realm; cannot authenticate")
        try:
            url = httpx.URL(realm)
        except httpx.InvalidURL:
            url = None
        if url is None or url.scheme not in ("http", "https") or not url.host:
            shown = repr(realm[:80] + ("…" if len(realm) > 80 else ""))
            raise RegistryError(
                f"{self._registry}: the Bearer challenge's realm {shown} is not an http(s) URL; cannot authenticate"
            )
        creds = self._source.current
        response = await self._ask(realm, challenge, scopes, creds)
        if response.status_code in (401, 403) and await self._source.refresh(creds):
            # Refused, and the files or helper now say something else: one more request.
            creds = self._source.current
            response = await self._ask(realm, challenge, scopes, creds)
        return self._answer(realm, response, creds)

    async def _ask(
        self, realm: str, challenge: Challenge, scopes: tuple[str, ...], creds: Credentials | None
    ) -> httpx.Response:
        """One token request (the OAuth2 POST, falling back to GET) with ``creds``."""
        service = challenge.params.get("service")
        self.token_requests += 1
        log.debug("requesting token from %s for %s", realm, " ".join(scopes) or "(no scope)")
        response = None
        if creds is not None and creds.identity_token:
            form = {"grant_type": "refresh_token", "refresh_token": creds.identity_token, "client_id": "ocifs"}
            if service:
                form["service"] = service
            if scopes:
                form["scope"] = " ".join(scopes)
            response = await self._send(self._request("POST", realm, data=form))
            if response.status_code in (404, 405):
                # A realm without the OAuth2 POST endpoint (distribution's spec: "fall back to GET").
                response = None
        if response is None:
            query: list[tuple[str, str | int | float | bool | None]] = []
            if service:
                query.append(("service", service))
            query.extend(("scope", s) for s in scopes)
            headers = {}
            if creds is not None and (creds.password or creds.identity_token):
                secret = creds.password or creds.identity_token or ""
                headers["Authorization"] = basic_header(Credentials(creds.username, secret))
            response = await self._send(self._request("GET", realm, params=query, headers=headers))
        return response

    def _answer(self, realm: str, response: httpx.Response, creds: Credentials | None) -> tuple[str, float]:
        """The token and its lifetime from the token service's answer, or the error."""
        if response.status_code in (401, 403):
            if creds is None:
                raise AuthenticationError(
                    f"{self._registry}: authentication required",
                    hint=f"run `ocifs login {self._registry}` or set DOCKER_CONFIG",
                    status=response.status_code,
                )
            raise AuthenticationError(
                f"{self._registry}: the token service rejected the credentials for user {creds.username!r}",
                hint=f"check them with `ocifs login {self._registry}`",
                status=response.status_code,
            )
        if response.status_code != 200:
            raise RegistryError(
                f"{self._registry}: token service {httpx.URL(realm).host} answered HTTP {response.status_code}",
                status=response.status_code,
            )
        try:
            body = response.json()
            value = body.get("token") or body.get("access_token")
            lifetime = _lifetime(body.get("expires_in"))
        except (ValueError, AttributeError, TypeError, RecursionError):
            raise RegistryError(f"{self._registry}: token service returned a malformed response") from None
        if not isinstance(value, str) or not value:
            raise RegistryError(f"{self._registry}: token service returned no token")
        if not _TOKEN_RE.fullmatch(value):  # never shown: it is a secret
            raise RegistryError(f"{self._registry}: token service returned a malformed token (not printable ASCII)")
        return value, max(lifetime, EXPIRY_MARGIN + 1)

    def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Request:
        """A request to the token service; the challenge's parameters make its query, and one
        too long for a URL is the registry's error, not a crash."""
        try:
            return httpx.Request(method, url, **kwargs)
        except httpx.InvalidURL as exc:
            raise RegistryError(
                f"{self._registry}: cannot build a token request from the Bearer challenge ({exc})"
            ) from None


def _lifetime(expires_in: object) -> float:
    """Seconds a token lives, from its ``expires_in``: absent, zero, negative, NaN or beyond a
    float (none of which a token service means) give :data:`DEFAULT_TOKEN_LIFETIME` rather than
    a token fetched for every request. Text that is not a number raises ValueError."""
    if expires_in is None or isinstance(expires_in, bool):
        return DEFAULT_TOKEN_LIFETIME
    if not isinstance(expires_in, int | float | str):
        raise TypeError(f"expires_in is a {type(expires_in).__name__}")
    try:
        lifetime = float(expires_in)
    except OverflowError:  # an integer of hundreds of digits
        return DEFAULT_TOKEN_LIFETIME
    return lifetime if math.isfinite(lifetime) and lifetime > 0 else DEFAULT_TOKEN_LIFETIME
