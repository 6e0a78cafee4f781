"""``ocifs mount`` and ``ocifs umount`` from the command line: ``-o`` options, checks, unmount.

Owns: splitting ``-o`` options into ours (folded into the parsed flags, so fstab and
``mount -t fuse.ocifs`` can say everything a command line can) and libfuse's; the
:class:`~ocifs.fs.daemon.MountConfig` of parsed arguments; refusing a mountpoint that cannot
work; unmounting and waiting for the daemon to finish its cache writes. Must not: serve a
mount (:mod:`ocifs.fs.daemon` does).
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import shutil
import stat
import subprocess
import time
from collections.abc import Callable
from typing import Any

from ocifs import procfs
from ocifs.cache.prefetch import PrefetchMode
from ocifs.commands.arguments import parse_size, positive_float, positive_int
from ocifs.errors import OcifsError, UsageError
from ocifs.fs import mounts
from ocifs.fs.daemon import DEFAULT_PATH, MountConfig, serve_mount
from ocifs.fs.options import split_options
from ocifs.reference import parse_reference
from ocifs.registry.client import ClientOptions

log = logging.getLogger(__name__)


def apply_options(args: argparse.Namespace) -> None:
    """Fold our ``-o`` keys into ``args`` as if given as flags (``-o prefetch=whole`` is
    ``--prefetch whole``) and keep libfuse's in ``args.fuse_options``. Called by the CLI
    before it builds client options, so ``-o plain_http`` works from fstab."""
    ours, fuse = split_options(getattr(args, "options", None) or [])
    converters: dict[str, Callable[[str], Any]] = {
        "jobs": positive_int,
        "retries": positive_int,
        "read_timeout": positive_float,
        "read_ahead_kb": positive_int,
        "cache_max_size": parse_size,
    }
    for name, value in ours.items():
        if value is None:
            setattr(args, name, True)
            continue
        try:
            converted = converters[name](value) if name in converters else value
        except argparse.ArgumentTypeError as exc:
            raise UsageError(f"option -o {name}: {exc}") from None
        if name == "prefetch" and value not in {m.value for m in PrefetchMode}:
            raise UsageError(f"option -o prefetch: {value!r} is not one of auto, whole, off")
        setattr(args, name, converted)
    args.fuse_options = fuse


def config_from_args(args: argparse.Namespace, client_options: ClientOptions) -> MountConfig:
    """The :class:`MountConfig` of parsed ``ocifs mount`` arguments (after :func:`apply_options`)."""
    return MountConfig(
        reference=args.reference,
        mountpoint=os.path.abspath(args.mountpoint),
        client_options=client_options,
        foreground=bool(args.foreground),
        fuse_options=frozenset(getattr(args, "fuse_options", ())),
        prefetch=PrefetchMode(args.prefetch),
        jobs=args.jobs,
        cache_dir=os.path.abspath(args.cache_dir) if args.cache_dir else None,
        cache_max_size=args.cache_max_size,
        cache_memory=getattr(args, "cache_memory", None),
        # The fetcher's share of the one retry policy (docs/requests.md: how it composes with
        # the client's --retries attempts per request).
        fetch_retries=client_options.retry.fetch_retries,
        log_file=os.path.abspath(args.log_file) if args.log_file else None,
        read_ahead_kb=args.read_ahead_kb,
    )


def check_mountpoint(path: str) -> None:
    """Refuse, with one clear line, a mountpoint that cannot work: missing, not a directory,
    a dead FUSE mount (ENOTCONN), or already a mount point."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise UsageError(f"mountpoint {path} does not exist", hint="create it with mkdir") from None
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            raise UsageError(
                f"mountpoint {path} is a dead FUSE mount (its daemon exited)", hint=f"run: ocifs umount {path}"
            ) from None
        raise UsageError(f"mountpoint {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"mountpoint {path} is not a directory")
    if os.path.ismount(path):
        raise UsageError(f"{path} is already a mount point", hint=f"unmount it first (ocifs umount {path})")


def run_mount(args: argparse.Namespace, client_options: ClientOptions) -> int:
    """``ocifs mount``: check, then serve in the foreground (``-f``) or detach.

    Errors before the mount is ready are raised (foreground) or reported by the parent as one
    line with exit status 1 (detached).
    """
    os.environ.setdefault("PATH", DEFAULT_PATH)
    config = config_from_args(args, client_options)
    parse_reference(config.reference)  # a malformed reference fails here, before any fork
    check_mountpoint(config.mountpoint)
    return serve_mount(config)


#: ``ocifs umount`` waits this long for the daemon to finish its cache writes and exit.
UMOUNT_WAIT = 60.0


def run_umount(args: argparse.Namespace) -> int:
    """``ocifs umount MOUNTPOINT [-z]``: ``fusermount3 -u`` (``-z``: lazy, detach now and let
    the daemon serve open files until the last close). Without ``-z`` it then waits (up to
    :data:`UMOUNT_WAIT`) for the daemon to exit, so the chunks it served are all in the cache
    when the command returns (the daemon writes them behind the reads)."""
    mountpoint = os.path.abspath(args.mountpoint)
    if not mounts.is_fuse_mount(mountpoint):
        raise UsageError(f"{mountpoint} is not a FUSE mount")
    daemon_pid = None if args.lazy else mounts.daemon_pid(mountpoint)
    tool = shutil.which("fusermount3") or shutil.which("fusermount3", path=DEFAULT_PATH)
    if tool is None:
        raise UsageError("fusermount3 not found", hint="install fuse3 (apt-get install fuse3)")
    command = [tool, "-u", *(["-z"] if args.lazy else []), mountpoint]
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        detail = " ".join(proc.stderr.split()) or f"fusermount3 exited with status {proc.returncode}"
        detail = detail.removeprefix(f"{tool}: ").removeprefix("fusermount3: ")
        hint = "a file is open there: close it, or use -z to detach lazily" if "busy" in detail else None
        raise OcifsError(f"cannot unmount {mountpoint}: {detail}", hint=hint)
    if daemon_pid is not None:
        _wait_for_exit(daemon_pid, UMOUNT_WAIT)
    return 0


def _wait_for_exit(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not procfs.is_running(pid):
            return  # gone, or exited and yet to be reaped by its parent
        time.sleep(0.02)
    log.info("the daemon (pid %d) is still finishing after %.0f s; not waiting longer", pid, timeout)
