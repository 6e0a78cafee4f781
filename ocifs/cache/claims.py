"""Cross-process download claims: one download of a chunk at a time among every process sharing a
cache directory.

Owns the files under ``<cache>/v1/claims/`` and the judgement of whether a claim's owner is gone.
Must not know about chunk bytes, the memory tier or eviction: a claim only says "I am downloading
this digest; wait for its entry rather than download it too".
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from ocifs import procfs
from ocifs.digest import Digest

#: A download claim older than this belongs to a process that died: a 16 MiB chunk downloads in
#: well under a second on the reference machine (docs/platform.md, "Measured on the reference
#: machine"), and even on a slow link in less than this.
STALE_CLAIM_AGE = 120.0

#: Name of the claim granted when no claim can be written (read-only or full cache): with
#: nowhere to store the chunk there is nothing to share, so there is nothing to release either.
UNWRITABLE = ".unwritable"

_HOST_IDENTITY = procfs.host_identity()


class Claims:
    """The claims directory ``directory`` (created on first claim, mode 0700)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def try_claim(self, digest: Digest) -> Path | None:
        """Claim the download of ``digest``; the claim (give it to :meth:`release`), or ``None``
        if a live process holds one. A claim is an empty-ish file created with ``O_EXCL`` naming
        its owner (pid, pid namespace, boot); no descriptor stays open, so a process near its
        open-file limit loses nothing. A claim whose owner is known dead (``kill -9``) is taken
        over at once, any other once older than :data:`STALE_CLAIM_AGE`. If no claim can be
        written, one named :data:`UNWRITABLE` is granted."""
        path = self.directory / digest.hex
        for _ in range(2):
            try:
                path.parent.mkdir(mode=0o700, exist_ok=True)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                try:
                    os.write(fd, owner_record())
                finally:
                    os.close(fd)
                return path
            except FileExistsError:
                try:
                    age = time.time() - path.stat().st_mtime
                    owner = path.read_bytes()
                except FileNotFoundError:
                    continue  # released meanwhile: try again
                if age < STALE_CLAIM_AGE and not owner_is_dead(owner):
                    return None
                path.unlink(missing_ok=True)  # its owner died; take it over
            except OSError:
                return path.with_name(UNWRITABLE)
        return None

    @staticmethod
    def release(claim: Path) -> None:
        """Release a claim from :meth:`try_claim` (best effort: a claim left behind goes stale)."""
        if claim.name != UNWRITABLE:
            with contextlib.suppress(OSError):
                claim.unlink()


def owner_record() -> bytes:
    """``pid pid-namespace boot-id`` of this process (read at each claim: the daemon forks)."""
    return f"{os.getpid()} {_HOST_IDENTITY}\n".encode()


def owner_is_dead(owner: bytes) -> bool:
    """Whether a claim's owner (an :func:`owner_record`) is certainly gone: same boot and pid
    namespace as us (else its pid means nothing here), and no such running process (a zombie,
    killed but not reaped, writes nothing any more). Unknown or unreadable owners count as alive;
    the age limit still applies to them."""
    fields = owner.split()
    if len(fields) != 3 or b"?" in fields[1:] or fields[1:] != _HOST_IDENTITY.encode().split():
        return False
    try:
        pid = int(fields[0])
    except ValueError:
        return False
    return pid > 0 and not procfs.is_running(pid)
