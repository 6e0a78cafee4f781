"""The exception tree of ocifs.

Every error a user can meet is an :class:`OcifsError` whose ``str()`` is one clear line saying
what went wrong, and whose ``hint`` (optional) says what to do. Lower layers raise these;
the CLI prints them (no traceback unless ``--debug``), the filesystem maps them to errno.
Third-party exceptions (httpx, OSError from the cache) are translated at the layer edge that
meets them and never escape as themselves.
"""

from __future__ import annotations

import copy
import errno
import resource
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

E = TypeVar("E", bound=BaseException)


class OcifsError(Exception):
    """Base of every error ocifs reports to a user.

    ``message`` is one line; ``hint`` is an optional short suggestion appended after ": ".
    """

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}: {self.hint}"
        return self.message


class UsageError(OcifsError):
    """The user asked for something that cannot be done as asked (bad flag value, bad path)."""

    exit_code = 2


class InvalidReference(UsageError):
    """A reference string does not follow ``registry/repo[:tag][@digest]``."""


class InvalidDigest(OcifsError):
    """A digest string is malformed or uses an unsupported algorithm."""


class FormatError(OcifsError):
    """A manifest or chunk index violates docs/spec.md (hostile or broken artifact)."""


class BlobSizeMismatch(FormatError):
    """A registry serves a blob whose size is not the one its descriptor gives, in a complete
    answer: the artifact (or the registry, or a proxy in front of it) is inconsistent.

    Permanent, unlike a body cut short by the network: the registry client does not retry it,
    and the fetcher, which retries only :class:`RegistryUnavailable` and corrupt bytes, passes
    it straight on. ``expected`` is the descriptor's size; ``served`` what the registry sends.
    """

    def __init__(self, message: str, *, hint: str | None = None, expected: int = 0, served: int = 0) -> None:
        super().__init__(message, hint=hint)
        self.expected = expected
        self.served = served


class IntegrityError(OcifsError):
    """Bytes did not match the digest that names them. Never served, never cached."""


class ConfigError(OcifsError):
    """A configuration or credentials file is unreadable or malformed."""


class RegistryError(OcifsError):
    """A registry refused or failed a request.

    ``status`` is the HTTP status (0 when no response was received), ``code`` the first OCI
    error code of the body (e.g. ``MANIFEST_UNKNOWN``) when there was one.
    """

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        status: int = 0,
        code: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.status = status
        self.code = code


class AuthenticationError(RegistryError):
    """Credentials are missing or wrong (HTTP 401 after the auth flow)."""


class PermissionDenied(RegistryError):
    """Credentials are valid but do not allow the action (HTTP 403, DENIED)."""


class NotFound(RegistryError):
    """The repository, manifest, tag or blob does not exist (HTTP 404)."""


class RegistryUnavailable(RegistryError):
    """The registry could not be reached or kept failing after every retry."""


class IsADirectory(OcifsError):
    """A file operation (open, read) named a directory (the FUSE adapter answers ``EISDIR``)."""


class CacheError(OcifsError):
    """The local chunk cache cannot be used (unwritable, full, corrupt beyond repair)."""


def in_context(exc: E, what: str) -> E:
    """A copy of ``exc`` (same type, status, hint) with ``what`` in front of its message, so a
    caller can say which file or part failed without hiding the kind of failure."""
    wrapped = copy.copy(exc)
    if isinstance(wrapped, OcifsError):
        wrapped.message = f"{what}: {wrapped.message}"
        wrapped.args = (wrapped.message,)
    else:
        wrapped.args = (f"{what}: {exc}",)
    return wrapped


#: errno values that mean "out of file descriptors": this process's limit, or the host's.
FD_EXHAUSTION = frozenset({errno.EMFILE, errno.ENFILE})


def fd_exhaustion(exc: BaseException, *, groups: bool = True) -> OSError | None:
    """The ``OSError`` EMFILE/ENFILE behind ``exc`` — itself, or one in its chain of causes and
    contexts (and, with ``groups``, inside exception groups there) — or None.

    Transport libraries wrap it (httpx: ``ConnectError`` from httpcore's from the ``OSError``);
    whatever the wrapping, running out of descriptors is not a network problem.
    """
    return find_cause(exc, OSError, lambda e: e.errno in FD_EXHAUSTION, groups=groups)


def find_cause(
    exc: BaseException, kind: type[E], match: Callable[[E], bool] = lambda e: True, *, groups: bool = False
) -> E | None:
    """The first exception of type ``kind`` (that ``match`` accepts) among ``exc`` itself and the
    causes and contexts it was raised from — and, with ``groups``, the members of exception
    groups on the way — or None. Libraries wrap the errors that tell what really failed (trio
    wraps ``ssl.SSLError`` in ``BrokenResourceError``, httpx wraps that again)."""
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, kind) and match(current):
            return current
        if isinstance(current, BaseExceptionGroup):
            if not groups:
                continue
            pending.extend(current.exceptions)
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)
    return None


def fd_exhaustion_hint(err: OSError) -> str:
    """What to do when out of descriptors, with the limit that was hit."""
    if err.errno == errno.ENFILE:
        return "the host's limit (fs.file-max) is reached; close other programs' files or raise it, or lower --jobs"
    try:
        limit = str(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    except (OSError, ValueError):
        limit = "?"
    return f"the limit is {limit} open files; raise it (ulimit -n, LimitNOFILE= in the unit) or lower --jobs"


def first_error(exc: BaseException) -> BaseException:
    """The error to report for ``exc``: itself, or for an exception group the first leaf that is
    an :class:`OcifsError` (else the first leaf that is not a cancellation).

    trio nurseries wrap every failure in an ``ExceptionGroup``; a user wants the one line that
    caused it, not the group.
    """
    if not isinstance(exc, BaseExceptionGroup):
        return exc
    leaves = list(_leaves(exc))
    for leaf in leaves:
        if isinstance(leaf, OcifsError):
            return leaf
    for leaf in leaves:
        if type(leaf).__name__ != "Cancelled":
            return leaf
    return leaves[0] if leaves else exc


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


@contextmanager
def collapse_groups() -> Iterator[None]:
    """Re-raise an exception group escaping the block as its :func:`first_error`."""
    try:
        yield
    except BaseExceptionGroup as group:
        raise first_error(group) from None
