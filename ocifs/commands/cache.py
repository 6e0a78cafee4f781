"""``ocifs cache stats | prune | verify | clear``: look after the local chunk cache.

Owns the user-facing output of these commands (one short human report, or ``--json``); the
work itself is :class:`~ocifs.cache.store.ChunkCache`'s. Must not touch the cache's files
directly. The maintenance commands are safe while mounts and pulls use the same cache (the cache
locks and rescans; see its module docstring).

Exit status: 0, or 1 when ``verify`` found corrupt entries (it removes them, but a script should
know that the disk or something else damaged data at rest).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ocifs.cache.store import ChunkCache, default_cache_dir
from ocifs.errors import UsageError
from ocifs.units import format_size


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def _open(root: Path) -> ChunkCache:
    """The cache at ``root``, without a size bound: a bound given on the command line must not
    evict anything as a side effect of ``stats`` or ``verify`` (the constructor would)."""
    if root.exists() and not root.is_dir():
        raise UsageError(f"cache directory {root} is not a directory")
    return ChunkCache(root, memory_bytes=0)


def _stats(root: Path, limit: int | None) -> tuple[dict[str, Any], str]:
    if not root.exists():
        doc: dict[str, Any] = {"root": str(root), "exists": False, "entries": 0, "bytes": 0, "temp_files": 0}
        doc["max_size"] = limit
        return doc, f"cache {root}: empty (the directory does not exist yet)"
    stats = _open(root).stats()
    doc = {
        "root": str(root),
        "exists": True,
        "entries": stats.entries,
        "bytes": stats.bytes,
        "temp_files": stats.temp_files,
        "max_size": limit,
    }
    lines = [f"cache {root}", f"  {_plural(stats.entries, 'chunk')}, {format_size(stats.bytes)}"]
    if limit is not None:
        used = 100.0 * stats.bytes / limit if limit else 100.0
        lines.append(f"  limit {format_size(limit)} ({used:.0f}% used)")
    if stats.temp_files:
        lines.append(f"  {_plural(stats.temp_files, 'temp file')} (being written, or left by a killed process)")
    return doc, "\n".join(lines)


def _prune(root: Path, limit: int | None) -> tuple[dict[str, Any], str]:
    if not root.exists():
        return {"root": str(root), "exists": False}, f"cache {root}: nothing to prune (it does not exist)"
    result = _open(root).prune(limit)
    doc = {"root": str(root), "exists": True, "max_size": limit, **asdict(result)}
    removed = f"removed {_plural(result.removed_entries, 'chunk')} ({format_size(result.removed_bytes)})"
    if result.removed_temp_files:
        removed += f" and {_plural(result.removed_temp_files, 'stale temp file')}"
    if limit is None:
        removed = f"no size given (--max-size): {removed} (stale temp files only)"
    left = f"{_plural(result.remaining_entries, 'chunk')} ({format_size(result.remaining_bytes)}) left"
    return doc, f"cache {root}: {removed}; {left}"


def _verify(root: Path) -> tuple[dict[str, Any], str, bool]:
    if not root.exists():
        doc = {"root": str(root), "exists": False, "checked": 0, "bad": []}
        return doc, f"cache {root}: nothing to verify (it does not exist)", True
    result = _open(root).verify(remove_bad=True)
    doc = {
        "root": str(root),
        "exists": True,
        "checked": result.checked,
        "bytes_checked": result.bytes_checked,
        "bad": [str(d) for d in result.bad],
        "removed": result.removed,
        "removed_temp_files": result.removed_temp_files,
    }
    head = f"cache {root}: verified {_plural(result.checked, 'chunk')} ({format_size(result.bytes_checked)})"
    if not result.bad:
        return doc, f"{head}: all good", True
    lines = [f"{head}: {_plural(len(result.bad), 'corrupt chunk')}, {result.removed:,} removed"]
    lines += [f"  corrupt: {digest}" for digest in result.bad]
    lines.append("  a pull or mount downloads removed chunks again when it needs them")
    return doc, "\n".join(lines), False


def _clear(root: Path) -> tuple[dict[str, Any], str]:
    if not root.exists():
        return {"root": str(root), "exists": False}, f"cache {root}: already empty (it does not exist)"
    result = _open(root).clear()
    doc = {"root": str(root), "exists": True, **asdict(result)}
    text = f"cache {root}: removed {_plural(result.removed_entries, 'chunk')} ({format_size(result.removed_bytes)})"
    if result.removed_temp_files:
        text += f" and {_plural(result.removed_temp_files, 'temp file')}"
    return doc, text


def run_cache(args: argparse.Namespace) -> int:
    """Dispatch ``ocifs cache ACTION``; print the report on stdout. Returns the exit status."""
    root = (Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir()).absolute()
    limit: int | None = args.cache_max_size
    ok = True
    action = args.cache_command
    if action == "stats":
        doc, text = _stats(root, limit)
    elif action == "prune":
        given = getattr(args, "max_size", None)
        doc, text = _prune(root, given if given is not None else limit)
    elif action == "verify":
        doc, text, ok = _verify(root)
    elif action == "clear":
        doc, text = _clear(root)
    else:  # argparse restricts the choices; this is a programming error
        raise UsageError(f"unknown cache action {action!r}")
    if args.json:
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(text)
    return 0 if ok else 1
