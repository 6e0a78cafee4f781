"""The mount daemon: the life of a mount, from fork to unmount.

Owns: detaching like other FUSE tools, the trio run that resolves the reference, builds the
filesystem and serves pyfuse3, readiness (to the waiting parent and to systemd), kernel tuning
of the mount, clean shutdown on signals. Must not: parse command lines or ``-o`` strings
(:mod:`ocifs.commands.mount`, :mod:`ocifs.fs.options`), implement filesystem behaviour
(:mod:`ocifs.fs.filesystem`) or map errors to errno (:mod:`ocifs.fs.fuse_ops`).

Lifecycle (facts checked on the reference machine: docs/platform.md "FUSE on Linux"):

1. The parent checks the mountpoint, then forks **before** ``trio.run`` (forking after
   ``pyfuse3.init``, s3ql's way, reported success for a dead mount). The child starts a new
   session, resolves the reference once (a tag is pinned to its digest for the life of the
   mount), mounts, and reports success or the error through a pipe only after an
   ``os.stat`` of the mount root succeeds while ``pyfuse3.main()`` runs. The parent exits 0,
   or 1 with the message. The child then points stdin/stdout/stderr at /dev/null (or the log
   file): otherwise ``$(ocifs mount …)`` would hang on the inherited pipe.
2. Nothing touches the mountpoint between ``pyfuse3.init`` and ``pyfuse3.main``: it deadlocks.
3. After the kernel handshake (the stat above), the mount's bdi ``read_ahead_kb`` is raised
   (the kernel resets it to 128 if set earlier); FUSE read requests are
   ``min(read_ahead_kb, 1 MiB)``, 128 KiB by default, which halves the throughput.
4. SIGTERM and SIGINT → ``pyfuse3.terminate()`` → ``pyfuse3.close(unmount=True)``:
   exit 0, unmounted. ``umount``/``ocifs umount`` make ``pyfuse3.main()`` return the same way.
   ``auto_unmount`` makes libfuse's watcher remove the mount within 0.5 s if we crash.
   SIGHUP reopens the log file (logrotate) and leaves the mount alone.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyfuse3
import trio

from ocifs.cache.fetcher import Fetcher
from ocifs.cache.prefetch import Prefetcher, PrefetchMode
from ocifs.cache.store import ChunkCache
from ocifs.errors import OcifsError, UsageError, first_error
from ocifs.format.media import DEFAULT_CHUNK_SIZE
from ocifs.fs.filesystem import ROOT_INODE, FileSystem
from ocifs.fs.fuse_ops import Operations
from ocifs.fs.options import OCIFS_OPTIONS
from ocifs.reference import parse_reference
from ocifs.registry.client import ClientOptions
from ocifs.registry.connect import connect
from ocifs.registry.resolve import resolve
from ocifs.retry import RetryPolicy

log = logging.getLogger(__name__)

#: The mount's readahead after the handshake, in KiB. 4 MiB gives 1 MiB requests and several
#: of them in flight: ~1,300-1,400 MiB/s cold through a pyfuse3 passthrough, against ~670
#: MiB/s with the default 128 KiB (docs/platform.md "Measured on the reference machine").
#: Larger values mainly buy parallelism but make every mmap page fault read more (a fault
#: reads a readahead window around the page), which costs lazy loaders.
DEFAULT_READ_AHEAD_KB = 4096

#: FUSE background requests (readahead) in flight per mount; the kernel default is 12. With
#: 5 ms per read, 16 MiB readahead and 64 background requests reached 962 MB/s where 12 gave
#: 562 (docs/platform.md "FUSE on Linux"). pyfuse3 runs up to ~99 handlers, so 64 fits.
DEFAULT_MAX_BACKGROUND = 64

#: How long the child waits for the first stat of the mount root before giving up.
READY_TIMEOUT = 30.0

FUSECTL = Path("/sys/fs/fuse/connections")

#: mount(8) strips PATH; credential helpers (docker-credential-*) are found on it.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


#: Forced: the files come from a registry, not from a trusted device. mount.fuse3 appends
#: ``dev,suid``, so those are removed, and ``rw`` makes no sense for this filesystem.
FORCED_OPTIONS = frozenset({"ro", "nosuid", "nodev", "auto_unmount"})
REMOVED_OPTIONS = frozenset({"rw", "suid", "dev"})


@dataclass(frozen=True, slots=True)
class MountConfig:
    """Everything a mount needs, resolved from flags and ``-o`` options."""

    reference: str
    mountpoint: str  # absolute
    client_options: ClientOptions
    foreground: bool = False
    fuse_options: frozenset[str] = frozenset()
    prefetch: PrefetchMode = PrefetchMode.AUTO
    jobs: int = 8
    cache_dir: str | None = None
    cache_max_size: int | None = None
    cache_memory: int | None = None
    fetch_retries: int = RetryPolicy().fetch_retries
    log_file: str | None = None
    read_ahead_kb: int = DEFAULT_READ_AHEAD_KB
    max_background: int = DEFAULT_MAX_BACKGROUND


# =================================================================================================
# Options
# =================================================================================================


def fuse_options(config: MountConfig, fsname: str) -> set[str]:
    """The libfuse option set: pyfuse3's defaults (``default_permissions``: the kernel checks
    the 0444/0555 modes), the user's, and the forced ones (:data:`FORCED_OPTIONS`)."""
    options = set(pyfuse3.default_options) | set(config.fuse_options)
    options -= REMOVED_OPTIONS
    options |= FORCED_OPTIONS
    options = {o for o in options if not o.startswith(("fsname=", "subtype="))}
    # /proc/mounts then reads "REF MOUNTPOINT fuse.ocifs": `ocifs umount` and operators can
    # tell our mounts apart. Commas would split the option; references cannot contain them.
    options |= {f"fsname={fsname}", "subtype=ocifs"}
    return options


# =================================================================================================
# Checks before mounting
# =================================================================================================


# =================================================================================================
# Process lifecycle
# =================================================================================================


def serve_mount(config: MountConfig) -> int:
    """Serve the mount ``config`` describes: in this process until unmounted (foreground), or
    in a detached child while this process waits for its readiness. The exit status.

    Errors before the mount is ready are raised (foreground) or reported by the waiting parent
    as one line with exit status 1 (detached).
    """
    log_fd = _open_log_file(config.log_file)
    if config.foreground:
        return _serve_in_process(config, _Readiness(None))
    return _detach(config, log_fd)


def _open_log_file(path: str | None) -> int | None:
    if path is None:
        return None
    try:
        return _append_to(path)
    except OSError as exc:
        raise UsageError(f"cannot open log file {path}: {exc.strerror}") from None


def _append_to(path: str) -> int:
    """The daemon's log file opened for appending (created 0640): at start and on SIGHUP."""
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)


class _Readiness:
    """How the serving process says "mounted" or "failed": to the waiting parent through a
    pipe (when detached) and to systemd through ``$NOTIFY_SOCKET``."""

    def __init__(self, pipe: int | None, log_fd: int | None = None) -> None:
        self._pipe = pipe
        self._log_fd = log_fd
        self.ready_sent = False
        self.failure: str | None = None

    def ready(self, message: str) -> None:
        self.ready_sent = True
        sd_notify(f"READY=1\nSTATUS={message}\nMAINPID={os.getpid()}")
        detached = self._pipe is not None
        self._send(b"O" + message.encode())
        if detached:
            _redirect_stdio(self._log_fd)

    def failed(self, message: str) -> None:
        self.failure = message
        self._send(b"E" + message.encode())

    def _send(self, data: bytes) -> None:
        if self._pipe is None:
            return
        try:
            os.write(self._pipe, data)
            os.close(self._pipe)
        except OSError as exc:  # the parent is gone (killed): nobody to tell
            log.debug("could not report to the parent: %s", exc)
        self._pipe = None


def _detach(config: MountConfig, log_fd: int | None) -> int:
    """Fork; the child serves, the parent waits for its verdict and exits with it."""
    read_end, write_end = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the daemon
        os.close(read_end)
        status = 1
        try:
            os.setsid()  # no controlling terminal: a closed terminal's SIGHUP does not reach us
            os.chdir("/")  # do not keep the caller's directory busy (every path is absolute)
            _close_inherited_fds({write_end} | ({log_fd} if log_fd is not None else set()))
            status = _serve_in_process(config, _Readiness(write_end, log_fd))
        except BaseException:  # the child must never return into the caller's code
            log.exception("mount daemon failed")
        finally:
            logging.shutdown()
            os._exit(status)
    os.close(write_end)
    chunks = []
    while True:
        data = os.read(read_end, 65536)
        if not data:
            break
        chunks.append(data)
    os.close(read_end)
    verdict = b"".join(chunks)
    if verdict.startswith(b"O"):
        return 0
    _, status = os.waitpid(pid, 0)
    if verdict.startswith(b"E"):
        print(f"ocifs: error: {verdict[1:].decode(errors='replace')}", file=sys.stderr)
    else:
        code = os.waitstatus_to_exitcode(status)
        print(f"ocifs: error: the mount daemon exited during startup (status {code})", file=sys.stderr)
    return 1


def _close_inherited_fds(keep: set[int]) -> None:
    """Close every descriptor above stdio the caller handed down, except ``keep``. A daemon that
    keeps its caller's files keeps them busy for its whole life: ``exec 7<old-mount/file; mount
    ... new-mount`` made the old mount "target is busy" until the new one was unmounted (seen in
    the upgrade recipe of docs/operations.md), and libfuse's fusermount3 watcher inherits them
    too. Runs before trio or libfuse open anything."""
    low = 3
    for fd in sorted(fd for fd in keep if fd >= low):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX"))


def _redirect_stdio(log_fd: int | None) -> None:
    """Detach from the caller's stdin/stdout/stderr. Logs go to the log file if any; under
    systemd (``$JOURNAL_STREAM``: stderr is the journal) stderr is kept; else /dev/null."""
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    keep_stderr = log_fd is None and "JOURNAL_STREAM" in os.environ
    target = log_fd if log_fd is not None else devnull
    os.dup2(target, 1)
    if not keep_stderr:
        os.dup2(target, 2)
    os.close(devnull)
    if log_fd is not None:
        os.close(log_fd)
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        for handler in logging.getLogger().handlers:
            handler.setFormatter(formatter)


def _serve_in_process(config: MountConfig, readiness: _Readiness) -> int:
    """Run the mount in this process until it is unmounted; the exit status."""
    try:
        try:
            trio.run(serve, config, readiness)
        except BaseExceptionGroup as group:
            # The nurseries of serve() wrap failures in groups; the user wants the one cause.
            raise first_error(group) from group
    except OcifsError as exc:
        if not readiness.ready_sent:
            readiness.failed(str(exc))
            if config.foreground:
                raise
            return 1
        log.error("mount of %s ended: %s", config.mountpoint, exc)
        return 1
    except Exception as exc:
        if not readiness.ready_sent:
            readiness.failed(f"internal error: {exc!r}")
        log.exception("mount of %s failed", config.mountpoint)
        return 1
    return 0


async def serve(config: MountConfig, readiness: _Readiness) -> None:
    """Resolve, mount, serve until unmounted or signalled, unmount. Raises OcifsError for
    anything that prevents the mount (bad reference, auth, not found, mount refused)."""
    ref = parse_reference(config.reference)
    cache_options: dict[str, Any] = {"max_size": config.cache_max_size}
    if config.cache_memory is not None:
        cache_options["memory_bytes"] = config.cache_memory
    cache = await trio.to_thread.run_sync(functools.partial(ChunkCache, config.cache_dir, **cache_options))
    async with connect(ref.registry, config.client_options, repository=ref.repository) as client:
        resolved = await resolve(client, ref)
        pinned = resolved.reference
        if ref.digest is None:
            # DEBUG: "mounted REF@DIGEST" says it once the mount works; mount(8) callers should
            # see one line when it fails.
            log.debug("%s resolved to %s: pinned for the life of the mount", ref, pinned.digest)
        fetcher = Fetcher(client, cache, max_concurrency=config.jobs, retries=config.fetch_retries)
        # Write-behind: a read is answered as soon as its chunk is verified; the cache write
        # follows, and unmounting waits for the writes still running.
        async with fetcher.writing_behind(), trio.open_nursery() as nursery:
            # Installed before the mount exists, so a signal at any moment unmounts cleanly.
            await nursery.start(_watch_signals, None if config.foreground else config.log_file)
            # jobs x default chunk: the bytes that keep every download slot busy (cache/prefetch.py).
            budget = config.jobs * DEFAULT_CHUNK_SIZE
            prefetcher = Prefetcher(nursery, mode=config.prefetch, budget_bytes=budget, max_window=budget)
            fs = FileSystem(resolved.artifact, pinned.repository, fetcher, prefetcher, reference=str(pinned))
            _init_fuse(Operations(fs), config.mountpoint, fuse_options(config, str(pinned)))
            try:
                nursery.start_soon(_announce_when_ready, config, fs, readiness)
                await pyfuse3.main()
            finally:
                nursery.cancel_scope.cancel()  # prefetches, the signal watcher, readiness
                pyfuse3.close(unmount=True)
        log.info("unmounted %s (%s)", config.mountpoint, _summary(fs))
    if readiness.failure is not None and not readiness.ready_sent:
        raise OcifsError(readiness.failure)


def _init_fuse(operations: Operations, mountpoint: str, options: set[str]) -> None:
    """``pyfuse3.init``, with the reason libfuse and fusermount3 print on stderr (C code, not
    logging: "fuse: unknown option(s): `-o bogus=1'") folded into the one-line error rather
    than printed above it: ``mount -t fuse.ocifs`` with a typo in fstab then says one thing.
    What they print when the mount works is passed on to the real stderr."""
    sys.stderr.flush()
    saved = os.dup(2)
    capture = os.memfd_create("ocifs-libfuse-stderr", os.MFD_CLOEXEC)
    failure: RuntimeError | None = None
    try:
        os.dup2(capture, 2)  # inheritable: fusermount3, which libfuse runs, writes here too
        try:
            pyfuse3.init(operations, mountpoint, options)
        except RuntimeError as exc:
            failure = exc
        finally:
            os.dup2(saved, 2)
        said = os.pread(capture, 65536, 0).decode(errors="replace")
    finally:
        os.close(capture)
        os.close(saved)
    if failure is None:
        if said:
            sys.stderr.write(said)
        return
    reason = "; ".join(line.strip().removeprefix("fuse: ") for line in said.splitlines() if line.strip())
    if "session_new" in str(failure):  # fuse_session_new refuses options it does not know
        ours = ", ".join(f"{key}=" if takes_value else key for key, takes_value in OCIFS_OPTIONS.items())
        raise UsageError(
            f"cannot mount on {mountpoint}: {reason or 'unknown mount option'}", hint=f"ocifs's own options: {ours}"
        )
    raise OcifsError(f"cannot mount on {mountpoint}: {reason or 'mount refused'}")


async def _watch_signals(
    log_file: str | None, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """SIGTERM and SIGINT unmount. SIGHUP reopens the log file (what logrotate's ``postrotate``
    and systemd's ``ExecReload`` send) and never unmounts: a model in use must not vanish
    because its log was rotated."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        task_status.started()
        async for signum in signals:
            if signum == signal.SIGHUP:
                reopen_log_file(log_file)
                continue
            log.info("%s received: unmounting", signal.Signals(signum).name)
            sd_notify("STOPPING=1")
            pyfuse3.terminate()
            return


def reopen_log_file(path: str | None) -> None:
    """Point stdout and stderr (where the detached daemon's log goes) at a fresh open of
    ``path``: after logrotate renamed the file, the daemon writes to a new one. Without a log
    file there is nothing to reopen. A failure to reopen keeps the old file and says so."""
    if path is None:
        log.info("SIGHUP received: no log file to reopen (the mount goes on)")
        return
    try:
        fd = _append_to(path)
    except OSError as exc:
        log.warning("SIGHUP received: cannot reopen log file %s (%s); still writing to the old one",
                    path, exc.strerror)  # fmt: skip
        return
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    log.info("SIGHUP received: log file %s reopened", path)


async def _announce_when_ready(config: MountConfig, fs: FileSystem, readiness: _Readiness) -> None:
    """Wait until the mount answers (the kernel handshake is done), tune it, say ready."""
    try:
        with trio.fail_after(READY_TIMEOUT):
            # In a thread: the stat is answered by pyfuse3.main() on this very trio loop.
            st = await trio.to_thread.run_sync(os.stat, config.mountpoint, abandon_on_cancel=True)
    except (OSError, trio.TooSlowError) as exc:
        readiness.failed(f"the mount at {config.mountpoint} did not come up: {exc or 'timed out'}")
        pyfuse3.terminate()
        return
    if st.st_ino != ROOT_INODE:
        readiness.failed(f"{config.mountpoint} does not show the new mount (inode {st.st_ino})")
        pyfuse3.terminate()
        return
    await trio.to_thread.run_sync(tune_mount, st.st_dev, config.read_ahead_kb, config.max_background)
    artifact = fs.artifact
    message = (
        f"mounted {fs.reference} on {config.mountpoint} ({len(artifact.files)} files, {artifact.total_size:,} bytes)"
    )
    log.info("%s", message)
    readiness.ready(message)


def tune_mount(dev: int, read_ahead_kb: int, max_background: int) -> None:
    """Raise the mount's readahead (bdi ``read_ahead_kb``) and, through fusectl, its
    ``max_background``. Best effort: failures (not root, no sysfs) are logged at INFO and the
    mount works with the kernel defaults, only slower."""
    major, minor = os.major(dev), os.minor(dev)
    _write_sysfs(Path(f"/sys/class/bdi/{major}:{minor}/read_ahead_kb"), read_ahead_kb)
    if max_background <= 0:
        return
    # fusectl names a connection by the kernel's dev_t (major << 20 | minor), not st_dev.
    connection = FUSECTL / str((major << 20) | minor)
    if not connection.exists() and os.geteuid() == 0 and FUSECTL.is_dir() and not os.path.ismount(FUSECTL):
        # systemd mounts fusectl at boot (sys-fs-fuse-connections.mount); do the same where
        # nobody did. Cheap, idempotent, and it only exposes per-connection tunables.
        subprocess.run(["mount", "-t", "fusectl", "fusectl", str(FUSECTL)], capture_output=True, check=False)
    _write_sysfs(connection / "max_background", max_background)


def _write_sysfs(path: Path, value: int) -> None:
    try:
        path.write_text(f"{value}\n")
    except OSError as exc:
        log.info("could not set %s to %d (%s): reads will be slower", path, value, exc.strerror)
    else:
        log.debug("set %s to %d", path, value)


def sd_notify(state: str) -> bool:
    """Send ``state`` to systemd if ``$NOTIFY_SOCKET`` is set (one datagram; a leading ``@``
    is the abstract namespace). Returns whether it was sent; never raises."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("could not notify systemd at %s: %s", os.environ["NOTIFY_SOCKET"], exc)
        return False
    return True


def _summary(fs: FileSystem) -> str:
    stats = fs.stats()
    fetch = stats["fetch"]
    return (
        f"{stats['fs']['reads']} reads, {fetch['downloads']} downloads of {fetch['bytes_downloaded']:,} bytes,"
        f" {fetch['memory_hits'] + fetch['disk_hits']} cache hits, {fetch['errors']} fetch errors"
    )


# =================================================================================================
# ocifs umount
# =================================================================================================
