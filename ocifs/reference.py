"""Parsing of image references: ``[registry/]repository[:tag][@digest]``.

Follows the grammar of distribution's ``reference`` package and Docker's defaults: with no
registry component the registry is Docker Hub (``registry-1.docker.io``) and a single-component
repository gets the ``library/`` prefix; with neither tag nor digest the tag is ``latest``.
A first component is a registry when it contains ``.`` or ``:`` or is ``localhost``.

Credentials typed into a reference (``user:password@host/repo``, ``https://user:pw@host/...``)
are refused, and never quoted back: error messages show ``***`` in their place.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from ocifs.digest import Digest
from ocifs.errors import InvalidDigest, InvalidReference

DOCKER_HUB = "registry-1.docker.io"
_DOCKER_HUB_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io"}

# distribution/reference: path components and tags.
_COMPONENT_RE = re.compile(r"^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
_HOST_RE = re.compile(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)(?:\.(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?))*$"
)
_MAX_NAME_LENGTH = 255  # distribution's NameTotalLengthMax
_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_LOGIN_HOST_RE = re.compile(r"^[A-Za-z0-9.:\[\]-]+$")


@dataclass(frozen=True, slots=True)
class Reference:
    """A parsed reference. ``tag`` and ``digest`` may both be set; the digest then wins."""

    registry: str
    repository: str
    tag: str | None = None
    digest: Digest | None = None

    @property
    def selector(self) -> str:
        """What to put after ``/manifests/``: the digest if pinned, else the tag."""
        if self.digest is not None:
            return str(self.digest)
        return self.tag or "latest"

    def with_digest(self, digest: Digest) -> Reference:
        """The same reference pinned to ``digest`` (the tag is kept for display)."""
        return Reference(self.registry, self.repository, self.tag, digest)

    def with_repository(self, repository: str) -> Reference:
        """The same registry with another repository, no tag or digest."""
        return Reference(self.registry, repository)

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def is_loopback_host(registry: str) -> bool:
    """Whether ``registry`` (``host[:port]``) names this machine (plain HTTP allowed by default)."""
    host = split_host_port(registry)[0]
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def split_host_port(registry: str) -> tuple[str, int | None]:
    """Split ``host[:port]`` (IPv6 literals in brackets) into host and port."""
    if registry.startswith("["):
        host, _, rest = registry[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = registry.partition(":")
    return host, int(port) if port else None


def _userinfo_span(text: str) -> tuple[int, int] | None:
    """Where ``user[:password]`` typed before an ``@`` is in ``text``: ``(start, end)`` with
    ``text[end] == "@"``, or None.

    An ``@`` with a ``/`` anywhere after it cannot introduce a digest (digests have no ``/``), so
    everything before the last such ``@`` is userinfo; in a URL (``scheme://``) so is anything
    before an ``@`` in the authority.
    """
    scheme = _SCHEME_RE.match(text)
    start = scheme.end() if scheme else 0
    end = text.rfind("@", start, max(start, text.rfind("/")))
    if end < 0 and scheme:
        authority_end = text.find("/", start)
        end = text.rfind("@", start, authority_end if authority_end >= 0 else len(text))
    if end < 0:
        return None
    # What follows must be a host[:port]: "repo@sha256:abc/x" is a broken digest, not a login.
    host = text[end + 1 :].split("/", 1)[0]
    _, colon, port = host.rpartition(":")
    if colon and not host.endswith("]") and not port.isdigit():
        return None
    return start, end


def redact_userinfo(text: str) -> str:
    """``text`` with credentials typed into it (see :func:`_userinfo_span`) shown as ``***``."""
    span = _userinfo_span(text)
    if span is None:
        return text
    start, end = span
    return f"{text[:start]}***{text[end:]}"


def parse_reference(text: str) -> Reference:
    """Parse ``text`` into a :class:`Reference` or raise :class:`InvalidReference` saying why.

    Messages never quote credentials typed into ``text`` (:func:`redact_userinfo`).
    """
    if not isinstance(text, str) or not text:
        raise InvalidReference("empty reference", hint="expected REGISTRY/REPOSITORY[:TAG][@DIGEST]")
    span = _userinfo_span(text)
    if span is not None:
        host = text[span[1] + 1 :].split("/", 1)[0]
        raise InvalidReference(
            f"invalid reference {redact_userinfo(text)!r}: credentials do not belong in the reference",
            hint=f"store them with `ocifs login {host if _LOGIN_HOST_RE.match(host) else 'HOST'}`",
        )
    if any(c.isspace() or ord(c) < 0x20 for c in text):
        raise InvalidReference(f"invalid reference {text!r}: contains whitespace or control characters")
    if "://" in text:
        raise InvalidReference(
            f"invalid reference {text!r}: no URL scheme",
            hint="write HOST[:PORT]/REPOSITORY[:TAG], e.g. localhost:5000/models/llama:v1",
        )

    remainder = text
    digest: Digest | None = None
    if "@" in remainder:
        remainder, _, digest_text = remainder.partition("@")
        try:
            digest = Digest.parse(digest_text)
        except InvalidDigest as exc:
            # What precedes the "@" is not quoted: it may be a "user:password" (without a "/"
            # after it, nothing tells the two apart).
            raise InvalidReference(
                f"invalid reference: {exc.message} after '@'",
                hint="a digest is ALGORITHM:HEX; credentials do not belong in a reference (use `ocifs login`)",
            ) from None

    tag: str | None = None
    last_slash = remainder.rfind("/")
    colon = remainder.rfind(":")
    if colon > last_slash:
        remainder, tag = remainder[:colon], remainder[colon + 1 :]
        if not _TAG_RE.match(tag):
            raise InvalidReference(
                f"invalid reference {text!r}: bad tag {tag!r}",
                hint="a tag is 1-128 of [A-Za-z0-9_.-] and does not start with . or -",
            )

    if not remainder:
        raise InvalidReference(f"invalid reference {text!r}: no repository")
    first, sep, rest = remainder.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        registry, repository = first, rest
        _check_registry(registry, text)
    else:
        registry, repository = DOCKER_HUB, remainder

    if registry in _DOCKER_HUB_ALIASES:
        registry = DOCKER_HUB
        if "/" not in repository:
            repository = f"library/{repository}"

    if not repository:
        raise InvalidReference(f"invalid reference {text!r}: no repository after the registry")
    for component in repository.split("/"):
        if not _COMPONENT_RE.match(component):
            raise InvalidReference(
                f"invalid reference {text!r}: bad repository component {component!r}",
                hint="repository names are lowercase letters, digits and separators . _ __ -",
            )
    if len(repository) > _MAX_NAME_LENGTH:
        raise InvalidReference(f"invalid reference {text!r}: repository name longer than {_MAX_NAME_LENGTH}")

    if tag is None and digest is None:
        tag = "latest"
    return Reference(registry, repository, tag, digest)


def parse_repository(text: str, registry: str) -> str:
    """Validate a bare repository name (e.g. ``--from REPO``) on ``registry``."""
    return parse_reference(f"{registry}/{text}").repository


def _check_registry(registry: str, text: str) -> None:
    try:
        host, port = split_host_port(registry)
    except ValueError:
        raise InvalidReference(f"invalid reference {text!r}: bad port in {registry!r}") from None
    if port is not None and not 0 < port < 65536:
        raise InvalidReference(f"invalid reference {text!r}: port {port} out of range")
    if registry.startswith("["):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise InvalidReference(f"invalid reference {text!r}: bad IPv6 address {host!r}") from None
    elif not _HOST_RE.match(host):
        raise InvalidReference(f"invalid reference {text!r}: bad registry host {host!r}")
