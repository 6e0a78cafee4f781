"""Real registries for tests: Debian's ``docker-registry`` (distribution 2.8) as a subprocess.

Owns: writing the registry configuration, TLS material (a CA and a server certificate for
127.0.0.1/localhost), htpasswd files, starting the process on a free loopback port, waiting
until it answers, and stopping it by PID. Must not: listen anywhere but 127.0.0.1, leave
processes behind (an ``atexit`` hook stops every server still running), or know anything
about ocifs itself — the registry is the system under test's counterpart, not a fake.

The configuration file is written as JSON, which distribution's YAML parser reads as YAML.
"""

from __future__ import annotations

import atexit
import base64
import datetime as dt
import ipaddress
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import bcrypt
import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .token_server import TokenServer

log = logging.getLogger(__name__)

REGISTRY_BINARY = "/usr/bin/docker-registry"
REGISTRY_INSTALL_HINT = "docker-registry not found: apt-get install docker-registry"

# Upload session state (the ``_state`` query parameter) is HMAC-signed with this secret, so a
# fixed value keeps upload sessions valid across restart() - as a real multi-replica
# deployment with a shared secret would. Random once, not a secret of anything real.
HTTP_SECRET = "ocifs-test-6f1c0b9e7d2a4c58a3e1f0b7c9d84e21"

# bcrypt cost 4 (the minimum golang.org/x/crypto/bcrypt accepts): distribution verifies the
# htpasswd hash on *every* request, and the default cost 12 costs ~200 ms per request.
BCRYPT_ROUNDS = 4


RegistryFactory = Callable[..., "RegistryServer"]
"""Type of the ``registry_factory`` fixture: ``make(**options) -> RegistryServer`` (see conftest)."""


class RegistryStartError(RuntimeError):
    """The registry did not come up; the message carries the reason and the log tail."""


class MissingToolError(RuntimeError):
    """A program the harness needs is not installed; the message says what to install."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (racy by nature; callers retry)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# -- TLS material ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TLSMaterial:
    """A CA and a server certificate signed by it, as PEM files.

    ``ca_dir`` contains only ``ca.crt``, so it can be given to skopeo/containers-image as
    ``--cert-dir`` (which treats every ``*.crt`` there as a trusted CA).
    """

    ca_file: Path
    ca_dir: Path
    cert_file: Path
    key_file: Path

    def client_context(self) -> ssl.SSLContext:
        """An SSL context for clients that trusts only this CA."""
        return ssl.create_default_context(cafile=str(self.ca_file))

    def server_context(self) -> ssl.SSLContext:
        """An SSL context for a Python server presenting the server certificate."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(self.cert_file), str(self.key_file))
        return context


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return builder.not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))


def _new_ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed P-256 CA that may sign end-entity certificates only."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    usage = x509.KeyUsage(
        digital_signature=True,
        key_cert_sign=True,
        crl_sign=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        encipher_only=False,
        decipher_only=False,
    )
    cert = (
        _validity(x509.CertificateBuilder())
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _issue(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    common_name: str,
    purpose: x509.ObjectIdentifier,
    names: list[x509.GeneralName] | None = None,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A P-256 end-entity certificate for ``purpose`` (server or client auth) signed by the CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        _validity(x509.CertificateBuilder())
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([purpose]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def _write_pem(
    ca_cert: x509.Certificate, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, ca: Path, crt: Path, pem: Path
) -> None:
    ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    pem.chmod(0o600)


def make_tls_material(directory: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> TLSMaterial:
    """Create a P-256 CA and a server certificate for ``hosts`` (IPs and DNS names) in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = _new_ca("ocifs test CA")
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    key, cert = _issue(ca_key, ca_cert, hosts[0], ExtendedKeyUsageOID.SERVER_AUTH, names)
    ca_dir = directory / "ca"
    ca_dir.mkdir(exist_ok=True)
    material = TLSMaterial(
        ca_file=ca_dir / "ca.crt",
        ca_dir=ca_dir,
        cert_file=directory / "server.crt",
        key_file=directory / "server.key",
    )
    _write_pem(ca_cert, cert, key, material.ca_file, material.cert_file, material.key_file)
    return material


@dataclass(frozen=True, slots=True)
class ClientMaterial:
    """A client CA (for the registry's ``http.tls.clientcas``) and a client certificate it
    signed, as PEM files: what a registry requiring mTLS trusts and what a client presents."""

    ca_file: Path
    cert_file: Path
    key_file: Path

    def load_into(self, context: ssl.SSLContext) -> ssl.SSLContext:
        """``context`` presenting the client certificate."""
        context.load_cert_chain(str(self.cert_file), str(self.key_file))
        return context


def make_client_material(directory: Path, name: str = "ocifs test client") -> ClientMaterial:
    """Create a P-256 client CA and a client certificate (``clientAuth``) in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = _new_ca("ocifs test client CA")
    key, cert = _issue(ca_key, ca_cert, name, ExtendedKeyUsageOID.CLIENT_AUTH)
    material = ClientMaterial(directory / "client-ca.crt", directory / "client.cert", directory / "client.key")
    _write_pem(ca_cert, cert, key, material.ca_file, material.cert_file, material.key_file)
    return material


# -- the registry ------------------------------------------------------------------------------

_live_servers: weakref.WeakSet[RegistryServer] = weakref.WeakSet()


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_live_servers):
        server.stop(kill=True)


def _deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = value
    return base


class RegistryServer:
    """One ``docker-registry serve`` process on 127.0.0.1 with its own storage.

    Variants combine freely: ``tls=True`` (or a :class:`TLSMaterial`), and at most one of
    ``basic_auth={user: password}`` (htpasswd) or ``token_server=TokenServer`` (Bearer).
    ``proxy_remote`` makes it a pull-through cache of another server (distribution then
    refuses pushes with 405 UNSUPPORTED; the upstream may use Bearer auth, not Basic).
    ``storage_in_shm`` puts the storage under /dev/shm (removed on :meth:`close`).
    ``relative_urls`` sets ``http.relativeurls`` (relative ``Location`` headers).
    ``client_ca`` (with TLS) sets ``http.tls.clientcas``: the registry then refuses every
    client that does not present a certificate signed by that :class:`ClientMaterial`'s CA.
    ``extra_config`` is deep-merged into the generated configuration last.

    Attributes: ``port``, ``host`` ("127.0.0.1:PORT"), ``url`` ("http(s)://127.0.0.1:PORT"),
    ``storage_dir`` (the filesystem driver's rootdirectory), ``log_path``, ``config_path``,
    ``tls`` (:class:`TLSMaterial` or None), ``ca_file`` (None without TLS), ``username`` and
    ``password`` (None without auth; for a token registry, the token server's first user),
    ``token_server`` (None unless Bearer auth), ``pid`` (None while stopped).

    Lifecycle: :meth:`start` returns once ``GET /v2/`` answers 200 or 401, or raises
    :class:`RegistryStartError` with the log tail. :meth:`stop` is SIGTERM then SIGKILL;
    :meth:`restart` keeps port, storage and ``http.secret`` (upload sessions stay valid).
    :meth:`close` stops and removes /dev/shm storage. Also a context manager.
    """

    def __init__(
        self,
        work_dir: Path,
        *,
        tls: bool | TLSMaterial = False,
        basic_auth: Mapping[str, str] | None = None,
        token_server: TokenServer | None = None,
        proxy_remote: RegistryServer | None = None,
        storage_in_shm: bool = False,
        relative_urls: bool = False,
        client_ca: ClientMaterial | None = None,
        extra_config: Mapping[str, Any] | None = None,
        port: int | None = None,
        startup_timeout: float = 20.0,
        binary: str = REGISTRY_BINARY,
    ) -> None:
        if basic_auth is not None and token_server is not None:
            raise ValueError("choose htpasswd (basic_auth) or Bearer (token_server), not both")
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.binary = binary
        self.startup_timeout = startup_timeout
        self._auto_port = port is None
        self.port = port if port is not None else free_port()
        if isinstance(tls, TLSMaterial):
            self.tls: TLSMaterial | None = tls
        elif tls:
            self.tls = make_tls_material(self.work_dir / "tls")
        else:
            self.tls = None
        self.basic_auth = dict(basic_auth) if basic_auth is not None else None
        if self.basic_auth is not None and not self.basic_auth:
            raise ValueError("basic_auth needs at least one user")
        self.token_server = token_server
        if proxy_remote is not None and proxy_remote.basic_auth is not None:
            # distribution 2.8's proxy only hands credentials to the realm of a Bearer
            # challenge (proxy/proxyauth.go getAuthURLs); to a Basic upstream it sends none.
            raise ValueError("a 2.8 pull-through proxy cannot log in to a Basic-auth upstream; use Bearer")
        self.proxy_remote = proxy_remote
        self.relative_urls = relative_urls
        if client_ca is not None and self.tls is None:
            raise ValueError("a client CA needs tls")
        self.client_ca = client_ca
        self.extra_config = dict(extra_config or {})
        self._shm_dir: Path | None = None
        if storage_in_shm:
            self._shm_dir = Path(tempfile.mkdtemp(prefix="ocifs-registry-", dir="/dev/shm"))
            self.storage_dir = self._shm_dir
        else:
            self.storage_dir = self.work_dir / "storage"
            self.storage_dir.mkdir(exist_ok=True)
        self.log_path = self.work_dir / "registry.log"
        self.config_path = self.work_dir / "config.yml"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._paused = False

    # -- addresses and credentials -----------------------------------------------------------

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``, the registry part of an image reference."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` or ``https://…`` with TLS; no trailing slash."""
        return f"{'https' if self.tls else 'http'}://{self.host}"

    @property
    def ca_file(self) -> Path | None:
        """The CA certificate (PEM) that signed the server certificate; None without TLS."""
        return self.tls.ca_file if self.tls else None

    @property
    def username(self) -> str | None:
        """A user that may push and pull; None for a registry without auth."""
        if self.basic_auth is not None:
            return next(iter(self.basic_auth))
        if self.token_server is not None:
            return self.token_server.username
        return None

    @property
    def password(self) -> str | None:
        """The password of :attr:`username`; None for a registry without auth."""
        if self.basic_auth is not None:
            return self.basic_auth[next(iter(self.basic_auth))]
        if self.token_server is not None:
            return self.token_server.password
        return None

    def credentials(self) -> tuple[str, str]:
        """(username, password) of a registry with auth; raises ValueError for one without."""
        if self.username is None or self.password is None:
            raise ValueError(f"{self!r} has no auth")
        return self.username, self.password

    @property
    def pid(self) -> int | None:
        """The registry's PID while it runs, else None."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        """Whether the process exists and has not exited (a paused one counts as running)."""
        return self._proc is not None and self._proc.poll() is None

    def verify(self) -> ssl.SSLContext | bool:
        """The ``verify=`` argument for an httpx client: a context trusting the CA (and showing
        the client certificate of a ``client_ca`` registry), or True."""
        if self.tls is None:
            return True
        context = self.tls.client_context()
        return self.client_ca.load_into(context) if self.client_ca is not None else context

    # -- storage -----------------------------------------------------------------------------

    def blob_path(self, digest: object) -> Path:
        """The data file of blob ``digest`` (``sha256:<hex>`` or anything whose str() is that).

        The path is where the filesystem driver keeps it; it may not exist (yet). Writing to it
        corrupts what the registry serves: distribution does not re-verify on GET.
        """
        algorithm, sep, hexpart = str(digest).partition(":")
        if not sep or not hexpart or "/" in hexpart:
            raise ValueError(f"not a digest: {digest!r}")
        return self.storage_dir / "docker/registry/v2/blobs" / algorithm / hexpart[:2] / hexpart / "data"

    def corrupt_blob(self, digest: object, offset: int = 0) -> Path:
        """Flip one byte of a stored blob at ``offset`` (same size, wrong content); return its path."""
        path = self.blob_path(digest)
        with path.open("r+b") as f:
            f.seek(offset)
            byte = f.read(1)
            if not byte:
                raise ValueError(f"offset {offset} is past the end of {path}")
            f.seek(offset)
            f.write(bytes([byte[0] ^ 0xFF]))
        return path

    # -- logs --------------------------------------------------------------------------------

    def log_text(self) -> str:
        """Everything the registry wrote to stdout/stderr so far (all runs, restarts appended)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of :meth:`log_text`."""
        return "\n".join(self.log_text().splitlines()[-lines:])

    # -- configuration -----------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """The configuration :meth:`start` writes (JSON is valid YAML for distribution)."""
        cfg: dict[str, Any] = {
            "version": "0.1",
            "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.storage_dir)},
                "delete": {"enabled": True},
                # Purging runs in the background and would delete sessions under a test.
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {
                "addr": self.host,
                "secret": HTTP_SECRET,
                "relativeurls": self.relative_urls,
                "headers": {"X-Content-Type-Options": ["nosniff"]},
            },
        }
        if self.tls is not None:
            cfg["http"]["tls"] = {"certificate": str(self.tls.cert_file), "key": str(self.tls.key_file)}
            if self.client_ca is not None:
                cfg["http"]["tls"]["clientcas"] = [str(self.client_ca.ca_file)]
        if self.basic_auth is not None:
            htpasswd = self.work_dir / "htpasswd"
            htpasswd.write_text(
                "".join(
                    f"{user}:{bcrypt.hashpw(pw.encode(), bcrypt.gensalt(BCRYPT_ROUNDS)).decode()}\n"
                    for user, pw in self.basic_auth.items()
                )
            )
            cfg["auth"] = {"htpasswd": {"realm": "ocifs-test", "path": str(htpasswd)}}
        if self.token_server is not None:
            # All four keys are required by 2.8; a bad bundle crashes the registry at start.
            cfg["auth"] = {
                "token": {
                    "realm": self.token_server.realm,
                    "service": self.token_server.service,
                    "issuer": self.token_server.issuer,
                    "rootcertbundle": str(self.token_server.cert_file),
                }
            }
        if self.proxy_remote is not None:
            proxy: dict[str, str] = {"remoteurl": self.proxy_remote.url}
            if self.proxy_remote.username is not None and self.proxy_remote.password is not None:
                proxy["username"] = self.proxy_remote.username
                proxy["password"] = self.proxy_remote.password
            cfg["proxy"] = proxy
        return _deep_merge(cfg, self.extra_config)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the registry and wait until ``GET /v2/`` answers 200 or 401. No-op if running.

        Raises :class:`MissingToolError` if the binary is missing and :class:`RegistryStartError`
        if it exits or does not answer within ``startup_timeout`` seconds. If the port was
        picked automatically and was taken meanwhile, a new one is picked (first start only).
        """
        if self.running:
            return
        if not os.access(self.binary, os.X_OK):
            raise MissingToolError(REGISTRY_INSTALL_HINT)
        attempts = 3 if self._auto_port else 1
        for attempt in range(attempts):
            try:
                self._spawn_and_wait()
                return
            except RegistryStartError as exc:
                if "address already in use" in str(exc) and attempt + 1 < attempts:
                    log.debug("port %d was taken, retrying on another", self.port)
                    self.port = free_port()
                    continue
                raise

    def _spawn_and_wait(self) -> None:
        self.config_path.write_text(json.dumps(self.config(), indent=2))
        env = dict(os.environ)
        if self.proxy_remote is not None and self.proxy_remote.ca_file is not None:
            env["SSL_CERT_FILE"] = str(self.proxy_remote.ca_file)  # Go's TLS reads this on Linux
        if self._log_file is None:
            self._log_file = self.log_path.open("ab")
        log_offset = self._log_file.tell()
        self._proc = subprocess.Popen(
            [self.binary, "serve", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # a Ctrl-C at the terminal must not reach it before teardown
        )
        self._paused = False
        _live_servers.add(self)
        log.debug("started registry pid %d on %s", self._proc.pid, self.url)
        deadline = time.monotonic() + self.startup_timeout
        with httpx.Client(verify=self.verify(), timeout=2.0, trust_env=False) as client:
            while True:
                code = self._proc.poll()
                if code is not None:
                    tail = self.log_path.read_bytes()[log_offset:].decode(errors="replace")
                    self._proc = None
                    raise RegistryStartError(
                        f"docker-registry exited with status {code} before answering on {self.url};"
                        f" config {self.config_path}; log {self.log_path}:\n{tail[-4000:]}"
                    )
                try:
                    response = client.get(f"{self.url}/v2/")
                    if response.status_code in (200, 401):
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    self.stop(kill=True)
                    raise RegistryStartError(
                        f"docker-registry did not answer GET {self.url}/v2/ within"
                        f" {self.startup_timeout:.0f} s; log {self.log_path}:\n{self.log_tail()}"
                    )
                time.sleep(0.02)  # polling interval of a bounded readiness loop

    def stop(self, *, kill: bool = False, timeout: float = 10.0) -> None:
        """Stop the process: SIGTERM (SIGKILL if ``kill``), SIGKILL after ``timeout`` s. Idempotent.

        ``kill=True`` is the way to simulate a crash in the middle of an operation.
        """
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            if self._paused:
                proc.send_signal(signal.SIGCONT)
            proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.debug("registry pid %d ignored SIGTERM for %.0f s, killing", proc.pid, timeout)
                proc.kill()
                proc.wait()
        self._proc = None
        self._paused = False
        _live_servers.discard(self)

    def restart(self, *, kill: bool = False) -> None:
        """Stop (see :meth:`stop`) and start again on the same port with the same storage."""
        self.stop(kill=kill)
        self._auto_port = False  # clients hold the URL; it must not change
        self.start()

    def pause(self) -> None:
        """SIGSTOP the process: connections are accepted by the kernel but never answered."""
        if self._proc is None or not self.running:
            raise RuntimeError("registry is not running")
        self._proc.send_signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """SIGCONT a paused process."""
        if self._proc is not None and self._paused:
            self._proc.send_signal(signal.SIGCONT)
            self._paused = False

    def close(self) -> None:
        """Stop, close the log file, and delete /dev/shm storage if used. Idempotent."""
        self.stop()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._shm_dir is not None:
            shutil.rmtree(self._shm_dir, ignore_errors=True)
            self._shm_dir = None

    def __enter__(self) -> RegistryServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        kind = "+".join(
            k
            for k, on in (
                ("tls", self.tls is not None),
                ("basic", self.basic_auth is not None),
                ("token", self.token_server is not None),
                ("proxy", self.proxy_remote is not None),
                ("mtls", self.client_ca is not None),
            )
            if on
        )
        return f"<RegistryServer {self.url} {kind or 'plain'} pid={self.pid}>"


def new_secret() -> str:
    """A random password for test users (so tests can assert it never shows up in logs)."""
    return secrets.token_urlsafe(12)


# -- client side: a docker config directory ---------------------------------------------------

_HELPER_SCRIPT = '''#!{python}
"""docker-credential-{suffix}: a test credential helper (docker-credential-helpers protocol)."""
import json, sys
STORE = {store}
action = sys.argv[1] if len(sys.argv) > 1 else ""
server = sys.stdin.read().strip()
with open({calls!r}, "a") as f:
    f.write(json.dumps([action, server]) + "\\n")
if action != "get":
    sys.exit(0 if action in ("store", "erase", "list") else 1)
if server not in STORE:
    print("credentials not found in native keychain")
    sys.exit(1)
user, secret = STORE[server]
print(json.dumps({{"ServerURL": server, "Username": user, "Secret": secret}}))
'''


class DockerConfig:
    """A private ``$DOCKER_CONFIG`` directory for one test (the fixture sets the env var).

    ``path`` is the directory, ``config_file`` its ``config.json`` (absent until written),
    ``bin_dir`` a directory the fixture prepends to ``PATH`` for credential helpers. Every
    ``add_*``/``set_*`` method reads, updates and rewrites ``config.json`` at once.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.bin_dir = self.path / "bin"
        self.bin_dir.mkdir(exist_ok=True)
        self.config_file = self.path / "config.json"

    def read(self) -> dict[str, Any]:
        """The current ``config.json`` content ({} if none)."""
        if not self.config_file.exists():
            return {}
        data: dict[str, Any] = json.loads(self.config_file.read_text())
        return data

    def write(self, data: Mapping[str, Any]) -> None:
        """Replace ``config.json`` with ``data`` (mode 0600, like docker writes it)."""
        self.config_file.write_text(json.dumps(data, indent=2))
        self.config_file.chmod(0o600)

    def add_auth(
        self,
        host: str | RegistryServer,
        username: str | None = None,
        password: str | None = None,
        *,
        identitytoken: str | None = None,
    ) -> None:
        """Write ``auths[host] = {auth: base64(user:pass)[, identitytoken]}``.

        ``host`` may be a :class:`RegistryServer`: its ``host`` and, unless given, its
        ``username``/``password`` are used.
        """
        if isinstance(host, RegistryServer):
            username = username if username is not None else host.username
            password = password if password is not None else host.password
            host = host.host
        entry: dict[str, str] = {}
        if username is not None or password is not None:
            entry["auth"] = base64.b64encode(f"{username or ''}:{password or ''}".encode()).decode()
        if identitytoken is not None:
            entry["identitytoken"] = identitytoken
        data = self.read()
        data.setdefault("auths", {})[host] = entry
        self.write(data)

    def set_creds_store(self, suffix: str) -> None:
        """Set ``credsStore`` (helper ``docker-credential-<suffix>`` for every host)."""
        data = self.read()
        data["credsStore"] = suffix
        self.write(data)

    def set_cred_helper(self, host: str | RegistryServer, suffix: str) -> None:
        """Set ``credHelpers[host] = suffix`` (wins over ``credsStore`` for that host)."""
        if isinstance(host, RegistryServer):
            host = host.host
        data = self.read()
        data.setdefault("credHelpers", {})[host] = suffix
        self.write(data)

    def install_credential_helper(self, suffix: str, store: Mapping[str, tuple[str, str]]) -> Path:
        """Create ``bin_dir/docker-credential-<suffix>`` answering ``get`` from ``store``.

        ``store`` maps server (as the client sends it on stdin) to (Username, Secret); use
        ``"<token>"`` as Username for an identity token. Unknown servers get docker's
        "credentials not found" answer (exit 1). Every call is appended to
        :meth:`helper_calls` as (action, server).
        """
        script = self.bin_dir / f"docker-credential-{suffix}"
        script.write_text(
            _HELPER_SCRIPT.format(
                python=sys.executable,
                suffix=suffix,
                store=repr({k: list(v) for k, v in store.items()}),
                calls=str(self._calls_file(suffix)),
            )
        )
        script.chmod(0o755)
        return script

    def helper_calls(self, suffix: str) -> list[tuple[str, str]]:
        """The (action, server) pairs helper ``suffix`` was called with, in order."""
        calls = self._calls_file(suffix)
        if not calls.exists():
            return []
        pairs = (json.loads(line) for line in calls.read_text().splitlines())
        return [(str(action), str(server)) for action, server in pairs]

    def _calls_file(self, suffix: str) -> Path:
        return self.path / f"helper-{suffix}.calls"
