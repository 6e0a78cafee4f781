"""The ``ocifs`` command line: argument parsing, dispatch, and the one place errors meet users.

Every :class:`~ocifs.errors.OcifsError` becomes one line on stderr and a non-zero exit; a
traceback is shown only with ``--debug``. Commands live in their own modules; this module only
parses and dispatches.
"""

from __future__ import annotations

import argparse
import ctypes
import getpass
import logging
import os
import resource
import sys
from collections.abc import Callable, Sequence
from typing import Any

import trio

from ocifs import __version__, config
from ocifs.commands.arguments import parse_size, positive_float, positive_int
from ocifs.errors import OcifsError, UsageError, fd_exhaustion, fd_exhaustion_hint, first_error
from ocifs.reference import parse_reference
from ocifs.registry.client import ClientOptions, RedactUrls
from ocifs.retry import RetryPolicy

log = logging.getLogger("ocifs")

Handler = Callable[[argparse.Namespace], int]


DEFAULT_JOBS = 8
DEFAULT_RETRIES = 5
DEFAULT_READ_TIMEOUT = 60.0


def apply_settings(args: argparse.Namespace, settings: config.Settings) -> None:
    """Fill every option the command line left unset from the configuration files, then defaults.

    Flags always win; registry-specific settings apply to the registry the command names.
    """
    if getattr(args, "jobs", False) is None:
        args.jobs = settings.jobs or DEFAULT_JOBS
    if getattr(args, "retries", False) is None:
        args.retries = settings.retries or DEFAULT_RETRIES
    if getattr(args, "read_timeout", False) is None:
        args.read_timeout = settings.read_timeout or DEFAULT_READ_TIMEOUT
    if hasattr(args, "authfile") and args.authfile is None:
        args.authfile = settings.auth_file
    if hasattr(args, "cache_dir") and args.cache_dir is None:
        args.cache_dir = settings.cache_dir
    if hasattr(args, "cache_max_size") and args.cache_max_size is None:
        args.cache_max_size = settings.cache_max_size
    args.cache_memory = settings.cache_memory
    args.certs_d = settings.certs_d
    host = _registry_of(args)
    if host is not None and hasattr(args, "plain_http"):
        registry = settings.registry(host)
        args.plain_http = args.plain_http or registry.plain_http
        args.ca_file = args.ca_file or registry.ca_file
        if not (args.cert_file or args.key_file):  # a certificate and its key come from one place
            args.cert_file, args.key_file = registry.cert_file, registry.key_file
        args.insecure = args.insecure or registry.insecure
    if host is not None and hasattr(args, "max_layers"):  # push: the registry's limits and allow-lists
        registry = settings.registry(host)
        args.configured_max_layers = registry.max_layers
        args.artifact_type = args.artifact_type or registry.artifact_type
        args.config_media_type = args.config_media_type or registry.config_media_type


def _registry_of(args: argparse.Namespace) -> str | None:
    """The registry host the command talks to, if it names one (bad references fail later)."""
    text = getattr(args, "reference", None) or (f"{args.registry}/x" if getattr(args, "registry", None) else None)
    if not text:
        return None
    try:
        return parse_reference(text).registry
    except OcifsError:
        return None


def client_options(args: argparse.Namespace) -> ClientOptions:
    """Registry connection options from the common flags (after :func:`apply_settings`)."""
    jobs = getattr(args, "jobs", None) or DEFAULT_JOBS
    return ClientOptions(
        plain_http=args.plain_http,
        # Absolute: a mount's daemon leaves the working directory.
        ca_file=_absolute(args.ca_file),
        cert_file=_absolute(getattr(args, "cert_file", None)),
        key_file=_absolute(getattr(args, "key_file", None)),
        certs_d=(args.certs_d,) if getattr(args, "certs_d", None) else (),
        insecure=args.insecure,
        max_connections=max(8, jobs * 2),
        retry=RetryPolicy(attempts=args.retries or DEFAULT_RETRIES),
        read_timeout=getattr(args, "read_timeout", None) or DEFAULT_READ_TIMEOUT,
        auth_file=_auth_file(args),
    )


def _absolute(path: str | None) -> str | None:
    return os.path.abspath(path) if path else None


def _auth_file(args: argparse.Namespace) -> str | None:
    """``--authfile`` as an absolute path (a detached mount daemon changes directory)."""
    value = getattr(args, "authfile", None)
    return os.path.abspath(os.path.expanduser(value)) if value else None


def _add_registry_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("registry connection")
    group.add_argument("--plain-http", action="store_true", help="use HTTP, not HTTPS (automatic for loopback)")
    group.add_argument(
        "--ca-file", metavar="PEM", help="trust this CA too (besides the system store and certs.d) for the registry"
    )
    group.add_argument("--cert-file", metavar="PEM", help="client certificate for registries that ask for one (mTLS)")
    group.add_argument("--key-file", metavar="PEM", help="the key of --cert-file (if not in the same file)")
    group.add_argument("--insecure", action="store_true", help="do not verify the registry's TLS certificate")
    group.add_argument("--retries", type=positive_int, default=None, help="attempts per request (default 5)")
    group.add_argument(
        "--authfile",
        metavar="FILE",
        help="credentials file searched first (podman's auth.json or docker's config.json format;"
        " default $REGISTRY_AUTH_FILE, then podman's and docker's files)",
    )
    group.add_argument(
        "--read-timeout",
        type=positive_float,
        default=None,
        metavar="SECONDS",
        help="abandon and retry a request that sends nothing for this long (default 60)",
    )


def _add_cache_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("chunk cache")
    group.add_argument("--cache-dir", metavar="DIR", help="chunk cache directory (default: per user, see docs)")
    group.add_argument("--cache-max-size", type=parse_size, metavar="SIZE", help="evict beyond this size, e.g. 50G")


class _SubParsers:
    """Adds the common flags to every sub-command parser."""

    def __init__(self, action: Any, common: argparse.ArgumentParser) -> None:
        self._action = action
        self._common = common

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = self._action.add_parser(name, parents=[self._common], **kwargs)
        return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ocifs",
        description="Push large files to OCI registries in parallel chunks; pull and mount them lazily.",
    )
    parser.add_argument("--version", action="version", version=f"ocifs {__version__}")
    parser.add_argument("--debug", action="store_true", help="verbose logs and tracebacks")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    # The same flags after the command (`ocifs push --debug ...`), without clobbering them.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub = _SubParsers(parser.add_subparsers(dest="command", metavar="COMMAND"), common)

    p = sub.add_parser("push", help="push files and directories as a chunked artifact")
    p.add_argument("reference", help="REGISTRY/REPOSITORY:TAG")
    p.add_argument("paths", nargs="+", metavar="PATH", help="files and directories to push")
    p.add_argument(
        "--chunk-size", type=parse_size, default=None, help="chunk size, kept as given (default 16M, grown to fit)"
    )
    p.add_argument(
        "--max-layers",
        type=positive_int,
        default=None,
        help="layer budget per manifest (default: max_layers of the registry in config.toml, a known cap, or 10000)",
    )
    p.add_argument(
        "--single-manifest",
        action="store_true",
        help="refuse, rather than split over several manifests, what one manifest cannot hold (older ocifs readers)",
    )
    p.add_argument("-j", "--jobs", type=positive_int, default=None, help="parallel uploads (default 8)")
    p.add_argument("--from", dest="mount_from", metavar="REPO", help="mount chunks from this repository if there")
    p.add_argument("--no-file-digest", action="store_true", help="skip the whole-file sha256")
    p.add_argument("--artifact-type", help="the manifest's artifactType ('none': omit it; needs --config-media-type)")
    p.add_argument("--annotation", action="append", default=[], metavar="K=V", help="manifest annotation")
    p.add_argument("--config", metavar="FILE", help="a config blob (JSON) instead of the empty one")
    p.add_argument(
        "--config-media-type", help="the config's media type (with --config default: the OCI image config's)"
    )
    p.add_argument("--json", action="store_true", help="print a machine-readable summary")
    _add_registry_flags(p)
    p.set_defaults(handler=_cmd_push)

    p = sub.add_parser("pull", help="download an artifact's files, verified")
    p.add_argument("reference")
    p.add_argument("-o", "--output", default=".", metavar="DIR", help="target directory (default .)")
    p.add_argument("-j", "--jobs", type=positive_int, default=None, help="parallel downloads (default 8)")
    p.add_argument("--include", action="append", default=[], metavar="GLOB", help="only files matching GLOB")
    p.add_argument("--json", action="store_true", help="print a machine-readable summary")
    _add_registry_flags(p)
    _add_cache_flags(p)
    p.set_defaults(handler=_cmd_pull)

    p = sub.add_parser("inspect", help="list an artifact's files, sizes, chunks and digests")
    p.add_argument("reference")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _add_registry_flags(p)
    p.set_defaults(handler=_cmd_inspect)

    p = sub.add_parser(
        "login",
        help="check and store credentials for a registry",
        description="Store them as docker does: through the credential helper the file names"
        " (credHelpers, credsStore), else in the file: --authfile or $REGISTRY_AUTH_FILE if given,"
        " else docker's config.json. Says where they went.",
    )
    p.add_argument("registry", metavar="HOST[:PORT]")
    p.add_argument("-u", "--username")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    _add_registry_flags(p)
    p.set_defaults(handler=_cmd_login)

    p = sub.add_parser("logout", help="remove a registry's stored credentials (helper or file)")
    p.add_argument("registry", metavar="HOST[:PORT]")
    p.add_argument("--authfile", metavar="FILE", help="the credentials file (as for login)")
    p.set_defaults(handler=_cmd_logout)

    p = sub.add_parser("cache", help="inspect and maintain the local chunk cache")
    csub = p.add_subparsers(dest="cache_command", metavar="ACTION", required=True)
    for name, text in (
        ("stats", "size and entries"),
        ("prune", "evict least recently used chunks down to a size"),
        ("verify", "re-hash every chunk and remove bad ones"),
        ("clear", "remove every chunk"),
    ):
        cp = csub.add_parser(name, help=text)
        _add_cache_flags(cp)
        if name == "prune":
            cp.add_argument("--max-size", type=parse_size, metavar="SIZE", help="target size (default: configured)")
        cp.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=_cmd_cache)

    p = sub.add_parser(
        "mount",
        help="mount an artifact read-only; chunks are fetched lazily",
        description="Mount REF read-only on MOUNTPOINT and detach once it is ready (-f: stay in the foreground)."
        " A tag is pinned to its digest for the life of the mount. Live counters: the extended attribute"
        " user.ocifs.stats of MOUNTPOINT (getfattr -n user.ocifs.stats --only-values MOUNTPOINT).",
    )
    p.add_argument("reference", help="REGISTRY/REPOSITORY:TAG or @DIGEST")
    p.add_argument("mountpoint", help="an existing directory")
    p.add_argument("-f", "--foreground", action="store_true", help="do not detach; log to stderr")
    p.add_argument(
        "-o", dest="options", action="append", default=[], metavar="OPT[,OPT...]",
        help="mount options: libfuse's (allow_other, ...) and ours as key=value (prefetch=whole, jobs=4, ...)",
    )  # fmt: skip
    p.add_argument("--prefetch", choices=["auto", "whole", "off"], default="auto",
                   help="auto: read ahead of sequential readers (default); whole: fetch a file entirely when"
                   " opened (mmap loaders such as safetensors); off: fetch only what is read")  # fmt: skip
    p.add_argument("-j", "--jobs", type=positive_int, default=None, help="parallel downloads (default 8)")
    p.add_argument("--log-file", metavar="FILE", help="where the detached daemon logs (default: nowhere)")
    p.add_argument("--read-ahead-kb", type=positive_int, default=4096, help=argparse.SUPPRESS)
    _add_registry_flags(p)
    _add_cache_flags(p)
    p.set_defaults(handler=_cmd_mount)

    p = sub.add_parser("umount", help="unmount an ocifs mount")
    p.add_argument("mountpoint")
    p.add_argument("-z", "--lazy", action="store_true", help="detach now even if busy; open files keep working")
    p.set_defaults(handler=_cmd_umount)

    p = sub.add_parser(
        "status",
        help="list this host's ocifs mounts, or show one mount's live counters",
        description="Without MOUNTPOINT: every ocifs mount, one line each. With it: reference, pinned digest,"
        " uptime, bytes fetched, cache hits and misses, fetches in flight, errors and prefetch state."
        " Exit status 1 if a mount is dead or does not answer.",
    )
    p.add_argument("mountpoint", nargs="?", help="an ocifs mount point")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=_cmd_status)
    return parser


def _cmd_push(args: argparse.Namespace) -> int:
    from ocifs.commands.push import run_push

    return run_push(args, client_options(args))


def _cmd_pull(args: argparse.Namespace) -> int:
    from ocifs.commands.pull import run_pull

    return run_pull(args, client_options(args))


def _cmd_inspect(args: argparse.Namespace) -> int:
    from ocifs.commands.inspect import run_inspect

    return run_inspect(args, client_options(args))


def _cmd_cache(args: argparse.Namespace) -> int:
    from ocifs.commands.cache import run_cache

    return run_cache(args)


def _cmd_mount(args: argparse.Namespace) -> int:
    from ocifs.commands.mount import apply_options, run_mount

    apply_options(args)  # -o keys of ours become flags first: they may change client options
    return run_mount(args, client_options(args))


def _cmd_umount(args: argparse.Namespace) -> int:
    from ocifs.commands.mount import run_umount

    return run_umount(args)


def _cmd_status(args: argparse.Namespace) -> int:
    from ocifs.commands.status import run_status

    return run_status(args)


def _cmd_login(args: argparse.Namespace) -> int:
    from ocifs.registry.connect import connect
    from ocifs.registry.credentials import Credentials, store_credentials

    registry = parse_reference(f"{args.registry}/x").registry
    if args.password_stdin and not args.username:
        raise UsageError("--password-stdin needs --username (-u)")
    username = args.username or input("Username: ")
    password = sys.stdin.readline().rstrip("\r\n") if args.password_stdin else getpass.getpass("Password: ")
    if not username or not password:
        raise UsageError("login needs a username and a password")
    creds = Credentials(username, password)

    async def check() -> None:
        async with connect(registry, client_options(args), creds) as client:
            await client.ping()

    trio.run(check)
    where = store_credentials(registry, username, password, auth_file=_auth_file(args))
    print(f"Login succeeded: credentials for {registry} stored in {where}")
    return 0


def _cmd_logout(args: argparse.Namespace) -> int:
    from ocifs.registry.credentials import erase_credentials, login_target

    registry = parse_reference(f"{args.registry}/x").registry
    erased = erase_credentials(registry, auth_file=_auth_file(args))
    if not erased:
        print(f"Not logged in to {registry} (nothing in {login_target(_auth_file(args))})", file=sys.stderr)
        return 0
    for where in erased:
        print(f"Removed the credentials for {registry} from {where}")
    return 0


class JournalFormatter(logging.Formatter):
    """Every line prefixed with its sd-daemon(3) priority (``<4>`` WARNING, ``<3>`` ERROR...):
    journald stores it as the record's level (``journalctl -p warning`` finds it) and strips it
    from the text. No timestamps: journald adds its own."""

    #: (lowest logging level, syslog priority): crit, err, warning, info; below INFO is debug (7).
    PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))

    def format(self, record: logging.LogRecord) -> str:
        priority = next((p for level, p in self.PRIORITIES if record.levelno >= level), 7)
        prefix = f"<{priority}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines())


def stderr_is_journal() -> bool:
    """Whether stderr is connected to the journal: systemd sets ``$JOURNAL_STREAM`` to that
    stream's ``DEVICE:INODE``; compared with stderr's, as sd-daemon(3) advises, so a child whose
    stderr was redirected elsewhere does not prefix its lines."""
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        st = os.fstat(sys.stderr.fileno())
        return (int(device), int(inode)) == (st.st_dev, st.st_ino)
    except (ValueError, OSError):
        return False


def setup_logging(debug: bool) -> None:
    """INFO and up to stderr (DEBUG with --debug); third-party chatter only with --debug.
    Under systemd (stderr is the journal) each line carries its priority (:class:`JournalFormatter`)."""
    handler = logging.StreamHandler(sys.stderr)
    formatter = JournalFormatter if stderr_is_journal() else logging.Formatter
    handler.setFormatter(formatter("%(levelname)s %(name)s: %(message)s" if debug else "%(message)s"))
    handler.addFilter(RedactUrls())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.WARNING)
    logging.getLogger("ocifs").setLevel(logging.DEBUG if debug else logging.INFO)
    for noisy in ("httpx", "httpcore", "hpack"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if debug else logging.WARNING)


#: glibc's ``mallopt`` parameter numbers (malloc.h: ``M_TRIM_THRESHOLD``, ``M_MMAP_THRESHOLD``,
#: ``M_ARENA_MAX``).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
#: Blocks below this come from the heap, where freed ones are reused: a chunk (16 MiB by
#: default, up to 64 MiB with --chunk-size) is then not a fresh mmap whose every page faults.
_MMAP_THRESHOLD = 64 * 1024 * 1024
#: Free heap memory kept rather than returned to the kernel (the memory tier and read-ahead
#: budget churn through about this much).
_TRIM_THRESHOLD = 256 * 1024 * 1024


def tune_malloc() -> None:
    """Tune glibc's allocator for a process that allocates and frees 16 MiB buffers in a loop.

    - One arena. Chunks are allocated in worker threads (pread, HTTP bodies) and freed in
      others; with an arena per thread each arena keeps its own freed blocks, and a push of
      1 GiB peaked at 350–450 MiB RSS instead of 185–200 (measured; speed and CPU unchanged).
    - A fixed mmap threshold of 64 MiB and a trim threshold of 256 MiB, so freed chunks are
      reused instead of unmapped and mapped again: on the reference machine a fresh page costs a
      fault plus host work (docs/benchmarks.md, "malloc"), and a warm 4 GiB read through the
      mount spent 0.65–0.9 instead of 0.86–0.99 CPU-s per GiB (cold: 2.0 instead of 2.1), at
      about the same peak RSS (479 vs 494 MiB).

    Ignored where the C library is not glibc."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_ARENA_MAX, 1)
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
        libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
    except (OSError, AttributeError):
        pass


def raise_open_file_limit() -> None:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit, as Go programs, systemd services and
    many tools do: the soft default (1024, sometimes 256 or less) is a relic of ``select()``,
    which ocifs does not use, while a pull or a mount with many jobs holds a socket, a temp
    file and a cache file per job and can run short. Never lowers it; failures are ignored
    (the limit stays what it was)."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = hard
        if hard == resource.RLIM_INFINITY:
            # Linux refuses an infinite descriptor limit; its ceiling is fs.nr_open.
            with open("/proc/sys/fs/nr_open") as f:
                target = int(f.read())
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError):
        pass


def _report(exc: OcifsError) -> tuple[str, int]:
    """The error line (without the ``ocifs: error:`` prefix) and exit status for ``exc``.

    Out of file descriptors is a runtime condition of this host, not a usage error, whatever
    the layer that met it reported (e.g. "cannot use output directory DIR: Too many open
    files"): exit 1 and say what to do, unless the error already does.
    """
    fds = fd_exhaustion(exc, groups=False)  # every layer keeps the OSError as the cause
    if fds is None:
        return str(exc), exc.exit_code
    if exc.hint:
        return str(exc), 1
    return f"{exc.message}: {fd_exhaustion_hint(fds)}", 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ocifs`` command. Returns the exit status."""
    raise_open_file_limit()  # before anything opens a descriptor; the mount daemon forks from here
    tune_malloc()  # before any thread starts
    parser = build_parser()
    args = parser.parse_args(_with_mount_command(sys.argv[1:] if argv is None else argv))
    setup_logging(args.debug)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        try:
            apply_settings(args, config.load_settings())
            return handler(args)
        except BaseExceptionGroup as group:
            # trio nurseries wrap failures in groups; the user gets the one that caused it.
            raise first_error(group) from group
    except OcifsError as exc:
        if args.debug:
            log.exception("failed")
        line, status = _report(exc)
        priority = "<3>" if stderr_is_journal() else ""  # a failed unit's reason shows as an error
        print(f"{priority}ocifs: error: {line}", file=sys.stderr)
        return status
    except KeyboardInterrupt:
        print("ocifs: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # stdout closed by a pipe reader (e.g. `| head`): not an error worth a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as exc:
        # Untranslated OSErrors are bugs (tracebacks), except running out of descriptors, which
        # any open() anywhere may meet: one line and what to do.
        fds = fd_exhaustion(exc, groups=False)
        if fds is None:
            raise
        if args.debug:
            log.exception("failed")
        priority = "<3>" if stderr_is_journal() else ""
        what = f"cannot open {fds.filename}: " if fds.filename else ""
        print(f"{priority}ocifs: error: {what}{fds.strerror or exc}: {fd_exhaustion_hint(fds)}", file=sys.stderr)
        return 1


def _with_mount_command(argv: Sequence[str]) -> list[str]:
    """``ocifs SRC MP -o OPTS`` (how mount.fuse3 runs us for ``-t fuse.ocifs``: no command) is
    ``ocifs mount SRC MP -o OPTS``. A reference always contains "/", a command name never."""
    argv = list(argv)
    if argv and "/" in argv[0] and not argv[0].startswith("-"):
        return ["mount", *argv]
    return argv


def mount_helper_main(argv: Sequence[str] | None = None) -> int:
    """``mount.fuse.ocifs SRC MOUNTPOINT [-sfnv] [-o OPTS] [-t TYPE]``, as mount(8) runs a helper.

    ``-o`` options are ours (``prefetch=whole``, ``cache_dir=...``; see ``ocifs mount -h``) or
    libfuse's; mount(8)-only ones (``_netdev``, ``nofail``, ``x-*``...) are dropped by the mount.
    ``-f`` (fake) does nothing; ``-s``, ``-n``, ``-v`` and ``-t`` are accepted and ignored.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    positional: list[str] = []
    options: list[str] = []
    fake = False
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in ("-o", "-t", "-N") and i + 1 < len(args):
            if arg == "-o":
                options += ["-o", args[i + 1]]
            elif arg == "-N":
                print("ocifs: error: mount namespaces (-N) are not supported", file=sys.stderr)
                return 1
            i += 2
            continue
        if arg.startswith("-o") and len(arg) > 2:
            options += ["-o", arg[2:]]
        elif arg.startswith("-") and len(arg) > 1 and set(arg[1:]) <= set("sfnvr"):
            fake = fake or "f" in arg
        else:
            positional.append(arg)
        i += 1
    if len(positional) != 2:
        print("usage: mount.fuse.ocifs REFERENCE MOUNTPOINT [-o OPTIONS]", file=sys.stderr)
        return 2
    if fake:
        return 0
    return main(["mount", *positional, *options])
