"""The chunk cache's memory tier: a byte-bounded LRU that counts its hits."""

from __future__ import annotations

import pytest

from ocifs.cache.memory import MemoryTier
from ocifs.digest import Digest


def item(n: int, size: int = 100) -> tuple[Digest, bytes]:
    data = bytes([n]) * size
    return Digest.of_bytes(data), data


def test_least_recently_used_chunks_leave_first_within_the_budget() -> None:
    tier = MemoryTier(250)
    a, b, c = item(1), item(2), item(3)
    tier.put(*a)
    tier.put(*b)
    assert tier.get(a[0]) == a[1]  # a is now the most recently used
    tier.put(*c)
    assert a[0] in tier and c[0] in tier and b[0] not in tier
    assert tier.usage() == (200, 2)
    assert tier.hits == 1


def test_a_miss_and_a_membership_test_count_no_hit() -> None:
    tier = MemoryTier(1000)
    digest, data = item(1)
    assert tier.get(digest) is None
    tier.put(digest, data)
    assert digest in tier
    assert tier.hits == 0


def test_chunks_over_the_budget_and_empty_chunks_are_not_held() -> None:
    tier = MemoryTier(50)
    big = item(1)
    empty = (Digest.of_bytes(b""), b"")
    tier.put(*big)
    tier.put(*empty)
    assert tier.usage() == (0, 0)
    disabled = MemoryTier(0)
    disabled.put(*item(2, size=1))
    assert disabled.usage() == (0, 0)


def test_discard_and_clear() -> None:
    tier = MemoryTier(1000)
    a, b = item(1), item(2)
    tier.put(*a)
    tier.put(*b)
    tier.discard(a[0])
    tier.discard(a[0])  # not held: a no-op
    assert a[0] not in tier and b[0] in tier
    tier.clear()
    assert tier.usage() == (0, 0)


def test_a_negative_budget_is_refused() -> None:
    with pytest.raises(ValueError, match="memory_bytes"):
        MemoryTier(-1)
