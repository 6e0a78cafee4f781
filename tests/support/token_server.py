"""A small Docker token server (the ``auth.token`` flow of distribution) for tests.

Owns: issuing ES256 JWTs that distribution 2.8 accepts, deciding which actions each user gets
per repository, and recording every request so tests can assert that clients cache tokens.
Must not: talk to anything but loopback, log secrets, or pull in a JWT library (the token is
written by hand with ``cryptography`` so every claim the registry checks is visible here).

Protocol (docker "token authentication specification"; the facts checked against distribution
2.8 are in docs/platform.md "Registries in the field"):

* ``GET <realm>?service=<service>&scope=<scope>[&scope=...]`` with optional Basic credentials.
  No credentials = anonymous. Wrong credentials = 401. A ``service`` other than ours = 400.
* Answer ``{"token", "access_token", "expires_in", "issued_at"}``; granted actions may be fewer
  than asked (that is not an error, the registry then answers 401 ``insufficient_scope``).
* Claims: ``iss`` = issuer, ``aud`` = service as a plain string (a list is rejected),
  ``exp``/``nbf``/``iat`` whole numbers (a float ``exp`` is rejected), ``access`` list.
* Header: ``alg: ES256`` and ``x5c`` = [standard-base64 DER of the signing certificate]; that
  certificate is also the registry's ``rootcertbundle``. Signature is raw ``r||s`` (64 bytes).
* ``POST <realm>`` (the OAuth2 variant) answers 404, which tells clients to fall back to GET.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import fnmatch
import json
import logging
import secrets
import ssl
import threading
import time
from collections.abc import Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

log = logging.getLogger(__name__)

DEFAULT_SERVICE = "ocifs-test-registry"
DEFAULT_ISSUER = "ocifs-test-token-issuer"
ALL_ACTIONS = frozenset({"pull", "push", "delete", "*"})


class TokenRequest(NamedTuple):
    """One request the token server received (including rejected ones).

    ``scope`` is the requested scopes joined by a single space in request order ("" if none);
    ``user`` is the Basic user name as sent (even if the password was wrong), None if anonymous.
    """

    path: str
    scope: str
    user: str | None


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _make_signing_cert(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed P-256 certificate: it is both the JWT signer and the registry's trust root."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


class TokenServer:
    """A threaded HTTP token server on 127.0.0.1 (optionally HTTPS) with a mutable policy.

    Policy (all attributes may be changed while the server runs; reads happen per request):

    * ``users``: {user: password}. Defaults to one user ``ocifs`` with a random password.
    * ``permissions``: {user: {repository glob (fnmatch): actions}}. A user missing here gets
      ``default_user_actions`` on every repository (default pull+push+delete).
    * ``anonymous_actions``: {repository glob: actions} for requests without credentials;
      default ``{"*": {"pull"}}``; ``{}`` denies anonymous users everything (they still get a
      token, with an empty ``access`` list, as real token servers do).
    * ``allow_anonymous``: if False, a request without credentials is answered 401.
    * ``expires_in``: token lifetime in seconds (default 300). Note that distribution accepts
      tokens up to 60 s after ``exp`` (clock skew leeway), so an "expired" token keeps working
      for a minute: test refresh logic by counting token requests, not by registry rejections.

    ``requests`` lists a :class:`TokenRequest` per request received, in order (thread-safe to
    read after the client call returned); ``refused`` counts the requests answered 401 for
    their credentials.

    Rotation (credentials that expire while a client runs): :meth:`rotate_password` gives a user
    a new password and refuses the old one at once; :meth:`rotate_signing_key` signs with a new
    key and rewrites ``cert_file``, so a registry restarted on it refuses every token issued
    before (distribution reads its ``rootcertbundle`` at start only).

    ``fail_next(status, count)`` makes the next ``count`` GETs answer ``status`` (e.g. 500/503)
    to exercise client retries.

    Use as a context manager or call :meth:`start` / :meth:`stop`. Attributes after start:
    ``port``, ``url`` (``http://127.0.0.1:PORT``), ``realm`` (``url + "/token"``), ``service``,
    ``issuer``, ``cert_file`` (PEM bundle for the registry's ``rootcertbundle``), ``username``
    and ``password`` (the first user, for convenience).
    """

    def __init__(
        self,
        work_dir: Path,
        *,
        users: Mapping[str, str] | None = None,
        permissions: Mapping[str, Mapping[str, Iterable[str]]] | None = None,
        anonymous_actions: Mapping[str, Iterable[str]] | None = None,
        default_user_actions: Iterable[str] = ("pull", "push", "delete"),
        allow_anonymous: bool = True,
        expires_in: int = 300,
        service: str = DEFAULT_SERVICE,
        issuer: str = DEFAULT_ISSUER,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.users: dict[str, str] = dict(users) if users is not None else {"ocifs": secrets.token_urlsafe(12)}
        self.permissions: dict[str, dict[str, frozenset[str]]] = {
            user: {pattern: frozenset(actions) for pattern, actions in table.items()}
            for user, table in (permissions or {}).items()
        }
        self.anonymous_actions: dict[str, frozenset[str]] = (
            {pattern: frozenset(actions) for pattern, actions in anonymous_actions.items()}
            if anonymous_actions is not None
            else {"*": frozenset({"pull"})}
        )
        self.default_user_actions = frozenset(default_user_actions)
        self.allow_anonymous = allow_anonymous
        self.expires_in = expires_in
        self.service = service
        self.issuer = issuer
        self.requests: list[TokenRequest] = []
        self.refused = 0
        self._tls_context = tls_context
        self._lock = threading.Lock()
        self._failures: list[int] = []
        self.cert_file = self.work_dir / "token-signer.pem"
        self.rotate_signing_key()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # -- convenience -------------------------------------------------------------------------

    @property
    def username(self) -> str:
        """The first user name in ``users``."""
        return next(iter(self.users))

    @property
    def password(self) -> str:
        """The password of :attr:`username`."""
        return self.users[self.username]

    @property
    def url(self) -> str:
        """Base URL, ``http(s)://127.0.0.1:PORT``."""
        scheme = "https" if self._tls_context is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def realm(self) -> str:
        """The token endpoint to configure as the registry's ``auth.token.realm``."""
        return f"{self.url}/token"

    def token_requests(self, path: str = "/token") -> list[TokenRequest]:
        """A snapshot of the recorded requests to ``path``."""
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def fail_next(self, status: int, count: int = 1) -> None:
        """Make the next ``count`` token GETs answer ``status`` with a JSON error body."""
        with self._lock:
            self._failures.extend([status] * count)

    def rotate_password(self, user: str | None = None) -> str:
        """Give ``user`` (default :attr:`username`) a new random password and return it; the
        old one is refused from the next request on."""
        user = user if user is not None else self.username
        with self._lock:
            self.users[user] = secrets.token_urlsafe(12)
            return self.users[user]

    def rotate_signing_key(self) -> None:
        """Sign tokens with a new key from now on and write its certificate to ``cert_file``
        (atomically). A registry reads that bundle at start: restart it to refuse older tokens."""
        key, cert = _make_signing_cert("ocifs test token signer")
        x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode("ascii")
        tmp = self.cert_file.with_suffix(".tmp")
        tmp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        tmp.replace(self.cert_file)
        with self._lock:
            self._key, self._cert, self._x5c = key, cert, x5c

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Bind a free port on 127.0.0.1 and serve in a daemon thread. Idempotent."""
        if self._httpd is not None:
            return
        server = self

        class Handler(_TokenHandler):
            token_server = server

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        httpd.daemon_threads = True
        if self._tls_context is not None:
            httpd.socket = self._tls_context.wrap_socket(httpd.socket, server_side=True)
        self._httpd = httpd
        self.port = httpd.server_address[1]
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="token-server", daemon=True
        )
        self._thread.start()
        log.debug("token server listening on %s", self.url)

    def stop(self) -> None:
        """Stop serving and close the socket. Idempotent."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> TokenServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- policy and token --------------------------------------------------------------------

    def granted_actions(self, user: str | None, repository: str, requested: Iterable[str]) -> list[str]:
        """The subset of ``requested`` that ``user`` (None = anonymous) may do on ``repository``.

        Returned in the order requested; ``*`` in a grant table means every action.
        """
        if user is None:
            table: Mapping[str, frozenset[str]] = self.anonymous_actions
        else:
            table = self.permissions.get(user, {"*": self.default_user_actions})
        allowed: set[str] = set()
        for pattern, actions in table.items():
            if fnmatch.fnmatchcase(repository, pattern):
                allowed |= ALL_ACTIONS if "*" in actions else actions
        return [a for a in dict.fromkeys(requested) if a in allowed]

    def issue_token(self, user: str | None, scopes: Iterable[str], *, now: float | None = None) -> str:
        """A signed JWT for ``user`` granting what the policy allows of ``scopes``.

        Scopes follow ``type:name:actions``; only ``repository`` (and ``repository(plugin)``)
        types are granted, anything else is dropped. Names may contain ':' (ports), so the
        actions are taken after the last ':'.
        """
        issued = int(now if now is not None else time.time())
        access = []
        for scope in scopes:
            rtype, sep1, rest = scope.partition(":")
            name, sep2, actions = rest.rpartition(":")
            if not (sep1 and sep2) or not rtype.startswith("repository"):
                continue
            granted = self.granted_actions(user, name, actions.split(","))
            if granted:
                access.append({"type": rtype, "name": name, "actions": granted})
        header = {"typ": "JWT", "alg": "ES256", "x5c": [self._x5c]}
        claims = {
            "iss": self.issuer,
            "sub": user or "",
            "aud": self.service,  # plain string: distribution 2.8 rejects a list here
            "exp": issued + int(self.expires_in),
            "nbf": issued - 1,
            "iat": issued,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        signing_input = (
            _b64url(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + _b64url(json.dumps(claims, separators=(",", ":")).encode())
        )
        der = self._key.sign(signing_input.encode("ascii"), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)  # JOSE wants raw r||s, 32 bytes each for P-256
        return signing_input + "." + _b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))

    # -- used by the handler -----------------------------------------------------------------

    def _record(self, request: TokenRequest) -> int | None:
        """Record ``request``; return an injected failure status, if one is pending."""
        with self._lock:
            self.requests.append(request)
            return self._failures.pop(0) if self._failures else None


class _TokenHandler(BaseHTTPRequestHandler):
    token_server: TokenServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("token server: " + format, *args)

    def _send_json(self, status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> None:
        self._send_json(status, {"errors": [{"code": code, "message": message}]}, headers)

    def _credentials(self) -> tuple[str, str] | bool | None:
        """(user, password) from Basic auth; None if absent; False if malformed."""
        header = self.headers.get("Authorization")
        if header is None:
            return None
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, sep, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return (user, password) if sep else False

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self._error(404, "NOT_FOUND", "OAuth2 POST not supported, use GET")

    def do_GET(self) -> None:
        server = self.token_server
        parts = urlsplit(self.path)
        query = parse_qs(parts.query, keep_blank_values=True)
        scopes = [s for value in query.get("scope", []) for s in value.split(" ") if s]
        creds = self._credentials()
        user = creds[0] if isinstance(creds, tuple) else None
        failure = server._record(TokenRequest(parts.path, " ".join(scopes), user))
        if failure is not None:
            self._error(failure, "UNAVAILABLE", "injected failure")
            return
        if parts.path != "/token":
            self._error(404, "NOT_FOUND", "no such endpoint")
            return
        service = query.get("service", [server.service])[0]
        if service != server.service:
            self._error(400, "INVALID_REQUEST", f"unknown service {service!r}")
            return
        if (
            creds is False
            or (creds is None and not server.allow_anonymous)
            or (
                isinstance(creds, tuple)
                and not secrets.compare_digest(server.users.get(creds[0], "\0invalid"), creds[1])
            )
        ):
            with server._lock:
                server.refused += 1
            self._error(401, "UNAUTHORIZED", "invalid credentials", {"WWW-Authenticate": 'Basic realm="token"'})
            return
        now = time.time()
        token = server.issue_token(user, scopes, now=now)
        issued_at = dt.datetime.fromtimestamp(int(now), dt.UTC).isoformat().replace("+00:00", "Z")
        self._send_json(
            200,
            {"token": token, "access_token": token, "expires_in": server.expires_in, "issued_at": issued_at},
        )
