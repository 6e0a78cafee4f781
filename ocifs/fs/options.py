"""The ``-o`` vocabulary of a mount: which options are ocifs's own, which belong to mount(8),
mount.fuse3 or systemd and must not reach libfuse, and which are left for libfuse.

libfuse's ``fuse_session_new`` fails on any option it does not know, so every option is sorted
here before :func:`pyfuse3.init` sees the rest (docs/operations.md, "Options").
"""

from __future__ import annotations

from collections.abc import Iterable

from ocifs.errors import UsageError

#: ``-o`` keys that are ours (turned into flags), with whether they take a value.
OCIFS_OPTIONS: dict[str, bool] = {
    "prefetch": True,
    "jobs": True,
    "cache_dir": True,
    "cache_max_size": True,
    "log_file": True,
    "retries": True,
    "read_timeout": True,
    "ca_file": True,
    "cert_file": True,
    "key_file": True,
    "authfile": True,
    "read_ahead_kb": True,
    "plain_http": False,
    "insecure": False,
    "debug": False,
}


#: ``-o`` options that mean something to mount(8), mount.fuse3 or systemd but not to libfuse,
#: whose ``fuse_session_new`` fails on any option it does not know (docs/platform.md, "FUSE on Linux").
DROPPED_OPTIONS = frozenset({"_netdev", "nofail", "noauto", "auto", "user", "users", "nouser", "owner", "defaults"})


DROPPED_PREFIXES = ("x-", "comment=", "X-")


def split_options(values: Iterable[str]) -> tuple[dict[str, str | None], set[str]]:
    """Split ``-o`` values (each comma separated) into ours and libfuse's.

    Returns ``(ours, fuse)``: ``ours`` maps our keys (:data:`OCIFS_OPTIONS`, ``-`` accepted
    for ``_``) to their value (``None`` for flags); ``fuse`` is what is left for libfuse,
    without mount(8)/systemd-only options (:data:`DROPPED_OPTIONS`). A key of ours with a
    missing or unexpected value is a :class:`UsageError`.
    """
    ours: dict[str, str | None] = {}
    fuse: set[str] = set()
    for value in values:
        for item in value.split(","):
            item = item.strip()
            if not item or item in DROPPED_OPTIONS or item.startswith(DROPPED_PREFIXES):
                continue
            key, sep, arg = item.partition("=")
            name = key.replace("-", "_")
            if name in OCIFS_OPTIONS:
                if OCIFS_OPTIONS[name] and not sep:
                    raise UsageError(f"option -o {key} needs a value ({key}=...)")
                if not OCIFS_OPTIONS[name] and sep:
                    raise UsageError(f"option -o {key} takes no value")
                ours[name] = arg if sep else None
            else:
                fuse.add(item)
    return ours, fuse
