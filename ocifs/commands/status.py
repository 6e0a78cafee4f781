"""``ocifs status [MOUNTPOINT]``: what the ocifs mounts of this host are doing.

Owns: finding ocifs mounts in ``/proc/self/mountinfo`` (filesystem type ``fuse.ocifs``, source
the pinned reference ``REF@DIGEST``, both set by the daemon through libfuse's ``subtype=`` and
``fsname=``), asking each daemon for its live counters (the root's ``user.ocifs.stats`` extended
attribute: :func:`ocifs.fs.mounts.read_stats`), and printing them for people or as ``--json``.

Must not: talk to a registry or touch the chunk cache; hang on a daemon that does not answer.
Every access to a mount runs in a daemon thread with a timeout: a stopped daemon (SIGSTOP, a
debugger) blocks its mount's syscalls for as long as it is stopped, and a crashed one answers
``ENOTCONN`` until someone detaches it (``fusermount3 -u -z``).

Exit status: 0 when every mount shown answered (or is another user's that lets nobody else
in); 1 when one is dead or does not answer, so ``ocifs status || alert`` works from a
monitoring script; 2 when MOUNTPOINT is not an ocifs mount.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import queue
import threading
from dataclasses import dataclass
from typing import Any

from ocifs.errors import OcifsError, UsageError
from ocifs.fs.mounts import MountEntry, ocifs_mounts, read_stats
from ocifs.units import format_size

#: The filesystem type of our mounts in mountinfo: "fuse." + the ``subtype=ocifs`` the daemon sets.


#: How long one mount may take to answer a stat and the stats xattr. A healthy daemon answers
#: in well under a millisecond (no I/O: counters only); seconds mean it is stopped or wedged.
ANSWER_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class MountStatus:
    """A mount and what its daemon said: ``state`` is ``ok``, ``dead``, ``not answering`` or
    ``no access`` (another user's mount without ``allow_other``: nothing wrong with it)."""

    @property
    def healthy(self) -> bool:
        return self.state in ("ok", "no access")

    entry: MountEntry
    state: str
    stats: dict[str, Any] | None = None
    problem: str | None = None

    def to_json(self) -> dict[str, Any]:
        reference, digest = split_source(self.entry.source)
        return {
            "mountpoint": self.entry.mountpoint,
            "reference": reference,
            "digest": digest,
            "state": self.state,
            "problem": self.problem,
            "options": self.entry.options,
            "stats": self.stats,
        }


# =================================================================================================
# Finding mounts
# =================================================================================================


def find_mount(path: str) -> MountEntry:
    """The ocifs mount whose mount point is ``path``, or a UsageError that says what is there."""
    mounts = ocifs_mounts()
    candidates = [os.path.abspath(path)]
    for candidate in candidates:
        for entry in reversed(mounts):  # the last mount on a path is the one visible there
            if entry.mountpoint == candidate:
                return entry
        if len(candidates) == 1:
            # Resolved only now: realpath stats the target, which blocks on a stopped daemon.
            # A symlink to the mount (the upgrade recipe in docs/operations.md) lands here.
            candidates.append(os.path.realpath(path))
    if not os.path.exists(path) and not os.path.lexists(path):
        raise UsageError(f"{path} does not exist")
    inside = [m.mountpoint for m in mounts if any(c.startswith(m.mountpoint.rstrip("/") + "/") for c in candidates)]
    if inside:
        raise UsageError(f"{path} is not an ocifs mount point", hint=f"it is inside the ocifs mount {inside[-1]}")
    hint = "`ocifs status` lists them" if mounts else "there are no ocifs mounts on this host"
    raise UsageError(f"{path} is not an ocifs mount", hint=hint)


def split_source(source: str) -> tuple[str, str | None]:
    """``REF@DIGEST`` (the fsname) → ``(REF, DIGEST)``; ``(source, None)`` without a digest."""
    reference, sep, digest = source.rpartition("@")
    return (reference, digest) if sep and ":" in digest else (source, None)


# =================================================================================================
# Asking a daemon
# =================================================================================================


def query(entry: MountEntry, timeout: float = ANSWER_TIMEOUT) -> MountStatus:
    """Ask the daemon of ``entry`` for its counters, giving up after ``timeout`` seconds."""
    answers: queue.SimpleQueue[MountStatus] = queue.SimpleQueue()

    def ask() -> None:
        try:
            # An xattr, not a stat: the kernel answers a stat from its attribute cache (300 s)
            # even when the daemon is gone; extended attributes always go to the daemon.
            os.getxattr(entry.mountpoint, "user.ocifs.reference")
        except OSError as exc:
            if exc.errno == errno.ENOTCONN:
                problem = f"its daemon is gone (ENOTCONN): detach it with fusermount3 -u -z {entry.mountpoint}"
                answers.put(MountStatus(entry, "dead", problem=problem))
            elif exc.errno in (errno.EACCES, errno.EPERM):
                # FUSE lets only the mounting user in unless the mount has allow_other.
                problem = "mounted by another user without allow_other: ask as that user or root"
                answers.put(MountStatus(entry, "no access", problem=problem))
            elif exc.errno in (errno.ENODATA, errno.ENOTSUP):
                answers.put(MountStatus(entry, "ok", problem="no counters: the daemon does not serve them"))
            else:
                answers.put(MountStatus(entry, "dead", problem=f"it fails: {exc.strerror}"))
            return
        try:
            answers.put(MountStatus(entry, "ok", stats=read_stats(entry.mountpoint)))
        except (OcifsError, ValueError) as exc:  # no xattr, or not JSON: an older or foreign daemon
            answers.put(MountStatus(entry, "ok", problem=f"no counters: {exc}"))

    # A daemon thread: if the mount never answers, the process still exits (the kernel aborts
    # the pending FUSE request when the thread dies with the process).
    threading.Thread(target=ask, name=f"status {entry.mountpoint}", daemon=True).start()
    try:
        return answers.get(timeout=timeout)
    except queue.Empty:
        problem = f"no answer within {timeout:g} s: its daemon is stopped or stuck"
        return MountStatus(entry, "not answering", problem=problem)


# =================================================================================================
# Output
# =================================================================================================


def format_duration(seconds: float) -> str:
    """``3725`` → ``1h 2m 5s``; ``0.4`` → ``0s``."""
    total = int(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{days}d"] if days else []
    if days or hours:
        parts.append(f"{hours}h")
    if days or hours or minutes:
        parts.append(f"{minutes}m")
    parts.append(f"{secs}s")
    return " ".join(parts)


def _counters(stats: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]:
    return stats.get("fs", {}), stats.get("fetch", {}), stats.get("prefetch")


def _cache_misses(stats: dict[str, Any]) -> str:
    """The mount's cache misses as its cache counted them (``stats["cache"]``); a daemon of an
    older version does not publish them, and any estimate from download counts would be wrong
    (range reads of plain layers are downloads without a chunk lookup)."""
    cache = stats.get("cache")
    return f"{cache.get('misses', 0):,}" if isinstance(cache, dict) else "unknown"


def summary_line(status: MountStatus) -> str:
    """One line: mount point, reference (digest shortened), and the state or headline counters."""
    reference, digest = split_source(status.entry.source)
    shown = f"{reference}@{digest[:19]}" if digest else reference  # "sha256:" + 12 hex
    head = f"{status.entry.mountpoint}  {shown}"
    if status.stats is None:
        return f"{head}  {status.state.upper()}: {status.problem}"
    fs, fetch, _ = _counters(status.stats)
    errors = fetch.get("errors", 0) + fs.get("read_errors", 0)
    return (
        f"{head}  up {format_duration(status.stats.get('uptime_seconds', 0))},"
        f" {format_size(fetch.get('bytes_downloaded', 0))} fetched,"
        f" {fetch.get('memory_hits', 0) + fetch.get('disk_hits', 0):,} hits,"
        f" {fetch.get('in_flight', 0)} in flight, {errors} errors"
    )


def detail_text(status: MountStatus) -> str:
    """The report for one mount: every counter an operator asks about, one per line."""
    reference, digest = split_source(status.entry.source)
    lines = [
        f"mountpoint     {status.entry.mountpoint}",
        f"reference      {reference}",
        f"digest         {digest or 'unknown'}",
        f"state          {status.state}" + (f": {status.problem}" if status.problem else ""),
    ]
    if status.stats is None:
        return "\n".join(lines)
    fs, fetch, prefetch = _counters(status.stats)
    downloads, retries = fetch.get("downloads", 0), fetch.get("retries", 0)
    lines += [
        f"uptime         {format_duration(status.stats.get('uptime_seconds', 0))}",
        f"files          {status.stats.get('files', 0):,} ({fs.get('open_files', 0)} open now)",
        f"reads          {fs.get('reads', 0):,} requests, {format_size(fs.get('bytes_read', 0))} served",
        f"fetched        {format_size(fetch.get('bytes_downloaded', 0))} in {downloads:,} downloads",
        f"cache hits     {fetch.get('memory_hits', 0):,} memory, {fetch.get('disk_hits', 0):,} disk",
        f"cache misses   {_cache_misses(status.stats)}",
        f"in flight      {fetch.get('in_flight', 0)} fetches (peak {fetch.get('peak_in_flight', 0)})",
        f"errors         {fetch.get('errors', 0)} failed fetches, {fs.get('read_errors', 0)} failed reads,"
        f" {fetch.get('integrity_failures', 0)} integrity failures, {retries} retries",
    ]
    if prefetch is not None:
        lines.append(
            f"prefetch       {prefetch.get('mode', '?')}: {prefetch.get('completed', 0):,} done,"
            f" {prefetch.get('failed', 0)} failed, {prefetch.get('queued', 0)} queued,"
            f" {format_size(prefetch.get('budget_in_use', 0))} in use"
        )
    else:
        lines.append("prefetch       none")
    return "\n".join(lines)


def run_status(args: argparse.Namespace) -> int:
    """``ocifs status [MOUNTPOINT] [--json]``."""
    if args.mountpoint:
        status = query(find_mount(args.mountpoint))
        print(json.dumps(status.to_json(), indent=2, sort_keys=True) if args.json else detail_text(status))
        return 0 if status.healthy else 1
    statuses = [query(entry) for entry in ocifs_mounts()]
    if args.json:
        print(json.dumps({"mounts": [s.to_json() for s in statuses]}, indent=2, sort_keys=True))
    elif not statuses:
        print("no ocifs mounts")
    else:
        for status in statuses:
            print(summary_line(status))
    return 0 if all(s.healthy for s in statuses) else 1
