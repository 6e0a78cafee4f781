"""The mounts of this host as the kernel lists them, and what a mount's daemon says about itself.

Owns: parsing ``/proc/self/mountinfo`` (proc(5)), finding FUSE and ocifs mounts in it, and reading
the live counters a daemon publishes in its root's ``user.ocifs.stats`` extended attribute. Used
by ``ocifs umount`` and ``ocifs status``. Must not: import pyfuse3 or touch a mount other than
through ``getxattr`` (a dead mount answers ENOTCONN to everything else, a stopped one blocks).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ocifs.errors import OcifsError, UsageError

#: The type our mounts have in mountinfo (``fuse.`` + the ``subtype=ocifs`` option).
FSTYPE = "fuse.ocifs"

MOUNTINFO = Path("/proc/self/mountinfo")

#: The extended attribute of a mount's root holding its counters as JSON.
STATS_XATTR = "user.ocifs.stats"


@dataclass(frozen=True, slots=True)
class MountEntry:
    """One line of mountinfo: where, what (the fsname: ``REF@DIGEST`` for ocifs), its options
    and filesystem type."""

    mountpoint: str
    source: str
    options: str
    fstype: str = FSTYPE


def unescape(text: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (``\\040`` …)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def parse_mountinfo(text: str) -> list[MountEntry]:
    """Every mount listed in ``text`` (the format of ``/proc/PID/mountinfo``, proc(5)):
    ``ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS``.
    Malformed lines are skipped."""
    mounts = []
    for line in text.splitlines():
        fields = line.split(" ")
        if "-" not in fields[6:]:
            continue
        separator = fields.index("-", 6)
        if len(fields) < separator + 3:
            continue
        mounts.append(
            MountEntry(unescape(fields[4]), unescape(fields[separator + 2]), fields[5], fields[separator + 1])
        )
    return mounts


def read_mounts() -> list[MountEntry]:
    """Every mount visible in this process's mount namespace, in mount order."""
    try:
        text = MOUNTINFO.read_text()
    except OSError as exc:
        raise OcifsError(f"cannot read {MOUNTINFO}: {exc.strerror}") from None
    return parse_mountinfo(text)


def ocifs_mounts() -> list[MountEntry]:
    """Every ocifs mount visible in this process's mount namespace, in mount order."""
    return [m for m in read_mounts() if m.fstype == FSTYPE]


def is_fuse_mount(path: str) -> bool:
    """Whether ``path`` is the mount point of a FUSE filesystem, from mountinfo (no access to
    the mount itself: a dead mount answers ENOTCONN). True when mountinfo cannot be read, so
    the caller's tool (fusermount3) decides."""
    try:
        mounts = read_mounts()
    except OcifsError:
        return True
    return any(m.mountpoint == path and m.fstype.startswith("fuse") for m in mounts)


def read_stats(mountpoint: str) -> dict[str, Any]:
    """The live counters of the ocifs mount at ``mountpoint`` (its root's :data:`STATS_XATTR`;
    :meth:`ocifs.fs.filesystem.FileSystem.stats` documents the fields)."""
    try:
        raw = os.getxattr(mountpoint, STATS_XATTR)
    except OSError as exc:
        raise UsageError(f"{mountpoint} is not an ocifs mount ({exc.strerror})") from None
    try:
        data = json.loads(raw)
    except ValueError:
        raise UsageError(f"{mountpoint} answered unreadable counters") from None
    if not isinstance(data, dict):
        raise UsageError(f"{mountpoint} answered unreadable counters")
    return data


def daemon_pid(mountpoint: str) -> int | None:
    """The pid of the ocifs daemon serving ``mountpoint`` (from its counters), or None (not
    ocifs, a dead mount, another pid namespace: then there is nothing to wait for)."""
    try:
        pid = read_stats(mountpoint).get("pid")
    except UsageError:
        return None
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0 or pid == os.getpid():
        return None
    return pid
