"""What a chunk cache directory holds, seen from outside (tests look at the files, not the API)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from ocifs.cache.store import TEMP_PREFIX


def cache_entries(cache: Path) -> dict[str, Path]:
    """The visible entries of the cache at ``cache``, by digest (temp files excluded)."""
    return {
        f"sha256:{p.name}": p
        for p in (cache / "v1" / "sha256").glob("*/*")
        if p.is_file() and not p.name.startswith(TEMP_PREFIX)
    }


def assert_cache_consistent(cache: Path) -> dict[str, Path]:
    """Every visible cache entry hashes to its name; returns the entries."""
    entries = cache_entries(cache)
    bad = [d for d, p in entries.items() if f"sha256:{hashlib.sha256(p.read_bytes()).hexdigest()}" != d]
    assert bad == [], f"cache entries that do not hash to their name: {bad}"
    return entries
