"""The in-memory tier of the chunk cache: a byte-bounded LRU of whole chunks, and its hit counter.

Owns which chunks are held in memory and how many lookups found one there. Must not do I/O or
verify anything: callers put only verified chunks (the cache façade sees to that), and every
method is cheap enough to call from the event loop's thread.
"""

from __future__ import annotations

import threading

from cachetools import LRUCache

from ocifs.digest import Digest

#: Default budget of the in-memory tier: 16 chunks of the default 16 MiB, enough to hold the
#: chunks the default 8 concurrent downloads produce plus the ones being read right now.
DEFAULT_MEMORY_BYTES = 256 * 1024 * 1024


class MemoryTier:
    """At most ``budget`` bytes of chunks (0 disables the tier); a chunk larger than the budget
    is never held. Thread safe; the lock is held for dictionary work only."""

    def __init__(self, budget: int = DEFAULT_MEMORY_BYTES) -> None:
        if budget < 0:
            raise ValueError(f"memory_bytes must be >= 0, got {budget}")
        self.budget = budget
        self._lock = threading.Lock()
        self._chunks: LRUCache[Digest, bytes] = LRUCache(maxsize=max(budget, 1), getsizeof=len)
        self._hits = 0

    def __contains__(self, digest: Digest) -> bool:
        """Whether ``digest`` is held (no counter, recency untouched)."""
        with self._lock:
            return digest in self._chunks

    def get(self, digest: Digest) -> bytes | None:
        """The chunk if held (now the most recently used, and a hit counted), else ``None``."""
        with self._lock:
            data = self._chunks.get(digest)
            if data is not None:
                self._hits += 1
            return data

    def put(self, digest: Digest, data: bytes) -> None:
        """Hold ``data`` (least recently used chunks leave to make room); an empty chunk or one
        larger than the budget is not held (cachetools raises for items over its budget)."""
        if len(data) > self.budget or not data:
            return
        with self._lock:
            self._chunks[digest] = data

    def discard(self, digest: Digest) -> None:
        """Stop holding ``digest`` (a no-op if it is not held)."""
        with self._lock:
            self._chunks.pop(digest, None)

    def clear(self) -> None:
        with self._lock:
            self._chunks.clear()

    @property
    def hits(self) -> int:
        """Lookups that found their chunk here, since the tier was created."""
        with self._lock:
            return self._hits

    def usage(self) -> tuple[int, int]:
        """``(bytes held, chunks held)``."""
        with self._lock:
            return (int(self._chunks.currsize) if self.budget else 0), len(self._chunks)
