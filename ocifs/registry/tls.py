"""The one TLS configuration of a registry: which CAs are trusted, which client certificate is
shown. Every request path of a client uses the context built here — httpx (manifests, tokens,
small blobs, uploads) and the threaded blob transport, redirect targets included.

Trust, as the rest of the host has it (docs/operations.md, "Trust"):

1. the system trust store — the store OpenSSL's default verify paths name, so ``SSL_CERT_FILE``
   and ``SSL_CERT_DIR`` work as they do for curl (never certifi's bundle);
2. plus every ``*.crt`` in the registry's certs.d directories, read as docker, containerd and
   podman read them: ``<dir>/<host[:port]>/`` under ``$OCIFS_CERTS_D``, the configured
   ``[tls] certs_d``, ``/etc/containers/certs.d``, ``/etc/docker/certs.d`` and
   ``/etc/containerd/certs.d``;
3. plus ``--ca-file`` (it adds, it does not replace).

The client certificate is ``--cert-file``/``--key-file`` (flags, config, ``-o``), else the
first ``*.cert`` with its ``*.key`` (e.g. ``client.cert`` + ``client.key``) in those certs.d
directories, in that order.

Must not: send requests (the transports do) or word transport failures (
:mod:`ocifs.registry.failures` does, with :meth:`Trust.hint` for what to check).
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ocifs.errors import UsageError

#: certs.d directories read after ``$OCIFS_CERTS_D`` and the configured one, in this order.
SYSTEM_CERTS_D: tuple[str, ...] = ("/etc/containers/certs.d", "/etc/docker/certs.d", "/etc/containerd/certs.d")

#: The environment variable naming one more certs.d directory (read first).
CERTS_D_ENV = "OCIFS_CERTS_D"

# The alerts a TLS server sends a client that shows no certificate, or one it does not accept
# (Go's TLS sends "bad certificate"; TLS 1.3 servers may send "certificate required").
_CLIENT_CERTIFICATE_ALERTS = frozenset(
    {
        "SSLV3_ALERT_BAD_CERTIFICATE",
        "TLSV13_ALERT_CERTIFICATE_REQUIRED",
        "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
        "TLSV1_ALERT_UNKNOWN_CA",
        "SSLV3_ALERT_CERTIFICATE_EXPIRED",
        "SSLV3_ALERT_CERTIFICATE_REVOKED",
        "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
    }
)


def is_client_certificate_refused(error: ssl.SSLError) -> bool:
    """Whether the server ended the handshake over the client's certificate (or its absence)."""
    return getattr(error, "reason", None) in _CLIENT_CERTIFICATE_ALERTS


@dataclass(frozen=True, slots=True)
class Trust:
    """A built TLS configuration and where it came from (for messages)."""

    context: ssl.SSLContext
    verified: bool  # False with --insecure
    certs_d: tuple[str, ...]  # the <dir>/<host> directories looked at
    ca_files: tuple[str, ...]  # CAs added to the system store (certs.d *.crt, then --ca-file)
    client_cert: str | None  # the client certificate shown, if any

    def hint(self, error: ssl.SSLError | None = None) -> str:
        """What to check after a failed handshake: one line."""
        if error is not None and is_client_certificate_refused(error):
            if self.client_cert is None:
                return (
                    "the registry asks for a client certificate: pass --cert-file and --key-file,"
                    f" or put client.cert and client.key in {self.certs_d[0]}"
                )
            return f"the registry refused the client certificate {self.client_cert}: is it signed by a CA it trusts?"
        looked = ", ".join(self.certs_d)
        added = f"; added: {', '.join(self.ca_files)}" if self.ca_files else ""
        return (
            f"trusted are the system store ({_system_store()}), *.crt in {looked}{added};"
            " install the registry's CA in one of them or pass --ca-file"
        )


def build_trust(
    registry: str,
    *,
    ca_file: str | None = None,
    cert_file: str | None = None,
    key_file: str | None = None,
    insecure: bool = False,
    certs_d: Sequence[str] = (),
) -> Trust:
    """The TLS configuration for ``registry`` (``host[:port]``); :class:`UsageError` naming the
    file for an unreadable CA, a key without certificate, a certificate and key that do not match.

    ``certs_d``: configured certs.d directories, read after ``$OCIFS_CERTS_D`` and before the
    system ones."""
    if key_file and not cert_file:
        raise UsageError(f"--key-file {key_file} needs --cert-file with the client certificate")
    context = default_context(verified=not insecure)
    dirs = [d for d in (os.environ.get(CERTS_D_ENV), *certs_d) if d]
    dirs.extend(SYSTEM_CERTS_D)
    looked: list[str] = []
    added: list[str] = []
    client: tuple[str, str] | None = None
    for base in dict.fromkeys(dirs):
        directory = Path(base) / registry
        looked.append(str(directory))
        cas, pairs = _read_certs_d(directory)
        for path in cas:
            _add_ca(context, path, f"CA file {path} (certs.d)")
            added.append(path)
        if client is None and pairs:
            client = pairs[0]
    if ca_file:
        _add_ca(context, ca_file, f"CA file {ca_file}")
        added.append(ca_file)
    if cert_file:
        client = (cert_file, key_file or cert_file)
    if client is not None:
        _load_client(context, *client)
    return Trust(context, not insecure, tuple(looked), tuple(added), client[0] if client else None)


def default_context(*, verified: bool = True) -> ssl.SSLContext:
    """The system trust store as OpenSSL's default verify paths name it (``SSL_CERT_FILE`` and
    ``SSL_CERT_DIR`` honoured); ``verified=False`` is ``--insecure``: no verification at all."""
    context = ssl.create_default_context()
    if not verified:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _system_store() -> str:
    paths = ssl.get_default_verify_paths()
    file = os.environ.get(paths.openssl_cafile_env) or paths.openssl_cafile
    directory = os.environ.get(paths.openssl_capath_env) or paths.openssl_capath
    return f"{file}, {directory}"


def _read_certs_d(directory: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """``*.crt`` CAs and ``*.cert``/``*.key`` client pairs in one ``certs.d/<host>`` directory,
    sorted by name. A ``*.cert`` without its ``*.key`` (or the reverse) is an error, as for docker."""
    try:
        names = sorted(entry.name for entry in os.scandir(directory) if entry.is_file())
    except (FileNotFoundError, NotADirectoryError):
        return [], []
    except OSError as exc:
        raise UsageError(f"cannot read certs.d directory {directory}: {exc.strerror or exc}") from None
    cas = [str(directory / name) for name in names if name.endswith(".crt")]
    pairs: list[tuple[str, str]] = []
    for name in names:
        stem = name[: -len(".cert")] if name.endswith(".cert") else None
        if stem is not None:
            if f"{stem}.key" not in names:
                raise UsageError(f"client certificate {directory / name} has no key {directory / stem}.key")
            pairs.append((str(directory / name), str(directory / f"{stem}.key")))
        elif name.endswith(".key") and f"{name[: -len('.key')]}.cert" not in names:
            raise UsageError(
                f"key {directory / name} has no client certificate {directory / name[: -len('.key')]}.cert"
                " (CA certificates must end in .crt)"
            )
    return cas, pairs


def _add_ca(context: ssl.SSLContext, path: str, what: str) -> None:
    try:
        context.load_verify_locations(cafile=path)
    except ssl.SSLError:  # an OSError too: first
        raise UsageError(f"{what} holds no PEM certificate") from None
    except OSError as exc:
        raise UsageError(f"cannot read {what}: {exc.strerror or exc}") from None


def _load_client(context: ssl.SSLContext, cert: str, key: str) -> None:
    def no_password() -> str:
        raise UsageError(f"client key {key} is encrypted; ocifs needs it unencrypted (mode 0600)")

    for path in dict.fromkeys((cert, key)):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise UsageError(f"cannot read client certificate file {path}: {exc.strerror or exc}") from None
    try:
        context.load_cert_chain(cert, key, password=no_password)
    except ssl.SSLError as exc:
        reason = getattr(exc, "reason", None)
        if reason == "KEY_VALUES_MISMATCH":
            raise UsageError(f"client certificate {cert} and key {key} do not match") from None
        if cert == key:
            raise UsageError(f"client certificate {cert} holds no key: pass --key-file") from None
        raise UsageError(f"cannot use client certificate {cert} with key {key}: {reason or exc}") from None
