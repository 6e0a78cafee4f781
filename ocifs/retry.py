"""The retry policy of the whole stack: how many attempts, and how long to wait between them.

One :class:`RetryPolicy` drives the registry client's request engine and the fetcher's whole-
chunk retries (docs/requests.md says how the two compose); :func:`backoff` is the one backoff
function. Which failures are worth a retry is the registry layer's decision
(:mod:`ocifs.registry.transient`), because it knows the transports. A leaf: pure, no I/O.

The wait is exponential backoff with full jitter (AWS architecture blog, "Exponential Backoff
and Jitter"), unless the server sent ``Retry-After``, which is honoured up to ``max_delay``.
"""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How many times and how patiently to retry a request.

    ``attempts`` counts every try, the first included. ``base_delay`` doubles per retry up to
    ``max_delay``; the actual wait is uniform in [0, that] (full jitter) so that many parallel
    chunk requests failing together do not retry in lockstep.

    ``chunk_retries`` is the fetcher's share (a mount's reads): how many more whole downloads of
    a chunk it makes after one failed with its ``attempts`` spent or came back corrupt. Two: a
    cold read then reports within seconds of the registry going away, not minutes, and a chunk
    corrupted once in transit still arrives (docs/requests.md has the arithmetic).
    """

    attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 20.0
    chunk_retries: int = 2

    @property
    def fetch_retries(self) -> int:
        """The fetcher's retries under this policy: ``chunk_retries``, none when the user asked for
        a single attempt per request (``--retries 1`` means "do not retry")."""
        return min(self.chunk_retries, self.attempts - 1)

    def backoff(self, retry_number: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry ``retry_number`` (1 for the first retry)."""
        return backoff(retry_number, self.base_delay, self.max_delay, rng)

    def delay_for(self, retry_number: int, retry_after: str | None) -> float:
        """Seconds to wait: the answer's ``Retry-After`` when it has one, else backoff."""
        after = parse_retry_after(retry_after)
        if after is not None:
            return min(after, self.max_delay)
        return self.backoff(retry_number)


def backoff(retry_number: int, base_delay: float, max_delay: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter: uniform in [0, ``base_delay`` doubled per retry,
    at most ``max_delay``], so that requests failing together (a registry restart) do not all
    come back in the same instant. ``retry_number`` is 1 for the first retry."""
    ceiling = min(max_delay, base_delay * (2 ** (retry_number - 1)))
    return (rng or random).uniform(0, ceiling)


def parse_retry_after(value: str | None) -> float | None:
    """Parse a ``Retry-After`` header (delta-seconds or HTTP-date) into seconds, or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - time.time())
